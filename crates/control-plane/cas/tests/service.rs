//! The CAS as a whole: releases to workloads and the refusals (wrong image, wrong service
//! account, a node whose quote does not verify, replayed or altered evidence), each in the
//! audit log with its reason; no lost update; the platform operator locked out; the sealed
//! database, its backups and a restore drill.
//!
//! The node appraiser here checks an Ed25519 signature by a per-node key over the binding: it
//! stands in for the control plane's appraisal of TPM quotes (which needs the cluster's node
//! records), so that what this crate decides — nonces, bindings, matching, secrets, audit —
//! is tested on its own. The CAS on a real cluster appraises real TPM quotes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_cas::CasError;
use veil_cas::database::Database;
use veil_cas::policy::Action;
use veil_cas::service::{AuditEvent, Cas};
use veil_cas::workload::{Evidence, Identity};
use veil_tlog::group::Appender;
use veil_tlog::log::Log;
use veil_tlog::note::NoteSigner;

const NOW: u64 = 1_800_000_000;
const IMAGE: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const OTHER_IMAGE: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

mod common;
use common::{Key, SignedBindings, entries};

/// The cluster's one admitted node: seed 3 (`World::node`).
fn admitted() -> SignedBindings {
    SignedBindings::admitted()
}

trait ReleaseAs {
    fn release_as(&self, e: &Evidence, now: u64) -> Result<veil_cas::service::Release, CasError>;
}

impl ReleaseAs for Cas {
    fn release_as(&self, e: &Evidence, now: u64) -> Result<veil_cas::service::Release, CasError> {
        self.release(e, &admitted(), now)
    }
}

struct World {
    owner: Key,
    operator: Key,
    node: Key,
    modified_node: Key,
    cas: Cas,
}

const ROOT: [u8; 32] = [7; 32];

fn open_cas(dir: &Path) -> Cas {
    std::fs::create_dir_all(dir).unwrap();
    let db = Database::open(&dir.join("cas.redb"), &ROOT).unwrap();
    let signer = NoteSigner::from_seed("veil.test/cas", &[9; 32]).unwrap();
    let log = Appender::new(Log::open(&dir.join("log"), signer).unwrap());
    Cas::open(db, log).unwrap()
}

fn world(dir: &Path) -> World {
    let owner = Key::new(1);
    let node = Key::new(3);
    let cas = open_cas(dir);
    cas.provision(owner.rule(), &[owner.sign_provision()], NOW)
        .unwrap();
    World {
        owner,
        operator: Key::new(2),
        node,
        modified_node: Key::new(4),
        cas,
    }
}

fn document(name: &str, owner: &Key, predecessor: Option<&str>, db_size: u32) -> String {
    let pk = owner.public();
    let pred = predecessor
        .map(|p| format!("predecessor: \"{p}\"\n"))
        .unwrap_or_default();
    format!(
        r#"
name: {name}
version: "1"
{pred}services:
  - name: api
    attestation:
      - image_digests: ["{IMAGE}"]
        namespace: payments
        service_account: api
    environment:
      DB_USER: api
      DB_PASSWORD: "$$secret:db_password$$"
    command: ["/bin/api", "--token=$$secret:token$$"]
    files:
      /run/secrets/db_password: "$$secret:db_password$$"
      /run/secrets/blob: "$$secret:blob$$"
      /run/secrets/tls.crt: "$$secret:tls.crt$$"
      /run/secrets/tls.key: "$$secret:tls.key$$"
      /run/secrets/ca.crt: "$$secret:ca$$"
secrets:
  - name: db_password
    kind: ascii
    size: {db_size}
    export: [acme/reports]
  - name: token
    kind: ascii
    value: "given-token-123"
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
  create_sessions: {{keys: ["{pk}"]}}
"#
    )
}

