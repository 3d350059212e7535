//! A control-plane node's Kubernetes: etcd, kube-apiserver, kube-controller-manager and
//! kube-scheduler, configured from the PKI derived from the master secret. Only an agent that
//! holds the cluster's secrets calls this; everything secret is written into the node's private
//! directory (a tmpfs in the node's own mount namespace), nothing into the host's view.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use veil_reference::node_config::{KubeSettings, cidr};

use crate::files::{kubeconfig_files, write_issued, write_private};
use crate::pki::{KubePki, Leaf, Usage};
use crate::supervise::ProcessSpec;

/// etcd's client port.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const ETCD_PEER_PORT: u16 = 2380;
/// How long the control plane's own certificates last; they are issued again at every start.
pub const COMPONENT_CERT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// The cluster's DNS domain.
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// Where and how one control-plane node runs Kubernetes.
#[derive(Debug, Clone)]
pub struct ControlPlaneNode {
    /// The measured settings.
    pub settings: KubeSettings,
    /// Which of the cluster's control planes this is.
    pub member: usize,
    /// Every control plane's cluster address (mesh), in the order of the configuration.
    pub members: Vec<Ipv4Addr>,
    /// The owner's entry point (the node's LAN address), if the API server is reached there too.
    pub entry: Option<Ipv4Addr>,
    /// The node's private directory (tmpfs).
    pub private: PathBuf,
    /// The node's data directory (etcd's data, logs).
    pub data: PathBuf,
    /// The cluster ID (hex).
    pub cluster_id: String,
}

