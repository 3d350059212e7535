//! The CAS: sessions in the sealed database, workloads' requests for their configuration, and
//! every decision appended to the tamper-evident log before its result is returned — a
//! refusal as much as a release. Nothing happens that the log does not record: when the log
//! cannot be written, the request fails.
//!
//! The caller reads the clock and passes `now` (Unix seconds).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError, RwLock};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use veil_tlog::group::Appender;

use crate::CasError;
use crate::database::{Contents, Database, Record};
use crate::policy::{self, Action, Rule, Signature};
use crate::registry::Registry;
use crate::secrets::{self, Value};
use crate::session::{self, Part, SecretKind, Session, SessionHash};
use crate::workload::{Evidence, Identity, NodeAppraiser, NodeFacts, Nonces};

/// One entry of the audit log: what was asked, by whom, and what came of it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEvent {
    /// Unix seconds.
    pub time: u64,
    /// `cas.provision`, `cas.session.create`, `cas.session.update`, `cas.session.read`,
    /// `cas.release`, `cas.backup`, `cas.restore`.
    pub event: String,
    /// `allowed` or `refused`.
    pub outcome: String,
    /// The session acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The service of a release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The hash of the session created or updated, or of the backup restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    /// The keys whose signatures came with the request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signers: Vec<String>,
    /// Who asked for a release, as the node's agent attested it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<Identity>,
    /// The node's reference-value set and TEE, once its quote was appraised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The secrets released (names, never values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl AuditEvent {
    /// The entry's bytes: RFC 8785 canonical JSON.
    pub fn to_entry(&self) -> Result<Vec<u8>, CasError> {
        serde_json_canonicalizer::to_vec(self).map_err(|e| CasError::Audit(e.to_string()))
    }

    /// Parses a log entry.
    pub fn parse(entry: &[u8]) -> Result<Self, CasError> {
        if entry.len() > veil_tlog::tiles::MAX_ENTRY {
            return Err(CasError::Audit(format!(
                "an entry of {} bytes is larger than a log entry can be",
                entry.len()
            )));
        }
        serde_json::from_slice(entry).map_err(|e| CasError::Audit(format!("entry: {e}")))
    }
}

/// What a workload gets: its service's environment, command and files, with the secrets'
/// values in place of their references.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The session.
    pub session: String,
    /// The service.
    pub service: String,
    /// Environment variables.
    pub environment: BTreeMap<String, String>,
    /// Arguments.
    pub command: Vec<String>,
    /// Files by absolute path, base64.
    pub files: BTreeMap<String, String>,
}

impl std::fmt::Debug for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Release({}/{}: {} variables, {} files, <values redacted>)",
            self.session,
            self.service,
            self.environment.len(),
            self.files.len()
        )
    }
}

#[derive(Debug, Default)]
struct State {
    registry: Registry,
    values: HashMap<String, BTreeMap<String, Value>>,
}

/// What the CAS counts, for its metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Configurations released to workloads.
    pub releases: u64,
    /// Workloads' requests refused.
    pub releases_refused: u64,
    /// Sessions created or updated.
    pub sessions_written: u64,
    /// Every request refused (releases included).
    pub refused: u64,
    /// Decisions that could not be written to the audit log (and so did not take effect).
    pub audit_failures: u64,
    /// Entries in the audit log.
    pub log_entries: u64,
}

#[derive(Debug, Default)]
struct Counts {
    releases: std::sync::atomic::AtomicU64,
    releases_refused: std::sync::atomic::AtomicU64,
    sessions_written: std::sync::atomic::AtomicU64,
    refused: std::sync::atomic::AtomicU64,
    audit_failures: std::sync::atomic::AtomicU64,
}

/// The running CAS.
pub struct Cas {
    db: Database,
    state: RwLock<State>,
    nonces: Mutex<Nonces>,
    log: Appender,
    counts: Counts,
}

impl std::fmt::Debug for Cas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cas")
    }
}

fn signers(signatures: &[Signature]) -> Vec<String> {
    signatures.iter().map(|s| s.key.clone()).collect()
}

fn outcome<T>(r: &Result<T, CasError>) -> (String, Option<String>) {
    match r {
        Ok(_) => ("allowed".into(), None),
        Err(e) => ("refused".into(), Some(e.to_string())),
    }
}

