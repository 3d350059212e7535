//! Regression tests named after the findings of the outside attack test (issue 8): each
//! provokes its finding with the attacker's input — a genuine TPM driven by tpm2-tools where a
//! TPM is involved — and sees the refusal with its reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use veil_attest_tpm::evidence::{TpmEvidence, batch_digest};
use veil_attest_tpm::{EventLog, Public, QuoteEvidence, QuoteSignature, TpmPolicy, authenticate};
use veil_client::ClientError;
use veil_node_attest::{Membership, TpmAppraiser};
use veil_reference::launch::Launch;
use veil_swtpm::LocalCa;

use veil_client::clock::now;

/// Finding 1: a hand-made TPMS_ATTEST signed with TPM2_Sign by an unrestricted key of a
/// genuine TPM. The forgery is otherwise perfect (the signature, nonce, PCR digest and event
/// log all check out); the key's attributes give it away, on every path that appraises
/// evidence: a control plane appraising a joiner, and the owner or a worker appraising a
/// control plane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_quote_through_an_unrestricted_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, _, refs) = release_1();
    let forger = Forger::new(&dir.path().join("forger"), &ca, &cp_launch);

    // The forgery holds up cryptographically: without the attribute check it would pass.
    let binding = [7u8; 64];
    let ev = TpmEvidence::parse(&forger.evidence(&binding)).unwrap();
    let key = Public::parse(&ev.ak_public).unwrap();
    let sig = QuoteSignature::from_bytes(&ev.signature, &key.key).unwrap();
    let log = EventLog::parse(&ev.event_log).unwrap();
    let quote = veil_attest_tpm::Quote::parse(&ev.attest).unwrap();
    let pcrs = log.expected_pcrs(&quote.pcr_select);
    authenticate(
        &QuoteEvidence {
            attest: &ev.attest,
            signature: &sig,
            ak: &key.key,
            ak_qualified_name: None,
            pcrs: Some(&pcrs),
            event_log: Some(&log),
        },
        None,
        &TpmPolicy {
            nonce: Some(veil_attest_tpm::HexValue(
                batch_digest(&ev.bindings).to_vec(),
            )),
            ..TpmPolicy::default()
        },
        now(),
    )
    .expect("the forged quote verifies as a signature");
    assert!(
        refs.sets[0].roles["control-plane"].pcrs[&veil_attest_tpm::HashAlg::Sha256]
            .contains_key(&8),
        "the reference values pin the impersonated agent"
    );

    // The owner (or a worker) appraising it as a control plane refuses it, naming the attribute.
    let owner_view = TpmAppraiser {
        reference: refs.clone(),
        role: "control-plane".into(),
        trusted_aks: None,
        membership: Membership::Fresh,
        now: now(),
    };
    let e = owner_view
        .appraise(&forger.evidence(&binding), &binding)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`restricted` must be set"), "{e}");

    // A control plane refuses it at the attested connection, before any request, and records it.
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([1; 32], [2; 32]);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap();
    let e = session(
        addr,
        Some(&forger),
        &appraiser(&refs, Membership::Member(cid.0.to_vec())),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ClientError::Atls(_)) && e.to_string().contains("`restricted` must be set"),
        "{e}"
    );
    assert!(cp.nodes().is_empty(), "the forger was not admitted");
}

/// Finding 1, the Name: evidence whose AK public area is not the key the TPM signed with as a
/// child of the node's EK (here: a node's genuine quote, its AK's attributes altered — the same
/// key material, another Name) is refused at join, naming qualifiedSigner; credential
/// activation would fail on that Name too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quote_whose_signer_is_not_the_presented_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([1; 32], [2; 32]);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap();
    let node = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    owner
        .approve_at(addr, &refs, &[(&node.attester, "worker")])
        .await;
    let altered = AlteredAk(node.attester.clone());
    let e = session(
        addr,
        Some(&altered),
        &appraiser(&refs, Membership::Member(cid.0.to_vec())),
    )
    .await
    .unwrap()
    .join(&node.attester, "worker", &node_key())
    .await
    .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("join: qualifiedSigner")),
        "{e}"
    );
    assert!(cp.nodes().is_empty());
}

/// A node's genuine evidence with stClear (an attribute Veil does not require) flipped in the
/// AK public area it presents.
struct AlteredAk(std::sync::Arc<veil_node_attest::TpmAttester>);

