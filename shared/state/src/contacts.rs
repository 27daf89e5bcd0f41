//! Who a user has accepted, declined or blocked, and the per-recipient
//! admission decision that routing (1:1 and, per member, groups) makes from
//! it together with the consent record.
//!
//! The answers live in the user-state stream and are cached in Redis
//! ([`crate::records`], docs/adr/0028). Cache key:
//! `interop:contacts:<recipient>` — hash, field = sender address, value
//! `a` (accepted), `d` (declined) or `b` (blocked; also after a report), or
//! `-` (reset), each followed by `:` and the answer's stream sequence; and
//! the field `~` once every answer is cached. A sender with no answer is a
//! stranger: their messages are message requests. At most [`MAX_CONTACTS`]
//! senders (answers that were reset count); the cache key expires
//! [`CONTACTS_TTL_SECS`] after its last change (the stream keeps them).

use interop_proto::v1::{Inbox, Verdict};

use crate::consent::Consent;
use crate::{keys, records, Records, StateError};

/// Most senders one user's contact record holds (accepted, declined and
/// blocked together). Past it, new answers are refused with `LIST_FULL` and
/// implicit acceptances (replies) are not recorded.
pub const MAX_CONTACTS: usize = 10_000;

/// A contact record expires this long after its last change (400 days):
/// nothing in Redis grows forever.
pub const CONTACTS_TTL_SECS: u64 = 400 * 24 * 3600;

/// What a recipient decided about one sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactState {
    Accepted,
    Declined,
    Blocked,
}

impl ContactState {
    pub fn as_field(self) -> &'static str {
        match self {
            Self::Accepted => "a",
            Self::Declined => "d",
            Self::Blocked => "b",
        }
    }

    /// The answer a cached value holds: its first letter (`a`, `d`, `b`;
    /// the rest is the stream sequence, `crate::records`). `-` (reset) and
    /// anything else: none.
    pub fn from_field(v: &str) -> Option<Self> {
        match v.split(':').next() {
            Some("a") => Some(Self::Accepted),
            Some("d") => Some(Self::Declined),
            Some("b") => Some(Self::Blocked),
            _ => None,
        }
    }
}

/// Why a recipient cannot be reached. Senders never learn which: they all
/// get `RECIPIENT_UNAVAILABLE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotOptedIn,
    ProviderNotAllowed,
    Declined,
    Blocked,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOptedIn => "not-opted-in",
            Self::ProviderNotAllowed => "provider-not-allowed",
            Self::Declined => "declined",
            Self::Blocked => "blocked",
        }
    }
}

/// The decision for one recipient of one message, before the spam verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Do not deliver.
    Refused(Refusal),
    /// An accepted sender: deliver into this inbox (third-party or combined).
    Inbox(Inbox),
    /// A sender the recipient has not answered: deliver as a message request.
    Request,
}

impl Admission {
    /// The admission once the spam verdict's `REQUEST` is applied: a
    /// message scored as suspicious is a message request even from an
    /// accepted sender (docs/spam.md). Routing files with it, and delivery's
    /// re-check before a push must too, or the verdict would be undone the
    /// moment the message reached the device. Other verdicts never reach a
    /// store and leave the admission as it is.
    pub fn under(self, verdict: Verdict) -> Admission {
        match self {
            Admission::Inbox(_) if verdict == Verdict::Request => Admission::Request,
            other => other,
        }
    }
}

/// The pure rule: consent first (opted in, provider allowed), then the
/// recipient's answer about this sender.
pub fn decide(
    consent: &Consent,
    contact: Option<ContactState>,
    sender_provider: &str,
) -> Admission {
    if !consent.opted_in {
        return Admission::Refused(Refusal::NotOptedIn);
    }
    if !consent.admits(sender_provider) {
        return Admission::Refused(Refusal::ProviderNotAllowed);
    }
    match contact {
        Some(ContactState::Blocked) => Admission::Refused(Refusal::Blocked),
        Some(ContactState::Declined) => Admission::Refused(Refusal::Declined),
        Some(ContactState::Accepted) => Admission::Inbox(consent.inbox()),
        None => Admission::Request,
    }
}

/// The consent record's fields an admission reads: `rev` (absent: not
/// cached), `opted_in`, `allowed`, `inbox`.
type ConsentFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// One cached answer and the record's loaded marker.
type AnswerFields = (Option<String>, Option<String>);

