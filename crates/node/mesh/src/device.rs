//! The WireGuard device: TUN ⇄ boringtun's Noise core ⇄ UDP, one thread per direction and one
//! for timers.
//!
//! Per-packet system calls are what make userspace WireGuard slow, so both directions batch:
//! - out: the TUN device has offloads on (virtio-net header), so one read returns a whole TCP
//!   super-segment, which is split into MTU-sized packets, each encrypted into its own
//!   WireGuard datagram, and the datagrams for one peer leave in one `sendmsg` with UDP GSO;
//! - in: UDP GRO hands over many datagrams per `recvmsg`; each is authenticated and decrypted,
//!   and the packets are coalesced (GRO) into as few TUN writes as possible.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::AsRawFd;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrIn, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, InterruptEvent, SyncDevice, VIRTIO_NET_HDR_LEN};

use crate::{MeshError, MeshKey};

/// Room for one WireGuard datagram (MTU-sized packet + 32 bytes of WireGuard overhead).
const BUF: usize = 65_536;
/// Room for one packet (an MTU of up to 1500 plus WireGuard's 32 bytes, rounded up).
const SLOT: usize = 1600;
/// Most datagrams in one UDP GSO send (the kernel's limit is 64 segments and 64 KiB).
const GSO_MAX: usize = 40;
const TIMER_TICK: Duration = Duration::from_millis(250);
const KEEPALIVE_SECS: u16 = 25;

/// How a node's mesh device is set up.
#[derive(Debug, Clone)]
pub struct DeviceConfig {
    /// TUN interface name (unique on the host: at most 15 bytes).
    pub interface: String,
    /// The node's mesh address.
    pub address: Ipv4Addr,
    /// Prefix length of the mesh network.
    pub prefix: u8,
    /// Where the UDP socket listens (the node's own address and the mesh port).
    pub listen: SocketAddr,
    /// MTU of the TUN interface (1420 leaves room for WireGuard over a 1500-byte link).
    pub mtu: u16,
}

/// One peer of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    /// Its WireGuard public key.
    pub public_key: [u8; 32],
    /// Where it listens.
    pub endpoint: SocketAddr,
    /// Its mesh address: an inner source accepted from it, an inner destination sent to it.
    pub mesh_address: Ipv4Addr,
    /// Networks routed through it (its pods' slice of the pod network): inner sources accepted
    /// from it and destinations sent to it, besides its mesh address.
    pub routes: Vec<(Ipv4Addr, u8)>,
}

impl PeerConfig {
    /// Whether `addr` is this peer's: its mesh address or in one of its routes.
    pub fn covers(&self, addr: Ipv4Addr) -> bool {
        addr == self.mesh_address
            || self
                .routes
                .iter()
                .any(|&(net, prefix)| in_network(addr, net, prefix))
    }
}

fn in_network(addr: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    u32::from(addr) & mask == u32::from(net) & mask
}

/// Counters of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Inner bytes sent into the mesh.
    pub tx_bytes: u64,
    /// Inner bytes received from the mesh and delivered.
    pub rx_bytes: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Packets dropped: no peer for the destination, unknown sender, or a source address that
    /// is not the sending peer's.
    pub dropped: u64,
    /// Peers in the current set.
    pub peers: u64,
}

struct Peer {
    config: PeerConfig,
    /// The index boringtun was given (its receiver indices are `index << 8 | n`).
    index: u32,
    tunn: Mutex<Tunn>,
    endpoint: Mutex<SocketAddr>,
}

#[derive(Default)]
struct Peers {
    by_index: HashMap<u32, Arc<Peer>>,
    by_key: HashMap<[u8; 32], Arc<Peer>>,
    by_address: HashMap<Ipv4Addr, Arc<Peer>>,
    /// Peers with routes, for destinations that are no mesh address.
    routed: Vec<Arc<Peer>>,
}

