//! The KMS v2 plugin the agent serves to its API server (`k8s.io/kms/apis/v2`, gRPC over a
//! unix socket in the node's private directory).
//!
//! kube-apiserver encrypts each Secret with a data key of its own and asks the plugin to wrap
//! that key's seed; the wrapped seed is stored next to the ciphertext in etcd. The plugin wraps
//! with AES-256-GCM under a key-encryption key derived from the master secret
//! ([`veil_wire::ids::KEY_KUBE_KMS`]), so what etcd holds opens only on a control plane that was
//! attested and handed the master secret. The key ID names the key (a digest, not the key), so
//! the API server notices a different key and a ciphertext is never opened under the wrong one.
//!
//! Wrapped form: `nonce (12) ‖ AES-256-GCM(KEK, nonce, seed, aad = KMS_AAD ‖ key ID)`.

#[cfg(feature = "node")]
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};
#[cfg(feature = "node")]
use tonic::{Request, Response, Status};
use veil_keys::{ClusterSecrets, KeyId, SecretBytes};
use veil_wire::ids;

#[cfg(feature = "node")]
include!(concat!(env!("OUT_DIR"), "/v2.KeyManagementService.rs"));

#[cfg(feature = "node")]
pub use key_management_service_server::{KeyManagementService, KeyManagementServiceServer};

/// `StatusRequest` of the KMS v2 API.
#[cfg(feature = "node")]
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusRequest {}

/// `StatusResponse` of the KMS v2 API.
#[cfg(feature = "node")]
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatusResponse {
    /// API version: `v2`.
    #[prost(string, tag = "1")]
    pub version: String,
    /// `ok` when healthy.
    #[prost(string, tag = "2")]
    pub healthz: String,
    /// The current key ID.
    #[prost(string, tag = "3")]
    pub key_id: String,
}

/// `DecryptRequest` of the KMS v2 API.
#[cfg(feature = "node")]
#[derive(Clone, PartialEq, prost::Message)]
pub struct DecryptRequest {
    /// The wrapped seed.
    #[prost(bytes = "vec", tag = "1")]
    pub ciphertext: Vec<u8>,
    /// Request ID (for logs).
    #[prost(string, tag = "2")]
    pub uid: String,
    /// The key ID Encrypt returned.
    #[prost(string, tag = "3")]
    pub key_id: String,
    /// Annotations Encrypt returned.
    #[prost(map = "string, bytes", tag = "4")]
    pub annotations: std::collections::HashMap<String, Vec<u8>>,
}

/// `DecryptResponse` of the KMS v2 API.
#[cfg(feature = "node")]
#[derive(Clone, PartialEq, prost::Message)]
pub struct DecryptResponse {
    /// The seed.
    #[prost(bytes = "vec", tag = "1")]
    pub plaintext: Vec<u8>,
}

/// `EncryptRequest` of the KMS v2 API.
#[cfg(feature = "node")]
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptRequest {
    /// The seed to wrap.
    #[prost(bytes = "vec", tag = "1")]
    pub plaintext: Vec<u8>,
    /// Request ID (for logs).
    #[prost(string, tag = "2")]
    pub uid: String,
}

/// `EncryptResponse` of the KMS v2 API.
#[cfg(feature = "node")]
#[derive(Clone, PartialEq, prost::Message)]
pub struct EncryptResponse {
    /// The wrapped seed.
    #[prost(bytes = "vec", tag = "1")]
    pub ciphertext: Vec<u8>,
    /// The key ID it was wrapped under.
    #[prost(string, tag = "2")]
    pub key_id: String,
    /// Annotations (none).
    #[prost(map = "string, bytes", tag = "3")]
    pub annotations: std::collections::HashMap<String, Vec<u8>>,
}

/// The most a seed may be: the API server wraps 32-byte seeds; anything far larger is refused
/// before any work.
pub const MAX_PLAINTEXT: usize = 1024;
const TAG_LEN: usize = 16;

