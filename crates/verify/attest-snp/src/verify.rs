//! Verification: report signature, VCEK/VLEK chain to a pinned ARK, TCB and chip binding,
//! then the reference values.

use serde::Serialize;
use sha2::{Digest, Sha384};
use veil_attest_core::crypto::{EcdsaEncoding, KeyType, PreparedKey, Scheme};
use veil_attest_core::x509::{CertError, Certificate, verify_chain};
use veil_attest_core::{Bytes, UnixTime};

use crate::error::{PolicyViolation, SnpError};
use crate::policy::SnpPolicy;
use crate::report::{AttestationReport, SIG_ALGO_ECDSA_P384_SHA384, SIGNED_LEN, SigningKey};
use crate::roots::{AmdRoots, is_pinned_ark};
use crate::tcb::{Product, TcbVersion};

const OID_PRODUCT_NAME: &str = "1.3.6.1.4.1.3704.1.2";
const OID_BL_SPL: &str = "1.3.6.1.4.1.3704.1.3.1";
const OID_TEE_SPL: &str = "1.3.6.1.4.1.3704.1.3.2";
const OID_SNP_SPL: &str = "1.3.6.1.4.1.3704.1.3.3";
const OID_UCODE_SPL: &str = "1.3.6.1.4.1.3704.1.3.8";
const OID_FMC_SPL: &str = "1.3.6.1.4.1.3704.1.3.9";
const OID_HWID: &str = "1.3.6.1.4.1.3704.1.4";

/// A validity period of one certificate on the path, kept to re-check at each verification.
#[derive(Clone, Debug)]
struct Validity {
    role: &'static str,
    subject: String,
    not_before: UnixTime,
    not_after: UnixTime,
}

/// A VCEK or VLEK whose chain to a pinned ARK has been verified. Signatures on the chain are
/// time-independent, so one `Signer` verifies many reports; validity periods are re-checked
/// against each report's verification time.
#[derive(Clone, Debug)]
pub struct Signer {
    kind: SigningKey,
    product: Product,
    tcb: TcbVersion,
    hwid: Option<Vec<u8>>,
    key: PreparedKey,
    path: Vec<Validity>,
    subject: String,
}

