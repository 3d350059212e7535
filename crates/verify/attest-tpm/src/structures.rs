//! TPM 2.0 wire structures (TPM 2.0 Library, Part 2), parsed from big-endian bytes.

use serde::Serialize;
use veil_attest_core::bytes::hex_vec;
use veil_attest_core::crypto::{KeyType, PublicKey, Scheme};
use veil_attest_core::{Malformed, Reader};

use crate::alg::*;

/// TPM_GENERATED_VALUE: the magic of every structure the TPM signs.
pub const TPM_GENERATED: u32 = 0xff54_4347;
/// TPM_ST_ATTEST_QUOTE.
pub const ST_ATTEST_QUOTE: u16 = 0x8018;
/// Number of PCRs Veil accepts in a selection (IMPLEMENTATION_PCR is 24 on PC clients).
pub const MAX_PCRS: usize = 32;

/// One bank of a TPML_PCR_SELECTION: a hash and the PCR indices selected, ascending.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PcrSelection {
    /// The bank.
    pub hash: HashAlg,
    /// Selected PCR indices, ascending.
    pub pcrs: Vec<u8>,
}

/// TPMS_CLOCK_INFO.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered.
    pub clock: u64,
    /// TPM resets (reboots).
    pub reset_count: u32,
    /// TPM restarts (resumes).
    pub restart_count: u32,
    /// Whether `clock` is known not to have gone backwards.
    pub safe: bool,
}

/// A TPMS_ATTEST carrying TPMS_QUOTE_INFO.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// qualifiedSigner (TPM2B_NAME of the signing key).
    #[serde(with = "hex_vec")]
    pub qualified_signer: Vec<u8>,
    /// extraData: the verifier's nonce.
    #[serde(with = "hex_vec")]
    pub extra_data: Vec<u8>,
    /// Clock state.
    pub clock_info: ClockInfo,
    /// Vendor firmware version.
    pub firmware_version: u64,
    /// The PCRs quoted, per bank.
    pub pcr_select: Vec<PcrSelection>,
    /// Digest of the selected PCR values.
    #[serde(with = "hex_vec")]
    pub pcr_digest: Vec<u8>,
}

const ATTEST: &str = "TPMS_ATTEST";

impl Quote {
    /// Parses a TPMS_ATTEST that must be a quote and fill `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(ATTEST, bytes);
        let magic = r.u32_be("magic")?;
        if magic != TPM_GENERATED {
            return Err(r.invalid(
                "magic",
                format!("{TPM_GENERATED:#010x} (TPM_GENERATED_VALUE)"),
                format!("{magic:#010x}"),
            ));
        }
        let ty = r.u16_be("type")?;
        if ty != ST_ATTEST_QUOTE {
            return Err(r.invalid(
                "type",
                format!("{ST_ATTEST_QUOTE:#06x} (TPM_ST_ATTEST_QUOTE)"),
                format!("{ty:#06x}"),
            ));
        }
        let qualified_signer = r.tpm2b("qualifiedSigner")?.to_vec();
        let extra_data = r.tpm2b("extraData")?.to_vec();
        if extra_data.len() > 64 {
            return Err(r.invalid(
                "extraData",
                "at most 64 bytes",
                format!("{} bytes", extra_data.len()),
            ));
        }
        let clock_info = ClockInfo {
            clock: r.u64_be("clockInfo.clock")?,
            reset_count: r.u32_be("clockInfo.resetCount")?,
            restart_count: r.u32_be("clockInfo.restartCount")?,
            safe: match r.u8("clockInfo.safe")? {
                0 => false,
                1 => true,
                v => return Err(r.invalid("clockInfo.safe", "0 or 1", v.to_string())),
            },
        };
        let firmware_version = r.u64_be("firmwareVersion")?;
        let pcr_select = parse_pcr_selection(&mut r)?;
        let pcr_digest = r.tpm2b("pcrDigest")?.to_vec();
        r.finish()?;
        Ok(Self {
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }
}

/// Parses a TPML_PCR_SELECTION.
pub fn parse_pcr_selection(r: &mut Reader<'_>) -> Result<Vec<PcrSelection>, Malformed> {
    let count = r.u32_be("pcrSelect.count")?;
    if count > 16 {
        return Err(r.invalid("pcrSelect.count", "at most 16 banks", count.to_string()));
    }
    let mut out: Vec<PcrSelection> = Vec::new();
    for _ in 0..count {
        let id = r.u16_be("pcrSelections.hash")?;
        let hash = HashAlg::from_id(id).ok_or_else(|| {
            r.invalid(
                "pcrSelections.hash",
                "SHA-1/256/384/512",
                format!("{id:#06x}"),
            )
        })?;
        let size = r.u8("pcrSelections.sizeofSelect")?;
        if usize::from(size) * 8 > MAX_PCRS {
            return Err(r.invalid(
                "pcrSelections.sizeofSelect",
                format!("at most {} bytes", MAX_PCRS / 8),
                size.to_string(),
            ));
        }
        let bitmap = r.take(usize::from(size), "pcrSelections.pcrSelect")?;
        let pcrs = bitmap
            .iter()
            .enumerate()
            .flat_map(|(byte, bits)| {
                (0..8u8)
                    .filter_map(move |bit| (bits & (1 << bit) != 0).then_some(byte as u8 * 8 + bit))
            })
            .collect();
        if out.iter().any(|s| s.hash == hash) {
            return Err(r.invalid(
                "pcrSelections.hash",
                "each bank once",
                format!("{hash} twice"),
            ));
        }
        out.push(PcrSelection { hash, pcrs });
    }
    Ok(out)
}

/// A TPMT_SIGNATURE, reduced to what verification needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Signature {
    /// The scheme (padding + hash).
    pub scheme: Scheme,
    /// The hash the TPM used.
    pub hash: HashAlg,
    /// Signature bytes: the RSA signature, or fixed `r || s` for ECDSA.
    #[serde(with = "hex_vec")]
    pub bytes: Vec<u8>,
}

