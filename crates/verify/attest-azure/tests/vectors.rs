//! The Azure CVM sets in `testvectors/` reach the verdicts their PROVENANCE.md states, and
//! breaking any link of the chain is refused.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use veil_attest_azure::*;
use veil_attest_core::UnixTime;
use veil_attest_core::x509::Certificate;
use veil_attest_snp::{AmdRoots, Signer};
use veil_attest_tpm::{HexValue, TpmError, TpmPolicy};
use veil_testvectors::read;

const NOW: UnixTime = UnixTime(1_767_225_600); // 2026-01-01

fn nonce(n: &[u8]) -> TpmPolicy {
    TpmPolicy {
        nonce: Some(HexValue(n.to_vec())),
        ..TpmPolicy::default()
    }
}

fn signer_from(vcek: &[u8]) -> Signer {
    let c = Certificate::parse_many(vcek, "VCEK").unwrap().remove(0);
    Signer::establish(&c, &[], AmdRoots::pinned().unwrap(), NOW).unwrap()
}

fn snp_evidence(rel: &str, n: &[u8]) -> Result<AzureClaims, AzureError> {
    let ev = AzureEvidence::from_json(&read(rel)).unwrap();
    let signer = signer_from(ev.vcek.as_ref().unwrap());
    authenticate_snp_vtpm(&ev.hcl_report, &ev.tpm_quote, &signer, &nonce(n), NOW)
}

const GENOA_NONCE: &str = "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f";
const MILAN_V2_NONCE: &str = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";

#[test]
fn genoa_evidence_is_valid() {
    let c = snp_evidence(
        "snp/azure-vtpm-genoa/evidence-genoa.json",
        &hex::decode(GENOA_NONCE).unwrap(),
    )
    .unwrap();
    let snp = c.snp.as_ref().unwrap();
    assert_eq!(snp.product, veil_attest_snp::Product::Genoa);
    assert_eq!(snp.report.vmpl, 0);
    assert_eq!(c.tpm.pcrs[&veil_attest_tpm::HashAlg::Sha256].len(), 24);
    assert_eq!(c.hcl.vm_configuration["secure-boot"], true);
}

#[test]
fn genoa_from_separate_files_is_valid() {
    let ev = AzureEvidence::from_json(&read("snp/azure-vtpm-genoa/evidence-genoa.json")).unwrap();
    assert_eq!(read("snp/azure-vtpm-genoa/hcl-report.bin"), ev.hcl_report);
    let signer = signer_from(&read("snp/azure-vtpm-genoa/vcek-genoa.pem"));
    authenticate_snp_vtpm(
        &read("snp/azure-vtpm-genoa/hcl-report.bin"),
        &ev.tpm_quote,
        &signer,
        &nonce(&hex::decode(GENOA_NONCE).unwrap()),
        NOW,
    )
    .unwrap();
}

#[test]
fn milan_evidence_versions_are_valid() {
    let c0 = snp_evidence("snp/azure-vtpm-milan/evidence-v0.json", b"challenge").unwrap();
    let c1 = snp_evidence("snp/azure-vtpm-milan/evidence-v1.json", b"challenge").unwrap();
    let pcr0 = |c: &AzureClaims| c.tpm.pcrs[&veil_attest_tpm::HashAlg::Sha256][&0].clone();
    assert_eq!(
        pcr0(&c0),
        "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced"
    );
    assert_eq!(pcr0(&c1), pcr0(&c0));
    let v2_nonce = hex::decode(MILAN_V2_NONCE).unwrap();
    let c2 = snp_evidence("snp/azure-vtpm-milan/evidence-v2.json", &v2_nonce).unwrap();
    assert_eq!(
        pcr0(&c2),
        "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7"
    );
    // v2 also carries the report data in the HCL user-data.
    check_user_data(&c2, &v2_nonce).unwrap();
    assert!(check_user_data(&c2, b"other").is_err());
    assert_eq!(c2.snp.unwrap().report.version, 3);
}

