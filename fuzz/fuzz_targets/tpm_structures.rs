#![no_main]
//! TPMS_ATTEST, TPMT_SIGNATURE, TPMT_PUBLIC/TPM2B_PUBLIC and Veil's TPM evidence envelope.

use libfuzzer_sys::fuzz_target;
use veil_attest_tpm::evidence::TpmEvidence;
use veil_attest_tpm::{Public, Quote, Signature};

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    let _ = Signature::parse(data);
    let _ = Public::parse(data);
    if let Ok(e) = TpmEvidence::parse(data) {
        let _ = e.to_bytes();
    }
});
