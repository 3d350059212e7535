//! TLS configuration: ephemeral identities whose self-signed certificates carry attestation
//! evidence in an extension, and verifiers that accept any certificate whose key proves
//! possession in the handshake; trust comes from appraising that evidence right after it.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, Error, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::protocol::AtlsError;

/// The X.509 extension that carries attestation evidence in a certificate: `id-pe-cmw`, the
/// IETF RATS conceptual message wrapper, whose value wraps the evidence bytes as the
/// [`crate::Attester`] produced them (see [`crate::cmw`]). Not critical, so ordinary TLS
/// stacks ignore it.
pub use veil_wire::ids::{EVIDENCE_OID, EVIDENCE_OID_DOTTED};

/// An ephemeral TLS identity: a fresh ECDSA P-256 key, certified by itself once per connection
/// (so that the certificate can carry evidence made for that connection).
pub struct Identity {
    key: rcgen::KeyPair,
    pkcs8: PrivatePkcs8KeyDer<'static>,
    spki_sha256: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("spki_sha256", &self.spki_sha256)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Generates a new identity.
    pub fn generate() -> Result<Self, AtlsError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| AtlsError::Tls(format!("key generation: {e}")))?;
        let mut id = Self {
            pkcs8: PrivatePkcs8KeyDer::from(key.serialize_der()),
            key,
            spki_sha256: [0; 32],
        };
        // Hashed exactly as a peer hashes it: from the certificate.
        id.spki_sha256 = spki_sha256(&id.certificate(None)?)?;
        Ok(id)
    }

    /// A self-signed certificate for this identity's key, carrying `evidence` (if any) in the
    /// [`EVIDENCE_OID`] extension.
    pub fn certificate(
        &self,
        evidence: Option<&[u8]>,
    ) -> Result<CertificateDer<'static>, AtlsError> {
        let mut params =
            rcgen::CertificateParams::new(vec![veil_wire::ids::ATLS_SERVER_NAME.to_string()])
                .map_err(|e| AtlsError::Tls(format!("certificate: {e}")))?;
        if let Some(ev) = evidence {
            params
                .custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    EVIDENCE_OID,
                    crate::cmw::encode(ev).map_err(AtlsError::Attester)?,
                ));
        }
        let cert = params
            .self_signed(&self.key)
            .map_err(|e| AtlsError::Tls(format!("certificate: {e}")))?;
        Ok(cert.der().clone())
    }

    /// SHA-256 of this identity's SubjectPublicKeyInfo.
    pub fn spki_sha256(&self) -> [u8; 32] {
        self.spki_sha256
    }

    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.pkcs8.clone_key())
    }
}

/// The evidence a peer certificate carries (`None` if it has no evidence extension).
pub(crate) fn evidence_of(cert: &CertificateDer<'_>) -> Result<Option<Vec<u8>>, AtlsError> {
    let c = veil_attest_core::x509::Certificate::from_der(cert.as_ref(), "peer TLS certificate")
        .map_err(|e| AtlsError::Tls(e.to_string()))?;
    match c.extension(EVIDENCE_OID_DOTTED) {
        None => Ok(None),
        Some(e) => crate::cmw::decode(&e.value)
            .map(|ev| Some(ev.to_vec()))
            .map_err(|why| AtlsError::Protocol(format!("evidence extension: {why}"))),
    }
}

/// SHA-256 of the SubjectPublicKeyInfo of a DER certificate.
pub(crate) fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], AtlsError> {
    let c = veil_attest_core::x509::Certificate::from_der(cert.as_ref(), "peer TLS certificate")
        .map_err(|e| AtlsError::Tls(e.to_string()))?;
    let spki = c
        .public_key()
        .map_err(|e| AtlsError::Tls(e.to_string()))?
        .spki_der()
        .map_err(|e| AtlsError::Tls(e.to_string()))?;
    Ok(Sha256::digest(spki).into())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Accepts any certificate; checks only that the peer holds its key (TLS 1.3 CertificateVerify).
#[derive(Debug)]
struct AttestedPeer {
    provider: Arc<CryptoProvider>,
}

impl AttestedPeer {
    fn verify13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for AttestedPeer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // The certificate is trusted through the attestation bound to its key, checked after
        // the handshake; a connection is unusable until then.
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for AttestedPeer {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// The client TLS configuration of an attested connection (TLS 1.3 only, client certificate
/// `cert` for `id`'s key, any server certificate whose key signs the handshake).
pub fn client_config(
    id: &Identity,
    cert: CertificateDer<'static>,
) -> Result<rustls::ClientConfig, AtlsError> {
    let provider = provider();
    rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AtlsError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AttestedPeer { provider }))
        .with_client_auth_cert(vec![cert], id.key_der())
        .map_err(|e| AtlsError::Tls(e.to_string()))
}

/// The server TLS configuration of an attested connection (TLS 1.3 only, certificate `cert`
/// for `id`'s key, a client certificate required).
pub fn server_config(
    id: &Identity,
    cert: CertificateDer<'static>,
) -> Result<rustls::ServerConfig, AtlsError> {
    let provider = provider();
    rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AtlsError::Tls(e.to_string()))?
        .with_client_cert_verifier(Arc::new(AttestedPeer { provider }))
        .with_single_cert(vec![cert], id.key_der())
        .map_err(|e| AtlsError::Tls(e.to_string()))
}
