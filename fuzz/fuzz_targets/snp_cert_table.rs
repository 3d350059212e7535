#![no_main]
//! The certificate table of an extended SNP report.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest_snp::cert_table::parse_cert_table(data);
});
