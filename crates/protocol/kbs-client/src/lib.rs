//! A KBS client written from Confidential Containers' protocol documents (the KBS attestation
//! protocol, kbs-types' message shapes, RFC 7516/7518 for the response), not from Veil's
//! server, so that the two can disagree and a test will see it.
//!
//! The handshake (RCAR): `POST /kbs/v0/auth` with `{"version": "0.4.0", "tee", "extra-params":
//! {"supported-hash-algorithms"}}` → a challenge and the `kbs-session-id` cookie; a fresh P-256
//! key; the report data is the selected hash (SHA-384 by default) of the RFC 8785 JSON of
//! `{"tee-pubkey", "nonce", "additional-evidence"}`; the [`EvidenceProvider`] makes evidence
//! binding it; `POST /kbs/v0/attest`; then `GET /kbs/v0/resource/<repo>/<type>/<tag>`, whose
//! answer is a flattened JWE opened with the key: ECDH-ES with the header's `epk`, the Concat
//! KDF, AES key unwrap, AES-256-GCM with the AAD recomputed from the parsed header (compact
//! JSON, keys sorted), as the CoCo client does. A 401 on a resource means the session is gone:
//! the client attests again (at most three tries in all, as the CoCo client).
//!
//! HTTP is plain HTTP/1.1 over TCP, one request per connection.

pub mod http;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use serde_json::{Value, json};
use sha2::Digest;

/// The protocol version this client speaks.
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Tries of a resource request (each 401 attests again).
pub const MAX_ATTEMPTS: usize = 3;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with an error status.
    #[error("HTTP {status} from {path}: {detail}")]
    Status {
        /// The status.
        status: u16,
        /// The request's path.
        path: String,
        /// Its `ErrorInformation` (or the raw body).
        detail: String,
    },
    /// The connection failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server's answer is not what the protocol says.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The evidence provider failed.
    #[error("evidence: {0}")]
    Evidence(String),
}

fn protocol(why: impl Into<String>) -> Error {
    Error::Protocol(why.into())
}

/// Makes the TEE's evidence over report data.
pub trait EvidenceProvider {
    /// The TEE type sent in the request (`tpm`, `snp`, …).
    fn tee(&self) -> String;
    /// The primary evidence binding `report_data`.
    fn evidence(&self, report_data: &[u8]) -> Result<Value, String>;
}

/// The hash of the runtime data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    fn parse(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }
    fn digest(self, b: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => sha2::Sha256::digest(b).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(b).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(b).to_vec(),
        }
    }
}

/// A KBS client: its key pair and, once attested, its session.
pub struct Client<P> {
    server: http::Server,
    provider: P,
    key: p256::SecretKey,
    cookie: Option<String>,
    token: Option<String>,
    /// The report data of the last attestation (for tests that look).
    pub last_report_data: Vec<u8>,
}

impl<P> std::fmt::Debug for Client<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KbsClient({:?})", self.server)
    }
}

impl<P: EvidenceProvider> Client<P> {
    /// A client of the KBS at `url` (`http://host:port`).
    pub fn new(url: &str, provider: P) -> Result<Self, Error> {
        Ok(Self {
            server: http::Server::parse(url)?,
            provider,
            key: p256::SecretKey::random(&mut rand_core::OsRng),
            cookie: None,
            token: None,
            last_report_data: Vec::new(),
        })
    }

