//! Every NATS subject, stream and consumer name the gateway uses. None is
//! written inline anywhere else.
//!
//! Events are `interop.v1.<service>.<past-tense-verb>`. The per-recipient
//! store subjects end in a recipient key (see [`crate::recipient_key`]).

/// ingest → routing: a message was durably accepted from a provider.
pub const INGEST_ACCEPTED: &str = "interop.v1.ingest.accepted";
/// routing → spam-scoring, core NATS request/reply (no stream): score these
/// messages (`ScoreRequest` → `ScoreReply`; docs/adr/0015).
pub const SPAM_SCORE: &str = "interop.v1.spam-scoring.score";
/// The queue group spam-scoring's replicas answer [`SPAM_SCORE`] in.
pub const QUEUE_SPAM_SCORING: &str = "spam-scoring";
/// Messages one [`SPAM_SCORE`] request carries at most: spam-scoring
/// answers a longer one with a permanent failure for each message, and
/// routing's batcher checks at compile time that its batches fit.
pub const SPAM_SCORE_MAX_MESSAGES: usize = 256;
/// routing → media-transcoding: the message carries media to process.
pub const ROUTING_MEDIA_REQUESTED: &str = "interop.v1.routing.media-requested";
/// routing → the quarantine: a message spam-scoring scored as quarantine,
/// held out of every inbox for review (stream [`STREAM_QUARANTINE`]).
pub const ROUTING_QUARANTINED: &str = "interop.v1.routing.quarantined";
/// Prefix of the per-recipient store:
/// `interop.v1.delivery.queued.<provider>.<partition>.<key>` (the
/// recipient's path: [`crate::recipient_path`]). Written by routing,
/// media-transcoding, ingest (key notices) and delivery (receipts); read by
/// delivery sessions: a user's by its key, a provider session's by its
/// partitions.
pub const DELIVERY_QUEUED_PREFIX: &str = "interop.v1.delivery.queued";
/// All per-recipient store subjects.
pub const DELIVERY_QUEUED_ALL: &str = "interop.v1.delivery.queued.*.*.*";
/// Store subjects of the layout before provider partitions
/// (`interop.v1.delivery.queued.<key>`): still part of the store so that
/// what an earlier version stored is moved, not lost (docs/adr/0031).
pub const DELIVERY_QUEUED_LEGACY: &str = "interop.v1.delivery.queued.*";

/// Stream holding [`INGEST_ACCEPTED`] (work queue).
pub const STREAM_INGEST: &str = "INTEROP_INGEST";
/// Stream holding [`ROUTING_MEDIA_REQUESTED`] (work queue).
pub const STREAM_MEDIA: &str = "INTEROP_MEDIA";
/// Stream holding [`ROUTING_QUARANTINED`] (limits: age and count).
pub const STREAM_QUARANTINE: &str = "INTEROP_QUARANTINE";
/// Stream holding the per-recipient store (limits: age and count).
pub const STREAM_INBOX: &str = "INTEROP_INBOX";

/// Durable consumer names = queue groups = service names.
pub const CONSUMER_ROUTING: &str = "routing";
pub const CONSUMER_MEDIA_TRANSCODING: &str = "media-transcoding";

/// Prefix of device cursors: `interop.v1.delivery.acked.<key>.<device>`
/// holds the last store sequence the device acked with nothing un-acked
/// before it (one message per subject is kept).
pub const DELIVERY_ACKED_PREFIX: &str = "interop.v1.delivery.acked";
/// All device cursor subjects.
pub const DELIVERY_ACKED_ALL: &str = "interop.v1.delivery.acked.>";
/// Stream holding the device cursors (last value per subject).
pub const STREAM_CURSORS: &str = "INTEROP_CURSORS";

/// The cursor of one partition of one provider's recipients, moved by
/// provider sessions: `interop.v1.delivery.acked.partition.<provider>.<n>`
/// (three tokens after the prefix, so a device cursor filter,
/// `<key>.*`, never takes it).
pub fn partition_cursor(provider: &str, partition: u32) -> String {
    format!("{DELIVERY_ACKED_PREFIX}.partition.{provider}.{partition}")
}

