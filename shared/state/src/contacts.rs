//! Who a user has accepted, declined or blocked, and the per-recipient
//! admission decision that routing (1:1 and, per member, groups) makes from
//! it together with the consent record.
//!
//! Key: `interop:contacts:<recipient>` — hash, field = sender address, value
//! `a` (accepted), `d` (declined) or `b` (blocked; also after a report). A
//! sender with no field is a stranger: their messages are message requests.
//! At most [`MAX_CONTACTS`] fields; the key expires [`CONTACTS_TTL_SECS`]
//! after its last change.

use std::sync::LazyLock;

use interop_proto::v1::{Inbox, Verdict};

use crate::consent::Consent;
use crate::{keys, StateError};

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

    pub fn from_field(v: &str) -> Option<Self> {
        match v {
            "a" => Some(Self::Accepted),
            "d" => Some(Self::Declined),
            "b" => Some(Self::Blocked),
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

/// The consent record's fields an admission reads.
type ConsentFields = (Option<String>, Option<String>, Option<String>);

/// The reads of one admission, in one pipeline: `recipient`'s consent
/// record and their answer about `sender`. Callers may add commands.
fn admission_reads(recipient: &str, sender: &str) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    pipe.cmd("HMGET")
        .arg(keys::consent(recipient))
        .arg("opted_in")
        .arg("allowed")
        .arg("inbox")
        .cmd("HGET")
        .arg(keys::contacts(recipient))
        .arg(sender);
    pipe
}

/// The admission those reads decide.
fn admission_from(
    (opted_in, allowed, inbox): ConsentFields,
    contact: Option<String>,
    sender_provider: &str,
) -> Admission {
    let consent = Consent::from_hash(opted_in.as_deref(), allowed.as_deref(), inbox.as_deref());
    let contact = contact.as_deref().and_then(ContactState::from_field);
    decide(&consent, contact, sender_provider)
}

/// Sets a field unless the record is full (an existing field may always
/// change), and refreshes the TTL. `ARGV[3]` = `nx` only sets a missing
/// field (implicit acceptance never overrides a block). Returns 1 if set,
/// 0 if left alone, -1 if the record is full.
static SET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1])
if exists == 1 and ARGV[3] == 'nx' then return 0 end
if exists == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
return 1
",
    )
});

/// The outcome of recording an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Set,
    /// `nx` and the sender already had a state.
    Unchanged,
    /// The record holds [`MAX_CONTACTS`] other senders.
    Full,
}

/// Reads and writes contact records and makes admission decisions.
#[derive(Clone)]
pub struct ContactStore {
    redis: redis::aio::ConnectionManager,
}

impl ContactStore {
    pub fn new(redis: redis::aio::ConnectionManager) -> Self {
        Self { redis }
    }

    /// Whether a message from `sender` (a user of `sender_provider`) may
    /// reach `recipient`, and how. One Redis round trip: the consent record
    /// and the recipient's answer about this sender.
    pub async fn admission(
        &self,
        recipient: &str,
        sender: &str,
        sender_provider: &str,
    ) -> Result<Admission, StateError> {
        let mut conn = self.redis.clone();
        let (record, contact): (ConsentFields, Option<String>) = admission_reads(recipient, sender)
            .query_async(&mut conn)
            .await?;
        Ok(admission_from(record, contact, sender_provider))
    }

    /// [`Self::admission`], and in the same round trip whether `sender`'s
    /// own record has an entry for `recipient` (any answer: then writing to
    /// them changes nothing, see [`Self::accept_if_unknown`]).
    pub async fn admission_and_reply_state(
        &self,
        recipient: &str,
        sender: &str,
        sender_provider: &str,
    ) -> Result<(Admission, bool), StateError> {
        let mut conn = self.redis.clone();
        let (record, contact, known): (ConsentFields, Option<String>, bool) =
            admission_reads(recipient, sender)
                .cmd("HEXISTS")
                .arg(keys::contacts(sender))
                .arg(recipient)
                .query_async(&mut conn)
                .await?;
        Ok((admission_from(record, contact, sender_provider), known))
    }

    /// The recipient's answer about `sender`, if any.
    pub async fn get(
        &self,
        recipient: &str,
        sender: &str,
    ) -> Result<Option<ContactState>, StateError> {
        let mut conn = self.redis.clone();
        let v: Option<String> = redis::cmd("HGET")
            .arg(keys::contacts(recipient))
            .arg(sender)
            .query_async(&mut conn)
            .await?;
        Ok(v.as_deref().and_then(ContactState::from_field))
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

    async fn set_inner(
        &self,
        recipient: &str,
        sender: &str,
        state: ContactState,
        nx: bool,
    ) -> Result<SetOutcome, StateError> {
        let mut conn = self.redis.clone();
        let r: i64 = SET_SCRIPT
            .key(keys::contacts(recipient))
            .arg(sender)
            .arg(state.as_field())
            .arg(if nx { "nx" } else { "" })
            .arg(MAX_CONTACTS)
            .arg(CONTACTS_TTL_SECS)
            .invoke_async(&mut conn)
            .await?;
        Ok(match r {
            1 => SetOutcome::Set,
            0 => SetOutcome::Unchanged,
            _ => SetOutcome::Full,
        })
    }

    /// Forgets the recipient's answer about `sender`.
    pub async fn reset(&self, recipient: &str, sender: &str) -> Result<(), StateError> {
        let mut conn = self.redis.clone();
        let _: i64 = redis::cmd("HDEL")
            .arg(keys::contacts(recipient))
            .arg(sender)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Every sender the recipient answered about, with the answer, sorted by
    /// address.
    pub async fn list(&self, recipient: &str) -> Result<Vec<(String, ContactState)>, StateError> {
        let mut conn = self.redis.clone();
        let all: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::contacts(recipient))
            .query_async(&mut conn)
            .await?;
        let mut out: Vec<(String, ContactState)> = all
            .into_iter()
            .filter_map(|(s, v)| ContactState::from_field(&v).map(|st| (s, st)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
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
