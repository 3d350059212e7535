//! `veil verify`: whole-cluster attestation, live or from a saved report.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use clap::Args;
use serde::{Deserialize, Serialize};
use veil_appraisal::Membership;
use veil_appraisal::report::{Expectations, NodeVerdict, SignedReport, verify_report};
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;

use crate::clock::now;
use crate::output::{EXIT_REJECTED, EXIT_UNUSABLE, Format};
use crate::workspace::{attest_recorded, load};

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// The owner's workspace.
    #[arg(long, default_value = "veil-mini")]
    workspace: PathBuf,
    /// Save the signed report here.
    #[arg(long, value_name = "FILE")]
    save: Option<PathBuf>,
    /// Verify a saved report offline instead of asking the cluster.
    #[arg(long, value_name = "FILE", conflicts_with = "save")]
    report: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Also check this kubeconfig (default: the workspace's `kubeconfig`, if there is one): its
    /// CA must be the cluster's and its API server one an attested control plane reports.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))
}

/// One control plane's signed report, as `--save` writes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedReport {
    /// The control-plane node that signed it (its address in the workspace).
    pub control_plane: String,
    /// The report and its signature.
    pub signed: SignedReport,
}

/// Every control plane's report (`veil verify --save`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedReports {
    /// The cluster (hex).
    pub cluster_id: String,
    /// One report per control-plane node.
    pub reports: Vec<SavedReport>,
}

/// The verdict on every control plane's report, as `--output json` prints it.
#[derive(Debug, Serialize)]
struct Verdict {
    cluster_id: String,
    fresh: bool,
    control_planes: Vec<ControlPlaneVerdict>,
    nodes: Vec<NodeVerdict>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kubernetes: Option<crate::verify_kube::KubeVerdict>,
}

#[derive(Debug, Serialize)]
struct ControlPlaneVerdict {
    address: String,
    ok: bool,
    created_at: Option<i64>,
    reason: String,
    /// Its CAS audit log's head, as its report names it (checked against the key derived for
    /// it from the master secret).
    #[serde(skip_serializing_if = "Option::is_none")]
    cas_log: Option<String>,
}

pub fn run(a: VerifyArgs) -> ExitCode {
    match execute(&a) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}

