//! The node's side of the mesh: its WireGuard key (made here, never leaving), its device, strict
//! mode, and turning the control plane's peer set into the device's.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use veil_cluster::proto::{MeshJoin, MeshPeer};
use veil_mesh::{Device, DeviceConfig, MeshKey, PeerConfig, StrictPolicy};

/// Mesh settings of a node (absent: no mesh).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeshSettings {
    /// The mesh network, e.g. `10.215.7.0/24` (measured).
    pub network: String,
    /// Where this node's mesh device listens, its LAN address and port (placement: not
    /// measured).
    pub endpoint: String,
    /// The TUN interface name.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Strict mode: the LAN (`10.213.7.0/24`) on which only WireGuard and these attested-TLS
    /// ports may flow between nodes (measured).
    #[serde(default)]
    pub strict: Option<StrictSettings>,
    /// Rotate the node's mesh key this often (seconds; measured). The owner can also ask for
    /// a rotation at any time (`veil node rotate-keys`).
    #[serde(default)]
    pub rotate_secs: Option<u64>,
}

fn default_interface() -> String {
    "veil0".into()
}

/// Strict-mode settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StrictSettings {
    /// The nodes' LAN.
    pub lan: String,
    /// TCP ports of attested-TLS services reachable between nodes.
    pub tls_ports: Vec<u16>,
}

/// What the status file says of the mesh.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MeshStatus {
    /// This node's mesh address.
    pub address: String,
    /// Its WireGuard public key.
    pub public_key: String,
    /// Peers in its current set.
    pub peers: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Inner bytes sent and received.
    pub tx_bytes: u64,
    /// Inner bytes received.
    pub rx_bytes: u64,
    /// Packets dropped (unknown peer or address).
    pub dropped: u64,
    /// Times its key rotated.
    #[serde(default)]
    pub rotations: u64,
}

fn cidr(text: &str) -> anyhow::Result<(Ipv4Addr, u8)> {
    let (a, p) = text
        .split_once('/')
        .with_context(|| format!("`{text}`: expected ADDRESS/PREFIX"))?;
    Ok((
        a.parse().with_context(|| format!("`{text}`: address"))?,
        p.parse().with_context(|| format!("`{text}`: prefix"))?,
    ))
}

impl MeshSettings {
    /// What the firmware measures of these settings.
    pub fn measured(&self) -> String {
        format!(
            "mesh: {} rotate: {:?} strict: {}",
            self.network,
            self.rotate_secs,
            self.strict
                .as_ref()
                .map(|s| format!("{} tls {:?}", s.lan, s.tls_ports))
                .unwrap_or_else(|| "off".into())
        )
    }

    /// The mesh network and prefix.
    pub fn network(&self) -> anyhow::Result<(Ipv4Addr, u8)> {
        cidr(&self.network).context("mesh network")
    }

    /// Installs strict mode (if configured) in this node's namespace.
    pub fn apply_strict(&self, wireguard_port: u16) -> anyhow::Result<()> {
        let Some(s) = &self.strict else {
            return Ok(());
        };
        let (lan, prefix) = cidr(&s.lan).context("strict mode LAN")?;
        StrictPolicy {
            lan,
            prefix,
            wireguard_port,
            tls_ports: s.tls_ports.clone(),
        }
        .apply()?;
        tracing::info!(event = "strict_mode", lan = %s.lan, "only WireGuard and attested TLS between nodes");
        Ok(())
    }

    /// The endpoint as a socket address.
    pub fn endpoint(&self) -> anyhow::Result<SocketAddr> {
        self.endpoint
            .parse()
            .with_context(|| format!("mesh endpoint `{}`", self.endpoint))
    }

    /// What a joining node tells the control plane.
    pub fn join(&self, key: &MeshKey) -> MeshJoin {
        MeshJoin {
            public_key: key.public_base64(),
            endpoint: self.endpoint.clone(),
        }
    }

    /// Starts the device with `address` on the mesh.
    pub fn start(&self, key: MeshKey, address: Ipv4Addr) -> anyhow::Result<Device> {
        let (_, prefix) = self.network()?;
        Ok(Device::start(
            &DeviceConfig {
                interface: self.interface.clone(),
                address,
                prefix,
                listen: self.endpoint()?,
                mtu: 1420,
            },
            key,
        )?)
    }
}

/// The device's peer set from the control plane's (entries that do not parse are skipped
/// with a warning: one bad record must not cut the node off from the others).
pub fn peer_configs(peers: &[MeshPeer]) -> Vec<PeerConfig> {
    peers
        .iter()
        .filter_map(|p| {
            let parsed = (|| {
                anyhow::Ok(PeerConfig {
                    public_key: veil_mesh::decode_key(&p.public_key)?,
                    endpoint: p.endpoint.parse()?,
                    mesh_address: p.address.parse()?,
                })
            })();
            match parsed {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(node = %p.node_id, error = %e, "mesh: peer entry skipped");
                    None
                }
            }
        })
        .collect()
}

/// The status of a running device.
pub fn status(device: &Device, address: Ipv4Addr, rotations: u64) -> MeshStatus {
    let s = device.stats();
    MeshStatus {
        address: address.to_string(),
        public_key: veil_mesh::encode_key(&device.public_key()),
        peers: s.peers,
        handshakes: s.handshakes,
        tx_bytes: s.tx_bytes,
        rx_bytes: s.rx_bytes,
        dropped: s.dropped,
        rotations,
    }
}
