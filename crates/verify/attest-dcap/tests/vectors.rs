//! The TDX and SGX sets in `testvectors/` reach the verdict their PROVENANCE.md states, agree
//! with dcap-qvl (the reference implementation), and every alteration is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use veil_attest_core::UnixTime;
use veil_attest_core::x509::CertError;
use veil_attest_dcap::*;
use veil_testvectors::read;

fn at(s: &str) -> UnixTime {
    UnixTime::parse_rfc3339(s).unwrap()
}

fn json_collateral(dir: &str) -> Collateral {
    Collateral::from_json(&read(&format!("{dir}/collateral.json"))).unwrap()
}

fn pcs_collateral(dir: &str) -> Collateral {
    let f = |n: &str| read(&format!("{dir}/{n}"));
    let (a, b, c, d, e, g, h) = (
        f("tcb_info.json"),
        f("tcb_info_issuer_chain.pem"),
        f("qe_identity.json"),
        f("qe_identity_issuer_chain.pem"),
        f("pck_crl.der"),
        f("pck_crl_issuer_chain.pem"),
        f("root_crl.der"),
    );
    Collateral::from_pcs(&PcsFiles {
        tcb_info: &a,
        tcb_info_issuer_chain: &b,
        qe_identity: &c,
        qe_identity_issuer_chain: &d,
        pck_crl: &e,
        pck_crl_issuer_chain: &g,
        root_crl: &h,
    })
    .unwrap()
}

fn verifier(c: &Collateral, now: UnixTime) -> Result<QuoteVerifier, DcapError> {
    Ok(QuoteVerifier::new(VerifiedCollateral::verify(
        c,
        &intel_root().unwrap(),
        now,
    )?))
}

const TDX_V4: &str = "tdx/dcapqvl-v4-uptodate";
const TDX_V5: &str = "tdx/dcapqvl-v5-no-tcb-match";
const TDX_SPR: &str = "tdx/gotdxguest-v4-spr-e4";
const SGX_V3: &str = "sgx/dcapqvl-v3";

#[test]
fn tdx_v4_is_up_to_date() {
    let now = at("2025-07-01T00:00:00Z");
    let v = verifier(&json_collateral(TDX_V4), now).unwrap();
    let c = v
        .verify(
            &read(&format!("{TDX_V4}/quote.bin")),
            &DcapPolicy::default(),
            now,
        )
        .unwrap();
    assert_eq!(c.tee, "tdx");
    assert_eq!(c.tcb.status, TcbStatus::UpToDate);
    assert!(c.tcb.advisory_ids.is_empty());
    assert_eq!(c.pck.fmspc.to_string(), "b0c06f000000");
    assert_eq!(c.pck.pce_svn, 11);
    assert_eq!(c.quote.header.version, 4);
}

#[test]
fn sgx_v3_needs_configuration_and_sw_hardening() {
    let now = at("2025-07-01T00:00:00Z");
    let v = verifier(&json_collateral(SGX_V3), now).unwrap();
    let c = v
        .verify(
            &read(&format!("{SGX_V3}/quote.bin")),
            &DcapPolicy::default(),
            now,
        )
        .unwrap();
    assert_eq!(c.tee, "sgx");
    assert_eq!(c.tcb.status, TcbStatus::ConfigurationAndSWHardeningNeeded);
    let mut adv = c.tcb.advisory_ids.clone();
    adv.sort();
    assert_eq!(adv, vec!["INTEL-SA-00289", "INTEL-SA-00615"]);
    let Body::Sgx(r) = &c.quote.body else {
        panic!()
    };
    assert!(r.report_data.0.starts_with(b"Hello, world!"));
    // A stricter policy refuses the status and names it.
    let strict = DcapPolicy {
        accepted_statuses: vec![TcbStatus::UpToDate],
        ..DcapPolicy::default()
    };
    let e = v
        .verify(&read(&format!("{SGX_V3}/quote.bin")), &strict, now)
        .unwrap_err();
    assert!(
        e.to_string()
            .starts_with("policy: TCB status ConfigurationAndSWHardeningNeeded is not accepted"),
        "{e}"
    );
    let adv_policy = DcapPolicy {
        rejected_advisories: vec!["INTEL-SA-00615".into()],
        ..DcapPolicy::default()
    };
    let e = v
        .verify(&read(&format!("{SGX_V3}/quote.bin")), &adv_policy, now)
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "policy: advisory INTEL-SA-00615 applies and is refused"
    );
}

