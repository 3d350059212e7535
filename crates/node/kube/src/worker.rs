//! A worker's Kubernetes: containerd, kubelet and kube-proxy, started only once the node holds
//! credentials the control plane issued after an attested join, and given them again (new
//! certificates for the same keys) at every renewal.
//!
//! The node's keys are made here and never leave it; its certificates are short-lived. Pods
//! get addresses from the node's own slice of the pod network (derived from its mesh address,
//! so every node routes every other node's slice to it over the mesh without asking anyone).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use rcgen::KeyPair;
use veil_reference::node_config::KubeSettings;
use veil_wire::proto::KubeCredentials;
use zeroize::Zeroizing;

use crate::control_plane::{CLUSTER_DOMAIN, nth_host};
use crate::files::{kubeconfig_files, write_private};
use crate::supervise::ProcessSpec;

/// The local port on which a worker reaches the cluster's API servers (a forwarder to any
/// control plane that answers).
pub const LOCAL_API_PORT: u16 = 6443;
/// The cluster DNS service's host number in the service network (`10.96.0.10`).
pub const DNS_SERVICE_HOST: u32 = 10;
/// The image the pod sandboxes run.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// A worker's three key pairs (kubelet client, kubelet serving, kube-proxy client).
pub struct WorkerKeys {
    kubelet_client: KeyPair,
    kubelet_serving: KeyPair,
    proxy_client: KeyPair,
}

impl std::fmt::Debug for WorkerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerKeys(<redacted>)")
    }
}

impl WorkerKeys {
    /// Fresh keys.
    pub fn generate() -> Result<Self, String> {
        let g = || KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string());
        Ok(Self {
            kubelet_client: g()?,
            kubelet_serving: g()?,
            proxy_client: g()?,
        })
    }

    /// Their public halves (SubjectPublicKeyInfo DER): kubelet client, kubelet serving,
    /// kube-proxy client.
    pub fn public(&self) -> [Vec<u8>; 3] {
        use rcgen::PublicKeyData;
        [
            self.kubelet_client.subject_public_key_info(),
            self.kubelet_serving.subject_public_key_info(),
            self.proxy_client.subject_public_key_info(),
        ]
    }
}

/// Where and how one worker runs Kubernetes.
#[derive(Debug, Clone)]
pub struct WorkerNode {
    /// The measured settings.
    pub settings: KubeSettings,
    /// Its node name in Kubernetes (its node ID).
    pub node_name: String,
    /// Its mesh address (kubelet's node IP).
    pub address: Ipv4Addr,
    /// Its slice of the pod network.
    pub pod_subnet: (Ipv4Addr, u8),
    /// The node's private directory (tmpfs).
    pub private: PathBuf,
    /// The node's data directory.
    pub data: PathBuf,
    /// Labels kubelet registers the node with (not trusted: the control plane sets the
    /// attestation labels itself).
    pub labels: Vec<(String, String)>,
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

impl WorkerNode {
    /// containerd's socket.
    pub fn containerd_socket(&self) -> PathBuf {
        self.private.join("containerd.sock")
    }

    /// The kubelet's cgroup root: its own in every hierarchy (several kubelets share the
    /// machine's cgroups in a local cluster).
    pub fn cgroup_root(&self) -> String {
        format!("/veil-{}", self.node_name)
    }

    fn pki(&self) -> PathBuf {
        self.private.join("pki")
    }

    /// Writes the certificates of `creds` with the keys they certify, the kubelet's serving
    /// certificate only if `serving`. The client certificates are reread on every new
    /// connection (kubeconfigs name files); the serving one only when kubelet starts (kubelet
    /// 1.34 watches the file, but serves the one it started with to clients that connect by IP
    /// address, as the API server does: kubernetes/kubernetes#133001).
    pub fn write_credentials(
        &self,
        keys: &WorkerKeys,
        creds: &KubeCredentials,
        serving: bool,
    ) -> Result<(), String> {
        let io = |e: std::io::Error| e.to_string();
        let d = self.pki();
        let pem = |k: &KeyPair| Zeroizing::new(k.serialize_pem());
        write_private(&d.join("ca.crt"), creds.ca.as_bytes()).map_err(io)?;
        for (name, key, cert) in [
            (
                "kubelet-client",
                &keys.kubelet_client,
                &creds.kubelet_client,
            ),
            (
                "kubelet-serving",
                &keys.kubelet_serving,
                &creds.kubelet_serving,
            ),
            ("kube-proxy", &keys.proxy_client, &creds.proxy_client),
        ] {
            if name == "kubelet-serving" && !serving {
                continue;
            }
            write_private(&d.join(format!("{name}.key")), pem(key).as_bytes()).map_err(io)?;
            write_private(&d.join(format!("{name}.crt")), cert.as_bytes()).map_err(io)?;
        }
        Ok(())
    }

