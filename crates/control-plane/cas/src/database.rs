//! The CAS's database: a `redb` file whose every record is sealed (AES-256-GCM) with a key
//! derived from the CAS's root key, itself derived from the cluster's master secret — so any
//! attested control plane opens it, and nobody else reads or changes a record undetected.
//!
//! A record's key in the file is an HMAC of the session's name (the file does not show which
//! sessions exist), and its additional data binds the record to that key: a record moved to
//! another key does not open. Backups are one sealed blob of every record, with a key of their
//! own.

use std::collections::BTreeMap;
use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::CasError;
use crate::policy::Rule;
use crate::secrets::Value;
use crate::session::Session;

const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const OWNER: &str = "owner";
const BACKUP_MAGIC: &[u8] = b"veil-cas-backup/v1\n";

/// A session as stored: the document and its secrets' values.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// The session.
    pub session: Session,
    /// Its secrets' values by name (imported secrets have none here).
    pub values: BTreeMap<String, Value>,
}

/// Everything a backup holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct Contents {
    /// The owner's rule.
    pub owner: Option<Rule>,
    /// Every session.
    pub records: Vec<Record>,
}

struct Len32;
impl KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn db_err(what: &str, e: impl std::fmt::Display) -> CasError {
    CasError::Database(format!("{what}: {e}"))
}

/// The keys of the database, from the CAS's root key.
struct Keys {
    records: LessSafeKey,
    names: hmac::Key,
    backups: LessSafeKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<redacted>)")
    }
}

fn subkey(root: &[u8; 32], label: &str) -> Result<[u8; 32], CasError> {
    let prk = Salt::new(HKDF_SHA256, b"veil-cas").extract(root);
    let info = [label.as_bytes()];
    let okm = prk
        .expand(&info, Len32)
        .map_err(|_| db_err("keys", "HKDF expand"))?;
    let mut out = [0u8; 32];
    okm.fill(&mut out)
        .map_err(|_| db_err("keys", "HKDF fill"))?;
    Ok(out)
}

fn aead(k: &[u8; 32]) -> Result<LessSafeKey, CasError> {
    Ok(LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, k).map_err(|_| db_err("keys", "AES key"))?,
    ))
}

fn seal(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CasError> {
    let mut n = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut n)
        .map_err(|_| db_err("seal", "random"))?;
    let mut buf = plain.to_vec();
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(n), Aad::from(aad), &mut buf)
        .map_err(|_| db_err("seal", "AES-GCM"))?;
    let mut out = n.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

fn open(key: &LessSafeKey, aad: &[u8], sealed: &[u8], what: &str) -> Result<Vec<u8>, CasError> {
    let (Some(n), Some(body)) = (sealed.get(..NONCE_LEN), sealed.get(NONCE_LEN..)) else {
        return Err(CasError::Database(format!(
            "{what}: {} bytes, too short to be sealed",
            sealed.len()
        )));
    };
    let nonce = Nonce::try_assume_unique_for_key(n).map_err(|_| db_err(what, "nonce"))?;
    let mut buf = body.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| {
            CasError::Database(format!(
                "{what} does not authenticate: altered, moved, or sealed with another key"
            ))
        })?;
    Ok(plain.to_vec())
}

/// The open database.
pub struct Database {
    db: redb::Database,
    keys: Keys,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Database(<sealed>)")
    }
}

impl Database {
    /// Opens (or creates) the database at `path` with the CAS's `root` key.
    pub fn open(path: &Path, root: &[u8; 32]) -> Result<Self, CasError> {
        let db =
            redb::Database::create(path).map_err(|e| db_err(&path.display().to_string(), e))?;
        let keys = Keys {
            records: aead(&subkey(root, "database records")?)?,
            names: hmac::Key::new(hmac::HMAC_SHA256, &subkey(root, "database names")?),
            backups: aead(&subkey(root, "backups")?)?,
        };
        let tx = db.begin_write().map_err(|e| db_err("begin", e))?;
        tx.open_table(SESSIONS).map_err(|e| db_err("sessions", e))?;
        tx.open_table(META).map_err(|e| db_err("meta", e))?;
        tx.commit().map_err(|e| db_err("commit", e))?;
        Ok(Self { db, keys })
    }

    fn name_key(&self, name: &str) -> String {
        hex::encode(hmac::sign(&self.keys.names, name.as_bytes()).as_ref())
    }

