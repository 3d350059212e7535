//! Veil's measured launch: which component is measured into which PCR, and the event log
//! that records it. `veil mini` plays this as a node's firmware; `veil measurements compute`
//! derives the reference values from the same inputs, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde::Serialize;
use veil_attest_core::Bytes;
use veil_attest_tpm::HashAlg;
use veil_attest_tpm::eventlog::{EV_EVENT_TAG, Event, EventLog};

/// PCR holding the node agent binary.
pub const PCR_AGENT: u32 = 8;
/// PCR holding the node agent's configuration.
pub const PCR_CONFIG: u32 = 9;
/// PCR holding the node image description.
pub const PCR_IMAGE: u32 = 11;
/// PCR holding the cluster ID once a node has joined (zero before).
pub const PCR_CLUSTER_ID: u32 = 15;
/// PCRs a node's quote must cover.
pub const QUOTED_PCRS: [u32; 4] = [PCR_AGENT, PCR_CONFIG, PCR_IMAGE, PCR_CLUSTER_ID];
/// Banks Veil measures into.
pub const BANKS: [HashAlg; 2] = [HashAlg::Sha1, HashAlg::Sha256];

/// One measured component.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Component {
    /// What it is (`veil-agent`, `agent-config`, `node-image`).
    pub name: &'static str,
    /// PCR it is extended into.
    pub pcr: u32,
    /// SHA-256 of the component.
    pub sha256: Bytes<32>,
    /// SHA-1 of the component (for the SHA-1 bank).
    pub sha1: Bytes<20>,
}

/// The components of one node launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Launch {
    /// In measurement order.
    pub components: Vec<Component>,
}

fn component(name: &'static str, pcr: u32, content: &[u8]) -> Component {
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&HashAlg::Sha256.hash(&[content]));
    let mut sha1 = [0u8; 20];
    sha1.copy_from_slice(&HashAlg::Sha1.hash(&[content]));
    Component {
        name,
        pcr,
        sha256: Bytes(sha256),
        sha1: Bytes(sha1),
    }
}

impl Launch {
    /// Measures the agent binary, its configuration and the node image description.
    pub fn measure(agent: &[u8], config: &[u8], image: &[u8]) -> Self {
        Self {
            components: vec![
                component("veil-agent", PCR_AGENT, agent),
                component("agent-config", PCR_CONFIG, config),
                component("node-image", PCR_IMAGE, image),
            ],
        }
    }

    /// The event log firmware writes for this launch (crypto-agile, SHA-1 and SHA-256).
    pub fn event_log(&self) -> EventLog {
        let mut log = EventLog::new(BANKS.to_vec());
        for c in &self.components {
            log.events.push(Event {
                pcr: c.pcr,
                event_type: EV_EVENT_TAG,
                digests: vec![
                    (HashAlg::Sha1, c.sha1.0.to_vec()),
                    (HashAlg::Sha256, c.sha256.0.to_vec()),
                ],
                data: format!("{} sha256:{}", c.name, c.sha256).into_bytes(),
            });
        }
        log
    }

    /// The launch PCR values (agent, config, image) of a node launched this way:
    /// bank → PCR → value. The cluster-ID PCR is not part of the launch; see [`cluster_pcr`].
    pub fn expected_pcrs(&self) -> BTreeMap<HashAlg, BTreeMap<u32, Vec<u8>>> {
        let mut out: BTreeMap<HashAlg, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
        for ((bank, pcr), v) in self.event_log().replay() {
            out.entry(bank).or_default().insert(pcr, v);
        }
        out
    }
}

/// Checks that the launch recorded in `log` measured exactly `config` as the agent's
/// configuration (PCR 9): what an agent loaded is what its firmware measured.
pub fn check_config_measured(log: &EventLog, config: &[u8]) -> Result<(), String> {
    let want = HashAlg::Sha256.hash(&[config]);
    let found: Vec<String> = log
        .events
        .iter()
        .filter(|e| e.pcr == PCR_CONFIG && e.event_type == EV_EVENT_TAG)
        .flat_map(|e| e.digests.iter())
        .filter(|(b, _)| *b == HashAlg::Sha256)
        .map(|(_, d)| hex::encode(d))
        .collect();
    if found.contains(&hex::encode(&want)) {
        return Ok(());
    }
    Err(format!(
        "PCR {PCR_CONFIG} (agent configuration): the configuration loaded hashes to sha256:{}, the event log measured {}",
        hex::encode(want),
        if found.is_empty() {
            "nothing".to_string()
        } else {
            found.join(", ")
        }
    ))
}

/// The event a node appends to its log when it extends the cluster ID into [`PCR_CLUSTER_ID`].
pub fn cluster_event(cluster_id: &[u8]) -> Event {
    Event {
        pcr: PCR_CLUSTER_ID,
        event_type: EV_EVENT_TAG,
        digests: BANKS.iter().map(|b| (*b, b.hash(&[cluster_id]))).collect(),
        data: b"veil-cluster-id".to_vec(),
    }
}

/// The value of the cluster-ID PCR: zero for a node that belongs to no cluster, else the
/// single extension by the digest of the cluster ID.
pub fn cluster_pcr(bank: HashAlg, cluster_id: Option<&[u8]>) -> Vec<u8> {
    let zero = vec![0u8; bank.digest_len()];
    match cluster_id {
        None => zero,
        Some(id) => bank.hash(&[&zero, &bank.hash(&[id])]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_pcrs_follow_the_extend_rule() {
        let l = Launch::measure(b"agent", b"config", b"image");
        let p = l.expected_pcrs();
        let h = |d: &[u8]| HashAlg::Sha256.hash(&[d]);
        assert_eq!(
            p[&HashAlg::Sha256][&PCR_AGENT],
            HashAlg::Sha256.hash(&[&[0u8; 32], &h(b"agent")])
        );
        assert_eq!(p[&HashAlg::Sha1].len(), 3);
        assert_eq!(cluster_pcr(HashAlg::Sha256, None), vec![0; 32]);
        assert_ne!(cluster_pcr(HashAlg::Sha256, Some(b"id")), vec![0; 32]);
        // Another config changes exactly the config PCR.
        let q = Launch::measure(b"agent", b"config2", b"image").expected_pcrs();
        for pcr in [PCR_AGENT, PCR_CONFIG, PCR_IMAGE] {
            assert_eq!(
                p[&HashAlg::Sha256][&pcr] == q[&HashAlg::Sha256][&pcr],
                pcr != PCR_CONFIG,
                "PCR {pcr}"
            );
        }
    }
}