/// Prefix of provider sessions' coordination (docs/adr/0031):
/// `interop.v1.delivery.provider.members.<provider>.<session>` (each open
/// provider session's heartbeat) and
/// `interop.v1.delivery.provider.leases.<provider>.<partition>` (who owns
/// a partition, until when; written compare-and-set).
pub const PROVIDER_SESSIONS_PREFIX: &str = "interop.v1.delivery.provider";
/// All of provider sessions' coordination subjects.
pub const PROVIDER_SESSIONS_ALL: &str = "interop.v1.delivery.provider.>";
/// Stream of provider sessions' heartbeats and partition leases (the last
/// record per subject).
pub const STREAM_PROVIDER_SESSIONS: &str = "INTEROP_PROVIDER_SESSIONS";

/// The heartbeat subject of one provider session.
pub fn provider_member(provider: &str, session: &str) -> String {
    format!("{PROVIDER_SESSIONS_PREFIX}.members.{provider}.{session}")
}

/// Every heartbeat subject of one provider's sessions.
pub fn provider_members(provider: &str) -> String {
    format!("{PROVIDER_SESSIONS_PREFIX}.members.{provider}.*")
}

/// The lease subject of one partition of one provider.
pub fn provider_lease(provider: &str, partition: u32) -> String {
    format!("{PROVIDER_SESSIONS_PREFIX}.leases.{provider}.{partition}")
}

/// Prefix of the provider registry: `interop.v1.providers.<id>` holds the
/// provider's current record (JSON; one message kept per subject).
pub const PROVIDERS_PREFIX: &str = "interop.v1.providers";
/// All provider records.
pub const PROVIDERS_ALL: &str = "interop.v1.providers.*";
/// Stream holding the provider registry.
pub const STREAM_PROVIDERS: &str = "INTEROP_PROVIDERS";

/// Prefix of what a recipient's open delivery sessions listen to on core
/// NATS, `<path>` being the recipient's path
/// (`<provider>.<partition>.<key>`, [`crate::recipient_path`]):
/// `interop.v1.delivery.session.<path>.stored` (each message stored for
/// the recipient, republished by JetStream once committed, with its store
/// sequence and the subject's previous one: docs/adr/0016),
/// `interop.v1.delivery.session.<path>.ephemeral` (typing, published by ingest
/// on core NATS, never stored; nobody listening = dropped) and
/// `interop.v1.delivery.session.<path>.changed` (what the recipient admits
/// changed: docs/adr/0018). A provider session listens to a partition's:
/// `interop.v1.delivery.session.<provider>.<partition>.*.*`.
pub const SESSION_PREFIX: &str = "interop.v1.delivery.session";
/// Last token of a republished stored message's subject.
pub const SESSION_STORED: &str = "stored";
/// Last token of an ephemeral event's subject.
pub const SESSION_EPHEMERAL: &str = "ephemeral";
/// Last token of the event "the recipient's consent or answers changed".
pub const SESSION_CHANGED: &str = "changed";
/// Core NATS: what many recipients admit may have changed at once (a user
/// erasure removes other users' answers about the erased user). Every
/// delivery replica listens (docs/adr/0018).
pub const ADMISSIONS_CHANGED_ALL: &str = "interop.v1.delivery.admissions.changed";
/// Where `INTEROP_INBOX` republishes each stored message (a stream
/// `republish` destination: the recipient's path is the store subject's
/// three wildcard tokens).
pub const SESSION_STORED_REPUBLISH: &str =
    "interop.v1.delivery.session.{{wildcard(1)}}.{{wildcard(2)}}.{{wildcard(3)}}.stored";

/// The JetStream object store bucket holding media blobs (its stream is
/// `OBJ_INTEROP_MEDIA_BLOBS`; written by media-transcoding).
pub const MEDIA_BUCKET: &str = "INTEROP_MEDIA_BLOBS";

