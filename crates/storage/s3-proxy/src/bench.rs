//! Throughput of the proxy against the backend alone, measured in the same run.

use std::path::Path;
use std::time::Instant;

use aws_lc_rs::digest;
use bytes::Bytes;
use futures::Stream;
use http_body_util::BodyExt;

use crate::client::{self, BoxError, ClientError, S3Client};
use crate::format::DEFAULT_CHUNK_SIZE;
use crate::harness::{Backend, HarnessError};
use crate::keys::RootKey;
use crate::server::{ProxyConfig, RunningProxy};
use crate::sigv4::Credentials;

const MIB: u64 = 1024 * 1024;

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// The backend could not be started.
    #[error(transparent)]
    Harness(#[from] HarnessError),
    /// An S3 request failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The object read back differs from the one written.
    #[error("read back {found} bytes with another digest than the {expected} written")]
    Mismatch {
        /// Bytes written.
        expected: u64,
        /// Bytes read.
        found: u64,
    },
}

/// PUT and GET throughput in MiB/s.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PutGet {
    /// Upload MiB/s.
    pub put_mib_s: f64,
    /// Download MiB/s.
    pub get_mib_s: f64,
}

/// Through the proxy and against the backend alone.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Object size in MiB.
    pub mib: u64,
    /// Through the proxy.
    pub proxy: PutGet,
    /// Directly against the backend.
    pub backend: PutGet,
}

/// Deterministic test data: `len` bytes in 1 MiB pieces, never held whole in memory.
pub fn pattern_stream(len: u64) -> impl Stream<Item = Result<Bytes, BoxError>> + Send + 'static {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let block: Vec<u8> = (0..MIB)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes().first().copied().unwrap_or(0)
        })
        .collect();
    let block = Bytes::from(block);
    futures::stream::unfold(0u64, move |sent| {
        let block = block.clone();
        async move {
            if sent >= len {
                return None;
            }
            let n = (len - sent).min(MIB);
            let mut piece = block.slice(..usize::try_from(n).unwrap_or(0)).to_vec();
            // Make every piece distinct.
            for (dst, src) in piece.iter_mut().zip(sent.to_le_bytes()) {
                *dst = src;
            }
            Some((Ok(Bytes::from(piece)), sent + n))
        }
    })
}

/// SHA-256 of [`pattern_stream`]`(len)`.
pub async fn pattern_digest(len: u64) -> Vec<u8> {
    use futures::StreamExt;
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut s = std::pin::pin!(pattern_stream(len));
    while let Some(Ok(piece)) = s.next().await {
        ctx.update(&piece);
    }
    ctx.finish().as_ref().to_vec()
}

/// Streams an object down and returns its length and SHA-256.
pub async fn get_digest(
    client: &S3Client,
    bucket: &str,
    key: &str,
) -> Result<(u64, Vec<u8>), ClientError> {
    let mut body = client.get_object(bucket, key, None).await?.into_body();
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            ctx.update(&data);
        }
    }
    Ok((len, ctx.finish().as_ref().to_vec()))
}

/// PUTs then GETs `mib` MiB through `client` and checks what comes back.
pub async fn measure(client: &S3Client, bucket: &str, mib: u64) -> Result<PutGet, BenchError> {
    let len = mib * MIB;
    let key = format!("bench-{mib}mib");
    let start = Instant::now();
    client
        .put_object(
            bucket,
            &key,
            len,
            vec![],
            client::stream_body(pattern_stream(len)),
        )
        .await?;
    let put = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let (found, digest) = get_digest(client, bucket, &key).await?;
    let get = start.elapsed().as_secs_f64();
    if found != len || digest != pattern_digest(len).await {
        return Err(BenchError::Mismatch {
            expected: len,
            found,
        });
    }
    client.delete_object(bucket, &key).await?;
    let rate = |secs: f64| mib as f64 / secs.max(1e-9);
    Ok(PutGet {
        put_mib_s: rate(put),
        get_mib_s: rate(get),
    })
}

/// Starts `s3s-fs` (binary `s3s_fs`, storing under `work_dir`) and an in-process proxy, and
/// measures `mib` MiB through each. Call from a multi-threaded tokio runtime.
pub async fn bench_throughput(
    s3s_fs: &Path,
    work_dir: &Path,
    mib: u64,
) -> Result<Throughput, BenchError> {
    let backend = Backend::start(s3s_fs, &work_dir.join("backend"))?;
    let direct = S3Client::new(backend.addr.to_string(), backend.credentials.clone());
    let client_creds = Credentials::new("bench-ak", "bench-secret");
    let proxy = RunningProxy::start(ProxyConfig {
        backend: backend.addr.to_string(),
        backend_credentials: backend.credentials.clone(),
        client_credentials: client_creds.clone(),
        root_key: RootKey::from_bytes(&mut [0x42; 32]).map_err(|_| BenchError::Mismatch {
            expected: 0,
            found: 0,
        })?,
        chunk_size: DEFAULT_CHUNK_SIZE,
    })
    .await
    .map_err(HarnessError::Io)?;
    let via_proxy = S3Client::new(proxy.addr.to_string(), client_creds);
    direct.create_bucket("bench-direct").await?;
    direct.create_bucket("bench-proxy").await?;
    let backend_figures = measure(&direct, "bench-direct", mib).await?;
    let proxy_figures = measure(&via_proxy, "bench-proxy", mib).await?;
    Ok(Throughput {
        mib,
        proxy: proxy_figures,
        backend: backend_figures,
    })
}