impl Cas {
    /// Opens the CAS over `db` (its records loaded and checked), logging to `log`.
    pub fn open(db: Database, log: Appender) -> Result<Self, CasError> {
        let Contents { owner, records } = db.load()?;
        let mut values = HashMap::new();
        let mut sessions = Vec::new();
        for r in records {
            values.insert(r.session.name.clone(), r.values);
            sessions.push(r.session);
        }
        let registry = Registry::from_parts(owner, sessions)?;
        Ok(Self {
            db,
            state: RwLock::new(State { registry, values }),
            nonces: Mutex::new(Nonces::new()),
            log,
            counts: Counts::default(),
        })
    }

    /// The audit log.
    pub fn log(&self) -> &Appender {
        &self.log
    }

    fn audit(&self, event: &AuditEvent) -> Result<u64, CasError> {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counts;
        let written = self
            .log
            .append(event.to_entry()?)
            .map_err(|e| CasError::Audit(e.to_string()));
        if written.is_err() {
            c.audit_failures.fetch_add(1, Relaxed);
            return written;
        }
        let refused = event.outcome == "refused";
        match (event.event.as_str(), refused) {
            ("cas.release" | "cas.kbs.resource", false) => c.releases.fetch_add(1, Relaxed),
            ("cas.release" | "cas.kbs.attest" | "cas.kbs.resource", true) => {
                c.releases_refused.fetch_add(1, Relaxed)
            }
            ("cas.session.create" | "cas.session.update", false) => {
                c.sessions_written.fetch_add(1, Relaxed)
            }
            _ => 0,
        };
        if refused {
            c.refused.fetch_add(1, Relaxed);
        }
        written
    }

    /// What the CAS counted since it opened, and its log's size.
    pub fn counters(&self) -> Counters {
        use std::sync::atomic::Ordering::Relaxed;
        let c = &self.counts;
        Counters {
            releases: c.releases.load(Relaxed),
            releases_refused: c.releases_refused.load(Relaxed),
            sessions_written: c.sessions_written.load(Relaxed),
            refused: c.refused.load(Relaxed),
            audit_failures: c.audit_failures.load(Relaxed),
            log_entries: self.log.with_log(veil_tlog::log::Log::size),
        }
    }

    /// Audits `r` as `event`, and returns it (or the log's failure).
    fn decided<T>(&self, mut event: AuditEvent, r: Result<T, CasError>) -> Result<T, CasError> {
        (event.outcome, event.reason) = outcome(&r);
        self.audit(&event)?;
        r
    }

    /// Makes `owner` the only one who creates top-level sessions. Once, and signed by the
    /// owner's keys (as the rule requires) over the rule's hash: a key nobody holds cannot be
    /// made the owner. Whoever provisions first owns the CAS; the audit log shows who that was.
    pub fn provision(
        &self,
        owner: Rule,
        signatures: &[Signature],
        now: u64,
    ) -> Result<(), CasError> {
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let event = AuditEvent {
            time: now,
            event: "cas.provision".into(),
            signers: signers(signatures),
            ..AuditEvent::default()
        };
        let mut next = st.registry.clone();
        let r = policy::check_rule("owner", &owner)
            .and_then(|()| policy::rule_hash(&owner))
            .and_then(|h| {
                policy::authorises(
                    "the owner",
                    &owner,
                    &policy::payload(Action::Provision, "-", &h),
                    signatures,
                )
            })
            .and_then(|()| next.provision(owner.clone()));
        self.decided(event, r)?;
        self.db.put_owner(&owner)?;
        st.registry = next;
        Ok(())
    }

    /// Records a request refused before it reached the CAS's rules (say, a release whose
    /// sender is not an attested node of the cluster): `event`, `reason`, and what of the
    /// evidence could be read.
    pub fn record_refusal(
        &self,
        event: &str,
        evidence: Option<&Evidence>,
        reason: &str,
        now: u64,
    ) -> Result<(), CasError> {
        self.audit(&AuditEvent {
            time: now,
            event: event.into(),
            outcome: "refused".into(),
            session: evidence.map(|e| e.session.clone()),
            service: evidence.map(|e| e.service.clone()),
            workload: evidence.map(|e| e.identity.clone()),
            reason: Some(reason.chars().take(1024).collect()),
            ..AuditEvent::default()
        })
        .map(|_| ())
    }

