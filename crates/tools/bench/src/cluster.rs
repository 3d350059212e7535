//! `veil-bench cluster`: join latency (p50/p99) while 1, 4 and 16 nodes join at once, measured
//! from the moment each node's agent starts (TPM opened, AK created) to its admission; and key
//! requests per second on an established attested connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use veil_attest_core::x509::Certificate;
use veil_client::Session;
use veil_cluster::{ControlPlane, Trust};
use veil_node_attest::{Membership, TpmAppraiser, TpmAttester};
use veil_reference::launch::Launch;
use veil_reference::{MeasurementSet, ReferenceValues};
use veil_swtpm::{LocalCa, SwTpm};
use veil_tpm_device::{AkKind, NodeTpm};

use veil_client::clock::now;

/// A node's agent start: open the TPM, measured launch already played, EK and AK.
fn start_agent(tcti: &str, launch: &Launch) -> Result<Arc<TpmAttester>> {
    let mut tpm = NodeTpm::open(tcti)?;
    tpm.load_ek()?;
    tpm.create_ak(AkKind::EccP256)?;
    Ok(Arc::new(TpmAttester::new(tpm, launch.event_log())))
}

fn play_firmware(tcti: &str, launch: &Launch) -> Result<()> {
    let mut tpm = NodeTpm::open(tcti)?;
    for c in &launch.components {
        tpm.extend(c.pcr, &c.sha1.0, &c.sha256.0)?;
    }
    Ok(())
}

/// The approval of the TPM at `tcti` (by its EK certificate) for `role`.
fn approved(tcti: &str, role: &str) -> Result<veil_appraisal::owner::ApprovedNode> {
    let ek = NodeTpm::open(tcti)?.ek_certificate()?;
    Ok(veil_appraisal::owner::ApprovedNode {
        ek_sha256: hex::encode(Certificate::from_der(&ek, "EK certificate")?.fingerprint()),
        role: role.into(),
        name: String::new(),
    })
}

