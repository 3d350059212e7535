//! Attested TLS.
//!
//! TLS 1.3 (rustls, mutual) where each side's certificate carries its attestation evidence,
//! made for this connection:
//!
//! 1. before TLS, each side sends a hello in the clear: a fresh 32-byte nonce, whether it
//!    attests and whether it requires the peer's evidence, and a 32-byte context it vouches for
//!    ([`Attester::context`], e.g. the hash of another key it holds);
//! 2. each attesting side makes evidence whose report data is
//!    `SHA-512("veil-atls-v3\0" ‖ verifier's nonce ‖ attester's nonce ‖ context ‖ SHA-256(own TLS SPKI) ‖ verifier's flags ‖ attester's flags)`
//!    and puts it in the self-signed certificate of its TLS key (extension [`EVIDENCE_OID`]);
//! 3. the TLS 1.3 handshake runs with those certificates: each side's CertificateVerify
//!    proves it holds the key the evidence names;
//! 4. each verifying side appraises the evidence in the peer's certificate against the value
//!    it computes from its own nonce, the peer's nonce and the peer certificate's key, and the
//!    two sides exchange verdicts inside TLS, so a refused peer learns why and no request is
//!    served before both verdicts are in.
//!
//! Evidence therefore cannot be replayed (the verifier's nonce is fresh), relayed into another
//! connection or moved to another TLS key (a man in the middle cannot sign the handshake with
//! the key the evidence names, and evidence copied into a certificate of its own key binds the
//! wrong key). What evidence is and how it is appraised is pluggable ([`Attester`],
//! [`Appraiser`]): a TPM quote for Veil nodes, SNP/TDX reports elsewhere.

pub mod cmw;
mod protocol;
mod tls;

pub use protocol::{
    AppraiseError, Appraiser, AtlsError, AttestError, Attester, BindingInput, Peer, binding,
    blocking, client, read_frame, server, server_optional, write_frame,
};
pub use tls::{EVIDENCE_OID, EVIDENCE_OID_DOTTED, Identity, client_config, server_config};
