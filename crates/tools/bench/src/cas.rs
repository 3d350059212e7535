//! `veil-bench cas`: the Configuration and Attestation Service's core, in process.
//!
//! - Audit appends per second, durable (each acknowledged only once a synced, signed
//!   checkpoint covers it), from 64 and from 256 threads through group commit, against the baseline of one
//!   append per sync from one thread. Goal ≥ 50,000/s.
//! - Secret releases per second from 32 threads: a fresh nonce, the node's signature over the
//!   evidence's binding checked, the workload matched against its session, the secrets
//!   substituted, the release audited durably. Goal ≥ 5,000/s. The node appraisal here is an
//!   Ed25519 signature check standing in for a TPM quote's (the agents' real quotes are not
//!   measured here).
//! - The same through the KBS protocol over HTTP on loopback, driven by `veil-kbs-client`:
//!   resources per second on attested sessions (a TCP connection per request, each answer a
//!   JWE to the session's key), and whole handshakes per second (auth, attest, one resource,
//!   a fresh key each), from 32 threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_cas::database::Database;
use veil_cas::policy::{self, Action, Rule, Signature};
use veil_cas::service::Cas;
use veil_cas::workload::{Evidence, Identity, NodeAppraiser, NodeFacts};
use veil_tlog::group::Appender;
use veil_tlog::log::Log;
use veil_tlog::note::NoteSigner;

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

struct SignedBindings(Vec<u8>);

impl NodeAppraiser for SignedBindings {
    fn appraise(&self, _: &str, quote: &[u8], binding: &[u8; 64]) -> Result<NodeFacts, String> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(binding, quote)
            .map_err(|_| "the quote does not verify".to_string())?;
        Ok(NodeFacts {
            reference_set: "bench".into(),
            tee: "tpm".into(),
            tcb: None,
        })
    }
}

/// Runs `op` from `threads` threads for `secs`; returns operations per second.
fn concurrent(threads: usize, secs: f64, op: impl Fn() -> Result<()> + Sync) -> Result<f64> {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|s| -> Result<()> {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while !stop.load(Ordering::Relaxed) {
                        op()?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.join()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
        }
        Ok(())
    })?;
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn entry(i: u64) -> Vec<u8> {
    format!(
        r#"{{"event":"cas.release","outcome":"allowed","secrets":["db_password"],"session":"acme/payments","time":{i}}}"#
    )
    .into_bytes()
}

pub fn run(secs: f64) -> Result<()> {
    println!("veil-bench cas: in process, {secs:.1} s per figure");
    let tmp = tempfile::tempdir()?;
    let signer = || NoteSigner::from_seed("veil.bench/cas", &[9; 32]);

    // --- Audit appends ------------------------------------------------------------------
    let mut single = Log::open(&tmp.path().join("single"), signer()?)?;
    let mut i = 0u64;
    let base = super::rate(secs, || {
        i += 1;
        single.append(&[&entry(i)])?;
        Ok(())
    })?;
    for (threads, dir) in [(64, "grouped-64"), (256, "grouped-256")] {
        let grouped = Appender::new(Log::open(&tmp.path().join(dir), signer()?)?);
        let n = AtomicU64::new(0);
        let ours = concurrent(threads, secs, || {
            grouped.append(entry(n.fetch_add(1, Ordering::Relaxed)))?;
            Ok(())
        })?;
        super::line(
            &format!("audit appends, durable ({threads} threads)"),
            ours,
            Some(("one sync per append", base)),
            "goal >= 50000/s",
        );
    }

    // --- Releases -----------------------------------------------------------------------
    let owner =
        Ed25519KeyPair::from_seed_unchecked(&[1; 32]).map_err(|_| anyhow::anyhow!("owner key"))?;
    let node =
        Ed25519KeyPair::from_seed_unchecked(&[3; 32]).map_err(|_| anyhow::anyhow!("node key"))?;
    let db = Database::open(&tmp.path().join("cas.redb"), &[7; 32])?;
    let log = Appender::new(Log::open(&tmp.path().join("cas-log"), signer()?)?);
    let cas = Arc::new(Cas::open(db, log)?);
    let appraiser = SignedBindings(node.public_key().as_ref().to_vec());
    let pk = STANDARD.encode(owner.public_key().as_ref());
    let rule = Rule {
        keys: vec![pk.clone()],
        require: None,
    };
    let provision = Signature {
        key: pk.clone(),
        signature: STANDARD.encode(
            owner
                .sign(&policy::payload(
                    Action::Provision,
                    "-",
                    &policy::rule_hash(&rule)?,
                ))
                .as_ref(),
        ),
    };
    cas.provision(rule, &[provision], 0)?;
    let sign = |doc: &str| -> Result<Signature> {
        let s = veil_cas::Session::parse(doc.as_bytes())?;
        let h = s.hash()?;
        Ok(Signature {
            key: pk.clone(),
            signature: STANDARD.encode(
                owner
                    .sign(&policy::payload(Action::Create, &s.name, &h.0))
                    .as_ref(),
            ),
        })
    };
    let doc = format!(
        r#"
name: acme
version: "1"
services:
  - name: api
    attestation: [{{image_digests: ["{IMAGE}"], namespace: payments, service_account: api}}]
    environment: {{DB_PASSWORD: "$$secret:db_password$$"}}
    files: {{/run/secrets/token: "$$secret:token$$"}}
secrets:
  - {{name: db_password, kind: ascii, size: 24}}
  - {{name: token, kind: binary, size: 32}}
access_policy:
  read: {{keys: ["{pk}"]}}
  update: {{keys: ["{pk}"]}}
"#
    );
    cas.put(doc.as_bytes(), false, &[sign(&doc)?], 0)?;
    let identity = Identity {
        node: "worker-0".into(),
        namespace: "payments".into(),
        service_account: "api".into(),
        pod: "api-0".into(),
        pod_uid: "uid".into(),
        container: "api".into(),
        image_digests: vec![IMAGE.into()],
        command: vec!["/bin/api".into()],
    };
    let release = || -> Result<()> {
        let now = 1;
        let mut e = Evidence {
            session: "acme".into(),
            service: "api".into(),
            identity: identity.clone(),
            nonce: hex::encode(cas.nonce(now)?),
            quote: String::new(),
        };
        e.quote = STANDARD.encode(node.sign(&e.binding()?).as_ref());
        let r = cas.release(&e, &appraiser, now).context("release")?;
        std::hint::black_box(r);
        Ok(())
    };
    let one = super::rate(secs, release)?;
    let ours = concurrent(32, secs, release)?;
    super::line(
        "secret releases, audited (32 threads)",
        ours,
        Some(("one thread", one)),
        "goal >= 5000/s",
    );
    kbs(
        cas,
        node.public_key().as_ref().to_vec(),
        identity,
        secs,
        ours,
    )
}

