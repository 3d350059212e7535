//! The node-to-node mesh: a userspace WireGuard device.
//!
//! A [`Device`] owns a TUN interface in the node's network namespace and a UDP socket, and
//! speaks the WireGuard protocol (boringtun's Noise core) with exactly the peers it is given:
//! the control plane hands an attested node the current peer set (public keys, endpoints,
//! mesh addresses) and [`Device::set_peers`] replaces it, so a node that is not attested is in
//! nobody's peer set and a removed node is cut off at once. A packet is accepted from a peer
//! only if its inner source is that peer's mesh address, and sent to a peer only if its inner
//! destination is.
//!
//! Keys are made inside the node ([`MeshKey::generate`]); only the public key leaves it.

mod device;
mod strict;

pub use device::{Device, DeviceConfig, PeerConfig, Stats, fuzz_datagram};
pub use strict::{StrictPolicy, TABLE as STRICT_TABLE};

use boringtun::x25519::{PublicKey, StaticSecret};

/// A mesh operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeshError {
    /// The TUN device could not be created or configured.
    #[error("TUN device {name}: {source}")]
    Tun {
        /// Interface name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The UDP socket could not be opened.
    #[error("UDP socket {addr}: {source}")]
    Udp {
        /// Address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key was not what it should be.
    #[error("key: {0}")]
    Key(String),
    /// A peer set is inconsistent.
    #[error("peer set: {0}")]
    Peers(String),
    /// Strict mode could not be installed.
    #[error("strict mode: {0}")]
    Strict(String),
}

/// A node's WireGuard static key pair; the secret never leaves the node.
pub struct MeshKey {
    secret: StaticSecret,
}

impl std::fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MeshKey(public {})", self.public_base64())
    }
}

impl MeshKey {
    /// A fresh key pair from the system's randomness.
    pub fn generate() -> Self {
        Self {
            secret: StaticSecret::random_from_rng(rand_core::OsRng),
        }
    }

    /// From a secret's 32 bytes (e.g. a key `wg genkey` made, for interoperability tests).
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        Self {
            secret: StaticSecret::from(bytes),
        }
    }

    /// The public key.
    pub fn public(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// The public key in WireGuard's base64 form.
    pub fn public_base64(&self) -> String {
        encode_key(&self.public())
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

/// A key in WireGuard's base64 form.
pub fn encode_key(key: &[u8; 32]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// A key from WireGuard's base64 form.
pub fn decode_key(text: &str) -> Result<[u8; 32], MeshError> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| MeshError::Key(format!("`{}` is not base64: {e}", text.trim())))?;
    bytes
        .try_into()
        .map_err(|v: Vec<u8>| MeshError::Key(format!("expected 32 bytes, found {}", v.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_ones_are_named() {
        let k = MeshKey::generate();
        assert_eq!(decode_key(&k.public_base64()).unwrap(), k.public());
        assert_ne!(MeshKey::generate().public(), k.public());
        let e = decode_key("not base64!").unwrap_err().to_string();
        assert!(e.contains("not base64"), "{e}");
        let e = decode_key("AAAA").unwrap_err().to_string();
        assert!(e.contains("expected 32 bytes, found 3"), "{e}");
        assert!(!format!("{k:?}").contains("secret"));
    }
}
