//! `veil-csi local`: the driver's Controller and Node services on one socket, with keys and
//! anchors kept by this process instead of a control plane. Insecure by construction (the
//! volumes' keys derive from a secret made at start and kept in memory; anything attaches to
//! this process's own node ID only): it exists so conformance suites written for any CSI
//! driver (csi-sanity) run against Veil's real services, formatting and mounting real volumes.
//! In a cluster the agent hosts these services, with keys from the control plane.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sha2::Digest;
use veil_csi::controller::{AttachRefused, Authority, Controller};
use veil_csi::node::{Keys, Node, NodeSettings};
use veil_volume::{AnchorRequest, Anchored};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(name = "veil-csi", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serves Identity, Controller and Node on one unix socket, keys and anchors kept here
    /// (tests only).
    Local {
        /// The CSI endpoint (unix socket path).
        #[arg(long)]
        socket: PathBuf,
        /// The disk pool.
        #[arg(long)]
        pool: PathBuf,
        /// The `veil-volume` binary.
        #[arg(long)]
        volume_binary: PathBuf,
        /// A directory for the volumes' FUSE mounts, logs and the anchor socket.
        #[arg(long)]
        work: PathBuf,
        /// The node ID this process answers as.
        #[arg(long, default_value = "local")]
        node_id: String,
    },
}

/// Keys, attachments and anchors, all in this process.
#[derive(Debug)]
struct Local {
    secret: Zeroizing<[u8; 32]>,
    node_id: String,
    anchors_socket: PathBuf,
    attached: Mutex<HashMap<String, String>>,
}

impl Local {
    fn key(&self, id: &str) -> Zeroizing<[u8; 32]> {
        let mut h = sha2::Sha256::new();
        h.update(b"veil-csi local volume key\0");
        h.update(self.secret.as_ref());
        h.update(id.as_bytes());
        Zeroizing::new(h.finalize().into())
    }
}

/// The one [`Local`], shared by the controller and the node.
#[derive(Clone, Debug)]
struct Shared(Arc<Local>);

impl std::ops::Deref for Shared {
    type Target = Local;
    fn deref(&self) -> &Local {
        &self.0
    }
}

impl Authority for Shared {
    fn volume_key(&self, id: &str) -> Result<Zeroizing<[u8; 32]>, String> {
        Ok(self.key(id))
    }
    fn attach(&self, id: &str, node: &str) -> Result<(), AttachRefused> {
        if node != self.node_id {
            return Err(AttachRefused::UnknownNode(format!(
                "{node} is not a node here (only {})",
                self.node_id
            )));
        }
        let mut a = self
            .attached
            .lock()
            .map_err(|_| AttachRefused::Refused("lock poisoned".into()))?;
        match a.get(id) {
            Some(other) if other != node => Err(AttachRefused::Refused(format!(
                "volume {id} is attached to {other}"
            ))),
            _ => {
                a.insert(id.to_string(), node.to_string());
                Ok(())
            }
        }
    }
    fn detach(&self, id: &str, node: &str) -> Result<(), String> {
        let mut a = self.attached.lock().map_err(|_| "lock poisoned")?;
        if a.get(id).map(String::as_str) == Some(node) {
            a.remove(id);
        }
        Ok(())
    }
    fn forget(&self, id: &str) -> Result<(), String> {
        self.attached
            .lock()
            .map_err(|_| "lock poisoned")?
            .remove(id);
        Ok(())
    }
    fn anchor_for(&self, id: &str) -> String {
        format!("agent:{}:{id}", self.anchors_socket.display())
    }
}

impl Keys for Shared {
    async fn volume_key(&self, id: &str) -> Result<Zeroizing<[u8; 32]>, String> {
        Ok(self.key(id))
    }
}

/// Serves the anchor protocol from memory: an anchor only moves forward.
fn serve_anchors(listener: std::os::unix::net::UnixListener) {
    let mut anchors: HashMap<String, Anchored> = HashMap::new();
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        let Ok(r) = stream.try_clone() else { continue };
        if std::io::BufReader::new(std::io::Read::take(r, 512))
            .read_line(&mut line)
            .is_err()
        {
            continue;
        }
        let reply = match AnchorRequest::parse(&line) {
            Err(e) => format!("error {e}"),
            Ok(AnchorRequest::Read { name }) => match anchors.get(&name) {
                None => "none".into(),
                Some(a) => format!("{} {}", a.generation, hex::encode(a.digest)),
            },
            Ok(AnchorRequest::Advance { name, to }) => match anchors.get(&name) {
                Some(c)
                    if to.generation < c.generation
                        || (to.generation == c.generation && to.digest != c.digest) =>
                {
                    format!("error anchor of {name} is at generation {}", c.generation)
                }
                _ => {
                    anchors.insert(name, to);
                    "ok".into()
                }
            },
        };
        let _ = stream.write_all(format!("{reply}\n").as_bytes());
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let Cmd::Local {
        socket,
        pool,
        volume_binary,
        work,
        node_id,
    } = Cli::parse().cmd;
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&pool)?;
    let anchors_socket = work.join("anchor.sock");
    let _ = std::fs::remove_file(&anchors_socket);
    let listener = std::os::unix::net::UnixListener::bind(&anchors_socket)
        .with_context(|| format!("{}", anchors_socket.display()))?;
    std::thread::spawn(move || serve_anchors(listener));
    let mut secret = Zeroizing::new([0u8; 32]);
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, secret.as_mut())?;
    let local = Shared(Arc::new(Local {
        secret,
        node_id: node_id.clone(),
        anchors_socket: anchors_socket.clone(),
        attached: Mutex::new(HashMap::new()),
    }));
    let sha256 = hex::encode(sha2::Sha256::digest(
        std::fs::read(&volume_binary).with_context(|| format!("{}", volume_binary.display()))?,
    ));
    let controller = Controller::new(
        pool.clone(),
        volume_binary.clone(),
        sha256.clone(),
        Box::new(local.clone()),
    );
    let node = Node::new(
        NodeSettings {
            node_id,
            pool,
            binary: volume_binary,
            sha256,
            anchor_socket: anchors_socket,
            work: work.join("volumes"),
        },
        local,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let incoming = veil_csi::bind(&socket)?;
        let stopping = node.clone();
        let stop = async {
            let _ = tokio::signal::ctrl_c().await;
        };
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        println!(
            "{{\"event\":\"ready\",\"socket\":{:?}}}",
            socket.display().to_string()
        );
        tonic::transport::Server::builder()
            .add_service(veil_csi::IdentityServer::new(veil_csi::Identity {
                name: veil_csi::DRIVER,
                controller: true,
            }))
            .add_service(veil_csi::ControllerServer::new(controller))
            .add_service(veil_csi::NodeServer::new(node))
            .serve_with_incoming_shutdown(incoming, async move {
                tokio::select! {
                    () = stop => {}
                    _ = term.recv() => {}
                }
            })
            .await?;
        stopping.stop_all().await;
        anyhow::Ok(())
    })
}