fn identity(image: &str, service_account: &str) -> Identity {
    Identity {
        node: "worker-0".into(),
        namespace: "payments".into(),
        service_account: service_account.into(),
        pod: "api-7d9f".into(),
        pod_uid: "0b6c1a52-1d55-4f0e-9d2f-2a3c7a1e9b10".into(),
        container: "api".into(),
        image_digests: vec![image.into()],
        command: vec!["/bin/api".into()],
    }
}

/// Evidence as a node's agent makes it: a fresh nonce, the binding signed by `node`.
fn evidence(cas: &Cas, node: &Key, id: Identity) -> Evidence {
    let nonce = hex::encode(cas.nonce(NOW).unwrap());
    let mut e = Evidence {
        session: "acme/payments".into(),
        service: "api".into(),
        identity: id,
        nonce,
        quote: String::new(),
    };
    e.quote = STANDARD.encode(node.0.sign(&e.binding().unwrap()).as_ref());
    e
}

fn create_acme(w: &World) -> String {
    let top = format!(
        "name: acme\nversion: \"1\"\naccess_policy:\n  read: {{keys: [\"{k}\"]}}\n  update: {{keys: [\"{k}\"]}}\n  create_sessions: {{keys: [\"{k}\"]}}\n",
        k = w.owner.public()
    );
    put(&w.cas, &w.owner, &top, false).unwrap();
    let doc = document("acme/payments", &w.owner, None, 24);
    put(&w.cas, &w.owner, &doc, false).unwrap().to_string()
}

/// Creates (or updates) `doc` signed by `by`.
fn put(cas: &Cas, by: &Key, doc: &str, update: bool) -> Result<String, CasError> {
    let action = if update {
        Action::Update
    } else {
        Action::Create
    };
    cas.put(doc.as_bytes(), update, &[by.sign_session(action, doc)], NOW)
        .map(|h| h.to_string())
}

fn file(r: &veil_cas::service::Release, path: &str) -> Vec<u8> {
    STANDARD.decode(&r.files[path]).unwrap()
}