/// Adds the reads of `recipient`'s consent record.
fn consent_read(pipe: &mut redis::Pipeline, recipient: &str) {
    pipe.cmd("HMGET")
        .arg(keys::consent(recipient))
        .arg("rev")
        .arg("opted_in")
        .arg("allowed")
        .arg("inbox");
}

/// Adds the read of `recipient`'s answer about `sender` and of the
/// record's loaded marker.
fn answer_read(pipe: &mut redis::Pipeline, recipient: &str, sender: &str) {
    pipe.cmd("HMGET")
        .arg(keys::contacts(recipient))
        .arg(sender)
        .arg(records::LOADED_FIELD);
}

/// The reads of one admission, in one pipeline: `recipient`'s consent
/// record and their answer about `sender`. Callers may add commands.
fn admission_reads(recipient: &str, sender: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    consent_read(&mut pipe, recipient);
    answer_read(&mut pipe, recipient, sender);
    pipe
}

/// The outcome of recording an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Set,
    /// `nx` and the sender already had a state.
    Unchanged,
    /// The record holds [`MAX_CONTACTS`] other senders.
    Full,
}

/// Reads and writes contact records and makes admission decisions. Answers
/// are written to the user-state stream and cached in Redis; a read that
/// finds the cache incomplete loads the user's answers from the stream
/// ([`crate::records`]).
#[derive(Clone)]
pub struct ContactStore {
    records: Records,
}

impl ContactStore {
    pub fn new(records: Records) -> Self {
        Self { records }
    }

    fn conn(&self) -> redis::aio::ConnectionManager {
        self.records.redis().clone()
    }

    /// The consent those fields hold, loaded if they are not cached.
    async fn consent_from(
        &self,
        recipient: &str,
        (rev, opted_in, allowed, inbox): ConsentFields,
    ) -> Result<Consent, StateError> {
        if rev.is_none() {
            return self.records.load_consent(recipient).await;
        }
        Ok(Consent::from_hash(
            opted_in.as_deref(),
            allowed.as_deref(),
            inbox.as_deref(),
        ))
    }

    /// The answer those fields hold, loaded if the record is not cached.
    async fn answer_from(
        &self,
        recipient: &str,
        sender: &str,
        (value, loaded): AnswerFields,
    ) -> Result<Option<ContactState>, StateError> {
        if loaded.is_none() {
            let answers = self.records.load_contacts(recipient).await?;
            return Ok(answers.get(sender).and_then(|(state, _)| *state));
        }
        Ok(value.as_deref().and_then(ContactState::from_field))
    }

    /// Whether a message from `sender` (a user of `sender_provider`) may
    /// reach `recipient`, and how. One Redis round trip: the consent record
    /// and the recipient's answer about this sender (and a load from the
    /// stream if either is not cached).
    pub async fn admission(
        &self,
        recipient: &str,
        sender: &str,
        sender_provider: &str,
    ) -> Result<Admission, StateError> {
        let (record, answer): (ConsentFields, AnswerFields) = admission_reads(recipient, sender)
            .query_async(&mut self.conn())
            .await?;
        let consent = self.consent_from(recipient, record).await?;
        let contact = self.answer_from(recipient, sender, answer).await?;
        Ok(decide(&consent, contact, sender_provider))
    }

    /// [`Self::admission`], and in the same round trip whether `sender`'s
    /// own record has an answer about `recipient` (any answer: then writing
    /// to them changes nothing, see [`Self::accept_if_unknown`]).
    pub async fn admission_and_reply_state(
        &self,
        recipient: &str,
        sender: &str,
        sender_provider: &str,
    ) -> Result<(Admission, bool), StateError> {
        let mut pipe = admission_reads(recipient, sender);
        answer_read(&mut pipe, sender, recipient);
        let (record, answer, own): (ConsentFields, AnswerFields, AnswerFields) =
            pipe.query_async(&mut self.conn()).await?;
        let consent = self.consent_from(recipient, record).await?;
        let contact = self.answer_from(recipient, sender, answer).await?;
        let known = self.answer_from(sender, recipient, own).await?.is_some();
        Ok((decide(&consent, contact, sender_provider), known))
    }

