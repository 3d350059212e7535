//! The CAS on a control plane, with nodes on software TPMs: a joined worker's agent gets a
//! workload's configuration with evidence its TPM quoted over the binding; the same request
//! with another service account, replayed, relayed for another node's quote, or from a node
//! whose agent was modified gets nothing, each refusal in the CAS's audit log (or, for the
//! modified node, refused at its connection and in the cluster's report). The owner fetches
//! the log and verifies it offline with the key it derives from the master secret.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::sync::Arc;

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::*;
use veil_atls::Attester;
use veil_cas::policy::{self, Action, Rule};
use veil_cas::service::AuditEvent;
use veil_cas::workload::{Evidence, Identity};
use veil_client::{ClientError, Session};
use veil_keys::KeyId;
use veil_node_attest::Membership;
use veil_swtpm::LocalCa;
use veil_wire::proto::{CasAnswer, CasCall, CasSignature};

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

struct CasOwner(Ed25519KeyPair);

impl CasOwner {
    fn public(&self) -> String {
        STANDARD.encode(self.0.public_key().as_ref())
    }
    fn sign(&self, action: Action, name: &str, hash: &[u8; 32]) -> CasSignature {
        CasSignature {
            key: self.public(),
            signature: STANDARD.encode(self.0.sign(&policy::payload(action, name, hash)).as_ref()),
        }
    }
}

fn session_doc(owner: &CasOwner) -> String {
    let k = owner.public();
    format!(
        r#"
name: acme
version: "1"
services:
  - name: api
    attestation:
      - image_digests: ["{IMAGE}"]
        namespace: payments
        service_account: api
        reference_sets: [release-1]
    files:
      /run/secrets/db: "$$secret:db$$"
secrets:
  - name: db
    kind: ascii
    size: 20
access_policy:
  read: {{keys: ["{k}"]}}
  update: {{keys: ["{k}"]}}
"#
    )
}

fn identity(node: &str, service_account: &str) -> Identity {
    Identity {
        node: node.into(),
        namespace: "payments".into(),
        service_account: service_account.into(),
        pod: "api-0".into(),
        pod_uid: "6f1c7e0a-0000-4000-8000-000000000001".into(),
        container: "api".into(),
        image_digests: vec![IMAGE.into()],
        command: vec!["/bin/api".into()],
    }
}

async fn nonce<IO>(s: &mut Session<IO>) -> String
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match s.cas(CasCall::Nonce).await.unwrap() {
        CasAnswer::Nonce { nonce } => nonce,
        a => panic!("{a:?}"),
    }
}

/// Evidence for `id`, quoted by `quoter`'s TPM.
fn evidence(quoter: &dyn Attester, id: Identity, nonce: String) -> String {
    let mut e = Evidence {
        session: "acme".into(),
        service: "api".into(),
        identity: id,
        nonce,
        quote: String::new(),
    };
    e.quote = STANDARD.encode(quoter.attest(&e.binding().unwrap()).unwrap());
    serde_json::to_string(&e).unwrap()
}

