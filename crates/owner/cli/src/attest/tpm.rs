//! `veil attest verify tpm`.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use base64::Engine;
use clap::Args;
use veil_attest_core::UnixTime;
use veil_attest_core::crypto::PublicKey;
use veil_attest_core::x509::{Certificate, looks_like_pem, public_key_from_spki};
use veil_attest_tpm as tpm;

use super::{Common, PolicyFile, hex_arg, read, rejected, unusable};
use crate::output::Outcome;

#[derive(Args, Debug)]
pub struct TpmArgs {
    /// The TPMS_ATTEST the TPM signed (`tpm2_quote -m`).
    #[arg(long, value_name = "FILE", required_unless_present = "evidence")]
    quote: Option<PathBuf>,
    /// The signature: a TPMT_SIGNATURE (`tpm2_quote -s`) or a raw RSASSA signature.
    #[arg(long, value_name = "FILE", required_unless_present = "evidence")]
    signature: Option<PathBuf>,
    /// The attestation key: PEM or DER SubjectPublicKeyInfo, a certificate, or a
    /// TPMT_PUBLIC/TPM2B_PUBLIC.
    #[arg(long, value_name = "FILE", required_unless_present = "evidence")]
    ak: Option<PathBuf>,
    /// PCR values, one `[BANK:]INDEX HEX` per line.
    #[arg(long, value_name = "FILE")]
    pcrs: Option<PathBuf>,
    /// A TCG event log (binary) to replay against the quoted PCRs.
    #[arg(long, value_name = "FILE")]
    eventlog: Option<PathBuf>,
    /// A certificate for the AK (PEM may carry intermediates after it).
    #[arg(long, value_name = "FILE", requires = "roots")]
    ak_cert: Option<PathBuf>,
    /// Trusted roots for the AK certificate (PEM bundle or DER).
    #[arg(long, value_name = "FILE", requires = "ak_cert")]
    roots: Option<PathBuf>,
    /// Evidence as one JSON document (Confidential Containers' TPM evidence:
    /// `{ak_public, tpm_quote: {message, signature, pcrs}}`).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["quote", "signature", "ak"])]
    evidence: Option<PathBuf>,
    /// Expected extraData (the verifier's nonce).
    #[arg(long, value_name = "HEX")]
    nonce: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Reads an attestation key in any of the accepted forms.
pub fn load_ak(bytes: &[u8]) -> anyhow::Result<PublicKey> {
    if looks_like_pem(bytes) {
        if let Ok(k) = public_key_from_spki(bytes) {
            return Ok(k);
        }
        let cert = Certificate::parse_many(bytes, "AK")?.remove(0);
        return Ok(cert.public_key()?.clone());
    }
    if let Ok(k) = public_key_from_spki(bytes) {
        return Ok(k);
    }
    if let Ok(p) = tpm::Public::parse(bytes) {
        return Ok(p.key);
    }
    let cert = Certificate::from_der(bytes, "AK").context(
        "the AK is neither a SubjectPublicKeyInfo, a TPMT_PUBLIC/TPM2B_PUBLIC nor a certificate",
    )?;
    Ok(cert.public_key()?.clone())
}

struct Inputs {
    attest: Vec<u8>,
    signature: Vec<u8>,
    ak: PublicKey,
    pcrs: Option<tpm::PcrValues>,
}

fn from_evidence(bytes: &[u8]) -> anyhow::Result<Inputs> {
    let j: serde_json::Value = serde_json::from_slice(bytes).context("evidence is not JSON")?;
    let b64 = |v: &serde_json::Value, f: &str| -> anyhow::Result<Vec<u8>> {
        let s = v
            .as_str()
            .ok_or_else(|| anyhow!("evidence: `{f}` must be a base64 string"))?;
        base64::engine::general_purpose::STANDARD
            .decode(s)
            .with_context(|| format!("evidence: `{f}` is not base64"))
    };
    let field = |v: &'_ serde_json::Value, k: &str| v.get(k).cloned().unwrap_or_default();
    let q = field(&j, "tpm_quote");
    let pcrs = field(&q, "pcrs")
        .as_array()
        .ok_or_else(|| anyhow!("evidence: `tpm_quote.pcrs` must be an array of hex strings"))?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let h = v
                .as_str()
                .and_then(|s| hex::decode(s).ok())
                .filter(|h| h.len() == 32);
            h.map(|h| ((tpm::HashAlg::Sha256, i as u32), h))
                .ok_or_else(|| anyhow!("evidence: `tpm_quote.pcrs[{i}]` must be 32 bytes of hex"))
        })
        .collect::<anyhow::Result<tpm::PcrValues>>()?;
    Ok(Inputs {
        attest: b64(&field(&q, "message"), "tpm_quote.message")?,
        signature: b64(&field(&q, "signature"), "tpm_quote.signature")?,
        ak: public_key_from_spki(&b64(&field(&j, "ak_public"), "ak_public")?)?,
        pcrs: Some(pcrs),
    })
}

