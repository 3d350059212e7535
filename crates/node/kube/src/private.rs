//! The node's private directory: a tmpfs mounted in a mount namespace of the node's own, so the
//! keys and certificates the components read are never written to the host's disk and do not
//! appear in the host's mount table. The namespace is entered before the agent starts its
//! runtime (a mount namespace is per thread until then shared by every thread it starts), and
//! every component the agent starts inherits it, so kubelet's mounts are seen by containerd and
//! runc, and vanish with the node. (On a local cluster the host's root can still enter the
//! namespace through /proc: local clusters are insecure by nature.)

use std::path::Path;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};

/// Enters a mount namespace of the node's own (mounts stay inside it) and mounts a tmpfs of at
/// most 64 MiB, mode 0700, at `dir`. Call before any other thread exists.
pub fn enter(dir: &Path) -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot make a mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the node's mounts private: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0700,size=64m"),
    )
    .map_err(|e| format!("cannot mount the private tmpfs at {}: {e}", dir.display()))
}
