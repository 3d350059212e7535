//! What the tests share: owners' and operators' Ed25519 keys signing requests.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;

use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_cas::Session;
use veil_cas::policy::{self, Action, Rule, Signature};
use veil_cas::service::{AuditEvent, Cas};
use veil_cas::workload::{NodeAppraiser, NodeFacts};

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

/// Stands in for the control plane's TPM appraisal of node quotes: a node's "quote" is its
/// Ed25519 signature of the binding (the TPM path is tested with real TPMs in veil-cluster).
pub struct SignedBindings {
    pub nodes: BTreeMap<String, Vec<u8>>,
}

impl SignedBindings {
    /// `worker-0`, the cluster's one admitted node, holding `Key::new(3)`.
    pub fn admitted() -> Self {
        Self {
            nodes: BTreeMap::from([(
                "worker-0".to_string(),
                Key::new(3).0.public_key().as_ref().to_vec(),
            )]),
        }
    }
}

impl NodeAppraiser for SignedBindings {
    fn appraise(&self, node: &str, quote: &[u8], binding: &[u8; 64]) -> Result<NodeFacts, String> {
        let pk = self
            .nodes
            .get(node)
            .ok_or_else(|| format!("{node} is not an admitted node"))?;
        UnparsedPublicKey::new(&ED25519, pk)
            .verify(binding, quote)
            .map_err(|_| "the quote does not verify over the evidence's binding".to_string())?;
        Ok(NodeFacts {
            reference_set: "veil-mini".into(),
            tee: "tpm".into(),
            tcb: None,
        })
    }
}

/// Every entry of the CAS's audit log.
pub fn entries(cas: &Cas) -> Vec<AuditEvent> {
    cas.log().with_log(|log| {
        (0..log.size())
            .map(|i| AuditEvent::parse(&log.entry(i).unwrap()).unwrap())
            .collect()
    })
}
