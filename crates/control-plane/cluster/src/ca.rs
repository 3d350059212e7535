//! The cluster CA: its key is derived from the master secret (so it is the same after
//! recovery, and on every control-plane node), and it certifies each admitted node's own key.
//!
//! A node certificate names the node (CN and DNS name = node ID) and carries, as URIs in its
//! subject alternative names, the node's role (`urn:veil:role:<role>`) and the SHA-256 of the
//! attestation key the node proved in its TPM at join (`urn:veil:ak-sha256:<hex>`). Any
//! control-plane node holding the master secret can thus recognise a joined node from its
//! certificate and a fresh quote by that AK, without a shared registry.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SubjectPublicKeyInfo,
};
use veil_attest_core::UnixTime;
use veil_attest_core::x509::{Certificate, verify_chain};
use veil_keys::{ClusterSecrets, KeyId};
use veil_wire::ids::{AK_URI, ROLE_URI};

/// A fresh P-256 key for a node certificate, as its SubjectPublicKeyInfo (DER). Only the public
/// half is returned: nothing signs with a node key yet, the certificate serves as the node's
/// credential together with the AK it names.
pub fn fresh_node_key() -> Result<Vec<u8>, String> {
    use aws_lc_rs::signature::KeyPair;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
        .map_err(|_| "cannot generate a node key".to_string())?;
    let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref())
        .map_err(|_| "cannot load the node key".to_string())?;
    veil_attest_core::crypto::PublicKey::ec(
        veil_attest_core::crypto::KeyType::EcP256,
        kp.public_key().as_ref(),
    )
    .and_then(|k| k.spki_der())
    .map_err(|e| format!("node key: {e}"))
}

/// Who a valid node certificate names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node ID.
    pub node_id: String,
    /// Role it joined as.
    pub role: String,
    /// SHA-256 of the AK SPKI it proved at join.
    pub ak_spki_sha256: [u8; 32],
}

/// A cluster CA ready to issue node certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert: Certificate,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterCa(<key redacted>)")
    }
}

fn ca_params(cluster: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("Veil cluster CA {cluster}"));
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p
}