    /// The public key as the JWK sent in `tee-pubkey`.
    pub fn public_jwk(&self) -> Value {
        let point = self.key.public_key().to_encoded_point(false);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "alg": "ECDH-ES+A256KW",
            "x": URL_SAFE_NO_PAD.encode(point.x().map(|x| x.to_vec()).unwrap_or_default()),
            "y": URL_SAFE_NO_PAD.encode(point.y().map(|y| y.to_vec()).unwrap_or_default()),
        })
    }

    /// The evidence provider.
    pub fn provider(&self) -> &P {
        &self.provider
    }

    /// The session cookie, once there is one.
    pub fn cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// Sets the cookie sent (to replay another's, in tests).
    pub fn set_cookie(&mut self, cookie: Option<String>) {
        self.cookie = cookie;
    }

    /// The attestation token, once attested.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Vec<u8>, Error> {
        let body = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        let r = self
            .server
            .request(method, path, body.as_deref(), self.cookie.as_deref())?;
        if let Some(c) = r.cookie("kbs-session-id") {
            self.cookie = Some(c);
        }
        if r.status != 200 {
            let detail = serde_json::from_slice::<Value>(&r.body)
                .ok()
                .map(|v| v.to_string())
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
            return Err(Error::Status {
                status: r.status,
                path: path.to_string(),
                detail,
            });
        }
        Ok(r.body)
    }

    /// The RCAR handshake: a new session, attested. Returns the token.
    pub fn attest(&mut self) -> Result<String, Error> {
        self.cookie = None;
        self.token = None;
        let request = json!({
            "version": PROTOCOL_VERSION,
            "tee": self.provider.tee(),
            "extra-params": {"supported-hash-algorithms": ["sha256", "sha384", "sha512", "sm3"]},
        });
        let challenge: Value =
            serde_json::from_slice(&self.call("POST", "/kbs/v0/auth", Some(&request))?)
                .map_err(|e| protocol(format!("challenge: {e}")))?;
        if self.cookie.is_none() {
            return Err(protocol(
                "the challenge came without a kbs-session-id cookie",
            ));
        }
        let nonce = challenge
            .get("nonce")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol("the challenge has no nonce"))?
            .to_string();
        let hash = match challenge
            .get("extra-params")
            .and_then(|p| p.get("selected-hash-algorithm"))
        {
            None => Hash::Sha384,
            Some(v) => v
                .as_str()
                .and_then(Hash::parse)
                .ok_or_else(|| protocol(format!("selected-hash-algorithm {v}")))?,
        };
        self.key = p256::SecretKey::random(&mut rand_core::OsRng);
        let tee_pubkey = self.public_jwk();
        let additional = String::new();
        let bound = json!({
            "tee-pubkey": tee_pubkey,
            "nonce": nonce,
            "additional-evidence": additional,
        });
        let canonical = serde_json_canonicalizer::to_vec(&bound)
            .map_err(|e| protocol(format!("canonical JSON: {e}")))?;
        let report_data = hash.digest(&canonical);
        let evidence = self
            .provider
            .evidence(&report_data)
            .map_err(Error::Evidence)?;
        self.last_report_data = report_data;
        let attestation = json!({
            "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
            "tee-evidence": {"primary_evidence": evidence, "additional_evidence": additional},
        });
        let answer: Value =
            serde_json::from_slice(&self.call("POST", "/kbs/v0/attest", Some(&attestation))?)
                .map_err(|e| protocol(format!("attestation response: {e}")))?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| protocol("the attestation response has no token"))?
            .to_string();
        check_token(&token)?;
        self.token = Some(token.clone());
        Ok(token)
    }

    /// A resource's plaintext, attesting first if there is no session and again on a 401.
    pub fn resource(&mut self, repository: &str, kind: &str, tag: &str) -> Result<Vec<u8>, Error> {
        let path = format!(
            "/kbs/v0/resource/{}/{}/{}",
            http::escape(repository),
            http::escape(kind),
            http::escape(tag)
        );
        let mut last = None;
        for _ in 0..MAX_ATTEMPTS {
            if self.cookie.is_none() || self.token.is_none() {
                self.attest()?;
            }
            match self.call("GET", &path, None) {
                Ok(body) => return self.open(&body),
                Err(e @ Error::Status { status: 401, .. }) => {
                    self.token = None;
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| protocol("no answer")))
    }

    /// Opens a flattened JWE encrypted to this client's key.
    pub fn open(&self, body: &[u8]) -> Result<Vec<u8>, Error> {
        open_jwe(&self.key, body)
    }
}

/// A JWT's claims must parse, and `exp`/`nbf` be numbers where present (the client reads
/// them to know when to attest again).
fn check_token(token: &str) -> Result<(), Error> {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|c| URL_SAFE_NO_PAD.decode(c).ok())
        .and_then(|c| serde_json::from_slice::<Value>(&c).ok())
        .ok_or_else(|| protocol("the token is not a JWT"))?;
    for k in ["exp", "nbf"] {
        if claims.get(k).is_some_and(|v| !v.is_u64()) {
            return Err(protocol(format!("the token's {k} is not a number")));
        }
    }
    Ok(())
}

