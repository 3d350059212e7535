//! The node agent.
//!
//! Started after the node's firmware measured it (agent binary → PCR 8, this configuration →
//! PCR 9, node image → PCR 11) and wrote the event log, the agent opens the TPM, creates an
//! attestation key under the EK and then, by role:
//! - **control plane**: serves the control-plane services (init, join, keys, recovery). Until
//!   it holds the cluster's secrets (from the owner's `veil init` / `veil recover`), it also
//!   tries to join its peer control-plane nodes: one that has attested it hands it the
//!   secrets, so a restarted control-plane node comes back on its own while any peer serves;
//! - **worker**: joins a control plane over attested TLS, extends the cluster ID into its
//!   cluster PCR, then fetches its state key — and keeps re-attesting to fetch it again, from
//!   whichever control-plane node answers.
//!
//! It writes a status file (no secrets) that `veil mini status` reads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use veil_attest_core::x509::Certificate;
use veil_attest_tpm::EventLog;
use veil_client::Session;
use veil_client::clock::now;
use veil_cluster::{ControlPlane, Trust};
use veil_node_attest::{Membership, TpmAppraiser, TpmAttester};
use veil_reference::{ReferenceValues, signing};
use veil_tpm_device::{AkKind, NodeTpm};

pub mod broker;
pub mod cas;
pub mod kube;
pub mod mesh;
pub mod volume;
pub use mesh::MeshRuntime;
pub use veil_reference::node_config::{AgentConfig, MeshSettings, StrictSettings};
pub use veil_wire::status::{MeshStatus, Status};

pub use veil_reference::node_config::MESH_PORT;

fn key_check(key: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key).get(..8).unwrap_or_default())
}

