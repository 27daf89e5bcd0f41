//! The system of record for what users decide (docs/adr/0028): consent
//! records and contact answers live in the JetStream stream
//! `INTEROP_USER_STATE`, replicated like the pipeline's streams; Redis holds
//! a cache of them that every hot path reads. When Redis loses the cache (a
//! flush, a failover to a replica without the data, an eviction, a TTL), the
//! next read of that user finds no cache marker and loads the user's
//! records from the stream; nothing a user decided is forgotten.
//!
//! Writes go to the stream first and then to Redis, each cached value
//! carrying the stream sequence it came from, so that two writers, or a
//! writer and a loader, that reach Redis in the other order than the stream
//! cannot leave an older value in the cache:
//! - the consent hash (`interop:consent:<A>`) has a field `rev`: the stream
//!   sequence of the record it holds, or `0` for "no record" (a cached
//!   absence, with a TTL of [`ABSENT_TTL_SECS`]). A hash without `rev` is
//!   not a cached record: either a miss, or a record written before the
//!   stream existed (it is moved into the stream when it is first read or
//!   by [`Records::migrate`]).
//! - the contact hash (`interop:contacts:<A>`) holds, per sender,
//!   `<answer>:<sequence>` (`a`, `d`, `b`, or `-` for an answer that was
//!   reset), and the field [`LOADED_FIELD`] once every answer of the user
//!   was loaded from the stream. Without it, the hash is partial (a miss,
//!   or answers written since the loss) and the next read loads.
//!
//! Loads, writes and the start-up migration are here; the reads that check
//! the markers are in [`crate::consent`] and [`crate::contacts`].

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use futures_util::StreamExt as _;
use interop_bus::subjects::{
    user_answered, user_consent, user_contact, STREAM_USER_STATE, USER_STATE_ANSWERS_INDEXED,
};
use interop_proto::v1::{ContactAnswer, StoredConsent, StoredContact};
use interop_proto::Message as _;
use redis::aio::ConnectionManager;

use crate::consent::{Consent, INBOX_COMBINED, INBOX_THIRD_PARTY};
use crate::contacts::{ContactState, CONTACTS_TTL_SECS};
use crate::{keys, StateError};

/// A cached absence (a user with no consent record) lives this long, so a
/// flood of sends to unknown addresses reads the stream once per address
/// per hour, not once per send.
pub const ABSENT_TTL_SECS: u64 = 3600;

/// The contact hash's field that says every answer was loaded. No address
/// is spelled like it (addresses are `provider:user`).
pub const LOADED_FIELD: &str = "~";

/// How long one load of a user's answers may take before it fails (and
/// the read is retried like any unavailable state).
const LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Redis key of the flag set when the cache was warmed from the streams
/// (no TTL: a flush takes it, and the next start warms again).
const WARM_KEY: &str = "interop:state:warm";
/// Redis key of the lock one replica holds while it warms.
const WARMING_KEY: &str = "interop:state:warming";

/// Redis key of the lock one replica holds while it writes the
/// answered-markers of a stream from before them (the flag that it was done
/// is a record in the stream, [`USER_STATE_ANSWERS_INDEXED`]).
const INDEXING_KEY: &str = "interop:state:indexing-answers";

/// How often a replica that found the answered-markers incomplete asks
/// again whether they are complete now.
const INDEXED_RECHECK: Duration = Duration::from_secs(5);

/// Redis key of the flag set when the start-up migration has run.
const MIGRATED_KEY: &str = "interop:state:migrated:v1";
/// Redis key of the lock one replica holds while it migrates.
const MIGRATING_KEY: &str = "interop:state:migrating";

pub(crate) fn unavailable(what: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Records(format!("{what}: {e}"))
}

/// Caches one consent record unless the cache holds a later one.
/// KEYS[1] the consent hash; ARGV: rev, opted_in, allowed, inbox,
/// updated_at_ms. Returns 1 if written, 0 if a later one was there.
static CONSENT_CACHE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local cur = redis.call('HGET', KEYS[1], 'rev')
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'rev', ARGV[1], 'opted_in', ARGV[2], 'allowed', ARGV[3],
  'inbox', ARGV[4], 'updated_at_ms', ARGV[5])
