//! Who a pod is, as the API server knows it: what the CAS's secrets driver checks kubelet's
//! word against before the node's agent vouches for the pod.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;

/// What the API server says of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodFacts {
    /// Its UID.
    pub uid: String,
    /// The node it is bound to.
    pub node_name: String,
    /// Its service account.
    pub service_account: String,
    /// The images of its init and app containers, as the spec names them.
    pub images: Vec<String>,
}

/// Reads pod `namespace/name` through the kubeconfig at `kubeconfig` (kubelet's: the node
/// authorizer lets it read the pods bound to its node, and no other).
pub async fn pod_facts(
    kubeconfig: &std::path::Path,
    namespace: &str,
    name: &str,
) -> Result<PodFacts, String> {
    let client = crate::addons::client(kubeconfig)
        .await
        .map_err(|e| format!("API client: {e:#}"))?;
    let pod = Api::<Pod>::namespaced(client, namespace)
        .get(name)
        .await
        .map_err(|e| format!("pod {namespace}/{name}: {e}"))?;
    let spec = pod.spec.unwrap_or_default();
    let images = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .filter_map(|c| c.image.clone())
        .collect();
    Ok(PodFacts {
        uid: pod.metadata.uid.unwrap_or_default(),
        node_name: spec.node_name.unwrap_or_default(),
        service_account: spec
            .service_account_name
            .unwrap_or_else(|| "default".into()),
        images,
    })
}
