//! A TPM manufactured by the local CA carries an EK certificate that chains to that CA's
//! root, and the daemon comes up and goes away on request.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::process::Command;

use veil_attest_core::UnixTime;
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_swtpm::{LocalCa, SwTpm};

fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    )
}

#[test]
fn manufactured_tpm_has_an_ek_certificate_from_the_local_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = LocalCa::at(&dir.path().join("ca"));
    let state = dir.path().join("node-1");
    ca.manufacture(&state).unwrap();
    // The CA's private keys are the owner's secrets: 0600 (swtpm_localca writes 0640).
    use std::os::unix::fs::PermissionsExt;
    let keys = ca.private_key_files();
    assert!(keys.len() >= 2, "{keys:?}");
    for k in keys {
        let mode = std::fs::metadata(&k).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", k.display());
    }
    let mut tpm = SwTpm::start(&state).unwrap();
    // Read the RSA EK certificate from its NV index (0x01c00002), as a node agent would.
    let out = Command::new("tpm2_nvread")
        .args(["0x01c00002", "-o"])
        .arg(dir.path().join("ek.der"))
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ek =
        Certificate::from_der(&std::fs::read(dir.path().join("ek.der")).unwrap(), "EK").unwrap();
    let issuer = Certificate::parse_many(&ca.issuer_pem().unwrap(), "issuer").unwrap();
    let root = Certificate::parse_many(&ca.root_pem().unwrap(), "root").unwrap();
    let reached = verify_chain(&[&ek, &issuer[0]], &root, now()).unwrap();
    assert_eq!(reached.der(), root[0].der());

    // A second TPM from another CA does not chain to the first CA.
    let other = LocalCa::at(&dir.path().join("other-ca"));
    other.manufacture(&dir.path().join("node-x")).unwrap();
    let other_root = Certificate::parse_many(&other.root_pem().unwrap(), "root").unwrap();
    assert!(verify_chain(&[&ek, &issuer[0]], &other_root, now()).is_err());

    tpm.stop().unwrap();
    let out = Command::new("tpm2_pcrread")
        .arg("sha256:0")
        .env("TPM2TOOLS_TCTI", tpm.tcti())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the TPM still answers after stop");
}
