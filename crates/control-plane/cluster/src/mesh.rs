//! The control plane's side of the mesh: checking a joining node's mesh identity, allocating
//! mesh addresses, and the peer set each node gets (every other node that joined with a mesh
//! key and re-attested within the freshness window — a node that stops re-attesting, or fails
//! to, drops out of everyone's peer set).

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};

use crate::service::NodeRecord;
use veil_wire::proto::{MeshJoin, MeshPeer};

/// What a node's evidence vouches for about its mesh key: SHA-256("veil-mesh-key\0" ‖ key),
/// the attested-TLS context of its connections (see `veil_atls::Attester::context`).
pub fn key_context(public_key: &[u8; 32]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::new()
        .chain_update(veil_wire::ids::MESH_KEY_CONTEXT)
        .chain_update(public_key)
        .finalize()
        .into()
}

/// Checks that the evidence of this connection vouches for `public_key` (base64).
pub fn check_bound(public_key: &str, context: &[u8; 32]) -> Result<(), String> {
    use base64::Engine;
    let key: [u8; 32] = base64::engine::general_purpose::STANDARD
        .decode(public_key.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| format!("public key `{public_key}` is not 32 bytes of base64"))?;
    if key_context(&key) != *context {
        return Err(
            "the mesh key is not the one the node's evidence vouches for (attested-TLS context)"
                .into(),
        );
    }
    Ok(())
}

/// Checks a joining node's mesh key (32 bytes of base64) and endpoint (IPv4:port).
pub fn check_join(m: &MeshJoin) -> Result<(), String> {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(m.public_key.trim())
        .map_err(|e| format!("public key `{}` is not base64: {e}", m.public_key))?;
    if key.len() != 32 {
        return Err(format!(
            "public key: expected 32 bytes, found {}",
            key.len()
        ));
    }
    match m.endpoint.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(_)) => Ok(()),
        Ok(SocketAddr::V6(_)) => Err(format!("endpoint `{}`: IPv6 is not supported", m.endpoint)),
        Err(e) => Err(format!("endpoint `{}`: {e}", m.endpoint)),
    }
}

/// Checks that a joining node's mesh endpoint is on the address it connects from: otherwise
/// it could aim every peer's handshakes at any host.
pub fn check_endpoint_source(m: &MeshJoin, source: std::net::IpAddr) -> Result<(), String> {
    let ep: SocketAddr = m
        .endpoint
        .parse()
        .map_err(|e| format!("endpoint `{}`: {e}", m.endpoint))?;
    if ep.ip() != source {
        return Err(format!(
            "endpoint {ep} is not on the address the node connects from ({source})"
        ));
    }
    Ok(())
}

fn host_range(network: Ipv4Addr, prefix: u8) -> Result<(u32, u32), String> {
    if !(8..=30).contains(&prefix) {
        return Err(format!("mesh prefix /{prefix}: expected /8 to /30"));
    }
    let mask = u32::MAX << (32 - prefix);
    let base = u32::from(network) & mask;
    Ok((base, base | !mask))
}

/// Mesh addresses `.1` to `.16` are the control planes' own (in the order of the cluster's
/// control-plane list); nodes get addresses after them.
pub const CONTROL_PLANE_ADDRESSES: u32 = 16;

/// The mesh address of control plane number `index` (0-based).
pub fn control_plane_address(
    network: Ipv4Addr,
    prefix: u8,
    index: usize,
) -> Result<Ipv4Addr, String> {
    let (base, broadcast) = host_range(network, prefix)?;
    let i = u32::try_from(index)
        .ok()
        .filter(|i| *i < CONTROL_PLANE_ADDRESSES)
        .ok_or_else(|| format!("control plane {index}: at most {CONTROL_PLANE_ADDRESSES}"))?;
    let a = base + 1 + i;
    if a >= broadcast {
        return Err(format!("{network}/{prefix} is too small"));
    }
    Ok(Ipv4Addr::from(a))
}

/// The mesh address of `node_id`: the one it had (a node keeps its address when it joins
/// again), else the lowest free one after the control plane's.
pub fn allocate(
    (network, prefix): (Ipv4Addr, u8),
    nodes: &BTreeMap<String, NodeRecord>,
    node_id: &str,
) -> Result<Ipv4Addr, String> {
    if let Some(m) = nodes.get(node_id).and_then(|n| n.mesh.as_ref()) {
        return Ok(m.address);
    }
    let (base, broadcast) = host_range(network, prefix)?;
    let used: std::collections::HashSet<Ipv4Addr> = nodes
        .values()
        .filter_map(|n| n.mesh.as_ref().map(|m| m.address))
        .collect();
    (base + 1 + CONTROL_PLANE_ADDRESSES..broadcast)
        .map(Ipv4Addr::from)
        .find(|a| !used.contains(a))
        .ok_or_else(|| format!("the mesh network {network}/{prefix} is full"))
}