redis.call('PERSIST', KEYS[1])
return 1
",
    )
});

/// Caches the absence of a consent record, unless the hash exists: then
/// returns its fields (`rev` absent: a record from before the stream).
/// KEYS[1] the consent hash; ARGV[1] the TTL. Returns `{1}` if cached,
/// `{0, rev, opted_in, allowed, inbox}` otherwise.
static CONSENT_ABSENT: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  local f = redis.call('HMGET', KEYS[1], 'rev', 'opted_in', 'allowed', 'inbox')
  return {0, f[1], f[2], f[3], f[4]}
end
redis.call('HSET', KEYS[1], 'rev', '0', 'opted_in', '0', 'allowed', '', 'inbox', 'third-party')
redis.call('EXPIRE', KEYS[1], ARGV[1])
return {1}
",
    )
});

/// Caches answers unless the cache holds later ones, field by field.
/// KEYS[1] the contact hash; ARGV[1] the TTL, ARGV[2] `loaded` to set the
/// loaded marker, then triples (sender, answer letter, sequence).
static CONTACTS_CACHE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local n = 0
for i = 3, #ARGV, 3 do
  local cur = redis.call('HGET', KEYS[1], ARGV[i])
  local seq = tonumber(ARGV[i + 2])
  local older = true
  if cur then
    local s = tonumber(string.match(cur, ':(%d+)$') or '0')
    older = s < seq
  end
  if older then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. ':' .. ARGV[i + 2])
    n = n + 1
  end
end
if ARGV[2] == 'loaded' then redis.call('HSET', KEYS[1], '~', '1') end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return n
",
    )
});

/// The letter an answer is cached as.
fn letter(answer: ContactAnswer) -> &'static str {
    match answer {
        ContactAnswer::Accepted => ContactState::Accepted.as_field(),
        ContactAnswer::Declined => ContactState::Declined.as_field(),
        ContactAnswer::Blocked => ContactState::Blocked.as_field(),
        ContactAnswer::None => "-",
    }
}

/// The stored form of an answer (`None`: reset).
pub fn answer_of(state: Option<ContactState>) -> ContactAnswer {
    match state {
        Some(ContactState::Accepted) => ContactAnswer::Accepted,
        Some(ContactState::Declined) => ContactAnswer::Declined,
        Some(ContactState::Blocked) => ContactAnswer::Blocked,
        None => ContactAnswer::None,
    }
}

/// A cached answer's stream sequence (`0`: cached before the stream).
pub fn cached_sequence(value: &str) -> u64 {
    value
        .rsplit_once(':')
        .and_then(|(_, s)| s.parse().ok())
        .unwrap_or(0)
}

/// One user's answers as loaded: sender → (answer, stream sequence).
pub type Answers = HashMap<String, (Option<ContactState>, u64)>;

/// Whether every recipient with an answer has their answered-marker
/// ([`user_answered`]), as this process last saw it.
#[derive(Default)]
struct AnswersIndexed {
    /// Seen complete (it stays so: markers are written before answers).
    known: std::sync::atomic::AtomicBool,
    /// When the stream was last asked, while not known complete.
    checked_at: std::sync::Mutex<Option<std::time::Instant>>,
}

/// The stream of users' decisions and the Redis cache in front of it.
#[derive(Clone)]
pub struct Records {
    js: jetstream::Context,
    stream: jetstream::stream::Stream<()>,
    answers_indexed: std::sync::Arc<AnswersIndexed>,
    /// Groups' records (`crate::group`).
    pub(crate) groups: jetstream::stream::Stream<()>,
    redis: ConnectionManager,
}

