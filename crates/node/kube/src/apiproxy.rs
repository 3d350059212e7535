//! A worker's way to the API servers: a TCP forwarder on its loopback to whichever control
//! plane answers, so kubelet and kube-proxy keep working when one control plane is down. TLS
//! goes through untouched, end to end between the component and an API server whose serving
//! certificate names the loopback address.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// At most this many forwarded connections at once.
pub const MAX_CONNECTIONS: usize = 256;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Forwards every connection on `listener` to the first of `upstreams` that accepts one,
/// starting with the one that last did. Runs until the task is dropped.
pub async fn forward(listener: TcpListener, upstreams: Vec<String>) {
    let upstreams = Arc::new(upstreams);
    let preferred = Arc::new(AtomicUsize::new(0));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((mut client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            continue; // over the limit: dropped
        };
        let (upstreams, preferred) = (upstreams.clone(), preferred.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let n = upstreams.len();
            let first = preferred.load(Ordering::Relaxed);
            for i in 0..n {
                let at = (first + i) % n;
                let Some(addr) = upstreams.get(at) else {
                    continue;
                };
                if let Ok(Ok(mut up)) =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await
                {
                    preferred.store(at, Ordering::Relaxed);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                    return;
                }
            }
            tracing::debug!("api forwarder: no API server answers");
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn fails_over_to_a_live_upstream() {
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap().to_string();
        // A port nobody listens on.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        tokio::spawn(async move {
            while let Ok((mut s, _)) = live.accept().await {
                let mut b = [0u8; 4];
                if s.read_exact(&mut b).await.is_ok() {
                    let _ = s.write_all(&b).await;
                }
            }
        });
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let front_addr = front.local_addr().unwrap();
        tokio::spawn(forward(front, vec![dead_addr, live_addr]));
        for _ in 0..3 {
            let mut c = TcpStream::connect(front_addr).await.unwrap();
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
        }
    }
}
