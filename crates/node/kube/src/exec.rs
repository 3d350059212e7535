//! Running a program with none of this process's descriptors. The TPM library opens a socket
//! to the TPM for each command without close-on-exec; a child started while one is open keeps
//! it, and the software TPM, which serves one connection at a time, keeps serving that one
//! while every later command of the agent waits — for as long as the child lives (a minute of
//! `ctr images import` held the node's TPM, so its state volume's fsyncs, its re-attestation
//! and its mesh). The agent sets itself as the shim ([`set_shim`]); [`command`] then starts
//! `shim --exec-clean PROGRAM ARGS…`, which closes every descriptor above standard error and
//! executes the program ([`exec_clean`]). The descriptors live in the shim for the moment
//! between its fork and that close, not for the program's life.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The argument that makes the shim clean and execute.
pub const FLAG: &str = "--exec-clean";

static SHIM: OnceLock<PathBuf> = OnceLock::new();

/// Names the shim (a binary whose `main` calls [`exec_clean`] on [`FLAG`]); once.
pub fn set_shim(path: PathBuf) {
    let _ = SHIM.set(path);
}

/// A command for `program` that starts through the shim, if one is set (else directly).
pub fn command(program: impl AsRef<OsStr>) -> Command {
    match SHIM.get() {
        Some(shim) => {
            let mut c = Command::new(shim);
            c.arg(FLAG).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The shim's side: closes every descriptor above standard error and executes `args[0]`
/// with `args` (searched in `PATH`). Returns only on failure, with the reason.
pub fn exec_clean(args: &[String]) -> String {
    let Some(program) = args.first() else {
        return format!("usage: {FLAG} PROGRAM [ARGS…]");
    };
    veil_volume::launch::close_inherited();
    let c = |s: &String| CString::new(OsStr::new(s).as_bytes());
    let (Ok(prog), Ok(argv)) = (
        c(program),
        args.iter().map(c).collect::<Result<Vec<_>, _>>(),
    ) else {
        return format!("{program}: an argument holds a NUL byte");
    };
    match nix::unistd::execvp(&prog, &argv) {
        Err(e) => format!("cannot run {program}: {e}"),
        Ok(never) => match never {},
    }
}