#[test]
fn milan_standalone_pieces_are_valid() {
    let q = read("snp/azure-vtpm-milan/tpm-quote-v1.json");
    let j: serde_json::Value = serde_json::from_slice(&q).unwrap();
    let parts = TpmQuoteParts {
        message: hex::decode(j["message"].as_str().unwrap()).unwrap(),
        signature: hex::decode(j["signature"].as_str().unwrap()).unwrap(),
        pcrs: j["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| hex::decode(p.as_str().unwrap()).unwrap())
            .collect(),
    };
    let signer = signer_from(&read("snp/azure-vtpm-milan/vcek-chain.pem"));
    let hcl = read("snp/azure-vtpm-milan/hcl-report.bin");
    let c = authenticate_snp_vtpm(&hcl, &parts, &signer, &nonce(b"challenge"), NOW).unwrap();
    assert_eq!(c.snp.unwrap().report.version, 2);
    // quote.bin (bincode: u64-length-prefixed signature and message, then u64 count of PCRs)
    // is another quote by the same vTPM.
    let b = read("snp/azure-vtpm-milan/quote.bin");
    let len = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap()) as usize;
    let sig_len = len(0);
    let msg_len = len(8 + sig_len);
    let pcr_at = 8 + sig_len + 8 + msg_len;
    let bincode = TpmQuoteParts {
        signature: b[8..8 + sig_len].to_vec(),
        message: b[16 + sig_len..16 + sig_len + msg_len].to_vec(),
        pcrs: (0..len(pcr_at))
            .map(|i| b[pcr_at + 8 + 32 * i..pcr_at + 40 + 32 * i].to_vec())
            .collect(),
    };
    authenticate_snp_vtpm(&hcl, &bincode, &signer, &nonce(b"challenge"), NOW).unwrap();
    // tpm-quote.msg/.sig come from yet another vTPM: its signature does not verify here.
    let mut other = parts.clone();
    other.message = read("snp/azure-vtpm-milan/tpm-quote.msg");
    other.signature = read("snp/azure-vtpm-milan/tpm-quote.sig");
    let e = authenticate_snp_vtpm(&hcl, &other, &signer, &nonce(b"challenge"), NOW).unwrap_err();
    assert!(matches!(e, AzureError::Tpm(TpmError::Signature(_))), "{e}");
}

#[test]
fn wrong_nonce_is_refused() {
    let e = snp_evidence("snp/azure-vtpm-milan/evidence-v1.json", b"challengf").unwrap_err();
    assert!(matches!(e, AzureError::Tpm(TpmError::Nonce { .. })), "{e}");
}

#[test]
fn broken_links_are_refused() {
    let ev = AzureEvidence::from_json(&read("snp/azure-vtpm-milan/evidence-v1.json")).unwrap();
    let signer = signer_from(ev.vcek.as_ref().unwrap());
    let run = |hcl: &[u8], q: &TpmQuoteParts| {
        authenticate_snp_vtpm(hcl, q, &signer, &nonce(b"challenge"), NOW)
    };
    // Variable data altered: the SNP report no longer binds it.
    let mut hcl = ev.hcl_report.clone();
    let var_start = 32 + 1184 + 20;
    let i = var_start
        + hcl[var_start..]
            .windows(9)
            .position(|w| w == b"tpm-enabl")
            .unwrap();
    hcl[i] = b'T';
    let e = run(&hcl, &ev.tpm_quote).unwrap_err();
    assert!(matches!(e, AzureError::Binding { .. }), "{e}");
    // The SNP report altered: its signature fails.
    let mut hcl = ev.hcl_report.clone();
    hcl[32 + 0x90] ^= 1;
    assert!(matches!(run(&hcl, &ev.tpm_quote), Err(AzureError::Snp(_))));
    // The quote of another VM (v2) with this VM's HCL report: signed by another AK.
    let other = AzureEvidence::from_json(&read("snp/azure-vtpm-milan/evidence-v2.json")).unwrap();
    let e = run(&ev.hcl_report, &other.tpm_quote).unwrap_err();
    assert!(matches!(e, AzureError::Tpm(TpmError::Signature(_))), "{e}");
    // A PCR value changed.
    let mut q = ev.tpm_quote.clone();
    q.pcrs[4][0] ^= 1;
    assert!(matches!(
        run(&ev.hcl_report, &q),
        Err(AzureError::Tpm(TpmError::PcrDigest { .. }))
    ));
    // The VCEK of another chip.
    let genoa = signer_from(&read("snp/azure-vtpm-genoa/vcek-genoa.pem"));
    let e = authenticate_snp_vtpm(
        &ev.hcl_report,
        &ev.tpm_quote,
        &genoa,
        &nonce(b"challenge"),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, AzureError::Snp(_)), "{e}");
}

