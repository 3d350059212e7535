//! `veil verify`'s check of the owner's kubeconfig: that its CA is the cluster's Kubernetes CA
//! (derived from the master secret the owner holds) and that the API server it reaches presents
//! a serving certificate an attested control plane named in its signed report. A kubeconfig
//! pointed at another server, or trusting another CA, fails: no other tool can tell.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use serde::Serialize;
use sha2::{Digest, Sha256};
use veil_wire::report::ReportedKubeApi;

/// The verdict on a kubeconfig.
#[derive(Debug, Serialize)]
pub struct KubeVerdict {
    /// The kubeconfig file.
    pub kubeconfig: String,
    /// Its server.
    pub server: String,
    /// Whether both checks passed.
    pub ok: bool,
    /// Why (or what was proven).
    pub reason: String,
}

/// The SHA-256 of the SubjectPublicKeyInfo of a certificate (DER).
fn spki_sha256(cert_der: &[u8]) -> anyhow::Result<[u8; 32]> {
    let (_, c) = x509_parser::parse_x509_certificate(cert_der).context("certificate")?;
    Ok(Sha256::digest(c.public_key().raw).into())
}

/// The leaf certificate (DER) `server` (`https://host:port`) presents, having checked its chain
/// under `ca_der` for the server's name, as a client of the kubeconfig would.
fn serving_certificate(server: &str, ca_der: &[u8]) -> anyhow::Result<Vec<u8>> {
    let hostport = server
        .strip_prefix("https://")
        .context("the server is not an https:// URL")?
        .trim_end_matches('/');
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(ca_der.to_vec()))
        .context("the kubeconfig's CA")?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .with_context(|| format!("server name `{host}`"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    let sock = std::net::TcpStream::connect(hostport)
        .with_context(|| format!("cannot reach {hostport}"))?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"GET /version HTTP/1.1\r\nHost: kubernetes\r\nConnection: close\r\n\r\n")
        .context("the API server's certificate does not verify under the kubeconfig's CA")?;
    let mut buf = [0u8; 64];
    let _ = tls.read(&mut buf);
    let leaf = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .context("the API server presented no certificate")?;
    Ok(leaf.as_ref().to_vec())
}

/// Checks `kubeconfig` against the cluster's Kubernetes CA (`ca_key_sha256`, derived from the
/// workspace's master secret) and the API servers the verified reports name.
pub fn check(
    kubeconfig: &Path,
    ca_key_sha256: [u8; 32],
    attested: &[(String, ReportedKubeApi)],
) -> KubeVerdict {
    let mut v = KubeVerdict {
        kubeconfig: kubeconfig.display().to_string(),
        server: String::new(),
        ok: false,
        reason: String::new(),
    };
    let r = (|| -> anyhow::Result<String> {
        let text = std::fs::read_to_string(kubeconfig)
            .with_context(|| format!("cannot read {}", kubeconfig.display()))?;
        let (ca_pem, server) =
            veil_kube::files::kubeconfig_ca_and_server(&text).map_err(anyhow::Error::msg)?;
        v.server = server.clone();
        let ca = pem::parse(&ca_pem).context("kubeconfig: certificate-authority-data")?;
        let found = spki_sha256(ca.contents())?;
        if found != ca_key_sha256 {
            anyhow::bail!(
                "the kubeconfig's CA is not the cluster's: expected key sha256:{}, found sha256:{}",
                hex::encode(&ca_key_sha256[..8]),
                hex::encode(&found[..8])
            );
        }
        if attested.is_empty() {
            anyhow::bail!("no verified report names a Kubernetes API server");
        }
        for (cp, api) in attested {
            if api.ca_key_sha256 != hex::encode(ca_key_sha256) {
                anyhow::bail!("control plane {cp} reports another Kubernetes CA");
            }
        }
        let leaf = serving_certificate(&server, ca.contents())?;
        let fp = hex::encode(Sha256::digest(&leaf));
        match attested
            .iter()
            .find(|(_, api)| api.serving_cert_sha256 == fp)
        {
            Some((cp, _)) => Ok(format!(
                "kubeconfig CA is the cluster's; the API server's certificate sha256:{} is the one attested control plane {cp} reports",
                &fp[..16]
            )),
            None => anyhow::bail!(
                "the API server at {server} presents certificate sha256:{}, which no attested control plane reports",
                &fp[..16]
            ),
        }
    })();
    match r {
        Ok(reason) => {
            v.ok = true;
            v.reason = reason;
        }
        Err(e) => v.reason = format!("{e:#}"),
    }
    v
}
