//! Which service of a session a workload is: the facts the node's agent attested of it
//! (from the kernel and the container runtime, never from the workload) against each service's
//! variants. A variant admits a workload when every condition it gives holds; a service when
//! one of its variants does. A refusal says, for each variant, the first condition that failed.

use crate::CasError;
use crate::session::{Service, Session, Variant};

/// What was attested of a workload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    /// The pod's namespace.
    pub namespace: String,
    /// Its service account.
    pub service_account: String,
    /// The pod's name.
    pub pod: String,
    /// The digests of its containers' images (`sha256:…`).
    pub image_digests: Vec<String>,
    /// The node's reference-value set.
    pub reference_set: String,
    /// The node's TEE (`tpm`, `snp`, …).
    pub tee: String,
    /// The node's TCB, where its TEE has one.
    pub tcb: Option<u64>,
}

/// The first condition of `v` that `w` fails.
fn fails(v: &Variant, w: &Workload) -> Option<String> {
    if !v.image_digests.is_empty() {
        if w.image_digests.is_empty() {
            return Some("no image digest was attested".into());
        }
        if let Some(d) = w
            .image_digests
            .iter()
            .find(|d| !v.image_digests.contains(d))
        {
            return Some(format!("image {d} is not allowed"));
        }
    }
    if let Some(n) = &v.namespace
        && *n != w.namespace
    {
        return Some(format!("namespace {} is not {n}", w.namespace));
    }
    if let Some(sa) = &v.service_account
        && *sa != w.service_account
    {
        return Some(format!("service account {} is not {sa}", w.service_account));
    }
    if !v.reference_sets.is_empty() && !v.reference_sets.contains(&w.reference_set) {
        return Some(format!(
            "reference set {} is not one of {:?}",
            w.reference_set, v.reference_sets
        ));
    }
    if !v.tee.is_empty() && !v.tee.contains(&w.tee) {
        return Some(format!("TEE {} is not one of {:?}", w.tee, v.tee));
    }
    if let Some(min) = v.min_tcb {
        match w.tcb {
            Some(t) if t >= min => {}
            Some(t) => return Some(format!("TCB {t} is below {min}")),
            None => return Some(format!("no TCB was attested (at least {min} needed)")),
        }
    }
    None
}

impl Session {
    /// The service `name` if `w` is admitted by one of its variants.
    pub fn admit(&self, name: &str, w: &Workload) -> Result<&Service, CasError> {
        let svc = self
            .services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CasError::NotFound(format!("{}/{name} (service)", self.name)))?;
        let mut why = Vec::new();
        for (i, v) in svc.attestation.iter().enumerate() {
            match fails(v, w) {
                None => return Ok(svc),
                Some(r) => why.push(format!("variant {i}: {r}")),
            }
        }
        Err(CasError::NotAttested(format!(
            "pod {}/{} is not service {} of {}: {}",
            w.namespace,
            w.pod,
            name,
            self.name,
            why.join("; ")
        )))
    }
}
