//! `veil mini`: a local cluster on one machine. Each node is its own `veil-agent` process with
//! its own software TPM, manufactured by a CA in the workspace, and measured by `veil mini`
//! playing its firmware before the agent starts. LOCAL CLUSTERS ARE INSECURE BY NATURE: their
//! TPM roots are software; reference values accept them only because they say so.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use veil_agent::{AgentConfig, Status};
use veil_reference::launch::Launch;
use veil_reference::{MeasurementSet, ReferenceValues, signing};
use veil_swtpm::{LocalCa, SwTpm};
use veil_tpm_device::NodeTpm;

use crate::output::EXIT_UNUSABLE;

#[derive(Subcommand, Debug)]
pub enum MiniCommand {
    /// Start a local cluster.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// How many of them are control-plane nodes (only 1 is supported).
        #[arg(long = "control-plane", default_value_t = 1)]
        control_plane: usize,
        /// The workspace (created).
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
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
    /// Stop a local cluster and remove everything it created.
    Down {
        /// The workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
}

/// What `veil mini up` started, for `status` and `down`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MiniState {
    /// Control-plane service address.
    pub control_plane: String,
    /// Cluster ID (hex).
    pub cluster_id: String,
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
    /// Its swtpm's command port.
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
        } => up(&workspace, nodes, control_plane),
        MiniCommand::Status { workspace } => status(&workspace),
        MiniCommand::Down { workspace } => down(&workspace),
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

