//! The SEV-SNP ATTESTATION_REPORT structure (SEV-SNP ABI specification, versions 2 to 5).

use serde::Serialize;
use veil_attest_core::{Bytes, Malformed, Reader};

use crate::tcb::Product;

/// Size of an attestation report.
pub const REPORT_LEN: usize = 0x4a0;
/// Bytes covered by the signature.
pub const SIGNED_LEN: usize = 0x2a0;
/// Report versions Veil accepts.
pub const SUPPORTED_VERSIONS: std::ops::RangeInclusive<u32> = 2..=5;
/// SIGNATURE_ALGO value for ECDSA P-384 with SHA-384.
pub const SIG_ALGO_ECDSA_P384_SHA384: u32 = 1;

const STRUCTURE: &str = "SNP attestation report";

/// Which key signed the report (KEY_INFO.SIGNING_KEY).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum SigningKey {
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key (cloud providers).
    Vlek,
    /// Not signed.
    None,
}

/// The guest policy the VM was launched with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct GuestPolicy(pub u64);

impl GuestPolicy {
    /// Bit 19: the hypervisor may debug the guest (and read its memory).
    pub fn debug_allowed(self) -> bool {
        self.0 & (1 << 19) != 0
    }
    /// Bit 18: a migration agent may be associated.
    pub fn migrate_ma_allowed(self) -> bool {
        self.0 & (1 << 18) != 0
    }
    /// Bit 16: simultaneous multithreading allowed.
    pub fn smt_allowed(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// Minimum ABI major.minor version.
    pub fn abi(self) -> (u8, u8) {
        (((self.0 >> 8) & 0xff) as u8, (self.0 & 0xff) as u8)
    }
}

/// Firmware version (major.minor, build).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
pub struct FirmwareVersion {
    /// Major.
    pub major: u8,
    /// Minor.
    pub minor: u8,
    /// Build.
    pub build: u8,
}

/// A parsed attestation report. Fields keep the evidence's bytes verbatim.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AttestationReport {
    /// Report format version (2 to 5).
    pub version: u32,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: GuestPolicy,
    /// Family ID from the ID block.
    pub family_id: Bytes<16>,
    /// Image ID from the ID block.
    pub image_id: Bytes<16>,
    /// VMPL the report was requested from.
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384/SHA-384).
    pub signature_algo: u32,
    /// CURRENT_TCB, raw.
    pub current_tcb: Bytes<8>,
    /// PLATFORM_INFO bits (SMT, TSME, ECC, ...).
    pub platform_info: u64,
    /// AUTHOR_KEY_EN (bit 0).
    pub author_key_en: bool,
    /// MASK_CHIP_KEY (bit 1): the chip key was masked, so chip_id is zero.
    pub mask_chip_key: bool,
    /// Key that signed the report.
    pub signing_key: SigningKey,
    /// Guest-provided data (the nonce binding).
    pub report_data: Bytes<64>,
    /// Launch measurement.
    pub measurement: Bytes<48>,
    /// Host-provided data.
    pub host_data: Bytes<32>,
    /// SHA-384 of the ID key.
    pub id_key_digest: Bytes<48>,
    /// SHA-384 of the author key.
    pub author_key_digest: Bytes<48>,
    /// Report ID.
    pub report_id: Bytes<32>,
    /// Report ID of the migration agent.
    pub report_id_ma: Bytes<32>,
    /// REPORTED_TCB, raw: the TCB the VCEK was derived from.
    pub reported_tcb: Bytes<8>,
    /// CPUID family, model, stepping (reports v3+; `None` in v2).
    pub cpuid: Option<(u8, u8, u8)>,
    /// Chip identifier (zero when masked).
    pub chip_id: Bytes<64>,
    /// COMMITTED_TCB, raw.
    pub committed_tcb: Bytes<8>,
    /// Current firmware version.
    pub current_version: FirmwareVersion,
    /// Committed firmware version.
    pub committed_version: FirmwareVersion,
    /// LAUNCH_TCB, raw.
    pub launch_tcb: Bytes<8>,
    /// LAUNCH_MIT_VECTOR (reports v5+).
    pub launch_mit_vector: Option<u64>,
    /// CURRENT_MIT_VECTOR (reports v5+).
    pub current_mit_vector: Option<u64>,
    /// Signature R, big-endian.
    #[serde(skip)]
    pub signature_r: [u8; 48],
    /// Signature S, big-endian.
    #[serde(skip)]
    pub signature_s: [u8; 48],
}

