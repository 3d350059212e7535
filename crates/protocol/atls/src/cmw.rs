//! Evidence in a certificate as the IETF RATS conceptual message wrapper (CMW) carries it: the
//! `id-pe-cmw` extension's value is the DER of the CMW choice for CBOR — an OCTET STRING — whose
//! content is a CMW CBOR record `[media type, evidence]` (a two-element array of a text string
//! and a byte string). Only that shape is read, strictly: definite lengths, the media type
//! [`veil_wire::ids::EVIDENCE_MEDIA_TYPE`], nothing after it.

use veil_wire::ids::EVIDENCE_MEDIA_TYPE;

/// The largest evidence carried (the event log is at most 4 MiB).
pub const MAX_EVIDENCE: usize = 8 << 20;

/// A CBOR head (major type, argument) in its shortest form.
fn cbor_head(major: u8, len: usize, out: &mut Vec<u8>) {
    let m = major << 5;
    match len {
        0..=23 => out.push(m | len as u8),
        24..=0xff => out.extend([m | 24, len as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(m | 26);
            out.extend((len as u32).to_be_bytes());
        }
    }
}

/// A DER length (its shortest form, as DER requires).
fn der_len(len: usize, out: &mut Vec<u8>) {
    if len < 0x80 {
        out.push(len as u8);
        return;
    }
    let bytes = (len as u32).to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let digits = bytes.get(skip..).unwrap_or_default();
    out.push(0x80 | digits.len() as u8);
    out.extend(digits);
}

/// The extension value for `evidence`.
pub fn encode(evidence: &[u8]) -> Result<Vec<u8>, String> {
    if evidence.len() > MAX_EVIDENCE {
        return Err(format!(
            "evidence of {} bytes: at most {MAX_EVIDENCE}",
            evidence.len()
        ));
    }
    let mut record = vec![0x82];
    cbor_head(3, EVIDENCE_MEDIA_TYPE.len(), &mut record);
    record.extend(EVIDENCE_MEDIA_TYPE.as_bytes());
    cbor_head(2, evidence.len(), &mut record);
    record.extend(evidence);
    let mut out = vec![0x04];
    der_len(record.len(), &mut out);
    out.extend(record);
    Ok(out)
}

/// A cursor over untrusted bytes that never reads past the end.
struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if n > self.rest.len() {
            return Err(format!(
                "{what}: {n} bytes announced, {} left",
                self.rest.len()
            ));
        }
        let (a, b) = self.rest.split_at(n);
        self.rest = b;
        Ok(a)
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        self.take(1, what)?
            .first()
            .copied()
            .ok_or_else(|| format!("{what}: missing"))
    }

    fn be(&mut self, n: usize, what: &str) -> Result<usize, String> {
        Ok(self
            .take(n, what)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b)))
    }

    /// A CBOR head of major type `major` with a definite argument.
    fn cbor(&mut self, major: u8, what: &str) -> Result<usize, String> {
        let b = self.byte(what)?;
        if b >> 5 != major {
            return Err(format!(
                "{what}: expected CBOR major type {major}, found {}",
                b >> 5
            ));
        }
        match b & 0x1f {
            n @ 0..=23 => Ok(usize::from(n)),
            24 => self.be(1, what),
            25 => self.be(2, what),
            26 => self.be(4, what),
            n => Err(format!(
                "{what}: CBOR additional information {n} (expected a definite length)"
            )),
        }
    }
}

/// The evidence in an extension value made by [`encode`] (or by any CMW producer of the same
/// record).
pub fn decode(value: &[u8]) -> Result<&[u8], String> {
    let mut c = Cursor { rest: value };
    let tag = c.byte("CMW")?;
    if tag != 0x04 {
        return Err(format!(
            "CMW: expected an OCTET STRING (CBOR CMW, tag 0x04), found tag {tag:#04x}"
        ));
    }
    let len = match c.byte("CMW length")? {
        n @ 0..=0x7f => usize::from(n),
        n @ 0x81..=0x84 => {
            let digits = usize::from(n & 0x7f);
            let len = c.be(digits, "CMW length")?;
            // DER: the shortest form only.
            if len < 0x80 || len >> (8 * (digits - 1)) == 0 {
                return Err(format!(
                    "CMW length: {len} in {digits} bytes is not the shortest (DER) form"
                ));
            }
            len
        }
        n => return Err(format!("CMW length: unsupported form {n:#04x}")),
    };
    if len != c.rest.len() {
        return Err(format!(
            "CMW length: {len} announced, {} present",
            c.rest.len()
        ));
    }
    let items = c.cbor(4, "CMW record")?;
    if items != 2 {
        return Err(format!(
            "CMW record: expected [type, value], found {items} items"
        ));
    }
    let n = c.cbor(3, "CMW type")?;
    let media_type = c.take(n, "CMW type")?;
    if media_type != EVIDENCE_MEDIA_TYPE.as_bytes() {
        return Err(format!(
            "CMW type: expected {EVIDENCE_MEDIA_TYPE}, found {}",
            String::from_utf8_lossy(media_type)
        ));
    }
    let n = c.cbor(2, "CMW value")?;
    if n > MAX_EVIDENCE {
        return Err(format!("CMW value: {n} bytes, at most {MAX_EVIDENCE}"));
    }
    let evidence = c.take(n, "CMW value")?;
    if !c.rest.is_empty() {
        return Err(format!("CMW: {} bytes after the record", c.rest.len()));
    }
    Ok(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_length_form_and_refuses_the_rest() {
        for n in [0usize, 5, 23, 24, 200, 255, 256, 5000, 70_000] {
            let ev: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let v = encode(&ev).unwrap();
            assert_eq!(decode(&v).unwrap(), &ev[..], "{n}");
            // Every truncation is refused, never a panic.
            for cut in [0, 1, v.len() / 2, v.len() - 1] {
                assert!(decode(&v[..cut]).is_err(), "{n} cut at {cut}");
            }
        }
        // A length in a longer form than it needs is not DER.
        let inner = &encode(b"x").unwrap()[2..];
        let mut long = vec![0x04, 0x81, inner.len() as u8];
        long.extend(inner);
        assert!(decode(&long).unwrap_err().contains("shortest"));
        let v = encode(b"evidence").unwrap();
        let mut extra = v.clone();
        extra.push(0);
        assert!(decode(&extra).is_err());
        let mut other = v.clone();
        let at = v.len() - b"evidence".len() - 2;
        other[at] ^= 1; // a letter of the media type
        assert!(decode(&other).unwrap_err().contains("CMW type"));
        assert!(decode(b"evidence").unwrap_err().contains("OCTET STRING"));
    }
}
