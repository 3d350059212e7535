//! The Configuration and Attestation Service's sessions.
//!
//! A session is a policy document, in the spirit of SCONE's: a `name` in namespaces
//! (`acme/payments/api`), a `version`, the `predecessor` it replaces (the hash of that session:
//! mandatory on update, forbidden on create, so no update is lost), `services` whose
//! `attestation` is an OR of AND-variants over what the node's agent proves of a workload
//! (image digests, namespace, service account, the node's reference-value set, TEE facts) with
//! the environment, arguments and files they get, `secrets` of several kinds, and an
//! `access_policy` saying which keys may read it, update it, and create sessions below it,
//! with `require-all` or `require-at-least-N` governance.
//!
//! - [`session`]: the document, its validation, and its hash: SHA-256 over its RFC 8785
//!   canonical JSON (`serde_json_canonicalizer`), so anyone can recompute it.
//! - [`policy`]: access policies and their governance, over Ed25519 signatures of a request.
//! - [`matching`]: which service of a session a workload is, from what was attested of it.
//! - [`registry`]: the rules of the store: who creates top-level sessions (the owner who
//!   provisioned the CAS, and nobody else), who creates below, who updates (with the right
//!   predecessor), who reads.
//! - [`secrets`]: secrets' values, generated unless given, kept across updates.
//! - [`workload`]: the evidence a node's agent gives for a workload, bound to a nonce and the
//!   node's quote, and the nonces.
//! - [`database`]: the sealed `redb` database and its backups.
//! - [`service`]: the CAS itself: every decision in the audit log before it takes effect.
//! - [`kbs`]: Confidential Containers' key-broker protocol (0.4.0) in front of it, over HTTP.

pub mod database;
pub mod kbs;
pub mod matching;
pub mod policy;
pub mod registry;
pub mod secrets;
pub mod service;
pub mod session;
pub mod workload;

pub use session::{Session, SessionHash};

/// Why a session, a request or a workload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CasError {
    /// The session document is malformed or invalid.
    #[error("session: {0}")]
    Invalid(String),
    /// The request is not authorised by the access policy.
    #[error("not authorised: {0}")]
    Unauthorised(String),
    /// The predecessor is missing, given on create, or not the current session's hash.
    #[error("predecessor: {0}")]
    Predecessor(String),
    /// No such session.
    #[error("no session {0}")]
    NotFound(String),
    /// The workload matches no attestation variant of the service, or its evidence is refused.
    #[error("attestation: {0}")]
    NotAttested(String),
    /// The database or a backup cannot be read or written.
    #[error("database: {0}")]
    Database(String),
    /// The audit log cannot be written: nothing is done that it does not record.
    #[error("audit log: {0}")]
    Audit(String),
}