const SIGNATURE: &str = "TPMT_SIGNATURE";

impl Signature {
    /// Parses a TPMT_SIGNATURE that fills `bytes` exactly.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(SIGNATURE, bytes);
        let alg = r.u16_be("sigAlg")?;
        let hid = r.u16_be("hash")?;
        let hash = HashAlg::from_id(hid)
            .ok_or_else(|| r.invalid("hash", "SHA-1/256/384/512", format!("{hid:#06x}")))?;
        let (scheme, bytes) = match alg {
            ALG_RSASSA | ALG_RSAPSS => {
                let scheme = rsa_scheme(alg == ALG_RSAPSS, hash).ok_or_else(|| {
                    r.invalid("hash", "SHA-256/384/512 for RSAPSS", hash.to_string())
                })?;
                (scheme, r.tpm2b("signature")?.to_vec())
            }
            ALG_ECDSA => {
                let scheme = ecdsa_scheme(hash).ok_or_else(|| {
                    r.invalid("hash", "SHA-256/384/512 for ECDSA", hash.to_string())
                })?;
                let sr = r.tpm2b("signatureR")?;
                let ss = r.tpm2b("signatureS")?;
                let n = sr.len().max(ss.len());
                if n == 0 || n > 66 {
                    return Err(r.invalid("signatureR/S", "1 to 66 bytes", n.to_string()));
                }
                // Left-pad both to the same width for the fixed encoding.
                let mut v = pad_left(sr, n).unwrap_or_default();
                v.extend(pad_left(ss, n).unwrap_or_default());
                (scheme, v)
            }
            other => {
                return Err(r.invalid(
                    "sigAlg",
                    "RSASSA (0x0014), RSAPSS (0x0016) or ECDSA (0x0018)",
                    format!("{other:#06x}"),
                ));
            }
        };
        r.finish()?;
        Ok(Self {
            scheme,
            hash,
            bytes,
        })
    }
}

/// The RSA scheme for a hash (`None`: RSAPSS with SHA-1, which Veil does not accept).
pub fn rsa_scheme(pss: bool, hash: HashAlg) -> Option<Scheme> {
    Some(match (pss, hash) {
        (false, HashAlg::Sha1) => Scheme::RsaPkcs1Sha1,
        (false, HashAlg::Sha256) => Scheme::RsaPkcs1Sha256,
        (false, HashAlg::Sha384) => Scheme::RsaPkcs1Sha384,
        (false, HashAlg::Sha512) => Scheme::RsaPkcs1Sha512,
        (true, HashAlg::Sha1) => return None,
        (true, HashAlg::Sha256) => Scheme::RsaPssSha256,
        (true, HashAlg::Sha384) => Scheme::RsaPssSha384,
        (true, HashAlg::Sha512) => Scheme::RsaPssSha512,
    })
}

/// The ECDSA scheme for a hash (`None`: SHA-1, which Veil does not accept).
pub fn ecdsa_scheme(hash: HashAlg) -> Option<Scheme> {
    match hash {
        HashAlg::Sha256 => Some(Scheme::EcdsaSha256),
        HashAlg::Sha384 => Some(Scheme::EcdsaSha384),
        HashAlg::Sha512 => Some(Scheme::EcdsaSha512),
        HashAlg::Sha1 => None,
    }
}

/// TPMT_SYM_DEF_OBJECT of a storage key (e.g. an EK): algorithm, key size, mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SymDef {
    /// Algorithm (TPM_ALG_AES = 0x0006).
    pub algorithm: u16,
    /// Key size in bits.
    pub key_bits: u16,
    /// Mode (TPM_ALG_CFB = 0x0043).
    pub mode: u16,
}

