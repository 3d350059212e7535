//! `veil-bench storage` (root): the same workloads on a plain directory, on gocryptfs (Debian)
//! and on ext4 on Veil's volume (`veil-volume serve --ext4`: FUSE file, loop device), all on the
//! same disk in the same run.
//!
//! - sequential write: 512 MiB in 1 MiB writes, then fsync; MB/s including the fsync;
//! - sequential read: the same file after dropping the page cache;
//! - 4 KiB random read and write IOPS: fio (psync, one job, queue depth 1) on a 256 MiB file,
//!   O_DIRECT where the filesystem takes it (gocryptfs does not: buffered there, with an fsync
//!   per write for writes, and said so).
//!
//! - the S3 encryption proxy: PUT and GET of 256 MiB through it and against the backend
//!   (s3s-fs) alone.
//!
//! It runs the `veil-volume` binary beside this one (`cargo build --release --bins` first) and
//! s3s-fs (setup installs it).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

const SEQ_MIB: usize = 512;

struct Target {
    name: &'static str,
    dir: PathBuf,
    direct: bool,
}

fn drop_caches() -> Result<()> {
    Command::new("sync").status()?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (root?)")
}

fn sequential(dir: &Path) -> Result<(f64, f64)> {
    let path = dir.join("seq");
    let mut chunk = vec![0u8; 1 << 20];
    aws_lc_rs::rand::fill(&mut chunk).map_err(|_| anyhow::anyhow!("random"))?;
    drop_caches()?;
    let t = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    for i in 0..SEQ_MIB {
        if let Some(b) = chunk.get_mut(0) {
            *b = i as u8;
        }
        f.write_all(&chunk)?;
    }
    f.sync_all()?;
    drop(f);
    let write = SEQ_MIB as f64 * 1.048576 / t.elapsed().as_secs_f64();
    drop_caches()?;
    let t = Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut n = 0usize;
    loop {
        let k = f.read(&mut chunk)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    let read = n as f64 / 1e6 / t.elapsed().as_secs_f64();
    if n != SEQ_MIB << 20 {
        bail!("read back {n} bytes of {}", SEQ_MIB << 20);
    }
    std::fs::remove_file(&path)?;
    Ok((write, read))
}

fn fio(dir: &Path, rw: &str, direct: bool, secs: f64) -> Result<f64> {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=veil",
        "--ioengine=psync",
        "--bs=4k",
        "--size=256M",
        "--numjobs=1",
        "--time_based",
        "--output-format=json",
        &format!("--runtime={}", secs.ceil() as u64),
        &format!("--rw={rw}"),
        &format!("--filename={}", dir.join("fio").display()),
    ]);
    if direct {
        cmd.arg("--direct=1");
    } else if rw == "randwrite" {
        cmd.arg("--fsync=1");
    }
    let out = cmd.output().context("fio (apt install fio)")?;
    if !out.status.success() {
        bail!("fio {rw}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // fio prints notes before the JSON on some versions.
    let json = text.find('{').and_then(|i| text.get(i..)).unwrap_or(&text);
    let v: serde_json::Value = serde_json::from_str(json).context("fio's JSON")?;
    let side = if rw == "randread" { "read" } else { "write" };
    v.pointer(&format!("/jobs/0/{side}/iops"))
        .and_then(serde_json::Value::as_f64)
        .context("fio: no iops in its output")
}

fn gocryptfs(root: &Path) -> Result<(PathBuf, Child)> {
    let cipher = root.join("gocryptfs.cipher");
    let plain = root.join("gocryptfs");
    std::fs::create_dir_all(&cipher)?;
    std::fs::create_dir_all(&plain)?;
    let pass = root.join("gocryptfs.pass");
    std::fs::write(&pass, "veil-bench\n")?;
    let out = Command::new("gocryptfs")
        .args(["-init", "-q", "-passfile"])
        .arg(&pass)
        .arg(&cipher)
        .output()
        .context("gocryptfs (apt install gocryptfs)")?;
    if !out.status.success() {
        bail!("gocryptfs -init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let child = Command::new("gocryptfs")
        .args(["-fg", "-q", "-passfile"])
        .arg(&pass)
        .arg(&cipher)
        .arg(&plain)
        .stdout(Stdio::null())
        .spawn()?;
    for _ in 0..100 {
        if mounted(&plain) {
            return Ok((plain, child));
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    bail!("gocryptfs did not mount {}", plain.display())
}

fn mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/mounts")
        .is_ok_and(|m| m.lines().any(|l| l.split_whitespace().nth(1) == p.to_str()))
}

fn veil_volume(root: &Path) -> Result<(PathBuf, Child)> {
    let bin = crate::kubernetes::beside("veil-volume")?;
    let key = "6a1f0c9e8d7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa998877\n";
    let backing = root.join("veil.backing");
    let anchor = format!("file:{}", root.join("veil.anchor").display());
    let mut f = Command::new(&bin)
        .args(["format", "--size-mib", "1536", "--anchor", &anchor])
        .arg("--backing")
        .arg(&backing)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    f.stdin.take().context("stdin")?.write_all(key.as_bytes())?;
    if !f.wait()?.success() {
        bail!("veil-volume format failed");
    }
    let mnt = root.join("veil");
    let mut child = Command::new(&bin)
        .args(["serve", "--anchor", &anchor])
        .arg("--backing")
        .arg(&backing)
        .arg("--mount")
        .arg(root.join("veil.fuse"))
        .arg("--ext4")
        .arg(&mnt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(root.join("veil.log"))?)
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(key.as_bytes())?;
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("stdout")?),
        &mut line,
    )?;
    if line.is_empty() {
        bail!(
            "veil-volume serve failed: {}",
            std::fs::read_to_string(root.join("veil.log")).unwrap_or_default()
        );
    }
    Ok((mnt, child))
}

fn stop(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let _ = c.wait();
}

/// Runs the suite.
pub fn run(secs: f64) -> Result<()> {
    // On the disk the volumes' backing files would use, not a tmpfs.
    let base = PathBuf::from("/var/tmp");
    let tmp = tempfile::tempdir_in(&base)?;
    let root = tmp.path();
    let plain = root.join("plain");
    std::fs::create_dir_all(&plain)?;
    let (gdir, gchild) = gocryptfs(root)?;
    let (vdir, vchild) = match veil_volume(root) {
        Ok(v) => v,
        Err(e) => {
            stop(gchild);
            return Err(e);
        }
    };
    let targets = [
        Target {
            name: "plain directory",
            dir: plain,
            direct: true,
        },
        Target {
            name: "gocryptfs",
            dir: gdir.clone(),
            direct: false,
        },
        Target {
            name: "veil volume (ext4)",
            dir: vdir,
            direct: true,
        },
    ];
    println!(
        "veil-bench storage: {SEQ_MIB} MiB sequential (1 MiB writes + fsync; read after dropping caches), fio 4 KiB random for {secs:.0} s, in {}",
        base.display()
    );
    let mut results = Vec::new();
    let outcome = (|| -> Result<()> {
        for t in &targets {
            let (w, r) = sequential(&t.dir)?;
            let rr = fio(&t.dir, "randread", t.direct, secs)?;
            let rw = fio(&t.dir, "randwrite", t.direct, secs)?;
            results.push((t.name, w, r, rr, rw, t.direct));
        }
        Ok(())
    })();
    stop(vchild);
    stop(gchild);
    let _ = Command::new("umount").arg(&gdir).status();
    outcome?;
    println!(
        "{:<20} {:>12} {:>12} {:>14} {:>15}",
        "", "seq write", "seq read", "4K rand read", "4K rand write"
    );
    for (name, w, r, rr, rw, direct) in &results {
        println!(
            "{name:<20} {w:>7.0} MB/s {r:>7.0} MB/s {rr:>9.0} IOPS {rw:>10.0} IOPS{}",
            if *direct {
                ""
            } else {
                "  (buffered; writes fsync each)"
            }
        );
    }
    let s3 = veil_s3_proxy::harness::find_s3s_fs().map_err(|e| anyhow::anyhow!("{e}"))?;
    let work = tempfile::tempdir_in(&base)?;
    let t = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(veil_s3_proxy::bench::bench_throughput(
            &s3,
            work.path(),
            256,
        ))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "S3, {} MiB objects: through the proxy PUT {:.0} MiB/s GET {:.0} MiB/s; backend alone PUT {:.0} MiB/s GET {:.0} MiB/s; ratio PUT {:.2}x GET {:.2}x",
        t.mib,
        t.proxy.put_mib_s,
        t.proxy.get_mib_s,
        t.backend.put_mib_s,
        t.backend.get_mib_s,
        t.proxy.put_mib_s / t.backend.put_mib_s,
        t.proxy.get_mib_s / t.backend.get_mib_s
    );
    if let (Some(p), Some(g), Some(v)) = (results.first(), results.get(1), results.get(2)) {
        println!(
            "veil / plain: seq write {:.2}x (aim 0.70), seq read {:.2}x, rand read {:.2}x, rand write {:.2}x",
            v.1 / p.1,
            v.2 / p.2,
            v.3 / p.3,
            v.4 / p.4
        );
        println!(
            "veil / gocryptfs: seq write {:.2}x (goal >= 1.00), seq read {:.2}x",
            v.1 / g.1,
            v.2 / g.2
        );
    }
    Ok(())
}