    /// [`Self::admission_and_reply_state`] for many messages in one
    /// round trip (each recipient's consent record read once), answers in
    /// the order asked; `reply_state` is `false` where not asked for.
    pub async fn admissions(
        &self,
        asks: &[AdmissionAsk],
    ) -> Result<Vec<(Admission, bool)>, StateError> {
        let mut pipe = redis::pipe();
        let mut recipients: Vec<&str> = Vec::new();
        for a in asks {
            if !recipients.contains(&a.recipient.as_str()) {
                recipients.push(&a.recipient);
                consent_read(&mut pipe, &a.recipient);
            }
        }
        for a in asks {
            answer_read(&mut pipe, &a.recipient, &a.sender);
            if a.reply_state {
                answer_read(&mut pipe, &a.sender, &a.recipient);
            }
        }
        let replies: Vec<Vec<Option<String>>> = pipe.query_async(&mut self.conn()).await?;
        let mut replies = replies.into_iter();
        let mut next = |n: usize| -> Result<Vec<Option<String>>, StateError> {
            let r = replies.next().unwrap_or_default();
            if r.len() == n {
                Ok(r)
            } else {
                Err(StateError::Records(format!(
                    "an admission read answered {} fields, not {n}",
                    r.len()
                )))
            }
        };
        // Parsed first, then what is not cached is loaded, all at once (a
        // load reads the stream: one slow user must not hold up the rest).
        let mut consent_fields = Vec::with_capacity(recipients.len());
        for _ in &recipients {
            let mut f = next(4)?.into_iter();
            consent_fields.push((
                f.next().flatten(),
                f.next().flatten(),
                f.next().flatten(),
                f.next().flatten(),
            ));
        }
        let mut answer_fields = Vec::with_capacity(asks.len());
        for a in asks {
            let mut f = next(2)?.into_iter();
            let answer = (f.next().flatten(), f.next().flatten());
            let own = if a.reply_state {
                let mut f = next(2)?.into_iter();
                Some((f.next().flatten(), f.next().flatten()))
            } else {
                None
            };
            answer_fields.push((answer, own));
        }
        let consents = futures_util::future::try_join_all(
            recipients
                .iter()
                .zip(consent_fields)
                .map(|(r, fields)| self.consent_from(r, fields)),
        )
        .await?;
        let answers = futures_util::future::try_join_all(asks.iter().zip(answer_fields).map(
            |(a, (answer, own))| async move {
                let contact = self.answer_from(&a.recipient, &a.sender, answer).await?;
                let known = match own {
                    Some(own) => self
                        .answer_from(&a.sender, &a.recipient, own)
                        .await?
                        .is_some(),
                    None => false,
                };
                Ok::<_, StateError>((contact, known))
            },
        ))
        .await?;
        let mut out = Vec::with_capacity(asks.len());
        for (a, (contact, known)) in asks.iter().zip(answers) {
            let consent = recipients
                .iter()
                .position(|r| *r == a.recipient)
                .map(|i| &consents[i])
                .ok_or_else(|| StateError::Records("a recipient's consent was not read".into()))?;
            out.push((decide(consent, contact, &a.sender_provider), known));
        }
        Ok(out)
    }

    /// The recipient's answer about `sender`, if any.
    pub async fn get(
        &self,
        recipient: &str,
        sender: &str,
    ) -> Result<Option<ContactState>, StateError> {
        let mut pipe = redis::pipe();
        answer_read(&mut pipe, recipient, sender);
        let (answer,): (AnswerFields,) = pipe.query_async(&mut self.conn()).await?;
        self.answer_from(recipient, sender, answer).await
    }

    /// Makes sure every one of `users`' records is cached (loads those that
    /// are not), for callers that read contact records in their own
    /// pipelines.
    pub async fn ensure_cached(&self, users: &[&str]) -> Result<(), StateError> {
        if users.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for u in users {
            pipe.cmd("HEXISTS")
                .arg(keys::contacts(u))
                .arg(records::LOADED_FIELD);
        }
        let loaded: Vec<bool> = pipe.query_async(&mut self.conn()).await?;
        for (u, loaded) in users.iter().zip(loaded) {
            if !loaded {
                self.records.load_contacts(u).await?;
            }
        }
        Ok(())
    }

    /// Records `state` for `sender` in `recipient`'s record.
    pub async fn set(
        &self,
        recipient: &str,
        sender: &str,
        state: ContactState,
    ) -> Result<SetOutcome, StateError> {
        self.set_inner(recipient, sender, state, false).await
    }

