//! `veil-bench atls`: full attested-TLS handshakes per second between two software-TPM nodes
//! (TLS 1.3, both sides quote their Veil PCRs over the session binding and appraise the other),
//! and the same handshake without attestation as the baseline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use sha2::Digest;
use tokio::net::{TcpListener, TcpStream};
use veil_atls::{Attester, Identity, client, server};
use veil_attest_core::UnixTime;
use veil_attest_tpm::Public;
use veil_node_attest::{TpmAppraiser, TpmAttester};
use veil_reference::launch::Launch;
use veil_reference::{MeasurementSet, ReferenceValues};
use veil_swtpm::{LocalCa, SwTpm};
use veil_tpm_device::{AkKind, NodeTpm};

struct Node {
    attester: Arc<TpmAttester>,
    ak: [u8; 32],
    _swtpm: SwTpm,
}

fn boot(dir: &std::path::Path, ca: &LocalCa, launch: &Launch) -> Result<Node> {
    ca.manufacture(dir)?;
    let swtpm = SwTpm::start(dir)?;
    let mut tpm = NodeTpm::open(&swtpm.tcti())?;
    for c in &launch.components {
        tpm.extend(c.pcr, &c.sha1.0, &c.sha256.0)?;
    }
    tpm.load_ek()?;
    let ak = Public::parse(&tpm.create_ak(AkKind::EccP256)?)?;
    let ak_hash = sha2::Sha256::digest(ak.key.spki_der()?).into();
    Ok(Node {
        attester: Arc::new(TpmAttester::new(tpm, launch.event_log())),
        ak: ak_hash,
        _swtpm: swtpm,
    })
}

/// What one side does: attest with, appraise with.
type Side = (Option<Arc<TpmAttester>>, Option<Arc<TpmAppraiser>>);

async fn handshakes(secs: f64, concurrency: usize, srv: Side, cli: Side) -> Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let srv_id = Arc::new(Identity::generate()?);
    let accept = {
        let srv = srv.clone();
        tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    break;
                };
                let _ = sock.set_nodelay(true);
                let (id, srv) = (srv_id.clone(), srv.clone());
                tokio::spawn(async move {
                    let att = srv.0.as_deref().map(|a| a as &dyn Attester);
                    let app = srv.1.as_deref().map(veil_client::Appraising);
                    // Like a service, keep the connection until the client is done with it.
                    match server(sock, &id, att, app.as_ref()).await {
                        Ok((mut tls, _)) => {
                            let _ = tokio::io::AsyncReadExt::read(&mut tls, &mut [0u8; 1]).await;
                        }
                        Err(e) => eprintln!("server: {e}"),
                    }
                });
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let cli = cli.clone();
        tasks.push(tokio::spawn(async move {
            let id = Identity::generate()?;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let sock = TcpStream::connect(addr).await?;
                sock.set_nodelay(true)?;
                let att = cli.0.as_deref().map(|a| a as &dyn Attester);
                let app = cli.1.as_deref().map(veil_client::Appraising);
                let (mut tls, peer) = client(sock, &id, att, app.as_ref()).await?;
                if app.is_some() {
                    peer.claims.context("no claims")?;
                }
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    accept.abort();
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

pub fn run(secs: f64) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = LocalCa::at(&dir.path().join("ca"));
    let launch = Launch::measure(b"veil-agent bench", b"role: worker", b"image");
    let a = boot(&dir.path().join("a"), &ca, &launch)?;
    let b = boot(&dir.path().join("b"), &ca, &launch)?;
    let refs = ReferenceValues {
        version: veil_reference::VERSION,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![MeasurementSet::from_launch("bench", &launch, &["worker"])],
    };
    let now = UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64,
    );
    let appraiser = Arc::new(TpmAppraiser {
        reference: refs,
        role: "worker".into(),
        trusted_aks: Some(vec![a.ak, b.ak]),
        membership: veil_node_attest::Membership::Fresh,
        now,
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("veil-bench atls: two software-TPM nodes, {secs:.1} s per figure");
    for concurrency in [1, 4, 16] {
        let plain = rt.block_on(handshakes(secs, concurrency, (None, None), (None, None)))?;
        let mutual = rt.block_on(handshakes(
            secs,
            concurrency,
            (Some(a.attester.clone()), Some(appraiser.clone())),
            (Some(b.attester.clone()), Some(appraiser.clone())),
        ))?;
        let one_way = rt.block_on(handshakes(
            secs,
            concurrency,
            (Some(a.attester.clone()), None),
            (None, Some(appraiser.clone())),
        ))?;
        println!(
            "{concurrency} concurrent: mutual attested {mutual:>7.1} /s   node->owner (one way) {one_way:>7.1} /s   plain TLS 1.3 {plain:>7.1} /s   (goal: 200 verified/s)"
        );
    }
    // Appraisal alone: what a verifier spends per handshake once the evidence is in.
    let mut probe = None;
    struct Capture<'a>(
        &'a TpmAttester,
        std::sync::Mutex<Option<(Vec<u8>, [u8; 64])>>,
    );
    impl Attester for Capture<'_> {
        fn attest(&self, rd: &[u8; 64]) -> Result<Vec<u8>, veil_atls::AttestError> {
            let e = self.0.attest(rd)?;
            if let Ok(mut g) = self.1.lock() {
                *g = Some((e.clone(), *rd));
            }
            Ok(e)
        }
    }
    let cap = Capture(&a.attester, std::sync::Mutex::new(None));
    cap.attest(&[7; 64]).map_err(anyhow::Error::msg)?;
    if let Ok(g) = cap.1.lock() {
        probe = g.clone();
    }
    if let Some((ev, rd)) = probe {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_secs_f64(secs) {
            appraiser.appraise(&ev, &rd)?;
            n += 1;
        }
        println!(
            "appraisal of one node's evidence: {:>9.0} /s (one thread)",
            n as f64 / start.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
