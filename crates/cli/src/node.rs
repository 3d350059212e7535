//! `veil node remove NODE`: the owner removes a node from the cluster. Every control plane
//! records the removal (a command MACed under the master secret, made now), stops serving the
//! node and drops it from every peer set; nodes' next re-attestation (within seconds) cuts it
//! off the mesh.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
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
}

fn secret32(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_hex(&text)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: expected 32 bytes of hex", path.display()))
}

pub fn run(cmd: NodeCommand) -> ExitCode {
    let NodeCommand::Remove { node, workspace } = cmd;
    match remove(&workspace, &node) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn remove(ws_dir: &std::path::Path, node: &str) -> anyhow::Result<ExitCode> {
    if !node.starts_with("node-") {
        anyhow::bail!("`{node}`: expected a node ID (node-…)");
    }
    let ws = crate::workspace::load(ws_dir)?;
    let mut master = secret32(&ws_dir.join("owner/master-secret"))?;
    let secrets = ClusterSecrets::new(
        SecretBytes::from_slice("master secret", &mut master)?,
        secret32(&ws_dir.join("owner/salt"))?,
    );
    let cid = decode_hex(&ws.record.cluster_id)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut failed = false;
    let mut known_anywhere = false;
    for (i, cp) in ws.record.control_planes.iter().enumerate() {
        let at = crate::clock::now().0;
        let mac = veil_cluster::owner::command_mac(&secrets, &format!("remove-node {node}"), at)
            .map_err(anyhow::Error::msg)?;
        let r = rt.block_on(async {
            let mut a = attest_recorded(&ws, i, Membership::Member(cid.clone())).await?;
            anyhow::Ok(a.session.remove_node(node, at, &mac).await?)
        });
        match r {
            Ok(known) => {
                known_anywhere |= known;
                println!(
                    "{}: {node} removed{}",
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
        eprintln!("warning: no control plane had admitted {node}; it is barred from joining");
    }
    Ok(if failed {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    })
}
