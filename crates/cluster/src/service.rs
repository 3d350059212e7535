//! The control plane: one attested-TLS listener serving the owner (init, recover) and the
//! nodes (join, keys). Every secret it releases goes over a connection whose peer it has just
//! appraised, and is logged as an audit event (never the value).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use veil_atls::{Appraiser, Identity, read_frame, server_optional, write_frame};
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_attest_tpm::Public;
use veil_attest_tpm::credential::make_credential;
use veil_keys::{ClusterId, ClusterSecrets, KeyId, Owner, SecretBytes};
use veil_node_attest::{Membership, NodeClaims, TpmAppraiser, TpmAttester};
use veil_reference::ReferenceValues;
use veil_reference::launch::cluster_pcr;

use crate::ca::{ClusterCa, NodeIdentity};
use crate::clock::now;
use crate::proto::{HandOver, Request, Response};

/// The node certificate last verified on a connection (verified once per connection).
type CertCache = Option<(Vec<u8>, NodeIdentity)>;

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
    mesh: Option<(String, String)>,
}

/// A node refused (at the attested connection or at join), for the cluster report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refusal {
    /// SHA-256 of the AK SPKI the node presented (hex), if its evidence could be read.
    pub ak_spki_sha256: Option<String>,
    /// Why.
    pub reason: String,
    /// When.
    pub at: UnixTime,
}

const MAX_REFUSALS: usize = 64;

#[derive(Debug, Default)]
struct State {
    secrets: Option<ClusterSecrets>,
    /// The cluster CA, derived from the secrets when they arrive.
    ca: Option<Arc<ClusterCa>>,
    /// Recent refusals (since this control plane started), oldest first.
    refusals: Vec<Refusal>,
    cluster_id: Option<ClusterId>,
    /// Whether this boot's cluster PCR holds the cluster ID.
    pcr_bound: bool,
    nodes: BTreeMap<String, NodeRecord>,
    pending: HashMap<[u8; 32], Pending>,
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
    foreign: Vec<crate::proto::MeshPeer>,
    foreign_at: i64,
}

impl State {
    /// The peer set for `asker` (or this control plane's own node): its own entry, its fresh
    /// nodes, and what the other control planes serve, without the asker, removed nodes or
    /// addresses seen twice.
    fn peer_set(&self, asker: Option<&str>) -> Vec<crate::proto::MeshPeer> {
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
        self.secrets = Some(secrets);
        Ok(())
    }

    /// Keeps the last `MAX_REFUSALS` refusals, oldest first.
    fn record_refusal(&mut self, ak: Option<String>, reason: String) {
        if self.refusals.len() >= MAX_REFUSALS {
            self.refusals.remove(0);
        }
        self.refusals.push(Refusal {
            ak_spki_sha256: ak,
            reason,
            at: now(),
        });
    }
}

/// What survives a restart: public state only (never the master secret).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Persisted {
    cluster_id: String,
    nodes: Vec<NodeRecord>,
    #[serde(default)]
    removed: Vec<String>,
}

/// The control-plane services of one node.
#[derive(Debug)]
pub struct ControlPlane {
    trust: Trust,
    attester: Arc<TpmAttester>,
    state: Mutex<State>,
    state_file: Option<std::path::PathBuf>,
    metrics: Metrics,
}

/// Counters exported in the Prometheus text format.
#[derive(Debug, Default)]
struct Metrics {
    connections: std::sync::atomic::AtomicU64,
    connections_refused: std::sync::atomic::AtomicU64,
    joins: std::sync::atomic::AtomicU64,
    keys_released: std::sync::atomic::AtomicU64,
    requests_refused: std::sync::atomic::AtomicU64,
    reports: std::sync::atomic::AtomicU64,
}

fn bump(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Appraises a peer against every role the reference values know (and remembers the AK it
/// presented, to name a refused node).
struct AnyRole<'a>(&'a Trust, UnixTime, Mutex<Option<[u8; 32]>>);

impl AnyRole<'_> {
    fn last_ak(&self) -> &Mutex<Option<[u8; 32]>> {
        &self.2
    }
}

/// Claims of a node, with the roles it qualifies for.
struct Appraised {
    claims: NodeClaims,
    roles: Vec<(String, String)>,
    /// What the node's evidence vouches for (its attested-TLS context).
    context: [u8; 32],
}

