//! Kubernetes on this node: started only once the node holds what it needs (a control plane:
//! the cluster's secrets), stopped when it no longer does or the agent stops.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use sha2::Digest;
use std::sync::Arc;
use veil_keys::ClusterSecrets;
use veil_kube::control_plane::ControlPlaneNode;
use veil_kube::kms::Kms;
use veil_kube::launcher::Launcher;
use veil_kube::pki::KubePki;
use veil_kube::supervise::ProcessState;
use veil_node_attest::TpmAttester;
use veil_reference::node_config::{AgentConfig, KubeSettings};

use crate::volume::StateVolume;

/// The supervisor group of a node's Kubernetes components.
const GROUP: &str = "kubernetes";

/// How long components get to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(4);

/// The node's private directory (a tmpfs in the node's mount namespace).
pub fn private_dir(cfg: &AgentConfig) -> std::path::PathBuf {
    cfg.state_dir.join("private")
}

/// A control plane's running Kubernetes.
#[derive(Debug)]
pub struct KubeControlPlane {
    /// What this node's signed reports say of its API server.
    pub api: veil_wire::report::ReportedKubeApi,
    launcher: Arc<Launcher>,
    kms_stop: tokio::sync::oneshot::Sender<()>,
    kms: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The mounted state volume's directory.
    data: Option<std::path::PathBuf>,
    volume: Option<StateVolume>,
}

/// Mounts the node's encrypted state volume where the components keep their data, if the
/// node has one; binds the machine-wide paths into it.
async fn state_volume(
    cfg: &AgentConfig,
    settings: &KubeSettings,
    key: &[u8],
    attester: &Arc<TpmAttester>,
) -> anyhow::Result<Option<StateVolume>> {
    match &settings.state_volume {
        None => Ok(None),
        Some(v) => Ok(Some(
            StateVolume::start(cfg, v, key, attester.clone()).await?,
        )),
    }
}

/// The control plane that keeps the cluster's persistent volumes (their attachments and
/// anchors are its own state): the first of them. Only it runs the volume controller, and
/// workers' volume errands go to it.
pub fn volume_keeper(cfg: &AgentConfig) -> Option<&String> {
    cfg.control_planes.first()
}

/// Every control plane's cluster address: its mesh address, or without a mesh the host of
/// its service address.
pub fn member_addresses(cfg: &AgentConfig) -> anyhow::Result<Vec<Ipv4Addr>> {
    match &cfg.mesh {
        Some(m) => {
            let (net, prefix) = m.network()?;
            (0..cfg.control_planes.len())
                .map(|i| {
                    veil_cluster::mesh::control_plane_address(net, prefix, i)
                        .map_err(anyhow::Error::msg)
                })
                .collect()
        }
        None => cfg.control_planes.iter().map(|a| host_of(a)).collect(),
    }
}

