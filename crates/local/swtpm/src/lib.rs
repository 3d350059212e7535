//! Software TPMs for local clusters (`veil mini`) and tests.
//!
//! [`LocalCa`] is a TPM "manufacturer" that lives in the owner's workspace: it issues EK and
//! platform certificates when a TPM is manufactured (`swtpm_setup --create-ek-cert`). Its root
//! proves nothing about hardware — anything it endorses is a local, insecure node, accepted
//! only by reference values that say so. [`SwTpm`] runs one `swtpm` daemon on loopback TCP and
//! stops it when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A software-TPM operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SwtpmError {
    /// A tool could not run or failed.
    #[error("{tool}: {detail}")]
    Tool {
        /// The program.
        tool: &'static str,
        /// Its error output, or why it could not start.
        detail: String,
    },
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The daemon did not come up.
    #[error("swtpm at {0} did not start listening")]
    NotListening(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SwtpmError + '_ {
    move |source| SwtpmError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn run(tool: &'static str, cmd: &mut Command) -> Result<String, SwtpmError> {
    let out = cmd.output().map_err(|e| SwtpmError::Tool {
        tool,
        detail: format!("cannot run ({e}); is it installed? (scripts/setup.sh installs swtpm)"),
    })?;
    if !out.status.success() {
        return Err(SwtpmError::Tool {
            tool,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A local TPM manufacturer CA kept in a directory.
#[derive(Debug, Clone)]
pub struct LocalCa {
    dir: PathBuf,
}

impl LocalCa {
    /// The CA in `dir` (created, with its keys, on first use).
    pub fn at(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }

    /// The CA's root certificate (PEM), once a TPM has been manufactured.
    pub fn root_pem(&self) -> Result<Vec<u8>, SwtpmError> {
        let p = self.dir.join("swtpm-localca-rootca-cert.pem");
        std::fs::read(&p).map_err(io(&p))
    }

    /// The CA's issuing (intermediate) certificate (PEM).
    pub fn issuer_pem(&self) -> Result<Vec<u8>, SwtpmError> {
        let p = self.dir.join("issuercert.pem");
        std::fs::read(&p).map_err(io(&p))
    }

    /// Manufactures a TPM in `state`: SHA-1 and SHA-256 PCR banks, EK (RSA and ECC) and
    /// platform certificates issued by this CA, NV locked.
    pub fn manufacture(&self, state: &Path) -> Result<(), SwtpmError> {
        std::fs::create_dir_all(&self.dir).map_err(io(&self.dir))?;
        std::fs::create_dir_all(state).map_err(io(state))?;
        let dir = std::fs::canonicalize(&self.dir).map_err(io(&self.dir))?;
        let state = std::fs::canonicalize(state).map_err(io(state))?;
        let ca_conf = dir.join("swtpm-localca.conf");
        let d = dir.display();
        let conf = format!(
            "statedir = {d}\nsigningkey = {d}/signkey.pem\nissuercert = {d}/issuercert.pem\ncertserial = {d}/certserial\n"
        );
        std::fs::write(&ca_conf, conf).map_err(io(&ca_conf))?;
        let options = dir.join("swtpm-localca.options");
        std::fs::write(
            &options,
            "--platform-manufacturer Veil\n--platform-version 1.0\n--platform-model veil-mini-insecure-local\n",
        )
        .map_err(io(&options))?;
        let setup_conf = dir.join("swtpm_setup.conf");
        std::fs::write(
            &setup_conf,
            format!(
                "create_certs_tool = /usr/bin/swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\n",
                ca_conf.display(),
                options.display()
            ),
        )
        .map_err(io(&setup_conf))?;
        run(
            "swtpm_setup",
            Command::new("swtpm_setup")
                .args([
                    "--tpm2",
                    "--create-ek-cert",
                    "--create-platform-cert",
                    "--lock-nvram",
                ])
                .args(["--overwrite", "--pcr-banks", "sha1,sha256", "--tpmstate"])
                .arg(&state)
                .arg("--config")
                .arg(&setup_conf),
        )?;
        // swtpm_localca writes its private keys 0640: the CA's keys are the owner's secrets
        // like any other (0600), and the CA directory is the owner's alone.
        use std::os::unix::fs::PermissionsExt;
        let private = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).map_err(io(p))
        };
        private(&dir, 0o700)?;
        for entry in std::fs::read_dir(&dir).map_err(io(&dir))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.contains("key") && !name.ends_with(".pub") {
                private(&entry.path(), 0o600)?;
            }
        }
        Ok(())
    }

    /// The CA's private key files (for checks of their permissions).
    pub fn private_key_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.contains("key") && !n.ends_with(".pub"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A running swtpm, stopped on drop. It listens on loopback TCP (the transport every TSS
/// speaks, tss-esapi included): the command port and the control port right above it.
#[derive(Debug)]
pub struct SwTpm {
    port: u16,
    stopped: bool,
}

/// Two consecutive free loopback ports (command, control), as far as can be known.
fn free_port_pair() -> Option<u16> {
    for _ in 0..50 {
        let a = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
        let port = a.local_addr().ok()?.port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return Some(port);
        }
    }
    None
}

impl SwTpm {
    /// Starts swtpm on the TPM state in `state`, on free loopback ports.
    pub fn start(state: &Path) -> Result<Self, SwtpmError> {
        let mut last = None;
        for _ in 0..5 {
            let port = free_port_pair().ok_or_else(|| SwtpmError::Tool {
                tool: "swtpm",
                detail: "no free pair of loopback ports".into(),
            })?;
            match Self::start_on(state, port) {
                Ok(t) => return Ok(t),
                // Another process may have taken the port in between: try another pair.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(SwtpmError::NotListening("127.0.0.1".into())))
    }

    /// Starts swtpm on the TPM state in `state`, on `port` (commands) and `port + 1` (control).
    pub fn start_on(state: &Path, port: u16) -> Result<Self, SwtpmError> {
        let state = std::fs::canonicalize(state).map_err(io(state))?;
        run(
            "swtpm",
            Command::new("swtpm")
                .args([
                    "socket",
                    "--tpm2",
                    "--daemon",
                    "--flags",
                    "not-need-init,startup-clear",
                ])
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--pid")
                .arg(format!("file={}", state.join("swtpm.pid").display())),
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(SwtpmError::NotListening(format!("127.0.0.1:{port}")));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Self {
            port,
            stopped: false,
        })
    }

    /// The TCTI configuration string (for tss-esapi or `TPM2TOOLS_TCTI`).
    pub fn tcti(&self) -> String {
        tcti(self.port)
    }

    /// The command port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the daemon (TPM2_Shutdown through the control channel, then exit).
    pub fn stop(&mut self) -> Result<(), SwtpmError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        run(
            "swtpm_ioctl",
            Command::new("swtpm_ioctl").args([
                "--tcp",
                &format!("127.0.0.1:{}", self.port + 1),
                "-s",
            ]),
        )?;
        Ok(())
    }
}

/// The TCTI of the swtpm listening on loopback `port` (in the caller's network namespace).
pub fn tcti(port: u16) -> String {
    format!("swtpm:host=127.0.0.1,port={port}")
}

/// Stops the swtpm listening on `port` (control channel on `port + 1`), e.g. one started by
/// another process.
pub fn stop_port(port: u16) -> Result<(), SwtpmError> {
    run(
        "swtpm_ioctl",
        Command::new("swtpm_ioctl").args(["--tcp", &format!("127.0.0.1:{}", port + 1), "-s"]),
    )
    .map(|_| ())
}

impl SwTpm {
    /// Leaves the daemon running after this handle is dropped (it is stopped later with
    /// [`stop_port`]).
    pub fn detach(mut self) -> u16 {
        self.stopped = true;
        self.port
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