impl Appraiser for AnyRole<'_> {
    type Claims = Appraised;

    fn appraise(&self, evidence: &[u8], report_data: &[u8; 64]) -> Result<Appraised, String> {
        if let Ok(ev) = veil_attest_tpm::evidence::TpmEvidence::parse(evidence)
            && let Ok(ak) = Public::parse(&ev.ak_public)
            && let Ok(spki) = ak.key.spki_der()
            && let Ok(mut last) = self.last_ak().lock()
        {
            *last = Some(Sha256::digest(spki).into());
        }
        let mut roles: Vec<String> = self
            .0
            .reference
            .sets
            .iter()
            .flat_map(|s| s.roles.keys().cloned())
            .collect();
        roles.sort();
        roles.dedup();
        let mut reasons = Vec::new();
        let mut matched = Vec::new();
        let mut claims = None;
        for role in roles {
            let a = TpmAppraiser {
                reference: self.0.reference.clone(),
                role: role.clone(),
                trusted_aks: None,
                membership: Membership::Any,
                now: self.1,
            };
            match a.appraise(evidence, report_data) {
                Ok(c) => {
                    matched.push((role, c.set.clone()));
                    claims = Some(c);
                }
                Err(e) => reasons.push(format!("as {role}: {e}")),
            }
        }
        match claims {
            Some(claims) => Ok(Appraised {
                claims,
                roles: matched,
                // Filled in from the connection once the handshake is done.
                context: [0; 32],
            }),
            None => Err(reasons.join("; ")),
        }
    }
}

