//! `veil recover`: resupply the master secret to every control-plane node that restarted
//! (after all of them did; while any serves, a restarted one takes the secret from it).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use veil_appraisal::Membership;
use veil_client::ClientError;

use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};
use crate::workspace::attest_recorded;

#[derive(Args, Debug)]
pub struct RecoverArgs {
    /// The owner's workspace.
    #[arg(long, default_value = "veil-mini")]
    workspace: PathBuf,
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
    let mut ws = crate::workspace::load(&a.workspace)?;
    let master = crate::workspace::owner_secret(&a.workspace, "master-secret")?;
    let salt = crate::workspace::owner_secret(&a.workspace, "salt")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut failed = false;
    for (i, address) in ws.record.addresses().into_iter().enumerate() {
        // A restarted node's cluster PCR is zero again; one that took the secrets back from a
        // peer holds the cluster ID: either way it must be on the TPM the owner enrolled.
        let r = rt.block_on(async {
            let mut at = attest_recorded(&ws, i, Membership::Any).await?;
            let outcome = match at.session.recover(&master, &salt, &ws.owner).await {
                Ok(cid) => Outcome::Recovered(cid),
                Err(ClientError::Refused(r)) if r.contains("holds its secrets") => {
                    Outcome::AlreadyServing
                }
                Err(e) => return Err(e.into()),
            };
            anyhow::Ok((outcome, at.ak))
        });
        match r {
            Ok((Outcome::Recovered(cid), ak)) if cid == ws.record.cluster_id => {
                ws.record.prove_ak(i, ak);
                println!("{address}: recovered cluster {cid}: it serves keys again");
            }
            Ok((Outcome::Recovered(cid), _)) => {
                failed = true;
                eprintln!(
                    "rejected: {address} recovered cluster {cid}, the workspace holds {}",
                    ws.record.cluster_id
                );
            }
            Ok((Outcome::AlreadyServing, ak)) => {
                ws.record.prove_ak(i, ak);
                println!("{address}: already serves (it holds the cluster's secrets)");
            }
            Err(e) => {
                failed = true;
                eprintln!("rejected: {address}: {e:#}");
            }
        }
    }
    ws.record.save(&a.workspace)?;
    Ok(if failed {
        ExitCode::from(EXIT_REJECTED)
    } else {
        ExitCode::SUCCESS
    })
}

enum Outcome {
    Recovered(String),
    AlreadyServing,
}
