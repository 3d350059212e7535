//! The TPM sets in `testvectors/` reach the verdict their PROVENANCE.md states, and every
//! alteration is refused with its reason.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use base64::Engine;
use veil_attest_core::UnixTime;
use veil_attest_core::crypto::PublicKey;
use veil_attest_core::x509::public_key_from_spki;
use veil_attest_tpm::*;
use veil_testvectors::read;

const NOW: UnixTime = UnixTime(1_767_225_600);

struct Azure {
    msg: Vec<u8>,
    sig: Vec<u8>,
    ak: PublicKey,
    pcrs: PcrValues,
}

fn azure() -> Azure {
    Azure {
        msg: read("tpm/azure-vtpm-quote/quote.msg"),
        sig: read("tpm/azure-vtpm-quote/quote.sig"),
        ak: public_key_from_spki(&read("tpm/azure-vtpm-quote/akpub.pem")).unwrap(),
        pcrs: parse_pcr_text(
            &String::from_utf8(read("tpm/azure-vtpm-quote/pcrs_sha256.txt")).unwrap(),
        )
        .unwrap(),
    }
}

fn nonce(n: &[u8]) -> TpmPolicy {
    TpmPolicy {
        nonce: Some(HexValue(n.to_vec())),
        ..TpmPolicy::default()
    }
}

fn run(a: &Azure, policy: &TpmPolicy) -> Result<TpmClaims, TpmError> {
    let sig = QuoteSignature::from_bytes(&a.sig, &a.ak)?;
    let ev = QuoteEvidence {
        attest: &a.msg,
        signature: &sig,
        ak: &a.ak,
        ak_qualified_name: None,
        pcrs: Some(&a.pcrs),
        event_log: None,
    };
    verify_quote(&ev, None, policy, NOW)
}

#[test]
fn azure_quote_is_valid_with_nonce_challenge() {
    let a = azure();
    let c = run(&a, &nonce(b"challenge")).unwrap();
    assert_eq!(c.quote.extra_data, b"challenge");
    assert_eq!(c.quote.firmware_version, 0x2020_0312_0012_0003);
    assert_eq!(c.pcrs[&HashAlg::Sha256].len(), 24);
    assert_eq!(c.scheme, "RSASSA-PKCS1-v1_5/SHA-256");
    assert_eq!(c.ak_trust, AkTrust::Unendorsed);
    assert!(c.nonce_checked);
}

#[test]
fn azure_upstream_negatives() {
    let a = azure();
    // Nonce [1,2,3,4] -> nonce mismatch.
    let e = run(&a, &nonce(&[1, 2, 3, 4])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "extraData (nonce): expected 01020304, found 6368616c6c656e6765"
    );
    // Reversed signature -> signature mismatch.
    let mut rev = azure();
    rev.sig.reverse();
    assert!(matches!(
        run(&rev, &nonce(b"challenge")),
        Err(TpmError::Signature(_))
    ));
}

#[test]
fn azure_flipped_bits_are_refused() {
    for i in 0..122 {
        let mut a = azure();
        a.msg[i] ^= 0x01;
        assert!(
            run(&a, &nonce(b"challenge")).is_err(),
            "message bit at {i} accepted"
        );
    }
    for i in (0..256).step_by(17) {
        let mut a = azure();
        a.sig[i] ^= 0x80;
        assert!(matches!(
            run(&a, &nonce(b"challenge")),
            Err(TpmError::Signature(_))
        ));
    }
}

#[test]
fn azure_pcr_value_changes_are_refused() {
    let mut a = azure();
    a.pcrs.get_mut(&(HashAlg::Sha256, 7)).unwrap()[0] ^= 1;
    let e = run(&a, &nonce(b"challenge")).unwrap_err();
    assert!(matches!(e, TpmError::PcrDigest { .. }), "{e}");
    let mut a = azure();
    a.pcrs.remove(&(HashAlg::Sha256, 23));
    let e = run(&a, &nonce(b"challenge")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "PCR sha256:23 is quoted but no value was supplied for it"
    );
}

#[test]
fn wrong_ak_is_refused() {
    let mut a = azure();
    let trustee: serde_json::Value =
        serde_json::from_slice(&read("tpm/trustee-tpm-evidence/tpm_evidence.json")).unwrap();
    let der = base64::engine::general_purpose::STANDARD
        .decode(trustee["ak_public"].as_str().unwrap())
        .unwrap();
    a.ak = public_key_from_spki(&der).unwrap();
    assert!(matches!(
        run(&a, &nonce(b"challenge")),
        Err(TpmError::Signature(_))
    ));
}

