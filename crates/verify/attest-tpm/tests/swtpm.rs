//! Real TPM 2.0 quotes from a software TPM (swtpm, driven with tpm2-tools): RSASSA, RSAPSS and
//! ECDSA attestation keys, PCR banks SHA-1 and SHA-256, an event log replayed against the
//! quoted PCRs, and AK certificates issued by a local CA. These tests need `swtpm` and
//! `tpm2-tools` (installed by scripts/setup.sh) and fail without them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_attest_core::UnixTime;
use veil_attest_core::x509::{CertError, Certificate};
use veil_attest_tpm::eventlog::EV_EVENT_TAG;
use veil_attest_tpm::*;

/// A running swtpm (veil-swtpm) and a scratch directory for tpm2-tools files.
struct SwTpm {
    dir: tempfile::TempDir,
    tpm: veil_swtpm::SwTpm,
}

impl SwTpm {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tpm = veil_swtpm::SwTpm::start(dir.path())
            .expect("swtpm must be installed (scripts/setup.sh)");
        Self { dir, tpm }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn tool(&self, args: &[&str]) {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.tpm.tcti())
            .output()
            .expect("tpm2-tools must be installed (scripts/setup.sh installs them)");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // No resource manager: flush transient objects and sessions after every command.
        for t in ["-t", "-s", "-l"] {
            let _ = Command::new("tpm2_flushcontext")
                .arg(t)
                .env("TPM2TOOLS_TCTI", self.tpm.tcti())
                .output();
        }
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.path(name)).unwrap()
    }

    /// Creates an AK under the endorsement hierarchy with the given `tpm2_create -G` spec.
    fn create_ak(&self, alg: &str) {
        self.tool(&[
            "tpm2_createprimary",
            "-Q",
            "-C",
            "e",
            "-g",
            "sha256",
            "-G",
            "rsa",
            "-c",
            "primary.ctx",
        ]);
        self.tool(&[
            "tpm2_create",
            "-Q",
            "-C",
            "primary.ctx",
            "-G",
            alg,
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign",
            "-u",
            "ak.pub",
            "-r",
            "ak.priv",
        ]);
        self.tool(&[
            "tpm2_load",
            "-Q",
            "-C",
            "primary.ctx",
            "-u",
            "ak.pub",
            "-r",
            "ak.priv",
            "-c",
            "ak.ctx",
        ]);
        self.tool(&[
            "tpm2_readpublic",
            "-Q",
            "-c",
            "ak.ctx",
            "-f",
            "pem",
            "-o",
            "ak.pem",
        ]);
    }

    /// Extends every event of `log` into the TPM, as firmware would.
    fn play(&self, log: &EventLog) {
        for e in &log.events {
            let spec: Vec<String> = e
                .digests
                .iter()
                .map(|(b, d)| format!("{}={}", b.name(), hex::encode(d)))
                .collect();
            self.tool(&["tpm2_pcrextend", &format!("{}:{}", e.pcr, spec.join(","))]);
        }
    }

    /// Quotes `pcrs` with the AK's signing scheme (`rsassa`, `rsapss` or `ecdsa`).
    fn quote_with(&self, pcrs: &str, nonce: &str, scheme: &str) {
        self.tool(&[
            "tpm2_quote",
            "-Q",
            "-c",
            "ak.ctx",
            "-l",
            pcrs,
            "-q",
            nonce,
            "-m",
            "quote.msg",
            "-s",
            "quote.sig",
            "-g",
            "sha256",
            "--scheme",
            scheme,
        ]);
    }

    fn quote(&self, pcrs: &str, nonce: &str) {
        self.quote_with(pcrs, nonce, "rsassa");
    }
}

fn launch_log() -> EventLog {
    let mut log = EventLog::new(vec![HashAlg::Sha1, HashAlg::Sha256]);
    log.measure(8, EV_EVENT_TAG, b"veil-agent sha256:0123");
    log.measure(8, EV_EVENT_TAG, b"veil-agent config");
    log.measure(9, EV_EVENT_TAG, b"node image description");
    log
}

