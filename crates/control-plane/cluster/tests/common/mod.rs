//! What the cluster tests share: nodes booted on their own manufactured software TPMs, a
//! control plane serving on loopback, sessions, and an attacker's tools (a genuine TPM driven
//! with tpm2-tools).

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use veil_appraisal::owner::{
    APPROVALS_VERSION, Approvals, ApprovedNode, OwnerKey, SignedApprovals, sign_approvals,
};
use veil_attest_core::x509::Certificate;
use veil_attest_tpm::HashAlg;
use veil_attest_tpm::eventlog::EventLog;
use veil_attest_tpm::evidence::{TpmEvidence, batch_digest};
use veil_client::{ClientError, Session};
use veil_cluster::{ControlPlane, Trust};
use veil_keys::{ClusterSecrets, SecretBytes};
use veil_node_attest::{Membership, TpmAppraiser, TpmAttester};
use veil_reference::launch::{Launch, PCR_CLUSTER_ID, QUOTED_PCRS};
use veil_reference::{MeasurementSet, ReferenceValues};
use veil_swtpm::{LocalCa, SwTpm};
use veil_tpm_device::{AkKind, NodeTpm};

use veil_client::clock::now;

/// A node: its attester (TPM connection) drops before its TPM.
pub struct Node {
    pub attester: Arc<TpmAttester>,
    pub _swtpm: SwTpm,
}

/// Manufactures a TPM in `dir` (EK certificate from `ca`), plays `launch` as firmware, makes
/// the AK; with `cluster`, the node has joined that cluster.
pub fn boot(dir: &Path, ca: &LocalCa, launch: &Launch, cluster: Option<&[u8]>) -> Node {
    ca.manufacture(dir).unwrap();
    let swtpm = SwTpm::start(dir).unwrap();
    let mut tpm = NodeTpm::open(&swtpm.tcti()).unwrap();
    for c in &launch.components {
        tpm.extend(c.pcr, &c.sha1.0, &c.sha256.0).unwrap();
    }
    tpm.load_ek().unwrap();
    tpm.create_ak(AkKind::EccP256).unwrap();
    let attester = Arc::new(TpmAttester::new(tpm, launch.event_log()));
    if let Some(id) = cluster {
        attester.join_cluster(id).unwrap();
    }
    Node {
        attester,
        _swtpm: swtpm,
    }
}

/// A control-plane launch and a worker launch of release 1, and reference values that accept
/// exactly those (local roots accepted, as in `veil mini`).
pub fn release_1() -> (Launch, Launch, ReferenceValues) {
    let cp_launch = Launch::measure(b"veil-agent 1", b"role: control-plane", b"image 1");
    let worker_launch = Launch::measure(b"veil-agent 1", b"role: worker", b"image 1");
    let mut set = MeasurementSet::from_launch("release-1", &cp_launch, &["control-plane"]);
    set.roles
        .extend(MeasurementSet::from_launch("release-1", &worker_launch, &["worker"]).roles);
    let refs = ReferenceValues {
        version: 1,
        insecure_local_roots: true,
        tpm_roots: vec![],
        sets: vec![set],
    };
    (cp_launch, worker_launch, refs)
}

/// The CA's root and issuer certificates.
pub fn roots(ca: &LocalCa) -> (Vec<Certificate>, Vec<Certificate>) {
    (
        Certificate::parse_many(&ca.root_pem().unwrap(), "root").unwrap(),
        Certificate::parse_many(&ca.issuer_pem().unwrap(), "issuer").unwrap(),
    )
}

/// The owner: its signing key, the cluster's secrets, and the approval list it keeps.
pub struct Owner {
    pub key: OwnerKey,
    /// The public key (PEM), as nodes' configurations name it.
    pub public: Vec<u8>,
    pub master: [u8; 32],
    pub salt: [u8; 32],
    /// The cluster ID (hex) the secrets derive.
    pub cid: String,
    pub list: Mutex<Approvals>,
}

impl Owner {
    pub fn new(master: [u8; 32], salt: [u8; 32]) -> Self {
        let (sk, pk) = veil_reference::signing::generate_key().unwrap();
        let secrets = ClusterSecrets::new(
            SecretBytes::from_slice("m", &mut master.to_owned()).unwrap(),
            salt,
        );
        let cid = secrets.cluster_id().unwrap().to_string();
        Self {
            key: OwnerKey::from_pem(sk.into_bytes()).unwrap(),
            public: pk.into_bytes(),
            master,
            salt,
            list: Mutex::new(Approvals {
                version: APPROVALS_VERSION,
                cluster_id: cid.clone(),
                serial: 1,
                nodes: vec![],
            }),
            cid,
        }
    }

    pub fn secrets(&self) -> ClusterSecrets {
        ClusterSecrets::new(
            SecretBytes::from_slice("m", &mut self.master.to_owned()).unwrap(),
            self.salt,
        )
    }

