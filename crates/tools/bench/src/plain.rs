//! The baseline of `veil-bench kubernetes`: the same Kubernetes binaries, configured by the same
//! code (`veil-kube`), on the same kind of nodes (a network namespace each on a bridge, a mount
//! namespace of its own) — but without Veil around them: no TPM, no attestation, no join, no
//! mesh (pod routes over the plain LAN), certificates issued directly by the bench. Its KMS
//! plugin is served too, so the API servers are configured alike.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use veil_keys::{ClusterSecrets, SecretBytes};
use veil_kube::control_plane::ControlPlaneNode;
use veil_kube::launcher::Launcher;
use veil_kube::pki::{KubePki, Leaf, Usage};
use veil_kube::worker::{WorkerKeys, WorkerNode};
use veil_netns::Lan;

/// `veil-bench plain-node DATA`: a baseline node's supervisor (its own mount namespace).
pub fn node_main(data: &Path) -> Result<()> {
    veil_kube::private::enter_without_tmpfs(data).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(veil_kube::launcher::serve_stdio(
        std::time::Duration::from_secs(4),
    ))
}

/// A running baseline cluster.
pub struct Plain {
    pub kubeconfig: PathBuf,
    lan: Lan,
    netns: Vec<String>,
    launchers: Vec<Arc<Launcher>>,
    dirs: Vec<PathBuf>,
    workers: Vec<String>,
    _kms: tokio::sync::oneshot::Sender<()>,
    _forwarders: Vec<tokio::task::JoinHandle<()>>,
}

fn spawn_node(netns: &str, data: &Path) -> Result<Arc<Launcher>> {
    let exe = std::env::current_exe()?;
    let data = data.to_path_buf();
    let child = veil_netns::run_in(netns, move || {
        std::process::Command::new(exe)
            .arg("plain-node")
            .arg(&data)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(data.join("supervisor.log"))?)
            .spawn()
    })??;
    Ok(Arc::new(Launcher::attach(child)?))
}

