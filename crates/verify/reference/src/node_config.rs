//! A node agent's configuration, and what of it the node's firmware measures into PCR 9.
//!
//! Everything that decides what an agent trusts or how it behaves is measured: its role, its
//! control planes, whether it treats TPM roots as a local software CA, its mesh settings, and —
//! by the SHA-256 of their SubjectPublicKeyInfo — the key that signs its reference values and
//! the owner's key that signs owner commands and node approvals. Local plumbing (file paths,
//! the TPM's address, where a control plane listens) is not. [`AgentConfig::measured`] is the
//! one function that computes it: the firmware (`veil mini`) measures it, the agent checks at
//! start that what it loaded is what was measured, and `veil measurements compute` predicts
//! it, so the three cannot drift apart.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The UDP port of every node's mesh device.
pub const MESH_PORT: u16 = 51820;

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A file the configuration names cannot be read.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// A key file is not a PEM `PUBLIC KEY`.
    #[error("{path}: expected a PEM `PUBLIC KEY`: {detail}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        detail: String,
    },
    /// A setting is malformed.
    #[error("{setting}: {detail}")]
    Setting {
        /// Which setting.
        setting: &'static str,
        /// Why.
        detail: String,
    },
}

/// The agent's configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Node name (for logs).
    pub name: String,
    /// `control-plane` or `worker` (measured).
    pub role: String,
    /// Where the cluster's control-plane services are (every control-plane node), in the
    /// order to try them (measured).
    pub control_planes: Vec<String>,
    /// Where this node serves the control-plane services (control plane only; the first of
    /// `control_planes` if unset). Placement, not behaviour: not measured.
    #[serde(default)]
    pub listen: Option<String>,
    /// The TPM's TCTI.
    pub tcti: String,
    /// The event log the firmware wrote.
    pub event_log: PathBuf,
    /// Signed reference values.
    pub reference_values: PathBuf,
    /// Their signature.
    pub reference_signature: PathBuf,
    /// The public key that signs reference values (PEM; measured by its SPKI's SHA-256).
    pub reference_key: PathBuf,
    /// The owner's public key (PEM; measured by its SPKI's SHA-256): only what it signs
    /// initialises, recovers, approves or commands this cluster.
    pub owner_key: PathBuf,
    /// Whether the TPM manufacturer roots (taken from the signed reference values, never from
    /// a local file the host could change) are a local software CA (insecure; local clusters
    /// only; measured).
    #[serde(default)]
    pub tpm_roots_local: bool,
    /// Where to write `status.json`.
    pub state_dir: PathBuf,
    /// Where to serve Prometheus metrics (`GET /metrics`).
    #[serde(default)]
    pub metrics: Option<String>,
    /// The node-to-node mesh (absent: none).
    #[serde(default)]
    pub mesh: Option<MeshSettings>,
    /// Kubernetes on this node (absent: none).
    #[serde(default)]
    pub kubernetes: Option<KubeSettings>,
}

/// Kubernetes on a node: which component binaries the agent may start (by SHA-256, so a host
/// that swaps one gets a node that refuses to start it) and the cluster's networks.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubeSettings {
    /// The directory holding the component binaries (placement: not measured).
    pub bin_dir: PathBuf,
    /// The SHA-256 (hex) of each binary the agent may start, by file name (measured).
    pub binaries: std::collections::BTreeMap<String, String>,
    /// The pod network, e.g. `10.244.0.0/16`; each node gets a /24 of it (measured).
    pub cluster_cidr: String,
    /// The service network, e.g. `10.96.0.0/16` (measured).
    pub service_cidr: String,
    /// The API server's port (measured).
    #[serde(default = "default_api_port")]
    pub api_port: u16,
    /// Container image archives (OCI) a worker loads into its runtime at start, by path, with
    /// the SHA-256 (hex) each must have (measured: what the node runs as its pods' sandbox and
    /// cluster DNS is part of its image).
    #[serde(default)]
    pub images: std::collections::BTreeMap<PathBuf, String>,
    /// The image of the cluster's DNS (CoreDNS) the control plane deploys, if any (measured).
    #[serde(default)]
    pub dns_image: Option<String>,
    /// On a control plane: how long the Kubernetes credentials it issues workers last, in
    /// seconds (measured: it bounds how long a node that stops re-attesting keeps them);
    /// 900 unless set.
    #[serde(default)]
    pub credential_secs: Option<u64>,
    /// On a control plane: how long the kubelet serving certificates it issues workers last,
    /// in seconds (measured); a day unless set.
    #[serde(default)]
    pub serving_secs: Option<u64>,
    /// The node's encrypted state volume, which holds what its components write (etcd's data,
    /// containerd's and kubelet's state); none: they write to the state directory (measured).
    #[serde(default)]
    pub state_volume: Option<StateVolumeSettings>,
    /// Persistent volumes (Veil's CSI driver) from a disk pool; none: the cluster offers
    /// none (measured: the driver's `veil-volume`).
    #[serde(default)]
    pub volumes: Option<VolumeSettings>,
}

