//! `veil cas …`: the Configuration and Attestation Service's owner and session authors, and
//! `veil audit fetch`: a copy of a control plane's CAS audit log, verified.
//!
//! The control plane is attested first, as every `veil` command does (the workspace gives the
//! reference values and TPM roots); what the CAS then does is authorised by the CAS's own
//! keys — Ed25519 keys of `veil cas keygen`, not the cluster owner's.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use clap::{Args, Subcommand};
use veil_appraisal::Membership;
use veil_attest_core::bytes::decode_hex;
use veil_cas::policy::{self, Action, Rule};
use veil_wire::proto::{CasAnswer, CasCall, CasSignature};

use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};
use crate::workspace::{Workspace, attest_recorded};

/// Which control plane, and the trust to attest it.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The workspace whose reference values and TPM roots attest the control plane.
    #[arg(long, default_value = "veil-mini")]
    pub workspace: PathBuf,
    /// The control plane to ask (its index in the workspace).
    #[arg(long, default_value_t = 0)]
    pub control_plane: usize,
}

/// `veil cas …`
#[derive(Subcommand, Debug)]
pub enum CasCommand {
    /// Make a new Ed25519 key (PKCS#8 PEM) for the CAS's owner or a session's rules; prints
    /// its public key (base64), as sessions name it.
    Keygen {
        /// Where to write the private key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Make this key the CAS's owner: the only one that creates top-level sessions (once).
    Provision {
        /// The owner's key.
        #[arg(long)]
        key: PathBuf,
        #[command(flatten)]
        target: Target,
    },
    /// Create (or, with --update, replace) a session from its document (YAML or JSON).
    Put {
        /// The session document.
        document: PathBuf,
        /// Replace the current session (the document names it as its predecessor).
        #[arg(long)]
        update: bool,
        /// A key that signs (repeatable, for rules that need several).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Print a session's document (never its secrets' values).
    Read {
        /// The session's name.
        name: String,
        /// A key that signs (repeatable).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
    /// Write a sealed backup of every session and secret: to a file, or as a snapshot to S3.
    Backup {
        /// Where to write it.
        #[arg(long, required_unless_present = "s3")]
        out: Option<PathBuf>,
        #[command(flatten)]
        s3: S3Args,
        #[command(flatten)]
        target: Target,
    },
    /// Replace every session and secret with a backup's (signed by its owner): a file, or the
    /// newest snapshot in S3.
    Restore {
        /// The backup.
        #[arg(required_unless_present = "s3")]
        backup: Option<PathBuf>,
        #[command(flatten)]
        s3: S3Args,
        /// The owner's key (repeatable).
        #[arg(long, required = true)]
        key: Vec<PathBuf>,
        #[command(flatten)]
        target: Target,
    },
}

/// Where snapshots go in S3 (credentials from `VEIL_S3_ACCESS_KEY` and `VEIL_S3_SECRET_KEY`).
#[derive(Args, Debug, Clone)]
pub struct S3Args {
    /// The S3 endpoint (`host:port`, plain HTTP: a proxy such as `veil-s3-proxy` in front).
    #[arg(long)]
    pub s3: Option<String>,
    /// The bucket.
    #[arg(long, default_value = "veil-cas")]
    pub bucket: String,
    /// The key prefix (default: `cas/<cluster ID>/`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// How many snapshots to keep.
    #[arg(long, default_value_t = 7)]
    pub keep: usize,
}

impl S3Args {
    fn snapshots(
        &self,
        cluster_id: &str,
    ) -> anyhow::Result<Option<veil_s3_proxy::snapshots::Snapshots>> {
        let Some(endpoint) = &self.s3 else {
            return Ok(None);
        };
        let var = |n: &str| std::env::var(n).with_context(|| format!("{n} is not set"));
        let creds = veil_s3_proxy::sigv4::Credentials::new(
            var("VEIL_S3_ACCESS_KEY")?,
            var("VEIL_S3_SECRET_KEY")?,
        );
        Ok(Some(veil_s3_proxy::snapshots::Snapshots {
            client: veil_s3_proxy::client::S3Client::new(endpoint.clone(), creds),
            bucket: self.bucket.clone(),
            prefix: self
                .prefix
                .clone()
                .unwrap_or_else(|| format!("cas/{cluster_id}/")),
            keep: self.keep,
        }))
    }
}

/// `veil audit fetch`
#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Where to write the copy (`checkpoint`, `tile/…`, and `key`: the verifier key).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub target: Target,
}

/// An Ed25519 key from a PKCS#8 PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<Ed25519KeyPair> {
    let text = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let der = pem::parse(&text)
        .with_context(|| format!("{}: not PEM", path.display()))?
        .into_contents();
    Ed25519KeyPair::from_pkcs8(&der)
        .or_else(|_| Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
        .map_err(|_| anyhow::anyhow!("{}: not an Ed25519 PKCS#8 key", path.display()))
}

fn public(k: &Ed25519KeyPair) -> String {
    STANDARD.encode(k.public_key().as_ref())
}

fn sign(keys: &[Ed25519KeyPair], payload: &[u8]) -> Vec<CasSignature> {
    keys.iter()
        .map(|k| CasSignature {
            key: public(k),
            signature: STANDARD.encode(k.sign(payload).as_ref()),
        })
        .collect()
}

fn keys(paths: &[PathBuf]) -> anyhow::Result<Vec<Ed25519KeyPair>> {
    paths.iter().map(|p| load_key(p)).collect()
}

/// Runs `f` with an attested session to the target control plane.
fn with_cas<T>(
    t: &Target,
    f: impl AsyncFnOnce(
        &mut veil_client::Session<tokio::net::TcpStream>,
        &Workspace,
        [u8; 32],
    ) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let ws = crate::workspace::load(&t.workspace)?;
    let cid = decode_hex(&ws.record.cluster_id)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut a = attest_recorded(&ws, t.control_plane, Membership::Member(cid)).await?;
        f(&mut a.session, &ws, a.ek).await
    })
}

