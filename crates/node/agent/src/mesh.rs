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

/// The networks routed to the peer at mesh `address`: with Kubernetes, its slice of the pod
/// network (derived from its address, the same on every node).
pub fn pod_routes(
    cfg: &veil_reference::node_config::AgentConfig,
    address: Ipv4Addr,
) -> Vec<(Ipv4Addr, u8)> {
    let (Some(k), Some(m)) = (&cfg.kubernetes, &cfg.mesh) else {
        return Vec::new();
    };
    m.network()
        .and_then(|net| k.pod_subnet(net, address))
        .map(|r| vec![r])
        .unwrap_or_default()
}

/// The device's peer set from the control plane's (entries that do not parse are skipped
/// with a warning: one bad record must not cut the node off from the others); `routes` gives
/// the networks routed through each peer.
pub fn peer_configs(
    peers: &[MeshPeer],
    routes: impl Fn(Ipv4Addr) -> Vec<(Ipv4Addr, u8)>,
) -> Vec<PeerConfig> {
    peers
        .iter()
        .filter_map(|p| {
            let parsed = (|| {
                let mesh_address: Ipv4Addr = p.address.parse()?;
                anyhow::Ok(PeerConfig {
                    public_key: veil_mesh::decode_key(&p.public_key)?,
                    endpoint: p.endpoint.parse()?,
                    mesh_address,
                    routes: routes(mesh_address),
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
