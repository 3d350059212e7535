//! The bindings of Azure CVM evidence: hardware report → HCL variable data → vTPM key →
//! vTPM quote.

use serde::Serialize;
use veil_attest_core::UnixTime;
use veil_attest_core::x509::Certificate;
use veil_attest_dcap::pck::PckInfo;
use veil_attest_dcap::{Body, DcapClaims, QuoteVerifier};
use veil_attest_snp::{Signer, SnpClaims};
use veil_attest_tpm::{
    HashAlg, PcrValues, QuoteEvidence, QuoteSignature, TpmClaims, TpmPolicy, authenticate,
};

use crate::error::AzureError;
use crate::evidence::TpmQuoteParts;
use crate::hcl::{HashType, HclReport, HwReportType};

/// What the HCL report says, beyond the hardware report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HclClaims {
    /// Header version.
    pub version: u32,
    /// Hardware report kind.
    pub report_type: HwReportType,
    /// Hash binding the variable data.
    pub hash_type: HashType,
    /// Digest of the variable data (hex).
    pub var_data_digest: String,
    /// `user-data` of the variable data.
    pub user_data: Option<String>,
    /// `vm-configuration` of the variable data.
    pub vm_configuration: serde_json::Value,
}

/// The TD quote's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TdxVerdict {
    /// Verified with collateral: TCB status known.
    Collateral(Box<DcapClaims>),
    /// Signatures and PCK chain only: TCB status unknown.
    SignaturesOnly {
        /// The quote.
        quote: Box<veil_attest_dcap::Quote>,
        /// The platform.
        pck: PckInfo,
    },
}

impl TdxVerdict {
    fn quote(&self) -> &veil_attest_dcap::Quote {
        match self {
            TdxVerdict::Collateral(c) => &c.quote,
            TdxVerdict::SignaturesOnly { quote, .. } => quote,
        }
    }
}

/// What accepted Azure CVM evidence establishes.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AzureClaims {
    /// The HCL report.
    pub hcl: HclClaims,
    /// The SEV-SNP report (SNP CVMs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpClaims>,
    /// The TD quote (TDX CVMs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxVerdict>,
    /// The vTPM quote.
    pub tpm: TpmClaims,
}

/// How the TD quote is trusted.
#[derive(Debug, Clone, Copy)]
pub enum TdxTrust<'a> {
    /// Full DCAP verification with verified collateral.
    Collateral(&'a QuoteVerifier),
    /// Signatures and the PCK chain up to this root only; the TCB status stays unknown.
    SignaturesOnly(&'a Certificate),
}

fn hcl_claims(h: &HclReport) -> HclClaims {
    HclClaims {
        version: h.version,
        report_type: h.report_type,
        hash_type: h.hash_type,
        var_data_digest: hex::encode(h.var_data_digest()),
        user_data: h.user_data.clone(),
        vm_configuration: h.vm_configuration.clone(),
    }
}

fn vtpm(
    h: &HclReport,
    q: &TpmQuoteParts,
    tpm_policy: &TpmPolicy,
    now: UnixTime,
) -> Result<TpmClaims, AzureError> {
    let pcrs: PcrValues = q
        .pcrs
        .iter()
        .enumerate()
        .map(|(i, v)| ((HashAlg::Sha256, i as u32), v.clone()))
        .collect();
    let sig = QuoteSignature::from_bytes(&q.signature, &h.ak)?;
    let ev = QuoteEvidence {
        attest: &q.message,
        signature: &sig,
        ak: &h.ak,
        ak_qualified_name: None,
        pcrs: Some(&pcrs),
        event_log: None,
    };
    Ok(authenticate(&ev, None, tpm_policy, now)?)
}

fn bind(what: &'static str, expected: &[u8; 64], found: &[u8; 64]) -> Result<(), AzureError> {
    if expected == found {
        return Ok(());
    }
    Err(AzureError::Binding {
        what,
        expected: hex::encode(expected),
        found: hex::encode(found),
    })
}

/// Authenticates SNP CVM evidence: the SNP report (by `signer`), REPORTDATA = hash of the HCL
/// variable data, and the vTPM quote by the `HCLAkPub` key it carries (nonce per `tpm_policy`).
pub fn authenticate_snp_vtpm(
    hcl_report: &[u8],
    tpm: &TpmQuoteParts,
    signer: &Signer,
    tpm_policy: &TpmPolicy,
    now: UnixTime,
) -> Result<AzureClaims, AzureError> {
    let h = HclReport::parse(hcl_report)?;
    if h.report_type != HwReportType::Snp {
        return Err(AzureError::ReportType {
            expected: "SEV-SNP",
            found: "TDX",
        });
    }
    let snp = signer.authenticate(&h.hw_report, now)?;
    bind(
        "SNP REPORTDATA = hash(HCL variable data)",
        &h.expected_report_data(),
        &snp.report.report_data.0,
    )?;
    let tpm = vtpm(&h, tpm, tpm_policy, now)?;
    Ok(AzureClaims {
        hcl: hcl_claims(&h),
        snp: Some(snp),
        tdx: None,
        tpm,
    })
}

/// Authenticates TDX CVM evidence: the TD quote (with collateral, or signatures only), its
/// REPORTDATA = hash of the HCL variable data (and equal to the HCL's TDREPORT's), and the
/// vTPM quote by `HCLAkPub`.
pub fn authenticate_tdx_vtpm(
    hcl_report: &[u8],
    td_quote: &[u8],
    tpm: &TpmQuoteParts,
    trust: TdxTrust<'_>,
    tpm_policy: &TpmPolicy,
    now: UnixTime,
) -> Result<AzureClaims, AzureError> {
    let h = HclReport::parse(hcl_report)?;
    if h.report_type != HwReportType::Tdx {
        return Err(AzureError::ReportType {
            expected: "TDX",
            found: "SEV-SNP",
        });
    }
    let tdx = match trust {
        TdxTrust::Collateral(v) => TdxVerdict::Collateral(Box::new(v.authenticate(td_quote, now)?)),
        TdxTrust::SignaturesOnly(root) => {
            let (quote, pck) = veil_attest_dcap::verify_signatures_only(td_quote, root, now)?;
            TdxVerdict::SignaturesOnly {
                quote: Box::new(quote),
                pck,
            }
        }
    };
    let Body::Td(td) = &tdx.quote().body else {
        return Err(AzureError::ReportType {
            expected: "TDX",
            found: "SGX",
        });
    };
    let expected = h.expected_report_data();
    bind(
        "TD quote REPORTDATA = hash(HCL variable data)",
        &expected,
        &td.report_data.0,
    )?;
    if let Some(rd) = h.td_report_data() {
        bind(
            "HCL TDREPORT REPORTDATA = TD quote REPORTDATA",
            &td.report_data.0,
            &rd,
        )?;
    }
    let tpm = vtpm(&h, tpm, tpm_policy, now)?;
    Ok(AzureClaims {
        hcl: hcl_claims(&h),
        snp: None,
        tdx: Some(tdx),
        tpm,
    })
}

/// Checks that the HCL `user-data` starts with `expected` (hex, as the attester writes it).
pub fn check_user_data(claims: &AzureClaims, expected: &[u8]) -> Result<(), AzureError> {
    let want = hex::encode_upper(expected);
    let found = claims.hcl.user_data.clone().unwrap_or_default();
    if found.to_ascii_uppercase().starts_with(&want) {
        return Ok(());
    }
    Err(AzureError::Binding {
        what: "HCL user-data",
        expected: format!("{want}..."),
        found,
    })
}
