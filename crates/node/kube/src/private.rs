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

/// Machine-wide paths Kubernetes' node components write to whatever they are told (kubelet's
/// device plugins, container and pod log links, CNI's results, containerd's shim sockets, pod
/// network namespaces): each node gets its own, under `data` or in memory, so nodes sharing a
/// machine do not see each other's and nothing is left on the host when the node goes.
const NODE_PATHS: &[(&str, Option<&str>)] = &[
    (
        "/var/lib/kubelet/device-plugins",
        Some("host/device-plugins"),
    ),
    ("/var/log/containers", Some("host/log-containers")),
    ("/var/log/pods", Some("host/log-pods")),
    ("/var/lib/cni", Some("host/cni")),
    ("/run/containerd", None),
    ("/run/netns", None),
];

/// Enters a mount namespace of the node's own (mounts stay inside it), mounts a tmpfs of at
/// most 64 MiB, mode 0700, at `dir`, and gives the node its own copy of the machine-wide paths
/// its components write (under `data`, or in memory). Call before any other thread exists.
pub fn enter(dir: &Path, data: &Path) -> Result<(), String> {
    enter_private(dir)?;
    node_paths(data)
}

/// As [`enter`], without the machine-wide paths: for a node whose `data` is not there yet (its
/// encrypted state volume is mounted on it later); [`node_paths`] binds them then.
pub fn enter_private(dir: &Path) -> Result<(), String> {
    own_namespace()?;
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

/// Enters a mount namespace of the node's own and gives it its own copy of the machine-wide
/// paths (as [`enter`], without the tmpfs: for a node whose files need no protection, such as
/// a benchmark's baseline).
pub fn enter_without_tmpfs(data: &Path) -> Result<(), String> {
    own_namespace()?;
    node_paths(data)
}

/// A mount namespace of the calling thread's own, whose mounts propagate nowhere.
fn own_namespace() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| format!("cannot make a mount namespace: {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the node's mounts private: {e}"))
}

/// Gives the node its own copy of the machine-wide paths its components write, under `data`
/// or in memory (in the node's mount namespace, which every thread shares once entered).
pub fn node_paths(data: &Path) -> Result<(), String> {
    for (target, source) in NODE_PATHS {
        std::fs::create_dir_all(target).map_err(|e| format!("{target}: {e}"))?;
        match source {
            Some(s) => {
                let src = data.join(s);
                std::fs::create_dir_all(&src).map_err(|e| format!("{}: {e}", src.display()))?;
                mount(
                    Some(&src),
                    *target,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| format!("cannot bind {} on {target}: {e}", src.display()))?;
            }
            None => mount(
                Some("tmpfs"),
                *target,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                Some("mode=0755,size=64m"),
            )
            .map_err(|e| format!("cannot mount a tmpfs at {target}: {e}"))?,
        }
    }
    Ok(())
}
