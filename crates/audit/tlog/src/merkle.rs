//! The Merkle tree of RFC 6962 §2.1 (RFC 9162 §2.1): leaves hashed as `SHA-256(0x00 || d)`,
//! interior nodes as `SHA-256(0x01 || left || right)`, a tree of `n` leaves split at the largest
//! power of two below `n`. [`Tree`] keeps the hash of every complete subtree (level `l`, index
//! `k`: leaves `k·2^l .. (k+1)·2^l`), from which the root of any size up to the tree's, every
//! proof and every tile follow.

use sha2::{Digest, Sha256};

use crate::TlogError;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf (an entry).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry);
    h.finalize().into()
}

/// The hash of an interior node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (`n` ≥ 2).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The hashes of a growing tree.
#[derive(Clone, Debug, Default)]
pub struct Tree {
    /// `levels[l][k]`: the hash of the complete subtree at level `l`, index `k`.
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf by its hash; returns its index.
    pub fn push_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.size();
        let mut h = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() <= level {
                self.levels.push(Vec::new());
            }
            let Some(row) = self.levels.get_mut(level) else {
                break;
            };
            row.push(h);
            let k = row.len();
            // A right child completes its parent.
            if k % 2 == 1 {
                break;
            }
            let (Some(l), Some(r)) = (row.get(k - 2), row.get(k - 1)) else {
                break;
            };
            h = node_hash(l, r);
            level += 1;
        }
        index
    }

    /// Appends an entry; returns its index.
    pub fn push(&mut self, entry: &[u8]) -> u64 {
        self.push_hash(leaf_hash(entry))
    }

    /// The stored hash of the complete subtree at `level`, `index`, if the tree has it.
    pub fn stored(&self, level: u32, index: u64) -> Option<Hash> {
        self.levels
            .get(level as usize)
            .and_then(|row| row.get(usize::try_from(index).ok()?))
            .copied()
    }

    /// The hash of the leaves `lo..hi` (a range RFC 6962's recursion reaches: `lo` a multiple
    /// of the largest power of two not above `hi - lo`).
    fn range(&self, lo: u64, hi: u64) -> Result<Hash, TlogError> {
        let n = hi - lo;
        if n == 0 || hi > self.size() {
            return Err(TlogError::Proof(format!(
                "leaves {lo}..{hi} are not in a tree of {} leaves",
                self.size()
            )));
        }
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            let level = n.trailing_zeros();
            return self
                .stored(level, lo >> level)
                .ok_or_else(|| TlogError::Proof(format!("no hash for leaves {lo}..{hi}")));
        }
        let k = split(n);
        Ok(node_hash(
            &self.range(lo, lo + k)?,
            &self.range(lo + k, hi)?,
        ))
    }

    /// The root of the tree's first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, TlogError> {
        if size == 0 {
            return Ok(empty_root());
        }
        self.range(0, size)
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or_else(|_| empty_root())
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size` leaves
    /// (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, TlogError> {
        if index >= size || size > self.size() {
            return Err(TlogError::Proof(format!(
                "no leaf {index} in a tree of {size} leaves (the log holds {})",
                self.size()
            )));
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out)?;
        Ok(out)
    }

    fn path(&self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), TlogError> {
        if hi - lo <= 1 {
            return Ok(());
        }
        let k = split(hi - lo);
        if m - lo < k {
            self.path(m, lo, lo + k, out)?;
            out.push(self.range(lo + k, hi)?);
        } else {
            self.path(m, lo + k, hi, out)?;
            out.push(self.range(lo, lo + k)?);
        }
        Ok(())
    }

    /// The consistency proof from the tree of `old` leaves to that of `new` (RFC 9162
    /// §2.1.4.1); empty when `old` is 0 or equals `new`.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, TlogError> {
        if old > new || new > self.size() {
            return Err(TlogError::Proof(format!(
                "no consistency proof from {old} to {new} leaves (the log holds {})",
                self.size()
            )));
        }
        let mut out = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut out)?;
        }
        Ok(out)
    }

    fn subproof(
        &self,
        m: u64,
        lo: u64,
        hi: u64,
        complete: bool,
        out: &mut Vec<Hash>,
    ) -> Result<(), TlogError> {
        let n = hi - lo;
        if m == n {
            if !complete {
                out.push(self.range(lo, hi)?);
            }
            return Ok(());
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, lo, lo + k, complete, out)?;
            out.push(self.range(lo + k, hi)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, out)?;
            out.push(self.range(lo, lo + k)?);
        }
        Ok(())
    }
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), TlogError> {
    if index >= size {
        return Err(TlogError::Proof(format!(
            "leaf {index} is not in a tree of {size} leaves"
        )));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return Err(TlogError::Proof(format!(
                "the inclusion proof has more than the {} hashes a tree of {size} needs",
                proof.len() - 1
            )));
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(TlogError::Proof(format!(
            "the inclusion proof of {} hashes is too short for a tree of {size}",
            proof.len()
        )));
    }
    if r != *root {
        return Err(TlogError::Proof(format!(
            "leaf {index} does not lead to the root: computed {}, expected {}",
            hex::encode(r),
            hex::encode(root)
        )));
    }
    Ok(())
}

/// Checks that the tree of `old` leaves with root `old_root` is a prefix of the tree of `new`
/// leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), TlogError> {
    let bad = |why: String| Err(TlogError::Proof(why));
    if old > new {
        return bad(format!(
            "the older tree ({old}) is larger than the newer ({new})"
        ));
    }
    if old == new {
        if !proof.is_empty() {
            return bad("a proof between equal sizes must be empty".into());
        }
        if old_root != new_root {
            return bad(format!(
                "two roots for {old} leaves: {} and {}",
                hex::encode(old_root),
                hex::encode(new_root)
            ));
        }
        return Ok(());
    }
    if old == 0 {
        return if proof.is_empty() {
            Ok(())
        } else {
            bad("a proof from the empty tree must be empty".into())
        };
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return bad("the consistency proof is empty".into());
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return bad("the consistency proof has too many hashes".into());
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return bad("the consistency proof is too short".into());
    }
    if fr != *old_root {
        return bad(format!(
            "the proof does not lead to the older root: computed {}, expected {}",
            hex::encode(fr),
            hex::encode(old_root)
        ));
    }
    if sr != *new_root {
        return bad(format!(
            "the proof does not lead to the newer root: computed {}, expected {}",
            hex::encode(sr),
            hex::encode(new_root)
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    /// MTH straight from RFC 6962's definition, for comparison.
    fn mth(d: &[Vec<u8>]) -> Hash {
        match d.len() {
            0 => empty_root(),
            1 => leaf_hash(&d[0]),
            n => {
                let k = split(n as u64) as usize;
                node_hash(&mth(&d[..k]), &mth(&d[k..]))
            }
        }
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    #[test]
    fn roots_match_the_definition_at_every_size() {
        let d = entries(70);
        let mut t = Tree::new();
        for e in &d {
            t.push(e);
        }
        for n in 0..=70 {
            assert_eq!(t.root_at(n as u64).unwrap(), mth(&d[..n]), "size {n}");
        }
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_changed_one_does_not() {
        let d = entries(33);
        let mut t = Tree::new();
        for e in &d {
            t.push(e);
        }
        for n in 1..=33u64 {
            let root = t.root_at(n).unwrap();
            for i in 0..n {
                let p = t.inclusion_proof(i, n).unwrap();
                let leaf = leaf_hash(&d[i as usize]);
                verify_inclusion(&leaf, i, n, &p, &root).unwrap();
                // Another leaf, another index, a flipped hash, a short or long proof: refused.
                assert!(verify_inclusion(&leaf_hash(b"x"), i, n, &p, &root).is_err());
                if n > 1 {
                    assert!(verify_inclusion(&leaf, (i + 1) % n, n, &p, &root).is_err());
                    let mut q = p.clone();
                    q[0][0] ^= 1;
                    assert!(verify_inclusion(&leaf, i, n, &q, &root).is_err());
                    assert!(verify_inclusion(&leaf, i, n, &p[1..], &root).is_err());
                }
                let mut long = p.clone();
                long.push([0; 32]);
                assert!(verify_inclusion(&leaf, i, n, &long, &root).is_err());
            }
            for m in 0..=n {
                let p = t.consistency_proof(m, n).unwrap();
                let old = t.root_at(m).unwrap();
                verify_consistency(m, n, &p, &old, &root).unwrap();
                if m > 0 && m < n {
                    assert!(verify_consistency(m, n, &p, &leaf_hash(b"x"), &root).is_err());
                    assert!(verify_consistency(m, n, &p, &old, &leaf_hash(b"x")).is_err());
                    let mut q = p.clone();
                    q[0][31] ^= 1;
                    assert!(verify_consistency(m, n, &q, &old, &root).is_err());
                }
            }
        }
        assert!(t.inclusion_proof(33, 33).is_err());
        assert!(t.consistency_proof(3, 34).is_err());
    }

    #[test]
    fn the_rfc_9162_example_tree_of_seven_leaves() {
        // RFC 9162 §2.1.5: the inclusion proof of d0 in the 7-leaf tree is [b, h, l], the
        // consistency proof from 3 to 7 is [c, d, g, l].
        let d = entries(7);
        let mut t = Tree::new();
        for e in &d {
            t.push(e);
        }
        let lh = |i: usize| leaf_hash(&d[i]);
        let (b, c, dd) = (lh(1), lh(2), lh(3));
        let g = node_hash(&lh(0), &lh(1));
        let h = node_hash(&lh(2), &lh(3));
        let l = node_hash(&node_hash(&lh(4), &lh(5)), &lh(6));
        assert_eq!(t.inclusion_proof(0, 7).unwrap(), vec![b, h, l]);
        assert_eq!(t.consistency_proof(3, 7).unwrap(), vec![c, dd, g, l]);
    }
}
