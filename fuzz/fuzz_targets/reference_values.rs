#![no_main]
//! Reference-values documents (YAML/JSON) and their detached signatures.

use libfuzzer_sys::fuzz_target;
use veil_reference::{ReferenceValues, signing};

const KEY: &[u8] = b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEDWM58nefMIO7ItXHfnN0m+C2ejH5\n0Te0bPxc60aQmutUFjlEs/NrOjITE9DqH/GNnUFZKuziuLIGMil77DuKdg==\n-----END PUBLIC KEY-----\n";

fuzz_target!(|data: &[u8]| {
    if let Ok(doc) = ReferenceValues::parse(data) {
        let _ = doc.to_yaml();
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = signing::verify(KEY, b"document", s);
    }
});
