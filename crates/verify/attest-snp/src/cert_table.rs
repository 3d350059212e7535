//! The certificate table that accompanies an extended report (SNP_GET_EXT_REPORT, or the
//! `certs` blob of an SVSM/extended-guest request): a list of `(GUID, offset, length)` entries
//! terminated by an all-zero entry, followed by the certificates they point at.

use veil_attest_core::{Malformed, Reader};

const STRUCTURE: &str = "SNP certificate table";
const MAX_ENTRIES: usize = 64;

/// What a table entry holds, by its GUID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertKind {
    /// AMD Root Key.
    Ark,
    /// AMD SEV Key (VCEK issuer).
    Ask,
    /// Versioned Chip Endorsement Key.
    Vcek,
    /// Versioned Loaded Endorsement Key.
    Vlek,
    /// Certificate revocation list.
    Crl,
    /// Any other GUID, kept verbatim.
    Other([u8; 16]),
}

const GUIDS: [(&str, CertKind); 5] = [
    ("c0b406a4-a803-4952-9743-3fb6014cd0ae", CertKind::Ark),
    ("4ab7b379-bbac-4fe4-a02f-05aef327c782", CertKind::Ask),
    ("63da758d-e664-4564-adc5-f4b93be8accd", CertKind::Vcek),
    ("a8074bc2-a25a-483e-aae6-39c045a0b8a1", CertKind::Vlek),
    ("92f81bc3-5811-4d3d-97ff-d19f88dc67ea", CertKind::Crl),
];

/// One entry of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// What the entry holds.
    pub kind: CertKind,
    /// The GUID as text.
    pub guid: String,
    /// The certificate (or CRL) bytes, DER.
    pub data: Vec<u8>,
}

/// Formats a GUID stored in the EFI layout (first three fields little-endian).
pub fn guid_string(g: &[u8; 16]) -> String {
    let d1 = u32::from_le_bytes([g[0], g[1], g[2], g[3]]);
    let d2 = u16::from_le_bytes([g[4], g[5]]);
    let d3 = u16::from_le_bytes([g[6], g[7]]);
    format!(
        "{d1:08x}-{d2:04x}-{d3:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]
    )
}

/// Parses a certificate table. Entries must point inside the buffer; the table must be
/// terminated by a zero entry.
pub fn parse_cert_table(buf: &[u8]) -> Result<Vec<CertEntry>, Malformed> {
    let mut r = Reader::new(STRUCTURE, buf);
    let mut out = Vec::new();
    loop {
        let guid: [u8; 16] = r.array("entry.guid")?;
        let offset = r.u32_le("entry.offset")?;
        let length = r.u32_le("entry.length")?;
        if guid == [0; 16] {
            if offset != 0 || length != 0 {
                return Err(r.invalid(
                    "terminator",
                    "an all-zero entry",
                    format!("offset {offset}, length {length}"),
                ));
            }
            break;
        }
        if out.len() == MAX_ENTRIES {
            return Err(r.invalid("entries", format!("at most {MAX_ENTRIES} entries"), "more"));
        }
        let guid_text = guid_string(&guid);
        let data = usize::try_from(offset)
            .ok()
            .zip(usize::try_from(length).ok())
            .and_then(|(o, l)| buf.get(o..o.checked_add(l)?))
            .ok_or_else(|| {
                r.invalid(
                    "entry.offset/length",
                    format!("a range inside the {}-byte table", buf.len()),
                    format!("{offset}+{length} for {guid_text}"),
                )
            })?;
        let kind = GUIDS
            .iter()
            .find(|(g, _)| *g == guid_text)
            .map(|(_, k)| *k)
            .unwrap_or(CertKind::Other(guid));
        out.push(CertEntry {
            kind,
            guid: guid_text,
            data: data.to_vec(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guid_bytes(s: &str) -> [u8; 16] {
        let h: Vec<u8> = hex::decode(s.replace('-', "")).unwrap();
        let mut g = [0u8; 16];
        g[0..4].copy_from_slice(&[h[3], h[2], h[1], h[0]]);
        g[4..6].copy_from_slice(&[h[5], h[4]]);
        g[6..8].copy_from_slice(&[h[7], h[6]]);
        g[8..].copy_from_slice(&h[8..]);
        g
    }

    #[test]
    fn parses_vcek_entry() {
        let mut t = Vec::new();
        t.extend(guid_bytes("63da758d-e664-4564-adc5-f4b93be8accd"));
        t.extend(48u32.to_le_bytes());
        t.extend(3u32.to_le_bytes());
        t.extend([0u8; 24]);
        t.extend([7, 8, 9]);
        let e = parse_cert_table(&t).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].kind, CertKind::Vcek);
        assert_eq!(e[0].data, vec![7, 8, 9]);
    }

    #[test]
    fn rejects_out_of_range_and_unterminated() {
        let mut t = Vec::new();
        t.extend(guid_bytes("63da758d-e664-4564-adc5-f4b93be8accd"));
        t.extend(u32::MAX.to_le_bytes());
        t.extend(3u32.to_le_bytes());
        t.extend([0u8; 24]);
        assert!(
            parse_cert_table(&t)
                .unwrap_err()
                .to_string()
                .contains("range")
        );
        assert!(parse_cert_table(&t[..24]).is_err());
    }
}
