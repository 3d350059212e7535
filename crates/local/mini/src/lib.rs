//! `veil mini`: a local cluster on one machine. Each node is its own `veil-agent` process with
//! its own software TPM, manufactured by a CA in the workspace, and measured by `veil mini`
//! playing its firmware before the agent starts. Run as root, every node lives in its own
//! network namespace (its agent and its TPM both), on a bridge the owner's tools reach;
//! otherwise nodes share the host's loopback. LOCAL CLUSTERS ARE INSECURE BY NATURE: their
//! TPM roots are software; reference values accept them only because they say so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use veil_appraisal::owner::ApprovedNode;
use veil_netns::Lan;
use veil_reference::launch::Launch;
use veil_reference::node_config::{AgentConfig, MeshSettings, StrictSettings};
use veil_reference::{MeasurementSet, ReferenceValues, signing};
use veil_swtpm::{LocalCa, SwTpm};
use veil_tpm_device::NodeTpm;
use veil_wire::status::Status;

use veil_cli::output::EXIT_UNUSABLE;

pub mod images;
pub mod kube;

#[derive(Subcommand, Debug)]
pub enum MiniCommand {
    /// Start a local cluster.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// How many of them are control-plane nodes (the first is initialised by the owner;
        /// the others join it and take the cluster's secrets from it).
        #[arg(long = "control-plane", default_value_t = 1)]
        control_plane: usize,
        /// The workspace (created).
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
        /// Where nodes live: a network namespace each (needs root), the host's loopback, or
        /// namespaces when running as root and loopback otherwise.
        #[arg(long, value_enum, default_value_t = Network::Auto)]
        network: Network,
        /// How long the Kubernetes credentials the control planes issue workers last, in
        /// seconds (workers renew them at a third of that); 900 unless set.
        #[arg(long, value_parser = clap::value_parser!(u64).range(30..=2_592_000))]
        kube_credential_secs: Option<u64>,
        /// How long kubelets' serving certificates last, in seconds (a worker takes a new one,
        /// restarting its kubelet, at two thirds of that); a day unless set.
        #[arg(long, value_parser = clap::value_parser!(u64).range(30..=2_592_000))]
        kube_serving_secs: Option<u64>,
        /// The capacity of each node's encrypted state volume (where etcd, containerd and
        /// kubelet keep their data), in MiB (a sparse file on the host; the volume keeps 8 MiB
        /// of metadata in memory per GiB); 0: none, they write to the node's directory in
        /// plaintext (for comparisons only).
        #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(0..=1_048_576))]
        state_volume_mib: u64,
    },
    /// Show the nodes of a local cluster.
    Status {
        /// The workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
    /// Restart a node as a reboot would: its agent stops, its TPM restarts (PCRs reset), the
    /// firmware measures it again, and a new agent starts.
    Restart {
        /// The node (e.g. cp-0).
        node: String,
        /// The workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
    /// Container images on the cluster's nodes (no registry can be reached).
    #[command(subcommand)]
    Image(ImageCommand),
    /// Stop a local cluster and remove everything it created.
    Down {
        /// The workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
}

/// `veil mini image`.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Load an OCI image archive (`docker save` / `skopeo copy oci-archive:` output, with an
    /// `io.containerd.image.name` annotation) into every worker's container runtime; pods use
    /// it with `imagePullPolicy: Never` (or IfNotPresent).
    Load {
        /// The archive.
        file: PathBuf,
        /// The workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
    /// Build the images the upstream Kubernetes conformance suite starts (agnhost, busybox,
    /// pause, and stand-ins for its nginx and httpd images) under the names it asks for, and load
    /// them into every worker.
    Conformance {
        /// Where `components/conformance/build.sh` put agnhost.
        #[arg(long)]
        from: PathBuf,
        /// The workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
}

/// Where the nodes of a local cluster live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Network {
    /// Namespaces when running as root, loopback otherwise.
    Auto,
    /// One network namespace per node, on a bridge.
    Netns,
    /// The host's loopback, shared by all nodes.
    Loopback,
}

/// The port of every node's TPM inside its own namespace.
const NETNS_TPM_PORT: u16 = 2321;
/// The control-plane service port inside a namespace.
const NETNS_CP_PORT: u16 = 7443;
/// The Prometheus metrics port inside a namespace.
const NETNS_METRICS_PORT: u16 = 9464;

/// The bridge of a namespaced local cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MiniLan {
    /// Identifier in the names of its bridge, links and namespaces.
    pub id: String,
    /// `S` in its subnet 10.213.S.0/24.
    pub subnet: u8,
}

impl MiniLan {
    fn lan(&self) -> Lan {
        Lan {
            id: self.id.clone(),
            subnet: self.subnet,
        }
    }
}

/// What `veil mini up` started, for `status` and `down`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MiniState {
    /// Control-plane service addresses.
    pub control_planes: Vec<String>,
    /// Cluster ID (hex).
    pub cluster_id: String,
    /// The bridge, when nodes have namespaces.
    #[serde(default)]
    pub lan: Option<MiniLan>,
    /// Nodes.
    pub nodes: Vec<MiniNode>,
}

