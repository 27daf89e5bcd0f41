//! One recipient device's session.
//!
//! Wire: the client sends `Hello{provider, token, user, device_id}` and gets
//! `Welcome{max_unacked}`; the server pushes `Deliver{delivery_tag,
//! envelope}` (the tag is the store sequence); the client answers
//! `Ack{delivery_tags}`. At most `MAX_UNACKED` deliveries are outstanding.
//! `MarkRead{delivery_tags}` sends READ receipts to the senders. Stored
//! messages come live, as the store republishes them
//! (`interop.v1.delivery.session.<key>.stored`), or from a store consumer
//! opened for what did not (docs/adr/0016). Typing indicators arrive on core
//! NATS (`interop.v1.delivery.session.<key>.ephemeral`) and are pushed with
//! delivery tag 0 while the session is open.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

use async_nats::jetstream::consumer::pull;
use axum::extract::ws::WebSocket;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::LastRawMessageErrorKind;

use async_nats::jetstream::consumer::pull::Ordered;

use interop_bus::subjects::{
    delivery_acked, delivery_queued, session_events, SESSION_CHANGED, SESSION_EPHEMERAL,
    SESSION_STORED,
};
use interop_bus::{pipeline, recipient_key, recipient_path};
use interop_edge::ws::{self, close, Incoming, Outbound};
use interop_proto::limits::{MAX_FRAME_BYTES, MAX_MARK_READ_TAGS, MAX_UNACKED};
use interop_proto::v1::{
    client_frame, envelope, server_frame, Deliver, Envelope, Hello, ReceiptStatus, RejectCode,
    SenderInfo, ServerFrame, Welcome,
};
use interop_proto::Address;

use crate::reading::{Buffered, LiveEvent, Reading};
use crate::Shared;

struct Session {
    provider: String,
    /// The credential the session authenticated with; revoking it closes
    /// the session.
    credential: String,
    user: Address,
    /// The device, whose cursor subject is computed when written.
    device: String,
    /// Last acked store sequence with nothing un-acked before it.
    cursor: u64,
    /// The cursor as last stored in `INTEROP_CURSORS`.
    cursor_stored: u64,
    /// The cursor write in flight, if any: at most one at a time, so
    /// writes land in order, and acks arriving meanwhile are coalesced into
    /// the next write (docs/adr/0015).
    cursor_write: Option<CursorWrite>,
    /// When the next cursor write starts (set when the cursor moves).
    cursor_due: Option<tokio::time::Instant>,
    /// Delivered, not yet acked: sequence → the envelope (without content)
    /// if it needs a `delivered` receipt.
    unacked: BTreeMap<u64, Option<Envelope>>,
    /// Highest sequence delivered in this session.
    last_delivered: u64,
    /// When (wall clock, ms) the session last heard that what the user
    /// admits may have changed: a change announced, its subscription
    /// (re)made, a global change. Live messages accepted after it skip the
    /// consent re-check (docs/adr/0018).
    admissions_changed_ms: i64,
    /// The session's place among its provider's connections.
    _slot: interop_edge::ConnectionSlot,
}

pub(crate) async fn serve(socket: WebSocket, shared: Arc<Shared>, peer: interop_edge::tls::Peer) {
    let (sink, mut stream) = socket.split();
    let (out, writer) = ws::spawn_writer(sink);
    let opened = Box::pin(hello(&mut stream, &out, &shared, &peer)).await;
    if let Some(Opened::Provider(p)) = opened {
        Box::pin(crate::provider_session::serve(
            &mut stream,
            &out,
            &shared,
            p,
        ))
        .await;
    } else if let Some(Opened::User(session)) = opened {
        // Logged from the address each time (not a copy of it held for the
        // session's life: issue 5's memory bar).
        info!(user = %session.user.redacted(), "Recipient connected to delivery.");
        shared.metrics.sessions.inc();
        let mut session = session;
        let ended = Box::pin(deliver(&mut session, &mut stream, &out, &shared)).await;
        // What the device acked is stored before the session is gone, so a
        // reconnect does not replay it.
        if let Err(e) = Box::pin(flush_cursor(&mut session, &shared)).await {
            debug!(user = %session.user.redacted(), error = %e, "The last cursor of a session was not stored.");
        }
        if let Err(e) = ended {
            warn!(user = %session.user.redacted(), error = %e, "Session ended by an error.");
            ws::push(
                &out,
                Outbound::close(close::GOING_AWAY, "temporary server error; reconnect"),
            )
            .await;
        }
        shared.metrics.sessions.dec();
        debug!(user = %session.user.redacted(), "Recipient disconnected from delivery.");
    }
    drop(out);
    writer.await.ok();
}

/// What a successful `Hello` opened.
enum Opened {
    /// A user's device.
    User(Session),
    /// A provider's server (`Hello.provider_session`).
    Provider(crate::provider_session::Opened),
}

async fn hello(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
    peer: &interop_edge::tls::Peer,
) -> Option<Opened> {
    let (request_id, h) = ws::read_hello(stream, out, &shared.shutdown).await?;
    let admitted = crate::auth::admit(shared, peer, request_id, &h, out).await?;
    if h.provider_session {
        return crate::provider_session::opened(out, request_id, h, admitted)
            .await
            .map(Opened::Provider);
    }
    let (user, device) = match session_address(&h) {
        Ok(a) => a,
        Err((code, detail)) => {
            ws::refuse_hello(out, request_id, code, &detail).await;
            return None;
        }
    };
    let Some(cursor) = read_cursor(shared, &user, &device).await else {
        ws::push(
            out,
            Outbound::frame(ws::rejected(
                request_id,
                "",
                RejectCode::Unavailable,
                "storage unavailable; retry",
                1000,
            )),
        )
        .await;
        ws::push(
            out,
            Outbound::close(close::GOING_AWAY, "storage unavailable"),
        )
        .await;
        return None;
    };
    ws::push(out, Outbound::frame(welcome(request_id))).await;
    Some(Opened::User(Session {
        provider: h.provider,
        credential: admitted.credential,
        user,
        device,
        cursor,
        cursor_stored: cursor,
        cursor_write: None,
        cursor_due: None,
        unacked: BTreeMap::new(),
        last_delivered: cursor,
        admissions_changed_ms: interop_proto::now_ms(),
        _slot: admitted.slot,
    }))
}