struct Shared {
    /// This node's static key pair (replaced when the key rotates).
    keys: RwLock<(StaticSecret, PublicKey)>,
    tun: SyncDevice,
    udp: UdpSocket,
    peers: RwLock<Peers>,
    next_index: Mutex<u32>,
    stop: AtomicBool,
    interrupt: InterruptEvent,
    tx_bytes: AtomicU64,
    rx_bytes: AtomicU64,
    handshakes: AtomicU64,
    dropped: AtomicU64,
}

/// A running mesh device; stopped (threads joined, TUN removed) on drop.
pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("public", &crate::encode_key(&self.public_key()))
            .finish_non_exhaustive()
    }
}

impl Device {
    /// Creates the TUN interface (in the calling thread's network namespace), opens the UDP
    /// socket and starts the device with no peers.
    pub fn start(config: &DeviceConfig, key: MeshKey) -> Result<Self, MeshError> {
        let tun_err = |source| MeshError::Tun {
            name: config.interface.clone(),
            source,
        };
        let tun = tun_rs::DeviceBuilder::new()
            .name(config.interface.clone())
            .mtu(config.mtu)
            .ipv4(config.address, config.prefix, None)
            .offload(true)
            .build_sync()
            .map_err(tun_err)?;
        let udp = UdpSocket::bind(config.listen).map_err(|source| MeshError::Udp {
            addr: config.listen.to_string(),
            source,
        })?;
        udp.set_read_timeout(Some(TIMER_TICK))
            .map_err(|source| MeshError::Udp {
                addr: config.listen.to_string(),
                source,
            })?;
        // Receive coalesced datagrams when the kernel can (a hint: without it, one at a time).
        if let Err(e) = setsockopt(&udp, sockopt::UdpGroSegment, &true) {
            tracing::debug!(error = %e, "mesh: no UDP GRO");
        }
        let interrupt = InterruptEvent::new().map_err(tun_err)?;
        let secret = key.secret().clone();
        let public = PublicKey::from(&secret);
        let shared = Arc::new(Shared {
            keys: RwLock::new((secret, public)),
            tun,
            udp,
            peers: RwLock::new(Peers::default()),
            next_index: Mutex::new(1),
            stop: AtomicBool::new(false),
            interrupt,
            tx_bytes: AtomicU64::new(0),
            rx_bytes: AtomicU64::new(0),
            handshakes: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for (name, f) in [
            ("mesh-tun", tun_loop as fn(&Shared)),
            ("mesh-udp", udp_loop),
            ("mesh-timers", timer_loop),
        ] {
            let s = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(name.into())
                    .spawn(move || f(&s))
                    .map_err(tun_err)?,
            );
        }
        tracing::info!(interface = %config.interface, address = %config.address, listen = %config.listen, public_key = %crate::encode_key(&public.to_bytes()), "mesh device up");
        Ok(Self { shared, threads })
    }

    /// This node's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared
            .keys
            .read()
            .map(|k| k.1.to_bytes())
            .unwrap_or_default()
    }

    /// Replaces this node's static key. Sessions are re-established with the new key as soon
    /// as peers know it (the control plane hands them the new public key); packets meanwhile
    /// wait in the handshake queue, so TCP flows carry on.
    pub fn rotate_key(&self, key: MeshKey) -> Result<(), MeshError> {
        let secret = key.secret().clone();
        let public = PublicKey::from(&secret);
        {
            let mut k = self
                .shared
                .keys
                .write()
                .map_err(|_| MeshError::Key("key lock poisoned".into()))?;
            *k = (secret.clone(), public);
        }
        let peers = self
            .shared
            .peers
            .read()
            .map_err(|_| MeshError::Peers("peer table poisoned".into()))?;
        for p in peers.by_key.values() {
            if let Ok(mut t) = p.tunn.lock() {
                t.set_static_private(secret.clone(), public, None);
            }
        }
        tracing::info!(event = "mesh_key_rotated", public_key = %crate::encode_key(&public.to_bytes()));
        Ok(())
    }

