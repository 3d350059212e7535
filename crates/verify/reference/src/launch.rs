//! Veil's measured launch: which component is measured into which PCR, and the event log
//! that records it. `veil mini` plays this as a node's firmware; `veil measurements compute`
//! derives the reference values from the same inputs, so the two cannot drift apart.
//!
//! The launch is *closed*: after the agent, its configuration and the node image, a
//! separator event is extended into each of their PCRs, and the reference values include it.
//! Whatever is extended later — by a process on the node, or by someone replaying the
//! published digests into a fresh TPM and then carrying on — moves the PCR away from every
//! value the reference values accept. A local node's firmware (`veil mini`) also measures a
//! boot chain into PCRs 0–7, closed by separators, as a real platform's firmware does, so
//! reference values can pin PCRs 0–7 the same way (on hardware: from a known-good node's
//! values, `veil measurements compute --boot-pcrs`).

use std::collections::BTreeMap;

use serde::Serialize;
use veil_attest_core::Bytes;
use veil_attest_tpm::HashAlg;
use veil_attest_tpm::eventlog::{EV_EVENT_TAG, EV_S_CRTM_VERSION, EV_SEPARATOR, Event, EventLog};

/// PCR holding the node agent binary.
pub const PCR_AGENT: u32 = 8;
/// PCR holding the node agent's configuration.
pub const PCR_CONFIG: u32 = 9;
/// PCR holding the node image description.
pub const PCR_IMAGE: u32 = 11;
/// PCR holding the cluster ID once a node has joined (zero before).
pub const PCR_CLUSTER_ID: u32 = 15;
/// PCRs of the platform's boot chain (firmware, its configuration, option ROMs, boot
/// loader, Secure Boot policy), closed by the firmware's separators.
pub const BOOT_PCRS: [u32; 8] = [0, 1, 2, 3, 4, 5, 6, 7];
/// PCRs a node's quote must cover: the boot chain, the launch, the cluster ID.
pub const QUOTED_PCRS: [u32; 12] = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    PCR_AGENT,
    PCR_CONFIG,
    PCR_IMAGE,
    PCR_CLUSTER_ID,
];
/// What the local firmware of `veil mini` records as its version (PCR 0).
pub const LOCAL_FIRMWARE: &[u8] = b"veil-mini local firmware 1 (software TPM, insecure)";
/// Banks Veil measures into.
pub const BANKS: [HashAlg; 2] = [HashAlg::Sha1, HashAlg::Sha256];

/// One measured component (or a separator).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Component {
    /// What it is (`veil-agent`, `agent-config`, `node-image`, `separator`, `firmware`).
    pub name: &'static str,
    /// The event type it is logged as.
    pub event_type: u32,
    /// The event data logged.
    #[serde(skip)]
    pub data: Vec<u8>,
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

fn digests(content: &[u8]) -> (Bytes<32>, Bytes<20>) {
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(&HashAlg::Sha256.hash(&[content]));
    let mut sha1 = [0u8; 20];
    sha1.copy_from_slice(&HashAlg::Sha1.hash(&[content]));
    (Bytes(sha256), Bytes(sha1))
}

fn component(name: &'static str, pcr: u32, content: &[u8]) -> Component {
    let (sha256, sha1) = digests(content);
    Component {
        name,
        event_type: EV_EVENT_TAG,
        data: format!("{name} sha256:{sha256}").into_bytes(),
        pcr,
        sha256,
        sha1,
    }
}

/// An event whose digest is that of its data (a separator, a firmware version).
fn event_of_data(name: &'static str, event_type: u32, pcr: u32, data: &[u8]) -> Component {
    let (sha256, sha1) = digests(data);
    Component {
        name,
        event_type,
        data: data.to_vec(),
        pcr,
        sha256,
        sha1,
    }
}

/// The separator the TCG PC Client profile defines (data 00000000).
fn separator(pcr: u32) -> Component {
    event_of_data("separator", EV_SEPARATOR, pcr, &[0, 0, 0, 0])
}

impl Launch {
    /// Measures the agent binary, its configuration and the node image description, then
    /// closes each of their PCRs with a separator.
    pub fn measure(agent: &[u8], config: &[u8], image: &[u8]) -> Self {
        let mut components = vec![
            component("veil-agent", PCR_AGENT, agent),
            component("agent-config", PCR_CONFIG, config),
            component("node-image", PCR_IMAGE, image),
        ];
        components.extend([PCR_AGENT, PCR_CONFIG, PCR_IMAGE].map(separator));
        Self { components }
    }

    /// What a `veil mini` node's firmware measures: its boot chain (the local firmware's
    /// version into PCR 0, separators into PCRs 0–7), then [`Launch::measure`].
    pub fn local(agent: &[u8], config: &[u8], image: &[u8]) -> Self {
        let mut components = vec![event_of_data(
            "firmware",
            EV_S_CRTM_VERSION,
            0,
            LOCAL_FIRMWARE,
        )];
        components.extend(BOOT_PCRS.map(separator));
        components.extend(Self::measure(agent, config, image).components);
        Self { components }
    }

    /// The event log firmware writes for this launch (crypto-agile, SHA-1 and SHA-256).
    pub fn event_log(&self) -> EventLog {
        let mut log = EventLog::new(BANKS.to_vec());
        for c in &self.components {
            log.events.push(Event {
                pcr: c.pcr,
                event_type: c.event_type,
                digests: vec![
                    (HashAlg::Sha1, c.sha1.0.to_vec()),
                    (HashAlg::Sha256, c.sha256.0.to_vec()),
                ],
                data: c.data.clone(),
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
        data: veil_wire::ids::CLUSTER_ID_EVENT.to_vec(),
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
        assert_eq!(p[&HashAlg::Sha1].len(), 3);
        // Each launch PCR is closed: the component, then a separator.
        let sep = HashAlg::Sha256.hash(&[&[0u8, 0, 0, 0][..]]);
        let closed = |c: &[u8]| {
            let once = HashAlg::Sha256.hash(&[&[0u8; 32], &h(c)]);
            HashAlg::Sha256.hash(&[&once, &sep])
        };
        assert_eq!(p[&HashAlg::Sha256][&PCR_AGENT], closed(b"agent"));
        for e in &l.event_log().events {
            e.check_data().unwrap();
        }
        // A local node's firmware measures a boot chain into PCRs 0-7, closed too.
        let local = Launch::local(b"agent", b"config", b"image").expected_pcrs();
        assert_eq!(local[&HashAlg::Sha256].len(), 11);
        assert_eq!(local[&HashAlg::Sha256][&PCR_AGENT], closed(b"agent"));
        assert_eq!(
            local[&HashAlg::Sha256][&1],
            HashAlg::Sha256.hash(&[&[0u8; 32], &sep])
        );
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
