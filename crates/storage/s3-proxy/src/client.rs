//! A small S3 client over hyper (HTTP/1.1, path-style, SigV4): the proxy's way to its backend,
//! and the tests' and benchmark's way to the proxy.

use bytes::{Bytes, BytesMut};
use futures::{Stream, TryStreamExt};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use time::OffsetDateTime;

use crate::sigv4::{self, Credentials, UNSIGNED_PAYLOAD};

/// Errors of stream bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of a request.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// Largest error or listing document read into memory.
pub const MAX_DOCUMENT: usize = 16 * 1024 * 1024;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server could not be reached or the connection broke.
    #[error("S3 request to {authority}: {source}")]
    Transport {
        /// The server.
        authority: String,
        /// The cause.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Reading a response body failed.
    #[error("S3 response body: {0}")]
    Body(#[from] hyper::Error),
    /// The server answered with an S3 error.
    #[error("S3 error {status} {code}: {message}")]
    S3 {
        /// HTTP status.
        status: StatusCode,
        /// S3 error code (or a stand-in for bodiless responses).
        code: String,
        /// S3 error message.
        message: String,
    },
    /// The request could not be built.
    #[error("S3 request: {0}")]
    Request(String),
    /// The response was not what S3 sends.
    #[error("S3 response: {0}")]
    Response(String),
}

/// An S3 endpoint with credentials.
#[derive(Debug, Clone)]
pub struct S3Client {
    http: Client<HttpConnector, RequestBody>,
    authority: String,
    creds: Credentials,
    region: String,
}

/// An empty body.
pub fn empty_body() -> RequestBody {
    Empty::<Bytes>::new().map_err(|e| match e {}).boxed_unsync()
}

/// A body held in memory.
pub fn full_body(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

/// A streamed body.
pub fn stream_body<S>(stream: S) -> RequestBody
where
    S: Stream<Item = Result<Bytes, BoxError>> + Send + 'static,
{
    StreamBody::new(stream.map_ok(Frame::data)).boxed_unsync()
}

/// Reads a whole (small) body, refusing more than `limit` bytes.
pub async fn read_body(mut body: Incoming, limit: usize) -> Result<Bytes, ClientError> {
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ClientError::Response(format!(
                    "body longer than {limit} bytes"
                )));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

fn xml_text(doc: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let start = doc.find(&open)? + open.len();
    let end = start + doc.get(start..)?.find(&format!("</{tag}>"))?;
    Some(
        doc.get(start..end)?
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

impl S3Client {
    /// A client of `authority` (`host:port`, plain HTTP).
    pub fn new(authority: impl Into<String>, creds: Credentials) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            http: Client::builder(TokioExecutor::new()).build(connector),
            authority: authority.into(),
            creds,
            region: "us-east-1".to_string(),
        }
    }

    /// The server's `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Sends a signed request; a non-2xx answer becomes [`ClientError::S3`].
    pub async fn send(
        &self,
        method: Method,
        bucket: Option<&str>,
        key: Option<&str>,
        query: &[(String, String)],
        mut headers: Vec<(String, String)>,
        body: RequestBody,
    ) -> Result<Response<Incoming>, ClientError> {
        let mut path = String::from("/");
        if let Some(bucket) = bucket {
            path.push_str(&sigv4::uri_encode(bucket, false));
            if let Some(key) = key {
                path.push('/');
                path.push_str(&sigv4::uri_encode(key, true));
            }
        }
        let query_string = sigv4::canonical_query(query);
        let uri = if query_string.is_empty() {
            format!("http://{}{path}", self.authority)
        } else {
            format!("http://{}{path}?{query_string}", self.authority)
        };
        let date = sigv4::amz_date(OffsetDateTime::now_utc());
        headers.push(("host".into(), self.authority.clone()));
        headers.push(("x-amz-date".into(), date.clone()));
        headers.push(("x-amz-content-sha256".into(), UNSIGNED_PAYLOAD.into()));
        let auth = sigv4::authorization(
            method.as_str(),
            &path,
            query,
            &headers,
            &self.creds,
            &self.region,
            &date,
        );
        let mut builder = Request::builder().method(method.clone()).uri(uri);
        for (k, v) in &headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .header("authorization", auth)
            .body(body)
            .map_err(|e| ClientError::Request(e.to_string()))?;
        let response =
            self.http
                .request(request)
                .await
                .map_err(|source| ClientError::Transport {
                    authority: self.authority.clone(),
                    source,
                })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let doc = read_body(response.into_body(), MAX_DOCUMENT).await?;
        let doc = String::from_utf8_lossy(&doc);
        let code = xml_text(&doc, "Code").unwrap_or_else(|| {
            match status {
                StatusCode::NOT_FOUND => "NotFound",
                StatusCode::FORBIDDEN => "AccessDenied",
                _ => "UnknownError",
            }
            .to_string()
        });
        Err(ClientError::S3 {
            status,
            code,
            message: xml_text(&doc, "Message").unwrap_or_default(),
        })
    }

    /// `PUT /bucket`.
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), ClientError> {
        let headers = vec![("content-length".into(), "0".into())];
        self.send(Method::PUT, Some(bucket), None, &[], headers, empty_body())
            .await
            .map(drop)
    }

    /// `DELETE /bucket`.
    pub async fn delete_bucket(&self, bucket: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            Some(bucket),
            None,
            &[],
            vec![],
            empty_body(),
        )
        .await
        .map(drop)
    }

    /// `HEAD /bucket`.
    pub async fn head_bucket(&self, bucket: &str) -> Result<(), ClientError> {
        self.send(Method::HEAD, Some(bucket), None, &[], vec![], empty_body())
            .await
            .map(drop)
    }

    /// `GET /` (the ListAllMyBucketsResult document).
    pub async fn list_buckets_xml(&self) -> Result<Bytes, ClientError> {
        let r = self
            .send(Method::GET, None, None, &[], vec![], empty_body())
            .await?;
        read_body(r.into_body(), MAX_DOCUMENT).await
    }

    /// `GET /bucket?list-type=2&…` (the ListBucketResult document).
    pub async fn list_objects_v2_xml(
        &self,
        bucket: &str,
        query: &[(String, String)],
    ) -> Result<Bytes, ClientError> {
        let mut q = vec![("list-type".to_string(), "2".to_string())];
        q.extend_from_slice(query);
        let r = self
            .send(Method::GET, Some(bucket), None, &q, vec![], empty_body())
            .await?;
        read_body(r.into_body(), MAX_DOCUMENT).await
    }

    /// `PUT /bucket/key` with a body of `len` bytes; returns the response (for its ETag).
    pub async fn put_object(
        &self,
        bucket: &str,
        key: &str,
        len: u64,
        mut headers: Vec<(String, String)>,
        body: RequestBody,
    ) -> Result<Response<Incoming>, ClientError> {
        headers.push(("content-length".into(), len.to_string()));
        self.send(Method::PUT, Some(bucket), Some(key), &[], headers, body)
            .await
    }

    /// `GET /bucket/key`, with an optional `Range` header value such as `bytes=0-9`.
    pub async fn get_object(
        &self,
        bucket: &str,
        key: &str,
        range: Option<&str>,
    ) -> Result<Response<Incoming>, ClientError> {
        let headers = range
            .map(|r| vec![("range".to_string(), r.to_string())])
            .unwrap_or_default();
        self.send(
            Method::GET,
            Some(bucket),
            Some(key),
            &[],
            headers,
            empty_body(),
        )
        .await
    }

    /// `GET /bucket/key` read into memory (small objects only).
    pub async fn get_object_bytes(
        &self,
        bucket: &str,
        key: &str,
        range: Option<&str>,
    ) -> Result<Bytes, ClientError> {
        let r = self.get_object(bucket, key, range).await?;
        read_body(r.into_body(), usize::MAX).await
    }

    /// `HEAD /bucket/key`.
    pub async fn head_object(
        &self,
        bucket: &str,
        key: &str,
    ) -> Result<Response<Incoming>, ClientError> {
        self.send(
            Method::HEAD,
            Some(bucket),
            Some(key),
            &[],
            vec![],
            empty_body(),
        )
        .await
    }

    /// `DELETE /bucket/key`.
    pub async fn delete_object(&self, bucket: &str, key: &str) -> Result<(), ClientError> {
        self.send(
            Method::DELETE,
            Some(bucket),
            Some(key),
            &[],
            vec![],
            empty_body(),
        )
        .await
        .map(drop)
    }
}
