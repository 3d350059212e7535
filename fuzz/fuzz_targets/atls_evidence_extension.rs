//! The evidence extension of an attested-TLS certificate (a CMW record in `id-pe-cmw`), as a
//! verifier reads it from the peer's certificate: never a panic, never more than announced.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(evidence) = veil_atls::cmw::decode(data) {
        assert!(evidence.len() <= data.len());
        // What decodes re-encodes to the same bytes when it was in the shortest form.
        if let Ok(again) = veil_atls::cmw::encode(evidence)
            && again.len() == data.len()
        {
            assert_eq!(again, data);
        }
    }
});
