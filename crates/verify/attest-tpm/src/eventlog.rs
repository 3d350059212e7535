//! TCG PC Client event logs (crypto-agile `TCG_PCR_EVENT2` format after a `Spec ID Event03`
//! header, or the legacy SHA-1-only format), and their replay into PCR values.

use std::collections::BTreeMap;

use veil_attest_core::{Malformed, Reader};

use crate::alg::HashAlg;

const STRUCTURE: &str = "TCG event log";
const SPEC_ID_SIGNATURE: &[u8; 16] = b"Spec ID Event03\0";
const STARTUP_LOCALITY: &[u8; 16] = b"StartupLocality\0";
/// EV_NO_ACTION: informational, never extended.
pub const EV_NO_ACTION: u32 = 0x3;
/// EV_SEPARATOR.
pub const EV_SEPARATOR: u32 = 0x4;
/// EV_EVENT_TAG: used by Veil's measured launch for its own components.
pub const EV_EVENT_TAG: u32 = 0x6;
/// EV_IPL.
pub const EV_IPL: u32 = 0xd;
/// EV_S_CRTM_VERSION.
pub const EV_S_CRTM_VERSION: u32 = 0x8;
/// EV_EFI_VARIABLE_DRIVER_CONFIG (e.g. SecureBoot, PK, KEK, db, dbx).
pub const EV_EFI_VARIABLE_DRIVER_CONFIG: u32 = 0x8000_0001;
/// EV_EFI_GPT_EVENT.
pub const EV_EFI_GPT_EVENT: u32 = 0x8000_0006;
/// EV_EFI_VARIABLE_AUTHORITY.
pub const EV_EFI_VARIABLE_AUTHORITY: u32 = 0x8000_00e0;

/// Whether the TCG PC Client profile defines this event type's digest as the hash of its
/// data, so that the data can be checked against the digest (and then read by policy).
pub fn digest_is_of_data(event_type: u32) -> bool {
    matches!(
        event_type,
        EV_SEPARATOR | EV_EFI_VARIABLE_DRIVER_CONFIG | EV_EFI_GPT_EVENT | EV_EFI_VARIABLE_AUTHORITY
    )
}

impl Event {
    /// For events whose digest is defined as the hash of their data (see
    /// [`digest_is_of_data`]), checks that every digest is that hash, and that a separator
    /// holds one of the two values the profile allows. A log whose event *data* was altered
    /// while its digests still replay is refused here, before any policy reads the data.
    pub fn check_data(&self) -> Result<(), String> {
        if !digest_is_of_data(self.event_type) {
            return Ok(());
        }
        if self.event_type == EV_SEPARATOR
            && self.data != [0, 0, 0, 0]
            && self.data != [0xff, 0xff, 0xff, 0xff]
        {
            return Err(format!(
                "separator data: expected 00000000 or ffffffff, found {}",
                hex::encode(&self.data)
            ));
        }
        for (bank, digest) in &self.digests {
            let want = bank.hash(&[&self.data]);
            if *digest != want {
                return Err(format!(
                    "{bank} digest {} is not the hash of the event data ({})",
                    hex::encode(digest),
                    hex::encode(want)
                ));
            }
        }
        Ok(())
    }
}
const MAX_EVENTS: usize = 1 << 16;
const MAX_EVENT_SIZE: u32 = 1 << 24;
/// Highest PCR index accepted in a log.
pub const MAX_PCR_INDEX: u32 = 31;

/// One measured event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// PCR the event was extended into.
    pub pcr: u32,
    /// Event type (EV_*).
    pub event_type: u32,
    /// Digests, one per bank.
    pub digests: Vec<(HashAlg, Vec<u8>)>,
    /// Event data.
    pub data: Vec<u8>,
}

impl Event {
    /// A readable name for the event type.
    pub fn type_name(&self) -> String {
        event_type_name(self.event_type)
    }
}

