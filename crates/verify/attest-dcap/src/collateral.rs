//! Collateral: TCB info and QE identity (signed JSON), CRLs and their issuer chains, in the
//! two forms Intel's services and tools hand them out, and their verification.

use serde::Deserialize;
use serde_json::value::RawValue;
use veil_attest_core::UnixTime;
use veil_attest_core::bytes::decode_hex;
use veil_attest_core::crypto::{EcdsaEncoding, Scheme};
use veil_attest_core::x509::{Certificate, Crl, looks_like_pem, verify_chain};

use crate::error::DcapError;
use crate::tcb::{QeIdentity, TcbInfo};

/// A JSON document as signed, with its signature and the signer's chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedJson {
    /// The exact signed text.
    pub body: String,
    /// ECDSA P-256 signature, `r || s`.
    pub signature: Vec<u8>,
    /// Issuer chain, PEM (TCB signing certificate, root).
    pub issuer_chain: Vec<u8>,
}

/// Unverified collateral for one quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collateral {
    /// TCB info for the platform's FMSPC.
    pub tcb_info: SignedJson,
    /// QE identity.
    pub qe_identity: SignedJson,
    /// CRL of the root CA (DER).
    pub root_crl: Vec<u8>,
    /// CRL of the PCK CA (DER).
    pub pck_crl: Vec<u8>,
    /// Issuer chain of the PCK CRL, PEM (PCK CA, root).
    pub pck_crl_issuer_chain: Vec<u8>,
}

#[derive(Deserialize)]
struct QvlJson {
    pck_crl_issuer_chain: String,
    root_ca_crl: Bytesish,
    pck_crl: Bytesish,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: Bytesish,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: Bytesish,
}

/// A binary field given as hex text or as a JSON array of bytes.
#[derive(Deserialize)]
#[serde(untagged)]
enum Bytesish {
    Hex(String),
    Array(Vec<u8>),
}

impl Bytesish {
    fn decode(self, what: &'static str) -> Result<Vec<u8>, DcapError> {
        match self {
            Bytesish::Array(v) => Ok(v),
            Bytesish::Hex(s) => decode_hex(&s).map_err(|e| DcapError::Collateral {
                what,
                detail: e.to_string(),
            }),
        }
    }
}

fn binary(bytes: &[u8], what: &'static str) -> Result<Vec<u8>, DcapError> {
    // DER, PEM, or hex text.
    if looks_like_pem(bytes) {
        return Ok(bytes.to_vec());
    }
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes).map_err(|_| DcapError::Collateral {
        what,
        detail: "neither DER, PEM nor hex".into(),
    })?;
    decode_hex(text).map_err(|e| DcapError::Collateral {
        what,
        detail: e.to_string(),
    })
}

impl Collateral {
    /// Reads the single-document JSON form (dcap-qvl's `QuoteCollateralV3`): chains as PEM
    /// strings, CRLs and signatures as hex, TCB info and QE identity as their signed text.
    pub fn from_json(bytes: &[u8]) -> Result<Self, DcapError> {
        let j: QvlJson = serde_json::from_slice(bytes).map_err(|e| DcapError::Collateral {
            what: "JSON document",
            detail: e.to_string(),
        })?;
        Ok(Self {
            tcb_info: SignedJson {
                body: j.tcb_info,
                signature: j.tcb_info_signature.decode("tcb_info_signature")?,
                issuer_chain: j.tcb_info_issuer_chain.into_bytes(),
            },
            qe_identity: SignedJson {
                body: j.qe_identity,
                signature: j.qe_identity_signature.decode("qe_identity_signature")?,
                issuer_chain: j.qe_identity_issuer_chain.into_bytes(),
            },
            root_crl: j.root_ca_crl.decode("root_ca_crl")?,
            pck_crl: j.pck_crl.decode("pck_crl")?,
            pck_crl_issuer_chain: j.pck_crl_issuer_chain.into_bytes(),
        })
    }

    /// Builds collateral from Intel PCS responses: the TCB info and QE identity response
    /// bodies (`{"tcbInfo": {...}, "signature": "..."}`, `{"enclaveIdentity": ...}`), the
    /// issuer-chain headers as PEM, and the CRLs (DER, PEM or hex).
    pub fn from_pcs(files: &PcsFiles<'_>) -> Result<Self, DcapError> {
        Ok(Self {
            tcb_info: pcs_signed(files.tcb_info, "tcbInfo", files.tcb_info_issuer_chain)?,
            qe_identity: pcs_signed(
                files.qe_identity,
                "enclaveIdentity",
                files.qe_identity_issuer_chain,
            )?,
            root_crl: binary(files.root_crl, "root CA CRL")?,
            pck_crl: binary(files.pck_crl, "PCK CRL")?,
            pck_crl_issuer_chain: files.pck_crl_issuer_chain.to_vec(),
        })
    }
}

