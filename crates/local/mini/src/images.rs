//! The container images a local cluster needs, built here (no registry can be reached): single-
//! layer OCI image archives, byte-for-byte reproducible (fixed times and owners), so their
//! SHA-256 can be part of each node's measured configuration.

use std::path::{Path, PathBuf};

use anyhow::Context;
use sha2::{Digest, Sha256};

/// One file of an image's layer.
enum Entry {
    File {
        path: String,
        body: Vec<u8>,
        mode: u32,
    },
    Link {
        path: String,
        target: String,
    },
    Dir {
        path: String,
        mode: u32,
    },
}

impl Entry {
    fn file(path: &str, body: Vec<u8>, mode: u32) -> Self {
        Entry::File {
            path: path.into(),
            body,
            mode,
        }
    }

    fn link(path: &str, target: &str) -> Self {
        Entry::Link {
            path: path.into(),
            target: target.into(),
        }
    }

    fn path(&self) -> &str {
        match self {
            Entry::File { path, .. } | Entry::Link { path, .. } | Entry::Dir { path, .. } => path,
        }
    }
}

fn digest(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

fn dir_header(mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_size(0);
    h
}

fn layer(entries: &[Entry]) -> anyhow::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: std::collections::BTreeSet<String> = Default::default();
    let mut seen: std::collections::BTreeSet<&str> = Default::default();
    for e in entries {
        // Every ancestor directory before what it holds.
        let path = e.path();
        // A second entry at a path would silently replace the first.
        anyhow::ensure!(seen.insert(path), "image layer: `{path}` twice");
        let mut at = 0;
        while let Some(i) = path[at..].find('/') {
            let dir = &path[..at + i];
            if !dir.is_empty() && dirs.insert(dir.to_string()) {
                b.append_data(&mut dir_header(0o755), format!("{dir}/"), std::io::empty())?;
            }
            at += i + 1;
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
            Entry::Dir { path, mode } => {
                if dirs.insert(path.clone()) {
                    b.append_data(&mut dir_header(*mode), format!("{path}/"), std::io::empty())?;
                }
            }
        }
    }
    Ok(b.into_inner()?)
}

/// How an image starts: its entrypoint, or only a default command (which a pod's `args`
/// replace, as with the usual busybox images), or both.
#[derive(Clone, Copy)]
struct Start<'a> {
    entrypoint: &'a [&'a str],
    cmd: &'a [&'a str],
}

impl<'a> Start<'a> {
    const fn entrypoint(e: &'a [&'a str]) -> Self {
        Start {
            entrypoint: e,
            cmd: &[],
        }
    }

    const fn cmd(c: &'a [&'a str]) -> Self {
        Start {
            entrypoint: &[],
            cmd: c,
        }
    }
}

