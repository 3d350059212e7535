//! Attested TLS: nonces in the clear, evidence in the certificates, verdicts inside TLS.

use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use sha2::{Digest, Sha512};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{Identity, client_config, evidence_of, server_config, spki_sha256};

const DOMAIN: &[u8] = veil_wire::ids::ATLS_BINDING;
const MAX_FRAME: u32 = 1 << 20;
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// What a frame's buffer starts with before its bytes arrive.
const FRAME_CHUNK: usize = 16 * 1024;
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
    /// Our appraiser could not appraise the peer's evidence (a fault, not a verdict).
    #[error("cannot appraise the peer's evidence: {0}")]
    Appraiser(String),
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
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, AttestError>;

    /// 32 bytes the attester vouches for in every piece of evidence it makes (e.g. the hash of
    /// a key it holds): sent in its hello and bound into the report data, so a verifier that
    /// accepts the evidence knows the attester meant it.
    fn context(&self) -> [u8; 32] {
        [0; 32]
    }
}

/// Appraises a peer's evidence, which must bind `report_data`.
pub trait Appraiser: Send + Sync {
    /// What accepted evidence establishes.
    type Claims: Send;
    /// Verifies `evidence`; a refusal names the reason.
    fn appraise(
        &self,
        evidence: &[u8],
        report_data: &[u8; 64],
    ) -> Result<Self::Claims, AppraiseError>;
}

/// The attester could not produce evidence (a fault on its side: its TPM does not answer, …).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AttestError(pub String);

impl From<String> for AttestError {
    fn from(s: String) -> Self {
        Self(s)
    }
}

/// Why an appraiser accepted no evidence: a verdict on the evidence, or a fault of its own.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppraiseError {
    /// The evidence was appraised and refused; the reason names what was wrong.
    #[error("{0}")]
    Refused(String),
    /// The appraiser could not appraise (a dependency it needs is unavailable): nothing is
    /// said about the evidence.
    #[error("cannot appraise: {0}")]
    Fault(String),
}

impl From<String> for AppraiseError {
    fn from(s: String) -> Self {
        Self::Refused(s)
    }
}

impl From<&str> for AppraiseError {
    fn from(s: &str) -> Self {
        Self::Refused(s.to_string())
    }
}

/// The inputs of the binding of evidence to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindingInput {
    /// The verifier's fresh nonce (its hello).
    pub verifier_nonce: [u8; 32],
    /// The attester's own nonce (its hello): the evidence belongs to this pair of hellos.
    pub attester_nonce: [u8; 32],
    /// What the attester vouches for (its hello's context).
    pub attester_context: [u8; 32],
    /// SHA-256 of the attester's TLS SubjectPublicKeyInfo: the key that must then sign this
    /// TLS 1.3 handshake (CertificateVerify).
    pub attester_spki_sha256: [u8; 32],
    /// The flags of the verifier's hello (what it asked for).
    pub verifier_flags: u8,
    /// The flags of the attester's hello (what it said it does).
    pub attester_flags: u8,
}

/// The report data evidence must carry for `input`.
pub fn binding(input: &BindingInput) -> [u8; 64] {
    Sha512::new()
        .chain_update(DOMAIN)
        .chain_update(input.verifier_nonce)
        .chain_update(input.attester_nonce)
        .chain_update(input.attester_context)
        .chain_update(input.attester_spki_sha256)
        .chain_update([input.verifier_flags, input.attester_flags])
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
    /// The context its evidence vouches for (meaningful only when `claims` is `Some`).
    pub context: [u8; 32],
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
    // Memory follows the bytes that arrive, not the length the peer announced: a peer that
    // sends a large length and then nothing holds a few kilobytes, not a megabyte.
    let mut body = Vec::with_capacity((len as usize).min(FRAME_CHUNK));
    (&mut *s)
        .take(u64::from(len))
        .read_to_end(&mut body)
        .await?;
    if body.len() != len as usize {
        return Err(AtlsError::Io(format!(
            "the connection closed {} bytes into a frame of {len}",
            body.len()
        )));
    }
    Ok(body)
}

/// One side's hello: a fresh nonce and what it does.
#[derive(Clone, Copy)]
struct Hello {
    nonce: [u8; 32],
    flags: u8,
    context: [u8; 32],
}

const HELLO_LEN: usize = 65;