/// A parsed event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventLog {
    /// Banks the log records (from the Spec ID event; SHA-1 only for legacy logs).
    pub banks: Vec<HashAlg>,
    /// Locality from a StartupLocality event (sets PCR 0's initial value).
    pub startup_locality: Option<u8>,
    /// The events, in order (EV_NO_ACTION events included).
    pub events: Vec<Event>,
}

/// PCR values per (bank, index).
pub type PcrMap = BTreeMap<(HashAlg, u32), Vec<u8>>;

impl EventLog {
    /// Parses a binary event log.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        let mut r = Reader::new(STRUCTURE, bytes);
        // The first event is always in the SHA-1 format.
        let first = legacy_event(&mut r)?;
        let mut log = EventLog {
            banks: vec![HashAlg::Sha1],
            startup_locality: None,
            events: Vec::new(),
        };
        let spec_sizes =
            if first.event_type == EV_NO_ACTION && first.data.starts_with(SPEC_ID_SIGNATURE) {
                Some(parse_spec_id(&first.data)?)
            } else {
                None
            };
        match spec_sizes {
            None => {
                push(&mut log, first)?;
                while r.remaining() > 0 {
                    let e = legacy_event(&mut r)?;
                    push(&mut log, e)?;
                }
            }
            Some(sizes) => {
                log.banks = sizes.iter().filter_map(|(b, _)| *b).collect();
                while r.remaining() > 0 {
                    let e = agile_event(&mut r, &sizes)?;
                    if e.event_type == EV_NO_ACTION
                        && e.pcr == 0
                        && e.data.len() == 17
                        && e.data.starts_with(STARTUP_LOCALITY)
                    {
                        log.startup_locality = e.data.get(16).copied();
                    }
                    push(&mut log, e)?;
                }
            }
        }
        Ok(log)
    }

    /// Replays the log: the PCR values it produces, for every bank and PCR it touches.
    pub fn replay(&self) -> PcrMap {
        let mut pcrs = PcrMap::new();
        for e in self.events.iter().filter(|e| e.event_type != EV_NO_ACTION) {
            for (bank, digest) in &e.digests {
                let cur = pcrs
                    .entry((*bank, e.pcr))
                    .or_insert_with(|| self.initial(*bank, e.pcr));
                *cur = bank.hash(&[cur, digest]);
            }
        }
        pcrs
    }

    /// The values the quoted PCRs must hold if this log is complete: the replayed value for
    /// PCRs with events, the reset value for the others (zero; all ones for PCRs 17-22). If
    /// the log is incomplete, the quote's pcrDigest will not match these values.
    pub fn expected_pcrs(&self, selection: &[crate::structures::PcrSelection]) -> PcrMap {
        let replayed = self.replay();
        let mut out = PcrMap::new();
        for sel in selection {
            for pcr in sel.pcrs.iter().map(|p| u32::from(*p)) {
                let v = replayed
                    .get(&(sel.hash, pcr))
                    .cloned()
                    .unwrap_or_else(|| self.initial(sel.hash, pcr));
                out.insert((sel.hash, pcr), v);
            }
        }
        out
    }

    fn initial(&self, bank: HashAlg, pcr: u32) -> Vec<u8> {
        if (17..=22).contains(&pcr) {
            return vec![0xff; bank.digest_len()];
        }
        let mut v = vec![0u8; bank.digest_len()];
        if pcr == 0
            && let (Some(loc), Some(last)) = (self.startup_locality, v.last_mut())
        {
            *last = loc;
        }
        v
    }

    /// Serialises the log in the crypto-agile format (as firmware writes it).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Header: a legacy EV_NO_ACTION event holding the Spec ID event.
        let mut spec = SPEC_ID_SIGNATURE.to_vec();
        spec.extend(0u32.to_le_bytes()); // platformClass: client
        spec.extend([0, 2, 0, 2]); // spec 2.0, errata 0, uintnSize 2 (64-bit)
        spec.extend((self.banks.len() as u32).to_le_bytes());
        for b in &self.banks {
            spec.extend(b.id().to_le_bytes());
            spec.extend((b.digest_len() as u16).to_le_bytes());
        }
        spec.push(0); // vendorInfoSize
        out.extend(0u32.to_le_bytes());
        out.extend(EV_NO_ACTION.to_le_bytes());
        out.extend([0u8; 20]);
        out.extend((spec.len() as u32).to_le_bytes());
        out.extend(spec);
        for e in &self.events {
            out.extend(e.pcr.to_le_bytes());
            out.extend(e.event_type.to_le_bytes());
            out.extend((e.digests.len() as u32).to_le_bytes());
            for (b, d) in &e.digests {
                out.extend(b.id().to_le_bytes());
                out.extend(d);
            }
            out.extend((e.data.len() as u32).to_le_bytes());
            out.extend(&e.data);
        }
        out
    }

    /// Appends a measurement of `data` (hashed in every bank) into `pcr`.
    pub fn measure(&mut self, pcr: u32, event_type: u32, data: &[u8]) {
        let digests = self.banks.iter().map(|b| (*b, b.hash(&[data]))).collect();
        self.events.push(Event {
            pcr,
            event_type,
            digests,
            data: data.to_vec(),
        });
    }

    /// Appends a measurement of `content` (hashed in every bank) into `pcr`, recording
    /// `description` as the event data (as firmware does for images it loads).
    pub fn measure_content(
        &mut self,
        pcr: u32,
        event_type: u32,
        content: &[u8],
        description: &[u8],
    ) {
        let digests = self
            .banks
            .iter()
            .map(|b| (*b, b.hash(&[content])))
            .collect();
        self.events.push(Event {
            pcr,
            event_type,
            digests,
            data: description.to_vec(),
        });
    }

    /// An empty crypto-agile log for the given banks.
    pub fn new(banks: Vec<HashAlg>) -> Self {
        Self {
            banks,
            startup_locality: None,
            events: Vec::new(),
        }
    }
}