/// A TPMT_PUBLIC (or TPM2B_PUBLIC) reduced to its key and name algorithm.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Public {
    /// The key.
    pub key: PublicKey,
    /// Symmetric algorithm of a storage key (`None` for signing keys).
    pub symmetric: Option<SymDef>,
    /// nameAlg.
    pub name_alg: Option<HashAlg>,
    /// objectAttributes.
    pub attributes: u32,
    /// The object's Name: nameAlg || H(TPMT_PUBLIC).
    pub name: Vec<u8>,
}

const PUBLIC: &str = "TPMT_PUBLIC";

impl Public {
    /// Parses a TPMT_PUBLIC, or a TPM2B_PUBLIC (size-prefixed) holding one.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        // A TPM2B_PUBLIC starts with its size; a TPMT_PUBLIC with a key type.
        if let [hi, lo, rest @ ..] = bytes
            && usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len()
        {
            return Self::parse_t(rest);
        }
        Self::parse_t(bytes)
    }

    fn parse_t(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(PUBLIC, bytes);
        let ty = r.u16_be("type")?;
        let name_alg_id = r.u16_be("nameAlg")?;
        let name_alg = HashAlg::from_id(name_alg_id);
        let attributes = r.u32_be("objectAttributes")?;
        r.tpm2b("authPolicy")?;
        let sym = r.u16_be("parameters.symmetric.algorithm")?;
        let symmetric = if sym != ALG_NULL {
            Some(SymDef {
                algorithm: sym,
                key_bits: r.u16_be("parameters.symmetric.keyBits")?,
                mode: r.u16_be("parameters.symmetric.mode")?,
            })
        } else {
            None
        };
        let scheme = r.u16_be("parameters.scheme")?;
        if scheme != ALG_NULL {
            r.skip(2, "parameters.scheme.hashAlg")?;
        }
        let key = match ty {
            ALG_RSA => {
                let _bits = r.u16_be("parameters.keyBits")?;
                let exponent = match r.u32_be("parameters.exponent")? {
                    0 => 65537,
                    e => e,
                };
                let n = r.tpm2b("unique.rsa")?;
                PublicKey::rsa_components(n, exponent)
                    .map_err(|e| r.invalid("unique.rsa", "an RSA modulus", e.to_string()))?
            }
            ALG_ECC => {
                let curve = r.u16_be("parameters.curveID")?;
                let kdf = r.u16_be("parameters.kdf")?;
                if kdf != ALG_NULL {
                    r.skip(2, "parameters.kdf.hashAlg")?;
                }
                let (kind, width) = match curve {
                    ECC_NIST_P256 => (KeyType::EcP256, 32),
                    ECC_NIST_P384 => (KeyType::EcP384, 48),
                    c => {
                        return Err(r.invalid(
                            "parameters.curveID",
                            "NIST P-256 (3) or P-384 (4)",
                            c.to_string(),
                        ));
                    }
                };
                let x = pad_left(r.tpm2b("unique.ecc.x")?, width);
                let y = pad_left(r.tpm2b("unique.ecc.y")?, width);
                match (x, y) {
                    (Some(x), Some(y)) => PublicKey::ec_xy(kind, &x, &y)
                        .map_err(|e| r.invalid("unique.ecc", "a curve point", e.to_string()))?,
                    _ => {
                        return Err(r.invalid(
                            "unique.ecc",
                            format!("coordinates of at most {width} bytes"),
                            "longer",
                        ));
                    }
                }
            }
            other => {
                return Err(r.invalid(
                    "type",
                    "TPM_ALG_RSA (0x0001) or TPM_ALG_ECC (0x0023)",
                    format!("{other:#06x}"),
                ));
            }
        };
        r.finish()?;
        let name = match name_alg {
            Some(h) => {
                let mut n = h.id().to_be_bytes().to_vec();
                n.extend(h.hash(&[bytes]));
                n
            }
            None => Vec::new(),
        };
        Ok(Self {
            key,
            symmetric,
            name_alg,
            attributes,
            name,
        })
    }
}

/// TPM_RH_ENDORSEMENT: the handle (and Qualified Name) of the endorsement hierarchy.
pub const RH_ENDORSEMENT: u32 = 0x4000_000b;

/// The Qualified Name of an object (TPM 2.0 Library, Part 1, 16): `nameAlg ‖ H(QN(parent) ‖
/// Name)`, with the object's name algorithm. A hierarchy's Qualified Name is its handle. A
/// quote's qualifiedSigner is the Qualified Name of the key that signed it; only a restricted
/// key's quote is computed by the TPM, so only then does it say where the key lives.
pub fn qualified_name(parent_qualified_name: &[u8], name: &[u8]) -> Option<Vec<u8>> {
    let alg = HashAlg::from_id(u16::from_be_bytes([*name.first()?, *name.get(1)?]))?;
    let mut qn = alg.id().to_be_bytes().to_vec();
    qn.extend(alg.hash(&[parent_qualified_name, name]));
    Some(qn)
}

