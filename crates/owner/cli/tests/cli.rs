//! The `veil attest` forms scripts rely on: arguments, exit status (0 verified, 1 rejected,
//! 2 unusable input), the reason on stderr, and JSON output — run on every vector set.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

fn v(rel: &str) -> String {
    veil_testvectors::path(rel).display().to_string()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn veil(args: &[&str]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(args)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn verified(args: &[&str]) -> Run {
    let r = veil(args);
    assert_eq!(
        r.code, 0,
        "{args:?}\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    assert!(r.stdout.starts_with("VERIFIED"), "{}", r.stdout);
    r
}

fn rejected(args: &[&str], reason: &str) -> Run {
    let r = veil(args);
    assert_eq!(
        r.code, 1,
        "{args:?}\nstdout: {}\nstderr: {}",
        r.stdout, r.stderr
    );
    assert!(
        r.stderr.contains(reason),
        "{args:?}: stderr lacks `{reason}`: {}",
        r.stderr
    );
    r
}

const CHALLENGE: &str = "6368616c6c656e6765";

#[test]
fn snp_sets() {
    let r = verified(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/milan-virtee/report_milan.bin"),
        "--cert",
        &v("snp/milan-virtee/vcek_milan.der"),
        "--chain",
        &v("snp/milan-virtee/ask_ark_milan.pem"),
        "--as-of",
        "2026-01-01T00:00:00Z",
    ]);
    assert!(r.stdout.contains("Milan"));
    verified(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/milan-trustee-vcek/report.bin"),
        "--cert",
        &v("snp/milan-trustee-vcek/vcek.der"),
        "--as-of",
        "2026-01-01T00:00:00Z",
    ]);
    verified(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/genoa-trustee-e2e/report.bin"),
        "--cert",
        &v("snp/genoa-trustee-e2e/vcek.der"),
        "--as-of",
        "2026-01-01T00:00:00Z",
    ]);
    // VLEK: VMPL 1 refused by default, expired today.
    rejected(
        &[
            "attest",
            "verify",
            "snp",
            "--report",
            &v("snp/milan-trustee-vlek/report.bin"),
            "--cert",
            &v("snp/milan-trustee-vlek/vlek.der"),
            "--as-of",
            "2025-06-01T00:00:00Z",
        ],
        "vmpl: expected 0, found 1",
    );
    rejected(
        &[
            "attest",
            "verify",
            "snp",
            "--report",
            &v("snp/milan-trustee-vlek/report.bin"),
            "--cert",
            &v("snp/milan-trustee-vlek/vlek.der"),
            "--as-of",
            "2026-11-26T00:00:00Z",
        ],
        "expired",
    );
    // Wrong root.
    rejected(
        &[
            "attest",
            "verify",
            "snp",
            "--report",
            &v("snp/milan-virtee/report_milan.bin"),
            "--cert",
            &v("snp/milan-virtee/vcek_milan.der"),
            "--chain",
            &v("roots/amd/genoa_ask_ark_asvk.pem"),
            "--as-of",
            "2026-01-01T00:00:00Z",
        ],
        "not a trusted root",
    );
}

#[test]
fn snp_policy_file_and_report_data() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "snp:\n  vmpl: 1\n").unwrap();
    let p = policy.display().to_string();
    verified(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/milan-trustee-vlek/report.bin"),
        "--cert",
        &v("snp/milan-trustee-vlek/vlek.der"),
        "--as-of",
        "2025-06-01T00:00:00Z",
        "--policy",
        &p,
    ]);
    rejected(
        &[
            "attest",
            "verify",
            "snp",
            "--report",
            &v("snp/milan-trustee-vlek/report.bin"),
            "--cert",
            &v("snp/milan-trustee-vlek/vlek.der"),
            "--as-of",
            "2025-06-01T00:00:00Z",
            "--policy",
            &p,
            "--report-data",
            "00ff",
        ],
        "report_data: expected 00ff",
    );
    std::fs::write(&policy, "{\"snp\": {\"vmpl\": 1, \"bogus\": 1}}").unwrap();
    let r = veil(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/milan-trustee-vlek/report.bin"),
        "--cert",
        &v("snp/milan-trustee-vlek/vlek.der"),
        "--policy",
        &p,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("bogus"), "{}", r.stderr);
}

