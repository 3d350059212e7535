//! Kubernetes inside Veil's trust chain.
//!
//! - [`pki`]: Kubernetes' CAs and service-account key, derived from the master secret.
//! - [`kms`]: the KMS v2 plugin that keeps Secrets encrypted in etcd under a derived key.

pub mod kms;
pub mod pki;