/// The files of a PCS collateral directory.
#[derive(Clone, Copy, Debug)]
pub struct PcsFiles<'a> {
    /// `tcb_info.json`.
    pub tcb_info: &'a [u8],
    /// `tcb_info_issuer_chain.pem`.
    pub tcb_info_issuer_chain: &'a [u8],
    /// `qe_identity.json`.
    pub qe_identity: &'a [u8],
    /// `qe_identity_issuer_chain.pem`.
    pub qe_identity_issuer_chain: &'a [u8],
    /// `pck_crl.der`.
    pub pck_crl: &'a [u8],
    /// `pck_crl_issuer_chain.pem`.
    pub pck_crl_issuer_chain: &'a [u8],
    /// `root_crl.der`.
    pub root_crl: &'a [u8],
}

fn pcs_signed(body: &[u8], key: &'static str, chain: &[u8]) -> Result<SignedJson, DcapError> {
    #[derive(Deserialize)]
    struct Resp<'a> {
        #[serde(borrow, rename = "tcbInfo")]
        tcb_info: Option<&'a RawValue>,
        #[serde(borrow, rename = "enclaveIdentity")]
        enclave_identity: Option<&'a RawValue>,
        signature: String,
    }
    let r: Resp<'_> = serde_json::from_slice(body).map_err(|e| DcapError::Collateral {
        what: key,
        detail: e.to_string(),
    })?;
    let raw = match key {
        "tcbInfo" => r.tcb_info,
        _ => r.enclave_identity,
    }
    .ok_or_else(|| DcapError::Collateral {
        what: key,
        detail: format!("no `{key}` member"),
    })?;
    Ok(SignedJson {
        body: raw.get().to_string(),
        signature: decode_hex(&r.signature).map_err(|e| DcapError::Collateral {
            what: key,
            detail: format!("signature: {e}"),
        })?,
        issuer_chain: chain.to_vec(),
    })
}

/// Collateral whose signatures, chains and CRLs have been verified against the Intel root.
/// Signatures do not depend on time; [`VerifiedCollateral::check_time`] re-checks the
/// validity window for each use.
#[derive(Clone, Debug)]
pub struct VerifiedCollateral {
    /// TCB info, levels sorted as QVL sorts them.
    pub tcb_info: TcbInfo,
    /// QE identity.
    pub qe_identity: QeIdentity,
    /// The PCK CA that issued the PCK CRL.
    pub pck_ca: Certificate,
    /// PCK CRL.
    pub pck_crl: Crl,
    /// Root CRL.
    pub root_crl: Crl,
    /// The Intel root.
    pub root: Certificate,
    windows: Vec<Window>,
}

/// A validity period that must contain the verification time.
#[derive(Clone, Debug)]
pub(crate) struct Window {
    pub(crate) what: &'static str,
    pub(crate) from: UnixTime,
    pub(crate) until: UnixTime,
    pub(crate) is_cert: Option<String>,
}

impl Window {
    pub(crate) fn of_cert(role: &'static str, c: &Certificate) -> Self {
        Self {
            what: role,
            from: c.not_before(),
            until: c.not_after(),
            is_cert: Some(c.subject().to_string()),
        }
    }

    pub(crate) fn check(&self, now: UnixTime) -> Result<(), DcapError> {
        if now >= self.from && now <= self.until {
            return Ok(());
        }
        Err(match &self.is_cert {
            Some(subject) => DcapError::Certificate {
                role: self.what,
                source: if now < self.from {
                    veil_attest_core::x509::CertError::NotYetValid {
                        subject: subject.clone(),
                        not_before: self.from,
                        now,
                    }
                } else {
                    veil_attest_core::x509::CertError::Expired {
                        subject: subject.clone(),
                        not_after: self.until,
                        now,
                    }
                },
            },
            None => DcapError::CollateralStale {
                what: self.what,
                issue_date: self.from,
                next_update: self.until,
                now,
            },
        })
    }
}

fn certs(pem: &[u8], role: &'static str) -> Result<Vec<Certificate>, DcapError> {
    Certificate::parse_many(pem, role).map_err(|source| DcapError::Certificate { role, source })
}

fn rfc3339(s: &str, what: &'static str) -> Result<UnixTime, DcapError> {
    UnixTime::parse_rfc3339(s).map_err(|e| DcapError::Collateral {
        what,
        detail: e.to_string(),
    })
}

/// Verifies a chain given as PEM up to `root`, and that none of its CAs is on the root CRL.
fn verify_issuer_chain(
    pem: &[u8],
    role: &'static str,
    root: &Certificate,
    root_crl: &Crl,
    now: UnixTime,
    windows: &mut Vec<Window>,
) -> Result<Certificate, DcapError> {
    let chain = certs(pem, role)?;
    let leaf = chain.first().ok_or_else(|| DcapError::Collateral {
        what: role,
        detail: "empty certificate chain".into(),
    })?;
    let path: Vec<&Certificate> = chain.iter().collect();
    verify_chain(&path, std::slice::from_ref(root), now)
        .map_err(|source| DcapError::Certificate { role, source })?;
    for c in chain.iter().filter(|c| c.der() != root.der()) {
        root_crl
            .check_not_revoked(c)
            .map_err(|source| DcapError::Certificate { role, source })?;
        windows.push(Window::of_cert(role, c));
    }
    Ok(leaf.clone())
}