impl veil_atls::Attester for AlteredAk {
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, veil_atls::AttestError> {
        let mut ev = TpmEvidence::parse(&self.0.attest(report_data)?).unwrap();
        // objectAttributes follow type and nameAlg (after a size, for a TPM2B_PUBLIC).
        let at = if Public::parse(&ev.ak_public[2..]).is_ok() {
            6
        } else {
            4
        };
        ev.ak_public[at + 3] ^= 1 << 2;
        Ok(ev.to_bytes().unwrap())
    }
}

/// Finding 2: a fresh, genuine TPM of an accepted manufacturer, its PCRs extended with
/// `tpm2_pcrextend` to a real control plane's launch digests, quoting with a genuine restricted
/// AK. Its evidence matches the control-plane reference values; the owner never approved its
/// TPM, so it gets neither the master secret nor anything else, and the refusal names the TPM.
/// Posing as a control plane itself, it cannot show workers an approval list the owner signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_holder_of_an_accepted_tpm_becomes_a_control_plane() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([3; 32], [4; 32]);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap();

    let attacker = extended_by_hand(&dir.path().join("attacker"), &ca, &cp_launch);
    let member = appraiser(&refs, Membership::Member(cid.0.to_vec()));
    // Its evidence is good enough to connect as a control plane…
    let mut s = session(addr, Some(attacker.attester.as_ref()), &member)
        .await
        .unwrap();
    // …but the owner did not approve its TPM.
    let e = s
        .join(&attacker.attester, "control-plane", &node_key())
        .await
        .unwrap_err();
    let ek = ek_sha256(&attacker.attester);
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("has not approved this TPM") && r.contains(&ek)),
        "{e}"
    );
    assert!(cp.nodes().is_empty(), "nothing was handed over");
    assert!(
        cp.refusals()
            .iter()
            .any(|r| r.kind == "join" && r.reason.contains(&ek)),
        "the refusal is in the report: {:?}",
        cp.refusals()
    );

    // The attacker runs a control plane of its own on that TPM (its software is its own: it
    // takes its own key as the owner's, initialises itself, approves itself).
    let rogue_owner = Owner::new([5; 32], [6; 32]);
    let (_rogue, rogue_addr) = serve(&attacker, &refs, &ca, &rogue_owner.public).await;
    rogue_owner.init(rogue_addr, &attacker, &refs).await;
    // A worker checks a control plane before it joins: genuine TPM (it is), and approved as
    // a control plane by the owner its measured configuration names (it is not).
    let worker = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    let (roots, issuer) = roots(&ca);
    let mut s = session(
        rogue_addr,
        Some(worker.attester.as_ref()),
        &appraiser(&refs, Membership::Any),
    )
    .await
    .unwrap();
    let rogue_ek = s
        .verify_endorsement(&roots, &issuer, now(), None)
        .await
        .expect("the attacker's TPM is genuine");
    let e = s
        .verify_approved(&owner.public, &rogue_ek)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Endorsement(r) if r.contains("signature does not verify")),
        "{e}"
    );
    // The real control plane passes the same check.
    let mut s = session(
        addr,
        Some(worker.attester.as_ref()),
        &appraiser(&refs, Membership::Any),
    )
    .await
    .unwrap();
    let ek = s
        .verify_endorsement(&roots, &issuer, now(), None)
        .await
        .unwrap();
    assert_eq!(
        s.verify_approved(&owner.public, &ek).await.unwrap(),
        cid.to_string()
    );
}

/// A genuine TPM manufactured by `ca` whose PCRs an attacker extended with tpm2-tools to
/// `launch`'s digests; its agent (a genuine restricted AK) replays `launch`'s event log.
fn extended_by_hand(dir: &std::path::Path, ca: &LocalCa, launch: &Launch) -> Node {
    ca.manufacture(dir).unwrap();
    let swtpm = veil_swtpm::SwTpm::start(dir).unwrap();
    for c in &launch.components {
        tpm2(
            &swtpm.tcti(),
            dir,
            &[
                "tpm2_pcrextend",
                &format!("{}:sha1={},sha256={}", c.pcr, c.sha1, c.sha256),
            ],
        );
    }
    let mut tpm = veil_tpm_device::NodeTpm::open(&swtpm.tcti()).unwrap();
    tpm.load_ek().unwrap();
    tpm.create_ak(veil_tpm_device::AkKind::EccP256).unwrap();
    Node {
        attester: std::sync::Arc::new(veil_node_attest::TpmAttester::new(tpm, launch.event_log())),
        _swtpm: swtpm,
    }
}

