//! The attestation exchange that follows the TLS handshake.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{Identity, client_config, server_config, spki_sha256};

/// Exporter label of the channel binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-veil-attested-tls";
const DOMAIN: &[u8] = b"veil-atls-v1\0";
const MAX_FRAME: u32 = 1 << 20;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const FLAG_ATTESTS: u8 = 1;
const FLAG_REQUIRES: u8 = 2;

/// An attested connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AtlsError {
    /// TLS setup or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection broke.
    #[error("I/O: {0}")]
    Io(String),
    /// The peer broke the attestation protocol.
    #[error("attestation protocol: {0}")]
    Protocol(String),
    /// Evidence was required and the peer sent none.
    #[error("the peer sent no attestation evidence, and evidence is required")]
    NoEvidence,
    /// Our own attester could not produce evidence.
    #[error("producing evidence: {0}")]
    Attester(String),
    /// The peer's evidence was appraised and refused.
    #[error("peer evidence refused: {0}")]
    Refused(String),
    /// The peer appraised our evidence and refused it, with its reason.
    #[error("the peer refused our evidence: {0}")]
    RefusedByPeer(String),
    /// The peer did not complete the exchange in time.
    #[error("the peer did not complete attestation within {0:?}")]
    Timeout(Duration),
}

impl From<std::io::Error> for AtlsError {
    fn from(e: std::io::Error) -> Self {
        AtlsError::Io(e.to_string())
    }
}

/// Produces evidence whose report data is the given 64 bytes (a TEE, a TPM...).
pub trait Attester: Send + Sync {
    /// Evidence binding `report_data`.
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, String>;
}

/// Appraises a peer's evidence, which must bind `report_data`.
pub trait Appraiser: Send + Sync {
    /// What accepted evidence establishes.
    type Claims: Send;
    /// Verifies `evidence`; the error names the reason.
    fn appraise(&self, evidence: &[u8], report_data: &[u8; 64]) -> Result<Self::Claims, String>;
}

/// The inputs of the channel binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingInput {
    /// The session's exported keying material.
    pub exporter: [u8; 32],
    /// The verifier's nonce.
    pub verifier_nonce: [u8; 32],
    /// SHA-256 of the attester's TLS SubjectPublicKeyInfo.
    pub attester_spki_sha256: [u8; 32],
}

/// The report data evidence must carry for `input`.
pub fn binding(input: &BindingInput) -> [u8; 64] {
    Sha512::new()
        .chain_update(DOMAIN)
        .chain_update(input.exporter)
        .chain_update(input.verifier_nonce)
        .chain_update(input.attester_spki_sha256)
        .finalize()
        .into()
}

/// The other end of an attested connection.
#[derive(Debug)]
pub struct Peer<C> {
    /// Claims of its appraised evidence (`None` when it was not required).
    pub claims: Option<C>,
    /// SHA-256 of its TLS key.
    pub spki_sha256: [u8; 32],
}

/// Writes one length-prefixed frame (what the exchange uses; services on top may reuse it).
pub async fn write_frame<S: AsyncWrite + Unpin>(s: &mut S, body: &[u8]) -> Result<(), AtlsError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|l| *l <= MAX_FRAME)
        .ok_or_else(|| {
            AtlsError::Protocol(format!("frame of {} bytes is too large", body.len()))
        })?;
    // One write per frame: split writes of small records meet Nagle's algorithm and delayed
    // ACKs (40 ms a round) on TCP without TCP_NODELAY.
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(body);
    s.write_all(&frame).await?;
    s.flush().await?;
    Ok(())
}

/// Reads one length-prefixed frame (at most 1 MiB).
pub async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Result<Vec<u8>, AtlsError> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME {
        return Err(AtlsError::Protocol(format!(
            "frame length {len} exceeds the limit of {MAX_FRAME}"
        )));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await?;
    Ok(body)
}

struct Session {
    exporter: [u8; 32],
    own_spki: [u8; 32],
    peer_spki: [u8; 32],
}

async fn exchange<S, A>(
    stream: &mut S,
    session: &Session,
    attester: Option<&dyn Attester>,
    appraiser: Option<&A>,
    required: bool,
) -> Result<Option<A::Claims>, AtlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    let mut nonce = [0u8; 32];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| AtlsError::Protocol("no randomness for the nonce".into()))?;
    let mut flags = 0u8;
    if attester.is_some() {
        flags |= FLAG_ATTESTS;
    }
    if appraiser.is_some() {
        flags |= FLAG_REQUIRES;
    }
    let mut hello = nonce.to_vec();
    hello.push(flags);
    write_frame(stream, &hello).await?;
    let peer_hello = read_frame(stream).await?;
    let (peer_nonce, peer_flags) = match peer_hello.as_slice() {
        [n @ .., f] if n.len() == 32 => {
            let mut a = [0u8; 32];
            a.copy_from_slice(n);
            (a, *f)
        }
        other => {
            return Err(AtlsError::Protocol(format!(
                "hello: expected 33 bytes, found {}",
                other.len()
            )));
        }
    };
    let peer_attests = peer_flags & FLAG_ATTESTS != 0;
    if appraiser.is_some() && !peer_attests && required {
        return Err(AtlsError::NoEvidence);
    }

    // Evidence goes to a peer that asks for it; an empty frame otherwise.
    let evidence = match attester {
        Some(a) if peer_flags & FLAG_REQUIRES != 0 => {
            let rd = binding(&BindingInput {
                exporter: session.exporter,
                verifier_nonce: peer_nonce,
                attester_spki_sha256: session.own_spki,
            });
            blocking(|| a.attest(&rd)).map_err(AtlsError::Attester)?
        }
        _ => Vec::new(),
    };
    write_frame(stream, &evidence).await?;
    let peer_evidence = read_frame(stream).await?;
    let verdict = match appraiser {
        None => Ok(None),
        Some(_) if !peer_attests && !required => Ok(None),
        Some(_) if peer_evidence.is_empty() => Err(AtlsError::NoEvidence),
        Some(a) => {
            let expected = binding(&BindingInput {
                exporter: session.exporter,
                verifier_nonce: nonce,
                attester_spki_sha256: session.peer_spki,
            });
            a.appraise(&peer_evidence, &expected)
                .map(Some)
                .map_err(AtlsError::Refused)
        }
    };
    // Each side tells the other its verdict, so a refused peer learns why (and an accepted one
    // knows the connection is usable).
    let mut frame = vec![u8::from(verdict.is_ok())];
    if let Err(e) = &verdict {
        frame.extend_from_slice(e.to_string().as_bytes());
    }
    write_frame(stream, &frame).await?;
    let claims = verdict?;
    let peer_verdict = read_frame(stream).await?;
    match peer_verdict.split_first() {
        Some((1, _)) => Ok(claims),
        Some((0, reason)) => Err(AtlsError::RefusedByPeer(
            String::from_utf8_lossy(reason).into_owned(),
        )),
        _ => Err(AtlsError::Protocol("verdict: malformed frame".into())),
    }
}

