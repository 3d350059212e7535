//! The cluster CA: its key is derived from the master secret (so it is the same after
//! recovery), and it certifies each admitted node's own key.

use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SubjectPublicKeyInfo,
};
use veil_keys::{ClusterSecrets, KeyId};

/// A cluster CA ready to issue node certificates.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
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
        let scalar = secrets
            .derive(&KeyId::parse("cluster/ca").map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        // RFC 5915 ECPrivateKey { version 1, privateKey, [0] prime256v1 }.
        let mut der = vec![0x30, 0x31, 0x02, 0x01, 0x01, 0x04, 0x20];
        der.extend_from_slice(scalar.expose());
        der.extend_from_slice(&[
            0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07,
        ]);
        let kp = EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
            .map_err(|e| format!("cluster CA key: {e}"))?;
        let pkcs8 = kp
            .to_pkcs8v1()
            .map_err(|_| "cluster CA key: PKCS#8 encoding failed")?;
        let key = KeyPair::try_from(pkcs8.as_ref()).map_err(|e| format!("cluster CA key: {e}"))?;
        let cid = secrets.cluster_id().map_err(|e| e.to_string())?.to_string();
        let params = ca_params(cid.get(..16).unwrap_or(&cid));
        let cert = params
            .self_signed(&key)
            .map_err(|e| format!("cluster CA certificate: {e}"))?;
        Ok(Self {
            cert_der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// Certifies a node's key (SubjectPublicKeyInfo DER) under its node ID.
    pub fn issue(&self, node_id: &str, spki_der: &[u8]) -> Result<Vec<u8>, String> {
        let spki =
            SubjectPublicKeyInfo::from_der(spki_der).map_err(|e| format!("node key: {e}"))?;
        let mut p = CertificateParams::new(vec![node_id.to_string()]).map_err(|e| e.to_string())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        p.distinguished_name = dn;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = p
            .signed_by(&spki, &self.issuer)
            .map_err(|e| format!("node certificate: {e}"))?;
        Ok(cert.der().to_vec())
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
        assert!(a.issue("node-1", b"not a key").is_err());
    }
}