#[test]
fn tdx_v5_has_no_matching_tcb_level() {
    let now = at("2026-03-01T00:00:00Z");
    let v = verifier(&json_collateral(TDX_V5), now).unwrap();
    let q = read(&format!("{TDX_V5}/quote.bin"));
    let parsed = Quote::parse(&q).unwrap();
    assert_eq!(parsed.header.version, 5);
    assert!(matches!(&parsed.body, Body::Td(td) if td.tee_tcb_svn2.is_some()));
    let e = v.verify(&q, &DcapPolicy::default(), now).unwrap_err();
    match &e {
        DcapError::NoTcbLevel {
            what: "platform",
            detail,
        } => {
            assert!(detail.contains("SGX TCB component 8 SVN 3 < 5"), "{detail}")
        }
        other => panic!("{other}"),
    }
}

#[test]
fn tdx_spr_pcs_directory_has_no_matching_tcb_level() {
    let now = at("2023-07-01T01:00:00Z");
    let v = verifier(&pcs_collateral(TDX_SPR), now).unwrap();
    let e = v
        .verify(
            &read(&format!("{TDX_SPR}/quote.bin")),
            &DcapPolicy::default(),
            now,
        )
        .unwrap_err();
    match &e {
        DcapError::NoTcbLevel {
            what: "platform",
            detail,
        } => {
            assert!(detail.contains("SGX TCB component 1 SVN 3 < 5"), "{detail}")
        }
        other => panic!("{other}"),
    }
}

#[test]
fn verdicts_agree_with_dcap_qvl() {
    for (dir, when) in [
        (TDX_V4, "2025-07-01T00:00:00Z"),
        (SGX_V3, "2025-07-01T00:00:00Z"),
        (TDX_V5, "2026-03-01T00:00:00Z"),
    ] {
        let now = at(when);
        let quote = read(&format!("{dir}/quote.bin"));
        let qvl_col: dcap_qvl::QuoteCollateralV3 =
            serde_json::from_slice(&read(&format!("{dir}/collateral.json"))).unwrap();
        let theirs = dcap_qvl::verify::ring::verify(&quote, &qvl_col, now.0 as u64);
        let ours = verifier(&json_collateral(dir), now)
            .unwrap()
            .authenticate(&quote, now);
        match (theirs, ours) {
            (Ok(t), Ok(o)) => {
                assert_eq!(t.status, o.tcb.status.to_string(), "{dir}");
                let mut a = t.advisory_ids.clone();
                let mut b = o.tcb.advisory_ids.clone();
                a.sort();
                b.sort();
                assert_eq!(a, b, "{dir}");
            }
            (Err(_), Err(_)) => {}
            (t, o) => panic!(
                "{dir}: dcap-qvl says {:?}, Veil says {:?}",
                t.map(|r| r.status),
                o.map(|c| c.tcb.status)
            ),
        }
    }
}

fn tamper_cases() -> Vec<(&'static str, &'static str)> {
    vec![
        (TDX_V4, "2025-07-01T00:00:00Z"),
        (SGX_V3, "2025-07-01T00:00:00Z"),
    ]
}

