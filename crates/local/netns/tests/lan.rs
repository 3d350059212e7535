//! Real namespaces, veths and a bridge (needs root, as `veil mini` does for them).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use veil_netns::{Lan, link_exists, netns_exists, run_in};

#[test]
fn nodes_reach_each_other_on_the_lan_and_nothing_is_left_behind() {
    veil_netns::supported().expect("these tests need root and iproute2");
    let lan = Lan::create(&veil_netns::new_id()).unwrap();
    let a = lan.attach("a", 0).unwrap();
    let b = lan.attach("b", 1).unwrap();
    assert_ne!(a.addr, b.addr);
    assert!(netns_exists(&a.netns) && netns_exists(&b.netns));

    // A server on a's LAN address, and one on a's loopback.
    let (lan_listener, lo_listener) = run_in(&a.netns, || {
        (
            TcpListener::bind((a.addr, 7000)).unwrap(),
            TcpListener::bind(("127.0.0.1", 7001)).unwrap(),
        )
    })
    .unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = lan_listener.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(&buf).unwrap();
        }
    });
    let echo = |addr: SocketAddr| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.write_all(b"hello")?;
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf)?;
        Ok::<_, std::io::Error>(buf)
    };
    let to_a = SocketAddr::from((a.addr, 7000));
    // From node b's namespace, over the bridge.
    assert_eq!(&run_in(&b.netns, || echo(to_a)).unwrap().unwrap(), b"hello");
    // From the host (the owner's side).
    assert_eq!(&echo(to_a).unwrap(), b"hello");
    server.join().unwrap();
    // a's loopback is its own: neither the host nor b reaches it.
    let lo = SocketAddr::from(([127, 0, 0, 1], 7001));
    assert!(TcpStream::connect_timeout(&lo, Duration::from_secs(1)).is_err());
    assert!(
        run_in(&b.netns, || TcpStream::connect_timeout(
            &lo,
            Duration::from_secs(1)
        ))
        .unwrap()
        .is_err()
    );
    drop(lo_listener);

    // A process started inside a namespace runs there and is stopped by destroy.
    let child = run_in(&b.netns, || {
        std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap()
    })
    .unwrap();
    assert!(veil_netns::pids(&b.netns).unwrap().contains(&child.id()));
    let pid = child.id();

    lan.destroy(&[a.netns.clone(), b.netns.clone()]).unwrap();
    assert!(!netns_exists(&a.netns) && !netns_exists(&b.netns));
    assert!(!link_exists(&lan.bridge()));
    assert!(!link_exists(&a.host_link) && !link_exists(&b.host_link));
    let mut child = child;
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep {pid} was not stopped");
}

#[test]
fn bad_names_are_refused_and_nothing_is_created() {
    assert!(Lan::create("xyz").is_err());
    let lan = Lan {
        id: "abcdef".into(),
        subnet: 250,
    };
    let e = lan.attach("bad name", 0).unwrap_err().to_string();
    assert!(e.contains("bad name"), "{e}");
    let e = lan.attach("ok", 200).unwrap_err().to_string();
    assert!(e.contains("200"), "{e}");
    assert!(!netns_exists("veil-abcdef-bad name"));
}