fn write_status(dir: &Path, s: &Status) {
    if let Ok(body) = serde_json::to_vec_pretty(s) {
        let tmp = dir.join("status.json.tmp");
        if std::fs::write(&tmp, body).is_ok() {
            let _ = std::fs::rename(tmp, dir.join("status.json"));
        }
    }
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// The TPM manufacturer roots and intermediates the signed reference values accept.
fn reference_roots(reference: &ReferenceValues) -> anyhow::Result<Vec<Certificate>> {
    let mut certs = Vec::new();
    for (i, pem) in reference.tpm_roots.iter().enumerate() {
        certs.extend(
            Certificate::parse_many(pem.as_bytes(), "TPM roots")
                .with_context(|| format!("reference values: tpm_roots[{i}]"))?,
        );
    }
    if !certs.iter().any(Certificate::is_self_issued) {
        bail!(
            "the reference values accept no TPM manufacturer root (tpm_roots holds no self-issued certificate)"
        );
    }
    Ok(certs)
}

/// Loads signed reference values, refusing them if the signature by `reference_key` (the key
/// that was measured, as [`AgentConfig::trusted_keys`] read it) does not hold.
pub fn load_reference(cfg: &AgentConfig, reference_key: &[u8]) -> anyhow::Result<ReferenceValues> {
    let body = read(&cfg.reference_values)?;
    let sig = String::from_utf8(read(&cfg.reference_signature)?)?;
    signing::verify(reference_key, &body, &sig).context("reference values signature")?;
    Ok(ReferenceValues::parse(&body)?)
}

/// Runs the agent until killed. If it cannot run (its configuration is not what was
/// measured, its TPM cannot be opened, …) its status file says so: phase `failed`, with the
/// reason.
pub async fn run(cfg: AgentConfig, supervisor: Option<std::process::Child>) -> anyhow::Result<()> {
    let launcher = match supervisor {
        Some(c) => Some(Arc::new(veil_kube::launcher::Launcher::attach(c)?)),
        None => None,
    };
    let r = run_until_stopped(&cfg, launcher.clone()).await;
    if let Some(l) = &launcher {
        l.shutdown(kube::STOP_GRACE + Duration::from_secs(2)).await;
    }
    if let Err(e) = &r {
        write_status(
            &cfg.state_dir,
            &Status {
                name: cfg.name.clone(),
                role: cfg.role.clone(),
                phase: "failed".into(),
                error: Some(format!("{e:#}")),
                ..Status::default()
            },
        );
    }
    r
}

async fn run_until_stopped(
    cfg: &AgentConfig,
    launcher: Option<Arc<veil_kube::launcher::Launcher>>,
) -> anyhow::Result<()> {
    let cfg = cfg.clone();
    let mut status = Status {
        name: cfg.name.clone(),
        role: cfg.role.clone(),
        phase: "starting".into(),
        ..Status::default()
    };
    write_status(&cfg.state_dir, &status);
    // What this agent trusts must be what its firmware measured into PCR 9: a host that swaps
    // a key file after the measurement gets an agent that refuses to run, not one that trusts
    // other reference values or another owner.
    let keys = cfg.trusted_keys()?;
    let log = EventLog::parse(&read(&cfg.event_log)?)?;
    veil_reference::launch::check_config_measured(&log, &cfg.measured(&keys))
        .map_err(anyhow::Error::msg)
        .context("the configuration this agent runs with is not the one its firmware measured")?;
    // The keys are used as they were read for the check above, never read again: a file
    // swapped in between would otherwise be trusted unmeasured.
    let owner_key = keys.owner_key.clone();
    let reference = load_reference(&cfg, &keys.reference_key)?;
    let certs = reference_roots(&reference)?;
    let (ek_roots, ek_intermediates): (Vec<_>, Vec<_>) =
        certs.into_iter().partition(Certificate::is_self_issued);
    let mut tpm = NodeTpm::open(&cfg.tcti)?;
    tpm.load_ek()?;
    tpm.create_ak(AkKind::EccP256)?;
    let attester = Arc::new(TpmAttester::new(tpm, log));
    tracing::info!(node = %cfg.name, role = %cfg.role, "agent started");
    match cfg.role.as_str() {
        "control-plane" => {
            let reference_for_peers = reference.clone();
            let roots_for_peers = (ek_roots.clone(), ek_intermediates.clone());
            let attester_for_peers = attester.clone();
            let trust = Trust {
                reference,
                ek_roots,
                ek_intermediates,
                local_roots: cfg.tpm_roots_local,
                owner_key: owner_key.clone(),
            };
            let cp = Arc::new(
                ControlPlane::with_state_file(
                    trust,
                    attester,
                    cfg.state_dir.join("control-plane.json"),
                    // On a state volume, the host's file keeps only the cluster ID.
                    cfg.kubernetes
                        .as_ref()
                        .is_some_and(|k| k.state_volume.is_some()),
                )
                .map_err(anyhow::Error::msg)?
                .with_kube_validity(
                    kube_validity(
                        "credential_secs",
                        cfg.kubernetes.as_ref().and_then(|k| k.credential_secs),
                        veil_cluster::KUBE_CREDENTIAL_VALIDITY,
                    )?,
                    kube_validity(
                        "serving_secs",
                        cfg.kubernetes.as_ref().and_then(|k| k.serving_secs),
                        veil_cluster::KUBE_SERVING_VALIDITY,
                    )?,
                ),
            );
            let listen = cfg.listen_addr()?.to_string();
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            tracing::info!(listen = %listen, "control-plane services up");
            let serve = tokio::spawn(cp.clone().serve(listener));
            // The other control planes: joined for the secrets, asked for their peer sets.
            let peers: Vec<String> = cfg
                .control_planes
                .iter()
                .filter(|a| **a != listen)
                .cloned()
                .collect();
            let (mut last_rotation, mut rotations) = (std::time::Instant::now(), 0u64);
            if !peers.is_empty() {
                tokio::spawn(join_peers(
                    cp.clone(),
                    peers.clone(),
                    reference_for_peers.clone(),
                    (roots_for_peers.0, roots_for_peers.1),
                    owner_key.clone(),
                    attester_for_peers.clone(),
                ));
            }
            let device = match &cfg.mesh {
                None => None,
                Some(m) => {
                    m.apply_strict(MESH_PORT)?;
                    let (net, prefix) = m.network()?;
                    let key = veil_mesh::MeshKey::generate();
                    let index = cfg
                        .control_planes
                        .iter()
                        .position(|a| *a == listen)
                        .unwrap_or(0);
                    let address = cp
                        .enable_mesh(
                            (net, prefix),
                            index,
                            key.public_base64(),
                            m.endpoint.clone(),
                        )
                        .map_err(anyhow::Error::msg)?;
                    let d = Arc::new(m.start(key, address)?);
                    // Joined nodes reach the control-plane services over the mesh too, so
                    // after join nothing but WireGuard crosses the LAN.
                    let port = listen.rsplit_once(':').map(|(_, p)| p).unwrap_or("7443");
                    let on_mesh = format!("{address}:{port}");
                    let l = tokio::net::TcpListener::bind(&on_mesh)
                        .await
                        .with_context(|| format!("cannot listen on {on_mesh}"))?;
                    tokio::spawn(cp.clone().serve(l));
                    if !peers.is_empty() {
                        tokio::spawn(share_peers(
                            cp.clone(),
                            peers.clone(),
                            reference_for_peers.clone(),
                            attester_for_peers.clone(),
                        ));
                    }
                    Some((d, address))
                }
            };
            if let Some(addr) = &cfg.metrics {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                tokio::spawn(serve_metrics(
                    l,
                    Some(cp.clone()),
                    device.as_ref().map(|(d, _)| d.clone()),
                    attester_for_peers.clone(),
                ));
            }
            let mut kube: Option<kube::KubeControlPlane> = None;
            let mut kube_upkeep: Option<tokio::task::JoinHandle<()>> = None;
            let mut terminate =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .context("cannot handle SIGTERM")?;
            loop {
                if let Some(settings) = &cfg.kubernetes {
                    match (&kube, cp.local_secrets()) {
                        // Kubernetes starts once this node holds the cluster's secrets (from
                        // init, a peer or recovery), never before.
                        (None, Some(secrets)) => {
                            let Some(l) = launcher.clone() else {
                                bail!("Kubernetes is configured but no supervisor process runs");
                            };
                            match kube::KubeControlPlane::start(
                                &cfg,
                                settings,
                                &secrets,
                                l,
                                &attester_for_peers,
                            )
                            .await
                            {
                                Ok(k) => {
                                    if let Some(path) = k.sealed_state_file()
                                        && let Err(e) = cp.seal_state(path)
                                    {
                                        tracing::error!(event = "state_not_sealed", error = %e);
                                        status.error = Some(format!("control-plane state: {e}"));
                                        write_status(&cfg.state_dir, &status);
                                    }
                                    cp.set_kube_api(Some(k.api.clone()));
                                    kube_upkeep = Some(tokio::spawn(kube::keep_cluster(
                                        cp.clone(),
                                        cfg.clone(),
                                        settings.clone(),
                                        attester_for_peers.clone(),
                                    )));
                                    kube = Some(k);
                                }
                                Err(err) => {
                                    let e = format!("kubernetes: {err:#}");
                                    if status.error.as_deref() != Some(e.as_str()) {
                                        if volume::Refused::in_chain(&err) {
                                            cp.record_own_refusal("state_volume", &e);
                                        }
                                        tracing::error!(error = %e, "kubernetes not started");
                                        status.error = Some(e);
                                        write_status(&cfg.state_dir, &status);
                                    }
                                }
                            }
                        }
                        (Some(_), None) => {
                            if let Some(u) = kube_upkeep.take() {
                                u.abort();
                            }
                            cp.set_kube_api(None);
                            if let Some(k) = kube.take() {
                                cp.unseal_state();
                                k.stop().await;
                            }
                        }
                        _ => {}
                    }
                    let components = kube.as_ref().map(|k| k.states()).unwrap_or_default();
                    if components != status.components {
                        status.components = components;
                        write_status(&cfg.state_dir, &status);
                    }
                }
                if let Some((d, address)) = &device {
                    // The control plane's own node: peers are the fresh nodes it admitted.
                    if let Err(e) = d.set_peers(&mesh::peer_configs(&cp.own_mesh_peers(), |a| {
                        mesh::pod_routes(&cfg, a)
                    })) {
                        tracing::warn!(error = %e, "mesh: peer set refused");
                    }
                    if let Some(every) = cfg.mesh.as_ref().and_then(|m| m.rotate_secs)
                        && last_rotation.elapsed() >= Duration::from_secs(every)
                    {
                        let key = veil_mesh::MeshKey::generate();
                        cp.set_own_mesh_key(key.public_base64());
                        d.rotate_key(key)?;
                        last_rotation = std::time::Instant::now();
                        rotations += 1;
                    }
                    let ms = mesh::status(d, *address, rotations);
                    if status.mesh.as_ref() != Some(&ms) {
                        status.mesh = Some(ms);
                        write_status(&cfg.state_dir, &status);
                    }
                }
                cp.flush();
                let cid = cp.cluster_id().map(|c| c.to_string());
                let phase = match (&cid, cp.serving()) {
                    (_, true) => "serving",
                    (None, false) => "awaiting-init",
                    (Some(_), false) => "awaiting-recovery",
                };
                if cid != status.cluster_id || phase != status.phase {
                    status.cluster_id = cid;
                    status.phase = phase.into();
                    write_status(&cfg.state_dir, &status);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = terminate.recv() => {
                        tracing::info!("SIGTERM: stopping");
                        if let Some(k) = kube.take() {
                            cp.unseal_state();
                                k.stop().await;
                        }
                        return Ok(());
                    }
                }
                if serve.is_finished() {
                    if let Some(k) = kube.take() {
                        cp.unseal_state();
                        k.stop().await;
                    }
                    bail!("control-plane services stopped");
                }
            }
        }
        "worker" => {
            worker(
                &cfg,
                reference,
                (ek_roots, ek_intermediates),
                &owner_key,
                attester,
                status,
                launcher,
            )
            .await
        }
        other => bail!("role `{other}`: expected control-plane or worker"),
    }
}

/// A configured credential lifetime `field` (seconds), or `default`: between 30 s and 30 days,
/// or refused with what was found.
fn kube_validity(field: &str, secs: Option<u64>, default: Duration) -> anyhow::Result<Duration> {
    match secs {
        None => Ok(default),
        Some(s) if (30..=30 * 86_400).contains(&s) => Ok(Duration::from_secs(s)),
        Some(s) => bail!("kubernetes.{field} = {s}: expected 30 to 2592000 seconds"),
    }
}

/// How long an attested handshake with a control plane may take (a TPM quote included).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one re-attestation round (handshake, key, credentials, peers) may take before the
/// node gives up on it and tries again.
const ROUND_TIMEOUT: Duration = Duration::from_secs(30);

/// An attested session with the first control-plane node in `addrs` that accepts one (each
/// appraised as a control plane of `membership`); the error of the last one tried otherwise.
pub(crate) async fn connect_any(
    addrs: &[String],
    reference: &ReferenceValues,
    membership: Membership,
    attester: &Arc<TpmAttester>,
) -> anyhow::Result<Session<tokio::net::TcpStream>> {
    let mut last = anyhow::anyhow!("no control-plane address configured");
    for addr in addrs {
        let appraiser = TpmAppraiser {
            reference: reference.clone(),
            role: "control-plane".into(),
            trusted_aks: None,
            membership: membership.clone(),
            now: now(),
        };
        let attempt = async {
            // A dead path (a restarted control plane's mesh key not yet known) must not stall
            // the node: give up on it quickly and try the next address.
            let sock =
                tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
                    .await
                    .map_err(|_| anyhow::anyhow!("cannot reach {addr}: timed out"))?
                    .with_context(|| format!("cannot reach {addr}"))?;
            sock.set_nodelay(true)?;
            // A path that dies mid-handshake (this node just cut from the mesh) must not
            // hold the node until TCP gives up either.
            let s = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                Session::connect(
                    sock,
                    Some(attester.as_ref() as &dyn veil_atls::Attester),
                    &appraiser,
                ),
            )
            .await
            .map_err(|_| anyhow::anyhow!("control plane {addr}: the handshake timed out"))?
            .with_context(|| format!("control plane {addr}"))?;
            anyhow::Ok(s)
        };
        match attempt.await {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

fn node_key() -> anyhow::Result<Vec<u8>> {
    veil_cluster::ca::fresh_node_key().map_err(anyhow::Error::msg)
}

/// Every 2 s, a control plane asks each other control plane for the peers it serves (its own
/// node and the nodes it admitted), showing a node certificate it issues itself, so that
/// every node's peer set spans the cluster.
async fn share_peers(
    cp: Arc<ControlPlane>,
    others: Vec<String>,
    reference: ReferenceValues,
    attester: Arc<TpmAttester>,
) {
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let Some(cid) = cp.cluster_id().filter(|_| cp.serving()) else {
            continue;
        };
        let cert = match node_key()
            .map_err(|e| e.to_string())
            .and_then(|k| cp.own_certificate(&k))
        {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "mesh: no certificate to show the other control planes");
                continue;
            }
        };
        let mut all = Vec::new();
        for addr in &others {
            let got = async {
                let mut s = connect_any(
                    std::slice::from_ref(addr),
                    &reference,
                    Membership::Member(cid.0.to_vec()),
                    &attester,
                )
                .await?;
                let peers = s.mesh_peers(&cert).await?.0;
                // A peer may hold a newer approval list from the owner (this node was down,
                // or its state file was rolled back): take it if the owner signed it.
                if let Ok(signed) = s.approvals().await {
                    cp.offer_approvals(signed);
                }
                anyhow::Ok(peers)
            }
            .await;
            match got {
                Ok(peers) => all.extend(peers),
                Err(e) => {
                    tracing::debug!(%addr, error = %format!("{e:#}"), "mesh: cannot fetch a control plane's peers")
                }
            }
        }
        cp.set_foreign_peers(all);
    }
}

