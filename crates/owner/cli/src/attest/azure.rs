//! `veil attest verify az-snp-vtpm|az-tdx-vtpm`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use veil_attest_azure as az;
use veil_attest_core::UnixTime;
use veil_attest_core::x509::Certificate;
use veil_attest_dcap as dcap;
use veil_attest_snp as snp;
use veil_attest_tpm as tpm;

use super::{Common, PolicyFile, hex_arg, read, rejected, unusable};
use crate::output::Outcome;

/// The evidence, as one JSON document or as separate files.
#[derive(Args, Debug)]
pub struct Pieces {
    /// Evidence JSON (Confidential Containers' Azure attester, versions 0, 1 and 2).
    #[arg(long, value_name = "FILE", required_unless_present = "hcl_report")]
    evidence: Option<PathBuf>,
    /// The HCL report (2600 bytes), when not using --evidence.
    #[arg(long, value_name = "FILE", requires_all = ["tpm_quote", "tpm_signature", "pcrs"])]
    hcl_report: Option<PathBuf>,
    /// The vTPM quote's TPMS_ATTEST.
    #[arg(long, value_name = "FILE")]
    tpm_quote: Option<PathBuf>,
    /// The vTPM quote's signature (raw RSA).
    #[arg(long, value_name = "FILE")]
    tpm_signature: Option<PathBuf>,
    /// PCR values, one `[BANK:]INDEX HEX` per line (SHA-256, as quoted).
    #[arg(long, value_name = "FILE")]
    pcrs: Option<PathBuf>,
    /// Expected extraData of the vTPM quote (the verifier's nonce).
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    /// Expected start of the HCL `user-data` (hex).
    #[arg(long, value_name = "HEX")]
    report_data: Option<String>,
}

#[derive(Args, Debug)]
pub struct AzSnpArgs {
    #[command(flatten)]
    pieces: Pieces,
    /// The VCEK (DER or PEM), when the evidence does not carry it.
    #[arg(long, value_name = "FILE")]
    cert: Option<PathBuf>,
    /// ASK (and ARK) in PEM; default: Veil's pinned AMD roots.
    #[arg(long, value_name = "PEM")]
    chain: Option<PathBuf>,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Args, Debug)]
pub struct AzTdxArgs {
    #[command(flatten)]
    pieces: Pieces,
    /// The TD quote, when not using --evidence.
    #[arg(long, value_name = "FILE")]
    td_quote: Option<PathBuf>,
    /// DCAP collateral for the TD quote (JSON or PCS directory).
    #[arg(
        long,
        value_name = "JSON_OR_DIR",
        required_unless_present = "skip_tcb_status"
    )]
    collateral: Option<PathBuf>,
    /// Verify the TD quote's signatures and PCK chain only, without collateral: no CRLs and no
    /// TCB status. The verdict says so.
    #[arg(long)]
    skip_tcb_status: bool,
    #[command(flatten)]
    pub common: Common,
}

fn load(p: &Pieces) -> anyhow::Result<az::AzureEvidence> {
    if let Some(e) = &p.evidence {
        return Ok(az::AzureEvidence::from_json(&read(e)?)?);
    }
    let need = |x: &Option<PathBuf>, n: &str| x.clone().ok_or_else(|| anyhow!("--{n} is required"));
    let text = String::from_utf8(read(&need(&p.pcrs, "pcrs")?)?)?;
    let values = tpm::parse_pcr_text(&text)?;
    let pcrs: Vec<Vec<u8>> = (0..24)
        .map_while(|i| values.get(&(tpm::HashAlg::Sha256, i)).cloned())
        .collect();
    Ok(az::AzureEvidence {
        version: 0,
        tpm_quote: az::TpmQuoteParts {
            message: read(&need(&p.tpm_quote, "tpm-quote")?)?,
            signature: read(&need(&p.tpm_signature, "tpm-signature")?)?,
            pcrs,
        },
        hcl_report: read(&need(&p.hcl_report, "hcl-report")?)?,
        vcek: None,
        td_quote: None,
    })
}

fn tpm_policy(p: &Pieces, policy: &PolicyFile) -> anyhow::Result<tpm::TpmPolicy> {
    let mut t = policy.tpm.clone().unwrap_or_default();
    if let Some(n) = hex_arg("nonce", p.nonce.as_ref())? {
        t.nonce = Some(tpm::HexValue(n));
    }
    Ok(t)
}

fn summary(c: &az::AzureClaims) -> Vec<(String, String)> {
    let mut s = vec![
        (
            "hcl report".into(),
            format!(
                "version {}, {:?} hardware report",
                c.hcl.version, c.hcl.report_type
            ),
        ),
        (
            "binding".into(),
            format!(
                "REPORTDATA = {:?}(variable data) = {}",
                c.hcl.hash_type, c.hcl.var_data_digest
            ),
        ),
    ];
    if let Some(snp) = &c.snp {
        s.extend(super::snp::summary(snp));
    }
    match &c.tdx {
        Some(az::TdxVerdict::Collateral(d)) => s.extend(super::dcap::summary(d)),
        Some(az::TdxVerdict::SignaturesOnly { pck, .. }) => {
            s.push((
                "tcb status".into(),
                "UNKNOWN (verified without collateral)".into(),
            ));
            s.push(("fmspc".into(), pck.fmspc.to_string()));
        }
        None => {}
    }
    s.extend(
        super::tpm::summary(&c.tpm)
            .into_iter()
            .map(|(k, v)| (format!("vtpm {k}"), v)),
    );
    s
}