    /// A fresh nonce, for a workload's evidence or a read's challenge.
    pub fn nonce(&self, now: u64) -> Result<[u8; 32], CasError> {
        let mut n = [0u8; 32];
        SystemRandom::new()
            .fill(&mut n)
            .map_err(|_| CasError::Invalid("the system's random generator failed".into()))?;
        self.nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .issue(n, now);
        Ok(n)
    }

    /// Creates (`update` false) or replaces a session from its document.
    pub fn put(
        &self,
        document: &[u8],
        update: bool,
        signatures: &[Signature],
        now: u64,
    ) -> Result<SessionHash, CasError> {
        let mut event = AuditEvent {
            time: now,
            event: if update {
                "cas.session.update"
            } else {
                "cas.session.create"
            }
            .into(),
            signers: signers(signatures),
            ..AuditEvent::default()
        };
        let session = match Session::parse(document) {
            Ok(s) => s,
            Err(e) => return self.decided(event, Err(e)),
        };
        event.session = Some(session.name.clone());
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let checked = if update {
            st.registry.check_update(&session, signatures)
        } else {
            st.registry.check_create(&session, signatures)
        };
        let prepared = checked.and_then(|hash| {
            let values = self.values_for(&st, &session, now)?;
            Ok((hash, values))
        });
        if let Ok((hash, _)) = &prepared {
            event.hash = Some(hash.to_string());
        }
        let (hash, values) = self.decided(event, prepared)?;
        let record = Record {
            session: session.clone(),
            values,
        };
        self.db.put(&record)?;
        st.values.insert(session.name.clone(), record.values);
        st.registry.insert(session, hash);
        Ok(hash)
    }

    /// The values of `session`'s own secrets: kept from the current session where the
    /// definition did not change (and, for a certificate, its issuer was kept too), given or
    /// generated otherwise.
    fn values_for(
        &self,
        st: &State,
        session: &Session,
        now: u64,
    ) -> Result<BTreeMap<String, Value>, CasError> {
        let old = st.registry.get(&session.name).map(|(s, _)| s);
        let old_values = st.values.get(&session.name);
        let mut out: BTreeMap<String, Value> = BTreeMap::new();
        let mut fresh: Vec<&str> = Vec::new();
        // CAs first: a certificate needs its issuer's value.
        let mut order: Vec<&session::Secret> = session.secrets.iter().collect();
        order.sort_by_key(|s| s.kind == SecretKind::X509);
        for s in order {
            if s.import.is_some() {
                continue;
            }
            let kept = old
                .and_then(|o| o.secrets.iter().find(|x| x.name == s.name))
                .filter(|o| !secrets::changed(o, s))
                .filter(|_| s.issuer.as_deref().is_none_or(|i| !fresh.contains(&i)))
                .and_then(|_| old_values.and_then(|v| v.get(&s.name)));
            let v = match kept {
                Some(v) => v.clone(),
                None => {
                    fresh.push(&s.name);
                    let issuer = match s.issuer.as_deref() {
                        Some(i) => Some(self.value_of(st, session, &out, i)?),
                        None => None,
                    };
                    secrets::make(s, issuer.as_ref(), now)?
                }
            };
            out.insert(s.name.clone(), v);
        }
        Ok(out)
    }