/// The session's user and device from an authenticated `Hello`: a user of
/// the authenticated provider, and a valid device id (`default` when
/// none); the refusal otherwise.
fn session_address(h: &Hello) -> Result<(Address, String), (RejectCode, String)> {
    if h.user.is_empty() {
        return Err((
            RejectCode::MissingField,
            "hello.user is required for delivery".into(),
        ));
    }
    let user =
        Address::parse(&h.user).map_err(|e| (RejectCode::InvalidAddress, format!("user: {e}")))?;
    if user.provider() != h.provider {
        return Err((
            RejectCode::SenderNotOwned,
            "user must be a user of the authenticated provider".into(),
        ));
    }
    let device = if h.device_id.is_empty() {
        "default".to_owned()
    } else {
        h.device_id.clone()
    };
    if !interop_proto::address::valid_device_id(&device) {
        return Err((
            RejectCode::MalformedFrame,
            "device_id must be 1-64 of [A-Za-z0-9_-]".into(),
        ));
    }
    Ok((user, device))
}

/// The device's stored cursor (0: none yet); `None` when the cursor stream
/// does not answer.
async fn read_cursor(shared: &Shared, user: &Address, device: &str) -> Option<u64> {
    let cursor_key = delivery_acked(&recipient_key(user.as_str()), device);
    match shared
        .cursors
        .get_last_raw_message_by_subject(&cursor_key)
        .await
    {
        Ok(m) => Some(
            std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        ),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Some(0),
        Err(e) => {
            warn!(error = %e, "Cannot read a delivery cursor.");
            None
        }
    }
}

/// The answer to a successful `Hello`: delivery's limits.
fn welcome(request_id: u64) -> ServerFrame {
    ServerFrame {
        request_id,
        frame: Some(server_frame::Frame::Welcome(Welcome {
            session_id: uuid::Uuid::now_v7().to_string(),
            max_frame_bytes: MAX_FRAME_BYTES as u32,
            max_text_bytes: 0,
            max_ciphertext_bytes: 0,
            max_unacked: MAX_UNACKED as u32,
            ..Welcome::default()
        })),
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A cursor write waiting for its JetStream ack; yields the stored value.
type CursorWrite =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<u64, BoxError>> + Send>>;

/// How long after the cursor moves it is written: acks within that time
/// share one write. A delivery instance killed in between makes the device
/// get those messages again on reconnect (same server ids: the client drops
/// them).
pub(crate) const CURSOR_WRITE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the last cursor write of an ending session may take.
const FINAL_CURSOR_WRITE: std::time::Duration = std::time::Duration::from_secs(2);

/// Starts storing `s.cursor` when it moved past what is stored and no write
/// is in flight.
async fn start_cursor_write(s: &mut Session, shared: &Shared) -> Result<(), BoxError> {
    if s.cursor_write.is_some() || s.cursor <= s.cursor_stored {
        return Ok(());
    }
    let value = s.cursor;
    let ack = shared
        .js
        .send_publish(
            delivery_acked(&recipient_key(s.user.as_str()), &s.device),
            async_nats::jetstream::message::PublishMessage::build()
                .payload(value.to_string().into()),
        )
        .await?;
    s.cursor_write = Some(Box::pin(async move {
        ack.await?;
        Ok(value)
    }));
    Ok(())
}

/// The cursor write in flight, or never.
async fn cursor_written(write: &mut Option<CursorWrite>) -> Result<u64, BoxError> {
    match write {
        Some(w) => w.await,
        None => std::future::pending().await,
    }
}

/// Waits for the write in flight and stores the latest cursor, within
/// `FINAL_CURSOR_WRITE`.
async fn flush_cursor(s: &mut Session, shared: &Shared) -> Result<(), BoxError> {
    tokio::time::timeout(FINAL_CURSOR_WRITE, async {
        if let Some(w) = s.cursor_write.take() {
            s.cursor_stored = w.await?;
        }
        start_cursor_write(s, shared).await?;
        if let Some(w) = s.cursor_write.take() {
            s.cursor_stored = w.await?;
        }
        Ok::<(), BoxError>(())
    })
    .await
    .map_err(|_| BoxError::from("timed out"))?
}

/// The stream holding the user's store subject `subject` (docs/adr/0032).
fn store_stream<'a>(
    shared: &'a Shared,
    subject: &str,
) -> Result<&'a async_nats::jetstream::stream::Stream, BoxError> {
    shared
        .inbox
        .for_subject(subject)
        .ok_or_else(|| BoxError::from("not a store subject"))
}