    /// Replaces the peer set. Peers that stay keep their sessions; peers that leave are cut
    /// off at once (their sessions are dropped with them).
    pub fn set_peers(&self, peers: &[PeerConfig]) -> Result<(), MeshError> {
        let mut seen_keys = std::collections::HashSet::new();
        let mut seen_addrs = std::collections::HashSet::new();
        for p in peers {
            if p.public_key == self.public_key() {
                return Err(MeshError::Peers(
                    "this node's own key is in its peer set".into(),
                ));
            }
            if !seen_keys.insert(p.public_key) {
                return Err(MeshError::Peers(format!(
                    "key {} appears twice",
                    crate::encode_key(&p.public_key)
                )));
            }
            if !seen_addrs.insert(p.mesh_address) {
                return Err(MeshError::Peers(format!(
                    "mesh address {} appears twice",
                    p.mesh_address
                )));
            }
        }
        // No destination may belong to two peers.
        let mut claimed: Vec<(Ipv4Addr, u8, &PeerConfig)> = Vec::new();
        for p in peers {
            for &(net, prefix) in &p.routes {
                if let Some((_, _, other)) = claimed.iter().find(|(n, q, _)| {
                    let q = (*q).min(prefix);
                    in_network(net, *n, q)
                }) {
                    return Err(MeshError::Peers(format!(
                        "route {net}/{prefix} of {} overlaps a route of {}",
                        p.mesh_address, other.mesh_address
                    )));
                }
                claimed.push((net, prefix, p));
            }
        }
        let mut table = self
            .shared
            .peers
            .write()
            .map_err(|_| MeshError::Peers("peer table poisoned".into()))?;
        let mut next = Peers::default();
        for p in peers {
            let kept = table
                .by_key
                .get(&p.public_key)
                .filter(|old| old.config == *p)
                .cloned();
            let peer = match kept {
                Some(old) => old,
                None => {
                    let mut n = self
                        .shared
                        .next_index
                        .lock()
                        .map_err(|_| MeshError::Peers("index poisoned".into()))?;
                    let index = *n;
                    *n = n.wrapping_add(1) & 0x00ff_ffff;
                    Arc::new(Peer {
                        tunn: Mutex::new(Tunn::new(
                            self.shared
                                .keys
                                .read()
                                .map_err(|_| MeshError::Key("key lock poisoned".into()))?
                                .0
                                .clone(),
                            PublicKey::from(p.public_key),
                            None,
                            Some(KEEPALIVE_SECS),
                            index,
                            None,
                        )),
                        endpoint: Mutex::new(p.endpoint),
                        config: p.clone(),
                        index,
                    })
                }
            };
            next.by_index.insert(peer.index, peer.clone());
            next.by_key.insert(p.public_key, peer.clone());
            if !p.routes.is_empty() {
                next.routed.push(peer.clone());
            }
            next.by_address.insert(p.mesh_address, peer);
        }
        *table = next;
        Ok(())
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            tx_bytes: s.tx_bytes.load(Relaxed),
            rx_bytes: s.rx_bytes.load(Relaxed),
            handshakes: s.handshakes.load(Relaxed),
            dropped: s.dropped.load(Relaxed),
            peers: s.peers.read().map(|p| p.by_key.len() as u64).unwrap_or(0),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.shared.stop.store(true, Relaxed);
        let _ = self.shared.interrupt.trigger();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn send(shared: &Shared, to: SocketAddr, packet: &[u8]) {
    if let Err(e) = shared.udp.send_to(packet, to) {
        tracing::debug!(%to, error = %e, "mesh: send failed");
    }
}

/// Sends equal-sized datagrams (the last may be shorter) to one peer in one system call.
fn send_batch(shared: &Shared, to: SocketAddr, datagrams: &[&[u8]]) {
    match datagrams {
        [] => {}
        [one] => send(shared, to, one),
        [first, ..] => {
            let (SocketAddr::V4(v4), Ok(seg)) = (to, u16::try_from(first.len())) else {
                datagrams.iter().for_each(|d| send(shared, to, d));
                return;
            };
            let iov: Vec<IoSlice<'_>> = datagrams.iter().map(|d| IoSlice::new(d)).collect();
            let addr = SockaddrIn::from(v4);
            let gso = [ControlMessage::UdpGsoSegments(&seg)];
            if let Err(e) = sendmsg(
                shared.udp.as_raw_fd(),
                &iov,
                &gso,
                MsgFlags::empty(),
                Some(&addr),
            ) {
                tracing::debug!(%to, error = %e, "mesh: GSO send failed; sending one by one");
                datagrams.iter().for_each(|d| send(shared, to, d));
            }
        }
    }
}

/// TUN → peers: each packet goes, encrypted, to the peer whose mesh address is its destination.
fn tun_loop(shared: &Shared) {
    let mut original = vec![0u8; VIRTIO_NET_HDR_LEN + 65_535];
    let mut bufs = vec![vec![0u8; SLOT]; IDEAL_BATCH_SIZE];
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut out = vec![0u8; IDEAL_BATCH_SIZE * SLOT];
    while !shared.stop.load(Relaxed) {
        let n = match shared.tun.recv_multiple_intr(
            &mut original,
            &mut bufs,
            &mut sizes,
            0,
            &shared.interrupt,
        ) {
            Ok(n) => n,
            Err(_) if shared.stop.load(Relaxed) => return,
            Err(e) => {
                tracing::warn!(error = %e, "mesh: TUN read failed");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // Encrypt every packet into its slot of `out`, then send runs of datagrams that go to
        // the same peer and have the same size as one GSO batch.
        let mut made: Vec<(SocketAddr, std::ops::Range<usize>)> = Vec::with_capacity(n);
        let peers = shared.peers.read().ok();
        let mut current: Option<(Arc<Peer>, SocketAddr)> = None;
        for (i, (buf, size)) in bufs.iter().zip(&sizes).take(n).enumerate() {
            let Some(packet) = buf.get(..*size) else {
                continue;
            };
            let dst = match Tunn::dst_address(packet) {
                Some(IpAddr::V4(dst)) => dst,
                _ => {
                    shared.dropped.fetch_add(1, Relaxed);
                    continue;
                }
            };
            let same = current.as_ref().is_some_and(|(p, _)| p.config.covers(dst));
            if !same {
                let Some(peer) = peers.as_ref().and_then(|p| {
                    p.by_address
                        .get(&dst)
                        .cloned()
                        .or_else(|| p.routed.iter().find(|r| r.config.covers(dst)).cloned())
                }) else {
                    shared.dropped.fetch_add(1, Relaxed);
                    continue;
                };
                let Ok(endpoint) = peer.endpoint.lock().map(|e| *e) else {
                    continue;
                };
                current = Some((peer, endpoint));
            }
            let Some((peer, endpoint)) = current.as_ref() else {
                continue;
            };
            // boringtun needs room for the packet plus its 32 bytes of overhead (or panics).
            if packet.len() + 32 > SLOT {
                shared.dropped.fetch_add(1, Relaxed);
                continue;
            }
            let Some(slot) = out.get_mut(i * SLOT..(i + 1) * SLOT) else {
                continue;
            };
            let Ok(mut tunn) = peer.tunn.lock() else {
                continue;
            };
            match tunn.encapsulate(packet, slot) {
                TunnResult::WriteToNetwork(p) => {
                    shared.tx_bytes.fetch_add(*size as u64, Relaxed);
                    made.push((*endpoint, i * SLOT..i * SLOT + p.len()));
                }
                TunnResult::Err(e) => tracing::debug!(error = ?e, "mesh: encapsulate failed"),
                _ => {}
            }
        }
        drop(peers);
        let mut k = 0;
        while let Some((to, first)) = made.get(k) {
            let size = first.len();
            let mut run: Vec<&[u8]> = Vec::new();
            while let Some((t, r)) = made.get(k) {
                if t != to || r.len() > size || run.len() >= GSO_MAX {
                    break;
                }
                if let Some(d) = out.get(r.clone()) {
                    run.push(d);
                }
                k += 1;
                if r.len() < size {
                    break; // a shorter datagram ends a GSO batch
                }
            }
            send_batch(shared, *to, &run);
        }
    }
}

/// Peers → TUN: authenticated, decrypted packets whose source is the sending peer's address,
/// coalesced into as few TUN writes as possible.
fn udp_loop(shared: &Shared) {
    let mut buf = vec![0u8; BUF];
    let mut bufs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| Vec::with_capacity(BUF))
        .collect();
    let mut gro = GROTable::default();
    let mut reply = vec![0u8; SLOT];
    let mut cmsg = nix::cmsg_space!(i32);
    while !shared.stop.load(Relaxed) {
        let (len, from, seg) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<SockaddrIn>(
                shared.udp.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            ) {
                Ok(m) => {
                    let seg = m.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|c| match c {
                            ControlMessageOwned::UdpGroSegments(s) => usize::try_from(s).ok(),
                            _ => None,
                        })
                    });
                    let Some(from) = m
                        .address
                        .map(|a| SocketAddr::from(std::net::SocketAddrV4::from(a)))
                    else {
                        continue;
                    };
                    (m.bytes, from, seg.unwrap_or(m.bytes))
                }
                Err(_) => continue, // timeout: check the stop flag
            }
        };
        let mut ready = 0usize;
        let data = buf.get(..len).unwrap_or_default();
        for datagram in data.chunks(seg.max(1)) {
            if !fits(datagram) {
                shared.dropped.fetch_add(1, Relaxed);
                continue;
            }
            let Some(peer) = find_peer(shared, datagram) else {
                shared.dropped.fetch_add(1, Relaxed);
                continue;
            };
            let is_response = matches!(
                Tunn::parse_incoming_packet(datagram),
                Ok(Packet::HandshakeResponse(_))
            );
            let Ok(mut tunn) = peer.tunn.lock() else {
                continue;
            };
            let Some(slot) = bufs.get_mut(ready) else {
                break;
            };
            slot.resize(VIRTIO_NET_HDR_LEN + SLOT, 0);
            let dst = slot.get_mut(VIRTIO_NET_HDR_LEN..).unwrap_or_default();
            let mut result = tunn.decapsulate(Some(from.ip()), datagram, dst);
            if is_response && !matches!(result, TunnResult::Err(_)) {
                shared.handshakes.fetch_add(1, Relaxed);
            }
            loop {
                match result {
                    TunnResult::WriteToNetwork(p) => {
                        if matches!(
                            Tunn::parse_incoming_packet(p),
                            Ok(Packet::HandshakeResponse(_))
                        ) {
                            shared.handshakes.fetch_add(1, Relaxed);
                        }
                        send(shared, from, p);
                        // Packets queued while the handshake ran go out now.
                        result = tunn.decapsulate(None, &[], &mut reply);
                        continue;
                    }
                    TunnResult::WriteToTunnelV4(p, src) => {
                        let n = p.len();
                        if peer.config.covers(src) {
                            if let Ok(mut e) = peer.endpoint.lock() {
                                *e = from; // roaming: the last authenticated address
                            }
                            shared.rx_bytes.fetch_add(n as u64, Relaxed);
                            slot.truncate(VIRTIO_NET_HDR_LEN + n);
                            ready += 1;
                        } else {
                            shared.dropped.fetch_add(1, Relaxed);
                        }
                    }
                    TunnResult::WriteToTunnelV6(..) => {
                        shared.dropped.fetch_add(1, Relaxed);
                    }
                    TunnResult::Done => {}
                    TunnResult::Err(e) => {
                        tracing::debug!(error = ?e, %from, "mesh: packet refused");
                    }
                }
                break;
            }
        }
        if ready > 0
            && let Some(batch) = bufs.get_mut(..ready)
            && let Err(e) = shared
                .tun
                .send_multiple(&mut gro, batch, VIRTIO_NET_HDR_LEN)
        {
            tracing::debug!(error = %e, "mesh: TUN write failed");
        }
    }
}