fn push(log: &mut EventLog, e: Event) -> Result<(), Malformed> {
    if log.events.len() >= MAX_EVENTS {
        return Err(Malformed::invalid(
            STRUCTURE,
            "events",
            format!("at most {MAX_EVENTS} events"),
            "more",
        ));
    }
    log.events.push(e);
    Ok(())
}

fn pcr_index(r: &mut Reader<'_>) -> Result<u32, Malformed> {
    let pcr = r.u32_le("event.pcrIndex")?;
    if pcr > MAX_PCR_INDEX {
        return Err(r.invalid(
            "event.pcrIndex",
            format!("0 to {MAX_PCR_INDEX}"),
            pcr.to_string(),
        ));
    }
    Ok(pcr)
}

fn event_data(r: &mut Reader<'_>) -> Result<Vec<u8>, Malformed> {
    let size = r.u32_le("event.eventSize")?;
    if size > MAX_EVENT_SIZE {
        return Err(r.invalid(
            "event.eventSize",
            format!("at most {MAX_EVENT_SIZE} bytes"),
            size.to_string(),
        ));
    }
    Ok(r.take(size as usize, "event.event")?.to_vec())
}

fn legacy_event(r: &mut Reader<'_>) -> Result<Event, Malformed> {
    let pcr = pcr_index(r)?;
    let event_type = r.u32_le("event.eventType")?;
    let digest = r.take(20, "event.digest")?.to_vec();
    let data = event_data(r)?;
    Ok(Event {
        pcr,
        event_type,
        digests: vec![(HashAlg::Sha1, digest)],
        data,
    })
}

/// (bank if known, digest size) per algorithm ID listed in the Spec ID event.
type DigestSizes = Vec<(Option<HashAlg>, (u16, u16))>;

