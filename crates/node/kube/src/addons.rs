//! What a control plane keeps true in its cluster through the API (server-side apply, field
//! manager `veil`): cluster DNS (CoreDNS), the admission policy that shuts a removed node out,
//! and the attestation facts on each Node.
//!
//! The facts are labels under `node-restriction.kubernetes.io/`, a prefix the NodeRestriction
//! admission plugin forbids kubelets to set on their own Node: only the control plane, which
//! appraised the node's evidence, writes them. A node the owner removed is cordoned, deleted,
//! and from then on every write it attempts is denied by a ValidatingAdmissionPolicy (its
//! certificate may still be valid for minutes; its pods are rescheduled elsewhere).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::control_plane::CLUSTER_DOMAIN;

/// The field manager of everything Veil applies.
pub const MANAGER: &str = "veil";
/// Label: the control plane appraised this node's evidence and admitted it.
pub const LABEL_ATTESTED: &str = "node-restriction.kubernetes.io/veil-attested";
/// Label: the kind of evidence the node attested with.
pub const LABEL_TEE: &str = "node-restriction.kubernetes.io/veil-tee";
/// Label: the reference-value set the node matched.
pub const LABEL_REFERENCE_SET: &str = "node-restriction.kubernetes.io/veil-reference-set";
/// The ConfigMap (in kube-system) naming the removed nodes, the admission policy's parameter.
pub const REMOVED_NODES: &str = "veil-removed-nodes";

/// A client for the API server at the kubeconfig `path`.
pub async fn client(path: &std::path::Path) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(path)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await?;
    Ok(Client::try_from(cfg)?)
}

/// Server-side applies `value` (a manifest with a name) through `api`.
pub(crate) async fn apply<K>(api: Api<K>, value: serde_json::Value) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let name = value
        .pointer("/metadata/name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| anyhow::anyhow!("manifest without a name"))?
        .to_string();
    let obj: K = serde_json::from_value(value)?;
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&obj),
    )
    .await?;
    Ok(())
}

/// Cluster DNS: CoreDNS (the image the workers loaded) serving `cluster.local` at `dns_ip`.
pub async fn apply_dns(client: &Client, dns_ip: &str, image: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let ns = "kube-system";
    let labels = json!({"k8s-app": "kube-dns"});
    apply(
        Api::<ServiceAccount>::namespaced(client.clone(), ns),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": ns}}),
    )
    .await?;
    apply(
        Api::<ClusterRole>::all(client.clone()),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}
            ]
        }),
    )
    .await?;
    apply(
        Api::<ClusterRoleBinding>::all(client.clone()),
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": ns}]
        }),
    )
    .await?;
    let corefile = format!(
        ".:53 {{\n    errors\n    health {{\n        lameduck 5s\n    }}\n    ready\n    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 30\n    }}\n    prometheus :9153\n    cache 30\n    loop\n    reload\n    loadbalance\n}}\n"
    );
    apply(
        Api::<ConfigMap>::namespaced(client.clone(), ns),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": ns}, "data": {"Corefile": corefile}}),
    )
    .await?;
    apply(
        Api::<Deployment>::namespaced(client.clone(), ns),
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "coredns", "namespace": ns, "labels": labels},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "priorityClassName": "system-cluster-critical",
                        "dnsPolicy": "Default",
                        "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                            {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": labels}, "topologyKey": "kubernetes.io/hostname"}}
                        ]}},
                        "containers": [{
                            "name": "coredns",
                            "image": image,
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [
                                {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9153, "protocol": "TCP"}
                            ],
                            "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}, "readOnlyRootFilesystem": true},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "initialDelaySeconds": 10, "periodSeconds": 10},
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                            "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": true}]
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}]
                    }
                }
            }
        }),
    )
    .await?;
    apply(
        Api::<Service>::namespaced(client.clone(), ns),
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": ns, "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}},
            "spec": {
                "selector": labels,
                "clusterIP": dns_ip,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                    {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}
                ]
            }
        }),
    )
    .await?;
    Ok(())
}

