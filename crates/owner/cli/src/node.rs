//! The owner's commands to a running cluster, each signed by the owner's key and sent to every
//! control plane:
//! - `veil node approve`: a TPM may join in a role (a new approval list, its serial one higher);
//! - `veil node remove NODE`: every control plane stops serving the node and drops it from
//!   every peer set (nodes' next re-attestation, within seconds, cuts it off the mesh); it is
//!   also taken off the approval list;
//! - `veil node rotate-keys NODE`: the node makes a new mesh key at its next re-attestation;
//! - `veil ack-refusals`: the refusals seen so far no longer fail `veil verify`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Subcommand};
use veil_appraisal::Membership;
use veil_appraisal::owner::{Approvals, ApprovedNode, sign_approvals};
use veil_attest_core::bytes::decode_hex;

use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};
use crate::workspace::{Workspace, attest_recorded};

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
    /// Approve a TPM (by the SHA-256 of its EK certificate) to join in a role.
    Approve {
        /// SHA-256 of the node's EK certificate (hex; a refused join names it).
        #[arg(long, value_name = "HEX", required_unless_present = "ek_cert")]
        ek_sha256: Option<String>,
        /// The node's EK certificate (DER or PEM), instead of its hash.
        #[arg(long, value_name = "FILE", conflicts_with = "ek_sha256")]
        ek_cert: Option<PathBuf>,
        /// The role it may join as.
        #[arg(long, default_value = "worker")]
        role: String,
        /// A name for people.
        #[arg(long, default_value = "")]
        name: String,
        /// The owner's workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
    /// Remove a node: it is served no key, leaves every mesh peer set, and may not rejoin.
    Remove {
        /// The node ID (as `veil verify` or `veil mini status` show it).
        node: String,
        /// The owner's workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
    /// Ask a node to rotate its mesh (WireGuard) key now; it does at its next re-attestation
    /// and its peers learn the new key at theirs.
    RotateKeys {
        /// The node ID.
        node: String,
        /// The owner's workspace.
        #[arg(long, default_value = "veil-mini")]
        workspace: PathBuf,
    },
}

#[derive(Args, Debug)]
pub struct AckArgs {
    /// Acknowledge the refusals last seen at or before this time (seconds since the epoch;
    /// default: now).
    #[arg(long)]
    up_to: Option<i64>,
    /// The owner's workspace.
    #[arg(long, default_value = "veil-mini")]
    workspace: PathBuf,
}

pub fn run(cmd: NodeCommand) -> ExitCode {
    let r = match cmd {
        NodeCommand::Approve {
            ek_sha256,
            ek_cert,
            role,
            name,
            workspace,
        } => approve(&workspace, ek_sha256, ek_cert, role, name),
        NodeCommand::Remove { node, workspace } => owner_command(&workspace, &node, Op::Remove),
        NodeCommand::RotateKeys { node, workspace } => {
            owner_command(&workspace, &node, Op::RotateKeys)
        }
    };
    finish(r)
}

/// `veil ack-refusals`.
pub fn ack(a: AckArgs) -> ExitCode {
    finish((|| {
        let ws = crate::workspace::load(&a.workspace)?;
        let up_to = a.up_to.unwrap_or_else(|| crate::clock::now().0);
        let owner = &ws.owner;
        each_control_plane(&ws, |mut s, cid| async move {
            anyhow::Ok(s.ack_refusals(&cid, up_to, owner).await?)
        })
    })())
}

fn finish(r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

/// Runs `f` on a session with every control plane (attested as a member of the cluster and on
/// the TPM the owner enrolled), with the cluster ID; prints each outcome; exit 1 if any failed.
fn each_control_plane<F, Fut>(ws: &Workspace, f: F) -> anyhow::Result<ExitCode>
where
    F: Fn(veil_client::Session<tokio::net::TcpStream>, String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<String>>,
{
    let cid = decode_hex(&ws.record.cluster_id)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut failed = false;
    for (i, cp) in ws.record.control_planes.iter().enumerate() {
        let r = rt.block_on(async {
            let a = attest_recorded(ws, i, Membership::Member(cid.clone())).await?;
            f(a.session, ws.record.cluster_id.clone()).await
        });
        match r {
            Ok(detail) => println!("{}: {detail}", cp.address),
            Err(e) => {
                failed = true;
                eprintln!("rejected: {}: {e:#}", cp.address);
            }
        }
    }
    Ok(if failed {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    })
}

/// A new approval list from the workspace's: `change` applied, serial one higher; saved and
/// sent to every control plane.
fn update_approvals(
    ws_dir: &Path,
    ws: &Workspace,
    change: impl FnOnce(&mut Approvals),
) -> anyhow::Result<ExitCode> {
    let (mut list, _) = crate::workspace::load_approvals(ws_dir, &ws.record.cluster_id)?;
    change(&mut list);
    list.serial += 1;
    let signed = sign_approvals(&list, &ws.owner)?;
    crate::workspace::save_approvals(ws_dir, &signed)?;
    each_control_plane(ws, |mut s, _| {
        let signed = signed.clone();
        async move { Ok(s.approve(&signed).await?) }
    })
}

fn approve(
    ws_dir: &Path,
    ek_sha256: Option<String>,
    ek_cert: Option<PathBuf>,
    role: String,
    name: String,
) -> anyhow::Result<ExitCode> {
    let ek = match (ek_sha256, ek_cert) {
        (Some(h), _) => {
            let h = h.to_lowercase();
            if decode_hex(&h).map(|v| v.len()) != Ok(32) {
                bail!("--ek-sha256 `{h}`: expected 32 bytes of hex");
            }
            h
        }
        (None, Some(path)) => {
            let bytes = std::fs::read(&path)?;
            let der = match pem::parse(&bytes) {
                Ok(p) => p.contents().to_vec(),
                Err(_) => bytes,
            };
            let cert = veil_attest_core::x509::Certificate::from_der(&der, "EK certificate")?;
            hex::encode(cert.fingerprint())
        }
        (None, None) => bail!("give --ek-sha256 or --ek-cert"),
    };
    if !["control-plane", "worker"].contains(&role.as_str()) {
        bail!("--role {role}: expected control-plane or worker");
    }
    let ws = crate::workspace::load(ws_dir)?;
    println!("approving TPM sha256:{ek} as {role}");
    update_approvals(ws_dir, &ws, |list| {
        crate::init::add_approval(
            &mut list.nodes,
            ApprovedNode {
                ek_sha256: ek,
                role,
                name,
            },
        )
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Remove,
    RotateKeys,
}

/// Sends an owner command about `node` to every control plane.
fn owner_command(ws_dir: &Path, node: &str, op: Op) -> anyhow::Result<ExitCode> {
    if !node.starts_with("node-") {
        bail!("`{node}`: expected a node ID (node-…)");
    }
    let ws = crate::workspace::load(ws_dir)?;
    let known = std::cell::Cell::new(false);
    let owner = &ws.owner;
    let code = each_control_plane(&ws, |mut s, cid| {
        let known = &known;
        async move {
            let here = match op {
                Op::Remove => s.remove_node(&cid, node, owner).await?,
                Op::RotateKeys => match s.rotate_mesh_key(&cid, node, owner).await {
                    Ok(()) => true,
                    // Only the control plane it joined knows its mesh key.
                    Err(veil_client::ClientError::Refused(r)) if r.contains("no node") => false,
                    Err(e) => return Err(e.into()),
                },
            };
            if here {
                known.set(true);
            }
            let done = match op {
                Op::Remove => "removed",
                Op::RotateKeys => "will rotate its mesh key",
            };
            Ok(format!(
                "{node} {done}{}",
                if here {
                    ""
                } else {
                    " (it had not joined here)"
                }
            ))
        }
    })?;
    let known = known.get();
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    match op {
        Op::RotateKeys if !known => {
            eprintln!("rejected: no control plane knows {node} with a mesh key");
            Ok(ExitCode::from(EXIT_REJECTED))
        }
        Op::RotateKeys => Ok(code),
        Op::Remove => {
            if !known {
                eprintln!(
                    "warning: no control plane had admitted {node}; it is barred from joining"
                );
            }
            // Its TPM leaves the approval list too (node IDs are the start of the EK
            // certificate's SHA-256).
            let prefix = node.trim_start_matches("node-").to_string();
            let (list, _) = crate::workspace::load_approvals(ws_dir, &ws.record.cluster_id)?;
            if list.nodes.iter().any(|n| n.ek_sha256.starts_with(&prefix)) {
                println!("{node}: taken off the approval list");
                return update_approvals(ws_dir, &ws, |list| {
                    list.nodes.retain(|n| !n.ek_sha256.starts_with(&prefix))
                });
            }
            Ok(code)
        }
    }
}