impl ClusterCa {
    /// The CA of the cluster whose secrets are `secrets` (key from `cluster/ca`).
    pub fn derive(secrets: &ClusterSecrets) -> Result<Self, String> {
        let pkcs8 = secrets
            .derive_p256(&KeyId::parse(veil_wire::ids::KEY_CLUSTER_CA).map_err(|e| e.to_string())?)
            .map_err(|e| format!("cluster CA key: {e}"))?;
        let key =
            KeyPair::try_from(pkcs8.as_slice()).map_err(|e| format!("cluster CA key: {e}"))?;
        let cid = secrets.cluster_id().map_err(|e| e.to_string())?.to_string();
        let params = ca_params(cid.get(..16).unwrap_or(&cid));
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cluster CA certificate: {e}"))?;
        let parsed = Certificate::from_der(cert.der(), "cluster CA certificate")
            .map_err(|e| e.to_string())?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            cert: parsed,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Certifies a node's key (SubjectPublicKeyInfo DER) under its node ID, with its role and
    /// the AK it proved at join.
    pub fn issue(&self, who: &NodeIdentity, spki_der: &[u8]) -> Result<Vec<u8>, String> {
        let spki =
            SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| format!("node key: {e}"))?;
        let mut p = CertificateParams::new(vec![who.node_id.clone()]).map_err(|e| e.to_string())?;
        for uri in [
            format!("{ROLE_URI}{}", who.role),
            format!("{AK_URI}{}", hex::encode(who.ak_spki_sha256)),
        ] {
            p.subject_alt_names.push(SanType::URI(
                uri.try_into().map_err(|e: rcgen::Error| e.to_string())?,
            ));
        }
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, who.node_id.as_str());
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p
            .signed_by(&spki, &self.issuer)
            .map_err(|e| format!("node certificate: {e}"))?;
        Ok(cert.der().to_vec())
    }

    /// Checks a node certificate: issued by this CA, valid at `now`; returns whom it names.
    pub fn verify(&self, cert_der: &[u8], now: UnixTime) -> Result<NodeIdentity, String> {
        let cert =
            Certificate::from_der(cert_der, "node certificate").map_err(|e| e.to_string())?;
        verify_chain(&[&cert], std::slice::from_ref(&self.cert), now)
            .map_err(|e| format!("node certificate: {e}"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(cert_der)
            .map_err(|e| format!("node certificate: {e}"))?;
        let mut uris = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for n in &san.value.general_names {
                if let x509_parser::extensions::GeneralName::URI(u) = n {
                    uris.push(*u);
                }
            }
        }
        let one = |prefix: &str| -> Result<&str, String> {
            let mut found = uris.iter().filter_map(|u| u.strip_prefix(prefix));
            match (found.next(), found.next()) {
                (Some(v), None) => Ok(v),
                (None, _) => Err(format!("node certificate: no `{prefix}` name")),
                (Some(_), Some(_)) => Err(format!("node certificate: two `{prefix}` names")),
            }
        };
        let role = one(ROLE_URI)?.to_string();
        let ak = veil_attest_core::bytes::decode_hex(one(AK_URI)?)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or("node certificate: the AK name is not 32 bytes of hex")?;
        let node_id = cert
            .subject()
            .strip_prefix("CN=")
            .filter(|id| id.starts_with("node-") && !id.contains([',', '=']))
            .ok_or_else(|| {
                format!(
                    "node certificate: subject `{}` is not CN=node-…",
                    cert.subject()
                )
            })?
            .to_string();
        Ok(NodeIdentity {
            node_id,
            role,
            ak_spki_sha256: ak,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_keys::SecretBytes;

    fn secrets(m: u8) -> ClusterSecrets {
        ClusterSecrets::new(SecretBytes::from_slice("m", &mut [m; 32]).unwrap(), [3; 32])
    }

    fn ca_key(ca: &ClusterCa) -> Vec<u8> {
        let c = veil_attest_core::x509::Certificate::from_der(ca.cert_der(), "CA").unwrap();
        c.public_key().unwrap().bytes().to_vec()
    }

    #[test]
    fn the_ca_key_follows_the_master_secret() {
        let a = ClusterCa::derive(&secrets(1)).unwrap();
        let b = ClusterCa::derive(&secrets(1)).unwrap();
        let c = ClusterCa::derive(&secrets(2)).unwrap();
        assert_eq!(ca_key(&a), ca_key(&b));
        assert_ne!(ca_key(&a), ca_key(&c));
        assert!(format!("{a:?}").contains("redacted"));
        let who = NodeIdentity {
            node_id: "node-1".into(),
            role: "worker".into(),
            ak_spki_sha256: [7; 32],
        };
        assert!(a.issue(&who, b"not a key").is_err());
    }

    #[test]
    fn node_certificates_name_the_node_role_and_ak_and_only_this_cluster_accepts_them() {
        let now = UnixTime(1_900_000_000);
        let who = NodeIdentity {
            node_id: "node-0123456789ab".into(),
            role: "worker".into(),
            ak_spki_sha256: [7; 32],
        };
        let ca = ClusterCa::derive(&secrets(1)).unwrap();
        let cert = ca.issue(&who, &fresh_node_key().unwrap()).unwrap();
        // Another control plane of the same cluster (same master secret) recognises it.
        let peer = ClusterCa::derive(&secrets(1)).unwrap();
        assert_eq!(peer.verify(&cert, now).unwrap(), who);
        // Another cluster's CA does not.
        let other = ClusterCa::derive(&secrets(2)).unwrap();
        let e = other.verify(&cert, now).unwrap_err();
        assert!(e.contains("node certificate"), "{e}");
        // Any altered byte breaks it.
        let mut bad = cert.clone();
        let i = bad.len() - 10;
        bad[i] ^= 1;
        assert!(ca.verify(&bad, now).is_err());
        assert!(ca.verify(b"junk", now).is_err());
    }
}
