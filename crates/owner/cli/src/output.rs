//! Verdict reporting shared by every `veil attest verify` form.

use std::process::ExitCode;

use clap::ValueEnum;
use serde::Serialize;
use serde_json::Value;

/// Exit status for rejected evidence.
pub const EXIT_REJECTED: u8 = 1;
/// Exit status for unusable input.
pub const EXIT_UNUSABLE: u8 = 2;

/// Output format.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
pub enum Format {
    /// A human-readable summary.
    #[default]
    Text,
    /// One JSON document: verdict, reason, claims.
    Json,
}

/// The result of one verification.
#[derive(Debug)]
pub enum Outcome {
    /// Evidence verified; claims and the summary lines to print.
    Verified {
        claims: Value,
        summary: Vec<(String, String)>,
    },
    /// Evidence rejected, with the reason (and the claims, when the evidence was genuine
    /// but the reference values refused it).
    Rejected {
        reason: String,
        claims: Option<Value>,
    },
    /// The input could not be used.
    Unusable(anyhow::Error),
}

#[derive(Serialize)]
struct Report<'a> {
    verdict: &'a str,
    tee: &'a str,
    as_of: String,
    reason: Option<String>,
    claims: Option<&'a Value>,
}

/// Prints the outcome and maps it to the exit status.
pub fn finish(
    tee: &str,
    as_of: veil_attest_core::UnixTime,
    format: Format,
    outcome: Outcome,
) -> ExitCode {
    let (verdict, reason, claims, code) = match &outcome {
        Outcome::Verified { claims, .. } => ("verified", None, Some(claims), 0),
        Outcome::Rejected { reason, claims } => (
            "rejected",
            Some(reason.clone()),
            claims.as_ref(),
            EXIT_REJECTED,
        ),
        Outcome::Unusable(e) => ("unusable", Some(format!("{e:#}")), None, EXIT_UNUSABLE),
    };
    match format {
        Format::Json => {
            let r = Report {
                verdict,
                tee,
                as_of: as_of.to_string(),
                reason: reason.clone(),
                claims,
            };
            match serde_json::to_string_pretty(&r) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot encode the verdict as JSON: {e}"),
            }
            if let Some(reason) = &reason {
                eprintln!("{verdict}: {reason}");
            }
        }
        Format::Text => match &outcome {
            Outcome::Verified { summary, .. } => {
                println!("VERIFIED  {tee} evidence, as of {as_of}");
                let width = summary.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
                for (k, v) in summary {
                    println!("  {k:<width$}  {v}");
                }
            }
            Outcome::Rejected { reason, .. } => {
                println!("REJECTED  {tee} evidence, as of {as_of}");
                eprintln!("rejected: {reason}");
            }
            Outcome::Unusable(e) => eprintln!("error: unusable input: {e:#}"),
        },
    }
    ExitCode::from(code)
}