impl Records {
    /// Opens the stream (created by `interop_bus::ensure_streams`).
    pub async fn open(
        js: jetstream::Context,
        redis: ConnectionManager,
    ) -> Result<Self, StateError> {
        let stream = js
            .get_stream_no_info(STREAM_USER_STATE)
            .await
            .map_err(|e| unavailable("opening the user-state stream", e))?;
        let groups = js
            .get_stream_no_info(interop_bus::subjects::STREAM_GROUPS)
            .await
            .map_err(|e| unavailable("opening the groups stream", e))?;
        Ok(Self {
            js,
            stream,
            answers_indexed: Default::default(),
            groups,
            redis,
        })
    }

    pub fn redis(&self) -> &ConnectionManager {
        &self.redis
    }

    fn consent_subject(address: &str) -> String {
        user_consent(&interop_bus::recipient_key(address))
    }

    fn contact_subject(recipient: &str, sender: &str) -> String {
        user_contact(
            Some(&interop_bus::recipient_key(recipient)),
            Some(&interop_bus::recipient_key(sender)),
        )
    }

    /// Publishes one record; `expected` is the subject's last sequence it
    /// must still have (`Some(0)`: none yet). `Ok(None)` if another writer
    /// came first.
    pub(crate) async fn publish(
        &self,
        subject: String,
        payload: Vec<u8>,
        expected: Option<u64>,
    ) -> Result<Option<u64>, StateError> {
        use async_nats::jetstream::context::PublishErrorKind;
        let mut headers = async_nats::HeaderMap::new();
        if let Some(seq) = expected {
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                seq.to_string().as_str(),
            );
        }
        let ack = self
            .js
            .publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| unavailable("writing a user's record", e))?;
        match ack.await {
            Ok(ack) => Ok(Some(ack.sequence)),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(None),
            Err(e) => Err(unavailable("writing a user's record", e)),
        }
    }

    // ---- consent ----

    /// Writes a user's consent record: to the stream, then to the cache.
    pub async fn put_consent(&self, address: &str, consent: &Consent) -> Result<(), StateError> {
        let stored = stored_consent(address, consent);
        let seq = self
            .publish(Self::consent_subject(address), stored.encode_to_vec(), None)
            .await?
            .ok_or_else(|| unavailable("writing consent", "refused without a condition"))?;
        self.cache_consent(address, &stored, seq).await
    }

    async fn cache_consent(
        &self,
        address: &str,
        stored: &StoredConsent,
        seq: u64,
    ) -> Result<(), StateError> {
        let mut conn = self.redis.clone();
        let _: i64 = CONSENT_CACHE
            .key(keys::consent(address))
            .arg(seq)
            .arg(if stored.opted_in { "1" } else { "0" })
            .arg(stored.allowed_providers.join(","))
            .arg(if stored.combined_inbox {
                INBOX_COMBINED
            } else {
                INBOX_THIRD_PARTY
            })
            .arg(stored.updated_at_ms)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Loads a user's consent record from the stream into the cache (a
    /// cache miss) and returns it. A record cached before the stream
    /// existed is moved into the stream first.
    pub async fn load_consent(&self, address: &str) -> Result<Consent, StateError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        loop {
            match self
                .stream
                .direct_get_last_for_subject(Self::consent_subject(address))
                .await
            {
                Ok(m) => {
                    let stored = StoredConsent::decode(m.payload)
                        .map_err(|e| unavailable("decoding a consent record", e))?;
                    self.cache_consent(address, &stored, m.sequence).await?;
                    return Ok(consent_of(&stored));
                }
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
                Err(e) => return Err(unavailable("reading a consent record", e)),
            }
            // No record in the stream: cache the absence, unless Redis
            // holds a record from before the stream (move it in) or one
            // written since this read began (read again).
            let mut conn = self.redis.clone();
            let r: Vec<Option<String>> = CONSENT_ABSENT
                .key(keys::consent(address))
                .arg(ABSENT_TTL_SECS)
                .invoke_async(&mut conn)
                .await?;
            match r.as_slice() {
                [Some(one)] if one == "1" => return Ok(Consent::default()),
                [_, None, opted_in, allowed, inbox] => {
                    let legacy = Consent::from_hash(
                        opted_in.as_deref(),
                        allowed.as_deref(),
                        inbox.as_deref(),
                    );
                    let stored = stored_consent(address, &legacy);
                    if let Some(seq) = self
                        .publish(
                            Self::consent_subject(address),
                            stored.encode_to_vec(),
                            Some(0),
                        )
                        .await?
                    {
                        self.cache_consent(address, &stored, seq).await?;
                        return Ok(legacy);
                    }
                }
                [_, Some(rev), opted_in, allowed, inbox] if rev == "0" => {
                    // A cached absence written meanwhile.
                    return Ok(Consent::from_hash(
                        opted_in.as_deref(),
                        allowed.as_deref(),
                        inbox.as_deref(),
                    ));
                }
                _ => {} // a record written meanwhile: read it
            }
        }
    }

    // ---- contacts ----

    /// Writes `recipient`'s answer about `sender` (`None`: reset): to the
    /// stream, then to the cache. With `expected`, only if the answer's
    /// last sequence is still that (`0`: never answered); `Ok(false)` if it
    /// was not.
    pub async fn put_contact(
        &self,
        recipient: &str,
        sender: &str,
        state: Option<ContactState>,
        expected: Option<u64>,
    ) -> Result<bool, StateError> {
        // The marker goes first, so a reader who finds none may trust that
        // there is no answer (see `read_answers`).
        self.mark_answered(recipient).await?;
        let answer = answer_of(state);
        let stored = StoredContact {
            recipient: recipient.to_owned(),
            sender: sender.to_owned(),
            answer: answer as i32,
            updated_at_ms: interop_proto::now_ms(),
        };
        let Some(seq) = self
            .publish(
                Self::contact_subject(recipient, sender),
                stored.encode_to_vec(),
                expected,
            )
            .await?
        else {
            return Ok(false);
        };
        let mut conn = self.redis.clone();
        let _: i64 = CONTACTS_CACHE
            .key(keys::contacts(recipient))
            .arg(CONTACTS_TTL_SECS)
            .arg("")
            .arg(sender)
            .arg(letter(answer))
            .arg(seq)
            .invoke_async(&mut conn)
            .await?;
        Ok(true)
    }

    /// Writes `recipient`'s answered-marker unless it is there (one
    /// publish, compare-and-set on "no message yet").
    async fn mark_answered(&self, recipient: &str) -> Result<(), StateError> {
        self.mark_answered_key(&interop_bus::recipient_key(recipient))
            .await
    }

    async fn mark_answered_key(&self, recipient_key: &str) -> Result<(), StateError> {
        self.publish(user_answered(recipient_key), Vec::new(), Some(0))
            .await?;
        Ok(())
    }

    /// Every answer of `recipient` in the stream. Most users answered
    /// nobody: a direct get of their answered-marker (one exact subject,
    /// found in the server's per-subject index) says so without a consumer.
    /// While the stream's markers are incomplete (a stream from before
    /// them, not yet indexed by [`Records::index_answers`]), a direct get
    /// of the last message on any of their answer subjects says it instead:
    /// a wildcard, which nats-server 2.9 answers by walking every subject
    /// of the stream.
    async fn read_answers(&self, recipient: &str) -> Result<Answers, StateError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let key = interop_bus::recipient_key(recipient);
        let filter = user_contact(Some(&key), None);
        let probe = if self.answers_indexed().await {
            user_answered(&key)
        } else {
            filter.clone()
        };
        match self.stream.direct_get_last_for_subject(probe).await {
            Ok(_) => {}
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(Answers::new()),
            Err(e) => return Err(unavailable("reading a user's answers", e)),
        }
        self.read_contacts(filter, |c| c.sender.clone()).await
    }

    /// Whether every recipient with an answer has their marker: known
    /// once seen, asked of the stream at most every [`INDEXED_RECHECK`]
    /// until then (an unreadable stream counts as not yet).
    async fn answers_indexed(&self) -> bool {
        use std::sync::atomic::Ordering;
        let indexed = &self.answers_indexed;
        if indexed.known.load(Ordering::Acquire) {
            return true;
        }
        {
            let mut at = indexed
                .checked_at
                .lock()
                .expect("the check time is never poisoned");
            if at.is_some_and(|t| t.elapsed() < INDEXED_RECHECK) {
                return false;
            }
            *at = Some(std::time::Instant::now());
        }
        let complete = self.answers_indexed_in_stream().await.unwrap_or(false);
        if complete {
            indexed.known.store(true, Ordering::Release);
        }
        complete
    }

    async fn answers_indexed_in_stream(&self) -> Result<bool, StateError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self
            .stream
            .direct_get_last_for_subject(USER_STATE_ANSWERS_INDEXED)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(false),
            Err(e) => Err(unavailable("reading whether answers are indexed", e)),
        }
    }

    /// Writes the answered-marker of every recipient with an answer
    /// written since the last time (all of them the first time, for a
    /// stream from before markers), then the record saying the markers are
    /// complete up to the stream's end as it was when this began. Run at
    /// every ingest start: answers written without a marker by replicas of
    /// an older version during a rolling upgrade get theirs at the next
    /// start. One replica at a time (a lock with a TTL in Redis). Returns
    /// how many answers it looked at, or `None` if another replica is at it.
    pub async fn index_answers(&self) -> Result<Option<u64>, StateError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let what = "marking users with answers";
        let mut conn = self.redis.clone();
        let locked: Option<String> = redis::cmd("SET")
            .arg(INDEXING_KEY)
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(600)
            .query_async(&mut conn)
            .await?;
        if locked.is_none() {
            return Ok(None);
        }
        let since = match self
            .stream
            .direct_get_last_for_subject(USER_STATE_ANSWERS_INDEXED)
            .await
        {
            Ok(m) => std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
            Err(e) => return Err(unavailable(what, e)),
        };
        let until = self
            .js
            .get_stream(STREAM_USER_STATE)
            .await
            .map_err(|e| unavailable(what, e))?
            .cached_info()
            .state
            .last_sequence;
        let mut seen = 0;
        if until > since {
            let mut recipients = std::collections::HashSet::new();
            let config = pull::OrderedConfig {
                filter_subject: user_contact_all(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: since + 1,
                },
                headers_only: true,
                ..Default::default()
            };
            self.read_ordered(&self.stream, config, what, |msg, seq| {
                seen += 1;
                if let Some(key) = answer_recipient_key(msg.subject.as_str()) {
                    recipients.insert(key.to_owned());
                }
                seq < until
            })
            .await?;
            for key in &recipients {
                self.mark_answered_key(key).await?;
            }
        }
        self.publish(
            USER_STATE_ANSWERS_INDEXED.to_owned(),
            until.max(since).to_string().into_bytes(),
            None,
        )
        .await?;
        let _: () = redis::cmd("DEL")
            .arg(INDEXING_KEY)
            .query_async(&mut conn)
            .await?;
        Ok(Some(seen))
    }

    /// Every answer in the stream whose subject matches `filter`, keyed by
    /// `key`.
    async fn read_contacts(
        &self,
        filter: String,
        key: impl Fn(&StoredContact) -> String,
    ) -> Result<Answers, StateError> {
        let mut raw = Vec::new();
        self.read_last_per_subject(&self.stream, filter, |payload, seq| {
            raw.push((payload, seq));
        })
        .await?;
        let mut out = Answers::new();
        for (payload, seq) in raw {
            let stored =
                StoredContact::decode(payload).map_err(|e| unavailable("decoding an answer", e))?;
            let state = ContactState::from_field(letter(stored.answer()));
            out.insert(key(&stored), (state, seq));
        }
        Ok(out)
    }

    /// Loads every answer of `recipient` from the stream into the cache and
    /// marks it loaded (a cache miss); returns them. Answers cached before
    /// the stream existed (no sequence) are moved into the stream first.
    pub async fn load_contacts(&self, recipient: &str) -> Result<Answers, StateError> {
        let mut answers = self.read_answers(recipient).await?;
        let mut conn = self.redis.clone();
        let cached: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::contacts(recipient))
            .query_async(&mut conn)
            .await?;
        for (sender, value) in cached {
            if sender == LOADED_FIELD || value.contains(':') || answers.contains_key(&sender) {
                continue;
            }
            let Some(state) = ContactState::from_field(&value) else {
                continue;
            };
            // From before the stream: move it in, unless answered meanwhile.
            if self
                .put_contact(recipient, &sender, Some(state), Some(0))
                .await?
            {
                answers.insert(sender, (Some(state), 0));
            }
        }
        let answers = if answers.values().any(|(_, seq)| *seq == 0) {
            // Read back the sequences the moves got.
            self.read_answers(recipient).await?
        } else {
            answers
        };
        let mut call = CONTACTS_CACHE.key(keys::contacts(recipient));
        call.arg(CONTACTS_TTL_SECS).arg("loaded");
        for (sender, (state, seq)) in &answers {
            call.arg(sender).arg(letter(answer_of(*state))).arg(*seq);
        }
        let _: i64 = call.invoke_async(&mut conn).await?;
        // What the cache holds now: an answer written since the read began
        // is later than the one read, and stays.
        let merged: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::contacts(recipient))
            .query_async(&mut conn)
            .await?;
        Ok(merged
            .into_iter()
            .filter(|(sender, _)| sender != LOADED_FIELD)
            .map(|(sender, v)| {
                let entry = (ContactState::from_field(&v), cached_sequence(&v));
                (sender, entry)
            })
            .collect())
    }

    // ---- erasure ----

    /// Erases `address`'s records from the stream: their consent record and
    /// their own answers, and other users' accepted and declined answers
    /// about them. Other users' blocks of them stay (see
    /// [`crate::erase`]). Returns (records removed, blocks kept).
    pub async fn erase_user(&self, address: &str) -> Result<(u64, u64), StateError> {
        let key = interop_bus::recipient_key(address);
        let mut removed = 0;
        for filter in [user_consent(&key), user_contact(Some(&key), None)] {
            let r = self
                .stream
                .purge()
                .filter(filter)
                .await
                .map_err(|e| unavailable("erasing a user's records", e))?;
            removed += r.purged;
        }
        // Their answered-marker (no record of a decision: not counted).
        self.stream
            .purge()
            .filter(user_answered(&key))
            .await
            .map_err(|e| unavailable("erasing a user's records", e))?;
        let about = self
            .read_contacts(user_contact(None, Some(&key)), |c| c.recipient.clone())
            .await?;
        let mut kept = 0;
        for (recipient, (state, _)) in about {
            if state == Some(ContactState::Blocked) {
                kept += 1;
                continue;
            }
            let r = self
                .stream
                .purge()
                .filter(Self::contact_subject(&recipient, address))
                .await
                .map_err(|e| unavailable("erasing answers about a user", e))?;
            removed += r.purged;
        }
        Ok((removed, kept))
    }

    // ---- once per Redis: warming and migration ----

    /// Whether this replica does a once-per-Redis job now: not if `flag`
    /// says it was done, nor while another replica holds `lock` (a TTL of
    /// 10 minutes, so a replica that stopped half way does not block it).
    async fn take_turn(&self, flag: &str, lock: &str) -> Result<bool, StateError> {
        let mut conn = self.redis.clone();
        let done: bool = redis::cmd("EXISTS")
            .arg(flag)
            .query_async(&mut conn)
            .await?;
        if done {
            return Ok(false);
        }
        let locked: Option<String> = redis::cmd("SET")
            .arg(lock)
            .arg("1")
            .arg("NX")
            .arg("EX")
            .arg(600)
            .query_async(&mut conn)
            .await?;
        Ok(locked.is_some())
    }

    /// Marks a once-per-Redis job done and lets go of its lock.
    async fn done_turn(&self, flag: &str, lock: &str) -> Result<(), StateError> {
        let mut conn = self.redis.clone();
        let _: () = redis::pipe()
            .cmd("SET")
            .arg(flag)
            .arg(interop_proto::now_ms())
            .ignore()
            .cmd("DEL")
            .arg(lock)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Fills the cache with every consent record and every group from the
    /// streams, once per Redis (one replica at a time; a flag when done, so
    /// later starts skip it until Redis loses it). Answers are not warmed:
    /// a user's are cached together on first use (a pass over the whole
    /// stream would order them by time, not by user). Returns (consent
    /// records, groups) cached, or `None` if it was not this replica's
    /// turn.
    pub async fn warm(&self) -> Result<Option<(u64, u64)>, StateError> {
        if !self.take_turn(WARM_KEY, WARMING_KEY).await? {
            return Ok(None);
        }
        let mut conn = self.redis.clone();
        let mut consents = 0;
        let filter = user_consent("*");
        let mut batch: Vec<(StoredConsent, u64)> = Vec::new();
        let mut records = Vec::new();
        self.read_last_per_subject(&self.stream, filter, |payload, seq| {
            records.push((payload, seq));
        })
        .await?;
        for (payload, seq) in records {
            let stored = StoredConsent::decode(payload)
                .map_err(|e| unavailable("decoding a consent record", e))?;
            batch.push((stored, seq));
        }
        // EVALSHA in a pipeline: load the script first (a new Redis has
        // none).
        CONSENT_CACHE.load_async(&mut conn).await?;
        for chunk in batch.chunks(500) {
            let calls: Vec<redis::ScriptInvocation<'_>> = chunk
                .iter()
                .map(|(stored, seq)| {
                    let mut call = CONSENT_CACHE.key(keys::consent(&stored.address));
                    call.arg(*seq)
                        .arg(if stored.opted_in { "1" } else { "0" })
                        .arg(stored.allowed_providers.join(","))
                        .arg(if stored.combined_inbox {
                            INBOX_COMBINED
                        } else {
                            INBOX_THIRD_PARTY
                        })
                        .arg(stored.updated_at_ms);
                    call
                })
                .collect();
            let mut pipe = redis::pipe();
            for call in &calls {
                pipe.invoke_script(call).ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
            consents += chunk.len() as u64;
        }
        let groups = crate::GroupStore::new(self.clone()).warm().await?;
        self.done_turn(WARM_KEY, WARMING_KEY).await?;
        Ok(Some((consents, groups)))
    }

    /// Every last message per subject of `stream` under `filter`, with its
    /// sequence, in stream order.
    pub(crate) async fn read_last_per_subject(
        &self,
        stream: &jetstream::stream::Stream<()>,
        filter: String,
        mut visit: impl FnMut(bytes::Bytes, u64),
    ) -> Result<(), StateError> {
        let config = pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        };
        self.read_ordered(
            stream,
            config,
            "reading the user-state streams",
            |msg, seq| {
                visit(msg.payload.clone(), seq);
                true
            },
        )
        .await
    }

    /// Reads `stream` through an ordered consumer made with `config`, each
    /// message with its sequence, until none is pending or `visit` says stop
    /// (`false`). Each message may take [`LOAD_TIMEOUT`].
    async fn read_ordered(
        &self,
        stream: &jetstream::stream::Stream<()>,
        config: pull::OrderedConfig,
        what: &'static str,
        mut visit: impl FnMut(&jetstream::Message, u64) -> bool,
    ) -> Result<(), StateError> {
        let consumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| unavailable(what, e))?;
        let mut left = consumer.cached_info().num_pending;
        if left == 0 {
            return Ok(());
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| unavailable(what, e))?;
        while left > 0 {
            let msg = tokio::time::timeout(LOAD_TIMEOUT, messages.next())
                .await
                .map_err(|_| unavailable(what, "timed out"))?
                .ok_or_else(|| unavailable(what, "ended early"))?
                .map_err(|e| unavailable(what, e))?;
            let info = msg.info().map_err(|e| unavailable(what, e))?;
            let (seq, pending) = (info.stream_sequence, info.pending);
            left = if visit(&msg, seq) { pending } else { 0 };
        }
        Ok(())
    }

    // ---- migration ----

    /// Moves every record cached before the stream existed into the stream
    /// (docs/adr/0028), once per Redis: one replica at a time (a lock with
    /// a TTL), and a flag when done, so later starts skip it. Until it has
    /// run, such records are moved when they are first read. Returns how
    /// many users' records were moved, or `None` if another replica holds
    /// the lock or it ran before.
    pub async fn migrate(&self) -> Result<Option<u64>, StateError> {
        if !self.take_turn(MIGRATED_KEY, MIGRATING_KEY).await? {
            return Ok(None);
        }
        let mut conn = self.redis.clone();
        let mut moved = 0;
        for key in crate::erase::scan(&self.redis, &format!("{}*", keys::CONSENT_PREFIX)).await? {
            let Some(address) = key.strip_prefix(keys::CONSENT_PREFIX) else {
                continue;
            };
            let rev: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("rev")
                .query_async(&mut conn)
                .await?;
            if rev.is_none() {
                self.load_consent(address).await?;
                moved += 1;
            }
        }
        for key in crate::erase::scan(&self.redis, &format!("{}*", keys::CONTACTS_PREFIX)).await? {
            let Some(recipient) = key.strip_prefix(keys::CONTACTS_PREFIX) else {
                continue;
            };
            let loaded: bool = redis::cmd("HEXISTS")
                .arg(&key)
                .arg(LOADED_FIELD)
                .query_async(&mut conn)
                .await?;
            if !loaded {
                self.load_contacts(recipient).await?;
                moved += 1;
            }
        }
        moved += crate::GroupStore::new(self.clone()).migrate().await?;
        self.done_turn(MIGRATED_KEY, MIGRATING_KEY).await?;
        Ok(Some(moved))
    }
}

