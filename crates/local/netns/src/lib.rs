//! Network namespaces for local clusters (`veil mini` run as root).
//!
//! A [`Lan`] is a Linux bridge in the host namespace with a private /24 (`10.213.S.0/24`, `S`
//! chosen so that it collides with no address already on the host), and one network namespace
//! per node, joined to the bridge by a veth pair whose node end is `eth0`. The host keeps
//! `10.213.S.1` so the owner's tools reach the nodes; node `i` gets `10.213.S.(10 + i)`.
//! IPv6 and multicast are off on every link so only the traffic the cluster sends (and ARP)
//! crosses them.
//!
//! [`run_in`] runs a closure on a thread that has entered a namespace: sockets it opens and
//! processes it spawns live in that namespace (namespaces are per thread, and a child inherits
//! the namespaces of the thread that forked it).

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;

/// A namespace operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetnsError {
    /// `ip` (or another tool) failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its error output, or why it could not start.
        detail: String,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {netns}: {detail}")]
    Enter {
        /// The namespace.
        netns: String,
        /// Why.
        detail: String,
    },
    /// No free private subnet.
    #[error("no free 10.213.S.0/24 subnet on this host (all 254 are in use)")]
    NoSubnet,
    /// Names or indices out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Whether namespaces can be made here: root, and `ip` present.
pub fn supported() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`ip -V` failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("`ip` cannot run ({e}); install iproute2")),
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Command {
            command: command.clone(),
            detail: format!("cannot run ({e})"),
        })?;
    if !out.status.success() {
        return Err(NetnsError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, NetnsError> {
    run("ip", args)
}

/// The third octet of every 10.213.x.y address on the host.
fn subnets_in_use() -> Result<Vec<u8>, NetnsError> {
    let addrs = ip(&["-o", "-4", "addr", "show"])?;
    let routes = ip(&["-o", "-4", "route", "show", "table", "all"])?;
    Ok(addrs
        .split_whitespace()
        .chain(routes.split_whitespace())
        .filter_map(|w| w.strip_prefix("10.213."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect())
}

/// How many interfaces on the host hold an address in 10.213.S.0/24.
fn interfaces_on(s: u8) -> Result<usize, NetnsError> {
    let prefix = format!("10.213.{s}.");
    Ok(ip(&["-o", "-4", "addr", "show"])?
        .lines()
        .filter(|l| l.split_whitespace().any(|w| w.starts_with(&prefix)))
        .count())
}

/// A number that differs between calls and processes (for picking names and subnets).
fn random() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one((
        std::process::id(),
        std::time::SystemTime::now(),
        std::thread::current().id(),
    ))
}

/// A fresh 6-hex-digit identifier for a [`Lan`].
pub fn new_id() -> String {
    format!("{:06x}", random() & 0xff_ffff)
}

/// A bridge and the namespaces attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lan {
    /// Identifier in every name the LAN creates (6 hex digits).
    pub id: String,
    /// `S` in 10.213.S.0/24.
    pub subnet: u8,
}

/// A node's namespace on a [`Lan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Namespace name (under /run/netns).
    pub netns: String,
    /// The node's address on the LAN.
    pub addr: Ipv4Addr,
    /// The host end of its veth pair (attached to the bridge).
    pub host_link: String,
}

impl Lan {
    /// Creates the bridge, on a subnet no other interface or route on the host uses.
    pub fn create(id: &str) -> Result<Self, NetnsError> {
        if id.len() != 6 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NetnsError::Invalid(format!(
                "LAN id must be 6 hex digits, found `{id}`"
            )));
        }
        let bridge = format!("vb{id}");
        // Without multicast snooping the bridge joins no group (224.0.0.106) to report.
        ip(&[
            "link",
            "add",
            &bridge,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
        let lan = (|| {
            // No multicast (IGMP reports) either: only what the cluster sends crosses the
            // LAN. Set before any address exists, or the host joins groups and says so.
            ip(&["link", "set", &bridge, "multicast", "off"])?;
            for attempt in 0..64u64 {
                let used = subnets_in_use()?;
                let start = (random().wrapping_add(attempt) % 254) as u8;
                let Some(s) = (0..254u8)
                    .map(|k| (start.wrapping_add(k) % 254) + 1)
                    .find(|s| !used.contains(s))
                else {
                    return Err(NetnsError::NoSubnet);
                };
                let cidr = format!("10.213.{s}.1/24");
                ip(&["addr", "add", &cidr, "dev", &bridge])?;
                // Another LAN may have taken the same subnet at the same moment: if another
                // interface now holds it too, give it up and try another.
                if interfaces_on(s)? == 1 {
                    return Ok(Self {
                        id: id.to_string(),
                        subnet: s,
                    });
                }
                ip(&["addr", "del", &cidr, "dev", &bridge])?;
            }
            Err(NetnsError::NoSubnet)
        })();
        let lan = match lan {
            Ok(l) => l,
            Err(e) => {
                let _ = ip(&["link", "del", &bridge]);
                return Err(e);
            }
        };
        disable_ipv6(None, &bridge)?;
        ip(&["link", "set", &bridge, "up"])?;
        Ok(lan)
    }

    /// The bridge's name.
    pub fn bridge(&self) -> String {
        format!("vb{}", self.id)
    }

    /// The host's address on the LAN.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    /// The namespace name of `node`.
    pub fn netns_name(&self, node: &str) -> String {
        format!("veil-{}-{node}", self.id)
    }

    /// Creates the namespace of node number `index` (0–199), named after `node`, with `lo`
    /// up and `eth0` on the bridge.
    pub fn attach(&self, node: &str, index: u8) -> Result<Attached, NetnsError> {
        if index >= 200 {
            return Err(NetnsError::Invalid(format!(
                "node index {index}: a LAN holds at most 200 nodes"
            )));
        }
        if node.is_empty()
            || !node
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(NetnsError::Invalid(format!(
                "node name `{node}`: expected letters, digits, - and _"
            )));
        }
        let netns = self.netns_name(node);
        let host_link = format!("vh{}{index}", self.id);
        let peer = format!("vn{}{index}", self.id);
        let addr = Ipv4Addr::new(10, 213, self.subnet, 10 + index);
        ip(&["netns", "add", &netns])?;
        let done = (|| {
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            // New links in the namespace start without IPv6.
            disable_ipv6(Some(&netns), "default")?;
            ip(&[
                "link", "add", &host_link, "type", "veth", "peer", "name", &peer, "netns", &netns,
            ])?;
            disable_ipv6(None, &host_link)?;
            ip(&["link", "set", &host_link, "multicast", "off"])?;
            ip(&["link", "set", &host_link, "master", &self.bridge(), "up"])?;
            ip(&["-n", &netns, "link", "set", &peer, "name", "eth0"])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &netns, "link", "set", "eth0", "multicast", "off"])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
            Ok(())
        })();
        if let Err(e) = done {
            let _ = ip(&["link", "del", &host_link]);
            let _ = ip(&["netns", "del", &netns]);
            return Err(e);
        }
        Ok(Attached {
            netns,
            addr,
            host_link,
        })
    }

    /// Removes the namespaces (killing whatever still runs in them) and the bridge. Goes on
    /// past failures and reports the first.
    pub fn destroy(&self, netns: &[String]) -> Result<(), NetnsError> {
        let mut first = None;
        for ns in netns {
            if let Err(e) = remove_netns(ns) {
                first.get_or_insert(e);
            }
        }
        // A deleted namespace takes its veth ends with it only when the kernel gets round to
        // it; delete the host ends now (which removes both ends at once).
        for link in links_with_prefix(&format!("vh{}", self.id))? {
            if let Err(e) = ip(&["link", "del", &link])
                && link_exists(&link)
            {
                first.get_or_insert(e);
            }
        }
        if link_exists(&self.bridge())
            && let Err(e) = ip(&["link", "del", &self.bridge()])
        {
            first.get_or_insert(e);
        }
        let left = links_with_prefix(&format!("vh{}", self.id))?;
        if !left.is_empty() || link_exists(&self.bridge()) {
            first.get_or_insert(NetnsError::Invalid(format!(
                "links of LAN {} are still present: {left:?}",
                self.id
            )));
        }
        first.map_or(Ok(()), Err)
    }
}

