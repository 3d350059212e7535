//! Two nodes, each with its own manufactured software TPM, attest to each other over attested
//! TLS with real TPM quotes; nodes with a changed agent, an untrusted AK or another cluster's
//! ID are refused, with the reason named.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use veil_atls::{AtlsError, Identity, client, server};
use veil_attest_core::UnixTime;
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_attest_tpm::Public;
use veil_attest_tpm::credential::make_credential;
use veil_node_attest::{Membership, NodeClaims, TpmAppraiser, TpmAttester};
use veil_reference::launch::{Launch, PCR_CLUSTER_ID, cluster_event};
use veil_reference::{MeasurementSet, ReferenceValues};
use veil_swtpm::{LocalCa, SwTpm};
use veil_tpm_device::{AkKind, NodeTpm};

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
}

/// Fields drop in order: the TPM connection before the TPM.
struct Node {
    attester: Arc<TpmAttester>,
    ak_spki_sha256: [u8; 32],
    _swtpm: SwTpm,
}

/// Boots a node and binds its AK to its EK as a join service would: EK certificate chained to
/// the manufacturer CA, credential activated by the TPM.
fn boot(dir: &Path, ca: &LocalCa, agent: &[u8], cluster: Option<&[u8]>) -> Node {
    ca.manufacture(dir).unwrap();
    let swtpm = SwTpm::start(dir).unwrap();
    let mut tpm = NodeTpm::open(&swtpm.tcti()).unwrap();
    let launch = Launch::measure(agent, b"role: worker", b"image");
    for c in &launch.components {
        tpm.extend(c.pcr, &c.sha1.0, &c.sha256.0).unwrap();
    }
    let mut log = launch.event_log();
    if let Some(id) = cluster {
        let event = cluster_event(id);
        let d = |i: usize| event.digests[i].1.clone();
        tpm.extend(
            PCR_CLUSTER_ID,
            &d(0).try_into().unwrap(),
            &d(1).try_into().unwrap(),
        )
        .unwrap();
        log.events.push(event);
    }
    let ek_cert = Certificate::from_der(&tpm.ek_certificate().unwrap(), "EK").unwrap();
    let issuer = Certificate::parse_many(&ca.issuer_pem().unwrap(), "issuer").unwrap();
    let root = Certificate::parse_many(&ca.root_pem().unwrap(), "root").unwrap();
    verify_chain(&[&ek_cert, &issuer[0]], &root, now()).unwrap();
    let ek = Public::parse(&tpm.load_ek().unwrap()).unwrap();
    assert_eq!(&ek.key, ek_cert.public_key().unwrap());
    let ak = Public::parse(&tpm.create_ak(AkKind::EccP256).unwrap()).unwrap();
    let made = make_credential(&ek, &ak.name, &[1; 32], &[2; 32]).unwrap();
    assert_eq!(
        tpm.activate_credential(&made.id_object, &made.encrypted_secret)
            .unwrap(),
        vec![1; 32]
    );
    let spki = ak.key.spki_der().unwrap();
    use sha2::Digest;
    Node {
        attester: Arc::new(TpmAttester::new(tpm, log)),
        ak_spki_sha256: sha2::Sha256::digest(spki).into(),
        _swtpm: swtpm,
    }
}

fn appraiser(
    refs: &ReferenceValues,
    trusted: &[[u8; 32]],
    cluster: Option<&[u8]>,
) -> Arc<TpmAppraiser> {
    Arc::new(TpmAppraiser {
        reference: refs.clone(),
        role: "worker".into(),
        trusted_aks: Some(trusted.to_vec()),
        membership: match cluster {
            Some(id) => Membership::Member(id.to_vec()),
            None => Membership::Fresh,
        },
        now: now(),
    })
}

