//! What the tests share: owners' and operators' Ed25519 keys signing requests.

#![allow(dead_code, clippy::unwrap_used)]

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_cas::Session;
use veil_cas::policy::{self, Action, Rule, Signature};

/// An Ed25519 key from a one-byte seed.
pub struct Key(pub Ed25519KeyPair);

impl Key {
    pub fn new(seed: u8) -> Self {
        Self(Ed25519KeyPair::from_seed_unchecked(&[seed; 32]).unwrap())
    }
    pub fn public(&self) -> String {
        STANDARD.encode(self.0.public_key().as_ref())
    }
    /// A rule of this key alone.
    pub fn rule(&self) -> Rule {
        Rule {
            keys: vec![self.public()],
            require: None,
        }
    }
    pub fn sign(&self, action: Action, name: &str, hash: &[u8; 32]) -> Signature {
        Signature {
            key: self.public(),
            signature: STANDARD.encode(self.0.sign(&policy::payload(action, name, hash)).as_ref()),
        }
    }
    /// This key's signature provisioning it as the owner.
    pub fn sign_provision(&self) -> Signature {
        self.sign(
            Action::Provision,
            "-",
            &policy::rule_hash(&self.rule()).unwrap(),
        )
    }
    /// A signature of `action` with the session document `doc`.
    pub fn sign_session(&self, action: Action, doc: &str) -> Signature {
        let s = Session::parse(doc.as_bytes()).unwrap();
        self.sign(action, &s.name, &s.hash().unwrap().0)
    }
}
