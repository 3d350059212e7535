#![no_main]
//! Collateral documents: the JSON form, and PCS TCB info / QE identity responses.

use libfuzzer_sys::fuzz_target;
use veil_attest_core::UnixTime;
use veil_attest_dcap::{Collateral, PcsFiles, VerifiedCollateral, intel_root};

fuzz_target!(|data: &[u8]| {
    let root = match intel_root() {
        Ok(r) => r,
        Err(_) => return,
    };
    if let Ok(c) = Collateral::from_json(data) {
        let _ = VerifiedCollateral::verify(&c, &root, UnixTime(1_751_328_000));
    }
    let files = PcsFiles {
        tcb_info: data,
        tcb_info_issuer_chain: data,
        qe_identity: data,
        qe_identity_issuer_chain: data,
        pck_crl: data,
        pck_crl_issuer_chain: data,
        root_crl: data,
    };
    let _ = Collateral::from_pcs(&files);
});