async fn release(
    s: &mut Session<tokio::net::TcpStream>,
    evidence: String,
    cert: Vec<u8>,
) -> Result<CasAnswer, ClientError> {
    s.cas(CasCall::Release {
        node_cert: hex::encode(cert),
        evidence,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attested_workloads_get_their_secrets_and_every_refusal_is_in_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let owner = Owner::new([31; 32], [32; 32]);
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let (ek_roots, ek_intermediates) = roots(&ca);
    let trust = veil_cluster::Trust {
        reference: refs.clone(),
        ek_roots,
        ek_intermediates,
        local_roots: true,
        owner_key: owner.public.clone(),
    };
    let cp = Arc::new(
        veil_cluster::ControlPlane::with_state_file(
            trust,
            cp_node.attester.clone(),
            dir.path().join("state/control-plane.json"),
            false,
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cp.clone().serve(listener));

    // Before the cluster exists, the CAS is not there.
    let fresh = appraiser(&refs, Membership::Fresh);
    let e = session(addr, None, &fresh)
        .await
        .unwrap()
        .cas(CasCall::Nonce)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(r) if r.contains("recover")),
        "{e}"
    );
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap();
    let cp_app = appraiser(&refs, Membership::Member(cid.0.to_vec()));

    // Two workers join; the CAS owner provisions and creates a session.
    let w1 = boot(&dir.path().join("w1"), &ca, &worker_launch, None);
    let w2 = boot(&dir.path().join("w2"), &ca, &worker_launch, None);
    owner
        .approve_at(
            addr,
            &refs,
            &[(&w1.attester, "worker"), (&w2.attester, "worker")],
        )
        .await;
    let join = |w: &Node| {
        let a = w.attester.clone();
        let app = cp_app.clone();
        async move {
            session(addr, Some(a.as_ref()), &app)
                .await
                .unwrap()
                .join(&a, "worker", &node_key())
                .await
                .unwrap()
        }
    };
    let j1 = join(&w1).await;
    let j2 = join(&w2).await;

    let cas_owner = CasOwner(Ed25519KeyPair::from_seed_unchecked(&[5; 32]).unwrap());
    let rule = Rule {
        keys: vec![cas_owner.public()],
        require: None,
    };
    let mut owner_s = session(addr, None, &cp_app).await.unwrap();
    let provision = CasCall::Provision {
        owner: serde_json::to_string(&rule).unwrap(),
        signatures: vec![cas_owner.sign(
            Action::Provision,
            "-",
            &policy::rule_hash(&rule).unwrap(),
        )],
    };
    assert_eq!(owner_s.cas(provision).await.unwrap(), CasAnswer::Done);
    let doc = session_doc(&cas_owner);
    let hash = veil_cas::Session::parse(doc.as_bytes())
        .unwrap()
        .hash()
        .unwrap();
    let stored = owner_s
        .cas(CasCall::Put {
            document: doc.clone(),
            update: false,
            signatures: vec![cas_owner.sign(Action::Create, "acme", &hash.0)],
        })
        .await
        .unwrap();
    assert_eq!(
        stored,
        CasAnswer::Stored {
            hash: hash.to_string()
        }
    );

    // Worker 1's agent asks for its workload, the evidence quoted by its TPM.
    let mut s1 = session(addr, Some(w1.attester.as_ref()), &cp_app)
        .await
        .unwrap();
    let n = nonce(&mut s1).await;
    let good = evidence(w1.attester.as_ref(), identity(&j1.node_id, "api"), n);
    let got = release(&mut s1, good.clone(), j1.node_cert.clone())
        .await
        .unwrap();
    let CasAnswer::Released { release: r } = got else {
        panic!("{got:?}")
    };
    let r: veil_cas::service::Release = serde_json::from_str(r.expose()).unwrap();
    let db = STANDARD.decode(&r.files["/run/secrets/db"]).unwrap();
    assert_eq!(db.len(), 20);

    let refused = |r: Result<CasAnswer, ClientError>, want: &str| match r {
        Err(ClientError::Refused(reason)) => {
            assert!(reason.contains(want), "{reason} (wanted {want:?})")
        }
        other => panic!("wanted a refusal with {want:?}, got {other:?}"),
    };
    // Replayed.
    refused(
        release(&mut s1, good, j1.node_cert.clone()).await,
        "replayed",
    );
    // Another service account.
    let n = nonce(&mut s1).await;
    let sa = evidence(w1.attester.as_ref(), identity(&j1.node_id, "default"), n);
    refused(
        release(&mut s1, sa, j1.node_cert.clone()).await,
        "service account default is not api",
    );
    // Worker 2's quote relayed by worker 1: as worker 2, and as worker 1.
    let n = nonce(&mut s1).await;
    let relayed = evidence(w2.attester.as_ref(), identity(&j2.node_id, "api"), n);
    refused(
        release(&mut s1, relayed, j1.node_cert.clone()).await,
        "sent it",
    );
    let n = nonce(&mut s1).await;
    let relayed = evidence(w2.attester.as_ref(), identity(&j1.node_id, "api"), n);
    refused(
        release(&mut s1, relayed, j1.node_cert.clone()).await,
        "its quote",
    );
    // Evidence altered after quoting.
    let n = nonce(&mut s1).await;
    let mut altered: Evidence = serde_json::from_str(&evidence(
        w1.attester.as_ref(),
        identity(&j1.node_id, "default"),
        n,
    ))
    .unwrap();
    altered.identity.service_account = "api".into();
    refused(
        release(
            &mut s1,
            serde_json::to_string(&altered).unwrap(),
            j1.node_cert.clone(),
        )
        .await,
        "its quote",
    );
    // An unattested caller gets nothing, whatever evidence it holds.
    let mut anon = session(addr, None, &cp_app).await.unwrap();
    let n = nonce(&mut anon).await;
    let ev = evidence(w1.attester.as_ref(), identity(&j1.node_id, "api"), n);
    refused(
        release(&mut anon, ev, j1.node_cert.clone()).await,
        "not attested",
    );

    // Worker 2's agent is modified (its measurement extended after it joined): its
    // connection is refused, and the refusal is in the cluster's report.
    w2.attester
        .with_tpm(|t| t.extend(veil_reference::launch::PCR_AGENT, &[0xee; 20], &[0xee; 32]))
        .unwrap()
        .unwrap();
    let e = session(addr, Some(w2.attester.as_ref()), &cp_app)
        .await
        .err();
    assert!(e.is_some(), "a modified node was served");
    // The server records it once its side of the handshake ends (after the client's).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !cp.refusals().iter().any(|r| r.kind == "evidence") {
        assert!(
            std::time::Instant::now() < deadline,
            "no evidence refusal recorded: {:?}",
            cp.refusals()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The owner fetches the CAS's log and verifies it offline, with the key it derives.
    let got = owner_s.cas(CasCall::Log { start: 0 }).await.unwrap();
    let CasAnswer::Log {
        verifier_key,
        checkpoint,
        start,
        entries,
    } = got
    else {
        panic!("{got:?}")
    };
    assert_eq!(start, 0);
    let entries: Vec<Vec<u8>> = entries
        .iter()
        .map(|e| STANDARD.decode(e).unwrap())
        .collect();
    let copy = dir.path().join("log-copy");
    veil_tlog::log::export_entries(&copy, &entries, &checkpoint).unwrap();
    let cp_id = {
        let c = veil_attest_core::x509::Certificate::from_der(
            &cp_node
                .attester
                .with_tpm(|t| t.ek_certificate())
                .unwrap()
                .unwrap(),
            "EK",
        )
        .unwrap();
        veil_appraisal::endorsement::node_id(&c)
    };
    let seed = owner
        .secrets()
        .derive(&KeyId::node(&cp_id, veil_wire::ids::KEY_CAS_AUDIT_LOG).unwrap())
        .unwrap();
    let cid_hex = cid.to_string();
    let derived = veil_tlog::NoteSigner::from_seed(
        &format!(
            "{}/{}/{cp_id}",
            veil_wire::ids::CAS_LOG_ORIGIN_PREFIX,
            &cid_hex[..16]
        ),
        seed.expose(),
    )
    .unwrap()
    .verifier();
    assert_eq!(derived.to_text(), verifier_key);
    let verified = veil_tlog::verify::verify_export(&copy, &derived).unwrap();
    let events: Vec<AuditEvent> = verified
        .entries
        .iter()
        .map(|e| AuditEvent::parse(e).unwrap())
        .collect();
    let summary: Vec<(String, String)> = events
        .iter()
        .map(|e| (e.event.clone(), e.outcome.clone()))
        .collect();
    let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        summary,
        [
            pair("cas.provision", "allowed"),
            pair("cas.session.create", "allowed"),
            pair("cas.release", "allowed"),
            pair("cas.release", "refused"),
            pair("cas.release", "refused"),
            pair("cas.release", "refused"),
            pair("cas.release", "refused"),
            pair("cas.release", "refused"),
            pair("cas.release", "refused"),
        ]
    );
    let reasons: Vec<String> = events.iter().filter_map(|e| e.reason.clone()).collect();
    for want in [
        "replayed",
        "service account default",
        "sent it",
        "its quote",
        "not attested",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(want)),
            "{want}: {reasons:?}"
        );
    }
    assert_eq!(events[2].secrets, ["db"]);

    // The metrics count them, and the alert rules name only metrics that exist.
    let metrics = cp.metrics_text();
    for want in [
        "veil_cas_open 1",
        "veil_cas_releases_total 1",
        "veil_cas_releases_refused_total 6",
        "veil_cas_sessions_written_total 1",
        "veil_cas_audit_failures_total 0",
        "veil_cas_audit_log_entries 9",
    ] {
        assert!(metrics.lines().any(|l| l == want), "{want}: {metrics}");
    }
    let rules = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../monitoring/alerts/cas.yaml"),
    )
    .unwrap();
    let rules: serde_json::Value = serde_norway::from_str(&rules).unwrap();
    let exprs: Vec<&str> = rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["expr"].as_str().unwrap())
        .collect();
    assert_eq!(exprs.len(), 4);
    for e in exprs {
        for name in e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("veil_"))
        {
            assert!(
                metrics.contains(&format!("# TYPE {name} ")),
                "the rule {e:?} names {name}, which is not exported"
            );
        }
    }
    assert!(events[2].node.as_deref().unwrap().contains("release-1"));
}
