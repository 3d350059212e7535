#![no_main]
//! Azure CVM evidence JSON (versions 0, 1, 2), then the HCL report it carries.

use libfuzzer_sys::fuzz_target;
use veil_attest_azure::{AzureEvidence, HclReport};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = AzureEvidence::from_json(data) {
        let _ = HclReport::parse(&ev.hcl_report);
    }
});
