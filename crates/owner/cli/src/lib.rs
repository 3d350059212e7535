//! The owner's tools behind the `veil` command: the workspace (what the owner trusts and
//! its record of the cluster), init, verify, recover, owner commands, reference values and
//! offline verification of evidence. This crate links no TPM library and no WireGuard: the
//! owner's workstation needs neither (local clusters are `veil-mini`'s).

pub mod attest;
pub mod audit;
pub mod cas;
pub mod clock;
pub mod init;
pub mod kubeconfig;
pub mod measurements;
pub mod node;
pub mod output;
pub mod recover;
pub mod verify;
pub mod verify_kube;
pub mod workspace;