async fn call(
    s: &mut veil_client::Session<tokio::net::TcpStream>,
    c: CasCall,
) -> anyhow::Result<CasAnswer> {
    Ok(s.cas(c).await?)
}

/// Runs `veil cas …`.
pub fn run(cmd: CasCommand) -> ExitCode {
    match cas(cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let refused = e
                .downcast_ref::<veil_client::ClientError>()
                .is_some_and(|c| matches!(c, veil_client::ClientError::Refused(_)));
            eprintln!("{}: {e:#}", if refused { "refused" } else { "error" });
            ExitCode::from(if refused {
                EXIT_REJECTED
            } else {
                EXIT_UNUSABLE
            })
        }
    }
}

fn cas(cmd: CasCommand) -> anyhow::Result<()> {
    match cmd {
        CasCommand::Keygen { out } => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
                .map_err(|_| anyhow::anyhow!("cannot generate a key"))?;
            let text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
            write_private(&out, text.as_bytes())?;
            println!("{}", public(&load_key(&out)?));
            Ok(())
        }
        CasCommand::Provision { key, target } => {
            let k = load_key(&key)?;
            let rule = Rule {
                keys: vec![public(&k)],
                require: None,
            };
            let payload = policy::payload(Action::Provision, "-", &policy::rule_hash(&rule)?);
            let c = CasCall::Provision {
                owner: serde_json::to_string(&rule)?,
                signatures: sign(std::slice::from_ref(&k), &payload),
            };
            with_cas(&target, async |s, _, _| call(s, c).await)?;
            println!("provisioned: owner {}", public(&k));
            Ok(())
        }
        CasCommand::Put {
            document,
            update,
            key,
            target,
        } => {
            let text = std::fs::read_to_string(&document)
                .with_context(|| format!("cannot read {}", document.display()))?;
            let session = veil_cas::Session::parse(text.as_bytes())?;
            let hash = session.hash()?;
            let action = if update {
                Action::Update
            } else {
                Action::Create
            };
            let payload = policy::payload(action, &session.name, &hash.0);
            let c = CasCall::Put {
                document: text,
                update,
                signatures: sign(&keys(&key)?, &payload),
            };
            match with_cas(&target, async |s, _, _| call(s, c).await)? {
                CasAnswer::Stored { hash } => println!("{} {hash}", session.name),
                a => bail!("unexpected answer {a:?}"),
            }
            Ok(())
        }
        CasCommand::Read { name, key, target } => {
            let keys = keys(&key)?;
            let doc = with_cas(&target, async |s, _, _| {
                let CasAnswer::Nonce { nonce } = call(s, CasCall::Nonce).await? else {
                    bail!("no nonce");
                };
                let challenge: [u8; 32] = decode_hex(&nonce)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("a nonce of the wrong size"))?;
                let payload = policy::payload(Action::Read, &name, &challenge);
                match call(
                    s,
                    CasCall::Read {
                        name: name.clone(),
                        challenge: nonce,
                        signatures: sign(&keys, &payload),
                    },
                )
                .await?
                {
                    CasAnswer::Session { document } => Ok(document),
                    a => bail!("unexpected answer {a:?}"),
                }
            })?;
            println!("{doc}");
            Ok(())
        }
        CasCommand::Backup { out, s3, target } => {
            let (bytes, cid) = with_cas(&target, async |s, ws, _| {
                match call(s, CasCall::Backup).await? {
                    CasAnswer::Backup { backup } => {
                        Ok((STANDARD.decode(backup)?, ws.record.cluster_id.clone()))
                    }
                    a => bail!("unexpected answer {a:?}"),
                }
            })?;
            if let Some(out) = out {
                std::fs::write(&out, &bytes)
                    .with_context(|| format!("cannot write {}", out.display()))?;
                println!("backup: {} bytes to {}", bytes.len(), out.display());
            }
            if let Some(snaps) = s3.snapshots(&cid)? {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                let len = bytes.len();
                let now = u64::try_from(crate::clock::now().0).unwrap_or(0);
                let (key, deleted) = rt
                    .block_on(snaps.take(bytes, now))
                    .map_err(anyhow::Error::msg)?;
                println!("backup: {len} bytes to s3 {}/{key}", snaps.bucket);
                for d in deleted {
                    println!("  deleted (beyond {}): {d}", snaps.keep);
                }
            }
            Ok(())
        }
        CasCommand::Restore {
            backup,
            s3,
            key,
            target,
        } => {
            let bytes = match (&backup, s3.s3.is_some()) {
                (Some(path), _) => std::fs::read(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
                (None, _) => {
                    let ws = crate::workspace::load(&target.workspace)?;
                    let snaps = s3
                        .snapshots(&ws.record.cluster_id)?
                        .context("give a backup file or --s3")?;
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let (k, b) = rt
                        .block_on(snaps.latest())
                        .map_err(anyhow::Error::msg)?
                        .with_context(|| {
                            format!("no snapshot in {}/{}", snaps.bucket, snaps.prefix)
                        })?;
                    println!("restoring s3 {}/{k}", snaps.bucket);
                    b
                }
            };
            let digest: [u8; 32] = sha2::Digest::finalize(sha2::Digest::chain_update(
                <sha2::Sha256 as sha2::Digest>::new(),
                &bytes,
            ))
            .into();
            let c = CasCall::Restore {
                backup: STANDARD.encode(&bytes),
                signatures: sign(
                    &keys(&key)?,
                    &policy::payload(Action::Restore, "-", &digest),
                ),
            };
            with_cas(&target, async |s, _, _| call(s, c).await)?;
            println!("restored");
            Ok(())
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)?;
    Ok(())
}

