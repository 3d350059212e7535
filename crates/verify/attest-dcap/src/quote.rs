//! Intel DCAP quotes: SGX v3, TDX v4 (TDX 1.0 body) and v5 (TDX 1.0/1.5 or SGX body), with
//! ECDSA P-256 attestation keys and QE certification data.

use serde::Serialize;
use veil_attest_core::{Bytes, Malformed, Reader};

const STRUCTURE: &str = "DCAP quote";
/// Header length.
pub const HEADER_LEN: usize = 48;
/// SGX REPORTBODY length.
pub const SGX_REPORT_LEN: usize = 384;
/// TDX 1.0 TD report body length.
pub const TD10_REPORT_LEN: usize = 584;
/// TDX 1.5 TD report body length.
pub const TD15_REPORT_LEN: usize = 648;
/// TEE type of SGX.
pub const TEE_SGX: u32 = 0x0000_0000;
/// TEE type of TDX.
pub const TEE_TDX: u32 = 0x0000_0081;
/// Attestation key type ECDSA-256-with-P-256.
pub const ATT_KEY_ECDSA_P256: u16 = 2;
/// Intel's QE vendor ID.
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9a, 0x72, 0x33, 0xf7, 0x9c, 0x4c, 0xa9, 0x94, 0x0a, 0x0d, 0xb3, 0x95, 0x7f, 0x06, 0x07,
];
/// Certification data type: PCK certificate chain (PEM).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type: QE report certification data.
pub const CERT_TYPE_QE_REPORT: u16 = 6;
const MAX_PCK_CHAIN: usize = 64 * 1024;

/// The quote header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Header {
    /// 3, 4 or 5.
    pub version: u16,
    /// Attestation key type (2 = ECDSA P-256).
    pub att_key_type: u16,
    /// TEE type (0 = SGX, 0x81 = TDX).
    pub tee_type: u32,
    /// QE SVN (v4+).
    pub qe_svn: u16,
    /// PCE SVN.
    pub pce_svn: u16,
    /// QE vendor.
    pub qe_vendor_id: Bytes<16>,
    /// User data (the first 16 bytes are the QE ID).
    pub user_data: Bytes<20>,
}

/// An SGX REPORTBODY (the enclave's, or the QE's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SgxReport {
    /// CPU SVN.
    pub cpu_svn: Bytes<16>,
    /// MISCSELECT.
    pub misc_select: u32,
    /// ISV extended product ID.
    pub isv_ext_prod_id: Bytes<16>,
    /// ATTRIBUTES (flags || xfrm).
    pub attributes: Bytes<16>,
    /// MRENCLAVE.
    pub mr_enclave: Bytes<32>,
    /// MRSIGNER.
    pub mr_signer: Bytes<32>,
    /// CONFIGID.
    pub config_id: Bytes<64>,
    /// ISVPRODID.
    pub isv_prod_id: u16,
    /// ISVSVN.
    pub isv_svn: u16,
    /// CONFIGSVN.
    pub config_svn: u16,
    /// ISV family ID.
    pub isv_family_id: Bytes<16>,
    /// REPORTDATA.
    pub report_data: Bytes<64>,
}

impl SgxReport {
    /// Parses a 384-byte REPORTBODY.
    pub fn parse(r: &mut Reader<'_>) -> Result<Self, Malformed> {
        let cpu_svn = Bytes(r.array("report.cpu_svn")?);
        let misc_select = r.u32_le("report.misc_select")?;
        r.skip(12, "report.reserved1")?;
        let isv_ext_prod_id = Bytes(r.array("report.isv_ext_prod_id")?);
        let attributes = Bytes(r.array("report.attributes")?);
        let mr_enclave = Bytes(r.array("report.mr_enclave")?);
        r.skip(32, "report.reserved2")?;
        let mr_signer = Bytes(r.array("report.mr_signer")?);
        r.skip(32, "report.reserved3")?;
        let config_id = Bytes(r.array("report.config_id")?);
        let isv_prod_id = r.u16_le("report.isv_prod_id")?;
        let isv_svn = r.u16_le("report.isv_svn")?;
        let config_svn = r.u16_le("report.config_svn")?;
        r.skip(42, "report.reserved4")?;
        let isv_family_id = Bytes(r.array("report.isv_family_id")?);
        let report_data = Bytes(r.array("report.report_data")?);
        Ok(Self {
            cpu_svn,
            misc_select,
            isv_ext_prod_id,
            attributes,
            mr_enclave,
            mr_signer,
            config_id,
            isv_prod_id,
            isv_svn,
            config_svn,
            isv_family_id,
            report_data,
        })
    }

