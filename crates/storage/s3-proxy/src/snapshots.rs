//! Snapshots kept in an S3 bucket with retention: each is an object
//! `<prefix><unix seconds, 20 digits>.snap`, so their names sort by age; after a new one is
//! written, all but the newest `keep` are deleted. What goes in is already sealed (the CAS's
//! backups are AES-256-GCM under a key of the cluster's): the bucket's host learns sizes and
//! times, nothing else, and an altered snapshot does not open.

use crate::client::{S3Client, full_body, read_body};

/// A bucket and prefix holding snapshots, keeping the newest `keep`.
#[derive(Debug, Clone)]
pub struct Snapshots {
    /// The S3 endpoint.
    pub client: S3Client,
    /// The bucket.
    pub bucket: String,
    /// The key prefix (say `cas/<cluster>/<node>/`).
    pub prefix: String,
    /// How many to keep (at least one).
    pub keep: usize,
}

/// The most keys one listing reads.
const MAX_KEYS: usize = 1000;

/// The `<Key>` values of a ListObjectsV2 result.
pub fn keys_in(listing: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = listing;
    while let Some(at) = rest.find("<Key>") {
        let after = rest.get(at + 5..).unwrap_or_default();
        let Some(end) = after.find("</Key>") else {
            break;
        };
        out.push(after.get(..end).unwrap_or_default().to_string());
        rest = after.get(end + 6..).unwrap_or_default();
    }
    out
}

impl Snapshots {
    /// The snapshots' keys, oldest first.
    pub async fn list(&self) -> Result<Vec<String>, String> {
        let xml = self
            .client
            .list_objects_v2_xml(
                &self.bucket,
                &[
                    ("prefix".to_string(), self.prefix.clone()),
                    ("max-keys".to_string(), MAX_KEYS.to_string()),
                ],
            )
            .await
            .map_err(|e| format!("listing {}/{}: {e}", self.bucket, self.prefix))?;
        let mut keys: Vec<String> = keys_in(&String::from_utf8_lossy(&xml))
            .into_iter()
            .filter(|k| {
                k.strip_prefix(&self.prefix)
                    .and_then(|n| n.strip_suffix(".snap"))
                    .is_some_and(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
            })
            .collect();
        keys.sort();
        Ok(keys)
    }

    /// Writes `sealed` as the snapshot of `now`, then deletes all but the newest `keep`;
    /// returns its key and the keys deleted.
    pub async fn take(&self, sealed: Vec<u8>, now: u64) -> Result<(String, Vec<String>), String> {
        let key = format!("{}{now:020}.snap", self.prefix);
        let len = sealed.len() as u64;
        self.client
            .put_object(&self.bucket, &key, len, vec![], full_body(sealed))
            .await
            .map_err(|e| format!("writing {}/{key}: {e}", self.bucket))?;
        let keys = self.list().await?;
        let excess = keys.len().saturating_sub(self.keep.max(1));
        let mut deleted = Vec::new();
        for old in keys.into_iter().take(excess) {
            self.client
                .delete_object(&self.bucket, &old)
                .await
                .map_err(|e| format!("deleting {}/{old}: {e}", self.bucket))?;
            deleted.push(old);
        }
        Ok((key, deleted))
    }

    /// The newest snapshot and its key, if any.
    pub async fn latest(&self) -> Result<Option<(String, Vec<u8>)>, String> {
        let Some(key) = self.list().await?.pop() else {
            return Ok(None);
        };
        let r = self
            .client
            .get_object(&self.bucket, &key, None)
            .await
            .map_err(|e| format!("reading {}/{key}: {e}", self.bucket))?;
        let body = read_body(r.into_body(), 256 << 20)
            .await
            .map_err(|e| format!("reading {}/{key}: {e}", self.bucket))?;
        Ok(Some((key, body.to_vec())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listing_keys_are_read_in_order_of_appearance() {
        let xml = "<ListBucketResult><Contents><Key>cas/a/00000000000000000001.snap</Key></Contents><Contents><Key>cas/a/x</Key></Contents></ListBucketResult>";
        assert_eq!(keys_in(xml), ["cas/a/00000000000000000001.snap", "cas/a/x"]);
        assert!(keys_in("<Key>unterminated").is_empty());
    }
}
