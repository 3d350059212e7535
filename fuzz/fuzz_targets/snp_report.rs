#![no_main]
//! SNP report parsing, and full verification against a real VCEK (must never panic).

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_attest_core::UnixTime;
use veil_attest_core::x509::Certificate;
use veil_attest_snp::{AmdRoots, AttestationReport, Signer, SnpPolicy};

fn signer() -> &'static Signer {
    static S: OnceLock<Signer> = OnceLock::new();
    S.get_or_init(|| {
        let vcek = include_bytes!("../../testvectors/snp/milan-virtee/vcek_milan.der");
        let vcek = Certificate::from_der(vcek, "VCEK").expect("vector VCEK parses");
        let roots = AmdRoots::pinned().expect("bundled roots");
        Signer::establish(&vcek, &[], roots, UnixTime(1_767_225_600)).expect("vector chain")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = AttestationReport::parse(data) {
        let _ = r.product();
    }
    let _ = signer().verify_report(data, &SnpPolicy::default(), UnixTime(1_767_225_600));
});