fn parse_spec_id(data: &[u8]) -> Result<DigestSizes, Malformed> {
    let mut r = Reader::new("TCG Spec ID event", data);
    r.skip(16, "signature")?;
    r.skip(4, "platformClass")?;
    r.skip(4, "specVersion/errata/uintnSize")?;
    let n = r.u32_le("numberOfAlgorithms")?;
    if n == 0 || n > 16 {
        return Err(r.invalid("numberOfAlgorithms", "1 to 16", n.to_string()));
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let id = r.u16_le("digestSizes.algorithmId")?;
        let size = r.u16_le("digestSizes.digestSize")?;
        let bank = HashAlg::from_id(id);
        if let Some(b) = bank
            && usize::from(size) != b.digest_len()
        {
            return Err(r.invalid(
                "digestSizes.digestSize",
                format!("{} for {b}", b.digest_len()),
                size.to_string(),
            ));
        }
        out.push((bank, (id, size)));
    }
    let vendor = r.u8("vendorInfoSize")?;
    r.skip(usize::from(vendor), "vendorInfo")?;
    Ok(out)
}

fn agile_event(r: &mut Reader<'_>, sizes: &DigestSizes) -> Result<Event, Malformed> {
    let pcr = pcr_index(r)?;
    let event_type = r.u32_le("event.eventType")?;
    let count = r.u32_le("event.digests.count")?;
    if count as usize > sizes.len() {
        return Err(r.invalid(
            "event.digests.count",
            format!("at most {} (banks in the Spec ID event)", sizes.len()),
            count.to_string(),
        ));
    }
    let mut digests = Vec::new();
    for _ in 0..count {
        let id = r.u16_le("event.digests.hashAlg")?;
        let (bank, (_, size)) = sizes.iter().find(|(_, (i, _))| *i == id).ok_or_else(|| {
            r.invalid(
                "event.digests.hashAlg",
                "an algorithm listed in the Spec ID event",
                format!("{id:#06x}"),
            )
        })?;
        let d = r.take(usize::from(*size), "event.digests.digest")?.to_vec();
        if let Some(b) = bank {
            digests.push((*b, d));
        }
    }
    let data = event_data(r)?;
    Ok(Event {
        pcr,
        event_type,
        digests,
        data,
    })
}