/// The Qualified Name of an attestation key created under a primary EK (as Veil nodes make
/// them): `QN(AK) = H(QN(EK) ‖ Name(AK))`, `QN(EK) = H(TPM_RH_ENDORSEMENT ‖ Name(EK))`.
pub fn qualified_name_under_ek(ek: &Public, ak: &Public) -> Option<Vec<u8>> {
    let ek_qn = qualified_name(&RH_ENDORSEMENT.to_be_bytes(), &ek.name)?;
    qualified_name(&ek_qn, &ak.name)
}

/// TPMA_OBJECT bits (TPM 2.0 Library, Part 2, 8.3).
pub mod attributes {
    /// fixedTPM: the object cannot be duplicated out of this TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// fixedParent: the object cannot be moved under another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// sensitiveDataOrigin: the TPM generated the private key itself.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// userWithAuth.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// noDA: the object is not subject to dictionary-attack protection.
    pub const NO_DA: u32 = 1 << 10;
    /// restricted: a signing key that signs only digests the TPM computed itself (quotes,
    /// certifications), never a digest handed to TPM2_Sign that starts with TPM_GENERATED.
    pub const RESTRICTED: u32 = 1 << 16;
    /// decrypt.
    pub const DECRYPT: u32 = 1 << 17;
    /// sign.
    pub const SIGN: u32 = 1 << 18;
}

/// What an attestation key must be, attribute by attribute: `(name, bit, required value)`.
/// Only a restricted signing key can be trusted to sign quotes: an unrestricted one signs any
/// digest, including that of a hand-made TPMS_ATTEST.
pub const ATTESTATION_KEY_ATTRIBUTES: [(&str, u32, bool); 6] = [
    ("restricted", attributes::RESTRICTED, true),
    ("sign", attributes::SIGN, true),
    ("decrypt", attributes::DECRYPT, false),
    ("fixedTPM", attributes::FIXED_TPM, true),
    ("fixedParent", attributes::FIXED_PARENT, true),
    (
        "sensitiveDataOrigin",
        attributes::SENSITIVE_DATA_ORIGIN,
        true,
    ),
];

impl Public {
    /// Checks that this is a key a TPM can only use as an attestation key: restricted,
    /// signing, not decrypting, fixed to its TPM and parent, generated inside the TPM, with a
    /// name algorithm (so its Name is defined). The error names the first attribute that is
    /// wrong, with the value required and the value found.
    pub fn check_attestation_key(&self) -> Result<(), crate::TpmError> {
        for (name, bit, required) in ATTESTATION_KEY_ATTRIBUTES {
            let found = self.attributes & bit != 0;
            if found != required {
                return Err(crate::TpmError::AkAttribute {
                    attribute: name,
                    required,
                    attributes: self.attributes,
                });
            }
        }
        if self.name_alg.is_none() {
            return Err(crate::TpmError::AkAttribute {
                attribute: "nameAlg",
                required: true,
                attributes: self.attributes,
            });
        }
        Ok(())
    }
}

fn pad_left(b: &[u8], width: usize) -> Option<Vec<u8>> {
    if b.len() > width {
        return None;
    }
    let mut v = vec![0u8; width - b.len()];
    v.extend_from_slice(b);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_rejects_wrong_magic_and_type() {
        let e = Quote::parse(&[0, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("magic"), "{e}");
        let e = Quote::parse(&[0xff, 0x54, 0x43, 0x47, 0x80, 0x17]).unwrap_err();
        assert!(e.to_string().contains("`type` expected 0x8018"), "{e}");
    }

    #[test]
    fn selection_bitmap_to_indices() {
        let b = [0, 0, 0, 1, 0, 0x0b, 3, 0x81, 0x00, 0x80];
        let mut r = Reader::new("t", &b);
        let s = parse_pcr_selection(&mut r).unwrap();
        assert_eq!(
            s,
            vec![PcrSelection {
                hash: HashAlg::Sha256,
                pcrs: vec![0, 7, 23]
            }]
        );
    }

    #[test]
    fn signature_parses_ecdsa_and_rejects_unknown() {
        let mut b = vec![0x00, 0x18, 0x00, 0x0b, 0x00, 0x02, 1, 2, 0x00, 0x01, 3];
        let s = Signature::parse(&b).unwrap();
        assert_eq!(s.bytes, vec![1, 2, 0, 3]);
        b[1] = 0x99;
        assert!(Signature::parse(&b).is_err());
    }
}