    /// Records that `recipient` accepts `sender` unless they answered about
    /// them already (a user who writes to someone accepts their replies).
    pub async fn accept_if_unknown(
        &self,
        recipient: &str,
        sender: &str,
    ) -> Result<SetOutcome, StateError> {
        self.set_inner(recipient, sender, ContactState::Accepted, true)
            .await
    }

    /// The cached value of `recipient`'s answer about `sender` (`None`: no
    /// entry at all) and how many entries the record has, loaded first if
    /// it is not cached.
    async fn entry_and_count(
        &self,
        recipient: &str,
        sender: &str,
    ) -> Result<(Option<(Option<ContactState>, u64)>, usize), StateError> {
        let mut pipe = redis::pipe();
        answer_read(&mut pipe, recipient, sender);
        pipe.cmd("HLEN").arg(keys::contacts(recipient));
        let ((value, loaded), len): (AnswerFields, usize) =
            pipe.query_async(&mut self.conn()).await?;
        if loaded.is_none() {
            let answers = self.records.load_contacts(recipient).await?;
            return Ok((answers.get(sender).copied(), answers.len()));
        }
        let entry = value.map(|v| (ContactState::from_field(&v), records::cached_sequence(&v)));
        // The loaded marker is a field too.
        Ok((entry, len.saturating_sub(1)))
    }

    async fn set_inner(
        &self,
        recipient: &str,
        sender: &str,
        state: ContactState,
        nx: bool,
    ) -> Result<SetOutcome, StateError> {
        let (entry, count) = self.entry_and_count(recipient, sender).await?;
        if nx && entry.is_some_and(|(s, _)| s.is_some()) {
            return Ok(SetOutcome::Unchanged);
        }
        if entry.is_none() && count >= MAX_CONTACTS {
            return Ok(SetOutcome::Full);
        }
        // Implicit acceptance only if nobody answered since this read: a
        // block given meanwhile wins.
        let expected = nx.then(|| entry.map_or(0, |(_, seq)| seq));
        if self
            .records
            .put_contact(recipient, sender, Some(state), expected)
            .await?
        {
            Ok(SetOutcome::Set)
        } else {
            Ok(SetOutcome::Unchanged)
        }
    }

    /// Forgets the recipient's answer about `sender`.
    pub async fn reset(&self, recipient: &str, sender: &str) -> Result<(), StateError> {
        self.records
            .put_contact(recipient, sender, None, None)
            .await
            .map(|_| ())
    }

