//! Serving the proxy over TCP (HTTP/1.1 and HTTP/2, plain).

use std::net::SocketAddr;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::client::S3Client;
use crate::keys::RootKey;
use crate::proxy::Proxy;
use crate::sigv4::Credentials;

/// What the proxy needs.
#[derive(Debug)]
pub struct ProxyConfig {
    /// The backend's `host:port`.
    pub backend: String,
    /// Credentials the proxy signs backend requests with.
    pub backend_credentials: Credentials,
    /// The only credentials the proxy accepts from its clients.
    pub client_credentials: Credentials,
    /// The root key.
    pub root_key: RootKey,
    /// Plaintext bytes per chunk of new objects.
    pub chunk_size: u32,
}

/// The S3 service (authentication included) for `config`.
pub fn service(config: ProxyConfig) -> S3Service {
    let backend = S3Client::new(config.backend, config.backend_credentials);
    let proxy = Proxy::new(backend, config.root_key, config.chunk_size);
    let mut builder = S3ServiceBuilder::new(proxy);
    builder.set_auth(SimpleAuth::from_single(
        config.client_credentials.access_key.clone(),
        config.client_credentials.secret_key(),
    ));
    builder.build()
}

/// Serves `service` on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, service: S3Service) {
    let http = ConnBuilder::new(TokioExecutor::new());
    loop {
        let socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        let conn = http
            .serve_connection(TokioIo::new(socket), service.clone())
            .into_owned();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

/// A proxy running in this process (for tests and benchmarks); stops when dropped.
#[derive(Debug)]
pub struct RunningProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl RunningProxy {
    /// Starts a proxy on `127.0.0.1`, on a free port.
    pub async fn start(config: ProxyConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(serve(listener, service(config)));
        Ok(Self { addr, task })
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
