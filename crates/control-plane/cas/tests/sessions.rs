//! Sessions: parsing and validation, the canonical hash, governance, the registry's rules
//! (ownership, predecessors, no lost update), and admitting workloads.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_cas::matching::Workload;
use veil_cas::policy::{Action, Rule};
use veil_cas::registry::Registry;
use veil_cas::{CasError, Session};

mod common;
use common::Key;

const IMAGE: &str = "sha256:6e0f6b1b1e0c2f0dd1c3d9f9a0c9b1e2d3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8";

fn session(name: &str, readers: &[&Key], updaters: &[&Key], require: Option<&str>) -> String {
    let list = |ks: &[&Key]| {
        ks.iter()
            .map(|k| format!("\"{}\"", k.public()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"
name: {name}
version: "1"
services:
  - name: api
    attestation:
      - image_digests: ["{IMAGE}"]
        namespace: payments
        service_account: api
      - tee: [snp]
        min_tcb: 7
    environment:
      DB_PASSWORD: "$$secret:db_password$$"
    files:
      /etc/api/tls.key: "$$secret:tls$$"
secrets:
  - name: db_password
    kind: ascii
    size: 24
  - name: ca
    kind: x509-ca
  - name: tls
    kind: x509
    issuer: ca
access_policy:
  read: {{keys: [{}]}}
  update: {{keys: [{}]{}}}
  create_sessions: {{keys: [{}]}}
"#,
        list(readers),
        list(updaters),
        require
            .map(|r| format!(", require: {r}"))
            .unwrap_or_default(),
        list(updaters),
    )
}

#[test]
fn a_session_parses_and_its_hash_is_the_canonical_json_one() {
    let (a, b) = (Key::new(1), Key::new(2));
    let s = Session::parse(session("acme", &[&a], &[&a, &b], Some("all")).as_bytes()).unwrap();
    assert_eq!(s.services[0].attestation.len(), 2);
    // The same document as JSON with its keys in another order: the same hash.
    let mut v = serde_json::to_value(&s).unwrap();
    let obj = v.as_object_mut().unwrap();
    let reordered: serde_json::Map<String, serde_json::Value> =
        obj.clone().into_iter().rev().collect();
    let json = serde_json::to_vec_pretty(&serde_json::Value::Object(reordered)).unwrap();
    let t = Session::parse(&json).unwrap();
    assert_eq!(s.hash().unwrap(), t.hash().unwrap());
    // Anyone can recompute it: SHA-256 over the keys sorted, no whitespace (RFC 8785 for a
    // document of strings, integers, arrays and objects).
    fn canonical(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let parts: Vec<String> = keys
                    .iter()
                    .map(|k| {
                        format!(
                            "{}:{}",
                            serde_json::to_string(k).unwrap(),
                            canonical(&m[*k])
                        )
                    })
                    .collect();
                format!("{{{}}}", parts.join(","))
            }
            serde_json::Value::Array(a) => {
                format!(
                    "[{}]",
                    a.iter().map(canonical).collect::<Vec<_>>().join(",")
                )
            }
            other => serde_json::to_string(other).unwrap(),
        }
    }
    use sha2::Digest;
    let expected: [u8; 32] =
        sha2::Sha256::digest(canonical(&serde_json::to_value(&s).unwrap())).into();
    assert_eq!(s.hash().unwrap().0, expected);
    // A changed document, another hash.
    let mut u = s.clone();
    u.version = "2".into();
    assert_ne!(u.hash().unwrap(), s.hash().unwrap());
}

