//! Detached ECDSA P-256 signatures over a file's exact bytes, in the form `cosign sign-blob`
//! writes and `cosign verify-blob --key` (or `openssl dgst -sha256 -verify`) checks: the
//! signature is base64 of the DER `ECDSA-Sig-Value`, the key a PEM `PUBLIC KEY`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use veil_attest_core::crypto::{EcdsaEncoding, KeyType, PublicKey, Scheme};
use veil_attest_core::x509::public_key_from_spki;

/// A signing problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SigningError {
    /// The key file is not a PKCS#8 ECDSA P-256 private key in PEM.
    #[error("signing key: {0}")]
    BadPrivateKey(String),
    /// The public key is not an ECDSA P-256 `PUBLIC KEY` PEM.
    #[error("verification key: {0}")]
    BadPublicKey(String),
    /// The signature file is not base64 of a DER signature.
    #[error("signature: not base64 ({0})")]
    BadEncoding(String),
    /// The signature does not verify: the file changed, or another key signed it.
    #[error(
        "signature does not verify with the given key: the document was altered or signed by another key"
    )]
    Mismatch,
    /// The random generator failed.
    #[error("key generation failed")]
    Rng,
}

/// A new signing key: (PKCS#8 private key PEM, public key PEM).
pub fn generate_key() -> Result<(String, String), SigningError> {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| SigningError::Rng)?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .map_err(|_| SigningError::Rng)?;
    let public = PublicKey::ec(KeyType::EcP256, kp.public_key().as_ref())
        .and_then(|k| k.spki_der())
        .map_err(|e| SigningError::BadPublicKey(e.to_string()))?;
    Ok((
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())),
        pem::encode(&pem::Pem::new("PUBLIC KEY", public)),
    ))
}

/// The public key (PEM) of a PKCS#8 PEM ECDSA P-256 private key.
pub fn public_key_pem(private_pem: &[u8]) -> Result<String, SigningError> {
    let p = pem::parse(private_pem).map_err(|e| SigningError::BadPrivateKey(e.to_string()))?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, p.contents())
        .map_err(|e| SigningError::BadPrivateKey(format!("not an ECDSA P-256 key: {e}")))?;
    let public = PublicKey::ec(KeyType::EcP256, kp.public_key().as_ref())
        .and_then(|k| k.spki_der())
        .map_err(|e| SigningError::BadPublicKey(e.to_string()))?;
    Ok(pem::encode(&pem::Pem::new("PUBLIC KEY", public)))
}

/// Signs `message` with a PKCS#8 PEM private key; returns the base64 signature text.
pub fn sign(private_pem: &[u8], message: &[u8]) -> Result<String, SigningError> {
    let p = pem::parse(private_pem).map_err(|e| SigningError::BadPrivateKey(e.to_string()))?;
    if p.tag() != "PRIVATE KEY" {
        return Err(SigningError::BadPrivateKey(format!(
            "expected a PEM `PRIVATE KEY`, found `{}`",
            p.tag()
        )));
    }
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, p.contents())
        .map_err(|e| SigningError::BadPrivateKey(format!("not an ECDSA P-256 key: {e}")))?;
    let sig = kp
        .sign(&SystemRandom::new(), message)
        .map_err(|_| SigningError::Rng)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(sig.as_ref()))
}

/// Verifies a base64 signature (as [`sign`] writes it) over `message` with a public key (a PEM
/// `PUBLIC KEY` or its SubjectPublicKeyInfo DER).
pub fn verify(public_key: &[u8], message: &[u8], signature_b64: &str) -> Result<(), SigningError> {
    let key =
        public_key_from_spki(public_key).map_err(|e| SigningError::BadPublicKey(e.to_string()))?;
    if key.kind() != KeyType::EcP256 {
        return Err(SigningError::BadPublicKey(format!(
            "expected ECDSA P-256, found {}",
            key.kind()
        )));
    }
    let sig = base64::engine::general_purpose::STANDARD
        .decode(signature_b64.trim())
        .map_err(|e| SigningError::BadEncoding(e.to_string()))?;
    key.verify(Scheme::EcdsaSha256, EcdsaEncoding::Der, message, &sig)
        .map_err(|_| SigningError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse_changes() {
        let (sk, pk) = generate_key().unwrap();
        let sig = sign(sk.as_bytes(), b"doc").unwrap();
        verify(pk.as_bytes(), b"doc", &sig).unwrap();
        assert_eq!(
            verify(pk.as_bytes(), b"doc!", &sig),
            Err(SigningError::Mismatch)
        );
        let (_, other) = generate_key().unwrap();
        assert_eq!(
            verify(other.as_bytes(), b"doc", &sig),
            Err(SigningError::Mismatch)
        );
        assert!(matches!(
            verify(pk.as_bytes(), b"doc", "%%"),
            Err(SigningError::BadEncoding(_))
        ));
        assert!(matches!(
            sign(pk.as_bytes(), b"doc"),
            Err(SigningError::BadPrivateKey(_))
        ));
    }
}
