#![no_main]
//! Azure HCL reports (header, IGVM block, variable-data JSON, JWK).

use libfuzzer_sys::fuzz_target;
use veil_attest_azure::HclReport;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = HclReport::parse(data) {
        let _ = h.expected_report_data();
        let _ = h.td_report_data();
    }
});