#[test]
fn invalid_sessions_are_refused_naming_what_is_wrong() {
    let a = Key::new(1);
    let good = session("acme", &[&a], &[&a], None);
    for (from, to, why) in [
        ("name: acme", "name: Acme", "name segment"),
        ("name: acme", "name: acme//x", "name segment"),
        (
            "- tee: [snp]\n        min_tcb: 7",
            "- {}",
            "admit any workload",
        ),
        (IMAGE, "sha256:abc", "image digest"),
        (
            "$$secret:db_password$$",
            "$$secret:nope$$",
            "does not define",
        ),
        ("issuer: ca", "issuer: db_password", "not an x509-ca"),
        ("size: 24", "size: 0", "size"),
        ("/etc/api/tls.key", "etc/../tls.key", "absolute"),
        (
            "version: \"1\"",
            "version: \"1\"\nowner: me",
            "unknown field",
        ),
        ("tee: [snp]", "tee: [sev]", "TEE"),
    ] {
        assert!(good.contains(from), "{from}");
        let doc = good.replacen(from, to, 1);
        let e = Session::parse(doc.as_bytes()).unwrap_err().to_string();
        assert!(e.contains(why), "{to}: {e}");
    }
    let two = session("acme", &[&a], &[&a, &Key::new(2)], Some("at-least-3"));
    let e = Session::parse(two.as_bytes()).unwrap_err().to_string();
    assert!(e.contains("at-least-3 of 2"), "{e}");
    let dup = session("acme", &[&a], &[&a, &a], None);
    assert!(
        Session::parse(dup.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("twice")
    );
    assert!(Session::parse(&vec![b' '; 2 << 20]).is_err());
}

#[test]
fn only_the_owner_creates_top_level_sessions_and_no_update_is_lost() {
    let (owner, operator, dev, lead) = (Key::new(1), Key::new(9), Key::new(2), Key::new(3));
    let mut reg = Registry::new();
    let s =
        Session::parse(session("acme", &[&dev], &[&dev, &lead], Some("all")).as_bytes()).unwrap();
    let h = s.hash().unwrap();
    // Not provisioned: nobody creates.
    assert!(matches!(
        reg.create(s.clone(), &[owner.sign(Action::Create, "acme", &h.0)]),
        Err(CasError::Unauthorised(_))
    ));
    reg.provision(Rule {
        keys: vec![owner.public()],
        require: None,
    })
    .unwrap();
    // The operator cannot provision again, nor create.
    assert!(
        reg.provision(Rule {
            keys: vec![operator.public()],
            require: None
        })
        .is_err()
    );
    let e = reg
        .create(s.clone(), &[operator.sign(Action::Create, "acme", &h.0)])
        .unwrap_err();
    assert!(e.to_string().contains("0 of the 1"), "{e}");
    // The owner's signature for another session or action does not do.
    assert!(
        reg.create(s.clone(), &[owner.sign(Action::Update, "acme", &h.0)])
            .is_err()
    );
    assert!(
        reg.create(s.clone(), &[owner.sign(Action::Create, "acme2", &h.0)])
            .is_err()
    );
    assert_eq!(
        reg.create(s.clone(), &[owner.sign(Action::Create, "acme", &h.0)])
            .unwrap(),
        h
    );
    assert!(
        reg.create(s.clone(), &[owner.sign(Action::Create, "acme", &h.0)])
            .is_err()
    );

    // An update names its predecessor and meets `require: all` of the current session.
    let mut u = s.clone();
    u.version = "2".into();
    let hu = u.hash().unwrap();
    let e = reg
        .update(u.clone(), &[dev.sign(Action::Update, "acme", &hu.0)])
        .unwrap_err();
    assert!(matches!(e, CasError::Predecessor(_)), "{e}");
    u.predecessor = Some(h.to_string());
    let hu = u.hash().unwrap();
    let e = reg
        .update(u.clone(), &[dev.sign(Action::Update, "acme", &hu.0)])
        .unwrap_err();
    assert!(e.to_string().contains("1 of the 2"), "{e}");
    let both = [
        dev.sign(Action::Update, "acme", &hu.0),
        lead.sign(Action::Update, "acme", &hu.0),
    ];
    assert_eq!(reg.update(u.clone(), &both).unwrap(), hu);
    // A second update from the same predecessor (written concurrently) is refused: not lost.
    let mut v = s.clone();
    v.version = "2b".into();
    v.predecessor = Some(h.to_string());
    let hv = v.hash().unwrap();
    let e = reg
        .update(
            v,
            &[
                dev.sign(Action::Update, "acme", &hv.0),
                lead.sign(Action::Update, "acme", &hv.0),
            ],
        )
        .unwrap_err();
    assert!(e.to_string().contains("another update came first"), "{e}");
    // A tampered signature by a listed key refuses the request.
    let mut bad = both.clone();
    bad[0].signature = STANDARD.encode([0u8; 64]);
    let mut w = u.clone();
    w.version = "3".into();
    w.predecessor = Some(hu.to_string());
    assert!(
        reg.update(w, &bad)
            .unwrap_err()
            .to_string()
            .contains("does not verify")
    );

    // Below it: created as its create_sessions rule allows (not by the owner alone).
    let child =
        Session::parse(session("acme/payments", &[&dev], &[&dev], None).as_bytes()).unwrap();
    let hc = child.hash().unwrap();
    assert!(
        reg.create(
            child.clone(),
            &[owner.sign(Action::Create, "acme/payments", &hc.0)]
        )
        .is_err()
    );
    reg.create(child, &[dev.sign(Action::Create, "acme/payments", &hc.0)])
        .unwrap();
    let orphan = Session::parse(session("other/x", &[&dev], &[&dev], None).as_bytes()).unwrap();
    let ho = orphan.hash().unwrap();
    assert!(matches!(
        reg.create(orphan, &[dev.sign(Action::Create, "other/x", &ho.0)]),
        Err(CasError::NotFound(_))
    ));

    // Read: the read rule, over a fresh challenge.
    let challenge = [5u8; 32];
    assert!(
        reg.read(
            "acme",
            &challenge,
            &[dev.sign(Action::Read, "acme", &challenge)]
        )
        .is_ok()
    );
    assert!(
        reg.read(
            "acme",
            &challenge,
            &[owner.sign(Action::Read, "acme", &challenge)]
        )
        .is_err()
    );
    assert!(
        reg.read(
            "acme",
            &challenge,
            &[dev.sign(Action::Read, "acme", &[6; 32])]
        )
        .is_err()
    );
}

#[test]
fn workloads_are_admitted_by_one_variant_and_refused_with_each_reason() {
    let a = Key::new(1);
    let s = Session::parse(session("acme", &[&a], &[&a], None).as_bytes()).unwrap();
    let w = Workload {
        namespace: "payments".into(),
        service_account: "api".into(),
        pod: "api-0".into(),
        image_digests: vec![IMAGE.into()],
        reference_set: "release-1".into(),
        tee: "tpm".into(),
        tcb: None,
    };
    assert_eq!(s.admit("api", &w).unwrap().name, "api");
    // Another image beside the allowed one: refused, saying which, and why variant 1 fails.
    let mut other = w.clone();
    other
        .image_digests
        .push(format!("sha256:{}", "0".repeat(64)));
    let e = s.admit("api", &other).unwrap_err().to_string();
    assert!(
        e.contains("variant 0: image sha256:000") && e.contains("variant 1: TEE tpm"),
        "{e}"
    );
    let mut ns = w.clone();
    ns.namespace = "default".into();
    assert!(
        s.admit("api", &ns)
            .unwrap_err()
            .to_string()
            .contains("namespace default")
    );
    // The second variant: an SNP node at TCB 7 or above, whatever the image.
    let snp = Workload {
        tee: "snp".into(),
        tcb: Some(7),
        ..ns.clone()
    };
    assert!(s.admit("api", &snp).is_ok());
    let old = Workload {
        tcb: Some(6),
        ..snp
    };
    assert!(
        s.admit("api", &old)
            .unwrap_err()
            .to_string()
            .contains("TCB 6 is below 7")
    );
    assert!(matches!(s.admit("web", &w), Err(CasError::NotFound(_))));
}

#[test]
fn the_fuzz_seed_is_a_valid_session() {
    let seed = include_bytes!("../../../../fuzz/seeds/cas_session/session.yaml");
    Session::parse(seed).unwrap();
}
