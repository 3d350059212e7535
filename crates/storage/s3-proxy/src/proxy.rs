//! The S3 service: each operation encrypts on the way in, authenticates and decrypts on the way
//! out, and passes the rest through to the backend.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use s3s::dto::{
    CreateBucketInput, CreateBucketOutput, DeleteBucketInput, DeleteBucketOutput,
    DeleteObjectInput, DeleteObjectOutput, ETag, GetObjectInput, GetObjectOutput, HeadBucketInput,
    HeadBucketOutput, HeadObjectInput, HeadObjectOutput, ListBucketsInput, ListBucketsOutput,
    ListObjectsV2Input, ListObjectsV2Output, Metadata, PutObjectInput, PutObjectOutput,
    StreamingBlob, Timestamp, TimestampFormat,
};
use s3s::xml::{DeError, Deserialize, Deserializer};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result};
use tokio::sync::mpsc;

use crate::client::{self, BoxError, ClientError, S3Client};
use crate::format::{FormatError, HEADER_LEN, ObjectCipher, RangePlan, plaintext_len_of_stored};
use crate::keys::RootKey;

/// Chunks buffered between the network and the cipher, per request.
const PIPELINE_DEPTH: usize = 2;

/// The proxy: an S3 implementation over an S3 backend.
#[derive(Debug, Clone)]
pub struct Proxy {
    backend: S3Client,
    root: Arc<RootKey>,
    chunk_size: u32,
}

/// A failure inside a streamed body (the HTTP exchange is aborted, never completed with
/// unauthenticated data).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The stored object was refused.
    #[error("object refused: {0}")]
    Rejected(#[from] FormatError),
    /// Reading the backend or the client failed.
    #[error("transfer failed: {0}")]
    Transfer(String),
}

impl Proxy {
    /// A proxy storing objects in `backend`, with keys derived from `root`, chunks of
    /// `chunk_size` plaintext bytes.
    pub fn new(backend: S3Client, root: RootKey, chunk_size: u32) -> Self {
        Self {
            backend,
            root: Arc::new(root),
            chunk_size,
        }
    }
}

fn backend_error(e: ClientError) -> S3Error {
    match e {
        ClientError::S3 {
            status,
            code,
            message,
        } => {
            let code =
                S3ErrorCode::from_bytes(code.as_bytes()).unwrap_or(S3ErrorCode::InternalError);
            let mut err = S3Error::with_message(code, message);
            err.set_status_code(status);
            err
        }
        other => {
            tracing::warn!(error = %other, "backend request failed");
            S3Error::with_message(S3ErrorCode::ServiceUnavailable, "backend unavailable")
        }
    }
}

/// Logs the audit event and builds the client's error.
fn rejected(bucket: &str, key: &str, err: &FormatError) -> S3Error {
    tracing::warn!(
        event = "object_rejected",
        bucket = %bucket,
        key = %key,
        reason = %err,
        "stored object refused"
    );
    let mut e = S3Error::with_message(
        S3ErrorCode::Custom("VeilObjectRejected".into()),
        format!("stored object refused: {err}"),
    );
    e.set_status_code(http::StatusCode::BAD_GATEWAY);
    e
}

