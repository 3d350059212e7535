//! Keeps the node's Kubernetes components running: each is started from a binary whose SHA-256
//! must be the one the node's measured configuration names (checked before every start), its
//! output appended to its own log, and restarted with a backoff when it dies. Stopping sends
//! SIGTERM, then SIGKILL after a grace period.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One process to keep running.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessSpec {
    /// Its name (for status and logs).
    pub name: String,
    /// The program (a binary, or a symlink to one: what `argv[0]` is).
    pub program: PathBuf,
    /// The SHA-256 its file must have, if checked.
    pub sha256: Option<[u8; 32]>,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Where its output goes (appended).
    pub log: PathBuf,
}

/// What a supervised process is doing (as the node's status file reports it).
pub use veil_wire::status::ComponentStatus as ProcessState;

/// The supervisor of a set of processes.
#[derive(Debug)]
pub struct Supervisor {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<Option<Duration>>,
    states: Arc<Mutex<BTreeMap<String, ProcessState>>>,
}

/// The SHA-256 of a file.
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<[u8; 32]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        ctx.update(buf.get(..n).unwrap_or_default());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Ok(out)
}

/// Checks that the file at `path` has the SHA-256 the measured configuration names.
pub fn check_measured(path: &std::path::Path, expected: &[u8; 32]) -> Result<(), String> {
    let found = file_sha256(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if &found != expected {
        return Err(format!(
            "{}: SHA-256 expected {} (the measured configuration), found {}",
            path.display(),
            hex::encode(expected),
            hex::encode(found)
        ));
    }
    Ok(())
}

fn check_binary(spec: &ProcessSpec) -> Result<(), String> {
    match &spec.sha256 {
        Some(expected) => check_measured(&spec.program, expected),
        None => Ok(()),
    }
}

const MAX_BACKOFF: Duration = Duration::from_secs(10);

async fn terminate(child: &mut tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn keep_running(
    spec: ProcessSpec,
    states: Arc<Mutex<BTreeMap<String, ProcessState>>>,
    mut stop: watch::Receiver<Option<Duration>>,
) {
    let set = |f: &dyn Fn(&mut ProcessState)| {
        if let Ok(mut s) = states.lock() {
            f(s.entry(spec.name.clone()).or_default());
        }
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        if stop.borrow().is_some() {
            return;
        }
        if let Err(e) = check_binary(&spec) {
            tracing::error!(event = "component_refused", component = %spec.name, reason = %e, "not starting a component whose binary is not the measured one");
            set(&|s| {
                s.refused = true;
                s.pid = None;
                s.last_error = Some(e.clone());
            });
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log);
        let spawned = log.and_then(|log| {
            let err = log.try_clone()?;
            tokio::process::Command::new(&spec.program)
                .args(&spec.args)
                .envs(spec.env.iter().cloned())
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(err)
                .kill_on_drop(true)
                .spawn()
        });
        let started = Instant::now();
        let reason = match spawned {
            Err(e) => format!("cannot start {}: {e}", spec.program.display()),
            Ok(mut child) => {
                let pid = child.id();
                tracing::info!(event = "component_started", component = %spec.name, pid = ?pid);
                set(&|s| s.pid = pid);
                tokio::select! {
                    r = child.wait() => match r {
                        Ok(status) => format!("exited: {status}"),
                        Err(e) => format!("wait: {e}"),
                    },
                    () = async { let _ = stop.wait_for(Option::is_some).await; } => {
                        let grace = stop.borrow().unwrap_or_default();
                        terminate(&mut child, grace).await;
                        set(&|s| s.pid = None);
                        return;
                    }
                }
            }
        };
        tracing::warn!(event = "component_stopped", component = %spec.name, reason = %reason, "restarting");
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(500);
        }
        set(&|s| {
            s.pid = None;
            s.restarts += 1;
            s.last_error = Some(reason.clone());
        });
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            () = async { let _ = stop.wait_for(Option::is_some).await; } => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl Supervisor {
    /// Starts every process of `specs` and keeps it running.
    pub fn start(specs: Vec<ProcessSpec>) -> Self {
        let (stop, rx) = watch::channel(None);
        let states = Arc::new(Mutex::new(BTreeMap::new()));
        let tasks = specs
            .into_iter()
            .map(|s| tokio::spawn(keep_running(s, states.clone(), rx.clone())))
            .collect();
        Self {
            tasks,
            stop,
            states,
        }
    }

    /// What each process is doing.
    pub fn states(&self) -> BTreeMap<String, ProcessState> {
        self.states.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops every process (SIGTERM, SIGKILL after `grace`) and waits for them.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(dir: &std::path::Path, name: &str, script: &str, sha: Option<[u8; 32]>) -> ProcessSpec {
        ProcessSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            sha256: sha,
            args: vec!["-c".into(), script.into()],
            env: vec![("VEIL_TEST".into(), name.into())],
            log: dir.join(format!("{name}.log")),
        }
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test]
    async fn restarts_what_dies_refuses_what_is_not_measured_and_stops_everything() {
        let dir = tempfile::tempdir().unwrap();
        let sh = file_sha256(std::path::Path::new("/bin/sh")).unwrap();
        let sup = Supervisor::start(vec![
            spec(
                dir.path(),
                "steady",
                "echo up $VEIL_TEST; exec sleep 60",
                Some(sh),
            ),
            spec(dir.path(), "dying", "echo once; exit 3", Some(sh)),
            spec(dir.path(), "swapped", "exec sleep 60", Some([0; 32])),
        ]);
        until("a restart", || {
            sup.states().get("dying").is_some_and(|s| s.restarts >= 2)
        })
        .await;
        let st = sup.states();
        let dying = &st["dying"];
        assert!(
            dying
                .last_error
                .as_deref()
                .unwrap()
                .contains("exit status: 3")
        );
        let swapped = &st["swapped"];
        assert!(swapped.refused && swapped.pid.is_none());
        assert!(
            swapped
                .last_error
                .as_deref()
                .unwrap()
                .contains(&format!("expected {}", hex::encode([0u8; 32]))),
            "{swapped:?}"
        );
        until("steady to run", || sup.states()["steady"].pid.is_some()).await;
        let pid = sup.states()["steady"].pid.unwrap();
        assert_eq!(sup.states()["steady"].restarts, 0);
        until("its log", || {
            std::fs::read_to_string(dir.path().join("steady.log"))
                .is_ok_and(|l| l.contains("up steady"))
        })
        .await;
        sup.stop(Duration::from_secs(2)).await;
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
