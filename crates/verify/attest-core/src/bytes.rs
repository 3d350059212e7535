//! Fixed-size byte values that display and serialise as lowercase hex.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `N` bytes taken verbatim from evidence (a measurement, report data, a chip ID...).
///
/// Prints as hex, serialises as a hex string and parses from one, rejecting any other length:
/// lengths are never padded or truncated.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bytes<const N: usize>(pub [u8; N]);

impl<const N: usize> Bytes<N> {
    /// All zero bytes.
    pub const ZERO: Self = Self([0; N]);

    /// Parses exactly `N` bytes of hex (upper or lower case, optional `0x`).
    pub fn from_hex(s: &str) -> Result<Self, HexError> {
        let v = decode_hex(s)?;
        let arr: [u8; N] = v.as_slice().try_into().map_err(|_| HexError::Length {
            expected: N,
            found: v.len(),
        })?;
        Ok(Self(arr))
    }

    /// Whether every byte is zero.
    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> Default for Bytes<N> {
    fn default() -> Self {
        Self::ZERO
    }
}

impl<const N: usize> AsRef<[u8]> for Bytes<N> {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl<const N: usize> fmt::Display for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl<const N: usize> fmt::Debug for Bytes<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{}", hex::encode(self.0))
    }
}

impl<const N: usize> Serialize for Bytes<N> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(self.0))
    }
}

impl<'de, const N: usize> Deserialize<'de> for Bytes<N> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_hex(&s).map_err(D::Error::custom)
    }
}

/// A hex string that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HexError {
    /// Not hexadecimal.
    #[error("not hexadecimal: {0}")]
    NotHex(String),
    /// Hexadecimal, but of the wrong length.
    #[error("expected {expected} bytes of hex, found {found}")]
    Length {
        /// Bytes expected.
        expected: usize,
        /// Bytes found.
        found: usize,
    },
}

/// Decodes hex of any length (upper or lower case, optional `0x`, surrounding whitespace ignored).
pub fn decode_hex(s: &str) -> Result<Vec<u8>, HexError> {
    let s = s.trim();
    let s = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    hex::decode(s).map_err(|e| HexError::NotHex(e.to_string()))
}

/// Serde helper: a `Vec<u8>` as a hex string.
pub mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    /// Serialises as lowercase hex.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    /// Deserialises from hex.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        super::decode_hex(&s).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_length_check() {
        let b = Bytes::<4>::from_hex("0xDEADbeef").unwrap();
        assert_eq!(b.to_string(), "deadbeef");
        assert_eq!(
            Bytes::<4>::from_hex("dead").unwrap_err(),
            HexError::Length {
                expected: 4,
                found: 2
            }
        );
        assert!(matches!(
            Bytes::<1>::from_hex("zz"),
            Err(HexError::NotHex(_))
        ));
        let j = serde_json::to_string(&b).unwrap();
        assert_eq!(j, "\"deadbeef\"");
        let back: Bytes<4> = serde_json::from_str(&j).unwrap();
        assert_eq!(back, b);
    }
}
