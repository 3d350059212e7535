//! The control plane: one attested-TLS listener serving the owner (init, recover, approvals,
//! reports, commands) and the nodes (join, keys, mesh). Every operation names who may call it
//! and checks it; every secret it releases goes over a connection whose peer it has just
//! appraised, and is logged as an audit event (never the value); every refusal is kept in the
//! signed report until the owner acknowledges it.
//!
//! One handler per request, in the submodules: [`owner_ops`] (the owner's signed commands),
//! [`join`] (join and activation), [`nodes`] (keys and the mesh for joined nodes), [`tpm_ops`]
//! (this node's own TPM endorsement). The state lock is never held across TPM or network I/O.

// A handler's refusal is the response itself, sent once per request: not worth boxing.
#![allow(clippy::result_large_err)]

mod appraise;
mod cas_ops;
mod join;
mod nodes;
mod owner_ops;
pub mod refusals;
mod tpm_ops;
pub mod volumes;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use veil_atls::{Identity, read_frame, server_optional, write_frame};
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;
use veil_attest_core::x509::Certificate;
use veil_keys::{ClusterId, ClusterSecrets, SecretBytes};
use veil_node_attest::TpmAttester;
use veil_reference::ReferenceValues;

use crate::ca::{ClusterCa, NodeIdentity};
use veil_appraisal::owner::{Approvals, SignedApprovals};
use veil_client::clock::now;
use veil_wire::proto::{MeshPeer, Request, Response};

use appraise::{AnyRole, Appraised};
pub use nodes::{KUBE_CREDENTIAL_VALIDITY, KUBE_SERVING_VALIDITY};
pub use refusals::{Refusal, Refusals};
pub use tpm_ops::MAX_ACTIVATIONS_PER_SECOND;

/// The node certificate last verified on a connection (verified once per connection).
type CertCache = Option<(Vec<u8>, NodeIdentity)>;

/// How long an attested connection may stay silent between requests.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections served at once, in all and from one source address.
pub const MAX_CONNECTIONS: usize = 1024;
/// See [`MAX_CONNECTIONS`].
pub const MAX_CONNECTIONS_PER_SOURCE: usize = 64;

/// What the control plane trusts.
#[derive(Clone, Debug)]
pub struct Trust {
    /// Signed (and verified) reference values.
    pub reference: ReferenceValues,
    /// Accepted TPM manufacturer roots.
    pub ek_roots: Vec<Certificate>,
    /// Intermediates for EK certificates.
    pub ek_intermediates: Vec<Certificate>,
    /// Whether these roots are a local software CA (`veil mini`): TPMs they endorse are
    /// accepted only if the reference values say `insecure_local_roots: true`.
    pub local_roots: bool,
    /// The owner's public key (SubjectPublicKeyInfo, DER or PEM), from the node's measured
    /// configuration: only what it signs initialises, recovers, approves or commands this
    /// control plane.
    pub owner_key: Vec<u8>,
}

/// A node the control plane admitted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeRecord {
    /// Node ID (from its EK certificate).
    pub node_id: String,
    /// Role.
    pub role: String,
    /// SHA-256 of its AK SPKI.
    pub ak_spki_sha256: [u8; 32],
    /// Its EK certificate (DER): the TPM the owner approved.
    #[serde(default, with = "veil_attest_core::bytes::hex_vec")]
    pub ek_cert: Vec<u8>,
    /// The evidence appraised when it joined.
    #[serde(with = "veil_attest_core::bytes::hex_vec")]
    pub join_evidence: Vec<u8>,
    /// The reference-value set it matched.
    pub set: String,
    /// When it joined.
    pub joined_at: UnixTime,
    /// Its place in the mesh, if it joined with a mesh key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<NodeMesh>,
}

/// A node's mesh identity, as the control plane recorded it at join.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeMesh {
    /// WireGuard public key (base64).
    pub public_key: String,
    /// Where its mesh device listens.
    pub endpoint: String,
    /// Its mesh address.
    pub address: std::net::Ipv4Addr,
}

/// How long a node stays in others' peer sets after it last re-attested.
const MESH_FRESH_SECS: i64 = 10;

#[derive(Debug)]
struct Pending {
    node_id: String,
    role: String,
    secret: [u8; 32],
    node_key: Vec<u8>,
    ek_cert: Vec<u8>,
    mesh: Option<(String, String)>,
}

/// The owner's approval list as held: parsed, and as signed.
#[derive(Clone, Debug)]
struct HeldApprovals {
    list: Approvals,
    signed: SignedApprovals,
}

