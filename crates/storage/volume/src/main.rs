//! `veil-volume`: formats and serves an encrypted volume. The key arrives on standard input (64
//! hex digits and a newline), never as an argument or a file; logs are JSON on standard error,
//! one audit event per refusal; standard output carries one JSON line when the volume is ready.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use parking_lot::RwLock;
use veil_volume::{Anchor, FileAnchor, Geometry, Volume, VolumeKey, blockdev, fuse};

#[derive(Parser)]
#[command(
    name = "veil-volume",
    about = "Veil's encrypted, authenticated, fresh volumes"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Formats a backing file as an empty volume (what it held is lost).
    Format {
        /// The backing file (created if missing).
        #[arg(long)]
        backing: PathBuf,
        /// Capacity, in MiB.
        #[arg(long)]
        size_mib: u64,
        /// Journal blocks (4 KiB each): writes between two commits, one per request.
        #[arg(long, default_value_t = 1024)]
        journal_blocks: u64,
        /// The freshness anchor: kept by the node agent (`agent:SOCKET:NAME`, in the node's
        /// TPM), or a file outside the host's reach (`file:PATH`, tests and benchmarks).
        #[arg(long)]
        anchor: String,
    },
    /// Opens a volume, exports it over FUSE as `<mount>/volume`, and optionally attaches it to
    /// a loop device with ext4 mounted at `--ext4`; serves until SIGTERM or SIGINT.
    Serve {
        /// The backing file.
        #[arg(long)]
        backing: PathBuf,
        /// Where the FUSE filesystem holding the volume file is mounted.
        #[arg(long)]
        mount: PathBuf,
        /// The freshness anchor (`agent:SOCKET:NAME` or `file:PATH`).
        #[arg(long)]
        anchor: String,
        /// Also attach a loop device and mount ext4 here (formatted if the volume is blank).
        #[arg(long)]
        ext4: Option<PathBuf>,
        /// FUSE request threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Open the backing file with O_DIRECT (no second page cache of the ciphertext; slower
        /// sequential writes with one request in flight).
        #[arg(long)]
        direct_io: bool,
        /// Stop (as on SIGTERM) when the parent process dies: the node agent that started the
        /// volume, whose components stop with it.
        #[arg(long)]
        die_with_parent: bool,
    },
}

fn anchor_from(spec: &str) -> anyhow::Result<Box<dyn Anchor>> {
    match spec.split_once(':') {
        Some(("file", path)) if !path.is_empty() => Ok(Box::new(FileAnchor::new(path))),
        Some(("agent", rest)) => match rest.rsplit_once(':') {
            Some((path, name)) if !path.is_empty() => Ok(Box::new(
                veil_volume::anchor::SocketAnchor::new(path, name).map_err(anyhow::Error::msg)?,
            )),
            _ => bail!("--anchor: expected agent:SOCKET:NAME, found {spec:?}"),
        },
        _ => bail!("--anchor: expected file:PATH or agent:SOCKET:NAME, found {spec:?}"),
    }
}

/// An exclusive lock on the backing file, held while the returned value lives.
fn lock_backing(backing: &std::path::Path) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let f = std::fs::File::open(backing).with_context(|| format!("{}", backing.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        anyhow::anyhow!(
            "{} is in use by another volume process ({e})",
            backing.display()
        )
    })
}

fn read_key() -> anyhow::Result<VolumeKey> {
    let mut line = zeroize::Zeroizing::new(String::new());
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading the key from standard input")?;
    VolumeKey::from_hex(&line).map_err(anyhow::Error::msg)
}

fn main() -> std::process::ExitCode {
    // Its parent, the node agent, holds a connection to the node's TPM that would otherwise
    // stay open here (see `close_inherited`).
    veil_volume::launch::close_inherited();
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("veil-volume: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Format {
            backing,
            size_mib,
            journal_blocks,
            anchor,
        } => {
            let anchor = anchor_from(&anchor)?;
            let key = read_key()?;
            let blocks = size_mib
                .checked_mul(256)
                .context("--size-mib is too large")?;
            let geo = Geometry::new(blocks, journal_blocks)?;
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&backing)
                .with_context(|| format!("{}", backing.display()))?;
            let _lock = lock_backing(&backing)?;
            Volume::format(&file, &key, geo, anchor.as_ref())?;
            println!(
                "{}",
                serde_json::json!({"event": "formatted", "backing": backing, "bytes": geo.file_len()})
            );
            Ok(())
        }
        Cmd::Serve {
            backing,
            mount,
            anchor,
            ext4,
            threads,
            direct_io,
            die_with_parent,
        } => {
            // Not PR_SET_PDEATHSIG: it fires when the parent *thread* ends, and the agent
            // starts the volume from a pool thread that ends after 10 s idle (that killed
            // every state volume 10 s after its mount).
            let parent = die_with_parent.then(nix::unistd::getppid);
            if parent.is_some_and(|p| p.as_raw() == 1) {
                bail!("the parent process is gone");
            }
            serve(
                backing,
                mount,
                anchor_from(&anchor)?,
                ext4,
                threads,
                direct_io,
                parent,
            )
        }
    }
}

