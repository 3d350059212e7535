//! Public keys and signature verification (aws-lc-rs).
//!
//! A [`PublicKey`] is parsed once and can verify many signatures; every failure names the
//! key type and scheme involved, never just "invalid".

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use serde::Serialize;

/// The kind of a public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// RSA with the given modulus size in bits.
    Rsa(u32),
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::EcP256 => f.write_str("ECDSA P-256"),
            KeyType::EcP384 => f.write_str("ECDSA P-384"),
            KeyType::Rsa(bits) => write!(f, "RSA-{bits}"),
        }
    }
}

/// A signature scheme: padding (for RSA) and hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[non_exhaustive]
pub enum Scheme {
    /// ECDSA with SHA-256.
    EcdsaSha256,
    /// ECDSA with SHA-384.
    EcdsaSha384,
    /// ECDSA with SHA-512.
    EcdsaSha512,
    /// RSASSA-PKCS1-v1_5 with SHA-1 (legacy TPM keys only).
    RsaPkcs1Sha1,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RsaPkcs1Sha256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RsaPkcs1Sha384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RsaPkcs1Sha512,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256, salt length 32.
    RsaPssSha256,
    /// RSASSA-PSS with SHA-384, MGF1-SHA-384, salt length 48.
    RsaPssSha384,
    /// RSASSA-PSS with SHA-512, MGF1-SHA-512, salt length 64.
    RsaPssSha512,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Scheme::EcdsaSha256 => "ECDSA/SHA-256",
            Scheme::EcdsaSha384 => "ECDSA/SHA-384",
            Scheme::EcdsaSha512 => "ECDSA/SHA-512",
            Scheme::RsaPkcs1Sha1 => "RSASSA-PKCS1-v1_5/SHA-1",
            Scheme::RsaPkcs1Sha256 => "RSASSA-PKCS1-v1_5/SHA-256",
            Scheme::RsaPkcs1Sha384 => "RSASSA-PKCS1-v1_5/SHA-384",
            Scheme::RsaPkcs1Sha512 => "RSASSA-PKCS1-v1_5/SHA-512",
            Scheme::RsaPssSha256 => "RSASSA-PSS/SHA-256",
            Scheme::RsaPssSha384 => "RSASSA-PSS/SHA-384",
            Scheme::RsaPssSha512 => "RSASSA-PSS/SHA-512",
        };
        f.write_str(s)
    }
}

/// How an ECDSA signature is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcdsaEncoding {
    /// ASN.1 DER `SEQUENCE { r INTEGER, s INTEGER }` (X.509, CRLs).
    Der,
    /// Big-endian `r || s`, each the size of the curve order (SNP, DCAP, TPM after conversion).
    Fixed,
}

/// A signature check that did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature does not verify under the key.
    #[error("{scheme} signature does not verify under the {key} key")]
    Mismatch {
        /// Key type.
        key: KeyType,
        /// Scheme.
        scheme: Scheme,
    },
    /// The key cannot be used with this scheme.
    #[error("a {key} key cannot verify {scheme} signatures")]
    Unsupported {
        /// Key type.
        key: KeyType,
        /// Scheme.
        scheme: Scheme,
    },
    /// The key bytes are not a valid key of their claimed type.
    #[error("malformed {key} public key")]
    BadKey {
        /// Key type.
        key: KeyType,
    },
}

/// A public key: EC points in uncompressed SEC1 form, RSA keys as PKCS#1 `RSAPublicKey` DER.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PublicKey {
    kind: KeyType,
    bytes: Arc<[u8]>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {})", self.kind, hex::encode(&self.bytes))
    }
}

impl PublicKey {
    /// An EC key from its uncompressed SEC1 point (`04 || x || y`).
    pub fn ec(kind: KeyType, point: &[u8]) -> Result<Self, SignatureError> {
        let coord = match kind {
            KeyType::EcP256 => 32,
            KeyType::EcP384 => 48,
            KeyType::Rsa(_) => return Err(SignatureError::BadKey { key: kind }),
        };
        if point.len() != 1 + 2 * coord || point.first() != Some(&4) {
            return Err(SignatureError::BadKey { key: kind });
        }
        Ok(Self {
            kind,
            bytes: point.into(),
        })
    }

    /// An EC key from its affine coordinates (as a TPM or a DCAP quote carries them).
    pub fn ec_xy(kind: KeyType, x: &[u8], y: &[u8]) -> Result<Self, SignatureError> {
        let mut p = Vec::with_capacity(1 + x.len() + y.len());
        p.push(4);
        p.extend_from_slice(x);
        p.extend_from_slice(y);
        Self::ec(kind, &p)
    }

    /// An RSA key from PKCS#1 `RSAPublicKey` DER.
    pub fn rsa_pkcs1(der: &[u8]) -> Result<Self, SignatureError> {
        let bits = rsa_modulus_bits(der).ok_or(SignatureError::BadKey {
            key: KeyType::Rsa(0),
        })?;
        Ok(Self {
            kind: KeyType::Rsa(bits),
            bytes: der.into(),
        })
    }

