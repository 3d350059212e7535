//! Veil's key hierarchy.
//!
//! The owner's 32-byte master secret and a 32-byte salt are the root. Every key is derived
//! with HKDF-SHA256 (extract with the salt, expand with `veil/v1/key/<key id>`), so the same
//! master secret always yields the same keys — which is what lets `veil recover` restore a
//! cluster after every control-plane node restarted. The cluster ID is derived the same way
//! and is public. Secrets zeroize on drop and never print.

use std::fmt;

use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use zeroize::{Zeroize, Zeroizing};

/// A problem with a key ID or secret material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key ID does not have an accepted form.
    #[error("key ID `{id}`: {reason}")]
    BadKeyId {
        /// The ID (truncated).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// Secret material of the wrong length.
    #[error("{what}: expected 32 bytes, found {found}")]
    Length {
        /// Which secret.
        what: &'static str,
        /// Length found.
        found: usize,
    },
    /// The KDF failed.
    #[error("key derivation failed")]
    Derivation,
}

/// 32 secret bytes that zeroize on drop and print as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Zeroizing<[u8; 32]>);

impl SecretBytes {
    /// Takes 32 bytes (the source is zeroized).
    pub fn from_slice(what: &'static str, bytes: &mut [u8]) -> Result<Self, KeyError> {
        let arr: [u8; 32] = (&*bytes).try_into().map_err(|_| KeyError::Length {
            what,
            found: bytes.len(),
        })?;
        bytes.zeroize();
        Ok(Self(Zeroizing::new(arr)))
    }

    /// The bytes, for use (not for logging).
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The public identity of a cluster, derived from its master secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(pub [u8; 32]);

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterId({self})")
    }
}

/// A stable key identifier: `cluster/<purpose>`, `node/<node-id>/<purpose>` or
/// `volume/<volume-id>`; segments of
/// `[a-z0-9-]`, at most 128 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

/// Who may receive a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Only the control plane.
    ControlPlane,
    /// Only the node with this ID.
    Node(String),
}

impl KeyId {
    /// Parses and validates a key ID.
    pub fn parse(s: &str) -> Result<Self, KeyError> {
        let bad = |reason| KeyError::BadKeyId {
            id: s.chars().take(64).collect(),
            reason,
        };
        if s.is_empty() || s.len() > 128 {
            return Err(bad("must be 1 to 128 characters"));
        }
        let segments: Vec<&str> = s.split('/').collect();
        let seg_ok = |x: &&str| {
            !x.is_empty()
                && x.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        };
        if !segments.iter().all(seg_ok) {
            return Err(bad("segments must be non-empty [a-z0-9-]"));
        }
        match segments.as_slice() {
            ["cluster", _] | ["node", _, _] | ["volume", _] => Ok(Self(s.to_string())),
            _ => Err(bad(
                "expected cluster/<purpose>, node/<node-id>/<purpose> or volume/<volume-id>",
            )),
        }
    }