/// Whether a datagram from the network may go to boringtun at all: it panics, before
/// authenticating anything, on a data packet larger than the output buffer, so anything
/// longer than our largest legitimate datagram is dropped, whoever sent it.
fn fits(datagram: &[u8]) -> bool {
    datagram.len() <= SLOT
}

/// Who a datagram claims to be from: the static key inside a handshake initiation (readable
/// only with our private key), or the peer index in a receiver index.
enum Sender {
    Key([u8; 32]),
    Index(u32),
}

fn sender(
    keys: impl FnOnce() -> Option<(StaticSecret, PublicKey)>,
    datagram: &[u8],
) -> Option<Sender> {
    Some(match Tunn::parse_incoming_packet(datagram).ok()? {
        Packet::HandshakeInit(h) => {
            let (secret, public) = keys()?;
            Sender::Key(
                parse_handshake_anon(&secret, &public, &h)
                    .ok()?
                    .peer_static_public,
            )
        }
        Packet::HandshakeResponse(h) => Sender::Index(h.receiver_idx >> 8),
        Packet::PacketCookieReply(c) => Sender::Index(c.receiver_idx >> 8),
        Packet::PacketData(d) => Sender::Index(d.receiver_idx >> 8),
    })
}

/// The peer a datagram is from.
fn find_peer(shared: &Shared, datagram: &[u8]) -> Option<Arc<Peer>> {
    let peers = shared.peers.read().ok()?;
    match sender(|| shared.keys.read().ok().map(|k| k.clone()), datagram)? {
        Sender::Key(k) => peers.by_key.get(&k).cloned(),
        Sender::Index(i) => peers.by_index.get(&i).cloned(),
    }
}