/// Routes the pod network into the mesh device: every other node's pods are behind it (a
/// node's own slice is on its bridge, a longer prefix).
pub fn route_pods(settings: &KubeSettings, interface: &str) -> anyhow::Result<()> {
    let out = veil_kube::exec::command("ip")
        .args(["route", "replace", &settings.cluster_cidr, "dev", interface])
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        anyhow::bail!(
            "ip route replace {} dev {interface}: {}",
            settings.cluster_cidr,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The IPv4 host of `host:port`.
pub fn host_of(addr: &str) -> anyhow::Result<Ipv4Addr> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.parse()
        .with_context(|| format!("`{addr}`: expected an IPv4 address and port"))
}

impl KubeControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler, and the KMS
    /// plugin they use, for the cluster whose secrets are `secrets`.
    pub async fn start(
        cfg: &AgentConfig,
        settings: &KubeSettings,
        secrets: &ClusterSecrets,
        launcher: Arc<Launcher>,
        attester: &Arc<TpmAttester>,
    ) -> anyhow::Result<Self> {
        // A control plane derives its own state-volume key (it holds the secrets).
        let key = secrets.derive(&veil_keys::KeyId::node(&cfg.name, "state")?)?;
        let volume = state_volume(cfg, settings, key.expose(), attester).await?;
        let listen = cfg.listen_addr()?.to_string();
        let member = cfg
            .control_planes
            .iter()
            .position(|a| *a == listen)
            .unwrap_or(0);
        let node = ControlPlaneNode {
            settings: settings.clone(),
            member,
            members: member_addresses(cfg)?,
            entry: Some(host_of(&listen)?),
            private: private_dir(cfg),
            data: cfg.state_dir.join("kube"),
            cluster_id: secrets.cluster_id()?.to_string(),
        };
        // The API server answers pods (the `kubernetes` Service) over the mesh.
        if let Some(m) = &cfg.mesh {
            route_pods(settings, &m.interface)?;
        }
        let pki = KubePki::derive(secrets)?;
        let specs = node.prepare(&pki).map_err(anyhow::Error::msg)?;
        let kms = Kms::derive(secrets)?;
        tracing::info!(event = "kubernetes_starting", kms_key_id = %kms.key_id(), components = specs.len());
        let (kms_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let socket = node.kms_socket();
        let kms = tokio::spawn(async move {
            veil_kube::kms::serve(kms, &socket, async {
                let _ = rx.await;
            })
            .await
        });
        let serving = std::fs::read(node.serving_cert())?;
        let serving = pem::parse(&serving).context("the API server's serving certificate")?;
        let me = node.address().map_err(anyhow::Error::msg)?;
        let mut addresses = vec![format!("{me}:{}", settings.api_port)];
        if let Some(entry) = node.entry {
            addresses.push(format!("{entry}:{}", settings.api_port));
        }
        let api = veil_wire::report::ReportedKubeApi {
            ca_key_sha256: hex::encode(pki.cluster.key_sha256()),
            serving_cert_sha256: hex::encode(sha2::Sha256::digest(serving.contents())),
            addresses,
        };
        launcher.start(GROUP, specs).await?;
        Ok(Self {
            api,
            launcher,
            kms_stop,
            kms,
            data: volume.as_ref().map(|_| cfg.state_dir.join("kube")),
            volume,
        })
    }

    /// What each component is doing.
    pub fn states(&self) -> std::collections::BTreeMap<String, ProcessState> {
        self.launcher.states()
    }

    /// Where the control plane keeps its state on its mounted state volume, if it has one.
    pub fn sealed_state_file(&self) -> Option<std::path::PathBuf> {
        self.data
            .as_ref()
            .map(|d| d.join("veil").join("control-plane.json"))
    }

    /// Stops the components, then the KMS plugin and the state volume.
    pub async fn stop(self) {
        self.launcher.stop(GROUP, STOP_GRACE).await;
        let _ = self.kms_stop.send(());
        let _ = self.kms.await;
        if let Some(v) = self.volume {
            v.stop().await;
        }
    }
}

/// A worker's Kubernetes: its keys, its credentials' age, and the components once it has them.
#[derive(Debug)]
pub struct KubeWorker {
    node: veil_kube::worker::WorkerNode,
    keys: veil_kube::worker::WorkerKeys,
    launcher: Arc<Launcher>,
    started: bool,
    /// When the credentials were last renewed, and when they are due again.
    renewed: Option<(std::time::Instant, Duration)>,
    /// When kubelet's serving certificate is to be replaced (Unix seconds), and kubelet with it.
    serving_due: Option<i64>,
    /// kubelet, once started (in a group of its own: it restarts for a new serving
    /// certificate).
    kubelet: Option<veil_kube::supervise::ProcessSpec>,
    forwarder: tokio::task::JoinHandle<()>,
    volume: Option<StateVolume>,
    /// The CSI node service, its server, and what stops it.
    csi: Option<WorkerCsi>,
}

/// A worker's CSI node plugin.
#[derive(Debug)]
struct WorkerCsi {
    node: veil_csi::node::Node<crate::broker::Broker>,
    stop: tokio::sync::watch::Sender<bool>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    secrets_server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Starts the worker's CSI node plugin in kubelet's directory, its keys and anchors from the
/// control plane through `broker`.
fn worker_csi(
    cfg: &AgentConfig,
    v: &veil_reference::node_config::VolumeSettings,
    worker: &veil_kube::worker::WorkerNode,
    broker: crate::broker::Broker,
    attester: &Arc<TpmAttester>,
) -> anyhow::Result<WorkerCsi> {
    let node_name = worker.node_name.as_str();
    let b = broker.clone();
    crate::volume::set_remote(Arc::new(move |id, advance| b.anchor_blocking(id, advance)));
    let anchors = crate::volume::start_anchors(cfg, attester)?;
    let node = veil_csi::node::Node::new(
        veil_csi::node::NodeSettings {
            node_id: node_name.to_string(),
            pool: v.pool.clone(),
            binary: v.binary.clone(),
            sha256: v.sha256.clone(),
            anchor_socket: anchors,
            work: private_dir(cfg).join("pv"),
        },
        broker.clone(),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let kubelet_dir = cfg.state_dir.join("kube").join("kubelet");
    let served = node.clone();
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let dir = kubelet_dir.clone();
    let rx1 = rx.clone();
    let server =
        tokio::spawn(async move { veil_csi::node::serve(&dir, served, stopped(rx1)).await });
    // The CAS's secrets driver, beside it: its releases go through the same errand task.
    let releaser = crate::cas::CasReleaser {
        broker,
        attester: attester.clone(),
        node: worker.clone(),
    };
    let secrets = veil_csi::secrets::SecretsNode::new(node_name, releaser);
    let secrets_server =
        tokio::spawn(
            async move { veil_csi::secrets::serve(&kubelet_dir, secrets, stopped(rx)).await },
        );
    Ok(WorkerCsi {
        node,
        stop,
        server,
        secrets_server,
    })
}

/// The group of a worker's kubelet (the other components are in [`GROUP`]).
const KUBELET_GROUP: &str = "kubelet";

/// When credentials that last `lifetime` are due for renewal: at a third of their life, so two
/// more rounds can fail before they lapse.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime / 3
}

impl KubeWorker {
    /// Makes the worker's keys, routes the pod network into the mesh and starts the forwarder
    /// to the API servers; the components start with the first credentials.
    #[allow(clippy::too_many_arguments)] // what the join gave, each from another step
    pub async fn new(
        cfg: &AgentConfig,
        settings: &KubeSettings,
        node_name: &str,
        address: Ipv4Addr,
        launcher: Arc<Launcher>,
        state_key: &[u8],
        attester: &Arc<TpmAttester>,
        broker: Option<crate::broker::Broker>,
    ) -> anyhow::Result<Self> {
        let volume = state_volume(cfg, settings, state_key, attester).await?;
        let mesh = cfg
            .mesh
            .as_ref()
            .context("Kubernetes on a worker needs the mesh (pods talk over it)")?;
        let pod_subnet = settings.pod_subnet(mesh.network()?, address)?;
        route_pods(settings, &mesh.interface)?;
        let listener =
            tokio::net::TcpListener::bind(("127.0.0.1", veil_kube::worker::LOCAL_API_PORT))
                .await
                .context("cannot listen for the API forwarder")?;
        let upstreams = member_addresses(cfg)?
            .into_iter()
            .map(|a| format!("{a}:{}", settings.api_port))
            .collect();
        let forwarder = tokio::spawn(veil_kube::apiproxy::forward(listener, upstreams));
        let node = veil_kube::worker::WorkerNode {
            settings: settings.clone(),
            node_name: node_name.to_string(),
            address,
            pod_subnet,
            private: private_dir(cfg),
            data: cfg.state_dir.join("kube"),
            labels: Vec::new(),
        };
        let csi = match (&settings.volumes, broker) {
            (Some(v), Some(b)) => Some(worker_csi(cfg, v, &node, b, attester)?),
            _ => None,
        };
        Ok(Self {
            node,
            keys: veil_kube::worker::WorkerKeys::generate().map_err(anyhow::Error::msg)?,
            launcher,
            started: false,
            renewed: None,
            serving_due: None,
            kubelet: None,
            forwarder,
            volume,
            csi,
        })
    }

    /// Whether the credentials are due for renewal.
    pub fn due(&self) -> bool {
        self.renewed.is_none_or(|(t, after)| t.elapsed() >= after)
    }

    /// The public keys to certify.
    pub fn public_keys(&self) -> [Vec<u8>; 3] {
        self.keys.public()
    }

    /// Takes new credentials; starts the components the first time.
    pub async fn renewed(
        &mut self,
        creds: &veil_wire::proto::KubeCredentials,
    ) -> anyhow::Result<()> {
        if creds.node_name != self.node.node_name
            || creds.node_address != self.node.address.to_string()
        {
            anyhow::bail!(
                "credentials for {} at {}, expected {} at {}",
                creds.node_name,
                creds.node_address,
                self.node.node_name,
                self.node.address
            );
        }
        let now = veil_client::clock::now().0;
        let serving = self.serving_due.is_none_or(|due| now >= due);
        self.node
            .write_credentials(&self.keys, creds, serving)
            .map_err(anyhow::Error::msg)?;
        let lifetime = u64::try_from(creds.not_after - now).unwrap_or(0);
        self.renewed = Some((
            std::time::Instant::now(),
            renew_after(Duration::from_secs(lifetime)),
        ));
        if serving {
            let end = veil_kube::pki::certificate_not_after(&creds.kubelet_serving)
                .map_err(|e| anyhow::anyhow!("the kubelet serving certificate: {e}"))?;
            // Replaced at two thirds of its life, so a few failed rounds still leave it valid.
            self.serving_due = Some(now + (end - now).max(0) * 2 / 3);
            if let Some(kubelet) = self.kubelet.clone() {
                tracing::info!(
                    event = "kubelet_restarting",
                    reason = "a new serving certificate"
                );
                self.launcher.stop(KUBELET_GROUP, STOP_GRACE).await;
                self.launcher.start(KUBELET_GROUP, vec![kubelet]).await?;
            }
        }
        if !self.started {
            let specs = self.node.prepare().map_err(anyhow::Error::msg)?;
            tracing::info!(event = "kubernetes_starting", node = %self.node.node_name, components = specs.len());
            let (kubelet, others): (Vec<_>, Vec<_>) =
                specs.into_iter().partition(|s| s.name == "kubelet");
            self.launcher.start(GROUP, others).await?;
            self.launcher.start(KUBELET_GROUP, kubelet.clone()).await?;
            self.kubelet = kubelet.into_iter().next();
            self.started = true;
            let node = self.node.clone();
            tokio::task::spawn_blocking(move || match node.import_images() {
                Ok(n) => tracing::info!(event = "images_loaded", count = n),
                Err(e) => {
                    tracing::error!(event = "images_refused", reason = %e, "images not loaded")
                }
            });
        }
        tracing::info!(
            event = "kube_credentials_renewed",
            not_after = creds.not_after
        );
        Ok(())
    }

    /// What each component is doing.
    pub fn states(&self) -> std::collections::BTreeMap<String, ProcessState> {
        self.launcher.states()
    }

    /// The control plane refused this node: its components stop and its credentials are
    /// erased (they would lapse anyway).
    pub async fn revoke(&mut self) {
        if self.started {
            tracing::warn!(
                event = "kubernetes_stopped",
                reason = "refused by the control plane"
            );
            self.launcher.stop(KUBELET_GROUP, STOP_GRACE).await;
            self.launcher.stop(GROUP, STOP_GRACE).await;
            self.started = false;
            self.kubelet = None;
        }
        // Its persistent volumes close (their anchors could not advance any more).
        if let Some(c) = &self.csi {
            c.node.stop_all().await;
        }
        let _ = std::fs::remove_dir_all(self.node.private.join("pki"));
        self.renewed = None;
        self.serving_due = None;
    }

    /// Stops everything.
    pub async fn stop(self) {
        if self.started {
            self.launcher.stop(KUBELET_GROUP, STOP_GRACE).await;
            self.launcher.stop(GROUP, STOP_GRACE).await;
        }
        self.forwarder.abort();
        if let Some(c) = self.csi {
            let _ = c.stop.send(true);
            let _ = c.server.await;
            let _ = c.secrets_server.await;
        }
        if let Some(v) = self.volume {
            v.stop().await;
        }
    }
}

/// A control plane's upkeep of its cluster through the API (cluster DNS, the removed-node
/// policy, attestation labels, removed nodes' deletion), every two seconds until dropped.
pub async fn keep_cluster(
    cp: Arc<veil_cluster::ControlPlane>,
    cfg: AgentConfig,
    settings: KubeSettings,
    attester: Arc<TpmAttester>,
) {
    use veil_kube::addons;
    // Persistent volumes: the CSI controller (served on a socket of its own, called in-process
    // by the provisioner and attacher below), stopped with this upkeep.
    // One control plane keeps the volumes; the others run no controller.
    let keeper = cfg
        .listen_addr()
        .ok()
        .is_some_and(|a| volume_keeper(&cfg) == Some(&a.to_string()));
    let volumes = match &settings.volumes {
        Some(_) if !keeper => None,
        Some(v) => match csi_controller(&cp, &cfg, v, &attester) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::error!(event = "csi_controller_not_started", error = %format!("{e:#}"));
                None
            }
        },
        None => None,
    };
    let mut refused_attachments = std::collections::BTreeMap::new();
    let admin = private_dir(&cfg).join("admin.conf");
    let mut client = None;
    let mut applied = false;
    let mut removed_applied: Option<std::collections::BTreeSet<String>> = None;
    // Errors are logged when they change, not every round.
    let mut last_error: Option<String> = None;
    let mesh_net = cfg.mesh.as_ref().and_then(|m| m.network().ok());
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c = match &client {
            Some(c) => c,
            None => match addons::client(&admin).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    tracing::debug!(error = %format!("{e:#}"), "API client not ready");
                    continue;
                }
            },
        };
        let removed = cp.removed_nodes();
        if !applied {
            let dns = async {
                if let Some(image) = &settings.dns_image {
                    let ip = veil_kube::control_plane::nth_host(
                        &settings.service_cidr,
                        veil_kube::worker::DNS_SERVICE_HOST,
                    )
                    .map_err(anyhow::Error::msg)?;
                    addons::apply_dns(c, &ip.to_string(), image).await?;
                }
                if volumes.is_some() {
                    veil_kube::volumes::apply_driver(c).await?;
                }
                addons::apply_removal_policy(c, &removed).await
            };
            match dns.await {
                Ok(()) => {
                    tracing::info!(event = "cluster_addons_applied");
                    applied = true;
                    removed_applied = Some(removed.clone());
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    if last_error.as_deref() != Some(e.as_str()) {
                        tracing::warn!(error = %e, "cluster addons not applied yet");
                        last_error = Some(e);
                    }
                    continue;
                }
            }
        }
        if removed_applied.as_ref() != Some(&removed) {
            match addons::set_removed(c, &removed).await {
                Ok(()) => removed_applied = Some(removed.clone()),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "removed nodes not written"),
            }
        }
        let admitted = cp
            .nodes()
            .into_iter()
            .filter(|n| n.role == "worker")
            .map(|n| {
                let pod_cidr = match (&n.mesh, mesh_net) {
                    (Some(m), Some(net)) => settings
                        .pod_subnet(net, m.address)
                        .ok()
                        .map(|(a, p)| format!("{a}/{p}")),
                    _ => None,
                };
                (
                    n.node_id.clone(),
                    addons::NodeFacts {
                        tee: "tpm".into(),
                        reference_set: n.set.clone(),
                        pod_cidr,
                    },
                )
            })
            .collect();
        if let Err(e) = addons::reconcile_nodes(c, &admitted, &removed).await {
            let e = format!("{e:#}");
            if last_error.as_deref() != Some(e.as_str()) {
                tracing::warn!(error = %e, "nodes not reconciled");
                last_error = Some(e);
            }
        }
        if let Some((controller, _)) = &volumes
            && let Err(e) =
                veil_kube::volumes::reconcile(c, controller, &mut refused_attachments).await
        {
            let e = format!("{e:#}");
            if last_error.as_deref() != Some(e.as_str()) {
                tracing::warn!(error = %e, "volumes not reconciled");
                last_error = Some(e);
            }
        }
    }
}