/// Why a wrap or unwrap was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KmsError {
    /// The request's key ID is not this plugin's.
    #[error("key ID: expected {expected}, found {found}")]
    KeyId {
        /// This plugin's key ID.
        expected: String,
        /// The request's.
        found: String,
    },
    /// Input of a length that cannot be right.
    #[error("{what}: expected {expected}, found {found} bytes")]
    Length {
        /// Which input.
        what: &'static str,
        /// The accepted lengths.
        expected: String,
        /// The length found.
        found: usize,
    },
    /// The ciphertext does not open under this key (altered, or another cluster's).
    #[error("ciphertext does not authenticate under key {0}")]
    Authentication(String),
    /// No randomness or a cipher failure.
    #[error("encryption failed")]
    Crypto,
}

/// The plugin: the key-encryption key and its ID.
pub struct Kms {
    key: LessSafeKey,
    key_id: String,
}

impl std::fmt::Debug for Kms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kms({}, <key redacted>)", self.key_id)
    }
}

impl Kms {
    /// The plugin of the cluster whose secrets are `secrets`.
    pub fn derive(secrets: &ClusterSecrets) -> Result<Self, KmsError> {
        let id = KeyId::parse(ids::KEY_KUBE_KMS).map_err(|_| KmsError::Crypto)?;
        let key = secrets.derive(&id).map_err(|_| KmsError::Crypto)?;
        Self::from_key(&key)
    }

