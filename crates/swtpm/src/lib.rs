//! Software TPMs for local clusters (`veil mini`) and tests.
//!
//! [`LocalCa`] is a TPM "manufacturer" that lives in the owner's workspace: it issues EK and
//! platform certificates when a TPM is manufactured (`swtpm_setup --create-ek-cert`). Its root
//! proves nothing about hardware — anything it endorses is a local, insecure node, accepted
//! only by reference values that say so. [`SwTpm`] runs one `swtpm` daemon on a Unix socket
//! and stops it when dropped.

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
        Ok(())
    }
}

/// A running swtpm, stopped on drop.
#[derive(Debug)]
pub struct SwTpm {
    socket: PathBuf,
    ctrl: PathBuf,
    stopped: bool,
}

impl SwTpm {
    /// Starts swtpm on the TPM state in `state` (listening on `state/tpm.sock`).
    pub fn start(state: &Path) -> Result<Self, SwtpmError> {
        let state = std::fs::canonicalize(state).map_err(io(state))?;
        let socket = state.join("tpm.sock");
        let ctrl = state.join("tpm.sock.ctrl");
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
                .arg(format!("type=unixio,path={}", socket.display()))
                .arg("--ctrl")
                .arg(format!("type=unixio,path={}", ctrl.display()))
                .arg("--tpmstate")
                .arg(format!("dir={}", state.display()))
                .arg("--pid")
                .arg(format!("file={}", state.join("swtpm.pid").display())),
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists() {
            if Instant::now() > deadline {
                return Err(SwtpmError::NotListening(socket.display().to_string()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Self {
            socket,
            ctrl,
            stopped: false,
        })
    }

    /// The TCTI configuration string (for tss-esapi or `TPM2TOOLS_TCTI`).
    pub fn tcti(&self) -> String {
        format!("swtpm:path={}", self.socket.display())
    }

    /// Stops the daemon (TPM2_Shutdown through the control channel, then exit).
    pub fn stop(&mut self) -> Result<(), SwtpmError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        run(
            "swtpm_ioctl",
            Command::new("swtpm_ioctl")
                .arg("--unix")
                .arg(&self.ctrl)
                .arg("-s"),
        )?;
        Ok(())
    }
}

impl Drop for SwTpm {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