/// A control-plane node without the cluster's secrets joins a peer that has them: the peer
/// appraises it as a control plane (fresh cluster PCR, genuine TPM) and hands them over.
/// Stops once this node serves (from a peer, or from the owner's init or recovery).
async fn join_peers(
    cp: Arc<ControlPlane>,
    peers: Vec<String>,
    reference: ReferenceValues,
    roots: (Vec<Certificate>, Vec<Certificate>),
    owner_key: Vec<u8>,
    attester: Arc<TpmAttester>,
) {
    while !cp.serving() {
        let attempt = async {
            let key = node_key()?;
            let mut s = connect_any(&peers, &reference, Membership::Any, &attester).await?;
            // The secrets come only from a control plane whose AK is in a genuine TPM the
            // owner approved as a control plane.
            let ek = s
                .verify_endorsement(&roots.0, &roots.1, now(), None)
                .await?;
            s.verify_approved(&owner_key, &ek).await?;
            if cp.serving() {
                return anyhow::Ok(());
            }
            let joined = s.join(&attester, "control-plane", &key).await?;
            let (secrets, approvals) = joined
                .control_plane
                .context("the peer admitted this node but handed over no secrets")?;
            let cid = cp.adopt(secrets, approvals).map_err(anyhow::Error::msg)?;
            tracing::info!(event = "joined_peer", cluster_id = %cid, node_id = %joined.node_id);
            anyhow::Ok(())
        };
        if let Err(e) = attempt.await {
            tracing::debug!(error = %format!("{e:#}"), "no peer control plane can hand over the secrets yet");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn worker(
    cfg: &AgentConfig,
    reference: ReferenceValues,
    roots: (Vec<Certificate>, Vec<Certificate>),
    owner_key: &[u8],
    attester: Arc<TpmAttester>,
    mut status: Status,
    launcher: Option<Arc<veil_kube::launcher::Launcher>>,
) -> anyhow::Result<()> {
    // The key the cluster CA certifies at join (its public half; see `fresh_node_key`).
    let node_key = node_key()?;
    // Its mesh key, made here; only the public half goes to the control plane.
    let mut mesh_key = match &cfg.mesh {
        Some(m) => {
            m.apply_strict(MESH_PORT)?;
            Some(veil_mesh::MeshKey::generate())
        }
        None => None,
    };
    let mesh_join = cfg
        .mesh
        .as_ref()
        .zip(mesh_key.as_ref())
        .map(|(m, k)| m.join(k));
    // Every piece of this node's evidence vouches for its mesh key: the control plane takes
    // the key only from a connection whose evidence binds it.
    if let Some(k) = &mesh_key {
        attester.set_context(veil_cluster::mesh::key_context(&k.public()));
    }
    // Join, retrying while no control plane is up or initialised yet.
    let (node_id, cluster_id, check, node_cert, mesh_address, state_key) = loop {
        let attempt = async {
            // The control plane must already belong to a cluster: learn which from its answer.
            let mut s =
                connect_any(&cfg.control_planes, &reference, Membership::Any, &attester).await?;
            // Secrets go only to a control plane whose AK is in a genuine TPM the owner
            // approved as a control plane.
            let ek = s
                .verify_endorsement(&roots.0, &roots.1, now(), None)
                .await?;
            let approved_cluster = s.verify_approved(owner_key, &ek).await?;
            let joined = s
                .join_mesh(&attester, &cfg.role, &node_key, mesh_join.clone())
                .await?;
            if hex::encode(&joined.cluster_id) != approved_cluster {
                anyhow::bail!(
                    "the control plane admitted this node to cluster {}, not to cluster {approved_cluster} of its approval list",
                    hex::encode(&joined.cluster_id)
                );
            }
            // Certificates are public; the key behind the node certificate stays in memory.
            std::fs::write(cfg.state_dir.join("node.crt.der"), &joined.node_cert)?;
            std::fs::write(cfg.state_dir.join("cluster-ca.crt.der"), &joined.ca_cert)?;
            anyhow::Ok((
                joined.node_id,
                joined.cluster_id,
                key_check(&joined.state_key),
                joined.node_cert,
                joined.mesh_address,
                zeroize::Zeroizing::new(joined.state_key),
            ))
        };
        match attempt.await {
            Ok(v) => break v,
            Err(e) => {
                status.phase = if e.to_string().contains("refused by the control plane") {
                    "refused".into()
                } else {
                    "joining".into()
                };
                status.error = Some(format!("{e:#}"));
                write_status(&cfg.state_dir, &status);
                tracing::warn!(error = %format!("{e:#}"), "join failed, retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    status.phase = "joined".into();
    status.error = None;
    status.node_id = Some(node_id.clone());
    status.key_check = Some(check.clone());
    status.cluster_id = Some(hex::encode(&cluster_id));
    write_status(&cfg.state_dir, &status);
    tracing::info!(node_id = %node_id, "joined");
    let device = match (&cfg.mesh, mesh_key.take(), mesh_address) {
        (Some(m), Some(k), Some(address)) => Some((Arc::new(m.start(k, address)?), address)),
        (Some(_), _, None) => bail!("the control plane assigned no mesh address"),
        _ => None,
    };
    if let Some(addr) = &cfg.metrics {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tokio::spawn(serve_metrics(
            l,
            None,
            device.as_ref().map(|(d, _)| d.clone()),
            attester.clone(),
        ));
    }
    // Volume errands go to the control plane that keeps the volumes.
    let broker = cfg
        .kubernetes
        .as_ref()
        .and_then(|k| k.volumes.as_ref())
        .map(|_| {
            broker::Broker::start(broker::Member {
                addresses: kube::volume_keeper(cfg).cloned().into_iter().collect(),
                reference: reference.clone(),
                cluster_id: cluster_id.clone(),
                node_cert: node_cert.clone(),
                attester: attester.clone(),
            })
        });
    // Why this node runs no Kubernetes, if it refused its own state volume (kept in its status).
    let mut kube_refused: Option<String> = None;
    let mut kube = match (&cfg.kubernetes, &device) {
        (Some(settings), Some((_, address))) => match kube::KubeWorker::new(
            cfg,
            settings,
            &node_id,
            *address,
            launcher.context("Kubernetes is configured but no supervisor process runs")?,
            &state_key,
            &attester,
            broker,
        )
        .await
        {
            Ok(k) => Some(k),
            // A state volume altered, rolled back or gone: this node starts no Kubernetes,
            // says so in its status and to the control plane (a refusal in the cluster
            // report), and keeps attesting.
            Err(e) if volume::Refused::in_chain(&e) => {
                let reason = format!("{e:#}");
                kube_refused = Some(format!("kubernetes not started: {reason}"));
                status.error = kube_refused.clone();
                write_status(&cfg.state_dir, &status);
                let reported = async {
                    connect_any(
                        &cfg.control_planes,
                        &reference,
                        Membership::Member(cluster_id.clone()),
                        &attester,
                    )
                    .await?
                    .report_refusal(&node_cert, "state_volume", &reason)
                    .await?;
                    anyhow::Ok(())
                };
                if let Err(r) = reported.await {
                    tracing::warn!(error = %format!("{r:#}"), "the state volume's refusal was not reported");
                }
                None
            }
            Err(e) => return Err(e),
        },
        (Some(_), None) => bail!("Kubernetes on a worker needs the mesh"),
        _ => None,
    };
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot handle SIGTERM")?;
    let (mut last_rotation, mut rotations) = (std::time::Instant::now(), 0u64);
    let mut next_key: Option<veil_mesh::MeshKey> = None;
    let mut cp_on_mesh: Vec<String> = Vec::new();
    // Re-attest periodically and fetch the state key again, showing the node certificate:
    // any control-plane node keeps serving keys only to nodes that still match the
    // reference values.
    loop {
        let round = async {
            // The control planes' mesh addresses first (WireGuard on the wire), their LAN
            // addresses if the mesh is not up yet.
            let mut addrs = cp_on_mesh.clone();
            addrs.extend(cfg.control_planes.iter().cloned());
            let mut s = connect_any(
                &addrs,
                &reference,
                Membership::Member(cluster_id.clone()),
                &attester,
            )
            .await?;
            let key = s
                .get_key(&format!("node/{node_id}/state"), &node_cert)
                .await?;
            if key_check(&key) != check {
                anyhow::bail!("the control plane served a different state key");
            }
            // Kubernetes credentials only on an attested connection, renewed well before they
            // lapse.
            if let Some(k) = kube.as_mut()
                && k.due()
            {
                let [c, sv, p] = k.public_keys();
                let creds = s.kube_credentials(&node_cert, &c, &sv, &p).await?;
                k.renewed(&creds).await?;
            }
            if let Some((d, _)) = &device {
                // A new key made at the previous round is vouched for by this connection's
                // evidence: register it, then switch (peers learn it at their next
                // re-attestation; packets meanwhile wait for the new handshake).
                let peers =
                    match next_key.as_ref().map(|k| k.public_base64()) {
                        // Kept until the device has switched: a round that fails or times out
                        // after the control plane registered it registers it again next time.
                        Some(public) => {
                            let peers = s.mesh_rekey(&node_cert, &public).await?;
                            if let Some(key) = next_key.take() {
                                d.rotate_key(key)?;
                            }
                            last_rotation = std::time::Instant::now();
                            rotations += 1;
                            tracing::info!(event = "mesh_key_rotated");
                            peers
                        }
                        None => {
                            let (peers, asked) = s.mesh_peers(&node_cert).await?;
                            let due = cfg.mesh.as_ref().and_then(|m| m.rotate_secs).is_some_and(
                                |every| last_rotation.elapsed() >= Duration::from_secs(every),
                            );
                            if asked || due {
                                let key = veil_mesh::MeshKey::generate();
                                attester
                                    .set_context(veil_cluster::mesh::key_context(&key.public()));
                                next_key = Some(key);
                            }
                            peers
                        }
                    };
                d.set_peers(&mesh::peer_configs(&peers, |a| mesh::pod_routes(cfg, a)))?;
                let port = cfg
                    .control_planes
                    .first()
                    .and_then(|a| a.rsplit_once(':'))
                    .map(|(_, p)| p.to_string())
                    .unwrap_or_else(|| "7443".into());
                cp_on_mesh = peers
                    .iter()
                    .filter(|p| p.node_id == "control-plane")
                    .map(|p| format!("{}:{port}", p.address))
                    .collect();
            }
            anyhow::Ok(())
        };
        let r = tokio::time::timeout(ROUND_TIMEOUT, round)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a re-attestation round timed out")));
        match r {
            Ok(()) => {
                status.key_fetches += 1;
                status.error = kube_refused.clone();
            }
            Err(e) => {
                // Refused (removed, or no longer matching the reference values): this node
                // leaves the mesh too, rather than keep talking to peers on an old set.
                status.error = Some(format!("{e:#}"));
                if e.to_string().contains("refused by the control plane") {
                    if let Some((d, _)) = &device
                        && let Err(e) = d.set_peers(&[])
                    {
                        tracing::warn!(error = %e, "mesh: cannot clear the peer set");
                    }
                    // Said first, then done: stopping the components takes seconds.
                    write_status(&cfg.state_dir, &status);
                    if let Some(k) = kube.as_mut() {
                        k.revoke().await;
                    }
                }
            }
        }
        if let Some(k) = &kube {
            status.components = k.states();
        }
        if let Some((d, address)) = &device {
            status.mesh = Some(mesh::status(d, *address, rotations));
        }
        write_status(&cfg.state_dir, &status);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = terminate.recv() => {
                tracing::info!("SIGTERM: stopping");
                if let Some(k) = kube.take() {
                    k.stop().await;
                }
                return Ok(());
            }
        }
    }
}

/// The mesh device's counters in the Prometheus text format.
fn mesh_metrics(s: &veil_mesh::Stats) -> String {
    veil_cluster::prometheus_text(&[
        (
            "veil_mesh_tx_bytes_total",
            "Inner bytes sent into the mesh.",
            "counter",
            s.tx_bytes,
        ),
        (
            "veil_mesh_rx_bytes_total",
            "Inner bytes received from the mesh.",
            "counter",
            s.rx_bytes,
        ),
        (
            "veil_mesh_handshakes_total",
            "Completed WireGuard handshakes.",
            "counter",
            s.handshakes,
        ),
        (
            "veil_mesh_dropped_total",
            "Packets dropped: unknown peer or address.",
            "counter",
            s.dropped,
        ),
        (
            "veil_mesh_peers",
            "Peers in the current set.",
            "gauge",
            s.peers,
        ),
    ])
}

/// Scrapes served at once; further connections are closed at once.
const MAX_SCRAPES: usize = 32;
/// How long a scrape may take to send its request.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// A minimal HTTP/1.1 responder for Prometheus scrapes: any request gets the metrics. At most
/// [`MAX_SCRAPES`] connections at once, each given [`SCRAPE_TIMEOUT`] to ask; a failing
/// accept backs off instead of spinning.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    cp: Option<Arc<ControlPlane>>,
    device: Option<Arc<veil_mesh::Device>>,
    attester: Arc<TpmAttester>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let mut backoff = Duration::from_millis(10);
    loop {
        let mut sock = match listener.accept().await {
            Ok((sock, _)) => {
                backoff = Duration::from_millis(10);
                sock
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(sock);
            continue;
        };
        let cp = cp.clone();
        let device = device.clone();
        let attester = attester.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = match tokio::time::timeout(SCRAPE_TIMEOUT, sock.read(&mut buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => return,
            };
            // `GET /healthz`: 200 while the TPM quotes, 503 once it cannot.
            let (status, body) = if buf.get(..n).is_some_and(|r| r.starts_with(b"GET /healthz")) {
                match attester.healthy() {
                    true => ("200 OK", "ok\n".to_string()),
                    false => (
                        "503 Service Unavailable",
                        "unhealthy: the TPM cannot quote\n".to_string(),
                    ),
                }
            } else {
                let mut body = cp.as_ref().map(|c| c.metrics_text()).unwrap_or_default();
                if let Some(d) = &device {
                    body.push_str(&mesh_metrics(&d.stats()));
                }
                body.push_str(&veil_cluster::prometheus_text(&[
                    (
                        "veil_tpm_healthy",
                        "1 while the node's TPM quotes.",
                        "gauge",
                        u64::from(attester.healthy()),
                    ),
                    (
                        "veil_tpm_quote_failures_total",
                        "Quotes that failed even after reconnecting to the TPM.",
                        "counter",
                        attester.quote_failures(),
                    ),
                ]));
                ("200 OK", body)
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, sock.write_all(resp.as_bytes())).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_credential_lifetime_out_of_range_is_refused_with_what_was_found() {
        let d = Duration::from_secs(900);
        assert_eq!(super::kube_validity("x", None, d).unwrap(), d);
        assert_eq!(
            super::kube_validity("x", Some(60), d).unwrap(),
            Duration::from_secs(60)
        );
        for bad in [0, 29, 30 * 86_400 + 1] {
            let e = super::kube_validity("serving_secs", Some(bad), d).unwrap_err();
            assert!(
                e.to_string()
                    .contains(&format!("kubernetes.serving_secs = {bad}: expected 30 to")),
                "{e}"
            );
        }
    }

    use super::*;

    fn refs(tpm_roots: Vec<String>) -> ReferenceValues {
        ReferenceValues {
            version: 1,
            insecure_local_roots: true,
            tpm_roots,
            sets: vec![],
        }
    }

    #[test]
    fn roots_come_only_from_the_signed_reference_values() {
        let e = reference_roots(&refs(vec![])).unwrap_err();
        assert!(
            e.to_string().contains("accept no TPM manufacturer root"),
            "{e}"
        );
        let e = reference_roots(&refs(vec![
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
        ]))
        .unwrap_err();
        assert!(format!("{e:#}").contains("tpm_roots[0]"), "{e:#}");
    }
}