impl AttestationReport {
    /// Parses a 1184-byte report. Checks structure only (lengths, reserved encodings), not trust.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        if bytes.len() != REPORT_LEN {
            return Err(Malformed::invalid(
                STRUCTURE,
                "length",
                format!("{REPORT_LEN} bytes"),
                format!("{} bytes", bytes.len()),
            ));
        }
        let mut r = Reader::new(STRUCTURE, bytes);
        let version = r.u32_le("version")?;
        if !SUPPORTED_VERSIONS.contains(&version) {
            return Err(r.invalid("version", "2 to 5", version.to_string()));
        }
        let guest_svn = r.u32_le("guest_svn")?;
        let policy = GuestPolicy(r.u64_le("policy")?);
        let family_id = Bytes(r.array("family_id")?);
        let image_id = Bytes(r.array("image_id")?);
        let vmpl = r.u32_le("vmpl")?;
        let signature_algo = r.u32_le("signature_algo")?;
        let current_tcb = Bytes(r.array("current_tcb")?);
        let platform_info = r.u64_le("platform_info")?;
        let key_info = r.u32_le("key_info")?;
        let signing_key = match (key_info >> 2) & 0b111 {
            0 => SigningKey::Vcek,
            1 => SigningKey::Vlek,
            7 => SigningKey::None,
            other => {
                return Err(r.invalid(
                    "key_info.signing_key",
                    "0 (VCEK), 1 (VLEK) or 7 (none)",
                    other.to_string(),
                ));
            }
        };
        r.skip(4, "reserved0")?;
        let report_data = Bytes(r.array("report_data")?);
        let measurement = Bytes(r.array("measurement")?);
        let host_data = Bytes(r.array("host_data")?);
        let id_key_digest = Bytes(r.array("id_key_digest")?);
        let author_key_digest = Bytes(r.array("author_key_digest")?);
        let report_id = Bytes(r.array("report_id")?);
        let report_id_ma = Bytes(r.array("report_id_ma")?);
        let reported_tcb = Bytes(r.array("reported_tcb")?);
        let [family, model, stepping] = r.array::<3>("cpuid")?;
        let cpuid = (version >= 3).then_some((family, model, stepping));
        r.skip(0x1a0 - 0x18b, "reserved1")?;
        let chip_id = Bytes(r.array("chip_id")?);
        let committed_tcb = Bytes(r.array("committed_tcb")?);
        let [build, minor, major, _] = r.array::<4>("current_version")?;
        let current_version = FirmwareVersion {
            major,
            minor,
            build,
        };
        let [build, minor, major, _] = r.array::<4>("committed_version")?;
        let committed_version = FirmwareVersion {
            major,
            minor,
            build,
        };
        let launch_tcb = Bytes(r.array("launch_tcb")?);
        let launch_mit = r.u64_le("launch_mit_vector")?;
        let current_mit = r.u64_le("current_mit_vector")?;
        let (launch_mit_vector, current_mit_vector) = if version >= 5 {
            (Some(launch_mit), Some(current_mit))
        } else {
            (None, None)
        };
        r.skip(SIGNED_LEN - r.offset(), "reserved2")?;
        let signature_r = le_component(&mut r, "signature.r")?;
        let signature_s = le_component(&mut r, "signature.s")?;
        Ok(Self {
            version,
            guest_svn,
            policy,
            family_id,
            image_id,
            vmpl,
            signature_algo,
            current_tcb,
            platform_info,
            author_key_en: key_info & 1 != 0,
            mask_chip_key: key_info & 2 != 0,
            signing_key,
            report_data,
            measurement,
            host_data,
            id_key_digest,
            author_key_digest,
            report_id,
            report_id_ma,
            reported_tcb,
            cpuid,
            chip_id,
            committed_tcb,
            current_version,
            committed_version,
            launch_tcb,
            launch_mit_vector,
            current_mit_vector,
            signature_r,
            signature_s,
        })
    }

    /// The generation named by the report's CPUID fields (v3+ reports).
    pub fn product(&self) -> Option<Product> {
        self.cpuid.and_then(|(f, m, _)| Product::from_cpuid(f, m))
    }

    /// The signature as fixed big-endian `r || s`.
    pub fn signature_fixed(&self) -> [u8; 96] {
        let mut out = [0u8; 96];
        out[..48].copy_from_slice(&self.signature_r);
        out[48..].copy_from_slice(&self.signature_s);
        out
    }
}

