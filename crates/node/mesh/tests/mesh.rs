//! The mesh data plane on real namespaces, veths, TUN devices and packet captures (needs root,
//! as `veil mini` does for namespaces).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use veil_mesh::{Device, DeviceConfig, MeshKey, PeerConfig};
use veil_netns::{Attached, Lan, run_in};

const PORT: u16 = 51820;

fn mesh_addr(lan: &Lan, i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 215, lan.subnet, 1 + i)
}

/// Starts a mesh device inside `node`'s namespace.
fn device(lan: &Lan, node: &Attached, i: u8, key: MeshKey) -> Device {
    let cfg = DeviceConfig {
        interface: "veil0".into(),
        address: mesh_addr(lan, i),
        prefix: 24,
        listen: SocketAddr::from((node.addr, PORT)),
        mtu: 1420,
    };
    run_in(&node.netns, || Device::start(&cfg, key))
        .unwrap()
        .unwrap()
}

/// Devices on `a` (mesh address .1) and `b` (.2), each the other's only peer.
fn linked(lan: &Lan, a: &Attached, b: &Attached) -> (Device, Device) {
    let (ka, kb) = (MeshKey::generate(), MeshKey::generate());
    let (pa, pb) = (ka.public(), kb.public());
    let da = device(lan, a, 0, ka);
    let db = device(lan, b, 1, kb);
    da.set_peers(&[peer(lan, b, 1, pb)]).unwrap();
    db.set_peers(&[peer(lan, a, 0, pa)]).unwrap();
    (da, db)
}

fn peer(lan: &Lan, node: &Attached, i: u8, key: [u8; 32]) -> PeerConfig {
    PeerConfig {
        public_key: key,
        endpoint: SocketAddr::from((node.addr, PORT)),
        mesh_address: mesh_addr(lan, i),
        routes: vec![],
    }
}

fn ping(netns: &str, to: Ipv4Addr, count: u32) -> bool {
    Command::new("ip")
        .args(["netns", "exec", netns, "ping", "-q", "-c"])
        .arg(count.to_string())
        .args(["-W", "2", "-i", "0.2"])
        .arg(to.to_string())
        .stdout(Stdio::null())
        .status()
        .unwrap()
        .success()
}

/// Sends `payload` over TCP from `from`'s namespace to `to:port` in `server`'s namespace and
/// returns what the server received.
fn tcp_stream(from: &str, server: &str, to: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let listener = run_in(server, || TcpListener::bind((to, port)).unwrap()).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let payload = payload.to_vec();
    run_in(from, move || {
        let mut s =
            TcpStream::connect_timeout(&SocketAddr::from((to, port)), Duration::from_secs(5))
                .unwrap();
        s.write_all(&payload).unwrap();
    })
    .unwrap();
    reader.join().unwrap()
}

struct Capture {
    child: std::process::Child,
    file: std::path::PathBuf,
}