fn execute(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let mut ws = load(&a.workspace)?;
    let cluster_id = decode_hex(&ws.record.cluster_id)?;
    let (approvals, _) = crate::workspace::load_approvals(&a.workspace, &ws.record.cluster_id)?;
    let mut verdict = Verdict {
        cluster_id: ws.record.cluster_id.clone(),
        fresh: a.report.is_none(),
        control_planes: Vec::new(),
        nodes: Vec::new(),
        kubernetes: None,
    };
    let mut attested_apis: Vec<(String, veil_wire::report::ReportedKubeApi)> = Vec::new();
    let refuse_cp = |v: &mut Verdict, address: &str, reason: String| {
        v.control_planes.push(ControlPlaneVerdict {
            address: address.to_string(),
            ok: false,
            created_at: None,
            reason: reason.clone(),
            cas_log: None,
        });
        v.nodes.push(NodeVerdict {
            node: address.to_string(),
            role: "control-plane".into(),
            tee: "-".into(),
            ok: false,
            reason,
            mesh: "-".into(),
        });
    };
    // Every control plane's signed report (with the nonce it must carry, when live).
    let mut reports: Vec<(String, SignedReport, Option<[u8; 32]>)> = Vec::new();
    match &a.report {
        Some(file) => {
            let saved: SavedReports =
                serde_json::from_slice(&read(file)?).context("saved report")?;
            for r in saved.reports {
                reports.push((r.control_plane, r.signed, None));
            }
        }
        None => {
            let mut nonce = [0u8; 32];
            SystemRandom::new()
                .fill(&mut nonce)
                .map_err(|_| anyhow::anyhow!("no randomness"))?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            for (i, address) in ws.record.addresses().into_iter().enumerate() {
                let got = rt.block_on(async {
                    let mut at =
                        attest_recorded(&ws, i, Membership::Member(cluster_id.clone())).await?;
                    let signed = at
                        .session
                        .cluster_report(&ws.record.cluster_id, &nonce, &ws.owner)
                        .await?;
                    anyhow::Ok((at.ak, signed))
                });
                match got {
                    Ok((ak, signed)) => {
                        ws.record.prove_ak(i, ak);
                        reports.push((address, signed, Some(nonce)));
                    }
                    Err(e) => refuse_cp(&mut verdict, &address, format!("{e:#}")),
                }
            }
            ws.record.save(&a.workspace)?;
        }
    }
    if let Some(path) = &a.save {
        let saved = SavedReports {
            cluster_id: ws.record.cluster_id.clone(),
            reports: reports
                .iter()
                .map(|(cp, signed, _)| SavedReport {
                    control_plane: cp.clone(),
                    signed: signed.clone(),
                })
                .collect(),
        };
        std::fs::write(path, serde_json::to_vec_pretty(&saved)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    for (address, signed, nonce) in &reports {
        let Some(rec) = ws
            .record
            .control_planes
            .iter()
            .find(|c| c.address == *address)
        else {
            refuse_cp(
                &mut verdict,
                address,
                "the workspace records no control plane at this address".into(),
            );
            continue;
        };
        let aks = rec
            .aks
            .iter()
            .map(|h| {
                decode_hex(h)
                    .ok()
                    .and_then(|v| <[u8; 32]>::try_from(v).ok())
                    .with_context(|| format!("workspace: AK `{h}` is not 32 bytes of hex"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let exp = Expectations {
            reference: ws.trust.reference.clone(),
            cluster_id: cluster_id.clone(),
            control_plane_aks: aks,
            approvals: approvals.clone(),
            nonce: *nonce,
            now: now(),
        };
        match verify_report(signed, &exp) {
            Ok(v) => {
                let parsed =
                    serde_json::from_str::<veil_wire::report::ClusterReport>(&signed.report).ok();
                // What this control plane signed of its API server.
                if let Some(api) = parsed.as_ref().and_then(|r| r.kubernetes.clone()) {
                    attested_apis.push((address.clone(), api));
                }
                // And of its CAS's log: the key must be the one derived for it.
                let cas = parsed
                    .and_then(|r| r.cas)
                    .map(|c| crate::cas::check_reported_log(&a.workspace, &rec.ek, &c));
                let (ok, reason, cas_log) = match cas {
                    None => (true, "report verified".to_string(), None),
                    Some(Ok(head)) => (true, "report verified".to_string(), Some(head)),
                    Some(Err(e)) => (false, format!("CAS log: {e:#}"), None),
                };
                verdict.control_planes.push(ControlPlaneVerdict {
                    address: address.clone(),
                    ok,
                    created_at: Some(v.created_at),
                    reason,
                    cas_log,
                });
                for mut n in v.nodes {
                    if n.node == "control-plane" {
                        n.node = address.clone();
                    }
                    verdict.nodes.push(n);
                }
            }
            Err(e) => {
                if a.report.is_some() {
                    // A saved report that is not what a control plane signed: rejected whole.
                    eprintln!("rejected: report of {address}: {e}");
                    return Ok(ExitCode::from(EXIT_REJECTED));
                }
                refuse_cp(&mut verdict, address, format!("report rejected: {e}"));
            }
        }
    }
    // The kubeconfig, live only (it is about the API server that answers now).
    let kubeconfig = a.kubeconfig.clone().or_else(|| {
        let p = a.workspace.join("kubeconfig");
        p.exists().then_some(p)
    });
    if a.report.is_none()
        && let Some(path) = kubeconfig
    {
        let pki =
            veil_kube::pki::KubePki::derive(&crate::kubeconfig::workspace_secrets(&a.workspace)?)?;
        verdict.kubernetes = Some(crate::verify_kube::check(
            &path,
            pki.cluster.key_sha256(),
            &attested_apis,
        ));
    }
    let all_ok = verdict.nodes.iter().all(|n| n.ok)
        && verdict.control_planes.iter().all(|c| c.ok)
        && !verdict.control_planes.is_empty()
        && verdict.kubernetes.as_ref().is_none_or(|k| k.ok);
    match a.output {
        Format::Json => println!("{}", serde_json::to_string_pretty(&verdict)?),
        Format::Text => {
            if ws.record.local {
                println!("LOCAL CLUSTER (insecure local TPM roots)");
            }
            println!(
                "cluster {}  ({})",
                verdict.cluster_id,
                if verdict.fresh {
                    "live: every report bound to this run's nonce"
                } else {
                    "saved reports: freshness as of their creation"
                }
            );
            for c in &verdict.control_planes {
                println!(
                    "control plane {:<22} {}{}",
                    c.address,
                    if c.ok {
                        "report verified".to_string()
                    } else {
                        format!("FAILED: {}", c.reason)
                    },
                    c.created_at
                        .map(|t| format!(", made {}", UnixTime(t)))
                        .unwrap_or_default()
                );
                if let Some(head) = &c.cas_log {
                    println!("  cas log {head}");
                }
            }
            println!(
                "{:<22} {:<14} {:<26} {:<9} {:<30} REASON",
                "NODE", "ROLE", "TEE", "VERDICT", "MESH"
            );
            for n in &verdict.nodes {
                println!(
                    "{:<22} {:<14} {:<26} {:<9} {:<30} {}",
                    n.node,
                    n.role,
                    n.tee,
                    if n.ok { "OK" } else { "FAILED" },
                    n.mesh,
                    n.reason
                );
            }
            if let Some(k) = &verdict.kubernetes {
                println!(
                    "kubernetes {} ({}): {} {}",
                    k.server,
                    k.kubeconfig,
                    if k.ok { "OK" } else { "FAILED" },
                    k.reason
                );
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_REJECTED)
    })
}
