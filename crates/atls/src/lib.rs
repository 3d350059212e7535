//! Attested TLS.
//!
//! A TLS 1.3 connection (rustls, mutual, ephemeral self-signed certificates) followed, inside the
//! encrypted channel, by an exchange of attestation evidence that is bound to this connection:
//!
//! 1. each side sends a fresh 32-byte nonce (`Hello`);
//! 2. each attesting side produces evidence whose report data is
//!    `SHA-512("veil-atls-v1\0" ‖ exporter ‖ verifier's nonce ‖ SHA-256(own TLS SPKI))`, where
//!    `exporter` is the RFC 8446 keying-material exporter of this session (label
//!    `EXPORTER-veil-attested-tls`), unique to the handshake;
//! 3. each verifying side recomputes that value from its own view of the session and the peer's
//!    certificate, and appraises the evidence against it.
//!
//! Evidence therefore cannot be replayed (fresh nonce), relayed into another session (the
//! exporter differs on each leg of a man in the middle), or moved to another TLS key (the SPKI
//! hash). What evidence is and how it is appraised is pluggable ([`Attester`], [`Appraiser`]):
//! a TPM quote for Veil nodes, SNP/TDX reports elsewhere.

mod protocol;
mod tls;

pub use protocol::{
    Appraiser, AtlsError, Attester, BindingInput, Peer, binding, client, read_frame, server,
    server_optional, write_frame,
};
pub use tls::{Identity, client_config, server_config};
