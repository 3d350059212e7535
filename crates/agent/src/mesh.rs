//! The node's side of the mesh: its WireGuard key (made here, never leaving), its device, strict
//! mode, and turning the control plane's peer set into the device's.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use veil_cluster::proto::{MeshJoin, MeshPeer};
use veil_mesh::{Device, DeviceConfig, MeshKey, PeerConfig, StrictPolicy};
use veil_reference::node_config::{MeshSettings, cidr};

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

/// What a node does with its mesh settings.
pub trait MeshRuntime {
    fn apply_strict(&self, wireguard_port: u16) -> anyhow::Result<()>;
    fn endpoint(&self) -> anyhow::Result<SocketAddr>;
    fn join(&self, key: &MeshKey) -> MeshJoin;
    fn start(&self, key: MeshKey, address: Ipv4Addr) -> anyhow::Result<Device>;
}

impl MeshRuntime for MeshSettings {
    fn apply_strict(&self, wireguard_port: u16) -> anyhow::Result<()> {
        let Some(s) = &self.strict else {
            return Ok(());
        };
        let (lan, prefix) = cidr(&s.lan)
            .map_err(anyhow::Error::msg)
            .context("strict mode LAN")?;
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

    fn endpoint(&self) -> anyhow::Result<SocketAddr> {
        self.endpoint
            .parse()
            .with_context(|| format!("mesh endpoint `{}`", self.endpoint))
    }

    fn join(&self, key: &MeshKey) -> MeshJoin {
        MeshJoin {
            public_key: key.public_base64(),
            endpoint: self.endpoint.clone(),
        }
    }

    fn start(&self, key: MeshKey, address: Ipv4Addr) -> anyhow::Result<Device> {
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