#[test]
fn tdx_evidence_signatures_and_bindings_are_valid() {
    let root = veil_attest_dcap::intel_root().unwrap();
    for rel in [
        "tdx/azure-tdx-vtpm/evidence-v0.json",
        "tdx/azure-tdx-vtpm/evidence-v1.json",
    ] {
        let ev = AzureEvidence::from_json(&read(rel)).unwrap();
        let c = authenticate_tdx_vtpm(
            &ev.hcl_report,
            ev.td_quote.as_ref().unwrap(),
            &ev.tpm_quote,
            TdxTrust::SignaturesOnly(&root),
            &nonce(b"challenge"),
            NOW,
        )
        .unwrap_or_else(|e| panic!("{rel}: {e}"));
        match c.tdx.unwrap() {
            TdxVerdict::SignaturesOnly { pck, .. } => {
                assert_eq!(pck.fmspc.to_string(), "00806f050000")
            }
            other => panic!("{other:?}"),
        }
    }
    // The standalone files are the same evidence.
    let ev = AzureEvidence::from_json(&read("tdx/azure-tdx-vtpm/evidence-v0.json")).unwrap();
    assert_eq!(
        ev.td_quote.unwrap(),
        read("tdx/azure-tdx-vtpm/td-quote.bin")
    );
    assert_eq!(ev.hcl_report, read("tdx/azure-tdx-vtpm/hcl-report.bin"));
}

#[test]
fn tdx_with_wrong_root_or_swapped_report_is_refused() {
    let ev = AzureEvidence::from_json(&read("tdx/azure-tdx-vtpm/evidence-v1.json")).unwrap();
    let amd = AmdRoots::pinned()
        .unwrap()
        .product(veil_attest_snp::Product::Milan)
        .unwrap()
        .ark
        .clone();
    let e = authenticate_tdx_vtpm(
        &ev.hcl_report,
        ev.td_quote.as_ref().unwrap(),
        &ev.tpm_quote,
        TdxTrust::SignaturesOnly(&amd),
        &nonce(b"challenge"),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, AzureError::Tdx(_)), "{e}");
    // An SNP HCL report with a TD quote.
    let root = veil_attest_dcap::intel_root().unwrap();
    let snp = read("snp/azure-vtpm-genoa/hcl-report.bin");
    let e = authenticate_tdx_vtpm(
        &snp,
        ev.td_quote.as_ref().unwrap(),
        &ev.tpm_quote,
        TdxTrust::SignaturesOnly(&root),
        &nonce(b"challenge"),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, AzureError::ReportType { .. }), "{e}");
    // Variable data altered.
    let mut hcl = ev.hcl_report.clone();
    let var_start = 32 + 1184 + 20;
    let i = var_start
        + hcl[var_start..]
            .windows(9)
            .position(|w| w == b"tpm-enabl")
            .unwrap();
    hcl[i] = b'T';
    let e = authenticate_tdx_vtpm(
        &hcl,
        ev.td_quote.as_ref().unwrap(),
        &ev.tpm_quote,
        TdxTrust::SignaturesOnly(&root),
        &nonce(b"challenge"),
        NOW,
    )
    .unwrap_err();
    assert!(matches!(e, AzureError::Binding { .. }), "{e}");
}

#[test]
fn malformed_evidence_names_the_field() {
    let e = AzureEvidence::from_json(b"{\"version\": 7}").unwrap_err();
    assert_eq!(e.to_string(), "evidence: `version` must be 1 or 2");
    let e = AzureEvidence::from_json(
        b"{\"quote\": {\"pcrs\": [], \"message\": [1], \"signature\": [300]}, \"report\": []}",
    )
    .unwrap_err();
    assert!(e.to_string().contains("tpm_quote.signature"), "{e}");
}

