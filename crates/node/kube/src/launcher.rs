//! The supervisor as a process of its own. The agent starts it (`veil-agent --supervise`)
//! before it opens its TPM or its mesh device, so the components it starts inherit none of the
//! agent's descriptors: the TPM library's socket is not close-on-exec, and a component holding
//! it would keep the software TPM serving a connection nobody uses, while the agent's own waits
//! forever. The agent tells it what to run over its standard input (JSON lines) and reads the
//! components' states from its standard output. When the agent's end closes — the agent
//! stopped, or was killed — it stops every component and exits: nothing outlives the agent.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::supervise::{ProcessSpec, ProcessState, Supervisor};

/// What the agent asks of its supervisor process.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Start (and keep running) these processes, as group `group` (replacing a group of that
    /// name, which is stopped first).
    Start {
        /// The group.
        group: String,
        /// Its processes.
        specs: Vec<ProcessSpec>,
    },
    /// Stop group `group` (SIGTERM, SIGKILL after `grace_ms`).
    Stop {
        /// The group.
        group: String,
        /// Grace period in milliseconds.
        grace_ms: u64,
    },
}

/// What the supervisor process reports.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Report {
    /// Every process's state, by name.
    States(BTreeMap<String, ProcessState>),
    /// Group `0` is stopped.
    Stopped(String),
}

/// The supervisor process's side: runs until its standard input closes, then stops
/// everything.
pub async fn serve_stdio(grace: Duration) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    let mut groups: BTreeMap<String, Supervisor> = BTreeMap::new();
    let mut last = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { break };
                if line.len() > 1 << 20 {
                    anyhow::bail!("supervisor: a command of {} bytes (at most 1 MiB)", line.len());
                }
                match serde_json::from_str::<Command>(&line)? {
                    Command::Start { group, specs } => {
                        if let Some(old) = groups.remove(&group) {
                            old.stop(grace).await;
                        }
                        groups.insert(group, Supervisor::start(specs));
                    }
                    Command::Stop { group, grace_ms } => {
                        if let Some(g) = groups.remove(&group) {
                            g.stop(Duration::from_millis(grace_ms)).await;
                        }
                        let r = serde_json::to_string(&Report::Stopped(group))?;
                        out.write_all(format!("{r}\n").as_bytes()).await?;
                        out.flush().await?;
                    }
                }
            }
            _ = tick.tick() => {
                let states: BTreeMap<String, ProcessState> =
                    groups.values().flat_map(|g| g.states()).collect();
                if states != last {
                    let r = serde_json::to_string(&Report::States(states.clone()))?;
                    out.write_all(format!("{r}\n").as_bytes()).await?;
                    out.flush().await?;
                    last = states;
                }
            }
        }
    }
    for (_, g) in groups {
        g.stop(grace).await;
    }
    Ok(())
}

/// The agent's side: a handle on its supervisor process.
#[derive(Debug)]
pub struct Launcher {
    child: Mutex<Option<std::process::Child>>,
    input: tokio::sync::Mutex<Option<tokio::process::ChildStdin>>,
    states: Arc<Mutex<BTreeMap<String, ProcessState>>>,
    stopped: Arc<tokio::sync::Notify>,
    stopped_groups: Arc<Mutex<Vec<String>>>,
}

impl Launcher {
    /// Starts `exe --supervise` (before anything else opens a descriptor worth keeping).
    pub fn spawn(exe: &std::path::Path) -> std::io::Result<std::process::Child> {
        std::process::Command::new(exe)
            .arg("--supervise")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
    }

    /// Takes the started process over (inside the runtime).
    pub fn attach(mut child: std::process::Child) -> std::io::Result<Self> {
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("the supervisor has no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("the supervisor has no stdout"))?;
        let states = Arc::new(Mutex::new(BTreeMap::new()));
        let stopped = Arc::new(tokio::sync::Notify::new());
        let stopped_groups = Arc::new(Mutex::new(Vec::new()));
        let (s, n, g) = (states.clone(), stopped.clone(), stopped_groups.clone());
        let stdout = tokio::process::ChildStdout::from_std(stdout)?;
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Report>(&line) {
                    Ok(Report::States(st)) => {
                        if let Ok(mut m) = s.lock() {
                            *m = st;
                        }
                    }
                    Ok(Report::Stopped(group)) => {
                        if let Ok(mut v) = g.lock() {
                            v.push(group);
                        }
                        n.notify_waiters();
                    }
                    Err(e) => tracing::warn!(error = %e, "supervisor: unreadable report"),
                }
            }
            tracing::warn!("supervisor process ended");
        });
        Ok(Self {
            child: Mutex::new(Some(child)),
            input: tokio::sync::Mutex::new(Some(tokio::process::ChildStdin::from_std(stdin)?)),
            states,
            stopped,
            stopped_groups,
        })
    }

    async fn send(&self, c: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_string(c)?;
        line.push('\n');
        let mut input = self.input.lock().await;
        let i = input
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("the supervisor process is gone"))?;
        i.write_all(line.as_bytes()).await?;
        i.flush().await?;
        Ok(())
    }

    /// Starts group `group`.
    pub async fn start(&self, group: &str, specs: Vec<ProcessSpec>) -> anyhow::Result<()> {
        self.send(&Command::Start {
            group: group.into(),
            specs,
        })
        .await
    }

    /// Stops group `group` and waits until it is (or `grace` and a few seconds passed).
    pub async fn stop(&self, group: &str, grace: Duration) {
        let notified = self.stopped.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let sent = self
            .send(&Command::Stop {
                group: group.into(),
                grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
            })
            .await;
        if sent.is_err() {
            return;
        }
        let deadline = tokio::time::Instant::now() + grace + Duration::from_secs(3);
        loop {
            if self
                .stopped_groups
                .lock()
                .map(|mut v| {
                    let had = v.iter().any(|g| g == group);
                    v.retain(|g| g != group);
                    had
                })
                .unwrap_or(true)
            {
                return;
            }
            tokio::select! {
                _ = &mut notified => {
                    notified.set(self.stopped.notified());
                    notified.as_mut().enable();
                }
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// Every process's state.
    pub fn states(&self) -> BTreeMap<String, ProcessState> {
        self.states.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Closes the supervisor's input (it stops everything and exits) and waits for it.
    pub async fn shutdown(&self, timeout: Duration) {
        self.input.lock().await.take();
        let child = self.child.lock().ok().and_then(|mut c| c.take());
        if let Some(mut c) = child {
            let _ = tokio::task::spawn_blocking(move || {
                let deadline = std::time::Instant::now() + timeout;
                while std::time::Instant::now() < deadline {
                    if let Ok(Some(_)) = c.try_wait() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            })
            .await;
        }
    }
}