/// Durable consumer of delivery's expiry sweeper on [`STREAM_INBOX`].
pub const CONSUMER_EXPIRY: &str = "delivery-expiry";

/// The ephemeral subject of one recipient (`path`: [`crate::recipient_path`]).
pub fn ephemeral_sent(path: &str) -> String {
    format!("{SESSION_PREFIX}.{path}.{SESSION_EPHEMERAL}")
}

/// The subject on which one recipient's stored messages are republished.
pub fn session_stored(path: &str) -> String {
    format!("{SESSION_PREFIX}.{path}.{SESSION_STORED}")
}

/// The subject on which a change of what one recipient admits is announced.
pub fn session_changed(path: &str) -> String {
    format!("{SESSION_PREFIX}.{path}.{SESSION_CHANGED}")
}

/// Everything a delivery session of one recipient listens to on core NATS,
/// in one subscription: its stored messages as JetStream republishes them,
/// its ephemeral events and changes of what it admits. Not its store subject itself: a session does
/// not see a publish before the store committed it.
pub fn session_events(path: &str) -> String {
    format!("{SESSION_PREFIX}.{path}.*")
}

/// What a provider session owning one partition listens to on core NATS:
/// one kind of session event ([`SESSION_EPHEMERAL`], [`SESSION_CHANGED`])
/// of every recipient of the provider in the partition (its stored
/// messages it reads with a consumer, [`partition_store`]).
pub fn partition_events(provider: &str, partition: u32, kind: &str) -> String {
    format!("{SESSION_PREFIX}.{provider}.{partition}.*.{kind}")
}

/// The store subjects of one partition of one provider's recipients: a
/// provider session's consumer filter.
pub fn partition_store(provider: &str, partition: u32) -> String {
    format!("{DELIVERY_QUEUED_PREFIX}.{provider}.{partition}.*")
}

/// The record subject of one provider.
pub fn provider_record(id: &str) -> String {
    format!("{PROVIDERS_PREFIX}.{id}")
}

/// The cursor subject of one device of one recipient.
pub fn delivery_acked(recipient_key: &str, device_id: &str) -> String {
    format!("{DELIVERY_ACKED_PREFIX}.{recipient_key}.{device_id}")
}

/// The key directory's pools of one-time prekeys and MLS KeyPackages: one
/// message per key, claimed by deleting it (docs/adr/0025).
pub const KEYS_POOL_PREFIX: &str = "interop.v1.keys.pool";
pub const KEYS_POOL_ALL: &str = "interop.v1.keys.pool.>";
/// The stream holding the pools.
pub const STREAM_KEYS_POOL: &str = "INTEROP_KEYS_POOL";
/// Each user's devices and their long-term keys: one message per user (the
/// last per subject is kept), written compare-and-set.
pub const KEYS_DEVICES_PREFIX: &str = "interop.v1.keys.devices";
pub const KEYS_DEVICES_ALL: &str = "interop.v1.keys.devices.*";
/// The stream holding the users' devices.
pub const STREAM_KEYS_DEVICES: &str = "INTEROP_KEYS_DEVICES";

/// The pool of one-time prekeys (`kind` "otk") or KeyPackages ("kp") of a
/// user's device: `interop.v1.keys.pool.<user key>.<device>.<kind>`.
pub fn keys_pool(user_key: &str, device_id: &str, kind: &str) -> String {
    format!("{KEYS_POOL_PREFIX}.{user_key}.{device_id}.{kind}")
}

/// What users decided (docs/adr/0028): consent records and contact
/// answers, the system of record that Redis caches. One message per record
/// (the last per subject is kept).
pub const USER_STATE_PREFIX: &str = "interop.v1.state";
pub const USER_STATE_ALL: &str = "interop.v1.state.>";
/// The stream holding users' decisions.
pub const STREAM_USER_STATE: &str = "INTEROP_USER_STATE";
/// Written once every recipient with an answer in the stream has its
/// [`user_answered`] marker: from then on a recipient without one answered
/// nobody (before, a reader looks for their answers with a wildcard).
pub const USER_STATE_ANSWERS_INDEXED: &str = "interop.v1.state.meta.answers-indexed";