    /// Every sender the recipient answered about, with the answer, sorted by
    /// address.
    pub async fn list(&self, recipient: &str) -> Result<Vec<(String, ContactState)>, StateError> {
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::contacts(recipient))
            .query_async(&mut self.conn())
            .await?;
        let mut out: Vec<(String, ContactState)> =
            if all.iter().any(|(f, _)| f == records::LOADED_FIELD) {
                all.into_iter()
                    .filter_map(|(s, v)| ContactState::from_field(&v).map(|st| (s, st)))
                    .collect()
            } else {
                self.records
                    .load_contacts(recipient)
                    .await?
                    .into_iter()
                    .filter_map(|(s, (st, _))| st.map(|st| (s, st)))
                    .collect()
            };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

/// One admission asked of [`ContactStore::admissions`].
#[derive(Debug, Clone)]
pub struct AdmissionAsk {
    pub recipient: String,
    pub sender: String,
    pub sender_provider: String,
    /// Also read whether the sender's own record answers the recipient.
    pub reply_state: bool,
}

/// Most admissions one round trip asks.
pub const ADMISSION_BATCH_MAX: usize = 256;
/// Round trips of an [`AdmissionBatcher`] in flight at once (one waiting
/// for a user loaded from the stream does not hold up the next).
pub const ADMISSIONS_IN_FLIGHT: usize = 4;

/// Admissions asked one by one by concurrent callers (a stage's handlers),
/// made together: what is asked while a round trip is in flight goes in
/// the next one, up to [`ADMISSION_BATCH_MAX`] (no timer: a lone ask goes
/// at once; docs/adr/0019's rule).
#[derive(Clone)]
pub struct AdmissionBatcher {
    tx: tokio::sync::mpsc::Sender<PendingAdmission>,
    round_trips: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

struct PendingAdmission {
    ask: AdmissionAsk,
    answer: tokio::sync::oneshot::Sender<Result<(Admission, bool), StateError>>,
}

impl AdmissionBatcher {
    /// Starts the task that makes the round trips; it ends when every
    /// batcher clone is dropped.
    pub fn new(store: ContactStore) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<PendingAdmission>(4 * ADMISSION_BATCH_MAX);
        let round_trips = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = round_trips.clone();
        tokio::spawn(async move {
            let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(ADMISSIONS_IN_FLIGHT));
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else {
                    return;
                };
                let mut batch = vec![first];
                while batch.len() < ADMISSION_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let store = store.clone();
                tokio::spawn(async move {
                    let asks: Vec<AdmissionAsk> = batch.iter().map(|p| p.ask.clone()).collect();
                    let mut batch = batch;
                    match store.admissions(&asks).await {
                        Ok(answers) => {
                            for (p, a) in batch.into_iter().zip(answers) {
                                p.answer.send(Ok(a)).ok();
                            }
                        }
                        Err(e) if batch.len() == 1 => {
                            if let Some(p) = batch.pop() {
                                p.answer.send(Err(e)).ok();
                            }
                        }
                        // One bad record (or a load that failed) fails the
                        // whole pipeline: each is asked again alone, so
                        // only its own caller gets the error.
                        Err(_) => {
                            futures_util::future::join_all(batch.into_iter().map(|p| {
                                let store = &store;
                                async move {
                                    let one = store
                                        .admissions(std::slice::from_ref(&p.ask))
                                        .await
                                        .and_then(|mut a| {
                                            a.pop().ok_or_else(|| {
                                                StateError::Records("no admission answered".into())
                                            })
                                        });
                                    p.answer.send(one).ok();
                                }
                            }))
                            .await;
                        }
                    }
                    drop(permit);
                });
            }
        });
        Self { tx, round_trips }
    }

    /// Round trips made so far (each for one or more admissions).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// [`ContactStore::admission_and_reply_state`] (`reply_state`) or
    /// [`ContactStore::admission`], made with whatever else is asked at
    /// the same time.
    pub async fn admit(&self, ask: AdmissionAsk) -> Result<(Admission, bool), StateError> {
        let (answer, rx) = tokio::sync::oneshot::channel();
        let gone = || StateError::Records("the admission batcher stopped".into());
        self.tx
            .send(PendingAdmission { ask, answer })
            .await
            .map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(opted_in: bool, allowed: &[&str], combined: bool) -> Consent {
        Consent {
            opted_in,
            allowed_providers: allowed.iter().map(|s| (*s).to_owned()).collect(),
            combined_inbox: combined,
        }
    }

    #[test]
    fn consent_comes_before_the_contact_record() {
        let c = consent(false, &["signal"], false);
        assert_eq!(
            decide(&c, Some(ContactState::Accepted), "signal"),
            Admission::Refused(Refusal::NotOptedIn)
        );
        let c = consent(true, &["telegram"], false);
        assert_eq!(
            decide(&c, Some(ContactState::Accepted), "signal"),
            Admission::Refused(Refusal::ProviderNotAllowed)
        );
    }

    #[test]
    fn a_request_verdict_files_even_an_accepted_sender_as_a_request() {
        let accepted = Admission::Inbox(Inbox::Combined);
        assert_eq!(accepted.under(Verdict::Request), Admission::Request);
        assert_eq!(accepted.under(Verdict::Allow), accepted);
        assert_eq!(accepted.under(Verdict::Unspecified), accepted);
        assert_eq!(
            Admission::Request.under(Verdict::Request),
            Admission::Request
        );
        let blocked = Admission::Refused(Refusal::Blocked);
        assert_eq!(blocked.under(Verdict::Request), blocked);
    }

    #[test]
    fn strangers_are_requests_and_answers_decide_the_rest() {
        let c = consent(true, &["signal"], false);
        assert_eq!(decide(&c, None, "signal"), Admission::Request);
        assert_eq!(
            decide(&c, Some(ContactState::Accepted), "signal"),
            Admission::Inbox(Inbox::ThirdParty)
        );
        assert_eq!(
            decide(&c, Some(ContactState::Declined), "signal"),
            Admission::Refused(Refusal::Declined)
        );
        assert_eq!(
            decide(&c, Some(ContactState::Blocked), "signal"),
            Admission::Refused(Refusal::Blocked)
        );
        let c = consent(true, &["signal"], true);
        assert_eq!(
            decide(&c, Some(ContactState::Accepted), "signal"),
            Admission::Inbox(Inbox::Combined)
        );
    }
}
