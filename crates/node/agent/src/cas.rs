//! A worker's side of the CAS: the secrets driver's releaser. For a pod kubelet names, the
//! agent checks kubelet's word against the API server (the pod's UID, its node — this one —
//! and its service account), resolves the pod's images to the digests this node's containerd
//! holds, asks the CAS for a nonce, quotes its TPM over the evidence's binding, and sends the
//! evidence over its attested connection. The CAS decides; the agent only vouches.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use veil_cas::workload::{Evidence, Identity};
use veil_csi::secrets::{Contents, PodRef, Releaser};
use veil_node_attest::TpmAttester;
use veil_wire::proto::{CasAnswer, CasCall};

use crate::broker::Broker;

/// The releaser of this worker.
#[derive(Clone, Debug)]
pub struct CasReleaser {
    /// The errand task to the control plane.
    pub broker: Broker,
    /// The node's TPM.
    pub attester: Arc<TpmAttester>,
    /// The worker's Kubernetes node (its name, kubelet's kubeconfig, containerd).
    pub node: veil_kube::worker::WorkerNode,
}

impl CasReleaser {
    async fn evidence(&self, pod: &PodRef, session: &str, service: &str) -> Result<String, String> {
        let kubeconfig = self.node.private.join("kubelet.conf");
        let facts = veil_kube::workload::pod_facts(&kubeconfig, &pod.namespace, &pod.name).await?;
        let mismatch = |what: &str, kubelet: &str, api: &str| {
            Err(format!(
                "kubelet names {what} {kubelet:?}, the API server {api:?}"
            ))
        };
        if facts.uid != pod.uid {
            return mismatch("the pod UID", &pod.uid, &facts.uid);
        }
        if facts.node_name != self.node.node_name {
            return mismatch("the pod's node", &self.node.node_name, &facts.node_name);
        }
        if facts.service_account != pod.service_account {
            return mismatch(
                "the service account",
                &pod.service_account,
                &facts.service_account,
            );
        }
        let node = self.node.clone();
        let images = facts.images.clone();
        let digests = tokio::task::spawn_blocking(move || node.image_digests(&images))
            .await
            .map_err(|e| e.to_string())??;
        let CasAnswer::Nonce { nonce } = self.broker.cas(CasCall::Nonce).await? else {
            return Err("the CAS answered a nonce request with something else".into());
        };
        let mut e = Evidence {
            session: session.to_string(),
            service: service.to_string(),
            identity: Identity {
                node: self.node.node_name.clone(),
                namespace: pod.namespace.clone(),
                service_account: facts.service_account,
                pod: pod.name.clone(),
                pod_uid: facts.uid,
                container: "(pod)".into(),
                image_digests: digests,
                command: Vec::new(),
            },
            nonce,
            quote: String::new(),
        };
        let binding = e.binding().map_err(|x| x.to_string())?;
        let attester = self.attester.clone();
        let quote = tokio::task::spawn_blocking(move || {
            veil_atls::Attester::attest(attester.as_ref(), &binding).map_err(|x| x.to_string())
        })
        .await
        .map_err(|x| x.to_string())??;
        e.quote = STANDARD.encode(quote);
        serde_json::to_string(&e).map_err(|x| x.to_string())
    }
}

impl Releaser for CasReleaser {
    async fn release(
        &self,
        pod: &PodRef,
        session: &str,
        service: &str,
    ) -> Result<Contents, String> {
        let evidence = self.evidence(pod, session, service).await?;
        let answer = self
            .broker
            .cas(CasCall::Release {
                node_cert: String::new(),
                evidence,
            })
            .await?;
        let CasAnswer::Released { release } = answer else {
            return Err("the CAS answered a release with something else".into());
        };
        let r: veil_cas::service::Release =
            serde_json::from_str(release.expose()).map_err(|e| format!("the release: {e}"))?;
        let mut files = Vec::new();
        for (path, b64) in &r.files {
            let bytes = STANDARD
                .decode(b64)
                .map_err(|e| format!("the release's file {path}: {e}"))?;
            files.push((path.clone(), bytes));
        }
        Ok(veil_csi::secrets::contents(
            files,
            &r.environment,
            &r.command,
        ))
    }
}