fn capture(link: &str, file: std::path::PathBuf) -> Capture {
    let child = Command::new("tcpdump")
        .args(["-i", link, "--immediate-mode", "-U", "-s", "0", "-w"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tcpdump (scripts/setup.sh installs it)");
    std::thread::sleep(Duration::from_millis(500));
    Capture { child, file }
}

impl Capture {
    /// Stops the capture; returns its raw bytes and one summary line per packet.
    fn finish(mut self) -> (Vec<u8>, Vec<String>) {
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let raw = std::fs::read(&self.file).unwrap();
        let out = Command::new("tcpdump")
            .args(["-nn", "-r"])
            .arg(&self.file)
            .output()
            .unwrap();
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        (raw, lines)
    }
}

#[test]
fn nodes_reach_each_other_only_over_wireguard_and_strangers_and_removed_nodes_get_nothing() {
    veil_netns::supported().expect("these tests need root and iproute2");
    let tmp = tempfile::tempdir().unwrap();
    let lan = veil_netns::LanGuard(Lan::create(&veil_netns::new_id()).unwrap());
    let a = lan.attach("a", 0).unwrap();
    let b = lan.attach("b", 1).unwrap();
    let c = lan.attach("c", 2).unwrap();
    let (da, db) = linked(&lan, &a, &b);
    let pa = da.public_key();

    // Ping and a TCP stream with a canary, while the veth of node a is captured.
    let cap = capture(&a.host_link, tmp.path().join("a.pcap"));
    assert!(
        ping(&a.netns, mesh_addr(&lan, 1), 3),
        "a cannot ping b over the mesh"
    );
    let canary = b"VEIL-CANARY-7f3a9c-plaintext-must-not-cross-the-wire".repeat(2000);
    let got = tcp_stream(&a.netns, &b.netns, mesh_addr(&lan, 1), 7001, &canary);
    assert_eq!(got, canary, "the stream arrived altered");
    let (raw, lines) = cap.finish();
    assert!(lines.len() > 20, "the capture saw too little: {lines:?}");
    for l in lines.iter().filter(|l| !l.contains(" ARP, ")) {
        assert!(
            l.contains(&format!(".{PORT} > ")) && l.contains(": UDP"),
            "something other than WireGuard crossed the wire: {l}"
        );
    }
    assert!(
        !raw.windows(11).any(|w| w == b"VEIL-CANARY"),
        "the plaintext canary crossed the wire"
    );
    assert!(da.stats().handshakes + db.stats().handshakes >= 1);
    assert!(db.stats().rx_bytes >= canary.len() as u64);

    // Hostile datagrams from anyone on the LAN (oversized data packets, truncated and random
    // handshakes) are dropped without harm: the mesh keeps working.
    let hostile = run_in(&c.netns, || std::net::UdpSocket::bind((c.addr, 0)).unwrap()).unwrap();
    let to_a = SocketAddr::from((a.addr, PORT));
    // Data packets naming every plausible receiver index (peer 1..4, session 0..7), each far
    // larger than any legitimate datagram.
    for peer_index in 1u32..5 {
        for session in 0u32..8 {
            let mut big = vec![4u8, 0, 0, 0];
            big.extend_from_slice(&((peer_index << 8) | session).to_le_bytes());
            big.resize(4000, 0xAB);
            hostile.send_to(&big, to_a).unwrap();
        }
    }
    for d in [
        &[1, 0, 0, 0][..],
        &[2u8; 92][..],
        &[4u8; 32][..],
        &[9u8; 200][..],
    ] {
        hostile.send_to(d, to_a).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        ping(&b.netns, mesh_addr(&lan, 0), 2),
        "hostile datagrams broke a's mesh"
    );

    // A stranger with a well-formed key that no attested node has in its peer set: it knows
    // a's key and endpoint, and sends; not one packet reaches a's TUN.
    let stranger = device(&lan, &c, 2, MeshKey::generate());
    stranger.set_peers(&[peer(&lan, &a, 0, pa)]).unwrap();
    let rx_before = da.stats().rx_bytes;
    assert!(
        !ping(&c.netns, mesh_addr(&lan, 0), 3),
        "a stranger reached a"
    );
    assert_eq!(
        da.stats().rx_bytes,
        rx_before,
        "a accepted a stranger's packet"
    );
    assert!(
        da.stats().dropped > 0,
        "a did not even see the stranger's handshakes"
    );

    // b is removed from a's peer set: it is cut off at once, both ways.
    da.set_peers(&[]).unwrap();
    let rx_before = da.stats().rx_bytes;
    assert!(
        !ping(&b.netns, mesh_addr(&lan, 0), 3),
        "a removed node reached a"
    );
    assert!(
        !ping(&a.netns, mesh_addr(&lan, 1), 2),
        "a still sends to a removed node"
    );
    assert_eq!(da.stats().rx_bytes, rx_before);
    assert_eq!(da.stats().peers, 0);

    drop((da, db, stranger));
}

#[test]
fn peer_sets_are_checked() {
    // No namespace needed: the checks run before anything is touched.
    let k = MeshKey::generate();
    let me = k.public();
    let p = |key: [u8; 32], last: u8| PeerConfig {
        public_key: key,
        endpoint: SocketAddr::from(([127, 0, 0, 1], PORT)),
        mesh_address: Ipv4Addr::new(10, 215, 0, last),
        routes: vec![],
    };
    // A device is needed to call set_peers; use a namespace only if we can.
    veil_netns::supported().expect("these tests need root and iproute2");
    let lan = veil_netns::LanGuard(Lan::create(&veil_netns::new_id()).unwrap());
    let a = lan.attach("a", 0).unwrap();
    let d = device(&lan, &a, 0, k);
    let other = MeshKey::generate().public();
    let e = d.set_peers(&[p(me, 2)]).unwrap_err().to_string();
    assert!(e.contains("own key"), "{e}");
    let e = d
        .set_peers(&[p(other, 2), p(other, 3)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("appears twice"), "{e}");
    let e = d
        .set_peers(&[p(other, 2), p(MeshKey::generate().public(), 2)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("10.215.0.2 appears twice"), "{e}");
    assert_eq!(d.stats().peers, 0, "a refused set changed the peers");
    drop(d);
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn interoperates_with_a_standard_wireguard_peer() {
    // Node b runs boringtun-cli configured with Debian's `wg`, as any WireGuard peer would be.
    veil_netns::supported().expect("these tests need root and iproute2");
    let tmp = tempfile::tempdir().unwrap();
    let lan = veil_netns::LanGuard(Lan::create(&veil_netns::new_id()).unwrap());
    let a = lan.attach("a", 0).unwrap();
    let b = lan.attach("b", 1).unwrap();
    let wg_if = format!("wgt{}", lan.id);
    let b_secret = run(Command::new("wg").arg("genkey"));
    let key_file = tmp.path().join("b.key");
    std::fs::write(&key_file, &b_secret).unwrap();
    let b_public = {
        use std::io::Write as _;
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b_secret.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let mut bt = Command::new("ip")
        .args(["netns", "exec", &b.netns, "boringtun-cli", "--foreground"])
        .args(["--disable-drop-privileges", "--log"])
        .arg(tmp.path().join("boringtun.log"))
        .arg(&wg_if)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("boringtun-cli (scripts/setup.sh installs it)");
    let sock = format!("/var/run/wireguard/{wg_if}.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !std::path::Path::new(&sock).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "boringtun-cli did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let ka = MeshKey::generate();
    let pa = ka.public_base64();
    let da = device(&lan, &a, 0, ka);
    da.set_peers(&[peer(&lan, &b, 1, veil_mesh::decode_key(&b_public).unwrap())])
        .unwrap();
    run(Command::new("ip")
        .args(["netns", "exec", &b.netns, "wg", "set", &wg_if])
        .args([
            "private-key",
            &key_file.display().to_string(),
            "listen-port",
            &PORT.to_string(),
            "peer",
            &pa,
            "endpoint",
            &format!("{}:{PORT}", a.addr),
            "allowed-ips",
            &format!("{}/32", mesh_addr(&lan, 0)),
        ]));
    run(Command::new("ip").args([
        "-n",
        &b.netns,
        "addr",
        "add",
        &format!("{}/24", mesh_addr(&lan, 1)),
        "dev",
        &wg_if,
    ]));
    run(Command::new("ip").args(["-n", &b.netns, "link", "set", &wg_if, "mtu", "1420", "up"]));

    // Both directions: our device starts the handshake, then the standard peer does.
    assert!(
        ping(&a.netns, mesh_addr(&lan, 1), 3),
        "veil-mesh → boringtun-cli failed"
    );
    assert!(
        ping(&b.netns, mesh_addr(&lan, 0), 3),
        "boringtun-cli → veil-mesh failed"
    );
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let got = tcp_stream(&b.netns, &a.netns, mesh_addr(&lan, 0), 7002, &payload);
    assert_eq!(got, payload);
    let shown = run(Command::new("ip").args(["netns", "exec", &b.netns, "wg", "show", &wg_if]));
    // The standard peer counts what it exchanged with our device (bytes both ways).
    assert!(
        shown.contains("transfer:")
            && shown.contains("received")
            && !shown.contains(" 0 B received"),
        "{shown}"
    );
    assert!(da.stats().rx_bytes >= payload.len() as u64);

    let _ = bt.kill();
    let _ = bt.wait();
    drop(da);
    let _ = std::fs::remove_file(&sock);
}

#[test]
fn strict_mode_drops_plaintext_between_nodes_even_with_the_mesh_down() {
    veil_netns::supported().expect("these tests need root and iproute2");
    let tmp = tempfile::tempdir().unwrap();
    let lan = veil_netns::LanGuard(Lan::create(&veil_netns::new_id()).unwrap());
    let a = lan.attach("a", 0).unwrap();
    let b = lan.attach("b", 1).unwrap();
    let (da, db) = linked(&lan, &a, &b);
    let policy = veil_mesh::StrictPolicy {
        lan: Ipv4Addr::new(10, 213, lan.subnet, 0),
        prefix: 24,
        wireguard_port: PORT,
        tls_ports: vec![7443],
    };
    for n in [&a, &b] {
        run_in(&n.netns, || policy.apply()).unwrap().unwrap();
    }
    // Plaintext straight to b's LAN address is dropped; the mesh still works.
    let listener = run_in(&b.netns, || TcpListener::bind((b.addr, 7003)).unwrap()).unwrap();
    let direct = run_in(&a.netns, || {
        TcpStream::connect_timeout(&SocketAddr::from((b.addr, 7003)), Duration::from_secs(1))
    })
    .unwrap();
    assert!(
        direct.is_err(),
        "plaintext TCP crossed between nodes in strict mode"
    );
    drop(listener);
    assert!(
        ping(&a.netns, mesh_addr(&lan, 1), 2),
        "strict mode broke the mesh"
    );

    // The mesh interface goes down: nothing plaintext leaves a for b, by any address.
    run(Command::new("ip").args(["-n", &a.netns, "link", "set", "veil0", "down"]));
    let cap = capture(&a.host_link, tmp.path().join("down.pcap"));
    assert!(!ping(&a.netns, mesh_addr(&lan, 1), 2));
    assert!(
        !ping(&a.netns, b.addr, 2),
        "plaintext ICMP crossed between nodes"
    );
    let (_, lines) = cap.finish();
    let leaked: Vec<&String> = lines.iter().filter(|l| !l.contains(" ARP, ")).collect();
    assert!(leaked.is_empty(), "packets left node a: {leaked:?}");
    let counters = run(Command::new("ip").args([
        "netns",
        "exec",
        &a.netns,
        "nft",
        "list",
        "table",
        "inet",
        veil_mesh::STRICT_TABLE,
    ]));
    assert!(
        counters
            .lines()
            .any(|l| l.contains("drop") && !l.contains("packets 0 ")),
        "strict mode dropped nothing: {counters}"
    );
    drop((da, db));
}

/// Finding 4 (issue 8): strict mode once let in anything from a LAN address whose *source*
/// port was an allowed one (meant for replies). A client bound to source port 7443, 9464 (TCP)
/// or 51820 (UDP) must not reach an arbitrary service on a node; a new flow to an allowed
/// destination port, and its replies, still pass.
#[test]
fn strict_mode_bypassed_by_the_source_port() {
    veil_netns::supported().expect("these tests need root and iproute2");
    let lan = veil_netns::LanGuard(Lan::create(&veil_netns::new_id()).unwrap());
    let a = lan.attach("a", 0).unwrap();
    let b = lan.attach("b", 1).unwrap();
    let policy = veil_mesh::StrictPolicy {
        lan: Ipv4Addr::new(10, 213, lan.subnet, 0),
        prefix: 24,
        wireguard_port: PORT,
        tls_ports: vec![7443, 9464],
    };
    // a is the attacker's client on the LAN (no strict mode of its own); b is a node.
    run_in(&b.netns, || policy.apply()).unwrap().unwrap();
    let tcp_from = |sport: u16, dport: u16| -> bool {
        let to = SocketAddr::from((b.addr, dport));
        let from = SocketAddr::from((a.addr, sport));
        run_in(&a.netns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let s = tokio::net::TcpSocket::new_v4().unwrap();
                s.set_reuseaddr(true).unwrap();
                s.bind(from).unwrap();
                matches!(
                    tokio::time::timeout(Duration::from_millis(1500), s.connect(to)).await,
                    Ok(Ok(_))
                )
            })
        })
        .unwrap()
    };
    // b runs an arbitrary service (7003) and an allowed one (7443).
    let (arbitrary, allowed) = run_in(&b.netns, || {
        (
            TcpListener::bind((b.addr, 7003)).unwrap(),
            TcpListener::bind((b.addr, 7443)).unwrap(),
        )
    })
    .unwrap();
    for sport in [7443, 9464] {
        assert!(
            !tcp_from(sport, 7003),
            "from source port {sport}, a reached b's arbitrary TCP service"
        );
    }
    assert!(
        tcp_from(40123, 7443),
        "a new flow to an allowed port (and its replies) must pass"
    );
    drop((arbitrary, allowed));
    // UDP from the WireGuard port to an arbitrary UDP service on b.
    let sink = run_in(&b.netns, || {
        let s = std::net::UdpSocket::bind((b.addr, 7004)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        s
    })
    .unwrap();
    run_in(&a.netns, || {
        let s = std::net::UdpSocket::bind((a.addr, PORT)).unwrap();
        s.send_to(b"plaintext", (b.addr, 7004)).unwrap();
    })
    .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        sink.recv_from(&mut buf).is_err(),
        "a datagram from source port {PORT} reached b's arbitrary UDP service"
    );
}

#[test]
fn a_key_rotates_under_a_running_tcp_stream_without_breaking_it() {
    veil_netns::supported().expect("these tests need root and iproute2");
    let lan = veil_netns::LanGuard(Lan::create(&veil_netns::new_id()).unwrap());
    let a = lan.attach("a", 0).unwrap();
    let b = lan.attach("b", 1).unwrap();
    let (da, db) = linked(&lan, &a, &b);

    let to = mesh_addr(&lan, 1);
    let listener = run_in(&b.netns, || TcpListener::bind((to, 7004)).unwrap()).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let chunk: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 253) as u8).collect();
    let chunks = 60;
    let writer = {
        let chunk = chunk.clone();
        let ns = a.netns.clone();
        std::thread::spawn(move || {
            run_in(&ns, move || {
                let mut s = TcpStream::connect_timeout(
                    &SocketAddr::from((to, 7004)),
                    Duration::from_secs(5),
                )
                .unwrap();
                for _ in 0..chunks {
                    s.write_all(&chunk).unwrap();
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
            .unwrap()
        })
    };
    // Mid-stream: a takes a new key; b learns it (as the control plane would tell it).
    std::thread::sleep(Duration::from_millis(1000));
    let new = MeshKey::generate();
    let new_public = new.public();
    let handshakes = da.stats().handshakes + db.stats().handshakes;
    da.rotate_key(new).unwrap();
    assert_eq!(da.public_key(), new_public);
    db.set_peers(&[peer(&lan, &a, 0, new_public)]).unwrap();
    writer.join().unwrap();
    let got = reader.join().unwrap();
    assert_eq!(got.len(), chunk.len() * chunks, "the stream lost data");
    assert!(
        got.chunks(chunk.len()).all(|c| c == chunk.as_slice()),
        "the stream was altered"
    );
    assert!(
        da.stats().handshakes + db.stats().handshakes > handshakes,
        "no new handshake after the rotation"
    );
    drop((da, db));
}