#[derive(Debug, Default)]
struct State {
    secrets: Option<ClusterSecrets>,
    /// The cluster CA, derived from the secrets when they arrive.
    ca: Option<Arc<ClusterCa>>,
    /// Kubernetes' PKI, derived from the secrets when they arrive.
    kube: Option<Arc<veil_kube::pki::KubePki>>,
    /// The API server this node runs, for the report.
    kube_api: Option<veil_wire::report::ReportedKubeApi>,
    /// Every refusal not yet acknowledged by the owner.
    refusals: Refusals,
    cluster_id: Option<ClusterId>,
    /// Whether this boot's cluster PCR holds the cluster ID.
    pcr_bound: bool,
    nodes: BTreeMap<String, NodeRecord>,
    pending: HashMap<[u8; 32], Pending>,
    /// The owner's approval list.
    approvals: Option<HeldApprovals>,
    /// The mesh network (addresses are allocated in it) and this control plane's own place.
    mesh_net: Option<(std::net::Ipv4Addr, u8)>,
    own_mesh: Option<NodeMesh>,
    /// When each node last re-attested successfully (seconds since the epoch).
    last_seen: HashMap<String, i64>,
    /// Nodes the owner removed: never served again, never admitted again.
    removed: std::collections::BTreeSet<String>,
    /// Nodes the owner asked to rotate their mesh keys.
    rotate: std::collections::HashSet<String>,
    /// The peers other control planes serve (their own node and the nodes they admitted),
    /// and when they were fetched.
    foreign: Vec<MeshPeer>,
    foreign_at: i64,
    /// Connections open per source address.
    open: HashMap<std::net::IpAddr, usize>,
    /// Snapshots of the public state taken for the state file.
    persist_seq: u64,
    /// When refusals were last written because of a refusal (seconds since the epoch).
    refusals_written_at: i64,
    /// Whether the state changed since it was last written.
    unwritten: bool,
    /// Persistent volumes: their attachments and anchors.
    volumes: volumes::Volumes,
}

impl State {
    /// The peer set for `asker` (or this control plane's own node): its own entry, its fresh
    /// nodes, and what the other control planes serve, without the asker, removed nodes or
    /// addresses seen twice.
    fn peer_set(&self, asker: Option<&str>) -> Vec<MeshPeer> {
        let own = if asker.is_some() {
            self.own_mesh.as_ref()
        } else {
            None
        };
        let mut out = crate::mesh::peers(
            own,
            &self.nodes,
            &self.last_seen,
            now().0 - MESH_FRESH_SECS,
            asker,
        );
        if self.foreign_at >= now().0 - MESH_FRESH_SECS {
            let mine = self.own_mesh.as_ref().map(|m| m.address.to_string());
            for p in &self.foreign {
                if Some(p.node_id.as_str()) == asker
                    || self.removed.contains(&p.node_id)
                    || Some(&p.address) == mine.as_ref()
                    || out.iter().any(|q| q.address == p.address)
                {
                    continue;
                }
                out.push(p.clone());
            }
        }
        out
    }

    /// Takes the cluster's secrets (at init, recovery, or from a peer control plane).
    fn hold(&mut self, secrets: ClusterSecrets) -> Result<(), String> {
        self.ca = Some(Arc::new(ClusterCa::derive(&secrets)?));
        self.kube = Some(Arc::new(
            veil_kube::pki::KubePki::derive(&secrets).map_err(|e| e.to_string())?,
        ));
        self.secrets = Some(secrets);
        Ok(())
    }

    /// Takes an approval list the owner signed for this cluster, unless it is older than the
    /// one held (a replayed list must not bring back a revoked approval).
    fn take_approvals(
        &mut self,
        owner_key: &[u8],
        signed: SignedApprovals,
    ) -> Result<u64, ApprovalsRefused> {
        let cid = self
            .cluster_id
            .ok_or_else(|| ApprovalsRefused::Invalid("the cluster is not initialised".into()))?
            .to_string();
        let list = veil_appraisal::owner::verify_approvals(&signed, owner_key, &cid)
            .map_err(|e| ApprovalsRefused::Invalid(e.to_string()))?;
        if let Some(held) = &self.approvals
            && held.list.serial > list.serial
        {
            return Err(ApprovalsRefused::Older {
                offered: list.serial,
                held: held.list.serial,
            });
        }
        let serial = list.serial;
        self.approvals = Some(HeldApprovals { list, signed });
        Ok(serial)
    }
}

/// Why an approval list was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum ApprovalsRefused {
    /// Not the owner's, not for this cluster, or not a list.
    #[error("{0}")]
    Invalid(String),
    /// The owner's, but older than the one held (a replay must not bring back an approval).
    #[error("approvals: serial {offered} is older than the list held (serial {held})")]
    Older {
        /// The list offered.
        offered: u64,
        /// The list held.
        held: u64,
    },
}

/// What survives a restart: public state only (never the master secret).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Persisted {
    cluster_id: String,
    nodes: Vec<NodeRecord>,
    #[serde(default)]
    removed: Vec<String>,
    #[serde(default)]
    approvals: Option<SignedApprovals>,
    #[serde(default)]
    refusals: Refusals,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    volumes: volumes::Volumes,
}

