//! kubelet's plugin registration (`pluginregistration.Registration`: `GetInfo`, then
//! `NotifyRegistrationStatus`), served over HTTP/2 by a responder of its own.
//!
//! Why not tonic: kubelet's plugin watcher dials the registration socket by its path, and
//! grpc-go then sends that path (`/var/lib/kubelet/plugins_registry/...sock`) as the
//! `:authority` of its requests. The h2 crate under tonic rejects such an authority
//! (RST_STREAM, PROTOCOL_ERROR) before any service sees the request (hyperium/h2#487,
//! kubernetes/kubernetes#108254; kubelet sets `localhost` for its CSI calls since 1.26, not
//! for registration). The CSI endpoint itself is served by tonic.
//!
//! The responder speaks the least of HTTP/2 that a gRPC client needs: the connection preface,
//! SETTINGS and PING acknowledgements, and per stream a response of three frames (headers,
//! the message, trailers) encoded with HPACK's static table and literals only. It never
//! decodes request headers (so the client's HPACK state is not needed): the two methods are
//! told apart by their request messages. `GetInfo`'s `InfoRequest` is empty; a registration
//! status is not, except `plugin_registered: false` with no error, which the answer to
//! `GetInfo` then also fits (its fields are unknown to `RegistrationStatusResponse` and
//! skipped). Frames are bounded, streams too; a connection that breaks the rules is closed.

use std::collections::HashMap;
use std::path::Path;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::proto;

/// The client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The largest frame payload accepted (HTTP/2's default SETTINGS_MAX_FRAME_SIZE).
pub const MAX_FRAME: usize = 16_384;
/// The largest request body kept per stream.
pub const MAX_BODY: usize = 64 * 1024;
/// The most streams open at once on a connection.
pub const MAX_STREAMS: usize = 16;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;

/// One frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length.
    pub len: usize,
    /// Frame type.
    pub kind: u8,
    /// Flags.
    pub flags: u8,
    /// Stream identifier (the reserved bit cleared).
    pub stream: u32,
}

/// Parses a frame header, refusing payloads over [`MAX_FRAME`].
pub fn frame_header(b: &[u8; 9]) -> Result<FrameHeader, String> {
    let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    if len > MAX_FRAME {
        return Err(format!(
            "a frame of {len} bytes, at most {MAX_FRAME} accepted"
        ));
    }
    Ok(FrameHeader {
        len,
        kind: b[3],
        flags: b[4],
        stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
    })
}

/// A DATA frame's data, without its padding.
pub fn data_payload(flags: u8, payload: &[u8]) -> Result<&[u8], String> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or("a padded DATA frame without its pad length")?;
    rest.get(..rest.len().saturating_sub(usize::from(pad)))
        .filter(|_| usize::from(pad) <= rest.len())
        .ok_or_else(|| format!("padding of {pad} bytes in a frame of {}", payload.len()))
}

/// The gRPC message in a request body (one length-prefixed, uncompressed message).
pub fn grpc_message(body: &[u8]) -> Result<&[u8], String> {
    let short = || {
        format!(
            "a gRPC message of {} bytes, at least 5 expected",
            body.len()
        )
    };
    let (head, rest) = body.split_at_checked(5).ok_or_else(short)?;
    let [flag, l0, l1, l2, l3]: [u8; 5] = head.try_into().map_err(|_| short())?;
    if flag != 0 {
        return Err("a compressed gRPC message (none was offered)".into());
    }
    let len = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    rest.get(..len)
        .filter(|m| m.len() == rest.len())
        .ok_or_else(|| {
            format!(
                "a gRPC message announcing {len} bytes, {} present",
                rest.len()
            )
        })
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = Vec::with_capacity(9 + len);
    f.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A unary gRPC response on `stream`: `:status 200` and `content-type: application/grpc`
/// (HPACK static entry 8, then a literal with static name 31), the message, and the trailers
/// `grpc-status: 0` (a literal with a literal name), never indexed.
pub fn response(stream: u32, message: &[u8]) -> Vec<u8> {
    let mut headers = vec![0x88, 0x0f, 0x10, 16];
    headers.extend_from_slice(b"application/grpc");
    let mut data = Vec::with_capacity(5 + message.len());
    data.push(0);
    data.extend_from_slice(&(message.len() as u32).to_be_bytes());
    data.extend_from_slice(message);
    let mut trailers = vec![0x00, 11];
    trailers.extend_from_slice(b"grpc-status");
    trailers.extend_from_slice(&[1, b'0']);
    let mut out = frame(HEADERS, END_HEADERS, stream, &headers);
    out.extend(frame(DATA, 0, stream, &data));
    out.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &trailers));
    out
}

/// The answer to one request message.
fn answer(info: &proto::PluginInfo, message: &[u8]) -> Vec<u8> {
    if message.is_empty() {
        return info.encode_to_vec();
    }
    match proto::RegistrationStatus::decode(message) {
        Ok(s) if s.plugin_registered => {
            tracing::info!(event = "csi_registered", driver = %info.name);
        }
        Ok(s) => {
            tracing::error!(event = "csi_registration_failed", driver = %info.name, error = %s.error)
        }
        Err(e) => tracing::warn!(event = "csi_registration_message_malformed", error = %e),
    }
    proto::RegistrationStatusResponse {}.encode_to_vec()
}

