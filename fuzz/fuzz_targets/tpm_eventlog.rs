#![no_main]
//! TCG event logs (crypto-agile and SHA-1) and their replay.

use libfuzzer_sys::fuzz_target;
use veil_attest_tpm::EventLog;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = EventLog::parse(data) {
        let _ = log.replay();
        let _ = log.to_bytes();
    }
});