fn node_key() -> Result<Vec<u8>> {
    veil_cluster::ca::fresh_node_key().map_err(anyhow::Error::msg)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

pub fn run(secs: f64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::at(&dir.path().join("ca"));
    let cp_launch = Launch::measure(b"veil-agent bench", b"role: control-plane", b"image");
    let w_launch = Launch::measure(b"veil-agent bench", b"role: worker", b"image");
    let mut set = MeasurementSet::from_launch("bench", &cp_launch, &["control-plane"]);
    set.roles
        .extend(MeasurementSet::from_launch("bench", &w_launch, &["worker"]).roles);
    let refs = ReferenceValues {
        version: 1,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![set],
    };

    println!("veil-bench cluster: manufacturing 23 software TPMs (not timed)...");
    ca.manufacture(&dir.path().join("cp"))?;
    let cp_tpm = SwTpm::start(&dir.path().join("cp"))?;
    play_firmware(&cp_tpm.tcti(), &cp_launch)?;
    let mut workers = Vec::new();
    for i in 0..22 {
        let d = dir.path().join(format!("w{i}"));
        ca.manufacture(&d)?;
        let t = SwTpm::start(&d)?;
        play_firmware(&t.tcti(), &w_launch)?;
        workers.push(t);
    }
    let roots = Certificate::parse_many(&ca.root_pem()?, "root")?;
    let issuer = Certificate::parse_many(&ca.issuer_pem()?, "issuer")?;
    let (owner_sk, owner_pk) = veil_reference::signing::generate_key()?;
    let owner = veil_appraisal::owner::OwnerKey::from_pem(owner_sk.into_bytes())?;
    let trust = Trust {
        reference: refs.clone(),
        ek_roots: roots.clone(),
        ek_intermediates: issuer,
        local_roots: true,
        owner_key: owner_pk.into_bytes(),
    };
    // The owner approves every TPM it made, in its role.
    let (master, salt) = ([1u8; 32], [2u8; 32]);
    let cluster_id = veil_keys::ClusterSecrets::new(
        veil_keys::SecretBytes::from_slice("master", &mut master.to_owned())?,
        salt,
    )
    .cluster_id()?
    .to_string();
    let mut nodes = vec![approved(&cp_tpm.tcti(), "control-plane")?];
    for w in &workers {
        nodes.push(approved(&w.tcti(), "worker")?);
    }
    let approvals = veil_appraisal::owner::sign_approvals(
        &veil_appraisal::owner::Approvals {
            version: veil_appraisal::owner::APPROVALS_VERSION,
            cluster_id,
            serial: 1,
            nodes,
        },
        &owner,
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let cp_attester = start_agent(&cp_tpm.tcti(), &cp_launch)?;
    let cp = Arc::new(ControlPlane::new(trust, cp_attester));
    let addr = rt.block_on(async {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let a = l.local_addr()?;
        tokio::spawn(cp.clone().serve(l));
        anyhow::Ok(a)
    })?;
    let fresh = TpmAppraiser {
        reference: refs.clone(),
        role: "control-plane".into(),
        trusted_aks: None,
        membership: Membership::Fresh,
        now: now(),
    };
    let cid = rt.block_on(async {
        let sock = TcpStream::connect(addr).await?;
        let mut s = Session::connect(sock, None, &fresh).await?;
        anyhow::Ok(s.init(&master, &salt, &approvals, &owner).await?)
    })?;
    let cid = veil_attest_core::bytes::decode_hex(&cid)?;
    let member = TpmAppraiser {
        membership: Membership::Member(cid.clone()),
        ..fresh
    };

    let mut next = 0;
    for k in [1usize, 4, 16] {
        let batch: Vec<String> = workers.iter().skip(next).take(k).map(SwTpm::tcti).collect();
        next += k;
        let start = Instant::now();
        let latencies = rt.block_on(async {
            let mut tasks = Vec::new();
            for tcti in batch {
                let (launch, app) = (w_launch.clone(), member.clone());
                tasks.push(tokio::spawn(async move {
                    let t0 = Instant::now();
                    let attester =
                        tokio::task::spawn_blocking(move || start_agent(&tcti, &launch)).await??;
                    let sock = TcpStream::connect(addr).await?;
                    sock.set_nodelay(true)?;
                    let mut s = Session::connect(
                        sock,
                        Some(attester.as_ref() as &dyn veil_atls::Attester),
                        &app,
                    )
                    .await?;
                    s.join(&attester, "worker", &node_key()?).await?;
                    anyhow::Ok(t0.elapsed().as_secs_f64() * 1000.0)
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await??);
            }
            anyhow::Ok(out)
        })?;
        let all = start.elapsed().as_secs_f64();
        let mut sorted = latencies.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "{k:>2} nodes joining at once: join latency p50 {:>6.0} ms  p99 {:>6.0} ms  all joined in {all:.2} s   (goal: 16 within 10 s)",
            percentile(&sorted, 0.5),
            percentile(&sorted, 0.99)
        );
    }

    // Key requests on one established connection of a joined node.
    let w = workers.last().map(SwTpm::tcti).unwrap_or_default();
    let rate = rt.block_on(async {
        let attester = start_agent(&w, &w_launch)?;
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let mut s = Session::connect(
            sock,
            Some(attester.as_ref() as &dyn veil_atls::Attester),
            &TpmAppraiser {
                membership: Membership::Any,
                ..member.clone()
            },
        )
        .await?;
        let joined = s.join(&attester, "worker", &node_key()?).await?;
        let (node_id, cert) = (joined.node_id, joined.node_cert);
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let mut s = Session::connect(
            sock,
            Some(attester.as_ref() as &dyn veil_atls::Attester),
            &member,
        )
        .await?;
        let key = format!("node/{node_id}/state");
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs_f64(secs) {
            s.get_key(&key, &cert).await?;
            n += 1;
        }
        anyhow::Ok(n as f64 / start.elapsed().as_secs_f64())
    })?;
    println!("key requests on an established attested connection: {rate:>8.0} /s   (goal: 5000/s)");
    drop(workers);
    drop(cp_tpm);
    let _ = roots;
    Ok(())
}
