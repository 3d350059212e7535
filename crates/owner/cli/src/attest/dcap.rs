//! `veil attest verify tdx|sgx`.

use std::path::{Path, PathBuf};

use clap::Args;
use veil_attest_core::UnixTime;
use veil_attest_dcap as dcap;

use super::{Common, PolicyFile, hex_arg, read, rejected, unusable};
use crate::output::Outcome;

#[derive(Args, Debug)]
pub struct DcapArgs {
    /// The quote.
    #[arg(long, value_name = "FILE")]
    quote: PathBuf,
    /// Collateral: one JSON document (dcap-qvl's QuoteCollateralV3 form), or a directory of
    /// Intel PCS files (tcb_info.json, tcb_info_issuer_chain.pem, qe_identity.json,
    /// qe_identity_issuer_chain.pem, pck_crl.der, pck_crl_issuer_chain.pem, root_crl.der).
    #[arg(long, value_name = "JSON_OR_DIR")]
    collateral: PathBuf,
    /// Expected REPORTDATA (up to 64 bytes; the rest of the field must be zero).
    #[arg(long, value_name = "HEX")]
    report_data: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Reads collateral from a JSON file or a PCS directory.
pub fn load_collateral(path: &Path) -> anyhow::Result<dcap::Collateral> {
    if path.is_dir() {
        let f = |n: &str| read(&path.join(n));
        let (a, b, c, d, e, g, h) = (
            f("tcb_info.json")?,
            f("tcb_info_issuer_chain.pem")?,
            f("qe_identity.json")?,
            f("qe_identity_issuer_chain.pem")?,
            f("pck_crl.der")?,
            f("pck_crl_issuer_chain.pem")?,
            f("root_crl.der")?,
        );
        Ok(dcap::Collateral::from_pcs(&dcap::PcsFiles {
            tcb_info: &a,
            tcb_info_issuer_chain: &b,
            qe_identity: &c,
            qe_identity_issuer_chain: &d,
            pck_crl: &e,
            pck_crl_issuer_chain: &g,
            root_crl: &h,
        })?)
    } else {
        Ok(dcap::Collateral::from_json(&read(path)?)?)
    }
}

/// Verifies collateral against the pinned Intel root; unusable collateral is an input error.
pub fn verifier(path: &Path, now: UnixTime) -> Result<dcap::QuoteVerifier, Outcome> {
    let collateral = load_collateral(path).map_err(Outcome::Unusable)?;
    let root = dcap::intel_root().map_err(|e| Outcome::Unusable(e.into()))?;
    match dcap::VerifiedCollateral::verify(&collateral, &root, now) {
        Ok(v) => Ok(dcap::QuoteVerifier::new(v)),
        Err(e) if e.is_unusable_input() => Err(Outcome::Unusable(e.into())),
        Err(e) => Err(rejected(format!("collateral: {e}"), None)),
    }
}

pub fn summary(c: &dcap::DcapClaims) -> Vec<(String, String)> {
    let mut s = vec![
        ("tcb status".into(), c.tcb.status.to_string()),
        (
            "advisories".into(),
            if c.tcb.advisory_ids.is_empty() {
                "none".into()
            } else {
                c.tcb.advisory_ids.join(", ")
            },
        ),
        ("quote version".into(), c.quote.header.version.to_string()),
        ("fmspc".into(), c.pck.fmspc.to_string()),
    ];
    match &c.quote.body {
        dcap::Body::Td(td) => {
            s.push(("mr_td".into(), td.mr_td.to_string()));
            for (i, r) in td.rtmr.iter().enumerate() {
                s.push((format!("rtmr{i}"), r.to_string()));
            }
            s.push(("debug".into(), td.debug().to_string()));
        }
        dcap::Body::Sgx(r) => {
            s.push(("mr_enclave".into(), r.mr_enclave.to_string()));
            s.push(("mr_signer".into(), r.mr_signer.to_string()));
            s.push((
                "isv_prod_id/svn".into(),
                format!("{}/{}", r.isv_prod_id, r.isv_svn),
            ));
            s.push(("debug".into(), r.debug().to_string()));
        }
    }
    s.push(("report data".into(), c.quote.body.report_data().to_string()));
    s
}

pub fn verify(a: &DcapArgs, tdx: bool, policy: PolicyFile, now: UnixTime) -> Outcome {
    let quote = unusable!(read(&a.quote));
    let parsed = unusable!(dcap::Quote::parse(&quote));
    if parsed.is_tdx() != tdx {
        return Outcome::Unusable(anyhow::anyhow!(
            "{} is {} quote; use `veil attest verify {}`",
            a.quote.display(),
            if parsed.is_tdx() { "a TDX" } else { "an SGX" },
            if parsed.is_tdx() { "tdx" } else { "sgx" }
        ));
    }
    let mut policy = if tdx { policy.tdx } else { policy.sgx }.unwrap_or_default();
    if let Some(rd) = unusable!(hex_arg("report-data", a.report_data.as_ref())) {
        policy.report_data = Some(dcap::HexBytes(rd));
    }
    let v = match verifier(&a.collateral, now) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let c = match v.authenticate(&quote, now) {
        Ok(c) => c,
        Err(e) if e.is_unusable_input() => return Outcome::Unusable(e.into()),
        Err(e) => return rejected(e, None),
    };
    let claims = unusable!(serde_json::to_value(&c));
    match dcap::check_policy(&c, &policy) {
        Ok(()) => Outcome::Verified {
            summary: summary(&c),
            claims,
        },
        Err(e) => rejected(dcap::DcapError::Policy(e), Some(claims)),
    }
}