fn finish(
    c: az::AzureClaims,
    p: &Pieces,
    policy: &PolicyFile,
    tpm_policy: &tpm::TpmPolicy,
    dcap_policy: Option<&dcap::DcapPolicy>,
) -> Outcome {
    let claims = unusable!(serde_json::to_value(&c));
    let user_data = unusable!(hex_arg("report-data", p.report_data.as_ref()));
    let mut result: Result<(), String> = Ok(());
    if let (Some(s), Some(sp)) = (&c.snp, &policy.snp) {
        let mut sp = sp.clone();
        sp.report_data = None; // REPORTDATA is the HCL binding here, checked already.
        result = result
            .and(snp::check_policy(s, &sp).map_err(|e| format!("SEV-SNP report: policy: {e}")));
    }
    if let (Some(az::TdxVerdict::Collateral(d)), Some(dp)) = (&c.tdx, dcap_policy) {
        let mut dp = dp.clone();
        dp.report_data = None;
        result =
            result.and(dcap::check_policy(d, &dp).map_err(|e| format!("TD quote: policy: {e}")));
    }
    result = result
        .and(tpm::check_policy(&c.tpm, tpm_policy).map_err(|e| format!("vTPM quote: policy: {e}")));
    if let Some(u) = user_data {
        result = result.and(az::check_user_data(&c, &u).map_err(|e| e.to_string()));
    }
    match result {
        Ok(()) => Outcome::Verified {
            summary: summary(&c),
            claims,
        },
        Err(reason) => rejected(reason, Some(claims)),
    }
}

fn outcome_of(e: az::AzureError) -> Outcome {
    match e {
        az::AzureError::Evidence { .. } | az::AzureError::Malformed(_) => {
            Outcome::Unusable(e.into())
        }
        other => rejected(other, None),
    }
}

pub fn verify_snp(a: &AzSnpArgs, policy: PolicyFile, now: UnixTime) -> Outcome {
    let ev = unusable!(load(&a.pieces));
    let tpm_policy = unusable!(tpm_policy(&a.pieces, &policy));
    let vcek = match (&a.cert, &ev.vcek) {
        (Some(path), _) => unusable!(read(path)),
        (None, Some(v)) => v.clone(),
        (None, None) => {
            return Outcome::Unusable(anyhow!("no VCEK: the evidence carries none, give --cert"));
        }
    };
    let signer_cert = unusable!(Certificate::parse_many(&vcek, "VCEK")).remove(0);
    let chain = match &a.chain {
        Some(p) => unusable!(Certificate::parse_many(&unusable!(read(p)), "--chain")),
        None => Vec::new(),
    };
    let roots = unusable!(snp::AmdRoots::pinned());
    let signer = match snp::Signer::establish(&signer_cert, &chain, roots, now) {
        Ok(s) => s,
        Err(e) => return rejected(format!("SEV-SNP report: {e}"), None),
    };
    match az::authenticate_snp_vtpm(&ev.hcl_report, &ev.tpm_quote, &signer, &tpm_policy, now) {
        Ok(c) => finish(c, &a.pieces, &policy, &tpm_policy, None),
        Err(e) => outcome_of(e),
    }
}

pub fn verify_tdx(a: &AzTdxArgs, policy: PolicyFile, now: UnixTime) -> Outcome {
    let mut ev = unusable!(load(&a.pieces));
    if let Some(q) = &a.td_quote {
        ev.td_quote = Some(unusable!(read(q)));
    }
    let Some(td_quote) = ev.td_quote.clone() else {
        return Outcome::Unusable(anyhow!(
            "no TD quote: the evidence carries none, give --td-quote"
        ));
    };
    let tpm_policy = unusable!(tpm_policy(&a.pieces, &policy));
    let root = unusable!(dcap::intel_root());
    let verifier = match &a.collateral {
        Some(path) => match super::dcap::verifier(path, now) {
            Ok(v) => Some(v),
            Err(o) => return o,
        },
        None => None,
    };
    let trust = match &verifier {
        Some(v) => az::TdxTrust::Collateral(v),
        None => {
            eprintln!(
                "warning: --skip-tcb-status: the TD quote's TCB status and revocation are not checked"
            );
            az::TdxTrust::SignaturesOnly(&root)
        }
    };
    match az::authenticate_tdx_vtpm(
        &ev.hcl_report,
        &td_quote,
        &ev.tpm_quote,
        trust,
        &tpm_policy,
        now,
    ) {
        Ok(c) => finish(
            c,
            &a.pieces,
            &policy,
            &tpm_policy,
            Some(&policy.tdx.clone().unwrap_or_default()),
        ),
        Err(e) => outcome_of(e),
    }
}