/// Writes an OCI image archive named `name` (e.g. `registry.k8s.io/pause:3.10`) whose one layer
/// holds `entries`; returns its SHA-256 (hex).
fn archive(out: &Path, name: &str, entries: &[Entry], start: Start<'_>) -> anyhow::Result<String> {
    let layer = layer(entries)?;
    let layer_digest = digest(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": (!start.entrypoint.is_empty()).then_some(start.entrypoint),
            "Cmd": (!start.cmd.is_empty()).then_some(start.cmd),
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"],
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

/// Debian's static busybox with `applets` linked in `bin/`.
fn busybox_entries(applets: &[&str]) -> anyhow::Result<Vec<Entry>> {
    let mut entries = vec![Entry::file(
        "bin/busybox",
        std::fs::read("/usr/bin/busybox").context("/usr/bin/busybox")?,
        0o755,
    )];
    for a in applets {
        entries.push(Entry::link(&format!("bin/{a}"), "busybox"));
    }
    Ok(entries)
}

/// A user's image for trying `veil mini image load`: Debian's busybox under the name `name`
/// (the archive at `out`); returns its SHA-256 (hex).
pub fn busybox_as(out: &Path, name: &str) -> anyhow::Result<String> {
    archive(out, name, &busybox_entries(APPLETS)?, Start::cmd(&["sh"]))
}

/// Like [`busybox_as`], with a file `path` (relative) holding `content` added: another image
/// (another layer, another manifest digest), as a modified workload would be.
pub fn busybox_with(out: &Path, name: &str, path: &str, content: &[u8]) -> anyhow::Result<String> {
    let mut entries = busybox_entries(APPLETS)?;
    entries.push(Entry::file(path, content.to_vec(), 0o644));
    archive(out, name, &entries, Start::cmd(&["sh"]))
}

/// Builds the cluster's images into `dir` from the components in `bin` (and Debian's
/// busybox); returns each archive's path and SHA-256 (hex).
pub fn build(dir: &Path, bin: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    let pause = dir.join("pause.tar");
    let h = archive(
        &pause,
        PAUSE,
        &[Entry::file("pause", read(&bin.join("pause"))?, 0o755)],
        Start::entrypoint(&["/pause"]),
    )?;
    out.push((pause, h));
    let coredns = dir.join("coredns.tar");
    let h = archive(
        &coredns,
        COREDNS,
        &[Entry::file("coredns", read(&bin.join("coredns"))?, 0o755)],
        Start::entrypoint(&["/coredns"]),
    )?;
    out.push((coredns, h));
    let busybox = dir.join("busybox.tar");
    let h = busybox_as(&busybox, BUSYBOX)?;
    out.push((busybox, h));
    Ok(out)
}

fn read(p: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("{}", p.display()))
}

/// Dynamically linked programs of this machine with the shared libraries they load (as `ldd`
/// resolves them), each once, at the same paths.
fn host_programs(paths: &[&str]) -> anyhow::Result<Vec<Entry>> {
    let mut files = std::collections::BTreeSet::new();
    for path in paths {
        files.extend(host_program(path)?);
    }
    let mut entries = Vec::new();
    for f in files {
        // Libraries by their real names under the path the loader asks for.
        let body = read(&std::fs::canonicalize(&f).with_context(|| f.clone())?)?;
        entries.push(Entry::file(f.trim_start_matches('/'), body, 0o755));
    }
    Ok(entries)
}

/// A program and the shared libraries it loads.
fn host_program(path: &str) -> anyhow::Result<Vec<String>> {
    if !Path::new(path).exists() {
        let package = HOST_TOOLS
            .iter()
            .find(|(p, _)| *p == path)
            .map_or("its package", |(_, pkg)| *pkg);
        anyhow::bail!("{path} not found on this machine: install {package}");
    }
    let out = std::process::Command::new("ldd")
        .arg(path)
        .output()
        .context("cannot run ldd")?;
    anyhow::ensure!(
        out.status.success(),
        "ldd {path}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let mut files = vec![path.to_string()];
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
        let lib = line
            .split_once("=>")
            .map_or(line, |(_, r)| r)
            .split_whitespace()
            .next()
            .unwrap_or("");
        if lib.starts_with('/') {
            files.push(lib.to_string());
        }
    }
    Ok(files)
}

/// Every applet Debian's static busybox has.
fn all_applets() -> anyhow::Result<Vec<String>> {
    let out = std::process::Command::new("/usr/bin/busybox")
        .arg("--list")
        .output()
        .context("cannot run busybox")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        // Its list names itself: a link `busybox -> busybox` would replace the program.
        .filter(|a| !a.is_empty() && a != "busybox")
        .collect())
}

/// The programs of this machine the conformance images carry (the upstream images have them
/// from their distributions), with the Debian package each comes from.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/curl", "curl"),
    ("/usr/bin/bash", "bash"),
    ("/usr/bin/nc", "netcat-openbsd"),
    ("/usr/bin/dig", "bind9-dnsutils"),
    ("/usr/bin/getent", "libc-bin"),
];

fn host_tools() -> Vec<&'static str> {
    HOST_TOOLS.iter().map(|(p, _)| *p).collect()
}