/// A LAN that is destroyed, with every namespace named after it, when dropped (for tests and
/// benchmarks that must leave nothing behind even when they fail).
#[derive(Debug)]
pub struct LanGuard(pub Lan);

impl Drop for LanGuard {
    fn drop(&mut self) {
        let prefix = self.0.netns_name("");
        let all: Vec<String> = std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        if let Err(e) = self.0.destroy(&all) {
            eprintln!("warning: LAN {}: {e}", self.0.id);
        }
    }
}

impl std::ops::Deref for LanGuard {
    type Target = Lan;
    fn deref(&self) -> &Lan {
        &self.0
    }
}

fn disable_ipv6(netns: Option<&str>, link: &str) -> Result<(), NetnsError> {
    let key = format!("net.ipv6.conf.{link}.disable_ipv6=1");
    match netns {
        None => run("sysctl", &["-qw", &key]).map(|_| ()),
        Some(ns) => ip(&["netns", "exec", ns, "sysctl", "-qw", &key]).map(|_| ()),
    }
}

/// The host links whose names start with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Result<Vec<String>, NetnsError> {
    Ok(ip(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_string())
        .filter(|name| name.starts_with(prefix))
        .collect())
}

/// Whether a link of this name exists in the host namespace.
pub fn link_exists(name: &str) -> bool {
    ip(&["link", "show", "dev", name]).is_ok()
}

/// Whether a namespace of this name exists.
pub fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

/// The processes running in a namespace.
pub fn pids(netns: &str) -> Result<Vec<u32>, NetnsError> {
    Ok(ip(&["netns", "pids", netns])?
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// Stops every process in `netns` (TERM, then KILL after 5 s) and deletes it.
pub fn remove_netns(netns: &str) -> Result<(), NetnsError> {
    if !netns_exists(netns) {
        return Ok(());
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = pids(netns)?;
        if left.is_empty() {
            break;
        }
        let signal = if std::time::Instant::now() < deadline {
            "-TERM"
        } else {
            "-KILL"
        };
        let mut args = vec![signal.to_string()];
        args.extend(left.iter().map(u32::to_string));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let _ = run("kill", &args);
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ip(&["netns", "del", netns]).map(|_| ())
}

/// Runs `f` on a thread inside the network namespace `netns` and returns its result.
pub fn run_in<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let path = std::path::Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path).map_err(|e| NetnsError::Enter {
        netns: netns.to_string(),
        detail: format!("{}: {e}", path.display()),
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetnsError::Enter {
                    netns: netns.to_string(),
                    detail: e.to_string(),
                }
            })?;
            Ok(f())
        })
        .join()
        .map_err(|_| NetnsError::Enter {
            netns: netns.to_string(),
            detail: "the thread inside the namespace panicked".into(),
        })?
    })
}