    /// ATTRIBUTES.DEBUG.
    pub fn debug(&self) -> bool {
        self.attributes.0[0] & 0x02 != 0
    }
}

/// A TD report body (TDX 1.0, plus the TDX 1.5 fields when present).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TdReport {
    /// TEE_TCB_SVN.
    pub tee_tcb_svn: Bytes<16>,
    /// MRSEAM.
    pub mr_seam: Bytes<48>,
    /// MRSIGNERSEAM.
    pub mr_signer_seam: Bytes<48>,
    /// SEAMATTRIBUTES.
    pub seam_attributes: Bytes<8>,
    /// TDATTRIBUTES.
    pub td_attributes: Bytes<8>,
    /// XFAM.
    pub xfam: Bytes<8>,
    /// MRTD: the initial TD measurement.
    pub mr_td: Bytes<48>,
    /// MRCONFIGID.
    pub mr_config_id: Bytes<48>,
    /// MROWNER.
    pub mr_owner: Bytes<48>,
    /// MROWNERCONFIG.
    pub mr_owner_config: Bytes<48>,
    /// RTMR 0 to 3.
    pub rtmr: [Bytes<48>; 4],
    /// REPORTDATA.
    pub report_data: Bytes<64>,
    /// TEE_TCB_SVN2 (TDX 1.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee_tcb_svn2: Option<Bytes<16>>,
    /// MRSERVICETD (TDX 1.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mr_service_td: Option<Bytes<48>>,
}

impl TdReport {
    fn parse(r: &mut Reader<'_>, td15: bool) -> Result<Self, Malformed> {
        let tee_tcb_svn = Bytes(r.array("td_report.tee_tcb_svn")?);
        let mr_seam = Bytes(r.array("td_report.mr_seam")?);
        let mr_signer_seam = Bytes(r.array("td_report.mr_signer_seam")?);
        let seam_attributes = Bytes(r.array("td_report.seam_attributes")?);
        let td_attributes = Bytes(r.array("td_report.td_attributes")?);
        let xfam = Bytes(r.array("td_report.xfam")?);
        let mr_td = Bytes(r.array("td_report.mr_td")?);
        let mr_config_id = Bytes(r.array("td_report.mr_config_id")?);
        let mr_owner = Bytes(r.array("td_report.mr_owner")?);
        let mr_owner_config = Bytes(r.array("td_report.mr_owner_config")?);
        let rtmr = [
            Bytes(r.array("td_report.rtmr0")?),
            Bytes(r.array("td_report.rtmr1")?),
            Bytes(r.array("td_report.rtmr2")?),
            Bytes(r.array("td_report.rtmr3")?),
        ];
        let report_data = Bytes(r.array("td_report.report_data")?);
        let (tee_tcb_svn2, mr_service_td) = if td15 {
            (
                Some(Bytes(r.array("td_report.tee_tcb_svn2")?)),
                Some(Bytes(r.array("td_report.mr_service_td")?)),
            )
        } else {
            (None, None)
        };
        Ok(Self {
            tee_tcb_svn,
            mr_seam,
            mr_signer_seam,
            seam_attributes,
            td_attributes,
            xfam,
            mr_td,
            mr_config_id,
            mr_owner,
            mr_owner_config,
            rtmr,
            report_data,
            tee_tcb_svn2,
            mr_service_td,
        })
    }