/// Checks an owner command (see [`crate::owner`]) against the secrets this control plane holds.
// The refusal is the response itself: not worth boxing.
#[allow(clippy::result_large_err)]
fn owner_command(st: &State, op: &str, command: &str, at: i64, mac: &str) -> Result<(), Response> {
    let Some(secrets) = &st.secrets else {
        return Err(unavailable(format!(
            "{op}: the control plane awaits recovery (veil recover)"
        )));
    };
    let Ok(mac) = decode_hex(mac) else {
        return Err(refused(format!("{op}: the MAC is not hex")));
    };
    crate::owner::check(secrets, command, at, &mac, now().0)
        .map_err(|e| refused(format!("{op}: {e}")))
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

/// Checks that the quote was signed by `ak` as a child of `ek`: the Qualified Name the TPM put
/// in the quote is the one that key has under that EK. Credential activation then proves the
/// key with that Name is in the TPM of that EK.
pub fn check_signer_under_ek(
    ek: &Public,
    ak: &Public,
    qualified_signer: &[u8],
) -> Result<(), String> {
    let want = veil_attest_tpm::structures::qualified_name_under_ek(ek, ak)
        .ok_or("the AK or EK has no name algorithm")?;
    if want != qualified_signer {
        return Err(format!(
            "qualifiedSigner: expected {} (the AK's Qualified Name under this EK), found {}",
            hex::encode(want),
            hex::encode(qualified_signer)
        ));
    }
    Ok(())
}

/// Node IDs come from the EK certificate: stable for the life of the TPM.
fn node_id(ek_cert: &Certificate) -> String {
    format!(
        "node-{}",
        hex::encode(ek_cert.fingerprint().get(..6).unwrap_or_default())
    )
}

impl ControlPlane {
    /// A control plane that awaits `veil init`, attesting with `attester`.
    pub fn new(trust: Trust, attester: Arc<TpmAttester>) -> Self {
        Self {
            trust,
            attester,
            state: Mutex::new(State::default()),
            state_file: None,
            metrics: Metrics::default(),
        }
    }

    /// A control plane that keeps its public state (cluster ID, admitted nodes) in
    /// `state_file`: after a restart it knows its cluster and awaits `veil recover`.
    pub fn with_state_file(
        trust: Trust,
        attester: Arc<TpmAttester>,
        state_file: std::path::PathBuf,
    ) -> Result<Self, String> {
        let mut state = State::default();
        if let Ok(body) = std::fs::read(&state_file) {
            let p: Persisted = serde_json::from_slice(&body)
                .map_err(|e| format!("{}: {e}", state_file.display()))?;
            let cid: [u8; 32] = decode_hex(&p.cluster_id)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| format!("{}: bad cluster ID", state_file.display()))?;
            state.cluster_id = Some(ClusterId(cid));
            state.nodes = p
                .nodes
                .into_iter()
                .map(|n| (n.node_id.clone(), n))
                .collect();
            state.removed = p.removed.into_iter().collect();
            tracing::info!(event = "restarted", cluster_id = %p.cluster_id, "awaiting recovery");
        }
        Ok(Self {
            trust,
            attester,
            state: Mutex::new(state),
            state_file: Some(state_file),
            metrics: Metrics::default(),
        })
    }

    fn persist(&self, st: &State) {
        let (Some(path), Some(cid)) = (&self.state_file, st.cluster_id) else {
            return;
        };
        let p = Persisted {
            cluster_id: cid.to_string(),
            nodes: st.nodes.values().cloned().collect(),
            removed: st.removed.iter().cloned().collect(),
        };
        if let Ok(body) = serde_json::to_vec_pretty(&p) {
            let tmp = path.with_extension("tmp");
            if std::fs::write(&tmp, body)
                .and_then(|()| std::fs::rename(&tmp, path))
                .is_err()
            {
                tracing::error!(file = %path.display(), "cannot persist control-plane state");
            }
        }
    }

    fn refuse(&self, ak: Option<String>, reason: String) {
        if let Ok(mut st) = self.state.lock() {
            st.record_refusal(ak, reason);
        }
    }

    /// Metrics in the Prometheus text exposition format.
    pub fn metrics_text(&self) -> String {
        use std::sync::atomic::Ordering::Relaxed;
        let m = &self.metrics;
        let (nodes, initialised, awaiting) = self
            .state
            .lock()
            .map(|s| {
                (
                    s.nodes.len(),
                    s.cluster_id.is_some(),
                    s.cluster_id.is_some() && s.secrets.is_none(),
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

    /// Forgets the master secret, as a restart does (the cluster ID and node records are
    /// public state that survives); keys are released again only after `veil recover`.
    pub fn forget_secrets(&self) {
        if let Ok(mut s) = self.state.lock() {
            s.secrets = None;
            s.ca = None;
            s.pending.clear();
        }
    }

    /// Takes the cluster's secrets from a peer control-plane node this node has just joined
    /// (its cluster PCR already holds the cluster ID). Refused if this node already serves,
    /// or remembers another cluster.
    pub fn adopt(&self, secrets: ClusterSecrets) -> Result<ClusterId, String> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| "internal error: state lock poisoned".to_string())?;
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
        st.hold(secrets)?;
        st.cluster_id = Some(cid);
        st.pcr_bound = true;
        self.persist(&st);
        tracing::info!(event = "secrets_from_peer", cluster_id = %cid);
        Ok(cid)
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
        let mut st = self
            .state
            .lock()
            .map_err(|_| "internal error: state lock poisoned".to_string())?;
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
    pub fn own_mesh_peers(&self) -> Vec<crate::proto::MeshPeer> {
        self.state
            .lock()
            .map(|st| st.peer_set(None))
            .unwrap_or_default()
    }

    /// Records what the other control planes serve (their own node and their nodes), so that
    /// every node's peer set spans the whole cluster.
    pub fn set_foreign_peers(&self, peers: Vec<crate::proto::MeshPeer>) {
        if let Ok(mut st) = self.state.lock() {
            st.foreign = peers;
            st.foreign_at = now().0;
        }
    }

    /// A node certificate for this control plane's own node (its node ID from its EK
    /// certificate, role control-plane, its AK), certifying `node_key` (SPKI DER): what it
    /// shows other control planes of the cluster.
    pub fn own_certificate(&self, node_key: &[u8]) -> Result<Vec<u8>, String> {
        let (ek_cert, ak_public) = self
            .attester
            .with_tpm(|t| {
                Ok::<_, veil_tpm_device::TpmDeviceError>((
                    t.ek_certificate()?,
                    t.ak_public().to_vec(),
                ))
            })?
            .map_err(|e| e.to_string())?;
        let cert = Certificate::from_der(&ek_cert, "EK certificate").map_err(|e| e.to_string())?;
        let ak = Public::parse(&ak_public).map_err(|e| e.to_string())?;
        let spki = ak.key.spki_der().map_err(|e| e.to_string())?;
        let st = self
            .state
            .lock()
            .map_err(|_| "internal error: state lock poisoned".to_string())?;
        let ca = st.ca.as_ref().ok_or("this control plane awaits recovery")?;
        ca.issue(
            &NodeIdentity {
                node_id: node_id(&cert),
                role: "control-plane".into(),
                ak_spki_sha256: spki_sha256(&spki),
            },
            node_key,
        )
    }

    /// Whether this control plane holds the cluster's secrets (it can serve keys).
    pub fn serving(&self) -> bool {
        self.state.lock().is_ok_and(|s| s.secrets.is_some())
    }

    /// Serves connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let id = match Identity::generate() {
            Ok(id) => Arc::new(id),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a TLS identity");
                return;
            }
        };
        loop {
            let Ok((sock, peer)) = listener.accept().await else {
                continue;
            };
            let _ = sock.set_nodelay(true);
            let (cp, id) = (self.clone(), id.clone());
            tokio::spawn(async move {
                if let Err(e) = cp.connection(sock, &id).await {
                    tracing::warn!(%peer, error = %e, "connection ended");
                }
            });
        }
    }

    async fn connection<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        id: &Identity,
    ) -> Result<(), veil_atls::AtlsError> {
        let appraiser = AnyRole(&self.trust, now(), Mutex::new(None));
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
                if let veil_atls::AtlsError::Refused(reason) = &e {
                    bump(&self.metrics.connections_refused);
                    tracing::warn!(event = "evidence_refused", reason = %e);
                    let ak = appraiser.last_ak().lock().ok().and_then(|a| *a);
                    self.refuse(ak.map(hex::encode), reason.clone());
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
        let mut cert_cache: CertCache = None;
        loop {
            let frame = match read_frame(&mut tls).await {
                Ok(f) => f,
                Err(_) => return Ok(()), // the peer closed the connection
            };
            let response = match serde_json::from_slice::<Request>(&frame) {
                Ok(req) => self.handle(req, peer.as_ref(), &mut cert_cache),
                Err(e) => refused(format!("malformed request: {e}")),
            };
            match &response {
                Response::Refused { reason } => {
                    bump(&self.metrics.requests_refused);
                    tracing::info!(event = "request_refused", %reason);
                }
                Response::Unavailable { reason } => {
                    tracing::info!(event = "request_deferred", %reason);
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

    fn handle(
        &self,
        req: Request,
        peer: Option<&Appraised>,
        cert_cache: &mut CertCache,
    ) -> Response {
        let Ok(mut st) = self.state.lock() else {
            return refused("internal error: state lock poisoned");
        };
        match req {
            Request::Init { master, salt } => {
                if st.cluster_id.is_some() {
                    return refused(
                        "the cluster is already initialised (use recover after a restart)",
                    );
                }
                let secrets = match secrets_from(&master, &salt) {
                    Ok(s) => s,
                    Err(e) => return refused(e),
                };
                let Ok(cid) = secrets.cluster_id() else {
                    return refused("key derivation failed");
                };
                if let Err(e) = self.attester.join_cluster(&cid.0) {
                    return refused(format!("cannot extend the cluster PCR: {e}"));
                }
                if let Err(e) = st.hold(secrets) {
                    return refused(format!("init: {e}"));
                }
                tracing::info!(event = "cluster_initialised", cluster_id = %cid);
                st.cluster_id = Some(cid);
                st.pcr_bound = true;
                self.persist(&st);
                Response::Cluster {
                    cluster_id: cid.to_string(),
                }
            }
            Request::Recover { master, salt } => {
                let Some(cid) = st.cluster_id else {
                    return refused("the cluster is not initialised: use init");
                };
                if st.secrets.is_some() {
                    return refused("the control plane holds its secrets: nothing to recover");
                }
                let secrets = match secrets_from(&master, &salt) {
                    Ok(s) => s,
                    Err(e) => return refused(e),
                };
                match secrets.cluster_id() {
                    Ok(c) if c == cid => {}
                    Ok(c) => {
                        return refused(format!(
                            "this master secret belongs to cluster {c}, not to cluster {cid}"
                        ));
                    }
                    Err(_) => return refused("key derivation failed"),
                }
                if !st.pcr_bound {
                    if let Err(e) = self.attester.join_cluster(&cid.0) {
                        return refused(format!("cannot extend the cluster PCR: {e}"));
                    }
                    st.pcr_bound = true;
                }
                if let Err(e) = st.hold(secrets) {
                    return refused(format!("recover: {e}"));
                }
                tracing::info!(event = "cluster_recovered", cluster_id = %cid);
                Response::Cluster {
                    cluster_id: cid.to_string(),
                }
            }
            Request::Join {
                role,
                ek_cert,
                ek_public,
                node_key,
                mesh,
            } => {
                let r = self.join(
                    &mut st,
                    peer,
                    (&role, &ek_cert, &ek_public, &node_key),
                    mesh.as_ref(),
                );
                if let Response::Refused { reason } = &r {
                    st.record_refusal(
                        peer.map(|p| hex::encode(p.claims.ak_spki_sha256)),
                        reason.clone(),
                    );
                }
                r
            }
            Request::Activate { secret } => {
                let Some(p) = peer else {
                    return refused("activate: the caller is not attested");
                };
                let Some(pending) = st.pending.remove(&p.claims.ak_spki_sha256) else {
                    return refused("activate: no join in progress for this attestation key");
                };
                let given = decode_hex(&secret).unwrap_or_default();
                if verify_slices_are_equal(&given, &pending.secret).is_err() {
                    return refused(
                        "activate: wrong credential secret: the AK is not in the TPM of that EK",
                    );
                }
                let (Some(secrets), Some(ca), Some(cid)) = (&st.secrets, &st.ca, st.cluster_id)
                else {
                    return unavailable("the control plane awaits recovery");
                };
                let state_key =
                    match KeyId::node(&pending.node_id, "state").and_then(|k| secrets.derive(&k)) {
                        Ok(k) => k,
                        Err(e) => return refused(e.to_string()),
                    };
                let who = NodeIdentity {
                    node_id: pending.node_id.clone(),
                    role: pending.role.clone(),
                    ak_spki_sha256: p.claims.ak_spki_sha256,
                };
                let node_cert = match ca.issue(&who, &pending.node_key) {
                    Ok(v) => v,
                    Err(e) => return refused(format!("activate: {e}")),
                };
                let ca_cert = ca.cert_der().to_vec();
                // Another control-plane node serves as this one does: it gets the root secret.
                let control_plane = (pending.role == "control-plane").then(|| HandOver {
                    master: hex::encode(secrets.master().expose()),
                    salt: hex::encode(secrets.salt()),
                });
                let set = p
                    .roles
                    .iter()
                    .find(|(r, _)| *r == pending.role)
                    .map(|(_, s)| s.clone())
                    .unwrap_or_default();
                let mesh = match (&pending.mesh, st.mesh_net) {
                    (Some((key, endpoint)), Some(net)) => {
                        match crate::mesh::allocate(net, &st.nodes, &pending.node_id) {
                            Ok(address) => Some(NodeMesh {
                                public_key: key.clone(),
                                endpoint: endpoint.clone(),
                                address,
                            }),
                            Err(e) => return refused(format!("activate: mesh: {e}")),
                        }
                    }
                    _ => None,
                };
                let mesh_address = mesh.as_ref().map(|m| m.address.to_string());
                st.last_seen.insert(pending.node_id.clone(), now().0);
                st.nodes.insert(
                    pending.node_id.clone(),
                    NodeRecord {
                        node_id: pending.node_id.clone(),
                        role: pending.role.clone(),
                        ak_spki_sha256: p.claims.ak_spki_sha256,
                        join_evidence: p.claims.evidence.clone(),
                        set,
                        joined_at: now(),
                        mesh,
                    },
                );
                self.persist(&st);
                tracing::info!(event = "node_joined", node = %pending.node_id, role = %pending.role);
                tracing::info!(event = "key_released", node = %pending.node_id, key_id = %format!("node/{}/state", pending.node_id));
                if control_plane.is_some() {
                    tracing::info!(event = "master_secret_handed_over", node = %pending.node_id);
                }
                Response::Joined {
                    node_id: pending.node_id,
                    cluster_id: cid.to_string(),
                    state_key: hex::encode(state_key.expose()),
                    node_cert: hex::encode(node_cert),
                    ca_cert: hex::encode(ca_cert),
                    control_plane,
                    mesh_address,
                }
            }
            Request::GetKey { key_id, node_cert } => {
                let r = self.get_key(&st, peer, &key_id, &node_cert, cert_cache);
                self.seen(&mut st, &r, cert_cache);
                r
            }
            Request::RemoveNode { node_id, at, mac } => {
                if let Err(r) =
                    owner_command(&st, "remove", &format!("remove-node {node_id}"), at, &mac)
                {
                    return r;
                }
                let known = st.nodes.remove(&node_id).is_some();
                st.last_seen.remove(&node_id);
                st.removed.insert(node_id.clone());
                self.persist(&st);
                tracing::info!(event = "node_removed", node = %node_id, known);
                Response::Removed { node_id, known }
            }
            Request::RotateMeshKey { node_id, at, mac } => {
                if let Err(r) = owner_command(
                    &st,
                    "rotate",
                    &format!("rotate-mesh-key {node_id}"),
                    at,
                    &mac,
                ) {
                    return r;
                }
                if st.nodes.get(&node_id).is_none_or(|n| n.mesh.is_none()) {
                    return refused(format!("rotate: no node {node_id} with a mesh key here"));
                }
                st.rotate.insert(node_id.clone());
                tracing::info!(event = "mesh_rotation_requested", node = %node_id);
                Response::RotationRequested { node_id }
            }
            Request::MeshRekey {
                node_cert,
                public_key,
            } => {
                let node = match self.authenticate(&st, peer, &node_cert, cert_cache, "rekey") {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                let Some(m) = st
                    .nodes
                    .get_mut(&node.node_id)
                    .and_then(|n| n.mesh.as_mut())
                else {
                    return refused(format!("rekey: {} has no mesh key here", node.node_id));
                };
                if let Err(e) = crate::mesh::check_join(&crate::proto::MeshJoin {
                    public_key: public_key.clone(),
                    endpoint: m.endpoint.clone(),
                })
                .and_then(|()| {
                    peer.map_or(Err("not attested".into()), |p| {
                        crate::mesh::check_bound(&public_key, &p.context)
                    })
                }) {
                    return refused(format!("rekey: {e}"));
                }
                m.public_key = public_key;
                st.rotate.remove(&node.node_id);
                st.last_seen.insert(node.node_id.clone(), now().0);
                self.persist(&st);
                tracing::info!(event = "mesh_key_rotated", node = %node.node_id);
                self.mesh_peers_of(&st, &node.node_id)
            }
            Request::MeshPeers { node_cert } => {
                let node = match self.authenticate(&st, peer, &node_cert, cert_cache, "mesh") {
                    Ok(n) => n,
                    Err(r) => return r,
                };
                st.last_seen.insert(node.node_id.clone(), now().0);
                self.mesh_peers_of(&st, &node.node_id)
            }
            Request::ClusterReport { nonce } => {
                let Some(cid) = st.cluster_id else {
                    return unavailable("report: the cluster is not initialised");
                };
                if decode_hex(&nonce).map(|n| n.len()) != Ok(32) {
                    return refused("report: the nonce must be 32 bytes of hex");
                }
                let report = crate::report::ClusterReport {
                    version: crate::report::REPORT_VERSION,
                    cluster_id: cid.to_string(),
                    nonce,
                    created_at: now().0,
                    nodes: st
                        .nodes
                        .values()
                        .map(|n| crate::report::ReportedNode {
                            node_id: n.node_id.clone(),
                            role: n.role.clone(),
                            set: n.set.clone(),
                            joined_at: n.joined_at.0,
                            ak_spki_sha256: hex::encode(n.ak_spki_sha256),
                            join_evidence: hex::encode(&n.join_evidence),
                            mesh: n.mesh.as_ref().map(|m| {
                                let seen = st.last_seen.get(&n.node_id).copied();
                                crate::report::ReportedMesh {
                                    address: m.address.to_string(),
                                    public_key: m.public_key.clone(),
                                    last_seen: seen,
                                    in_peer_sets: seen
                                        .is_some_and(|t| t >= now().0 - MESH_FRESH_SECS),
                                }
                            }),
                        })
                        .collect(),
                    refused: st.refusals.clone(),
                };
                let Ok(text) = serde_json::to_string(&report) else {
                    return refused("report: cannot encode");
                };
                drop(st);
                let digest = crate::report::report_digest(text.as_bytes());
                match veil_atls::Attester::attest(self.attester.as_ref(), &digest) {
                    Ok(evidence) => Response::Report {
                        report: text,
                        evidence: hex::encode(evidence),
                    },
                    Err(e) => refused(format!("report: cannot sign: {e}")),
                }
            }
            Request::Endorsement => {
                let r = self.attester.with_tpm(|t| {
                    let cert = t.ek_certificate()?;
                    let ek = t.load_ek()?;
                    Ok::<_, veil_tpm_device::TpmDeviceError>((cert, ek, t.ak_public().to_vec()))
                });
                match r {
                    Ok(Ok((cert, ek, ak))) => Response::Endorsement {
                        ek_cert: hex::encode(cert),
                        ek_public: hex::encode(ek),
                        ak_public: hex::encode(ak),
                    },
                    Ok(Err(e)) => refused(format!("endorsement: {e}")),
                    Err(e) => refused(format!("endorsement: {e}")),
                }
            }
            Request::ProveTpm {
                id_object,
                encrypted_secret,
            } => {
                let (Ok(id), Ok(sec)) = (decode_hex(&id_object), decode_hex(&encrypted_secret))
                else {
                    return refused("prove: not hex");
                };
                match self.attester.with_tpm(|t| t.activate_credential(&id, &sec)) {
                    Ok(Ok(secret)) => Response::Proof {
                        secret: hex::encode(secret),
                    },
                    Ok(Err(e)) => refused(format!("prove: {e}")),
                    Err(e) => refused(format!("prove: {e}")),
                }
            }
        }
    }

    fn join(
        &self,
        st: &mut State,
        peer: Option<&Appraised>,
        (role, ek_cert, ek_public, node_key): (&str, &str, &str, &str),
        mesh: Option<&crate::proto::MeshJoin>,
    ) -> Response {
        let Some(p) = peer else {
            return refused("join: the caller is not attested");
        };
        let Some(cid) = st.cluster_id else {
            return unavailable("join: the cluster is not initialised");
        };
        if p.claims.cluster_pcr.is_some() {
            return refused(
                "join: the node's cluster PCR is not zero: it already belongs to a cluster",
            );
        }
        if !p.roles.iter().any(|(r, _)| r == role) {
            return refused(format!(
                "join: the node's measurements do not match the reference values of role `{role}`"
            ));
        }
        let cert = match decode_hex(ek_cert)
            .map_err(|e| e.to_string())
            .and_then(|d| Certificate::from_der(&d, "EK certificate").map_err(|e| e.to_string()))
        {
            Ok(c) => c,
            Err(e) => return refused(format!("join: {e}")),
        };
        let mut path = vec![&cert];
        path.extend(self.trust.ek_intermediates.iter());
        if let Err(e) = verify_chain(&path, &self.trust.ek_roots, now()) {
            return refused(format!("join: EK certificate: {e}"));
        }
        if self.trust.local_roots && !self.trust.reference.insecure_local_roots {
            return refused(
                "join: the EK certificate chains to a local software CA, and the reference values do not accept local roots (insecure_local_roots: false)",
            );
        }
        let ek = match decode_hex(ek_public)
            .map_err(|e| e.to_string())
            .and_then(|d| Public::parse(&d).map_err(|e| e.to_string()))
        {
            Ok(k) => k,
            Err(e) => return refused(format!("join: EK public: {e}")),
        };
        if cert.public_key().ok() != Some(&ek.key) {
            return refused("join: the EK public area is not the key of the EK certificate");
        }
        let ak = match Public::parse(&p.claims.ak_public) {
            Ok(a) => a,
            Err(e) => return refused(format!("join: AK: {e}")),
        };
        if let Err(e) = check_signer_under_ek(&ek, &ak, &p.claims.qualified_signer) {
            return refused(format!("join: {e}"));
        }
        let rng = SystemRandom::new();
        let (mut secret, mut seed) = ([0u8; 32], [0u8; 32]);
        if rng.fill(&mut secret).is_err() || rng.fill(&mut seed).is_err() {
            return refused("join: no randomness");
        }
        let made = match make_credential(&ek, &ak.name, &secret, &seed) {
            Ok(m) => m,
            Err(e) => return refused(format!("join: {e}")),
        };
        let node_key = match decode_hex(node_key) {
            Ok(k) if veil_attest_core::x509::public_key_from_spki(&k).is_ok() => k,
            _ => return refused("join: node_key is not a SubjectPublicKeyInfo"),
        };
        let mesh = match mesh {
            None => None,
            Some(m) => match crate::mesh::check_join(m)
                .and_then(|()| crate::mesh::check_bound(&m.public_key, &p.context))
            {
                Ok(()) => Some((m.public_key.clone(), m.endpoint.clone())),
                Err(e) => return refused(format!("join: mesh: {e}")),
            },
        };
        let node_id = node_id(&cert);
        if st.removed.contains(&node_id) {
            return refused(format!(
                "join: {node_id} was removed from the cluster by its owner"
            ));
        }
        tracing::info!(event = "join_challenge", node = %node_id, role, cluster_id = %cid);
        st.pending.insert(
            p.claims.ak_spki_sha256,
            Pending {
                node_id,
                role: role.to_string(),
                secret,
                node_key,
                mesh,
            },
        );
        Response::Challenge {
            id_object: hex::encode(made.id_object),
            encrypted_secret: hex::encode(made.encrypted_secret),
        }
    }

    fn mesh_peers_of(&self, st: &State, node_id: &str) -> Response {
        Response::MeshPeers {
            peers: st.peer_set(Some(node_id)),
            rotate: st.rotate.contains(node_id),
        }
    }

    /// Records that the node behind a successful key request re-attested just now.
    fn seen(&self, st: &mut State, r: &Response, cert_cache: &CertCache) {
        if let (Response::Key { .. }, Some((_, who))) = (r, cert_cache) {
            st.last_seen.insert(who.node_id.clone(), now().0);
        }
    }

    /// Who a joined node is: fresh evidence on this connection (cluster PCR = this cluster,
    /// measurements of its role) and a node certificate of this cluster's CA naming the AK
    /// that attested the connection.
    // The refusal is the response itself, sent once per request: not worth boxing.
    #[allow(clippy::result_large_err)]
    fn authenticate(
        &self,
        st: &State,
        peer: Option<&Appraised>,
        node_cert: &str,
        cert_cache: &mut CertCache,
        op: &str,
    ) -> Result<NodeIdentity, Response> {
        let Some(p) = peer else {
            return Err(refused(format!("{op}: the caller is not attested")));
        };
        let (Some(ca), Some(cid)) = (&st.ca, st.cluster_id) else {
            return Err(unavailable(format!(
                "{op}: the control plane awaits recovery (veil recover)"
            )));
        };
        let Ok(cert) = decode_hex(node_cert) else {
            return Err(refused(format!("{op}: node_cert is not hex")));
        };
        let node = match cert_cache {
            Some((der, who)) if *der == cert => who.clone(),
            _ => match ca.verify(&cert, now()) {
                Ok(who) => {
                    *cert_cache = Some((cert, who.clone()));
                    who
                }
                Err(e) => return Err(refused(format!("{op}: {e}"))),
            },
        };
        if st.removed.contains(&node.node_id) {
            return Err(refused(format!(
                "{op}: {} was removed from the cluster by its owner",
                node.node_id
            )));
        }
        if node.ak_spki_sha256 != p.claims.ak_spki_sha256 {
            return Err(refused(format!(
                "{op}: the node certificate of {} names AK {}, but AK {} attested this connection",
                node.node_id,
                hex::encode(node.ak_spki_sha256.get(..6).unwrap_or_default()),
                hex::encode(p.claims.ak_spki_sha256.get(..6).unwrap_or_default())
            )));
        }
        let want = hex::encode(cluster_pcr(veil_attest_tpm::HashAlg::Sha256, Some(&cid.0)));
        if p.claims.cluster_pcr.as_deref() != Some(want.as_str()) {
            return Err(refused(format!(
                "{op}: the caller's cluster PCR does not hold this cluster's ID"
            )));
        }
        if !p.roles.iter().any(|(r, _)| *r == node.role) {
            return Err(refused(format!(
                "{op}: the caller no longer matches the reference values of role `{}`",
                node.role
            )));
        }
        Ok(node)
    }

    fn get_key(
        &self,
        st: &State,
        peer: Option<&Appraised>,
        key_id: &str,
        node_cert: &str,
        cert_cache: &mut CertCache,
    ) -> Response {
        let node = match self.authenticate(st, peer, node_cert, cert_cache, "get_key") {
            Ok(n) => n,
            Err(r) => return r,
        };
        let Some(secrets) = &st.secrets else {
            return unavailable("get_key: the control plane awaits recovery (veil recover)");
        };
        let id = match KeyId::parse(key_id) {
            Ok(k) => k,
            Err(e) => return refused(format!("get_key: {e}")),
        };
        if id.owner() != Owner::Node(node.node_id.clone()) {
            tracing::warn!(event = "key_refused", node = %node.node_id, key_id = %id.as_str());
            return refused(format!(
                "get_key: key `{}` does not belong to {}",
                id.as_str(),
                node.node_id
            ));
        }
        match secrets.derive(&id) {
            Ok(k) => {
                tracing::info!(event = "key_released", node = %node.node_id, key_id = %id.as_str());
                Response::Key {
                    key_id: id.as_str().to_string(),
                    key: hex::encode(k.expose()),
                }
            }
            Err(e) => refused(e.to_string()),
        }
    }
}

/// SHA-256 helper for callers that identify AKs.
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}