/// The first message `subject` holds after store sequence `after`, as the
/// stream's leader answers (`STREAM.MSG.GET` is answered by the leader
/// only, unlike a consumer, which reads whichever replica it was placed
/// on). Asks for the next message rather than the last: on nats-server
/// 2.9, once the last message of a subject was deleted (a user erasure
/// removes an erased sender's messages from other users' stores), "last by
/// subject" answers "none" although earlier messages remain.
async fn stored_after(
    shared: &Shared,
    subject: &str,
    after: u64,
) -> Result<Option<StreamMessage>, BoxError> {
    match store_stream(shared, subject)?
        .get_first_raw_message_by_subject(subject, after + 1)
        .await
    {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Milliseconds since the Unix epoch of a time in nanoseconds (when the
/// store took a message).
pub(crate) fn unix_ms(nanos: i128) -> i64 {
    i64::try_from(nanos / 1_000_000).unwrap_or(0)
}

/// Opens an ordered consumer on the user's store, starting after `after`
/// (a store sequence; 0 = from the start); `None` when it has nothing to
/// give (what it was opened for was erased or aged out meanwhile).
async fn open_store(
    shared: &Shared,
    subject: &str,
    after: u64,
) -> Result<Option<Ordered>, BoxError> {
    let deliver_policy = interop_bus::store::deliver_after(after);
    let consumer = store_stream(shared, subject)?
        .create_consumer(pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    if consumer.cached_info().num_pending == 0 {
        return Ok(None);
    }
    Ok(Some(consumer.messages().await?))
}

/// The next message of the open store consumer, or never while none is.
async fn next_stored(
    reading: &mut Reading<Ordered, async_nats::Message>,
) -> Option<
    Result<async_nats::jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>,
> {
    match reading.consumer() {
        Some(m) => m.next().await,
        None => std::future::pending().await,
    }
}

/// Consent re-checks of a session's stored messages, in store order.
type Checking<'a> =
    FuturesOrdered<std::pin::Pin<Box<dyn std::future::Future<Output = Checked> + Send + 'a>>>;

/// Where a message the store republished sits: its store sequence and the
/// previous sequence of the same subject when it was stored (0: none), from
/// the `Nats-Sequence` and `Nats-Last-Sequence` headers JetStream adds.
fn live_position(msg: &async_nats::Message) -> Option<(u64, u64)> {
    let h = msg.headers.as_ref()?;
    let seq = h.get("Nats-Sequence")?.as_str().parse().ok()?;
    let last = h.get("Nats-Last-Sequence")?.as_str().parse().ok()?;
    Some((seq, last))
}

/// Takes one stored message into the session: skipped (undecodable, past
/// the retention), or held as un-acked while its consent re-check runs
/// (the push follows in store order). `unchanged_since`: for a message
/// taken live, when the session last heard that what the user admits may
/// have changed; a message accepted after that (see
/// [`admission_unchanged`]) needs no re-check.
#[allow(clippy::too_many_arguments)]
async fn intake<'a>(
    s: &mut Session,
    shared: &'a Shared,
    checking: &mut Checking<'a>,
    seq: u64,
    payload: &[u8],
    headers: Option<async_nats::HeaderMap>,
    stored_ms: i64,
    unchanged_since: Option<i64>,
) -> Result<(), BoxError> {
    if seq <= s.last_delivered {
        return Ok(());
    }
    s.last_delivered = seq;
    let Ok(mut pm) = pipeline::decode(payload) else {
        warn!(seq, "Skipping an undecodable stored message.");
        return skip(s, seq, shared).await;
    };
    let Some(env) = pm.envelope.take() else {
        return Ok(());
    };
    // Past retention: the sender got (or gets) EXPIRED from the sweeper, so
    // it is not delivered any more.
    let age_ms = interop_proto::now_ms().saturating_sub(stored_ms);
    if u128::try_from(age_ms).unwrap_or(0) > shared.retention.as_millis() {
        return skip(s, seq, shared).await;
    }
    // Held as un-acked from here, so the cursor cannot pass it while its
    // consent re-check runs.
    s.unacked.insert(seq, None);
    // Routing read the user's consent and answers after the message was
    // accepted; if the session heard of no change since, they are what
    // routing read: pushed as filed, without asking Redis again.
    if unchanged_since.is_some_and(|since| admission_unchanged(env.accepted_at_ms, since)) {
        shared.metrics.unchecked.inc();
        let inbox = Some(filed_inbox(&pm));
        checking.push_back(Box::pin(std::future::ready(Checked {
            seq,
            env,
            inbox,
            headers,
        })));
        return Ok(());
    }
    // Consent again, now: an opt-out, a provider no longer allowed, a
    // decline or a block also stops what was stored before it; an
    // acceptance files later pushes in the inbox. Up to CHECK_DEPTH
    // re-checks overlap; pushes stay in order.
    let user = s.user.as_str().to_owned();
    checking.push_back(Box::pin(async move {
        let inbox = still_admitted(shared, &user, &env, &pm).await;
        Checked {
            seq,
            env,
            inbox,
            headers,
        }
    }));
    Ok(())
}

/// Takes a message the store republished if it directly follows what the
/// session has taken (nothing was stored for the user in between) and the
/// un-acked limit allows. Returns `true` when it does not: the store holds
/// it (and maybe more before it) for the store consumer to read.
async fn take_live<'a>(
    s: &mut Session,
    shared: &'a Shared,
    checking: &mut Checking<'a>,
    msg: async_nats::Message,
) -> Result<bool, BoxError> {
    let unchanged_since = Some(s.admissions_changed_ms);
    let Some((seq, previous)) = live_position(&msg) else {
        warn!("A republished stored message lacks its sequence headers; reading the store.");
        return Ok(true);
    };
    if seq <= s.last_delivered {
        return Ok(false);
    }
    if previous > s.last_delivered || s.unacked.len() >= MAX_UNACKED {
        return Ok(true);
    }
    shared.metrics.live.inc();
    intake(
        s,
        shared,
        checking,
        seq,
        &msg.payload,
        msg.headers,
        interop_proto::now_ms(),
        unchanged_since,
    )
    .await?;
    Ok(false)
}

/// Once the store consumer is closed: takes the stored messages that came
/// live while it was open (those it gave already are dropped). Returns
/// whether the store must be read again (a gap, or messages dropped from a
/// full buffer).
async fn take_buffered<'a>(
    s: &mut Session,
    shared: &'a Shared,
    checking: &mut Checking<'a>,
    buffered: Buffered<async_nats::Message>,
) -> Result<bool, BoxError> {
    let mut gap = false;
    for msg in buffered.messages {
        if !gap {
            gap = take_live(s, shared, checking, msg).await?;
        }
    }
    Ok(gap | buffered.overflow)
}

/// Sleeps until `at`, or forever when there is none.
async fn sleep_until_or_never(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Sets when the cursor is written, once it moved past what is stored and
/// no write is in flight or due.
fn schedule_cursor_write(s: &mut Session) {
    if s.cursor > s.cursor_stored && s.cursor_write.is_none() && s.cursor_due.is_none() {
        s.cursor_due = Some(Instant::now() + CURSOR_WRITE_AFTER);
    }
}

async fn deliver(
    s: &mut Session,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
) -> Result<(), BoxError> {
    let (mut store, mut events) = Store::subscribe(s, shared).await?;
    let mut registry = shared.providers.clone();
    // Bumped when the stream holding the user's store elected a leader.
    let stream_index = shared
        .inbox
        .partitions()
        .index_of_subject(&store.subject)
        .unwrap_or(0);
    let mut look_again = shared.look_again[stream_index].clone();
    let mut admissions_changed = shared.admissions_changed.clone();
    loop {
        Box::pin(store.read_if_due(s)).await?;
        schedule_cursor_write(s);
        let write_cursor = sleep_until_or_never(s.cursor_due);
        let idle = sleep_until_or_never(store.reading.idle_at());
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                ws::push(out, Outbound::close(close::GOING_AWAY, "server shutting down")).await;
                return Ok(());
            }
            changed = registry.changed() => {
                if changed.is_err() || !registry.borrow().has_credential(&s.provider, &s.credential) {
                    info!(provider = %s.provider, credential = %s.credential, "Closing a session whose credential was revoked.");
                    ws::push(out, Outbound::close(close::POLICY_VIOLATION, "credential revoked")).await;
                    return Ok(());
                }
            }
            msg = stream.next() => {
                if Box::pin(on_client(s, msg, out, shared, &store.subject)).await?.is_break() {
                    return Ok(());
                }
            }
            () = write_cursor => {
                s.cursor_due = None;
                start_cursor_write(s, shared).await?;
            }
            written = cursor_written(&mut s.cursor_write) => {
                s.cursor_write = None;
                s.cursor_stored = written?;
            }
            _ = look_again.changed() => {
                // Stored messages republished while delivery's NATS
                // connection was down, or while the store elected a new
                // leader, never came (found by the fault suite: receipts
                // stored during a NATS restart waited for the next
                // message): look at the store.
                store.reading.look_again();
                // Change announcements may have been lost the same way.
                s.admissions_changed_ms = interop_proto::now_ms();
            }
            _ = admissions_changed.changed() => {
                s.admissions_changed_ms = interop_proto::now_ms();
            }
            () = idle => Box::pin(store.close_idle(s)).await?,
            event = events.next() => {
                let Some(event) = event else { return Err("session subscription ended".into()) };
                Box::pin(store.on_event(s, event, out)).await?;
            }
            next = next_stored(&mut store.reading), if store.checking.len() < CHECK_DEPTH => {
                let Some(next) = next else { return Err("store consumer ended".into()) };
                Box::pin(store.on_stored(s, next?)).await?;
            }
            Some(checked) = store.checking.next(), if !store.checking.is_empty() => {
                if Box::pin(push_checked(s, checked, out, shared)).await?.is_break() {
                    return Ok(());
                }
            }
            // A read left the store to be looked at again (a consumer on a
            // replica behind the leader): round again at once.
            () = std::future::ready(()), if store.reading.wants_to_read(s.unacked.len()).is_some() => {}
        }
    }
}

