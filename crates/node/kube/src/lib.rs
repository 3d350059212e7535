//! Kubernetes inside Veil's trust chain.
//!
//! - [`pki`]: Kubernetes' CAs and service-account key, derived from the master secret.
//! - [`kms`]: the KMS v2 plugin that keeps Secrets encrypted in etcd under a derived key.
//! - [`control_plane`]: etcd, API server, controller manager and scheduler of a control-plane
//!   node that holds the cluster's secrets.
//! - [`supervise`]: keeps the components running, each from its measured binary.
//! - [`launcher`]: the supervisor as a process of its own, started before the agent opens
//!   anything its components must not inherit.
//! - [`private`]: the node's own mount namespace and the tmpfs where its keys live.
//! - [`worker`]: containerd, kubelet and kube-proxy of a worker with attested credentials.
//! - [`addons`]: cluster DNS, the removed-node policy and attestation labels, kept by the
//!   control plane through the API.
//! - [`volumes`]: persistent volumes through the API: Veil's CSI driver and StorageClass, its
//!   provisioner and attacher.
//! - [`apiproxy`]: a worker's forwarder to whichever API server answers.
//! - [`files`]: private files and kubeconfigs.
//! - [`exec`]: starting a program without the agent's descriptors (the TPM's socket).

#[cfg(feature = "node")]
pub mod addons;
#[cfg(feature = "node")]
pub mod apiproxy;
#[cfg(feature = "node")]
pub mod control_plane;
#[cfg(feature = "node")]
pub mod exec;
pub mod files;
pub mod kms;
#[cfg(feature = "node")]
pub mod launcher;
pub mod pki;
#[cfg(feature = "node")]
pub mod private;
#[cfg(feature = "node")]
pub mod supervise;
#[cfg(feature = "node")]
pub mod volumes;
#[cfg(feature = "node")]
pub mod worker;
#[cfg(feature = "node")]
pub mod workload;