#[test]
fn flipped_bits_in_the_signed_quote_are_refused() {
    for (dir, when) in tamper_cases() {
        let now = at(when);
        let v = verifier(&json_collateral(dir), now).unwrap();
        let quote = read(&format!("{dir}/quote.bin"));
        let signed = Quote::parse(&quote).unwrap().signed_len;
        for offset in (0..signed).step_by(11) {
            let mut q = quote.clone();
            q[offset] ^= 0x01;
            assert!(
                v.verify(&q, &DcapPolicy::default(), now).is_err(),
                "{dir}: flip at {offset} accepted"
            );
        }
    }
}

#[test]
fn flipped_bits_in_signatures_are_refused() {
    for (dir, when) in tamper_cases() {
        let now = at(when);
        let v = verifier(&json_collateral(dir), now).unwrap();
        let quote = read(&format!("{dir}/quote.bin"));
        let signed = Quote::parse(&quote).unwrap().signed_len;
        // Quote signature: 4 bytes after the signed part (the signature data length).
        let mut q = quote.clone();
        q[signed + 4 + 10] ^= 0x40;
        assert!(
            matches!(
                v.verify(&q, &DcapPolicy::default(), now),
                Err(DcapError::QuoteSignature(_))
            ),
            "{dir}"
        );
        // Attestation key: breaks the QE binding.
        let mut q = quote.clone();
        q[signed + 4 + 64 + 5] ^= 0x40;
        let e = v.verify(&q, &DcapPolicy::default(), now).unwrap_err();
        assert!(
            matches!(
                e,
                DcapError::QeBinding { .. } | DcapError::QuoteSignature(_)
            ),
            "{dir}: {e}"
        );
        // QE report signature: after the QE report (v3: directly; v4: after type+size).
        let qe_off = signed + 4 + 128 + if dir == SGX_V3 { 0 } else { 6 };
        let mut q = quote.clone();
        q[qe_off + 384 + 3] ^= 0x40;
        assert!(
            matches!(
                v.verify(&q, &DcapPolicy::default(), now),
                Err(DcapError::QeReportSignature(_))
            ),
            "{dir}"
        );
        // QE report body.
        let mut q = quote.clone();
        q[qe_off + 100] ^= 0x40;
        assert!(
            matches!(
                v.verify(&q, &DcapPolicy::default(), now),
                Err(DcapError::QeReportSignature(_))
            ),
            "{dir}"
        );
    }
}

#[test]
fn flipped_bits_in_certificates_are_refused() {
    for (dir, when) in tamper_cases() {
        let now = at(when);
        let v = verifier(&json_collateral(dir), now).unwrap();
        let quote = read(&format!("{dir}/quote.bin"));
        // Flip a base64 character inside the PEM of the PCK certificate (its signature area).
        let start = quote
            .windows(27)
            .position(|w| w == b"-----BEGIN CERTIFICATE-----")
            .unwrap();
        let end = start
            + quote[start..]
                .windows(25)
                .position(|w| w == b"-----END CERTIFICATE-----")
                .unwrap();
        for off in [end - 20, end - 60, start + 400] {
            let mut q = quote.clone();
            q[off] = if q[off] == b'A' { b'B' } else { b'A' };
            let e = v.verify(&q, &DcapPolicy::default(), now).unwrap_err();
            assert!(
                matches!(
                    e,
                    DcapError::Certificate { .. } | DcapError::Collateral { .. }
                ),
                "{dir}: {e}"
            );
        }
        // Collateral: the TCB info text and its signature.
        let mut c = json_collateral(dir);
        c.tcb_info.body.insert(1, ' '); // still the same JSON, no longer the signed bytes
        assert!(matches!(
            verifier(&c, now),
            Err(DcapError::CollateralSignature {
                what: "TCB info",
                ..
            })
        ));
        let mut c = json_collateral(dir);
        c.qe_identity.signature[5] ^= 1;
        assert!(matches!(
            verifier(&c, now),
            Err(DcapError::CollateralSignature {
                what: "QE identity",
                ..
            })
        ));
        let mut c = json_collateral(dir);
        let n = c.pck_crl.len();
        c.pck_crl[n - 5] ^= 1;
        assert!(matches!(
            verifier(&c, now),
            Err(DcapError::Certificate {
                role: "PCK CRL",
                ..
            })
        ));
    }
}