/// The verifier key of the CAS log of the control plane whose EK certificate has SHA-256
/// `ek` (hex), derived from the workspace's master secret.
pub fn derived_log_key(ws: &Path, ek: &str) -> anyhow::Result<veil_tlog::NoteVerifier> {
    let master = crate::workspace::owner_secret(ws, "master-secret")?;
    let salt = crate::workspace::owner_secret(ws, "salt")?;
    let secrets = veil_keys::ClusterSecrets::new(
        veil_keys::SecretBytes::from_slice("master secret", &mut master.to_owned())?,
        salt,
    );
    let node_id = format!("node-{}", ek.get(..12).unwrap_or_default());
    let seed = secrets.derive(&veil_keys::KeyId::node(
        &node_id,
        veil_wire::ids::KEY_CAS_AUDIT_LOG,
    )?)?;
    let cid = secrets.cluster_id()?.to_string();
    let origin = format!(
        "{}/{}/{node_id}",
        veil_wire::ids::CAS_LOG_ORIGIN_PREFIX,
        cid.get(..16).unwrap_or(&cid)
    );
    Ok(veil_tlog::NoteSigner::from_seed(&origin, seed.expose())?.verifier())
}

/// Checks the CAS log head a control plane's signed report names: its key is the one derived
/// for that control plane, its checkpoint signed by it. Returns a line for people.
pub fn check_reported_log(
    ws: &Path,
    ek: &str,
    reported: &veil_wire::report::ReportedCas,
) -> anyhow::Result<String> {
    let derived = derived_log_key(ws, ek)?;
    if derived.to_text() != reported.log_key {
        bail!(
            "the report names the log key {}, the one derived for this control plane is {}",
            reported.log_key,
            derived.to_text()
        );
    }
    let c = veil_tlog::Checkpoint::open(reported.checkpoint.as_bytes(), &derived)?;
    Ok(format!(
        "{} entries, root {}, key {}",
        c.size,
        hex::encode(c.root),
        reported.log_key
    ))
}

