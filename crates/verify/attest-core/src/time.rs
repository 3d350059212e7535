//! Time as a parameter: verifiers never read the clock.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds since the Unix epoch (UTC). The only notion of "now" a verifier sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixTime(pub i64);

/// A timestamp string that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not an RFC 3339 timestamp (expected e.g. 2025-07-01T00:00:00Z)")]
pub struct TimeParseError {
    /// The rejected input (truncated to 64 characters).
    pub input: String,
}

impl UnixTime {
    /// Parses an RFC 3339 timestamp such as `2025-07-01T00:00:00Z`.
    pub fn parse_rfc3339(s: &str) -> Result<Self, TimeParseError> {
        OffsetDateTime::parse(s, &Rfc3339)
            .map(|t| Self(t.unix_timestamp()))
            .map_err(|_| TimeParseError {
                input: s.chars().take(64).collect(),
            })
    }

    /// Seconds since the epoch.
    pub fn secs(self) -> i64 {
        self.0
    }
}

impl fmt::Display for UnixTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match OffsetDateTime::from_unix_timestamp(self.0)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
        {
            Some(s) => f.write_str(&s),
            None => write!(f, "@{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rfc3339() {
        let t = UnixTime::parse_rfc3339("2025-07-01T00:00:00Z").unwrap();
        assert_eq!(t.secs(), 1_751_328_000);
        assert_eq!(t.to_string(), "2025-07-01T00:00:00Z");
    }

    #[test]
    fn rejects_non_rfc3339() {
        let e = UnixTime::parse_rfc3339("yesterday").unwrap_err();
        assert!(e.to_string().contains("yesterday"));
    }
}