#[test]
fn wrong_report_data_is_refused() {
    let now = at("2025-07-01T00:00:00Z");
    let v = verifier(&json_collateral(SGX_V3), now).unwrap();
    let q = read(&format!("{SGX_V3}/quote.bin"));
    let mut p = DcapPolicy {
        report_data: Some(HexBytes(b"Hello, world!".to_vec())),
        ..DcapPolicy::default()
    };
    // The enclave's report data continues after the greeting, so a prefix alone is refused.
    let c = v.authenticate(&q, now).unwrap();
    p.report_data = Some(HexBytes(c.quote.body.report_data().0.to_vec()));
    v.verify(&q, &p, now).unwrap();
    p.report_data = Some(HexBytes(b"Goodbye".to_vec()));
    let e = v.verify(&q, &p, now).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("policy: report_data: expected 476f6f64627965"),
        "{e}"
    );
}

#[test]
fn times_outside_the_collateral_are_refused() {
    let c = json_collateral(TDX_V4);
    let e = verifier(&c, at("2025-08-01T00:00:00Z")).unwrap_err();
    assert!(
        matches!(
            e,
            DcapError::Certificate {
                role: "root CA CRL" | "PCK CRL",
                ..
            } | DcapError::CollateralStale { .. }
        ),
        "{e}"
    );
    let e = verifier(&c, at("2025-06-01T00:00:00Z")).unwrap_err();
    assert!(
        matches!(
            e,
            DcapError::Certificate { .. } | DcapError::CollateralStale { .. }
        ),
        "{e}"
    );
    // Collateral verified once is re-checked against each verification time.
    let now = at("2025-07-01T00:00:00Z");
    let v = verifier(&c, now).unwrap();
    let e = v
        .verify(
            &read(&format!("{TDX_V4}/quote.bin")),
            &DcapPolicy::default(),
            at("2025-07-30T00:00:00Z"),
        )
        .unwrap_err();
    assert!(matches!(e, DcapError::CollateralStale { .. }), "{e}");
}