impl Signer {
    /// Establishes trust in `signer` (a VCEK or VLEK) through `chain` (ASK/ASVK and
    /// optionally the ARK, in any order) or, where the chain lacks them, Veil's bundled
    /// intermediates, ending at the pinned ARK of the certificate's generation.
    pub fn establish(
        signer: &Certificate,
        chain: &[Certificate],
        roots: &AmdRoots,
        now: UnixTime,
    ) -> Result<Self, SnpError> {
        let subject = signer.subject().to_string();
        let kind = if has_cn(&subject, "SEV-VCEK") {
            SigningKey::Vcek
        } else if has_cn(&subject, "SEV-VLEK") {
            SigningKey::Vlek
        } else {
            return Err(SnpError::NotAnAmdSigner {
                subject,
                detail: "subject CN is neither SEV-VCEK nor SEV-VLEK".into(),
            });
        };
        let role = role_of(kind);
        let name = signer
            .extension(OID_PRODUCT_NAME)
            .and_then(|e| der_ia5(&e.value))
            .ok_or_else(|| SnpError::NotAnAmdSigner {
                subject: subject.clone(),
                detail: "no productName extension (1.3.6.1.4.1.3704.1.2)".into(),
            })?;
        let product = Product::from_cert_name(&name).ok_or_else(|| SnpError::NotAnAmdSigner {
            subject: subject.clone(),
            detail: format!("unknown product `{name}`"),
        })?;
        let roots = roots
            .product(product)
            .ok_or_else(|| SnpError::NotAnAmdSigner {
                subject: subject.clone(),
                detail: format!("no pinned root for {product}"),
            })?;

        // A root supplied with the chain must be the pinned ARK of this generation.
        for c in chain.iter().filter(|c| c.is_self_issued()) {
            if !is_pinned_ark(product, &c.fingerprint()) {
                return Err(SnpError::Certificate {
                    role: "ARK",
                    source: CertError::UntrustedRoot {
                        subject: c.subject().to_string(),
                        fingerprint: hex::encode(c.fingerprint()),
                        trusted: format!("the pinned ARK-{product}"),
                    },
                });
            }
        }
        // Supplied intermediates take precedence over bundled ones, so a bad supplied
        // certificate fails rather than being silently replaced.
        let issuer = chain
            .iter()
            .filter(|c| !c.is_self_issued())
            .chain(roots.intermediates.iter())
            .find(|c| signer.issued_by_name(c))
            .ok_or_else(|| SnpError::MissingIssuer {
                role,
                issuer: signer.issuer().to_string(),
            })?;
        let issuer_role = match kind {
            SigningKey::Vlek => "ASVK",
            _ => "ASK",
        };
        signer
            .check_validity(now)
            .map_err(|source| SnpError::Certificate { role, source })?;
        signer
            .verify_signed_by(issuer)
            .map_err(|source| SnpError::Certificate { role, source })?;
        verify_chain(&[issuer], std::slice::from_ref(&roots.ark), now).map_err(|source| {
            SnpError::Certificate {
                role: issuer_role,
                source,
            }
        })?;

        let spl = |oid: &str, what: &str| -> Result<u8, SnpError> {
            signer
                .extension(oid)
                .and_then(|e| der_small_uint(&e.value))
                .ok_or_else(|| SnpError::NotAnAmdSigner {
                    subject: subject.clone(),
                    detail: format!("missing or malformed {what} extension ({oid})"),
                })
        };
        let tcb = TcbVersion {
            fmc: match product {
                Product::Turin => Some(spl(OID_FMC_SPL, "fmcSPL")?),
                _ => None,
            },
            bootloader: spl(OID_BL_SPL, "blSPL")?,
            tee: spl(OID_TEE_SPL, "teeSPL")?,
            snp: spl(OID_SNP_SPL, "snpSPL")?,
            microcode: spl(OID_UCODE_SPL, "ucodeSPL")?,
        };
        let hwid = signer.extension(OID_HWID).map(|e| e.value.clone());
        if kind == SigningKey::Vcek {
            match &hwid {
                Some(h) if h.len() == product.hwid_len() => {}
                other => {
                    return Err(SnpError::NotAnAmdSigner {
                        subject,
                        detail: format!(
                            "hwID extension: expected {} bytes, found {}",
                            product.hwid_len(),
                            other
                                .as_ref()
                                .map_or("none".into(), |h| h.len().to_string())
                        ),
                    });
                }
            }
        }
        let key = signer
            .public_key()
            .map_err(|source| SnpError::Certificate { role, source })?;
        if key.kind() != KeyType::EcP384 {
            return Err(SnpError::NotAnAmdSigner {
                subject,
                detail: format!("expected an ECDSA P-384 key, found {}", key.kind()),
            });
        }
        let key = key
            .prepare(Scheme::EcdsaSha384, EcdsaEncoding::Fixed)
            .map_err(|source| SnpError::Signature { role, source })?;
        let validity = |role, c: &Certificate| Validity {
            role,
            subject: c.subject().to_string(),
            not_before: c.not_before(),
            not_after: c.not_after(),
        };
        Ok(Self {
            kind,
            product,
            tcb,
            hwid,
            key,
            path: vec![
                validity(role, signer),
                validity(issuer_role, issuer),
                validity("ARK", &roots.ark),
            ],
            subject,
        })
    }

    /// VCEK or VLEK.
    pub fn kind(&self) -> SigningKey {
        self.kind
    }

    /// The generation the certificate was issued for.
    pub fn product(&self) -> Product {
        self.product
    }

    /// The TCB the certificate was issued for.
    pub fn tcb(&self) -> TcbVersion {
        self.tcb
    }

    /// Verifies `report_bytes` as of `now` against this signer and `policy`.
    pub fn verify_report(
        &self,
        report_bytes: &[u8],
        policy: &SnpPolicy,
        now: UnixTime,
    ) -> Result<SnpClaims, SnpError> {
        let claims = self.authenticate(report_bytes, now)?;
        check_policy(&claims, policy)?;
        Ok(claims)
    }

