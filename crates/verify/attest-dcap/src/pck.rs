//! The Intel SGX extension of PCK certificates (OID 1.2.840.113741.1.13.1): FMSPC, PCE ID,
//! and the platform's TCB (16 CPU SVN components and the PCE SVN).

use serde::Serialize;
use veil_attest_core::Bytes;
use veil_attest_core::x509::Certificate;
use x509_parser::der_parser::ber::{BerObject, BerObjectContent};
use x509_parser::der_parser::der::parse_der;

/// OID of the SGX extension.
pub const OID_SGX_EXTENSIONS: &str = "1.2.840.113741.1.13.1";

/// What a PCK certificate says about its platform.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PckInfo {
    /// Platform provisioning ID.
    pub ppid: Bytes<16>,
    /// CPU SVN components the PCK was issued for.
    pub cpu_svn: Bytes<16>,
    /// PCE SVN the PCK was issued for.
    pub pce_svn: u16,
    /// PCE ID.
    pub pce_id: Bytes<2>,
    /// Family-model-stepping-platform-custom SKU.
    pub fmspc: Bytes<6>,
    /// SGX type (0 standard, 1 scalable, 2 scalable with integrity).
    pub sgx_type: u64,
    /// Whether the PCK was issued by the Platform CA (multi-package platforms).
    pub platform_ca: bool,
}

fn oid_of(o: &BerObject<'_>) -> Option<String> {
    o.as_oid().ok().map(|o| o.to_id_string())
}

fn entries<'a>(o: &'a BerObject<'a>) -> Option<&'a [BerObject<'a>]> {
    match &o.content {
        BerObjectContent::Sequence(v) => Some(v.as_slice()),
        _ => None,
    }
}

fn fixed<const N: usize>(o: &BerObject<'_>) -> Option<[u8; N]> {
    o.as_slice().ok()?.try_into().ok()
}

fn small_uint(o: &BerObject<'_>) -> Option<u64> {
    match &o.content {
        BerObjectContent::Integer(_) | BerObjectContent::Enum(_) => o.as_u64().ok(),
        _ => None,
    }
}

/// Reads the SGX extension of a PCK certificate.
pub fn parse_pck(cert: &Certificate) -> Result<PckInfo, String> {
    let ext = cert
        .extension(OID_SGX_EXTENSIONS)
        .ok_or_else(|| format!("PCK certificate `{}` has no SGX extension", cert.subject()))?;
    let (rest, obj) = parse_der(&ext.value).map_err(|e| format!("SGX extension: {e}"))?;
    if !rest.is_empty() {
        return Err("SGX extension: trailing bytes".into());
    }
    let mut ppid = None;
    let mut pce_id = None;
    let mut fmspc = None;
    let mut sgx_type = None;
    let mut cpu_svn = [0u8; 16];
    let mut comps_seen = 0u32;
    let mut pce_svn = None;
    let mut cpu_svn_octets = None;
    for item in entries(&obj).ok_or("SGX extension: not a SEQUENCE")? {
        let [oid, value] = entries(item).ok_or("SGX extension: entry is not a SEQUENCE")? else {
            return Err("SGX extension: entry is not (OID, value)".into());
        };
        let oid = oid_of(oid).ok_or("SGX extension: entry without OID")?;
        let sub = oid.strip_prefix(OID_SGX_EXTENSIONS).unwrap_or_default();
        match sub {
            ".1" => ppid = fixed::<16>(value),
            ".3" => pce_id = fixed::<2>(value),
            ".4" => fmspc = fixed::<6>(value),
            ".5" => sgx_type = small_uint(value),
            ".2" => {
                for comp in entries(value).ok_or("SGX extension: TCB is not a SEQUENCE")? {
                    let [coid, cval] = entries(comp).ok_or("SGX extension: TCB entry")? else {
                        return Err("SGX extension: TCB entry is not (OID, value)".into());
                    };
                    let coid = oid_of(coid).ok_or("SGX extension: TCB entry without OID")?;
                    let idx: u32 = coid
                        .rsplit('.')
                        .next()
                        .and_then(|s| s.parse().ok())
                        .ok_or("SGX extension: TCB OID")?;
                    match idx {
                        1..=16 => {
                            let v = small_uint(cval)
                                .and_then(|v| u8::try_from(v).ok())
                                .ok_or("SGX extension: CPU SVN component out of range")?;
                            if let Some(slot) = cpu_svn.get_mut(idx as usize - 1) {
                                *slot = v;
                            }
                            comps_seen |= 1 << idx;
                        }
                        17 => {
                            pce_svn = small_uint(cval).and_then(|v| u16::try_from(v).ok());
                        }
                        18 => cpu_svn_octets = fixed::<16>(cval),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if comps_seen != 0x1fffe {
        return Err("SGX extension: TCB lacks some of the 16 CPU SVN components".into());
    }
    if let Some(oct) = cpu_svn_octets
        && oct != cpu_svn
    {
        return Err("SGX extension: CPUSVN disagrees with its components".into());
    }
    let missing = |what: &str| format!("SGX extension: missing or malformed {what}");
    Ok(PckInfo {
        ppid: Bytes(ppid.ok_or_else(|| missing("PPID"))?),
        cpu_svn: Bytes(cpu_svn),
        pce_svn: pce_svn.ok_or_else(|| missing("PCESVN"))?,
        pce_id: Bytes(pce_id.ok_or_else(|| missing("PCE-ID"))?),
        fmspc: Bytes(fmspc.ok_or_else(|| missing("FMSPC"))?),
        sgx_type: sgx_type.ok_or_else(|| missing("SGX Type"))?,
        platform_ca: cert.issuer().contains("Platform CA"),
    })
}
