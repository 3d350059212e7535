//! Veil's S3 encryption proxy.
//!
//! Clients speak plain S3 (SigV4) to the proxy; the proxy encrypts every object in
//! authenticated chunks before it leaves for the real S3 backend, and on the way back refuses
//! — with an S3 error and an `object_rejected` audit event — any object that does not
//! authenticate: tampered, truncated, reordered, moved to another name or bucket, or written
//! under another key.
//!
//! - [`format`]: the object format (pure; see README.md for the specification);
//! - [`keys`]: root key → bucket key → object key (HKDF-SHA256);
//! - [`sigv4`] and [`client`]: a small S3 client (the backend side, tests, benchmarks);
//! - [`proxy`]: the S3 operations; [`server`]: serving them over TCP;
//! - [`harness`] and [`bench`]: a real `s3s-fs` backend for tests, and throughput figures.

pub mod bench;
pub mod client;
pub mod format;
pub mod harness;
pub mod keys;
pub mod proxy;
pub mod server;
pub mod sigv4;
pub mod snapshots;