    /// Establishes that `report_bytes` is a genuine report from this signer, valid as of
    /// `now`, with its TCB and chip bound to the certificate — without applying reference
    /// values. Use [`check_policy`] on the result, or [`Signer::verify_report`] for both.
    pub fn authenticate(&self, report_bytes: &[u8], now: UnixTime) -> Result<SnpClaims, SnpError> {
        let report = AttestationReport::parse(report_bytes)?;
        let role = role_of(self.kind);
        for v in &self.path {
            if now < v.not_before || now > v.not_after {
                return Err(SnpError::OutsideValidity {
                    role: v.role,
                    subject: v.subject.clone(),
                    not_before: v.not_before,
                    not_after: v.not_after,
                    now,
                });
            }
        }
        if report.signature_algo != SIG_ALGO_ECDSA_P384_SHA384 {
            return Err(SnpError::SignatureAlgorithm {
                found: report.signature_algo,
            });
        }
        if report.signing_key != self.kind {
            return Err(SnpError::SignerMismatch {
                report: report.signing_key,
                cert: self.kind,
            });
        }
        if let Some(p) = report.product()
            && p != self.product
        {
            return Err(SnpError::ProductMismatch {
                report: p,
                cert: self.product,
            });
        }
        let signed = report_bytes.get(..SIGNED_LEN).unwrap_or_default();
        self.key
            .verify(signed, &report.signature_fixed())
            .map_err(|source| SnpError::Signature { role, source })?;

        // The signature is genuine from here on: what follows are bindings and policy.
        let reported = TcbVersion::decode(report.reported_tcb.0, self.product);
        for ((component, cert), (_, rep)) in self.tcb.components().zip(reported.components()) {
            if cert != rep {
                return Err(SnpError::TcbMismatch {
                    component,
                    role,
                    cert,
                    report: rep,
                });
            }
        }
        if let Some(hwid) = &self.hwid
            && self.kind == SigningKey::Vcek
            && !report.mask_chip_key
        {
            let (head, tail) = report.chip_id.0.split_at(hwid.len().min(64));
            if head != hwid.as_slice() || tail.iter().any(|b| *b != 0) {
                return Err(SnpError::ChipIdMismatch {
                    cert: hex::encode(hwid),
                    report: report.chip_id.to_string(),
                });
            }
        }
        Ok(SnpClaims {
            product: self.product,
            signer: self.kind,
            signer_subject: self.subject.clone(),
            reported_tcb: reported,
            current_tcb: TcbVersion::decode(report.current_tcb.0, self.product),
            committed_tcb: TcbVersion::decode(report.committed_tcb.0, self.product),
            launch_tcb: TcbVersion::decode(report.launch_tcb.0, self.product),
            debug: report.policy.debug_allowed(),
            report_sha384: Bytes(Sha384::digest(report_bytes).into()),
            report,
        })
    }
}

/// Applies reference values to authenticated claims.
pub fn check_policy(claims: &SnpClaims, policy: &SnpPolicy) -> Result<(), PolicyViolation> {
    let report = &claims.report;
    let reported = &claims.reported_tcb;
    if report.policy.debug_allowed() && !policy.allow_debug {
        return Err(PolicyViolation::Debug {
            policy: report.policy.0,
        });
    }
    if let Some(expected) = policy.vmpl
        && report.vmpl != expected
    {
        return Err(PolicyViolation::Vmpl {
            expected,
            found: report.vmpl,
        });
    }
    if claims.signer == SigningKey::Vlek && !policy.allow_vlek {
        return Err(PolicyViolation::Vlek);
    }
    if !policy.products.is_empty() && !policy.products.contains(&claims.product) {
        return Err(PolicyViolation::Product {
            found: claims.product,
        });
    }
    if let Some((component, minimum, found)) = policy.min_tcb.shortfall(reported) {
        return Err(PolicyViolation::TcbTooLow {
            component,
            minimum,
            found,
        });
    }
    if let Some(minimum) = policy.min_guest_svn
        && report.guest_svn < minimum
    {
        return Err(PolicyViolation::GuestSvn {
            minimum,
            found: report.guest_svn,
        });
    }
    if !policy.measurements.is_empty() && !policy.measurements.contains(&report.measurement) {
        return Err(PolicyViolation::Measurement {
            found: report.measurement.to_string(),
            count: policy.measurements.len(),
        });
    }
    if !policy.id_key_digests.is_empty() && !policy.id_key_digests.contains(&report.id_key_digest) {
        return Err(PolicyViolation::IdKey {
            found: report.id_key_digest.to_string(),
            count: policy.id_key_digests.len(),
        });
    }
    if let Some(expected) = policy.host_data
        && expected != report.host_data
    {
        return Err(PolicyViolation::HostData {
            expected: expected.to_string(),
            found: report.host_data.to_string(),
        });
    }
    if let Some(expected) = &policy.report_data {
        check_report_data(expected, &report.report_data)?;
    }
    Ok(())
}

