//! Whole-cluster attestation, verified by the owner offline: a control plane's signed report
//! checked against the owner's workspace — the control plane's quote over the report and the
//! nonce, by an AK its enrolled TPM proved; every admitted node's join evidence against the
//! reference values of its role; every node's TPM on the owner's approval list; every
//! refusal shown.

use serde::Serialize;
use sha2::Digest;
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;
use veil_reference::ReferenceValues;
pub use veil_wire::report::{
    ClusterReport, REPORT_VERSION, Refusal, ReportedMesh, ReportedNode, SignedReport, report_digest,
};

use crate::node::{Membership, TpmAppraiser};

/// What the owner expects.
#[derive(Clone, Debug)]
pub struct Expectations {
    /// Signed reference values (verified by the caller).
    pub reference: ReferenceValues,
    /// The cluster.
    pub cluster_id: Vec<u8>,
    /// The AKs the control plane may have signed with (each proven to the owner in the TPM of
    /// the control-plane node's recorded EK).
    pub control_plane_aks: Vec<[u8; 32]>,
    /// The owner's current approval list: every admitted node's TPM must be on it, in its role.
    pub approvals: veil_wire::owner::Approvals,
    /// The nonce the report must carry (`None` when re-verifying a saved report).
    pub nonce: Option<[u8; 32]>,
    /// Verification time.
    pub now: UnixTime,
}

/// The verdict on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeVerdict {
    /// Node ID (or `control-plane`).
    pub node: String,
    /// Role.
    pub role: String,
    /// Kind of evidence.
    pub tee: String,
    /// Accepted?
    pub ok: bool,
    /// Matched set, or why it failed.
    pub reason: String,
    /// Mesh state: address, and whether it is in the peer sets (`-` without a mesh).
    pub mesh: String,
}

/// The verdict on a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterVerdict {
    /// The cluster (hex).
    pub cluster_id: String,
    /// Report time.
    pub created_at: i64,
    /// Control plane first, then each node.
    pub nodes: Vec<NodeVerdict>,
}

impl ClusterVerdict {
    /// Whether every node passed.
    pub fn all_ok(&self) -> bool {
        self.nodes.iter().all(|n| n.ok)
    }
}

const TEE: &str = "tpm (software, local CA)";

fn hex32(s: &str) -> Option<[u8; 32]> {
    decode_hex(s).ok()?.try_into().ok()
}

/// Verifies a signed report. A report that is not what the control plane signed is an error;
/// nodes that fail appraisal are reported as failing.
pub fn verify_report(signed: &SignedReport, exp: &Expectations) -> Result<ClusterVerdict, String> {
    let report: ClusterReport =
        serde_json::from_str(&signed.report).map_err(|e| format!("report: {e}"))?;
    if report.version != REPORT_VERSION {
        return Err(format!(
            "report version: expected {REPORT_VERSION}, found {}",
            report.version
        ));
    }
    if decode_hex(&report.cluster_id).ok().as_deref() != Some(exp.cluster_id.as_slice()) {
        return Err(format!(
            "cluster: expected {}, the report is for {}",
            hex::encode(&exp.cluster_id),
            report.cluster_id
        ));
    }
    if let Some(n) = exp.nonce
        && hex32(&report.nonce) != Some(n)
    {
        return Err(format!(
            "nonce: expected {}, found {} (a replayed report)",
            hex::encode(n),
            report.nonce
        ));
    }
    let evidence = decode_hex(&signed.evidence).map_err(|e| format!("evidence: {e}"))?;
    let cp = TpmAppraiser {
        reference: exp.reference.clone(),
        role: "control-plane".into(),
        trusted_aks: Some(exp.control_plane_aks.clone()),
        membership: Membership::Member(exp.cluster_id.clone()),
        now: exp.now,
    };
    let digest = report_digest(signed.report.as_bytes());
    cp.appraise(&evidence, &digest)
        .map_err(|e| format!("control plane signature over the report: {e}"))?;
    let mut nodes = vec![NodeVerdict {
        node: "control-plane".into(),
        role: "control-plane".into(),
        tee: TEE.into(),
        ok: true,
        reason: "signed this report; measurements match".into(),
        mesh: "-".into(),
    }];
    for n in &report.nodes {
        let verdict = (|| {
            let ak = hex32(&n.ak_spki_sha256).ok_or("AK hash is not 32 bytes of hex")?;
            let ev = decode_hex(&n.join_evidence).map_err(|e| e.to_string())?;
            let a = TpmAppraiser {
                reference: exp.reference.clone(),
                role: n.role.clone(),
                trusted_aks: Some(vec![ak]),
                membership: Membership::Fresh,
                now: exp.now,
            };
            let ek = decode_hex(&n.ek_cert).map_err(|e| format!("EK certificate: {e}"))?;
            let ek_sha256: [u8; 32] = sha2::Sha256::digest(&ek).into();
            if !exp.approvals.approves(&ek_sha256, &n.role) {
                return Err(format!(
                    "NOT APPROVED by the owner: its TPM (EK certificate sha256:{}) is not on the approval list (serial {}) as `{}`",
                    hex::encode(ek_sha256),
                    exp.approvals.serial,
                    n.role
                ));
            }
            a.appraise_recorded(&ev)
                .map(|c| format!("matches set `{}`; approved", c.set))
                .map_err(|e| e.to_string())
        })();
        nodes.push(NodeVerdict {
            node: n.node_id.clone(),
            role: n.role.clone(),
            tee: TEE.into(),
            ok: verdict.is_ok(),
            reason: verdict.unwrap_or_else(|e: String| e),
            mesh: n
                .mesh
                .as_ref()
                .map(|m| {
                    format!(
                        "{} {}",
                        m.address,
                        if m.in_peer_sets {
                            "in peer sets"
                        } else {
                            "OUT of peer sets"
                        }
                    )
                })
                .unwrap_or_else(|| "-".into()),
        });
    }
    for r in &report.refused {
        nodes.push(NodeVerdict {
            node: match &r.ak_spki_sha256 {
                Some(a) => format!("refused {} (AK {})", r.source, a.get(..12).unwrap_or(a)),
                None => format!("refused {}", r.source),
            },
            role: "-".into(),
            tee: "-".into(),
            ok: false,
            reason: format!(
                "{}{} ({}x, first {}, last {}; not acknowledged)",
                if r.reason.starts_with(&format!("{}:", r.kind)) {
                    String::new()
                } else {
                    format!("{}: ", r.kind)
                },
                r.reason,
                r.count,
                UnixTime(r.first_seen),
                UnixTime(r.last_seen)
            ),
            mesh: "-".into(),
        });
    }
    Ok(ClusterVerdict {
        cluster_id: report.cluster_id,
        created_at: report.created_at,
        nodes,
    })
}