/// A session's store: how it is read ([`Reading`]) and the consent
/// re-checks of what was taken from it.
struct Store<'a> {
    shared: &'a Shared,
    /// The user's store subject.
    subject: String,
    reading: Reading<Ordered, async_nats::Message>,
    checking: Checking<'a>,
}

impl<'a> Store<'a> {
    /// One core subscription for both: the user's stored messages as the
    /// store republishes them once committed (the live path), and ephemeral
    /// events (typing). Subscribed before the store is first looked at, so
    /// whatever is stored after that comes here.
    async fn subscribe(
        s: &mut Session,
        shared: &'a Shared,
    ) -> Result<(Self, async_nats::Subscriber), BoxError> {
        let path = recipient_path(s.user.as_str());
        let events = shared.js.client().subscribe(session_events(&path)).await?;
        // Changes announced before the subscription reached the server are
        // not heard: they count as happening now.
        s.admissions_changed_ms = interop_proto::now_ms();
        let store = Self {
            shared,
            subject: delivery_queued(&path),
            reading: Reading::default(),
            checking: FuturesOrdered::new(),
        };
        Ok((store, events))
    }

    /// Flow control, then a read of the store if one is due. At
    /// MAX_UNACKED outstanding deliveries the store is not read; the
    /// consumer is dropped rather than left unpolled (an unpolled ordered
    /// consumer misses its idle heartbeats and, polled again, resets
    /// itself: a stall of seconds). It is reopened right after the last
    /// delivered message, so there is no gap and no duplicate. Reads
    /// `s.unacked` (flow control) and from `s.last_delivered`; a message
    /// taken from the leader is taken into `s`.
    async fn read_if_due(&mut self, s: &mut Session) -> Result<(), BoxError> {
        if self.reading.pause_if_full(s.unacked.len()) {
            self.shared.metrics.pauses.inc();
        }
        let Some(known) = self.reading.wants_to_read(s.unacked.len()) else {
            return Ok(());
        };
        let after = s.last_delivered;
        // The leader's next message after what was taken (boxed: large
        // futures, so they do not size every idle session). A known gap
        // opens a consumer without asking.
        let next = if known {
            None
        } else {
            let Some(next) = Box::pin(stored_after(self.shared, &self.subject, after)).await?
            else {
                self.reading.nothing_stored();
                return Ok(());
            };
            Some(next)
        };
        match Box::pin(open_store(self.shared, &self.subject, after)).await? {
            Some(consumer) => {
                self.shared.metrics.consumers_opened.inc();
                self.reading.opened(consumer, Instant::now());
            }
            None => {
                // The consumer's replica is behind the leader (it was just
                // restarted, say): take the leader's message, then look
                // again. Going live on the consumer's word left a user's
                // last message unpushed until their next one. (If instead
                // the message was erased between the look and the open, it
                // is taken all the same: a race of milliseconds.)
                if let Some(next) = next {
                    self.shared.metrics.read_from_leader.inc();
                    info!(
                        seq = next.sequence,
                        "A store consumer had nothing though the store's leader holds a message after the cursor (its replica is behind); taking it from the leader."
                    );
                    let stored_ms = unix_ms(next.time.unix_timestamp_nanos());
                    intake(
                        s,
                        self.shared,
                        &mut self.checking,
                        next.sequence,
                        &next.payload,
                        Some(next.headers),
                        stored_ms,
                        None,
                    )
                    .await?;
                }
                self.reading.consumer_had_nothing();
            }
        }
        Ok(())
    }