fn verify_signed_json(
    doc: &SignedJson,
    what: &'static str,
    signer: &Certificate,
) -> Result<(), DcapError> {
    let key = signer
        .public_key()
        .map_err(|source| DcapError::Certificate {
            role: "TCB signing",
            source,
        })?;
    key.verify(
        Scheme::EcdsaSha256,
        EcdsaEncoding::Fixed,
        doc.body.as_bytes(),
        &doc.signature,
    )
    .map_err(|source| DcapError::CollateralSignature { what, source })
}

impl VerifiedCollateral {
    /// Verifies every signature, chain and CRL of `c` up to the pinned `root`, as of `now`.
    pub fn verify(c: &Collateral, root: &Certificate, now: UnixTime) -> Result<Self, DcapError> {
        let mut windows = vec![Window::of_cert("Intel root", root)];
        let root_crl =
            Crl::parse(&c.root_crl, "root CA CRL").map_err(|source| DcapError::Certificate {
                role: "root CA CRL",
                source,
            })?;
        root_crl
            .verify_issued_by(root)
            .and_then(|()| root_crl.check_time(now))
            .map_err(|source| DcapError::Certificate {
                role: "root CA CRL",
                source,
            })?;
        windows.push(crl_window("root CA CRL", &root_crl));

        let tcb_signer = verify_issuer_chain(
            &c.tcb_info.issuer_chain,
            "TCB info signing",
            root,
            &root_crl,
            now,
            &mut windows,
        )?;
        verify_signed_json(&c.tcb_info, "TCB info", &tcb_signer)?;
        let mut tcb_info: TcbInfo =
            serde_json::from_str(&c.tcb_info.body).map_err(|e| DcapError::Collateral {
                what: "TCB info",
                detail: e.to_string(),
            })?;
        if tcb_info.version != 3 {
            return Err(DcapError::Collateral {
                what: "TCB info",
                detail: format!("version {} (Veil reads version 3)", tcb_info.version),
            });
        }
        tcb_info.sort_levels();
        let w = Window {
            what: "TCB info",
            from: rfc3339(&tcb_info.issue_date, "TCB info issueDate")?,
            until: rfc3339(&tcb_info.next_update, "TCB info nextUpdate")?,
            is_cert: None,
        };
        w.check(now)?;
        windows.push(w);

        let qe_signer = verify_issuer_chain(
            &c.qe_identity.issuer_chain,
            "QE identity signing",
            root,
            &root_crl,
            now,
            &mut windows,
        )?;
        verify_signed_json(&c.qe_identity, "QE identity", &qe_signer)?;
        let qe_identity: QeIdentity =
            serde_json::from_str(&c.qe_identity.body).map_err(|e| DcapError::Collateral {
                what: "QE identity",
                detail: e.to_string(),
            })?;
        qe_identity
            .expectations()
            .map_err(|detail| DcapError::Collateral {
                what: "QE identity",
                detail,
            })?;
        let w = Window {
            what: "QE identity",
            from: rfc3339(&qe_identity.issue_date, "QE identity issueDate")?,
            until: rfc3339(&qe_identity.next_update, "QE identity nextUpdate")?,
            is_cert: None,
        };
        w.check(now)?;
        windows.push(w);

        let pck_ca = verify_issuer_chain(
            &c.pck_crl_issuer_chain,
            "PCK CRL issuer",
            root,
            &root_crl,
            now,
            &mut windows,
        )?;
        let pck_crl =
            Crl::parse(&c.pck_crl, "PCK CRL").map_err(|source| DcapError::Certificate {
                role: "PCK CRL",
                source,
            })?;
        pck_crl
            .verify_issued_by(&pck_ca)
            .and_then(|()| pck_crl.check_time(now))
            .map_err(|source| DcapError::Certificate {
                role: "PCK CRL",
                source,
            })?;
        windows.push(crl_window("PCK CRL", &pck_crl));

        Ok(Self {
            tcb_info,
            qe_identity,
            pck_ca,
            pck_crl,
            root_crl,
            root: root.clone(),
            windows,
        })
    }

    /// Fails unless `now` lies in every validity period of the collateral.
    pub fn check_time(&self, now: UnixTime) -> Result<(), DcapError> {
        self.windows.iter().try_for_each(|w| w.check(now))
    }

    /// The period in which this collateral is usable.
    pub fn valid_between(&self) -> (UnixTime, UnixTime) {
        let from = self
            .windows
            .iter()
            .map(|w| w.from)
            .max()
            .unwrap_or(UnixTime(i64::MIN));
        let until = self
            .windows
            .iter()
            .map(|w| w.until)
            .min()
            .unwrap_or(UnixTime(i64::MAX));
        (from, until)
    }
}

fn crl_window(what: &'static str, crl: &Crl) -> Window {
    Window {
        what,
        from: crl.this_update(),
        until: crl.next_update().unwrap_or(UnixTime(i64::MAX)),
        is_cert: None,
    }
}
