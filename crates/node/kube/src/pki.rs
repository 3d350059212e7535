//! Kubernetes' PKI, derived from the cluster's master secret.
//!
//! The three CAs (cluster, front proxy, etcd) and the service-account signing key are P-256 keys
//! derived under the key IDs registered in `veil_wire::ids`, so every control plane — the first,
//! one added later, one recovered after all restarted — serves the same cluster identity, and
//! the owner, who holds the master secret, can rebuild the CA a kubeconfig must trust without
//! asking any node. Leaf certificates get fresh keys each time they are issued and never leave
//! the node that asked for them but as the PEM files the components read from the node's
//! private directory.
//!
//! A CA certificate's fields are fixed (subject, serial, validity), so two control planes'
//! copies differ only in the ECDSA signature's randomness: they name the same key, and a chain
//! that verifies under one verifies under the other.

use std::net::IpAddr;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use veil_keys::{ClusterSecrets, KeyId};
use veil_wire::ids;
use zeroize::Zeroizing;

/// A problem building the PKI or a certificate.
#[derive(Debug, thiserror::Error)]
#[error("kubernetes PKI: {0}")]
pub struct PkiError(String);

fn err(what: &str) -> impl Fn(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError(format!("{what}: {e}"))
}

/// What a leaf certificate is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A TLS server.
    Server,
    /// A TLS client.
    Client,
    /// Both (etcd members use one certificate for both).
    Both,
}

/// A leaf certificate to issue.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Common name (the Kubernetes user name of a client).
    pub common_name: String,
    /// Organizations (the Kubernetes groups of a client).
    pub organizations: Vec<String>,
    /// DNS names.
    pub dns: Vec<String>,
    /// IP addresses.
    pub ips: Vec<IpAddr>,
    /// Usage.
    pub usage: Usage,
    /// How long it is valid from now.
    pub validity: Duration,
}

impl Leaf {
    /// A client certificate for `user` in `groups`.
    pub fn client(user: &str, groups: &[&str], validity: Duration) -> Self {
        Self {
            common_name: user.to_string(),
            organizations: groups.iter().map(|g| (*g).to_string()).collect(),
            dns: Vec::new(),
            ips: Vec::new(),
            usage: Usage::Client,
            validity,
        }
    }

    /// A server certificate for these names.
    pub fn server(cn: &str, dns: &[&str], ips: &[IpAddr], validity: Duration) -> Self {
        Self {
            common_name: cn.to_string(),
            organizations: Vec::new(),
            dns: dns.iter().map(|d| (*d).to_string()).collect(),
            ips: ips.to_vec(),
            usage: Usage::Server,
            validity,
        }
    }
}

/// An issued certificate and its fresh private key, both PEM.
pub struct Issued {
    /// The certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PKCS#8 PEM; zeroized on drop).
    pub key_pem: Zeroizing<String>,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// One CA of the PKI.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    spki_der: Vec<u8>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ca(<key redacted>)")
    }
}

/// Fixed so every copy of a CA certificate carries the same fields.
fn ca_validity() -> (OffsetDateTime, OffsetDateTime) {
    // 2026-01-01T00:00:00Z and 2126-01-01T00:00:00Z.
    (
        OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        OffsetDateTime::from_unix_timestamp(4_922_899_200).unwrap_or(OffsetDateTime::UNIX_EPOCH),
    )
}

impl Ca {
    fn derive(secrets: &ClusterSecrets, key_id: &str, name: &str) -> Result<Self, PkiError> {
        let id = KeyId::parse(key_id).map_err(|e| PkiError(e.to_string()))?;
        let pkcs8 = secrets
            .derive_p256(&id)
            .map_err(|e| PkiError(format!("{name} key: {e}")))?;
        let key = KeyPair::try_from(pkcs8.as_slice()).map_err(err(name))?;
        let spki_der = rcgen::PublicKeyData::subject_public_key_info(&key);
        let cid = secrets
            .cluster_id()
            .map_err(|e| PkiError(e.to_string()))?
            .to_string();
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("{name} {}", cid.get(..16).unwrap_or(&cid)),
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (p.not_before, p.not_after) = ca_validity();
        let digest = Sha256::digest(&spki_der);
        p.serial_number = Some(SerialNumber::from_slice(
            digest.get(..16).unwrap_or_default(),
        ));
        let cert = p.self_signed(&key).map_err(err(name))?;
        Ok(Self {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            spki_der,
            issuer: Issuer::new(p, key),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate (DER).
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// SHA-256 of the CA's SubjectPublicKeyInfo: what identifies it across copies.
    pub fn key_sha256(&self) -> [u8; 32] {
        Sha256::digest(&self.spki_der).into()
    }

    /// Issues `leaf` with a fresh P-256 key, valid from a minute ago (clock skew between nodes)
    /// for its validity.
    pub fn issue(&self, leaf: &Leaf) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(err("key"))?;
        let cert = leaf_params(leaf)?
            .signed_by(&key, &self.issuer)
            .map_err(err("certificate"))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
        })
    }