    /// An event of the session's subscription: a stored message the store
    /// republished, an ephemeral event, or a change of what the user admits.
    async fn on_event(
        &mut self,
        s: &mut Session,
        event: async_nats::Message,
        out: &mpsc::Sender<Outbound>,
    ) -> Result<(), BoxError> {
        if event.subject.ends_with(SESSION_STORED) {
            if let LiveEvent::Take(event) = self.reading.live(event) {
                if take_live(s, self.shared, &mut self.checking, event).await? {
                    self.reading.gap();
                }
            }
        } else if event.subject.ends_with(SESSION_EPHEMERAL) {
            push_ephemeral(s, &event.payload, out, self.shared);
        } else if event.subject.ends_with(SESSION_CHANGED) {
            s.admissions_changed_ms = interop_proto::now_ms();
        }
        Ok(())
    }

    /// A message from the store consumer.
    async fn on_stored(
        &mut self,
        s: &mut Session,
        msg: async_nats::jetstream::Message,
    ) -> Result<(), BoxError> {
        let info = msg.info()?;
        let seq = info.stream_sequence;
        let caught_up = info.pending == 0;
        let stored_ms = unix_ms(info.published.unix_timestamp_nanos());
        self.reading.gave(Instant::now());
        let headers = msg.headers.clone();
        let checking = &mut self.checking;
        intake(
            s,
            self.shared,
            checking,
            seq,
            &msg.payload,
            headers,
            stored_ms,
            None,
        )
        .await?;
        // Whatever is stored from here on comes live: the consumer is
        // closed, and what came live while it was open is taken.
        if caught_up && self.close_and_take(s).await? {
            self.reading.gap();
        }
        Ok(())
    }

    /// An open consumer that gave nothing for a while (what it was opened
    /// for is gone: erased, aged out): closed; what came live meanwhile is
    /// taken, and the store looked at.
    async fn close_idle(&mut self, s: &mut Session) -> Result<(), BoxError> {
        self.close_and_take(s).await?;
        self.reading.look_again();
        Ok(())
    }

    /// Closes the open consumer and takes what came live while it was open;
    /// whether the store must be read again.
    async fn close_and_take(&mut self, s: &mut Session) -> Result<bool, BoxError> {
        let Some(buffered) = self.reading.close() else {
            return Ok(false);
        };
        Box::pin(take_buffered(s, self.shared, &mut self.checking, buffered)).await
    }
}

/// What the client sent: acks, `MarkRead`, or the end of the session
/// (`Break`).
async fn on_client(
    s: &mut Session,
    msg: Option<Result<axum::extract::ws::Message, axum::Error>>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
    store_subject: &str,
) -> Result<ControlFlow<()>, BoxError> {
    match ws::classify(msg) {
        Incoming::Frame(frame) => match frame.frame {
            Some(client_frame::Frame::Ack(ack)) => {
                Box::pin(on_ack(s, &ack.delivery_tags, shared)).await?;
            }
            Some(client_frame::Frame::MarkRead(m))
                if !m.user.is_empty() && m.user != s.user.as_str() =>
            {
                let r = ws::rejected(
                    frame.request_id,
                    "",
                    RejectCode::SenderNotOwned,
                    "mark_read.user must be empty (or this session's user) on a user's session",
                    0,
                );
                ws::push(out, Outbound::frame(r)).await;
            }
            Some(client_frame::Frame::MarkRead(m)) => {
                let tags = &m.delivery_tags;
                let answer = on_mark_read(store_subject, frame.request_id, tags, shared);
                if let Some(r) = Box::pin(answer).await {
                    ws::push(out, Outbound::frame(r)).await;
                }
            }
            _ => {
                let r = ws::rejected(
                    frame.request_id,
                    "",
                    RejectCode::UnsupportedFrame,
                    "delivery accepts Ack and MarkRead frames only",
                    0,
                );
                ws::push(out, Outbound::frame(r)).await;
            }
        },
        Incoming::Reject(r) => {
            ws::push(out, Outbound::frame(r)).await;
        }
        Incoming::Close(code, reason) => {
            ws::push(out, Outbound::close(code, reason)).await;
            return Ok(ControlFlow::Break(()));
        }
        Incoming::End => return Ok(ControlFlow::Break(())),
        Incoming::Ignore => {}
    }
    Ok(ControlFlow::Continue(()))
}

/// Pushes a stored message whose consent re-check is done, or skips it
/// (withheld, or nothing the app takes). `Break` when the client is gone.
async fn push_checked(
    s: &mut Session,
    checked: Checked,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
) -> Result<ControlFlow<()>, BoxError> {
    let Checked {
        seq,
        env,
        inbox,
        headers,
    } = checked;
    let Some(inbox) = inbox else {
        shared.metrics.withheld.inc();
        Box::pin(skip(s, seq, shared)).await?;
        return Ok(ControlFlow::Continue(()));
    };
    let receipt_for =
        needs_delivered_receipt(&env, &recipient_key(s.user.as_str())).then(|| Envelope {
            content: None,
            sender_info: None,
            ..env.clone()
        });
    let Some(mut env) = adapt_for(shared, &s.provider, env) else {
        Box::pin(skip(s, seq, shared)).await?;
        return Ok(ControlFlow::Continue(()));
    };
    // Of per-device ciphertexts, this device gets only its own. Of a copy
    // of what the user sent, the device that sent it gets nothing.
    let own = env.from == s.user.as_str();
    if !crate::rich::for_device(&mut env, &s.device, own) {
        Box::pin(skip(s, seq, shared)).await?;
        return Ok(ControlFlow::Continue(()));
    }
    let span = tracing::info_span!("deliver", otel.name = "delivery deliver", stream_seq = seq);
    interop_bus::trace::set_parent_from(&span, headers.as_ref());
    span.in_scope(|| tracing::debug!(seq, "Delivering a message."));
    observe_end_to_end(shared, &env);
    shared.metrics.delivered.inc();
    env.sender_info = sender_info(shared, &env.from);
    s.unacked.insert(seq, receipt_for);
    let frame = ServerFrame {
        request_id: 0,
        frame: Some(server_frame::Frame::Deliver(Deliver {
            delivery_tag: seq,
            envelope: Some(env),
            // Where it belongs now (requests, or the user's inbox).
            inbox,
            user: String::new(),
        })),
    };
    if out.send(Outbound::frame(frame)).await.is_err() {
        return Ok(ControlFlow::Break(()));
    }
    Ok(ControlFlow::Continue(()))
}

