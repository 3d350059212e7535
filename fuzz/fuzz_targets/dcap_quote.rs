#![no_main]
//! DCAP quote parsing, and full verification against real collateral (must never panic).

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_attest_core::UnixTime;
use veil_attest_dcap::{Collateral, DcapPolicy, Quote, QuoteVerifier, VerifiedCollateral, intel_root};

const NOW: UnixTime = UnixTime(1_751_328_000); // 2025-07-01

fn verifier() -> &'static QuoteVerifier {
    static V: OnceLock<QuoteVerifier> = OnceLock::new();
    V.get_or_init(|| {
        let c = Collateral::from_json(include_bytes!(
            "../../testvectors/tdx/dcapqvl-v4-uptodate/collateral.json"
        ))
        .expect("vector collateral parses");
        let root = intel_root().expect("bundled root");
        QuoteVerifier::new(VerifiedCollateral::verify(&c, &root, NOW).expect("vector collateral verifies"))
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    let _ = verifier().verify(data, &DcapPolicy::default(), NOW);
});
