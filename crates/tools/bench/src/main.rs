//! `veil-bench attest`: verifications per second on one core (a single thread) for each TEE,
//! with repeated verification against the same endorsements, and the ratio against a baseline
//! measured in the same run.
//!
//! Baselines: for SNP, establishing the VCEK chain afresh for every report; for TDX and SGX,
//! calling dcap-qvl's `verify` afresh for every quote (it re-verifies the collateral each time).

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use veil_attest_core::UnixTime;
use veil_attest_core::crypto::{EcdsaEncoding, Scheme};
use veil_attest_core::x509::{Certificate, public_key_from_spki};
use veil_attest_dcap as dcap;
use veil_attest_snp as snp;
use veil_attest_tpm as tpm;

#[derive(Parser, Debug)]
#[command(about = "Veil benchmarks")]
struct Args {
    /// What to measure: `attest` (evidence verification), `atls` (attested TLS handshakes
    /// between software-TPM nodes), `cluster` (join latency, key requests), `mesh`
    /// (throughput between nodes over the WireGuard mesh, against boringtun-cli; needs root) or
    /// `kubernetes` (a real `veil mini up`: bring-up, pod start latency, pod-to-pod throughput
    /// against the plain node link, memory per node; needs root) or `storage` (a plain
    /// directory, gocryptfs and Veil's volume: sequential MB/s, 4 KiB random IOPS; needs root)
    /// or `cas` (durable audit appends, secret releases).
    #[arg(value_parser = ["attest", "atls", "cluster", "mesh", "kubernetes", "storage", "cas"])]
    suite: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// The test vectors directory (default: this repository's).
    #[arg(long)]
    vectors: Option<PathBuf>,
}

fn read(dir: &Path, rel: &str) -> Result<Vec<u8>> {
    let p = dir.join(rel);
    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))
}

