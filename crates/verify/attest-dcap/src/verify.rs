//! Quote verification against verified collateral, with verified PCK chains cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};
use veil_attest_core::crypto::{EcdsaEncoding, KeyType, PreparedKey, PublicKey, Scheme};
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_attest_core::{Bytes, UnixTime};

use crate::collateral::{VerifiedCollateral, Window};
use crate::error::{DcapError, DcapPolicyViolation};
use crate::pck::{PckInfo, parse_pck};
use crate::policy::DcapPolicy;
use crate::quote::{Body, INTEL_QE_VENDOR_ID, Quote, TdReport};
use crate::tcb::{ModuleExpectations, TcbLevel, TcbStatus};

/// SHA-256 of the Intel SGX Root CA certificate (DER): the pinned anchor.
pub const INTEL_ROOT_SHA256: &str =
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";
const INTEL_ROOT_DER: &[u8] =
    include_bytes!("../../../../testvectors/roots/intel/Intel_SGX_Root_CA.der");
const PCK_CACHE_LIMIT: usize = 1024;

/// The bundled Intel SGX Root CA, checked against the pinned fingerprint.
pub fn intel_root() -> Result<Certificate, DcapError> {
    let c = Certificate::from_der(INTEL_ROOT_DER, "Intel SGX Root CA").map_err(|source| {
        DcapError::Certificate {
            role: "Intel root",
            source,
        }
    })?;
    if hex::encode(c.fingerprint()) != INTEL_ROOT_SHA256 {
        return Err(DcapError::Mismatch {
            field: "bundled Intel root fingerprint",
            expected: INTEL_ROOT_SHA256.into(),
            found: hex::encode(c.fingerprint()),
        });
    }
    Ok(c)
}

/// A PCK chain verified against the collateral's root and CRLs.
#[derive(Clone, Debug)]
struct VerifiedPck {
    info: PckInfo,
    key: PreparedKey,
    windows: Vec<Window>,
}

/// Verifies quotes against one set of verified collateral. Verified PCK chains are cached
/// (keyed by the SHA-256 of the chain as the quote carries it), so repeated quotes from a
/// platform cost two ECDSA verifications and a hash.
#[derive(Debug)]
pub struct QuoteVerifier {
    collateral: Arc<VerifiedCollateral>,
    pck_cache: Mutex<HashMap<[u8; 32], VerifiedPck>>,
}

/// The TCB verdict of a quote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TcbVerdict {
    /// Converged status.
    pub status: TcbStatus,
    /// Advisory IDs that apply.
    pub advisory_ids: Vec<String>,
    /// Status of the platform level.
    pub platform_status: TcbStatus,
    /// Date of the platform level.
    pub platform_tcb_date: String,
    /// Status of the QE level.
    pub qe_status: TcbStatus,
    /// Status of the TDX module level (TDX with a versioned module).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_status: Option<TcbStatus>,
    /// TCB evaluation data number of the collateral.
    pub tcb_evaluation_data_number: u32,
}

/// What an accepted quote establishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DcapClaims {
    /// `tdx` or `sgx`.
    pub tee: &'static str,
    /// The quote (header, body, QE report).
    pub quote: Quote,
    /// The platform, from the PCK certificate.
    pub pck: PckInfo,
    /// TCB verdict.
    pub tcb: TcbVerdict,
    /// SHA-256 of the whole quote.
    pub quote_sha256: Bytes<32>,
}

