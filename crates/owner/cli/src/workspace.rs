//! The owner's workspace: what the owner trusts (signed reference values, TPM roots) and its
//! record of the cluster (ID, and each control-plane node's TPM with the attestation keys it
//! has proven there).

use std::path::Path;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use veil_appraisal::owner::{Approvals, OwnerKey, SignedApprovals, verify_approvals};
use veil_appraisal::{Membership, TpmAppraiser};
use veil_attest_core::x509::Certificate;
use veil_client::Session;
use veil_reference::{ReferenceValues, signing};

use crate::clock::now;

/// One control-plane node, as the owner knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneRecord {
    /// Where its services are.
    pub address: String,
    /// Its TPM: SHA-256 of its EK certificate (hex), proven when the owner enrolled it.
    pub ek: String,
    /// Every attestation key (hex SHA-256 of the SPKI) its TPM has proven to the owner,
    /// oldest first (an agent makes a new one at each start).
    pub aks: Vec<String>,
}

/// The owner's record of a cluster.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceRecord {
    /// Cluster ID (hex).
    pub cluster_id: String,
    /// Whether the cluster is local (software TPM roots).
    pub local: bool,
    /// The control-plane nodes (the first was initialised by the owner).
    pub control_planes: Vec<ControlPlaneRecord>,
}

impl WorkspaceRecord {
    /// The control planes' addresses, in order.
    pub fn addresses(&self) -> Vec<String> {
        self.control_planes
            .iter()
            .map(|c| c.address.clone())
            .collect()
    }

    /// Records `ak` as proven in the TPM of control plane `i` (if it is new).
    pub fn prove_ak(&mut self, i: usize, ak: [u8; 32]) {
        if let Some(cp) = self.control_planes.get_mut(i) {
            let ak = hex::encode(ak);
            if !cp.aks.contains(&ak) {
                cp.aks.push(ak);
            }
        }
    }

    /// Writes the record into the workspace.
    pub fn save(&self, ws: &Path) -> anyhow::Result<()> {
        std::fs::write(ws.join("workspace.json"), serde_json::to_vec_pretty(self)?)
            .context("cannot write workspace.json")
    }
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// What the owner trusts, from the workspace.
#[derive(Debug)]
pub struct Trusted {
    pub reference: ReferenceValues,
    pub roots: Vec<Certificate>,
    pub intermediates: Vec<Certificate>,
}

/// The workspace of an initialised cluster.
#[derive(Debug)]
pub struct Workspace {
    pub record: WorkspaceRecord,
    pub trust: Trusted,
    pub owner: OwnerKey,
}

/// Loads the workspace's signed reference values (checking the signature) and TPM roots.
pub fn load_trust(ws: &Path) -> anyhow::Result<Trusted> {
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

/// Loads an initialised cluster's workspace.
pub fn load(ws: &Path) -> anyhow::Result<Workspace> {
    let record: WorkspaceRecord =
        serde_json::from_slice(&read(&ws.join("workspace.json"))?).context("workspace.json")?;
    if record.control_planes.is_empty() {
        bail!("workspace.json records no control-plane node");
    }
    Ok(Workspace {
        record,
        trust: load_trust(ws)?,
        owner: owner_key(ws)?,
    })
}

/// Where the owner's private key is (0600); its public half is `owner.pub`.
pub const OWNER_KEY: &str = "owner/owner.key";
/// The owner's public key, which every node's measured configuration names.
pub const OWNER_PUB: &str = "owner.pub";
/// The owner's signed approval list (the authoritative copy).
pub const APPROVALS: &str = "approvals.json";

/// Creates the owner's signing key if the workspace has none; returns the public key's path.
pub fn ensure_owner_key(ws: &Path) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(ws.join("owner"))?;
    if !ws.join(OWNER_KEY).exists() {
        let (sk, pk) = signing::generate_key()?;
        crate::init::write_secret(&ws.join(OWNER_KEY), sk.as_bytes())?;
        std::fs::write(ws.join(OWNER_PUB), pk)?;
    }
    Ok(ws.join(OWNER_PUB))
}

/// The public key (PEM) of an owner's private key file, checking it can sign.
pub fn owner_key_from_file(path: &Path) -> anyhow::Result<String> {
    let private = read(path)?;
    OwnerKey::from_pem(private.clone())?;
    Ok(signing::public_key_pem(&private)?)
}

/// The owner's signing key.
pub fn owner_key(ws: &Path) -> anyhow::Result<OwnerKey> {
    Ok(OwnerKey::from_pem(read(&ws.join(OWNER_KEY))?)?)
}

/// The owner's approval list, checked against the owner's key and the cluster.
pub fn load_approvals(ws: &Path, cluster_id: &str) -> anyhow::Result<(Approvals, SignedApprovals)> {
    let signed: SignedApprovals =
        serde_json::from_slice(&read(&ws.join(APPROVALS))?).context(APPROVALS)?;
    let list =
        verify_approvals(&signed, &read(&ws.join(OWNER_PUB))?, cluster_id).context(APPROVALS)?;
    Ok((list, signed))
}

/// Writes the owner's approval list into the workspace.
pub fn save_approvals(ws: &Path, signed: &SignedApprovals) -> anyhow::Result<()> {
    std::fs::write(ws.join(APPROVALS), serde_json::to_vec_pretty(signed)?)
        .with_context(|| format!("cannot write {APPROVALS}"))
}

/// A 32-byte secret from the owner's part of the workspace (`owner/NAME`, hex).
pub fn owner_secret(ws: &Path, name: &str) -> anyhow::Result<[u8; 32]> {
    let path = ws.join("owner").join(name);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    veil_attest_core::bytes::decode_hex(&text)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("{}: expected 32 bytes of hex", path.display()))
}

