//! `veil-bench mesh`: iperf3 throughput between two node namespaces over the plain veth, over
//! veil-mesh, and over boringtun-cli configured with `wg`, in the same run, with the CPU each
//! WireGuard implementation used (needs root, iperf3, wg and boringtun-cli).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use veil_mesh::{Device, DeviceConfig, MeshKey, PeerConfig};
use veil_netns::{Attached, Lan, run_in};

/// Clock ticks per second of /proc/*/stat times (USER_HZ; 100 on Linux).
const TICKS: f64 = 100.0;

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is field 14, stime 15.
    let after = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (get(11) + get(12)) / TICKS
}

struct Iperf {
    gbits: f64,
}

/// iperf3 from `client` to `server_addr` (server in `server`'s namespace), for `secs`.
fn iperf(client: &Attached, server: &Attached, server_addr: Ipv4Addr, secs: f64) -> Result<Iperf> {
    let mut srv = Command::new("ip")
        .args(["netns", "exec", &server.netns, "iperf3", "-s", "-1", "-B"])
        .arg(server_addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 (scripts/setup.sh installs it)")?;
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("ip")
        .args(["netns", "exec", &client.netns, "iperf3", "-J", "-c"])
        .arg(server_addr.to_string())
        .args(["-t", &format!("{}", secs.max(1.0).round())])
        .output()?;
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("iperf3 -J output")?;
    let bps = v
        .pointer("/end/sum_received/bits_per_second")
        .and_then(serde_json::Value::as_f64)
        .with_context(|| format!("iperf3 failed: {:?}", v.get("error")))?;
    Ok(Iperf { gbits: bps / 1e9 })
}

fn mesh_device(node: &Attached, addr: Ipv4Addr, port: u16, key: MeshKey) -> Result<Device> {
    let cfg = DeviceConfig {
        interface: "veil0".into(),
        address: addr,
        prefix: 24,
        listen: SocketAddr::from((node.addr, port)),
        mtu: 1420,
    };
    Ok(run_in(&node.netns, || Device::start(&cfg, key))??)
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn wg_key() -> Result<(String, String)> {
    use std::io::Write;
    let secret = sh(Command::new("wg").arg("genkey")).context("wg (scripts/setup.sh)")?;
    let mut child = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(secret.as_bytes())?;
    let public = String::from_utf8(child.wait_with_output()?.stdout)?;
    Ok((secret, public.trim().to_string()))
}

/// One side of a boringtun-cli tunnel.
struct WgSide<'a> {
    node: &'a Attached,
    iface: String,
    secret: String,
    addr: Ipv4Addr,
}

/// Starts boringtun-cli for `me` with `wg` configuration towards `peer`; returns its process.
fn boringtun(
    me: &WgSide<'_>,
    peer: (&WgSide<'_>, &str),
    dir: &std::path::Path,
    port: u16,
) -> Result<std::process::Child> {
    let (node, iface, secret, addr) = (me.node, me.iface.as_str(), &me.secret, me.addr);
    let (peer_public, peer) = (peer.1, (peer.0.node, peer.0.addr));
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.netns,
            "boringtun-cli",
            "--foreground",
        ])
        .args(["--disable-drop-privileges", "--log"])
        .arg(dir.join(format!("{iface}.log")))
        .arg(iface)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("boringtun-cli (scripts/setup.sh installs it)")?;
    let sock = format!("/var/run/wireguard/{iface}.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&sock).exists() {
        if Instant::now() > deadline {
            bail!("boringtun-cli did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let key = dir.join(format!("{iface}.key"));
    std::fs::write(&key, secret)?;
    sh(Command::new("ip")
        .args([
            "netns",
            "exec",
            &node.netns,
            "wg",
            "set",
            iface,
            "private-key",
        ])
        .arg(&key)
        .args(["listen-port", &port.to_string(), "peer", peer_public])
        .args(["endpoint", &format!("{}:{port}", peer.0.addr)])
        .args(["allowed-ips", &format!("{}/32", peer.1)]))?;
    sh(Command::new("ip").args([
        "-n",
        &node.netns,
        "addr",
        "add",
        &format!("{addr}/24"),
        "dev",
        iface,
    ]))?;
    sh(Command::new("ip").args(["-n", &node.netns, "link", "set", iface, "mtu", "1420", "up"]))?;
    Ok(child)
}

pub fn run(secs: f64) -> Result<()> {
    veil_netns::supported().map_err(anyhow::Error::msg)?;
    let lan = Lan::create(&veil_netns::new_id())?;
    let a = lan.attach("a", 0)?;
    let b = lan.attach("b", 1)?;
    let r = measure(&lan, &a, &b, secs);
    lan.destroy(&[a.netns.clone(), b.netns.clone()])?;
    r
}

fn measure(lan: &Lan, a: &Attached, b: &Attached, secs: f64) -> Result<()> {
    println!(
        "veil-bench mesh: iperf3, one TCP stream, {:.0} s per figure, node a → node b",
        secs.max(1.0).round()
    );
    let plain = iperf(a, b, b.addr, secs)?;
    println!("plain veth:               {:>7.2} Gbit/s", plain.gbits);

    // veil-mesh
    let (ka, kb) = (MeshKey::generate(), MeshKey::generate());
    let (pa, pb) = (ka.public(), kb.public());
    let (ma, mb) = (
        Ipv4Addr::new(10, 215, lan.subnet, 1),
        Ipv4Addr::new(10, 215, lan.subnet, 2),
    );
    let da = mesh_device(a, ma, 51820, ka)?;
    let db = mesh_device(b, mb, 51820, kb)?;
    da.set_peers(&[PeerConfig {
        public_key: pb,
        endpoint: SocketAddr::from((b.addr, 51820)),
        mesh_address: mb,
        routes: vec![],
    }])?;
    db.set_peers(&[PeerConfig {
        public_key: pa,
        endpoint: SocketAddr::from((a.addr, 51820)),
        mesh_address: ma,
        routes: vec![],
    }])?;
    let me = std::process::id();
    let (cpu0, t0) = (cpu_seconds(me), Instant::now());
    let ours = iperf(a, b, mb, secs)?;
    let ours_cpu = (cpu_seconds(me) - cpu0) / t0.elapsed().as_secs_f64();
    drop((da, db));
    println!(
        "veil-mesh:                {:>7.2} Gbit/s   CPU {:.2} cores (both nodes' devices)",
        ours.gbits, ours_cpu
    );

    // boringtun-cli configured with wg
    let tmp = tempfile::tempdir()?;
    let (sa, pa) = wg_key()?;
    let (sb, pb) = wg_key()?;
    let (wa, wb) = (
        Ipv4Addr::new(10, 216, lan.subnet, 1),
        Ipv4Addr::new(10, 216, lan.subnet, 2),
    );
    let (ia, ib) = (format!("wga{}", lan.id), format!("wgb{}", lan.id));
    let side_a = WgSide {
        node: a,
        iface: ia.clone(),
        secret: sa,
        addr: wa,
    };
    let side_b = WgSide {
        node: b,
        iface: ib.clone(),
        secret: sb,
        addr: wb,
    };
    let mut bta = boringtun(&side_a, (&side_b, &pb), tmp.path(), 51821)?;
    let mut btb = boringtun(&side_b, (&side_a, &pa), tmp.path(), 51821)?;
    let pids = [bta.id(), btb.id()];
    let cpu = || pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let (cpu0, t0) = (cpu(), Instant::now());
    let theirs = iperf(a, b, wb, secs);
    let theirs_cpu = (cpu() - cpu0) / t0.elapsed().as_secs_f64();
    for c in [&mut bta, &mut btb] {
        let _ = c.kill();
        let _ = c.wait();
    }
    for i in [&ia, &ib] {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{i}.sock"));
    }
    let theirs = theirs?;
    println!(
        "boringtun-cli 0.7.1 + wg: {:>7.2} Gbit/s   CPU {:.2} cores (both nodes' processes)",
        theirs.gbits, theirs_cpu
    );
    println!(
        "veil-mesh / boringtun-cli: {:.2}x   (goal: 2x)   veil-mesh / plain veth: {:.3}",
        ours.gbits / theirs.gbits,
        ours.gbits / plain.gbits
    );
    Ok(())
}