/// Exchanges hellos in the clear, before TLS: each side learns the nonce its evidence must
/// bind before it makes its certificate. (A man in the middle who alters a nonce only makes
/// the evidence fail to bind.)
async fn hellos<IO: AsyncRead + AsyncWrite + Unpin>(
    io: &mut IO,
    attester: Option<&dyn Attester>,
    requires: bool,
) -> Result<(Hello, Hello), AtlsError> {
    let attests = attester.is_some();
    let context = attester.map(|a| a.context()).unwrap_or([0; 32]);
    let mut nonce = [0u8; 32];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| AtlsError::Protocol("no randomness for the nonce".into()))?;
    let mut flags = 0u8;
    if attests {
        flags |= FLAG_ATTESTS;
    }
    if requires {
        flags |= FLAG_REQUIRES;
    }
    // nonce (32) ‖ flags (1) ‖ context (32)
    let mut out = Vec::with_capacity(HELLO_LEN);
    out.extend_from_slice(&nonce);
    out.push(flags);
    out.extend_from_slice(&context);
    io.write_all(&out).await?;
    io.flush().await?;
    let mut peer = [0u8; HELLO_LEN];
    io.read_exact(&mut peer).await?;
    let (n, rest) = peer.split_at(32);
    let (f, c) = rest.split_at(1);
    let peer_flags = f.first().copied().unwrap_or(0);
    if peer_flags & !(FLAG_ATTESTS | FLAG_REQUIRES) != 0 {
        return Err(AtlsError::Protocol(format!(
            "hello: unknown flags {peer_flags:#04x} (expected a combination of 0x01 and 0x02)"
        )));
    }
    let (mut pn, mut pc) = ([0u8; 32], [0u8; 32]);
    pn.copy_from_slice(n);
    pc.copy_from_slice(c);
    Ok((
        Hello {
            nonce,
            flags,
            context,
        },
        Hello {
            nonce: pn,
            flags: peer_flags,
            context: pc,
        },
    ))
}

/// Our certificate for this connection: with evidence bound to the peer's nonce, our nonce
/// and our TLS key when the peer asked for evidence and we attest.
fn own_certificate(
    id: &Identity,
    attester: Option<&dyn Attester>,
    own: Hello,
    peer: Hello,
) -> Result<rustls::pki_types::CertificateDer<'static>, AtlsError> {
    let evidence = match attester {
        Some(a) if peer.flags & FLAG_REQUIRES != 0 => {
            let rd = binding(&BindingInput {
                verifier_nonce: peer.nonce,
                attester_nonce: own.nonce,
                attester_context: own.context,
                attester_spki_sha256: id.spki_sha256(),
                verifier_flags: peer.flags,
                attester_flags: own.flags,
            });
            Some(blocking(|| a.attest(&rd)).map_err(|e| AtlsError::Attester(e.0))?)
        }
        _ => None,
    };
    id.certificate(evidence.as_deref())
}

/// After the handshake: appraises the evidence in the peer's certificate (bound to our nonce,
/// the peer's nonce and the key that signed the handshake), then each side tells the other
/// its verdict, so a refused peer learns why.
async fn conclude<S, A>(
    tls: &mut S,
    view: PeerView,
    own: Hello,
    peer: Hello,
    appraiser: Option<&A>,
    required: bool,
) -> Result<Peer<A::Claims>, AtlsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    let PeerView {
        spki_sha256: peer_spki,
        evidence,
    } = view;
    let peer_attests = peer.flags & FLAG_ATTESTS != 0;
    let verdict = match (appraiser, evidence) {
        (None, _) => Ok(None),
        (Some(_), None) if !peer_attests && !required => Ok(None),
        (Some(_), None) => Err(AtlsError::NoEvidence),
        (Some(a), Some(ev)) => {
            let expected = binding(&BindingInput {
                verifier_nonce: own.nonce,
                attester_nonce: peer.nonce,
                attester_context: peer.context,
                attester_spki_sha256: peer_spki,
                verifier_flags: own.flags,
                attester_flags: peer.flags,
            });
            a.appraise(&ev, &expected).map(Some).map_err(|e| match e {
                AppraiseError::Refused(r) => AtlsError::Refused(r),
                AppraiseError::Fault(f) => AtlsError::Appraiser(f),
            })
        }
    };
    let mut frame = vec![u8::from(verdict.is_ok())];
    if let Err(e) = &verdict {
        frame.extend_from_slice(e.to_string().as_bytes());
    }
    write_frame(tls, &frame).await?;
    let claims = verdict?;
    let peer_verdict = read_frame(tls).await?;
    match peer_verdict.split_first() {
        Some((1, _)) => Ok(Peer {
            claims,
            spki_sha256: peer_spki,
            context: peer.context,
        }),
        Some((0, reason)) => Err(AtlsError::RefusedByPeer(
            String::from_utf8_lossy(reason).into_owned(),
        )),
        _ => Err(AtlsError::Protocol("verdict: malformed frame".into())),
    }
}