/// Compares an expected REPORT_DATA of up to 64 bytes with the field: the expected bytes
/// must be a prefix and every byte after them zero.
pub fn check_report_data(expected: &[u8], found: &Bytes<64>) -> Result<(), PolicyViolation> {
    if expected.len() > 64 {
        return Err(PolicyViolation::ReportDataTooLong {
            len: expected.len(),
        });
    }
    let mut want = [0u8; 64];
    for (w, e) in want.iter_mut().zip(expected) {
        *w = *e;
    }
    if want != found.0 {
        return Err(PolicyViolation::ReportData {
            expected: hex::encode(want),
            found: found.to_string(),
        });
    }
    Ok(())
}

/// What an accepted report establishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SnpClaims {
    /// Processor generation.
    pub product: Product,
    /// VCEK or VLEK.
    pub signer: SigningKey,
    /// Subject of the signing certificate.
    pub signer_subject: String,
    /// REPORTED_TCB, decoded (equal to the certificate's TCB).
    pub reported_tcb: TcbVersion,
    /// CURRENT_TCB, decoded.
    pub current_tcb: TcbVersion,
    /// COMMITTED_TCB, decoded.
    pub committed_tcb: TcbVersion,
    /// LAUNCH_TCB, decoded.
    pub launch_tcb: TcbVersion,
    /// Whether the guest policy allows debugging.
    pub debug: bool,
    /// SHA-384 of the whole report (identifies the evidence).
    pub report_sha384: Bytes<48>,
    /// Every field of the report.
    pub report: AttestationReport,
}

/// One-shot verification: establishes the signer and verifies one report.
pub fn verify(
    report_bytes: &[u8],
    signer: &Certificate,
    chain: &[Certificate],
    roots: &AmdRoots,
    policy: &SnpPolicy,
    now: UnixTime,
) -> Result<SnpClaims, SnpError> {
    Signer::establish(signer, chain, roots, now)?.verify_report(report_bytes, policy, now)
}

fn role_of(kind: SigningKey) -> &'static str {
    match kind {
        SigningKey::Vlek => "VLEK",
        _ => "VCEK",
    }
}

fn has_cn(subject: &str, cn: &str) -> bool {
    subject
        .split(", ")
        .any(|rdn| rdn.strip_prefix("CN=") == Some(cn))
}

/// Reads a DER IA5String (tag 0x16, short length).
fn der_ia5(v: &[u8]) -> Option<String> {
    match v {
        [0x16, len, rest @ ..] if usize::from(*len) == rest.len() && *len < 0x80 => {
            std::str::from_utf8(rest).ok().map(str::to_string)
        }
        _ => None,
    }
}

/// Reads a DER INTEGER in 0..=255.
fn der_small_uint(v: &[u8]) -> Option<u8> {
    match v {
        [0x02, 1, b] if *b < 0x80 => Some(*b),
        [0x02, 2, 0, b] if *b >= 0x80 => Some(*b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_helpers() {
        assert_eq!(der_small_uint(&[2, 1, 0x73]), Some(0x73));
        assert_eq!(der_small_uint(&[2, 2, 0, 0xd9]), Some(0xd9));
        assert_eq!(der_small_uint(&[2, 1, 0x80]), None);
        assert_eq!(der_small_uint(&[2, 2, 1, 0]), None);
        assert_eq!(der_ia5(b"\x16\x05Milan").as_deref(), Some("Milan"));
        assert_eq!(der_ia5(b"\x16\x06Milan"), None);
        assert!(has_cn("OU=Engineering, CN=SEV-VCEK", "SEV-VCEK"));
        assert!(!has_cn("OU=Engineering, CN=SEV-VCEKX", "SEV-VCEK"));
    }

    #[test]
    fn report_data_prefix_and_zeros() {
        let mut f = [0u8; 64];
        f[..2].copy_from_slice(&[1, 2]);
        let f = Bytes(f);
        check_report_data(&[1, 2], &f).unwrap();
        check_report_data(&[1, 2, 0], &f).unwrap();
        assert!(check_report_data(&[1], &f).is_err());
        assert!(check_report_data(&[0; 65], &f).is_err());
    }
}
