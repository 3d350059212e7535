//! `veil verify`: whole-cluster attestation, live or from a saved report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use clap::Args;
use serde::{Deserialize, Serialize};
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;
use veil_attest_core::x509::Certificate;
use veil_cluster::Session;
use veil_cluster::report::{Expectations, SignedReport, verify_report};
use veil_node_attest::{Membership, TpmAppraiser};
use veil_reference::{ReferenceValues, signing};

use crate::clock::now;
use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE, Format};

/// The owner's record of a cluster, kept in the workspace.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    /// Control-plane address.
    pub control_plane: String,
    /// Cluster ID (hex).
    pub cluster_id: String,
    /// The control plane's AK (hex SHA-256 of its SPKI), proven by its EK at init.
    pub control_plane_ak: String,
    /// The control plane's TPM: SHA-256 of its EK certificate (hex).
    pub control_plane_ek: String,
    /// Whether the cluster is local (software TPM roots).
    pub local: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The owner's workspace.
    #[arg(long, default_value = "veil-mini")]
    workspace: PathBuf,
    /// Save the signed report here.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Verify a saved report offline instead of asking the cluster.
    #[arg(long, value_name = "FILE", conflicts_with = "save")]
    report: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

pub(crate) struct Workspace {
    pub(crate) record: WorkspaceRecord,
    pub(crate) reference: ReferenceValues,
    pub(crate) roots: Vec<Certificate>,
    pub(crate) intermediates: Vec<Certificate>,
}

/// What the owner trusts, from the workspace.
pub(crate) struct Trusted {
    pub(crate) reference: ReferenceValues,
    pub(crate) roots: Vec<Certificate>,
    pub(crate) intermediates: Vec<Certificate>,
}

/// Loads the workspace's signed reference values (checking the signature) and TPM roots.
pub(crate) fn load_trust(ws: &Path) -> anyhow::Result<Trusted> {
    let body = read(&ws.join("reference-values.yaml"))?;
    let sig = String::from_utf8(read(&ws.join("reference-values.yaml.sig"))?)?;
    signing::verify(&read(&ws.join("reference.pub"))?, &body, &sig).context("reference values")?;
    let reference = ReferenceValues::parse(&body)?;
    let certs = Certificate::parse_many(&read(&ws.join("tpm-roots.pem"))?, "TPM roots")?;
    let (roots, intermediates) = certs.into_iter().partition(Certificate::is_self_issued);
    Ok(Trusted {
        reference,
        roots,
        intermediates,
    })
}

pub(crate) fn load(ws: &Path) -> anyhow::Result<Workspace> {
    let record: WorkspaceRecord =
        serde_json::from_slice(&read(&ws.join("workspace.json"))?).context("workspace.json")?;
    let t = load_trust(ws)?;
    Ok(Workspace {
        record,
        reference: t.reference,
        roots: t.roots,
        intermediates: t.intermediates,
    })
}

pub fn run(a: VerifyArgs) -> ExitCode {
    match execute(&a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn execute(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let ws = load(&a.workspace)?;
    let cluster_id = decode_hex(&ws.record.cluster_id)?;
    let cp_ak: [u8; 32] = decode_hex(&ws.record.control_plane_ak)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("workspace: control_plane_ak is not 32 bytes"))?;
    let (signed, nonce) = match &a.report {
        Some(file) => {
            let s: SignedReport = serde_json::from_slice(&read(file)?).context("saved report")?;
            (s, None)
        }
        None => {
            let mut nonce = [0u8; 32];
            SystemRandom::new()
                .fill(&mut nonce)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            let signed = rt.block_on(async {
                let sock = tokio::net::TcpStream::connect(&ws.record.control_plane)
                    .await
                    .with_context(|| {
                        format!(
                            "cannot reach the control plane at {}",
                            ws.record.control_plane
                        )
                    })?;
                sock.set_nodelay(true)?;
                let appraiser = TpmAppraiser {
                    reference: ws.reference.clone(),
                    role: "control-plane".into(),
                    trusted_aks: Some(vec![cp_ak]),
                    membership: Membership::Member(cluster_id.clone()),
                    now: now(),
                };
                let mut s = Session::connect(sock, None, &appraiser).await?;
                s.verify_endorsement(&ws.roots, &ws.intermediates, now())
                    .await?;
                anyhow::Ok(s.cluster_report(&nonce).await?)
            });
            match signed {
                Ok(s) => (s, Some(nonce)),
                Err(e) => {
                    eprintln!("rejected: control plane: {e:#}");
                    return Ok(ExitCode::from(EXIT_REJECTED));
                }
            }
        }
    };
    if let Some(path) = &a.save {
        std::fs::write(path, serde_json::to_vec_pretty(&signed)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    let exp = Expectations {
        reference: ws.reference,
        cluster_id,
        control_plane_ak: cp_ak,
        nonce,
        now: now(),
    };
    let verdict = match verify_report(&signed, &exp) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("rejected: {e}");
            return Ok(ExitCode::from(EXIT_REJECTED));
        }
    };
    match a.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&verdict)?),
        Format::Text => {
            if ws.record.local {
                println!("LOCAL CLUSTER (insecure local TPM roots)");
            }
            println!(
                "cluster {}  report {} ({})",
                verdict.cluster_id,
                UnixTime(verdict.created_at),
                if nonce.is_some() {
                    "fresh: bound to this run's nonce"
                } else {
                    "saved report: freshness as of its creation"
                }
            );
            println!(
                "{:<20} {:<14} {:<26} {:<9} REASON",
                "NODE", "ROLE", "TEE", "VERDICT"
            );
            for n in &verdict.nodes {
                println!(
                    "{:<20} {:<14} {:<26} {:<9} {}",
                    n.node,
                    n.role,
                    n.tee,
                    if n.ok { "OK" } else { "FAILED" },
                    n.reason
                );
            }
        }
    }
    Ok(if verdict.all_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REJECTED)
    })
}