/// The admission policy that denies every write by a removed node, and its parameter (the
/// removed nodes), which must exist first.
pub async fn apply_removal_policy(
    client: &Client,
    removed: &BTreeSet<String>,
) -> anyhow::Result<()> {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    set_removed(client, removed).await?;
    apply(
        Api::<ValidatingAdmissionPolicy>::all(client.clone()),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": "veil-removed-nodes"},
            "spec": {
                "failurePolicy": "Fail",
                "paramKind": {"apiVersion": "v1", "kind": "ConfigMap"},
                "matchConstraints": {"resourceRules": [{
                    "apiGroups": ["*"], "apiVersions": ["*"], "operations": ["*"], "resources": ["*/*"]
                }]},
                "validations": [{
                    "expression": "!(request.userInfo.username.startsWith('system:node:') && has(params.data) && request.userInfo.username.substring(12) in params.data)",
                    "message": "this node was removed from the Veil cluster by its owner",
                    "reason": "Forbidden"
                }]
            }
        }),
    )
    .await?;
    apply(
        Api::<ValidatingAdmissionPolicyBinding>::all(client.clone()),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": "veil-removed-nodes"},
            "spec": {
                "policyName": "veil-removed-nodes",
                "paramRef": {"name": REMOVED_NODES, "namespace": "kube-system", "parameterNotFoundAction": "Deny"},
                "validationActions": ["Deny"]
            }
        }),
    )
    .await?;
    Ok(())
}

/// Writes the removed nodes into the policy's parameter.
pub async fn set_removed(client: &Client, removed: &BTreeSet<String>) -> anyhow::Result<()> {
    let data: BTreeMap<&str, &str> = removed.iter().map(|n| (n.as_str(), "removed")).collect();
    apply(
        Api::<ConfigMap>::namespaced(client.clone(), "kube-system"),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": REMOVED_NODES, "namespace": "kube-system"}, "data": data}),
    )
    .await
}

/// What a control plane knows of a node it admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// The kind of evidence (e.g. `tpm`).
    pub tee: String,
    /// The reference-value set it matched.
    pub reference_set: String,
    /// Its slice of the pod network (`10.244.17.0/24`).
    pub pod_cidr: Option<String>,
}

/// What [`reconcile_nodes`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NodeSync {
    /// Nodes whose facts were written.
    pub labeled: Vec<String>,
    /// Removed nodes cordoned and deleted.
    pub deleted: Vec<String>,
}

/// Puts each admitted node's facts on its Node, and cordons and deletes the Node of every
/// removed node.
pub async fn reconcile_nodes(
    client: &Client,
    admitted: &BTreeMap<String, NodeFacts>,
    removed: &BTreeSet<String>,
) -> anyhow::Result<NodeSync> {
    let api = Api::<Node>::all(client.clone());
    let mut sync = NodeSync::default();
    for node in api.list(&ListParams::default()).await? {
        let Some(name) = node.metadata.name.clone() else {
            continue;
        };
        if removed.contains(&name) {
            api.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"unschedulable": true}})),
            )
            .await?;
            api.delete(&name, &DeleteParams::default()).await?;
            tracing::warn!(event = "node_deleted", node = %name, reason = "removed by the owner");
            sync.deleted.push(name);
            continue;
        }
        let Some(facts) = admitted.get(&name) else {
            continue;
        };
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let want = [
            (LABEL_ATTESTED, "true"),
            (LABEL_TEE, facts.tee.as_str()),
            (LABEL_REFERENCE_SET, facts.reference_set.as_str()),
        ];
        let spec_cidr = node.spec.as_ref().and_then(|s| s.pod_cidr.clone());
        let labels_ok = want
            .iter()
            .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v));
        let cidr_ok = facts.pod_cidr.is_none() || spec_cidr.is_some();
        if labels_ok && cidr_ok {
            continue;
        }
        let mut patch = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": want.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>()}
        });
        if !cidr_ok
            && let Some(c) = &facts.pod_cidr
            && let Some(obj) = patch.as_object_mut()
        {
            obj.insert("spec".into(), json!({"podCIDR": c, "podCIDRs": [c]}));
        }
        api.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        tracing::info!(event = "node_labeled", node = %name, tee = %facts.tee, set = %facts.reference_set);
        sync.labeled.push(name);
    }
    Ok(sync)
}
