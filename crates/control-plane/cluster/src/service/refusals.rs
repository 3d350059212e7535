//! Every refusal a control plane makes, aggregated so that it cannot be flushed: one entry per
//! source, attestation key and kind, with when it was first and last seen and how often. An
//! entry stays — across restarts — until the owner acknowledges it; a flood of distinct
//! refusals fills a bounded table and then one overflow entry, never evicting what was there.

use serde::{Deserialize, Serialize};
pub use veil_wire::report::Refusal;

/// Entries kept before new kinds of refusal go to the overflow entry.
pub const MAX_ENTRIES: usize = 256;
/// Longest reason kept (the latest one of an entry).
pub const MAX_REASON: usize = 600;
/// The source of the overflow entry.
pub const OVERFLOW: &str = "(other sources)";

/// A reason with its variable parts (hex strings, numbers) replaced by `#`: refusals that say
/// the same thing about different nonces, keys or times aggregate into one entry.
pub fn reason_class(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 8 || (!run.is_empty() && run.chars().all(|c| c.is_ascii_digit())) {
            out.push('#');
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in reason.chars() {
        if c.is_ascii_hexdigit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The aggregated refusals of one control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Refusals(Vec<Refusal>);

fn truncated(reason: &str) -> String {
    if reason.len() <= MAX_REASON {
        return reason.to_string();
    }
    let mut end = MAX_REASON;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", reason.get(..end).unwrap_or_default())
}

impl Refusals {
    /// Records one refusal at `now`; returns whether it made a new entry.
    pub fn record(
        &mut self,
        source: &str,
        ak: Option<String>,
        kind: &str,
        reason: &str,
        now: i64,
    ) -> bool {
        let reason = truncated(reason);
        let class = reason_class(&reason);
        let same = |r: &Refusal, source: &str, ak: &Option<String>, kind: &str, class: &str| {
            r.source == source && r.ak_spki_sha256 == *ak && r.kind == kind && r.class == class
        };
        let known = self.0.iter().any(|r| same(r, source, &ak, kind, &class));
        let (source, ak, kind, class) = if known || self.0.len() < MAX_ENTRIES {
            (source.to_string(), ak, kind.to_string(), class)
        } else {
            (
                OVERFLOW.to_string(),
                None,
                "overflow".to_string(),
                String::new(),
            )
        };
        match self
            .0
            .iter_mut()
            .find(|r| same(r, &source, &ak, &kind, &class))
        {
            Some(r) => {
                r.reason = reason;
                r.last_seen = now;
                r.count = r.count.saturating_add(1);
                false
            }
            None => {
                self.0.push(Refusal {
                    source,
                    ak_spki_sha256: ak,
                    kind,
                    reason,
                    class,
                    first_seen: now,
                    last_seen: now,
                    count: 1,
                });
                true
            }
        }
    }

    /// Takes in the entries of `other` (a copy kept elsewhere): an entry both hold keeps the
    /// larger count and the wider span of times; one only `other` holds is added while there
    /// is room.
    pub fn merge(&mut self, other: Self) {
        for o in other.0 {
            let same = |r: &Refusal| {
                r.source == o.source
                    && r.ak_spki_sha256 == o.ak_spki_sha256
                    && r.kind == o.kind
                    && r.class == o.class
            };
            let room = self.0.len() < MAX_ENTRIES;
            match self.0.iter_mut().find(|r| same(r)) {
                Some(r) => {
                    r.count = r.count.max(o.count);
                    r.first_seen = r.first_seen.min(o.first_seen);
                    if o.last_seen > r.last_seen {
                        r.last_seen = o.last_seen;
                        r.reason = o.reason;
                    }
                }
                None if room => self.0.push(o),
                None => {}
            }
        }
    }

    /// Forgets the entries last seen at or before `up_to` (the owner acknowledged them);
    /// returns how many.
    pub fn acknowledge(&mut self, up_to: i64) -> usize {
        let before = self.0.len();
        self.0.retain(|r| r.last_seen > up_to);
        before - self.0.len()
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[Refusal] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retrying_node_is_one_entry_and_cannot_flush_the_others() {
        let mut r = Refusals::default();
        assert!(r.record("10.0.0.9", None, "tls", "junk", 1));
        for t in 0..10_000 {
            let new = r.record(
                "10.0.0.5",
                Some("ak".into()),
                "join",
                &format!("try {t}"),
                10 + t,
            );
            assert_eq!(new, t == 0, "only the first retry makes an entry");
        }
        assert_eq!(r.entries().len(), 2);
        assert_eq!(
            r.entries()[0].reason,
            "junk",
            "the first refusal is still there"
        );
        assert_eq!(r.entries()[1].count, 10_000);
        assert_eq!(r.entries()[1].first_seen, 10);
        assert_eq!(r.entries()[1].reason, "try 9999");
        // Many distinct sources fill the table, then one overflow entry; nothing is evicted.
        for i in 0..1000 {
            r.record(
                &format!("10.1.{}.{}", i / 256, i % 256),
                None,
                "tls",
                "x",
                20_000,
            );
        }
        assert_eq!(r.entries().len(), MAX_ENTRIES + 1);
        assert_eq!(r.entries()[0].reason, "junk");
        let overflow = r.entries().last().unwrap();
        assert_eq!(overflow.source, OVERFLOW);
        assert_eq!(overflow.count, 1000 - (MAX_ENTRIES as u64 - 2));
        // Acknowledged entries go; later ones stay.
        r.record("10.0.0.9", None, "tls", "again", 30_000);
        assert_eq!(r.acknowledge(20_000), MAX_ENTRIES);
        assert_eq!(r.entries().len(), 1);
        assert_eq!(r.entries()[0].reason, "again");
        let long = "é".repeat(MAX_REASON);
        r.record("s", None, "k", &long, 1);
        assert!(r.entries()[1].reason.len() <= MAX_REASON + 3);
    }

    #[test]
    fn reasons_differing_in_values_only_are_one_class() {
        assert_eq!(
            reason_class("nonce: expected 0011aabbccddeeff, found 99887766554433221100 at 17"),
            "nonce: expected #, found # at #"
        );
        assert_ne!(
            reason_class("the owner's signature does not verify"),
            reason_class("the cluster is already initialised")
        );
        // Short words made of hex letters stay.
        assert_eq!(reason_class("bad feed"), "bad feed");
    }
}
