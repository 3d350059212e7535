//! The reference-values document: one or more named measurement sets, each giving the PCR
//! values expected per node role. Several sets are valid at once, so an upgrade adds the new
//! set before nodes move to it and removes the old one after: no running node is locked out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veil_attest_tpm::{HashAlg, OneOrMany, TpmClaims, TpmPolicy, TpmPolicyViolation, check_policy};

use crate::launch::Launch;

/// Format version written and accepted.
pub const VERSION: u32 = 1;

/// A reference-values document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceValues {
    /// Format version (1).
    pub version: u32,
    /// Accept TPMs whose EK chains to a local, software manufacturer CA (swtpm). Such roots
    /// prove nothing about hardware; `veil mini` sets this, production documents must not.
    #[serde(default)]
    pub insecure_local_roots: bool,
    /// Accepted TPM manufacturer roots (PEM).
    #[serde(default)]
    pub tpm_roots: Vec<String>,
    /// The measurement sets; evidence matching any one of them is accepted.
    pub sets: Vec<MeasurementSet>,
}

/// One accepted software version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementSet {
    /// Name shown in verdicts (e.g. the release).
    pub name: String,
    /// Expected TPM PCRs per node role (`control-plane`, `worker`).
    pub roles: BTreeMap<String, TpmPolicy>,
}

/// Why a document is not acceptable as such.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DocumentError {
    /// Not YAML/JSON of the right shape.
    #[error("reference values: {0}")]
    Parse(String),
    /// Wrong version.
    #[error("reference values: version: expected {VERSION}, found {0}")]
    Version(u32),
    /// Nothing to accept.
    #[error("reference values: no measurement sets")]
    Empty,
    /// Two sets share a name.
    #[error("reference values: set `{0}` appears twice")]
    DuplicateSet(String),
}

/// No set accepts the evidence; the reason per set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no reference-value set accepts this node: {}", .reasons.iter().map(|(s, r)| format!("set `{s}`: {r}")).collect::<Vec<_>>().join("; "))]
pub struct NoSetMatches {
    /// (set name, reason).
    pub reasons: Vec<(String, String)>,
}

impl ReferenceValues {
    /// Parses and validates YAML or JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self, DocumentError> {
        let d: Self =
            serde_norway::from_slice(bytes).map_err(|e| DocumentError::Parse(e.to_string()))?;
        d.validate()?;
        Ok(d)
    }

    fn validate(&self) -> Result<(), DocumentError> {
        if self.version != VERSION {
            return Err(DocumentError::Version(self.version));
        }
        if self.sets.is_empty() {
            return Err(DocumentError::Empty);
        }
        for (i, s) in self.sets.iter().enumerate() {
            if self.sets.iter().skip(i + 1).any(|t| t.name == s.name) {
                return Err(DocumentError::DuplicateSet(s.name.clone()));
            }
        }
        Ok(())
    }

    /// YAML text of the document.
    pub fn to_yaml(&self) -> Result<String, DocumentError> {
        serde_norway::to_string(self).map_err(|e| DocumentError::Parse(e.to_string()))
    }

    /// Adds (or replaces) a set.
    pub fn upsert(&mut self, set: MeasurementSet) {
        self.sets.retain(|s| s.name != set.name);
        self.sets.push(set);
    }

    /// The name of the first set whose `role` values the quote's PCRs meet.
    pub fn evaluate_tpm(&self, role: &str, claims: &TpmClaims) -> Result<&str, NoSetMatches> {
        let mut reasons = Vec::new();
        for set in &self.sets {
            let Some(policy) = set.roles.get(role) else {
                reasons.push((set.name.clone(), format!("no values for role `{role}`")));
                continue;
            };
            match check_policy(claims, policy) {
                Ok(()) => return Ok(&set.name),
                Err(e) => reasons.push((set.name.clone(), e.to_string())),
            }
        }
        Err(NoSetMatches { reasons })
    }
}

impl MeasurementSet {
    /// The set a launch produces, for the given roles: every quoted PCR pinned in both banks.
    pub fn from_launch(name: &str, launch: &Launch, roles: &[&str]) -> Self {
        let mut pcrs: BTreeMap<HashAlg, BTreeMap<u32, OneOrMany>> = BTreeMap::new();
        for (bank, values) in launch.expected_pcrs() {
            for (pcr, v) in values {
                pcrs.entry(bank).or_default().insert(pcr, OneOrMany::One(v));
            }
        }
        let policy = TpmPolicy {
            pcrs,
            ..TpmPolicy::default()
        };
        Self {
            name: name.to_string(),
            roles: roles
                .iter()
                .map(|r| (r.to_string(), policy.clone()))
                .collect(),
        }
    }
}

impl MeasurementSet {
    /// Pins PCRs 0-7 (the platform's boot chain) in every role to `values` (as read from a
    /// known-good node); returns how many values were pinned per role.
    pub fn pin_boot_chain(&mut self, values: &veil_attest_tpm::PcrValues) -> usize {
        let mut pinned = 0;
        for policy in self.roles.values_mut() {
            pinned = 0;
            for ((bank, index), v) in values {
                if crate::launch::BOOT_PCRS.contains(index) {
                    policy
                        .pcrs
                        .entry(*bank)
                        .or_default()
                        .insert(*index, OneOrMany::One(v.clone()));
                    pinned += 1;
                }
            }
        }
        pinned
    }
}

/// The TPM policy violation of the best-matching set, for callers that want the typed reason.
pub fn first_violation(
    doc: &ReferenceValues,
    role: &str,
    claims: &TpmClaims,
) -> Option<TpmPolicyViolation> {
    doc.sets
        .iter()
        .filter_map(|s| s.roles.get(role))
        .find_map(|p| check_policy(claims, p).err())
}
