//! Azure CVM evidence as JSON, in the shapes Confidential Containers' attesters produce:
//! version 0 (byte arrays, PEM VCEK) and versions 1 and 2 (hex TPM quote, base64url reports).

use serde_json::Value;
use veil_attest_core::bytes::decode_hex;

use crate::error::AzureError;
use crate::hcl::b64url;

/// The vTPM quote as the evidence carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmQuoteParts {
    /// TPMS_ATTEST.
    pub message: Vec<u8>,
    /// Raw RSA signature.
    pub signature: Vec<u8>,
    /// SHA-256 PCR values 0..n.
    pub pcrs: Vec<Vec<u8>>,
}

/// Evidence of an Azure CVM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzureEvidence {
    /// Format version (0, 1 or 2).
    pub version: u64,
    /// vTPM quote.
    pub tpm_quote: TpmQuoteParts,
    /// HCL report.
    pub hcl_report: Vec<u8>,
    /// VCEK (DER or PEM), SNP evidence only.
    pub vcek: Option<Vec<u8>>,
    /// TD quote, TDX evidence only.
    pub td_quote: Option<Vec<u8>>,
}

type Decoder = fn(&Value, &str) -> Result<Vec<u8>, AzureError>;

fn bad(field: &str, expected: &str) -> AzureError {
    AzureError::Evidence {
        field: field.to_string(),
        expected: expected.to_string(),
    }
}

fn byte_array(v: &Value, field: &str) -> Result<Vec<u8>, AzureError> {
    v.as_array()
        .ok_or_else(|| bad(field, "an array of bytes"))?
        .iter()
        .map(|x| {
            x.as_u64()
                .and_then(|n| u8::try_from(n).ok())
                .ok_or_else(|| bad(field, "an array of bytes (0-255)"))
        })
        .collect()
}

fn hex_str(v: &Value, field: &str) -> Result<Vec<u8>, AzureError> {
    let s = v.as_str().ok_or_else(|| bad(field, "a hex string"))?;
    decode_hex(s).map_err(|_| bad(field, "a hex string"))
}

fn b64_str(v: &Value, field: &str) -> Result<Vec<u8>, AzureError> {
    let s = v.as_str().ok_or_else(|| bad(field, "a base64url string"))?;
    b64url(s).ok_or_else(|| bad(field, "a base64url string"))
}

fn get<'a>(v: &'a Value, key: &str) -> Result<&'a Value, AzureError> {
    v.get(key).ok_or_else(|| bad(key, "present"))
}

impl AzureEvidence {
    /// Parses SNP or TDX evidence JSON of version 0, 1 or 2.
    pub fn from_json(bytes: &[u8]) -> Result<Self, AzureError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| AzureError::Evidence {
            field: "document".into(),
            expected: format!("JSON ({e})"),
        })?;
        let version = match v.get("version") {
            None => 0,
            Some(x) => x
                .as_u64()
                .filter(|n| (1..=2).contains(n))
                .ok_or_else(|| bad("version", "1 or 2"))?,
        };
        let quote = v
            .get("tpm_quote")
            .or_else(|| v.get("quote"))
            .ok_or_else(|| bad("tpm_quote", "present"))?;
        // Version 0 writes binary fields as byte arrays, later versions as hex.
        let bytes_of: Decoder = if version == 0 { byte_array } else { hex_str };
        let pcrs = get(quote, "pcrs")?
            .as_array()
            .ok_or_else(|| bad("tpm_quote.pcrs", "an array"))?
            .iter()
            .map(|p| bytes_of(p, "tpm_quote.pcrs[]"))
            .collect::<Result<Vec<_>, _>>()?;
        if pcrs.len() > 32 || pcrs.iter().any(|p| p.len() != 32) {
            return Err(bad(
                "tpm_quote.pcrs",
                "at most 32 SHA-256 values of 32 bytes",
            ));
        }
        let tpm_quote = TpmQuoteParts {
            message: bytes_of(get(quote, "message")?, "tpm_quote.message")?,
            signature: bytes_of(get(quote, "signature")?, "tpm_quote.signature")?,
            pcrs,
        };
        let field = |k: &str| -> Result<Option<Vec<u8>>, AzureError> {
            match v.get(k) {
                None => Ok(None),
                Some(x) if version == 0 => {
                    if let Some(s) = x.as_str() {
                        Ok(Some(s.as_bytes().to_vec())) // PEM text (the v0 VCEK)
                    } else {
                        byte_array(x, k).map(Some)
                    }
                }
                Some(x) => b64_str(x, k).map(Some),
            }
        };
        let hcl_report = field("hcl_report")?
            .or(field("report")?)
            .ok_or_else(|| bad("hcl_report", "present"))?;
        Ok(Self {
            version,
            tpm_quote,
            hcl_report,
            vcek: field("vcek")?,
            td_quote: field("td_quote")?,
        })
    }
}