fn inputs(a: &TpmArgs) -> anyhow::Result<Inputs> {
    if let Some(e) = &a.evidence {
        return from_evidence(&read(e)?);
    }
    let need = |p: &Option<PathBuf>, n: &str| p.clone().ok_or_else(|| anyhow!("--{n} is required"));
    let pcrs = match &a.pcrs {
        Some(p) => {
            let text = String::from_utf8(read(p)?).context("--pcrs is not text")?;
            Some(tpm::parse_pcr_text(&text)?)
        }
        None => None,
    };
    Ok(Inputs {
        attest: read(&need(&a.quote, "quote")?)?,
        signature: read(&need(&a.signature, "signature")?)?,
        ak: load_ak(&read(&need(&a.ak, "ak")?)?)?,
        pcrs,
    })
}

pub fn summary(c: &tpm::TpmClaims) -> Vec<(String, String)> {
    let mut s = vec![
        (
            "signature".into(),
            format!("{} by {} AK", c.scheme, c.ak_type),
        ),
        ("ak spki sha256".into(), c.ak_spki_sha256.to_string()),
        (
            "ak trust".into(),
            match &c.ak_trust {
                tpm::AkTrust::Certificate { root, .. } => format!("certificate chain to `{root}`"),
                tpm::AkTrust::Pinned => "pinned by the reference values".into(),
                tpm::AkTrust::Unendorsed => "NOT endorsed (trusted as given)".into(),
            },
        ),
        (
            "nonce".into(),
            if c.nonce_checked {
                format!("{} (matches)", hex::encode(&c.quote.extra_data))
            } else {
                format!(
                    "{} (NOT checked: no --nonce)",
                    hex::encode(&c.quote.extra_data)
                )
            },
        ),
        (
            "firmware".into(),
            format!("{:#018x}", c.quote.firmware_version),
        ),
    ];
    if !c.pcr_digest_checked {
        s.push((
            "pcrs".into(),
            format!(
                "NOT opened (no values given); digest {}",
                hex::encode(&c.quote.pcr_digest)
            ),
        ));
    }
    for (bank, values) in &c.pcrs {
        for (i, v) in values {
            s.push((format!("pcr {bank}:{i}"), v.clone()));
        }
    }
    if let Some(events) = &c.events {
        s.push((
            "event log".into(),
            format!("{} events replayed to the quoted PCRs", events.len()),
        ));
    }
    s
}

pub fn verify(a: &TpmArgs, policy: PolicyFile, now: UnixTime) -> Outcome {
    let mut policy = policy.tpm.unwrap_or_default();
    if let Some(n) = unusable!(hex_arg("nonce", a.nonce.as_ref())) {
        policy.nonce = Some(tpm::HexValue(n));
    }
    let mut inp = unusable!(inputs(a));
    let log = match &a.eventlog {
        Some(p) => Some(unusable!(tpm::EventLog::parse(&unusable!(read(p))))),
        None => None,
    };
    let quote = unusable!(tpm::Quote::parse(&inp.attest));
    // Without explicit PCR values, the event log supplies them (the pcrDigest then proves the
    // log complete for the quoted PCRs).
    if inp.pcrs.is_none()
        && let Some(l) = &log
    {
        inp.pcrs = Some(l.expected_pcrs(&quote.pcr_select));
    }
    let endorsement = match (&a.ak_cert, &a.roots) {
        (Some(c), Some(r)) => {
            let mut chain = unusable!(Certificate::parse_many(&unusable!(read(c)), "--ak-cert"));
            let ak_cert = chain.remove(0);
            Some(tpm::AkEndorsement {
                ak_cert,
                chain,
                roots: unusable!(Certificate::parse_many(&unusable!(read(r)), "--roots")),
            })
        }
        _ => None,
    };
    let sig = unusable!(tpm::QuoteSignature::from_bytes(&inp.signature, &inp.ak));
    let ev = tpm::QuoteEvidence {
        attest: &inp.attest,
        signature: &sig,
        ak: &inp.ak,
        ak_qualified_name: None,
        pcrs: inp.pcrs.as_ref(),
        event_log: log.as_ref(),
    };
    let c = match tpm::authenticate(&ev, endorsement.as_ref(), &policy, now) {
        Ok(c) => c,
        Err(e) => return rejected(e, None),
    };
    let claims = unusable!(serde_json::to_value(&c));
    match tpm::check_policy(&c, &policy) {
        Ok(()) => Outcome::Verified {
            summary: summary(&c),
            claims,
        },
        Err(e) => rejected(tpm::TpmError::Policy(e), Some(claims)),
    }
}