    /// An RSA key from its big-endian modulus and public exponent (as a TPM carries it).
    pub fn rsa_components(modulus: &[u8], exponent: u32) -> Result<Self, SignatureError> {
        let n = strip_leading_zeros(modulus);
        if n.is_empty() || exponent < 3 || exponent.is_multiple_of(2) {
            return Err(SignatureError::BadKey {
                key: KeyType::Rsa(0),
            });
        }
        let e_bytes = exponent.to_be_bytes();
        let der = der_sequence(&[der_uint(n), der_uint(strip_leading_zeros(&e_bytes))]);
        Self::rsa_pkcs1(&der)
    }

    /// The key type.
    pub fn kind(&self) -> KeyType {
        self.kind
    }

    /// The encoded key bytes (SEC1 point or PKCS#1 DER).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The key as a DER SubjectPublicKeyInfo (the form certificates and PEM files carry).
    pub fn spki_der(&self) -> Result<Vec<u8>, SignatureError> {
        use aws_lc_rs::encoding::AsDer;
        let scheme = match self.kind {
            KeyType::EcP256 => Scheme::EcdsaSha256,
            KeyType::EcP384 => Scheme::EcdsaSha384,
            KeyType::Rsa(_) => Scheme::RsaPkcs1Sha256,
        };
        let bad = SignatureError::BadKey { key: self.kind };
        let alg = algorithm(self.kind, scheme, EcdsaEncoding::Der).map_err(|_| bad.clone())?;
        let parsed = ParsedPublicKey::new(alg, &self.bytes).map_err(|_| bad.clone())?;
        let der = parsed.as_der().map_err(|_| bad)?;
        Ok(der.as_ref().to_vec())
    }

    /// Verifies `signature` over `message`.
    pub fn verify(
        &self,
        scheme: Scheme,
        encoding: EcdsaEncoding,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        self.prepare(scheme, encoding)?.verify(message, signature)
    }

    /// Parses the key once for repeated checks of one scheme.
    pub fn prepare(
        &self,
        scheme: Scheme,
        encoding: EcdsaEncoding,
    ) -> Result<PreparedKey, SignatureError> {
        let (alg, fixed_to_der) = match algorithm(self.kind, scheme, encoding) {
            Ok(alg) => (alg, false),
            // aws-lc-rs has fixed-encoding verifiers only where the hash matches the curve;
            // other pairings are verified through the DER form.
            Err(_) if encoding == EcdsaEncoding::Fixed => {
                (algorithm(self.kind, scheme, EcdsaEncoding::Der)?, true)
            }
            Err(e) => return Err(e),
        };
        let parsed = ParsedPublicKey::new(alg, &self.bytes)
            .map_err(|_| SignatureError::BadKey { key: self.kind })?;
        Ok(PreparedKey {
            parsed: Arc::new(parsed),
            kind: self.kind,
            scheme,
            fixed_to_der,
        })
    }
}

/// A key parsed for one scheme, cheap to clone and share between threads.
#[derive(Clone)]
pub struct PreparedKey {
    parsed: Arc<ParsedPublicKey>,
    kind: KeyType,
    scheme: Scheme,
    fixed_to_der: bool,
}

impl fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PreparedKey({} for {})", self.kind, self.scheme)
    }
}

impl PreparedKey {
    /// Verifies `signature` over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let mismatch = SignatureError::Mismatch {
            key: self.kind,
            scheme: self.scheme,
        };
        let der;
        let signature = if self.fixed_to_der {
            der = fixed_ecdsa_to_der(signature).ok_or(mismatch.clone())?;
            der.as_slice()
        } else {
            signature
        };
        self.parsed
            .verify_sig(message, signature)
            .map_err(|_| SignatureError::Mismatch {
                key: self.kind,
                scheme: self.scheme,
            })
    }
}

fn algorithm(
    key: KeyType,
    scheme: Scheme,
    enc: EcdsaEncoding,
) -> Result<&'static dyn VerificationAlgorithm, SignatureError> {
    use EcdsaEncoding::{Der, Fixed};
    let alg: &'static dyn VerificationAlgorithm = match (key, scheme, enc) {
        (KeyType::EcP256, Scheme::EcdsaSha256, Der) => &sig::ECDSA_P256_SHA256_ASN1,
        (KeyType::EcP256, Scheme::EcdsaSha256, Fixed) => &sig::ECDSA_P256_SHA256_FIXED,
        (KeyType::EcP256, Scheme::EcdsaSha384, Der) => &sig::ECDSA_P256_SHA384_ASN1,
        (KeyType::EcP256, Scheme::EcdsaSha512, Der) => &sig::ECDSA_P256_SHA512_ASN1,
        (KeyType::EcP384, Scheme::EcdsaSha256, Der) => &sig::ECDSA_P384_SHA256_ASN1,
        (KeyType::EcP384, Scheme::EcdsaSha384, Der) => &sig::ECDSA_P384_SHA384_ASN1,
        (KeyType::EcP384, Scheme::EcdsaSha384, Fixed) => &sig::ECDSA_P384_SHA384_FIXED,
        (KeyType::EcP384, Scheme::EcdsaSha512, Der) => &sig::ECDSA_P384_SHA512_ASN1,
        (KeyType::Rsa(bits), scheme, _) if bits >= 2048 => match scheme {
            Scheme::RsaPkcs1Sha256 => &sig::RSA_PKCS1_2048_8192_SHA256,
            Scheme::RsaPkcs1Sha384 => &sig::RSA_PKCS1_2048_8192_SHA384,
            Scheme::RsaPkcs1Sha512 => &sig::RSA_PKCS1_2048_8192_SHA512,
            Scheme::RsaPkcs1Sha1 => &sig::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            Scheme::RsaPssSha256 => &sig::RSA_PSS_2048_8192_SHA256,
            Scheme::RsaPssSha384 => &sig::RSA_PSS_2048_8192_SHA384,
            Scheme::RsaPssSha512 => &sig::RSA_PSS_2048_8192_SHA512,
            _ => return Err(SignatureError::Unsupported { key, scheme }),
        },
        _ => return Err(SignatureError::Unsupported { key, scheme }),
    };
    Ok(alg)
}

