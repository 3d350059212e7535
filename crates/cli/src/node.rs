//! `veil node remove NODE`: the owner removes a node from the cluster. Every control plane
//! records the removal (a command MACed under the master secret, made now), stops serving the
//! node and drops it from every peer set; nodes' next re-attestation (within seconds) cuts it
//! off the mesh.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use veil_attest_core::bytes::decode_hex;
use veil_keys::{ClusterSecrets, SecretBytes};
use veil_node_attest::Membership;

use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};
use crate::workspace::attest_recorded;

#[derive(Subcommand, Debug)]
pub enum NodeCommand {
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

pub fn run(cmd: NodeCommand) -> ExitCode {
    let r = match cmd {
        NodeCommand::Remove { node, workspace } => owner_command(&workspace, &node, Op::Remove),
        NodeCommand::RotateKeys { node, workspace } => {
            owner_command(&workspace, &node, Op::RotateKeys)
        }
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Remove,
    RotateKeys,
}

/// Sends an owner command about `node` to every control plane.
fn owner_command(ws_dir: &std::path::Path, node: &str, op: Op) -> anyhow::Result<ExitCode> {
    if !node.starts_with("node-") {
        anyhow::bail!("`{node}`: expected a node ID (node-…)");
    }
    let ws = crate::workspace::load(ws_dir)?;
    let mut master = crate::workspace::owner_secret(ws_dir, "master-secret")?;
    let secrets = ClusterSecrets::new(
        SecretBytes::from_slice("master secret", &mut master)?,
        crate::workspace::owner_secret(ws_dir, "salt")?,
    );
    let cid = decode_hex(&ws.record.cluster_id)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut failed = false;
    let mut known_anywhere = false;
    for (i, cp) in ws.record.control_planes.iter().enumerate() {
        let at = crate::clock::now().0;
        let verb = match op {
            Op::Remove => "remove-node",
            Op::RotateKeys => "rotate-mesh-key",
        };
        let mac = veil_cluster::owner::command_mac(&secrets, &format!("{verb} {node}"), at)
            .map_err(anyhow::Error::msg)?;
        let r = rt.block_on(async {
            let mut a = attest_recorded(&ws, i, Membership::Member(cid.clone())).await?;
            match op {
                Op::Remove => anyhow::Ok(a.session.remove_node(node, at, &mac).await?),
                Op::RotateKeys => match a.session.rotate_mesh_key(node, at, &mac).await {
                    Ok(()) => Ok(true),
                    // Only the control plane it joined knows its mesh key.
                    Err(veil_cluster::ClientError::Refused(r)) if r.contains("no node") => {
                        Ok(false)
                    }
                    Err(e) => Err(e.into()),
                },
            }
        });
        match r {
            Ok(known) => {
                known_anywhere |= known;
                let done = match op {
                    Op::Remove => "removed",
                    Op::RotateKeys => "will rotate its mesh key",
                };
                println!(
                    "{}: {node} {done}{}",
                    cp.address,
                    if known {
                        ""
                    } else {
                        " (it had not joined here)"
                    }
                );
            }
            Err(e) => {
                failed = true;
                eprintln!("rejected: {}: {e:#}", cp.address);
            }
        }
    }
    if !known_anywhere && !failed {
        if op == Op::RotateKeys {
            eprintln!("rejected: no control plane knows {node} with a mesh key");
            return Ok(ExitCode::from(EXIT_REJECTED));
        }
        eprintln!("warning: no control plane had admitted {node}; it is barred from joining");
    }
    Ok(if failed {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    })
}