/// Counters exported in the Prometheus text format.
#[derive(Debug, Default)]
struct Metrics {
    connections: std::sync::atomic::AtomicU64,
    connections_refused: std::sync::atomic::AtomicU64,
    connections_shed: std::sync::atomic::AtomicU64,
    joins: std::sync::atomic::AtomicU64,
    keys_released: std::sync::atomic::AtomicU64,
    requests_refused: std::sync::atomic::AtomicU64,
    reports: std::sync::atomic::AtomicU64,
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Metrics `(name, help, kind, value)` in the Prometheus text exposition format.
pub fn prometheus_text(metrics: &[(&str, &str, &str, u64)]) -> String {
    metrics
        .iter()
        .map(|(name, help, kind, value)| {
            format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n")
        })
        .collect()
}

fn unavailable(reason: impl Into<String>) -> Response {
    Response::Unavailable {
        reason: reason.into(),
    }
}

fn refused(reason: impl Into<String>) -> Response {
    Response::Refused {
        reason: reason.into(),
    }
}

fn secrets_from(master: &str, salt: &str) -> Result<ClusterSecrets, String> {
    let mut m = decode_hex(master).map_err(|e| format!("master: {e}"))?;
    let salt: [u8; 32] = decode_hex(salt)
        .map_err(|e| format!("salt: {e}"))?
        .try_into()
        .map_err(|_| "salt: expected 32 bytes".to_string())?;
    let master = SecretBytes::from_slice("master secret", &mut m).map_err(|e| e.to_string())?;
    Ok(ClusterSecrets::new(master, salt))
}

use veil_appraisal::endorsement::{check_signer_under_ek, node_id, spki_sha256};

/// Who is calling, on one connection.
struct Caller<'a> {
    /// The appraised evidence of the connection (`None`: the caller did not attest).
    peer: Option<&'a Appraised>,
    /// Its address.
    source: std::net::IpAddr,
    cert_cache: CertCache,
    /// Whether this connection already had a credential activated.
    proved: bool,
}

impl Caller<'_> {
    fn ak_hex(&self) -> Option<String> {
        self.peer.map(|p| hex::encode(p.claims.ak_spki_sha256))
    }
}

/// The operation a request asks for, as refusals name it.
fn op(req: &Request) -> &'static str {
    match req {
        Request::Init { .. } => "init",
        Request::Recover { .. } => "recover",
        Request::Approve { .. } => "approve",
        Request::Approvals => "approvals",
        Request::AckRefusals { .. } => "ack-refusals",
        Request::Join { .. } => "join",
        Request::Activate { .. } => "activate",
        Request::Endorsement { .. } => "endorsement",
        Request::ProveTpm { .. } => "prove",
        Request::ClusterReport { .. } => "report",
        Request::RemoveNode { .. } => "remove",
        Request::RotateMeshKey { .. } => "rotate",
        Request::MeshRekey { .. } => "rekey",
        Request::MeshPeers { .. } => "mesh",
        Request::GetKey { .. } => "get_key",
        Request::KubeCredentials { .. } => "kube_credentials",
        Request::VolumeKey { .. } => "volume_key",
        Request::VolumeAnchor { .. } => "volume_anchor",
        Request::ReportRefusal { .. } => "report_refusal",
        Request::Cas { .. } => "cas",
    }
}

/// The control-plane services of one node.
#[derive(Debug)]
pub struct ControlPlane {
    trust: Trust,
    attester: Arc<TpmAttester>,
    state: Mutex<State>,
    state_file: Option<std::path::PathBuf>,
    /// Where the state lives once this control plane's encrypted state volume is mounted
    /// ([`ControlPlane::seal_state`]); `Some(None)` while it is not yet: the host's file then
    /// holds only the cluster ID, and nothing else of it is read.
    sealed: Option<Mutex<Option<std::path::PathBuf>>>,
    metrics: Metrics,
    /// Serialises the owner's init and recovery (which extend the cluster PCR).
    owner_ops: Mutex<()>,
    /// Credential activations in the current second.
    activations: Mutex<(i64, u32)>,
    /// This node's TPM endorsement (EK certificate, EK, AK), read once.
    endorsement: std::sync::OnceLock<tpm_ops::Endorsement>,
    /// The number of the snapshot last written to the state file.
    persisted: Mutex<u64>,
    /// How long the Kubernetes client credentials issued to workers last.
    kube_credential_validity: std::time::Duration,
    /// How long the kubelet serving certificates issued to workers last.
    kube_serving_validity: std::time::Duration,
    /// The Configuration and Attestation Service, once opened.
    cas: Mutex<Option<Arc<veil_cas::service::Cas>>>,
}

impl ControlPlane {
    /// A control plane that awaits `veil init`, attesting with `attester`.
    pub fn new(trust: Trust, attester: Arc<TpmAttester>) -> Self {
        Self {
            trust,
            attester,
            state: Mutex::new(State::default()),
            state_file: None,
            sealed: None,
            metrics: Metrics::default(),
            owner_ops: Mutex::new(()),
            activations: Mutex::new((0, 0)),
            endorsement: std::sync::OnceLock::new(),
            persisted: Mutex::new(0),
            kube_credential_validity: KUBE_CREDENTIAL_VALIDITY,
            kube_serving_validity: KUBE_SERVING_VALIDITY,
            cas: Mutex::new(None),
        }
    }

    /// Issues workers Kubernetes client credentials that last `client` and kubelet serving
    /// certificates that last `serving` (instead of [`KUBE_CREDENTIAL_VALIDITY`] and
    /// [`KUBE_SERVING_VALIDITY`]).
    pub fn with_kube_validity(
        mut self,
        client: std::time::Duration,
        serving: std::time::Duration,
    ) -> Self {
        self.kube_credential_validity = client;
        self.kube_serving_validity = serving;
        self
    }