/// Finding 5: operations on the control-plane port that nobody authenticated. Whoever
/// connects first does not initialise a control plane; nobody but the owner gets the cluster
/// report; the TPM is no activation oracle: only attested nodes and the owner may use it,
/// once per connection, a few times per second in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_operations_on_the_control_plane_port() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([7; 32], [8; 32]);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;
    let (roots, issuer) = roots(&ca);
    let fresh = appraiser(&refs, Membership::Fresh);

    // A stranger who connects first, with secrets and approvals of its own: refused, and
    // the control plane stays the owner's to initialise.
    let stranger = Owner::new([9; 32], [9; 32]);
    let e = session(addr, None, &fresh)
        .await
        .unwrap()
        .init(
            &stranger.master,
            &stranger.salt,
            &stranger.signed(),
            &stranger.key,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("init: the owner's signature does not verify")),
        "{e}"
    );
    assert!(cp.cluster_id().is_none());
    // Unsigned, a caller that does not attest may not use the TPM at all.
    let e = session(addr, None, &fresh)
        .await
        .unwrap()
        .verify_endorsement(&roots, &issuer, now(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("only an attested node or the owner")),
        "{e}"
    );
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap().to_string();
    let member = appraiser(
        &refs,
        Membership::Member(veil_attest_core::bytes::decode_hex(&cid).unwrap()),
    );
    // The report names every node and refusal: the owner's only.
    let e = session(addr, None, &member)
        .await
        .unwrap()
        .cluster_report(&cid, &[1; 32], &stranger.key)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("report: the owner's signature")),
        "{e}"
    );

    // An attested node may check the control plane's TPM: once per connection…
    let node = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    let any = appraiser(&refs, Membership::Any);
    let mut s = session(addr, Some(node.attester.as_ref()), &any)
        .await
        .unwrap();
    s.verify_endorsement(&roots, &issuer, now(), None)
        .await
        .unwrap();
    let e = s
        .verify_endorsement(&roots, &issuer, now(), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, ClientError::Refused(r) if r.contains("one credential activation per connection")),
        "{e}"
    );
    // …and a few times per second in all, however many connections it opens.
    let mut sessions = Vec::new();
    for _ in 0..24 {
        sessions.push(
            session(addr, Some(node.attester.as_ref()), &any)
                .await
                .unwrap(),
        );
    }
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for mut s in sessions {
        let (roots, issuer) = (roots.clone(), issuer.clone());
        tasks.push(tokio::spawn(async move {
            s.verify_endorsement(&roots, &issuer, now(), None).await
        }));
    }
    let (mut proved, mut limited) = (0u64, 0u64);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => proved += 1,
            Err(ClientError::Refused(r)) if r.contains("too many credential activations") => {
                limited += 1
            }
            Err(e) => panic!("{e}"),
        }
    }
    let secs = start.elapsed().as_secs() + 1;
    println!(
        "24 activations asked at once: {proved} served, {limited} refused as too many, in {:.2} s",
        start.elapsed().as_secs_f64()
    );
    assert!(limited > 0, "no activation was refused");
    assert!(
        proved <= u64::from(veil_cluster::MAX_ACTIVATIONS_PER_SECOND) * (secs + 1),
        "{proved} activations in {secs} s"
    );
}

/// What a control plane of these tests trusts: the local CA's TPMs, `refs`, `owner`'s key.
fn trust_of(
    ca: &LocalCa,
    refs: &veil_reference::ReferenceValues,
    owner: &Owner,
) -> veil_cluster::Trust {
    let (ek_roots, ek_intermediates) = roots(ca);
    veil_cluster::Trust {
        reference: refs.clone(),
        ek_roots,
        ek_intermediates,
        local_roots: true,
        owner_key: owner.public.clone(),
    }
}

