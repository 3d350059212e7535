//! csi-sanity (kubernetes-csi/csi-test, the conformance suite written for every CSI driver)
//! against Veil's Identity, Controller and Node services (`veil-csi local`): real volumes
//! formatted, attached, staged on FUSE + loop + ext4, published, unpublished and deleted, and
//! every error code the specification asks for. `components/csi-sanity.sh` builds it (setup
//! does); `VEIL_CSI_SANITY` names it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, Stdio};

fn bin(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_veil-csi")).with_file_name(name)
}

fn csi_sanity() -> PathBuf {
    let p = std::env::var_os("VEIL_CSI_SANITY")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".cache/veil-ci/tools/csi-sanity-v5.6.0/csi-sanity"))
        })
        .unwrap();
    assert!(
        p.exists(),
        "csi-sanity is not at {} (build it: components/csi-sanity.sh, or set VEIL_CSI_SANITY)",
        p.display()
    );
    p
}

#[test]
fn csi_sanity_passes() {
    let sanity = csi_sanity();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let mut child = Command::new(bin("veil-csi"))
        .arg("local")
        .arg("--socket")
        .arg(&sock)
        .arg("--pool")
        .arg(dir.path().join("pool"))
        .arg("--volume-binary")
        .arg(bin("veil-volume"))
        .arg("--work")
        .arg(dir.path().join("work"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("ready"), "{ready}");
    let out = Command::new(sanity)
        .arg("--csi.endpoint")
        .arg(&sock)
        .arg("--csi.stagingdir")
        .arg(dir.path().join("staging"))
        .arg("--csi.mountdir")
        .arg(dir.path().join("mount"))
        .args(["--csi.testvolumesize", &(32u64 << 20).to_string()])
        .arg("--ginkgo.no-color")
        .output()
        .unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = child.wait();
    let text = String::from_utf8_lossy(&out.stdout);
    let summary = text
        .lines()
        .find(|l| l.contains("Passed |"))
        .unwrap_or("no summary")
        .to_string();
    eprintln!("csi-sanity: {summary}");
    assert!(
        out.status.success(),
        "csi-sanity failed: {summary}\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The suite ran the specs this driver's capabilities call for, not none.
    let passed = passed_count(&summary).unwrap_or(0);
    assert!(passed >= 30, "only {passed} specs passed: {summary}");
}

/// The number before `Passed` in `SUCCESS! -- 41 Passed | 0 Failed | ...`.
fn passed_count(summary: &str) -> Option<u32> {
    let words: Vec<&str> = summary.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1] == "Passed")
        .and_then(|w| w[0].parse().ok())
}