/// The peer set: `own` (the control plane's node, if in the mesh) and every node with a mesh
/// identity seen since `fresh_since`, except `except`.
pub fn peers(
    own: Option<&crate::service::NodeMesh>,
    nodes: &BTreeMap<String, NodeRecord>,
    last_seen: &HashMap<String, i64>,
    fresh_since: i64,
    except: Option<&str>,
) -> Vec<MeshPeer> {
    let mut out: Vec<MeshPeer> = own
        .map(|m| MeshPeer {
            node_id: "control-plane".into(),
            public_key: m.public_key.clone(),
            endpoint: m.endpoint.clone(),
            address: m.address.to_string(),
        })
        .into_iter()
        .collect();
    for n in nodes.values() {
        let Some(m) = &n.mesh else { continue };
        if Some(n.node_id.as_str()) == except
            || last_seen.get(&n.node_id).is_none_or(|t| *t < fresh_since)
        {
            continue;
        }
        out.push(MeshPeer {
            node_id: n.node_id.clone(),
            public_key: m.public_key.clone(),
            endpoint: m.endpoint.clone(),
            address: m.address.to_string(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::NodeMesh;

    fn node(id: &str, addr: Option<Ipv4Addr>) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            role: "worker".into(),
            ak_spki_sha256: [0; 32],
            ek_cert: vec![],
            join_evidence: vec![],
            set: "s".into(),
            joined_at: veil_attest_core::UnixTime(0),
            mesh: addr.map(|address| NodeMesh {
                public_key: "k".into(),
                endpoint: "10.0.0.1:51820".into(),
                address,
            }),
        }
    }

    #[test]
    fn addresses_are_stable_unique_and_bounded() {
        let net = (Ipv4Addr::new(10, 215, 0, 0), 27);
        let mut nodes = BTreeMap::new();
        let cp = |i| control_plane_address(net.0, net.1, i);
        assert_eq!(cp(0).unwrap(), Ipv4Addr::new(10, 215, 0, 1));
        assert_eq!(cp(2).unwrap(), Ipv4Addr::new(10, 215, 0, 3));
        assert!(cp(16).is_err());
        for i in 0..14 {
            let id = format!("node-{i}");
            let a = allocate(net, &nodes, &id).unwrap();
            assert_eq!(a, Ipv4Addr::new(10, 215, 0, 17 + i));
            nodes.insert(id.clone(), node(&id, Some(a)));
            assert_eq!(allocate(net, &nodes, &id).unwrap(), a, "not stable");
        }
        let e = allocate(net, &nodes, "node-new").unwrap_err();
        assert!(e.contains("full"), "{e}");
        assert!(allocate((net.0, 31), &nodes, "x").is_err());
    }

    #[test]
    fn stale_nodes_and_the_asker_are_not_peers_and_bad_mesh_joins_are_named() {
        let mut nodes = BTreeMap::new();
        nodes.insert("a".to_string(), node("a", Some(Ipv4Addr::new(10, 0, 0, 2))));
        nodes.insert("b".to_string(), node("b", Some(Ipv4Addr::new(10, 0, 0, 3))));
        nodes.insert("c".to_string(), node("c", None));
        let seen = HashMap::from([("a".to_string(), 100), ("b".to_string(), 50)]);
        let p = peers(None, &nodes, &seen, 90, None);
        assert_eq!(
            p.iter().map(|p| p.node_id.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert!(peers(None, &nodes, &seen, 90, Some("a")).is_empty());
        let bad = |k: &str, e: &str| {
            check_join(&MeshJoin {
                public_key: k.into(),
                endpoint: e.into(),
            })
            .unwrap_err()
        };
        let good_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        assert!(bad("zz", "1.2.3.4:5").contains("not base64"));
        assert!(bad("AAAA", "1.2.3.4:5").contains("expected 32 bytes, found 3"));
        assert!(bad(good_key, "nowhere").contains("endpoint `nowhere`"));
        assert!(bad(good_key, "[::1]:5").contains("IPv6"));
    }
}
