//! A node launched on a real (software) TPM by Veil's measured-launch plan is accepted by the
//! reference values computed from the same inputs; a node with a changed agent or config is
//! refused with the PCR named; an upgrade set accepts both versions; a signature made here
//! verifies with OpenSSL (a tool outside Veil).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;
use std::process::Command;

use veil_attest_core::UnixTime;
use veil_attest_tpm::{
    HashAlg, Public, Quote, QuoteEvidence, QuoteSignature, TpmClaims, TpmPolicy, verify_quote,
};
use veil_reference::launch::{Launch, PCR_AGENT, PCR_CONFIG, QUOTED_PCRS, cluster_pcr};
use veil_reference::{MeasurementSet, ReferenceValues, signing};
use veil_swtpm::{LocalCa, SwTpm};

fn tool(dir: &Path, tcti: &str, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .env("TPM2TOOLS_TCTI", tcti)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for t in ["-t", "-s", "-l"] {
        let _ = Command::new("tpm2_flushcontext")
            .arg(t)
            .env("TPM2TOOLS_TCTI", tcti)
            .output();
    }
}

/// Boots a node: manufactures a TPM, plays the launch as firmware would, quotes the Veil PCRs.
fn boot(dir: &Path, launch: &Launch) -> TpmClaims {
    let ca = LocalCa::at(&dir.join("ca"));
    ca.manufacture(&dir.join("tpm")).unwrap();
    let tpm = SwTpm::start(&dir.join("tpm")).unwrap();
    let tcti = tpm.tcti();
    let log = launch.event_log();
    for e in &log.events {
        let spec: Vec<String> = e
            .digests
            .iter()
            .map(|(b, d)| format!("{}={}", b.name(), hex::encode(d)))
            .collect();
        tool(
            dir,
            &tcti,
            &["tpm2_pcrextend", &format!("{}:{}", e.pcr, spec.join(","))],
        );
    }
    tool(
        dir,
        &tcti,
        &["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"],
    );
    tool(
        dir,
        &tcti,
        &[
            "tpm2_createak",
            "-C",
            "ek.ctx",
            "-c",
            "ak.ctx",
            "-G",
            "rsa",
            "-g",
            "sha256",
            "-s",
            "rsassa",
            "-u",
            "ak.pub",
            "-n",
            "ak.name",
        ],
    );
    let pcrs: Vec<String> = QUOTED_PCRS.iter().map(u32::to_string).collect();
    let sel = format!("sha1:{0}+sha256:{0}", pcrs.join(","));
    tool(
        dir,
        &tcti,
        &[
            "tpm2_quote",
            "-c",
            "ak.ctx",
            "-l",
            &sel,
            "-q",
            "abcdef",
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-g",
            "sha256",
        ],
    );
    let ak = Public::parse(&std::fs::read(dir.join("ak.pub")).unwrap())
        .unwrap()
        .key;
    let attest = std::fs::read(dir.join("quote.msg")).unwrap();
    let sig =
        QuoteSignature::from_bytes(&std::fs::read(dir.join("quote.sig")).unwrap(), &ak).unwrap();
    let quote = Quote::parse(&attest).unwrap();
    let values = log.expected_pcrs(&quote.pcr_select);
    let ev = QuoteEvidence {
        attest: &attest,
        signature: &sig,
        ak: &ak,
        ak_qualified_name: None,
        pcrs: Some(&values),
        event_log: Some(&log),
    };
    verify_quote(&ev, None, &TpmPolicy::default(), UnixTime(0)).unwrap()
}

#[test]
fn reference_values_accept_the_launch_they_describe_and_refuse_others() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = Launch::measure(b"agent v1", b"config", b"image");
    let claims = boot(dir.path(), &v1);
    // The cluster-ID PCR of a fresh node is zero.
    assert_eq!(
        claims.pcrs[&HashAlg::Sha256][&15],
        hex::encode(cluster_pcr(HashAlg::Sha256, None))
    );

    let mut doc = ReferenceValues {
        version: veil_reference::VERSION,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![MeasurementSet::from_launch("v1", &v1, &["worker"])],
    };
    assert_eq!(doc.evaluate_tpm("worker", &claims).unwrap(), "v1");
    let e = doc.evaluate_tpm("control-plane", &claims).unwrap_err();
    assert!(
        e.to_string().contains("no values for role `control-plane`"),
        "{e}"
    );

    // A node with another agent binary: refused, the agent PCR named.
    let dir2 = tempfile::tempdir().unwrap();
    let tampered = boot(
        dir2.path(),
        &Launch::measure(b"agent v1 + backdoor", b"config", b"image"),
    );
    let e = doc.evaluate_tpm("worker", &tampered).unwrap_err();
    assert!(
        e.to_string().contains(&format!("PCR sha1:{PCR_AGENT}")),
        "{e}"
    );
    // Another configuration: the config PCR named.
    let dir3 = tempfile::tempdir().unwrap();
    let reconfigured = boot(
        dir3.path(),
        &Launch::measure(b"agent v1", b"debug: true", b"image"),
    );
    let e = doc.evaluate_tpm("worker", &reconfigured).unwrap_err();
    assert!(
        e.to_string().contains(&format!("PCR sha1:{PCR_CONFIG}")),
        "{e}"
    );

    // An upgrade: with v2 added, both the running v1 node and a v2 node are accepted.
    let v2 = Launch::measure(b"agent v1 + backdoor", b"config", b"image");
    doc.upsert(MeasurementSet::from_launch("v2", &v2, &["worker"]));
    assert_eq!(doc.evaluate_tpm("worker", &claims).unwrap(), "v1");
    assert_eq!(doc.evaluate_tpm("worker", &tampered).unwrap(), "v2");

    // Round trip through YAML, signed; OpenSSL verifies the signature too.
    let yaml = doc.to_yaml().unwrap();
    assert_eq!(ReferenceValues::parse(yaml.as_bytes()).unwrap(), doc);
    let (sk, pk) = signing::generate_key().unwrap();
    let sig = signing::sign(sk.as_bytes(), yaml.as_bytes()).unwrap();
    signing::verify(pk.as_bytes(), yaml.as_bytes(), &sig).unwrap();
    let d = dir.path();
    std::fs::write(d.join("refs.yaml"), &yaml).unwrap();
    std::fs::write(d.join("refs.pub"), &pk).unwrap();
    use base64::Engine;
    std::fs::write(
        d.join("refs.sig.der"),
        base64::engine::general_purpose::STANDARD
            .decode(&sig)
            .unwrap(),
    )
    .unwrap();
    let out = Command::new("openssl")
        .args([
            "dgst",
            "-sha256",
            "-verify",
            "refs.pub",
            "-signature",
            "refs.sig.der",
            "refs.yaml",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Verified OK");
}

#[test]
fn malformed_documents_name_the_problem() {
    assert!(
        ReferenceValues::parse(b"version: 2\nsets: []")
            .unwrap_err()
            .to_string()
            .contains("version: expected 1, found 2")
    );
    assert!(
        ReferenceValues::parse(b"version: 1\nsets: []")
            .unwrap_err()
            .to_string()
            .contains("no measurement sets")
    );
    let dup = b"version: 1\nsets:\n- {name: a, roles: {}}\n- {name: a, roles: {}}\n";
    assert!(
        ReferenceValues::parse(dup)
            .unwrap_err()
            .to_string()
            .contains("`a` appears twice")
    );
    assert!(ReferenceValues::parse(b"version: 1\nbogus: 1\nsets: []").is_err());
}
