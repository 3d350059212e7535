//! A TPM's identity: its EK certificate names it (the node ID), and a quote is bound to it
//! when the TPM computed its signer's Qualified Name under that EK.

use sha2::{Digest, Sha256};
use veil_attest_core::x509::Certificate;

/// Node IDs come from the EK certificate: stable for the life of the TPM.
pub fn node_id(ek_cert: &Certificate) -> String {
    format!(
        "node-{}",
        hex::encode(ek_cert.fingerprint().get(..6).unwrap_or_default())
    )
}

/// Checks that the quote was signed by `ak` as a child of `ek`: the Qualified Name the TPM put
/// in the quote is the one that key has under that EK. Credential activation then proves the
/// key with that Name is in the TPM of that EK.
pub fn check_signer_under_ek(
    ek: &veil_attest_tpm::Public,
    ak: &veil_attest_tpm::Public,
    qualified_signer: &[u8],
) -> Result<(), String> {
    let want = veil_attest_tpm::structures::qualified_name_under_ek(ek, ak)
        .ok_or("the AK or EK has no name algorithm")?;
    if want != qualified_signer {
        return Err(format!(
            "qualifiedSigner: expected {} (the AK's Qualified Name under this EK), found {}",
            hex::encode(want),
            hex::encode(qualified_signer)
        ));
    }
    Ok(())
}

/// SHA-256 helper for callers that identify AKs.
pub fn spki_sha256(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}