/// What the handshake showed of the peer: its TLS key and the evidence its certificate carries.
struct PeerView {
    spki_sha256: [u8; 32],
    evidence: Option<Vec<u8>>,
}

impl PeerView {
    fn of(conn: &rustls::CommonState) -> Result<Self, AtlsError> {
        let cert = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| AtlsError::Tls("the peer presented no certificate".into()))?;
        Ok(Self {
            spki_sha256: spki_sha256(cert)?,
            evidence: evidence_of(cert)?,
        })
    }
}

/// Runs a blocking call (a TPM command takes milliseconds) without stalling the other tasks of
/// a multi-threaded runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Runs `f` within the exchange timeout.
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, AtlsError>>,
) -> Result<T, AtlsError> {
    tokio::time::timeout(EXCHANGE_TIMEOUT, f)
        .await
        .map_err(|_| AtlsError::Timeout(EXCHANGE_TIMEOUT))?
}

/// Connects as a client over `io`: hellos, then TLS 1.3 with `id`'s key and a certificate
/// carrying the client's evidence (if it attests and the server asks), then verdicts. The
/// client appraises the server if `appraiser` is given.
pub async fn client<IO, A>(
    mut io: IO,
    id: &Identity,
    attester: Option<&dyn Attester>,
    appraiser: Option<&A>,
) -> Result<(tokio_rustls::client::TlsStream<IO>, Peer<A::Claims>), AtlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    timed(async move {
        let (own, peer) = hellos(&mut io, attester, appraiser.is_some()).await?;
        if appraiser.is_some() && peer.flags & FLAG_ATTESTS == 0 {
            return Err(AtlsError::NoEvidence);
        }
        let cert = own_certificate(id, attester, own, peer)?;
        let connector = TlsConnector::from(Arc::new(client_config(id, cert)?));
        let name = rustls::pki_types::ServerName::try_from(veil_wire::ids::ATLS_SERVER_NAME)
            .map_err(|e| AtlsError::Tls(e.to_string()))?;
        let mut tls = connector
            .connect(name, io)
            .await
            .map_err(|e| AtlsError::Tls(e.to_string()))?;
        let view = PeerView::of(tls.get_ref().1)?;
        let p = conclude(&mut tls, view, own, peer, appraiser, true).await?;
        Ok((tls, p))
    })
    .await
}

/// Accepts a client over `io`: hellos, then TLS 1.3 with `id`'s key and a certificate carrying
/// the server's evidence (if it attests and the client asks; a client certificate is
/// required), then verdicts. With an `appraiser`, the client must attest.
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
    mut io: IO,
    id: &Identity,
    attester: Option<&dyn Attester>,
    appraiser: Option<&A>,
    required: bool,
) -> Result<(tokio_rustls::server::TlsStream<IO>, Peer<A::Claims>), AtlsError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    A: Appraiser + ?Sized,
{
    timed(async move {
        let (own, peer) = hellos(&mut io, attester, appraiser.is_some()).await?;
        if appraiser.is_some() && required && peer.flags & FLAG_ATTESTS == 0 {
            return Err(AtlsError::NoEvidence);
        }
        let cert = own_certificate(id, attester, own, peer)?;
        let acceptor = TlsAcceptor::from(Arc::new(server_config(id, cert)?));
        let mut tls = acceptor
            .accept(io)
            .await
            .map_err(|e| AtlsError::Tls(e.to_string()))?;
        let view = PeerView::of(tls.get_ref().1)?;
        let p = conclude(&mut tls, view, own, peer, appraiser, required).await?;
        Ok((tls, p))
    })
    .await
}