/// A node's agent for the KBS client: signs the binding with the node's key.
struct Agent {
    node: Ed25519KeyPair,
    identity: Identity,
}

impl veil_kbs_client::EvidenceProvider for Agent {
    fn tee(&self) -> String {
        "tpm".into()
    }
    fn evidence(&self, report_data: &[u8]) -> Result<serde_json::Value, String> {
        let binding =
            veil_cas::workload::binding("acme", "api", &self.identity, &hex::encode(report_data))
                .map_err(|e| e.to_string())?;
        serde_json::to_value(veil_cas::kbs::WorkloadEvidence {
            session: "acme".into(),
            service: "api".into(),
            identity: self.identity.clone(),
            quote: STANDARD.encode(self.node.sign(&binding).as_ref()),
        })
        .map_err(|e| e.to_string())
    }
}

type KbsClient = veil_kbs_client::Client<Agent>;

thread_local! {
    static CLIENT: std::cell::RefCell<Option<KbsClient>> = const { std::cell::RefCell::new(None) };
}

fn kbs(cas: Arc<Cas>, node_key: Vec<u8>, identity: Identity, secs: f64, direct: f64) -> Result<()> {
    let kbs = Arc::new(veil_cas::kbs::Kbs::new(
        cas,
        Arc::new(SignedBindings(node_key)),
    )?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let url = format!("http://{}", listener.local_addr()?);
    rt.spawn(async move {
        let _ = axum::serve(listener, veil_cas::kbs::http::router(kbs)).await;
    });
    let client = || -> Result<KbsClient> {
        let node = Ed25519KeyPair::from_seed_unchecked(&[3; 32])
            .map_err(|_| anyhow::anyhow!("node key"))?;
        Ok(veil_kbs_client::Client::new(
            &url,
            Agent {
                node,
                identity: identity.clone(),
            },
        )?)
    };
    let fetch = |c: &mut KbsClient| -> Result<()> {
        let v = c.resource("acme", "api", "db_password")?;
        anyhow::ensure!(v.len() == 24, "a password of {} bytes", v.len());
        Ok(())
    };
    let established = concurrent(32, secs, || {
        CLIENT.with(|cell| -> Result<()> {
            let mut slot = cell.borrow_mut();
            if slot.is_none() {
                *slot = Some(client()?);
            }
            let c = slot.as_mut().ok_or_else(|| anyhow::anyhow!("no client"))?;
            fetch(c)
        })
    })?;
    super::line(
        "KBS resources, attested (32 threads)",
        established,
        Some(("release in process", direct)),
        "goal >= 5000/s",
    );
    let whole = concurrent(32, secs, || fetch(&mut client()?))?;
    super::line(
        "KBS auth+attest+resource (32 thr.)",
        whole,
        Some(("resources, attested", established)),
        "",
    );
    Ok(())
}