    /// Adds `nodes` (role each) to the list, with a higher serial; returns it signed.
    pub fn approve(&self, nodes: &[(&TpmAttester, &str)]) -> SignedApprovals {
        let mut list = self.list.lock().unwrap();
        for (a, role) in nodes {
            list.nodes.push(ApprovedNode {
                ek_sha256: ek_sha256(a),
                role: role.to_string(),
                name: String::new(),
            });
        }
        list.serial += 1;
        sign_approvals(&list, &self.key).unwrap()
    }

    /// The current list, signed.
    pub fn signed(&self) -> SignedApprovals {
        sign_approvals(&self.list.lock().unwrap(), &self.key).unwrap()
    }

    /// Initialises the control plane at `addr` (attested fresh, its TPM checked), approving
    /// it as a control plane.
    pub async fn init(&self, addr: std::net::SocketAddr, cp: &Node, refs: &ReferenceValues) {
        let approvals = self.approve(&[(&cp.attester, "control-plane")]);
        let mut s = session(addr, None, &appraiser(refs, Membership::Fresh))
            .await
            .unwrap();
        let cid = s
            .init(&self.master, &self.salt, &approvals, &self.key)
            .await
            .unwrap();
        assert_eq!(cid, self.cid);
    }

    /// Sends the control plane at `addr` a list approving `nodes` too.
    pub async fn approve_at(
        &self,
        addr: std::net::SocketAddr,
        refs: &ReferenceValues,
        nodes: &[(&TpmAttester, &str)],
    ) {
        let approvals = self.approve(nodes);
        let member = Membership::Member(veil_attest_core::bytes::decode_hex(&self.cid).unwrap());
        session(addr, None, &appraiser(refs, member))
            .await
            .unwrap()
            .approve(&approvals)
            .await
            .unwrap();
    }
}

/// SHA-256 of a node's EK certificate (hex).
pub fn ek_sha256(a: &TpmAttester) -> String {
    let der = a.with_tpm(|t| t.ek_certificate()).unwrap().unwrap();
    hex::encode(Certificate::from_der(&der, "EK").unwrap().fingerprint())
}

