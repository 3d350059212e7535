//! `veil init`: create (or complete) the owner's workspace, attest the first control-plane
//! node, and hand it the master secret.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use clap::Args;
use veil_appraisal::Membership;
use veil_appraisal::owner::{APPROVALS_VERSION, Approvals, ApprovedNode, sign_approvals};
use veil_attest_core::bytes::decode_hex;
use veil_keys::{ClusterSecrets, SecretBytes};

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
    /// The owner's signing key (PKCS#8 PEM, made with `veil measurements keygen`), whose
    /// public half every node's configuration names (default: the workspace's own,
    /// `owner/owner.key`, created if missing).
    #[arg(long, value_name = "FILE")]
    owner_key: Option<PathBuf>,
    /// Also approve the TPM with this EK certificate SHA-256 as a worker (repeatable; more
    /// with `veil node approve`).
    #[arg(long = "approve-worker", value_name = "HEX")]
    approve_workers: Vec<String>,
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

/// The cluster ID (hex) the owner's secrets derive.
pub fn cluster_id_of(master: &[u8; 32], salt: &[u8; 32]) -> anyhow::Result<String> {
    let m = SecretBytes::from_slice("master secret", &mut master.to_owned())?;
    Ok(ClusterSecrets::new(m, *salt).cluster_id()?.to_string())
}

/// Adds `node` to `nodes` unless the same TPM is already approved in that role.
pub fn add_approval(nodes: &mut Vec<ApprovedNode>, node: ApprovedNode) {
    if !nodes
        .iter()
        .any(|n| n.ek_sha256 == node.ek_sha256 && n.role == node.role)
    {
        nodes.push(node);
    }
}

/// Attests every control-plane node while it is fresh (cluster PCR zero; its AK in the TPM
/// of an EK certified by an accepted root), approves their TPMs as control planes (with
/// `approve`: the other nodes the owner provisioned), initialises the first with the master
/// secret and the signed approval list, and records the cluster in the workspace; then enrols
/// each further control-plane node once it has joined the first (attested as a member of the
/// cluster, its TPM recorded). Returns the cluster ID.
pub fn owner_init(
    ws: &Path,
    control_planes: &[String],
    local: bool,
    approve: Vec<ApprovedNode>,
) -> anyhow::Result<String> {
    let (master, salt) = ensure_secrets(ws)?;
    crate::workspace::ensure_owner_key(ws)?;
    let owner = crate::workspace::owner_key(ws)?;
    if ws.join("workspace.json").exists() {
        bail!(
            "{} already records a cluster (workspace.json)",
            ws.display()
        );
    }
    let [first, others @ ..] = control_planes else {
        bail!("no control-plane node to initialise");
    };
    let cid = cluster_id_of(&master, &salt)?;
    let trust = crate::workspace::load_trust(ws)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut nodes = approve;
    let mut fresh = Vec::new();
    for (i, addr) in control_planes.iter().enumerate() {
        let a = rt
            .block_on(attest_control_plane(
                &trust,
                addr,
                Membership::Fresh,
                &owner,
            ))
            .with_context(|| format!("control plane {i} at {addr}"))?;
        add_approval(
            &mut nodes,
            ApprovedNode {
                ek_sha256: hex::encode(a.ek),
                role: "control-plane".into(),
                name: addr.clone(),
            },
        );
        fresh.push(a);
    }
    let approvals = sign_approvals(
        &Approvals {
            version: APPROVALS_VERSION,
            cluster_id: cid.clone(),
            serial: 1,
            nodes,
        },
        &owner,
    )?;
    crate::workspace::save_approvals(ws, &approvals)?;
    let mut first_cp = fresh.into_iter().next().context("no control plane")?;
    let (got, ak, ek) = rt.block_on(async {
        let got = first_cp
            .session
            .init(&master, &salt, &approvals, &owner)
            .await?;
        anyhow::Ok((got, first_cp.ak, first_cp.ek))
    })?;
    if got != cid {
        bail!("the control plane at {first} initialised cluster {got}, not {cid}");
    }
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
                &owner,
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
        if let Some(k) = &a.owner_key {
            let owner = crate::workspace::owner_key_from_file(k)?;
            std::fs::create_dir_all(a.workspace.join("owner"))?;
            std::fs::copy(k, a.workspace.join(crate::workspace::OWNER_KEY))
                .with_context(|| format!("cannot copy {}", k.display()))?;
            std::fs::write(a.workspace.join(crate::workspace::OWNER_PUB), owner)?;
        }
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
    let workers = a
        .approve_workers
        .iter()
        .map(|h| ApprovedNode {
            ek_sha256: h.to_lowercase(),
            role: "worker".into(),
            name: String::new(),
        })
        .collect();
    match owner_init(&a.workspace, &a.control_plane, local, workers) {
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