/// Persistent volumes: Veil's CSI driver on `veil-volume`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VolumeSettings {
    /// The `veil-volume` binary (plumbing: its SHA-256 is what is measured).
    pub binary: PathBuf,
    /// The binary's SHA-256 (hex).
    pub sha256: String,
    /// The disk pool: a directory every node reaches, the stand-in for a cloud's block store
    /// (placement: not measured; what it holds is sealed, authenticated and anchored).
    pub pool: PathBuf,
}

/// The node's encrypted state volume (`veil-volume`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StateVolumeSettings {
    /// The `veil-volume` binary (plumbing: its SHA-256 is what is measured).
    pub binary: PathBuf,
    /// The binary's SHA-256 (hex).
    pub sha256: String,
    /// The volume's capacity in MiB.
    pub size_mib: u64,
}

fn default_api_port() -> u16 {
    6443
}

impl KubeSettings {
    /// What the firmware measures of these settings.
    pub fn measured(&self) -> String {
        let bins: Vec<String> = self
            .binaries
            .iter()
            .map(|(name, sha)| format!("{name}=sha256:{sha}"))
            .collect();
        let images: Vec<String> = self
            .images
            .iter()
            .map(|(path, sha)| {
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                format!("{}=sha256:{sha}", name.unwrap_or_default())
            })
            .collect();
        let mut m = format!(
            "kubernetes: pods {} services {} api {} binaries {} images {} dns {}",
            self.cluster_cidr,
            self.service_cidr,
            self.api_port,
            bins.join(","),
            images.join(","),
            self.dns_image.as_deref().unwrap_or("none")
        );
        if let Some(secs) = self.credential_secs {
            m.push_str(&format!(" credentials {secs}s"));
        }
        if let Some(secs) = self.serving_secs {
            m.push_str(&format!(" serving {secs}s"));
        }
        if let Some(v) = &self.state_volume {
            m.push_str(&format!(
                " state-volume {}MiB veil-volume=sha256:{}",
                v.size_mib, v.sha256
            ));
        }
        if let Some(v) = &self.volumes {
            m.push_str(&format!(" volumes veil-volume=sha256:{}", v.sha256));
        }
        m
    }

    /// The slice of the pod network of the node at mesh `address` in the mesh network `mesh`:
    /// the /24 numbered as the address is in its network, so every node knows every other's
    /// without asking.
    pub fn pod_subnet(
        &self,
        (mesh_net, _): (Ipv4Addr, u8),
        address: Ipv4Addr,
    ) -> Result<(Ipv4Addr, u8), ConfigError> {
        let bad = |detail: String| ConfigError::Setting {
            setting: "kubernetes.cluster_cidr",
            detail,
        };
        let (net, prefix) = cidr(&self.cluster_cidr).map_err(bad)?;
        if prefix > 24 {
            return Err(bad(format!(
                "expected a prefix of at most 24, found {prefix}"
            )));
        }
        let index = u32::from(address).wrapping_sub(u32::from(mesh_net));
        let slices = 1u32 << (24 - u32::from(prefix));
        if index >= slices {
            return Err(bad(format!(
                "{address} is host {index} of the mesh; {} has only {slices} /24 slices",
                self.cluster_cidr
            )));
        }
        Ok((Ipv4Addr::from(u32::from(net) + (index << 8)), 24))
    }

    /// The binary `name`, with the SHA-256 it must have.
    pub fn binary(&self, name: &str) -> Result<(PathBuf, [u8; 32]), ConfigError> {
        let sha = self
            .binaries
            .get(name)
            .and_then(|h| hex::decode(h).ok())
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            .ok_or_else(|| ConfigError::Setting {
                setting: "kubernetes.binaries",
                detail: format!("no SHA-256 for `{name}`"),
            })?;
        Ok((self.bin_dir.join(name), sha))
    }
}

/// The keys a node trusts, as SubjectPublicKeyInfo DER.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedKeys {
    /// The reference-values signing key.
    pub reference_key: Vec<u8>,
    /// The owner's key.
    pub owner_key: Vec<u8>,
}

/// A PEM `PUBLIC KEY` file's SubjectPublicKeyInfo DER.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, ConfigError> {
    let text = std::fs::read(path).map_err(|e| ConfigError::File {
        path: path.display().to_string(),
        detail: e.to_string(),
    })?;
    public_key_der(&text).map_err(|detail| ConfigError::Key {
        path: path.display().to_string(),
        detail,
    })
}

