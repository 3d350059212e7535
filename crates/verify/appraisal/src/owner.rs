//! The owner's authority: commands and node approvals signed by the owner's key.
//!
//! Every node's measured configuration names the owner's public key (PCR 9 covers the SHA-256
//! of its SubjectPublicKeyInfo), so a control plane knows whose word counts before it holds
//! any secret: only a command the owner signed initialises it, recovers it, makes it report,
//! removes a node, and only an approval list the owner signed says which TPMs may join in
//! which role. Signatures are ECDSA P-256 (the cosign blob format of
//! [`veil_reference::signing`]) over a domain-separated message ([`veil_wire::ids`]); a
//! command also carries the time it was made, so an old one is not accepted later, and names
//! the cluster it is for.

use veil_reference::signing;
pub use veil_wire::owner::{
    APPROVALS_VERSION, Approvals, ApprovedNode, MAX_SKEW_SECS, OwnerAuth, SignedApprovals,
    approvals_message, command_message, commands,
};
use zeroize::Zeroizing;

/// Why the owner's word was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OwnerError {
    /// The command is too old or from the future.
    #[error(
        "the command was made at {at}, {skew}s from this control plane's clock (at most {MAX_SKEW_SECS}s)"
    )]
    Stale {
        /// When it was made.
        at: i64,
        /// How far from now.
        skew: i64,
    },
    /// The signature does not verify with the owner's key.
    #[error("the owner's signature does not verify: {0} (it is not from this cluster's owner)")]
    Signature(String),
    /// An approval list that cannot be used.
    #[error("approvals: {0}")]
    Approvals(String),
    /// The owner's private key cannot sign.
    #[error("owner key: {0}")]
    Key(String),
}

/// The owner's private key (PKCS#8 PEM), held by the owner's tools only.
pub struct OwnerKey {
    private_pem: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerKey(<redacted>)")
    }
}

impl OwnerKey {
    /// The key from its PKCS#8 PEM.
    pub fn from_pem(private_pem: Vec<u8>) -> Result<Self, OwnerError> {
        let key = Self {
            private_pem: Zeroizing::new(private_pem),
        };
        key.sign(b"probe")?;
        Ok(key)
    }

    fn sign(&self, message: &[u8]) -> Result<String, OwnerError> {
        signing::sign(&self.private_pem, message).map_err(|e| OwnerError::Key(e.to_string()))
    }

    /// Signs `command` as made at `at`.
    pub fn authorise(&self, command: &str, at: i64) -> Result<OwnerAuth, OwnerError> {
        Ok(OwnerAuth {
            at,
            signature: self.sign(&command_message(command, at))?,
        })
    }
}

/// Checks that the owner (public key `owner_key`: SubjectPublicKeyInfo, DER or PEM) signed `command` within
/// [`MAX_SKEW_SECS`] of `now`.
pub fn check(
    owner_key: &[u8],
    command: &str,
    auth: &OwnerAuth,
    now: i64,
) -> Result<(), OwnerError> {
    let skew = now - auth.at;
    if skew.abs() > MAX_SKEW_SECS {
        return Err(OwnerError::Stale { at: auth.at, skew });
    }
    signing::verify(
        owner_key,
        &command_message(command, auth.at),
        &auth.signature,
    )
    .map_err(|e| OwnerError::Signature(e.to_string()))
}

/// Signs `approvals` with the owner's key.
pub fn sign_approvals(
    approvals: &Approvals,
    key: &OwnerKey,
) -> Result<SignedApprovals, OwnerError> {
    let document =
        serde_json::to_string(approvals).map_err(|e| OwnerError::Approvals(e.to_string()))?;
    Ok(SignedApprovals {
        signature: key.sign(&approvals_message(&document))?,
        document,
    })
}

/// The list in `signed`, if the owner (`owner_key`, DER or PEM) signed it for cluster `cluster_id`.
pub fn verify_approvals(
    signed: &SignedApprovals,
    owner_key: &[u8],
    cluster_id: &str,
) -> Result<Approvals, OwnerError> {
    let a = verify_approvals_for_any_cluster(signed, owner_key)?;
    if a.cluster_id != cluster_id {
        return Err(OwnerError::Approvals(format!(
            "the list is for cluster {}, not {cluster_id}",
            a.cluster_id
        )));
    }
    Ok(a)
}

/// The list in `signed`, if the owner signed it, whichever cluster it is for (the caller
/// checks [`Approvals::cluster_id`]).
pub fn verify_approvals_for_any_cluster(
    signed: &SignedApprovals,
    owner_key: &[u8],
) -> Result<Approvals, OwnerError> {
    signing::verify(
        owner_key,
        &approvals_message(&signed.document),
        &signed.signature,
    )
    .map_err(|e| OwnerError::Signature(e.to_string()))?;
    let a: Approvals =
        serde_json::from_str(&signed.document).map_err(|e| OwnerError::Approvals(e.to_string()))?;
    if a.version != APPROVALS_VERSION {
        return Err(OwnerError::Approvals(format!(
            "version: expected {APPROVALS_VERSION}, found {}",
            a.version
        )));
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (OwnerKey, String) {
        let (sk, pk) = signing::generate_key().unwrap();
        (OwnerKey::from_pem(sk.into_bytes()).unwrap(), pk)
    }

    #[test]
    fn only_the_owner_now_for_this_command() {
        let (sk, pk) = keys();
        let auth = sk.authorise("remove-node c node-1", 1000).unwrap();
        check(pk.as_bytes(), "remove-node c node-1", &auth, 1010).unwrap();
        assert!(matches!(
            check(pk.as_bytes(), "remove-node c node-2", &auth, 1010),
            Err(OwnerError::Signature(_))
        ));
        let (_, other) = keys();
        assert!(check(other.as_bytes(), "remove-node c node-1", &auth, 1010).is_err());
        assert!(matches!(
            check(pk.as_bytes(), "remove-node c node-1", &auth, 2000),
            Err(OwnerError::Stale { .. })
        ));
        let moved = OwnerAuth { at: 1001, ..auth };
        assert!(check(pk.as_bytes(), "remove-node c node-1", &moved, 1010).is_err());
    }

    #[test]
    fn approvals_are_the_owners_and_the_clusters() {
        let (sk, pk) = keys();
        let a = Approvals {
            version: APPROVALS_VERSION,
            cluster_id: "c1".into(),
            serial: 1,
            nodes: vec![ApprovedNode {
                ek_sha256: hex::encode([7u8; 32]),
                role: "worker".into(),
                name: "w".into(),
            }],
        };
        let s = sign_approvals(&a, &sk).unwrap();
        let back = verify_approvals(&s, pk.as_bytes(), "c1").unwrap();
        assert!(back.approves(&[7; 32], "worker"));
        assert!(!back.approves(&[7; 32], "control-plane"));
        assert!(!back.approves(&[8; 32], "worker"));
        assert!(verify_approvals(&s, pk.as_bytes(), "c2").is_err());
        let mut t = s.clone();
        t.document = t.document.replace("worker", "control-plane");
        assert!(matches!(
            verify_approvals(&t, pk.as_bytes(), "c1"),
            Err(OwnerError::Signature(_))
        ));
        // A command signature is not an approval signature, and the reverse.
        let auth = sk.authorise(&s.document, 0).unwrap();
        let forged = SignedApprovals {
            signature: auth.signature,
            ..s
        };
        assert!(verify_approvals(&forged, pk.as_bytes(), "c1").is_err());
    }
}
