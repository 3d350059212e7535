//! `veil recover`: resupply the master secret to a control plane that restarted.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Args;
use veil_attest_core::bytes::decode_hex;
use veil_cluster::Session;
use veil_node_attest::{Membership, TpmAppraiser};

use crate::clock::now;
use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The owner's workspace.
    #[arg(long, default_value = "veil-mini")]
    workspace: PathBuf,
}

fn secret32(path: &std::path::Path) -> anyhow::Result<[u8; 32]> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    decode_hex(&text)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: expected 32 bytes of hex", path.display()))
}

pub fn run(a: RecoverArgs) -> ExitCode {
    match execute(&a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn execute(a: &RecoverArgs) -> anyhow::Result<ExitCode> {
    let mut ws = crate::verify::load(&a.workspace)?;
    let master = secret32(&a.workspace.join("owner/master-secret"))?;
    let salt = secret32(&a.workspace.join("owner/salt"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let r = rt.block_on(async {
        let sock = tokio::net::TcpStream::connect(&ws.record.control_plane).await?;
        sock.set_nodelay(true)?;
        // A restarted control plane's cluster PCR is zero again: it is appraised as fresh.
        let appraiser = TpmAppraiser {
            reference: ws.reference.clone(),
            role: "control-plane".into(),
            trusted_aks: None,
            membership: Membership::Fresh,
            now: now(),
        };
        let mut s = Session::connect(sock, None, &appraiser).await?;
        let ek = s.verify_endorsement(&ws.roots, &ws.intermediates, now()).await?;
        if hex::encode(ek) != ws.record.control_plane_ek {
            bail!(
                "this control plane's TPM (EK certificate {}) is not the one the cluster was initialised on ({})",
                hex::encode(ek),
                ws.record.control_plane_ek
            );
        }
        let cid = s.recover(&master, &salt).await?;
        anyhow::Ok((cid, s.peer_ak()))
    });
    let (cid, ak) = match r {
        Ok(v) => v,
        Err(e) => {
            eprintln!("rejected: {e:#}");
            return Ok(ExitCode::from(EXIT_REJECTED));
        }
    };
    if cid != ws.record.cluster_id {
        eprintln!(
            "rejected: the control plane recovered cluster {cid}, the workspace holds {}",
            ws.record.cluster_id
        );
        return Ok(ExitCode::from(EXIT_REJECTED));
    }
    // The restarted agent has a new attestation key in the same TPM.
    ws.record.control_plane_ak = hex::encode(ak);
    std::fs::write(
        a.workspace.join("workspace.json"),
        serde_json::to_vec_pretty(&ws.record)?,
    )?;
    println!("recovered cluster {cid}: the control plane serves keys again");
    Ok(ExitCode::SUCCESS)
}
