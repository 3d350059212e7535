//! A worker's errands to the control plane for its persistent volumes: a volume's key at
//! stage time, its anchor at every commit. One task holds an attested session (the node's
//! evidence on the connection, its node certificate with each request) and takes requests in
//! order; a session lasts at most [`SESSION_AGE`], so the evidence the control plane judges is
//! never older than that, and a failed request is tried once more on a new connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use veil_client::Session;
use veil_node_attest::TpmAttester;
use veil_reference::ReferenceValues;
use veil_wire::proto::VolumeCommit;
use zeroize::Zeroizing;

/// The longest a session is used before a new one attests the node again.
pub const SESSION_AGE: Duration = Duration::from_secs(20);
/// How long one errand may take.
pub const ERRAND_TIMEOUT: Duration = Duration::from_secs(20);

enum Errand {
    Key(String, oneshot::Sender<Result<Zeroizing<[u8; 32]>, String>>),
    Cas(
        veil_wire::proto::CasCall,
        oneshot::Sender<Result<veil_wire::proto::CasAnswer, String>>,
    ),
    Anchor(
        String,
        Option<VolumeCommit>,
        oneshot::Sender<Result<Option<VolumeCommit>, String>>,
    ),
}

/// A handle on the worker's errand task.
#[derive(Clone, Debug)]
pub struct Broker {
    tx: mpsc::Sender<Errand>,
}

/// Who the worker is to the control plane.
#[derive(Debug)]
pub struct Member {
    /// The addresses of the control plane that keeps the volumes.
    pub addresses: Vec<String>,
    /// The reference values control planes are checked against.
    pub reference: ReferenceValues,
    /// The cluster ID.
    pub cluster_id: Vec<u8>,
    /// The node certificate from join.
    pub node_cert: Vec<u8>,
    /// The node's TPM.
    pub attester: Arc<TpmAttester>,
}

impl Broker {
    /// Starts the errand task.
    pub fn start(m: Member) -> Self {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(run(m, rx));
        Self { tx }
    }

    /// The key of volume `id` (async).
    pub async fn volume_key(&self, id: &str) -> Result<Zeroizing<[u8; 32]>, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Errand::Key(id.to_string(), tx))
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.await.map_err(|_| "the agent is stopping".to_string())?
    }

    /// One call to the CAS (a release names this node's certificate: see [`Broker::node_cert`]).
    pub async fn cas(
        &self,
        call: veil_wire::proto::CasCall,
    ) -> Result<veil_wire::proto::CasAnswer, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Errand::Cas(call, tx))
            .await
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.await.map_err(|_| "the agent is stopping".to_string())?
    }

    /// Reads or advances the anchor of volume `id`, from a thread outside the runtime.
    pub fn anchor_blocking(
        &self,
        id: &str,
        advance: Option<VolumeCommit>,
    ) -> Result<Option<VolumeCommit>, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .blocking_send(Errand::Anchor(id.to_string(), advance, tx))
            .map_err(|_| "the agent is stopping".to_string())?;
        rx.blocking_recv()
            .map_err(|_| "the agent is stopping".to_string())?
    }
}

impl veil_csi::node::Keys for Broker {
    async fn volume_key(&self, id: &str) -> Result<Zeroizing<[u8; 32]>, String> {
        Broker::volume_key(self, id).await
    }
}

async fn connect(m: &Member) -> anyhow::Result<Session<tokio::net::TcpStream>> {
    crate::connect_any(
        &m.addresses,
        &m.reference,
        veil_node_attest::Membership::Member(m.cluster_id.clone()),
        &m.attester,
    )
    .await
}

async fn run(m: Member, mut rx: mpsc::Receiver<Errand>) {
    let mut session: Option<(Session<tokio::net::TcpStream>, Instant)> = None;
    while let Some(errand) = rx.recv().await {
        let mut last = String::new();
        let mut outcome = None;
        for _ in 0..2 {
            if session
                .as_ref()
                .is_none_or(|(_, at)| at.elapsed() > SESSION_AGE)
            {
                session = None;
                match tokio::time::timeout(ERRAND_TIMEOUT, connect(&m)).await {
                    Ok(Ok(s)) => session = Some((s, Instant::now())),
                    Ok(Err(e)) => {
                        last = format!("no control plane: {e:#}");
                        continue;
                    }
                    Err(_) => {
                        last = "no control plane answered in time".into();
                        continue;
                    }
                }
            }
            let Some((s, _)) = session.as_mut() else {
                continue;
            };
            let r = match &errand {
                Errand::Key(id, _) => {
                    tokio::time::timeout(ERRAND_TIMEOUT, s.volume_key(id, &m.node_cert))
                        .await
                        .map(|r| r.map(|k| Outcome::Key(Zeroizing::new(k))))
                }
                Errand::Cas(call, _) => {
                    let mut call = call.clone();
                    if let veil_wire::proto::CasCall::Release { node_cert, .. } = &mut call {
                        *node_cert = hex::encode(&m.node_cert);
                    }
                    tokio::time::timeout(ERRAND_TIMEOUT, s.cas(call))
                        .await
                        .map(|r| r.map(|a| Outcome::Cas(Box::new(a))))
                }
                Errand::Anchor(id, advance, _) => tokio::time::timeout(
                    ERRAND_TIMEOUT,
                    s.volume_anchor(id, &m.node_cert, advance.clone()),
                )
                .await
                .map(|r| r.map(Outcome::Anchor)),
            };
            match r {
                Ok(Ok(o)) => {
                    outcome = Some(Ok(o));
                    break;
                }
                Ok(Err(e)) => {
                    session = None;
                    let text = e.to_string();
                    // A refusal is the answer; anything else may be the connection.
                    if text.contains("refused by the control plane") {
                        outcome = Some(Err(text));
                        break;
                    }
                    last = text;
                }
                Err(_) => {
                    session = None;
                    last = "the control plane did not answer in time".into();
                }
            }
        }
        let outcome = outcome.unwrap_or(Err(last));
        match (errand, outcome) {
            (Errand::Cas(_, tx), Ok(Outcome::Cas(a))) => {
                let _ = tx.send(Ok(*a));
            }
            (Errand::Cas(_, tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Errand::Cas(_, tx), Ok(_)) => {
                let _ = tx.send(Err("internal error: answer mismatch".into()));
            }
            (Errand::Key(_, tx), Ok(Outcome::Key(k))) => {
                let key = <[u8; 32]>::try_from(k.as_slice())
                    .map(Zeroizing::new)
                    .map_err(|_| format!("a volume key of {} bytes, expected 32", k.len()));
                let _ = tx.send(key);
            }
            (Errand::Anchor(_, _, tx), Ok(Outcome::Anchor(a))) => {
                let _ = tx.send(Ok(a));
            }
            (Errand::Key(_, tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Errand::Anchor(_, _, tx), Err(e)) => {
                let _ = tx.send(Err(e));
            }
            (Errand::Key(_, tx), Ok(_)) => {
                let _ = tx.send(Err("internal error: answer mismatch".into()));
            }
            (Errand::Anchor(_, _, tx), Ok(_)) => {
                let _ = tx.send(Err("internal error: answer mismatch".into()));
            }
        }
    }
}

enum Outcome {
    Key(Zeroizing<Vec<u8>>),
    Anchor(Option<VolumeCommit>),
    Cas(Box<veil_wire::proto::CasAnswer>),
}
