//! PCR values supplied alongside a quote, and the text format they come in.

use std::collections::BTreeMap;

use veil_attest_core::Malformed;
use veil_attest_core::bytes::decode_hex;

use crate::alg::HashAlg;

/// PCR values per (bank, index).
pub type PcrValues = BTreeMap<(HashAlg, u32), Vec<u8>>;

const STRUCTURE: &str = "PCR values file";

/// Parses PCR values, one `INDEX HEX` per line (as `tpm2_pcrread` and Veil's vectors write
/// them). The index may be prefixed with its bank (`sha256:7 ab12..`); a line holding only a
/// bank name (`sha1:`) switches the bank for the lines after it; the default is SHA-256.
/// `:` between index and value, `0x` prefixes, blank lines and `#` comments are accepted.
pub fn parse_pcr_text(text: &str) -> Result<PcrValues, Malformed> {
    let mut bank = HashAlg::Sha256;
    let mut out = PcrValues::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |expected: &str, found: &str| {
            Malformed::invalid(
                STRUCTURE,
                "line",
                expected.to_string(),
                format!("line {}: {found}", n + 1),
            )
        };
        if let Some(b) = line.strip_suffix(':')
            && let Some(h) = HashAlg::from_name(b.trim())
        {
            bank = h;
            continue;
        }
        let tokens: Vec<&str> = line
            .split(|c: char| c.is_whitespace())
            .filter(|t| !t.is_empty() && *t != ":")
            .collect();
        let [index, value] = tokens.as_slice() else {
            return Err(bad("`[BANK:]INDEX HEX`", line));
        };
        let index = index.trim_end_matches(':');
        let (b, idx) = match index.split_once(':') {
            Some((b, i)) => (
                HashAlg::from_name(b).ok_or_else(|| bad("a bank sha1/sha256/sha384/sha512", b))?,
                i,
            ),
            None => (bank, index),
        };
        let idx: u32 = idx
            .parse()
            .ok()
            .filter(|i| *i < 32)
            .ok_or_else(|| bad("a PCR index 0 to 31", idx))?;
        let v = decode_hex(value).map_err(|e| bad("a hex value", &e.to_string()))?;
        if v.len() != b.digest_len() {
            return Err(bad(
                &format!("{} bytes for {b}", b.digest_len()),
                &format!("{} bytes", v.len()),
            ));
        }
        if out.insert((b, idx), v).is_some() {
            return Err(bad("each PCR once", &format!("{b}:{idx} twice")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_plain_prefixed_and_pcrread_styles() {
        let z = "00".repeat(32);
        let one = "11".repeat(20);
        let text = format!(" 0 {z}\nsha1:3 {one}\nsha1:\n  4 : 0x{one}\n# comment\n");
        let v = parse_pcr_text(&text).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[&(HashAlg::Sha256, 0)], vec![0; 32]);
        assert_eq!(v[&(HashAlg::Sha1, 4)], vec![0x11; 20]);
    }

    #[test]
    fn rejects_wrong_length_duplicates_and_garbage() {
        let e = parse_pcr_text("0 abcd").unwrap_err();
        assert!(e.to_string().contains("32 bytes for sha256"), "{e}");
        let z = "00".repeat(32);
        assert!(parse_pcr_text(&format!("0 {z}\n0 {z}")).is_err());
        assert!(parse_pcr_text(&format!("40 {z}")).is_err());
        assert!(parse_pcr_text("hello").is_err());
    }
}