/// Finding 6: refusals that vanished — kept in memory, 64 at most, flushed by a retrying
/// node, forgotten at restart. Now every kind is kept, aggregated (a node retrying 100 times
/// is one entry), across restarts, until the owner acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_that_vanish() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([10; 32], [11; 32]);
    let trust = trust_of(&ca, &refs, &owner);
    let state = dir.path().join("control-plane.json");
    let cp = std::sync::Arc::new(
        veil_cluster::ControlPlane::with_state_file(
            trust.clone(),
            cp_node.attester.clone(),
            state.clone(),
            false,
        )
        .unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(cp.clone().serve(listener));
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap();
    // One junk connection: a hello with unknown flags.
    {
        use tokio::io::AsyncWriteExt;
        let mut junk = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut hello = vec![0u8; 32];
        hello.push(0x80);
        hello.extend([0u8; 32]);
        junk.write_all(&hello).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::io::AsyncReadExt::read_to_end(&mut junk, &mut sink).await;
    }
    // A node the owner did not approve retries its join a hundred times.
    let member = appraiser(&refs, Membership::Member(cid.0.to_vec()));
    let node = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    let mut s = session(addr, Some(node.attester.as_ref()), &member)
        .await
        .unwrap();
    for _ in 0..100 {
        let e = s
            .join(&node.attester, "worker", &node_key())
            .await
            .unwrap_err();
        assert!(matches!(&e, ClientError::Refused(_)), "{e}");
    }
    let kinds = |cp: &veil_cluster::ControlPlane| {
        let mut v: Vec<(String, u64)> = cp
            .refusals()
            .into_iter()
            .map(|r| (r.kind, r.count))
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        kinds(&cp),
        vec![("join".to_string(), 100), ("tls".to_string(), 1)],
        "{:?}",
        cp.refusals()
    );
    // The control plane restarts (after the agent's periodic flush): its refusals are still
    // there, counted.
    cp.flush();
    serving.abort();
    drop(cp);
    let cp = std::sync::Arc::new(
        veil_cluster::ControlPlane::with_state_file(trust, cp_node.attester.clone(), state, false)
            .unwrap(),
    );
    assert_eq!(
        kinds(&cp),
        vec![("join".to_string(), 100), ("tls".to_string(), 1)]
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cp.clone().serve(listener));
    // They are in the signed report, until the owner acknowledges them.
    let mut os = session(addr, None, &appraiser(&refs, Membership::Any))
        .await
        .unwrap();
    let report = os
        .cluster_report(&cid.to_string(), &[2; 32], &owner.key)
        .await
        .unwrap();
    let r: veil_appraisal::report::ClusterReport = serde_json::from_str(&report.report).unwrap();
    assert_eq!(r.refused.len(), 2);
    os.ack_refusals(&cid.to_string(), now().0, &owner.key)
        .await
        .unwrap();
    assert!(cp.refusals().is_empty());
}

