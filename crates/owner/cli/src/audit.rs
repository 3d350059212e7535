//! `veil audit verify`: checks a copy of a tamper-evident log offline, with nothing but the
//! log's verifier key — no live service. Every entry against its tile, every tile against the
//! signed checkpoint; then, as asked, that given entries are in it (with their inclusion
//! proofs) and that checkpoints kept from before are prefixes of it (with consistency proofs,
//! which `--proof-out` writes for other implementations to check).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_tlog::NoteVerifier;
use veil_tlog::verify::verify_export;

use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};

/// `veil audit …`
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Verify a copy of an audit log (its `checkpoint` and `tile/…`, C2SP tlog-tiles) offline.
    Verify(VerifyArgs),
    /// Fetch a copy of a control plane's CAS audit log, verified with the key derived for it
    /// from the master secret (for `veil audit verify` later, anywhere).
    Fetch(crate::cas::FetchArgs),
}

/// `veil audit verify`
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The log's copy: a directory holding `checkpoint` and `tile/`.
    pub dir: PathBuf,
    /// The log's verifier key (`<origin>+<key id>+<base64>`, as the signed cluster report
    /// gives it), or `@FILE` holding it.
    #[arg(long)]
    pub key: String,
    /// A file holding an entry that must be in the log (repeatable).
    #[arg(long)]
    pub entry: Vec<PathBuf>,
    /// A signed checkpoint kept from before: the log must extend it (repeatable).
    #[arg(long)]
    pub older: Vec<PathBuf>,
    /// Write the consistency proof from the (last) older checkpoint here: base64 hashes, one a
    /// line, as Go's sumdb/tlog reads them.
    #[arg(long)]
    pub proof_out: Option<PathBuf>,
    /// Print every entry, one a line.
    #[arg(long)]
    pub entries: bool,
}

/// Runs `veil audit …`.
pub fn run(cmd: AuditCommand) -> ExitCode {
    match cmd {
        AuditCommand::Fetch(a) => crate::cas::fetch(&a),
        AuditCommand::Verify(a) => match verify(&a) {
            Ok(Ok(())) => ExitCode::SUCCESS,
            Ok(Err(why)) => {
                println!("REJECTED  audit log {}", a.dir.display());
                eprintln!("rejected: {why}");
                ExitCode::from(EXIT_REJECTED)
            }
            Err(e) => {
                eprintln!("error: unusable input: {e:#}");
                ExitCode::from(EXIT_UNUSABLE)
            }
        },
    }
}

/// `Err`: unusable input; `Ok(Err)`: the log is refused, and why.
fn verify(a: &VerifyArgs) -> anyhow::Result<Result<(), String>> {
    let key_text = match a.key.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
        None => a.key.clone(),
    };
    let key = NoteVerifier::parse(key_text.trim()).context("the verifier key")?;
    let log = match verify_export(&a.dir, &key) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let c = &log.checkpoint;
    println!("VERIFIED  audit log {}", a.dir.display());
    println!("  origin      {}", c.origin);
    println!("  entries     {}", c.size);
    println!("  root        {}", hex::encode(c.root));
    for path in &a.entry {
        let entry = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        match log.prove_inclusion(&entry) {
            Ok((index, proof)) => println!(
                "  included    {} at {index} (proof of {} hashes)",
                path.display(),
                proof.len()
            ),
            Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
        }
    }
    let mut last_proof = None;
    for path in &a.older {
        let older = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        match log.check_older(&older, &key) {
            Ok((old, proof)) => {
                println!(
                    "  extends     {} ({} entries; proof of {} hashes)",
                    path.display(),
                    old.size,
                    proof.len()
                );
                last_proof = Some(proof);
            }
            Err(e) => return Ok(Err(format!("{}: {e}", path.display()))),
        }
    }
    if let (Some(out), Some(proof)) = (&a.proof_out, last_proof) {
        let text: String = proof
            .iter()
            .map(|h| format!("{}\n", STANDARD.encode(h)))
            .collect();
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    if a.entries {
        for (i, e) in log.entries.iter().enumerate() {
            println!("{i}\t{}", String::from_utf8_lossy(e));
        }
    }
    Ok(Ok(()))
}