fn up(ws: &Path, nodes: usize, control_planes: usize) -> anyhow::Result<ExitCode> {
    if control_planes != 1 {
        bail!(
            "--control-plane {control_planes}: local clusters have exactly 1 control-plane node for now"
        );
    }
    if nodes < 1 {
        bail!("--nodes must be at least 1");
    }
    if ws.join("mini.json").exists() {
        bail!(
            "{} already holds a running local cluster (veil mini down first)",
            ws.display()
        );
    }
    let agent = agent_binary()?;
    std::fs::create_dir_all(ws.join("owner"))?;
    let ws = std::fs::canonicalize(ws)?;
    step(&format!(
        "workspace {} (LOCAL CLUSTER: software TPM roots, insecure by nature)",
        ws.display()
    ));

    // Owner secrets and the reference-values key.
    crate::init::ensure_secrets(&ws)?;
    let (ref_sk, ref_pk) = signing::generate_key()?;
    crate::init::write_secret(&ws.join("owner/reference.key"), ref_sk.as_bytes())?;
    std::fs::write(ws.join("reference.pub"), &ref_pk)?;

    // Node configurations, TPMs and firmware.
    let cp_addr = format!("127.0.0.1:{}", free_port()?);
    let image =
        b"veil-mini node image: Debian 12, veil-agent, no Kubernetes API server (local)\n".to_vec();
    std::fs::write(ws.join("node-image.txt"), &image)?;
    let agent_bytes = std::fs::read(&agent)?;
    let ca = LocalCa::at(&ws.join("tpm-ca"));
    let mut planned = Vec::new();
    for i in 0..nodes {
        let (name, role) = if i < control_planes {
            (format!("cp-{i}"), "control-plane")
        } else {
            (format!("worker-{}", i - control_planes), "worker")
        };
        let dir = ws.join("nodes").join(&name);
        std::fs::create_dir_all(&dir)?;
        step(&format!(
            "{name}: manufacturing its TPM (EK certificate from the workspace CA)"
        ));
        ca.manufacture(&dir.join("tpm"))?;
        let tpm = SwTpm::start(&dir.join("tpm"))?;
        let cfg = AgentConfig {
            name: name.clone(),
            role: role.to_string(),
            control_plane: cp_addr.clone(),
            tcti: tpm.tcti(),
            event_log: dir.join("eventlog.bin"),
            reference_values: ws.join("reference-values.yaml"),
            reference_signature: ws.join("reference-values.yaml.sig"),
            reference_key: ws.join("reference.pub"),
            tpm_roots_local: true,
            state_dir: dir.clone(),
            metrics: (role == "control-plane")
                .then(|| free_port().map(|p| format!("127.0.0.1:{p}")))
                .transpose()?,
        };
        std::fs::write(dir.join("agent.yaml"), serde_norway::to_string(&cfg)?)?;
        planned.push((cfg, tpm));
    }
    let mut roots = ca.root_pem()?;
    roots.extend(ca.issuer_pem()?);
    std::fs::write(ws.join("tpm-roots.pem"), &roots)?;

    step("computing and signing reference values");
    let mut set: Option<MeasurementSet> = None;
    for (cfg, _) in &planned {
        let launch = Launch::measure(&agent_bytes, &cfg.measured(), &image);
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

    let mut state = MiniState {
        control_plane: cp_addr.clone(),
        cluster_id: String::new(),
        nodes: Vec::new(),
    };
    for (cfg, tpm) in planned {
        step(&format!(
            "{}: measured launch (agent → PCR 8, config → PCR 9, image → PCR 11)",
            cfg.name
        ));
        let pid = launch_agent(&ws, &cfg, &agent)?;
        state.nodes.push(MiniNode {
            name: cfg.name.clone(),
            role: cfg.role.clone(),
            tpm_port: tpm.detach(),
            pid,
            dir: cfg.state_dir.clone(),
        });
    }
    std::fs::write(ws.join("mini.json"), serde_json::to_vec_pretty(&state)?)?;

    step("waiting for the control plane");
    wait_for(
        "the control-plane services",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(&cp_addr).is_ok(),
    )?;
    step("owner: attesting the control plane and handing it the master secret (veil init)");
    let cid = crate::init::owner_init(&ws, &cp_addr, true)?;
    state.cluster_id = cid.clone();
    std::fs::write(ws.join("mini.json"), serde_json::to_vec_pretty(&state)?)?;

    step("waiting for the workers to join");
    let workers: Vec<&MiniNode> = state.nodes.iter().filter(|n| n.role == "worker").collect();
    wait_for("the workers to join", Duration::from_secs(60), || {
        workers
            .iter()
            .all(|n| read_status(&n.dir).is_some_and(|s| s.phase == "joined"))
    })?;
    println!();
    println!("LOCAL CLUSTER up (insecure local TPM roots): cluster {cid}");
    print_nodes(&state);
    Ok(ExitCode::SUCCESS)
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
    println!(
        "{:<10} {:<14} {:<8} {:<10} {:<20} KEY FETCHES",
        "NODE", "ROLE", "AGENT", "PHASE", "NODE ID"
    );
    for n in &state.nodes {
        let s = read_status(&n.dir).unwrap_or_default();
        println!(
            "{:<10} {:<14} {:<8} {:<10} {:<20} {}",
            n.name,
            n.role,
            if alive(n.pid) { "running" } else { "stopped" },
            s.phase,
            s.node_id.unwrap_or_else(|| "-".into()),
            s.key_fetches
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

/// Measures a node as its firmware would and starts its agent; returns the agent's PID.
fn launch_agent(ws: &Path, cfg: &AgentConfig, agent: &Path) -> anyhow::Result<u32> {
    let image = std::fs::read(ws.join("node-image.txt"))?;
    let launch = Launch::measure(&std::fs::read(agent)?, &cfg.measured(), &image);
    {
        let mut t = NodeTpm::open(&cfg.tcti)?;
        for c in &launch.components {
            t.extend(c.pcr, &c.sha1.0, &c.sha256.0)?;
        }
    }
    std::fs::write(&cfg.event_log, launch.event_log().to_bytes())?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.state_dir.join("agent.log"))?;
    let child = Command::new(agent)
        .arg("--config")
        .arg(cfg.state_dir.join("agent.yaml"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start {}", agent.display()))?;
    Ok(child.id())
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
    wait_for(
        &format!("agent {name} to stop"),
        Duration::from_secs(10),
        || !alive(pid),
    )?;
    let _ = veil_swtpm::stop_port(node.tpm_port);
    let port = node.tpm_port;
    wait_for("the TPM to stop", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })?;
    let tpm = SwTpm::start_on(&node.dir.join("tpm"), node.tpm_port)?;
    let cfg: AgentConfig = serde_norway::from_slice(&std::fs::read(node.dir.join("agent.yaml"))?)?;
    step(&format!("{name}: measured launch and a new agent"));
    let _ = std::fs::remove_file(node.dir.join("status.json"));
    node.pid = launch_agent(&ws, &cfg, &agent)?;
    tpm.detach();
    let dir = node.dir.clone();
    std::fs::write(ws.join("mini.json"), serde_json::to_vec_pretty(&state)?)?;
    wait_for(
        &format!("{name}'s agent to come up"),
        Duration::from_secs(30),
        || read_status(&dir).is_some_and(|s| s.phase != "starting"),
    )?;
    println!("{name} restarted (its TPM's PCRs were reset; a control plane awaits `veil recover`)");
    Ok(ExitCode::SUCCESS)
}

fn down(ws: &Path) -> anyhow::Result<ExitCode> {
    let state = load(ws)?;
    for n in &state.nodes {
        if alive(n.pid) {
            let _ = Command::new("kill").arg(n.pid.to_string()).status();
        }
    }
    for n in &state.nodes {
        wait_for(
            &format!("agent {} to stop", n.name),
            Duration::from_secs(10),
            || !alive(n.pid),
        )?;
        let _ = veil_swtpm::stop_port(n.tpm_port);
    }
    std::fs::remove_dir_all(ws).with_context(|| format!("cannot remove {}", ws.display()))?;
    println!("local cluster stopped; {} removed", ws.display());
    Ok(ExitCode::SUCCESS)
}