    /// TDATTRIBUTES.DEBUG (bit 0).
    pub fn debug(&self) -> bool {
        self.td_attributes.0[0] & 0x01 != 0
    }
}

/// The attested body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// An SGX enclave report.
    Sgx(Box<SgxReport>),
    /// A TD report (1.0 or 1.5).
    Td(Box<TdReport>),
}

impl Body {
    /// REPORTDATA of the body.
    pub fn report_data(&self) -> &Bytes<64> {
        match self {
            Body::Sgx(r) => &r.report_data,
            Body::Td(r) => &r.report_data,
        }
    }
}

/// A parsed quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// Header.
    pub header: Header,
    /// The attested report.
    pub body: Body,
    /// Length of the signed part (header and body).
    #[serde(skip)]
    pub signed_len: usize,
    /// ECDSA signature (r || s) by the attestation key over the signed part.
    #[serde(skip)]
    pub signature: [u8; 64],
    /// The attestation key (x || y).
    pub attestation_key: Bytes<64>,
    /// The QE's report.
    pub qe_report: SgxReport,
    /// The raw QE report (signed by the PCK key).
    #[serde(skip)]
    pub qe_report_raw: Vec<u8>,
    /// Signature (r || s) over the QE report by the PCK key.
    #[serde(skip)]
    pub qe_report_signature: [u8; 64],
    /// QE authentication data.
    #[serde(skip)]
    pub qe_auth_data: Vec<u8>,
    /// The PCK certificate chain, PEM (leaf, intermediate CA, root).
    #[serde(skip)]
    pub pck_chain_pem: Vec<u8>,
}

