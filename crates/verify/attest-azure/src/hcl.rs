//! The HCL report of an Azure confidential VM: a 32-byte header, the hardware report (an
//! SEV-SNP report, or a TDREPORT), and an IGVM request block whose variable data (JSON with
//! the vTPM's attestation key) is hashed into the hardware report's REPORTDATA.

use base64::Engine;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha384, Sha512};
use veil_attest_core::crypto::PublicKey;
use veil_attest_core::{Malformed, Reader};

const STRUCTURE: &str = "HCL report";
/// "HCLA", little-endian.
pub const HCL_SIGNATURE: u32 = 0x414c_4348;
/// Size of the hardware report area.
pub const HW_REPORT_AREA: usize = 1184;
/// Size of a TDREPORT.
pub const TD_REPORT_LEN: usize = 1024;
const MAX_VAR_DATA: u32 = 64 * 1024;

/// The kind of hardware report inside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HwReportType {
    /// AMD SEV-SNP attestation report.
    Snp,
    /// Intel TDX TDREPORT.
    Tdx,
}

/// How the variable data is hashed into REPORTDATA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HashType {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

/// A parsed HCL report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HclReport {
    /// Header version.
    pub version: u32,
    /// Kind of hardware report.
    pub report_type: HwReportType,
    /// The hardware report: 1184 bytes (SNP) or 1024 bytes (TDREPORT).
    pub hw_report: Vec<u8>,
    /// Hash of the variable data.
    pub hash_type: HashType,
    /// Variable data (JSON).
    pub var_data: Vec<u8>,
    /// The vTPM attestation key (`HCLAkPub`).
    pub ak: PublicKey,
    /// `user-data` from the variable data, if any.
    pub user_data: Option<String>,
    /// `vm-configuration` from the variable data.
    pub vm_configuration: serde_json::Value,
}

#[derive(Deserialize)]
struct VarData {
    keys: Vec<Jwk>,
    #[serde(rename = "vm-configuration", default)]
    vm_configuration: serde_json::Value,
    #[serde(rename = "user-data", default)]
    user_data: Option<String>,
}

#[derive(Deserialize)]
struct Jwk {
    kid: String,
    kty: String,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

/// Decodes base64url with or without padding.
pub fn b64url(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim().trim_end_matches('='))
        .ok()
}

impl HclReport {
    /// Parses an HCL report (trailing zero padding after the variable data is allowed).
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(STRUCTURE, bytes);
        let sig = r.u32_le("header.signature")?;
        if sig != HCL_SIGNATURE {
            return Err(r.invalid("header.signature", "\"HCLA\"", format!("{sig:#010x}")));
        }
        let version = r.u32_le("header.version")?;
        if !(1..=2).contains(&version) {
            return Err(r.invalid("header.version", "1 or 2", version.to_string()));
        }
        r.skip(4, "header.report_size")?;
        let request_type = r.u32_le("header.request_type")?;
        if request_type != 2 {
            return Err(r.invalid(
                "header.request_type",
                "2 (IGVM attestation)",
                request_type.to_string(),
            ));
        }
        r.skip(16, "header.status/reserved")?;
        let hw_area = r.take(HW_REPORT_AREA, "hw_report")?;
        let data_size = r.u32_le("igvm.data_size")?;
        r.skip(4, "igvm.version")?;
        let report_type = match r.u32_le("igvm.report_type")? {
            2 => HwReportType::Snp,
            4 => HwReportType::Tdx,
            other => {
                return Err(r.invalid("igvm.report_type", "2 (SNP) or 4 (TDX)", other.to_string()));
            }
        };
        let hash_type = match r.u32_le("igvm.hash_type")? {
            1 => HashType::Sha256,
            2 => HashType::Sha384,
            3 => HashType::Sha512,
            other => {
                return Err(r.invalid(
                    "igvm.hash_type",
                    "1, 2 or 3 (SHA-256/384/512)",
                    other.to_string(),
                ));
            }
        };
        let var_size = r.u32_le("igvm.variable_data_size")?;
        if var_size > MAX_VAR_DATA || data_size != var_size.saturating_add(20) {
            return Err(r.invalid(
                "igvm.variable_data_size",
                format!(
                    "at most {MAX_VAR_DATA} and data_size - 20 ({})",
                    data_size.saturating_sub(20)
                ),
                var_size.to_string(),
            ));
        }
        let var_data = r.take(var_size as usize, "igvm.variable_data")?.to_vec();
        let hw_report = match report_type {
            HwReportType::Snp => hw_area.to_vec(),
            HwReportType::Tdx => hw_area.get(..TD_REPORT_LEN).unwrap_or_default().to_vec(),
        };
        let v: VarData = serde_json::from_slice(&var_data)
            .map_err(|e| r.invalid("igvm.variable_data", "JSON with `keys`", e.to_string()))?;
        let jwk = v
            .keys
            .iter()
            .find(|k| k.kid == "HCLAkPub")
            .ok_or_else(|| r.invalid("variable_data.keys", "an `HCLAkPub` key", "none"))?;
        if jwk.kty != "RSA" {
            return Err(r.invalid("HCLAkPub.kty", "RSA", jwk.kty.clone()));
        }
        let n = jwk.n.as_deref().and_then(b64url);
        let e = jwk.e.as_deref().and_then(b64url);
        let (Some(n), Some(e)) = (n, e) else {
            return Err(r.invalid("HCLAkPub", "base64url `n` and `e`", "missing or invalid"));
        };
        if e.is_empty() || e.len() > 4 {
            return Err(r.invalid("HCLAkPub.e", "1 to 4 bytes", e.len().to_string()));
        }
        let exp = e.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let ak = PublicKey::rsa_components(&n, exp)
            .map_err(|err| r.invalid("HCLAkPub", "an RSA public key", err.to_string()))?;
        Ok(Self {
            version,
            report_type,
            hw_report,
            hash_type,
            var_data,
            ak,
            user_data: v.user_data,
            vm_configuration: v.vm_configuration,
        })
    }

    /// The digest of the variable data, which REPORTDATA must start with.
    pub fn var_data_digest(&self) -> Vec<u8> {
        match self.hash_type {
            HashType::Sha256 => Sha256::digest(&self.var_data).to_vec(),
            HashType::Sha384 => Sha384::digest(&self.var_data).to_vec(),
            HashType::Sha512 => Sha512::digest(&self.var_data).to_vec(),
        }
    }

    /// The REPORTDATA a hardware report must carry to bind this variable data.
    pub fn expected_report_data(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        for (o, d) in out.iter_mut().zip(self.var_data_digest()) {
            *o = d;
        }
        out
    }

    /// REPORTDATA of the TDREPORT (TDX reports only).
    pub fn td_report_data(&self) -> Option<[u8; 64]> {
        if self.report_type != HwReportType::Tdx {
            return None;
        }
        self.hw_report.get(128..192)?.try_into().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_other_magic_and_truncation() {
        let e = HclReport::parse(b"HCLB").unwrap_err();
        assert!(e.to_string().contains("header.signature"), "{e}");
        let mut b = b"HCLA".to_vec();
        b.extend(2u32.to_le_bytes());
        let e = HclReport::parse(&b).unwrap_err();
        assert!(matches!(e, Malformed::Truncated { .. }));
    }
}