/// The base every conformance image shares: busybox with all its applets, `/tmp`, and the
/// users and groups the suite expects (root, nobody, and agnhost's user-defined-in-image).
/// With `busybox_sh`, busybox's shell is `/bin/sh`; without, `/bin/sh` links to bash, which the
/// image must carry (Debian's busybox shell runs its own applets before `PATH`, so `nc` in a
/// script would be busybox's, not OpenBSD's, and it drops environment variables whose names are
/// not identifiers).
fn conformance_base(busybox_sh: bool) -> anyhow::Result<Vec<Entry>> {
    let applets = all_applets()?;
    let applets: Vec<&str> = applets
        .iter()
        .map(String::as_str)
        .filter(|a| busybox_sh || !matches!(*a, "sh" | "ash" | "bash"))
        .collect();
    let mut e = busybox_entries(&applets)?;
    if !busybox_sh {
        e.push(Entry::link("bin/sh", "../usr/bin/bash"));
    }
    e.push(Entry::Dir {
        path: "tmp".into(),
        mode: 0o1777,
    });
    e.push(Entry::file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
          user-defined-in-image:x:1000:1000::/home/user-defined-in-image:/bin/sh\n"
            .to_vec(),
        0o644,
    ));
    e.push(Entry::file(
        "etc/group",
        b"root:x:0:\nnogroup:x:65534:\nuser-defined-in-image:x:1000:\n\
          group-defined-in-image:x:50000:user-defined-in-image\n"
            .to_vec(),
        0o644,
    ));
    Ok(e)
}

