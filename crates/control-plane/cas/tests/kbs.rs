//! The CAS's KBS endpoint (Confidential Containers' key-broker protocol 0.4.0) over real HTTP,
//! driven by `veil-kbs-client`, a client written from the protocol's documents with its own
//! cryptography (RustCrypto where the server uses aws-lc-rs).
//!
//! The node's quote is stood in for by an Ed25519 signature of the workload binding by the
//! node's key, as in `service.rs`: the TPM appraisal is the control plane's and is tested with
//! real TPMs there; what is tested here is the protocol, the binding of the report data
//! (challenge and key) into the evidence, the release rules and the audit.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::cell::RefCell;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use veil_cas::database::Database;
use veil_cas::kbs::{Kbs, WorkloadEvidence};
use veil_cas::policy::Action;
use veil_cas::service::{AuditEvent, Cas};
use veil_cas::workload::{self, Identity};
use veil_kbs_client::{Client, Error, EvidenceProvider};
use veil_tlog::group::Appender;
use veil_tlog::log::Log;
use veil_tlog::note::NoteSigner;

mod common;
use common::{Key, SignedBindings, entries};

const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER_IMAGE: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";
const PASSWORD: &str = "correct-horse-battery-staple";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A node's agent: it knows the workload's identity and quotes (signs) the binding.
struct Agent {
    node: Key,
    identity: Identity,
    session: String,
    service: String,
    /// The last evidence made, for replays.
    made: RefCell<Option<Value>>,
    /// Evidence to give instead of making it (a replay).
    replay: Option<Value>,
}

impl Agent {
    fn new(node: Key, image: &str, service_account: &str) -> Self {
        Self {
            node,
            identity: Identity {
                node: "worker-0".into(),
                namespace: "payments".into(),
                service_account: service_account.into(),
                pod: "api-7d9f".into(),
                pod_uid: "0b6c1a52-1d55-4f0e-9d2f-2a3c7a1e9b10".into(),
                container: "api".into(),
                image_digests: vec![image.into()],
                command: vec!["/bin/api".into()],
            },
            session: "acme/payments".into(),
            service: "api".into(),
            made: RefCell::new(None),
            replay: None,
        }
    }
}

impl EvidenceProvider for Agent {
    fn tee(&self) -> String {
        "tpm".into()
    }
    fn evidence(&self, report_data: &[u8]) -> Result<Value, String> {
        if let Some(r) = &self.replay {
            return Ok(r.clone());
        }
        let binding = workload::binding(
            &self.session,
            &self.service,
            &self.identity,
            &hex::encode(report_data),
        )
        .map_err(|e| e.to_string())?;
        let e = serde_json::to_value(WorkloadEvidence {
            session: self.session.clone(),
            service: self.service.clone(),
            identity: self.identity.clone(),
            quote: STANDARD.encode(self.node.0.sign(&binding).as_ref()),
        })
        .unwrap();
        *self.made.borrow_mut() = Some(e.clone());
        Ok(e)
    }
}

struct World {
    owner: Key,
    cas: Arc<Cas>,
    url: String,
    _rt: tokio::runtime::Runtime,
}

