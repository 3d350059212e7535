//! Kubernetes in a local cluster: where the component binaries are, what the nodes' measured
//! configuration says of them, and waiting for the API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use veil_reference::node_config::{KubeSettings, StateVolumeSettings, VolumeSettings};

/// The components a control-plane node runs.
pub const CONTROL_PLANE_COMPONENTS: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// The components a worker runs.
pub const WORKER_COMPONENTS: &[&str] = &["containerd", "ctr", "kubelet", "kube-proxy"];

/// The pod network.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// The service network.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// The API server's port.
pub const API_PORT: u16 = 6443;

/// Where the component binaries are: `$VEIL_COMPONENTS`, or what `components/build.sh` last
/// built (`$VEIL_CACHE` or `~/.cache/veil-ci`, `components/current/bin`).
pub fn components_dir() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("VEIL_COMPONENTS") {
        Some(d) => PathBuf::from(d),
        None => {
            let cache = std::env::var_os("VEIL_CACHE")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/veil-ci"))
                })
                .context("neither VEIL_COMPONENTS, VEIL_CACHE nor HOME is set")?;
            cache.join("components/current/bin")
        }
    };
    if !dir.join("kube").exists() {
        bail!(
            "no Kubernetes components in {} (build them: components/build.sh, or set VEIL_COMPONENTS)",
            dir.display()
        );
    }
    std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))
}

/// The settings every node is measured with: the SHA-256 of each component it may start.
pub fn settings(dir: &Path, components: &[&str]) -> anyhow::Result<KubeSettings> {
    let mut hashes: BTreeMap<PathBuf, String> = BTreeMap::new();
    let mut binaries = BTreeMap::new();
    for c in components {
        let path = dir.join(c);
        let real = std::fs::canonicalize(&path).with_context(|| format!("{}", path.display()))?;
        let sha = match hashes.get(&real) {
            Some(s) => s.clone(),
            None => {
                let s = hex::encode(
                    veil_kube::supervise::file_sha256(&real)
                        .with_context(|| format!("{}", real.display()))?,
                );
                hashes.insert(real, s.clone());
                s
            }
        };
        binaries.insert((*c).to_string(), sha);
    }
    Ok(KubeSettings {
        bin_dir: dir.to_path_buf(),
        binaries,
        cluster_cidr: CLUSTER_CIDR.into(),
        service_cidr: SERVICE_CIDR.into(),
        api_port: API_PORT,
        images: BTreeMap::new(),
        dns_image: Some(crate::images::COREDNS.into()),
        credential_secs: None,
        serving_secs: None,
        state_volume: None,
        volumes: None,
    })
}

/// The state volume every node is measured with: `binary`'s SHA-256, and the capacity.
pub fn state_volume(binary: &Path, size_mib: u64) -> anyhow::Result<StateVolumeSettings> {
    let binary = std::fs::canonicalize(binary).with_context(|| format!("{}", binary.display()))?;
    Ok(StateVolumeSettings {
        sha256: hex::encode(
            veil_kube::supervise::file_sha256(&binary)
                .with_context(|| format!("{}", binary.display()))?,
        ),
        binary,
        size_mib,
    })
}

/// Persistent volumes from the disk pool `pool` with `binary` (measured by its SHA-256).
pub fn volumes(binary: &Path, pool: &Path) -> anyhow::Result<VolumeSettings> {
    let v = state_volume(binary, 0)?;
    std::fs::create_dir_all(pool).with_context(|| format!("{}", pool.display()))?;
    Ok(VolumeSettings {
        binary: v.binary,
        sha256: v.sha256,
        pool: std::fs::canonicalize(pool)?,
    })
}

/// Runs kubectl with the workspace's kubeconfig; its standard output, or why it failed.
pub fn kubectl(ws: &Path, args: &[&str]) -> anyhow::Result<String> {
    kubectl_with(&ws.join("kubeconfig"), &ws.join("owner"), args)
}

/// Runs kubectl with the kubeconfig `kc` (its cache under `home`).
pub fn kubectl_with(kc: &Path, home: &Path, args: &[&str]) -> anyhow::Result<String> {
    kubectl_input(kc, home, args, None)
}

/// Runs kubectl with the kubeconfig `kc` (its cache under `home`), `stdin` on its standard
/// input; its standard output, or why it failed.
pub fn kubectl_input(
    kc: &Path,
    home: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<String> {
    use std::io::Write;
    use std::process::Stdio;
    let dir = components_dir()?;
    let mut c = Command::new(dir.join("kubectl"))
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .env("HOME", home)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run kubectl")?;
    if let Some(input) = stdin {
        c.stdin
            .take()
            .context("kubectl's stdin")?
            .write_all(input.as_bytes())?;
    }
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Waits until the API server answers `/readyz` through the owner's kubeconfig.
pub fn wait_ready(ws: &Path, timeout: Duration) -> anyhow::Result<()> {
    wait_ready_with(&ws.join("kubeconfig"), timeout)
}

/// Waits until the API server answers `/readyz` through the kubeconfig `kc`.
pub fn wait_ready_with(kc: &Path, timeout: Duration) -> anyhow::Result<()> {
    let home = kc.parent().unwrap_or(Path::new("/tmp")).to_path_buf();
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match kubectl_with(kc, &home, &["get", "--raw", "/readyz"]) {
            Ok(out) if out.trim() == "ok" => return Ok(()),
            Ok(other) => {
                if std::time::Instant::now() > deadline {
                    bail!(
                        "the API server is not ready after {timeout:?}: {}",
                        other.trim()
                    );
                }
            }
            Err(e) => {
                if std::time::Instant::now() > deadline {
                    return Err(e.context(format!("the API server is not ready after {timeout:?}")));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The PIDs of processes whose command line names `dir` (components a killed agent left).
pub fn processes_under(dir: &Path) -> Vec<u32> {
    let needle = dir.display().to_string();
    let me = std::process::id();
    let mut found = Vec::new();
    if let Ok(list) = std::fs::read_dir("/proc") {
        for e in list.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline"))
                && String::from_utf8_lossy(&cmd).contains(&needle)
            {
                found.push(pid);
            }
        }
    }
    found
}

/// Kills what is left of a node's components after its agent stopped (an agent killed with
/// SIGKILL cannot stop them): every process whose command line names the node's private or
/// Kubernetes directory. Returns how many there were.
pub fn kill_components(node_dir: &Path) -> usize {
    let mut pids = processes_under(&node_dir.join("private"));
    pids.extend(processes_under(&node_dir.join("kube")));
    pids.sort_unstable();
    pids.dedup();
    for pid in &pids {
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    }
    // A worker's pods live in its kubelet's cgroup root: whatever runs there goes too.
    let mut n = pids.len();
    if let Some(id) = std::fs::read(node_dir.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<veil_wire::status::Status>(&b).ok())
        .and_then(|s| s.node_id)
    {
        n += veil_kube::worker::remove_cgroups(&format!("/veil-{id}"));
    }
    n
}