/// The first address of a network: the `kubernetes` Service's cluster IP is the first host of
/// the service network.
pub fn nth_host(network: &str, n: u32) -> Result<Ipv4Addr, String> {
    let (net, prefix) = cidr(network)?;
    let size = 1u64 << (32 - u32::from(prefix));
    if u64::from(n) + 1 >= size {
        return Err(format!("`{network}` has no host number {n}"));
    }
    Ok(Ipv4Addr::from(u32::from(net) + n))
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

impl ControlPlaneNode {
    /// This node's cluster address.
    pub fn address(&self) -> Result<Ipv4Addr, String> {
        self.members
            .get(self.member)
            .copied()
            .ok_or_else(|| format!("control plane {} is not among the members", self.member))
    }

    /// The KMS plugin's socket.
    pub fn kms_socket(&self) -> PathBuf {
        self.private.join("kms.sock")
    }

    /// The SHA-256 of the API server's serving certificate is what the node's report carries:
    /// this is where that certificate is.
    pub fn serving_cert(&self) -> PathBuf {
        self.private.join("pki/apiserver.crt")
    }

    fn binary(&self, name: &str) -> Result<(PathBuf, [u8; 32]), String> {
        self.settings.binary(name).map_err(|e| e.to_string())
    }

    fn spec(&self, name: &str, binary: &str, args: Vec<String>) -> Result<ProcessSpec, String> {
        let (program, sha256) = self.binary(binary)?;
        let home = self.data.join("home");
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        Ok(ProcessSpec {
            name: name.into(),
            program,
            sha256: Some(sha256),
            args,
            env: vec![("HOME".into(), s(&home))],
            log: self.data.join(format!("{name}.log")),
        })
    }

    /// Writes every file the components need and returns them, ready to supervise.
    pub fn prepare(&self, pki: &KubePki) -> Result<Vec<ProcessSpec>, String> {
        let io = |e: std::io::Error| e.to_string();
        let me = self.address()?;
        let pkid = self.private.join("pki");
        std::fs::create_dir_all(&pkid).map_err(io)?;
        std::fs::create_dir_all(&self.data).map_err(io)?;
        let socket = self.kms_socket();
        if socket.as_os_str().len() > 100 {
            return Err(format!(
                "{}: a unix socket path must be under 108 bytes",
                socket.display()
            ));
        }
        let v = COMPONENT_CERT_VALIDITY;
        let ca = pkid.join("ca.crt");
        write_private(&ca, pki.cluster.cert_pem().as_bytes()).map_err(io)?;
        let fp_ca = pkid.join("front-proxy-ca.crt");
        write_private(&fp_ca, pki.front_proxy.cert_pem().as_bytes()).map_err(io)?;
        let etcd_ca = pkid.join("etcd-ca.crt");
        write_private(&etcd_ca, pki.etcd.cert_pem().as_bytes()).map_err(io)?;
        let sa_key = pkid.join("sa.key");
        write_private(
            &sa_key,
            pki.service_account_key_pem()
                .map_err(|e| e.to_string())?
                .as_bytes(),
        )
        .map_err(io)?;
        let sa_pub = pkid.join("sa.pub");
        write_private(
            &sa_pub,
            pki.service_account_public_pem()
                .map_err(|e| e.to_string())?
                .as_bytes(),
        )
        .map_err(io)?;
        let issue = |ca: &crate::pki::Ca, name: &str, leaf: Leaf| {
            let issued = ca.issue(&leaf).map_err(|e| e.to_string())?;
            write_issued(&pkid, name, &issued).map_err(io)
        };

        // etcd: one certificate per role, server and client in one for members.
        let etcd_ips: Vec<IpAddr> = vec![me.into(), Ipv4Addr::LOCALHOST.into()];
        let etcd_leaf = |cn: &str| Leaf {
            common_name: cn.into(),
            organizations: vec![],
            dns: vec!["localhost".into()],
            ips: etcd_ips.clone(),
            usage: Usage::Both,
            validity: v,
        };
        let name = format!("etcd-{}", self.member);
        let (etcd_crt, etcd_key) = issue(&pki.etcd, "etcd-server", etcd_leaf(&name))?;
        let (peer_crt, peer_key) = issue(&pki.etcd, "etcd-peer", etcd_leaf(&name))?;
        let (ae_crt, ae_key) = issue(
            &pki.etcd,
            "apiserver-etcd-client",
            Leaf::client("kube-apiserver-etcd-client", &[], v),
        )?;
        let peers: Vec<String> = self
            .members
            .iter()
            .enumerate()
            .map(|(i, a)| format!("etcd-{i}=https://{a}:{ETCD_PEER_PORT}"))
            .collect();
        let etcd = self.spec(
            "etcd",
            "etcd",
            vec![
                format!("--name={name}"),
                format!("--data-dir={}", s(&self.data.join("etcd"))),
                format!("--listen-client-urls=https://127.0.0.1:{ETCD_CLIENT_PORT},https://{me}:{ETCD_CLIENT_PORT}"),
                format!("--advertise-client-urls=https://{me}:{ETCD_CLIENT_PORT}"),
                format!("--listen-peer-urls=https://{me}:{ETCD_PEER_PORT}"),
                format!("--initial-advertise-peer-urls=https://{me}:{ETCD_PEER_PORT}"),
                format!("--initial-cluster={}", peers.join(",")),
                "--initial-cluster-state=new".into(),
                format!("--initial-cluster-token=veil-{}", self.cluster_id.get(..16).unwrap_or(&self.cluster_id)),
                "--client-cert-auth=true".into(),
                format!("--trusted-ca-file={}", s(&etcd_ca)),
                format!("--cert-file={}", s(&etcd_crt)),
                format!("--key-file={}", s(&etcd_key)),
                "--peer-client-cert-auth=true".into(),
                format!("--peer-trusted-ca-file={}", s(&etcd_ca)),
                format!("--peer-cert-file={}", s(&peer_crt)),
                format!("--peer-key-file={}", s(&peer_key)),
                "--listen-metrics-urls=http://127.0.0.1:2381".into(),
                "--log-level=warn".into(),
            ],
        )?;

        // The API server.
        let service_ip = nth_host(&self.settings.service_cidr, 1)?;
        let mut ips: Vec<IpAddr> = vec![service_ip.into(), me.into(), Ipv4Addr::LOCALHOST.into()];
        ips.extend(self.entry.map(IpAddr::from));
        let dns: Vec<String> = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            &format!("kubernetes.default.svc.{CLUSTER_DOMAIN}"),
            "localhost",
        ]
        .iter()
        .map(|d| d.to_string())
        .collect();
        let (api_crt, api_key) = issue(
            &pki.cluster,
            "apiserver",
            Leaf {
                common_name: "kube-apiserver".into(),
                organizations: vec![],
                dns,
                ips,
                usage: Usage::Server,
                validity: v,
            },
        )?;
        let (kc_crt, kc_key) = issue(
            &pki.cluster,
            "apiserver-kubelet-client",
            Leaf::client("kube-apiserver-kubelet-client", &["system:masters"], v),
        )?;
        let (fp_crt, fp_key) = issue(
            &pki.front_proxy,
            "front-proxy-client",
            Leaf::client("front-proxy-client", &[], v),
        )?;
        let encryption = self.private.join("encryption-config.yaml");
        write_private(
            &encryption,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n  - kms:\n      apiVersion: v2\n      name: veil\n      endpoint: unix://{}\n      timeout: 5s\n",
                socket.display()
            )
            .as_bytes(),
        )
        .map_err(io)?;
        let port = self.settings.api_port;
        let apiserver = self.spec(
            "kube-apiserver",
            "kube-apiserver",
            vec![
                format!("--advertise-address={me}"),
                "--bind-address=0.0.0.0".into(),
                format!("--secure-port={port}"),
                format!("--etcd-servers=https://127.0.0.1:{ETCD_CLIENT_PORT}"),
                format!("--etcd-cafile={}", s(&etcd_ca)),
                format!("--etcd-certfile={}", s(&ae_crt)),
                format!("--etcd-keyfile={}", s(&ae_key)),
                format!("--client-ca-file={}", s(&ca)),
                format!("--tls-cert-file={}", s(&api_crt)),
                format!("--tls-private-key-file={}", s(&api_key)),
                "--tls-min-version=VersionTLS12".into(),
                format!("--kubelet-client-certificate={}", s(&kc_crt)),
                format!("--kubelet-client-key={}", s(&kc_key)),
                format!("--kubelet-certificate-authority={}", s(&ca)),
                "--kubelet-preferred-address-types=InternalIP".into(),
                format!("--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}"),
                format!("--service-account-key-file={}", s(&sa_pub)),
                format!("--service-account-signing-key-file={}", s(&sa_key)),
                format!("--service-cluster-ip-range={}", self.settings.service_cidr),
                "--authorization-mode=Node,RBAC".into(),
                "--enable-admission-plugins=NodeRestriction".into(),
                format!("--encryption-provider-config={}", s(&encryption)),
                format!("--requestheader-client-ca-file={}", s(&fp_ca)),
                "--requestheader-allowed-names=front-proxy-client".into(),
                "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                "--requestheader-group-headers=X-Remote-Group".into(),
                "--requestheader-username-headers=X-Remote-User".into(),
                format!("--proxy-client-cert-file={}", s(&fp_crt)),
                format!("--proxy-client-key-file={}", s(&fp_key)),
                "--allow-privileged=true".into(),
                // Webhooks and aggregated API servers are reached at their pods' addresses
                // (routed over the mesh), not through a Service address only kube-proxy
                // would translate: control planes run no kube-proxy.
                "--enable-aggregator-routing=true".into(),
                "--profiling=false".into(),
                "--shutdown-delay-duration=0s".into(),
                "--shutdown-send-retry-after=false".into(),
            ],
        )?;

        // Controller manager and scheduler reach their own node's API server.
        let local = format!("https://127.0.0.1:{port}");
        let kubeconfig = |name: &str, user: &str| -> Result<PathBuf, String> {
            let (crt, key) = issue(&pki.cluster, name, Leaf::client(user, &[], v))?;
            let path = self.private.join(format!("{name}.conf"));
            write_private(
                &path,
                kubeconfig_files(&local, &ca, user, &crt, &key).as_bytes(),
            )
            .map_err(io)?;
            Ok(path)
        };
        let cm_conf = kubeconfig("controller-manager", "system:kube-controller-manager")?;
        let flex = self.data.join("flexvolume");
        let controller_manager = self.spec(
            "kube-controller-manager",
            "kube-controller-manager",
            vec![
                format!("--kubeconfig={}", s(&cm_conf)),
                format!("--authentication-kubeconfig={}", s(&cm_conf)),
                format!("--authorization-kubeconfig={}", s(&cm_conf)),
                "--bind-address=127.0.0.1".into(),
                format!("--client-ca-file={}", s(&ca)),
                format!("--requestheader-client-ca-file={}", s(&fp_ca)),
                format!("--root-ca-file={}", s(&ca)),
                format!("--service-account-private-key-file={}", s(&sa_key)),
                "--use-service-account-credentials=true".into(),
                // Each node's slice of the pod network follows from its mesh address (the mesh
                // routes it); the control plane's agent writes it on the Node.
                format!("--cluster-cidr={}", self.settings.cluster_cidr),
                "--allocate-node-cidrs=false".into(),
                format!("--service-cluster-ip-range={}", self.settings.service_cidr),
                "--leader-elect=true".into(),
                format!("--flex-volume-plugin-dir={}", s(&flex)),
                "--profiling=false".into(),
            ],
        )?;
        let sched_conf = kubeconfig("scheduler", "system:kube-scheduler")?;
        let scheduler = self.spec(
            "kube-scheduler",
            "kube-scheduler",
            vec![
                format!("--kubeconfig={}", s(&sched_conf)),
                format!("--authentication-kubeconfig={}", s(&sched_conf)),
                format!("--authorization-kubeconfig={}", s(&sched_conf)),
                "--bind-address=127.0.0.1".into(),
                "--leader-elect=true".into(),
                "--profiling=false".into(),
            ],
        )?;
        // The agent's own client (Node labels, removal): cluster-admin on its own node.
        kubeconfig_admin(pki, &self.private.join("admin.conf"), &local)?;
        Ok(vec![etcd, apiserver, controller_manager, scheduler])
    }
}

/// Writes a kubeconfig with cluster-admin rights for the agent itself at `path`.
pub fn kubeconfig_admin(pki: &KubePki, path: &Path, server: &str) -> Result<(), String> {
    let issued = pki
        .cluster
        .issue(&Leaf::client(
            "veil-agent",
            &["system:masters"],
            COMPONENT_CERT_VALIDITY,
        ))
        .map_err(|e| e.to_string())?;
    write_private(
        path,
        crate::files::kubeconfig(server, pki.cluster.cert_pem(), "veil-agent", &issued).as_bytes(),
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_addresses() {
        assert_eq!(
            nth_host("10.96.0.0/16", 1).unwrap(),
            Ipv4Addr::new(10, 96, 0, 1)
        );
        assert_eq!(
            nth_host("10.96.0.0/16", 10).unwrap(),
            Ipv4Addr::new(10, 96, 0, 10)
        );
        assert!(nth_host("10.96.0.0/31", 1).is_err());
        assert!(nth_host("bad", 1).is_err());
    }
}