#[test]
fn json_output_carries_verdict_reason_and_claims() {
    let r = veil(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/milan-trustee-vlek/report.bin"),
        "--cert",
        &v("snp/milan-trustee-vlek/vlek.der"),
        "--as-of",
        "2025-06-01T00:00:00Z",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 1);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["verdict"], "rejected");
    assert_eq!(j["reason"], "policy: vmpl: expected 0, found 1");
    // Genuine evidence refused by policy still reports what it established.
    assert_eq!(j["claims"]["signer"], "VLEK");
    let r = veil(&[
        "attest",
        "verify",
        "tdx",
        "--quote",
        &v("tdx/dcapqvl-v4-uptodate/quote.bin"),
        "--collateral",
        &v("tdx/dcapqvl-v4-uptodate/collateral.json"),
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--output",
        "json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let j: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(j["verdict"], "verified");
    assert_eq!(j["claims"]["tcb"]["status"], "UpToDate");
    assert!(
        j["claims"]["quote"]["body"]["mr_td"]
            .as_str()
            .unwrap()
            .len()
            == 96
    );
}

#[test]
fn dcap_sets() {
    verified(&[
        "attest",
        "verify",
        "tdx",
        "--quote",
        &v("tdx/dcapqvl-v4-uptodate/quote.bin"),
        "--collateral",
        &v("tdx/dcapqvl-v4-uptodate/collateral.json"),
        "--as-of",
        "2025-07-01T00:00:00Z",
    ]);
    let r = verified(&[
        "attest",
        "verify",
        "sgx",
        "--quote",
        &v("sgx/dcapqvl-v3/quote.bin"),
        "--collateral",
        &v("sgx/dcapqvl-v3/collateral.json"),
        "--as-of",
        "2025-07-01T00:00:00Z",
    ]);
    assert!(r.stdout.contains("ConfigurationAndSWHardeningNeeded"));
    assert!(r.stdout.contains("INTEL-SA-00289, INTEL-SA-00615"));
    rejected(
        &[
            "attest",
            "verify",
            "tdx",
            "--quote",
            &v("tdx/dcapqvl-v5-no-tcb-match/quote.bin"),
            "--collateral",
            &v("tdx/dcapqvl-v5-no-tcb-match/collateral.json"),
            "--as-of",
            "2026-03-01T00:00:00Z",
        ],
        "no matching platform TCB level",
    );
    rejected(
        &[
            "attest",
            "verify",
            "tdx",
            "--quote",
            &v("tdx/gotdxguest-v4-spr-e4/quote.bin"),
            "--collateral",
            &v("tdx/gotdxguest-v4-spr-e4"),
            "--as-of",
            "2023-07-01T01:00:00Z",
        ],
        "no matching platform TCB level",
    );
    // Outside the collateral's validity.
    rejected(
        &[
            "attest",
            "verify",
            "tdx",
            "--quote",
            &v("tdx/dcapqvl-v4-uptodate/quote.bin"),
            "--collateral",
            &v("tdx/dcapqvl-v4-uptodate/collateral.json"),
            "--as-of",
            "2026-01-01T00:00:00Z",
        ],
        "collateral",
    );
    // An SGX quote given to `tdx` is unusable input.
    let r = veil(&[
        "attest",
        "verify",
        "tdx",
        "--quote",
        &v("sgx/dcapqvl-v3/quote.bin"),
        "--collateral",
        &v("sgx/dcapqvl-v3/collateral.json"),
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("verify sgx"), "{}", r.stderr);
}

#[test]
fn tpm_sets() {
    let q = v("tpm/azure-vtpm-quote/quote.msg");
    let s = v("tpm/azure-vtpm-quote/quote.sig");
    let ak = v("tpm/azure-vtpm-quote/akpub.pem");
    let pcrs = v("tpm/azure-vtpm-quote/pcrs_sha256.txt");
    verified(&[
        "attest",
        "verify",
        "tpm",
        "--quote",
        &q,
        "--signature",
        &s,
        "--ak",
        &ak,
        "--pcrs",
        &pcrs,
        "--nonce",
        CHALLENGE,
    ]);
    rejected(
        &[
            "attest",
            "verify",
            "tpm",
            "--quote",
            &q,
            "--signature",
            &s,
            "--ak",
            &ak,
            "--pcrs",
            &pcrs,
            "--nonce",
            "01020304",
        ],
        "extraData (nonce): expected 01020304",
    );
    let r = verified(&[
        "attest",
        "verify",
        "tpm",
        "--quote",
        &q,
        "--signature",
        &s,
        "--ak",
        &ak,
        "--nonce",
        CHALLENGE,
    ]);
    assert!(r.stdout.contains("NOT opened"), "{}", r.stdout);
    verified(&[
        "attest",
        "verify",
        "tpm",
        "--evidence",
        &v("tpm/trustee-tpm-evidence/tpm_evidence.json"),
    ]);
    // Unusable: the signature file is the PCR list.
    let r = veil(&[
        "attest",
        "verify",
        "tpm",
        "--quote",
        &q,
        "--signature",
        &pcrs,
        "--ak",
        &ak,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
}

#[test]
fn azure_sets() {
    let genoa_nonce = "0218488bae25d2509232bf676f1a66a30d7372add909109b36016ef136f2938ca05475f8b46094de6b64270ea35d950f";
    verified(&[
        "attest",
        "verify",
        "az-snp-vtpm",
        "--evidence",
        &v("snp/azure-vtpm-genoa/evidence-genoa.json"),
        "--nonce",
        genoa_nonce,
        "--as-of",
        "2026-01-01T00:00:00Z",
    ]);
    for e in ["evidence-v0.json", "evidence-v1.json"] {
        verified(&[
            "attest",
            "verify",
            "az-snp-vtpm",
            "--evidence",
            &v(&format!("snp/azure-vtpm-milan/{e}")),
            "--nonce",
            CHALLENGE,
            "--as-of",
            "2026-01-01T00:00:00Z",
        ]);
    }
    let v2 = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";
    verified(&[
        "attest",
        "verify",
        "az-snp-vtpm",
        "--evidence",
        &v("snp/azure-vtpm-milan/evidence-v2.json"),
        "--nonce",
        v2,
        "--report-data",
        v2,
        "--as-of",
        "2026-01-01T00:00:00Z",
    ]);
    rejected(
        &[
            "attest",
            "verify",
            "az-snp-vtpm",
            "--evidence",
            &v("snp/azure-vtpm-milan/evidence-v1.json"),
            "--nonce",
            "00",
            "--as-of",
            "2026-01-01T00:00:00Z",
        ],
        "extraData",
    );
    for e in ["evidence-v0.json", "evidence-v1.json"] {
        let r = verified(&[
            "attest",
            "verify",
            "az-tdx-vtpm",
            "--evidence",
            &v(&format!("tdx/azure-tdx-vtpm/{e}")),
            "--skip-tcb-status",
            "--nonce",
            CHALLENGE,
            "--as-of",
            "2026-01-01T00:00:00Z",
        ]);
        assert!(r.stdout.contains("UNKNOWN"));
    }
    // From separate files.
    let dir = tempfile::tempdir().unwrap();
    let pcrs = dir.path().join("pcrs.txt");
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(v("tdx/azure-tdx-vtpm/evidence-v1.json")).unwrap())
            .unwrap();
    let lines: Vec<String> = j["tpm_quote"]["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{i} {}", p.as_str().unwrap()))
        .collect();
    std::fs::write(&pcrs, lines.join("\n")).unwrap();
    let msg = dir.path().join("msg");
    std::fs::write(
        &msg,
        hex::decode(j["tpm_quote"]["message"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let sig = dir.path().join("sig");
    std::fs::write(
        &sig,
        hex::decode(j["tpm_quote"]["signature"].as_str().unwrap()).unwrap(),
    )
    .unwrap();
    verified(&[
        "attest",
        "verify",
        "az-tdx-vtpm",
        "--hcl-report",
        &v("tdx/azure-tdx-vtpm/hcl-report.bin"),
        "--td-quote",
        &v("tdx/azure-tdx-vtpm/td-quote.bin"),
        "--tpm-quote",
        &msg.display().to_string(),
        "--tpm-signature",
        &sig.display().to_string(),
        "--pcrs",
        &pcrs.display().to_string(),
        "--skip-tcb-status",
        "--nonce",
        CHALLENGE,
        "--as-of",
        "2026-01-01T00:00:00Z",
    ]);
}

#[test]
fn inspect_recognises_every_format() {
    for (file, what) in [
        (
            "snp/milan-virtee/report_milan.bin",
            "AMD SEV-SNP attestation report",
        ),
        (
            "tdx/dcapqvl-v5-no-tcb-match/quote.bin",
            "Intel TDX quote, version 5",
        ),
        ("sgx/dcapqvl-v3/quote.bin", "Intel SGX quote, version 3"),
        ("tpm/azure-vtpm-quote/quote.msg", "TPM 2.0 quote"),
        ("snp/azure-vtpm-genoa/hcl-report.bin", "Azure HCL report"),
        (
            "snp/azure-vtpm-milan/evidence-v1.json",
            "Azure CVM evidence JSON, version 1",
        ),
        (
            "tdx/dcapqvl-v4-uptodate/collateral.json",
            "DCAP collateral JSON",
        ),
        (
            "tpm/trustee-tpm-evidence/tpm_evidence.json",
            "TPM evidence JSON",
        ),
        ("snp/milan-virtee/vcek_milan.der", "X.509 certificate"),
        ("tdx/gotdxguest-v4-spr-e4/pck_crl.der", "X.509 CRL"),
    ] {
        let r = veil(&["attest", "inspect", &v(file)]);
        assert_eq!(r.code, 0, "{file}: {}", r.stderr);
        assert!(r.stdout.starts_with(what), "{file}: {}", r.stdout);
    }
    let r = veil(&["attest", "inspect", &v("INDEX.md")]);
    assert_eq!(r.code, 2);
}

#[test]
fn bad_arguments_are_unusable_input() {
    assert_eq!(veil(&["attest", "verify", "snp"]).code, 2);
    assert_eq!(
        veil(&[
            "attest",
            "verify",
            "snp",
            "--report",
            "/nonexistent",
            "--cert",
            "/nonexistent"
        ])
        .code,
        2
    );
    let r = veil(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/milan-virtee/report_milan.bin"),
        "--cert",
        &v("snp/milan-virtee/vcek_milan.der"),
        "--as-of",
        "yesterday",
    ]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("RFC 3339"), "{}", r.stderr);
}

#[test]
fn readme_reference_values_parse_and_apply() {
    // The example in README.md is a working reference-values file: its TPM section pins PCR 0
    // of the Azure vTPM vector.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../README.md"))
            .unwrap();
    let start = readme.find("```yaml\n").unwrap() + 8;
    let end = start + readme[start..].find("```").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("readme.yaml");
    std::fs::write(&policy, &readme[start..end]).unwrap();
    let p = policy.display().to_string();
    let q = v("tpm/azure-vtpm-quote/quote.msg");
    let s = v("tpm/azure-vtpm-quote/quote.sig");
    let ak = v("tpm/azure-vtpm-quote/akpub.pem");
    let pcrs = v("tpm/azure-vtpm-quote/pcrs_sha256.txt");
    verified(&[
        "attest",
        "verify",
        "tpm",
        "--quote",
        &q,
        "--signature",
        &s,
        "--ak",
        &ak,
        "--pcrs",
        &pcrs,
        "--nonce",
        CHALLENGE,
        "--policy",
        &p,
    ]);
    // Its TDX section pins an MRTD and RTMR 0 that the v4 vector has; its SGX section the MRSIGNER.
    verified(&[
        "attest",
        "verify",
        "tdx",
        "--quote",
        &v("tdx/dcapqvl-v4-uptodate/quote.bin"),
        "--collateral",
        &v("tdx/dcapqvl-v4-uptodate/collateral.json"),
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--policy",
        &p,
    ]);
    verified(&[
        "attest",
        "verify",
        "sgx",
        "--quote",
        &v("sgx/dcapqvl-v3/quote.bin"),
        "--collateral",
        &v("sgx/dcapqvl-v3/collateral.json"),
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--policy",
        &p,
    ]);
    // Its SNP section wants the milan-virtee measurement and a TCB that report meets.
    verified(&[
        "attest",
        "verify",
        "snp",
        "--report",
        &v("snp/milan-virtee/report_milan.bin"),
        "--cert",
        &v("snp/milan-virtee/vcek_milan.der"),
        "--as-of",
        "2026-01-01T00:00:00Z",
        "--policy",
        &p,
    ]);
    // Another report is refused, on its TCB (checked before the measurement).
    rejected(
        &[
            "attest",
            "verify",
            "snp",
            "--report",
            &v("snp/genoa-trustee-e2e/report.bin"),
            "--cert",
            &v("snp/genoa-trustee-e2e/vcek.der"),
            "--as-of",
            "2026-01-01T00:00:00Z",
            "--policy",
            &p,
        ],
        "reported_tcb.microcode: expected at least 115, found 25",
    );
}

#[test]
fn policy_sections_refuse_with_their_field() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        "tdx:\n  rtmr:\n    3: [\"11\"]\ntpm:\n  pcrs:\n    sha256:\n      7: [\"00\"]\n",
    )
    .unwrap();
    let p = policy.display().to_string();
    // A malformed value (1 byte for a 48-byte RTMR) is unusable input.
    let r = veil(&[
        "attest",
        "verify",
        "tdx",
        "--quote",
        &v("tdx/dcapqvl-v4-uptodate/quote.bin"),
        "--collateral",
        &v("tdx/dcapqvl-v4-uptodate/collateral.json"),
        "--as-of",
        "2025-07-01T00:00:00Z",
        "--policy",
        &p,
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    let rtmr3 = "0".repeat(96);
    std::fs::write(&policy, format!("tdx:\n  rtmr:\n    3: [\"{rtmr3}\"]\n    2: [\"{rtmr3}\"]\ntpm:\n  pcrs:\n    sha256:\n      7: \"{}\"\n", "00".repeat(32))).unwrap();
    rejected(
        &[
            "attest",
            "verify",
            "tdx",
            "--quote",
            &v("tdx/dcapqvl-v4-uptodate/quote.bin"),
            "--collateral",
            &v("tdx/dcapqvl-v4-uptodate/collateral.json"),
            "--as-of",
            "2025-07-01T00:00:00Z",
            "--policy",
            &p,
        ],
        "policy: rtmr2: ",
    );
    rejected(
        &[
            "attest",
            "verify",
            "tpm",
            "--quote",
            &v("tpm/azure-vtpm-quote/quote.msg"),
            "--signature",
            &v("tpm/azure-vtpm-quote/quote.sig"),
            "--ak",
            &v("tpm/azure-vtpm-quote/akpub.pem"),
            "--pcrs",
            &v("tpm/azure-vtpm-quote/pcrs_sha256.txt"),
            "--policy",
            &p,
        ],
        "policy: PCR sha256:7: expected 0000",
    );
}

#[test]
fn measurements_keygen_compute_sign_verify() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(d("agent"), b"agent v1").unwrap();
    std::fs::write(d("image"), b"debian").unwrap();
    let ok = |args: &[&str]| {
        let r = veil(args);
        assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
        r
    };
    ok(&["measurements", "keygen", "--key", &d("key.pem")]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Keygen never overwrites a key.
    assert_eq!(
        veil(&["measurements", "keygen", "--key", &d("key.pem")]).code,
        2
    );
    // A node's configuration, naming the reference key and the owner's key: both measured.
    ok(&["measurements", "keygen", "--key", &d("owner.pem")]);
    let mut cfg = veil_reference::node_config::AgentConfig {
        name: "w".into(),
        role: "worker".into(),
        control_planes: vec!["10.0.0.1:7443".into()],
        listen: None,
        tcti: "swtpm:port=2321".into(),
        event_log: d("eventlog.bin").into(),
        reference_values: d("refs.yaml").into(),
        reference_signature: d("refs.yaml.sig").into(),
        reference_key: d("key.pem.pub").into(),
        owner_key: d("owner.pem.pub").into(),
        tpm_roots_local: false,
        state_dir: d("state").into(),
        metrics: None,
        mesh: None,
        kubernetes: None,
    };
    std::fs::write(d("config"), serde_norway::to_string(&cfg).unwrap()).unwrap();
    let compute = |name: &str| {
        ok(&[
            "measurements",
            "compute",
            "--agent",
            &d("agent"),
            "--config",
            &d("config"),
            "--image",
            &d("image"),
            "--name",
            name,
            "-o",
            &d("refs.yaml"),
        ])
    };
    let pcr9 = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("agent-config"))
            .and_then(|l| l.split("sha256:").nth(1))
            .unwrap()
            .to_string()
    };
    let r = compute("v1");
    // What `compute` predicts is what a node measures (one function for both).
    use sha2::Digest;
    assert_eq!(
        pcr9(&r.stdout),
        hex::encode(sha2::Sha256::digest(cfg.measured_from_files().unwrap()))
    );
    // Another owner key is another measurement.
    ok(&["measurements", "keygen", "--key", &d("owner2.pem")]);
    cfg.owner_key = d("owner2.pem.pub").into();
    std::fs::write(d("config2"), serde_norway::to_string(&cfg).unwrap()).unwrap();
    let r2 = ok(&[
        "measurements",
        "compute",
        "--agent",
        &d("agent"),
        "--config",
        &d("config2"),
        "--image",
        &d("image"),
        "--name",
        "other-owner",
        "-o",
        &d("other.yaml"),
    ]);
    assert_ne!(pcr9(&r.stdout), pcr9(&r2.stdout));
    // On hardware, the boot chain (PCRs 0-7) is pinned from a known-good node's values.
    std::fs::write(
        d("boot.txt"),
        format!(
            "sha256:\n  0 : 0x{}\n  7 : 0x{}\n",
            "ab".repeat(32),
            "cd".repeat(32)
        ),
    )
    .unwrap();
    let r = ok(&[
        "measurements",
        "compute",
        "--agent",
        &d("agent"),
        "--config",
        &d("config"),
        "--image",
        &d("image"),
        "--name",
        "hw",
        "--boot-pcrs",
        &d("boot.txt"),
        "-o",
        &d("hw.yaml"),
    ]);
    assert!(
        r.stdout.contains("2 PCR values of PCRs 0-7 pinned"),
        "{}",
        r.stdout
    );
    let hw = std::fs::read_to_string(d("hw.yaml")).unwrap();
    assert!(hw.contains(&"cd".repeat(32)), "{hw}");
    // A local node's firmware measures its own boot chain.
    let r = ok(&[
        "measurements",
        "compute",
        "--agent",
        &d("agent"),
        "--config",
        &d("config"),
        "--image",
        &d("image"),
        "--name",
        "local",
        "--local-firmware",
        "-o",
        &d("local.yaml"),
    ]);
    assert!(r.stdout.contains("firmware      PCR  0"), "{}", r.stdout);
    // A file that is not an agent configuration is refused, named.
    std::fs::write(d("raw"), b"role: worker").unwrap();
    let r = veil(&[
        "measurements",
        "compute",
        "--agent",
        &d("agent"),
        "--config",
        &d("raw"),
        "--image",
        &d("image"),
        "--name",
        "v1",
        "-o",
        &d("raw.yaml"),
    ]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("not an agent configuration"),
        "{}",
        r.stderr
    );
    std::fs::write(d("agent"), b"agent v2").unwrap();
    compute("v2");
    ok(&[
        "measurements",
        "sign",
        "--key",
        &d("key.pem"),
        &d("refs.yaml"),
    ]);
    let r = ok(&[
        "measurements",
        "verify",
        "--pub",
        &d("key.pem.pub"),
        &d("refs.yaml"),
    ]);
    assert!(
        r.stdout.contains("set v1") && r.stdout.contains("set v2"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains("WARNING"), "{}", r.stdout);
    // Any altered byte fails verification (exit 1); another key too.
    let mut body = std::fs::read(d("refs.yaml")).unwrap();
    body[20] ^= 1;
    std::fs::write(d("refs.yaml"), &body).unwrap();
    let r = veil(&[
        "measurements",
        "verify",
        "--pub",
        &d("key.pem.pub"),
        &d("refs.yaml"),
    ]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("altered"), "{}", r.stderr);
    body[20] ^= 1;
    std::fs::write(d("refs.yaml"), &body).unwrap();
    ok(&["measurements", "keygen", "--key", &d("other.pem")]);
    assert_eq!(
        veil(&[
            "measurements",
            "verify",
            "--pub",
            &d("other.pem.pub"),
            &d("refs.yaml")
        ])
        .code,
        1
    );
}
