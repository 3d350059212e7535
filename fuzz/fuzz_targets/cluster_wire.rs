#![no_main]
//! What reaches a control plane or the owner from the network: request and response frames,
//! node certificates shown with key requests, signed cluster reports and owner approval lists.

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_attest_core::UnixTime;
use veil_cluster::ca::ClusterCa;
use veil_wire::proto::{Request, Response};
use veil_appraisal::report::{Expectations, SignedReport, verify_report};
use veil_keys::{ClusterSecrets, SecretBytes};
use veil_reference::ReferenceValues;

fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| {
        let master = SecretBytes::from_slice("fuzz", &mut [7u8; 32]).expect("32 bytes");
        ClusterCa::derive(&ClusterSecrets::new(master, [9u8; 32])).expect("derivable")
    })
}

/// Some owner's public key (PEM).
const OWNER_KEY: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE7rBCBt5IHiRkTCmMKkLyNaB/rtKO\nSfqHhOvGht8fx8cpLrPeNOBVxcVhpsVb++4GqV81ALMqKGEDsjx+ya7ccg==\n-----END PUBLIC KEY-----\n";

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Request>(data);
    let _ = serde_json::from_slice::<Response>(data);
    let _ = ca().verify(data, UnixTime(1_900_000_000));
    // An approval list a peer control plane hands over (checked against the owner's key).
    if let Ok(a) = serde_json::from_slice::<veil_wire::owner::SignedApprovals>(data) {
        let _ = veil_appraisal::owner::verify_approvals_for_any_cluster(&a, OWNER_KEY.as_bytes());
    }
    if let Ok(signed) = serde_json::from_slice::<SignedReport>(data) {
        let exp = Expectations {
            reference: ReferenceValues {
                version: 1,
                insecure_local_roots: true,
                tpm_roots: vec![],
                sets: vec![],
            },
            cluster_id: vec![0u8; 32],
            control_plane_aks: vec![[1u8; 32]],
            approvals: veil_wire::owner::Approvals {
                version: 1,
                cluster_id: "00".repeat(32),
                serial: 1,
                nodes: vec![],
            },
            nonce: None,
            now: UnixTime(1_900_000_000),
        };
        let _ = verify_report(&signed, &exp);
    }
});
