//! The container images a local cluster needs, built here (no registry can be reached): single-
//! layer OCI image archives, byte-for-byte reproducible (fixed times and owners), so their
//! SHA-256 can be part of each node's measured configuration.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// One file of an image's layer.
enum Entry<'a> {
    File {
        path: &'a str,
        body: Vec<u8>,
        mode: u32,
    },
    Link {
        path: &'a str,
        target: &'a str,
    },
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn layer(entries: &[Entry<'_>]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    for e in entries {
        let path = match e {
            Entry::File { path, .. } | Entry::Link { path, .. } => *path,
        };
        if let Some((dir, _)) = path.rsplit_once('/')
            && !dir.is_empty()
            && !dirs.iter().any(|d| d == dir)
        {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_mtime(0);
            h.set_size(0);
            b.append_data(&mut h, format!("{dir}/"), std::io::empty())?;
            dirs.push(dir.to_string());
        }
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::File { path, body, mode } => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, path, body.as_slice())?;
            }
            Entry::Link { path, target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target)?;
            }
        }
    }
    Ok(b.into_inner()?)
}

/// How an image starts: its entrypoint, or only a default command (which a pod's `args`
/// replace, as with the usual busybox images).
#[derive(Clone, Copy)]
enum Start<'a> {
    Entrypoint(&'a [&'a str]),
    Cmd(&'a [&'a str]),
}

/// Writes an OCI image archive named `name` (e.g. `registry.k8s.io/pause:3.10`) whose one layer
/// holds `entries`; returns its SHA-256 (hex).
fn archive(
    out: &Path,
    name: &str,
    entries: &[Entry<'_>],
    start: Start<'_>,
) -> anyhow::Result<String> {
    let layer = layer(entries)?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": match start {
            Start::Entrypoint(e) => serde_json::json!({"Entrypoint": e, "Env": ["PATH=/bin:/usr/bin"]}),
            Start::Cmd(c) => serde_json::json!({"Cmd": c, "Env": ["PATH=/bin:/usr/bin"]}),
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len()}],
    }))?;
    let tag = name.rsplit_once(':').map_or("latest", |(_, t)| t);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest(&manifest),
            "size": manifest.len(),
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    }))?;
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: String, body: &[u8]| -> anyhow::Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(body.len() as u64);
        b.append_data(&mut h, path, body)?;
        Ok(())
    };
    add("oci-layout".into(), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json".into(), &index)?;
    for blob in [&config, &manifest, &layer] {
        add(
            format!("blobs/sha256/{}", hex::encode(Sha256::digest(blob))),
            blob,
        )?;
    }
    let bytes = b.into_inner()?;
    std::fs::write(out, &bytes).with_context(|| format!("{}", out.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// The images of a local cluster.
pub const PAUSE: &str = "registry.k8s.io/pause:3.10";
/// CoreDNS, from the components.
pub const COREDNS: &str = "veil.local/coredns:v1.14.1";
/// A small workload: Debian's static busybox.
pub const BUSYBOX: &str = "veil.local/busybox:1";

/// The busybox applets the workload image links.
const APPLETS: &[&str] = &[
    "sh",
    "ls",
    "cat",
    "echo",
    "sleep",
    "wget",
    "nc",
    "nslookup",
    "httpd",
    "hostname",
    "ip",
    "ping",
    "env",
    "id",
    "ps",
    "true",
    "false",
    "head",
    "tail",
    "grep",
    "dd",
    "date",
    "mkdir",
    "rm",
    "cp",
    "mv",
    "touch",
    "test",
    "uname",
    "wc",
    "sort",
    "uniq",
    "tr",
    "sed",
    "awk",
    "printf",
    "kill",
    "timeout",
    "seq",
    "netstat",
    "ifconfig",
    "sha256sum",
    "base64",
    "du",
    "df",
];

/// A user's image for trying `veil mini image load`: Debian's busybox under the name `name`
/// (the archive at `out`); returns its SHA-256 (hex).
pub fn busybox_as(out: &Path, name: &str) -> anyhow::Result<String> {
    let mut entries = vec![Entry::File {
        path: "bin/busybox",
        body: std::fs::read("/usr/bin/busybox").context("/usr/bin/busybox")?,
        mode: 0o755,
    }];
    let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    for l in &links {
        entries.push(Entry::Link {
            path: l,
            target: "busybox",
        });
    }
    archive(out, name, &entries, Start::Cmd(&["sh"]))
}

/// Builds the cluster's images into `dir` from the components in `bin` (and Debian's
/// busybox); returns each archive's path and SHA-256 (hex).
pub fn build(dir: &Path, bin: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    std::fs::create_dir_all(dir)?;
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("{}", p.display()));
    let mut out = Vec::new();
    let pause = dir.join("pause.tar");
    let h = archive(
        &pause,
        PAUSE,
        &[Entry::File {
            path: "pause",
            body: read(&bin.join("pause"))?,
            mode: 0o755,
        }],
        Start::Entrypoint(&["/pause"]),
    )?;
    out.push((pause, h));
    let coredns = dir.join("coredns.tar");
    let h = archive(
        &coredns,
        COREDNS,
        &[Entry::File {
            path: "coredns",
            body: read(&bin.join("coredns"))?,
            mode: 0o755,
        }],
        Start::Entrypoint(&["/coredns"]),
    )?;
    out.push((coredns, h));
    let busybox = dir.join("busybox.tar");
    let h = busybox_as(&busybox, BUSYBOX)?;
    out.push((busybox, h));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_reproducible_and_name_their_image() {
        let d = tempfile::tempdir().unwrap();
        let entries = [Entry::File {
            path: "hello",
            body: b"hi".to_vec(),
            mode: 0o755,
        }];
        let a = archive(
            &d.path().join("a.tar"),
            "x/y:1",
            &entries,
            Start::Entrypoint(&["/hello"]),
        )
        .unwrap();
        let b = archive(
            &d.path().join("b.tar"),
            "x/y:1",
            &entries,
            Start::Entrypoint(&["/hello"]),
        )
        .unwrap();
        assert_eq!(a, b);
        let c = archive(
            &d.path().join("c.tar"),
            "x/y:2",
            &entries,
            Start::Entrypoint(&["/hello"]),
        )
        .unwrap();
        assert_ne!(a, c);
        let mut t = tar::Archive::new(std::fs::File::open(d.path().join("a.tar")).unwrap());
        let mut names = Vec::new();
        let mut index = String::new();
        for e in t.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            if p == "index.json" {
                std::io::Read::read_to_string(&mut e, &mut index).unwrap();
            }
            names.push(p);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        assert_eq!(
            names
                .iter()
                .filter(|n| n.starts_with("blobs/sha256/"))
                .count(),
            3
        );
        assert!(
            index.contains(r#""io.containerd.image.name":"x/y:1""#),
            "{index}"
        );
    }
}
