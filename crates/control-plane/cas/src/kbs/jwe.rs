//! The KBS response: a JSON Web Encryption (RFC 7516) in the flattened JSON serialization,
//! its content encrypted with A256GCM under a fresh key, that key wrapped for the workload's
//! ephemeral EC key with ECDH-ES+A256KW (RFC 7518 §4.6: an ephemeral ECDH agreement, Concat
//! KDF over SHA-256 with empty PartyUInfo and PartyVInfo, AES key wrap of RFC 3394).
//!
//! The protected header is written as compact JSON with its keys sorted (`alg`, `enc`, `epk`
//! and the key's `crv`, `kty`, `x`, `y`): the client recomputes the AAD by re-serialising the
//! header it parsed, and that is the form it re-serialises to.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, ECDH_P256, ECDH_P384, ECDH_P521, EphemeralPrivateKey};
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The key-management algorithm taken.
pub const ALG: &str = "ECDH-ES+A256KW";
/// The content encryption.
pub const ENC: &str = "A256GCM";

/// The workload's ephemeral public key (`tee-pubkey`), checked for what it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientKey {
    curve: Curve,
    /// The uncompressed point (`04 || x || y`).
    point: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn name(self) -> &'static str {
        match self {
            Self::P256 => "P-256",
            Self::P384 => "P-384",
            Self::P521 => "P-521",
        }
    }
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
            Self::P521 => 66,
        }
    }
    fn algorithm(self) -> &'static agreement::Algorithm {
        match self {
            Self::P256 => &ECDH_P256,
            Self::P384 => &ECDH_P384,
            Self::P521 => &ECDH_P521,
        }
    }
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl RecipientKey {
    /// Reads a `tee-pubkey` JWK: an EC key on P-256 (the client's default), P-384 or P-521,
    /// for `ECDH-ES+A256KW`, whose point is on its curve.
    pub fn from_jwk(jwk: &Value) -> Result<Self, String> {
        let k: Jwk = serde_json::from_value(jwk.clone()).map_err(|e| format!("tee-pubkey: {e}"))?;
        if k.kty != "EC" {
            return Err(format!(
                "tee-pubkey: kty expected EC (for {ALG}), found {}",
                k.kty
            ));
        }
        if k.alg.as_deref() != Some(ALG) {
            return Err(format!(
                "tee-pubkey: alg expected {ALG}, found {}",
                k.alg.as_deref().unwrap_or("none")
            ));
        }
        let curve = match k.crv.as_deref() {
            Some("P-256") => Curve::P256,
            Some("P-384") => Curve::P384,
            Some("P-521") => Curve::P521,
            other => {
                return Err(format!(
                    "tee-pubkey: crv expected P-256, P-384 or P-521, found {}",
                    other.unwrap_or("none")
                ));
            }
        };
        let coordinate = |name: &str, v: &Option<String>| -> Result<Vec<u8>, String> {
            let b = URL_SAFE_NO_PAD
                .decode(v.as_deref().unwrap_or_default())
                .map_err(|e| format!("tee-pubkey: {name} is not base64url: {e}"))?;
            if b.len() != curve.coordinate_len() {
                return Err(format!(
                    "tee-pubkey: {name} of {} bytes, expected {} for {}",
                    b.len(),
                    curve.coordinate_len(),
                    curve.name()
                ));
            }
            Ok(b)
        };
        let mut point = vec![4u8];
        point.extend(coordinate("x", &k.x)?);
        point.extend(coordinate("y", &k.y)?);
        let key = Self { curve, point };
        // An agreement with a point off the curve fails: find out now, not at the first resource.
        key.seal(b"").map_err(|_| {
            format!(
                "tee-pubkey: the point is not on {} (or is its identity)",
                curve.name()
            )
        })?;
        Ok(key)
    }

    /// Encrypts `plaintext` for this key.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Flattened, Fault> {
        let rng = SystemRandom::new();
        let alg = self.curve.algorithm();
        let ephemeral =
            EphemeralPrivateKey::generate(alg, &rng).map_err(|_| Fault("ephemeral key"))?;
        let epk = ephemeral
            .compute_public_key()
            .map_err(|_| Fault("ephemeral public key"))?;
        let n = self.curve.coordinate_len();
        let (x, y) = epk
            .as_ref()
            .get(1..)
            .filter(|p| p.len() == 2 * n)
            .map(|p| p.split_at(n))
            .ok_or(Fault("ephemeral point"))?;
        let kek: Zeroizing<[u8; 32]> = agreement::agree_ephemeral(
            ephemeral,
            agreement::UnparsedPublicKey::new(alg, &self.point),
            Fault("agreement (the recipient's point)"),
            |z| Ok(Zeroizing::new(concat_kdf(z))),
        )?;
        let mut cek = Zeroizing::new([0u8; 32]);
        rng.fill(cek.as_mut()).map_err(|_| Fault("random"))?;
        let mut wrapped = [0u8; 40];
        let wrapped = AesKek::new(&AES_256, kek.as_ref())
            .and_then(|k| k.wrap(cek.as_ref(), &mut wrapped))
            .map_err(|_| Fault("key wrap"))?
            .to_vec();
        let header = serde_json::json!({
            "alg": ALG,
            "enc": ENC,
            "epk": {
                "crv": self.curve.name(),
                "kty": "EC",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            },
        });
        let header = serde_json_canonicalizer::to_vec(&header).map_err(|_| Fault("header"))?;
        let protected = URL_SAFE_NO_PAD.encode(header);
        let mut iv = [0u8; 12];
        rng.fill(&mut iv).map_err(|_| Fault("random"))?;
        let key = UnboundKey::new(&AES_256_GCM, cek.as_ref())
            .map(LessSafeKey::new)
            .map_err(|_| Fault("content key"))?;
        let mut body = plaintext.to_vec();
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(iv),
                Aad::from(protected.as_bytes()),
                &mut body,
            )
            .map_err(|_| Fault("encryption"))?;
        Ok(Flattened {
            protected,
            encrypted_key: URL_SAFE_NO_PAD.encode(wrapped),
            iv: URL_SAFE_NO_PAD.encode(iv),
            ciphertext: URL_SAFE_NO_PAD.encode(body),
            tag: URL_SAFE_NO_PAD.encode(tag.as_ref()),
        })
    }
}

/// RFC 7518 §4.6.2: one round of the Concat KDF (SP 800-56A) over SHA-256, for a 256-bit key
/// of algorithm `ECDH-ES+A256KW`, with empty PartyUInfo and PartyVInfo.
fn concat_kdf(z: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(u32::try_from(ALG.len()).unwrap_or(0).to_be_bytes());
    h.update(ALG.as_bytes());
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    h.finalize().into()
}

/// A JWE in the flattened JSON serialization, every member base64url.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flattened {
    /// The protected header.
    pub protected: String,
    /// The content key, wrapped.
    pub encrypted_key: String,
    /// The GCM nonce.
    pub iv: String,
    /// The ciphertext.
    pub ciphertext: String,
    /// The GCM tag.
    pub tag: String,
}

/// A failure of this side's cryptography (not the caller's input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("JWE: {0} failed")]
pub struct Fault(&'static str);
