//! The wall clock, for the services and tools that must read it (the control plane, the
//! agent, the owner's CLI); the verifying crates take the time as a parameter instead.

use veil_attest_core::UnixTime;

/// Now, as seconds since the epoch (0 if the clock is before 1970).
pub fn now() -> UnixTime {
    UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0),
    )
}
