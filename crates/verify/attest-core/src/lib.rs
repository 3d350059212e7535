//! Shared building blocks of Veil's evidence verifiers.
//!
//! Everything here is pure: no I/O, no clock. Verifiers receive the current time as a
//! [`UnixTime`] parameter, and parse attacker-controlled bytes through the bounded
//! [`reader::Reader`], which never panics and names the field it could not read.
//!
//! - [`reader`]: bounds-checked little/big-endian parsing with typed [`Malformed`] errors.
//! - [`bytes`]: fixed-size byte values ([`Bytes`]) that print and serialise as hex.
//! - [`crypto`]: public keys and signature checks (aws-lc-rs), with the scheme named in errors.
//! - [`x509`]: owned certificates, CRLs, and chain validation against a pinned anchor.

pub mod bytes;
pub mod crypto;
pub mod reader;
pub mod time;
pub mod x509;

pub use bytes::Bytes;
pub use reader::{Malformed, Reader};
pub use time::UnixTime;
