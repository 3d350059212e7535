//! The rules of the session store. `provision` names the owner's key, once: from then on only
//! it creates top-level sessions, and whoever deployed the CAS (the platform operator, who holds
//! no key of any session) can neither read nor change them. A session below another is created
//! as that one's `create_sessions` rule allows; a session is replaced as its current `update`
//! rule allows, naming the current session's hash as its predecessor (a create names none); it
//! is read as its `read` rule allows. The store here is in memory; the service keeps it in its
//! encrypted database and logs every decision.

use std::collections::BTreeMap;

use crate::CasError;
use crate::policy::{self, Action, Rule, Signature};
use crate::session::{Session, SessionHash};

/// The sessions and who owns the CAS.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    owner: Option<Rule>,
    sessions: BTreeMap<String, (Session, SessionHash)>,
}

impl Registry {
    /// An unprovisioned CAS: it takes no session until [`Registry::provision`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `owner` (a rule: the owner's key, or several with governance) the only one who
    /// creates top-level sessions. Once: a provisioned CAS is not provisioned again.
    pub fn provision(&mut self, owner: Rule) -> Result<(), CasError> {
        if self.owner.is_some() {
            return Err(CasError::Unauthorised(
                "the CAS is provisioned already: its owner cannot be replaced".into(),
            ));
        }
        policy::check_rule("owner", &owner)?;
        self.owner = Some(owner);
        Ok(())
    }

    /// The current session `name` and its hash.
    pub fn get(&self, name: &str) -> Option<&(Session, SessionHash)> {
        self.sessions.get(name)
    }

    /// Creates `session` (no predecessor), signed as the owner (top level) or as its parent's
    /// `create_sessions` rule requires. Returns its hash.
    pub fn create(
        &mut self,
        session: Session,
        signatures: &[Signature],
    ) -> Result<SessionHash, CasError> {
        let hash = self.check_create(&session, signatures)?;
        self.insert(session, hash);
        Ok(hash)
    }

    /// Checks that `session` may be created as [`Registry::create`] does, changing nothing.
    pub fn check_create(
        &self,
        session: &Session,
        signatures: &[Signature],
    ) -> Result<SessionHash, CasError> {
        session.validate()?;
        if session.predecessor.is_some() {
            return Err(CasError::Predecessor(format!(
                "{} is new: a predecessor is forbidden on create",
                session.name
            )));
        }
        if self.sessions.contains_key(&session.name) {
            return Err(CasError::Predecessor(format!(
                "{} exists: replace it with an update naming its hash",
                session.name
            )));
        }
        let hash = session.hash()?;
        let payload = policy::payload(Action::Create, &session.name, &hash.0);
        match session.parent() {
            None => {
                let owner = self.owner.as_ref().ok_or_else(|| {
                    CasError::Unauthorised("the CAS is not provisioned: no owner".into())
                })?;
                policy::authorises("the owner", owner, &payload, signatures)?;
            }
            Some(parent) => {
                let (p, _) = self
                    .sessions
                    .get(parent)
                    .ok_or_else(|| CasError::NotFound(parent.to_string()))?;
                let rule = p.access_policy.create_sessions.as_ref().ok_or_else(|| {
                    CasError::Unauthorised(format!("{parent} allows no sessions below it"))
                })?;
                policy::authorises(
                    &format!("{parent}'s create_sessions"),
                    rule,
                    &payload,
                    signatures,
                )?;
            }
        }
        Ok(hash)
    }

    /// Makes `session` (checked, with its `hash`) the current one of its name.
    pub fn insert(&mut self, session: Session, hash: SessionHash) {
        self.sessions.insert(session.name.clone(), (session, hash));
    }

    /// A registry of `owner` and `sessions` (as read back from the database or a backup),
    /// each session checked again and its hash recomputed.
    pub fn from_parts(owner: Option<Rule>, sessions: Vec<Session>) -> Result<Self, CasError> {
        let mut r = Self {
            owner,
            sessions: BTreeMap::new(),
        };
        for s in sessions {
            s.validate()?;
            let h = s.hash()?;
            r.insert(s, h);
        }
        Ok(r)
    }

    /// The owner's rule, once provisioned.
    pub fn owner(&self) -> Option<&Rule> {
        self.owner.as_ref()
    }

    /// Every current session, by name.
    pub fn sessions(&self) -> impl Iterator<Item = &(Session, SessionHash)> {
        self.sessions.values()
    }

    /// Replaces the session of the same name: `session.predecessor` must be the current hash,
    /// and the current `update` rule must be met.
    pub fn update(
        &mut self,
        session: Session,
        signatures: &[Signature],
    ) -> Result<SessionHash, CasError> {
        let hash = self.check_update(&session, signatures)?;
        self.insert(session, hash);
        Ok(hash)
    }

    /// Checks that `session` may replace the current one as [`Registry::update`] does,
    /// changing nothing.
    pub fn check_update(
        &self,
        session: &Session,
        signatures: &[Signature],
    ) -> Result<SessionHash, CasError> {
        session.validate()?;
        let (current, current_hash) = self
            .sessions
            .get(&session.name)
            .ok_or_else(|| CasError::NotFound(session.name.clone()))?;
        match session.predecessor_hash()? {
            None => {
                return Err(CasError::Predecessor(format!(
                    "an update of {} must name its predecessor {current_hash}",
                    session.name
                )));
            }
            Some(p) if p != *current_hash => {
                return Err(CasError::Predecessor(format!(
                    "{} is at {current_hash}, the update replaces {p} (another update came first)",
                    session.name
                )));
            }
            Some(_) => {}
        }
        let hash = session.hash()?;
        let payload = policy::payload(Action::Update, &session.name, &hash.0);
        policy::authorises(
            &format!("{}'s update", session.name),
            &current.access_policy.update,
            &payload,
            signatures,
        )?;
        Ok(hash)
    }

    /// Reads session `name`, the request signed over `challenge` (fresh, from the CAS) as its
    /// `read` rule requires.
    pub fn read(
        &self,
        name: &str,
        challenge: &[u8; 32],
        signatures: &[Signature],
    ) -> Result<&Session, CasError> {
        let (s, _) = self
            .sessions
            .get(name)
            .ok_or_else(|| CasError::NotFound(name.to_string()))?;
        let payload = policy::payload(Action::Read, name, challenge);
        policy::authorises(
            &format!("{name}'s read"),
            &s.access_policy.read,
            &payload,
            signatures,
        )?;
        Ok(s)
    }
}