fn serve(
    backing: PathBuf,
    mount: PathBuf,
    anchor: Box<dyn Anchor>,
    ext4: Option<PathBuf>,
    threads: usize,
    direct_io: bool,
    parent: Option<nix::unistd::Pid>,
) -> anyhow::Result<()> {
    // Signals are taken by sigwait below; block them before any thread starts.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking signals")?;
    if let Some(parent) = parent {
        watch_parent(parent)?;
    }

    let key = read_key()?;
    // One process per backing file: a second one (an orphan of a killed agent still serving)
    // would interleave its commits with ours.
    let _lock = lock_backing(&backing)?;
    let (file, direct) = veil_volume::io::open_backing(&backing, direct_io)
        .with_context(|| format!("{}", backing.display()))?;
    tracing::info!(event = "volume_backing", backing = %backing.display(), direct);
    let (volume, report) = match Volume::open(file, &key, anchor) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(
                event = "volume_refused",
                backing = %backing.display(),
                check = e.check(),
                reason = %e
            );
            return Err(e.into());
        }
    };
    drop(key);
    let id = volume.id();
    let volume = Arc::new(RwLock::new(volume));
    std::fs::create_dir_all(&mount).with_context(|| format!("{}", mount.display()))?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("veil-volume".into()),
        fuser::MountOption::Subtype("veil".into()),
        fuser::MountOption::NoAtime,
    ];
    config.n_threads = Some(threads.max(1));
    config.clone_fd = threads > 1;
    let session = fuser::spawn_mount(fuse::VolumeFs::new(volume.clone()), &mount, &config)
        .with_context(|| format!("mounting FUSE at {}", mount.display()))?;
    let file = mount.join(fuse::FILE_NAME);
    let mut attached = None;
    if let Some(dir) = &ext4 {
        let dev = blockdev::attach_loop(&file).map_err(anyhow::Error::msg)?;
        let fresh = !blockdev::has_ext4(&dev).map_err(anyhow::Error::msg)?;
        if fresh {
            blockdev::mkfs_ext4(&dev).map_err(anyhow::Error::msg)?;
        }
        blockdev::mount_ext4(&dev, dir).map_err(anyhow::Error::msg)?;
        // Detaching a device in use makes the kernel detach it when ext4 lets go of it (at
        // unmount, or when the mount namespace holding it goes): no loop device outlives the
        // volume, even if this process is killed.
        blockdev::detach_loop(&dev).map_err(anyhow::Error::msg)?;
        attached = Some((dev, dir.clone(), fresh));
    }
    println!(
        "{}",
        serde_json::json!({
            "event": "ready",
            "volume": id,
            "file": file,
            "generation": report.generation,
            "epoch": report.epoch,
            "replayed": report.replayed,
            "discarded": report.discarded,
            "anchored": report.anchored,
            "direct_io": direct,
            "device": attached.as_ref().map(|a| a.0.clone()),
            "ext4": attached.as_ref().map(|a| a.1.clone()),
            "formatted_ext4": attached.as_ref().map(|a| a.2),
        })
    );
    let sig = signals.wait().context("waiting for a signal")?;
    tracing::info!(event = "volume_stopping", signal = ?sig);
    if let Some((dev, dir, _)) = &attached {
        match blockdev::umount(dir) {
            // The kernel lets go of the loop device (and of the volume file) just after.
            Ok(()) => {
                for _ in 0..100 {
                    if !blockdev::loop_attached(dev) {
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
            Err(e) => {
                // Still in use (a process, or mounts below it): detach it now, it goes when
                // they do.
                tracing::error!(event = "volume_umount_failed", error = %e, "detaching lazily");
                if let Err(e) = blockdev::umount_lazy(dir) {
                    tracing::error!(event = "volume_umount_failed", error = %e);
                }
            }
        }
    }
    volume.write().sync()?;
    tracing::info!(event = "volume_stopped", stats = %volume.read().stats().json());
    if let Err(e) = session.umount_and_join() {
        tracing::warn!(event = "volume_fuse_unmount", error = %e, "detaching lazily");
        let _ = blockdev::umount_lazy(&mount);
    }
    Ok(())
}

/// Stops this process (as SIGTERM does) once `parent`, the process that started it, is gone:
/// its children are then handed to another process, so `getppid` changes. A process, not a
/// thread, is watched: the parent's other threads may come and go.
fn watch_parent(parent: nix::unistd::Pid) -> anyhow::Result<()> {
    let gone = move || nix::unistd::getppid() != parent;
    if gone() {
        bail!("the parent process {parent} is gone");
    }
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || {
            while !gone() {
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            tracing::warn!(event = "volume_parent_gone", parent = parent.as_raw());
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGTERM);
        })
        .context("starting the parent watch")?;
    Ok(())
}