/// The SubjectPublicKeyInfo DER of a PEM `PUBLIC KEY`.
pub fn public_key_der(pem_text: &[u8]) -> Result<Vec<u8>, String> {
    let p = pem::parse(pem_text).map_err(|e| e.to_string())?;
    if p.tag() != "PUBLIC KEY" {
        return Err(format!("found a PEM `{}`", p.tag()));
    }
    veil_attest_core::x509::public_key_from_spki(p.contents()).map_err(|e| e.to_string())?;
    Ok(p.contents().to_vec())
}

impl AgentConfig {
    /// What the node's firmware measures into PCR 9, given the keys the configuration names.
    pub fn measured(&self, keys: &TrustedKeys) -> Vec<u8> {
        format!(
            "role: {}\ncontrol_planes: {}\ntpm_roots_local: {}\nreference_key: sha256:{}\nowner_key: sha256:{}\n{}{}",
            self.role,
            self.control_planes.join(","),
            self.tpm_roots_local,
            hex::encode(Sha256::digest(&keys.reference_key)),
            hex::encode(Sha256::digest(&keys.owner_key)),
            self.mesh
                .as_ref()
                .map(|m| format!("{}\n", m.measured()))
                .unwrap_or_default(),
            self.kubernetes
                .as_ref()
                .map(|k| format!("{}\n", k.measured()))
                .unwrap_or_default()
        )
        .into_bytes()
    }

    /// The keys the configuration names, read from their files.
    pub fn trusted_keys(&self) -> Result<TrustedKeys, ConfigError> {
        Ok(TrustedKeys {
            reference_key: read_public_key(&self.reference_key)?,
            owner_key: read_public_key(&self.owner_key)?,
        })
    }

    /// [`AgentConfig::measured`] with the keys read from their files.
    pub fn measured_from_files(&self) -> Result<Vec<u8>, ConfigError> {
        Ok(self.measured(&self.trusted_keys()?))
    }

    /// Where a control-plane node listens.
    pub fn listen_addr(&self) -> Result<&str, ConfigError> {
        self.listen
            .as_deref()
            .or(self.control_planes.first().map(String::as_str))
            .ok_or(ConfigError::Setting {
                setting: "control_planes",
                detail: "the configuration names no control plane".into(),
            })
    }
}

/// Mesh settings of a node (absent: no mesh).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MeshSettings {
    /// The mesh network, e.g. `10.215.7.0/24` (measured).
    pub network: String,
    /// Where this node's mesh device listens, its LAN address and port (placement: not
    /// measured).
    pub endpoint: String,
    /// The TUN interface name.
    #[serde(default = "default_interface")]
    pub interface: String,
    /// Strict mode: the LAN (`10.213.7.0/24`) on which only WireGuard and these attested-TLS
    /// ports may flow between nodes (measured).
    #[serde(default)]
    pub strict: Option<StrictSettings>,
    /// Rotate the node's mesh key this often (seconds; measured). The owner can also ask for
    /// a rotation at any time (`veil node rotate-keys`).
    #[serde(default)]
    pub rotate_secs: Option<u64>,
}

fn default_interface() -> String {
    "veil0".into()
}

/// Strict-mode settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StrictSettings {
    /// The nodes' LAN.
    pub lan: String,
    /// TCP ports of attested-TLS services reachable between nodes.
    pub tls_ports: Vec<u16>,
}

/// An IPv4 network in CIDR notation.
pub fn cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = text
        .split_once('/')
        .ok_or_else(|| format!("`{text}`: expected ADDRESS/PREFIX"))?;
    let address = a.parse().map_err(|e| format!("`{text}`: address: {e}"))?;
    let prefix: u8 = p.parse().map_err(|e| format!("`{text}`: prefix: {e}"))?;
    if prefix > 32 {
        return Err(format!(
            "`{text}`: prefix: expected 0 to 32, found {prefix}"
        ));
    }
    Ok((address, prefix))
}

impl MeshSettings {
    /// What the firmware measures of these settings.
    pub fn measured(&self) -> String {
        format!(
            "mesh: {} rotate: {:?} strict: {}",
            self.network,
            self.rotate_secs,
            self.strict
                .as_ref()
                .map(|s| format!("{} tls {:?}", s.lan, s.tls_ports))
                .unwrap_or_else(|| "off".into())
        )
    }

