//! `veil kubeconfig`: a kubeconfig for the owner, made from the workspace alone. Its CA is the
//! Kubernetes cluster CA derived from the master secret — the one every attested control plane
//! derives, and no other — and its client certificate (`veil-owner`, group `system:masters`) is
//! issued by that CA here, so nothing is asked of the cluster. `veil verify` then proves that
//! the API servers this kubeconfig reaches serve certificates their attested control planes
//! vouch for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use veil_keys::{ClusterSecrets, SecretBytes};
use veil_kube::pki::{KubePki, owner_leaf};

use crate::output::EXIT_UNUSABLE;
use crate::workspace::owner_secret;

/// How long the owner's client certificate lasts.
pub const OWNER_CERT_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The API server's port on the control planes.
pub const API_PORT: u16 = 6443;

/// Arguments of `veil kubeconfig`.
#[derive(clap::Args, Debug)]
pub struct KubeconfigArgs {
    /// The workspace.
    #[arg(long, default_value = ".")]
    pub workspace: PathBuf,
    /// The API server's URL (default: the first control plane's address, port 6443).
    #[arg(long)]
    pub server: Option<String>,
    /// Write it here (mode 0600) instead of standard output.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// The cluster's secrets, from the owner's part of the workspace.
pub fn workspace_secrets(ws: &Path) -> anyhow::Result<ClusterSecrets> {
    let mut master = owner_secret(ws, "master-secret")?;
    let salt = owner_secret(ws, "salt")?;
    Ok(ClusterSecrets::new(
        SecretBytes::from_slice("master secret", &mut master)?,
        salt,
    ))
}

/// The kubeconfig text for the owner of the cluster in `ws`, at `server`.
pub fn owner_kubeconfig(ws: &Path, server: &str) -> anyhow::Result<String> {
    let pki = KubePki::derive(&workspace_secrets(ws)?)?;
    let issued = pki.cluster.issue(&owner_leaf(OWNER_CERT_VALIDITY))?;
    Ok(veil_kube::files::kubeconfig(
        server,
        pki.cluster.cert_pem(),
        "veil-owner",
        &issued,
    ))
}

/// The default server: the first control plane of the workspace's record, at the API port.
pub fn default_server(ws: &Path) -> anyhow::Result<String> {
    let record = crate::workspace::load(ws)?;
    let first = record
        .record
        .addresses()
        .into_iter()
        .next()
        .context("the workspace names no control plane")?;
    let host = first.rsplit_once(':').map_or(first.as_str(), |(h, _)| h);
    Ok(format!("https://{host}:{API_PORT}"))
}

/// Writes the owner's kubeconfig for `ws` to `out` (mode 0600).
pub fn write(ws: &Path, server: &str, out: &Path) -> anyhow::Result<()> {
    let text = owner_kubeconfig(ws, server)?;
    veil_kube::files::write_private(out, text.as_bytes())
        .with_context(|| format!("cannot write {}", out.display()))
}

/// `veil kubeconfig`.
pub fn run(a: KubeconfigArgs) -> ExitCode {
    let r = (|| -> anyhow::Result<()> {
        let server = match &a.server {
            Some(s) => s.clone(),
            None => default_server(&a.workspace)?,
        };
        match &a.output {
            Some(out) => write(&a.workspace, &server, out),
            None => {
                print!("{}", owner_kubeconfig(&a.workspace, &server)?);
                Ok(())
            }
        }
    })();
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_UNUSABLE)
        }
    }
}