/// Aborts a task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<anyhow::Result<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What the CSI controller asks of this control plane.
#[derive(Debug)]
struct CpAuthority {
    cp: Arc<veil_cluster::ControlPlane>,
    anchors: std::path::PathBuf,
}

impl veil_csi::controller::Authority for CpAuthority {
    fn volume_key(&self, id: &str) -> Result<zeroize::Zeroizing<[u8; 32]>, String> {
        self.cp.volume_key_local(id)
    }
    fn attach(&self, id: &str, node: &str) -> Result<(), veil_csi::controller::AttachRefused> {
        use veil_cluster::AttachRefused as Cp;
        use veil_csi::controller::AttachRefused as Csi;
        self.cp.attach_volume(id, node).map_err(|e| match e {
            Cp::UnknownNode(r) => Csi::UnknownNode(r),
            Cp::Refused(r) => Csi::Refused(r),
        })
    }
    fn detach(&self, id: &str, node: &str) -> Result<(), String> {
        self.cp.detach_volume(id, node)
    }
    fn forget(&self, id: &str) -> Result<(), String> {
        self.cp.forget_volume(id)
    }
    fn anchor_for(&self, id: &str) -> String {
        format!("agent:{}:{id}", self.anchors.display())
    }
}

/// The CSI controller of this control plane, and its gRPC endpoint
/// (`<private>/csi-controller.sock`). Volumes' anchors are this control plane's to keep.
fn csi_controller(
    cp: &Arc<veil_cluster::ControlPlane>,
    cfg: &AgentConfig,
    v: &veil_reference::node_config::VolumeSettings,
    attester: &Arc<TpmAttester>,
) -> anyhow::Result<(veil_csi::controller::Controller, AbortOnDrop)> {
    let c = cp.clone();
    crate::volume::set_remote(Arc::new(move |id, advance| {
        c.volume_anchor_local(id, advance)
    }));
    let anchors = crate::volume::start_anchors(cfg, attester)?;
    let controller = veil_csi::controller::Controller::new(
        v.pool.clone(),
        v.binary.clone(),
        v.sha256.clone(),
        Box::new(CpAuthority {
            cp: cp.clone(),
            anchors,
        }),
    );
    let sock = private_dir(cfg).join("csi-controller.sock");
    let served = controller.clone();
    let server = tokio::spawn(async move {
        veil_csi::controller::serve(&sock, served, std::future::pending()).await
    });
    Ok((controller, AbortOnDrop(server)))
}