/// Runs a blocking attester call (a TPM command takes milliseconds) without stalling the other
/// tasks of a multi-threaded runtime.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn session_of(
    conn: &rustls::CommonState,
    export: impl FnOnce(&mut [u8; 32]) -> Result<(), rustls::Error>,
    own_spki: [u8; 32],
) -> Result<Session, AtlsError> {
    let mut exporter = [0u8; 32];
    export(&mut exporter).map_err(|e| AtlsError::Tls(format!("exporter: {e}")))?;
    let peer = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or_else(|| AtlsError::Tls("the peer presented no certificate".into()))?;
    Ok(Session {
        exporter,
        own_spki,
        peer_spki: spki_sha256(peer)?,
    })
}

/// Runs the exchange on an established TLS stream, within the exchange timeout.
async fn attest_over<S, A>(
    tls: &mut S,
    session: &Session,
    attester: Option<&dyn Attester>,
    appraiser: Option<&A>,
    required: bool,
) -> Result<Peer<A::Claims>, AtlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    let claims = tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        exchange(tls, session, attester, appraiser, required),
    )
    .await
    .map_err(|_| AtlsError::Timeout(EXCHANGE_TIMEOUT))??;
    Ok(Peer {
        claims,
        spki_sha256: session.peer_spki,
    })
}

/// Connects as a client over `io`: TLS 1.3 with `id`, then the attestation exchange. The
/// client attests if `attester` is given and appraises the server if `appraiser` is given.
pub async fn client<IO, A>(
    io: IO,
    id: &Identity,
    attester: Option<&dyn Attester>,
    appraiser: Option<&A>,
) -> Result<(tokio_rustls::client::TlsStream<IO>, Peer<A::Claims>), AtlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    let connector = TlsConnector::from(Arc::new(client_config(id)?));
    let name = rustls::pki_types::ServerName::try_from("veil-atls")
        .map_err(|e| AtlsError::Tls(e.to_string()))?;
    let mut tls = connector
        .connect(name, io)
        .await
        .map_err(|e| AtlsError::Tls(e.to_string()))?;
    let session = {
        let (_, conn) = tls.get_ref();
        session_of(
            conn,
            |out| {
                conn.export_keying_material(out, EXPORTER_LABEL, None)
                    .map(|_| ())
            },
            id.spki_sha256(),
        )?
    };
    let peer = attest_over(&mut tls, &session, attester, appraiser, true).await?;
    Ok((tls, peer))
}

/// Accepts a client over `io`: TLS 1.3 with `id` (client certificate required), then the
/// attestation exchange. With an `appraiser`, the client must attest.
pub async fn server<IO, A>(
    io: IO,
    id: &Identity,
    attester: Option<&dyn Attester>,
    appraiser: Option<&A>,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Peer<A::Claims>), AtlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    server_impl(io, id, attester, appraiser, true).await
}

/// Like [`server`], but a client that does not attest (an owner's workstation) is accepted
/// with no claims; one that attests is appraised, and refused if the appraisal fails.
pub async fn server_optional<IO, A>(
    io: IO,
    id: &Identity,
    attester: Option<&dyn Attester>,
    appraiser: &A,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Peer<A::Claims>), AtlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    server_impl(io, id, attester, Some(appraiser), false).await
}

async fn server_impl<IO, A>(
    io: IO,
    id: &Identity,
    attester: Option<&dyn Attester>,
    appraiser: Option<&A>,
    required: bool,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Peer<A::Claims>), AtlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    let acceptor = TlsAcceptor::from(Arc::new(server_config(id)?));
    let mut tls = acceptor
        .accept(io)
        .await
        .map_err(|e| AtlsError::Tls(e.to_string()))?;
    let session = {
        let (_, conn) = tls.get_ref();
        session_of(
            conn,
            |out| {
                conn.export_keying_material(out, EXPORTER_LABEL, None)
                    .map(|_| ())
            },
            id.spki_sha256(),
        )?
    };
    let peer = attest_over(&mut tls, &session, attester, appraiser, required).await?;
    Ok((tls, peer))
}
