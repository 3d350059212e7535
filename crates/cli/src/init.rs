//! `veil init`: create (or complete) the owner's workspace, attest the first control-plane
//! node, and hand it the master secret.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use clap::Args;
use veil_cluster::Session;
use veil_node_attest::{Membership, TpmAppraiser};

use crate::clock::now;
use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};
use crate::verify::WorkspaceRecord;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The workspace directory (created if missing).
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    /// Address of the first control-plane node's services.
    #[arg(long, value_name = "HOST:PORT")]
    control_plane: String,
    /// Signed reference values to copy into the workspace (with FILE.sig beside it).
    #[arg(long, value_name = "FILE")]
    reference_values: Option<PathBuf>,
    /// The public key that signed them.
    #[arg(long, value_name = "PEM")]
    reference_key: Option<PathBuf>,
    /// Accepted TPM manufacturer roots and intermediates (PEM).
    #[arg(long, value_name = "PEM")]
    tpm_roots: Option<PathBuf>,
}

/// Writes a secret file readable by its owner only (refusing to overwrite).
pub fn write_secret(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    f.write_all(contents)?;
    Ok(())
}

/// Creates the master secret and salt in the workspace if they are missing.
pub fn ensure_secrets(ws: &Path) -> anyhow::Result<([u8; 32], [u8; 32])> {
    std::fs::create_dir_all(ws.join("owner"))?;
    let read = |name: &str| -> anyhow::Result<Option<[u8; 32]>> {
        match std::fs::read_to_string(ws.join("owner").join(name)) {
            Ok(t) => Ok(Some(
                veil_attest_core::bytes::decode_hex(&t)?
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("owner/{name}: expected 32 bytes of hex"))?,
            )),
            Err(_) => Ok(None),
        }
    };
    let rng = SystemRandom::new();
    let get = |name: &str| -> anyhow::Result<[u8; 32]> {
        if let Some(v) = read(name)? {
            return Ok(v);
        }
        let mut v = [0u8; 32];
        rng.fill(&mut v)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        write_secret(&ws.join("owner").join(name), hex::encode(v).as_bytes())?;
        Ok(v)
    };
    Ok((get("master-secret")?, get("salt")?))
}

/// Attests the control plane at `control_plane` (fresh: its cluster PCR zero; its AK in the
/// TPM of an EK certified by an accepted root), initialises it, and records the cluster in the
/// workspace. Returns the cluster ID.
pub fn owner_init(ws: &Path, control_plane: &str, local: bool) -> anyhow::Result<String> {
    let (master, salt) = ensure_secrets(ws)?;
    if ws.join("workspace.json").exists() {
        bail!(
            "{} already records a cluster (workspace.json)",
            ws.display()
        );
    }
    let loaded = crate::verify::load_trust(ws)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (cid, ak, ek) = rt.block_on(async {
        let sock = tokio::net::TcpStream::connect(control_plane)
            .await
            .with_context(|| format!("cannot reach {control_plane}"))?;
        sock.set_nodelay(true)?;
        let appraiser = TpmAppraiser {
            reference: loaded.reference.clone(),
            role: "control-plane".into(),
            trusted_aks: None,
            membership: Membership::Fresh,
            now: now(),
        };
        let mut s = Session::connect(sock, None, &appraiser).await?;
        let ek = s
            .verify_endorsement(&loaded.roots, &loaded.intermediates, now())
            .await?;
        let cid = s.init(&master, &salt).await?;
        anyhow::Ok((cid, s.peer_ak(), ek))
    })?;
    std::fs::write(
        ws.join("workspace.json"),
        serde_json::to_vec_pretty(&WorkspaceRecord {
            control_plane: control_plane.to_string(),
            cluster_id: cid.clone(),
            control_plane_ak: hex::encode(ak),
            control_plane_ek: hex::encode(ek),
            local,
        })?,
    )?;
    std::fs::write(ws.join("owner/cluster-id"), &cid)?;
    Ok(cid)
}

pub fn run(a: InitArgs) -> ExitCode {
    let r = (|| {
        std::fs::create_dir_all(&a.workspace)?;
        let copy = |from: &Option<PathBuf>, to: &str| -> anyhow::Result<()> {
            if let Some(f) = from {
                std::fs::copy(f, a.workspace.join(to))
                    .with_context(|| format!("cannot copy {}", f.display()))?;
            }
            Ok(())
        };
        copy(&a.reference_values, "reference-values.yaml")?;
        if let Some(f) = &a.reference_values {
            let mut sig = f.as_os_str().to_owned();
            sig.push(".sig");
            copy(&Some(PathBuf::from(sig)), "reference-values.yaml.sig")?;
        }
        copy(&a.reference_key, "reference.pub")?;
        copy(&a.tpm_roots, "tpm-roots.pem")?;
        let local = crate::verify::load_trust(&a.workspace)?
            .reference
            .insecure_local_roots;
        anyhow::Ok(local)
    })();
    let local = match r {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_UNUSABLE);
        }
    };
    match owner_init(&a.workspace, &a.control_plane, local) {
        Ok(cid) => {
            if local {
                println!("LOCAL CLUSTER (insecure local TPM roots)");
            }
            println!(
                "initialised cluster {cid}; workspace {}",
                a.workspace.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rejected: {e:#}");
            ExitCode::from(EXIT_REJECTED)
        }
    }
}