/// A readable name for an EV_* event type.
pub fn event_type_name(t: u32) -> String {
    let n = match t {
        0x0 => "EV_PREBOOT_CERT",
        0x1 => "EV_POST_CODE",
        0x3 => "EV_NO_ACTION",
        0x4 => "EV_SEPARATOR",
        0x5 => "EV_ACTION",
        0x6 => "EV_EVENT_TAG",
        0x7 => "EV_S_CRTM_CONTENTS",
        0x8 => "EV_S_CRTM_VERSION",
        0x9 => "EV_CPU_MICROCODE",
        0xa => "EV_PLATFORM_CONFIG_FLAGS",
        0xb => "EV_TABLE_OF_DEVICES",
        0xc => "EV_COMPACT_HASH",
        0xd => "EV_IPL",
        0xe => "EV_IPL_PARTITION_DATA",
        0xf => "EV_NONHOST_CODE",
        0x10 => "EV_NONHOST_CONFIG",
        0x11 => "EV_NONHOST_INFO",
        0x12 => "EV_OMIT_BOOT_DEVICE_EVENTS",
        0x8000_0001 => "EV_EFI_VARIABLE_DRIVER_CONFIG",
        0x8000_0002 => "EV_EFI_VARIABLE_BOOT",
        0x8000_0003 => "EV_EFI_BOOT_SERVICES_APPLICATION",
        0x8000_0004 => "EV_EFI_BOOT_SERVICES_DRIVER",
        0x8000_0005 => "EV_EFI_RUNTIME_SERVICES_DRIVER",
        0x8000_0006 => "EV_EFI_GPT_EVENT",
        0x8000_0007 => "EV_EFI_ACTION",
        0x8000_0008 => "EV_EFI_PLATFORM_FIRMWARE_BLOB",
        0x8000_0009 => "EV_EFI_HANDOFF_TABLES",
        0x8000_000a => "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
        0x8000_000b => "EV_EFI_HANDOFF_TABLES2",
        0x8000_00e0 => "EV_EFI_VARIABLE_AUTHORITY",
        _ => return format!("{t:#010x}"),
    };
    n.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_must_match_the_digest_where_the_digest_is_of_the_data() {
        let mut log = EventLog::new(vec![HashAlg::Sha1, HashAlg::Sha256]);
        log.measure(7, EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot=1");
        log.measure(7, EV_SEPARATOR, &[0, 0, 0, 0]);
        log.measure(8, EV_EVENT_TAG, b"component");
        for e in &log.events {
            e.check_data().unwrap();
        }
        // The Secure Boot state altered in the data, the digests left as they were.
        let mut altered = log.events[0].clone();
        altered.data = b"SecureBoot=0".to_vec();
        let e = altered.check_data().unwrap_err();
        assert!(e.contains("not the hash of the event data"), "{e}");
        // A separator with any other value.
        let mut sep = EventLog::new(vec![HashAlg::Sha256]);
        sep.measure(7, EV_SEPARATOR, &[1, 0, 0, 0]);
        let e = sep.events[0].check_data().unwrap_err();
        assert!(e.contains("expected 00000000 or ffffffff"), "{e}");
        // Events whose digest is of something else (a component Veil measured) are not held
        // to their data.
        let mut tag = log.events[2].clone();
        tag.data = b"anything".to_vec();
        tag.check_data().unwrap();
    }

    #[test]
    fn builds_parses_and_replays() {
        let mut log = EventLog::new(vec![HashAlg::Sha1, HashAlg::Sha256]);
        log.measure(8, EV_EVENT_TAG, b"agent");
        log.measure(8, EV_EVENT_TAG, b"config");
        log.measure(9, EV_IPL, b"image");
        let bytes = log.to_bytes();
        let parsed = EventLog::parse(&bytes).unwrap();
        assert_eq!(parsed.events, log.events);
        assert_eq!(parsed.banks, vec![HashAlg::Sha1, HashAlg::Sha256]);
        let pcrs = parsed.replay();
        // Independent computation of PCR 8 in SHA-256.
        let h = |d: &[u8]| HashAlg::Sha256.hash(&[d]);
        let p = HashAlg::Sha256.hash(&[&[0u8; 32], &h(b"agent")]);
        let p = HashAlg::Sha256.hash(&[&p, &h(b"config")]);
        assert_eq!(pcrs[&(HashAlg::Sha256, 8)], p);
        assert_eq!(pcrs.len(), 4);
    }

    #[test]
    fn startup_locality_sets_pcr0_initial_value() {
        let mut log = EventLog::new(vec![HashAlg::Sha256]);
        let mut data = STARTUP_LOCALITY.to_vec();
        data.push(3);
        log.events.push(Event {
            pcr: 0,
            event_type: EV_NO_ACTION,
            digests: vec![(HashAlg::Sha256, vec![0; 32])],
            data,
        });
        log.measure(0, 0x8, b"crtm");
        let parsed = EventLog::parse(&log.to_bytes()).unwrap();
        assert_eq!(parsed.startup_locality, Some(3));
        let mut init = [0u8; 32];
        init[31] = 3;
        let want = HashAlg::Sha256.hash(&[&init, &HashAlg::Sha256.hash(&[b"crtm"])]);
        assert_eq!(parsed.replay()[&(HashAlg::Sha256, 0)], want);
    }

    #[test]
    fn rejects_bad_lengths_and_unknown_algorithms() {
        let mut log = EventLog::new(vec![HashAlg::Sha256]);
        log.measure(1, 1, b"x");
        let bytes = log.to_bytes();
        assert!(EventLog::parse(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        // The event's digest algorithm ID follows the header event and pcr/type/count.
        let header_len = 32 + 16 + 4 + 4 + 4 + 4 + 1;
        let alg_at = header_len + 12;
        bad[alg_at] = 0x99;
        let e = EventLog::parse(&bad).unwrap_err();
        assert!(e.to_string().contains("hashAlg"), "{e}");
        let mut bad = bytes;
        bad[header_len] = 200; // pcr index
        assert!(
            EventLog::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("pcrIndex")
        );
    }
}