fn document(service_account: &str, predecessor: Option<&str>, owner: &Key) -> String {
    let pk = owner.public();
    let pred = predecessor
        .map(|p| format!("predecessor: \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
name: acme/payments
version: "1"
{pred}services:
  - name: api
    attestation:
      - image_digests: ["{IMAGE}"]
        namespace: payments
        service_account: {service_account}
    environment:
      DB_PASSWORD: "$$secret:db_password$$"
    files:
      /run/secrets/blob: "$$secret:blob$$"
      /run/secrets/tls.crt: "$$secret:tls.crt$$"
      /run/secrets/tls.key: "$$secret:tls.key$$"
  - name: batch
    attestation:
      - namespace: payments
        service_account: batch
    environment:
      KEY: "$$secret:signing$$"
secrets:
  - name: db_password
    kind: ascii
    value: "{PASSWORD}"
  - name: blob
    kind: binary
    size: 48
  - name: signing
    kind: private-key
  - name: ca
    kind: x509-ca
  - name: tls
    kind: x509
    issuer: ca
    dns: [api.payments.svc]
access_policy:
  read: {{keys: ["{pk}"]}}
  update: {{keys: ["{pk}"]}}
"#
    )
}

fn put(w: &World, doc: &str, update: bool) -> String {
    let action = if update {
        Action::Update
    } else {
        Action::Create
    };
    w.cas
        .put(
            doc.as_bytes(),
            update,
            &[w.owner.sign_session(action, doc)],
            now(),
        )
        .unwrap()
        .to_string()
}

fn world(dir: &Path) -> (World, String) {
    let db = Database::open(&dir.join("cas.redb"), &[7; 32]).unwrap();
    let signer = NoteSigner::from_seed("veil.test/cas", &[9; 32]).unwrap();
    let log = Appender::new(Log::open(&dir.join("log"), signer).unwrap());
    let cas = Arc::new(Cas::open(db, log).unwrap());
    let owner = Key::new(1);
    cas.provision(owner.rule(), &[owner.sign_provision()], now())
        .unwrap();
    let top = format!(
        "name: acme\nversion: \"1\"\naccess_policy:\n  read: {{keys: [\"{k}\"]}}\n  update: {{keys: [\"{k}\"]}}\n  create_sessions: {{keys: [\"{k}\"]}}\n",
        k = owner.public()
    );
    let appraiser = Arc::new(SignedBindings::admitted());
    let kbs = Arc::new(Kbs::new(cas.clone(), appraiser).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    rt.spawn(async move {
        axum::serve(listener, veil_cas::kbs::http::router(kbs))
            .await
            .unwrap();
    });
    let w = World {
        owner,
        cas,
        url,
        _rt: rt,
    };
    w.cas
        .put(
            top.as_bytes(),
            false,
            &[w.owner.sign_session(Action::Create, &top)],
            now(),
        )
        .unwrap();
    let hash = put(&w, &document("api", None, &w.owner), false);
    (w, hash)
}

fn last(cas: &Cas, event: &str) -> AuditEvent {
    entries(cas)
        .into_iter()
        .rev()
        .find(|e| e.event == event)
        .unwrap_or_else(|| panic!("no {event} entry"))
}

fn status(e: &Error) -> u16 {
    match e {
        Error::Status { status, .. } => *status,
        other => panic!("expected an HTTP error status, got {other}"),
    }
}

/// A raw request to the server (for what the client would never send).
fn raw(
    w: &World,
    method: &str,
    path: &str,
    body: Option<&Value>,
    cookie: Option<&str>,
) -> (u16, Value) {
    let server = veil_kbs_client::http::Server::parse(&w.url).unwrap();
    let body = body.map(|b| serde_json::to_vec(b).unwrap());
    let a = server
        .request(method, path, body.as_deref(), cookie)
        .unwrap();
    (
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(Value::Null),
    )
}

#[test]
fn a_kbs_client_written_from_the_protocol_fetches_and_decrypts_a_sessions_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = world(dir.path());
    let mut client = Client::new(&w.url, Agent::new(Key::new(3), IMAGE, "api")).unwrap();

    let password = client
        .resource("acme/payments", "api", "db_password")
        .unwrap();
    assert_eq!(password, PASSWORD.as_bytes());
    // SHA-384 (the client listed it; it is the default): 48 bytes of report data.
    assert_eq!(client.last_report_data.len(), 48);
    let token = client.token().unwrap().to_string();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["session"], "acme/payments");
    assert!(claims["exp"].as_u64().unwrap() > now());

    // The same session, further resources without attesting again: a binary secret's bytes
    // and a certificate's parts, each the CAS's own value.
    let blob = client.resource("acme/payments", "api", "blob").unwrap();
    assert_eq!(blob.len(), 48);
    let crt = client.resource("acme/payments", "api", "tls.crt").unwrap();
    assert!(
        String::from_utf8(crt)
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let key = client.resource("acme/payments", "api", "tls.key").unwrap();
    assert!(String::from_utf8(key).unwrap().contains("PRIVATE KEY"));
    assert_eq!(token, client.token().unwrap(), "attested once");

    // Every step is in the audit log: one attestation, four resources, none refused.
    let e = entries(&w.cas);
    let attests: Vec<_> = e.iter().filter(|e| e.event == "cas.kbs.attest").collect();
    assert_eq!(attests.len(), 1);
    assert_eq!(attests[0].outcome, "allowed");
    assert_eq!(attests[0].workload.as_ref().unwrap().service_account, "api");
    let resources: Vec<_> = e.iter().filter(|e| e.event == "cas.kbs.resource").collect();
    assert_eq!(resources.len(), 4);
    assert!(resources.iter().all(|r| r.outcome == "allowed"));
    assert_eq!(resources[1].secrets, vec!["blob".to_string()]);
    assert_eq!(w.cas.counters().releases, 4);

    // The response is bound to the client's key: another key cannot open it, and a byte
    // changed in it is refused.
    let cookie = client.cookie().unwrap().to_string();
    let server = veil_kbs_client::http::Server::parse(&w.url).unwrap();
    let path = "/kbs/v0/resource/acme%2Fpayments/api/db_password";
    let body = server
        .request("GET", path, None, Some(&cookie))
        .unwrap()
        .body;
    assert_eq!(client.open(&body).unwrap(), PASSWORD.as_bytes());
    let stranger = Client::new(&w.url, Agent::new(Key::new(3), IMAGE, "api")).unwrap();
    assert!(
        stranger.open(&body).is_err(),
        "another key opened the response"
    );
    let mut jwe: Value = serde_json::from_slice(&body).unwrap();
    let ct = jwe["ciphertext"].as_str().unwrap().to_string();
    let flipped = if ct.starts_with('A') { "B" } else { "A" };
    jwe["ciphertext"] = json!(format!("{flipped}{}", &ct[1..]));
    assert!(client.open(&serde_json::to_vec(&jwe).unwrap()).is_err());
}

#[test]
fn the_kbs_refuses_other_workloads_replays_and_resources_not_given_each_refusal_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (w, hash) = world(dir.path());

    // Another image: refused at attestation, 403 naming the variant, audited.
    let mut other = Client::new(&w.url, Agent::new(Key::new(3), OTHER_IMAGE, "api")).unwrap();
    let e = other
        .resource("acme/payments", "api", "db_password")
        .unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    assert!(e.to_string().contains("variant 0"), "{e}");
    let entry = last(&w.cas, "cas.kbs.attest");
    assert_eq!(entry.outcome, "refused");
    assert!(
        entry.reason.unwrap().contains("image"),
        "the reason names the image"
    );

    // Another service account: the same.
    let mut other = Client::new(&w.url, Agent::new(Key::new(3), IMAGE, "default")).unwrap();
    let e = other.attest().unwrap_err();
    assert_eq!(status(&e), 403);
    assert!(e.to_string().contains("service account"), "{e}");

    // A node that is not the one admitted (another key, as a modified agent's would be).
    let mut rogue = Client::new(&w.url, Agent::new(Key::new(4), IMAGE, "api")).unwrap();
    let e = rogue.attest().unwrap_err();
    assert_eq!(status(&e), 403);
    assert!(e.to_string().contains("does not verify"), "{e}");

    // Replayed evidence: a genuine workload's evidence, sent to answer another challenge.
    let mut genuine = Client::new(&w.url, Agent::new(Key::new(3), IMAGE, "api")).unwrap();
    genuine.attest().unwrap();
    let recorded = genuine_evidence(&genuine);
    let mut replayer = Agent::new(Key::new(4), IMAGE, "api");
    replayer.replay = Some(recorded);
    let mut replay = Client::new(&w.url, replayer).unwrap();
    let e = replay.attest().unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    assert!(e.to_string().contains("does not verify"), "{e}");
    assert_eq!(last(&w.cas, "cas.kbs.attest").outcome, "refused");

    // The genuine session: a secret its service is not given, and another service's secret.
    let e = genuine
        .resource("acme/payments", "api", "signing")
        .unwrap_err();
    assert_eq!(status(&e), 403);
    assert!(e.to_string().contains("is given no secret signing"), "{e}");
    let e = genuine
        .resource("acme/payments", "batch", "signing")
        .unwrap_err();
    assert_eq!(status(&e), 403);
    assert!(e.to_string().contains("attested for service api"), "{e}");
    let refused = last(&w.cas, "cas.kbs.resource");
    assert_eq!(refused.outcome, "refused");
    assert!(refused.reason.unwrap().contains("attested for service api"));

    // The owner changes the session: the workload no longer matches, and the session it
    // attested is refused its next resource (admission is checked again at each one).
    assert_eq!(
        genuine
            .resource("acme/payments", "api", "db_password")
            .unwrap(),
        PASSWORD.as_bytes()
    );
    put(&w, &document("api-v2", Some(&hash), &w.owner), true);
    let e = genuine
        .resource("acme/payments", "api", "db_password")
        .unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
    assert!(e.to_string().contains("service account"), "{e}");

    // Each refusal above is an entry with its reason.
    let refusals: Vec<_> = entries(&w.cas)
        .into_iter()
        .filter(|e| e.event.starts_with("cas.kbs.") && e.outcome == "refused")
        .collect();
    assert_eq!(refusals.len(), 7, "{refusals:#?}");
    assert!(refusals.iter().all(|r| r.reason.is_some()));
}