#[test]
fn the_right_workload_gets_its_secrets_and_every_other_gets_nothing_each_refusal_audited() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    create_acme(&w);

    let e = evidence(&w.cas, &w.node, identity(IMAGE, "api"));
    let r = w.cas.release_as(&e, NOW).unwrap();
    let password = String::from_utf8(file(&r, "/run/secrets/db_password")).unwrap();
    assert_eq!(password.len(), 24);
    assert!(password.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(r.environment["DB_PASSWORD"], password);
    assert_eq!(r.environment["DB_USER"], "api");
    assert_eq!(r.command, ["/bin/api", "--token=given-token-123"]);
    assert_eq!(
        file(&r, "/run/secrets/blob").len(),
        48,
        "raw bytes of a binary secret"
    );
    // The certificate is issued by the session's CA, for its DNS name, and its key is a key.
    let (_, ca) = x509_parser::pem::parse_x509_pem(&file(&r, "/run/secrets/ca.crt")).unwrap();
    let ca = ca.parse_x509().unwrap();
    let (_, tls) = x509_parser::pem::parse_x509_pem(&file(&r, "/run/secrets/tls.crt")).unwrap();
    let tls = tls.parse_x509().unwrap();
    assert_eq!(tls.issuer(), ca.subject());
    tls.verify_signature(Some(ca.public_key())).unwrap();
    assert!(ca.is_ca() && !tls.is_ca());
    let san = tls.subject_alternative_name().unwrap().unwrap();
    assert!(format!("{:?}", san.value).contains("api.payments.svc"));
    let key = String::from_utf8(file(&r, "/run/secrets/tls.key")).unwrap();
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
    // A second release gives the same values.
    let again = w
        .cas
        .release_as(&evidence(&w.cas, &w.node, identity(IMAGE, "api")), NOW)
        .unwrap();
    assert_eq!(again, r);

    // Every refusal names its reason, and is in the log.
    let refused = |e: Evidence, want: &str| {
        let err = w.cas.release_as(&e, NOW).unwrap_err();
        assert!(err.to_string().contains(want), "{err} (wanted {want:?})");
        let last = entries(&w.cas).pop().unwrap();
        assert_eq!(last.event, "cas.release");
        assert_eq!(last.outcome, "refused");
        assert!(last.reason.unwrap().contains(want));
        assert!(last.secrets.is_empty());
    };
    refused(
        evidence(&w.cas, &w.node, identity(OTHER_IMAGE, "api")),
        &format!("image {OTHER_IMAGE} is not allowed"),
    );
    refused(
        evidence(&w.cas, &w.node, identity(IMAGE, "default")),
        "service account default is not api",
    );
    refused(
        evidence(&w.cas, &w.modified_node, identity(IMAGE, "api")),
        "the quote does not verify",
    );
    // Replayed: the same evidence again.
    refused(e.clone(), "used already (replayed evidence)");
    // Altered after quoting: the identity no longer matches the binding the node signed.
    let mut altered = evidence(&w.cas, &w.node, identity(OTHER_IMAGE, "api"));
    altered.identity.image_digests = vec![IMAGE.into()];
    refused(altered, "the quote does not verify");
    // A nonce this CAS never issued.
    let mut forged = evidence(&w.cas, &w.node, identity(IMAGE, "api"));
    forged.nonce = hex::encode([5u8; 32]);
    forged.quote = STANDARD.encode(w.node.0.sign(&forged.binding().unwrap()).as_ref());
    refused(forged, "not issued by this CAS");
    // An expired nonce.
    let old = evidence(&w.cas, &w.node, identity(IMAGE, "api"));
    let err = w.cas.release_as(&old, NOW + 61).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");

    let log = entries(&w.cas);
    let released: Vec<&AuditEvent> = log
        .iter()
        .filter(|e| e.event == "cas.release" && e.outcome == "allowed")
        .collect();
    assert_eq!(released.len(), 2);
    assert_eq!(
        released[0].secrets,
        ["blob", "ca", "db_password", "tls", "token"]
    );
    assert_eq!(released[0].workload.as_ref().unwrap().pod, "api-7d9f");
    // Values never reach the log.
    let raw: Vec<u8> = w
        .cas
        .log()
        .with_log(|l| (0..l.size()).flat_map(|i| l.entry(i).unwrap()).collect());
    assert!(
        !raw.windows(password.len())
            .any(|x| x == password.as_bytes())
    );
}

#[test]
fn an_update_needs_the_right_predecessor_and_of_two_concurrent_updates_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let w = Arc::new(world(dir.path()));
    let first = create_acme(&w);

    let no_pred = document("acme/payments", &w.owner, None, 24);
    let err = put(&w.cas, &w.owner, &no_pred, true).unwrap_err();
    assert!(matches!(err, CasError::Predecessor(_)), "{err}");
    let wrong = document("acme/payments", &w.owner, Some(&"ab".repeat(32)), 24);
    let err = put(&w.cas, &w.owner, &wrong, true).unwrap_err();
    assert!(
        err.to_string().contains("another update came first"),
        "{err}"
    );

    // Two updates of the same predecessor, at once.
    let racers: Vec<_> = [30u32, 40]
        .into_iter()
        .map(|size| {
            let w = w.clone();
            let first = first.clone();
            std::thread::spawn(move || {
                let doc = document("acme/payments", &w.owner, Some(&first), size);
                put(&w.cas, &w.owner, &doc, true)
            })
        })
        .collect();
    let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(
        results.iter().filter(|r| r.is_ok()).count(),
        1,
        "{results:?}"
    );
    let loser = results.iter().find_map(|r| r.as_ref().err()).unwrap();
    assert!(matches!(loser, CasError::Predecessor(_)), "{loser}");
    let updates: Vec<AuditEvent> = entries(&w.cas)
        .into_iter()
        .filter(|e| e.event == "cas.session.update")
        .collect();
    let outcomes: Vec<&str> = updates.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes[..2], ["refused", "refused"]);
    assert_eq!(updates.iter().filter(|e| e.outcome == "allowed").count(), 1);
    assert_eq!(updates.len(), 4);
}