    /// Issues `leaf` for a public key its holder made (SubjectPublicKeyInfo DER, P-256 only):
    /// the certificate (PEM). The private key never comes here.
    pub fn issue_for(&self, leaf: &Leaf, spki_der: &[u8]) -> Result<String, PkiError> {
        let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der)
            .map_err(|e| PkiError(format!("public key: {e}")))?;
        let p256 = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
        if !spki_der.windows(p256.len()).any(|w| w == p256) || spki_der.len() != 91 {
            return Err(PkiError(format!(
                "public key: expected a P-256 SubjectPublicKeyInfo (91 bytes), found {} bytes",
                spki_der.len()
            )));
        }
        let cert = leaf_params(leaf)?
            .signed_by(&spki, &self.issuer)
            .map_err(err("certificate"))?;
        Ok(cert.pem())
    }
}

fn leaf_params(leaf: &Leaf) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, leaf.common_name.as_str());
    for o in &leaf.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    p.distinguished_name = dn;
    for d in &leaf.dns {
        p.subject_alt_names.push(SanType::DnsName(
            d.as_str().try_into().map_err(err("DNS name"))?,
        ));
    }
    for ip in &leaf.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = match leaf.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::Both => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    };
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + leaf.validity;
    let mut serial = [0u8; 16];
    aws_lc_rs::rand::fill(&mut serial).map_err(|_| PkiError("no randomness".into()))?;
    serial[0] &= 0x7f;
    p.serial_number = Some(SerialNumber::from_slice(&serial));
    p.use_authority_key_identifier_extension = true;
    Ok(p)
}

/// The cluster's Kubernetes PKI.
pub struct KubePki {
    /// The cluster CA: the API server's serving certificate, every client of the API server,
    /// kubelets' client and serving certificates.
    pub cluster: Ca,
    /// The front-proxy CA (aggregated API servers' client certificates).
    pub front_proxy: Ca,
    /// etcd's CA.
    pub etcd: Ca,
    service_account: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KubePki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubePki(<keys redacted>)")
    }
}

impl KubePki {
    /// The PKI of the cluster whose secrets are `secrets`.
    pub fn derive(secrets: &ClusterSecrets) -> Result<Self, PkiError> {
        Ok(Self {
            cluster: Ca::derive(secrets, ids::KEY_KUBE_CA, "Veil Kubernetes CA")?,
            front_proxy: Ca::derive(
                secrets,
                ids::KEY_KUBE_FRONT_PROXY_CA,
                "Veil Kubernetes front-proxy CA",
            )?,
            etcd: Ca::derive(secrets, ids::KEY_KUBE_ETCD_CA, "Veil etcd CA")?,
            service_account: secrets
                .derive_p256(
                    &KeyId::parse(ids::KEY_KUBE_SERVICE_ACCOUNT)
                        .map_err(|e| PkiError(e.to_string()))?,
                )
                .map_err(|e| PkiError(format!("service-account key: {e}")))?,
        })
    }

    /// The service-account signing key (PKCS#8 PEM).
    pub fn service_account_key_pem(&self) -> Result<Zeroizing<String>, PkiError> {
        let kp = KeyPair::try_from(self.service_account.as_slice()).map_err(err("SA key"))?;
        Ok(Zeroizing::new(kp.serialize_pem()))
    }

    /// The service-account verification key (SubjectPublicKeyInfo PEM).
    pub fn service_account_public_pem(&self) -> Result<String, PkiError> {
        let kp = KeyPair::try_from(self.service_account.as_slice()).map_err(err("SA key"))?;
        Ok(kp.public_key_pem())
    }
}

/// The owner's client certificate: `cluster-admin` through `system:masters`.
pub fn owner_leaf(validity: Duration) -> Leaf {
    Leaf::client("veil-owner", &["system:masters"], validity)
}

/// The Kubernetes user name of a node.
pub fn node_user(node_id: &str) -> String {
    format!("system:node:{node_id}")
}

