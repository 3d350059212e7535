//! Processor generations and the TCB_VERSION encoding, which differs between them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An AMD EPYC generation with SEV-SNP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Product {
    /// EPYC 7003 (family 19h, models 00h-0Fh).
    Milan,
    /// EPYC 9004/8004 (family 19h, models 10h-1Fh and A0h-AFh).
    Genoa,
    /// EPYC 9005 (family 1Ah, models 00h-11h).
    Turin,
}

impl Product {
    /// All generations Veil knows.
    pub const ALL: [Product; 3] = [Product::Milan, Product::Genoa, Product::Turin];

    /// The generation for a CPUID family/model pair, as SNP reports v3+ carry it.
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model) {
            (0x19, 0x00..=0x0f) => Some(Product::Milan),
            (0x19, 0x10..=0x1f | 0xa0..=0xaf) => Some(Product::Genoa),
            (0x1a, 0x00..=0x11) => Some(Product::Turin),
            _ => None,
        }
    }

    /// The generation named by a VCEK/VLEK `productName` extension ("Milan-B0", "Genoa", ...).
    pub fn from_cert_name(name: &str) -> Option<Self> {
        let base = name.split('-').next().unwrap_or_default();
        Self::ALL.into_iter().find(|p| p.name() == base)
    }

    /// AMD's name for the generation.
    pub fn name(self) -> &'static str {
        match self {
            Product::Milan => "Milan",
            Product::Genoa => "Genoa",
            Product::Turin => "Turin",
        }
    }

    /// Length of the hwID extension of a VCEK for this generation.
    pub fn hwid_len(self) -> usize {
        match self {
            Product::Turin => 8,
            Product::Milan | Product::Genoa => 64,
        }
    }
}

impl fmt::Display for Product {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Security patch levels of the firmware components, decoded for one generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TcbVersion {
    /// Firmware "FMC" SPL (Turin and later only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

/// One component of a [`TcbVersion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TcbComponent {
    /// FMC.
    Fmc,
    /// Boot loader.
    Bootloader,
    /// TEE.
    Tee,
    /// SNP firmware.
    Snp,
    /// Microcode.
    Microcode,
}

impl fmt::Display for TcbComponent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TcbComponent::Fmc => "fmc",
            TcbComponent::Bootloader => "bootloader",
            TcbComponent::Tee => "tee",
            TcbComponent::Snp => "snp",
            TcbComponent::Microcode => "microcode",
        })
    }
}

impl TcbVersion {
    /// Decodes the 8-byte TCB_VERSION for `product` (Turin moved the fields and added FMC).
    pub fn decode(raw: [u8; 8], product: Product) -> Self {
        match product {
            Product::Turin => Self {
                fmc: Some(raw[0]),
                bootloader: raw[1],
                tee: raw[2],
                snp: raw[3],
                microcode: raw[7],
            },
            Product::Milan | Product::Genoa => Self {
                fmc: None,
                bootloader: raw[0],
                tee: raw[1],
                snp: raw[6],
                microcode: raw[7],
            },
        }
    }

    /// The components with their values, in a fixed order.
    pub fn components(&self) -> impl Iterator<Item = (TcbComponent, u8)> + use<> {
        [
            self.fmc.map(|v| (TcbComponent::Fmc, v)),
            Some((TcbComponent::Bootloader, self.bootloader)),
            Some((TcbComponent::Tee, self.tee)),
            Some((TcbComponent::Snp, self.snp)),
            Some((TcbComponent::Microcode, self.microcode)),
        ]
        .into_iter()
        .flatten()
    }

    /// The value of one component (FMC reads as 0 where the generation has none).
    pub fn get(&self, c: TcbComponent) -> u8 {
        match c {
            TcbComponent::Fmc => self.fmc.unwrap_or(0),
            TcbComponent::Bootloader => self.bootloader,
            TcbComponent::Tee => self.tee,
            TcbComponent::Snp => self.snp,
            TcbComponent::Microcode => self.microcode,
        }
    }
}

impl fmt::Display for TcbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(fmc) = self.fmc {
            write!(f, "fmc={fmc} ")?;
        }
        write!(
            f,
            "bl={} tee={} snp={} ucode={}",
            self.bootloader, self.tee, self.snp, self.microcode
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_both_layouts() {
        let raw = [0x03, 0, 0, 0, 0, 0, 0x08, 0x73];
        let t = TcbVersion::decode(raw, Product::Milan);
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode), (3, 0, 8, 115));
        let t = TcbVersion::decode([1, 2, 3, 4, 0, 0, 0, 9], Product::Turin);
        assert_eq!(t.fmc, Some(1));
        assert_eq!((t.bootloader, t.tee, t.snp, t.microcode), (2, 3, 4, 9));
    }

    #[test]
    fn products_from_cpuid_and_names() {
        assert_eq!(Product::from_cpuid(0x19, 0x01), Some(Product::Milan));
        assert_eq!(Product::from_cpuid(0x19, 0xa0), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x19, 0x11), Some(Product::Genoa));
        assert_eq!(Product::from_cpuid(0x1a, 0x02), Some(Product::Turin));
        assert_eq!(Product::from_cpuid(0x17, 0x01), None);
        assert_eq!(Product::from_cert_name("Milan-B0"), Some(Product::Milan));
        assert_eq!(Product::from_cert_name("Turin"), Some(Product::Turin));
        assert_eq!(Product::from_cert_name("Naples"), None);
    }
}
