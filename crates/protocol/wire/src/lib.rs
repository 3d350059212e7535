//! Veil's wire: what its components say to each other, as plain types.
//!
//! - [`ids`]: the one registry of every identifier on the wire or under a signature.
//! - [`proto`]: requests and responses of the control-plane services (JSON frames inside
//!   attested TLS).
//! - [`owner`]: the owner's signed commands and approval lists.
//! - [`report`]: the cluster report a control plane signs for the owner.
//! - [`status`]: the status file a node agent writes.
//!
//! No I/O, no crypto beyond the digests that name documents: signing and verifying are
//! `veil-appraisal`'s, sending is `veil-client`'s and `veil-cluster`'s.

pub mod ids;
pub mod owner;
pub mod proto;
pub mod report;
pub mod status;
