//! Intel's TCB info and QE identity documents, and TCB level matching (as Intel's QVL does it).

use std::fmt;

use serde::{Deserialize, Serialize};
use veil_attest_core::bytes::decode_hex;

/// A TCB status from Intel's collateral.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcbStatus {
    /// Fully patched.
    UpToDate,
    /// Patched; software mitigations are needed against some advisories.
    SWHardeningNeeded,
    /// Patched; platform configuration is needed.
    ConfigurationNeeded,
    /// Both of the above.
    ConfigurationAndSWHardeningNeeded,
    /// Not patched for some advisories.
    OutOfDate,
    /// Not patched, and configuration is needed.
    OutOfDateConfigurationNeeded,
    /// Keys of this TCB are compromised.
    Revoked,
    /// TDX 1.5: launched on an out-of-date TCB, running on an up-to-date one.
    TDRelaunchAdvised,
    /// TDX 1.5: as above, and configuration is needed.
    TDRelaunchAdvisedConfigurationNeeded,
}

impl fmt::Display for TcbStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl TcbStatus {
    /// Converges a platform status with a QE or TDX module status (QVL's rule: only an
    /// out-of-date or revoked component changes the platform status).
    pub fn converge(self, component: TcbStatus) -> TcbStatus {
        use TcbStatus::*;
        match (component, self) {
            (Revoked, _) => Revoked,
            (OutOfDate, UpToDate | SWHardeningNeeded) => OutOfDate,
            (OutOfDate, ConfigurationNeeded | ConfigurationAndSWHardeningNeeded) => {
                OutOfDateConfigurationNeeded
            }
            _ => self,
        }
    }

    /// Combines the launch and current statuses of a TDX 1.5 TD (QVL's relaunch rule).
    pub fn with_current(self, current: TcbStatus) -> TcbStatus {
        use TcbStatus::*;
        let config = |s| {
            matches!(
                s,
                ConfigurationNeeded
                    | OutOfDateConfigurationNeeded
                    | ConfigurationAndSWHardeningNeeded
                    | TDRelaunchAdvisedConfigurationNeeded
            )
        };
        match (self, current) {
            (
                OutOfDate | OutOfDateConfigurationNeeded,
                UpToDate
                | SWHardeningNeeded
                | ConfigurationNeeded
                | ConfigurationAndSWHardeningNeeded,
            ) => {
                if config(self) || config(current) {
                    TDRelaunchAdvisedConfigurationNeeded
                } else {
                    TDRelaunchAdvised
                }
            }
            _ => self,
        }
    }
}

/// A hex string field decoded to bytes of a fixed length.
fn hex_n<const N: usize>(s: &str, field: &'static str) -> Result<[u8; N], String> {
    let v = decode_hex(s).map_err(|e| format!("{field}: {e}"))?;
    v.as_slice()
        .try_into()
        .map_err(|_| format!("{field}: expected {N} bytes, found {}", v.len()))
}

/// One SVN component of a TCB level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Minimum SVN.
    pub svn: u8,
    /// Category (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// Type (informational).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The SVNs of a TCB level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tcb {
    /// 16 SGX components (CPUSVN).
    pub sgxtcbcomponents: Vec<Component>,
    /// 16 TDX components (TEE_TCB_SVN), TDX only.
    #[serde(default)]
    pub tdxtcbcomponents: Vec<Component>,
    /// PCE SVN.
    pub pcesvn: u16,
}

/// A TCB level.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbLevel {
    /// Minimum SVNs.
    pub tcb: Tcb,
    /// Date of the level.
    pub tcb_date: String,
    /// Status.
    pub tcb_status: TcbStatus,
    /// Advisories that apply.
    #[serde(rename = "advisoryIDs", default)]
    pub advisory_ids: Vec<String>,
}

/// The base TDX module identity of a TCB info.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModule {
    /// Expected MRSIGNERSEAM.
    pub mrsigner: String,
    /// Expected SEAMATTRIBUTES.
    pub attributes: String,
    /// Mask for SEAMATTRIBUTES.
    pub attributes_mask: String,
}

/// The SVN of an ISV-style TCB level (QE or TDX module).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IsvSvn {
    /// Minimum ISVSVN.
    pub isvsvn: u16,
}