/// A control plane on its encrypted state volume keeps its state there: the host's file holds
/// only the cluster ID, and what the host writes into it (an erased or forged refusal, a
/// forged volume) is never read; the state on the volume comes back after a restart; a
/// volume holding another cluster's state is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sealed_state_is_beyond_the_hosts_reach() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([10; 32], [11; 32]);
    let trust = trust_of(&ca, &refs, &owner);
    let host_file = dir.path().join("control-plane.json");
    let sealed = dir.path().join("volume/veil/control-plane.json");
    let open = |trust: veil_cluster::Trust| {
        std::sync::Arc::new(
            veil_cluster::ControlPlane::with_state_file(
                trust,
                cp_node.attester.clone(),
                host_file.clone(),
                true,
            )
            .unwrap(),
        )
    };
    let cp = open(trust.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(cp.clone().serve(listener));
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap();
    cp.seal_state(sealed.clone()).unwrap();
    // A node the owner did not approve tries to join three times: refusals, on the volume.
    let member = appraiser(&refs, Membership::Member(cid.0.to_vec()));
    let node = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    let mut s = session(addr, Some(node.attester.as_ref()), &member)
        .await
        .unwrap();
    for _ in 0..3 {
        s.join(&node.attester, "worker", &node_key())
            .await
            .unwrap_err();
    }
    cp.flush();
    let json = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let host = json(&host_file);
    assert_eq!(host["cluster_id"], cid.to_string());
    assert_eq!(host["nodes"], serde_json::json!([]), "{host}");
    assert_eq!(host["refusals"], serde_json::json!([]), "{host}");
    let on_volume = json(&sealed);
    assert_eq!(on_volume["cluster_id"], cid.to_string());
    assert!(
        on_volume["refusals"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "join" && r["count"] == 3),
        "{on_volume}"
    );
    serving.abort();
    drop(cp);

    // The host writes a forged refusal and a forged volume into its file; the control
    // plane restarts: it reads the cluster ID alone, and the volume's state once mounted.
    let mut forged = host.clone();
    forged["refusals"] = serde_json::json!([{
        "source": "host", "ak_spki_sha256": null, "kind": "forged", "reason": "x",
        "class": "x", "first_seen": 1, "last_seen": 1, "count": 1
    }]);
    forged["volumes"] = serde_json::json!({"v-forged": {"attached_to": "node-x"}});
    std::fs::write(&host_file, serde_json::to_vec(&forged).unwrap()).unwrap();
    let cp = open(trust.clone());
    assert_eq!(cp.cluster_id(), Some(cid));
    assert!(cp.refusals().is_empty(), "{:?}", cp.refusals());
    cp.seal_state(sealed.clone()).unwrap();
    let kinds: Vec<(String, u64)> = cp
        .refusals()
        .into_iter()
        .map(|r| (r.kind, r.count))
        .collect();
    assert_eq!(kinds, vec![("join".to_string(), 3)]);
    cp.flush();
    let after = json(&sealed);
    assert!(after["volumes"].get("v-forged").is_none(), "{after}");
    drop(cp);

    // The volume holds another cluster's state: refused, naming both.
    let mut other = on_volume.clone();
    other["cluster_id"] = serde_json::json!(hex::encode([7u8; 32]));
    std::fs::write(&sealed, serde_json::to_vec(&other).unwrap()).unwrap();
    let cp = open(trust);
    let e = cp.seal_state(sealed.clone()).unwrap_err();
    assert!(
        e.contains(&hex::encode([7u8; 32])) && e.contains(&cid.to_string()),
        "{e}"
    );
}

