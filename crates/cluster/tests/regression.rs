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
use veil_atls::Appraiser;
use veil_attest_tpm::evidence::{TpmEvidence, batch_digest};
use veil_attest_tpm::{EventLog, Public, QuoteEvidence, QuoteSignature, TpmPolicy, authenticate};
use veil_cluster::ClientError;
use veil_node_attest::{Membership, TpmAppraiser};
use veil_reference::launch::Launch;
use veil_swtpm::LocalCa;

use veil_cluster::clock::now;

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
        .unwrap_err();
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
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String> {
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