/// Runs `f` repeatedly for `secs` and returns operations per second.
fn rate(secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    // Warm up, and fail early if the operation fails.
    for _ in 0..10 {
        f()?;
    }
    let budget = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..10 {
            f()?;
        }
        n += 10;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

fn line(what: &str, ours: f64, base: Option<(&str, f64)>, goal: &str) {
    match base {
        Some((name, b)) => println!(
            "{what:<34} {ours:>10.0} /s   baseline {name}: {b:>8.0} /s   ratio {:>5.2}x   {goal}",
            ours / b
        ),
        None => println!("{what:<34} {ours:>10.0} /s   {goal}"),
    }
}

mod atls;
mod cas;
mod cluster;
mod kubernetes;
mod mesh;
mod plain;
mod storage;

fn main() -> Result<()> {
    // A baseline node of `kubernetes` (started by the suite itself).
    let raw: Vec<String> = std::env::args().collect();
    if raw.get(1).map(String::as_str) == Some("plain-node") {
        return plain::node_main(Path::new(raw.get(2).context("plain-node DATA")?));
    }
    let a = Args::parse();
    if a.suite == "atls" {
        return atls::run(a.seconds);
    }
    if a.suite == "cluster" {
        return cluster::run(a.seconds);
    }
    if a.suite == "mesh" {
        return mesh::run(a.seconds);
    }
    if a.suite == "kubernetes" {
        return kubernetes::run(a.seconds);
    }
    if a.suite == "storage" {
        return storage::run(a.seconds);
    }
    if a.suite == "cas" {
        return cas::run(a.seconds);
    }
    let v = &a.vectors.clone().unwrap_or_else(veil_testvectors::dir);
    if !v.join("INDEX.md").exists() {
        bail!(
            "{} is not the test vectors directory (use --vectors)",
            v.display()
        );
    }
    println!(
        "veil-bench attest: one thread, {:.1} s per figure",
        a.seconds
    );

    // --- SEV-SNP -------------------------------------------------------------------------
    let now = UnixTime::parse_rfc3339("2026-01-01T00:00:00Z")?;
    let report = read(v, "snp/milan-virtee/report_milan.bin")?;
    let vcek = Certificate::from_der(&read(v, "snp/milan-virtee/vcek_milan.der")?, "VCEK")?;
    let roots = snp::AmdRoots::pinned()?;
    let policy = snp::SnpPolicy::default();
    let signer = snp::Signer::establish(&vcek, &[], roots, now)?;
    let ours = rate(a.seconds, || {
        black_box(signer.verify_report(black_box(&report), &policy, now)?);
        Ok(())
    })?;
    let fresh = rate(a.seconds, || {
        black_box(snp::verify(
            black_box(&report),
            &vcek,
            &[],
            roots,
            &policy,
            now,
        )?);
        Ok(())
    })?;
    line(
        "SNP report (cached VCEK chain)",
        ours,
        Some(("chain each time", fresh)),
        "goal >= 2000/s",
    );
    // The floor: the one ECDSA P-384 verification every report needs.
    let key = vcek
        .public_key()?
        .prepare(Scheme::EcdsaSha384, EcdsaEncoding::Fixed)?;
    let parsed = snp::AttestationReport::parse(&report)?;
    let signed = report.get(..snp::report::SIGNED_LEN).unwrap_or_default();
    let sig = parsed.signature_fixed();
    let floor = rate(a.seconds, || {
        black_box(key.verify(black_box(signed), &sig)?);
        Ok(())
    })?;
    line("  (ECDSA P-384 verify alone)", floor, None, "");

    // --- TDX and SGX ---------------------------------------------------------------------
    let root = dcap::intel_root()?;
    for (name, dir, when, goal) in [
        (
            "TDX quote v4 (cached collateral)",
            "tdx/dcapqvl-v4-uptodate",
            "2025-07-01T00:00:00Z",
            "goal ratio >= 2x",
        ),
        (
            "SGX quote v3 (cached collateral)",
            "sgx/dcapqvl-v3",
            "2025-07-01T00:00:00Z",
            "",
        ),
    ] {
        let now = UnixTime::parse_rfc3339(when)?;
        let quote = read(v, &format!("{dir}/quote.bin"))?;
        let json = read(v, &format!("{dir}/collateral.json"))?;
        let collateral = dcap::Collateral::from_json(&json)?;
        let verifier =
            dcap::QuoteVerifier::new(dcap::VerifiedCollateral::verify(&collateral, &root, now)?);
        let policy = dcap::DcapPolicy::default();
        let ours = rate(a.seconds, || {
            black_box(verifier.verify(black_box(&quote), &policy, now)?);
            Ok(())
        })?;
        let qvl: dcap_qvl::QuoteCollateralV3 = serde_json::from_slice(&json)?;
        let secs = now.0 as u64;
        let baseline = rate(a.seconds, || {
            black_box(
                dcap_qvl::verify::ring::verify(black_box(&quote), &qvl, secs)
                    .map_err(|e| anyhow::anyhow!("dcap-qvl: {e}"))?,
            );
            Ok(())
        })?;
        line(name, ours, Some(("dcap-qvl verify", baseline)), goal);
        let ours_fresh = rate(a.seconds, || {
            let c = dcap::Collateral::from_json(&json)?;
            let v = dcap::QuoteVerifier::new(dcap::VerifiedCollateral::verify(&c, &root, now)?);
            black_box(v.verify(black_box(&quote), &policy, now)?);
            Ok(())
        })?;
        line(
            "  (Veil, collateral each time)",
            ours_fresh,
            Some(("dcap-qvl verify", baseline)),
            "",
        );
    }

    // --- TPM -----------------------------------------------------------------------------
    let msg = read(v, "tpm/azure-vtpm-quote/quote.msg")?;
    let sig = read(v, "tpm/azure-vtpm-quote/quote.sig")?;
    let ak = public_key_from_spki(&read(v, "tpm/azure-vtpm-quote/akpub.pem")?)?;
    let pcrs = tpm::parse_pcr_text(&String::from_utf8(read(
        v,
        "tpm/azure-vtpm-quote/pcrs_sha256.txt",
    )?)?)?;
    let qs = tpm::QuoteSignature::from_bytes(&sig, &ak)?;
    let policy = tpm::TpmPolicy {
        nonce: Some(tpm::HexValue(b"challenge".to_vec())),
        ..tpm::TpmPolicy::default()
    };
    let tpm_rate = rate(a.seconds, || {
        let ev = tpm::QuoteEvidence {
            attest: black_box(&msg),
            signature: &qs,
            ak: &ak,
            ak_qualified_name: None,
            pcrs: Some(&pcrs),
            event_log: None,
        };
        black_box(tpm::verify_quote(&ev, None, &policy, now)?);
        Ok(())
    })?;
    line("TPM quote (RSA-2048, 24 PCRs)", tpm_rate, None, "");

    // --- Azure SEV-SNP vTPM ----------------------------------------------------------------
    let ev = veil_attest_azure::AzureEvidence::from_json(&read(
        v,
        "snp/azure-vtpm-milan/evidence-v1.json",
    )?)?;
    let vcek = Certificate::parse_many(ev.vcek.as_deref().unwrap_or_default(), "VCEK")?.remove(0);
    let signer = snp::Signer::establish(&vcek, &[], roots, now)?;
    let az = rate(a.seconds, || {
        black_box(veil_attest_azure::authenticate_snp_vtpm(
            &ev.hcl_report,
            &ev.tpm_quote,
            &signer,
            &policy,
            now,
        )?);
        Ok(())
    })?;
    line("Azure SNP vTPM evidence", az, None, "");
    Ok(())
}