/// Reads a 72-byte little-endian signature component into 48 big-endian bytes.
/// P-384 values fit in 48 bytes: the upper 24 must be zero.
fn le_component(r: &mut Reader<'_>, field: &'static str) -> Result<[u8; 48], Malformed> {
    let raw: [u8; 72] = r.array(field)?;
    let (low, high) = raw.split_at(48);
    if high.iter().any(|b| *b != 0) {
        return Err(r.invalid(
            field,
            "a P-384 value (bytes 48..72 zero)",
            "non-zero high bytes",
        ));
    }
    let mut out = [0u8; 48];
    for (o, b) in out.iter_mut().zip(low.iter().rev()) {
        *o = *b;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_wrong_length_with_sizes() {
        let e = AttestationReport::parse(&[0u8; 100]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "SNP attestation report: field `length` expected 1184 bytes, found 100 bytes"
        );
    }

    #[test]
    fn rejects_unknown_version() {
        let mut b = vec![0u8; REPORT_LEN];
        b[0] = 1;
        let e = AttestationReport::parse(&b).unwrap_err();
        assert!(
            e.to_string().contains("`version` expected 2 to 5, found 1"),
            "{e}"
        );
    }

    #[test]
    fn version_5_carries_mitigation_vectors_and_cpuid() {
        let mut b = vec![0u8; REPORT_LEN];
        b[0] = 5;
        b[0x188..0x18b].copy_from_slice(&[0x1a, 0x02, 0x01]);
        b[0x1f8] = 0x11;
        b[0x200] = 0x22;
        b[0x48] = 1 << 2; // signing key: VLEK
        let r = AttestationReport::parse(&b).unwrap();
        assert_eq!(r.launch_mit_vector, Some(0x11));
        assert_eq!(r.current_mit_vector, Some(0x22));
        assert_eq!(r.product(), Some(Product::Turin));
        assert_eq!(r.signing_key, SigningKey::Vlek);
        // The same bytes as a v2 report: no CPUID, no mitigation vectors.
        b[0] = 2;
        let r = AttestationReport::parse(&b).unwrap();
        assert_eq!((r.cpuid, r.launch_mit_vector), (None, None));
        // KEY_INFO signing key values other than 0, 1 and 7 are malformed.
        b[0x48] = 3 << 2;
        assert!(
            AttestationReport::parse(&b)
                .unwrap_err()
                .to_string()
                .contains("signing_key")
        );
    }

    #[test]
    fn rejects_oversized_signature_component() {
        let mut b = vec![0u8; REPORT_LEN];
        b[0] = 2;
        b[SIGNED_LEN + 60] = 1;
        let e = AttestationReport::parse(&b).unwrap_err();
        assert!(e.to_string().contains("signature.r"), "{e}");
    }
}