/// A TCB level of the QE identity or of a TDX module identity, by ISVSVN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IsvTcbLevel {
    /// Minimum ISVSVN.
    pub tcb: IsvSvn,
    /// Date.
    pub tcb_date: String,
    /// Status.
    pub tcb_status: TcbStatus,
    /// Advisories.
    #[serde(rename = "advisoryIDs", default)]
    pub advisory_ids: Vec<String>,
}

/// A TDX module identity (per module major version).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TdxModuleIdentity {
    /// `TDX_<major version, 2 hex digits>`.
    pub id: String,
    /// Expected MRSIGNERSEAM.
    pub mrsigner: String,
    /// Expected SEAMATTRIBUTES.
    pub attributes: String,
    /// Mask.
    pub attributes_mask: String,
    /// Levels by module ISVSVN.
    pub tcb_levels: Vec<IsvTcbLevel>,
}

/// Intel's TCB info (version 3), for one FMSPC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcbInfo {
    /// `SGX` or `TDX`.
    pub id: String,
    /// Format version (3).
    pub version: u32,
    /// Issue date.
    pub issue_date: String,
    /// Next update.
    pub next_update: String,
    /// FMSPC (hex).
    pub fmspc: String,
    /// PCE ID (hex).
    pub pce_id: String,
    /// TCB type.
    pub tcb_type: u32,
    /// TCB evaluation data number.
    pub tcb_evaluation_data_number: u32,
    /// Base TDX module identity.
    #[serde(default)]
    pub tdx_module: Option<TdxModule>,
    /// Module identities per major version.
    #[serde(default)]
    pub tdx_module_identities: Vec<TdxModuleIdentity>,
    /// Levels.
    pub tcb_levels: Vec<TcbLevel>,
}

/// Intel's QE identity (version 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QeIdentity {
    /// `QE` (SGX) or `TD_QE` (TDX).
    pub id: String,
    /// Format version.
    pub version: u32,
    /// Issue date.
    pub issue_date: String,
    /// Next update.
    pub next_update: String,
    /// TCB evaluation data number.
    pub tcb_evaluation_data_number: u32,
    /// Expected MISCSELECT (hex).
    pub miscselect: String,
    /// Mask (hex).
    pub miscselect_mask: String,
    /// Expected ATTRIBUTES (hex).
    pub attributes: String,
    /// Mask (hex).
    pub attributes_mask: String,
    /// Expected MRSIGNER (hex).
    pub mrsigner: String,
    /// Expected ISVPRODID.
    pub isvprodid: u16,
    /// Levels by ISVSVN.
    pub tcb_levels: Vec<IsvTcbLevel>,
}

/// Decoded, checked binary fields of a QE identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QeExpectations {
    /// MISCSELECT.
    pub miscselect: u32,
    /// Its mask.
    pub miscselect_mask: u32,
    /// ATTRIBUTES.
    pub attributes: [u8; 16],
    /// Its mask.
    pub attributes_mask: [u8; 16],
    /// MRSIGNER.
    pub mrsigner: [u8; 32],
}

impl QeIdentity {
    /// Decodes the hex fields.
    pub fn expectations(&self) -> Result<QeExpectations, String> {
        Ok(QeExpectations {
            miscselect: u32::from_le_bytes(hex_n(&self.miscselect, "miscselect")?),
            miscselect_mask: u32::from_le_bytes(hex_n(&self.miscselect_mask, "miscselectMask")?),
            attributes: hex_n(&self.attributes, "attributes")?,
            attributes_mask: hex_n(&self.attributes_mask, "attributesMask")?,
            mrsigner: hex_n(&self.mrsigner, "mrsigner")?,
        })
    }
}

/// Decoded module identity fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleExpectations {
    /// MRSIGNERSEAM.
    pub mrsigner: [u8; 48],
    /// SEAMATTRIBUTES.
    pub attributes: [u8; 8],
    /// Mask.
    pub attributes_mask: [u8; 8],
}

impl ModuleExpectations {
    /// From the hex fields.
    pub fn decode(mrsigner: &str, attributes: &str, mask: &str) -> Result<Self, String> {
        Ok(Self {
            mrsigner: hex_n(mrsigner, "mrsigner")?,
            attributes: hex_n(attributes, "attributes")?,
            attributes_mask: hex_n(mask, "attributesMask")?,
        })
    }
}

/// Why no TCB level could be matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoTcbLevel {
    /// For the highest-ranked level: the first component the platform falls short of.
    pub first_shortfall: Option<String>,
}

