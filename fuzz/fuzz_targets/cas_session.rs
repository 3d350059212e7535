//! A session document as the CAS receives it (JSON or YAML from a client): never a panic;
//! what parses validates, hashes, and parses back from its JSON to the same hash.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_cas::Session;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = Session::parse(data) {
        let h = s.hash().ok();
        let json = serde_json::to_vec(&s).unwrap_or_default();
        assert_eq!(Session::parse(&json).ok().and_then(|t| t.hash().ok()), h);
    }
});
