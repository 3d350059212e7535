//! Bounds-checked parsing of attacker-controlled bytes.
//!
//! Every read names the structure and field it was reading, so a short or malformed input
//! produces an error such as "SNP report: field `signature` needs 512 bytes at offset 672,
//! 100 available" rather than a panic.

/// Input bytes that do not form the expected structure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Malformed {
    /// The input ends before a field does.
    #[error(
        "{structure}: field `{field}` needs {needed} bytes at offset {offset}, {available} available"
    )]
    Truncated {
        /// The structure being parsed.
        structure: &'static str,
        /// The field being read.
        field: &'static str,
        /// Offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// A field holds a value the format does not allow.
    #[error("{structure}: field `{field}` expected {expected}, found {found}")]
    Invalid {
        /// The structure being parsed.
        structure: &'static str,
        /// The offending field.
        field: &'static str,
        /// What the format requires.
        expected: String,
        /// What the input holds.
        found: String,
    },
    /// Bytes remain after a structure that must fill its input exactly.
    #[error("{structure}: {extra} unexpected trailing bytes after offset {offset}")]
    Trailing {
        /// The structure being parsed.
        structure: &'static str,
        /// Where the structure ended.
        offset: usize,
        /// How many bytes follow it.
        extra: usize,
    },
}

impl Malformed {
    /// Shorthand for [`Malformed::Invalid`].
    pub fn invalid(
        structure: &'static str,
        field: &'static str,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            structure,
            field,
            expected: expected.into(),
            found: found.into(),
        }
    }
}

/// A cursor over a byte slice that never reads out of bounds.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    structure: &'static str,
}

macro_rules! int_readers {
    ($($le:ident $be:ident $t:ty;)*) => {$(
        #[doc = concat!("Reads a little-endian `", stringify!($t), "`.")]
        pub fn $le(&mut self, field: &'static str) -> Result<$t, Malformed> {
            Ok(<$t>::from_le_bytes(self.array(field)?))
        }
        #[doc = concat!("Reads a big-endian `", stringify!($t), "`.")]
        pub fn $be(&mut self, field: &'static str) -> Result<$t, Malformed> {
            Ok(<$t>::from_be_bytes(self.array(field)?))
        }
    )*};
}

impl<'a> Reader<'a> {
    /// Starts reading `buf` as the named structure.
    pub fn new(structure: &'static str, buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            structure,
        }
    }

    /// The structure name used in errors.
    pub fn structure(&self) -> &'static str {
        self.structure
    }

    /// Current offset from the start of the input.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// The unread bytes, without consuming them.
    pub fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    /// Consumes `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], Malformed> {
        let end = self.pos.checked_add(n);
        match end.and_then(|end| self.buf.get(self.pos..end)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Malformed::Truncated {
                structure: self.structure,
                field,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    /// Consumes exactly `N` bytes into an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], Malformed> {
        let s = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    /// Skips `n` bytes.
    pub fn skip(&mut self, n: usize, field: &'static str) -> Result<(), Malformed> {
        self.take(n, field).map(|_| ())
    }

    /// Reads one byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, Malformed> {
        Ok(self.array::<1>(field)?[0])
    }

    int_readers! {
        u16_le u16_be u16;
        u32_le u32_be u32;
        u64_le u64_be u64;
    }

    /// Reads a big-endian `u16` length followed by that many bytes (a TPM2B).
    pub fn tpm2b(&mut self, field: &'static str) -> Result<&'a [u8], Malformed> {
        let n = self.u16_be(field)?;
        self.take(usize::from(n), field)
    }

    /// Fails if any bytes remain.
    pub fn finish(&self) -> Result<(), Malformed> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(Malformed::Trailing {
                structure: self.structure,
                offset: self.pos,
                extra,
            }),
        }
    }

    /// Builds an [`Malformed::Invalid`] for this structure.
    pub fn invalid(
        &self,
        field: &'static str,
        expected: impl Into<String>,
        found: impl Into<String>,
    ) -> Malformed {
        Malformed::invalid(self.structure, field, expected, found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_in_both_byte_orders() {
        let mut r = Reader::new("t", &[1, 0, 0, 1, 0xff]);
        assert_eq!(r.u16_le("a").unwrap(), 1);
        assert_eq!(r.u16_be("b").unwrap(), 1);
        assert_eq!(r.remaining(), 1);
        assert!(matches!(
            r.finish(),
            Err(Malformed::Trailing { extra: 1, .. })
        ));
    }

    #[test]
    fn truncation_names_field_and_offset() {
        let mut r = Reader::new("thing", &[0; 3]);
        r.skip(2, "head").unwrap();
        let e = r.u32_le("len").unwrap_err();
        assert_eq!(
            e.to_string(),
            "thing: field `len` needs 4 bytes at offset 2, 1 available"
        );
        // A failed read consumes nothing.
        assert_eq!(r.offset(), 2);
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        let mut r = Reader::new("t", &[0; 4]);
        r.skip(1, "x").unwrap();
        assert!(r.take(usize::MAX, "big").is_err());
    }

    #[test]
    fn tpm2b_reads_length_prefixed() {
        let mut r = Reader::new("t", &[0, 2, 7, 8, 9]);
        assert_eq!(r.tpm2b("d").unwrap(), &[7, 8]);
        let mut r = Reader::new("t", &[0, 9, 7]);
        assert!(r.tpm2b("d").is_err());
    }
}
