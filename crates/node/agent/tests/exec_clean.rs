//! What the agent starts goes through `veil-agent --exec-clean`, which drops the agent's
//! descriptors: a socket the TPM library left without close-on-exec is not inherited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::fd::AsRawFd;
use std::process::Command;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};

fn probe(fd: i32) -> String {
    format!("if [ -e /proc/self/fd/{fd} ]; then echo inherited; else echo clean; fi")
}

#[test]
fn a_descriptor_without_close_on_exec_is_not_inherited_through_the_shim() {
    let file = tempfile::tempfile().unwrap();
    // As the TPM library opens its socket: inheritable.
    fcntl(&file, FcntlArg::F_SETFD(FdFlag::empty())).unwrap();
    let fd = file.as_raw_fd();

    let direct = Command::new("sh")
        .args(["-c", &probe(fd)])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&direct.stdout).trim(),
        "inherited",
        "the probe cannot see an inherited descriptor: the check below would prove nothing"
    );

    let shimmed = Command::new(env!("CARGO_BIN_EXE_veil-agent"))
        .args(["--exec-clean", "sh", "-c", &probe(fd)])
        .output()
        .unwrap();
    assert!(shimmed.status.success(), "{shimmed:?}");
    assert_eq!(String::from_utf8_lossy(&shimmed.stdout).trim(), "clean");

    // Arguments reach the program unchanged; a program that is not there is an error.
    let out = Command::new(env!("CARGO_BIN_EXE_veil-agent"))
        .args(["--exec-clean", "printf", "%s|", "a b", "", "c"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "a b||c|");
    let missing = Command::new(env!("CARGO_BIN_EXE_veil-agent"))
        .args(["--exec-clean", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(127));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot run /nonexistent/program"),
        "{missing:?}"
    );
}