/// How far apart the clocks of two hosts of the gateway may be: ingest
/// stamps `accepted_at_ms`, delivery notes when it heard of a change.
pub(crate) const CLOCK_MARGIN_MS: i64 = 1_000;

/// Whether a message accepted at `accepted_at_ms` was admitted by routing
/// after the last change the session heard of, at `changed_ms`: routing
/// reads after acceptance, and a change is written before it is announced,
/// so routing read the change when the message was accepted later (by more
/// than [`CLOCK_MARGIN_MS`], for the clocks). A message with no acceptance
/// time is re-checked.
pub(crate) fn admission_unchanged(accepted_at_ms: i64, changed_ms: i64) -> bool {
    accepted_at_ms > 0 && accepted_at_ms > changed_ms.saturating_add(CLOCK_MARGIN_MS)
}

/// A stored message whose consent re-check is done: `inbox` is `None` when
/// it is withheld.
struct Checked {
    seq: u64,
    env: Envelope,
    inbox: Option<i32>,
    headers: Option<async_nats::HeaderMap>,
}

/// Consent re-checks of one session that may run at once.
pub(crate) const CHECK_DEPTH: usize = 32;

/// How long one attempt at the consent re-check may take before it is
/// tried again.
const RECHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// The longest pause between two attempts at a re-check that got no answer.
const RECHECK_MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(2);

/// The inbox routing filed a stored message in (`Inbox` as i32).
pub(crate) fn filed_inbox(pm: &interop_proto::v1::PipelineMessage) -> i32 {
    pm.route.as_ref().map_or(0, |r| r.inbox)
}

/// Whether a stored message may still be shown to `user`, and in which
/// inbox (`Inbox` as i32). Routing decided when it stored the message; the
/// user may have opted out, removed the sender's provider, declined or
/// blocked the sender since, and none of that may reach the device. Receipts
/// about the user's own messages are always shown. **Fails closed**: while
/// Redis (or, on a cache miss, the user-state stream) gives no answer, the
/// check is tried again (pauses growing to 2 s, counted in
/// `interop_delivery_recheck_unavailable_total`), and the message and the
/// session's later pushes wait; they are never shown unchecked, since the
/// user may have blocked the sender. Messages taken live with no change
/// announced need no re-check and keep flowing (docs/adr/0018).
pub(crate) async fn still_admitted(
    shared: &Shared,
    user: &str,
    env: &Envelope,
    pm: &interop_proto::v1::PipelineMessage,
) -> Option<i32> {
    let stored = filed_inbox(pm);
    // Key notices were checked against consent and blocks when ingest wrote
    // them (docs/adr/0026); a copy of what the user sent is their own.
    if matches!(
        env.content,
        Some(envelope::Content::Receipt(_)) | Some(envelope::Content::KeyNotice(_))
    ) || env.from == user
    {
        return Some(stored);
    }
    let sender_provider = if pm.sender_provider.is_empty() {
        env.from.split(':').next().unwrap_or("")
    } else {
        pm.sender_provider.as_str()
    };
    // The spam verdict stands: a message scored REQUEST stays a request
    // even if the sender is accepted.
    let verdict = pipeline::verdict(pm);
    let mut pause = std::time::Duration::from_millis(100);
    let admission = loop {
        let check = shared
            .contacts
            .admit(interop_state::contacts::AdmissionAsk {
                recipient: user.to_owned(),
                sender: env.from.clone(),
                sender_provider: sender_provider.to_owned(),
                reply_state: false,
            });
        match tokio::time::timeout(RECHECK_TIMEOUT, check).await {
            Ok(Ok((a, _))) => break a.under(verdict),
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot re-check consent; the message waits and the check is tried again.");
            }
            Err(_) => {
                warn!(
                    "Consent re-check timed out; the message waits and the check is tried again."
                );
            }
        }
        shared.metrics.recheck_unavailable.inc();
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RECHECK_MAX_PAUSE);
    };
    match admission {
        interop_state::Admission::Refused(why) => {
            debug!(
                reason = why.as_str(),
                "Withholding a stored message the user no longer admits."
            );
            None
        }
        interop_state::Admission::Inbox(inbox) => Some(inbox as i32),
        interop_state::Admission::Request => Some(interop_proto::v1::Inbox::Requests as i32),
    }
}

/// Whether the sender of `env` hears of it (`DELIVERED`, `READ`,
/// `EXPIRED`): receipts get no receipts; a call attempt is answered by
/// routing; a group change or a key notice is the gateway's notice, not a
/// user's message; a copy in its own sender's store (for their other
/// devices) is not a delivery to anyone else. `store_key`: whose store
/// (`recipient_key`) the message is in.
pub(crate) fn needs_delivered_receipt(env: &Envelope, store_key: &str) -> bool {
    !pipeline::in_senders_store(env, store_key)
        && !matches!(
            env.content,
            Some(envelope::Content::Receipt(_))
                | Some(envelope::Content::Call(_))
                | Some(envelope::Content::GroupChange(_))
                | Some(envelope::Content::KeyNotice(_))
        )
}

/// Moves past a stored message that is not shown (undecodable, expired, or
/// nothing the app takes) as if the device had acked it.
async fn skip(s: &mut Session, seq: u64, shared: &Shared) -> Result<(), BoxError> {
    s.unacked.insert(seq, None);
    on_ack(s, &[seq], shared).await
}

/// Pushes an ephemeral event (typing) with delivery tag 0 (nothing to ack).
/// Dropped when the session's outgoing queue is full: it is ephemeral.
fn push_ephemeral(s: &Session, payload: &[u8], out: &mpsc::Sender<Outbound>, shared: &Shared) {
    let Ok(pm) = pipeline::decode(payload) else {
        return;
    };
    let Some(env) = pm.envelope else { return };
    if env.to != s.user.as_str() {
        return;
    }
    let Some(mut env) = adapt_for(shared, &s.provider, env) else {
        return;
    };
    env.sender_info = sender_info(shared, &env.from);
    let frame = ServerFrame {
        request_id: 0,
        frame: Some(server_frame::Frame::Deliver(Deliver {
            delivery_tag: 0,
            envelope: Some(env),
            inbox: 0,
            user: String::new(),
        })),
    };
    if out.try_send(Outbound::frame(frame)).is_ok() {
        shared.metrics.ephemeral.inc();
    }
}