/// One attested connection: (client's view of the server, server's view of the client).
async fn connect(
    srv: &Node,
    srv_appraiser: Arc<TpmAppraiser>,
    cli: &Node,
    cli_appraiser: Arc<TpmAppraiser>,
) -> (
    Result<Option<NodeClaims>, AtlsError>,
    Result<Option<NodeClaims>, AtlsError>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv_attester = srv.attester.clone();
    let s = tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let id = Identity::generate().unwrap();
        server(
            sock,
            &id,
            Some(srv_attester.as_ref() as &dyn veil_atls::Attester),
            Some(&veil_client::Appraising(srv_appraiser.as_ref())),
        )
        .await
        .map(|(_, p)| p.claims)
    });
    let sock = TcpStream::connect(addr).await.unwrap();
    let id = Identity::generate().unwrap();
    let c = client(
        sock,
        &id,
        Some(cli.attester.as_ref() as &dyn veil_atls::Attester),
        Some(&veil_client::Appraising(cli_appraiser.as_ref())),
    )
    .await
    .map(|(_, p)| p.claims);
    (c, s.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_attest_each_other_with_real_tpm_quotes() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let a = boot(&dir.path().join("a"), &ca, b"agent 1", None);
    let b = boot(&dir.path().join("b"), &ca, b"agent 1", None);
    let refs = ReferenceValues {
        version: veil_reference::VERSION,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![MeasurementSet::from_launch(
            "release-1",
            &Launch::measure(b"agent 1", b"role: worker", b"image"),
            &["worker"],
        )],
    };
    let trusted = [a.ak_spki_sha256, b.ak_spki_sha256];
    let (c, s) = connect(
        &a,
        appraiser(&refs, &trusted, None),
        &b,
        appraiser(&refs, &trusted, None),
    )
    .await;
    let (c, s) = (c.unwrap().unwrap(), s.unwrap().unwrap());
    assert_eq!(c.set, "release-1");
    assert_eq!(c.ak_spki_sha256, a.ak_spki_sha256);
    assert_eq!(s.ak_spki_sha256, b.ak_spki_sha256);

    // A node whose agent binary differs: refused, PCR 8 named.
    let evil = boot(&dir.path().join("evil"), &ca, b"agent 1 patched", None);
    let trusted = [a.ak_spki_sha256, evil.ak_spki_sha256];
    let (c, s) = connect(
        &a,
        appraiser(&refs, &trusted, None),
        &evil,
        appraiser(&refs, &trusted, None),
    )
    .await;
    // The modified node learns why it was refused.
    match c {
        Err(AtlsError::RefusedByPeer(r)) => assert!(r.contains("PCR sha1:8"), "{r}"),
        other => panic!("{other:?}"),
    }
    match s {
        Err(AtlsError::Refused(r)) => assert!(
            r.contains("PCR sha1:8") || r.contains("PCR sha256:8"),
            "{r}"
        ),
        other => panic!("modified agent accepted: {other:?}"),
    }

    // A genuine node whose AK was never bound to an accepted EK.
    let (_, s) = connect(
        &a,
        appraiser(&refs, &[a.ak_spki_sha256], None),
        &b,
        appraiser(&refs, &trusted, None),
    )
    .await;
    match s {
        Err(AtlsError::Refused(r)) => assert!(r.contains("not one of the 1 pinned keys"), "{r}"),
        other => panic!("unbound AK accepted: {other:?}"),
    }

    // A node of another cluster (its cluster PCR extended) is refused at join.
    let other = boot(
        &dir.path().join("other"),
        &ca,
        b"agent 1",
        Some(b"cluster-x"),
    );
    let trusted = [a.ak_spki_sha256, other.ak_spki_sha256];
    let (_, s) = connect(
        &a,
        appraiser(&refs, &trusted, None),
        &other,
        appraiser(&refs, &trusted, None),
    )
    .await;
    match s {
        Err(AtlsError::Refused(r)) => assert!(r.contains("already belongs to a cluster"), "{r}"),
        other => panic!("foreign node accepted: {other:?}"),
    }
    // ...and accepted by its own cluster.
    let (_, s) = connect(
        &a,
        appraiser(&refs, &trusted, Some(b"cluster-x")),
        &other,
        appraiser(&refs, &trusted, None),
    )
    .await;
    s.unwrap();
}

#[test]
fn concurrent_requests_share_quotes_and_each_finds_its_binding() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let node = boot(&dir.path().join("n"), &ca, b"agent 1", None);
    let refs = ReferenceValues {
        version: veil_reference::VERSION,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![MeasurementSet::from_launch(
            "release-1",
            &Launch::measure(b"agent 1", b"role: worker", b"image"),
            &["worker"],
        )],
    };
    let app = appraiser(&refs, &[node.ak_spki_sha256], None);
    let results: Vec<([u8; 64], Vec<u8>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12u8)
            .map(|i| {
                let attester = node.attester.clone();
                s.spawn(move || {
                    let rd = [i; 64];
                    (
                        rd,
                        veil_atls::Attester::attest(attester.as_ref(), &rd).unwrap(),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut quotes = std::collections::HashSet::new();
    for (rd, ev) in &results {
        app.appraise(ev, rd).unwrap();
        quotes.insert(
            veil_attest_tpm::evidence::TpmEvidence::parse(ev)
                .unwrap()
                .attest,
        );
    }
    assert!(
        quotes.len() < results.len(),
        "no batching: {} quotes for {} requests",
        quotes.len(),
        results.len()
    );
    // Evidence answering another verifier does not answer this one.
    let e = app
        .appraise(&results[0].1, &[0xee; 64])
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not contain this session's binding"), "{e}");
}

/// Issue 8, finding 7: after its TPM restarted under it, a node's attester reconnects (same AK)
/// and attests again; while its TPM is gone it says it is unhealthy.
#[test]
fn the_attester_reconnects_to_its_tpm_and_reports_its_health() {
    use veil_atls::Attester;
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let state = dir.path().join("tpm");
    ca.manufacture(&state).unwrap();
    let mut swtpm = SwTpm::start(&state).unwrap();
    let port = swtpm.port();
    let launch = Launch::measure(b"agent", b"role: worker", b"image");
    let mut tpm = NodeTpm::open(&swtpm.tcti()).unwrap();
    for c in &launch.components {
        tpm.extend(c.pcr, &c.sha1.0, &c.sha256.0).unwrap();
    }
    tpm.load_ek().unwrap();
    tpm.create_ak(AkKind::EccP256).unwrap();
    let attester = TpmAttester::new(tpm, launch.event_log());
    let first = attester.attest(&[1; 64]).unwrap();
    assert!(attester.healthy());
    // The TPM goes away: the attester says so.
    swtpm.stop().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(attester.attest(&[2; 64]).is_err());
    assert!(!attester.healthy());
    assert!(attester.quote_failures() >= 1);
    // It comes back: the attester reconnects on its own, with the same AK.
    let _back = SwTpm::start_on(&state, port).unwrap();
    let again = attester.attest(&[3; 64]).unwrap();
    assert!(attester.healthy());
    let ak = |ev: &[u8]| {
        veil_attest_tpm::evidence::TpmEvidence::parse(ev)
            .unwrap()
            .ak_public
    };
    assert_eq!(ak(&first), ak(&again));
}
