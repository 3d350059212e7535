#![no_main]
//! Certificates (DER and PEM bundles), CRLs and public keys.

use libfuzzer_sys::fuzz_target;
use veil_attest_core::x509::{Certificate, Crl, public_key_from_spki};

fuzz_target!(|data: &[u8]| {
    if let Ok(certs) = Certificate::parse_many(data, "fuzz") {
        for c in &certs {
            let _ = c.verify_signed_by(c);
            let _ = c.public_key();
        }
    }
    let _ = Crl::parse(data, "fuzz");
    let _ = public_key_from_spki(data);
});