    fn from_key(key: &SecretBytes) -> Result<Self, KmsError> {
        let mut h = Sha256::new();
        h.update(ids::KMS_AAD);
        h.update(key.expose());
        let key_id = format!(
            "{}{}",
            ids::KMS_KEY_ID_PREFIX,
            hex::encode(h.finalize().get(..8).unwrap_or_default())
        );
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key.expose()).map_err(|_| KmsError::Crypto)?,
        );
        Ok(Self { key, key_id })
    }

    /// The key ID.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn aad(&self) -> Vec<u8> {
        [ids::KMS_AAD, self.key_id.as_bytes()].concat()
    }

    /// Wraps a seed.
    pub fn wrap(&self, plaintext: &[u8]) -> Result<Vec<u8>, KmsError> {
        if plaintext.is_empty() || plaintext.len() > MAX_PLAINTEXT {
            return Err(KmsError::Length {
                what: "plaintext",
                expected: format!("1 to {MAX_PLAINTEXT}"),
                found: plaintext.len(),
            });
        }
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| KmsError::Crypto)?;
        let mut data = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.aad()),
                &mut data,
            )
            .map_err(|_| KmsError::Crypto)?;
        Ok([nonce.as_slice(), &data].concat())
    }

    /// Unwraps a seed wrapped under `key_id`.
    pub fn unwrap(&self, key_id: &str, ciphertext: &[u8]) -> Result<Vec<u8>, KmsError> {
        if key_id != self.key_id {
            return Err(KmsError::KeyId {
                expected: self.key_id.clone(),
                found: key_id.chars().take(80).collect(),
            });
        }
        let min = NONCE_LEN + TAG_LEN + 1;
        let max = NONCE_LEN + TAG_LEN + MAX_PLAINTEXT;
        if !(min..=max).contains(&ciphertext.len()) {
            return Err(KmsError::Length {
                what: "ciphertext",
                expected: format!("{min} to {max}"),
                found: ciphertext.len(),
            });
        }
        let (nonce, sealed) = ciphertext.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| KmsError::Crypto)?;
        let mut data = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.aad()), &mut data)
            .map_err(|_| KmsError::Authentication(self.key_id.clone()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(feature = "node")]
#[tonic::async_trait]
impl KeyManagementService for Kms {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            version: "v2".into(),
            healthz: "ok".into(),
            key_id: self.key_id.clone(),
        }))
    }

    async fn decrypt(
        &self,
        req: Request<DecryptRequest>,
    ) -> Result<Response<DecryptResponse>, Status> {
        let r = req.into_inner();
        match self.unwrap(&r.key_id, &r.ciphertext) {
            Ok(plaintext) => Ok(Response::new(DecryptResponse { plaintext })),
            Err(e) => {
                tracing::warn!(event = "kms_refused", op = "decrypt", uid = %r.uid.chars().take(64).collect::<String>(), reason = %e, "KMS decrypt refused");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }

    async fn encrypt(
        &self,
        req: Request<EncryptRequest>,
    ) -> Result<Response<EncryptResponse>, Status> {
        let r = req.into_inner();
        match self.wrap(&r.plaintext) {
            Ok(ciphertext) => Ok(Response::new(EncryptResponse {
                ciphertext,
                key_id: self.key_id.clone(),
                annotations: Default::default(),
            })),
            Err(e) => {
                tracing::warn!(event = "kms_refused", op = "encrypt", reason = %e, "KMS encrypt refused");
                Err(Status::invalid_argument(e.to_string()))
            }
        }
    }
}

#[cfg(feature = "node")]
/// Serves `kms` on a unix socket at `path` (replacing a stale one; mode 0600) until `stop`
/// resolves.
pub async fn serve(
    kms: Kms,
    path: &Path,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(32)
        .add_service(KeyManagementServiceServer::new(kms).max_decoding_message_size(64 * 1024))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop,
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kms(m: u8) -> Kms {
        Kms::derive(&ClusterSecrets::new(
            SecretBytes::from_slice("m", &mut [m; 32]).unwrap(),
            [5; 32],
        ))
        .unwrap()
    }

    #[test]
    fn seeds_round_trip_and_only_under_their_key() {
        let a = kms(1);
        let seed = [7u8; 32];
        let w = a.wrap(&seed).unwrap();
        assert_eq!(w.len(), 12 + 32 + 16);
        assert_eq!(a.unwrap(a.key_id(), &w).unwrap(), seed);
        // The same master secret on another control plane opens it.
        assert_eq!(kms(1).unwrap(a.key_id(), &w).unwrap(), seed);
        // Another cluster's plugin has another key ID and cannot open it even if told its ID.
        let b = kms(2);
        assert_ne!(a.key_id(), b.key_id());
        assert!(matches!(
            b.unwrap(a.key_id(), &w),
            Err(KmsError::KeyId { .. })
        ));
        // Any altered byte fails authentication.
        for i in [0, 12, w.len() - 1] {
            let mut bad = w.clone();
            bad[i] ^= 1;
            assert_eq!(
                a.unwrap(a.key_id(), &bad),
                Err(KmsError::Authentication(a.key_id().into()))
            );
        }
        assert!(matches!(
            a.unwrap(a.key_id(), &w[..20]),
            Err(KmsError::Length { found: 20, .. })
        ));
        assert!(matches!(
            a.wrap(&[0; MAX_PLAINTEXT + 1]),
            Err(KmsError::Length { .. })
        ));
        assert!(a.wrap(&[]).is_err());
        assert!(!format!("{a:?}").contains("7, 7"));
    }

    #[cfg(feature = "node")]
    #[tokio::test]
    async fn serves_the_kms_v2_api_on_a_unix_socket() {
        use hyper_util::rt::TokioIo;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("kms.sock");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let path = sock.clone();
        let server = tokio::spawn(async move {
            serve(kms(1), &path, async {
                let _ = rx.await;
            })
            .await
        });
        for _ in 0..100 {
            if sock.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let p = sock.clone();
        let channel = tonic::transport::Endpoint::try_from("http://kms")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
                }
            }))
            .await
            .unwrap();
        let mut c = key_management_service_client::KeyManagementServiceClient::new(channel);
        let s = c.status(StatusRequest {}).await.unwrap().into_inner();
        assert_eq!((s.version.as_str(), s.healthz.as_str()), ("v2", "ok"));
        assert_eq!(s.key_id, kms(1).key_id());
        let e = c
            .encrypt(EncryptRequest {
                plaintext: b"seed".to_vec(),
                uid: "1".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let d = c
            .decrypt(DecryptRequest {
                ciphertext: e.ciphertext.clone(),
                uid: "2".into(),
                key_id: e.key_id.clone(),
                annotations: Default::default(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.plaintext, b"seed");
        let refused = c
            .decrypt(DecryptRequest {
                ciphertext: e.ciphertext,
                uid: "3".into(),
                key_id: "veil-kms-v1-0000".into(),
                annotations: Default::default(),
            })
            .await
            .unwrap_err();
        assert!(refused.message().contains("key ID: expected"), "{refused}");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&sock).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
    }
}