#[test]
fn pcr_reference_values_and_ak_pins() {
    let a = azure();
    let pcr0 = a.pcrs[&(HashAlg::Sha256, 0)].clone();
    let mut p = nonce(b"challenge");
    p.pcrs
        .entry(HashAlg::Sha256)
        .or_default()
        .insert(0, OneOrMany::One(pcr0.clone()));
    let c = run(&a, &p).unwrap();
    p.pcrs
        .entry(HashAlg::Sha256)
        .or_default()
        .insert(0, OneOrMany::Many(vec![HexValue(vec![0; 32])]));
    let e = run(&a, &p).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("policy: PCR sha256:0: expected 0000"),
        "{e}"
    );
    let mut p = nonce(b"challenge");
    p.pcrs
        .entry(HashAlg::Sha1)
        .or_default()
        .insert(0, OneOrMany::One(vec![0; 20]));
    let e = run(&a, &p).unwrap_err();
    assert_eq!(
        e.to_string(),
        "policy: PCR sha1:0 has a reference value but is not quoted"
    );
    // Pinning: the right key is accepted and marked pinned; another pin refuses it.
    let mut p = nonce(b"challenge");
    p.ak_spki_sha256 = vec![c.ak_spki_sha256];
    assert_eq!(run(&a, &p).unwrap().ak_trust, AkTrust::Pinned);
    p.ak_spki_sha256 = vec![veil_attest_core::Bytes([7; 32])];
    assert!(matches!(
        run(&a, &p),
        Err(TpmError::Policy(TpmPolicyViolation::AkNotPinned { .. }))
    ));
    let mut p = nonce(b"challenge");
    p.require_ak_endorsement = true;
    assert!(matches!(
        run(&a, &p),
        Err(TpmError::Policy(TpmPolicyViolation::AkNotEndorsed))
    ));
}

#[test]
fn trustee_software_tpm_evidence_is_valid() {
    let j: serde_json::Value =
        serde_json::from_slice(&read("tpm/trustee-tpm-evidence/tpm_evidence.json")).unwrap();
    let b64 = |s: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    let ak = public_key_from_spki(&b64(&j["ak_public"])).unwrap();
    let msg = b64(&j["tpm_quote"]["message"]);
    let sig = QuoteSignature::from_bytes(&b64(&j["tpm_quote"]["signature"]), &ak).unwrap();
    assert!(matches!(sig, QuoteSignature::Tpmt(_)));
    let pcrs: PcrValues = j["tpm_quote"]["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                (HashAlg::Sha256, i as u32),
                hex::decode(v.as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let quote = Quote::parse(&msg).unwrap();
    let ev = QuoteEvidence {
        attest: &msg,
        signature: &sig,
        ak: &ak,
        ak_qualified_name: None,
        pcrs: Some(&pcrs),
        event_log: None,
    };
    let c = verify_quote(&ev, None, &nonce(&quote.extra_data), NOW).unwrap();
    assert_eq!(c.quote.firmware_version, 0x2019_1023_0016_3636);
    assert_eq!(c.quote.extra_data.len(), 64);
    assert!(
        c.quote
            .extra_data
            .starts_with(&hex::decode("a04182b5").unwrap())
    );
    // A different nonce is refused.
    let e = verify_quote(&ev, None, &nonce(b"x"), NOW).unwrap_err();
    assert!(matches!(e, TpmError::Nonce { .. }));
}

#[test]
fn trustee_evidence_refuses_tampering() {
    let j: serde_json::Value =
        serde_json::from_slice(&read("tpm/trustee-tpm-evidence/tpm_evidence.json")).unwrap();
    let b64 = |s: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    let ak = public_key_from_spki(&b64(&j["ak_public"])).unwrap();
    let msg = b64(&j["tpm_quote"]["message"]);
    let sig_bytes = b64(&j["tpm_quote"]["signature"]);
    let pcrs: PcrValues = j["tpm_quote"]["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                (HashAlg::Sha256, i as u32),
                hex::decode(v.as_str().unwrap()).unwrap(),
            )
        })
        .collect();
    let nonce_of = Quote::parse(&msg).unwrap().extra_data;
    let run = |msg: &[u8], sig: &[u8], pcrs: &PcrValues| {
        let sig = QuoteSignature::from_bytes(sig, &ak)?;
        let ev = QuoteEvidence {
            attest: msg,
            signature: &sig,
            ak: &ak,
            ak_qualified_name: None,
            pcrs: Some(pcrs),
            event_log: None,
        };
        verify_quote(&ev, None, &nonce(&nonce_of), NOW)
    };
    run(&msg, &sig_bytes, &pcrs).unwrap();
    for i in (0..msg.len()).step_by(5) {
        let mut m = msg.clone();
        m[i] ^= 0x02;
        assert!(
            run(&m, &sig_bytes, &pcrs).is_err(),
            "message flip at {i} accepted"
        );
    }
    for i in (6..sig_bytes.len()).step_by(23) {
        let mut s = sig_bytes.clone();
        s[i] ^= 0x02;
        assert!(
            run(&msg, &s, &pcrs).is_err(),
            "signature flip at {i} accepted"
        );
    }
    let mut p = pcrs.clone();
    p.get_mut(&(HashAlg::Sha256, 16)).unwrap()[0] ^= 1;
    assert!(matches!(
        run(&msg, &sig_bytes, &p),
        Err(TpmError::PcrDigest { .. })
    ));
}