/// When the PEM certificate `pem` stops being valid (Unix seconds).
pub fn certificate_not_after(pem: &str) -> Result<i64, PkiError> {
    let bad = PkiError;
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let cert = p
        .parse_x509()
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    Ok(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_keys::SecretBytes;
    use x509_parser::prelude::*;

    fn secrets(m: u8) -> ClusterSecrets {
        ClusterSecrets::new(SecretBytes::from_slice("m", &mut [m; 32]).unwrap(), [3; 32])
    }

    fn parse(pem: &str) -> Vec<u8> {
        let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        p.contents
    }

    #[test]
    fn the_same_master_secret_gives_the_same_cluster_identity() {
        let a = KubePki::derive(&secrets(1)).unwrap();
        let b = KubePki::derive(&secrets(1)).unwrap();
        let c = KubePki::derive(&secrets(2)).unwrap();
        for (x, y, z) in [
            (&a.cluster, &b.cluster, &c.cluster),
            (&a.front_proxy, &b.front_proxy, &c.front_proxy),
            (&a.etcd, &b.etcd, &c.etcd),
        ] {
            assert_eq!(x.key_sha256(), y.key_sha256());
            assert_ne!(x.key_sha256(), z.key_sha256());
            // Same fields: the TBS part up to the signature is identical.
            let (_, cx) = X509Certificate::from_der(x.cert_der()).unwrap();
            let (_, cy) = X509Certificate::from_der(y.cert_der()).unwrap();
            assert_eq!(cx.tbs_certificate.as_ref(), cy.tbs_certificate.as_ref());
        }
        assert_ne!(a.cluster.key_sha256(), a.etcd.key_sha256());
        assert_ne!(a.cluster.key_sha256(), a.front_proxy.key_sha256());
        assert_eq!(
            a.service_account_public_pem().unwrap(),
            b.service_account_public_pem().unwrap()
        );
        assert_ne!(
            a.service_account_public_pem().unwrap(),
            c.service_account_public_pem().unwrap()
        );
        assert!(!format!("{a:?}").contains("BEGIN"));
    }

    #[test]
    fn leaves_name_user_groups_and_addresses_and_chain_to_their_ca_only() {
        let a = KubePki::derive(&secrets(1)).unwrap();
        let other = KubePki::derive(&secrets(2)).unwrap();
        let node = a
            .cluster
            .issue(&Leaf::client(
                &node_user("node-abc"),
                &["system:nodes"],
                Duration::from_secs(3600),
            ))
            .unwrap();
        let der = parse(&node.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "CN=system:node:node-abc, O=system:nodes"
        );
        let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(life, 3600 + 60);
        let (_, ca) = X509Certificate::from_der(a.cluster.cert_der()).unwrap();
        assert!(cert.verify_signature(Some(ca.public_key())).is_ok());
        let (_, foreign) = X509Certificate::from_der(other.cluster.cert_der()).unwrap();
        assert!(cert.verify_signature(Some(foreign.public_key())).is_err());
        let (_, etcd) = X509Certificate::from_der(a.etcd.cert_der()).unwrap();
        assert!(cert.verify_signature(Some(etcd.public_key())).is_err());

        let ip: IpAddr = "10.215.7.1".parse().unwrap();
        let server = a
            .cluster
            .issue(&Leaf::server(
                "kube-apiserver",
                &["kubernetes.default.svc"],
                &[ip],
                Duration::from_secs(60),
            ))
            .unwrap();
        let der = parse(&server.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(
            san.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress(b) if *b == [10, 215, 7, 1]))
        );
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert!(format!("{server:?}").contains("redacted"));
        // For a key its holder made: only a P-256 public key.
        let holder = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = rcgen::PublicKeyData::subject_public_key_info(&holder);
        let pem = a
            .cluster
            .issue_for(
                &Leaf::client("system:kube-proxy", &[], Duration::from_secs(60)),
                &spki,
            )
            .unwrap();
        let der = parse(&pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.public_key().raw, spki.as_slice());
        let e = a
            .cluster
            .issue_for(&Leaf::client("x", &[], Duration::from_secs(60)), b"junk")
            .unwrap_err();
        assert!(e.to_string().contains("public key"), "{e}");
        let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let e = a
            .cluster
            .issue_for(
                &Leaf::client("x", &[], Duration::from_secs(60)),
                &rcgen::PublicKeyData::subject_public_key_info(&ed),
            )
            .unwrap_err();
        assert!(e.to_string().contains("expected a P-256"), "{e}");
        assert!(server.key_pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn a_certificate_says_when_it_ends_and_garbage_is_refused() {
        let pki = KubePki::derive(&secrets(1)).unwrap();
        let v = Duration::from_secs(600);
        let pem = pki
            .cluster
            .issue(&Leaf::client("u", &[], v))
            .unwrap()
            .cert_pem;
        let end = certificate_not_after(&pem).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!((now + 590..=now + 610).contains(&end), "{end} vs {now}");
        assert!(certificate_not_after("not a certificate").is_err());
    }
}
