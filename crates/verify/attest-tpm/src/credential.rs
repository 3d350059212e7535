//! TPM2_MakeCredential in software: wraps a secret so that only the TPM holding a given EK,
//! and only for a key with a given Name loaded in it, can recover it (TPM2_ActivateCredential).
//! This binds an attestation key to an endorsement key whose certificate the verifier checks
//! (TPM 2.0 Library Part 1, "Credential Protection"; KDFa from SP 800-108).

use aws_lc_rs::cipher::{AES_128, EncryptingKey, EncryptionContext, UnboundCipherKey};
use aws_lc_rs::hmac;
use aws_lc_rs::iv::FixedLength;
use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
use veil_attest_core::crypto::KeyType;

use crate::alg::HashAlg;
use crate::structures::Public;

/// TPM_ALG_AES.
const ALG_AES: u16 = 0x0006;
/// TPM_ALG_CFB.
const ALG_CFB: u16 = 0x0043;

/// A credential for TPM2_ActivateCredential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT contents: TPM2B_DIGEST(outer HMAC) || encrypted TPM2B_DIGEST(secret).
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the seed, RSA-OAEP encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// Why a credential could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The EK is not an RSA-2048 storage key with SHA-256 Names and AES-128-CFB.
    #[error("EK: expected an RSA-2048 key with nameAlg SHA-256 and AES-128-CFB, found {0}")]
    UnsupportedEk(String),
    /// The secret does not fit a TPM2B_DIGEST of the Name algorithm.
    #[error("credential: at most 32 bytes, found {0}")]
    SecretTooLong(usize),
    /// The object Name is not SHA-256 (0x000B || 32 bytes).
    #[error("object Name: expected 34 bytes (SHA-256), found {0}")]
    BadName(usize),
    /// The crypto library refused an operation.
    #[error("credential: {0} failed")]
    Crypto(&'static str),
}

/// SP 800-108 counter-mode KDF with HMAC-SHA-256, as the TPM defines KDFa.
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, key);
    let bytes = bits.div_ceil(8) as usize;
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter = 1u32;
    while out.len() < bytes {
        let mut ctx = hmac::Context::with_key(&k);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// Makes a credential for the object named `name` (an AK) under `ek`, wrapping `secret` with
/// the random `seed` (32 bytes, from the caller's RNG: this module does no I/O).
pub fn make_credential(
    ek: &Public,
    name: &[u8],
    secret: &[u8],
    seed: &[u8; 32],
) -> Result<MadeCredential, CredentialError> {
    let ok_sym = ek
        .symmetric
        .is_some_and(|s| s.algorithm == ALG_AES && s.key_bits == 128 && s.mode == ALG_CFB);
    if ek.key.kind() != KeyType::Rsa(2048) || ek.name_alg != Some(HashAlg::Sha256) || !ok_sym {
        return Err(CredentialError::UnsupportedEk(format!(
            "{} key, nameAlg {:?}, symmetric {:?}",
            ek.key.kind(),
            ek.name_alg,
            ek.symmetric
        )));
    }
    if secret.len() > 32 {
        return Err(CredentialError::SecretTooLong(secret.len()));
    }
    if name.len() != 34 {
        return Err(CredentialError::BadName(name.len()));
    }
    // The seed, encrypted to the EK with OAEP and the label "IDENTITY" (with its NUL).
    let spki = ek
        .key
        .spki_der()
        .map_err(|_| CredentialError::Crypto("EK encoding"))?;
    let pk =
        PublicEncryptingKey::from_der(&spki).map_err(|_| CredentialError::Crypto("EK import"))?;
    let oaep =
        OaepPublicEncryptingKey::new(pk).map_err(|_| CredentialError::Crypto("OAEP setup"))?;
    let mut encrypted = vec![0u8; oaep.ciphertext_size()];
    let n = oaep
        .encrypt(
            &OAEP_SHA256_MGF1SHA256,
            seed,
            &mut encrypted,
            Some(b"IDENTITY\0"),
        )
        .map_err(|_| CredentialError::Crypto("OAEP encryption"))?
        .len();
    encrypted.truncate(n);

    // encIdentity = AES-128-CFB(KDFa(seed, "STORAGE", name), IV 0, TPM2B_DIGEST(secret)).
    let sym_key = kdfa_sha256(seed, "STORAGE", name, &[], 128);
    let mut enc_identity = (secret.len() as u16).to_be_bytes().to_vec();
    enc_identity.extend_from_slice(secret);
    let key = UnboundCipherKey::new(&AES_128, &sym_key)
        .map_err(|_| CredentialError::Crypto("AES key"))?;
    let cfb = EncryptingKey::cfb128(key).map_err(|_| CredentialError::Crypto("AES-CFB setup"))?;
    cfb.less_safe_encrypt(
        &mut enc_identity,
        EncryptionContext::Iv128(FixedLength::from([0u8; 16])),
    )
    .map_err(|_| CredentialError::Crypto("AES-CFB encryption"))?;

    // outerHMAC = HMAC-SHA-256(KDFa(seed, "INTEGRITY"), encIdentity || name).
    let hmac_key = kdfa_sha256(seed, "INTEGRITY", &[], &[], 256);
    let k = hmac::Key::new(hmac::HMAC_SHA256, &hmac_key);
    let mut ctx = hmac::Context::with_key(&k);
    ctx.update(&enc_identity);
    ctx.update(name);
    let outer = ctx.sign();

    let mut id_object = 32u16.to_be_bytes().to_vec();
    id_object.extend_from_slice(outer.as_ref());
    id_object.extend_from_slice(&enc_identity);
    Ok(MadeCredential {
        id_object,
        encrypted_secret: encrypted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_determinism() {
        let a = kdfa_sha256(b"k", "STORAGE", b"n", b"", 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa_sha256(b"k", "STORAGE", b"n", b"", 128));
        assert_ne!(a, kdfa_sha256(b"k", "INTEGRITY", b"n", b"", 128));
        assert_eq!(kdfa_sha256(b"k", "X", b"", b"", 520).len(), 65);
    }
}