#[test]
fn the_platform_operator_can_neither_read_nor_change_the_owners_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let hash = create_acme(&w);
    let op = &w.operator;

    let err = w
        .cas
        .provision(op.rule(), &[op.sign_provision()], NOW)
        .unwrap_err();
    assert!(err.to_string().contains("provisioned already"), "{err}");
    let mine = document("operator", op, None, 24).replace("acme/reports", "operator");
    let err = put(&w.cas, op, &mine, false).unwrap_err();
    assert!(matches!(err, CasError::Unauthorised(_)), "{err}");
    let update = document("acme/payments", op, Some(&hash), 24);
    let err = put(&w.cas, op, &update, true).unwrap_err();
    assert!(matches!(err, CasError::Unauthorised(_)), "{err}");
    let below = document("acme/payments/evil", op, None, 24);
    let err = put(&w.cas, op, &below, false).unwrap_err();
    assert!(matches!(err, CasError::Unauthorised(_)), "{err}");
    let challenge = w.cas.nonce(NOW).unwrap();
    let err = w
        .cas
        .read(
            "acme/payments",
            &challenge,
            &[op.sign(Action::Read, "acme/payments", &challenge)],
            NOW,
        )
        .unwrap_err();
    assert!(matches!(err, CasError::Unauthorised(_)), "{err}");
    // The owner's signature over one challenge does not serve for another read.
    let challenge = w.cas.nonce(NOW).unwrap();
    let sig = w.owner.sign(Action::Read, "acme/payments", &challenge);
    let read = w
        .cas
        .read("acme/payments", &challenge, std::slice::from_ref(&sig), NOW)
        .unwrap();
    assert_eq!(read.name, "acme/payments");
    let err = w
        .cas
        .read("acme/payments", &challenge, &[sig], NOW)
        .unwrap_err();
    assert!(err.to_string().contains("challenge"), "{err}");
    // A backup restored by the operator is refused.
    let backup = w.cas.backup(NOW).unwrap();
    let digest = sha256(&backup);
    let err = w
        .cas
        .restore(&backup, &[op.sign(Action::Restore, "-", &digest)], NOW)
        .unwrap_err();
    assert!(matches!(err, CasError::Unauthorised(_)), "{err}");
    let refused = entries(&w.cas)
        .iter()
        .filter(|e| e.outcome == "refused")
        .count();
    assert_eq!(refused, 7, "each refusal is audited");
}

fn sha256(b: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(b).into()
}

