//! Real Kubernetes behind attestation, end to end: `veil mini up` brings up a control plane and
//! two workers in namespaces of their own, with the real Kubernetes 1.34 components (from
//! `components/build.sh`, found through `VEIL_COMPONENTS`), containerd, runc and pods. What it
//! shows: workers become Nodes only after an attested join and carry the attestation facts;
//! a Deployment spreads over both, a Service answers by DNS name across nodes, logs and exec
//! work; pod traffic between nodes crosses the LAN only as WireGuard; a Secret is ciphertext in
//! etcd and plaintext through the API, and survives the control plane's restart and `veil
//! recover`; a removed node's Node is deleted and its pods rescheduled within a stated bound;
//! `down` leaves no process, cgroup, namespace, link or file. On encrypted state volumes, what
//! every node writes (etcd, containerd, kubelet) reaches the host only as ciphertext, survives
//! a reboot, and a volume the host rolled back is refused, in the node's status and in the
//! cluster report.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;
use common::{mini_node, veil};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use veil_wire::status::Status;

fn components() -> PathBuf {
    veil_mini::kube::components_dir().expect("the Kubernetes components (components/build.sh)")
}

/// kubectl with the owner's kubeconfig; (exit code, stdout, stderr).
fn kubectl_raw(ws: &Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut c = Command::new(components().join("kubectl"))
        .arg("--kubeconfig")
        .arg(ws.join("kubeconfig"))
        .args(args)
        .env("HOME", ws.join("owner"))
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        use std::io::Write;
        c.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let out = c.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn kubectl(ws: &Path, args: &[&str]) -> String {
    let (code, out, err) = kubectl_raw(ws, args, None);
    assert_eq!(code, 0, "kubectl {}: {err}", args.join(" "));
    out
}

fn wait_until(what: &str, secs: u64, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    start.elapsed()
}

fn status_of(ws: &Path, node: &str) -> Status {
    serde_json::from_slice(&std::fs::read(ws.join("nodes").join(node).join("status.json")).unwrap())
        .unwrap()
}

/// How long workers' Kubernetes client credentials last in the test cluster.
const CREDENTIAL_SECS: u64 = 60;
/// How long kubelets' serving certificates last in the test cluster.
const SERVING_SECS: u64 = 120;

/// The output of `args` run in node `name`'s mount namespace (where its private tmpfs and its
/// state volume are mounted).
fn in_node(ws: &Path, name: &str, args: &[&str]) -> Vec<u8> {
    let pid = mini_node(ws, name)["pid"].as_u64().unwrap();
    let out = Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-m", "--"])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?} in {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A file of a node's private directory (a tmpfs in its agent's mount namespace), read there.
fn private_file(ws: &Path, node: &str, file: &str) -> String {
    let path = ws.join("nodes").join(node).join("private").join(file);
    String::from_utf8(in_node(ws, node, &["cat", &path.display().to_string()])).unwrap()
}

/// The end of a PEM certificate's validity.
fn cert_end(pem: &str) -> std::time::SystemTime {
    let der = pem_der(pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    std::time::UNIX_EPOCH
        + Duration::from_secs(cert.validity().not_after.timestamp().try_into().unwrap())
}

fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64).unwrap()
}

/// The certificate a server at `addr:port` on the cluster's bridge presents (from the first
/// control plane's namespace, which reaches every node's mesh address), as PEM; `None` while
/// nothing answers there.
fn served_cert(ws: &Path, addr: &str, port: u16) -> Option<String> {
    let cp = mini_node(ws, "cp-0");
    let out = Command::new("ip")
        .args(["netns", "exec", cp["netns"].as_str().unwrap()])
        .args(["openssl", "s_client", "-connect", &format!("{addr}:{port}")])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.contains("BEGIN CERTIFICATE").then_some(text)
}

fn state(ws: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(ws.join("mini.json")).unwrap()).unwrap()
}

/// Node name → (status, ready, labels) from `kubectl get nodes -o json`.
fn nodes(ws: &Path) -> Vec<(String, bool, serde_json::Value, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&kubectl(ws, &["get", "nodes", "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            let ready = n["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            let ip = n["status"]["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["type"] == "InternalIP")
                .map(|a| a["address"].as_str().unwrap().to_string())
                .unwrap_or_default();
            (
                n["metadata"]["name"].as_str().unwrap().to_string(),
                ready,
                n["metadata"]["labels"].clone(),
                ip,
            )
        })
        .collect()
}

/// Pod name → (node, phase) for pods matching `selector` in the default namespace.
fn pods(ws: &Path, selector: &str) -> Vec<(String, String, String)> {
    let v: serde_json::Value =
        serde_json::from_str(&kubectl(ws, &["get", "pods", "-l", selector, "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                p["status"]["phase"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

const WEB: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
      containers:
      - name: web
        image: veil.local/busybox:1
        imagePullPolicy: Never
        command: ["sh", "-c", "mkdir -p /tmp/w && hostname > /tmp/w/index.html && exec httpd -f -p 8080 -h /tmp/w"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#;

fn client_pod(node: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: client, labels: {{app: client}}}}
spec:
  nodeName: {node}
  containers:
  - name: client
    image: veil.local/busybox:1
    imagePullPolicy: Never
    command: ["sh", "-c", "echo client is up; exec sleep 3600"]
"#
    )
}

/// A Deployment of one pod on a PVC of Veil's default StorageClass: the first pod writes a
/// canary and a random blob with its checksum (then `sync`: every byte acknowledged), a later
/// one finds them and checks the blob.
fn data_app(canary: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 64Mi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: data}}
spec:
  replicas: 1
  strategy: {{type: Recreate}}
  selector: {{matchLabels: {{app: data}}}}
  template:
    metadata: {{labels: {{app: data}}}}
    spec:
      terminationGracePeriodSeconds: 1
      volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
      containers:
      - name: data
        image: veil.local/busybox:1
        imagePullPolicy: Never
        volumeMounts: [{{name: data, mountPath: /data}}]
        command: ["sh", "-c", "if [ ! -f /data/canary ]; then echo {canary} > /data/canary && head -c 4194304 /dev/urandom > /data/blob && sha256sum /data/blob > /data/blob.sha && sync && echo wrote; fi; echo found $(cat /data/canary); sha256sum -c /data/blob.sha && echo blob intact; exec sleep 3600"]
"#
    )
}

