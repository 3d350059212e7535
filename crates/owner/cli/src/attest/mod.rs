//! `veil attest`: offline verification and inspection of evidence files.

mod azure;
mod dcap;
mod inspect;
mod snp;
mod tpm;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde::Deserialize;
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;

use crate::output::{self, Format, Outcome};

#[derive(Subcommand, Debug)]
pub enum AttestCommand {
    /// Verify evidence against endorsements and reference values.
    #[command(subcommand)]
    Verify(Box<VerifyCommand>),
    /// Pretty-print any evidence file Veil can parse.
    Inspect {
        /// The file (SNP report, DCAP quote, TPMS_ATTEST, HCL report, event log, evidence
        /// JSON, certificate, CRL).
        file: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum VerifyCommand {
    /// An AMD SEV-SNP attestation report.
    Snp(snp::SnpArgs),
    /// An Intel TDX quote (v4 or v5).
    Tdx(dcap::DcapArgs),
    /// An Intel SGX quote (v3).
    Sgx(dcap::DcapArgs),
    /// A TPM 2.0 quote.
    Tpm(tpm::TpmArgs),
    /// Azure SEV-SNP confidential VM evidence (HCL report + vTPM quote).
    AzSnpVtpm(azure::AzSnpArgs),
    /// Azure TDX confidential VM evidence (HCL report + TD quote + vTPM quote).
    AzTdxVtpm(azure::AzTdxArgs),
}

/// Options every verification takes.
#[derive(Args, Debug)]
pub struct Common {
    /// Verify as of this time (RFC 3339), instead of now.
    #[arg(long, value_name = "RFC3339")]
    as_of: Option<String>,
    /// Reference values (YAML or JSON), with a section per TEE (`snp:`, `tdx:`, `sgx:`, `tpm:`).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

/// A reference-values file: one optional section per TEE.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    #[serde(default)]
    pub snp: Option<veil_attest_snp::SnpPolicy>,
    #[serde(default)]
    pub tdx: Option<veil_attest_dcap::DcapPolicy>,
    #[serde(default)]
    pub sgx: Option<veil_attest_dcap::DcapPolicy>,
    #[serde(default)]
    pub tpm: Option<veil_attest_tpm::TpmPolicy>,
}

pub fn run(cmd: AttestCommand) -> ExitCode {
    match cmd {
        AttestCommand::Verify(v) => verify(*v),
        AttestCommand::Inspect { file } => match inspect::inspect(&file) {
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
        VerifyCommand::Tdx(a) => ("tdx", &a.common),
        VerifyCommand::Sgx(a) => ("sgx", &a.common),
        VerifyCommand::Tpm(a) => ("tpm", &a.common),
        VerifyCommand::AzSnpVtpm(a) => ("az-snp-vtpm", &a.common),
        VerifyCommand::AzTdxVtpm(a) => ("az-tdx-vtpm", &a.common),
    };
    let now = match as_of(common) {
        Ok(t) => t,
        Err(e) => return output::finish(tee, UnixTime(0), common.output, Outcome::Unusable(e)),
    };
    let policy = match load_policy(common.policy.as_deref()) {
        Ok(p) => p,
        Err(e) => return output::finish(tee, now, common.output, Outcome::Unusable(e)),
    };
    let outcome = match &cmd {
        VerifyCommand::Snp(a) => snp::verify(a, policy, now),
        VerifyCommand::Tdx(a) => dcap::verify(a, true, policy, now),
        VerifyCommand::Sgx(a) => dcap::verify(a, false, policy, now),
        VerifyCommand::Tpm(a) => tpm::verify(a, policy, now),
        VerifyCommand::AzSnpVtpm(a) => azure::verify_snp(a, policy, now),
        VerifyCommand::AzTdxVtpm(a) => azure::verify_tdx(a, policy, now),
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

pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
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

pub fn hex_arg(name: &str, value: Option<&String>) -> anyhow::Result<Option<Vec<u8>>> {
    value
        .map(|v| decode_hex(v).with_context(|| format!("--{name} is not hex")))
        .transpose()
}

/// A rejection, with the claims when the evidence was genuine but refused by policy.
pub fn rejected(reason: impl std::fmt::Display, claims: Option<serde_json::Value>) -> Outcome {
    Outcome::Rejected {
        reason: reason.to_string(),
        claims,
    }
}

/// Unusable input: an error in what was given, before any verdict.
macro_rules! unusable {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return $crate::output::Outcome::Unusable(e.into()),
        }
    };
}
pub(crate) use unusable;
