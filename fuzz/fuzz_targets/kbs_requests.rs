//! What reaches the CAS's KBS endpoint from the network, and what a KBS client reads back:
//! the client's request and attestation (checked against a fixed challenge), its `tee-pubkey`,
//! and, on the client's side, an HTTP answer and a JWE response. Never a panic; an attestation
//! that passes yields report data of the selected hash's length and a key that seals.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_cas::kbs::{self, HashAlgorithm};

struct NoEvidence;

impl veil_kbs_client::EvidenceProvider for NoEvidence {
    fn tee(&self) -> String {
        "tpm".into()
    }
    fn evidence(&self, _: &[u8]) -> Result<serde_json::Value, String> {
        Err("none".into())
    }
}

fn client() -> &'static veil_kbs_client::Client<NoEvidence> {
    static C: OnceLock<veil_kbs_client::Client<NoEvidence>> = OnceLock::new();
    C.get_or_init(|| {
        veil_kbs_client::Client::new("http://127.0.0.1:1", NoEvidence).unwrap_or_else(|_| {
            std::process::abort();
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            let _ = kbs::check_request(rest);
        }
        1 => {
            let alg = [HashAlgorithm::Sha256, HashAlgorithm::Sha384, HashAlgorithm::Sha512]
                [usize::from(selector / 4) % 3];
            if let Ok((_, report, key)) = kbs::check_attestation(&[0; 32], alg, rest) {
                assert_eq!(report.len(), alg.digest(b"").len());
                assert!(key.seal(b"fuzz").is_ok());
            }
        }
        2 => {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(rest)
                && let Ok(key) = kbs::jwe::RecipientKey::from_jwk(&v)
            {
                assert!(key.seal(rest).is_ok());
            }
        }
        _ => {
            let _ = veil_kbs_client::http::parse(rest);
            let _ = client().open(rest);
        }
    }
});
