//! Verification of TPM 2.0 quotes.
//!
//! Chain of evidence: the **attestation key** (endorsed by an AK/EK certificate chain to a
//! configured root, pinned by the reference values, or vouched for by another report such as
//! an Azure HCL report) signs a **TPMS_ATTEST** whose `extraData` is the verifier's nonce and
//! whose `pcrDigest` commits to the quoted **PCR values**; a **TCG event log** must replay to
//! those values. Only then do the reference values ([`TpmPolicy`]) apply.
//!
//! Pure: no TPM access, no I/O, no clock.

pub mod alg;
pub mod credential;
mod error;
pub mod eventlog;
pub mod evidence;
pub mod pcrs;
pub mod structures;
mod verify;

pub use alg::HashAlg;
pub use error::{TpmError, TpmPolicyViolation};
pub use eventlog::EventLog;
pub use pcrs::{PcrValues, parse_pcr_text};
pub use structures::{Public, Quote, Signature};
pub use verify::{
    AkEndorsement, AkTrust, EventClaim, HexValue, OneOrMany, QuoteEvidence, QuoteSignature,
    TpmClaims, TpmPolicy, authenticate, check_policy, verify_quote,
};