/// `MarkRead{delivery_tags}`: each tag is a store sequence of this user's
/// store; its sender gets one READ receipt (deduplicated per message, so
/// several devices reading it send one). Answers only on refusal.
pub(crate) async fn on_mark_read(
    store_subject: &str,
    request_id: u64,
    tags: &[u64],
    shared: &Shared,
) -> Option<ServerFrame> {
    let refuse =
        |code, detail: String, retry_ms| Some(ws::rejected(request_id, "", code, detail, retry_ms));
    if tags.is_empty() {
        return refuse(
            RejectCode::MissingField,
            "mark_read.delivery_tags is empty".into(),
            0,
        );
    }
    if tags.len() > MAX_MARK_READ_TAGS {
        return refuse(
            RejectCode::TooLong,
            format!("at most {MAX_MARK_READ_TAGS} delivery tags per MarkRead"),
            0,
        );
    }
    let unavailable = || {
        refuse(
            RejectCode::Unavailable,
            "storage unavailable; retry".into(),
            1000,
        )
    };
    let store_key = interop_bus::subjects::store_subject_key(store_subject).unwrap_or_default();
    let mut unknown = 0usize;
    for &tag in tags {
        let env = match stored_envelope(shared, store_subject, tag).await {
            Ok(Some(env)) => env,
            Ok(None) => {
                unknown += 1;
                continue;
            }
            Err(()) => return unavailable(),
        };
        if !needs_delivered_receipt(&env, store_key) {
            continue;
        }
        let original = Envelope {
            content: None,
            ..env
        };
        let r = pipeline::receipt_to_sender(
            &original,
            ReceiptStatus::Read,
            RejectCode::Unspecified,
            "",
        );
        if let Err(e) = publish_receipt(shared, r).await {
            warn!(error = %e, "Cannot publish a read receipt.");
            return unavailable();
        }
    }
    if unknown == 0 {
        return None;
    }
    refuse(
        RejectCode::UnknownMessage,
        format!(
            "{unknown} of {} delivery tags name no stored message of this user (aged out?)",
            tags.len()
        ),
        0,
    )
}

