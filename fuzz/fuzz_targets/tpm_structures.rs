#![no_main]
//! TPMS_ATTEST, TPMT_SIGNATURE and TPMT_PUBLIC/TPM2B_PUBLIC.

use libfuzzer_sys::fuzz_target;
use veil_attest_tpm::{Public, Quote, Signature};

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    let _ = Signature::parse(data);
    let _ = Public::parse(data);
});
