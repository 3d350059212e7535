//! Veil's TPM evidence as it travels (e.g. in attested TLS): the AK public area, the quote,
//! its signature, the event log, and the batch of 64-byte bindings the quote covers, each
//! length-prefixed after a magic and a version.
//!
//! A TPM signs slowly (milliseconds per quote), so one quote may answer several verifiers at
//! once: its extraData is [`batch_digest`] of all their bindings, and each verifier checks that
//! its own binding is in the batch.

use veil_attest_core::{Malformed, Reader};

const STRUCTURE: &str = "Veil TPM evidence";
const MAGIC: &[u8; 4] = b"VTPM";
const VERSION: u8 = 1;
const MAX_EVENT_LOG: u32 = 1 << 22;
const MAX_BATCH: u16 = 1024;

/// The extraData a quote carries for a batch of bindings.
pub fn batch_digest(bindings: &[[u8; 64]]) -> [u8; 64] {
    use sha2::{Digest, Sha512};
    let mut h = Sha512::new();
    h.update(veil_wire::ids::TPM_BATCH);
    for b in bindings {
        h.update(b);
    }
    h.finalize().into()
}

/// TPM evidence, each part in TPM wire format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmEvidence {
    /// TPMT_PUBLIC (or TPM2B_PUBLIC) of the attestation key.
    pub ak_public: Vec<u8>,
    /// TPMS_ATTEST.
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE.
    pub signature: Vec<u8>,
    /// TCG event log (may be empty).
    pub event_log: Vec<u8>,
    /// The bindings the quote covers (its extraData is their [`batch_digest`]).
    pub bindings: Vec<[u8; 64]>,
}

impl TpmEvidence {
    /// Encodes the evidence.
    pub fn to_bytes(&self) -> Result<Vec<u8>, Malformed> {
        let too_long = |field: &'static str, len: usize| {
            Malformed::invalid(
                STRUCTURE,
                field,
                "a length that fits its prefix",
                len.to_string(),
            )
        };
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        for (field, part) in [
            ("ak_public", &self.ak_public),
            ("attest", &self.attest),
            ("signature", &self.signature),
        ] {
            let len = u16::try_from(part.len()).map_err(|_| too_long(field, part.len()))?;
            out.extend(len.to_be_bytes());
            out.extend(part);
        }
        let len = u32::try_from(self.event_log.len())
            .ok()
            .filter(|l| *l <= MAX_EVENT_LOG)
            .ok_or_else(|| too_long("event_log", self.event_log.len()))?;
        out.extend(len.to_be_bytes());
        out.extend(&self.event_log);
        let count = u16::try_from(self.bindings.len())
            .ok()
            .filter(|c| *c <= MAX_BATCH)
            .ok_or_else(|| too_long("bindings", self.bindings.len()))?;
        out.extend(count.to_be_bytes());
        for b in &self.bindings {
            out.extend(b);
        }
        Ok(out)
    }

    /// Parses evidence; the parts are parsed (and verified) by their own parsers later.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(STRUCTURE, bytes);
        let magic: [u8; 4] = r.array("magic")?;
        if &magic != MAGIC {
            return Err(r.invalid("magic", "\"VTPM\"", hex::encode(magic)));
        }
        let version = r.u8("version")?;
        if version != VERSION {
            return Err(r.invalid("version", VERSION.to_string(), version.to_string()));
        }
        let ak_public = r.tpm2b("ak_public")?.to_vec();
        let attest = r.tpm2b("attest")?.to_vec();
        let signature = r.tpm2b("signature")?.to_vec();
        let len = r.u32_be("event_log.size")?;
        if len > MAX_EVENT_LOG {
            return Err(r.invalid(
                "event_log.size",
                format!("at most {MAX_EVENT_LOG}"),
                len.to_string(),
            ));
        }
        let event_log = r.take(len as usize, "event_log")?.to_vec();
        let count = r.u16_be("bindings.count")?;
        if count == 0 || count > MAX_BATCH {
            return Err(r.invalid(
                "bindings.count",
                format!("1 to {MAX_BATCH}"),
                count.to_string(),
            ));
        }
        let mut bindings = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            bindings.push(r.array("bindings[]")?);
        }
        r.finish()?;
        Ok(Self {
            ak_public,
            attest,
            signature,
            event_log,
            bindings,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let e = TpmEvidence {
            ak_public: vec![1, 2],
            attest: vec![3],
            signature: vec![],
            event_log: vec![9; 10],
            bindings: vec![[5; 64], [6; 64]],
        };
        let b = e.to_bytes().unwrap();
        assert_eq!(TpmEvidence::parse(&b).unwrap(), e);
        assert!(TpmEvidence::parse(&b[..b.len() - 1]).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(matches!(
            TpmEvidence::parse(&extra),
            Err(Malformed::Trailing { .. })
        ));
        let mut bad = b;
        bad[0] = b'X';
        assert!(
            TpmEvidence::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
    }
}
