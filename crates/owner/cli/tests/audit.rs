//! `veil audit verify` on a copy of a log: it verifies, proves an entry and extends a
//! checkpoint kept from before; an altered, removed or reordered entry is caught, as is a log
//! rewritten under the genuine key once an older checkpoint is held. Go's sumdb/tlog — an
//! implementation that is not ours — checks the same copy and Veil's consistency proof.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_tlog::log::Log;
use veil_tlog::note::NoteSigner;
use veil_tlog::tiles;

const ORIGIN: &str = "veil.test/cluster-0123456789abcdef/cas";

fn signer() -> NoteSigner {
    NoteSigner::from_seed(ORIGIN, &[21; 32]).unwrap()
}

fn entry(i: usize) -> Vec<u8> {
    format!(r#"{{"event":"cas.release","outcome":"allowed","session":"acme/payments","time":{i}}}"#)
        .into_bytes()
}

fn append(log: &mut Log, entries: impl Iterator<Item = Vec<u8>>) {
    let all: Vec<Vec<u8>> = entries.collect();
    let refs: Vec<&[u8]> = all.iter().map(Vec::as_slice).collect();
    log.append(&refs).unwrap();
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Run {
    let out = cmd.output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn veil(args: &[&str]) -> Run {
    run(Command::new(env!("CARGO_BIN_EXE_veil")).args(args))
}

/// Builds the Go cross-checker (components/tlogcheck) with the caches the components use.
fn tlogcheck(out: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../components/tlogcheck");
    let cache = std::env::var("VEIL_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/veil-ci"));
    let bin = out.join("tlogcheck");
    let mut go = Command::new("go");
    go.current_dir(&src)
        .args(["build", "-trimpath", "-o"])
        .arg(&bin)
        .arg(".")
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-buildvcs=false");
    for (var, sub) in [("GOMODCACHE", "go/mod"), ("GOCACHE", "go/build")] {
        if std::env::var_os(var).is_none() {
            go.env(var, cache.join(sub));
        }
    }
    let r = run(&mut go);
    assert_eq!(r.code, 0, "go build tlogcheck: {}{}", r.stdout, r.stderr);
    bin
}

/// A copy of `export` with the bundle of tile 0 changed by `f`.
fn tampered(export: &Path, to: &Path, f: impl FnOnce(&mut Vec<Vec<u8>>)) -> String {
    copy_dir(export, to);
    let path = to.join("tile/entries/000");
    let bytes = std::fs::read(&path).unwrap();
    let mut entries: Vec<Vec<u8>> = tiles::parse_bundle(&bytes, 256)
        .unwrap()
        .into_iter()
        .map(<[u8]>::to_vec)
        .collect();
    f(&mut entries);
    std::fs::write(
        &path,
        tiles::encode_bundle(entries.iter().map(Vec::as_slice)).unwrap(),
    )
    .unwrap();
    to.display().to_string()
}

fn copy_dir(from: &Path, to: &Path) {
    for e in walk(from) {
        let rel = e.strip_prefix(from).unwrap();
        let dest = to.join(rel);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&e, &dest).unwrap();
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn a_copy_of_the_log_verifies_offline_and_every_kind_of_tampering_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut log = Log::open(&t.join("log"), signer()).unwrap();
    append(&mut log, (0..100).map(entry));
    std::fs::write(t.join("older.note"), log.checkpoint()).unwrap();
    append(&mut log, (100..300).map(entry));
    let export = t.join("copy");
    log.export(&export).unwrap();
    std::fs::write(t.join("e150"), entry(150)).unwrap();
    std::fs::write(t.join("never"), b"never logged").unwrap();
    let key = signer().verifier().to_text();
    std::fs::write(t.join("key"), &key).unwrap();
    let p = |name: &str| t.join(name).display().to_string();
    let copy = export.display().to_string();

    let ok = veil(&[
        "audit",
        "verify",
        &copy,
        "--key",
        &format!("@{}", p("key")),
        "--entry",
        &p("e150"),
        "--older",
        &p("older.note"),
        "--proof-out",
        &p("proof"),
    ]);
    assert_eq!(ok.code, 0, "{}{}", ok.stdout, ok.stderr);
    assert!(ok.stdout.contains("entries     300"), "{}", ok.stdout);
    assert!(ok.stdout.contains("at 150"), "{}", ok.stdout);
    assert!(
        ok.stdout.contains("extends") && ok.stdout.contains("(100 entries"),
        "{}",
        ok.stdout
    );

    // Go's sumdb/tlog: our signature, tiles and proofs, checked by another implementation.
    let go = tlogcheck(t);
    let checked = run(Command::new(&go).args([
        "-key",
        &key,
        "-dir",
        &copy,
        "-older",
        &p("older.note"),
        "-proof",
        &p("proof"),
        "-entry",
        &p("e150"),
        "-index",
        "150",
    ]));
    assert_eq!(checked.code, 0, "{}{}", checked.stdout, checked.stderr);
    for want in [
        "300 entries, signature verified",
        "consistency from 100 to 300: proved from the tiles",
        "Veil's proof of",
        "entry 150: included",
    ] {
        assert!(checked.stdout.contains(want), "{want}: {}", checked.stdout);
    }
    // Go refuses a proof that is not the right one.
    let mut proof = std::fs::read_to_string(t.join("proof")).unwrap();
    proof = proof.lines().rev().collect::<Vec<_>>().join("\n");
    std::fs::write(t.join("bad-proof"), proof).unwrap();
    let bad = run(Command::new(&go).args([
        "-key",
        &key,
        "-dir",
        &copy,
        "-older",
        &p("older.note"),
        "-proof",
        &p("bad-proof"),
    ]));
    assert_ne!(bad.code, 0, "{}", bad.stdout);

    let refused = |dir: &str, extra: &[&str], want: &str| {
        let mut args = vec!["audit", "verify", dir, "--key", key.as_str()];
        args.extend_from_slice(extra);
        let r = veil(&args);
        assert_eq!(r.code, 1, "{dir} {extra:?}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(want), "wanted {want:?}: {}", r.stderr);
    };
    refused(&copy, &["--entry", &p("never")], "not in the log");
    let altered = tampered(&export, &t.join("altered"), |e| e[7][10] ^= 1);
    refused(&altered, &[], "entry 7");
    let removed = tampered(&export, &t.join("removed"), |e| {
        e.remove(7);
    });
    refused(&removed, &[], "bundle");
    let reordered = tampered(&export, &t.join("reordered"), |e| e.swap(7, 8));
    refused(&reordered, &[], "entry 7");
    let other = NoteSigner::from_seed(ORIGIN, &[22; 32])
        .unwrap()
        .verifier()
        .to_text();
    let r = veil(&["audit", "verify", &copy, "--key", &other]);
    assert_eq!(r.code, 1, "{}", r.stderr);

    // History rewritten by whoever holds the key: the copy verifies on its own, but not
    // against a checkpoint kept from before — for us, and for Go.
    let mut forged = Log::open(&t.join("forged-log"), signer()).unwrap();
    append(
        &mut forged,
        (0..300).map(|i| {
            if i == 50 {
                b"rewritten".to_vec()
            } else {
                entry(i)
            }
        }),
    );
    forged.export(&t.join("forged")).unwrap();
    let forged = p("forged");
    let alone = veil(&["audit", "verify", &forged, "--key", &key]);
    assert_eq!(alone.code, 0, "{}", alone.stderr);
    refused(&forged, &["--older", &p("older.note")], "not an extension");
    let go_forged =
        run(Command::new(&go).args(["-key", &key, "-dir", &forged, "-older", &p("older.note")]));
    assert_ne!(go_forged.code, 0, "{}", go_forged.stdout);
    assert!(
        go_forged.stderr.contains("consistency"),
        "{}",
        go_forged.stderr
    );
}