#[test]
fn times_outside_the_vcek_validity_are_refused() {
    let ev = AzureEvidence::from_json(&read("snp/azure-vtpm-milan/evidence-v1.json")).unwrap();
    let vcek = Certificate::parse_many(ev.vcek.as_ref().unwrap(), "VCEK")
        .unwrap()
        .remove(0);
    let signer = Signer::establish(&vcek, &[], AmdRoots::pinned().unwrap(), NOW).unwrap();
    for when in [vcek.not_before().0 - 1, vcek.not_after().0 + 1] {
        let e = authenticate_snp_vtpm(
            &ev.hcl_report,
            &ev.tpm_quote,
            &signer,
            &nonce(b"challenge"),
            UnixTime(when),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                AzureError::Snp(veil_attest_snp::SnpError::OutsideValidity { .. })
            ),
            "{e}"
        );
    }
}

#[test]
fn every_snp_set_refuses_each_broken_link() {
    for (rel, n) in [
        (
            "snp/azure-vtpm-genoa/evidence-genoa.json",
            hex::decode(GENOA_NONCE).unwrap(),
        ),
        (
            "snp/azure-vtpm-milan/evidence-v0.json",
            b"challenge".to_vec(),
        ),
        (
            "snp/azure-vtpm-milan/evidence-v1.json",
            b"challenge".to_vec(),
        ),
        (
            "snp/azure-vtpm-milan/evidence-v2.json",
            hex::decode(MILAN_V2_NONCE).unwrap(),
        ),
    ] {
        let ev = AzureEvidence::from_json(&read(rel)).unwrap();
        let signer = signer_from(ev.vcek.as_ref().unwrap());
        let run = |hcl: &[u8], q: &TpmQuoteParts, n: &[u8]| {
            authenticate_snp_vtpm(hcl, q, &signer, &nonce(n), NOW)
        };
        run(&ev.hcl_report, &ev.tpm_quote, &n).unwrap();
        // SNP report body and signature.
        for off in [0x50, 0x90, 0x180, 0x2a0 + 10] {
            let mut hcl = ev.hcl_report.clone();
            hcl[32 + off] ^= 1;
            assert!(
                matches!(run(&hcl, &ev.tpm_quote, &n), Err(AzureError::Snp(_))),
                "{rel}: {off:#x}"
            );
        }
        // Variable data.
        let mut hcl = ev.hcl_report.clone();
        hcl[32 + 1184 + 20 + 2] ^= 0x20;
        assert!(
            run(&hcl, &ev.tpm_quote, &n).is_err(),
            "{rel}: variable data"
        );
        // vTPM quote body and signature, and the nonce.
        let mut q = ev.tpm_quote.clone();
        q.message[40] ^= 1;
        assert!(
            matches!(run(&ev.hcl_report, &q, &n), Err(AzureError::Tpm(_))),
            "{rel}"
        );
        let mut q = ev.tpm_quote.clone();
        q.signature[100] ^= 1;
        assert!(
            matches!(
                run(&ev.hcl_report, &q, &n),
                Err(AzureError::Tpm(TpmError::Signature(_)))
            ),
            "{rel}"
        );
        assert!(
            matches!(
                run(&ev.hcl_report, &ev.tpm_quote, b"nonce"),
                Err(AzureError::Tpm(TpmError::Nonce { .. }))
            ),
            "{rel}"
        );
        // A root of another generation for the VCEK.
        let vcek = Certificate::parse_many(ev.vcek.as_ref().unwrap(), "VCEK")
            .unwrap()
            .remove(0);
        let other = if rel.contains("genoa") {
            "roots/amd/milan_ask_ark_asvk.pem"
        } else {
            "roots/amd/genoa_ask_ark_asvk.pem"
        };
        let chain = Certificate::parse_many(&read(other), "chain").unwrap();
        assert!(
            Signer::establish(&vcek, &chain, AmdRoots::pinned().unwrap(), NOW).is_err(),
            "{rel}"
        );
    }
}
