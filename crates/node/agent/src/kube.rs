//! Kubernetes on this node: started only once the node holds what it needs (a control plane:
//! the cluster's secrets), stopped when it no longer does or the agent stops.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context;
use veil_keys::ClusterSecrets;
use veil_kube::control_plane::ControlPlaneNode;
use veil_kube::kms::Kms;
use veil_kube::pki::KubePki;
use veil_kube::supervise::{ProcessState, Supervisor};
use veil_reference::node_config::{AgentConfig, KubeSettings};

/// How long components get to stop after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(4);

/// The node's private directory (a tmpfs in the node's mount namespace).
pub fn private_dir(cfg: &AgentConfig) -> std::path::PathBuf {
    cfg.state_dir.join("private")
}

/// A control plane's running Kubernetes.
#[derive(Debug)]
pub struct KubeControlPlane {
    supervisor: Supervisor,
    kms_stop: tokio::sync::oneshot::Sender<()>,
    kms: tokio::task::JoinHandle<anyhow::Result<()>>,
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

/// The IPv4 host of `host:port`.
pub fn host_of(addr: &str) -> anyhow::Result<Ipv4Addr> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.parse()
        .with_context(|| format!("`{addr}`: expected an IPv4 address and port"))
}

impl KubeControlPlane {
    /// Starts etcd, the API server, the controller manager and the scheduler, and the KMS
    /// plugin they use, for the cluster whose secrets are `secrets`.
    pub fn start(
        cfg: &AgentConfig,
        settings: &KubeSettings,
        secrets: &ClusterSecrets,
    ) -> anyhow::Result<Self> {
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
        Ok(Self {
            supervisor: Supervisor::start(specs),
            kms_stop,
            kms,
        })
    }

    /// What each component is doing.
    pub fn states(&self) -> std::collections::BTreeMap<String, ProcessState> {
        self.supervisor.states()
    }

    /// Stops the components, then the KMS plugin.
    pub async fn stop(self) {
        self.supervisor.stop(STOP_GRACE).await;
        let _ = self.kms_stop.send(());
        let _ = self.kms.await;
    }
}