/// The data pod Running on `node`, if any.
fn data_pod_on(ws: &Path, node: &str) -> Option<String> {
    pods(ws, "app=data")
        .into_iter()
        .find(|(_, n, phase)| n == node && phase == "Running")
        .map(|(p, _, _)| p)
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut b).unwrap();
    u64::from_le_bytes(b)
}

/// The files of the disk pool, read whole.
fn pool_bytes(ws: &Path) -> (usize, Vec<u8>) {
    let mut all = Vec::new();
    let mut n = 0;
    for e in std::fs::read_dir(ws.join("disk-pool")).unwrap() {
        let Ok(e) = e else { continue };
        let p = e.path();
        // The driver deletes and renames files while this reads: a file
        // gone between the listing and the read is not in the pool.
        let bytes = match std::fs::read(&p) {
            Ok(b) => b,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => panic!("reading {}: {err}", p.display()),
        };
        if p.extension().is_some_and(|x| x == "vol") {
            n += 1;
        }
        all.extend(bytes);
    }
    (n, all)
}

fn apply(ws: &Path, yaml: &str) {
    let (code, out, err) = kubectl_raw(ws, &["apply", "-f", "-"], Some(yaml));
    assert_eq!(code, 0, "{out}\n{err}");
}

/// The etcd files of the control plane, as etcd sees them: every byte it keeps on disk. They
/// are on the node's encrypted state volume, mounted in the node's own mount namespace, so they
/// are read from inside it.
fn etcd_bytes(ws: &Path) -> Vec<u8> {
    let dir = ws.join("nodes/cp-0/kube/etcd").display().to_string();
    in_node(
        ws,
        "cp-0",
        &["find", &dir, "-type", "f", "-exec", "cat", "{}", "+"],
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// IP packets between the two workers' LAN addresses on the bridge while `traffic` runs (ARP,
/// below IP, is not traffic between them): the tcpdump lines.
fn capture_between(bridge: &str, a: &str, b: &str, traffic: impl FnOnce()) -> Vec<String> {
    let mut dump = Command::new("tcpdump")
        .args([
            "-nn",
            "-l",
            "-i",
            bridge,
            "-c",
            "400",
            &format!("ip and host {a} and host {b}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump (scripts/setup.sh installs it)");
    std::thread::sleep(Duration::from_millis(800));
    traffic();
    std::thread::sleep(Duration::from_millis(500));
    let _ = dump.kill();
    let out = dump.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// Takes the cluster down however the test ends (after printing what Kubernetes saw, if it
/// failed), so a failure leaves no processes behind.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        if !self.0.join("mini.json").exists() {
            return;
        }
        if std::thread::panicking() {
            let (_, out, err) =
                kubectl_raw(&self.0, &["get", "nodes,pods", "-A", "-o", "wide"], None);
            eprintln!("--- at the failure:\n{out}{err}");
            // What went wrong inside the nodes: their agents' and volumes' last warnings.
            let nodes = std::fs::read_dir(self.0.join("nodes"))
                .into_iter()
                .flatten();
            for dir in nodes.flatten().map(|e| e.path()) {
                for log in ["agent.log", "volume.log"] {
                    let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                    let worst: Vec<&str> = text
                        .lines()
                        .filter(|l| {
                            l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\"")
                        })
                        .filter(|l| !l.contains("tss_esapi"))
                        .collect();
                    let tail = worst
                        .get(worst.len().saturating_sub(12)..)
                        .unwrap_or_default();
                    if !tail.is_empty() {
                        eprintln!("--- {} {log}:\n{}", dir.display(), tail.join("\n"));
                    }
                    let all: Vec<&str> =
                        text.lines().filter(|l| !l.contains("tss_esapi")).collect();
                    let last = all.get(all.len().saturating_sub(6)..).unwrap_or_default();
                    eprintln!(
                        "--- {} {log}, last lines:\n{}",
                        dir.display(),
                        last.join("\n")
                    );
                }
            }
        }
        let _ = veil(&["mini", "down", "--workspace", &self.0.display().to_string()]);
    }
}

#[test]
fn kubernetes_behind_attestation() {
    // Workers' Kubernetes credentials last a minute here (900 s by default) and kubelets'
    // serving certificates two (a day), so both are renewed while the test runs.
    let (tmp, ws, _, _down) = mini_up(&[
        "--nodes",
        "3",
        "--kube-credential-secs",
        &CREDENTIAL_SECS.to_string(),
        "--kube-serving-secs",
        &SERVING_SECS.to_string(),
    ]);

    // Both workers are Nodes, named by their node IDs, at their mesh addresses, Ready, with
    // the facts the control plane appraised; nothing else is a Node.
    let w0 = status_of(&ws, "worker-0");
    let w1 = status_of(&ws, "worker-1");
    let (id0, id1) = (w0.node_id.clone().unwrap(), w1.node_id.clone().unwrap());
    let mesh = |s: &Status| s.mesh.as_ref().unwrap().address.clone();
    let ready_after = wait_until("both workers Ready with their labels", 120, || {
        let n = nodes(&ws);
        n.len() == 2
            && n.iter().all(|(_, ready, labels, _)| {
                *ready
                    && labels["node-restriction.kubernetes.io/veil-attested"] == "true"
                    && labels["node-restriction.kubernetes.io/veil-reference-set"] == "mini"
                    && labels["node-restriction.kubernetes.io/veil-tee"] == "tpm"
            })
    });
    eprintln!("workers Ready with attestation labels {ready_after:?} after `up` returned");
    // Their first credentials were issued before this.
    let ready_at = std::time::SystemTime::now();
    let mut names: Vec<(String, String)> = nodes(&ws)
        .into_iter()
        .map(|(n, _, _, ip)| (n, ip))
        .collect();
    names.sort();
    let mut want = vec![(id0.clone(), mesh(&w0)), (id1.clone(), mesh(&w1))];
    want.sort();
    assert_eq!(names, want);

    // A kubelet cannot vouch for itself: the attestation labels are refused to a node's own
    // credentials (NodeRestriction), so only the control plane's count.
    let crt = std::fs::read_to_string(ws.join("kubeconfig")).unwrap();
    assert!(crt.contains("client-certificate-data"));

    // A Deployment spreads over both workers; a Service answers by DNS name from a pod on
    // one worker with pods of both.
    apply(&ws, WEB);
    wait_until("web's two replicas running", 120, || {
        let p = pods(&ws, "app=web");
        p.len() == 2 && p.iter().all(|(_, _, phase)| phase == "Running")
    });
    let web = pods(&ws, "app=web");
    let mut placed: Vec<&str> = web.iter().map(|(_, n, _)| n.as_str()).collect();
    placed.sort();
    let mut both = vec![id0.as_str(), id1.as_str()];
    both.sort();
    assert_eq!(placed, both, "the replicas are spread over both workers");
    apply(&ws, &client_pod(&id0));
    wait_until("the client pod", 60, || {
        pods(&ws, "app=client")
            .iter()
            .any(|(_, _, p)| p == "Running")
    });
    let mut seen = std::collections::BTreeSet::new();
    wait_until(
        "answers from both replicas through the Service's DNS name",
        60,
        || {
            let (code, out, _) = kubectl_raw(
                &ws,
                &[
                    "exec",
                    "client",
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-qO-",
                    "http://web.default.svc.cluster.local",
                ],
                None,
            );
            if code == 0 {
                seen.insert(out.trim().to_string());
            }
            seen.len() == 2
        },
    );
    let web_names: std::collections::BTreeSet<String> =
        web.iter().map(|(n, _, _)| n.clone()).collect();
    assert_eq!(seen, web_names);
    // logs and exec, with standard input.
    assert!(kubectl(&ws, &["logs", "client"]).contains("client is up"));
    let (code, out, err) = kubectl_raw(
        &ws,
        &["exec", "-i", "client", "--", "cat"],
        Some("through exec\n"),
    );
    assert_eq!((code, out.as_str()), (0, "through exec\n"), "{err}");

    // A user's image, loaded into every worker (no registry can be reached), runs on each.
    let user = tmp.path().join("user.tar");
    veil_mini::images::busybox_as(&user, "example.com/user:1").unwrap();
    let (code, out, err) = veil(&[
        "mini",
        "image",
        "load",
        &user.display().to_string(),
        "--workspace",
        &ws.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    for (i, id) in [&id0, &id1].iter().enumerate() {
        apply(
            &ws,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: user-{i}, labels: {{app: user}}}}\nspec:\n  nodeName: {id}\n  restartPolicy: Never\n  containers:\n  - {{name: u, image: example.com/user:1, imagePullPolicy: Never, command: [sh, -c, 'echo user image on $(hostname)']}}\n"
            ),
        );
    }
    wait_until("the user's image to run on both workers", 60, || {
        let p = pods(&ws, "app=user");
        p.len() == 2 && p.iter().all(|(_, _, phase)| phase == "Succeeded")
    });
    assert!(kubectl(&ws, &["logs", "user-1"]).contains("user image on user-1"));

    // `veil verify` proves the kubeconfig reaches an attested API server: its CA is the one
    // derived from the master secret, the serving certificate the one the control plane's
    // signed report names. A kubeconfig trusting another CA, or reaching a server with a
    // certificate of the right CA that no attested control plane reports, fails.
    let wsd = ws.display().to_string();
    let (code, out, err) = veil(&["verify", "--workspace", &wsd]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("kubernetes https://") && out.contains(": OK kubeconfig CA is the cluster's"),
        "{out}"
    );
    let kc = std::fs::read_to_string(ws.join("kubeconfig")).unwrap();
    let rogue_dir = tmp.path().join("rogue");
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let ca_pem = {
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=rogue CA",
                "-days",
                "1",
            ])
            .arg("-keyout")
            .arg(rogue_dir.join("ca.key"))
            .arg("-out")
            .arg(rogue_dir.join("ca.crt"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read_to_string(rogue_dir.join("ca.crt")).unwrap()
    };
    let b64 =
        |t: &str| base64::Engine::encode(&base64::engine::general_purpose::STANDARD, t.as_bytes());
    let swap_ca = |text: &str, pem: &str| {
        text.lines()
            .map(
                |l| match l.trim().strip_prefix("certificate-authority-data:") {
                    Some(_) => format!("    certificate-authority-data: {}", b64(pem)),
                    None => l.to_string(),
                },
            )
            .collect::<Vec<_>>()
            .join("\n")
    };
    let rogue_kc = rogue_dir.join("kubeconfig-ca");
    std::fs::write(&rogue_kc, swap_ca(&kc, &ca_pem)).unwrap();
    let (code, out, _) = veil(&[
        "verify",
        "--workspace",
        &wsd,
        "--kubeconfig",
        &rogue_kc.display().to_string(),
    ]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAILED the kubeconfig's CA is not the cluster's"),
        "{out}"
    );
    // A server with a certificate of the cluster's own CA (the owner can make one; so could
    // whoever stole an old one) that no attested control plane reports.
    let pki =
        veil_kube::pki::KubePki::derive(&veil_cli::kubeconfig::workspace_secrets(&ws).unwrap())
            .unwrap();
    let fake = pki
        .cluster
        .issue(&veil_kube::pki::Leaf::server(
            "kube-apiserver",
            &["localhost"],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(600),
        ))
        .unwrap();
    std::fs::write(rogue_dir.join("srv.crt"), &fake.cert_pem).unwrap();
    std::fs::write(rogue_dir.join("srv.key"), fake.key_pem.as_bytes()).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-quiet",
            "-www",
            "-accept",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-cert")
        .arg(rogue_dir.join("srv.crt"))
        .arg("-key")
        .arg(rogue_dir.join("srv.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the rogue API server", 10, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let rogue_srv = rogue_dir.join("kubeconfig-server");
    let moved: String = kc
        .lines()
        .map(|l| match l.trim().strip_prefix("server:") {
            Some(_) => format!("    server: https://127.0.0.1:{port}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&rogue_srv, moved).unwrap();
    let (code, out, _) = veil(&[
        "verify",
        "--workspace",
        &wsd,
        "--kubeconfig",
        &rogue_srv.display().to_string(),
    ]);
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("which no attested control plane reports"),
        "{out}"
    );

    // While pods on the two workers talk, the LAN between them carries only WireGuard.
    let st = state(&ws);
    let lan_id = st["lan"]["id"].as_str().unwrap();
    let addr_of = |name: &str| mini_node(&ws, name)["addr"].as_str().unwrap().to_string();
    let (a, b) = (addr_of("worker-0"), addr_of("worker-1"));
    let other = web.iter().find(|(_, n, _)| *n == id1).unwrap().0.clone();
    let other_ip = kubectl(
        &ws,
        &["get", "pod", &other, "-o", "jsonpath={.status.podIP}"],
    );
    let lines = capture_between(&format!("vb{lan_id}"), &a, &b, || {
        for _ in 0..5 {
            let (code, out, err) = kubectl_raw(
                &ws,
                &[
                    "exec",
                    "client",
                    "--",
                    "timeout",
                    "5",
                    "wget",
                    "-qO-",
                    &format!("http://{other_ip}:8080"),
                ],
                None,
            );
            assert_eq!(code, 0, "{out}{err}");
            assert_eq!(out.trim(), other);
        }
    });
    assert!(
        !lines.is_empty(),
        "no traffic between the workers was captured"
    );
    let not_wg: Vec<&String> = lines
        .iter()
        .filter(|l| {
            !(l.contains("UDP")
                && l.contains(&format!("{a}.51820"))
                && l.contains(&format!("{b}.51820")))
        })
        .collect();
    assert!(
        not_wg.is_empty(),
        "non-WireGuard packets between the workers: {not_wg:#?}"
    );
    eprintln!(
        "{} packets between the workers while pods talked, all WireGuard",
        lines.len()
    );

    // A Secret is ciphertext in etcd (its files, read directly) and plaintext through the API.
    let plaintext = format!("veil-secret-{}", std::process::id());
    kubectl(
        &ws,
        &[
            "create",
            "secret",
            "generic",
            "s1",
            &format!("--from-literal=password={plaintext}"),
        ],
    );
    let through_api = |ws: &Path| {
        let b64 = kubectl(
            ws,
            &["get", "secret", "s1", "-o", "jsonpath={.data.password}"],
        );
        String::from_utf8(
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64.trim()).unwrap(),
        )
        .unwrap()
    };
    assert_eq!(through_api(&ws), plaintext);
    wait_until("the secret in etcd's files", 20, || {
        contains(&etcd_bytes(&ws), b"/registry/secrets/default/s1")
    });
    let on_disk = etcd_bytes(&ws);
    assert!(
        !contains(&on_disk, plaintext.as_bytes()),
        "the secret's value is in etcd in plaintext"
    );
    assert!(
        contains(&on_disk, b"k8s:enc:kms:v2:veil:"),
        "etcd holds no KMS v2 ciphertext"
    );

    // Credentials are renewed before they lapse: once worker-0's first client certificates have
    // expired, the ones on file are newer and the node is still Ready; its kubelet restarts for
    // a new serving certificate at two thirds of the first one's life, and serves it.
    let first_lapsed = ready_at + Duration::from_secs(CREDENTIAL_SECS + 2);
    if let Ok(wait) = first_lapsed.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(wait);
    }
    // A certificate ending after its first one could was issued after both workers were Ready.
    for file in ["kubelet-client.crt", "kube-proxy.crt"] {
        let end = cert_end(&private_file(&ws, "worker-0", &format!("pki/{file}")));
        assert!(
            end > first_lapsed,
            "worker-0's {file} was not renewed: it ends {end:?}, the first one by {first_lapsed:?}"
        );
    }
    assert!(
        nodes(&ws)
            .iter()
            .any(|(n, ready, _, _)| *n == id0 && *ready),
        "worker-0 is not Ready after its first credentials lapsed"
    );
    let first_serving_end = ready_at + Duration::from_secs(SERVING_SECS + 2);
    let took = wait_until("the kubelet serving a renewed certificate", 120, || {
        served_cert(&ws, &mesh(&w0), 10250).is_some_and(|c| cert_end(&c) > first_serving_end)
    });
    let on_file = cert_end(&private_file(&ws, "worker-0", "pki/kubelet-serving.crt"));
    assert_eq!(
        cert_end(&served_cert(&ws, &mesh(&w0), 10250).expect("kubelet answers")),
        on_file,
        "the kubelet serves another certificate than the one on file"
    );
    // The restarted kubelet knows its pods again within seconds: logs come through it.
    let back = wait_until("logs through the restarted kubelet", 60, || {
        nodes(&ws)
            .iter()
            .any(|(n, ready, _, _)| *n == id0 && *ready)
            && kubectl_raw(&ws, &["logs", "-l", "app=web", "--tail=1"], None).0 == 0
    });
    eprintln!(
        "credentials renewed: worker-0 Ready past its first credentials' end; a renewed serving certificate served {took:?} after the first client ones lapsed; logs through the restarted kubelet {back:?} later"
    );

    // A persistent volume follows its pod. Both kubelets registered Veil's CSI driver; a PVC
    // of the default StorageClass is provisioned from the disk pool; its pod writes on
    // worker-0 (worker-1 cordoned), then worker-0 is cordoned and the pod deleted: the new
    // pod on worker-1 finds every byte. The pool holds ciphertext only.
    for id in [&id0, &id1] {
        wait_until(&format!("{id}'s CSINode to list the driver"), 60, || {
            kubectl_raw(
                &ws,
                &[
                    "get",
                    "csinode",
                    id,
                    "-o",
                    "jsonpath={.spec.drivers[*].name}",
                ],
                None,
            )
            .1
            .contains("volume.veil.dev")
        });
    }
    let canary = format!("veil-pv-canary-{:016x}", rand_u64());
    kubectl(&ws, &["cordon", &id1]);
    apply(&ws, &data_app(&canary));
    let mut first = None;
    let took = wait_until("the data pod Running on worker-0", 150, || {
        first = data_pod_on(&ws, &id0);
        first.is_some()
    });
    let first = first.unwrap();
    wait_until("the data pod to write", 30, || {
        kubectl_raw(&ws, &["logs", &first], None)
            .1
            .contains("blob intact")
    });
    let logs = kubectl(&ws, &["logs", &first]);
    assert!(
        logs.contains("wrote") && logs.contains(&format!("found {canary}")),
        "{logs}"
    );
    eprintln!(
        "persistent volume: provisioned, attached, staged and written on worker-0 {took:?} after the claim"
    );
    let (files, bytes) = pool_bytes(&ws);
    assert_eq!(files, 1, "one volume in the pool");
    assert!(
        !contains(&bytes, canary.as_bytes()),
        "the canary is in the pool in plaintext"
    );
    kubectl(&ws, &["uncordon", &id1]);
    kubectl(&ws, &["cordon", &id0]);
    let t = Instant::now();
    kubectl(&ws, &["delete", "pod", &first, "--wait=false"]);
    let mut second = None;
    let moved = wait_until("the data pod Running on worker-1", 180, || {
        second = data_pod_on(&ws, &id1);
        second.is_some()
    });
    let second = second.unwrap();
    wait_until("the moved pod to read", 30, || {
        kubectl_raw(&ws, &["logs", &second], None)
            .1
            .contains("blob intact")
    });
    let logs = kubectl(&ws, &["logs", &second]);
    assert!(
        !logs.contains("wrote"),
        "the volume was empty on worker-1: {logs}"
    );
    assert!(logs.contains(&format!("found {canary}")), "{logs}");
    eprintln!(
        "persistent volume: followed its pod to worker-1 in {moved:?} ({:?} since the delete), canary and a 4 MiB blob intact",
        t.elapsed()
    );
    kubectl(&ws, &["uncordon", &id0]);
    let pv = kubectl(
        &ws,
        &["get", "pvc", "data", "-o", "jsonpath={.spec.volumeName}"],
    );
    assert!(pv.starts_with("pvc-"), "{pv}");
    // Done with it: the Deployment goes, the volume detaches.
    kubectl(&ws, &["delete", "deployment", "data"]);
    wait_until("the volume detached", 90, || {
        kubectl(&ws, &["get", "volumeattachments", "-o", "name"])
            .trim()
            .is_empty()
    });

    // A component that dies is started again by its node's supervisor: the API server on the
    // control plane and kube-proxy on worker-0, each SIGKILLed. This comes after the volume's
    // cordons: a restarted API server leaves the scheduler's watches reconnecting for a while,
    // and a scheduler that has not seen a cordon yet places a pod on the cordoned node.
    for (node, component) in [("cp-0", "kube-apiserver"), ("worker-0", "kube-proxy")] {
        let before = status_of(&ws, node).components[component].clone();
        let pid = before.pid.unwrap();
        let killed = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        let took = wait_until(&format!("{component} on {node} started again"), 60, || {
            let now = &status_of(&ws, node).components[component];
            now.restarts > before.restarts && now.pid.is_some_and(|p| p != pid)
        });
        eprintln!("{component} on {node}: SIGKILLed, running again after {took:?}");
    }
    wait_until("the API serving again", 60, || {
        kubectl_raw(&ws, &["get", "--raw", "/readyz"], None).0 == 0
    });

    // The owner removes worker-1: its Node is cordoned and deleted, it does not come back (its
    // certificate may still be valid; the admission policy denies its writes), and its pods
    // are rescheduled on worker-0.
    let t = Instant::now();
    let (code, out, err) = veil(&[
        "node",
        "remove",
        &id1,
        "--workspace",
        &ws.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let gone = wait_until("the removed node's Node deleted", 15, || {
        nodes(&ws).iter().all(|(n, _, _, _)| *n != id1)
    });
    let rescheduled = wait_until("web rescheduled onto worker-0", 150, || {
        let p = pods(&ws, "app=web");
        p.len() == 2
            && p.iter()
                .all(|(_, n, phase)| *n == id0 && phase == "Running")
    });
    eprintln!(
        "removed node: Node deleted after {gone:?}, pods rescheduled after {:?}",
        t.elapsed()
    );
    let _ = rescheduled;
    std::thread::sleep(Duration::from_secs(6));
    assert!(
        nodes(&ws).iter().all(|(n, _, _, _)| *n != id1),
        "the removed node registered again"
    );
    // A removed node cannot attach the volume: an attachment to it is refused by the control
    // plane, with the reason in the attachment's status. Then the claim goes, and its volume
    // with it: no file left in the pool.
    let va = format!(
        r#"
apiVersion: storage.k8s.io/v1
kind: VolumeAttachment
metadata: {{name: to-removed}}
spec:
  attacher: volume.veil.dev
  nodeName: {id1}
  source: {{persistentVolumeName: {pv}}}
"#
    );
    apply(&ws, &va);
    let mut error = String::new();
    wait_until("the attachment to the removed node refused", 30, || {
        error = kubectl(
            &ws,
            &[
                "get",
                "volumeattachment",
                "to-removed",
                "-o",
                "jsonpath={.status.attachError.message}",
            ],
        );
        !error.is_empty()
    });
    assert!(error.contains("was removed"), "{error}");
    assert_eq!(
        kubectl(
            &ws,
            &[
                "get",
                "volumeattachment",
                "to-removed",
                "-o",
                "jsonpath={.status.attached}"
            ]
        )
        .trim(),
        "false"
    );
    eprintln!("persistent volume: attaching it to the removed node refused: {error}");
    kubectl(&ws, &["delete", "volumeattachment", "to-removed"]);
    kubectl(&ws, &["delete", "pvc", "data"]);
    wait_until("the released volume deleted from the pool", 60, || {
        pool_bytes(&ws).0 == 0 && kubectl(&ws, &["get", "pv", "-o", "name"]).trim().is_empty()
    });

    let removed_status = status_of(&ws, "worker-1");
    assert!(
        removed_status.components.is_empty(),
        "the removed worker still runs {:?}",
        removed_status.components
    );

    // A worker that restarts (a reboot: its PCRs reset, a new agent, new keys, a new join)
    // keeps its node identity: the same Node object comes back Ready.
    let uid = kubectl(
        &ws,
        &["get", "node", &id0, "-o", "jsonpath={.metadata.uid}"],
    );
    let (code, out, err) = veil(&[
        "mini",
        "restart",
        "worker-0",
        "--workspace",
        &ws.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    wait_until("worker-0 to join again", 60, || {
        status_of(&ws, "worker-0").phase == "joined"
    });
    assert_eq!(
        status_of(&ws, "worker-0").node_id.as_deref(),
        Some(id0.as_str())
    );
    let heartbeat = || {
        kubectl(
            &ws,
            &[
                "get",
                "lease",
                "-n",
                "kube-node-lease",
                &id0,
                "-o",
                "jsonpath={.spec.renewTime}",
            ],
        )
    };
    let before = heartbeat();
    wait_until(
        "worker-0's new kubelet to renew its lease, Ready",
        120,
        || {
            status_of(&ws, "worker-0")
                .components
                .get("kubelet")
                .is_some_and(|k| k.pid.is_some())
                && heartbeat() != before
                && nodes(&ws)
                    .iter()
                    .any(|(n, ready, _, _)| *n == id0 && *ready)
        },
    );
    assert_eq!(
        kubectl(
            &ws,
            &["get", "node", &id0, "-o", "jsonpath={.metadata.uid}"]
        ),
        uid
    );

    // The control plane restarts (a reboot: its TPM's PCRs reset): it awaits recovery, the
    // owner recovers it, and the Secret and the Deployment are still there.
    let (code, out, err) = veil(&[
        "mini",
        "restart",
        "cp-0",
        "--workspace",
        &ws.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(status_of(&ws, "cp-0").phase, "awaiting-recovery");
    let (code, out, err) = veil(&["recover", "--workspace", &ws.display().to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");
    wait_until("the API after recovery", 120, || {
        kubectl_raw(&ws, &["get", "--raw", "/readyz"], None)
            .1
            .trim()
            == "ok"
    });
    assert_eq!(through_api(&ws), plaintext, "the Secret after recovery");
    wait_until("web running again after recovery", 120, || {
        let p = pods(&ws, "app=web");
        p.len() == 2 && p.iter().all(|(_, _, phase)| phase == "Running")
    });

    // `down` leaves no process, cgroup, namespace, link, mount or file.
    let cgroups = [id0.clone(), id1.clone()];
    let (code, out, err) = veil(&["mini", "down", "--workspace", &ws.display().to_string()]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(!ws.exists());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd =
            String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).unwrap_or_default())
                .replace('\0', " ");
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        assert!(
            !cmd.contains(&ws.display().to_string()) || stat.contains(") Z "),
            "left running: {cmd}"
        );
    }
    for id in &cgroups {
        for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
            assert!(
                !h.path().join(format!("veil-{id}")).exists(),
                "cgroup left in {}",
                h.path().display()
            );
        }
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&ws.display().to_string()), "mounts left");
    let links = String::from_utf8_lossy(
        &Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(!links.contains(lan_id), "links left:\n{links}");
    let netns: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        netns
            .iter()
            .all(|n| !n.contains(lan_id) && !n.starts_with("cni-")),
        "namespaces left: {netns:?}"
    );
}

/// Three control planes: etcd is one cluster across them, over the mesh; with the first one
/// killed outright (its agent SIGKILLed: its supervisor stops its components), the API keeps
/// serving through the others, writes included, and the worker stays Ready.
/// `veil mini up ARGS` in namespaces, in a new temporary workspace: (the temporary directory,
/// the workspace's canonical path, the path as given, the guard that takes it down).
fn mini_up(args: &[&str]) -> (tempfile::TempDir, PathBuf, String, Down) {
    if veil_netns::supported().is_err() {
        panic!(
            "this test needs network namespaces (root): {:?}",
            veil_netns::supported()
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("ws");
    let w = ws.display().to_string();
    let mut all = vec!["mini", "up"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--workspace", &w]);
    let (code, out, err) = veil(&all);
    let down = Down(ws.clone());
    assert_eq!(code, 0, "{out}\n{err}");
    let ws = std::fs::canonicalize(&ws).unwrap();
    (tmp, ws, w, down)
}

#[test]
fn three_control_planes_one_killed_the_api_keeps_serving() {
    let (_tmp, ws, _, _down) = mini_up(&["--nodes", "4", "--control-plane", "3"]);
    wait_until("the worker Ready", 120, || {
        nodes(&ws).iter().any(|(_, ready, _, _)| *ready)
    });
    // etcd has three members, one per control plane, at their mesh addresses.
    let st = state(&ws);
    let cp_pids: Vec<(String, u64, String)> = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["role"] == "control-plane")
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["pid"].as_u64().unwrap(),
                n["addr"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let etcd_members = || {
        let (name, pid, _) = &cp_pids[1];
        let dir = ws.join("nodes").join(name).join("private/pki");
        let out = Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-m", "-n"])
            .arg(components().join("etcdctl"))
            .args([
                "--endpoints=https://127.0.0.1:2379",
                "member",
                "list",
                "-w",
                "simple",
            ])
            .arg(format!("--cacert={}", dir.join("etcd-ca.crt").display()))
            .arg(format!(
                "--cert={}",
                dir.join("apiserver-etcd-client.crt").display()
            ))
            .arg(format!(
                "--key={}",
                dir.join("apiserver-etcd-client.key").display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_until("three etcd members", 60, || {
        etcd_members()
            .lines()
            .filter(|l| l.contains("started"))
            .count()
            == 3
    });
    let members = etcd_members();
    for i in 1..=3 {
        assert!(
            members.contains(&format!(".{i}:2380")),
            "etcd members not on the mesh:\n{members}"
        );
    }
    // A kubeconfig for the second control plane, made by the owner from the workspace.
    let second = ws.join("kubeconfig-cp1");
    let (code, out, err) = veil(&[
        "kubeconfig",
        "--workspace",
        &ws.display().to_string(),
        "--server",
        &format!("https://{}:6443", cp_pids[1].2),
        "-o",
        &second.display().to_string(),
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    let via = |args: &[&str]| {
        let out = Command::new(components().join("kubectl"))
            .arg("--kubeconfig")
            .arg(&second)
            .args(args)
            .env("HOME", ws.join("owner"))
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert!(via(&["get", "nodes"]).0);
    // The first control plane dies: agent killed, no goodbye.
    let (_, first_pid, _) = &cp_pids[0];
    Command::new("kill")
        .args(["-9", &first_pid.to_string()])
        .status()
        .unwrap();
    let first_dir = ws.join("nodes").join(&cp_pids[0].0);
    wait_until("the dead control plane's components to stop", 30, || {
        veil_mini::kube::processes_under(&first_dir.join("private")).is_empty()
    });
    // The API keeps serving, writes included (etcd keeps its quorum of two).
    wait_until("a write through the second control plane", 60, || {
        via(&[
            "create",
            "configmap",
            "after-the-loss",
            "--from-literal=k=v",
        ])
        .0
    });
    let (ok, out) = via(&[
        "get",
        "configmap",
        "after-the-loss",
        "-o",
        "jsonpath={.data.k}",
    ]);
    assert!(ok && out == "v", "{out}");
    // The worker reaches the API through its forwarder to whichever control plane answers.
    std::thread::sleep(Duration::from_secs(45));
    let (ok, out) = via(&["get", "nodes", "--no-headers"]);
    assert!(
        ok && out.contains(" Ready "),
        "the worker is not Ready after the loss:\n{out}"
    );
}

/// Whether the file at `path` holds `needle`, read in chunks (a state volume's backing file is
/// as large as the volume).
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 8 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return false;
        }
        carry.extend_from_slice(&buf[..n]);
        if contains(&carry, needle) {
            return true;
        }
        let keep = needle.len().saturating_sub(1).min(carry.len());
        carry.drain(..carry.len() - keep);
    }
}

// Every node of a local cluster keeps its state on its encrypted volume (the default).
#[test]
fn state_volumes_keep_every_node_write_and_a_rolled_back_one_is_refused() {
    let (_tmp, ws, w, _down) = mini_up(&["--nodes", "2"]);
    wait_until("the worker Ready on its state volume", 180, || {
        nodes(&ws).iter().any(|(_, ready, _, _)| *ready)
    });
    wait_until("the default service account", 60, || {
        kubectl_raw(&ws, &["get", "serviceaccount", "default"], None).0 == 0
    });

    // A canary in etcd (a ConfigMap: stored as written, no KMS), in a container's own
    // filesystem (containerd's snapshots) and in an emptyDir (kubelet's directory).
    let canary = format!("veil-state-canary-{:016x}", rand_u64());
    kubectl(
        &ws,
        &[
            "create",
            "configmap",
            "canary",
            &format!("--from-literal=k={canary}"),
        ],
    );
    apply(
        &ws,
        &format!(
            r#"
apiVersion: v1
kind: Pod
metadata: {{name: writer}}
spec:
  volumes: [{{name: scratch, emptyDir: {{}}}}]
  containers:
  - name: writer
    image: veil.local/busybox:1
    imagePullPolicy: Never
    volumeMounts: [{{name: scratch, mountPath: /scratch}}]
    command: ["sh", "-c", "echo {canary} > /own && echo boot >> /scratch/boots && echo {canary} > /scratch/c && sync && echo written && exec sleep 3600"]
"#
        ),
    );
    wait_until("the writer's canaries written", 120, || {
        kubectl_raw(&ws, &["logs", "writer"], None)
            .1
            .contains("written")
    });
    // They are there, through the API and in etcd as etcd reads its files, inside the node.
    for file in ["/own", "/scratch/c"] {
        assert_eq!(
            kubectl(&ws, &["exec", "writer", "--", "cat", file]).trim(),
            canary
        );
    }
    assert!(
        contains(&etcd_bytes(&ws), canary.as_bytes()),
        "etcd does not hold the ConfigMap's canary (the check below would prove nothing)"
    );
    // Everything each node wrote reached its backing file (synced inside the node), and none
    // of it is there in plaintext; the host sees nothing under the nodes' data directories.
    for node in ["cp-0", "worker-0"] {
        in_node(&ws, node, &["sync"]);
        let backing = ws.join("nodes").join(node).join("state.vol");
        assert!(
            !file_contains(&backing, canary.as_bytes()),
            "{node}'s state volume holds the canary in plaintext"
        );
        let data = ws.join("nodes").join(node).join("kube");
        let host_view: Vec<_> = std::fs::read_dir(&data).unwrap().collect();
        assert!(
            host_view.is_empty(),
            "the host sees {node}'s data under {}: {host_view:?}",
            data.display()
        );
        assert!(
            !in_node(&ws, node, &["ls", &data.display().to_string()]).is_empty(),
            "nothing is mounted at {node}'s data directory inside the node"
        );
    }

    // The host keeps a copy of worker-0's state volume as it is now.
    let backing = ws.join("nodes/worker-0/state.vol");
    let old = ws.join("nodes/worker-0/state.vol.old");
    let st = Command::new("cp")
        .arg("--sparse=always")
        .arg(&backing)
        .arg(&old)
        .status()
        .unwrap();
    assert!(st.success());

    // A reboot of the worker: its volume is opened again (its anchor in the TPM moved on with
    // it), and it is Ready again with its data: the writer's container starts again on the
    // emptyDir it had, which now records two boots.
    let (code, out, err) = veil(&["mini", "restart", "worker-0", "--workspace", &w]);
    assert_eq!(code, 0, "{out}\n{err}");
    wait_until("worker-0 Ready again after its restart", 180, || {
        status_of(&ws, "worker-0").error.is_none()
            && nodes(&ws).iter().any(|(_, ready, _, _)| *ready)
            && kubectl_raw(
                &ws,
                &["exec", "writer", "--", "cat", "/scratch/boots"],
                None,
            )
            .1
            .lines()
            .count()
                == 2
    });

    // The host hands it the older copy at its next boot: the volume is refused as rolled
    // back, the node starts no Kubernetes, says why, and the refusal is in the cluster report.
    std::fs::rename(&old, &backing).unwrap();
    let (code, out, err) = veil(&["mini", "restart", "worker-0", "--workspace", &w]);
    assert_eq!(code, 0, "{out}\n{err}");
    wait_until(
        "worker-0 to refuse its rolled-back state volume",
        120,
        || {
            status_of(&ws, "worker-0")
                .error
                .is_some_and(|e| e.contains("state volume refused (rollback)"))
        },
    );
    let (code, out, err) = veil(&["verify", "--workspace", &w]);
    assert_eq!(
        code, 1,
        "verify passed with a refused state volume:\n{out}\n{err}"
    );
    assert!(
        out.lines().any(|l| l.contains("FAILED")
            && l.contains("refused its own state_volume")
            && l.contains("rollback")),
        "the cluster report does not show the refused state volume:\n{out}"
    );
    assert!(
        !String::from_utf8_lossy(&in_node(&ws, "worker-0", &["cat", "/proc/self/mounts"]))
            .contains(&ws.join("nodes/worker-0/kube").display().to_string()),
        "the rolled-back volume was mounted"
    );
    // It still attests (its key fetches go on): only its Kubernetes is refused.
    let fetches = status_of(&ws, "worker-0").key_fetches;
    wait_until("worker-0 attesting on", 30, || {
        status_of(&ws, "worker-0").key_fetches > fetches
    });
}

/// A pod of `image` and `service_account` that mounts the CAS's volume for `acme/api` at
/// `/veil` and prints its secret file.
fn cas_pod(name: &str, image: &str, service_account: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: cas}}}}
spec:
  serviceAccountName: {service_account}
  containers:
  - name: app
    image: {image}
    imagePullPolicy: Never
    command: ["sh", "-c", "echo secret=$(cat /veil/run/secrets/db); exec sleep 3600"]
    volumeMounts: [{{name: config, mountPath: /veil, readOnly: true}}]
  volumes:
  - name: config
    csi:
      driver: cas.veil.dev
      volumeAttributes: {{session: acme, service: api}}
"#
    )
}

/// The messages of the events about `object`.
fn events_of(ws: &Path, object: &str) -> String {
    kubectl(
        ws,
        &[
            "get",
            "events",
            "--field-selector",
            &format!("involvedObject.name={object}"),
            "-o",
            "jsonpath={.items[*].message}",
        ],
    )
}

#[test]
fn the_cas_gives_an_attested_pod_its_secret_as_a_file_and_others_nothing() {
    let (tmp, ws, w, _down) = mini_up(&["--nodes", "2"]);
    wait_until("the worker Ready", 180, || {
        nodes(&ws).iter().any(|(_, ready, _, _)| *ready)
    });
    wait_until("the default service account", 60, || {
        kubectl_raw(&ws, &["get", "serviceaccount", "default"], None).0 == 0
    });
    // The digest of the workload image, as the worker's containerd holds it.
    let worker = "worker-0";
    let ctr = components().join("ctr").display().to_string();
    let sock = ws
        .join("nodes")
        .join(worker)
        .join("private/containerd.sock");
    let listing = in_node(
        &ws,
        worker,
        &[
            &ctr,
            "--address",
            &sock.display().to_string(),
            "-n",
            "k8s.io",
            "images",
            "ls",
        ],
    );
    let listing = String::from_utf8(listing).unwrap();
    let digest = veil_kube::worker::image_digest_in(&listing, "veil.local/busybox:1")
        .unwrap_or_else(|| panic!("no busybox image in {listing}"));

    // The CAS's owner provisions it and writes the session: service `api` is the busybox
    // image under service account `api` in namespace `default`.
    let key = tmp.path().join("cas-owner.pem");
    let k = key.display().to_string();
    let (code, pk, err) = veil(&["cas", "keygen", "--out", &k]);
    assert_eq!(code, 0, "{err}");
    let mut provisioned = (0, String::new(), String::new());
    wait_until("the CAS to serve", 120, || {
        provisioned = veil(&["cas", "provision", "--key", &k, "--workspace", &w]);
        provisioned.0 != 2
    });
    assert_eq!(provisioned.0, 0, "{provisioned:?}");
    let pk = pk.trim();
    let session = format!(
        r#"
name: acme
version: "1"
services:
  - name: api
    attestation:
      - image_digests: ["{digest}"]
        namespace: default
        service_account: api
    files:
      /run/secrets/db: "$$secret:db$$"
    environment:
      GREETING: "hello $$secret:db$$"
secrets:
  - name: db
    kind: ascii
    size: 24
access_policy:
  read: {{keys: ["{pk}"]}}
  update: {{keys: ["{pk}"]}}
"#
    );
    let doc = tmp.path().join("session.yaml");
    std::fs::write(&doc, session).unwrap();
    let (code, out, err) = veil(&[
        "cas",
        "put",
        &doc.display().to_string(),
        "--key",
        &k,
        "--workspace",
        &w,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");
    kubectl(&ws, &["create", "serviceaccount", "api"]);

    // Another image (one file added), loaded into the worker: the same pod on it gets nothing.
    // (The same image under another name is the same image: its digest is its content's.)
    let other = tmp.path().join("other.tar");
    veil_mini::images::busybox_with(&other, "example.com/other:1", "etc/modified", b"yes\n")
        .unwrap();
    let (code, out, err) = veil(&[
        "mini",
        "image",
        "load",
        &other.display().to_string(),
        "--workspace",
        &w,
    ]);
    assert_eq!(code, 0, "{out}\n{err}");

    apply(&ws, &cas_pod("good", "veil.local/busybox:1", "api"));
    apply(
        &ws,
        &cas_pod("wrong-account", "veil.local/busybox:1", "default"),
    );
    apply(&ws, &cas_pod("wrong-image", "example.com/other:1", "api"));
    wait_until("the attested pod to run with its secret", 120, || {
        kubectl_raw(&ws, &["logs", "good"], None)
            .1
            .starts_with("secret=")
    });
    let logs = kubectl(&ws, &["logs", "good"]);
    let secret = logs.trim().strip_prefix("secret=").unwrap().to_string();
    assert_eq!(secret.len(), 24, "{logs}");
    assert!(secret.bytes().all(|b| b.is_ascii_alphanumeric()), "{logs}");
    let env = kubectl(&ws, &["exec", "good", "--", "cat", "/veil/environment"]);
    assert_eq!(env, format!("GREETING=hello {secret}\n"));
    // The volume is read-only, and the secret is nowhere in the API.
    let (code, _, _) = kubectl_raw(&ws, &["exec", "good", "--", "touch", "/veil/x"], None);
    assert_ne!(code, 0, "the secrets volume is writable");
    let everything = kubectl(
        &ws,
        &["get", "pods,events,configmaps,secrets", "-A", "-o", "json"],
    );
    assert!(!everything.contains(&secret), "the secret reached the API");

    // The others never start: kubelet's events name the CAS's reason.
    for (pod, reason) in [
        ("wrong-account", "service account default is not api"),
        ("wrong-image", "is not allowed"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !events_of(&ws, pod).contains(reason) {
            assert!(
                Instant::now() < deadline,
                "{pod}: no refusal {reason:?} in its events: {}\nworker's agent: {}",
                events_of(&ws, pod),
                std::fs::read_to_string(ws.join("nodes").join(worker).join("agent.log"))
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("cas") || l.contains(pod))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        let phase = kubectl(&ws, &["get", "pod", pod, "-o", "jsonpath={.status.phase}"]);
        assert_eq!(phase, "Pending", "{pod}");
    }

    // Every release and refusal is in the CAS's log, which the owner fetches and verifies.
    let copy = tmp.path().join("audit");
    let c = copy.display().to_string();
    let (code, out, err) = veil(&["audit", "fetch", "--out", &c, "--workspace", &w]);
    assert_eq!(code, 0, "{out}\n{err}");
    let key_arg = format!("@{}", copy.join("key").display());
    let (code, out, err) = veil(&["audit", "verify", &c, "--key", &key_arg, "--entries"]);
    assert_eq!(code, 0, "{out}\n{err}");
    let releases: Vec<veil_cas::service::AuditEvent> = out
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter_map(|(_, e)| veil_cas::service::AuditEvent::parse(e.as_bytes()).ok())
        .filter(|e| e.event == "cas.release")
        .collect();
    let allowed: Vec<_> = releases.iter().filter(|e| e.outcome == "allowed").collect();
    assert!(!allowed.is_empty(), "{out}");
    assert!(
        allowed
            .iter()
            .all(|e| e.workload.as_ref().unwrap().pod == "good")
    );
    assert_eq!(allowed[0].secrets, ["db"]);
    for reason in ["service account default is not api", "is not allowed"] {
        assert!(
            releases.iter().any(|e| e.outcome == "refused"
                && e.reason.as_deref().is_some_and(|r| r.contains(reason))),
            "{reason}: {out}"
        );
    }
}