fn b64(v: &Value, what: &str) -> Result<Vec<u8>, Error> {
    let s = v
        .get(what)
        .and_then(Value::as_str)
        .ok_or_else(|| protocol(format!("the JWE has no {what}")))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|e| protocol(format!("the JWE's {what}: {e}")))
}

/// RFC 7518 §4.6.2: the Concat KDF of NIST SP 800-56A with SHA-256, one round (256 bits),
/// AlgorithmID = the `alg`, PartyUInfo and PartyVInfo empty, SuppPubInfo = the key length.
fn concat_kdf(z: &[u8], alg: &str) -> [u8; 32] {
    let mut other = Vec::new();
    other.extend_from_slice(&(alg.len() as u32).to_be_bytes());
    other.extend_from_slice(alg.as_bytes());
    other.extend_from_slice(&0u32.to_be_bytes());
    other.extend_from_slice(&0u32.to_be_bytes());
    other.extend_from_slice(&256u32.to_be_bytes());
    let mut h = sha2::Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update(&other);
    h.finalize().into()
}

fn open_jwe(key: &p256::SecretKey, body: &[u8]) -> Result<Vec<u8>, Error> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let jwe: Value =
        serde_json::from_slice(body).map_err(|e| protocol(format!("the response: {e}")))?;
    let header_bytes = b64(&jwe, "protected")?;
    let header: Value = serde_json::from_slice(&header_bytes)
        .map_err(|e| protocol(format!("the protected header: {e}")))?;
    let field = |k: &str| header.get(k).and_then(Value::as_str).unwrap_or_default();
    if field("alg") != "ECDH-ES+A256KW" || field("enc") != "A256GCM" {
        return Err(protocol(format!(
            "alg/enc {}/{}, expected ECDH-ES+A256KW/A256GCM",
            field("alg"),
            field("enc")
        )));
    }
    let epk = header
        .get("epk")
        .ok_or_else(|| protocol("the protected header has no epk"))?;
    if epk.get("crv").and_then(Value::as_str) != Some("P-256") {
        return Err(protocol(format!(
            "epk crv {:?}, expected P-256",
            epk.get("crv")
        )));
    }
    let mut point = vec![4u8];
    point.extend(b64(epk, "x")?);
    point.extend(b64(epk, "y")?);
    let epk = p256::PublicKey::from_sec1_bytes(&point)
        .map_err(|_| protocol("epk is not a point of P-256"))?;
    let shared = p256::ecdh::diffie_hellman(key.to_nonzero_scalar(), epk.as_affine());
    let kek = concat_kdf(shared.raw_secret_bytes(), "ECDH-ES+A256KW");
    let wrapped = b64(&jwe, "encrypted_key")?;
    let cek = aes_kw::KekAes256::from(kek)
        .unwrap_vec(&wrapped)
        .map_err(|_| protocol("the content key does not unwrap"))?;
    // The AAD as the CoCo client computes it: the parsed header, re-serialised compactly
    // with sorted keys, base64url.
    let aad = URL_SAFE_NO_PAD.encode(
        serde_json_canonicalizer::to_vec(&header).map_err(|e| protocol(format!("header: {e}")))?,
    );
    let iv = b64(&jwe, "iv")?;
    if iv.len() != 12 {
        return Err(protocol(format!(
            "an iv of {} bytes, expected 12",
            iv.len()
        )));
    }
    let mut sealed = b64(&jwe, "ciphertext")?;
    sealed.extend(b64(&jwe, "tag")?);
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&cek)
        .map_err(|_| protocol(format!("a content key of {} bytes", cek.len())))?;
    cipher
        .decrypt(
            aes_gcm::Nonce::from_slice(&iv),
            Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            },
        )
        .map_err(|_| protocol("the ciphertext does not open (tag or AAD)"))
}

/// The hex of bytes (for evidence providers).
pub fn to_hex(b: &[u8]) -> String {
    hex::encode(b)
}
