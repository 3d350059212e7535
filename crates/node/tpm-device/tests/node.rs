//! The node side of attestation on a manufactured software TPM, through tss-esapi: the EK
//! certificate chains to the local manufacturer CA; the AK is bound to the EK by a credential
//! made in software; the measured launch is extended; the quote over a verifier's nonce is
//! verified by `veil-attest-tpm` and accepted by reference values from the same launch.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use veil_attest_core::UnixTime;
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_attest_tpm::credential::make_credential;
use veil_attest_tpm::{
    HexValue, Public, Quote, QuoteEvidence, QuoteSignature, TpmPolicy, verify_quote,
};
use veil_reference::launch::{Launch, QUOTED_PCRS};
use veil_reference::{MeasurementSet, ReferenceValues};
use veil_swtpm::{LocalCa, SwTpm};
use veil_tpm_device::{AkKind, Bank, NodeTpm};

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
}

#[test]
fn node_attests_from_ek_certificate_to_reference_values() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    ca.manufacture(&dir.path().join("tpm")).unwrap();
    let swtpm = SwTpm::start(&dir.path().join("tpm")).unwrap();
    let mut tpm = NodeTpm::open(&swtpm.tcti()).unwrap();

    // Firmware: the measured launch.
    let launch = Launch::measure(
        b"veil-agent build 1",
        b"role: worker",
        b"debian-12 node image",
    );
    for c in &launch.components {
        tpm.extend(c.pcr, &c.sha1.0, &c.sha256.0).unwrap();
    }

    // EK certificate -> local manufacturer CA.
    let ek_cert = Certificate::from_der(&tpm.ek_certificate().unwrap(), "EK certificate").unwrap();
    let issuer = Certificate::parse_many(&ca.issuer_pem().unwrap(), "issuer").unwrap();
    let root = Certificate::parse_many(&ca.root_pem().unwrap(), "root").unwrap();
    verify_chain(&[&ek_cert, &issuer[0]], &root, now()).unwrap();

    // The EK public key is the one certified.
    let ek = Public::parse(&tpm.load_ek().unwrap()).unwrap();
    assert_eq!(&ek.key, ek_cert.public_key().unwrap());

    // AK, bound to the EK by credential activation.
    let ak = Public::parse(&tpm.create_ak(AkKind::Rsa2048).unwrap()).unwrap();
    let challenge = [0x5a; 32];
    let made = make_credential(&ek, &ak.name, &challenge, &[3; 32]).unwrap();
    assert_eq!(
        tpm.activate_credential(&made.id_object, &made.encrypted_secret)
            .unwrap(),
        challenge
    );
    // A credential for another AK Name is refused by the TPM.
    let mut other = ak.name.clone();
    other[10] ^= 1;
    let made = make_credential(&ek, &other, &challenge, &[4; 32]).unwrap();
    assert!(
        tpm.activate_credential(&made.id_object, &made.encrypted_secret)
            .is_err()
    );

    // Quote over a 64-byte nonce, verified in software, evaluated against reference values.
    let nonce = [0x42u8; 64];
    let q = tpm
        .quote(&nonce, &[Bank::Sha1, Bank::Sha256], &QUOTED_PCRS)
        .unwrap();
    let sig = QuoteSignature::from_bytes(&q.signature, &ak.key).unwrap();
    let log = launch.event_log();
    let pcrs = log.expected_pcrs(&Quote::parse(&q.attest).unwrap().pcr_select);
    let policy = TpmPolicy {
        nonce: Some(HexValue(nonce.to_vec())),
        ..TpmPolicy::default()
    };
    // The AK is a restricted signing key (noDA), and the TPM names it under the EK.
    ak.check_attestation_key().unwrap();
    assert_ne!(
        ak.attributes & veil_attest_tpm::structures::attributes::NO_DA,
        0
    );
    let qn = veil_attest_tpm::structures::qualified_name_under_ek(&ek, &ak).unwrap();
    let ev = QuoteEvidence {
        attest: &q.attest,
        signature: &sig,
        ak: &ak.key,
        ak_qualified_name: Some(&qn),
        pcrs: Some(&pcrs),
        event_log: Some(&log),
    };
    let claims = verify_quote(&ev, None, &policy, now()).unwrap();
    let refs = ReferenceValues {
        version: veil_reference::VERSION,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![MeasurementSet::from_launch("build-1", &launch, &["worker"])],
    };
    assert_eq!(refs.evaluate_tpm("worker", &claims).unwrap(), "build-1");
    // Under another parent the key would have another Qualified Name: refused, named.
    let mut wrong = qn.clone();
    wrong[5] ^= 1;
    let e = verify_quote(
        &QuoteEvidence {
            ak_qualified_name: Some(&wrong),
            ..ev.clone()
        },
        None,
        &policy,
        now(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("qualifiedSigner"), "{e}");

    // A wrong nonce is refused.
    let policy = TpmPolicy {
        nonce: Some(HexValue(vec![0x43; 64])),
        ..TpmPolicy::default()
    };
    assert!(verify_quote(&ev, None, &policy, now()).is_err());
    // Arguments out of range are named.
    assert!(tpm.quote(&[0; 65], &[Bank::Sha256], &[8]).is_err());
    assert!(
        tpm.quote(&nonce, &[Bank::Sha256], &[24])
            .unwrap_err()
            .to_string()
            .contains("PCR 24")
    );
}