const NONCE: &str = "a1b2c3d4e5f60718";
const NOW: UnixTime = UnixTime(1_767_225_600);

fn verify_with(
    tpm: &SwTpm,
    log: &EventLog,
    endorsement: Option<&AkEndorsement>,
    nonce: &str,
) -> Result<TpmClaims, TpmError> {
    let public = Public::parse(&tpm.read("ak.pub")).unwrap();
    let attest = tpm.read("quote.msg");
    let sig = QuoteSignature::from_bytes(&tpm.read("quote.sig"), &public.key).unwrap();
    let quote = Quote::parse(&attest).unwrap();
    let pcrs = log.expected_pcrs(&quote.pcr_select);
    let ev = QuoteEvidence {
        attest: &attest,
        signature: &sig,
        ak: &public.key,
        ak_qualified_name: None,
        pcrs: Some(&pcrs),
        event_log: Some(log),
    };
    let policy = TpmPolicy {
        nonce: Some(HexValue(hex::decode(nonce).unwrap())),
        ..TpmPolicy::default()
    };
    verify_quote(&ev, endorsement, &policy, NOW)
}

#[test]
fn rsa_ak_quote_with_event_log() {
    let tpm = SwTpm::start();
    tpm.create_ak("rsa2048:rsassa-sha256:null");
    let log = launch_log();
    tpm.play(&log);
    tpm.quote("sha256:0,8,9+sha1:8", NONCE);
    let c = verify_with(&tpm, &log, None, NONCE).unwrap();
    assert_eq!(c.scheme, "RSASSA-PKCS1-v1_5/SHA-256");
    assert_eq!(c.pcrs[&HashAlg::Sha256].len(), 3);
    assert_eq!(c.pcrs[&HashAlg::Sha1].len(), 1);
    assert!(c.events.as_ref().unwrap().iter().all(|e| e.quoted));
    // Public::parse agrees with the PEM tpm2-tools exports.
    let pem = veil_attest_core::x509::public_key_from_spki(&tpm.read("ak.pem")).unwrap();
    assert_eq!(pem, Public::parse(&tpm.read("ak.pub")).unwrap().key);

    // A wrong nonce, and an event log that does not match what was measured.
    assert!(matches!(
        verify_with(&tpm, &log, None, "00"),
        Err(TpmError::Nonce { .. })
    ));
    let mut forged = launch_log();
    forged.events[1].data = b"another config".to_vec();
    forged.events[1].digests = forged
        .banks
        .iter()
        .map(|b| (*b, b.hash(&[b"another config"])))
        .collect();
    let e = verify_with(&tpm, &forged, None, NONCE).unwrap_err();
    assert!(matches!(e, TpmError::PcrDigest { .. }), "{e}");
    // With the PCR values read from the TPM, the forged log is named as the culprit.
    let public = Public::parse(&tpm.read("ak.pub")).unwrap();
    let attest = tpm.read("quote.msg");
    let sig = QuoteSignature::from_bytes(&tpm.read("quote.sig"), &public.key).unwrap();
    let true_pcrs = log.expected_pcrs(&Quote::parse(&attest).unwrap().pcr_select);
    let ev = QuoteEvidence {
        attest: &attest,
        signature: &sig,
        ak: &public.key,
        ak_qualified_name: None,
        pcrs: Some(&true_pcrs),
        event_log: Some(&forged),
    };
    let e = verify_quote(&ev, None, &TpmPolicy::default(), NOW).unwrap_err();
    assert!(
        matches!(
            e,
            TpmError::EventLog {
                bank: _,
                index: 8,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn ecdsa_and_rsapss_aks() {
    for (alg, tool_scheme, scheme) in [
        ("ecc256:ecdsa-sha256:null", "ecdsa", "ECDSA/SHA-256"),
        ("rsa2048:rsapss-sha256:null", "rsapss", "RSASSA-PSS/SHA-256"),
    ] {
        let tpm = SwTpm::start();
        tpm.create_ak(alg);
        let log = launch_log();
        tpm.play(&log);
        tpm.quote_with("sha256:8,9", NONCE, tool_scheme);
        let c = verify_with(&tpm, &log, None, NONCE).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(c.scheme, scheme);
        // A flipped bit in the signed attestation is refused.
        let mut attest = tpm.read("quote.msg");
        let n = attest.len();
        attest[n - 3] ^= 1;
        std::fs::write(tpm.path("quote.msg"), &attest).unwrap();
        assert!(verify_with(&tpm, &log, None, NONCE).is_err(), "{alg}");
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_ca(dir: &Path, name: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-subj",
            &format!("/CN={name}"),
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    );
}

fn issue(dir: &Path, ca: &str, pubkey: &str, out: &str) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "csr.key",
            "-subj",
            "/CN=Veil AK",
            "-out",
            "csr.pem",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "csr.pem",
            "-force_pubkey",
            pubkey,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-days",
            "7",
            "-out",
            out,
        ],
    );
}

#[test]
fn ak_certificate_chain_to_configured_root() {
    let tpm = SwTpm::start();
    tpm.create_ak("rsa2048:rsassa-sha256:null");
    let log = launch_log();
    tpm.play(&log);
    tpm.quote("sha256:8,9", NONCE);
    let dir = tpm.dir.path();
    make_ca(dir, "manufacturer");
    make_ca(dir, "other");
    issue(dir, "manufacturer", "ak.pem", "akcert.pem");
    let now = UnixTime(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64,
    );
    let cert = |f: &str| Certificate::parse_many(&tpm.read(f), f).unwrap().remove(0);
    let endorsement = AkEndorsement {
        ak_cert: cert("akcert.pem"),
        chain: vec![],
        roots: vec![cert("manufacturer.pem")],
    };
    let public = Public::parse(&tpm.read("ak.pub")).unwrap();
    let attest = tpm.read("quote.msg");
    let sig = QuoteSignature::from_bytes(&tpm.read("quote.sig"), &public.key).unwrap();
    let pcrs = log.expected_pcrs(&Quote::parse(&attest).unwrap().pcr_select);
    let ev = QuoteEvidence {
        attest: &attest,
        signature: &sig,
        ak: &public.key,
        ak_qualified_name: None,
        pcrs: Some(&pcrs),
        event_log: Some(&log),
    };
    let policy = TpmPolicy {
        require_ak_endorsement: true,
        ..TpmPolicy::default()
    };
    let c = verify_quote(&ev, Some(&endorsement), &policy, now).unwrap();
    assert!(
        matches!(c.ak_trust, AkTrust::Certificate { ref root, .. } if root == "CN=manufacturer")
    );

    // Another root: refused, naming the chain's end.
    let wrong = AkEndorsement {
        roots: vec![cert("other.pem")],
        ..endorsement.clone()
    };
    let e = verify_quote(&ev, Some(&wrong), &policy, now).unwrap_err();
    assert!(
        matches!(e, TpmError::AkChain(CertError::UntrustedRoot { .. })),
        "{e}"
    );
    // A certificate for another key.
    make_ca(dir, "stray");
    openssl(
        dir,
        &[
            "pkey",
            "-in",
            "stray.key",
            "-pubout",
            "-out",
            "stray.pub.pem",
        ],
    );
    issue(dir, "manufacturer", "stray.pub.pem", "straycert.pem");
    let stray = AkEndorsement {
        ak_cert: cert("straycert.pem"),
        ..endorsement.clone()
    };
    let e = verify_quote(&ev, Some(&stray), &policy, now).unwrap_err();
    assert!(matches!(e, TpmError::AkCertKey { .. }), "{e}");
    // After the certificate's validity.
    let e = verify_quote(
        &ev,
        Some(&endorsement),
        &policy,
        UnixTime(now.0 + 30 * 86400),
    )
    .unwrap_err();
    assert!(
        matches!(e, TpmError::AkChain(CertError::Expired { .. })),
        "{e}"
    );
}

/// tpm2-tools' credential file: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
fn credential_file(c: &veil_attest_tpm::credential::MadeCredential) -> Vec<u8> {
    let mut f = 0xBADC_C0DEu32.to_be_bytes().to_vec();
    f.extend(1u32.to_be_bytes());
    f.extend((c.id_object.len() as u16).to_be_bytes());
    f.extend(&c.id_object);
    f.extend((c.encrypted_secret.len() as u16).to_be_bytes());
    f.extend(&c.encrypted_secret);
    f
}

impl SwTpm {
    /// Runs TPM2_ActivateCredential for the AK under the EK; returns the recovered secret.
    fn activate(&self, credential: &str) -> Result<Vec<u8>, String> {
        let script = format!(
            "set -e; tpm2_startauthsession --policy-session -S s.ctx; tpm2_policysecret -Q -S s.ctx -c e; \
             tpm2_activatecredential -Q -c ak.ctx -C ek.ctx -i {credential} -o secret.out -P session:s.ctx; \
             tpm2_flushcontext s.ctx"
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .current_dir(self.dir.path())
            .env("TPM2TOOLS_TCTI", self.tpm.tcti())
            .output()
            .unwrap();
        for t in ["-t", "-s", "-l"] {
            let _ = Command::new("tpm2_flushcontext")
                .arg(t)
                .env("TPM2TOOLS_TCTI", self.tpm.tcti())
                .output();
        }
        if out.status.success() {
            Ok(self.read("secret.out"))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

#[test]
fn software_make_credential_is_activated_only_by_its_tpm_and_key() {
    use veil_attest_tpm::credential::make_credential;
    let tpm = SwTpm::start();
    tpm.tool(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    tpm.tool(&[
        "tpm2_createak",
        "-C",
        "ek.ctx",
        "-c",
        "ak.ctx",
        "-G",
        "rsa",
        "-g",
        "sha256",
        "-s",
        "rsassa",
        "-u",
        "ak.pub",
        "-n",
        "ak.name",
    ]);
    let ek = Public::parse(&tpm.read("ek.pub")).unwrap();
    let ak = Public::parse(&tpm.read("ak.pub")).unwrap();
    // Veil computes the AK's Name as the TPM does.
    assert_eq!(ak.name, tpm.read("ak.name"));

    let secret = b"join-token-0123456789abcdef01234";
    let made = make_credential(&ek, &ak.name, secret, &[7u8; 32]).unwrap();
    std::fs::write(tpm.path("veil.cred"), credential_file(&made)).unwrap();
    assert_eq!(tpm.activate("veil.cred").unwrap(), secret);

    // For another object Name, the TPM refuses (integrity check fails).
    let mut other = ak.name.clone();
    other[5] ^= 1;
    let made = make_credential(&ek, &other, secret, &[8u8; 32]).unwrap();
    std::fs::write(tpm.path("other.cred"), credential_file(&made)).unwrap();
    assert!(tpm.activate("other.cred").is_err());

    // Wrapped to another TPM's EK: this TPM cannot recover the seed.
    let tpm2 = SwTpm::start();
    tpm2.tool(&["tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub"]);
    let ek2 = Public::parse(&tpm2.read("ek.pub")).unwrap();
    assert_ne!(ek2.key, ek.key);
    let made = make_credential(&ek2, &ak.name, secret, &[9u8; 32]).unwrap();
    std::fs::write(tpm.path("foreign.cred"), credential_file(&made)).unwrap();
    assert!(tpm.activate("foreign.cred").is_err());

    // A signing key is not an EK.
    assert!(make_credential(&ak, &ak.name, secret, &[1u8; 32]).is_err());
}