impl TcbInfo {
    /// Levels sorted as QVL sorts them: SGX components, then PCE SVN, then TDX components,
    /// each highest first.
    pub fn sort_levels(&mut self) {
        let key = |l: &TcbLevel| {
            (
                l.tcb
                    .sgxtcbcomponents
                    .iter()
                    .map(|c| c.svn)
                    .collect::<Vec<_>>(),
                l.tcb.pcesvn,
                l.tcb
                    .tdxtcbcomponents
                    .iter()
                    .map(|c| c.svn)
                    .collect::<Vec<_>>(),
            )
        };
        self.tcb_levels.sort_by_key(|l| std::cmp::Reverse(key(l)));
    }

    /// The first level the platform meets. For TDX, TEE_TCB_SVN components 0 and 1 are left
    /// to the module identity when the module major version (`tee_tcb_svn[1]`) is non-zero.
    pub fn match_level(
        &self,
        cpu_svn: &[u8; 16],
        pce_svn: u16,
        tee_tcb_svn: Option<&[u8; 16]>,
    ) -> Result<&TcbLevel, NoTcbLevel> {
        let mut first_shortfall = None;
        for level in &self.tcb_levels {
            match shortfall(level, cpu_svn, pce_svn, tee_tcb_svn) {
                None => return Ok(level),
                Some(s) => {
                    first_shortfall.get_or_insert(s);
                }
            }
        }
        Err(NoTcbLevel { first_shortfall })
    }

    /// The module identity selected by `tee_tcb_svn[1]` (None for version 0).
    pub fn module_identity(
        &self,
        tee_tcb_svn: &[u8; 16],
    ) -> Result<Option<&TdxModuleIdentity>, String> {
        let version = tee_tcb_svn[1];
        if version == 0 {
            return Ok(None);
        }
        let want = format!("TDX_{version:02X}");
        self.tdx_module_identities
            .iter()
            .find(|m| m.id.eq_ignore_ascii_case(&want))
            .map(Some)
            .ok_or_else(|| format!("no TDX module identity `{want}` in the TCB info"))
    }
}

fn shortfall(
    level: &TcbLevel,
    cpu_svn: &[u8; 16],
    pce_svn: u16,
    tee_tcb_svn: Option<&[u8; 16]>,
) -> Option<String> {
    if level.tcb.sgxtcbcomponents.len() != 16 {
        return Some(format!(
            "level has {} SGX components, expected 16",
            level.tcb.sgxtcbcomponents.len()
        ));
    }
    for (i, (have, need)) in cpu_svn.iter().zip(&level.tcb.sgxtcbcomponents).enumerate() {
        if *have < need.svn {
            return Some(format!(
                "SGX TCB component {} SVN {have} < {}",
                i + 1,
                need.svn
            ));
        }
    }
    if pce_svn < level.tcb.pcesvn {
        return Some(format!("PCESVN {pce_svn} < {}", level.tcb.pcesvn));
    }
    if let Some(tee) = tee_tcb_svn {
        if level.tcb.tdxtcbcomponents.len() != 16 {
            return Some(format!(
                "level has {} TDX components, expected 16",
                level.tcb.tdxtcbcomponents.len()
            ));
        }
        let skip = if tee[1] > 0 { 2 } else { 0 };
        for (i, (have, need)) in tee
            .iter()
            .zip(&level.tcb.tdxtcbcomponents)
            .enumerate()
            .skip(skip)
        {
            if *have < need.svn {
                return Some(format!(
                    "TDX TCB component {} SVN {have} < {}",
                    i + 1,
                    need.svn
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::TcbStatus::*;

    #[test]
    fn convergence_follows_qvl() {
        assert_eq!(UpToDate.converge(OutOfDate), OutOfDate);
        assert_eq!(
            ConfigurationNeeded.converge(OutOfDate),
            OutOfDateConfigurationNeeded
        );
        assert_eq!(SWHardeningNeeded.converge(UpToDate), SWHardeningNeeded);
        assert_eq!(UpToDate.converge(Revoked), Revoked);
        assert_eq!(OutOfDate.with_current(UpToDate), TDRelaunchAdvised);
        assert_eq!(
            OutOfDate.with_current(ConfigurationNeeded),
            TDRelaunchAdvisedConfigurationNeeded
        );
        assert_eq!(UpToDate.with_current(OutOfDate), UpToDate);
    }
}