/// One node of a local cluster.
#[derive(Debug, Serialize, Deserialize)]
pub struct MiniNode {
    /// Name.
    pub name: String,
    /// Role.
    pub role: String,
    /// Its network namespace, if it has one.
    #[serde(default)]
    pub netns: Option<String>,
    /// Its address (its namespace's, or loopback).
    #[serde(default)]
    pub addr: String,
    /// Its swtpm's command port (in its namespace).
    pub tpm_port: u16,
    /// The agent's process ID.
    pub pid: u32,
    /// Its directory.
    pub dir: PathBuf,
}

pub fn run(cmd: MiniCommand) -> ExitCode {
    let r = match cmd {
        MiniCommand::Up {
            nodes,
            control_plane,
            workspace,
            network,
            kube_credential_secs,
            kube_serving_secs,
            state_volume_mib,
        } => up(
            &workspace,
            nodes,
            control_plane,
            network,
            (kube_credential_secs, kube_serving_secs, state_volume_mib),
        ),
        MiniCommand::Status { workspace } => status(&workspace),
        MiniCommand::Down { workspace } => down(&workspace),
        MiniCommand::Image(ImageCommand::Load { file, workspace }) => image_load(&workspace, &file),
        MiniCommand::Image(ImageCommand::Conformance { from, workspace }) => {
            conformance_images(&workspace, &from)
        }
        MiniCommand::Restart { node, workspace } => restart(&workspace, &node),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn step(msg: &str) {
    println!("==> {msg}");
    let _ = std::io::stdout().flush();
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A binary in the same directory as `agent`.
fn beside(agent: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let p = agent
        .parent()
        .context("the agent binary has no directory")?
        .join(name);
    if !p.exists() {
        bail!("{} not found (cargo build --bins)", p.display());
    }
    Ok(p)
}

fn agent_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let p = exe
        .parent()
        .context("the veil executable has no directory")?
        .join("veil-agent");
    if !p.exists() {
        bail!(
            "{} not found (build it: cargo build -p veil-cli)",
            p.display()
        );
    }
    Ok(p)
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

fn read_status(dir: &Path) -> Option<Status> {
    serde_json::from_slice(&std::fs::read(dir.join("status.json")).ok()?).ok()
}

/// Runs `f` where the node lives: on a thread inside its namespace, or right here.
fn in_node<T: Send>(netns: Option<&str>, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    match netns {
        Some(ns) => Ok(veil_netns::run_in(ns, f)?),
        None => Ok(f()),
    }
}

fn save(ws: &Path, state: &MiniState) -> anyhow::Result<()> {
    std::fs::write(ws.join("mini.json"), serde_json::to_vec_pretty(state)?)?;
    Ok(())
}

fn up(
    ws: &Path,
    nodes: usize,
    control_planes: usize,
    network: Network,
    kube_options: (Option<u64>, Option<u64>, u64),
) -> anyhow::Result<ExitCode> {
    if !(1..=200).contains(&nodes) {
        bail!("--nodes {nodes}: expected 1 to 200");
    }
    if !(1..=nodes).contains(&control_planes) {
        bail!("--control-plane {control_planes}: expected 1 to --nodes ({nodes})");
    }
    if ws.join("mini.json").exists() {
        bail!(
            "{} already holds a running local cluster (veil mini down first)",
            ws.display()
        );
    }
    let namespaces = match (network, veil_netns::supported()) {
        (Network::Loopback, _) | (Network::Auto, Err(_)) => false,
        (Network::Auto | Network::Netns, Ok(())) => true,
        (Network::Netns, Err(why)) => bail!("--network netns: {why}"),
    };
    let agent = agent_binary()?;
    std::fs::create_dir_all(ws.join("owner"))?;
    let ws = std::fs::canonicalize(ws)?;
    step(&format!(
        "workspace {} (LOCAL CLUSTER: software TPM roots, insecure by nature)",
        ws.display()
    ));
    let mut state = MiniState {
        control_planes: Vec::new(),
        cluster_id: String::new(),
        lan: None,
        nodes: Vec::new(),
    };
    match start_cluster(
        &ws,
        &agent,
        (nodes, control_planes),
        namespaces,
        kube_options,
        &mut state,
    ) {
        Ok(cid) => {
            println!();
            println!("LOCAL CLUSTER up (insecure local TPM roots): cluster {cid}");
            print_nodes(&state);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            // Leave nothing running; keep the files (the agents' logs say what went wrong).
            if let Err(stop) = stop_all(&state) {
                eprintln!("warning: {stop:#}");
            }
            let _ = std::fs::remove_file(ws.join("mini.json"));
            Err(e.context(format!(
                "the local cluster did not come up; its processes are stopped, its logs are in {}/nodes",
                ws.display()
            )))
        }
    }
}

/// Brings the nodes up, recording in `state` (and mini.json) everything it starts; returns the
/// cluster ID.
fn start_cluster(
    ws: &Path,
    agent: &Path,
    (nodes, control_planes): (usize, usize),
    namespaces: bool,
    (credential_secs, serving_secs, state_volume_mib): (Option<u64>, Option<u64>, u64),
    state: &mut MiniState,
) -> anyhow::Result<String> {
    // Owner secrets and the reference-values key.
    veil_cli::init::ensure_secrets(ws)?;
    let owner_pub = veil_cli::workspace::ensure_owner_key(ws)?;
    let (ref_sk, ref_pk) = signing::generate_key()?;
    veil_cli::init::write_secret(&ws.join("owner/reference.key"), ref_sk.as_bytes())?;
    std::fs::write(ws.join("reference.pub"), &ref_pk)?;

    let names: Vec<(String, &str)> = (0..nodes)
        .map(|i| {
            if i < control_planes {
                (format!("cp-{i}"), "control-plane")
            } else {
                (format!("worker-{}", i - control_planes), "worker")
            }
        })
        .collect();
    // Where each node lives: its namespace and address.
    let mut homes: Vec<(Option<String>, String)> = Vec::new();
    if namespaces {
        let lan = Lan::create(&veil_netns::new_id())?;
        step(&format!(
            "network: bridge {} on 10.213.{}.0/24, a namespace per node",
            lan.bridge(),
            lan.subnet
        ));
        state.lan = Some(MiniLan {
            id: lan.id.clone(),
            subnet: lan.subnet,
        });
        save(ws, state)?;
        for (i, (name, _)) in names.iter().enumerate() {
            let index = u8::try_from(i).context("too many nodes")?;
            let at = lan.attach(name, index)?;
            homes.push((Some(at.netns), at.addr.to_string()));
        }
    } else {
        step("network: host loopback (not root, or --network loopback)");
        homes.resize(nodes, (None, "127.0.0.1".to_string()));
    }
    let port =
        |fixed: u16| -> anyhow::Result<u16> { if namespaces { Ok(fixed) } else { free_port() } };
    let cp_addrs = homes
        .iter()
        .take(control_planes)
        .map(|(_, addr)| Ok(format!("{addr}:{}", port(NETNS_CP_PORT)?)))
        .collect::<anyhow::Result<Vec<String>>>()?;
    state.control_planes = cp_addrs.clone();

    // Kubernetes runs where nodes have namespaces of their own (kubelet refuses a loopback
    // node address): each node's configuration names the SHA-256 of every component it runs.
    let (cp_kube, worker_kube) = if namespaces {
        let dir = kube::components_dir()?;
        step(&format!(
            "kubernetes: components from {}; images (pause, CoreDNS, busybox) built into the workspace",
            dir.display()
        ));
        let mut worker = kube::settings(&dir, kube::WORKER_COMPONENTS)?;
        worker.images = images::build(&ws.join("images"), &dir)?
            .into_iter()
            .collect();
        let mut cp = kube::settings(&dir, kube::CONTROL_PLANE_COMPONENTS)?;
        cp.credential_secs = credential_secs;
        cp.serving_secs = serving_secs;
        let volume_bin = beside(agent, "veil-volume")?;
        if state_volume_mib > 0 {
            let volume = kube::state_volume(&volume_bin, state_volume_mib)?;
            cp.state_volume = Some(volume.clone());
            worker.state_volume = Some(volume);
        }
        // Persistent volumes: the pool every node reaches stands in for a cloud's block store.
        let volumes = kube::volumes(&volume_bin, &ws.join("disk-pool"))?;
        cp.volumes = Some(volumes.clone());
        worker.volumes = Some(volumes);
        (Some(cp), Some(worker))
    } else {
        (None, None)
    };

    // Node configurations, TPMs and firmware.
    let image = format!(
        "veil-mini node image: Debian 12, veil-agent{} (local)\n",
        if namespaces {
            ", Kubernetes v1.34.4"
        } else {
            ", no Kubernetes (loopback)"
        }
    )
    .into_bytes();
    std::fs::write(ws.join("node-image.txt"), &image)?;
    let agent_bytes = std::fs::read(agent)?;
    let ca = LocalCa::at(&ws.join("tpm-ca"));
    let mut planned = Vec::new();
    // The owner approves exactly the TPMs it manufactured, each in its node's role.
    let mut approvals = Vec::new();
    for (i, ((name, role), (netns, addr))) in names.into_iter().zip(homes).enumerate() {
        let dir = ws.join("nodes").join(&name);
        std::fs::create_dir_all(&dir)?;
        step(&format!(
            "{name}: manufacturing its TPM (EK certificate from the workspace CA)"
        ));
        ca.manufacture(&dir.join("tpm"))?;
        let tpm_port = if namespaces { NETNS_TPM_PORT } else { 0 };
        let tpm_state = dir.join("tpm");
        let tpm = in_node(netns.as_deref(), || {
            if tpm_port == 0 {
                SwTpm::start(&tpm_state)
            } else {
                SwTpm::start_on(&tpm_state, tpm_port)
            }
        })??;
        let tcti = tpm.tcti();
        let ek_cert = in_node(netns.as_deref(), || {
            NodeTpm::open(&tcti).and_then(|mut t| t.ek_certificate())
        })??;
        veil_cli::init::add_approval(
            &mut approvals,
            ApprovedNode {
                ek_sha256: hex::encode(
                    veil_attest_core::x509::Certificate::from_der(&ek_cert, "EK certificate")?
                        .fingerprint(),
                ),
                role: role.to_string(),
                name: name.clone(),
            },
        );
        let cfg = AgentConfig {
            name: name.clone(),
            role: role.to_string(),
            control_planes: cp_addrs.clone(),
            listen: cp_addrs.get(i).cloned(),
            tcti: tpm.tcti(),
            event_log: dir.join("eventlog.bin"),
            reference_values: ws.join("reference-values.yaml"),
            reference_signature: ws.join("reference-values.yaml.sig"),
            reference_key: ws.join("reference.pub"),
            owner_key: owner_pub.clone(),
            tpm_roots_local: true,
            state_dir: dir.clone(),
            // Control planes always serve metrics; workers too when they have a namespace
            // (their own port), for their mesh counters.
            metrics: (role == "control-plane" || namespaces)
                .then(|| port(NETNS_METRICS_PORT).map(|p| format!("{addr}:{p}")))
                .transpose()?,
            // In namespaces, nodes talk over the attested WireGuard mesh, in strict mode.
            mesh: state.lan.as_ref().map(|lan| MeshSettings {
                network: format!("10.215.{}.0/24", lan.subnet),
                endpoint: format!("{addr}:{}", veil_reference::node_config::MESH_PORT),
                interface: "veil0".into(),
                rotate_secs: Some(600),
                strict: Some(StrictSettings {
                    lan: format!("10.213.{}.0/24", lan.subnet),
                    // The API server's port is the owner's entry point on the LAN.
                    tls_ports: vec![NETNS_CP_PORT, NETNS_METRICS_PORT, kube::API_PORT],
                }),
            }),
            kubernetes: if role == "control-plane" {
                cp_kube.clone()
            } else {
                worker_kube.clone()
            },
        };
        std::fs::write(dir.join("agent.yaml"), serde_norway::to_string(&cfg)?)?;
        state.nodes.push(MiniNode {
            name,
            role: role.to_string(),
            netns,
            addr,
            tpm_port: tpm.detach(),
            pid: 0,
            dir,
        });
        save(ws, state)?;
        planned.push(cfg);
    }
    let mut roots = ca.root_pem()?;
    roots.extend(ca.issuer_pem()?);
    std::fs::write(ws.join("tpm-roots.pem"), &roots)?;

    step("computing and signing reference values");
    let mut set: Option<MeasurementSet> = None;
    for cfg in &planned {
        let launch = Launch::local(&agent_bytes, &cfg.measured_from_files()?, &image);
        let s = MeasurementSet::from_launch("mini", &launch, &[cfg.role.as_str()]);
        match &mut set {
            None => set = Some(s),
            Some(all) => all.roles.extend(s.roles),
        }
    }
    let refs = ReferenceValues {
        version: veil_reference::VERSION,
        insecure_local_roots: true,
        tpm_roots: vec![String::from_utf8(roots.clone())?],
        sets: set.into_iter().collect(),
    };
    let yaml = refs.to_yaml()?;
    std::fs::write(ws.join("reference-values.yaml"), &yaml)?;
    std::fs::write(
        ws.join("reference-values.yaml.sig"),
        format!("{}\n", signing::sign(ref_sk.as_bytes(), yaml.as_bytes())?),
    )?;

    for (cfg, node) in planned.iter().zip(state.nodes.iter_mut()) {
        step(&format!(
            "{}: measured boot (firmware → PCR 0, separators → 0-7) and launch (agent → PCR 8, config → PCR 9, image → PCR 11, each closed by a separator)",
            cfg.name
        ));
        node.pid = launch_agent(ws, cfg, agent, node.netns.as_deref())?;
    }
    save(ws, state)?;

    step("waiting for the control plane");
    let first = cp_addrs.first().context("no control plane")?;
    wait_for(
        "the control-plane services",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(first).is_ok(),
    )?;
    step(&format!(
        "owner: attesting {} and handing it the master secret (veil init){}",
        state.nodes.first().map_or("cp-0", |n| n.name.as_str()),
        if cp_addrs.len() > 1 {
            "; enrolling the other control-plane nodes once they have joined it"
        } else {
            ""
        }
    ));
    let cid = veil_cli::init::owner_init(ws, &cp_addrs, true, approvals)?;
    state.cluster_id = cid.clone();
    save(ws, state)?;

    step("waiting for the workers to join");
    let workers: Vec<&MiniNode> = state.nodes.iter().filter(|n| n.role == "worker").collect();
    wait_for("the workers to join", Duration::from_secs(60), || {
        workers
            .iter()
            .all(|n| read_status(&n.dir).is_some_and(|s| s.phase == "joined"))
    })?;
    if cp_kube.is_some() {
        let host = first.rsplit_once(':').map_or(first.as_str(), |(h, _)| h);
        let server = format!("https://{host}:{}", kube::API_PORT);
        veil_cli::kubeconfig::write(ws, &server, &ws.join("kubeconfig"))?;
        step(&format!(
            "kubernetes: waiting for the API server at {server} (kubeconfig: {})",
            ws.join("kubeconfig").display()
        ));
        kube::wait_ready(ws, Duration::from_secs(120))?;
    }
    Ok(cid)
}

/// How long an agent may take to stop cleanly: its components (each group's grace period),
/// then its state volume (unmount, last commit and anchor).
const AGENT_STOP: Duration = Duration::from_secs(60);

/// Stops every agent and TPM of `state` and removes its namespaces, links and bridge.
fn stop_all(state: &MiniState) -> anyhow::Result<()> {
    for n in &state.nodes {
        if n.pid != 0 && alive(n.pid) {
            let _ = Command::new("kill").arg(n.pid.to_string()).status();
        }
    }
    for n in &state.nodes {
        let pid = n.pid;
        let _ = wait_for("an agent to stop", AGENT_STOP, || pid == 0 || !alive(pid));
        kube::kill_components(&n.dir);
        let port = n.tpm_port;
        let _ = in_node(n.netns.as_deref(), || {
            orderly_shutdown(port);
            veil_swtpm::stop_port(port)
        });
    }
    if let Some(lan) = &state.lan {
        let netns: Vec<String> = state.nodes.iter().filter_map(|n| n.netns.clone()).collect();
        let lan = lan.lan();
        // Namespaces attached before the state recorded them are found by name.
        let mut all = netns;
        if let Ok(list) = std::fs::read_dir("/run/netns") {
            let prefix = lan.netns_name("");
            for e in list.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && !all.contains(&name) {
                    all.push(name);
                }
            }
        }
        lan.destroy(&all)?;
    }
    Ok(())
}

/// Sends the TPM listening on `port` (here) TPM2_Shutdown, as a platform does before power
/// off, so that restarts never count against its dictionary-attack protection.
fn orderly_shutdown(port: u16) {
    if let Err(e) = NodeTpm::open(&veil_swtpm::tcti(port)).and_then(|mut t| t.shutdown()) {
        eprintln!("warning: TPM on port {port}: no orderly shutdown: {e}");
    }
}

fn load(ws: &Path) -> anyhow::Result<MiniState> {
    let p = ws.join("mini.json");
    serde_json::from_slice(
        &std::fs::read(&p).with_context(|| format!("no local cluster in {}", ws.display()))?,
    )
    .with_context(|| format!("{} is not a local-cluster state file", p.display()))
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn print_nodes(state: &MiniState) {
    match &state.lan {
        Some(lan) => println!(
            "network: a namespace per node on bridge vb{} (10.213.{}.0/24); WireGuard mesh 10.215.{}.0/24, strict mode",
            lan.id, lan.subnet, lan.subnet
        ),
        None => println!("network: host loopback (no mesh)"),
    }
    println!(
        "{:<10} {:<14} {:<14} {:<8} {:<10} {:<20} {:<6} MESH",
        "NODE", "ROLE", "ADDRESS", "AGENT", "PHASE", "NODE ID", "KEYS"
    );
    for n in &state.nodes {
        let s = read_status(&n.dir).unwrap_or_default();
        let mesh = s
            .mesh
            .as_ref()
            .map(|m| {
                format!(
                    "{} peers {} handshakes {} tx {} rx {}",
                    m.address, m.peers, m.handshakes, m.tx_bytes, m.rx_bytes
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<10} {:<14} {:<14} {:<8} {:<10} {:<20} {:<6} {}",
            n.name,
            n.role,
            n.addr,
            if alive(n.pid) { "running" } else { "stopped" },
            // A stopped agent's last status is history, not its phase.
            if alive(n.pid) || s.phase == "failed" {
                s.phase.clone()
            } else {
                "down".to_string()
            },
            s.node_id.unwrap_or_else(|| "-".into()),
            s.key_fetches,
            mesh
        );
    }
}

fn status(ws: &Path) -> anyhow::Result<ExitCode> {
    let state = load(ws)?;
    println!(
        "LOCAL CLUSTER (insecure local TPM roots): cluster {}",
        state.cluster_id
    );
    print_nodes(&state);
    Ok(ExitCode::SUCCESS)
}

/// Measures a node as its firmware would and starts its agent (in its namespace, if it has
/// one); returns the agent's PID.
fn launch_agent(
    ws: &Path,
    cfg: &AgentConfig,
    agent: &Path,
    netns: Option<&str>,
) -> anyhow::Result<u32> {
    let image = std::fs::read(ws.join("node-image.txt"))?;
    let launch = Launch::local(&std::fs::read(agent)?, &cfg.measured_from_files()?, &image);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.state_dir.join("agent.log"))?;
    in_node(netns, || -> anyhow::Result<u32> {
        {
            let mut t = NodeTpm::open(&cfg.tcti)?;
            for c in &launch.components {
                t.extend(c.pcr, &c.sha1.0, &c.sha256.0)?;
            }
        }
        std::fs::write(&cfg.event_log, launch.event_log().to_bytes())?;
        let child = Command::new(agent)
            .arg("--config")
            .arg(cfg.state_dir.join("agent.yaml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", agent.display()))?;
        Ok(child.id())
    })?
}

fn restart(ws: &Path, name: &str) -> anyhow::Result<ExitCode> {
    let mut state = load(ws)?;
    let agent = agent_binary()?;
    let ws = std::fs::canonicalize(ws)?;
    let node = state
        .nodes
        .iter_mut()
        .find(|n| n.name == name)
        .with_context(|| format!("no node `{name}`"))?;
    step(&format!("{name}: stopping its agent and TPM"));
    if alive(node.pid) {
        let _ = Command::new("kill").arg(node.pid.to_string()).status();
    }
    let pid = node.pid;
    wait_for(&format!("agent {name} to stop"), AGENT_STOP, || !alive(pid))?;
    let left = kube::kill_components(&node.dir);
    if left > 0 {
        step(&format!(
            "{name}: {left} component process(es) outlived the agent: killed"
        ));
    }
    let port = node.tpm_port;
    let netns = node.netns.clone();
    let tpm_state = node.dir.join("tpm");
    let tpm = in_node(netns.as_deref(), || -> anyhow::Result<SwTpm> {
        orderly_shutdown(port);
        let _ = veil_swtpm::stop_port(port);
        wait_for("the TPM to stop", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        })?;
        Ok(SwTpm::start_on(&tpm_state, port)?)
    })??;
    let cfg: AgentConfig = serde_norway::from_slice(&std::fs::read(node.dir.join("agent.yaml"))?)?;
    step(&format!("{name}: measured launch and a new agent"));
    let _ = std::fs::remove_file(node.dir.join("status.json"));
    node.pid = launch_agent(&ws, &cfg, &agent, netns.as_deref())?;
    tpm.detach();
    let dir = node.dir.clone();
    save(&ws, &state)?;
    wait_for(
        &format!("{name}'s agent to come up"),
        Duration::from_secs(30),
        || read_status(&dir).is_some_and(|s| s.phase != "starting"),
    )?;
    if cfg.role == "control-plane" {
        println!(
            "{name} restarted (its TPM's PCRs were reset): it takes the cluster's secrets from a serving peer control plane, or awaits `veil recover` if none serves"
        );
    } else {
        println!("{name} restarted (its TPM's PCRs were reset): it joins again");
    }
    Ok(ExitCode::SUCCESS)
}

fn image_load(ws: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let state = load(ws)?;
    let file = std::fs::canonicalize(file).with_context(|| format!("{}", file.display()))?;
    let bin = kube::components_dir()?;
    let mut loaded = 0;
    for n in state
        .nodes
        .iter()
        .filter(|n| n.role == "worker" && alive(n.pid))
    {
        // The runtime's socket is in the node's private directory, seen only from its mount
        // namespace (the agent's).
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(n.pid.to_string())
            .args(["-m", "-n"])
            .arg(bin.join("ctr"))
            .arg("--address")
            .arg(n.dir.join("private/containerd.sock"))
            .args(["-n", "k8s.io", "images", "import"])
            .arg(&file)
            .output()
            .context("cannot run nsenter")?;
        if !out.status.success() {
            bail!(
                "{}: ctr images import: {}",
                n.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let names = String::from_utf8_lossy(&out.stdout);
        println!("{}: {}", n.name, names.trim());
        loaded += 1;
    }
    if loaded == 0 {
        bail!("no running worker to load {} into", file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn conformance_images(ws: &Path, from: &Path) -> anyhow::Result<ExitCode> {
    let dir = ws.join("images/conformance");
    for file in images::conformance(&dir, &kube::components_dir()?, from)? {
        image_load(ws, &file)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn down(ws: &Path) -> anyhow::Result<ExitCode> {
    let state = load(ws)?;
    stop_all(&state).context("the local cluster's network could not be removed")?;
    if let Some(alive) = state.nodes.iter().find(|n| alive(n.pid)) {
        bail!(
            "agent {} (pid {}) did not stop; {} is left in place",
            alive.name,
            alive.pid,
            ws.display()
        );
    }
    std::fs::remove_dir_all(ws).with_context(|| format!("cannot remove {}", ws.display()))?;
    println!("local cluster stopped; {} removed", ws.display());
    Ok(ExitCode::SUCCESS)
}