#[test]
fn secrets_are_kept_sealed_across_reopening_and_updates_and_a_backup_restores_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    let hash = create_acme(&w);
    let World {
        owner, node, cas, ..
    } = w;
    let release = |cas: &Cas| {
        cas.release_as(&evidence(cas, &node, identity(IMAGE, "api")), NOW)
            .unwrap()
    };
    let before = release(&cas);
    let password = before.environment["DB_PASSWORD"].clone();

    // Sealed: neither a secret nor a session's name is in the database file.
    let bytes = std::fs::read(dir.path().join("cas.redb")).unwrap();
    for needle in [password.as_bytes(), b"acme/payments", b"given-token-123"] {
        assert!(!bytes.windows(needle.len()).any(|x| x == needle));
    }

    // Reopened: the same values.
    drop(cas);
    let cas = open_cas(dir.path());
    assert_eq!(release(&cas), before);

    // An update that keeps a secret's definition keeps its value; a changed one is new.
    let same = document("acme/payments", &owner, Some(&hash), 24)
        .replace("version: \"1\"", "version: \"2\"");
    let h2 = put(&cas, &owner, &same, true).unwrap();
    assert_eq!(release(&cas), before);
    let longer = document("acme/payments", &owner, Some(&h2.to_string()), 40);
    put(&cas, &owner, &longer, true).unwrap();
    let after = release(&cas);
    assert_eq!(after.environment["DB_PASSWORD"].len(), 40);
    assert_eq!(
        after.files["/run/secrets/ca.crt"],
        before.files["/run/secrets/ca.crt"]
    );

    // Backup, wipe, restore: the same sessions and secrets.
    let backup = cas.backup(NOW).unwrap();
    assert!(
        !backup
            .windows(password.len())
            .any(|x| x == password.as_bytes())
    );
    drop(cas);
    std::fs::remove_file(dir.path().join("cas.redb")).unwrap();
    let wiped = open_cas(dir.path());
    let e = evidence(&wiped, &node, identity(IMAGE, "api"));
    assert!(matches!(
        wiped.release_as(&e, NOW),
        Err(CasError::NotFound(_))
    ));
    let mut altered = backup.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    let err = wiped
        .restore(
            &altered,
            &[owner.sign(Action::Restore, "-", &sha256(&altered))],
            NOW,
        )
        .unwrap_err();
    assert!(err.to_string().contains("does not authenticate"), "{err}");
    wiped
        .restore(
            &backup,
            &[owner.sign(Action::Restore, "-", &sha256(&backup))],
            NOW,
        )
        .unwrap();
    assert_eq!(release(&wiped), after);
    drop(wiped);
    assert_eq!(
        release(&open_cas(dir.path())),
        after,
        "the restore is durable"
    );

    // A database opened with another root key refuses its records.
    let err = Database::open(&dir.path().join("cas.redb"), &[8; 32])
        .unwrap()
        .load()
        .unwrap_err();
    assert!(err.to_string().contains("does not authenticate"), "{err}");
}

#[test]
fn a_secret_is_imported_only_from_a_session_that_exports_it_to_the_importer() {
    let dir = tempfile::tempdir().unwrap();
    let w = world(dir.path());
    create_acme(&w);
    let k = w.owner.public();
    let importer = |name: &str| {
        format!(
            r#"
name: {name}
version: "1"
services:
  - name: report
    attestation: [{{image_digests: ["{IMAGE}"]}}]
    files: {{/run/db: "$$secret:db$$"}}
secrets:
  - name: db
    kind: ascii
    import: {{session: acme/payments, secret: db_password}}
access_policy:
  read: {{keys: ["{k}"]}}
  update: {{keys: ["{k}"]}}
"#
        )
    };
    let get = |name: &str| {
        let doc = importer(name);
        put(&w.cas, &w.owner, &doc, false).unwrap();
        let mut e = evidence(&w.cas, &w.node, identity(IMAGE, "api"));
        e.session = name.into();
        e.service = "report".into();
        e.quote = STANDARD.encode(w.node.0.sign(&e.binding().unwrap()).as_ref());
        w.cas.release_as(&e, NOW)
    };
    let payments = w
        .cas
        .release_as(&evidence(&w.cas, &w.node, identity(IMAGE, "api")), NOW)
        .unwrap();
    let r = get("acme/reports").unwrap();
    assert_eq!(
        file(&r, "/run/db"),
        payments.environment["DB_PASSWORD"].as_bytes()
    );
    let err = get("acme/other").unwrap_err();
    assert!(
        err.to_string()
            .contains("does not export its secret db_password to acme/other"),
        "{err}"
    );
}