impl Quote {
    /// Parses a quote. Bytes after the signature data are ignored (some producers pad).
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(STRUCTURE, bytes);
        let version = r.u16_le("header.version")?;
        if !(3..=5).contains(&version) {
            return Err(r.invalid("header.version", "3, 4 or 5", version.to_string()));
        }
        let att_key_type = r.u16_le("header.att_key_type")?;
        if att_key_type != ATT_KEY_ECDSA_P256 {
            return Err(r.invalid(
                "header.att_key_type",
                "2 (ECDSA-256-with-P-256)",
                att_key_type.to_string(),
            ));
        }
        let tee_type = r.u32_le("header.tee_type")?;
        let tee_ok = match version {
            3 => tee_type == TEE_SGX,
            _ => tee_type == TEE_SGX || tee_type == TEE_TDX,
        };
        if !tee_ok {
            return Err(r.invalid(
                "header.tee_type",
                if version == 3 {
                    "0 (SGX) in a v3 quote"
                } else {
                    "0 (SGX) or 0x81 (TDX)"
                },
                format!("{tee_type:#x}"),
            ));
        }
        let qe_svn = r.u16_le("header.qe_svn")?;
        let pce_svn = r.u16_le("header.pce_svn")?;
        let qe_vendor_id = Bytes(r.array("header.qe_vendor_id")?);
        let user_data = Bytes(r.array("header.user_data")?);
        let header = Header {
            version,
            att_key_type,
            tee_type,
            qe_svn,
            pce_svn,
            qe_vendor_id,
            user_data,
        };
        let body = if version == 5 {
            let ty = r.u16_le("body.type")?;
            let size = r.u32_le("body.size")?;
            let (expected, body_tee) = match ty {
                1 => (SGX_REPORT_LEN, TEE_SGX),
                2 => (TD10_REPORT_LEN, TEE_TDX),
                3 => (TD15_REPORT_LEN, TEE_TDX),
                other => {
                    return Err(r.invalid(
                        "body.type",
                        "1 (SGX), 2 (TDX 1.0) or 3 (TDX 1.5)",
                        other.to_string(),
                    ));
                }
            };
            if size as usize != expected {
                return Err(r.invalid(
                    "body.size",
                    format!("{expected} for type {ty}"),
                    size.to_string(),
                ));
            }
            if body_tee != tee_type {
                return Err(r.invalid(
                    "body.type",
                    "a body of the header's TEE type",
                    ty.to_string(),
                ));
            }
            match ty {
                1 => Body::Sgx(Box::new(SgxReport::parse(&mut r)?)),
                t => Body::Td(Box::new(TdReport::parse(&mut r, t == 3)?)),
            }
        } else if tee_type == TEE_TDX {
            Body::Td(Box::new(TdReport::parse(&mut r, false)?))
        } else {
            Body::Sgx(Box::new(SgxReport::parse(&mut r)?))
        };
        let signed_len = r.offset();
        let sig_len = r.u32_le("signature_data_len")? as usize;
        let sig_data = r.take(sig_len, "signature_data")?;
        let mut s = Reader::new("DCAP quote signature data", sig_data);
        let signature = s.array("signature")?;
        let attestation_key = Bytes(s.array("attestation_key")?);
        // v3 carries the QE report directly; v4/v5 wrap it in certification data type 6.
        let mut inner;
        let qe: &mut Reader<'_> = if version == 3 {
            &mut s
        } else {
            let ty = s.u16_le("certification_data.type")?;
            if ty != CERT_TYPE_QE_REPORT {
                return Err(s.invalid(
                    "certification_data.type",
                    "6 (QE report certification data)",
                    ty.to_string(),
                ));
            }
            let size = s.u32_le("certification_data.size")? as usize;
            inner = Reader::new(
                "QE report certification data",
                s.take(size, "certification_data")?,
            );
            &mut inner
        };
        let qe_report_raw = qe.take(SGX_REPORT_LEN, "qe_report")?.to_vec();
        let qe_report = SgxReport::parse(&mut Reader::new("QE report", &qe_report_raw))?;
        let qe_report_signature = qe.array("qe_report_signature")?;
        let auth_len = qe.u16_le("qe_auth_data.size")?;
        let qe_auth_data = qe.take(usize::from(auth_len), "qe_auth_data")?.to_vec();
        let ty = qe.u16_le("pck_certification_data.type")?;
        if ty != CERT_TYPE_PCK_CHAIN {
            return Err(qe.invalid(
                "pck_certification_data.type",
                "5 (PCK certificate chain)",
                ty.to_string(),
            ));
        }
        let size = qe.u32_le("pck_certification_data.size")? as usize;
        if size > MAX_PCK_CHAIN {
            return Err(qe.invalid(
                "pck_certification_data.size",
                format!("at most {MAX_PCK_CHAIN} bytes"),
                size.to_string(),
            ));
        }
        let pck_chain_pem = qe.take(size, "pck_certification_data")?.to_vec();
        Ok(Self {
            header,
            body,
            signed_len,
            signature,
            attestation_key,
            qe_report,
            qe_report_raw,
            qe_report_signature,
            qe_auth_data,
            pck_chain_pem,
        })
    }

    /// Whether this is a TDX quote.
    pub fn is_tdx(&self) -> bool {
        self.header.tee_type == TEE_TDX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_bad_header_fields() {
        let e = Quote::parse(&[9, 0]).unwrap_err();
        assert!(
            e.to_string()
                .contains("header.version` expected 3, 4 or 5, found 9"),
            "{e}"
        );
        let e = Quote::parse(&[4, 0, 3, 0]).unwrap_err();
        assert!(e.to_string().contains("att_key_type"), "{e}");
        let e = Quote::parse(&[3, 0, 2, 0, 0x81, 0, 0, 0]).unwrap_err();
        assert!(e.to_string().contains("tee_type"), "{e}");
        let e = Quote::parse(&[4, 0, 2, 0, 0x81, 0, 0, 0]).unwrap_err();
        assert!(matches!(e, Malformed::Truncated { .. }), "{e}");
    }
}
