//! The KMS plugin's unwrap, fed what etcd holds (a host that can write etcd's files controls
//! these bytes) and any key ID: never a panic, never a plaintext but from a ciphertext this key
//! sealed.

#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_keys::{ClusterSecrets, SecretBytes};
use veil_kube::kms::Kms;

fuzz_target!(|data: &[u8]| {
    let Ok(master) = SecretBytes::from_slice("master", &mut [7u8; 32]) else {
        return;
    };
    let Ok(kms) = Kms::derive(&ClusterSecrets::new(master, [1; 32])) else {
        return;
    };
    // The first byte picks the key ID: this plugin's, or the rest read as text.
    let (sel, rest) = data.split_first().unwrap_or((&0, &[]));
    let id = if sel % 2 == 0 {
        kms.key_id().to_string()
    } else {
        String::from_utf8_lossy(rest.get(..rest.len().min(64)).unwrap_or_default()).into_owned()
    };
    if let Ok(plain) = kms.unwrap(&id, rest) {
        // Only a wrap of this key opens: the ciphertext is nonce ‖ sealed ‖ tag.
        assert_eq!(plain.len() + 12 + 16, rest.len());
    }
    // What it wraps, it unwraps.
    if let Ok(w) = kms.wrap(rest) {
        assert_eq!(kms.unwrap(kms.key_id(), &w).ok().as_deref(), Some(rest));
    }
});
