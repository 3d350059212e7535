//! `veil attest`: offline verification and inspection of evidence files.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use serde::Deserialize;
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;
use veil_attest_core::x509::Certificate;
use veil_attest_snp as snp;

use crate::output::{self, Format, Outcome};

#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Verify evidence against endorsements and reference values.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Pretty-print any evidence file Veil can parse.
    Inspect {
        /// The file (SNP report, certificate, ...).
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum VerifyCommand {
    /// An AMD SEV-SNP attestation report.
    Snp(SnpArgs),
}

/// Options every verification takes.
#[derive(Args, Debug)]
pub struct Common {
    /// Verify as of this time (RFC 3339), instead of now.
    #[arg(long, value_name = "RFC3339")]
    as_of: Option<String>,
    /// Reference values (YAML or JSON), with a section per TEE (`snp:`, ...).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

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
    common: Common,
}

/// A reference-values file: one optional section per TEE.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    snp: Option<snp::SnpPolicy>,
}

pub fn run(cmd: AttestCommand) -> ExitCode {
    match cmd {
        AttestCommand::Verify(v) => verify(v),
        AttestCommand::Inspect { file } => match inspect(&file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(output::EXIT_UNUSABLE)
            }
        },
    }
}

fn verify(cmd: VerifyCommand) -> ExitCode {
    let (tee, common) = match &cmd {
        VerifyCommand::Snp(a) => ("snp", &a.common),
    };
    let now = match as_of(common) {
        Ok(t) => t,
        Err(e) => return output::finish(tee, UnixTime(0), common.output, Outcome::Unusable(e)),
    };
    let outcome = match &cmd {
        VerifyCommand::Snp(a) => verify_snp(a, now),
    };
    output::finish(tee, now, common.output, outcome)
}

fn as_of(common: &Common) -> anyhow::Result<UnixTime> {
    match &common.as_of {
        Some(s) => Ok(UnixTime::parse_rfc3339(s)?),
        None => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock is before 1970")?
                .as_secs();
            Ok(UnixTime(
                i64::try_from(secs).context("system clock out of range")?,
            ))
        }
    }
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn load_policy(path: Option<&Path>) -> anyhow::Result<PolicyFile> {
    let Some(path) = path else {
        return Ok(PolicyFile::default());
    };
    let text = read(path)?;
    // YAML is a superset of JSON: one parser reads both.
    serde_norway::from_slice(&text)
        .with_context(|| format!("{} is not a valid reference-values file", path.display()))
}

fn hex_arg(name: &str, value: Option<&String>) -> anyhow::Result<Option<Vec<u8>>> {
    value
        .map(|v| decode_hex(v).with_context(|| format!("--{name}")))
        .transpose()
}

/// Unusable input: an error in what was given, before any verdict.
macro_rules! unusable {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return Outcome::Unusable(e.into()),
        }
    };
}

fn verify_snp(a: &SnpArgs, now: UnixTime) -> Outcome {
    let report = unusable!(read(&a.report));
    let mut policy = unusable!(load_policy(a.common.policy.as_deref()))
        .snp
        .unwrap_or_default();
    if let Some(rd) = unusable!(hex_arg("report-data", a.report_data.as_ref())) {
        policy.report_data = Some(rd);
    }
    let mut chain = Vec::new();
    if let Some(path) = &a.chain {
        chain = unusable!(Certificate::parse_many(&unusable!(read(path)), "--chain"));
    }
    let mut signer = None;
    if let Some(path) = &a.cert_table {
        let table = unusable!(read(path));
        let entries = unusable!(snp::cert_table::parse_cert_table(&table));
        for e in entries {
            use snp::cert_table::CertKind;
            match e.kind {
                CertKind::Vcek | CertKind::Vlek => {
                    signer = Some(unusable!(Certificate::from_der(
                        &e.data,
                        "VCEK/VLEK in the certificate table"
                    )));
                }
                CertKind::Ask | CertKind::Ark => {
                    chain.push(unusable!(Certificate::from_der(
                        &e.data,
                        "ASK/ARK in the certificate table"
                    )));
                }
                _ => {}
            }
        }
    }
    if let Some(path) = &a.cert {
        signer = Some(unusable!(
            Certificate::parse_many(&unusable!(read(path)), "--cert").map(|mut v| v.remove(0))
        ));
    }
    let Some(signer) = signer else {
        return Outcome::Unusable(anyhow!(
            "no VCEK/VLEK: give --cert or a --cert-table holding one"
        ));
    };
    if let Err(e) = snp::AttestationReport::parse(&report) {
        return Outcome::Unusable(e.into());
    }
    let roots = unusable!(snp::AmdRoots::pinned());
    let authenticated = snp::Signer::establish(&signer, &chain, roots, now)
        .and_then(|s| s.authenticate(&report, now));
    let c = match authenticated {
        Ok(c) => c,
        Err(e) => return rejected(e, None),
    };
    let claims = unusable!(serde_json::to_value(&c));
    match snp::check_policy(&c, &policy) {
        Ok(()) => Outcome::Verified {
            summary: vec![
                ("product".into(), c.product.to_string()),
                ("signed by".into(), format!("{:?}", c.signer).to_uppercase()),
                ("report version".into(), c.report.version.to_string()),
                ("vmpl".into(), c.report.vmpl.to_string()),
                ("debug".into(), c.debug.to_string()),
                ("reported tcb".into(), c.reported_tcb.to_string()),
                ("measurement".into(), c.report.measurement.to_string()),
                ("report data".into(), c.report.report_data.to_string()),
                ("host data".into(), c.report.host_data.to_string()),
            ],
            claims,
        },
        Err(e) => rejected(snp::SnpError::Policy(e), Some(claims)),
    }
}

fn rejected(reason: impl std::fmt::Display, claims: Option<serde_json::Value>) -> Outcome {
    Outcome::Rejected {
        reason: reason.to_string(),
        claims,
    }
}

fn inspect(path: &Path) -> anyhow::Result<()> {
    let bytes = read(path)?;
    if bytes.len() == snp::report::REPORT_LEN
        && let Ok(r) = snp::AttestationReport::parse(&bytes)
    {
        println!("AMD SEV-SNP attestation report");
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if let Ok(certs) = Certificate::parse_many(&bytes, "certificate") {
        for c in certs {
            println!("X.509 certificate");
            println!("  subject      {}", c.subject());
            println!("  issuer       {}", c.issuer());
            println!("  serial       {}", hex::encode(c.serial()));
            println!("  valid        {} .. {}", c.not_before(), c.not_after());
            println!("  sha256       {}", hex::encode(c.fingerprint()));
            if let Ok(k) = c.public_key() {
                println!("  key          {}", k.kind());
            }
            for e in c.extensions() {
                println!(
                    "  ext {}{}  {}",
                    e.oid,
                    if e.critical { " (critical)" } else { "" },
                    hex::encode(&e.value)
                );
            }
        }
        return Ok(());
    }
    Err(anyhow!(
        "{}: not a format Veil recognises (SNP report, X.509 certificate)",
        path.display()
    ))
}