/// Groups and their members (docs/adr/0028): one message per group, the
/// last kept, written compare-and-set; an unused group ages out.
pub const GROUPS_PREFIX: &str = "interop.v1.groups";
pub const GROUPS_ALL: &str = "interop.v1.groups.*";
/// The stream holding groups.
pub const STREAM_GROUPS: &str = "INTEROP_GROUPS";
/// How long a group nobody changed or wrote to is kept (400 days; a send
/// refreshes it at most once a day).
pub const GROUPS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(400 * 24 * 3600);

/// A group's record: `interop.v1.groups.<group key>` (the key hashes the
/// id like a user key).
pub fn group_record(group_key: &str) -> String {
    format!("{GROUPS_PREFIX}.{group_key}")
}

/// Key transparency's log (issue 21, `interop-transparency`): the auditable
/// key directory's records, appended one batch (an epoch) at a time as
/// chunks, each batch made part of the directory by a commit message
/// written compare-and-set, so the directory has one history.
pub const KT_LOG_ALL: &str = "interop.v1.kt.log.*";
/// A chunk of a batch's records.
pub const KT_LOG_CHUNK: &str = "interop.v1.kt.log.chunk";
/// A batch's commit.
pub const KT_LOG_COMMIT: &str = "interop.v1.kt.log.commit";
/// The stream holding the log.
pub const STREAM_KT_LOG: &str = "INTEROP_KT_LOG";
/// Each epoch's root hash, for anyone to read (no user data).
pub const KT_ROOTS: &str = "interop.v1.kt.roots";
/// Each epoch's append-only proof (from the epoch before), in chunks, for
/// anyone to read (hashes and VRF labels, no user data).
pub const KT_AUDIT: &str = "interop.v1.kt.audit";
/// The stream holding the roots and the append-only proofs.
pub const STREAM_KT_ROOTS: &str = "INTEROP_KT_ROOTS";

/// A user's consent record: `interop.v1.state.consent.<user key>`.
pub fn user_consent(user_key: &str) -> String {
    format!("{USER_STATE_PREFIX}.consent.{user_key}")
}

/// Whether a recipient has answered anyone: `interop.v1.state.answered.<recipient
/// key>`, written before their first answer. A reader asks for this one
/// subject (which the server finds in its per-subject index) instead of
/// the wildcard over their answers, which nats-server 2.9 answers by
/// walking every subject of the stream.
pub fn user_answered(recipient_key: &str) -> String {
    format!("{USER_STATE_PREFIX}.answered.{recipient_key}")
}

/// A recipient's answer about one sender:
/// `interop.v1.state.contact.<recipient key>.<sender key>`. `None` for
/// either key gives the wildcard `*` there (every answer of a recipient,
/// or every answer about a sender).
pub fn user_contact(recipient_key: Option<&str>, sender_key: Option<&str>) -> String {
    format!(
        "{USER_STATE_PREFIX}.contact.{}.{}",
        recipient_key.unwrap_or("*"),
        sender_key.unwrap_or("*")
    )
}

/// The store subject of one recipient (`path`: [`crate::recipient_path`]).
pub fn delivery_queued(path: &str) -> String {
    format!("{DELIVERY_QUEUED_PREFIX}.{path}")
}