/// Issue 8, finding 7: a TPM connection that broke (here: the TPM restarted under the agent)
/// left every later quote failing until the agent restarted. The attester reconnects, loading
/// the same AK again from its wrapped blob, and quotes again; an orderly shutdown is accepted.
#[test]
fn a_broken_tpm_connection_is_reopened_with_the_same_attestation_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let state = dir.path().join("tpm");
    ca.manufacture(&state).unwrap();
    let mut swtpm = SwTpm::start(&state).unwrap();
    let port = swtpm.port();
    let mut tpm = NodeTpm::open(&swtpm.tcti()).unwrap();
    tpm.load_ek().unwrap();
    let ak = tpm.create_ak(AkKind::EccP256).unwrap();
    tpm.quote(&[1; 32], &[Bank::Sha256], &[8]).unwrap();
    // The TPM goes away and comes back (its state, and so its seeds, kept).
    swtpm.stop().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let swtpm = SwTpm::start_on(&state, port).unwrap();
    assert!(
        tpm.quote(&[2; 32], &[Bank::Sha256], &[8]).is_err(),
        "the old connection still works: nothing to test"
    );
    tpm.reconnect().unwrap();
    let q = tpm.quote(&[3; 32], &[Bank::Sha256], &[8]).unwrap();
    assert_eq!(tpm.ak_public(), &ak[..], "the AK kept its identity");
    let public = Public::parse(&ak).unwrap();
    let sig = QuoteSignature::from_bytes(&q.signature, &public.key).unwrap();
    verify_quote(
        &QuoteEvidence {
            attest: &q.attest,
            signature: &sig,
            ak: &public.key,
            ak_qualified_name: None,
            pcrs: None,
            event_log: None,
        },
        None,
        &TpmPolicy {
            nonce: Some(HexValue(vec![3; 32])),
            ..TpmPolicy::default()
        },
        now(),
    )
    .unwrap();
    tpm.shutdown().unwrap();
    drop(swtpm);
}

/// Freshness anchors of volumes live in NV indices: absent until written, then what was last
/// written, across a reconnect and a TPM restart.
#[test]
fn an_nv_index_holds_the_last_write_across_a_tpm_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let state = dir.path().join("tpm");
    ca.manufacture(&state).unwrap();
    let mut swtpm = SwTpm::start(&state).unwrap();
    let port = swtpm.port();
    let mut tpm = NodeTpm::open(&swtpm.tcti()).unwrap();
    tpm.load_ek().unwrap();
    tpm.create_ak(AkKind::EccP256).unwrap();
    const INDEX: u32 = 0x0150_0a01;
    assert_eq!(tpm.nv_read(INDEX, 40).unwrap(), None);
    tpm.quote(&[1; 32], &[Bank::Sha256], &[8]).unwrap();
    assert_eq!(tpm.nv_read(INDEX, 40).unwrap(), None);
    tpm.nv_write(INDEX, &[1; 40]).unwrap();
    tpm.nv_write(INDEX, &[2; 40]).unwrap();
    assert_eq!(tpm.nv_read(INDEX, 40).unwrap(), Some(vec![2; 40]));
    for i in 0..20 {
        tpm.nv_write(INDEX, &[3; 40]).unwrap();
        tpm.quote(&[i; 32], &[Bank::Sha256], &[8]).unwrap();
        assert!(tpm.nv_read(INDEX, 40).unwrap().is_some());
    }
    tpm.shutdown().unwrap();
    drop(tpm);
    swtpm.stop().unwrap();
    let swtpm = SwTpm::start_on(&state, port).unwrap();
    let mut tpm = NodeTpm::open(&swtpm.tcti()).unwrap();
    assert_eq!(tpm.nv_read(INDEX, 40).unwrap(), Some(vec![3; 40]));
    tpm.nv_undefine(INDEX).unwrap();
    assert_eq!(tpm.nv_read(INDEX, 40).unwrap(), None);
    tpm.shutdown().unwrap();
}