/// A control plane on `node`, serving on a loopback port, for the owner whose public key
/// (PEM) is `owner`.
pub async fn serve(
    node: &Node,
    refs: &ReferenceValues,
    ca: &LocalCa,
    owner: &[u8],
) -> (Arc<ControlPlane>, std::net::SocketAddr) {
    let (ek_roots, ek_intermediates) = roots(ca);
    let trust = Trust {
        reference: refs.clone(),
        ek_roots,
        ek_intermediates,
        local_roots: true,
        owner_key: owner.to_vec(),
    };
    let cp = Arc::new(ControlPlane::new(trust, node.attester.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(cp.clone().serve(listener));
    (cp, addr)
}

pub fn appraiser(refs: &ReferenceValues, membership: Membership) -> TpmAppraiser {
    TpmAppraiser {
        reference: refs.clone(),
        role: "control-plane".into(),
        trusted_aks: None,
        membership,
        now: now(),
    }
}

pub async fn session(
    addr: std::net::SocketAddr,
    attester: Option<&dyn veil_atls::Attester>,
    app: &TpmAppraiser,
) -> Result<Session<TcpStream>, ClientError> {
    let sock = TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    Ok(Session::connect(sock, attester, app).await?)
}

/// A fresh node key (SubjectPublicKeyInfo DER) for the cluster CA to certify.
pub fn node_key() -> Vec<u8> {
    veil_cluster::ca::fresh_node_key().unwrap()
}

/// Runs a tpm2-tools command against the TPM at `tcti`, failing the test if it fails.
pub fn tpm2(tcti: &str, dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .env("TPM2TOOLS_TCTI", tcti)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (tpm2-tools installed?)", args[0]));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A primary signing key that is not restricted (the same key each time: primaries derive from
/// the hierarchy's seed), loaded as `forger.ctx`.
fn create_unrestricted_key(tcti: &str, dir: &Path) {
    tpm2(
        tcti,
        dir,
        &[
            "tpm2_createprimary",
            "-C",
            "o",
            "-G",
            "ecc256:ecdsa-sha256",
            "-a",
            "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign",
            "-c",
            "forger.ctx",
        ],
    );
}

/// The attacker of finding 1: a genuine TPM of an accepted manufacturer, in which it creates an
/// unrestricted signing key (`tpm2_createprimary -a "…|sign"`), and signs with TPM2_Sign a
/// TPMS_ATTEST it made by hand, claiming the PCR values of a real node's launch (replayed from
/// its published event log) over the verifier's binding.
pub struct Forger {
    pub tcti: String,
    pub dir: PathBuf,
    /// TPM2B_PUBLIC of the unrestricted key, as tpm2_readpublic writes it.
    pub public: Vec<u8>,
    /// Its Name.
    pub name: Vec<u8>,
    /// The launch it impersonates.
    pub log: EventLog,
    pub _swtpm: SwTpm,
}

impl Forger {
    /// A genuine TPM manufactured by `ca`, with an unrestricted ECDSA P-256 signing key.
    pub fn new(dir: &Path, ca: &LocalCa, impersonated: &Launch) -> Self {
        ca.manufacture(dir).unwrap();
        let swtpm = SwTpm::start(dir).unwrap();
        let tcti = swtpm.tcti();
        create_unrestricted_key(&tcti, dir);
        tpm2(
            &tcti,
            dir,
            &[
                "tpm2_readpublic",
                "-c",
                "forger.ctx",
                "-o",
                "forger.pub",
                "-n",
                "forger.name",
            ],
        );
        tpm2(&tcti, dir, &["tpm2_flushcontext", "-t"]);
        Self {
            public: std::fs::read(dir.join("forger.pub")).unwrap(),
            name: std::fs::read(dir.join("forger.name")).unwrap(),
            tcti,
            dir: dir.to_path_buf(),
            log: impersonated.event_log(),
            _swtpm: swtpm,
        }
    }

    /// A TPMS_ATTEST quote claiming the impersonated launch's PCRs (cluster PCR zero) in both
    /// banks, over `extra_data`, naming the forger's key as signer.
    pub fn forge_attest(&self, extra_data: &[u8]) -> Vec<u8> {
        let replayed = self.log.replay();
        let mut concat = Vec::new();
        let mut a = Vec::new();
        a.extend(0xff54_4347u32.to_be_bytes());
        a.extend(0x8018u16.to_be_bytes());
        a.extend((self.name.len() as u16).to_be_bytes());
        a.extend(&self.name);
        a.extend((extra_data.len() as u16).to_be_bytes());
        a.extend(extra_data);
        a.extend(1234u64.to_be_bytes()); // clock
        a.extend(1u32.to_be_bytes()); // resetCount
        a.extend(0u32.to_be_bytes()); // restartCount
        a.push(1); // safe
        a.extend(0x2019_0612u64.to_be_bytes()); // firmwareVersion
        let banks = [HashAlg::Sha1, HashAlg::Sha256];
        a.extend((banks.len() as u32).to_be_bytes());
        for bank in banks {
            a.extend(bank.id().to_be_bytes());
            a.push(3);
            let mut bitmap = [0u8; 3];
            for p in QUOTED_PCRS {
                bitmap[p as usize / 8] |= 1 << (p % 8);
            }
            a.extend(bitmap);
            for p in QUOTED_PCRS {
                let zero = vec![0u8; bank.digest_len()];
                let v = if p == PCR_CLUSTER_ID {
                    zero
                } else {
                    replayed.get(&(bank, p)).cloned().unwrap_or(zero)
                };
                concat.extend(v);
            }
        }
        let digest = HashAlg::Sha256.hash(&[&concat]);
        a.extend((digest.len() as u16).to_be_bytes());
        a.extend(digest);
        a
    }

    /// TPM2_Sign with the unrestricted key over the SHA-256 of `attest` (TPMT_SIGNATURE).
    pub fn sign(&self, attest: &[u8]) -> Vec<u8> {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let (d, s) = (format!("digest-{n}.bin"), format!("sig-{n}.bin"));
        std::fs::write(self.dir.join(&d), HashAlg::Sha256.hash(&[attest])).unwrap();
        create_unrestricted_key(&self.tcti, &self.dir);
        tpm2(
            &self.tcti,
            &self.dir,
            &[
                "tpm2_sign",
                "-c",
                "forger.ctx",
                "-g",
                "sha256",
                "-s",
                "ecdsa",
                "-d",
                &d,
                "-o",
                &s,
            ],
        );
        tpm2(&self.tcti, &self.dir, &["tpm2_flushcontext", "-t"]);
        std::fs::read(self.dir.join(s)).unwrap()
    }

    /// Evidence as a node would send it, forged for `binding`.
    pub fn evidence(&self, binding: &[u8; 64]) -> Vec<u8> {
        let bindings = vec![*binding];
        let attest = self.forge_attest(&batch_digest(&bindings));
        let signature = self.sign(&attest);
        TpmEvidence {
            ak_public: self.public.clone(),
            attest,
            signature,
            event_log: self.log.to_bytes(),
            bindings,
        }
        .to_bytes()
        .unwrap()
    }
}

impl veil_atls::Attester for Forger {
    fn attest(&self, report_data: &[u8; 64]) -> Result<Vec<u8>, veil_atls::AttestError> {
        Ok(self.evidence(report_data))
    }
}