impl QuoteVerifier {
    /// Uses collateral already verified.
    pub fn new(collateral: VerifiedCollateral) -> Self {
        Self {
            collateral: Arc::new(collateral),
            pck_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The collateral in use.
    pub fn collateral(&self) -> &VerifiedCollateral {
        &self.collateral
    }

    /// Verifies `bytes` as of `now` and applies `policy`.
    pub fn verify(
        &self,
        bytes: &[u8],
        policy: &DcapPolicy,
        now: UnixTime,
    ) -> Result<DcapClaims, DcapError> {
        let claims = self.authenticate(bytes, now)?;
        check_policy(&claims, policy)?;
        Ok(claims)
    }

    /// Everything but the reference values: signatures, bindings, chains, TCB status.
    pub fn authenticate(&self, bytes: &[u8], now: UnixTime) -> Result<DcapClaims, DcapError> {
        let quote = Quote::parse(bytes)?;
        let col = &*self.collateral;
        col.check_time(now)?;
        if quote.header.qe_vendor_id.0 != INTEL_QE_VENDOR_ID {
            return Err(DcapError::Mismatch {
                field: "header.qe_vendor_id",
                expected: hex::encode(INTEL_QE_VENDOR_ID),
                found: quote.header.qe_vendor_id.to_string(),
            });
        }
        let pck = self.pck(&quote.pck_chain_pem, now)?;
        pck.windows.iter().try_for_each(|w| w.check(now))?;

        check_signatures(&quote, bytes, &pck.key)?;

        // From here the quote is genuine: match it against the collateral.
        let tdx = quote.is_tdx();
        let (tcb_id, qe_id) = if tdx { ("TDX", "TD_QE") } else { ("SGX", "QE") };
        expect_eq("TCB info id", tcb_id, &col.tcb_info.id)?;
        expect_eq("QE identity id", qe_id, &col.qe_identity.id)?;
        expect_eq(
            "FMSPC",
            &pck.info.fmspc.to_string(),
            &col.tcb_info.fmspc.to_ascii_lowercase(),
        )?;
        expect_eq(
            "PCE ID",
            &pck.info.pce_id.to_string(),
            &col.tcb_info.pce_id.to_ascii_lowercase(),
        )?;

        let qe_status = check_qe(&quote, col)?;
        let (platform, module_status) = match &quote.body {
            Body::Sgx(_) => (platform_level(col, &pck.info, None)?, None),
            Body::Td(td) => {
                let (level, module) = tdx_level(col, &pck.info, td, &td.tee_tcb_svn.0)?;
                check_module_identity(col, td)?;
                let mut level = level;
                if let Some(svn2) = &td.tee_tcb_svn2 {
                    let (current, _) = tdx_level(col, &pck.info, td, &svn2.0)?;
                    let current = current.tcb_status.converge(qe_status.0);
                    if current == TcbStatus::Revoked {
                        return Err(DcapError::Revoked);
                    }
                    level.tcb_status = level.tcb_status.converge(qe_status.0).with_current(current);
                } else {
                    level.tcb_status = level.tcb_status.converge(qe_status.0);
                }
                (level, module)
            }
        };
        let mut status = platform.tcb_status;
        if matches!(quote.body, Body::Sgx(_)) {
            status = status.converge(qe_status.0);
        }
        if status == TcbStatus::Revoked {
            return Err(DcapError::Revoked);
        }
        let mut advisory_ids = platform.advisory_ids.clone();
        for a in &qe_status.1 {
            if !advisory_ids.contains(a) {
                advisory_ids.push(a.clone());
            }
        }
        Ok(DcapClaims {
            tee: if tdx { "tdx" } else { "sgx" },
            tcb: TcbVerdict {
                status,
                advisory_ids,
                platform_status: platform.original_status,
                platform_tcb_date: platform.tcb_date.clone(),
                qe_status: qe_status.0,
                module_status,
                tcb_evaluation_data_number: col.tcb_info.tcb_evaluation_data_number,
            },
            pck: pck.info.clone(),
            quote_sha256: Bytes(Sha256::digest(bytes).into()),
            quote,
        })
    }

    fn pck(&self, chain_pem: &[u8], now: UnixTime) -> Result<VerifiedPck, DcapError> {
        let key: [u8; 32] = Sha256::digest(chain_pem).into();
        if let Ok(cache) = self.pck_cache.lock()
            && let Some(v) = cache.get(&key)
        {
            return Ok(v.clone());
        }
        let v = verify_pck(chain_pem, &self.collateral, now)?;
        if let Ok(mut cache) = self.pck_cache.lock() {
            if cache.len() >= PCK_CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(key, v.clone());
        }
        Ok(v)
    }
}

/// The QE report signature (by the PCK key), the QE's binding of the attestation key, and
/// the quote signature (by the attestation key).
fn check_signatures(quote: &Quote, bytes: &[u8], pck_key: &PreparedKey) -> Result<(), DcapError> {
    pck_key
        .verify(&quote.qe_report_raw, &quote.qe_report_signature)
        .map_err(DcapError::QeReportSignature)?;
    let mut expected = [0u8; 64];
    let digest: [u8; 32] = Sha256::new()
        .chain_update(quote.attestation_key.0)
        .chain_update(&quote.qe_auth_data)
        .finalize()
        .into();
    for (e, d) in expected.iter_mut().zip(digest) {
        *e = d;
    }
    if quote.qe_report.report_data.0 != expected {
        return Err(DcapError::QeBinding {
            expected: hex::encode(expected),
            found: quote.qe_report.report_data.to_string(),
        });
    }
    let ak = PublicKey::ec_xy(
        KeyType::EcP256,
        quote.attestation_key.0.get(..32).unwrap_or_default(),
        quote.attestation_key.0.get(32..).unwrap_or_default(),
    )
    .map_err(DcapError::QuoteSignature)?;
    ak.verify(
        Scheme::EcdsaSha256,
        EcdsaEncoding::Fixed,
        bytes.get(..quote.signed_len).unwrap_or_default(),
        &quote.signature,
    )
    .map_err(DcapError::QuoteSignature)?;

    Ok(())
}

/// Checks a quote's signatures and its PCK chain up to `root` as of `now`, without
/// collateral: no CRLs and no TCB status. For evidence whose collateral is unavailable; a
/// full verification needs [`QuoteVerifier`].
pub fn verify_signatures_only(
    bytes: &[u8],
    root: &Certificate,
    now: UnixTime,
) -> Result<(Quote, PckInfo), DcapError> {
    let quote = Quote::parse(bytes)?;
    if quote.header.qe_vendor_id.0 != INTEL_QE_VENDOR_ID {
        return Err(DcapError::Mismatch {
            field: "header.qe_vendor_id",
            expected: hex::encode(INTEL_QE_VENDOR_ID),
            found: quote.header.qe_vendor_id.to_string(),
        });
    }
    let chain = pck_chain(&quote.pck_chain_pem, root, now)?;
    let (info, key) = pck_identity(&chain)?;
    check_signatures(&quote, bytes, &key)?;
    Ok((quote, info))
}

/// Parses the PCK chain a quote carries and verifies it up to `root`.
fn pck_chain(pem: &[u8], root: &Certificate, now: UnixTime) -> Result<Vec<Certificate>, DcapError> {
    let role = "PCK certificate chain";
    let chain = Certificate::parse_many(pem, role)
        .map_err(|source| DcapError::Certificate { role, source })?;
    let path: Vec<&Certificate> = chain.iter().collect();
    verify_chain(&path, std::slice::from_ref(root), now)
        .map_err(|source| DcapError::Certificate { role, source })?;
    Ok(chain)
}

/// The platform described by the PCK (leaf of `chain`) and its key, ready for QE reports.
fn pck_identity(chain: &[Certificate]) -> Result<(PckInfo, PreparedKey), DcapError> {
    let leaf = chain.first().ok_or(DcapError::Collateral {
        what: "PCK certificate chain",
        detail: "empty".into(),
    })?;
    let info = parse_pck(leaf).map_err(|detail| DcapError::Collateral {
        what: "PCK certificate",
        detail,
    })?;
    Ok((info, pck_key(leaf)?))
}

fn pck_key(leaf: &Certificate) -> Result<PreparedKey, DcapError> {
    leaf.public_key()
        .and_then(|k| {
            k.prepare(Scheme::EcdsaSha256, EcdsaEncoding::Fixed)
                .map_err(
                    |e| veil_attest_core::x509::CertError::UnsupportedAlgorithm {
                        subject: leaf.subject().to_string(),
                        detail: e.to_string(),
                    },
                )
        })
        .map_err(|source| DcapError::Certificate {
            role: "PCK",
            source,
        })
}

fn expect_eq(field: &'static str, expected: &str, found: &str) -> Result<(), DcapError> {
    if expected == found {
        Ok(())
    } else {
        Err(DcapError::Mismatch {
            field,
            expected: expected.into(),
            found: found.into(),
        })
    }
}

fn verify_pck(
    chain_pem: &[u8],
    col: &VerifiedCollateral,
    now: UnixTime,
) -> Result<VerifiedPck, DcapError> {
    let chain = pck_chain(chain_pem, &col.root, now)?;
    let (info, key) = pck_identity(&chain)?;
    let leaf = chain.first().ok_or(DcapError::Collateral {
        what: "PCK certificate chain",
        detail: "empty".into(),
    })?;
    // The PCK's issuer must be the CA whose CRL the collateral carries.
    let ca = chain.get(1).ok_or(DcapError::Collateral {
        what: "PCK certificate chain",
        detail: "no PCK CA certificate after the PCK".into(),
    })?;
    if ca.der() != col.pck_ca.der() {
        return Err(DcapError::Mismatch {
            field: "PCK CA",
            expected: format!("`{}` (issuer of the PCK CRL)", col.pck_ca.subject()),
            found: format!("`{}`", ca.subject()),
        });
    }
    col.pck_crl
        .check_not_revoked(leaf)
        .map_err(|source| DcapError::Certificate {
            role: "PCK",
            source,
        })?;
    col.root_crl
        .check_not_revoked(ca)
        .map_err(|source| DcapError::Certificate {
            role: "PCK CA",
            source,
        })?;
    Ok(VerifiedPck {
        info,
        key,
        windows: vec![Window::of_cert("PCK", leaf), Window::of_cert("PCK CA", ca)],
    })
}

/// Checks the QE report against the QE identity; returns the QE level's status and advisories.
fn check_qe(
    quote: &Quote,
    col: &VerifiedCollateral,
) -> Result<(TcbStatus, Vec<String>), DcapError> {
    let exp = col
        .qe_identity
        .expectations()
        .map_err(|detail| DcapError::Collateral {
            what: "QE identity",
            detail,
        })?;
    let qe = &quote.qe_report;
    if qe.mr_signer.0 != exp.mrsigner {
        return Err(DcapError::QeIdentity {
            field: "MRSIGNER",
            expected: hex::encode(exp.mrsigner),
            found: qe.mr_signer.to_string(),
        });
    }
    if qe.isv_prod_id != col.qe_identity.isvprodid {
        return Err(DcapError::QeIdentity {
            field: "ISVPRODID",
            expected: col.qe_identity.isvprodid.to_string(),
            found: qe.isv_prod_id.to_string(),
        });
    }
    if qe.misc_select & exp.miscselect_mask != exp.miscselect & exp.miscselect_mask {
        return Err(DcapError::QeIdentity {
            field: "MISCSELECT",
            expected: format!(
                "{:08x} under mask {:08x}",
                exp.miscselect, exp.miscselect_mask
            ),
            found: format!("{:08x}", qe.misc_select),
        });
    }
    let masked = |a: &[u8; 16]| {
        let mut out = [0u8; 16];
        for ((o, x), m) in out.iter_mut().zip(a).zip(&exp.attributes_mask) {
            *o = x & m;
        }
        out
    };
    if masked(&qe.attributes.0) != masked(&exp.attributes) {
        return Err(DcapError::QeIdentity {
            field: "ATTRIBUTES",
            expected: format!(
                "{} under mask {}",
                hex::encode(exp.attributes),
                hex::encode(exp.attributes_mask)
            ),
            found: qe.attributes.to_string(),
        });
    }
    if qe.debug() {
        return Err(DcapError::QeIdentity {
            field: "ATTRIBUTES.DEBUG",
            expected: "a production QE".into(),
            found: "a debug QE".into(),
        });
    }
    let level = col
        .qe_identity
        .tcb_levels
        .iter()
        .find(|l| qe.isv_svn >= l.tcb.isvsvn)
        .ok_or_else(|| DcapError::NoTcbLevel {
            what: "QE",
            detail: format!("QE ISVSVN {} is below every level", qe.isv_svn),
        })?;
    Ok((level.tcb_status, level.advisory_ids.clone()))
}

struct Level {
    tcb_status: TcbStatus,
    original_status: TcbStatus,
    advisory_ids: Vec<String>,
    tcb_date: String,
}

fn level_of(l: &TcbLevel) -> Level {
    Level {
        tcb_status: l.tcb_status,
        original_status: l.tcb_status,
        advisory_ids: l.advisory_ids.clone(),
        tcb_date: l.tcb_date.clone(),
    }
}

fn platform_level(
    col: &VerifiedCollateral,
    pck: &PckInfo,
    tee_tcb_svn: Option<&[u8; 16]>,
) -> Result<Level, DcapError> {
    col.tcb_info
        .match_level(&pck.cpu_svn.0, pck.pce_svn, tee_tcb_svn)
        .map(level_of)
        .map_err(|e| DcapError::NoTcbLevel {
            what: "platform",
            detail: e
                .first_shortfall
                .unwrap_or_else(|| "the TCB info has no levels".into()),
        })
}

/// The platform level for a TEE_TCB_SVN, converged with its TDX module level.
fn tdx_level(
    col: &VerifiedCollateral,
    pck: &PckInfo,
    _td: &TdReport,
    tee_tcb_svn: &[u8; 16],
) -> Result<(Level, Option<TcbStatus>), DcapError> {
    let mut level = platform_level(col, pck, Some(tee_tcb_svn))?;
    let Some(identity) = col
        .tcb_info
        .module_identity(tee_tcb_svn)
        .map_err(DcapError::TdxModule)?
    else {
        return Ok((level, None));
    };
    let module = identity
        .tcb_levels
        .iter()
        .find(|l| u16::from(tee_tcb_svn[0]) >= l.tcb.isvsvn)
        .ok_or_else(|| DcapError::NoTcbLevel {
            what: "TDX module",
            detail: format!(
                "module {} ISVSVN {} is below every level",
                identity.id, tee_tcb_svn[0]
            ),
        })?;
    level.tcb_status = level.tcb_status.converge(module.tcb_status);
    for a in &module.advisory_ids {
        if !level.advisory_ids.contains(a) {
            level.advisory_ids.push(a.clone());
        }
    }
    Ok((level, Some(module.tcb_status)))
}

fn check_module_identity(col: &VerifiedCollateral, td: &TdReport) -> Result<(), DcapError> {
    let ti = &col.tcb_info;
    let exp = match ti
        .module_identity(&td.tee_tcb_svn.0)
        .map_err(DcapError::TdxModule)?
    {
        Some(m) => ModuleExpectations::decode(&m.mrsigner, &m.attributes, &m.attributes_mask),
        None => match &ti.tdx_module {
            Some(m) => ModuleExpectations::decode(&m.mrsigner, &m.attributes, &m.attributes_mask),
            None => return Err(DcapError::TdxModule("TCB info has no tdxModule".into())),
        },
    }
    .map_err(|detail| DcapError::Collateral {
        what: "TCB info tdxModule",
        detail,
    })?;
    if td.mr_signer_seam.0 != exp.mrsigner {
        return Err(DcapError::TdxModule(format!(
            "MRSIGNERSEAM: expected {}, found {}",
            hex::encode(exp.mrsigner),
            td.mr_signer_seam
        )));
    }
    for ((a, e), m) in td
        .seam_attributes
        .0
        .iter()
        .zip(&exp.attributes)
        .zip(&exp.attributes_mask)
    {
        if a & m != e & m || a & !m != 0 {
            return Err(DcapError::TdxModule(format!(
                "SEAMATTRIBUTES: expected {} under mask {}, found {}",
                hex::encode(exp.attributes),
                hex::encode(exp.attributes_mask),
                td.seam_attributes
            )));
        }
    }
    Ok(())
}

/// Applies reference values to authenticated claims.
pub fn check_policy(c: &DcapClaims, p: &DcapPolicy) -> Result<(), DcapPolicyViolation> {
    if !p.accepted_statuses.contains(&c.tcb.status) {
        return Err(DcapPolicyViolation::Status {
            status: c.tcb.status,
            accepted: p
                .accepted_statuses
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            advisories: if c.tcb.advisory_ids.is_empty() {
                "none".into()
            } else {
                c.tcb.advisory_ids.join(", ")
            },
        });
    }
    if let Some(a) = c
        .tcb
        .advisory_ids
        .iter()
        .find(|a| p.rejected_advisories.contains(a))
    {
        return Err(DcapPolicyViolation::Advisory(a.clone()));
    }
    let one_of = |field: &str, found: String, accepted: Vec<String>| {
        if accepted.is_empty() || accepted.contains(&found) {
            Ok(())
        } else {
            Err(DcapPolicyViolation::Measurement {
                field: field.to_string(),
                found,
                count: accepted.len(),
            })
        }
    };
    let equal = |field: &'static str, found: String, expected: Option<String>| match expected {
        Some(e) if e != found => Err(DcapPolicyViolation::Value {
            field,
            expected: e,
            found,
        }),
        _ => Ok(()),
    };
    match &c.quote.body {
        Body::Td(td) => {
            if td.debug() && !p.allow_debug {
                return Err(DcapPolicyViolation::Debug("TD"));
            }
            one_of("mr_td", td.mr_td.to_string(), strings(&p.mr_td))?;
            for (i, accepted) in &p.rtmr {
                let found = td
                    .rtmr
                    .get(usize::from(*i))
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                one_of(&format!("rtmr{i}"), found, strings(accepted))?;
            }
            equal(
                "mr_config_id",
                td.mr_config_id.to_string(),
                p.mr_config_id.map(|v| v.to_string()),
            )?;
            equal(
                "mr_owner",
                td.mr_owner.to_string(),
                p.mr_owner.map(|v| v.to_string()),
            )?;
            equal(
                "mr_owner_config",
                td.mr_owner_config.to_string(),
                p.mr_owner_config.map(|v| v.to_string()),
            )?;
        }
        Body::Sgx(r) => {
            if r.debug() && !p.allow_debug {
                return Err(DcapPolicyViolation::Debug("enclave"));
            }
            one_of(
                "mr_enclave",
                r.mr_enclave.to_string(),
                strings(&p.mr_enclave),
            )?;
            one_of("mr_signer", r.mr_signer.to_string(), strings(&p.mr_signer))?;
            equal(
                "isv_prod_id",
                r.isv_prod_id.to_string(),
                p.isv_prod_id.map(|v| v.to_string()),
            )?;
            if let Some(min) = p.min_isv_svn
                && r.isv_svn < min
            {
                return Err(DcapPolicyViolation::Value {
                    field: "isv_svn",
                    expected: format!("at least {min}"),
                    found: r.isv_svn.to_string(),
                });
            }
        }
    }
    if let Some(expected) = &p.report_data {
        if expected.0.len() > 64 {
            return Err(DcapPolicyViolation::ReportDataTooLong(expected.0.len()));
        }
        let mut want = [0u8; 64];
        for (w, e) in want.iter_mut().zip(&expected.0) {
            *w = *e;
        }
        let found = c.quote.body.report_data();
        if found.0 != want {
            return Err(DcapPolicyViolation::Value {
                field: "report_data",
                expected: hex::encode(want),
                found: found.to_string(),
            });
        }
    }
    Ok(())
}

fn strings<const N: usize>(v: &[Bytes<N>]) -> Vec<String> {
    v.iter().map(|b| b.to_string()).collect()
}