    /// The key ID of a node's key for `purpose`.
    pub fn node(node_id: &str, purpose: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("node/{node_id}/{purpose}"))
    }

    /// The key ID of persistent volume `volume_id`'s key.
    pub fn volume(volume_id: &str) -> Result<Self, KeyError> {
        Self::parse(&format!("{}{volume_id}", veil_wire::ids::KEY_VOLUME_PREFIX))
    }

    /// Who may receive this key (a volume's key: the control plane, which releases it only to
    /// the node the volume is attached to).
    pub fn owner(&self) -> Owner {
        match self.0.split('/').collect::<Vec<_>>().as_slice() {
            ["node", id, _] => Owner::Node((*id).to_string()),
            _ => Owner::ControlPlane,
        }
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The root of a cluster's keys.
#[derive(Clone, Debug)]
pub struct ClusterSecrets {
    master: SecretBytes,
    salt: [u8; 32],
}

impl ClusterSecrets {
    /// From the master secret and salt.
    pub fn new(master: SecretBytes, salt: [u8; 32]) -> Self {
        Self { master, salt }
    }

    fn expand(&self, info: &[u8]) -> Result<SecretBytes, KeyError> {
        let prk = Salt::new(HKDF_SHA256, &self.salt).extract(self.master.expose());
        let mut out = Zeroizing::new([0u8; 32]);
        prk.expand(&[info], Len32)
            .and_then(|okm| okm.fill(out.as_mut()))
            .map_err(|_| KeyError::Derivation)?;
        Ok(SecretBytes(out))
    }

    /// The cluster ID (public).
    pub fn cluster_id(&self) -> Result<ClusterId, KeyError> {
        Ok(ClusterId(
            *self.expand(veil_wire::ids::HKDF_CLUSTER_ID)?.expose(),
        ))
    }

    /// The key with this ID.
    pub fn derive(&self, id: &KeyId) -> Result<SecretBytes, KeyError> {
        self.expand(format!("{}{}", veil_wire::ids::HKDF_KEY_PREFIX, id.as_str()).as_bytes())
    }

    /// The P-256 signing key derived under `id`, as PKCS#8 v1 DER (zeroized on drop): the same
    /// master secret always gives the same key pair. The derived 32 bytes are the private scalar;
    /// one outside the curve's order (probability about 2^-32) is refused, not altered.
    pub fn derive_p256(&self, id: &KeyId) -> Result<Zeroizing<Vec<u8>>, KeyError> {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let scalar = self.derive(id)?;
        // RFC 5915 ECPrivateKey { version 1, privateKey, [0] prime256v1 }.
        let mut der = Zeroizing::new(vec![0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20]);
        der.extend_from_slice(scalar.expose());
        der.extend_from_slice(&[
            0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]);
        let kp = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
            .map_err(|_| KeyError::Derivation)?;
        let pkcs8 = kp.to_pkcs8v1().map_err(|_| KeyError::Derivation)?;
        Ok(Zeroizing::new(pkcs8.as_ref().to_vec()))
    }

    /// The master secret itself: only to hand it to the owner's tools or to another attested
    /// control-plane node of the same cluster.
    pub fn master(&self) -> &SecretBytes {
        &self.master
    }

    /// The salt (public).
    pub fn salt(&self) -> [u8; 32] {
        self.salt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(m: u8) -> ClusterSecrets {
        ClusterSecrets::new(
            SecretBytes::from_slice("master", &mut [m; 32]).unwrap(),
            [9; 32],
        )
    }

    #[test]
    fn derivation_is_stable_and_separated() {
        let s = secrets(1);
        let a = KeyId::node("n1", "state").unwrap();
        let b = KeyId::node("n2", "state").unwrap();
        assert_eq!(s.derive(&a).unwrap(), secrets(1).derive(&a).unwrap());
        assert_ne!(s.derive(&a).unwrap(), s.derive(&b).unwrap());
        assert_ne!(s.derive(&a).unwrap(), secrets(2).derive(&a).unwrap());
        assert_ne!(s.cluster_id().unwrap().0, *s.derive(&a).unwrap().expose());
        // RFC 5869-style check of the construction against an independent HMAC computation.
        let prk = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &[9; 32]),
            &[1; 32],
        );
        let mut t1 = b"veil/v1/key/node/n1/state".to_vec();
        t1.push(1);
        let okm = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, prk.as_ref()),
            &t1,
        );
        assert_eq!(s.derive(&a).unwrap().expose().as_slice(), okm.as_ref());
    }

    #[test]
    fn derived_p256_keys_are_stable_and_separated() {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let public = |s: &ClusterSecrets, id: &str| {
            let der = s.derive_p256(&KeyId::parse(id).unwrap()).unwrap();
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
                .unwrap()
                .public_key()
                .as_ref()
                .to_vec()
        };
        assert_eq!(
            public(&secrets(1), "cluster/a"),
            public(&secrets(1), "cluster/a")
        );
        assert_ne!(
            public(&secrets(1), "cluster/a"),
            public(&secrets(1), "cluster/b")
        );
        assert_ne!(
            public(&secrets(1), "cluster/a"),
            public(&secrets(2), "cluster/a")
        );
    }

    #[test]
    fn key_ids_and_owners() {
        assert_eq!(
            KeyId::parse("node/n1/state").unwrap().owner(),
            Owner::Node("n1".into())
        );
        assert_eq!(
            KeyId::parse("cluster/etcd").unwrap().owner(),
            Owner::ControlPlane
        );
        // A volume's key is never a node's own: get_key does not release it.
        assert_eq!(
            KeyId::volume("v-00ff").unwrap().owner(),
            Owner::ControlPlane
        );
        assert_eq!(KeyId::volume("v-00ff").unwrap().as_str(), "volume/v-00ff");
        for bad in [
            "volume/",
            "volume/a/b",
            "volume/V-1",
            "",
            "node/n1",
            "node/N1/state",
            "node//x",
            "x/y",
            "node/n1/state/extra",
            "cluster/a b",
        ] {
            assert!(KeyId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let s = secrets(7);
        assert!(!format!("{s:?}").contains("7, 7"));
        assert!(format!("{s:?}").contains("<redacted>"));
        let mut short = [1u8; 16];
        assert_eq!(
            SecretBytes::from_slice("master", &mut short).unwrap_err(),
            KeyError::Length {
                what: "master",
                found: 16
            }
        );
    }
}