/// Every answer's subject (a filter).
fn user_contact_all() -> String {
    user_contact(None, None)
}

/// The recipient key in an answer's subject
/// (`interop.v1.state.contact.<recipient key>.<sender key>`).
fn answer_recipient_key(subject: &str) -> Option<&str> {
    // `<prefix>.contact..` less its last dot: `<prefix>.contact.`.
    let prefix = user_contact(Some(""), Some(""));
    let rest = subject.strip_prefix(&prefix[..prefix.len() - 1])?;
    let (key, sender) = rest.split_once('.')?;
    (!key.is_empty() && !sender.is_empty() && !sender.contains('.')).then_some(key)
}

/// The stored form of a consent record.
fn stored_consent(address: &str, consent: &Consent) -> StoredConsent {
    StoredConsent {
        address: address.to_owned(),
        opted_in: consent.opted_in,
        allowed_providers: consent.allowed_providers.clone(),
        combined_inbox: consent.combined_inbox,
        updated_at_ms: interop_proto::now_ms(),
    }
}

fn consent_of(stored: &StoredConsent) -> Consent {
    Consent {
        opted_in: stored.opted_in,
        allowed_providers: stored.allowed_providers.clone(),
        combined_inbox: stored.combined_inbox,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answers_subject_names_its_recipient() {
        let subject = user_contact(Some("r1"), Some("s2"));
        assert_eq!(answer_recipient_key(&subject), Some("r1"));
        assert_eq!(answer_recipient_key(&user_consent("r1")), None);
        assert_eq!(answer_recipient_key(&user_answered("r1")), None);
        assert_eq!(
            answer_recipient_key(&user_contact(Some(""), Some("s"))),
            None
        );
        assert_eq!(answer_recipient_key(&format!("{subject}.x")), None);
    }

    #[test]
    fn cached_answers_carry_their_sequence_and_old_ones_count_as_zero() {
        assert_eq!(cached_sequence("b:42"), 42);
        assert_eq!(cached_sequence("a"), 0);
        assert_eq!(cached_sequence("-:7"), 7);
        assert_eq!(cached_sequence("x:"), 0);
    }

    #[test]
    fn every_answer_round_trips_through_its_letter() {
        for state in [
            None,
            Some(ContactState::Accepted),
            Some(ContactState::Declined),
            Some(ContactState::Blocked),
        ] {
            assert_eq!(ContactState::from_field(letter(answer_of(state))), state);
        }
    }
}