fn internal(what: &'static str) -> S3Error {
    S3Error::with_message(S3ErrorCode::InternalError, what)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// What the backend says about an object besides its body.
struct StoredAttributes {
    e_tag: Option<ETag>,
    last_modified: Option<Timestamp>,
    content_type: Option<String>,
    cache_control: Option<String>,
    content_disposition: Option<String>,
    content_encoding: Option<String>,
    metadata: Option<Metadata>,
}

impl StoredAttributes {
    fn from_headers(h: &HeaderMap) -> Self {
        let mut metadata = Metadata::default();
        for (name, value) in h {
            if let (Some(k), Ok(v)) = (name.as_str().strip_prefix("x-amz-meta-"), value.to_str()) {
                metadata.insert(k.to_string(), v.to_string());
            }
        }
        let s = |n| header_str(h, n).map(str::to_string);
        Self {
            e_tag: h
                .get("etag")
                .and_then(|v| ETag::parse_http_header(v.as_bytes()).ok()),
            last_modified: header_str(h, "last-modified")
                .and_then(|v| Timestamp::parse(TimestampFormat::HttpDate, v).ok()),
            content_type: s("content-type"),
            cache_control: s("cache-control"),
            content_disposition: s("content-disposition"),
            content_encoding: s("content-encoding"),
            metadata: (!metadata.is_empty()).then_some(metadata),
        }
    }
}

/// Reads exact byte counts from a backend body.
struct BodyReader {
    body: Incoming,
    buf: BytesMut,
}

impl BodyReader {
    fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: BytesMut::new(),
        }
    }

    /// Exactly `n` bytes, or `Err(Ok(found))` if the body ends first.
    async fn read_exact(&mut self, n: usize) -> Result<Bytes, Result<usize, StreamError>> {
        while self.buf.len() < n {
            match self.body.frame().await {
                None => return Err(Ok(self.buf.len())),
                Some(Err(e)) => return Err(Err(StreamError::Transfer(e.to_string()))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
        Ok(self.buf.split_to(n).freeze())
    }
}

/// Reads and opens chunk `index` (mapping a short body to a length error).
async fn read_chunk(
    reader: &mut BodyReader,
    cipher: &ObjectCipher,
    index: u64,
) -> Result<Vec<u8>, StreamError> {
    let expected = cipher.header().chunk_cipher_len(index);
    match reader.read_exact(expected).await {
        Ok(ct) => Ok(cipher.open_chunk(index, &ct)?),
        Err(Ok(found)) => Err(FormatError::ChunkLength {
            index,
            expected,
            found,
        }
        .into()),
        Err(Err(e)) => Err(e),
    }
}

/// Trims chunk plaintext to the requested range.
struct Trimmer {
    skip: usize,
    remaining: u64,
}

impl Trimmer {
    fn take(&mut self, mut plain: Vec<u8>) -> Bytes {
        let skip = std::mem::take(&mut self.skip).min(plain.len());
        plain.drain(..skip);
        let keep = usize::try_from(self.remaining)
            .unwrap_or(usize::MAX)
            .min(plain.len());
        plain.truncate(keep);
        self.remaining -= keep as u64;
        Bytes::from(plain)
    }
}

type PlainItem = Result<Bytes, StreamError>;

/// Decrypts chunks `first+1..=last` into `tx` (chunk `first` was opened before the response
/// was sent, so header and key errors become S3 errors).
#[allow(clippy::too_many_arguments)]
async fn decrypt_rest(
    cipher: ObjectCipher,
    mut reader: BodyReader,
    plan: RangePlan,
    mut trim: Trimmer,
    tx: mpsc::Sender<PlainItem>,
    bucket: String,
    key: String,
) {
    for index in plan.first_chunk + 1..=plan.last_chunk {
        let item = match read_chunk(&mut reader, &cipher, index).await {
            Ok(plain) => Ok(trim.take(plain)),
            Err(e) => {
                if let StreamError::Rejected(f) = &e {
                    let _ = rejected(&bucket, &key, f);
                } else {
                    tracing::warn!(bucket = %bucket, key = %key, error = %e, "backend body failed");
                }
                Err(e)
            }
        };
        let failed = item.is_err();
        if tx.send(item).await.is_err() || failed {
            return;
        }
    }
}

fn receiver_blob<E>(mut rx: mpsc::Receiver<Result<Bytes, E>>) -> StreamingBlob
where
    E: std::error::Error + Send + Sync + 'static,
{
    StreamingBlob::wrap(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// Encrypts the client's body into `tx`: the header, then each chunk as soon as it is full.
async fn encrypt_body(
    cipher: ObjectCipher,
    mut body: StreamingBlob,
    tx: mpsc::Sender<Result<Bytes, BoxError>>,
) {
    let result: Result<(), BoxError> = async {
        let header = cipher.header().clone();
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move {
                tx.send(Ok(b))
                    .await
                    .map_err(|_| BoxError::from("backend request closed"))
            }
        };
        send(Bytes::copy_from_slice(cipher.header_bytes())).await?;
        let count = header.chunk_count();
        let mut index = 0u64;
        let mut buf = BytesMut::with_capacity(header.chunk_size as usize);
        let mut received = 0u64;
        loop {
            while index < count && buf.len() >= header.chunk_plain_len(index) {
                let chunk = buf.split_to(header.chunk_plain_len(index));
                send(Bytes::from(cipher.seal_chunk(index, &chunk)?)).await?;
                index += 1;
            }
            match body.next().await {
                Some(Ok(data)) => {
                    received += data.len() as u64;
                    if received > header.plaintext_len {
                        break;
                    }
                    buf.extend_from_slice(&data);
                }
                Some(Err(e)) => return Err(e),
                None => break,
            }
        }
        if received != header.plaintext_len || index != count {
            return Err(FormatError::PlaintextLength {
                expected: header.plaintext_len,
                found: received,
            }
            .into());
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "upload aborted");
        let _ = tx.send(Err(e)).await;
    }
}

impl Proxy {
    /// Fetches and checks a stored object's header: its cipher and stored attributes.
    async fn stored_header(
        &self,
        bucket: &str,
        key: &str,
    ) -> S3Result<(ObjectCipher, StoredAttributes)> {
        let bucket_key = self
            .root
            .bucket_key(bucket)
            .map_err(|_| internal("key derivation"))?;
        let range = format!("bytes=0-{}", HEADER_LEN - 1);
        let resp = self
            .backend
            .get_object(bucket, key, Some(&range))
            .await
            .map_err(backend_error)?;
        let attrs = StoredAttributes::from_headers(resp.headers());
        let stored_len = header_str(resp.headers(), "content-range")
            .and_then(|v| v.rsplit('/').next())
            .and_then(|v| v.parse::<u64>().ok())
            .or_else(|| header_str(resp.headers(), "content-length")?.parse().ok())
            .ok_or_else(|| internal("backend sent no object length"))?;
        let bytes = client::read_body(resp.into_body(), HEADER_LEN)
            .await
            .map_err(backend_error)?;
        let cipher = ObjectCipher::for_stored_object(&bucket_key, bucket, key, &bytes)
            .map_err(|e| rejected(bucket, key, &e))?;
        let expected = cipher.header().ciphertext_len();
        if expected != stored_len {
            let e = FormatError::ObjectLength {
                expected,
                found: stored_len,
            };
            return Err(rejected(bucket, key, &e));
        }
        Ok((cipher, attrs))
    }

    fn plaintext_size(&self, stored: i64) -> i64 {
        u64::try_from(stored)
            .ok()
            .and_then(|s| plaintext_len_of_stored(s, self.chunk_size))
            .and_then(|p| i64::try_from(p).ok())
            .unwrap_or(stored)
    }
}

fn content_length(len: u64) -> S3Result<i64> {
    i64::try_from(len).map_err(|_| internal("length overflow"))
}

#[async_trait::async_trait]
impl S3 for Proxy {
    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket, input.key);
        let len = input
            .content_length
            .and_then(|l| u64::try_from(l).ok())
            .ok_or_else(|| S3Error::new(S3ErrorCode::MissingContentLength))?;
        let bucket_key = self
            .root
            .bucket_key(&bucket)
            .map_err(|_| internal("key derivation"))?;
        let cipher = ObjectCipher::for_new_object(&bucket_key, &bucket, &key, self.chunk_size, len)
            .map_err(|e| S3Error::with_message(S3ErrorCode::EntityTooLarge, e.to_string()))?;
        let stored_len = cipher.header().ciphertext_len();
        let mut headers: Vec<(String, String)> = Vec::new();
        for (name, value) in [
            ("content-type", input.content_type),
            ("cache-control", input.cache_control),
            ("content-disposition", input.content_disposition),
            ("content-encoding", input.content_encoding),
        ] {
            if let Some(v) = value {
                headers.push((name.to_string(), v));
            }
        }
        for (k, v) in input.metadata.unwrap_or_default() {
            headers.push((format!("x-amz-meta-{}", k.to_ascii_lowercase()), v));
        }
        let body = input.body.unwrap_or_else(|| {
            StreamingBlob::wrap(futures::stream::empty::<Result<Bytes, std::io::Error>>())
        });
        let (tx, mut rx) = mpsc::channel(PIPELINE_DEPTH);
        let task = tokio::spawn(encrypt_body(cipher, body, tx));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let result = self
            .backend
            .put_object(
                &bucket,
                &key,
                stored_len,
                headers,
                client::stream_body(stream),
            )
            .await;
        task.abort();
        let resp = result.map_err(backend_error)?;
        let e_tag = StoredAttributes::from_headers(resp.headers()).e_tag;
        Ok(S3Response::new(PutObjectOutput {
            e_tag,
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let (bucket, key) = (input.bucket, input.key);
        let (cipher, attrs) = self.stored_header(&bucket, &key).await?;
        let header = cipher.header().clone();
        let (range, content_range) = match input.range {
            None => (0..header.plaintext_len, None),
            Some(r) => {
                let range = r
                    .check(header.plaintext_len)
                    .map_err(|_| S3Error::new(S3ErrorCode::InvalidRange))?;
                let cr = format!(
                    "bytes {}-{}/{}",
                    range.start,
                    range.end - 1,
                    header.plaintext_len
                );
                (range, Some(cr))
            }
        };
        let plan = header.plan_range(range);
        let ct_range = format!(
            "bytes={}-{}",
            plan.ciphertext.start,
            plan.ciphertext.end - 1
        );
        let resp = self
            .backend
            .get_object(&bucket, &key, Some(&ct_range))
            .await
            .map_err(backend_error)?;
        if StoredAttributes::from_headers(resp.headers()).e_tag != attrs.e_tag {
            let mut e = S3Error::with_message(
                S3ErrorCode::Custom("VeilObjectChanged".into()),
                "the object changed while it was read; retry",
            );
            e.set_status_code(http::StatusCode::SERVICE_UNAVAILABLE);
            return Err(e);
        }
        let mut reader = BodyReader::new(resp.into_body());
        let mut trim = Trimmer {
            skip: plan.skip,
            remaining: plan.len,
        };
        // Authenticate the first chunk before answering, so that a wrong key, a moved object
        // or a tampered first chunk is an S3 error rather than a broken body.
        let first = match read_chunk(&mut reader, &cipher, plan.first_chunk).await {
            Ok(plain) => trim.take(plain),
            Err(StreamError::Rejected(e)) => return Err(rejected(&bucket, &key, &e)),
            Err(StreamError::Transfer(e)) => {
                tracing::warn!(error = %e, "backend body failed");
                return Err(S3Error::with_message(
                    S3ErrorCode::ServiceUnavailable,
                    "backend body failed",
                ));
            }
        };
        let (tx, rx) = mpsc::channel(PIPELINE_DEPTH);
        let out_len = plan.len;
        if tx.send(Ok(first)).await.is_err() {
            return Err(internal("response channel closed"));
        }
        tokio::spawn(decrypt_rest(cipher, reader, plan, trim, tx, bucket, key));
        Ok(S3Response::new(GetObjectOutput {
            body: Some(receiver_blob(rx)),
            content_length: Some(content_length(out_len)?),
            content_range,
            accept_ranges: Some("bytes".into()),
            e_tag: attrs.e_tag,
            last_modified: attrs.last_modified,
            content_type: attrs.content_type,
            cache_control: attrs.cache_control,
            content_disposition: attrs.content_disposition,
            content_encoding: attrs.content_encoding,
            metadata: attrs.metadata,
            ..Default::default()
        }))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let (cipher, attrs) = self.stored_header(&input.bucket, &input.key).await?;
        Ok(S3Response::new(HeadObjectOutput {
            content_length: Some(content_length(cipher.header().plaintext_len)?),
            accept_ranges: Some("bytes".into()),
            e_tag: attrs.e_tag,
            last_modified: attrs.last_modified,
            content_type: attrs.content_type,
            cache_control: attrs.cache_control,
            content_disposition: attrs.content_disposition,
            content_encoding: attrs.content_encoding,
            metadata: attrs.metadata,
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.backend
            .delete_object(&req.input.bucket, &req.input.key)
            .await
            .map_err(backend_error)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let mut query = Vec::new();
        let mut push = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                query.push((k.to_string(), v));
            }
        };
        push("prefix", input.prefix);
        push("delimiter", input.delimiter);
        push("continuation-token", input.continuation_token);
        push("start-after", input.start_after);
        push("max-keys", input.max_keys.map(|m| m.to_string()));
        push("fetch-owner", input.fetch_owner.map(|f| f.to_string()));
        push(
            "encoding-type",
            input.encoding_type.map(|e| e.as_str().to_string()),
        );
        let xml = self
            .backend
            .list_objects_v2_xml(&input.bucket, &query)
            .await
            .map_err(backend_error)?;
        let mut out = parse_list_objects_v2(&xml).map_err(|e| {
            tracing::warn!(error = ?e, "backend listing unreadable");
            internal("backend listing unreadable")
        })?;
        for object in out.contents.iter_mut().flatten() {
            object.size = object.size.map(|s| self.plaintext_size(s));
        }
        Ok(S3Response::new(out))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.backend
            .create_bucket(&req.input.bucket)
            .await
            .map_err(backend_error)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.backend
            .head_bucket(&req.input.bucket)
            .await
            .map_err(|e| match e {
                ClientError::S3 { status, .. } if status == http::StatusCode::NOT_FOUND => {
                    S3Error::new(S3ErrorCode::NoSuchBucket)
                }
                other => backend_error(other),
            })?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.backend
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(backend_error)?;
        Ok(S3Response::new(DeleteBucketOutput::default()))
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let xml = self
            .backend
            .list_buckets_xml()
            .await
            .map_err(backend_error)?;
        let mut d = Deserializer::new(&xml);
        let out = ListBucketsOutput::deserialize(&mut d).map_err(|e| {
            tracing::warn!(error = ?e, "backend bucket list unreadable");
            internal("backend bucket list unreadable")
        })?;
        Ok(S3Response::new(out))
    }
}

/// Parses a ListBucketResult document.
pub fn parse_list_objects_v2(xml: &[u8]) -> Result<ListObjectsV2Output, DeError> {
    let mut d = Deserializer::new(xml);
    let mut out = ListObjectsV2Output::default();
    d.named_element("ListBucketResult", |d| {
        d.for_each_element(|d, name| {
            match name {
                b"Name" => out.name = Some(d.content()?),
                b"Prefix" => out.prefix = Some(d.content()?),
                b"MaxKeys" => out.max_keys = Some(d.content()?),
                b"KeyCount" => out.key_count = Some(d.content()?),
                b"IsTruncated" => out.is_truncated = Some(d.content()?),
                b"ContinuationToken" => out.continuation_token = Some(d.content()?),
                b"NextContinuationToken" => out.next_continuation_token = Some(d.content()?),
                b"StartAfter" => out.start_after = Some(d.content()?),
                b"Delimiter" => out.delimiter = Some(d.content()?),
                b"EncodingType" => out.encoding_type = Some(d.content()?),
                b"Contents" => out.contents.get_or_insert_with(Vec::new).push(d.content()?),
                b"CommonPrefixes" => out
                    .common_prefixes
                    .get_or_insert_with(Vec::new)
                    .push(d.content()?),
                _ => return Err(DeError::UnexpectedTagName),
            }
            Ok(())
        })
    })?;
    Ok(out)
}