/// The envelope stored at `seq` in `store_subject` (this user's store);
/// `Ok(None)` when there is none there (another user's, aged out, or
/// undecodable), `Err` when the stream does not answer.
async fn stored_envelope(
    shared: &Shared,
    store_subject: &str,
    seq: u64,
) -> Result<Option<Envelope>, ()> {
    // Sequences are per stream: a tag names a message of the stream
    // holding this user's store.
    let Some(stream) = shared.inbox.for_subject(store_subject) else {
        return Ok(None);
    };
    match stream.get_raw_message(seq).await {
        Ok(m) if m.subject.as_str() == store_subject => {
            Ok(pipeline::decode(&m.payload).ok().and_then(|pm| pm.envelope))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => {
            warn!(error = %e, "Cannot read a stored message for a read receipt.");
            Err(())
        }
    }
}

/// Writes a receipt into its recipient's store; the publish ack is awaited
/// in the background (a lost receipt is logged).
pub(crate) async fn publish_receipt(
    shared: &Shared,
    r: interop_bus::Outgoing,
) -> Result<(), BoxError> {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", r.msg_id.as_str());
    interop_bus::trace::inject_current(&mut headers);
    // Into the sender's store, if it is not full of undelivered messages
    // (interop_bus::store::admit). A count that fails (an election) is
    // retried below like a publish that was not acked, not a session's end.
    let first = match interop_bus::store::admit(&shared.js, &r.subject).await {
        Ok(Some(admitted)) => {
            let publish = async_nats::jetstream::message::PublishMessage::build()
                .payload(r.payload.clone())
                .headers(headers.clone());
            Ok((
                shared.js.send_publish(r.subject.clone(), publish).await?,
                admitted,
            ))
        }
        Ok(None) => Err(interop_bus::store::Full.to_string()),
        Err(e) => Err(format!(
            "cannot count the store's undelivered messages: {e}"
        )),
    };
    shared.metrics.receipts.inc();
    let js = shared.js.clone();
    let dropped = shared.metrics.receipts_dropped_store_full.clone();
    tokio::spawn(async move {
        // Not acked (the NATS connection dropped, a cluster elected a new
        // leader): published again, a little later each time; the store's
        // duplicate window keeps one copy (same Nats-Msg-Id).
        let mut outcome = match first {
            Ok((ack, _admitted)) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(full) => Err(full),
        };
        let mut wait = std::time::Duration::from_millis(500);
        let mut full_since: Option<std::time::Instant> = None;
        for _ in 0..RECEIPT_RETRIES {
            let Err(e) = &outcome else { return };
            // The sender's store full of undelivered messages
            // (docs/adr/0027): counted again (their devices may have read
            // meanwhile), then it is published again. A store that stays
            // full (no room for NO_ROOM_FOR: longer than a device's cursor
            // takes to be written plus the time a full store is remembered)
            // drops the receipt, as routing drops one: a sender whose apps
            // never read would otherwise cost 8 retries over 40 s per
            // receipt, which at 1,000 receipts a second held 40,000 tasks
            // in delivery (the soak).
            if interop_bus::store::is_full_message(e) {
                match interop_bus::store::room(&js, &r.subject).await {
                    Ok(0) => {
                        let since = *full_since.get_or_insert_with(std::time::Instant::now);
                        if since.elapsed() >= NO_ROOM_FOR {
                            debug!("Dropped a receipt: the sender's store is full of undelivered messages.");
                            dropped.inc();
                            return;
                        }
                    }
                    Ok(_) => full_since = None,
                    Err(e) => {
                        debug!(error = %e, "Cannot count the undelivered messages of the store for a receipt yet.")
                    }
                }
            }
            debug!(error = %e, "A receipt was not acked; publishing it again.");
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(std::time::Duration::from_secs(8));
            let again = async_nats::jetstream::message::PublishMessage::build()
                .payload(r.payload.clone())
                .headers(headers.clone());
            outcome = match interop_bus::store::admit(&js, &r.subject).await {
                Ok(Some(_admitted)) => match js.send_publish(r.subject.clone(), again).await {
                    Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Ok(None) => Err(interop_bus::store::Full.to_string()),
                Err(e) => Err(e.to_string()),
            };
        }
        if let Err(e) = outcome {
            warn!(error = %e, "A receipt was not stored.");
        }
    });
    Ok(())
}

/// Times a receipt is published again when JetStream did not ack it
/// (about 40 s in all).
const RECEIPT_RETRIES: usize = 8;

/// How long a receipt waits for room in a full store before it is dropped
/// (a device's cursor is written within a second of its acks, and a store
/// found without room is looked at again after 2 s).
const NO_ROOM_FOR: std::time::Duration = std::time::Duration::from_secs(5);

/// `env` as the apps of `provider` can show it (`rich::adapt` with the
/// provider's registry capabilities); `None` when they take nothing of it.
pub(crate) fn adapt_for(shared: &Shared, provider: &str, env: Envelope) -> Option<Envelope> {
    let caps = shared
        .providers
        .borrow()
        .get(provider)
        .map(|p| p.capabilities.clone())
        .unwrap_or_default();
    crate::rich::adapt(env, &caps)
}

/// Counts a push in `interop_delivery_end_to_end_seconds` (accepted at
/// ingest until now), when the message has an acceptance time.
pub(crate) fn observe_end_to_end(shared: &Shared, env: &Envelope) {
    if env.accepted_at_ms > 0 {
        let age_ms = interop_proto::now_ms()
            .saturating_sub(env.accepted_at_ms)
            .max(0);
        shared
            .metrics
            .end_to_end_seconds
            .observe(age_ms as f64 / 1000.0);
    }
}

/// Always filled: from the registry, or (a provider removed since) with
/// the provider id alone and encryption UNSPECIFIED.
pub(crate) fn sender_info(shared: &Shared, from: &str) -> Option<SenderInfo> {
    let provider = from.split(':').next().unwrap_or_default();
    let info = shared.providers.borrow().get(provider).map(|p| SenderInfo {
        provider: p.id.clone(),
        display_name: p.display_name.clone(),
        privacy_policy_url: p.privacy_policy_url.clone(),
        provider_encryption: p.encryption.as_proto() as i32,
    });
    Some(info.unwrap_or_else(|| SenderInfo {
        provider: provider.to_owned(),
        display_name: provider.to_owned(),
        ..Default::default()
    }))
}

async fn on_ack(s: &mut Session, tags: &[u64], shared: &Shared) -> Result<(), BoxError> {
    let mut receipts = Vec::new();
    for tag in tags {
        // Unknown tags (acked twice, or never delivered) are ignored.
        let Some(entry) = s.unacked.remove(tag) else {
            continue;
        };
        shared.metrics.acked.inc();
        if let Some(original) = entry {
            receipts.push(pipeline::receipt_to_sender(
                &original,
                ReceiptStatus::Delivered,
                RejectCode::Unspecified,
                "",
            ));
        }
    }
    for r in receipts {
        publish_receipt(shared, r).await?;
    }
    let new_cursor = match s.unacked.keys().next() {
        Some(first) => first.saturating_sub(1).max(s.cursor),
        None => s.last_delivered,
    };
    // Stored by the session loop, coalesced (`start_cursor_write`).
    s.cursor = s.cursor.max(new_cursor);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_names_a_user_of_its_provider_and_a_valid_device() {
        let hello = |user: &str, device: &str| Hello {
            provider: "signal".into(),
            user: user.into(),
            device_id: device.into(),
            ..Default::default()
        };
        let (user, device) = session_address(&hello("signal:alice", "")).unwrap();
        assert_eq!(
            (user.as_str(), device.as_str()),
            ("signal:alice", "default")
        );
        let max = "d".repeat(64);
        assert_eq!(
            session_address(&hello("signal:alice", &max)).unwrap().1,
            max
        );
        let code = |user: &str, device: &str| session_address(&hello(user, device)).unwrap_err().0;
        assert_eq!(code("", "phone"), RejectCode::MissingField);
        assert_eq!(code("alice", "phone"), RejectCode::InvalidAddress);
        assert_eq!(code("telegram:tom", "phone"), RejectCode::SenderNotOwned);
        assert_eq!(
            code("signal:alice", &"d".repeat(65)),
            RejectCode::MalformedFrame
        );
        assert_eq!(code("signal:alice", "a phone"), RejectCode::MalformedFrame);
    }

    #[test]
    fn a_copy_in_its_senders_store_and_the_gateways_notices_ask_no_receipt() {
        let env = |content| Envelope {
            from: "signal:alice".into(),
            to: "home:bob".into(),
            content: Some(content),
            ..Default::default()
        };
        let text = envelope::Content::Text(interop_proto::v1::Text { body: "hi".into() });
        let bobs = recipient_key("home:bob");
        let alices = recipient_key("signal:alice");
        assert!(needs_delivered_receipt(&env(text.clone()), &bobs));
        assert!(!needs_delivered_receipt(&env(text), &alices));
        for content in [
            envelope::Content::KeyNotice(Default::default()),
            envelope::Content::GroupChange(Default::default()),
            envelope::Content::Receipt(Default::default()),
        ] {
            assert!(!needs_delivered_receipt(&env(content), &bobs));
        }
    }

    #[test]
    fn a_message_accepted_more_than_the_clock_margin_after_a_change_needs_no_recheck() {
        let changed = 1_700_000_000_000;
        assert!(!admission_unchanged(changed - 5, changed));
        assert!(!admission_unchanged(changed, changed));
        assert!(!admission_unchanged(changed + CLOCK_MARGIN_MS, changed));
        assert!(admission_unchanged(changed + CLOCK_MARGIN_MS + 1, changed));
        // No acceptance time (written by an older version): re-checked.
        assert!(!admission_unchanged(0, 0));
        assert!(!admission_unchanged(0, -5_000));
    }
}
