//! The exported volume file as a block device with ext4 on it: `losetup`, `mkfs.ext4`, `mount`
//! (util-linux and e2fsprogs). Nothing here sees plaintext the kernel does not already hold.

use std::io::Read;
use std::path::Path;
use std::process::Command;

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if !out.status.success() {
        return Err(format!(
            "{:?} {:?}: {}{}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Attaches `file` to a free loop device with 4 KiB sectors (the volume's block size, so every
/// request is whole blocks) and returns the device's path.
pub fn attach_loop(file: &Path) -> Result<String, String> {
    run(Command::new("losetup")
        .args(["--find", "--show", "--sector-size", "4096"])
        .arg(file))
}

/// Detaches a loop device.
pub fn detach_loop(dev: &str) -> Result<(), String> {
    run(Command::new("losetup").args(["--detach", dev])).map(|_| ())
}

/// Whether `dev` holds an ext4 (or ext2/3) superblock: magic 0xEF53 at byte 1080.
pub fn has_ext4(dev: &str) -> Result<bool, String> {
    let mut f = std::fs::File::open(dev).map_err(|e| format!("{dev}: {e}"))?;
    let mut b = [0u8; 1082];
    f.read_exact(&mut b).map_err(|e| format!("{dev}: {e}"))?;
    Ok(b.get(1080..1082) == Some(&[0x53, 0xef]))
}

/// Formats `dev` as ext4. Unwritten blocks of a volume read as zeros, so nothing needs zeroing
/// (no lazy initialisation later) and nothing is discarded.
pub fn mkfs_ext4(dev: &str) -> Result<(), String> {
    run(Command::new("mkfs.ext4").args([
        "-q",
        "-F",
        "-E",
        "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
        dev,
    ]))
    .map(|_| ())
}

/// Mounts ext4 from `dev` at `dir`.
pub fn mount_ext4(dev: &str, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    run(Command::new("mount")
        .args(["-t", "ext4", "-o", "noinit_itable,errors=remount-ro", dev])
        .arg(dir))
    .map(|_| ())
}

/// Unmounts `dir`.
pub fn umount(dir: &Path) -> Result<(), String> {
    run(Command::new("umount").arg(dir)).map(|_| ())
}

/// Detaches the mount at `dir` now; the kernel unmounts it when it is no longer busy.
pub fn umount_lazy(dir: &Path) -> Result<(), String> {
    run(Command::new("umount").arg("--lazy").arg(dir)).map(|_| ())
}

/// Whether a loop device is attached to `dev`'s number (`losetup` lists it).
pub fn loop_attached(dev: &str) -> bool {
    run(Command::new("losetup").arg(dev)).is_ok()
}

/// Checks the filesystem on `dev` without changing it (`e2fsck -f -n`): `Ok` if clean.
pub fn fsck(dev: &str) -> Result<(), String> {
    run(Command::new("e2fsck").args(["-f", "-n", dev])).map(|_| ())
}