    /// The value of secret `name` of `session`: its own (from `own`), or the one it imports
    /// from a session that exports it to `session`.
    fn value_of(
        &self,
        st: &State,
        session: &Session,
        own: &BTreeMap<String, Value>,
        name: &str,
    ) -> Result<Value, CasError> {
        let s = session
            .secrets
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| CasError::NotFound(format!("secret {name} of {}", session.name)))?;
        let Some(import) = &s.import else {
            return own.get(name).cloned().ok_or_else(|| {
                CasError::NotFound(format!("the value of secret {name} of {}", session.name))
            });
        };
        let (from, _) = st
            .registry
            .get(&import.session)
            .ok_or_else(|| CasError::NotFound(format!("{} (imported from)", import.session)))?;
        let exported = from
            .secrets
            .iter()
            .find(|x| x.name == import.secret && x.import.is_none())
            .ok_or_else(|| {
                CasError::NotFound(format!("secret {} of {}", import.secret, import.session))
            })?;
        if !exported.export.contains(&session.name) {
            return Err(CasError::Unauthorised(format!(
                "{} does not export its secret {} to {}",
                import.session, import.secret, session.name
            )));
        }
        if exported.kind != s.kind {
            return Err(CasError::Invalid(format!(
                "secret {name} is {:?}, the {} it imports is {:?}",
                s.kind, import.secret, exported.kind
            )));
        }
        st.values
            .get(&import.session)
            .and_then(|v| v.get(&import.secret))
            .cloned()
            .ok_or_else(|| {
                CasError::NotFound(format!(
                    "the value of secret {} of {}",
                    import.secret, import.session
                ))
            })
    }

    /// Reads session `name` (its document; never its secrets' values), signed over a
    /// `challenge` this CAS issued.
    pub fn read(
        &self,
        name: &str,
        challenge: &[u8; 32],
        signatures: &[Signature],
        now: u64,
    ) -> Result<Session, CasError> {
        let event = AuditEvent {
            time: now,
            event: "cas.session.read".into(),
            session: Some(name.to_string()),
            signers: signers(signatures),
            ..AuditEvent::default()
        };
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let r = self
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(challenge, now)
            .map_err(|_| {
                CasError::Unauthorised(
                    "the read's challenge was not issued by this CAS, expired or was used".into(),
                )
            })
            .and_then(|()| st.registry.read(name, challenge, signatures).cloned());
        self.decided(event, r)
    }

    /// A workload's request, through its node's agent: the nonce is taken, the node's quote
    /// appraised over the evidence's binding, the workload matched against the service; then
    /// the service's configuration with its secrets. `appraiser` judges the quote of the
    /// node that sent the request.
    pub fn release(
        &self,
        evidence: &Evidence,
        appraiser: &dyn NodeAppraiser,
        now: u64,
    ) -> Result<Release, CasError> {
        let mut event = AuditEvent {
            time: now,
            event: "cas.release".into(),
            session: Some(evidence.session.clone()),
            service: Some(evidence.service.clone()),
            workload: Some(evidence.identity.clone()),
            ..AuditEvent::default()
        };
        let facts = self.attest(evidence, appraiser, now);
        if let Ok(f) = &facts {
            event.node = Some(format!("{} {} tcb {:?}", f.tee, f.reference_set, f.tcb));
        }
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let r = facts.and_then(|f| self.configure(&st, evidence, &f));
        if let Ok((_, names)) = &r {
            event.secrets.clone_from(names);
        }
        self.decided(event, r).map(|(release, _)| release)
    }

    fn attest(
        &self,
        evidence: &Evidence,
        appraiser: &dyn NodeAppraiser,
        now: u64,
    ) -> Result<NodeFacts, CasError> {
        let nonce = evidence.nonce_bytes()?;
        self.nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(&nonce, now)?;
        let binding = evidence.binding()?;
        let quote = evidence.quote_bytes()?;
        appraiser
            .appraise(&evidence.identity.node, &quote, &binding)
            .map_err(|why| CasError::NotAttested(format!("node {}: {why}", evidence.identity.node)))
    }

    fn configure(
        &self,
        st: &State,
        evidence: &Evidence,
        facts: &NodeFacts,
    ) -> Result<(Release, Vec<String>), CasError> {
        let (session, _) = st
            .registry
            .get(&evidence.session)
            .ok_or_else(|| CasError::NotFound(evidence.session.clone()))?;
        let svc = session.admit(&evidence.service, &evidence.identity.workload(facts))?;
        let own = st.values.get(&session.name).cloned().unwrap_or_default();
        let mut used: Vec<String> = Vec::new();
        let mut cache: BTreeMap<String, Value> = BTreeMap::new();
        let mut fill = |text: &str, raw_binary: bool| -> Result<Vec<u8>, CasError> {
            let refs = session::secret_refs(text);
            let mut out = text.to_string();
            for r in &refs {
                let (name, part) = session::split_ref(r);
                if !cache.contains_key(name) {
                    let v = self.value_of(st, session, &own, name)?;
                    cache.insert(name.to_string(), v);
                }
                if !used.iter().any(|u| u == name) {
                    used.push(name.to_string());
                }
                let v = cache
                    .get(name)
                    .and_then(|v| v.part(part))
                    .ok_or_else(|| CasError::NotFound(format!("secret {r}")))?;
                // A file that is exactly one binary secret gets its bytes.
                let binary = session
                    .secrets
                    .iter()
                    .any(|s| s.name == name && s.kind == SecretKind::Binary);
                if raw_binary && binary && part == Part::Value && text == format!("$$secret:{r}$$")
                {
                    return STANDARD
                        .decode(v)
                        .map_err(|e| CasError::Invalid(format!("secret {name}: {e}")));
                }
                out = out.replace(&format!("$$secret:{r}$$"), v);
            }
            Ok(out.into_bytes())
        };
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap_or_default();
        let mut environment = BTreeMap::new();
        for (k, v) in &svc.environment {
            environment.insert(k.clone(), text(fill(v, false)?));
        }
        let mut command = Vec::new();
        for a in &svc.command {
            command.push(text(fill(a, false)?));
        }
        let mut files = BTreeMap::new();
        for (path, content) in &svc.files {
            files.insert(path.clone(), STANDARD.encode(fill(content, true)?));
        }
        used.sort();
        Ok((
            Release {
                session: session.name.clone(),
                service: svc.name.clone(),
                environment,
                command,
                files,
            },
            used,
        ))
    }

    /// A KBS attestation: the challenge's `nonce` taken, the node's `quote` appraised over the
    /// workload binding whose nonce is the hex of `report_data` (what the KBS runtime data
    /// hashes to), and the workload admitted to the service. Audited as `cas.kbs.attest`.
    pub fn kbs_attest(
        &self,
        evidence: &crate::kbs::WorkloadEvidence,
        quote: &[u8],
        nonce: &[u8; 32],
        report_data: &[u8],
        appraiser: &dyn NodeAppraiser,
        now: u64,
    ) -> Result<NodeFacts, CasError> {
        let mut event = AuditEvent {
            time: now,
            event: "cas.kbs.attest".into(),
            session: Some(evidence.session.clone()),
            service: Some(evidence.service.clone()),
            workload: Some(evidence.identity.clone()),
            ..AuditEvent::default()
        };
        let facts = self
            .nonces
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(nonce, now)
            .and_then(|()| {
                crate::workload::binding(
                    &evidence.session,
                    &evidence.service,
                    &evidence.identity,
                    &hex::encode(report_data),
                )
            })
            .and_then(|binding| {
                appraiser
                    .appraise(&evidence.identity.node, quote, &binding)
                    .map_err(|why| {
                        CasError::NotAttested(format!("node {}: {why}", evidence.identity.node))
                    })
            });
        if let Ok(f) = &facts {
            event.node = Some(format!("{} {} tcb {:?}", f.tee, f.reference_set, f.tcb));
        }
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let r = facts.and_then(|f| {
            let (session, _) = st
                .registry
                .get(&evidence.session)
                .ok_or_else(|| CasError::NotFound(evidence.session.clone()))?;
            session.admit(&evidence.service, &evidence.identity.workload(&f))?;
            Ok(f)
        });
        self.decided(event, r)
    }

    /// A KBS resource: secret `secret` (a reference: `NAME`, `NAME.crt`, `NAME.key`) of
    /// `session` for its service `service`, to a KBS session attested for exactly those; the
    /// workload is admitted again against the session as it is now, and the service's
    /// configuration must name the secret. A binary secret's bytes, any other's text. Audited
    /// as `cas.kbs.resource`.
    pub fn kbs_resource(
        &self,
        attested: &crate::kbs::Attested,
        session: &str,
        service: &str,
        secret: &str,
        now: u64,
    ) -> Result<Vec<u8>, CasError> {
        let event = AuditEvent {
            time: now,
            event: "cas.kbs.resource".into(),
            session: Some(session.to_string()),
            service: Some(service.to_string()),
            workload: Some(attested.identity.clone()),
            node: Some(format!(
                "{} {} tcb {:?}",
                attested.facts.tee, attested.facts.reference_set, attested.facts.tcb
            )),
            secrets: vec![secret.to_string()],
            ..AuditEvent::default()
        };
        let st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let r = self.kbs_value(&st, attested, session, service, secret);
        self.decided(event, r)
    }

    fn kbs_value(
        &self,
        st: &State,
        attested: &crate::kbs::Attested,
        session: &str,
        service: &str,
        secret: &str,
    ) -> Result<Vec<u8>, CasError> {
        if session != attested.session || service != attested.service {
            return Err(CasError::Unauthorised(format!(
                "the KBS session is attested for service {} of {}, not {service} of {session}",
                attested.service, attested.session
            )));
        }
        let (s, _) = st
            .registry
            .get(session)
            .ok_or_else(|| CasError::NotFound(session.to_string()))?;
        let svc = s.admit(service, &attested.identity.workload(&attested.facts))?;
        let named = svc
            .environment
            .values()
            .chain(svc.command.iter())
            .chain(svc.files.values())
            .any(|text| session::secret_refs(text).contains(&secret));
        if !named {
            return Err(CasError::Unauthorised(format!(
                "service {service} of {session} is given no secret {secret}"
            )));
        }
        let (name, part) = session::split_ref(secret);
        let own = st.values.get(&s.name).cloned().unwrap_or_default();
        let v = self.value_of(st, s, &own, name)?;
        let text = v
            .part(part)
            .ok_or_else(|| CasError::NotFound(format!("secret {secret}")))?;
        let binary = s
            .secrets
            .iter()
            .any(|x| x.name == name && x.kind == SecretKind::Binary);
        if binary && part == Part::Value {
            return STANDARD
                .decode(text)
                .map_err(|e| CasError::Invalid(format!("secret {name}: {e}")));
        }
        Ok(text.as_bytes().to_vec())
    }

    /// Every session and secret, sealed into one backup (it reveals nothing but its size).
    pub fn backup(&self, now: u64) -> Result<Vec<u8>, CasError> {
        let _st = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let b = self.db.backup();
        let mut event = AuditEvent {
            time: now,
            event: "cas.backup".into(),
            ..AuditEvent::default()
        };
        if let Ok(b) = &b {
            event.hash = Some(hex::encode(Sha256::digest(b)));
        }
        self.decided(event, b)
    }

    /// Replaces every session and secret with a backup's, signed over the backup's SHA-256 as
    /// the backup's owner requires; a provisioned CAS takes only a backup of the same owner.
    pub fn restore(
        &self,
        backup: &[u8],
        signatures: &[Signature],
        now: u64,
    ) -> Result<(), CasError> {
        let digest: [u8; 32] = Sha256::digest(backup).into();
        let event = AuditEvent {
            time: now,
            event: "cas.restore".into(),
            hash: Some(hex::encode(digest)),
            signers: signers(signatures),
            ..AuditEvent::default()
        };
        let mut st = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let r = self.check_restore(&st, backup, &digest, signatures);
        let (contents, registry) = self.decided(event, r)?;
        self.db.replace(&contents)?;
        if let Some(o) = &contents.owner {
            self.db.put_owner(o)?;
        }
        st.values = contents
            .records
            .into_iter()
            .map(|r| (r.session.name.clone(), r.values))
            .collect();
        st.registry = registry;
        Ok(())
    }

    fn check_restore(
        &self,
        st: &State,
        backup: &[u8],
        digest: &[u8; 32],
        signatures: &[Signature],
    ) -> Result<(Contents, Registry), CasError> {
        let contents = self.db.open_backup(backup)?;
        let owner = contents
            .owner
            .clone()
            .ok_or_else(|| CasError::Invalid("the backup has no owner".into()))?;
        if let Some(current) = st.registry.owner()
            && *current != owner
        {
            return Err(CasError::Unauthorised(
                "the backup is of another owner than this CAS's".into(),
            ));
        }
        policy::authorises(
            "the backup's owner",
            &owner,
            &policy::payload(Action::Restore, "-", digest),
            signatures,
        )?;
        let registry = Registry::from_parts(
            Some(owner),
            contents.records.iter().map(|r| r.session.clone()).collect(),
        )?;
        Ok((contents, registry))
    }
}