#[test]
fn only_the_holder_of_the_owners_keys_provisions_the_cas() {
    let dir = tempfile::tempdir().unwrap();
    let cas = open_cas(dir.path());
    let (owner, op) = (Key::new(1), Key::new(2));
    // The operator names the owner's key but cannot sign for it.
    let err = cas
        .provision(owner.rule(), &[op.sign_provision()], NOW)
        .unwrap_err();
    assert!(matches!(err, CasError::Unauthorised(_)), "{err}");
    // A signature over another rule does not serve either.
    let err = cas
        .provision(op.rule(), &[owner.sign_provision()], NOW)
        .unwrap_err();
    assert!(matches!(err, CasError::Unauthorised(_)), "{err}");
    cas.provision(owner.rule(), &[owner.sign_provision()], NOW)
        .unwrap();
    let log = entries(&cas);
    let outcomes: Vec<&str> = log.iter().map(|e| e.outcome.as_str()).collect();
    assert_eq!(outcomes, ["refused", "refused", "allowed"]);
    assert_eq!(log[2].signers, [owner.public()]);
}

#[test]
fn snapshots_go_to_s3_with_retention_and_a_wiped_cas_is_restored_from_the_latest() {
    let bin = veil_s3_proxy::harness::find_s3s_fs().expect("s3s-fs (scripts/setup.sh installs it)");
    let dir = tempfile::tempdir().unwrap();
    let backend = veil_s3_proxy::harness::Backend::start(&bin, &dir.path().join("s3")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client =
        veil_s3_proxy::client::S3Client::new(backend.addr.to_string(), backend.credentials.clone());
    rt.block_on(client.create_bucket("backups")).unwrap();
    let snaps = veil_s3_proxy::snapshots::Snapshots {
        client,
        bucket: "backups".into(),
        prefix: "cas/cluster-1/cp-0/".into(),
        keep: 2,
    };
    let w = world(&dir.path().join("cas"));
    let hash = create_acme(&w);
    let before = w
        .cas
        .release_as(&evidence(&w.cas, &w.node, identity(IMAGE, "api")), NOW)
        .unwrap();
    // Three snapshots, the last after an update: two are kept.
    for t in 0..2 {
        rt.block_on(snaps.take(w.cas.backup(NOW + t).unwrap(), NOW + t))
            .unwrap();
    }
    let v2 = document("acme/payments", &w.owner, Some(&hash), 24)
        .replace("version: \"1\"", "version: \"2\"");
    put(&w.cas, &w.owner, &v2, true).unwrap();
    let (key, deleted) = rt
        .block_on(snaps.take(w.cas.backup(NOW + 2).unwrap(), NOW + 2))
        .unwrap();
    assert_eq!(deleted, [format!("cas/cluster-1/cp-0/{:020}.snap", NOW)]);
    assert_eq!(rt.block_on(snaps.list()).unwrap().len(), 2);
    // The bucket holds no secret and no session name.
    let password = before.environment["DB_PASSWORD"].clone();
    for f in walk(&backend.dir) {
        let bytes = std::fs::read(&f).unwrap();
        for needle in [password.as_bytes(), b"acme/payments".as_slice()] {
            assert!(
                !bytes.windows(needle.len()).any(|x| x == needle),
                "{}",
                f.display()
            );
        }
    }
    // Wipe; restore the latest: the same sessions (the update included) and secrets.
    let World { owner, cas, .. } = w;
    drop(cas);
    std::fs::remove_dir_all(dir.path().join("cas")).unwrap();
    let wiped = open_cas(&dir.path().join("cas"));
    let (latest, blob) = rt.block_on(snaps.latest()).unwrap().unwrap();
    assert_eq!(latest, key);
    wiped
        .restore(
            &blob,
            &[owner.sign(Action::Restore, "-", &sha256(&blob))],
            NOW + 3,
        )
        .unwrap();
    let after = wiped
        .release_as(
            &evidence(&wiped, &Key::new(3), identity(IMAGE, "api")),
            NOW + 3,
        )
        .unwrap();
    assert_eq!(after, before);
    let challenge = wiped.nonce(NOW + 3).unwrap();
    let s = wiped
        .read(
            "acme/payments",
            &challenge,
            &[owner.sign(Action::Read, "acme/payments", &challenge)],
            NOW + 3,
        )
        .unwrap();
    assert_eq!(s.version, "2");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