/// The receive path for one datagram from anyone, without sockets or TUN (for fuzzing): the
/// size check, sender identification and boringtun's decapsulation against a fixed peer.
#[doc(hidden)]
pub fn fuzz_datagram(datagram: &[u8]) {
    static STATE: std::sync::OnceLock<(StaticSecret, PublicKey, Mutex<Tunn>)> =
        std::sync::OnceLock::new();
    let (secret, public, tunn) = STATE.get_or_init(|| {
        let secret = StaticSecret::from([7u8; 32]);
        let public = PublicKey::from(&secret);
        let peer = PublicKey::from(&StaticSecret::from([9u8; 32]));
        let tunn = Tunn::new(secret.clone(), peer, None, None, 1, None);
        (secret, public, Mutex::new(tunn))
    });
    if !fits(datagram) {
        return;
    }
    let _ = sender(|| Some((secret.clone(), *public)), datagram);
    let mut dst = vec![0u8; SLOT];
    if let Ok(mut t) = tunn.lock() {
        let _ = t.decapsulate(Some(IpAddr::V4(Ipv4Addr::LOCALHOST)), datagram, &mut dst);
    }
}

/// Handshake retries, rekeying and keepalives.
fn timer_loop(shared: &Shared) {
    let mut out = vec![0u8; BUF];
    while !shared.stop.load(Relaxed) {
        std::thread::sleep(TIMER_TICK);
        let peers: Vec<Arc<Peer>> = match shared.peers.read() {
            Ok(p) => p.by_key.values().cloned().collect(),
            Err(_) => continue,
        };
        for peer in peers {
            let endpoint = peer.endpoint.lock().map(|e| *e).ok();
            let Ok(mut tunn) = peer.tunn.lock() else {
                continue;
            };
            if let TunnResult::WriteToNetwork(p) = tunn.update_timers(&mut out)
                && let Some(to) = endpoint
            {
                send(shared, to, p);
            }
        }
    }
}
