//! The status file a node agent writes (`status.json`, no secrets), which `veil mini status`
//! and the tests read.

use serde::{Deserialize, Serialize};

/// What the agent reports about itself.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Node name.
    pub name: String,
    /// Role.
    pub role: String,
    /// `starting`, `awaiting-init`, `serving`, `joined`, `refused`...
    pub phase: String,
    /// Node ID once joined.
    pub node_id: Option<String>,
    /// Cluster ID once known.
    pub cluster_id: Option<String>,
    /// Last error, if any.
    pub error: Option<String>,
    /// Times the node re-attested and fetched its key.
    pub key_fetches: u64,
    /// Key check value of the state key (first 8 bytes of its SHA-256): shows the key is the
    /// same after recovery without revealing it.
    pub key_check: Option<String>,
    /// The node's mesh device, once up.
    #[serde(default)]
    pub mesh: Option<MeshStatus>,
    /// The Kubernetes components the agent supervises, by name.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub components: std::collections::BTreeMap<String, ComponentStatus>,
}

/// What the status file says of one supervised component.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ComponentStatus {
    /// Its PID while it runs.
    pub pid: Option<u32>,
    /// How often it was restarted.
    pub restarts: u32,
    /// Why it last stopped or could not start.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Refused to start: its binary is not the measured one.
    #[serde(default)]
    pub refused: bool,
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
