//! Reference values an SNP report is held to.

use serde::{Deserialize, Serialize};
use veil_attest_core::Bytes;
use veil_attest_core::bytes::hex_vec;

use crate::tcb::{Product, TcbComponent, TcbVersion};

/// Minimum security patch level per TCB component; unset components are not checked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MinTcb {
    /// Minimum FMC SPL (Turin).
    #[serde(default)]
    pub fmc: Option<u8>,
    /// Minimum boot loader SPL.
    #[serde(default)]
    pub bootloader: Option<u8>,
    /// Minimum TEE SPL.
    #[serde(default)]
    pub tee: Option<u8>,
    /// Minimum SNP firmware SPL.
    #[serde(default)]
    pub snp: Option<u8>,
    /// Minimum microcode SPL.
    #[serde(default)]
    pub microcode: Option<u8>,
}

impl MinTcb {
    /// The first component of `tcb` below its minimum, as `(component, minimum, found)`.
    pub fn shortfall(&self, tcb: &TcbVersion) -> Option<(TcbComponent, u8, u8)> {
        [
            (TcbComponent::Fmc, self.fmc),
            (TcbComponent::Bootloader, self.bootloader),
            (TcbComponent::Tee, self.tee),
            (TcbComponent::Snp, self.snp),
            (TcbComponent::Microcode, self.microcode),
        ]
        .into_iter()
        .filter_map(|(c, min)| Some((c, min?)))
        .find(|(c, min)| {
            // FMC exists only on Turin; a minimum for it does not apply elsewhere.
            !(*c == TcbComponent::Fmc && tcb.fmc.is_none()) && tcb.get(*c) < *min
        })
        .map(|(c, min)| (c, min, tcb.get(c)))
    }
}

fn default_vmpl() -> Option<u32> {
    Some(0)
}

/// What an SNP report must show to be accepted. The defaults are the secure ones: debug
/// forbidden, VMPL 0 required.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpPolicy {
    /// Accept guests whose policy allows debugging (the hypervisor can then read them).
    #[serde(default)]
    pub allow_debug: bool,
    /// Required VMPL (`null` accepts any).
    #[serde(default = "default_vmpl")]
    pub vmpl: Option<u32>,
    /// Minimum reported TCB per component.
    #[serde(default)]
    pub min_tcb: MinTcb,
    /// Accepted launch measurements (empty: any).
    #[serde(default)]
    pub measurements: Vec<Bytes<48>>,
    /// Required HOST_DATA.
    #[serde(default)]
    pub host_data: Option<Bytes<32>>,
    /// Accepted ID key digests (empty: any).
    #[serde(default)]
    pub id_key_digests: Vec<Bytes<48>>,
    /// Minimum guest SVN.
    #[serde(default)]
    pub min_guest_svn: Option<u32>,
    /// Accepted generations (empty: any).
    #[serde(default)]
    pub products: Vec<Product>,
    /// Whether a VLEK-signed report is acceptable.
    #[serde(default = "yes")]
    pub allow_vlek: bool,
    /// Expected REPORT_DATA: up to 64 bytes, compared as a prefix; the remaining bytes of
    /// the report's field must be zero. Usually given per verification (`--report-data`).
    #[serde(default, with = "opt_hex", skip_serializing_if = "Option::is_none")]
    pub report_data: Option<Vec<u8>>,
}

fn yes() -> bool {
    true
}

impl Default for SnpPolicy {
    fn default() -> Self {
        Self {
            allow_debug: false,
            vmpl: default_vmpl(),
            min_tcb: MinTcb::default(),
            measurements: Vec::new(),
            host_data: None,
            id_key_digests: Vec::new(),
            min_guest_svn: None,
            products: Vec::new(),
            allow_vlek: true,
            report_data: None,
        }
    }
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::hex_vec::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "super::hex_vec")] Vec<u8>);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}