impl Plain {
    /// One control plane and two workers in `dir`.
    pub async fn start(
        dir: &Path,
        cp_settings: veil_reference::node_config::KubeSettings,
        worker_settings: veil_reference::node_config::KubeSettings,
    ) -> Result<Self> {
        let lan = Lan::create(&veil_netns::new_id())?;
        let mut netns = Vec::new();
        let mut addrs = Vec::new();
        for (i, name) in ["plain-cp", "plain-w0", "plain-w1"].iter().enumerate() {
            let at = lan.attach(name, u8::try_from(i)?)?;
            netns.push(at.netns);
            addrs.push(at.addr);
        }
        let [ns_cp, ns_w0, ns_w1]: [String; 3] = netns
            .clone()
            .try_into()
            .map_err(|_| anyhow::anyhow!("three nodes"))?;
        let [cp_addr, w0_addr, w1_addr]: [Ipv4Addr; 3] = addrs
            .try_into()
            .map_err(|_| anyhow::anyhow!("three nodes"))?;
        let mut master = [0u8; 32];
        aws_lc_rs::rand::fill(&mut master).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let secrets = ClusterSecrets::new(SecretBytes::from_slice("master", &mut master)?, [2; 32]);
        let pki = KubePki::derive(&secrets)?;
        let cp_dir = dir.join("plain-cp");
        let cp = ControlPlaneNode {
            settings: cp_settings,
            member: 0,
            members: vec![cp_addr],
            entry: None,
            private: cp_dir.join("private"),
            data: cp_dir.join("kube"),
            cluster_id: secrets.cluster_id()?.to_string(),
        };
        std::fs::create_dir_all(&cp.data)?;
        let specs = cp.prepare(&pki).map_err(anyhow::Error::msg)?;
        let (kms_stop, rx) = tokio::sync::oneshot::channel::<()>();
        let kms = veil_kube::kms::Kms::derive(&secrets)?;
        let socket = cp.kms_socket();
        tokio::spawn(async move {
            let _ = veil_kube::kms::serve(kms, &socket, async {
                let _ = rx.await;
            })
            .await;
        });
        let cp_launcher = spawn_node(&ns_cp, &cp.data)?;
        cp_launcher.start("kubernetes", specs).await?;
        let mut launchers = vec![cp_launcher];
        let mut dirs = vec![cp_dir.clone()];
        let mut forwarders = Vec::new();
        let mut workers = Vec::new();
        for (w, ns, addr, other) in [(0u8, ns_w0, w0_addr, w1_addr), (1, ns_w1, w1_addr, w0_addr)] {
            let name = format!("plain-w{w}");
            let wdir = dir.join(&name);
            let node = WorkerNode {
                settings: worker_settings.clone(),
                node_name: name.clone(),
                address: addr,
                pod_subnet: (Ipv4Addr::new(10, 244, 100 + w, 0), 24),
                private: wdir.join("private"),
                data: wdir.join("kube"),
                labels: Vec::new(),
            };
            std::fs::create_dir_all(&node.data)?;
            let keys = WorkerKeys::generate().map_err(anyhow::Error::msg)?;
            let [c, s, p] = keys.public();
            let v = std::time::Duration::from_secs(3600);
            let user = veil_kube::pki::node_user(&name);
            let creds = veil_wire::proto::KubeCredentials {
                ca: pki.cluster.cert_pem().to_string(),
                kubelet_client: pki
                    .cluster
                    .issue_for(&Leaf::client(&user, &["system:nodes"], v), &c)?,
                kubelet_serving: pki.cluster.issue_for(
                    &Leaf {
                        common_name: user.clone(),
                        organizations: vec!["system:nodes".into()],
                        dns: vec![name.clone()],
                        ips: vec![addr.into()],
                        usage: Usage::Server,
                        validity: v,
                    },
                    &s,
                )?,
                proxy_client: pki
                    .cluster
                    .issue_for(&Leaf::client("system:kube-proxy", &[], v), &p)?,
                not_after: 0,
                node_name: name.clone(),
                node_address: addr.to_string(),
            };
            node.write_credentials(&keys, &creds, true)
                .map_err(anyhow::Error::msg)?;
            let n2 = node.clone();
            let other_subnet = format!("10.244.{}.0/24", 101 - w);
            let (specs, listener) = veil_netns::run_in(&ns, move || -> Result<_> {
                let specs = n2.prepare().map_err(anyhow::Error::msg)?;
                let out = std::process::Command::new("ip")
                    .args(["route", "replace", &other_subnet, "via", &other.to_string()])
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "route: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let l =
                    std::net::TcpListener::bind(("127.0.0.1", veil_kube::worker::LOCAL_API_PORT))?;
                l.set_nonblocking(true)?;
                Ok((specs, l))
            })??;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            forwarders.push(tokio::spawn(veil_kube::apiproxy::forward(
                listener,
                vec![format!("{cp_addr}:{}", veil_mini::kube::API_PORT)],
            )));
            let l = spawn_node(&ns, &node.data)?;
            l.start("kubernetes", specs).await?;
            let n3 = node.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = n3.import_images() {
                    eprintln!("baseline: images: {e}");
                }
            });
            launchers.push(l);
            dirs.push(wdir);
            workers.push(name);
        }
        let kubeconfig = dir.join("plain-kubeconfig");
        veil_kube::control_plane::kubeconfig_admin(
            &pki,
            &kubeconfig,
            &format!("https://{cp_addr}:{}", veil_mini::kube::API_PORT),
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Self {
            kubeconfig,
            lan,
            netns,
            launchers,
            dirs,
            workers,
            _kms: kms_stop,
            _forwarders: forwarders,
        })
    }

    /// Stops everything and removes what it made.
    pub async fn stop(self) -> Result<()> {
        for l in &self.launchers {
            l.shutdown(std::time::Duration::from_secs(8)).await;
        }
        for d in &self.dirs {
            veil_mini::kube::kill_components(d);
        }
        for w in &self.workers {
            veil_kube::worker::remove_cgroups(&format!("/veil-{w}"));
        }
        self.lan.destroy(&self.netns)?;
        Ok(())
    }
}
