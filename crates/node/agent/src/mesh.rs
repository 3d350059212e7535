//! The node's side of the mesh: its WireGuard key (made here, never leaving), its device, strict
//! mode, and turning the control plane's peer set into the device's.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Context;
use veil_mesh::{Device, DeviceConfig, MeshKey, PeerConfig, StrictPolicy};
use veil_reference::node_config::{MeshSettings, cidr};
use veil_wire::proto::{MeshJoin, MeshPeer};
use veil_wire::status::MeshStatus;

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
