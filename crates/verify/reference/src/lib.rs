//! What a good Veil node measures, and the signed reference values that say so.
//!
//! - [`launch`]: the measured launch — agent binary → PCR 8, agent configuration → PCR 9, node
//!   image description → PCR 11, cluster ID → PCR 15 after joining — and its TCG event log.
//! - [`ReferenceValues`]: named measurement sets (expected PCRs per node role) of which any
//!   may match, so upgrades never lock out running nodes; accepted TPM roots; whether local
//!   (insecure) roots are accepted.
//! - [`node_config`]: the agent's configuration and what of it is measured into PCR 9.
//! - [`signing`]: detached ECDSA P-256 signatures in cosign's blob format, verifiable with
//!   `cosign verify-blob` or `openssl dgst -sha256 -verify`.

mod document;
pub mod launch;
pub mod node_config;
pub mod signing;

pub use document::{
    DocumentError, MeasurementSet, NoSetMatches, ReferenceValues, VERSION, first_violation,
};