/// The recipient key a store subject (either layout) or a session subject
/// names, if it is one.
pub fn store_subject_key(subject: &str) -> Option<&str> {
    let rest = subject
        .strip_prefix(DELIVERY_QUEUED_PREFIX)?
        .strip_prefix('.')?;
    let tokens: Vec<&str> = rest.split('.').collect();
    match tokens.as_slice() {
        [key] | [_, _, key] if !key.is_empty() => Some(key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_subject(s: &str) -> bool {
        !s.starts_with('$')
            && s.split('.').all(|t| {
                !t.is_empty()
                    && (t == "*"
                        || t.bytes()
                            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'))
            })
    }

    #[test]
    fn subjects_follow_the_naming_rule() {
        for s in [
            INGEST_ACCEPTED,
            SPAM_SCORE,
            ROUTING_MEDIA_REQUESTED,
            ROUTING_QUARANTINED,
            DELIVERY_QUEUED_PREFIX,
            DELIVERY_QUEUED_ALL,
            DELIVERY_ACKED_PREFIX,
            PROVIDERS_ALL,
            SESSION_PREFIX,
            ADMISSIONS_CHANGED_ALL,
        ] {
            assert!(valid_subject(s), "{s}");
            assert!(s.starts_with("interop.v1."), "{s}");
        }
        let key = crate::recipient_path("home:+4915112345678");
        assert!(valid_subject(&delivery_queued(&key)));
        // One session subscription covers both of a recipient's session
        // subjects, and not the store subject itself (a session would get
        // every stored message twice).
        let events = session_events(&key);
        let matches = |subject: &str| {
            let t: Vec<&str> = subject.split('.').collect();
            let p: Vec<&str> = events.split('.').collect();
            t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| *p == "*" || p == t)
        };
        assert!(matches(&session_stored(&key)));
        assert!(matches(&ephemeral_sent(&key)));
        assert!(matches(&session_changed(&key)));
        assert!(!matches(ADMISSIONS_CHANGED_ALL));
        assert!(!matches(&delivery_queued(&key)));
        assert!(!matches(&session_stored(&crate::recipient_path(
            "home:+4915100000000"
        ))));
        // The republish destination maps a store subject to its session
        // subject.
        let tokens: Vec<&str> = key.split('.').collect();
        assert_eq!(
            SESSION_STORED_REPUBLISH
                .replace("{{wildcard(1)}}", tokens[0])
                .replace("{{wildcard(2)}}", tokens[1])
                .replace("{{wildcard(3)}}", tokens[2]),
            session_stored(&key)
        );
        // A provider session's subscription and consumer filter take the
        // partition's recipients and no other's.
        let matches_partition = |subject: &str, kind: &str| {
            let events = partition_events(tokens[0], tokens[1].parse().unwrap(), kind);
            let t: Vec<&str> = subject.split('.').collect();
            let p: Vec<&str> = events.split('.').collect();
            t.len() == p.len() && t.iter().zip(&p).all(|(t, p)| *p == "*" || p == t)
        };
        assert!(matches_partition(&ephemeral_sent(&key), SESSION_EPHEMERAL));
        assert!(matches_partition(&session_changed(&key), SESSION_CHANGED));
        assert!(!matches_partition(&session_stored(&key), SESSION_EPHEMERAL));
        assert!(!matches_partition(
            &ephemeral_sent(&crate::recipient_path("signal:+4915112345678")),
            SESSION_EPHEMERAL
        ));
        // A partition cursor is not a device cursor of any key.
        let cursor = partition_cursor("home", 3);
        assert!(valid_subject(&cursor));
        assert_ne!(
            cursor.split('.').count(),
            delivery_acked(&crate::recipient_key("home:bob"), "phone")
                .split('.')
                .count()
        );
        let store = partition_store(tokens[0], tokens[1].parse().unwrap());
        assert_eq!(
            store.rsplit_once('.').unwrap().0,
            delivery_queued(&key).rsplit_once('.').unwrap().0
        );
    }

    #[test]
    fn the_key_is_read_from_either_store_layout() {
        let key = crate::recipient_key("home:bob");
        let path = crate::recipient_path("home:bob");
        assert_eq!(store_subject_key(&delivery_queued(&path)), Some(&*key));
        assert_eq!(
            store_subject_key(&format!("{DELIVERY_QUEUED_PREFIX}.{key}")),
            Some(&*key)
        );
        assert_eq!(store_subject_key("interop.v1.delivery.queued"), None);
        assert_eq!(store_subject_key("interop.v1.delivery.queued.a.b"), None);
        assert_eq!(store_subject_key("interop.v1.delivery.acked.x"), None);
    }
}
