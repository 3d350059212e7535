//! Veil's appraisal: everything the owner, a control plane or a node decides from bytes it
//! received, as pure functions of those bytes, the reference values and the time.
//!
//! - [`node`]: a node's TPM evidence (restricted AK, quote, binding, event log, cluster PCR,
//!   reference values of its role).
//! - [`endorsement`]: a TPM's identity (node ID from the EK certificate, the quote's signer
//!   under that EK).
//! - [`owner`]: the owner's signatures on commands and approval lists.
//! - [`report`]: a control plane's signed cluster report, checked against the workspace.
//!
//! No I/O, no clock, no TPM library, no async runtime: the shells (`veil-cluster`,
//! `veil-client`, the agent, the CLI) do that and call these.

pub mod endorsement;
pub mod node;
pub mod owner;
pub mod report;

pub use node::{AppraisalError, Membership, NodeClaims, TpmAppraiser};