/// A control-plane node the owner has attested: the session, its TPM (EK certificate
/// fingerprint) and the AK that attested the session, proven in that TPM.
#[derive(Debug)]
pub struct Attested {
    pub session: Session<tokio::net::TcpStream>,
    pub ek: [u8; 32],
    pub ak: [u8; 32],
}

/// Connects to the control plane at `address` as the owner (unattested, signing what it
/// asks), appraises it as a control-plane node of `membership`, and checks its AK lives in a
/// TPM whose EK certificate chains to the workspace's roots (by credential activation).
pub async fn attest_control_plane(
    trust: &Trusted,
    address: &str,
    membership: Membership,
    owner: &OwnerKey,
) -> anyhow::Result<Attested> {
    let sock = tokio::net::TcpStream::connect(address)
        .await
        .with_context(|| format!("cannot reach the control plane at {address}"))?;
    sock.set_nodelay(true)?;
    let appraiser = TpmAppraiser {
        reference: trust.reference.clone(),
        role: "control-plane".into(),
        trusted_aks: None,
        membership,
        now: now(),
    };
    let mut session = Session::connect(sock, None, &appraiser)
        .await
        .with_context(|| format!("control plane at {address}"))?;
    let ek = session
        .verify_endorsement(&trust.roots, &trust.intermediates, now(), Some(owner))
        .await
        .with_context(|| format!("control plane at {address}"))?;
    let ak = session.peer_ak();
    Ok(Attested { session, ek, ak })
}

/// Attests the control plane of record `i` (any cluster-PCR state: a restarted node's is
/// zero) and checks it runs on the TPM the owner enrolled.
pub async fn attest_recorded(
    ws: &Workspace,
    i: usize,
    membership: Membership,
) -> anyhow::Result<Attested> {
    let rec = ws
        .record
        .control_planes
        .get(i)
        .context("no such control plane")?;
    let a = attest_control_plane(&ws.trust, &rec.address, membership, &ws.owner).await?;
    if hex::encode(a.ek) != rec.ek {
        bail!(
            "the control plane at {} runs on a TPM (EK certificate {}) other than the one enrolled ({})",
            rec.address,
            hex::encode(a.ek),
            rec.ek
        );
    }
    Ok(a)
}
