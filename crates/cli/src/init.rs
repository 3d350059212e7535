//! `veil init`: create (or complete) the owner's workspace, attest the first control-plane
//! node, and hand it the master secret.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use clap::Args;
use veil_attest_core::bytes::decode_hex;
use veil_node_attest::Membership;

use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE};
use crate::workspace::{ControlPlaneRecord, WorkspaceRecord, attest_control_plane};

#[derive(Args, Debug)]
pub struct InitArgs {
    /// The workspace directory (created if missing).
    #[arg(long, default_value = ".")]
    workspace: PathBuf,
    /// Address of a control-plane node's services; repeat for each. The first is
    /// initialised; the others are enrolled once they have joined it.
    #[arg(long, value_name = "HOST:PORT", required = true)]
    control_plane: Vec<String>,
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

/// Attests the first control-plane node (fresh: its cluster PCR zero; its AK in the TPM of an
/// EK certified by an accepted root), initialises it, and records the cluster in the
/// workspace; then enrols each further control-plane node once it has joined the first
/// (attested as a member of the cluster, its TPM recorded). Returns the cluster ID.
pub fn owner_init(ws: &Path, control_planes: &[String], local: bool) -> anyhow::Result<String> {
    let (master, salt) = ensure_secrets(ws)?;
    if ws.join("workspace.json").exists() {
        bail!(
            "{} already records a cluster (workspace.json)",
            ws.display()
        );
    }
    let [first, others @ ..] = control_planes else {
        bail!("no control-plane node to initialise");
    };
    let trust = crate::workspace::load_trust(ws)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (cid, ak, ek) = rt.block_on(async {
        let mut a = attest_control_plane(&trust, first, Membership::Fresh).await?;
        let cid = a.session.init(&master, &salt).await?;
        anyhow::Ok((cid, a.ak, a.ek))
    })?;
    let mut record = WorkspaceRecord {
        cluster_id: cid.clone(),
        local,
        control_planes: vec![ControlPlaneRecord {
            address: first.clone(),
            ek: hex::encode(ek),
            aks: vec![hex::encode(ak)],
        }],
    };
    record.save(ws)?;
    std::fs::write(ws.join("owner/cluster-id"), &cid)?;
    let member = decode_hex(&cid)?;
    for addr in others {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let a = loop {
            match rt.block_on(attest_control_plane(
                &trust,
                addr,
                Membership::Member(member.clone()),
            )) {
                Ok(a) => break a,
                Err(e) if std::time::Instant::now() > deadline => {
                    return Err(e.context(format!(
                        "control plane at {addr} did not join cluster {cid} within 60 s"
                    )));
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(300)),
            }
        };
        record.control_planes.push(ControlPlaneRecord {
            address: addr.clone(),
            ek: hex::encode(a.ek),
            aks: vec![hex::encode(a.ak)],
        });
        record.save(ws)?;
    }
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
        let local = crate::workspace::load_trust(&a.workspace)?
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