/// Finding 7: denial of service. 500 connections that never speak and 100 attested-TLS
/// sessions stuck in a frame that announced a megabyte, from ten addresses, while an
/// approved worker keeps fetching its key and the owner gets a report; memory grows by
/// what the bytes that arrived need, and the silent connections are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denial_of_service_and_lockout() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (cp_launch, worker_launch, refs) = release_1();
    let cp_node = boot(&dir.path().join("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([12; 32], [13; 32]);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;
    owner.init(addr, &cp_node, &refs).await;
    let cid = cp.cluster_id().unwrap();
    let member = appraiser(&refs, Membership::Member(cid.0.to_vec()));
    let worker = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    owner
        .approve_at(addr, &refs, &[(&worker.attester, "worker")])
        .await;
    let joined = session(addr, Some(worker.attester.as_ref()), &any_member(&refs))
        .await
        .unwrap()
        .join(&worker.attester, "worker", &node_key())
        .await
        .unwrap();
    let key_id = format!("node/{}/state", joined.node_id);

    let rss_before = rss_kib();
    let from = |i: usize| std::net::SocketAddr::from(([127, 0, 0, 2 + (i % 10) as u8], 0));
    let connect_from = |i: usize| async move {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(from(i)).unwrap();
        s.connect(addr).await.unwrap()
    };
    let mut idle = Vec::new();
    for i in 0..500 {
        idle.push(connect_from(i).await);
    }
    let mut partial = Vec::new();
    for i in 0..100 {
        let sock = connect_from(i).await;
        let id = veil_atls::Identity::generate().unwrap();
        let (mut tls, _) =
            veil_atls::client::<_, veil_client::Appraising<'_>>(sock, &id, None, None)
                .await
                .unwrap();
        use tokio::io::AsyncWriteExt;
        tls.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        tls.write_all(b"{\"op\":\"").await.unwrap();
        tls.flush().await.unwrap();
        partial.push(tls);
    }
    // Meanwhile the worker keeps fetching its key and the owner gets its report.
    for _ in 0..5 {
        let key = session(addr, Some(worker.attester.as_ref()), &member)
            .await
            .unwrap()
            .get_key(&key_id, &joined.node_cert)
            .await
            .unwrap();
        assert_eq!(key, joined.state_key);
    }
    // …and the whole cluster verifies, as `veil verify` checks it: nothing refused.
    let mut os = session(addr, None, &member).await.unwrap();
    let signed = os
        .cluster_report(&cid.to_string(), &[3; 32], &owner.key)
        .await
        .unwrap();
    let verdict = veil_appraisal::report::verify_report(
        &signed,
        &veil_appraisal::report::Expectations {
            reference: refs.clone(),
            cluster_id: cid.0.to_vec(),
            control_plane_aks: vec![os.peer_ak()],
            approvals: owner.list.lock().unwrap().clone(),
            nonce: Some([3; 32]),
            now: now(),
        },
    )
    .unwrap();
    assert!(verdict.all_ok(), "{verdict:?}");
    assert_eq!(verdict.nodes.len(), 2, "the control plane and the worker");
    let rss_during = rss_kib();
    println!(
        "control plane (in this test process) with 500 idle and 100 partial-frame connections: RSS {} -> {} MiB",
        rss_before / 1024,
        rss_during / 1024
    );
    assert!(
        rss_during < rss_before + 64 * 1024,
        "memory grew by {} KiB",
        rss_during - rss_before
    );
    let metrics = cp.metrics_text();
    assert!(
        metrics.contains("veil_connections_shed_total 0"),
        "{metrics}"
    );
    // From one address, no more than the per-source limit is served at once.
    let mut crowd = Vec::new();
    for _ in 0..(veil_cluster::MAX_CONNECTIONS_PER_SOURCE + 10) {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(std::net::SocketAddr::from(([127, 0, 0, 99], 0)))
            .unwrap();
        crowd.push(s.connect(addr).await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let shed = cp
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix("veil_connections_shed_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap();
    assert_eq!(shed, 10);
    // Each shedding is a refusal naming the limit, one entry for the address however often.
    let limit: Vec<_> = cp
        .refusals()
        .into_iter()
        .filter(|r| r.kind == "limit")
        .collect();
    assert_eq!(limit.len(), 1, "{limit:?}");
    assert_eq!(limit[0].source, "127.0.0.99");
    assert_eq!(limit[0].count, 10);
    assert!(
        limit[0].reason.contains(&format!(
            "at most {}",
            veil_cluster::MAX_CONNECTIONS_PER_SOURCE
        )),
        "{limit:?}"
    );
    // Silent connections are closed once the exchange timeout passes.
    tokio::time::sleep(std::time::Duration::from_secs(11)).await;
    let mut closed = 0;
    for mut s in idle.into_iter().take(20) {
        // The control plane's hello, then the end of the stream.
        let mut b = Vec::new();
        if tokio::time::timeout(
            std::time::Duration::from_secs(1),
            tokio::io::AsyncReadExt::read_to_end(&mut s, &mut b),
        )
        .await
        .is_ok()
        {
            closed += 1;
        }
    }
    assert_eq!(closed, 20, "silent connections were kept open");
    drop(partial);
}

/// Appraises a control plane of any cluster (for a joining node).
fn any_member(refs: &veil_reference::ReferenceValues) -> TpmAppraiser {
    appraiser(refs, Membership::Any)
}

/// This process's resident memory (KiB).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Finding 3: trust inputs outside what a node measured. The reference-values key and the
/// owner's key are measured into PCR 9 with the configuration (one function computes it for
/// the firmware, the agent and `veil measurements compute`): a node run on a key of its own is
/// refused, PCR 9 named, and an agent whose key file was swapped after the measurement finds
/// that what it loaded is not what was measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_inputs_that_are_not_measured() {
    use veil_reference::node_config::AgentConfig;
    use veil_reference::signing::generate_key;
    use veil_reference::{MeasurementSet, ReferenceValues};
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n);
    let mut keys = Vec::new();
    for name in ["reference", "owner", "rogue"] {
        let (_, public) = generate_key().unwrap();
        std::fs::write(d(&format!("{name}.pub")), &public).unwrap();
        keys.push(public);
    }
    let cfg = |role: &str, reference: &str, owner: &str| AgentConfig {
        name: "n".into(),
        role: role.into(),
        control_planes: vec!["10.0.0.1:7443".into()],
        listen: None,
        tcti: "swtpm:port=1".into(),
        event_log: d("log"),
        reference_values: d("refs.yaml"),
        reference_signature: d("refs.yaml.sig"),
        reference_key: d(reference),
        owner_key: d(owner),
        tpm_roots_local: true,
        state_dir: d("state"),
        metrics: None,
        mesh: None,
        kubernetes: None,
    };
    let launch = |c: &AgentConfig| {
        veil_reference::launch::Launch::local(
            b"veil-agent 1",
            &c.measured_from_files().unwrap(),
            b"image 1",
        )
    };
    let cp_launch = launch(&cfg("control-plane", "reference.pub", "owner.pub"));
    let honest = launch(&cfg("worker", "reference.pub", "owner.pub"));
    let mut set = MeasurementSet::from_launch("release-1", &cp_launch, &["control-plane"]);
    set.roles
        .extend(MeasurementSet::from_launch("release-1", &honest, &["worker"]).roles);
    let refs = ReferenceValues {
        version: 1,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![set],
    };
    let ca = LocalCa::at(&d("ca"));
    let cp_node = boot(&d("cp"), &ca, &cp_launch, None);
    let owner = Owner::new([14; 32], [15; 32]);
    let (cp, addr) = serve(&cp_node, &refs, &ca, &owner.public).await;
    owner.init(addr, &cp_node, &refs).await;
    let member = appraiser(
        &refs,
        Membership::Member(cp.cluster_id().unwrap().0.to_vec()),
    );
    // The honest worker connects; one on reference values of its own, or another owner, not.
    let w = boot(&d("w"), &ca, &honest, None);
    session(addr, Some(w.attester.as_ref()), &member)
        .await
        .expect("the honest worker's evidence is accepted");
    for (name, reference, owner_key) in [
        ("own-reference-key", "rogue.pub", "owner.pub"),
        ("other-owner", "reference.pub", "rogue.pub"),
    ] {
        let rogue = boot(
            &d(name),
            &ca,
            &launch(&cfg("worker", reference, owner_key)),
            None,
        );
        let e = session(addr, Some(rogue.attester.as_ref()), &member)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("PCR sha1:9") || e.contains("PCR sha256:9"),
            "{name}: {e}"
        );
    }
    // The key file swapped after the firmware measured the node.
    let log = honest.event_log();
    std::fs::write(d("reference.pub"), &keys[2]).unwrap();
    let loaded = cfg("worker", "reference.pub", "owner.pub")
        .measured_from_files()
        .unwrap();
    let e = veil_reference::launch::check_config_measured(&log, &loaded).unwrap_err();
    assert!(e.contains("PCR 9"), "{e}");
    std::fs::write(d("reference.pub"), &keys[0]).unwrap();
    let loaded = cfg("worker", "reference.pub", "owner.pub")
        .measured_from_files()
        .unwrap();
    veil_reference::launch::check_config_measured(&log, &loaded).unwrap();
}

/// Finding 8: an event log whose event *data* was altered was accepted as long as its digests
/// still replayed. A node's genuine evidence with a separator's data changed (its digest left
/// as measured) is refused, naming the event, before any policy reads the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_data_altered_while_the_digests_still_replay() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let (_, worker_launch, refs) = release_1();
    let node = boot(&dir.path().join("w"), &ca, &worker_launch, None);
    let binding = [5u8; 64];
    let genuine = veil_atls::Attester::attest(node.attester.as_ref(), &binding).unwrap();
    let app = TpmAppraiser {
        role: "worker".into(),
        ..appraiser(&refs, Membership::Fresh)
    };
    app.appraise(&genuine, &binding)
        .expect("the genuine evidence passes");
    let mut ev = TpmEvidence::parse(&genuine).unwrap();
    let mut log = EventLog::parse(&ev.event_log).unwrap();
    let sep = log
        .events
        .iter()
        .position(|e| e.event_type == veil_attest_tpm::eventlog::EV_SEPARATOR)
        .expect("the launch is closed by separators");
    log.events[sep].data = vec![0xff, 0xff, 0xff, 0xfe];
    ev.event_log = log.to_bytes();
    let e = app
        .appraise(&ev.to_bytes().unwrap(), &binding)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!("event {sep} (EV_SEPARATOR")) && e.contains("separator data"),
        "{e}"
    );
}