/// `veil audit fetch`: every entry of the control plane's CAS log and its checkpoint, written
/// as a tlog-tiles copy and verified with the key the owner derives from the master secret
/// (so the copy is checked against the attested control plane's key, not the key it sent).
pub fn fetch(a: &FetchArgs) -> ExitCode {
    let r = (|| -> anyhow::Result<(String, u64)> {
        let ws = a.target.workspace.clone();
        let (entries, checkpoint, derived) = with_cas(&a.target, async |s, _, ek| {
            // The key this control plane's log must be signed with, from the master secret.
            let derived = derived_log_key(&ws, &hex::encode(ek))?;
            let mut entries: Vec<Vec<u8>> = Vec::new();
            let mut held: Option<(String, u64)> = None;
            loop {
                let start = entries.len() as u64;
                let CasAnswer::Log {
                    verifier_key,
                    checkpoint,
                    entries: page,
                    ..
                } = call(s, CasCall::Log { start }).await?
                else {
                    bail!("unexpected answer");
                };
                if verifier_key != derived.to_text() {
                    bail!(
                        "the control plane's log key {verifier_key} is not the one derived for it ({})",
                        derived.to_text()
                    );
                }
                // The first page's checkpoint is the one copied; later pages only add entries.
                let (cp, size) = match &held {
                    Some(h) => h.clone(),
                    None => {
                        let c = veil_tlog::Checkpoint::open(checkpoint.as_bytes(), &derived)?;
                        held.insert((checkpoint, c.size)).clone()
                    }
                };
                for e in &page {
                    if (entries.len() as u64) < size {
                        entries.push(STANDARD.decode(e)?);
                    }
                }
                if entries.len() as u64 >= size || page.is_empty() {
                    return Ok((entries, cp, derived));
                }
            }
        })?;
        veil_tlog::log::export_entries(&a.out, &entries, &checkpoint)?;
        let v = veil_tlog::verify::verify_export(&a.out, &derived)?;
        std::fs::write(a.out.join("key"), derived.to_text())?;
        Ok((derived.to_text(), v.checkpoint.size))
    })();
    match r {
        Ok((key, size)) => {
            println!("VERIFIED  audit log copy in {}", a.out.display());
            println!("  entries     {size}");
            println!("  key         {key}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rejected: {e:#}");
            ExitCode::from(EXIT_REJECTED)
        }
    }
}
