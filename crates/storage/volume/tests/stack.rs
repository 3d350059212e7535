//! The whole stack with real parts: the `veil-volume` process serving FUSE, a loop device, ext4,
//! e2fsck. Needs root, /dev/fuse and loop devices (as CI has); fails, never skips, without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use veil_volume::blockdev;
use veil_volume::format::{BLOCK, Geometry};

const KEY: &str = "4f1c2a7be0d95e3f8c6b1a0d2e4f6a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f";
const OTHER_KEY: &str = "0000000000000000000000000000000000000000000000000000000000000001";

struct Dir {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

impl Dir {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        Self { _tmp: tmp, root }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }
    fn anchor(&self) -> String {
        format!("file:{}", self.p("anchor").display())
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_veil-volume")
}

fn format(d: &Dir, mib: u64) {
    let mut c = Command::new(bin())
        .args([
            "format",
            "--size-mib",
            &mib.to_string(),
            "--anchor",
            &d.anchor(),
        ])
        .arg("--backing")
        .arg(d.p("backing"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(c.stdin.take().unwrap(), "{KEY}").unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A serving `veil-volume` process.
#[derive(Debug)]
struct Served {
    child: Child,
    ready: serde_json::Value,
    log: PathBuf,
}

impl Served {
    fn start(d: &Dir, key: &str, ext4: bool, log: &str) -> Result<Self, String> {
        let logf = std::fs::File::create(d.p(log)).unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(["serve", "--anchor", &d.anchor()])
            .arg("--backing")
            .arg(d.p("backing"))
            .arg("--mount")
            .arg(d.p("fuse"));
        if ext4 {
            cmd.arg("--ext4").arg(d.p("mnt"));
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(logf)
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        if line.is_empty() {
            let status = child.wait().unwrap();
            let log = std::fs::read_to_string(d.p(log)).unwrap_or_default();
            return Err(format!("exit {status}: {log}"));
        }
        Ok(Self {
            child,
            ready: serde_json::from_str(&line).unwrap(),
            log: d.p(log),
        })
    }

    fn stop(mut self) {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{}", self.log_text());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some(p.to_str().unwrap()))
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e3779b97f4a7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn ext4_on_the_volume_keeps_no_plaintext_in_the_backing_file() {
    let d = Dir::new();
    format(&d, 64);
    let s = Served::start(&d, KEY, true, "serve.log").unwrap();
    assert_eq!(s.ready["formatted_ext4"], true);
    let canary = "VEIL-CANARY-node-state-3b9f";
    std::fs::write(d.p("mnt/canary.txt"), canary.repeat(1000)).unwrap();
    Command::new("sync").status().unwrap();
    let dev = s.ready["device"].as_str().unwrap().to_string();
    // The plaintext is there through the device, and nowhere in the backing file.
    let through = std::fs::read(&dev).unwrap();
    assert!(
        through
            .windows(canary.len())
            .any(|w| w == canary.as_bytes())
    );
    s.stop();
    assert!(!is_mounted(&d.p("mnt")) && !is_mounted(&d.p("fuse")));
    let raw = std::fs::read(d.p("backing")).unwrap();
    assert!(
        !raw.windows(11).any(|w| w == b"VEIL-CANARY"),
        "plaintext in the backing file"
    );
    // And it comes back after a restart.
    let s = Served::start(&d, KEY, true, "serve2.log").unwrap();
    assert_eq!(s.ready["formatted_ext4"], false);
    assert_eq!(
        std::fs::read_to_string(d.p("mnt/canary.txt")).unwrap(),
        canary.repeat(1000)
    );
    s.stop();
}

#[test]
fn kill_9_during_writes_then_the_filesystem_is_clean_and_every_fsynced_write_is_there() {
    let d = Dir::new();
    format(&d, 128);
    let s = Served::start(&d, KEY, true, "serve.log").unwrap();
    let dev = s.ready["device"].as_str().unwrap().to_string();
    let mnt = d.p("mnt");
    let stop = Arc::new(AtomicBool::new(false));
    // Unsynced bulk writes beside, so the kill lands in the middle of writes.
    let bulk = {
        let (mnt, stop) = (mnt.clone(), stop.clone());
        std::thread::spawn(move || {
            use std::io::Seek;
            let mut f = std::fs::File::create(mnt.join("bulk")).unwrap();
            let chunk = pattern(7, 1 << 20);
            // Rewrites its first 16 MiB over and over: writes in flight, the volume never full.
            for n in 0u64.. {
                if stop.load(Ordering::Relaxed) || f.write_all(&chunk).is_err() {
                    break;
                }
                if n % 16 == 15 && f.rewind().is_err() {
                    break;
                }
            }
        })
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (mnt, stop, acked) = (mnt.clone(), stop.clone(), acked.clone());
        std::thread::spawn(move || {
            for i in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let path = mnt.join(format!("f{i}"));
                let ok = std::fs::File::create(&path)
                    .and_then(|mut f| {
                        f.write_all(&pattern(i, 20_000 + (i as usize % 7) * 1000))?;
                        f.sync_all()
                    })
                    .and_then(|()| std::fs::File::open(&mnt).and_then(|dir| dir.sync_all()));
                if ok.is_err() {
                    break;
                }
                acked.lock().unwrap().push(i);
            }
        })
    };
    while acked.lock().unwrap().len() < 40 {
        assert!(!writer.is_finished(), "the writer stopped before the kill");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut s = s;
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    bulk.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    // What the kernel held of the dead volume goes: with ext4, the loop device.
    blockdev::umount(&mnt).unwrap();
    blockdev::umount(&d.p("fuse")).unwrap();
    assert!(!blockdev::loop_attached(&dev), "{dev} outlived the volume");

    let s = Served::start(&d, KEY, false, "serve2.log").unwrap();
    eprintln!(
        "after the kill, {} fsynced files; the mount found {}",
        acked.len(),
        s.ready
    );
    let file = s.ready["file"].as_str().unwrap().to_string();
    let dev = blockdev::attach_loop(Path::new(&file)).unwrap();
    // ext4 replays its journal at mount; then e2fsck finds nothing to fix.
    blockdev::mount_ext4(&dev, &mnt).unwrap();
    blockdev::umount(&mnt).unwrap();
    blockdev::fsck(&dev).unwrap();
    blockdev::mount_ext4(&dev, &mnt).unwrap();
    for i in &acked {
        let got = std::fs::read(mnt.join(format!("f{i}")))
            .unwrap_or_else(|e| panic!("f{i}, acknowledged by fsync, is gone: {e}"));
        assert_eq!(got, pattern(*i, 20_000 + (*i as usize % 7) * 1000), "f{i}");
    }
    blockdev::umount(&mnt).unwrap();
    blockdev::detach_loop(&dev).unwrap();
    s.stop();
}

#[test]
fn a_flipped_bit_gives_an_io_error_and_an_audit_event_an_older_copy_and_a_wrong_key_are_refused() {
    let d = Dir::new();
    format(&d, 64);
    let s = Served::start(&d, KEY, true, "serve.log").unwrap();
    let data = pattern(42, 64 * 1024);
    std::fs::write(d.p("mnt/data"), &data).unwrap();
    std::fs::write(d.p("mnt/other"), b"untouched").unwrap();
    Command::new("sync").status().unwrap();
    // Which ext4 block holds the file's first block (ext4 and the volume both use 4 KiB).
    let dev = s.ready["device"].as_str().unwrap().to_string();
    let out = Command::new("debugfs")
        .args(["-R", "bmap /data 0", &dev])
        .output()
        .unwrap();
    let block: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    s.stop();
    let before = std::fs::read(d.p("backing")).unwrap();

    // A flipped bit in that block's ciphertext.
    let sb = veil_volume::format::Superblock::parse(&before[..BLOCK]).unwrap();
    let geo: Geometry = sb.geometry;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .open(d.p("backing"))
        .unwrap();
    let at = geo.data_block(block) * BLOCK as u64 + 1000;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], at).unwrap();
    let s = Served::start(&d, KEY, true, "serve2.log").unwrap();
    let e = std::fs::read(d.p("mnt/data")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "expected EIO, found {e}");
    assert_eq!(std::fs::read(d.p("mnt/other")).unwrap(), b"untouched");
    let log = s.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("\"block_rejected\"") && l.contains(&format!("\"block\":{block}"))),
        "no audit event for block {block}: {log}"
    );
    s.stop();

    // The copy taken before is older than the anchor now (the mounts since committed).
    let now = std::fs::read(d.p("backing")).unwrap();
    std::fs::write(d.p("backing"), &before).unwrap();
    let e = Served::start(&d, KEY, true, "serve3.log").unwrap_err();
    assert!(e.contains("rolled back"), "{e}");
    assert!(
        e.contains("\"volume_refused\"") && e.contains("\"check\":\"rollback\""),
        "{e}"
    );
    assert!(!is_mounted(&d.p("fuse")), "mounted although refused");
    std::fs::write(d.p("backing"), &now).unwrap();

    // A wrong key: refused before anything is mounted.
    let e = Served::start(&d, OTHER_KEY, true, "serve4.log").unwrap_err();
    assert!(e.contains("wrong key"), "{e}");
    assert!(!is_mounted(&d.p("fuse")) && !is_mounted(&d.p("mnt")));
    // The right key still opens it, and only one process at a time serves it.
    let s = Served::start(&d, KEY, true, "serve5.log").unwrap();
    let e = Served::start(&d, KEY, false, "serve6.log").unwrap_err();
    assert!(e.contains("in use by another volume process"), "{e}");
    s.stop();
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(std::time::Instant::now() < until, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_volume_started_from_a_thread_that_ends_keeps_serving_and_stops_with_its_parent_process() {
    let d = Dir::new();
    format(&d, 16);
    // Started as the agent starts it, from a thread that then ends (a runtime's blocking pool
    // ends idle threads): the volume must outlive the thread, not only the process.
    let launch = veil_volume::launch::Launch {
        binary: bin().into(),
        sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(std::fs::read(bin()).unwrap()))
        },
        backing: d.p("backing"),
        anchor: d.anchor(),
        log: d.p("serve.log"),
    };
    let key: [u8; 32] = hex::decode(KEY).unwrap().try_into().unwrap();
    let (fuse, mnt) = (d.p("fuse"), d.p("mnt"));
    let (mut child, _) = std::thread::spawn(move || {
        launch
            .serve(&fuse, &mnt, &key, Duration::from_secs(60))
            .unwrap()
    })
    .join()
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the volume stopped when the thread that started it ended: {}",
        std::fs::read_to_string(d.p("serve.log")).unwrap_or_default()
    );
    assert!(is_mounted(&d.p("mnt")));
    assert!(veil_volume::launch::stop(child, Duration::from_secs(30)));
    assert!(!is_mounted(&d.p("mnt")) && !is_mounted(&d.p("fuse")));

    // Its parent process ends (a shell that started it in the background): it unmounts and
    // stops by itself.
    let script = format!(
        "exec 3<&0; {} serve --backing {} --anchor {} --mount {} --ext4 {} --die-with-parent <&3 2>>{} & sleep 3",
        bin(),
        d.p("backing").display(),
        d.anchor(),
        d.p("fuse").display(),
        d.p("mnt").display(),
        d.p("orphan.log").display(),
    );
    let mut sh = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(sh.stdin.take().unwrap(), "{KEY}").unwrap();
    wait_for("the volume mounted under the shell", 30, || {
        is_mounted(&d.p("mnt"))
    });
    assert!(sh.wait().unwrap().success());
    wait_for("the orphaned volume unmounted", 15, || {
        !is_mounted(&d.p("mnt")) && !is_mounted(&d.p("fuse"))
    });
    wait_for("the orphaned volume stopped", 15, || {
        std::fs::read_to_string(d.p("orphan.log"))
            .unwrap()
            .contains("\"volume_stopped\"")
    });
    let log = std::fs::read_to_string(d.p("orphan.log")).unwrap();
    assert!(log.contains("\"volume_parent_gone\""), "{log}");
}
