//! `veil-bench kubernetes` (root): a real `veil mini up --nodes 3` — time until every Node is
//! Ready; pod start latency (20 pods created at once, each timed until the API reports it
//! Running); pod-to-pod throughput across nodes (HTTP of a 256 MiB file, busybox wget from
//! busybox httpd), through the mesh, against the same transfer between the two nodes' network
//! namespaces over the plain node link in the same run; memory per node (the resident memory of
//! every process of the node, pods included).
//!
//! It runs the `veil` binary beside this one (`cargo build --release --bins` first) and the
//! Kubernetes components `components/build.sh` built.

// Only serde_json values are indexed here: a missing key reads as null, it never panics.
#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub(crate) fn beside(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe.parent().context("no directory")?.join(name);
    if !p.exists() {
        bail!(
            "{} not found (cargo build --release --bins first)",
            p.display()
        );
    }
    Ok(p)
}

fn kubectl(ws: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    kubectl_with(&ws.join("kubeconfig"), args, stdin)
}

/// kubectl with the kubeconfig `kc` (its cache beside it).
fn kubectl_with(kc: &Path, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let home = kc.parent().unwrap_or(Path::new("/tmp"));
    veil_mini::kube::kubectl_input(kc, home, args, stdin)
}

fn json(ws: &Path, args: &[&str]) -> Result<serde_json::Value> {
    json_with(&ws.join("kubeconfig"), args)
}

fn json_with(kc: &Path, args: &[&str]) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&kubectl_with(kc, args, None)?)?)
}