    /// A control plane that keeps its public state (cluster ID, admitted nodes, the owner's
    /// approvals, refusals) in `state_file`: after a restart it knows its cluster and awaits
    /// `veil recover` or a peer.
    ///
    /// With `sealed`, the node keeps its state on its encrypted state volume: only the
    /// cluster ID is read from (and written to) `state_file`, which the host can change or
    /// roll back; the rest waits for [`ControlPlane::seal_state`].
    pub fn with_state_file(
        trust: Trust,
        attester: Arc<TpmAttester>,
        state_file: std::path::PathBuf,
        sealed: bool,
    ) -> Result<Self, String> {
        let cp = Self {
            state_file: Some(state_file.clone()),
            sealed: sealed.then(|| Mutex::new(None)),
            ..Self::new(trust, attester)
        };
        if let Ok(body) = std::fs::read(&state_file) {
            let p: Persisted = serde_json::from_slice(&body)
                .map_err(|e| format!("{}: {e}", state_file.display()))?;
            let cid = cluster_id_of(&p, &state_file)?;
            if sealed {
                cp.lock_state()?.cluster_id = Some(cid);
                tracing::info!(event = "restarted", cluster_id = %p.cluster_id, "awaiting recovery; the rest of the state is on the state volume");
                return Ok(cp);
            }
            let mut st = cp.lock_state()?;
            st.cluster_id = Some(cid);
            st.nodes = p
                .nodes
                .into_iter()
                .map(|n| (n.node_id.clone(), n))
                .collect();
            st.removed = p.removed.into_iter().collect();
            st.refusals = p.refusals;
            st.volumes = p.volumes;
            // The file is the host's to change: the approvals count only as the owner signed them.
            if let Some(a) = p.approvals
                && let Err(e) = st.take_approvals(&cp.trust.owner_key, a)
            {
                tracing::error!(event = "approvals_refused", reason = %e, "persisted approvals dropped");
            }
            drop(st);
            tracing::info!(event = "restarted", cluster_id = %p.cluster_id, "awaiting recovery");
        }
        Ok(cp)
    }

