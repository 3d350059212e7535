#![no_main]
//! The PCR values text format.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = veil_attest_tpm::parse_pcr_text(s);
    }
});