/// Waits until `n` Nodes are Ready through `kc`.
fn nodes_ready(kc: &Path, n: usize, secs: u64) -> Result<Duration> {
    wait("every Node Ready", secs, || {
        json_with(kc, &["get", "nodes", "-o", "json"]).is_ok_and(|v| {
            let items = v["items"].as_array().cloned().unwrap_or_default();
            items.len() == n
                && items.iter().all(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
        })
    })
}

/// Creates `n` pods at once through `kc` and times each until the API reports it Running;
/// returns the sorted latencies (seconds).
fn pod_start(kc: &Path, n: usize) -> Result<Vec<f64>> {
    // Pods need the namespace's default service account, which the controller manager makes
    // shortly after the cluster starts.
    wait("the default service account", 60, || {
        kubectl_with(kc, &["get", "serviceaccount", "default"], None).is_ok()
    })?;
    let t = Instant::now();
    kubectl_with(kc, &["apply", "-f", "-"], Some(&pods_yaml(n)))?;
    let mut started: std::collections::BTreeMap<String, f64> = Default::default();
    wait("the pods Running", 180, || {
        if let Ok(v) = json_with(kc, &["get", "pods", "-l", "bench=start", "-o", "json"]) {
            for p in v["items"].as_array().cloned().unwrap_or_default() {
                if p["status"]["phase"] == "Running" {
                    let name = p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    started
                        .entry(name)
                        .or_insert_with(|| t.elapsed().as_secs_f64());
                }
            }
        }
        started.len() == n
    })?;
    let mut lat: Vec<f64> = started.values().copied().collect();
    lat.sort_by(f64::total_cmp);
    kubectl_with(
        kc,
        &[
            "delete",
            "pods",
            "-l",
            "bench=start",
            "--now",
            "--wait=false",
        ],
        None,
    )?;
    Ok(lat)
}

fn wait(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > Duration::from_secs(secs) {
            bail!("timed out after {secs}s waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(start.elapsed())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

/// Resident memory (KiB) of every process whose command line names `dir`, and of everything in
/// the memory cgroup `cgroup` (the node's pods).
fn node_memory_kib(dir: &Path, cgroup: Option<&str>) -> u64 {
    let mut kib = 0;
    for pid in veil_mini::kube::processes_under(dir) {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmRSS:"))
        {
            kib += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    if let Some(cg) = cgroup {
        // The kubelet's cgroup root: pods (and their runtime) only; the node's own processes
        // above are outside it.
        let p = format!("/sys/fs/cgroup/memory/veil-{cg}/memory.usage_in_bytes");
        kib += std::fs::read_to_string(p)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024;
    }
    kib
}

fn pods_yaml(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: start-{i}, labels: {{bench: start}}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - {{name: c, image: veil.local/busybox:1, imagePullPolicy: Never, command: [sleep, '3600']}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The rate (Gbit/s) at which `client` moves `mib` MiB, not counting `overhead` seconds (what
/// starting the client costs without moving anything).
fn transfer(mib: u64, overhead: f64, client: impl Fn() -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    client()?;
    let s = (t.elapsed().as_secs_f64() - overhead).max(1e-3);
    Ok(mib as f64 * 8.0 / 1024.0 / s)
}

pub fn run(_secs: f64) -> Result<()> {
    veil_netns::supported().map_err(anyhow::Error::msg)?;
    let veil = beside("veil")?;
    let tmp = tempfile::tempdir()?;
    let ws = tmp.path().join("ws");
    let w = ws.display().to_string();
    println!(
        "veil-bench kubernetes: veil mini up --nodes 3 (1 control plane, 2 workers), real Kubernetes v1.34.4"
    );
    let t = Instant::now();
    let out = Command::new(&veil)
        .args(["mini", "up", "--nodes", "3", "--workspace", &w])
        .output()?;
    let down = || {
        let _ = Command::new(&veil)
            .args(["mini", "down", "--workspace", &w])
            .output();
    };
    if !out.status.success() {
        down();
        bail!("veil mini up: {}", String::from_utf8_lossy(&out.stderr));
    }
    let r = (|| -> Result<()> {
        let up = t.elapsed();
        let kc = ws.join("kubeconfig");
        let ready = nodes_ready(&kc, 2, 180)?;
        let veil_up = up + ready;
        // Memory per node, idle (every Node Ready, CoreDNS running, no workload).
        let mem_state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ws.join("mini.json"))?)?;
        let mem_nodes = mem_state["nodes"].as_array().cloned().unwrap_or_default();
        let mut mem = Vec::new();
        for n in &mem_nodes {
            let name = n["name"].as_str().unwrap_or_default().to_string();
            let dir = PathBuf::from(n["dir"].as_str().unwrap_or_default());
            let id = std::fs::read(dir.join("status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<veil_wire::status::Status>(&b).ok())
                .and_then(|s| s.node_id)
                .filter(|_| n["role"] == "worker");
            mem.push((name, node_memory_kib(&dir, id.as_deref()) / 1024));
        }
        let veil_lat = pod_start(&kc, 20)?;

        // The baseline: the same binaries and configuration, without Veil, in the same run.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        let bin = veil_mini::kube::components_dir()?;
        let plain_dir = tmp.path().join("baseline");
        std::fs::create_dir_all(&plain_dir)?;
        let cp_settings =
            veil_mini::kube::settings(&bin, veil_mini::kube::CONTROL_PLANE_COMPONENTS)?;
        let mut w_settings = veil_mini::kube::settings(&bin, veil_mini::kube::WORKER_COMPONENTS)?;
        w_settings.images = veil_mini::images::build(&plain_dir.join("images"), &bin)?
            .into_iter()
            .collect();
        let t = Instant::now();
        let plain = rt.block_on(crate::plain::Plain::start(
            &plain_dir,
            cp_settings,
            w_settings,
        ))?;
        let measured = (|| -> Result<(Duration, Vec<f64>)> {
            veil_mini::kube::wait_ready_with(&plain.kubeconfig, Duration::from_secs(120))?;
            nodes_ready(&plain.kubeconfig, 2, 180)?;
            let plain_up = t.elapsed();
            Ok((plain_up, pod_start(&plain.kubeconfig, 20)?))
        })();
        rt.block_on(plain.stop())?;
        let (plain_up, plain_lat) = measured?;
        println!(
            "{:<44} {:>8.1} s   baseline without Veil: {:>6.1} s   (API server ready after {:.1} s)",
            "veil mini up → every Node Ready",
            veil_up.as_secs_f64(),
            plain_up.as_secs_f64(),
            up.as_secs_f64()
        );
        println!(
            "{:<44} p50 {:>5.0} ms  p99 {:>5.0} ms   baseline without Veil: p50 {:>5.0} ms  p99 {:>5.0} ms   ratio p50 {:.2}x",
            "pod start latency, 20 pods at once",
            percentile(&veil_lat, 0.5) * 1000.0,
            percentile(&veil_lat, 0.99) * 1000.0,
            percentile(&plain_lat, 0.5) * 1000.0,
            percentile(&plain_lat, 0.99) * 1000.0,
            percentile(&veil_lat, 0.5) / percentile(&plain_lat, 0.5)
        );

        // Throughput between pods on the two workers, through the mesh, and between the nodes
        // themselves over the plain link.
        let state: serde_json::Value =
            serde_json::from_slice(&std::fs::read(ws.join("mini.json"))?)?;
        let nodes = state["nodes"].as_array().cloned().unwrap_or_default();
        let worker = |name: &str| -> Result<(String, String, PathBuf)> {
            let n = nodes.iter().find(|n| n["name"] == name).context("node")?;
            let st: veil_wire::status::Status = serde_json::from_slice(&std::fs::read(
                ws.join("nodes").join(name).join("status.json"),
            )?)?;
            Ok((
                st.node_id.context("node ID")?,
                n["addr"].as_str().context("addr")?.to_string(),
                PathBuf::from(n["dir"].as_str().context("dir")?),
            ))
        };
        let (id0, addr0, dir0) = worker("worker-0")?;
        let (id1, addr1, dir1) = worker("worker-1")?;
        let mib = 256;
        let pod = |name: &str, node: &str, cmd: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  nodeName: {node}\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: c\n    image: veil.local/busybox:1\n    imagePullPolicy: Never\n    command: [sh, -c, \"{cmd}\"]\n"
            )
        };
        kubectl(
            &ws,
            &["apply", "-f", "-"],
            Some(
                &(pod(
                    "srv",
                    &id1,
                    &format!(
                        "mkdir -p /tmp/w && dd if=/dev/zero of=/tmp/w/big bs=1048576 count={mib} && exec httpd -f -p 8080 -h /tmp/w"
                    ),
                ) + "---\n"
                    + &pod("cli", &id0, "exec sleep 3600")),
            ),
        )?;
        wait("the throughput pods", 120, || {
            json(&ws, &["get", "pods", "srv", "cli", "-o", "json"]).is_ok_and(|v| {
                v["items"].as_array().is_some_and(|i| {
                    i.len() == 2 && i.iter().all(|p| p["status"]["phase"] == "Running")
                })
            })
        })?;
        let ip = kubectl(
            &ws,
            &["get", "pod", "srv", "-o", "jsonpath={.status.podIP}"],
            None,
        )?;
        wait("the server's file", 60, || {
            kubectl(
                &ws,
                &[
                    "exec",
                    "cli",
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-qO",
                    "/dev/null",
                    &format!("http://{ip}:8080/big"),
                ],
                None,
            )
            .is_ok()
        })?;
        // What `kubectl exec` costs by itself, taken off each transfer.
        let mut exec = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            kubectl(&ws, &["exec", "cli", "--", "true"], None)?;
            exec = exec.min(t.elapsed().as_secs_f64());
        }
        let mut mesh = Vec::new();
        for _ in 0..3 {
            mesh.push(transfer(mib, exec, || {
                kubectl(
                    &ws,
                    &[
                        "exec",
                        "cli",
                        "--",
                        "wget",
                        "-qO",
                        "/dev/null",
                        &format!("http://{ip}:8080/big"),
                    ],
                    None,
                )
                .map(|_| ())
            })?);
        }
        // The plain link: the same transfer between the two workers' namespaces over the LAN
        // (port 6443, which strict mode lets through between nodes), outside the mesh.
        let ns = |name: &str| -> Result<String> {
            nodes
                .iter()
                .find(|n| n["name"] == name)
                .and_then(|n| n["netns"].as_str())
                .map(String::from)
                .context("netns")
        };
        let plain_dir = tmp.path().join("plain");
        std::fs::create_dir_all(&plain_dir)?;
        let _ = Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", plain_dir.join("big").display()),
                "bs=1048576",
                &format!("count={mib}"),
            ])
            .output()?;
        let mut server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns("worker-1")?,
                "busybox",
                "httpd",
                "-f",
                "-p",
                &format!("{addr1}:6443"),
                "-h",
            ])
            .arg(&plain_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        std::thread::sleep(Duration::from_millis(500));
        let mut plain = Vec::new();
        for _ in 0..3 {
            plain.push(transfer(mib, 0.0, || {
                let out = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &ns("worker-0")?,
                        "busybox",
                        "wget",
                        "-qO",
                        "/dev/null",
                        &format!("http://{addr1}:6443/big"),
                    ])
                    .output()?;
                if !out.status.success() {
                    bail!(
                        "plain link transfer: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
                Ok(())
            })?);
        }
        let _ = server.kill();
        let _ = server.wait();
        let best = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        println!(
            "{:<44} {:>8.2} Gbit/s   baseline plain node link: {:>6.2} Gbit/s   ratio {:>5.2}x   (best of 3, {mib} MiB over HTTP; kubectl exec's own {:.0} ms taken off)",
            "pod-to-pod across nodes, through the mesh",
            best(&mesh),
            best(&plain),
            best(&mesh) / best(&plain),
            exec * 1000.0
        );
        let _ = (addr0, dir0, dir1);
        let list: Vec<String> = mem.iter().map(|(n, m)| format!("{n} {m} MiB")).collect();
        println!(
            "{:<44} {}   (idle, after every Node is Ready: each node's processes and its pods' anonymous memory)",
            "memory per node",
            list.join(", ")
        );

        Ok(())
    })();
    down();
    r
}
