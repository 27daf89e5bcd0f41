//! The JetStream streams and durable consumers. Every service creates the
//! ones it touches at start-up, idempotently (create, or update to this
//! config), so any start order works.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};

use crate::inbox::{is_store_stream, InboxPartitions};
use crate::subjects::*;
use crate::BusError;

/// Settings an operator may change (flags on every service).
#[derive(Debug, Clone)]
pub struct StreamSettings {
    /// Replicas of every stream: 1 for development, 3 in production.
    pub replicas: usize,
    /// How long a pipeline message may wait for its next stage.
    pub pipeline_max_age: Duration,
    /// How long the offline store keeps a message for a recipient.
    pub inbox_max_age: Duration,
    /// How many messages the offline store keeps per recipient; past it a
    /// message is refused, room made from what was delivered, or its sender
    /// told (`RECIPIENT_STORE_FULL`; docs/adr/0027).
    pub inbox_max_per_recipient: i64,
    /// How many streams hold the store (P, `--inbox-partitions`): 1 is
    /// `INTEROP_INBOX`, more are `INTEROP_INBOX_<i>`, each holding 64 / P
    /// of the recipients' partitions (docs/adr/0032). Every service of a
    /// gateway must run with the same P.
    pub inbox_partitions: InboxPartitions,
}

impl Default for StreamSettings {
    fn default() -> Self {
        Self {
            replicas: 1,
            pipeline_max_age: Duration::from_secs(7 * 24 * 3600),
            inbox_max_age: Duration::from_secs(30 * 24 * 3600),
            inbox_max_per_recipient: 10_000,
            inbox_partitions: InboxPartitions::ONE,
        }
    }
}

/// How much longer than the offline retention the store keeps a message: a
/// tenth of the retention, at least 2 s and at most 1 hour. Past the
/// retention a message is no longer delivered and its sender gets
/// `EXPIRED`; the grace gives the expiry sweeper time to see it.
pub fn inbox_grace(retention: Duration) -> Duration {
    (retention / 10).clamp(Duration::from_secs(2), Duration::from_secs(3600))
}
/// Most messages the quarantine holds (the oldest go first); they also age
/// out with the store's max age.
pub const QUARANTINE_MAX_MESSAGES: i64 = 1_000_000;

/// Window in which a re-published `Nats-Msg-Id` is dropped as a duplicate.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// How long the key directory keeps a device's keys after its last publish,
/// and a one-time prekey nobody claimed: like contacts and groups (400
/// days); an app in use publishes far more often.
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(400 * 24 * 3600);

/// Keys one pool subject of the key directory may hold before the oldest
/// go: twice the directory's own limit per device, so only a bug reaches it.
pub const KEYS_POOL_MAX_PER_SUBJECT: i64 =
    2 * interop_proto::keys::MAX_ONE_TIME_PREKEYS_PER_DEVICE as i64;
const _: () = assert!(
    interop_proto::keys::MAX_KEY_PACKAGES_PER_DEVICE as i64 <= KEYS_POOL_MAX_PER_SUBJECT / 2
);