    /// Prepares the node (cgroups, networking sysctls, directories) and writes every
    /// configuration; returns containerd, kubelet and kube-proxy, ready to supervise. The
    /// credentials must have been written first.
    pub fn prepare(&self) -> Result<Vec<ProcessSpec>, String> {
        let io = |e: std::io::Error| e.to_string();
        let data = &self.data;
        for d in [
            "containerd",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "pod-logs",
            "volume-plugins",
            "home",
            "runc",
        ] {
            std::fs::create_dir_all(data.join(d)).map_err(io)?;
        }
        // Forwarding for pods, and bridged pod traffic through kube-proxy's rules (per network
        // namespace).
        for (path, value) in [
            ("/proc/sys/net/ipv4/ip_forward", "1"),
            ("/proc/sys/net/bridge/bridge-nf-call-iptables", "1"),
        ] {
            std::fs::write(path, value).map_err(|e| format!("{path}: {e}"))?;
        }
        self.make_cgroups()?;
        let socket = self.containerd_socket();
        if socket.as_os_str().len() > 100 {
            return Err(format!(
                "{}: a unix socket path must be under 108 bytes",
                socket.display()
            ));
        }
        let (containerd_bin, containerd_sha) = self
            .settings
            .binary("containerd")
            .map_err(|e| e.to_string())?;
        let bin_dir = containerd_bin
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let containerd_conf = self.private.join("containerd.toml");
        write_private(
            &containerd_conf,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "{runc}"
        Root = "{runc_root}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
"#,
                root = s(&data.join("containerd/root")),
                state = s(&self.private.join("containerd-state")),
                socket = s(&socket),
                opt = s(&data.join("containerd/opt")),
                pause = PAUSE_IMAGE,
                runc = s(&bin_dir.join("runc")),
                runc_root = s(&data.join("runc")),
                cni_conf = s(&data.join("cni/net.d")),
            )
            .as_bytes(),
        )
        .map_err(io)?;
        let (net, prefix) = self.pod_subnet;
        let gateway = Ipv4Addr::from(u32::from(net) + 1);
        write_private(
            &data.join("cni/net.d/10-veil.conflist"),
            serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "veil",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": true,
                        "ipMasq": false,
                        "hairpinMode": true,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": format!("{net}/{prefix}"), "gateway": gateway.to_string()}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": s(&data.join("cni/ipam")),
                        }
                    },
                    {"type": "portmap", "capabilities": {"portMappings": true}}
                ]
            })
            .to_string()
            .as_bytes(),
        )
        .map_err(io)?;
        let dns = nth_host(&self.settings.service_cidr, DNS_SERVICE_HOST)?;
        let resolv = data.join("resolv.conf");
        write_private(
            &resolv,
            format!("nameserver {dns}\nsearch {CLUSTER_DOMAIN}\noptions ndots:5\n").as_bytes(),
        )
        .map_err(io)?;
        let pki = self.pki();
        let local = format!("https://127.0.0.1:{LOCAL_API_PORT}");
        let kubelet_kubeconfig = self.private.join("kubelet.conf");
        write_private(
            &kubelet_kubeconfig,
            kubeconfig_files(
                &local,
                &pki.join("ca.crt"),
                &crate::pki::node_user(&self.node_name),
                &pki.join("kubelet-client.crt"),
                &pki.join("kubelet-client.key"),
            )
            .as_bytes(),
        )
        .map_err(io)?;
        let kubelet_config = self.private.join("kubelet.yaml");
        write_private(
            &kubelet_config,
            format!(
                r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {address}
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
tlsCertFile: {serving_crt}
tlsPrivateKeyFile: {serving_key}
tlsMinVersion: VersionTLS12
rotateCertificates: false
serverTLSBootstrap: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
failCgroupV1: false
clusterDomain: {domain}
clusterDNS:
- {dns}
resolvConf: {resolv}
containerRuntimeEndpoint: unix://{socket}
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
enableControllerAttachDetach: true
makeIPTablesUtilChains: true
evictionHard:
  memory.available: 50Mi
  nodefs.available: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
protectKernelDefaults: false
"#,
                address = self.address,
                ca = s(&pki.join("ca.crt")),
                serving_crt = s(&pki.join("kubelet-serving.crt")),
                serving_key = s(&pki.join("kubelet-serving.key")),
                cgroup_root = self.cgroup_root(),
                domain = CLUSTER_DOMAIN,
                resolv = s(&resolv),
                socket = s(&socket),
                pod_logs = s(&data.join("pod-logs")),
                volume_plugins = s(&data.join("volume-plugins")),
            )
            .as_bytes(),
        )
        .map_err(io)?;
        let proxy_kubeconfig = self.private.join("kube-proxy.conf");
        write_private(
            &proxy_kubeconfig,
            kubeconfig_files(
                &local,
                &pki.join("ca.crt"),
                "system:kube-proxy",
                &pki.join("kube-proxy.crt"),
                &pki.join("kube-proxy.key"),
            )
            .as_bytes(),
        )
        .map_err(io)?;
        let proxy_config = self.private.join("kube-proxy.yaml");
        write_private(
            &proxy_config,
            format!(
                r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
mode: iptables
clusterCIDR: {cluster}
hostnameOverride: {node}
bindAddress: {address}
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack:
  maxPerCore: 0
"#,
                kubeconfig = s(&proxy_kubeconfig),
                cluster = self.settings.cluster_cidr,
                node = self.node_name,
                address = self.address,
            )
            .as_bytes(),
        )
        .map_err(io)?;

        let home = data.join("home");
        let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin_dir.display());
        let env = vec![("HOME".to_string(), s(&home)), ("PATH".to_string(), path)];
        let spec = |name: &str, args: Vec<String>| -> Result<ProcessSpec, String> {
            let (program, sha256) = self.settings.binary(name).map_err(|e| e.to_string())?;
            Ok(ProcessSpec {
                name: name.into(),
                program,
                sha256: Some(sha256),
                args,
                env: env.clone(),
                log: data.join(format!("{name}.log")),
            })
        };
        let mut containerd = spec(
            "containerd",
            vec![format!("--config={}", s(&containerd_conf))],
        )?;
        containerd.sha256 = Some(containerd_sha);
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let kubelet = spec(
            "kubelet",
            vec![
                format!("--config={}", s(&kubelet_config)),
                format!("--kubeconfig={}", s(&kubelet_kubeconfig)),
                format!("--hostname-override={}", self.node_name),
                format!("--node-ip={}", self.address),
                format!("--root-dir={}", s(&data.join("kubelet"))),
                format!("--node-labels={}", labels.join(",")),
            ],
        )?;
        let proxy = spec("kube-proxy", vec![format!("--config={}", s(&proxy_config))])?;
        Ok(vec![containerd, kubelet, proxy])
    }

    /// The manifest digests (`sha256:…`) of the images `refs` name, as this node's
    /// containerd holds them (what its containers run); a reference it does not hold is an
    /// error. Short names are read as Docker's (`busybox` is `docker.io/library/busybox:latest`).
    pub fn image_digests(&self, refs: &[String]) -> Result<Vec<String>, String> {
        let (ctr, ctr_sha) = self.settings.binary("ctr").map_err(|e| e.to_string())?;
        crate::supervise::check_measured(&ctr, &ctr_sha)?;
        let out = crate::exec::command(&ctr)
            .arg("--address")
            .arg(self.containerd_socket())
            .args(["-n", "k8s.io", "images", "ls"])
            .output()
            .map_err(|e| format!("cannot run ctr: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ctr images ls: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let listing = String::from_utf8_lossy(&out.stdout);
        refs.iter()
            .map(|r| {
                let want = normalised_image(r);
                image_digest_in(&listing, &want)
                    .ok_or_else(|| format!("containerd holds no image {want}"))
            })
            .collect()
    }

    /// Loads the measured images into containerd once it answers (each archive checked against
    /// the SHA-256 the measured configuration names); returns how many.
    pub fn import_images(&self) -> Result<usize, String> {
        let socket = self.containerd_socket();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "containerd does not answer at {}",
                    socket.display()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let (ctr, ctr_sha) = self.settings.binary("ctr").map_err(|e| e.to_string())?;
        let check = crate::supervise::check_measured;
        check(&ctr, &ctr_sha)?;
        for (image, sha) in &self.settings.images {
            let want: [u8; 32] = hex::decode(sha)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| format!("{}: bad SHA-256", image.display()))?;
            check(image, &want)?;
            let out = crate::exec::command(&ctr)
                .arg("--address")
                .arg(&socket)
                .args(["-n", "k8s.io", "images", "import"])
                .arg(image)
                .output()
                .map_err(|e| format!("cannot run ctr: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ctr images import {}: {}",
                    image.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(self.settings.images.len())
    }

    /// The kubelet's cgroup root in every v1 hierarchy (cpuset's given the parent's CPUs and
    /// memory nodes, as a new cpuset has none).
    fn make_cgroups(&self) -> Result<(), String> {
        let root = Path::new("/sys/fs/cgroup");
        let Ok(list) = std::fs::read_dir(root) else {
            return Ok(());
        };
        let name = self.cgroup_root();
        let name = name.trim_start_matches('/');
        for e in list.flatten() {
            let h = e.path();
            if h.join("cgroup.procs").exists() && !h.join("cgroup.controllers").exists() {
                let dir = h.join(name);
                std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
                if h.ends_with("cpuset") {
                    for f in ["cpuset.cpus", "cpuset.mems"] {
                        let v =
                            std::fs::read_to_string(h.join(f)).map_err(|e| format!("{f}: {e}"))?;
                        std::fs::write(dir.join(f), v.trim()).map_err(|e| format!("{f}: {e}"))?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Removes a kubelet's cgroup root from every hierarchy, killing what is still in it.
/// Returns the processes killed.
pub fn remove_cgroups(cgroup_root: &str) -> usize {
    let name = cgroup_root.trim_start_matches('/');
    let mut killed = 0;
    let Ok(list) = std::fs::read_dir("/sys/fs/cgroup") else {
        return 0;
    };
    let hierarchies: Vec<PathBuf> = list
        .flatten()
        .map(|e| e.path().join(name))
        .filter(|p| p.exists())
        .collect();
    for dir in &hierarchies {
        for procs in walk(dir) {
            if let Ok(text) = std::fs::read_to_string(procs.join("cgroup.procs")) {
                for pid in text.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    if nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    )
                    .is_ok()
                    {
                        killed += 1;
                    }
                }
            }
        }
    }
    for _ in 0..50 {
        let mut left = false;
        for dir in &hierarchies {
            let mut dirs = walk(dir);
            dirs.reverse();
            for d in dirs {
                if std::fs::remove_dir(&d).is_err() {
                    left = true;
                }
            }
        }
        if !left {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    killed
}

/// `dir` and every directory below it, parents first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while let Some(d) = out.get(i).cloned() {
        if let Ok(list) = std::fs::read_dir(&d) {
            for e in list.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// An image reference as containerd names it: a registry host and a tag (or digest) added
/// where Docker's short forms leave them out.
pub fn normalised_image(r: &str) -> String {
    let (name, suffix) = match r.split_once('@') {
        Some((n, d)) => (n, format!("@{d}")),
        None => {
            let last = r.rsplit('/').next().unwrap_or(r);
            if last.contains(':') {
                (r, String::new())
            } else {
                (r, ":latest".to_string())
            }
        }
    };
    let first = name.split('/').next().unwrap_or(name);
    let has_host =
        name.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    let name = match (has_host, name.contains('/')) {
        (true, _) => name.to_string(),
        (false, true) => format!("docker.io/{name}"),
        (false, false) => format!("docker.io/library/{name}"),
    };
    format!("{name}{suffix}")
}

/// The digest of image `want` in the output of `ctr images ls` (`REF TYPE DIGEST …` rows).
pub fn image_digest_in(listing: &str, want: &str) -> Option<String> {
    listing.lines().skip(1).find_map(|l| {
        let mut cols = l.split_whitespace();
        let (r, _, digest) = (cols.next()?, cols.next()?, cols.next()?);
        (r == want && digest.starts_with("sha256:")).then(|| digest.to_string())
    })
}

#[cfg(test)]
mod image_tests {
    use super::*;

    #[test]
    fn image_references_are_read_as_containerd_names_them() {
        assert_eq!(
            normalised_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalised_image("acme/api:2"), "docker.io/acme/api:2");
        assert_eq!(
            normalised_image("veil.local/busybox:1"),
            "veil.local/busybox:1"
        );
        assert_eq!(
            normalised_image("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        let listing = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
            veil.local/busybox:1 application/vnd.oci.image.manifest.v1+json sha256:ab12 1.0 MiB linux/amd64 -\n";
        assert_eq!(
            image_digest_in(listing, "veil.local/busybox:1").as_deref(),
            Some("sha256:ab12")
        );
        assert_eq!(image_digest_in(listing, "veil.local/other:1"), None);
    }
}