    fn lock_state(&self) -> Result<MutexGuard<'_, State>, String> {
        self.state
            .lock()
            .map_err(|_| "internal error: state lock poisoned".to_string())
    }

    /// Writes the public state to the state file, after releasing the state lock: the
    /// snapshot is taken under it (numbered), the file written under a lock of its own, and
    /// a snapshot older than the one on disk is never written over it.
    /// Moves this control plane's state onto its encrypted state volume, to `path` there:
    /// what the volume held (from before a restart) is merged with what this run learnt, and
    /// from now on every change is written there (synced) while the host's file keeps only
    /// the cluster ID. Removed nodes, refusals and volumes' anchors and attachments are then
    /// beyond the host's reach: it can neither edit nor roll them back (the volume is
    /// authenticated and anchored in the TPM).
    pub fn seal_state(&self, path: std::path::PathBuf) -> Result<(), String> {
        let Some(sealed) = &self.sealed else {
            return Err("this control plane keeps its state in the host's file".into());
        };
        let held = match std::fs::read(&path) {
            Ok(body) => Some(
                serde_json::from_slice::<Persisted>(&body)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let mut st = self.lock_state()?;
        if let Some(p) = held {
            let cid = cluster_id_of(&p, &path)?;
            if st.cluster_id.is_some_and(|c| c != cid) {
                return Err(format!(
                    "{} holds the state of cluster {}, this control plane serves {}",
                    path.display(),
                    p.cluster_id,
                    st.cluster_id.map(|c| c.to_string()).unwrap_or_default()
                ));
            }
            st.cluster_id = Some(cid);
            for n in p.nodes {
                st.nodes.entry(n.node_id.clone()).or_insert(n);
            }
            st.removed.extend(p.removed);
            st.refusals.merge(p.refusals);
            for (id, v) in p.volumes {
                st.volumes.entry(id).or_insert(v);
            }
            if let Some(a) = p.approvals
                && let Err(e) = st.take_approvals(&self.trust.owner_key, a)
            {
                tracing::warn!(event = "approvals_refused", reason = %e, "sealed approvals not taken");
            }
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        if let Ok(mut s) = sealed.lock() {
            *s = Some(path.clone());
        }
        tracing::info!(event = "state_sealed", file = %path.display(), nodes = st.nodes.len(), volumes = st.volumes.len());
        self.persist(st);
        Ok(())
    }

    /// Stops writing the state to the state volume (it is being unmounted); changes from now
    /// on are kept in memory only until the next [`ControlPlane::seal_state`].
    pub fn unseal_state(&self) {
        if let Some(Ok(mut s)) = self.sealed.as_ref().map(Mutex::lock) {
            *s = None;
            // The CAS keeps its files on the volume: closed (its log's writer joined), so the
            // volume can go; it opens again where the state is next sealed.
            if let Ok(mut cas) = self.cas.lock() {
                *cas = None;
            }
        }
    }

    fn persist(&self, mut st: MutexGuard<'_, State>) {
        let (Some(host_file), Some(cid)) = (&self.state_file, st.cluster_id) else {
            return;
        };
        // Sealed: the whole state to the volume, the cluster ID alone to the host's file.
        let sealed_to = match &self.sealed {
            None => None,
            Some(m) => match m.lock().ok().and_then(|p| p.clone()) {
                Some(p) => Some(p),
                None => {
                    // Not mounted yet: only the ID reaches the host.
                    drop(st);
                    write_state(host_file, &id_only(cid), false);
                    return;
                }
            },
        };
        st.persist_seq += 1;
        st.unwritten = false;
        let seq = st.persist_seq;
        let p = Persisted {
            cluster_id: cid.to_string(),
            nodes: st.nodes.values().cloned().collect(),
            removed: st.removed.iter().cloned().collect(),
            approvals: st.approvals.as_ref().map(|a| a.signed.clone()),
            refusals: st.refusals.clone(),
            volumes: st.volumes.clone(),
        };
        drop(st);
        let Ok(mut written) = self.persisted.lock() else {
            return;
        };
        if *written >= seq {
            return;
        }
        let done = match &sealed_to {
            Some(path) => {
                write_state(path, &p, true) && write_state(host_file, &id_only(cid), false)
            }
            None => write_state(host_file, &p, false),
        };
        if done {
            *written = seq;
        }
    }

    /// Records a refusal (in the report, and on disk once the cluster exists).
    /// A new kind of refusal is written at once; a repeated one at most once a second (and
    /// at the next [`ControlPlane::flush`]), so a flood of refusals is not a flood of writes.
    fn refuse(&self, source: &str, ak: Option<String>, kind: &str, reason: &str) {
        if let Ok(mut st) = self.state.lock() {
            let t = now().0;
            let new = st.refusals.record(source, ak, kind, reason, t);
            if new || st.refusals_written_at < t {
                st.refusals_written_at = t;
                self.persist(st);
            } else {
                st.unwritten = true;
            }
        }
    }

    /// Writes what the state file does not hold yet (refusal counts held back by
    /// [`ControlPlane::refuse`]); the agent calls it several times a second.
    pub fn flush(&self) {
        if let Ok(st) = self.state.lock()
            && st.unwritten
        {
            self.persist(st);
        }
    }

    /// Metrics in the Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        let mut text = self.cluster_metrics();
        // The CAS opens on first use: a call, a report, or this.
        let cas = self.cas().ok();
        let c = cas.as_ref().map(|c| c.counters()).unwrap_or_default();
        text.push_str(&prometheus_text(&[
            (
                "veil_cas_open",
                "1 while this control plane's CAS is open (secrets held, state volume mounted).",
                "gauge",
                u64::from(cas.is_some()),
            ),
            (
                "veil_cas_releases_total",
                "Configurations the CAS released to attested workloads.",
                "counter",
                c.releases,
            ),
            (
                "veil_cas_releases_refused_total",
                "Workloads' requests the CAS refused.",
                "counter",
                c.releases_refused,
            ),
            (
                "veil_cas_sessions_written_total",
                "Sessions created or updated.",
                "counter",
                c.sessions_written,
            ),
            (
                "veil_cas_refused_total",
                "Requests the CAS refused (releases included).",
                "counter",
                c.refused,
            ),
            (
                "veil_cas_audit_failures_total",
                "Decisions the audit log could not record (none of them took effect).",
                "counter",
                c.audit_failures,
            ),
            (
                "veil_cas_audit_log_entries",
                "Entries in this control plane's CAS audit log.",
                "gauge",
                c.log_entries,
            ),
        ]));
        text
    }

    fn cluster_metrics(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        let (nodes, initialised, awaiting, refusals) = self
            .state
            .lock()
            .map(|s| {
                (
                    s.nodes.len(),
                    s.cluster_id.is_some(),
                    s.cluster_id.is_some() && s.secrets.is_none(),
                    s.refusals.entries().len(),
                )
            })
            .unwrap_or_default();
        prometheus_text(&[
            (
                "veil_connections_total",
                "Attested connections accepted.",
                "counter",
                m.connections.load(Relaxed),
            ),
            (
                "veil_connections_refused_total",
                "Connections whose evidence was refused.",
                "counter",
                m.connections_refused.load(Relaxed),
            ),
            (
                "veil_connections_shed_total",
                "Connections closed at once: too many open, in all or from their source.",
                "counter",
                m.connections_shed.load(Relaxed),
            ),
            (
                "veil_joins_total",
                "Nodes admitted.",
                "counter",
                m.joins.load(Relaxed),
            ),
            (
                "veil_keys_released_total",
                "Keys released to attested nodes.",
                "counter",
                m.keys_released.load(Relaxed),
            ),
            (
                "veil_requests_refused_total",
                "Requests refused.",
                "counter",
                m.requests_refused.load(Relaxed),
            ),
            (
                "veil_cluster_reports_total",
                "Cluster attestation reports signed.",
                "counter",
                m.reports.load(Relaxed),
            ),
            ("veil_nodes", "Admitted nodes.", "gauge", nodes as u64),
            (
                "veil_refusals_unacknowledged",
                "Kinds of refusal (per source) the owner has not acknowledged.",
                "gauge",
                refusals as u64,
            ),
            (
                "veil_cluster_initialised",
                "1 once the cluster has an ID.",
                "gauge",
                u64::from(initialised),
            ),
            (
                "veil_awaiting_recovery",
                "1 while the master secret is missing.",
                "gauge",
                u64::from(awaiting),
            ),
        ])
    }

    /// The cluster ID, once initialised.
    pub fn cluster_id(&self) -> Option<ClusterId> {
        self.state.lock().ok().and_then(|s| s.cluster_id)
    }

    /// The admitted nodes.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.state
            .lock()
            .map(|s| s.nodes.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Records the Kubernetes API server this node runs (its serving certificate), which its
    /// signed reports name from now on; `None` when it stops.
    pub fn set_kube_api(&self, api: Option<veil_wire::report::ReportedKubeApi>) {
        if let Ok(mut s) = self.state.lock() {
            s.kube_api = api;
        }
    }

    /// The nodes the owner removed.
    pub fn removed_nodes(&self) -> std::collections::BTreeSet<String> {
        self.state
            .lock()
            .map(|s| s.removed.clone())
            .unwrap_or_default()
    }

    /// Records what this control-plane node refused of its own (its state volume altered or
    /// rolled back): a refusal in the cluster report.
    pub fn record_own_refusal(&self, kind: &str, reason: &str) {
        tracing::error!(event = "own_refusal", kind, reason);
        self.refuse("control-plane", None, kind, &format!("{kind}: {reason}"));
    }

    /// The refusals not yet acknowledged.
    pub fn refusals(&self) -> Vec<Refusal> {
        self.state
            .lock()
            .map(|s| s.refusals.entries().to_vec())
            .unwrap_or_default()
    }

    /// Forgets the master secret, as a restart does (the cluster ID and node records are
    /// public state that survives); keys are released again only after `veil recover`.
    pub fn forget_secrets(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.secrets = None;
            s.ca = None;
            s.kube = None;
            s.pending.clear();
        }
    }

    /// Takes the cluster's secrets, and the owner's approvals, from a peer control-plane node
    /// this node has just joined (its cluster PCR already holds the cluster ID). Refused if
    /// this node already serves, or remembers another cluster.
    pub fn adopt(
        &self,
        secrets: ClusterSecrets,
        approvals: SignedApprovals,
    ) -> Result<ClusterId, String> {
        let mut st = self.lock_state()?;
        if st.secrets.is_some() {
            return Err("this control plane already holds the cluster's secrets".into());
        }
        let cid = secrets.cluster_id().map_err(|e| e.to_string())?;
        if let Some(mine) = st.cluster_id
            && mine != cid
        {
            return Err(format!(
                "the peer's secrets are for cluster {cid}; this node belongs to cluster {mine}"
            ));
        }
        let before = st.cluster_id;
        st.cluster_id = Some(cid);
        if let Err(e) = st.take_approvals(&self.trust.owner_key, approvals) {
            // An older list than ours is fine (ours stays); one the owner did not sign is not.
            if !matches!(e, ApprovalsRefused::Older { .. }) {
                st.cluster_id = before;
                return Err(format!("the peer's approvals: {e}"));
            }
        }
        st.hold(secrets)?;
        st.pcr_bound = true;
        self.persist(st);
        tracing::info!(event = "secrets_from_peer", cluster_id = %cid);
        Ok(cid)
    }

    /// Takes an approval list a peer control plane holds, if the owner signed it for this
    /// cluster and it is newer than the one held (lists are never taken back to older ones).
    pub fn offer_approvals(&self, signed: SignedApprovals) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if st
            .approvals
            .as_ref()
            .is_some_and(|a| a.signed.document == signed.document)
        {
            return;
        }
        match st.take_approvals(&self.trust.owner_key, signed) {
            Ok(serial) => {
                tracing::info!(event = "approvals_updated", serial, from = "peer");
                self.persist(st);
            }
            Err(e) => tracing::debug!(reason = %e, "a peer's approval list not taken"),
        }
    }

    /// Puts this control plane's own node in the mesh: addresses are allocated in
    /// `network/prefix`, and this node, number `index` in the cluster's control-plane list,
    /// takes `.(1 + index)`. Returns its address.
    pub fn enable_mesh(
        &self,
        (network, prefix): (std::net::Ipv4Addr, u8),
        index: usize,
        public_key: String,
        endpoint: String,
    ) -> Result<std::net::Ipv4Addr, String> {
        let address = crate::mesh::control_plane_address(network, prefix, index)?;
        let mut st = self.lock_state()?;
        st.mesh_net = Some((network, prefix));
        st.own_mesh = Some(NodeMesh {
            public_key,
            endpoint,
            address,
        });
        Ok(address)
    }

    /// Records this control plane's own new mesh key (after its device rotated it).
    pub fn set_own_mesh_key(&self, public_key: String) {
        if let Ok(mut st) = self.state.lock()
            && let Some(m) = st.own_mesh.as_mut()
        {
            m.public_key = public_key;
        }
    }

    /// The mesh peers of this control plane's own node: every node that joined with a mesh
    /// key and re-attested recently.
    pub fn own_mesh_peers(&self) -> Vec<MeshPeer> {
        self.state
            .lock()
            .map(|st| st.peer_set(None))
            .unwrap_or_default()
    }

    /// Records what the other control planes serve (their own node and their nodes), so that
    /// every node's peer set spans the whole cluster.
    pub fn set_foreign_peers(&self, peers: Vec<MeshPeer>) {
        if let Ok(mut st) = self.state.lock() {
            st.foreign = peers;
            st.foreign_at = now().0;
        }
    }

    /// A node certificate for this control plane's own node (its node ID from its EK
    /// certificate, role control-plane, its AK), certifying `node_key` (SPKI DER): what it
    /// shows other control planes of the cluster.
    pub fn own_certificate(&self, node_key: &[u8]) -> Result<Vec<u8>, String> {
        let e = self.own_endorsement()?;
        let cert =
            Certificate::from_der(&e.ek_cert, "EK certificate").map_err(|e| e.to_string())?;
        let ak = veil_attest_tpm::Public::parse(&e.ak_public).map_err(|e| e.to_string())?;
        let spki = ak.key.spki_der().map_err(|e| e.to_string())?;
        let ca = self
            .lock_state()?
            .ca
            .clone()
            .ok_or("this control plane awaits recovery")?;
        ca.issue(
            &NodeIdentity {
                node_id: node_id(&cert),
                role: "control-plane".into(),
                ak_spki_sha256: spki_sha256(&spki),
            },
            node_key,
        )
    }

    /// The cluster's secrets, for the services this control-plane node runs for the cluster on
    /// its own node (Kubernetes' PKI and the KMS plugin's key); `None` until it holds them.
    /// They never leave the node through this: only through init, recovery and a peer's join.
    pub fn local_secrets(&self) -> Option<ClusterSecrets> {
        self.state.lock().ok().and_then(|s| s.secrets.clone())
    }

    /// Whether this control plane holds the cluster's secrets (it can serve keys).
    pub fn serving(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.secrets.is_some())
    }

    /// Serves connections on `listener` until the task is dropped: at most
    /// [`MAX_CONNECTIONS`] at once and [`MAX_CONNECTIONS_PER_SOURCE`] from one address; a
    /// failing accept (file descriptors exhausted) backs off instead of spinning.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let id = match Identity::generate() {
            Ok(id) => Arc::new(id),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a TLS identity");
                return;
            }
        };
        let mut backoff = Duration::from_millis(10);
        loop {
            let (sock, peer) = match listener.accept().await {
                Ok(v) => {
                    backoff = Duration::from_millis(10);
                    v
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            };
            let slot = match self.admit(peer.ip()) {
                Ok(slot) => slot,
                Err(reason) => {
                    bump(&self.metrics.connections_shed);
                    drop(sock);
                    tracing::warn!(event = "connection_refused", source = %peer.ip(), kind = "limit", %reason);
                    self.refuse(&peer.ip().to_string(), None, "limit", &reason);
                    continue;
                }
            };
            let _ = sock.set_nodelay(true);
            let (cp, id) = (self.clone(), id.clone());
            tokio::spawn(async move {
                if let Err(e) = cp.connection(sock, peer.ip(), &id).await {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
                drop(slot);
            });
        }
    }

    /// A connection slot for `source`, if it may have one.
    fn admit(self: &Arc<Self>, source: std::net::IpAddr) -> Result<Slot, String> {
        let mut st = self.lock_state()?;
        let mine = st.open.get(&source).copied().unwrap_or(0);
        if mine >= MAX_CONNECTIONS_PER_SOURCE {
            return Err(format!(
                "connection shed: {mine} connections open from this address (at most {MAX_CONNECTIONS_PER_SOURCE})"
            ));
        }
        let total: usize = st.open.values().sum();
        if total >= MAX_CONNECTIONS {
            return Err(format!(
                "connection shed: {total} connections open in all (at most {MAX_CONNECTIONS})"
            ));
        }
        *st.open.entry(source).or_default() += 1;
        Ok(Slot {
            cp: self.clone(),
            source,
        })
    }

    async fn connection<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        source: std::net::IpAddr,
        id: &Identity,
    ) -> Result<(), veil_atls::AtlsError> {
        let appraiser = AnyRole {
            trust: &self.trust,
            now: now(),
            last_ak: Mutex::new(None),
        };
        let (mut tls, peer) = match server_optional(
            io,
            id,
            Some(self.attester.as_ref() as &dyn veil_atls::Attester),
            &appraiser,
        )
        .await
        {
            Ok(v) => v,
            Err(e) => {
                let kind = match &e {
                    veil_atls::AtlsError::Refused(_) => Some("evidence"),
                    veil_atls::AtlsError::Tls(_) | veil_atls::AtlsError::Protocol(_) => Some("tls"),
                    // A connection that closed or went silent is not a refusal.
                    _ => None,
                };
                if let Some(kind) = kind {
                    if kind == "evidence" {
                        bump(&self.metrics.connections_refused);
                    }
                    tracing::warn!(event = "connection_refused", %source, kind, reason = %e);
                    let ak = appraiser.last_ak.lock().ok().and_then(|a| *a);
                    self.refuse(
                        &source.to_string(),
                        ak.map(hex::encode),
                        kind,
                        &e.to_string(),
                    );
                }
                return Err(e);
            }
        };
        bump(&self.metrics.connections);
        let context = peer.context;
        let peer = peer.claims.map(|mut a| {
            a.context = context;
            a
        });
        let mut caller = Caller {
            peer: peer.as_ref(),
            source,
            cert_cache: None,
            proved: false,
        };
        loop {
            let frame = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut tls)).await {
                Ok(Ok(f)) => f,
                // The peer closed the connection, or stayed silent too long.
                Ok(Err(_)) | Err(_) => return Ok(()),
            };
            let (response, kind) = match serde_json::from_slice::<Request>(&frame) {
                Ok(req) => {
                    let kind = op(&req);
                    // Handlers may wait on the TPM: not on this runtime's worker thread.
                    (
                        veil_atls::blocking(|| self.dispatch(req, &mut caller)),
                        kind,
                    )
                }
                Err(e) => (refused(format!("malformed request: {e}")), "request"),
            };
            match &response {
                Response::Refused { reason } => {
                    bump(&self.metrics.requests_refused);
                    tracing::warn!(event = "request_refused", %source, kind, %reason);
                    // The CAS's refusals are in its own audit log (a session's owner's
                    // conflict is not the cluster's concern).
                    if kind != "cas" {
                        self.refuse(&source.to_string(), caller.ak_hex(), kind, reason);
                    }
                }
                Response::Unavailable { reason } => {
                    tracing::info!(event = "request_deferred", kind, %reason);
                }
                Response::Joined { .. } => {
                    bump(&self.metrics.joins);
                    bump(&self.metrics.keys_released);
                }
                Response::Key { .. } => bump(&self.metrics.keys_released),
                Response::Report { .. } => bump(&self.metrics.reports),
                _ => {}
            }
            let body = serde_json::to_vec(&response)
                .map_err(|e| veil_atls::AtlsError::Protocol(e.to_string()))?;
            write_frame(&mut tls, &body).await?;
        }
    }

    /// One handler per request.
    fn dispatch(&self, req: Request, caller: &mut Caller<'_>) -> Response {
        match req {
            Request::Init {
                master,
                salt,
                approvals,
                auth,
            } => self.init(master.expose(), &salt, approvals, &auth),
            Request::Recover { master, salt, auth } => self.recover(master.expose(), &salt, &auth),
            Request::Approve { approvals } => self.approve(approvals),
            Request::Approvals => self.approvals(caller),
            Request::AckRefusals { up_to, auth } => self.ack_refusals(up_to, &auth),
            Request::Join {
                role,
                ek_cert,
                ek_public,
                node_key,
                mesh,
            } => self.join(
                caller,
                (&role, &ek_cert, &ek_public, &node_key),
                mesh.as_ref(),
            ),
            Request::Activate { secret } => self.activate(caller, secret.expose()),
            Request::Endorsement { auth } => self.endorsement(caller, auth.as_ref()),
            Request::ProveTpm {
                id_object,
                encrypted_secret,
                auth,
            } => self.prove_tpm(caller, &id_object, &encrypted_secret, auth.as_ref()),
            Request::ClusterReport { nonce, auth } => self.cluster_report(nonce, &auth),
            Request::RemoveNode { node_id, auth } => self.remove_node(node_id, &auth),
            Request::RotateMeshKey { node_id, auth } => self.rotate_mesh_key(node_id, &auth),
            Request::MeshRekey {
                node_cert,
                public_key,
            } => self.mesh_rekey(caller, &node_cert, public_key),
            Request::MeshPeers { node_cert } => self.mesh_peers(caller, &node_cert),
            Request::GetKey { key_id, node_cert } => self.get_key(caller, &key_id, &node_cert),
            Request::VolumeKey {
                volume_id,
                node_cert,
            } => self.volume_key(caller, &volume_id, &node_cert),
            Request::VolumeAnchor {
                volume_id,
                node_cert,
                advance,
            } => self.volume_anchor(caller, &volume_id, &node_cert, advance),
            Request::ReportRefusal {
                node_cert,
                kind,
                reason,
            } => self.report_refusal(caller, &node_cert, &kind, &reason),
            Request::Cas { call } => self.cas_call(caller, call),
            Request::KubeCredentials {
                node_cert,
                kubelet_client_key,
                kubelet_serving_key,
                proxy_client_key,
            } => self.kube_credentials(
                caller,
                &node_cert,
                [&kubelet_client_key, &kubelet_serving_key, &proxy_client_key],
            ),
        }
    }
}

