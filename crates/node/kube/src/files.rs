//! Files the components read: written whole (temporary file, then rename) with mode 0600, and
//! kubeconfigs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;

use crate::pki::Issued;

/// Writes `body` to `path` with mode 0600, replacing it whole.
pub fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Writes an issued certificate and key as `<dir>/<name>.crt` and `<dir>/<name>.key`;
/// returns both paths.
pub fn write_issued(
    dir: &Path,
    name: &str,
    issued: &Issued,
) -> std::io::Result<(PathBuf, PathBuf)> {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    write_private(&key, issued.key_pem.as_bytes())?;
    write_private(&crt, issued.cert_pem.as_bytes())?;
    Ok((crt, key))
}

/// A kubeconfig for `user` at `server` trusting `ca_pem`, with the credentials inline.
pub fn kubeconfig(server: &str, ca_pem: &str, user: &str, issued: &Issued) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: veil\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: veil\n  context:\n    cluster: veil\n    user: {user}\ncurrent-context: veil\n",
        b64(ca_pem),
        b64(&issued.cert_pem),
        b64(&issued.key_pem),
    )
}

/// A kubeconfig for `user` at `server` whose CA and credentials are files (components that
/// reread renewed certificates).
pub fn kubeconfig_files(server: &str, ca: &Path, user: &str, crt: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: veil\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: veil\n  context:\n    cluster: veil\n    user: {user}\ncurrent-context: veil\n",
        ca.display(),
        crt.display(),
        key.display(),
    )
}

/// The CA certificate (PEM) a kubeconfig trusts, and its server, read back from its text.
pub fn kubeconfig_ca_and_server(text: &str) -> Result<(Vec<u8>, String), String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(str::trim))
            .map(str::to_string)
            .ok_or_else(|| format!("kubeconfig: no `{name}`"))
    };
    let ca = base64::engine::general_purpose::STANDARD
        .decode(field("certificate-authority-data:")?)
        .map_err(|e| format!("kubeconfig: certificate-authority-data: {e}"))?;
    Ok((ca, field("server:")?))
}