/// Serves one connection.
pub async fn serve_connection<S>(mut s: S, info: &proto::PluginInfo) -> Result<(), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let io = |e: std::io::Error| e.to_string();
    let mut preface = [0u8; 24];
    s.read_exact(&mut preface).await.map_err(io)?;
    if &preface != PREFACE {
        return Err("not an HTTP/2 connection preface".into());
    }
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.map_err(io)?;
    let mut bodies: HashMap<u32, Vec<u8>> = HashMap::new();
    let mut payload = vec![0u8; MAX_FRAME];
    loop {
        let mut h = [0u8; 9];
        match s.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        let f = frame_header(&h)?;
        let p = payload.get_mut(..f.len).ok_or("frame length")?;
        s.read_exact(p).await.map_err(io)?;
        match f.kind {
            SETTINGS if f.flags & ACK == 0 => {
                s.write_all(&frame(SETTINGS, ACK, 0, &[]))
                    .await
                    .map_err(io)?;
            }
            PING if f.flags & ACK == 0 => {
                s.write_all(&frame(PING, ACK, 0, p)).await.map_err(io)?;
            }
            GOAWAY => return Ok(()),
            HEADERS if f.stream != 0 => {
                if !bodies.contains_key(&f.stream) && bodies.len() >= MAX_STREAMS {
                    return Err(format!("more than {MAX_STREAMS} streams open"));
                }
                bodies.entry(f.stream).or_default();
                if f.flags & END_STREAM != 0
                    && let Some(body) = bodies.remove(&f.stream)
                {
                    let m = grpc_message(&body).unwrap_or_default();
                    s.write_all(&response(f.stream, &answer(info, m)))
                        .await
                        .map_err(io)?;
                }
            }
            DATA if f.stream != 0 => {
                let data = data_payload(f.flags, p)?;
                let body = bodies
                    .get_mut(&f.stream)
                    .ok_or_else(|| format!("DATA on stream {} that was not opened", f.stream))?;
                if body.len() + data.len() > MAX_BODY {
                    return Err(format!("a request body over {MAX_BODY} bytes"));
                }
                body.extend_from_slice(data);
                if f.flags & END_STREAM != 0
                    && let Some(body) = bodies.remove(&f.stream)
                {
                    let m = grpc_message(&body)?;
                    s.write_all(&response(f.stream, &answer(info, m)))
                        .await
                        .map_err(io)?;
                }
            }
            // WINDOW_UPDATE, PRIORITY, RST_STREAM, CONTINUATION, acknowledgements: nothing to
            // do (requests and answers are far below the initial windows).
            _ => {}
        }
    }
}

/// Serves the registration socket until `stop` resolves.
pub async fn serve(
    path: &Path,
    endpoint: &Path,
    driver: &str,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let info = std::sync::Arc::new(proto::PluginInfo {
        r#type: "CSIPlugin".into(),
        name: driver.into(),
        endpoint: endpoint.display().to_string(),
        supported_versions: vec!["1.0.0".into()],
    });
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return Ok(()),
            accepted = listener.accept() => {
                let Ok((conn, _)) = accepted else { continue };
                let info = info.clone();
                tokio::spawn(async move {
                    let served = tokio::time::timeout(
                        std::time::Duration::from_secs(60),
                        serve_connection(conn, &info),
                    )
                    .await;
                    if let Ok(Err(e)) = served {
                        tracing::warn!(event = "csi_registration_connection_closed", reason = %e);
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn frames_and_messages_are_bounded() {
        let h = frame_header(&[0, 0, 5, 0, 1, 0x80, 0, 0, 3]).unwrap();
        assert_eq!((h.len, h.kind, h.flags, h.stream), (5, 0, 1, 3));
        assert!(
            frame_header(&[1, 0, 0, 0, 0, 0, 0, 0, 1])
                .unwrap_err()
                .contains("65536")
        );
        assert_eq!(data_payload(PADDED, &[2, 7, 8, 0, 0]).unwrap(), &[7, 8]);
        assert!(data_payload(PADDED, &[9, 1]).is_err());
        assert!(data_payload(PADDED, &[]).is_err());
        assert_eq!(grpc_message(&[0, 0, 0, 0, 2, 8, 1]).unwrap(), &[8, 1]);
        assert!(
            grpc_message(&[0, 0, 0, 0, 9, 8, 1])
                .unwrap_err()
                .contains("announcing 9")
        );
        assert!(
            grpc_message(&[1, 0, 0, 0, 0])
                .unwrap_err()
                .contains("compressed")
        );
        assert!(grpc_message(&[0, 0]).is_err());
    }

    /// A real gRPC client (tonic's, over h2) gets both answers.
    #[tokio::test]
    async fn a_grpc_client_registers() {
        use hyper_util::rt::TokioIo;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("reg.sock");
        let endpoint = dir.path().join("csi.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let (s, e) = (sock.clone(), endpoint.clone());
        let server = tokio::spawn(async move {
            serve(&s, &e, crate::DRIVER, async {
                let _ = rx.await;
            })
            .await
        });
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let p = sock.clone();
        let channel = tonic::transport::Endpoint::try_from("http://registration")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .unwrap();
        let mut c = crate::registration_client::RegistrationClient::new(channel);
        for _ in 0..2 {
            let info = c
                .get_info(proto::InfoRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(info.r#type, "CSIPlugin");
            assert_eq!(info.name, crate::DRIVER);
            assert_eq!(info.endpoint, endpoint.display().to_string());
            assert_eq!(info.supported_versions, vec!["1.0.0".to_string()]);
        }
        c.notify_registration_status(proto::RegistrationStatus {
            plugin_registered: true,
            error: String::new(),
        })
        .await
        .unwrap();
        c.notify_registration_status(proto::RegistrationStatus {
            plugin_registered: false,
            error: "refused".into(),
        })
        .await
        .unwrap();
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