/// A connection's place in the limits; given back when the connection ends.
struct Slot {
    cp: Arc<ControlPlane>,
    source: std::net::IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut st) = self.cp.state.lock()
            && let Some(n) = st.open.get_mut(&self.source)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.open.remove(&self.source);
            }
        }
    }
}

fn cluster_id_of(p: &Persisted, file: &std::path::Path) -> Result<ClusterId, String> {
    decode_hex(&p.cluster_id)
        .ok()
        .and_then(|v| v.try_into().ok())
        .map(ClusterId)
        .ok_or_else(|| format!("{}: bad cluster ID", file.display()))
}

/// What the host's file holds of a sealed control plane: its cluster ID.
fn id_only(cid: ClusterId) -> Persisted {
    Persisted {
        cluster_id: cid.to_string(),
        nodes: Vec::new(),
        removed: Vec::new(),
        approvals: None,
        refusals: Refusals::default(),
        volumes: volumes::Volumes::new(),
    }
}

/// Writes `p` to `path` (a temporary file renamed over it; synced first when `sync`).
fn write_state(path: &std::path::Path, p: &Persisted, sync: bool) -> bool {
    let Ok(body) = serde_json::to_vec_pretty(p) else {
        return false;
    };
    let tmp = path.with_extension("tmp");
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        std::io::Write::write_all(&mut f, &body)?;
        if sync {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if sync && let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if let Err(e) = written {
        tracing::error!(file = %path.display(), error = %e, "cannot persist control-plane state");
        return false;
    }
    true
}
