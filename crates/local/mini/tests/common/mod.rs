//! What the local-cluster tests share: the workspace's binaries and running `veil`.

use std::process::Command;

/// A binary of the workspace, built beside this test's (`cargo build --workspace --bins`, as
/// `scripts/test.sh` does: `veil`, `veil-mini` and `veil-agent` are three crates' binaries).
pub fn bin(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_BIN_EXE_veil-mini"))
        .parent()
        .expect("the test binary's directory")
        .to_path_buf();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the workspace's binaries first (cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// Runs `veil` with `args`: (exit code, stdout, stderr).
pub fn veil(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin("veil"))
        .args(args)
        .output()
        .expect("veil runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// The record `veil mini up` keeps of node `name` (its mini.json entry: pid, netns, addr, …).
pub fn mini_node(ws: &std::path::Path, name: &str) -> serde_json::Value {
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ws.join("mini.json")).expect("mini.json"))
            .expect("mini.json is JSON");
    state["nodes"]
        .as_array()
        .and_then(|nodes| nodes.iter().find(|n| n["name"] == name))
        .unwrap_or_else(|| panic!("no node {name} in mini.json"))
        .clone()
}