/// The last evidence the client's agent made.
fn genuine_evidence(c: &Client<Agent>) -> Value {
    c.provider().made.borrow().clone().unwrap()
}

#[test]
fn the_kbs_answers_malformed_and_unauthenticated_requests_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (w, _) = world(dir.path());
    let auth = |v: Value| raw(&w, "POST", "/kbs/v0/auth", Some(&v), None);

    let (s, b) = auth(json!({"version": "0.1.0", "tee": "tpm", "extra-params": ""}));
    assert_eq!(s, 400);
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("expected 0.4.0, found 0.1.0")
    );
    let (s, b) = auth(json!({"version": "0.4.0", "tee": "snp", "extra-params": ""}));
    assert_eq!(s, 400);
    assert!(b["detail"].as_str().unwrap().contains("found snp"));
    let (s, b) = auth(
        json!({"version": "0.4.0", "tee": "tpm", "extra-params": {"supported-hash-algorithms": ["sm3"]}}),
    );
    assert_eq!(s, 400, "{b}");
    // Without a list the challenge selects SHA-384, the protocol's default.
    let (s, b) = auth(json!({"version": "0.4.0", "tee": "tpm", "extra-params": ""}));
    assert_eq!(s, 200);
    assert_eq!(b["extra-params"]["selected-hash-algorithm"], "sha384");
    assert_eq!(
        STANDARD.decode(b["nonce"].as_str().unwrap()).unwrap().len(),
        32
    );

    // No cookie, a cookie nobody was given, a challenged but unattested session: 401.
    let (s, _) = raw(
        &w,
        "GET",
        "/kbs/v0/resource/acme%2Fpayments/api/db_password",
        None,
        None,
    );
    assert_eq!(s, 401);
    let (s, _) = raw(
        &w,
        "GET",
        "/kbs/v0/resource/acme%2Fpayments/api/db_password",
        None,
        Some("0123"),
    );
    assert_eq!(s, 401);
    let server = veil_kbs_client::http::Server::parse(&w.url).unwrap();
    let a = server
        .request(
            "POST",
            "/kbs/v0/auth",
            Some(br#"{"version":"0.4.0","tee":"tpm","extra-params":""}"#),
            None,
        )
        .unwrap();
    let cookie = a.cookie("kbs-session-id").unwrap();
    let (s, _) = raw(
        &w,
        "GET",
        "/kbs/v0/resource/acme%2Fpayments/api/db_password",
        None,
        Some(&cookie),
    );
    assert_eq!(s, 401);

    // An attestation that is not JSON, or answers with another nonce: refused, and the
    // challenge is spent (a second answer finds no session).
    let a = server
        .request(
            "POST",
            "/kbs/v0/auth",
            Some(br#"{"version":"0.4.0","tee":"tpm"}"#),
            None,
        )
        .unwrap();
    let cookie = a.cookie("kbs-session-id").unwrap();
    let (s, b) = raw(
        &w,
        "POST",
        "/kbs/v0/attest",
        Some(
            &json!({"runtime-data": {"nonce": "AAAA", "tee-pubkey": {}}, "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""}}),
        ),
        Some(&cookie),
    );
    assert_eq!(s, 403, "{b}");
    assert!(
        b["detail"]
            .as_str()
            .unwrap()
            .contains("not this session's challenge")
    );
    let (s, _) = raw(
        &w,
        "POST",
        "/kbs/v0/attest",
        Some(&json!({})),
        Some(&cookie),
    );
    assert_eq!(s, 401);
    let refused = last(&w.cas, "cas.kbs.attest");
    assert!(
        refused
            .reason
            .unwrap()
            .contains("not this session's challenge")
    );

    // A key that is not an EC P-256/384/521 key for ECDH-ES+A256KW, or a point off the curve.
    for (key, why) in [
        (
            json!({"kty": "RSA", "alg": "RSA1_5", "n": "AQAB", "e": "AQAB"}),
            "kty expected EC",
        ),
        (
            json!({"kty": "EC", "alg": "ECDH-ES+A256KW", "crv": "P-256", "x": "AAAA", "y": "AAAA"}),
            "x of 3 bytes",
        ),
        (
            json!({"kty": "EC", "alg": "ECDH-ES+A256KW", "crv": "P-256",
                   "x": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([1u8; 32]),
                   "y": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([2u8; 32])}),
            "not on P-256",
        ),
    ] {
        let a = server
            .request(
                "POST",
                "/kbs/v0/auth",
                Some(br#"{"version":"0.4.0","tee":"tpm"}"#),
                None,
            )
            .unwrap();
        let cookie = a.cookie("kbs-session-id").unwrap();
        let nonce: Value = serde_json::from_slice(&a.body).unwrap();
        let body = json!({
            "runtime-data": {"nonce": nonce["nonce"], "tee-pubkey": key},
            "tee-evidence": {"primary_evidence": {}, "additional_evidence": ""},
        });
        let (s, b) = raw(&w, "POST", "/kbs/v0/attest", Some(&body), Some(&cookie));
        assert_eq!(s, 400, "{b}");
        assert!(
            b["detail"].as_str().unwrap().contains(why),
            "{b} lacks {why}"
        );
    }
    // An attested session asking for another session's secret: 403.
    let mut client = Client::new(&w.url, Agent::new(Key::new(3), IMAGE, "api")).unwrap();
    client.attest().unwrap();
    let e = client
        .resource("acme/payments", "api", "db_password")
        .unwrap();
    assert_eq!(e, PASSWORD.as_bytes());
    let e = client
        .resource("acme/other", "api", "db_password")
        .unwrap_err();
    assert_eq!(status(&e), 403, "{e}");
}