fn pipeline_stream(name: &str, subject: &str, s: &StreamSettings) -> stream::Config {
    stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        retention: stream::RetentionPolicy::WorkQueue,
        // When the stream is full, refuse new messages (ingest answers
        // UNAVAILABLE) rather than drop accepted ones.
        discard: stream::DiscardPolicy::New,
        max_age: s.pipeline_max_age,
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The config of store stream `index` (of `s.inbox_partitions`): all alike
/// but for their name and subjects (docs/adr/0032).
pub fn inbox_stream(s: &StreamSettings, index: usize) -> stream::Config {
    let partitions = s.inbox_partitions;
    stream::Config {
        name: partitions.stream_name(index),
        // One subject per partition the stream holds (all with P = 1), and
        // the legacy layout on stream 0 until what an earlier version
        // stored there is moved (docs/adr/0031).
        subjects: partitions.subjects(index),
        retention: stream::RetentionPolicy::Limits,
        // Past a recipient's count limit JetStream removes the oldest
        // message of the subject, in place (cheap, unlike a purge); every
        // publisher first makes sure that oldest was delivered, and
        // refuses while the store is full of undelivered messages
        // (`store::admit`, docs/adr/0027). Stores of earlier versions
        // (`discard: new` per subject, refusing at the limit) are updated
        // in place, their messages kept.
        discard: stream::DiscardPolicy::Old,
        discard_new_per_subject: false,
        // Kept a grace period past the retention, so delivery's expiry
        // sweeper sees every message before JetStream deletes it.
        max_age: s.inbox_max_age + inbox_grace(s.inbox_max_age),
        max_messages_per_subject: s.inbox_max_per_recipient,
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        // JetStream refuses a duplicate window longer than max_age.
        duplicate_window: DUPLICATE_WINDOW.min(s.inbox_max_age),
        // Each message, once committed, goes to the recipient's open
        // sessions with its sequence and the subject's previous one:
        // sessions push live without a consumer (docs/adr/0016). The
        // source is every store subject of the partitioned layout, on
        // every stream: a stream has one republish, and JetStream takes a
        // source that covers more than the stream's subjects as long as
        // it overlaps them (2.9 checks that; 2.10 and later check only
        // the transform), so a message is republished whatever stream it
        // is in. The legacy layout's subjects (one token) do not match it
        // and are not republished, as before.
        republish: Some(stream::Republish {
            source: DELIVERY_QUEUED_ALL.to_owned(),
            destination: SESSION_STORED_REPUBLISH.to_owned(),
            headers_only: false,
        }),
        ..Default::default()
    }
}

/// The stream config of each pipeline stage and the store.
pub fn stream_configs(s: &StreamSettings) -> Vec<stream::Config> {
    let mut configs = vec![
        pipeline_stream(STREAM_INGEST, INGEST_ACCEPTED, s),
        pipeline_stream(STREAM_MEDIA, ROUTING_MEDIA_REQUESTED, s),
    ];
    configs.extend((0..s.inbox_partitions.streams()).map(|i| inbox_stream(s, i)));
    configs.extend([
        stream::Config {
            name: STREAM_QUARANTINE.to_owned(),
            subjects: vec![ROUTING_QUARANTINED.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_age: s.inbox_max_age,
            max_messages: QUARANTINE_MAX_MESSAGES,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            // JetStream refuses a duplicate window longer than max_age.
            duplicate_window: DUPLICATE_WINDOW.min(s.inbox_max_age),
            ..Default::default()
        },
        stream::Config {
            name: STREAM_CURSORS.to_owned(),
            subjects: vec![DELIVERY_ACKED_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: 1,
            // A cursor outlives the messages it points past.
            max_age: s.inbox_max_age * 2,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        },
        // Provider sessions' heartbeats and partition leases (docs/adr/0031):
        // small records, the last per subject; a day is far longer than any
        // lease, so what a crashed session left goes by itself.
        stream::Config {
            name: STREAM_PROVIDER_SESSIONS.to_owned(),
            subjects: vec![PROVIDER_SESSIONS_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: 1,
            max_age: Duration::from_secs(24 * 3600),
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        },
        stream::Config {
            name: STREAM_PROVIDERS.to_owned(),
            subjects: vec![PROVIDERS_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            ..Default::default()
        },
        // The key directory (docs/adr/0025): each user's devices, the last
        // write per user, written compare-and-set.
        stream::Config {
            name: STREAM_KEYS_DEVICES.to_owned(),
            subjects: vec![KEYS_DEVICES_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: 1,
            max_age: KEYS_MAX_AGE,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            allow_direct: true,
            ..Default::default()
        },
        // The key directory's pools: a key is claimed by deleting it.
        stream::Config {
            name: STREAM_KEYS_POOL.to_owned(),
            subjects: vec![KEYS_POOL_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            // A backstop well above the per-device limits the directory
            // enforces (interop_proto::keys).
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: KEYS_POOL_MAX_PER_SUBJECT,
            max_age: KEYS_MAX_AGE,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            // Claims read with direct gets, which any replica answers.
            allow_direct: true,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
        // What users decided (docs/adr/0028): the system of record that
        // Redis caches. Kept until a user is erased: no age limit, a
        // record per user and per answer (bounded by MAX_CONTACTS).
        stream::Config {
            name: STREAM_USER_STATE.to_owned(),
            subjects: vec![USER_STATE_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: 1,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            // Cache misses read with direct gets, which any replica answers.
            allow_direct: true,
            ..Default::default()
        },
        // Groups (docs/adr/0028): one record per group, written
        // compare-and-set, cached in Redis; a group nobody changed or wrote
        // to for 400 days ages out (a send re-writes it once a day).
        stream::Config {
            name: STREAM_GROUPS.to_owned(),
            subjects: vec![GROUPS_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            max_messages_per_subject: 1,
            max_age: GROUPS_MAX_AGE,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            allow_direct: true,
            ..Default::default()
        },
        // Key transparency's log (issue 21): the directory's state is the
        // replay of its committed batches, so nothing may age out or be
        // dropped: a full stream refuses.
        stream::Config {
            name: STREAM_KT_LOG.to_owned(),
            subjects: vec![KT_LOG_ALL.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
        // Key transparency's roots (one small message per epoch: epoch and
        // root hash) and append-only proofs (chunks), no user data, that
        // auditors and clients read; kept like the log.
        stream::Config {
            name: STREAM_KT_ROOTS.to_owned(),
            subjects: vec![KT_ROOTS.to_owned(), KT_AUDIT.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::New,
            storage: stream::StorageType::File,
            num_replicas: s.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        },
    ]);
    configs
}

/// How long each attempt at creating or updating one stream waits for an
/// answer; attempts after the last wait as long as the last.
const ENSURE_TIMEOUTS: [Duration; 4] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(10),
];

/// The pause between two attempts at a start-up request.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Creates every stream, or updates it to this config.
///
/// A request that times out, finds JetStream not available, or loses the
/// race with another service creating the same stream is repeated **until
/// it succeeds** (it is idempotent), each attempt waiting longer for its
/// answer (2, 4, 8, then 10 s) with a pause of 1 s between, and a warning
/// logged for each: a NATS that is unreachable, restarting or electing its
/// leaders only delays the service, which stays not ready meanwhile (ADR
/// 14). On a NATS 2.9 cluster, services starting together that create the
/// same replicated stream at once can all go unanswered although the stream
/// was created, and a cluster still electing its leaders answers
/// "unavailable"; both were found by the fault suite. Any other answer (an
/// invalid config, replicas a single server cannot have) is returned at once.
/// Cancel the future to stop.
///
/// First, the store's streams on the server must be those of
/// `s.inbox_partitions` (or fewer of them, or an older version's
/// `INTEROP_INBOX`, which is updated): a store made with another P is
/// [`BusError::StoreLayout`], at once, never changed here (docs/adr/0032).
pub async fn ensure_streams(js: &jetstream::Context, s: &StreamSettings) -> Result<(), BusError> {
    let mut js = js.clone();
    if let Some(caveat) =
        crate::compare_and_set_caveat(&js.client().server_info().version, s.replicas)
    {
        tracing::warn!(
            version = %js.client().server_info().version,
            replicas = s.replicas,
            "{caveat}"
        );
    }
    check_store_layout(&js, s.inbox_partitions).await?;
    for config in stream_configs(s) {
        let name = config.name.clone();
        let mut attempt = 1;
        loop {
            js.set_timeout(ENSURE_TIMEOUTS[(attempt - 1).min(ENSURE_TIMEOUTS.len() - 1)]);
            match create_or_update(&js, &config).await {
                Ok(()) => break,
                Err(e) if is_transient(&e.kind()) => {
                    // A store stream whose subjects overlap another's: a
                    // race with a creator of the same stream, or a service
                    // with another P created its streams meanwhile.
                    if is_store_stream(&name)
                        && matches!(e.kind(), jetstream::context::CreateStreamErrorKind::JetStream(j)
                            if j.error_code() == jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP)
                    {
                        check_store_layout(&js, s.inbox_partitions).await?;
                    }
                    tracing::warn!(stream = %name, attempt, error = %e, "Cannot create or update the stream yet; retrying (not ready until it is done).");
                    attempt += 1;
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(e) if name == STREAM_INBOX && e.to_string().contains("RePublish") => {
                    return Err(BusError::StreamUpgrade {
                        name,
                        setting: "republish",
                        remedy: "delete the stream (`nats stream rm INTEROP_INBOX`: the messages stored in it are lost) \
                                 and start again",
                    })
                }
                Err(e) => {
                    return Err(BusError::Stream {
                        name,
                        source: Box::new(e),
                    })
                }
            }
        }
    }
    Ok(())
}

/// How long a service that finds a stream existing with another config
/// waits before updating it (see [`create_or_update`]).
const UPDATE_AFTER_EXISTS: Duration = Duration::from_millis(250);

/// Creates the stream, or, if it exists with another config, updates it.
///
/// Creation first (async-nats's `create_or_update_stream` updates first):
/// nats-server 2.9.10 crashed (a nil pointer in `updateWithAdvisory`) when
/// an update reached a stream another service was creating at that moment,
/// which services starting together on a new server did (seen in a test
/// and in `scripts/up`). A create of a stream that exists with the same
/// config succeeds without touching it; one that exists with another config
/// (an older version's, or one being created right now) is refused, and
/// the update comes a moment later.
async fn create_or_update(
    js: &jetstream::Context,
    config: &stream::Config,
) -> Result<(), jetstream::context::CreateStreamError> {
    use jetstream::context::CreateStreamErrorKind as K;
    match js.create_stream(config.clone()).await {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(e.kind(), K::JetStream(j)
                if j.error_code() == jetstream::ErrorCode::STREAM_NAME_EXIST) =>
        {
            tokio::time::sleep(UPDATE_AFTER_EXISTS).await;
            js.update_stream(config).await.map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// Fails with [`BusError::StoreLayout`] if the store streams on the server
/// do not fit `partitions` ([`store_layout_mismatch`]). Listing the streams
/// is repeated until the server answers (ADR 14), like the creation.
pub async fn check_store_layout(
    js: &jetstream::Context,
    partitions: InboxPartitions,
) -> Result<(), BusError> {
    use futures_util::TryStreamExt;
    let mut js = js.clone();
    let mut attempt = 1usize;
    let existing = loop {
        js.set_timeout(ENSURE_TIMEOUTS[(attempt - 1).min(ENSURE_TIMEOUTS.len() - 1)]);
        let listed: Result<Vec<(String, Vec<String>)>, _> = js
            .streams()
            .try_filter_map(|info| {
                let config = info.config;
                std::future::ready(Ok(
                    is_store_stream(&config.name).then_some((config.name, config.subjects))
                ))
            })
            .try_collect()
            .await;
        match listed {
            Ok(existing) => break existing,
            Err(e) => {
                tracing::warn!(attempt, error = %e, "Cannot list the streams yet; retrying (not ready until it is done).");
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    };
    match store_layout_mismatch(&existing, partitions) {
        None => Ok(()),
        Some(found) => Err(BusError::StoreLayout {
            found,
            configured: partitions.get(),
            expected: partitions.stream_names().join(", "),
        }),
    }
}

/// What does not fit `partitions` among the store streams that exist
/// (`(name, subjects)`), described for an operator; `None` if all fit: each
/// is one of the layout's streams and holds none but its subjects there
/// (an older version's `INTEROP_INBOX` holds fewer and is updated). A
/// store made with another P does not fit: a stream of another name, or
/// one of the same name holding other partitions (P = 4's
/// `INTEROP_INBOX_0` holds partitions 0, 4, 8, ...; P = 8's only 0, 8,
/// ...).
pub fn store_layout_mismatch(
    existing: &[(String, Vec<String>)],
    partitions: InboxPartitions,
) -> Option<String> {
    let names = partitions.stream_names();
    let misfits: Vec<String> = existing
        .iter()
        .filter(
            |(name, subjects)| match names.iter().position(|n| n == name) {
                None => true,
                Some(i) => {
                    let expected = partitions.subjects(i);
                    subjects.iter().any(|s| !expected.contains(s))
                }
            },
        )
        .map(|(name, subjects)| format!("{name} with {} subjects", subjects.len()))
        .collect();
    if misfits.is_empty() {
        return None;
    }
    let mut all: Vec<&str> = existing.iter().map(|(n, _)| n.as_str()).collect();
    all.sort_unstable_by_key(|n| (n.len(), *n));
    Some(format!(
        "{} (not fitting: {})",
        all.join(", "),
        misfits.join(", ")
    ))
}

/// Whether a failed create-or-update is worth repeating: a timeout, JetStream
/// not available yet, a failed request, a cluster answer that passes (see
/// [`is_transient_code`]), or the race of two services creating the same
/// stream at once (the loser's create finds the name taken, or, on a NATS
/// 2.9 cluster while the winner's stream is still being placed, "subjects
/// overlap"; the next attempt finds the stream and updates it).
fn is_transient(kind: &jetstream::context::CreateStreamErrorKind) -> bool {
    use jetstream::context::CreateStreamErrorKind as K;
    use jetstream::ErrorCode;
    match kind {
        K::TimedOut | K::JetStreamUnavailable | K::Response => true,
        K::JetStream(e) => {
            is_transient_code(e.error_code())
                || matches!(
                    e.error_code(),
                    ErrorCode::STREAM_NAME_EXIST | ErrorCode::STREAM_SUBJECT_OVERLAP
                )
        }
        _ => false,
    }
}

/// JetStream answers that pass by themselves: the cluster has no leader or
/// quorum yet, or too few servers are up to place the replicas (a node is
/// restarting).
pub fn is_transient_code(code: jetstream::ErrorCode) -> bool {
    use jetstream::ErrorCode;
    matches!(
        code,
        ErrorCode::CLUSTER_NOT_AVAILABLE
            | ErrorCode::CLUSTER_NOT_ACTIVE
            | ErrorCode::CLUSTER_INCOMPLETE
            | ErrorCode::CLUSTER_NO_PEERS
            | ErrorCode::CLUSTER_NOT_LEADER
            | ErrorCode::CLUSTER_NOT_ASSIGNED
            | ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::JETSTREAM_NOT_ENABLED
    )
}

/// The durable pull consumer that all replicas of a service share.
pub fn stage_consumer_config(name: &str, subject: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(name.to_owned()),
        description: Some(format!("interop {name} stage")),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_deliver: MAX_DELIVER,
        filter_subject: subject.to_owned(),
        // Moderate: very large values stalled consumers (a known async-nats issue).
        max_ack_pending: 4096,
        ..Default::default()
    }
}

/// Deliveries before the server gives up on a message: none (-1). A
/// message that can never be handled is terminated by the stage itself
/// (dead-lettered, logged); one that cannot be handled *now* (Redis or
/// spam-scoring down) is retried with back-off for as long as the outage
/// lasts (`stage::retry_delay`). A limit here would silently strand accepted
/// messages in a long outage.
pub const MAX_DELIVER: i64 = -1;

/// The stream `name`, as a service opens it at start: a request that fails
/// for a reason that passes (a timeout, no answer, a cluster electing the
/// stream's leader: a replica of a stream whose leader was just lost cannot
/// answer until a new one is elected) is repeated until it succeeds, each
/// attempt waiting longer (2, 4, 8, then 10 s) with a pause of 1 s between
/// and a warning each time; the service stays not ready meanwhile. Any other
/// answer (no such stream) is returned at once.
pub async fn open_stream(js: &jetstream::Context, name: &str) -> Result<stream::Stream, BusError> {
    use jetstream::context::GetStreamErrorKind as G;
    let mut js = js.clone();
    let mut attempt = 1usize;
    loop {
        js.set_timeout(ENSURE_TIMEOUTS[(attempt - 1).min(ENSURE_TIMEOUTS.len() - 1)]);
        match js.get_stream(name).await {
            Ok(s) => return Ok(s),
            Err(e) => {
                let transient = match e.kind() {
                    G::Request => true,
                    G::JetStream(j) => is_transient_code(j.error_code()),
                    _ => false,
                };
                if !transient {
                    return Err(BusError::Stream {
                        name: name.to_owned(),
                        source: Box::new(e),
                    });
                }
                tracing::warn!(stream = name, attempt, error = %e, "Cannot read the stream yet; retrying (not ready until it is done).");
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Binds (creating if needed) the durable consumer of a stage. Like
/// [`ensure_streams`], a request that fails for a reason that passes (a
/// timeout, no answer, a cluster without a leader) is repeated until it
/// succeeds, with a warning each time; any other answer is returned.
pub async fn stage_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    name: &str,
    subject: &str,
) -> Result<consumer::PullConsumer, BusError> {
    let stream = open_stream(js, stream_name).await?;
    create_consumer(&stream, stage_consumer_config(name, subject)).await
}

/// Creates (or binds to, or updates) the durable pull consumer `config`
/// names on `stream`; like [`open_stream`], a request that fails for a
/// reason that passes (a timeout, no answer, a cluster electing the
/// stream's leader) is repeated until it succeeds, with a warning each
/// time, and any other answer is returned.
pub async fn create_consumer(
    stream: &stream::Stream,
    config: consumer::pull::Config,
) -> Result<consumer::PullConsumer, BusError> {
    use jetstream::stream::ConsumerErrorKind as C;
    let name = config.durable_name.clone().unwrap_or_default();
    let mut attempt = 1u32;
    loop {
        // create_consumer is idempotent for an identical config and updates
        // the updatable fields otherwise.
        match stream.create_consumer(config.clone()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let transient = match e.kind() {
                    C::TimedOut | C::Request => true,
                    C::JetStream(j) => is_transient_code(j.error_code()),
                    _ => false,
                };
                if !transient {
                    return Err(BusError::Consumer {
                        name,
                        source: Box::new(e),
                    });
                }
                tracing::warn!(consumer = %name, attempt, error = %e, "Cannot create or bind the consumer yet; retrying (not ready until it is done).");
                attempt += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing(p: u64) -> Vec<(String, Vec<String>)> {
        let partitions = InboxPartitions::new(p).expect("valid");
        (0..partitions.streams())
            .map(|i| (partitions.stream_name(i), partitions.subjects(i)))
            .collect()
    }

    #[test]
    fn a_store_made_with_another_partition_count_does_not_fit() {
        for p in [1, 2, 4, 8, 16, 32, 64] {
            let layout = InboxPartitions::new(p).expect("valid");
            // Its own streams, some of them, or none fit.
            assert_eq!(store_layout_mismatch(&existing(p), layout), None, "P={p}");
            assert_eq!(store_layout_mismatch(&existing(p)[..1], layout), None);
            assert_eq!(store_layout_mismatch(&[], layout), None);
            // Any other P's do not, whether the names differ (1 against
            // more) or not (4 against 8: the same first names, other
            // partitions).
            for q in [1, 2, 4, 8, 16, 32, 64].into_iter().filter(|q| *q != p) {
                let found = store_layout_mismatch(&existing(q), layout);
                assert!(found.is_some(), "P={p} against a store of {q}");
            }
        }
        // An older version's store (the layout before partitions only) is
        // updated with P = 1, and does not fit more.
        let old = vec![(
            STREAM_INBOX.to_owned(),
            vec![DELIVERY_QUEUED_LEGACY.to_owned()],
        )];
        assert_eq!(store_layout_mismatch(&old, InboxPartitions::ONE), None);
        let four = InboxPartitions::new(4).expect("valid");
        let found = store_layout_mismatch(&old, four).expect("does not fit");
        assert!(found.contains("INTEROP_INBOX"), "{found}");
        // The error says what was found and what was expected.
        let e = BusError::StoreLayout {
            found,
            configured: 4,
            expected: four.stream_names().join(", "),
        }
        .to_string();
        assert!(
            e.contains("--inbox-partitions 4") && e.contains("INTEROP_INBOX_3"),
            "{e}"
        );
        assert!(e.contains("docs/deploy.md"), "{e}");
    }

    #[test]
    fn every_store_stream_has_the_same_limits_and_republish() {
        let s = StreamSettings {
            inbox_partitions: InboxPartitions::new(8).expect("valid"),
            ..StreamSettings::default()
        };
        let configs = stream_configs(&s);
        let store: Vec<&stream::Config> = configs
            .iter()
            .filter(|c| is_store_stream(&c.name))
            .collect();
        assert_eq!(store.len(), 8);
        for c in &store {
            let first = store[0];
            assert_eq!(c.max_age, first.max_age);
            assert_eq!(c.max_messages_per_subject, first.max_messages_per_subject);
            assert_eq!(c.discard, first.discard);
            assert_eq!(c.discard, stream::DiscardPolicy::Old);
            assert!(!c.discard_new_per_subject);
            assert_eq!(c.republish, first.republish);
            assert_eq!(
                c.subjects.len(),
                8 + usize::from(c.name == "INTEROP_INBOX_0"),
                "{}",
                c.name
            );
        }
        // With P = 1, the one store stream is today's.
        let one = stream_configs(&StreamSettings::default());
        let inbox: Vec<&stream::Config> = one.iter().filter(|c| is_store_stream(&c.name)).collect();
        assert_eq!(inbox.len(), 1);
        assert_eq!(inbox[0].name, STREAM_INBOX);
        assert_eq!(
            inbox[0].subjects,
            [DELIVERY_QUEUED_ALL, DELIVERY_QUEUED_LEGACY]
        );
    }
}