/// The images the upstream Kubernetes conformance suite (e2e.test of the same version) starts,
/// under the names it asks for, built into `dir`; returns each archive's path.
///
/// agnhost is the upstream test program built from the Kubernetes source (`agnhost_dir` holds it
/// and the porter's certificate, from `components/conformance/build.sh`) on busybox, with this
/// machine's curl, bash, OpenBSD netcat, dig and getent ([`HOST_TOOLS`]); jessie-dnsutils is
/// the same tools on busybox; busybox is Debian's, with this machine's bash as `/bin/sh`. The nginx and httpd images are **stand-ins**:
/// busybox's HTTP server on port 80 with the page those images serve, enough for the tests
/// that only need a web server under those names. The sample API server is built from its
/// source at the cluster's version; etcd is the components'. The suite's other images are not
/// built: tests that need them fail at image pull, and say so.
pub fn conformance(
    dir: &Path,
    components: &Path,
    agnhost_dir: &Path,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    let mut put = |file: &str, name: &str, entries: &[Entry], start: Start<'_>| {
        let p = dir.join(file);
        archive(&p, name, entries, start)?;
        out.push(p);
        anyhow::Ok(())
    };
    let pause = [Entry::file(
        "pause",
        read(&components.join("pause"))?,
        0o755,
    )];
    put(
        "pause-3.10.1.tar",
        "registry.k8s.io/pause:3.10.1",
        &pause,
        Start::entrypoint(&["/pause"]),
    )?;
    let mut agnhost = conformance_base(false)?;
    agnhost.push(Entry::file(
        "agnhost",
        read(&agnhost_dir.join("agnhost"))?,
        0o755,
    ));
    agnhost.push(Entry::link("agnhost-2", "agnhost"));
    for f in ["localhost.crt", "localhost.key"] {
        agnhost.push(Entry::file(f, read(&agnhost_dir.join(f))?, 0o644));
    }
    agnhost.push(Entry::Dir {
        path: "uploads".into(),
        mode: 0o755,
    });
    agnhost.extend(host_programs(&host_tools())?);
    put(
        "agnhost-2.56.tar",
        "registry.k8s.io/e2e-test-images/agnhost:2.56",
        &agnhost,
        Start {
            entrypoint: &["/agnhost"],
            cmd: &["pause"],
        },
    )?;
    // kubectl's update demo: agnhost serving a picture and its data.json, as upstream.
    for demo in ["nautilus", "kitten"] {
        let mut e = Vec::new();
        let pages = agnhost_dir.join(demo);
        let mut names: Vec<String> = std::fs::read_dir(&pages)
            .with_context(|| format!("{}", pages.display()))?
            .filter_map(|f| f.ok().map(|f| f.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        for name in &names {
            e.push(Entry::file(name, read(&pages.join(name))?, 0o644));
        }
        let mut image = conformance_base(false)?;
        image.extend(host_programs(&["/usr/bin/bash"])?);
        image.push(Entry::file(
            "agnhost",
            read(&agnhost_dir.join("agnhost"))?,
            0o755,
        ));
        image.extend(e);
        put(
            &format!("{demo}-1.7.tar"),
            &format!("registry.k8s.io/e2e-test-images/{demo}:1.7"),
            &image,
            Start {
                entrypoint: &["/agnhost"],
                cmd: &["test-webserver"],
            },
        )?;
    }
    // The aggregator test's API server, built from k8s.io/sample-apiserver at the cluster's
    // version, and the etcd beside it: the components' etcd (a stand-in: 3.6.16, not 3.6.4).
    put(
        "sample-apiserver-1.29.2.tar",
        "registry.k8s.io/e2e-test-images/sample-apiserver:1.29.2",
        &[Entry::file(
            "sample-apiserver",
            read(&agnhost_dir.join("sample-apiserver"))?,
            0o755,
        )],
        Start::entrypoint(&["/sample-apiserver"]),
    )?;
    let mut etcd = conformance_base(true)?;
    etcd.push(Entry::file(
        "usr/local/bin/etcd",
        read(&components.join("etcd"))?,
        0o755,
    ));
    put(
        "etcd-3.6.4-0.tar",
        "registry.k8s.io/etcd:3.6.4-0",
        &etcd,
        Start::cmd(&["/usr/local/bin/etcd"]),
    )?;
    // A setuid-root program that prints its effective user: no privilege escalation means
    // it prints the pod's.
    let mut nnp = conformance_base(true)?;
    nnp.push(Entry::file(
        "usr/local/bin/nnp",
        read(&agnhost_dir.join("nnp"))?,
        0o4755,
    ));
    put(
        "nonewprivs-1.3.tar",
        "registry.k8s.io/e2e-test-images/nonewprivs:1.3",
        &nnp,
        Start::cmd(&["nnp"]),
    )?;
    // The DNS tests' second querier: upstream a Debian with dig; here the same tools.
    let mut dnsutils = conformance_base(false)?;
    dnsutils.extend(host_programs(&host_tools())?);
    put(
        "jessie-dnsutils-1.7.tar",
        "registry.k8s.io/e2e-test-images/jessie-dnsutils:1.7",
        &dnsutils,
        Start::cmd(&["sh"]),
    )?;
    // Their shell is bash: Debian's busybox shell drops environment variables whose names are
    // not identifiers (`data-1`), which Kubernetes passes and the suite checks `sh -c env` for.
    let with_bash = || -> anyhow::Result<Vec<Entry>> {
        let mut e = conformance_base(false)?;
        e.extend(host_programs(&["/usr/bin/bash"])?);
        Ok(e)
    };
    for tag in ["1.37.0-1", "1.36.1-1"] {
        put(
            &format!("busybox-{tag}.tar"),
            &format!("registry.k8s.io/e2e-test-images/busybox:{tag}"),
            &with_bash()?,
            Start::cmd(&["sh"]),
        )?;
    }
    let web = |root: &str, page: &str| -> anyhow::Result<Vec<Entry>> {
        let mut e = with_bash()?;
        e.push(Entry::file(
            &format!("{root}/index.html"),
            page.as_bytes().to_vec(),
            0o644,
        ));
        Ok(e)
    };
    let nginx = web(
        "usr/share/nginx/html",
        "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head><body><h1>Welcome to nginx!</h1></body></html>\n",
    )?;
    for tag in ["1.14-4", "1.15-4"] {
        put(
            &format!("nginx-{tag}.tar"),
            &format!("registry.k8s.io/e2e-test-images/nginx:{tag}"),
            &nginx,
            Start::cmd(&["httpd", "-f", "-p", "80", "-h", "/usr/share/nginx/html"]),
        )?;
    }
    let httpd = web(
        "usr/local/apache2/htdocs",
        "<html><body><h1>It works!</h1></body></html>\n",
    )?;
    for tag in ["2.4.38-4", "2.4.39-4"] {
        put(
            &format!("httpd-{tag}.tar"),
            &format!("registry.k8s.io/e2e-test-images/httpd:{tag}"),
            &httpd,
            Start::cmd(&["httpd", "-f", "-p", "80", "-h", "/usr/local/apache2/htdocs"]),
        )?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conformance_base_has_a_shell_and_every_link_reaches_a_file() {
        let entries = conformance_base(true).unwrap();
        let files: std::collections::BTreeSet<&str> = entries
            .iter()
            .filter_map(|e| match e {
                Entry::File { path, .. } => Some(path.as_str()),
                _ => None,
            })
            .collect();
        let mut links = 0;
        for e in &entries {
            if let Entry::Link { path, target } = e {
                let dir = path.rsplit_once('/').map_or("", |(d, _)| d);
                let resolved = format!("{dir}/{target}");
                assert!(files.contains(resolved.as_str()), "{path} -> {target}");
                links += 1;
            }
        }
        assert!(links > 100, "{links} applets");
        assert!(files.contains("bin/busybox") && files.contains("etc/passwd"));
        assert!(entries.iter().any(|e| e.path() == "bin/sh"));
        layer(&entries).unwrap();
    }

    #[test]
    fn host_programs_bring_their_libraries_once_and_a_missing_one_names_its_package() {
        let e = host_programs(&["/usr/bin/curl", "/usr/bin/bash"]).unwrap();
        let paths: Vec<&str> = e.iter().map(Entry::path).collect();
        assert!(paths.contains(&"usr/bin/curl") && paths.contains(&"usr/bin/bash"));
        assert!(paths.iter().any(|p| p.contains("libc.so")), "{paths:?}");
        layer(&e).unwrap();
        let e = host_program("/usr/bin/no-such-tool").unwrap_err();
        assert!(e.to_string().contains("not found on this machine"), "{e}");
    }

    #[test]
    fn images_with_the_host_tools_run_scripts_in_bash() {
        let mut e = conformance_base(false).unwrap();
        e.extend(host_programs(&["/usr/bin/bash"]).unwrap());
        let sh = e.iter().find(|e| e.path() == "bin/sh").unwrap();
        assert!(matches!(sh, Entry::Link { target, .. } if target == "../usr/bin/bash"));
        assert!(e.iter().any(|e| e.path() == "usr/bin/bash"));
        assert!(!e.iter().any(|e| e.path() == "bin/ash"));
        layer(&e).unwrap();
    }

    #[test]
    fn a_path_twice_in_a_layer_is_refused() {
        let e = layer(&[
            Entry::file("bin/busybox", b"x".to_vec(), 0o755),
            Entry::link("bin/busybox", "busybox"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("`bin/busybox` twice"), "{e}");
    }

    #[test]
    fn archives_are_reproducible_and_name_their_image() {
        let d = tempfile::tempdir().unwrap();
        let entries = [Entry::file("hello", b"hi".to_vec(), 0o755)];
        let a = archive(
            &d.path().join("a.tar"),
            "x/y:1",
            &entries,
            Start::entrypoint(&["/hello"]),
        )
        .unwrap();
        let b = archive(
            &d.path().join("b.tar"),
            "x/y:1",
            &entries,
            Start::entrypoint(&["/hello"]),
        )
        .unwrap();
        assert_eq!(a, b);
        let c = archive(
            &d.path().join("c.tar"),
            "x/y:2",
            &entries,
            Start::entrypoint(&["/hello"]),
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
