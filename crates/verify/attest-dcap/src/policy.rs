//! Reference values for TDX and SGX quotes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use veil_attest_core::Bytes;

use crate::tcb::TcbStatus;

fn default_statuses() -> Vec<TcbStatus> {
    vec![
        TcbStatus::UpToDate,
        TcbStatus::SWHardeningNeeded,
        TcbStatus::ConfigurationNeeded,
        TcbStatus::ConfigurationAndSWHardeningNeeded,
    ]
}

/// What a DCAP quote must show to be accepted. Defaults: debug forbidden; TCB statuses
/// accepted are those Intel's QVL does not call terminal or out of date (UpToDate,
/// SWHardeningNeeded, ConfigurationNeeded, ConfigurationAndSWHardeningNeeded). Revoked is
/// refused whatever this says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcapPolicy {
    /// Accepted TCB statuses.
    #[serde(default = "default_statuses")]
    pub accepted_statuses: Vec<TcbStatus>,
    /// Advisories that make a quote unacceptable.
    #[serde(default)]
    pub rejected_advisories: Vec<String>,
    /// Accept debug TDs/enclaves.
    #[serde(default)]
    pub allow_debug: bool,
    /// Accepted MRTD values (TDX; empty: any).
    #[serde(default)]
    pub mr_td: Vec<Bytes<48>>,
    /// Accepted values per RTMR index 0-3 (TDX).
    #[serde(default)]
    pub rtmr: BTreeMap<u8, Vec<Bytes<48>>>,
    /// Required MRCONFIGID (TDX).
    #[serde(default)]
    pub mr_config_id: Option<Bytes<48>>,
    /// Required MROWNER (TDX).
    #[serde(default)]
    pub mr_owner: Option<Bytes<48>>,
    /// Required MROWNERCONFIG (TDX).
    #[serde(default)]
    pub mr_owner_config: Option<Bytes<48>>,
    /// Accepted MRENCLAVE values (SGX; empty: any).
    #[serde(default)]
    pub mr_enclave: Vec<Bytes<32>>,
    /// Accepted MRSIGNER values (SGX; empty: any).
    #[serde(default)]
    pub mr_signer: Vec<Bytes<32>>,
    /// Required ISVPRODID (SGX).
    #[serde(default)]
    pub isv_prod_id: Option<u16>,
    /// Minimum ISVSVN (SGX).
    #[serde(default)]
    pub min_isv_svn: Option<u16>,
    /// Expected REPORTDATA, up to 64 bytes, compared as a prefix (the rest must be zero).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report_data: Option<HexBytes>,
}

/// Bytes written as hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HexBytes(#[serde(with = "veil_attest_core::bytes::hex_vec")] pub Vec<u8>);

impl Default for DcapPolicy {
    fn default() -> Self {
        Self {
            accepted_statuses: default_statuses(),
            rejected_advisories: Vec::new(),
            allow_debug: false,
            mr_td: Vec::new(),
            rtmr: BTreeMap::new(),
            mr_config_id: None,
            mr_owner: None,
            mr_owner_config: None,
            mr_enclave: Vec::new(),
            mr_signer: Vec::new(),
            isv_prod_id: None,
            min_isv_svn: None,
            report_data: None,
        }
    }
}