fn strip_leading_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    b.get(i..).unwrap_or_default()
}

/// Converts a fixed `r || s` ECDSA signature to DER (None for an odd length).
fn fixed_ecdsa_to_der(sig: &[u8]) -> Option<Vec<u8>> {
    if sig.is_empty() || !sig.len().is_multiple_of(2) {
        return None;
    }
    let (r, s) = sig.split_at(sig.len() / 2);
    Some(der_sequence(&[
        der_uint(strip_leading_zeros(r)),
        der_uint(strip_leading_zeros(s)),
    ]))
}

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        vec![n as u8]
    } else {
        let bytes = n.to_be_bytes();
        let s = strip_leading_zeros(&bytes);
        let mut v = vec![0x80 | s.len() as u8];
        v.extend_from_slice(s);
        v
    }
}

fn der_uint(magnitude: &[u8]) -> Vec<u8> {
    let pad = magnitude.first().is_some_and(|b| b & 0x80 != 0);
    let len = magnitude.len() + usize::from(pad);
    let mut v = vec![0x02];
    v.extend(der_len(len));
    if pad {
        v.push(0);
    }
    v.extend_from_slice(magnitude);
    v
}

fn der_sequence(items: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = items.concat();
    let mut v = vec![0x30];
    v.extend(der_len(body.len()));
    v.extend(body);
    v
}

/// Reads the modulus size of a PKCS#1 `RSAPublicKey` without trusting it (None if malformed).
fn rsa_modulus_bits(der: &[u8]) -> Option<u32> {
    use x509_parser::der_parser::ber::BerObjectContent;
    use x509_parser::der_parser::der::parse_der;
    let (rest, obj) = parse_der(der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let BerObjectContent::Sequence(items) = obj.content else {
        return None;
    };
    let [n, e] = items.as_slice() else {
        return None;
    };
    let n = n.as_slice().ok()?;
    e.as_slice().ok()?;
    let n = strip_leading_zeros(n);
    let first = *n.first()?;
    let bits = (n.len() as u32 - 1) * 8 + (8 - first.leading_zeros());
    Some(bits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    #[test]
    fn ecdsa_fixed_round_trip_and_mismatch() {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let s = kp.sign(&rng, b"msg").unwrap();
        let pk = PublicKey::ec(KeyType::EcP256, kp.public_key().as_ref()).unwrap();
        pk.verify(
            Scheme::EcdsaSha256,
            EcdsaEncoding::Fixed,
            b"msg",
            s.as_ref(),
        )
        .unwrap();
        let e = pk
            .verify(
                Scheme::EcdsaSha256,
                EcdsaEncoding::Fixed,
                b"msh",
                s.as_ref(),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "ECDSA/SHA-256 signature does not verify under the ECDSA P-256 key"
        );
    }

    #[test]
    fn spki_round_trips_through_x509_parser() {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        let pk = PublicKey::ec(KeyType::EcP256, kp.public_key().as_ref()).unwrap();
        let spki = pk.spki_der().unwrap();
        assert_eq!(crate::x509::public_key_from_spki(&spki).unwrap(), pk);
    }

    #[test]
    fn rsa_components_encode_to_pkcs1() {
        let mut n = vec![0xc5u8; 256];
        n[255] = 0x01;
        let k = PublicKey::rsa_components(&n, 65537).unwrap();
        assert_eq!(k.kind(), KeyType::Rsa(2048));
        assert!(PublicKey::rsa_components(&n, 4).is_err());
    }

    #[test]
    fn refuses_mismatched_scheme() {
        let k = PublicKey::ec_xy(KeyType::EcP256, &[1; 32], &[2; 32]).unwrap();
        assert!(matches!(
            k.prepare(Scheme::RsaPkcs1Sha256, EcdsaEncoding::Der),
            Err(SignatureError::Unsupported { .. })
        ));
        assert!(PublicKey::ec(KeyType::EcP384, &[4; 10]).is_err());
    }
}
