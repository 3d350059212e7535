//! AMD's root keys, pinned by fingerprint, and the intermediates that ship with Veil.
//!
//! The ARK of each generation is the trust anchor. Its SHA-256 fingerprint is a constant
//! here; the bundled PEM files (AMD KDS `cert_chain` plus the ASVK) are checked against
//! it when loaded, so a changed file cannot move the anchor.

use std::sync::OnceLock;

use veil_attest_core::x509::{CertError, Certificate};

use crate::tcb::Product;

/// SHA-256 fingerprints of AMD's ARK certificates (DER), per generation.
pub const PINNED_ARK_SHA256: [(Product, &str); 3] = [
    (
        Product::Milan,
        "69d063b45344d26a2e94e1f4210de49ef555308287d4c174445c95639a540bcd",
    ),
    (
        Product::Genoa,
        "4c6598d19c18719c5dfd4a7d335f674e5bfe1d8f800cea2cf270c10d103db2f1",
    ),
    (
        Product::Turin,
        "1f084161a44bb6d93778a904877d4819cafa5d05ef4193b2ded9dd9c73dd3f6a",
    ),
];

const BUNDLED: [(Product, &[u8]); 3] = [
    (
        Product::Milan,
        include_bytes!("../../../../testvectors/roots/amd/milan_ask_ark_asvk.pem"),
    ),
    (
        Product::Genoa,
        include_bytes!("../../../../testvectors/roots/amd/genoa_ask_ark_asvk.pem"),
    ),
    (
        Product::Turin,
        include_bytes!("../../../../testvectors/roots/amd/turin_ask_ark_asvk.pem"),
    ),
];

/// The anchor and intermediates of one generation.
#[derive(Debug, Clone)]
pub struct ProductRoots {
    /// Generation.
    pub product: Product,
    /// The ARK (self-signed anchor).
    pub ark: Certificate,
    /// ASK and ASVK.
    pub intermediates: Vec<Certificate>,
}

/// The pinned anchors of every generation.
#[derive(Debug, Clone)]
pub struct AmdRoots {
    products: Vec<ProductRoots>,
}

/// Whether `fingerprint` is the pinned ARK of `product`.
pub fn is_pinned_ark(product: Product, fingerprint: &[u8; 32]) -> bool {
    let hex = hex::encode(fingerprint);
    PINNED_ARK_SHA256
        .iter()
        .any(|(p, f)| *p == product && *f == hex)
}

impl AmdRoots {
    /// The roots bundled with Veil, checked against the pinned fingerprints.
    pub fn pinned() -> Result<&'static AmdRoots, CertError> {
        static ROOTS: OnceLock<Result<AmdRoots, CertError>> = OnceLock::new();
        ROOTS
            .get_or_init(Self::load_bundled)
            .as_ref()
            .map_err(Clone::clone)
    }

    fn load_bundled() -> Result<AmdRoots, CertError> {
        let mut products = Vec::new();
        for (product, pem) in BUNDLED {
            let certs = Certificate::parse_many(pem, "bundled AMD certificate")?;
            let (arks, intermediates): (Vec<_>, Vec<_>) =
                certs.into_iter().partition(Certificate::is_self_issued);
            let ark = arks
                .into_iter()
                .find(|c| is_pinned_ark(product, &c.fingerprint()))
                .ok_or_else(|| CertError::UntrustedRoot {
                    subject: format!("bundled {product} ARK"),
                    fingerprint: "none matches".into(),
                    trusted: "the pinned fingerprint".into(),
                })?;
            ark.verify_signed_by(&ark)?;
            products.push(ProductRoots {
                product,
                ark,
                intermediates,
            });
        }
        Ok(AmdRoots { products })
    }

    /// The roots of one generation.
    pub fn product(&self, product: Product) -> Option<&ProductRoots> {
        self.products.iter().find(|p| p.product == product)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_arks_match_pins_and_self_verify() {
        let roots = AmdRoots::pinned().unwrap();
        for p in Product::ALL {
            let r = roots.product(p).unwrap();
            assert!(
                r.ark.subject().ends_with(&format!("CN=ARK-{p}")),
                "{}",
                r.ark.subject()
            );
            assert_eq!(r.intermediates.len(), 2);
            for i in &r.intermediates {
                i.verify_signed_by(&r.ark).unwrap();
            }
        }
    }

    #[test]
    fn other_generations_ark_is_not_pinned_for_milan() {
        let roots = AmdRoots::pinned().unwrap();
        let genoa = &roots.product(Product::Genoa).unwrap().ark;
        assert!(!is_pinned_ark(Product::Milan, &genoa.fingerprint()));
        assert!(is_pinned_ark(Product::Genoa, &genoa.fingerprint()));
    }
}