    fn aad(table: &str, key: &str) -> Vec<u8> {
        format!("veil-cas/db/v1\0{table}\0{key}").into_bytes()
    }

    /// Writes the owner's rule.
    pub fn put_owner(&self, owner: &Rule) -> Result<(), CasError> {
        let plain = serde_json::to_vec(owner).map_err(|e| db_err("owner", e))?;
        let sealed = seal(&self.keys.records, &Self::aad("meta", OWNER), &plain)?;
        let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| db_err("meta", e))?;
            t.insert(OWNER, sealed.as_slice())
                .map_err(|e| db_err("owner", e))?;
        }
        tx.commit().map_err(|e| db_err("commit", e))
    }

    /// Writes `record` as its session's current one, durably.
    pub fn put(&self, record: &Record) -> Result<(), CasError> {
        self.put_all(std::slice::from_ref(record), false)
    }

    fn put_all(&self, records: &[Record], replace: bool) -> Result<(), CasError> {
        let tx = self.db.begin_write().map_err(|e| db_err("begin", e))?;
        {
            let mut t = tx.open_table(SESSIONS).map_err(|e| db_err("sessions", e))?;
            if replace {
                t.retain(|_, _| false).map_err(|e| db_err("sessions", e))?;
            }
            for r in records {
                let key = self.name_key(&r.session.name);
                let plain = zeroize::Zeroizing::new(
                    serde_json::to_vec(r).map_err(|e| db_err("record", e))?,
                );
                let sealed = seal(&self.keys.records, &Self::aad("sessions", &key), &plain)?;
                t.insert(key.as_str(), sealed.as_slice())
                    .map_err(|e| db_err("record", e))?;
            }
        }
        tx.commit().map_err(|e| db_err("commit", e))
    }

    /// Reads everything.
    pub fn load(&self) -> Result<Contents, CasError> {
        let tx = self.db.begin_read().map_err(|e| db_err("begin", e))?;
        let meta = tx.open_table(META).map_err(|e| db_err("meta", e))?;
        let owner = match meta.get(OWNER).map_err(|e| db_err("owner", e))? {
            None => None,
            Some(v) => {
                let plain = open(
                    &self.keys.records,
                    &Self::aad("meta", OWNER),
                    v.value(),
                    "the owner record",
                )?;
                Some(serde_json::from_slice(&plain).map_err(|e| db_err("owner", e))?)
            }
        };
        let t = tx.open_table(SESSIONS).map_err(|e| db_err("sessions", e))?;
        let mut records = Vec::new();
        for row in t.iter().map_err(|e| db_err("sessions", e))? {
            let (k, v) = row.map_err(|e| db_err("sessions", e))?;
            let key = k.value();
            let plain = zeroize::Zeroizing::new(open(
                &self.keys.records,
                &Self::aad("sessions", key),
                v.value(),
                &format!("the record {key}"),
            )?);
            let r: Record = serde_json::from_slice(&plain).map_err(|e| db_err("record", e))?;
            if self.name_key(&r.session.name) != key {
                return Err(CasError::Database(format!(
                    "the record {key} holds session {}, which belongs elsewhere",
                    r.session.name
                )));
            }
            records.push(r);
        }
        Ok(Contents { owner, records })
    }

    /// Everything, sealed into one backup.
    pub fn backup(&self) -> Result<Vec<u8>, CasError> {
        let contents = self.load()?;
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&contents).map_err(|e| db_err("backup", e))?,
        );
        let mut out = BACKUP_MAGIC.to_vec();
        out.extend(seal(&self.keys.backups, BACKUP_MAGIC, &plain)?);
        Ok(out)
    }

    /// Opens a backup made with the same root key.
    pub fn open_backup(&self, backup: &[u8]) -> Result<Contents, CasError> {
        let body = backup.strip_prefix(BACKUP_MAGIC).ok_or_else(|| {
            CasError::Database("not a CAS backup (no veil-cas-backup/v1 header)".into())
        })?;
        let plain =
            zeroize::Zeroizing::new(open(&self.keys.backups, BACKUP_MAGIC, body, "the backup")?);
        serde_json::from_slice(&plain).map_err(|e| db_err("backup", e))
    }

    /// Replaces every session with `contents`' (the owner stays).
    pub fn replace(&self, contents: &Contents) -> Result<(), CasError> {
        self.put_all(&contents.records, true)
    }
}