#[test]
fn wrong_root_is_refused() {
    // The Intel root pinned in code cannot be swapped for another certificate: verifying the
    // collateral against a different root (here the TCB signing certificate) fails the chains.
    let c = json_collateral(TDX_V4);
    let other = veil_attest_core::x509::Certificate::parse_many(&c.tcb_info.issuer_chain, "x")
        .unwrap()
        .remove(0);
    let e = VerifiedCollateral::verify(&c, &other, at("2025-07-01T00:00:00Z")).unwrap_err();
    assert!(
        matches!(
            e,
            DcapError::Certificate {
                source: CertError::BadSignature { .. } | CertError::CrlIssuer { .. },
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn tdx_policy_names_the_measurement() {
    let now = at("2025-07-01T00:00:00Z");
    let v = verifier(&json_collateral(TDX_V4), now).unwrap();
    let q = read(&format!("{TDX_V4}/quote.bin"));
    let c = v.authenticate(&q, now).unwrap();
    let Body::Td(td) = &c.quote.body else {
        panic!()
    };
    let mut p = DcapPolicy {
        mr_td: vec![td.mr_td],
        ..DcapPolicy::default()
    };
    p.rtmr.insert(0, vec![td.rtmr[0]]);
    v.verify(&q, &p, now).unwrap();
    p.rtmr.insert(2, vec![veil_attest_core::Bytes([1; 48])]);
    let e = v.verify(&q, &p, now).unwrap_err();
    assert!(e.to_string().starts_with("policy: rtmr2: "), "{e}");
    let p = DcapPolicy {
        mr_td: vec![veil_attest_core::Bytes([2; 48])],
        ..DcapPolicy::default()
    };
    assert!(
        v.verify(&q, &p, now)
            .unwrap_err()
            .to_string()
            .starts_with("policy: mr_td: ")
    );
}

#[test]
fn trailing_bytes_after_the_quote_are_ignored() {
    // dcap-qvl's TDX sample has 70 zero bytes after the signature data; go-tdx-guest's has text.
    let q = read(&format!("{TDX_SPR}/quote.bin"));
    assert!(q.ends_with(b"extra bytes(only for testing purpose)\n"));
    Quote::parse(&q).unwrap();
}

#[test]
fn azure_td_quote_signatures_are_valid_without_collateral() {
    // No collateral for FMSPC 00806f050000 is public: check parsing and that the quote is the
    // kind the verifier expects (TDX v4 with a PCK chain).
    let q = Quote::parse(&read("tdx/azure-tdx-vtpm/td-quote.bin")).unwrap();
    assert!(q.is_tdx());
    assert_eq!(q.header.version, 4);
    assert!(q.pck_chain_pem.starts_with(b"-----BEGIN CERTIFICATE-----"));
}

#[test]
fn negative_sets_fail_on_signatures_first_when_tampered() {
    // The two "no matching TCB level" sets are refused for their TCB; tampered, they must be
    // refused earlier, for the signature, showing the TCB verdict stands on genuine evidence.
    for (dir, collateral, when) in [
        (TDX_V5, json_collateral(TDX_V5), "2026-03-01T00:00:00Z"),
        (TDX_SPR, pcs_collateral(TDX_SPR), "2023-07-01T01:00:00Z"),
    ] {
        let now = at(when);
        let v = verifier(&collateral, now).unwrap();
        let quote = read(&format!("{dir}/quote.bin"));
        let signed = Quote::parse(&quote).unwrap().signed_len;
        for offset in (0..signed).step_by(13) {
            let mut q = quote.clone();
            q[offset] ^= 0x01;
            match v.verify(&q, &DcapPolicy::default(), now) {
                Err(DcapError::NoTcbLevel { .. }) | Ok(_) => {
                    panic!("{dir}: flip at {offset} reached TCB evaluation")
                }
                Err(_) => {}
            }
        }
        let mut q = quote.clone();
        q[signed + 4 + 7] ^= 0x10;
        assert!(
            matches!(
                v.verify(&q, &DcapPolicy::default(), now),
                Err(DcapError::QuoteSignature(_))
            ),
            "{dir}"
        );
        // Outside the collateral's validity: refused before any quote is looked at.
        assert!(
            verifier(&collateral, UnixTime(now.0 + 90 * 86400)).is_err(),
            "{dir}"
        );
        // Against another root.
        let other =
            veil_attest_core::x509::Certificate::parse_many(&collateral.tcb_info.issuer_chain, "x")
                .unwrap()
                .remove(0);
        assert!(
            VerifiedCollateral::verify(&collateral, &other, now).is_err(),
            "{dir}"
        );
    }
}

#[test]
fn tdx_report_data_is_checked() {
    let now = at("2025-07-01T00:00:00Z");
    let v = verifier(&json_collateral(TDX_V4), now).unwrap();
    let q = read(&format!("{TDX_V4}/quote.bin"));
    let rd = v
        .authenticate(&q, now)
        .unwrap()
        .quote
        .body
        .report_data()
        .0
        .to_vec();
    let mut p = DcapPolicy {
        report_data: Some(HexBytes(rd.clone())),
        ..DcapPolicy::default()
    };
    v.verify(&q, &p, now).unwrap();
    let mut wrong = rd;
    wrong[63] ^= 1;
    p.report_data = Some(HexBytes(wrong));
    assert!(matches!(v.verify(&q, &p, now), Err(DcapError::Policy(_))));
}
