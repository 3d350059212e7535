//! `veil attest verify snp`.

use std::path::PathBuf;

use anyhow::anyhow;
use clap::Args;
use veil_attest_core::UnixTime;
use veil_attest_core::x509::Certificate;
use veil_attest_snp as snp;

use super::{Common, PolicyFile, hex_arg, read, rejected, unusable};
use crate::output::Outcome;

#[derive(Args, Debug)]
pub struct SnpArgs {
    /// The raw 1184-byte attestation report.
    #[arg(long, value_name = "FILE")]
    report: PathBuf,
    /// The VCEK or VLEK certificate (DER or PEM).
    #[arg(long, value_name = "FILE", required_unless_present = "cert_table")]
    cert: Option<PathBuf>,
    /// ASK/ASVK (and optionally ARK) in PEM; without it, Veil's pinned AMD roots are used.
    #[arg(long, value_name = "PEM")]
    chain: Option<PathBuf>,
    /// The certificate table of an extended report (VCEK/VLEK, ASK, ARK by GUID).
    #[arg(long, value_name = "FILE")]
    cert_table: Option<PathBuf>,
    /// Expected REPORT_DATA (up to 64 bytes; the rest of the field must be zero).
    #[arg(long, value_name = "HEX")]
    report_data: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Loads the signer: `--cert`, or the VCEK/VLEK of a certificate table; plus the chain.
pub fn signer_and_chain(
    cert: Option<&PathBuf>,
    chain: Option<&PathBuf>,
    table: Option<&PathBuf>,
) -> anyhow::Result<(Certificate, Vec<Certificate>)> {
    let mut intermediates = Vec::new();
    if let Some(path) = chain {
        intermediates = Certificate::parse_many(&read(path)?, "--chain")?;
    }
    let mut signer = None;
    if let Some(path) = table {
        use snp::cert_table::CertKind;
        for e in snp::cert_table::parse_cert_table(&read(path)?)? {
            match e.kind {
                CertKind::Vcek | CertKind::Vlek => {
                    signer = Some(Certificate::from_der(
                        &e.data,
                        "VCEK/VLEK in the certificate table",
                    )?)
                }
                CertKind::Ask | CertKind::Ark => intermediates.push(Certificate::from_der(
                    &e.data,
                    "ASK/ARK in the certificate table",
                )?),
                _ => {}
            }
        }
    }
    if let Some(path) = cert {
        signer = Certificate::parse_many(&read(path)?, "--cert")?
            .into_iter()
            .next();
    }
    let signer =
        signer.ok_or_else(|| anyhow!("no VCEK/VLEK: give --cert or a --cert-table holding one"))?;
    Ok((signer, intermediates))
}

pub fn summary(c: &snp::SnpClaims) -> Vec<(String, String)> {
    vec![
        ("product".into(), c.product.to_string()),
        ("signed by".into(), format!("{:?}", c.signer).to_uppercase()),
        ("report version".into(), c.report.version.to_string()),
        ("vmpl".into(), c.report.vmpl.to_string()),
        ("debug".into(), c.debug.to_string()),
        ("reported tcb".into(), c.reported_tcb.to_string()),
        ("measurement".into(), c.report.measurement.to_string()),
        ("report data".into(), c.report.report_data.to_string()),
        ("host data".into(), c.report.host_data.to_string()),
    ]
}

pub fn verify(a: &SnpArgs, policy: PolicyFile, now: UnixTime) -> Outcome {
    let report = unusable!(read(&a.report));
    let mut policy = policy.snp.unwrap_or_default();
    if let Some(rd) = unusable!(hex_arg("report-data", a.report_data.as_ref())) {
        policy.report_data = Some(rd);
    }
    let (signer, chain) = unusable!(signer_and_chain(
        a.cert.as_ref(),
        a.chain.as_ref(),
        a.cert_table.as_ref()
    ));
    unusable!(snp::AttestationReport::parse(&report));
    let roots = unusable!(snp::AmdRoots::pinned());
    let c = match snp::Signer::establish(&signer, &chain, roots, now)
        .and_then(|s| s.authenticate(&report, now))
    {
        Ok(c) => c,
        Err(e) => return rejected(e, None),
    };
    let claims = unusable!(serde_json::to_value(&c));
    match snp::check_policy(&c, &policy) {
        Ok(()) => Outcome::Verified {
            summary: summary(&c),
            claims,
        },
        Err(e) => rejected(snp::SnpError::Policy(e), Some(claims)),
    }
}
