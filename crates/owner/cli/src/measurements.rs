//! `veil measurements`: reference values for Veil nodes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use veil_reference::launch::Launch;
use veil_reference::node_config::AgentConfig;
use veil_reference::{MeasurementSet, ReferenceValues, signing};

use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};

#[derive(Subcommand, Debug)]
pub enum MeasurementsCommand {
    /// Create a signing key: KEY (PKCS#8 PEM, mode 0600) and KEY.pub.
    Keygen {
        /// Where to write the private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
    },
    /// Compute the measurement set a node launch produces and add it to a reference-values file
    /// (created if missing; a set of the same name is replaced, other sets are kept).
    Compute {
        /// The node agent binary.
        #[arg(long, value_name = "FILE")]
        agent: PathBuf,
        /// The agent configuration (YAML, as the node runs it; the reference and owner keys it
        /// names are read too: they are measured).
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// The node image description.
        #[arg(long, value_name = "FILE")]
        image: PathBuf,
        /// Roles the set applies to.
        #[arg(long = "role", value_name = "ROLE", default_values_t = ["control-plane".to_string(), "worker".to_string()])]
        roles: Vec<String>,
        /// Name of the set (e.g. the release).
        #[arg(long)]
        name: String,
        /// Accepted TPM manufacturer root (PEM); repeatable.
        #[arg(long = "tpm-root", value_name = "PEM")]
        tpm_roots: Vec<PathBuf>,
        /// Accept TPMs endorsed by a local software CA (local clusters only; insecure).
        #[arg(long)]
        insecure_local_roots: bool,
        /// The node boots with `veil mini`'s local firmware (its boot chain in PCRs 0-7).
        #[arg(long, conflicts_with = "boot_pcrs")]
        local_firmware: bool,
        /// Pin the boot chain (PCRs 0-7) to these values, read from a known-good node of the
        /// same platform (`tpm2_pcrread` text: `sha256: 0 : 0x…` or `INDEX HEX` lines).
        #[arg(long, value_name = "FILE")]
        boot_pcrs: Option<PathBuf>,
        /// The reference-values file to write.
        #[arg(long, short, value_name = "FILE")]
        output: PathBuf,
    },
    /// Sign a reference-values file: writes FILE.sig (base64 DER, cosign blob format).
    Sign {
        /// Private key (PKCS#8 PEM).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// The reference-values file.
        file: PathBuf,
    },
    /// Verify a reference-values file's signature and contents; lists its sets.
    Verify {
        /// Public key (PEM).
        #[arg(long = "pub", value_name = "FILE")]
        public: PathBuf,
        /// Signature (default: FILE.sig).
        #[arg(long, value_name = "FILE")]
        signature: Option<PathBuf>,
        /// The reference-values file.
        file: PathBuf,
    },
}

fn sig_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

pub fn run(cmd: MeasurementsCommand) -> ExitCode {
    match execute(cmd) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn execute(cmd: MeasurementsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        MeasurementsCommand::Keygen { key } => {
            let (private, public) = signing::generate_key()?;
            crate::init::write_secret(&key, private.as_bytes())?;
            let pub_path = PathBuf::from(format!("{}.pub", key.display()));
            std::fs::write(&pub_path, public)
                .with_context(|| format!("cannot write {}", pub_path.display()))?;
            println!(
                "wrote {} (secret, 0600) and {}",
                key.display(),
                pub_path.display()
            );
        }
        MeasurementsCommand::Compute {
            agent,
            config,
            image,
            roles,
            name,
            tpm_roots,
            insecure_local_roots,
            local_firmware,
            boot_pcrs,
            output,
        } => {
            // What a node measures of its configuration, computed by the same function its
            // firmware and its agent use (the keys it names are read from their files).
            let cfg: AgentConfig = serde_norway::from_slice(&read(&config)?)
                .with_context(|| format!("{}: not an agent configuration", config.display()))?;
            let measured = cfg
                .measured_from_files()
                .with_context(|| format!("{}", config.display()))?;
            let launch = if local_firmware {
                Launch::local(&read(&agent)?, &measured, &read(&image)?)
            } else {
                Launch::measure(&read(&agent)?, &measured, &read(&image)?)
            };
            let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
            let mut set = MeasurementSet::from_launch(&name, &launch, &roles);
            if let Some(file) = &boot_pcrs {
                let text = String::from_utf8(read(file)?).context("--boot-pcrs is not text")?;
                let values = veil_attest_tpm::parse_pcr_text(&text)
                    .with_context(|| format!("{}", file.display()))?;
                let pinned = set.pin_boot_chain(&values);
                if pinned == 0 {
                    bail!("{}: no value for any of PCRs 0-7", file.display());
                }
                println!("boot chain: {pinned} PCR values of PCRs 0-7 pinned");
            }
            let mut doc = if output.exists() {
                ReferenceValues::parse(&read(&output)?)?
            } else {
                ReferenceValues {
                    version: veil_reference::VERSION,
                    insecure_local_roots,
                    tpm_roots: Vec::new(),
                    sets: Vec::new(),
                }
            };
            if insecure_local_roots {
                doc.insecure_local_roots = true;
            }
            for r in &tpm_roots {
                let pem = String::from_utf8(read(r)?).context("--tpm-root is not PEM text")?;
                if !doc.tpm_roots.contains(&pem) {
                    doc.tpm_roots.push(pem);
                }
            }
            doc.upsert(set);
            std::fs::write(&output, doc.to_yaml()?)
                .with_context(|| format!("cannot write {}", output.display()))?;
            for c in &launch.components {
                println!("{:<13} PCR {:>2}  sha256:{}", c.name, c.pcr, c.sha256);
            }
            println!(
                "set `{name}` written to {} ({} sets)",
                output.display(),
                doc.sets.len()
            );
        }
        MeasurementsCommand::Sign { key, file } => {
            let sig = signing::sign(&read(&key)?, &read(&file)?)?;
            // Refuse to sign something that is not a valid document.
            ReferenceValues::parse(&read(&file)?)?;
            let out = sig_path(&file);
            std::fs::write(&out, format!("{sig}\n"))
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("signed {} -> {}", file.display(), out.display());
        }
        MeasurementsCommand::Verify {
            public,
            signature,
            file,
        } => {
            let body = read(&file)?;
            let sig = String::from_utf8(read(&signature.unwrap_or_else(|| sig_path(&file)))?)
                .context("signature file is not text")?;
            if let Err(e) = signing::verify(&read(&public)?, &body, &sig) {
                if matches!(e, signing::SigningError::Mismatch) {
                    eprintln!("rejected: {e}");
                    return Ok(ExitCode::from(EXIT_REJECTED));
                }
                bail!(e);
            }
            let doc = ReferenceValues::parse(&body)?;
            println!("VERIFIED  reference values {}", file.display());
            if doc.insecure_local_roots {
                println!("  WARNING: accepts local (software) TPM roots: for local clusters only");
            }
            for s in &doc.sets {
                let roles: Vec<&str> = s.roles.keys().map(String::as_str).collect();
                println!("  set {:<20} roles {}", s.name, roles.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
