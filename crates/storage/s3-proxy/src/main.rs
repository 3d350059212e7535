//! `veil-s3-proxy`: an S3 server that encrypts objects before they reach the backend.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use veil_s3_proxy::format::{DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use veil_s3_proxy::keys::RootKey;
use veil_s3_proxy::server::{self, ProxyConfig};
use veil_s3_proxy::sigv4::Credentials;

#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    /// The backend S3 endpoint, `host:port` (plain HTTP, path-style).
    #[arg(long)]
    backend: String,
    /// Access key for the backend.
    #[arg(long, env = "VEIL_S3_BACKEND_ACCESS_KEY")]
    backend_access_key: String,
    /// Secret key for the backend (prefer the environment variable).
    #[arg(long, env = "VEIL_S3_BACKEND_SECRET_KEY", hide_env_values = true)]
    backend_secret_key: String,
    /// Access key clients must sign with.
    #[arg(long, env = "VEIL_S3_CLIENT_ACCESS_KEY")]
    client_access_key: String,
    /// Secret key clients must sign with (prefer the environment variable).
    #[arg(long, env = "VEIL_S3_CLIENT_SECRET_KEY", hide_env_values = true)]
    client_secret_key: String,
    /// File holding the 32-byte root key as 64 hex characters; `-` reads stdin.
    #[arg(long)]
    root_key_file: PathBuf,
    /// Plaintext bytes per chunk of new objects.
    #[arg(long, default_value_t = DEFAULT_CHUNK_SIZE,
          value_parser = clap::value_parser!(u32).range(i64::from(MIN_CHUNK_SIZE)..=i64::from(MAX_CHUNK_SIZE)))]
    chunk_size: u32,
}

fn read_root_key(path: &PathBuf) -> anyhow::Result<RootKey> {
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the root key from stdin")?;
    } else {
        std::fs::File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .with_context(|| format!("reading the root key from {}", path.display()))?;
    }
    Ok(RootKey::from_hex(&mut text)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let root_key = read_root_key(&args.root_key_file)?;
    let config = ProxyConfig {
        backend: args.backend,
        backend_credentials: Credentials::new(args.backend_access_key, args.backend_secret_key),
        client_credentials: Credentials::new(args.client_access_key, args.client_secret_key),
        root_key,
        chunk_size: args.chunk_size,
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(listen = %args.listen, backend = %config.backend, chunk_size = config.chunk_size, "veil-s3-proxy started");
    server::serve(listener, server::service(config)).await;
    Ok(())
}