    /// The mesh network and prefix.
    pub fn network(&self) -> Result<(Ipv4Addr, u8), ConfigError> {
        cidr(&self.network).map_err(|detail| ConfigError::Setting {
            setting: "mesh.network",
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(r: u8, o: u8) -> TrustedKeys {
        TrustedKeys {
            reference_key: vec![r; 91],
            owner_key: vec![o; 91],
        }
    }

    #[test]
    fn what_decides_trust_is_measured_and_plumbing_is_not() {
        let mut cfg = AgentConfig {
            name: "w".into(),
            role: "worker".into(),
            control_planes: vec!["127.0.0.1:1".into()],
            listen: None,
            mesh: None,
            tcti: "swtpm:port=2321".into(),
            event_log: "log".into(),
            reference_values: "r".into(),
            reference_signature: "s".into(),
            reference_key: "k".into(),
            owner_key: "o".into(),
            tpm_roots_local: false,
            state_dir: "d".into(),
            metrics: None,
            kubernetes: None,
        };
        let k = keys(1, 2);
        let strict = cfg.measured(&k);
        cfg.tpm_roots_local = true;
        assert_ne!(strict, cfg.measured(&k));
        let local = cfg.measured(&k);
        cfg.tcti = "swtpm:port=9999".into();
        cfg.listen = Some("10.0.0.2:7443".into());
        cfg.reference_values = "elsewhere".into();
        assert_eq!(local, cfg.measured(&k), "plumbing is not measured");
        assert_ne!(local, cfg.measured(&keys(3, 2)), "the reference key is");
        assert_ne!(local, cfg.measured(&keys(1, 3)), "the owner key is");
        let mut kube = KubeSettings {
            bin_dir: "/opt/a".into(),
            binaries: [("kube".to_string(), "ab".repeat(32))].into(),
            cluster_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            api_port: 6443,
            images: Default::default(),
            dns_image: None,
            credential_secs: None,
            serving_secs: None,
            state_volume: None,
            volumes: None,
        };
        cfg.kubernetes = Some(kube.clone());
        let with_kube = cfg.measured(&k);
        assert_ne!(local, with_kube);
        kube.bin_dir = "/opt/b".into();
        cfg.kubernetes = Some(kube.clone());
        assert_eq!(with_kube, cfg.measured(&k), "where the binaries are is not");
        kube.binaries.insert("kube".into(), "cd".repeat(32));
        cfg.kubernetes = Some(kube.clone());
        assert_ne!(with_kube, cfg.measured(&k), "which binaries run is");
        let before = cfg.measured(&k);
        kube.credential_secs = Some(60);
        cfg.kubernetes = Some(kube.clone());
        assert_ne!(before, cfg.measured(&k), "how long credentials last is");
        let before = cfg.measured(&k);
        kube.serving_secs = Some(600);
        cfg.kubernetes = Some(kube.clone());
        assert_ne!(
            before,
            cfg.measured(&k),
            "how long serving certificates last is"
        );
        let before = cfg.measured(&k);
        kube.state_volume = Some(StateVolumeSettings {
            binary: "/opt/a/veil-volume".into(),
            sha256: "ef".repeat(32),
            size_mib: 1024,
        });
        cfg.kubernetes = Some(kube.clone());
        let with_volume = cfg.measured(&k);
        assert_ne!(before, with_volume, "the state volume is");
        if let Some(v) = &mut kube.state_volume {
            v.binary = "/elsewhere".into();
        }
        cfg.kubernetes = Some(kube.clone());
        assert_eq!(with_volume, cfg.measured(&k), "where its binary is is not");
        if let Some(v) = &mut kube.state_volume {
            v.sha256 = "01".repeat(32);
        }
        cfg.kubernetes = Some(kube.clone());
        assert_ne!(with_volume, cfg.measured(&k), "which binary runs it is");
        assert!(
            kube.binary("etcd")
                .unwrap_err()
                .to_string()
                .contains("no SHA-256 for `etcd`")
        );
        assert_eq!(kube.binary("kube").unwrap().1, [0xcd; 32]);
        let mesh = (Ipv4Addr::new(10, 215, 7, 0), 24);
        assert_eq!(
            kube.pod_subnet(mesh, Ipv4Addr::new(10, 215, 7, 12))
                .unwrap(),
            (Ipv4Addr::new(10, 244, 12, 0), 24)
        );
        kube.cluster_cidr = "10.244.0.0/20".into();
        assert!(
            kube.pod_subnet(mesh, Ipv4Addr::new(10, 215, 7, 16))
                .is_err()
        );
        cfg.kubernetes = None;
        cfg.control_planes.push("10.0.0.3:7443".into());
        assert_ne!(
            local,
            cfg.measured(&k),
            "which control planes a node trusts is measured"
        );
    }

    #[test]
    fn networks_parse_or_say_why() {
        assert_eq!(cidr("10.1.2.0/24"), Ok((Ipv4Addr::new(10, 1, 2, 0), 24)));
        assert!(cidr("10.1.2.0").unwrap_err().contains("ADDRESS/PREFIX"));
        assert!(cidr("10.1.2.0/33").unwrap_err().contains("0 to 32"));
    }
}
