//! A provider session (server to server): docs/protocol.md, "Provider
//! sessions"; docs/adr/0031.
//!
//! A provider's server says `Hello{provider_session: true}` (no user) and
//! receives, for every user of the provider in the partitions it owns,
//! their stored messages in `DeliverBatch` frames: one JetStream ordered
//! consumer per owned partition (filtered to
//! `interop.v1.delivery.queued.<provider>.<n>.*`), read from the
//! partition's cursor, messages re-checked against consent like a user's
//! session does, and sent as a batch of what was ready (no timer). The
//! server acks a whole batch (`Ack{batch_tags}`); that writes the batches'
//! `DELIVERED` receipts and moves the partition's cursor past every batch
//! acked with nothing un-acked before it. At most
//! [`MAX_UNACKED_BATCHES_PER_PARTITION`] batches of one partition, and
//! [`MAX_UNACKED_BATCHES`] in all, are un-acked at once; a reader waiting
//! for its partition's window adds what comes meanwhile to its batch.
//! Which session owns which partition: [`crate::partitions`].

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use axum::extract::ws::WebSocket;
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use interop_proto::Message as _;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use interop_bus::pipeline;
use interop_bus::subjects::{
    delivery_queued, partition_cursor, partition_events, partition_store, provider_members,
    SESSION_CHANGED, SESSION_EPHEMERAL,
};
use interop_edge::ws::{self, close, Incoming, Outbound};
use interop_edge::Admitted;
use interop_proto::limits::{
    MAX_BATCH_MESSAGES, MAX_FRAME_BYTES, MAX_UNACKED_BATCHES, MAX_UNACKED_BATCHES_PER_PARTITION,
    PARTITIONS,
};
use interop_proto::v1::{
    client_frame, server_frame, Deliver, DeliverBatch, Envelope, Hello, PartitionsAssigned,
    ReceiptStatus, RejectCode, ServerFrame, Welcome,
};
use interop_proto::Address;

use crate::partitions::{self, Leases, Member, RENEW_EVERY};
use crate::Shared;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A provider session past its `Hello`.
pub(crate) struct Opened {
    provider: String,
    credential: String,
    id: String,
    _slot: interop_edge::ConnectionSlot,
}

/// Checks a provider session's `Hello` (already authenticated) and
/// welcomes it; refuses it otherwise.
pub(crate) async fn opened(
    out: &mpsc::Sender<Outbound>,
    request_id: u64,
    h: Hello,
    admitted: Admitted,
) -> Option<Opened> {
    if !h.user.is_empty() || !h.device_id.is_empty() {
        ws::refuse_hello(
            out,
            request_id,
            RejectCode::MalformedFrame,
            "a provider session has no user or device_id",
        )
        .await;
        return None;
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    let welcome = ServerFrame {
        request_id,
        frame: Some(server_frame::Frame::Welcome(Welcome {
            session_id: id.clone(),
            max_frame_bytes: MAX_FRAME_BYTES as u32,
            max_batch_messages: MAX_BATCH_MESSAGES as u32,
            max_unacked_batches: MAX_UNACKED_BATCHES as u32,
            max_unacked_batches_per_partition: MAX_UNACKED_BATCHES_PER_PARTITION as u32,
            partitions: PARTITIONS,
            ..Welcome::default()
        })),
    };
    ws::push(out, Outbound::frame(welcome)).await;
    Some(Opened {
        provider: h.provider,
        credential: admitted.credential,
        id,
        _slot: admitted.slot,
    })
}

/// One stored message read for a batch: `deliver` is `None` when it is not
/// shown (withheld, or nothing the provider's apps take) and only moves the
/// cursor.
struct Item {
    seq: u64,
    deliver: Option<Deliver>,
    /// The envelope (without content) of a message whose sender gets a
    /// `DELIVERED` receipt once the batch is acked.
    receipt_for: Option<Envelope>,
}

/// What a partition's reader hands the session.
enum FromReader {
    Batch {
        partition: u32,
        generation: u64,
        items: Vec<Item>,
    },
    Failed {
        partition: u32,
        generation: u64,
        error: String,
    },
}

/// A partition this session owns (or is giving back).
struct Owned {
    lease_seq: u64,
    /// Which reading of the partition batches come from; batches of an
    /// earlier one (before a restart or a loss) are dropped.
    generation: u64,
    cancel: CancellationToken,
    /// The reader's window: a permit per batch it may still push un-acked
    /// ([`MAX_UNACKED_BATCHES_PER_PARTITION`]); an ack gives one back.
    window: Arc<tokio::sync::Semaphore>,
    /// Last store sequence of the partition acked with nothing un-acked
    /// before it.
    cursor: u64,
    cursor_stored: u64,
    /// Batches of this partition in order: (tag, last store sequence,
    /// acked).
    pending: VecDeque<(u64, u64, bool)>,
    /// Giving it back since: waits for the server's acks until
    /// [`RELEASE_WAIT`].
    releasing: Option<Instant>,
    /// The reader failed: read again from the cursor on the next tick.
    restart: bool,
}

impl Owned {
    fn advance(&mut self) {
        while let Some(&(_, last, true)) = self.pending.front() {
            self.cursor = self.cursor.max(last);
            self.pending.pop_front();
        }
    }
}

/// A batch pushed and not yet acked.
struct InFlight {
    partition: u32,
    generation: u64,
    count: usize,
    receipts: Vec<Envelope>,
}

/// How long a session giving a partition away waits for the server's acks
/// of what it pushed from it before it stores the cursor and lets go.
const RELEASE_WAIT: Duration = Duration::from_secs(2);
/// How often leases, heartbeats and cursors are looked after.
const TICK: Duration = Duration::from_millis(500);
/// How often a partition's cursor is written while it moves.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// A batch is closed at this many encoded bytes (a message larger than a
/// frame on its own still goes, alone).
const BATCH_BYTES: usize = MAX_FRAME_BYTES - 4096;
/// A reader whose batch waited this long for the session reopens its
/// consumer (an ordered consumer not polled for a while resets itself: a
/// stall of seconds).
const REOPEN_AFTER_WAIT: Duration = Duration::from_secs(3);

struct ProviderSession {
    opened: Opened,
    leases: Leases,
    owned: BTreeMap<u32, Owned>,
    in_flight: HashMap<u64, InFlight>,
    next_tag: u64,
    next_generation: u64,
    members: HashMap<String, Member>,
    assigned: Vec<u32>,
    /// The session count last told with `assigned`.
    assigned_sessions: u32,
    last_renew: Instant,
    last_cursor_write: Instant,
}

pub(crate) async fn serve(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Arc<Shared>,
    opened: Opened,
) {
    info!(provider = %opened.provider, session = %opened.id, "Provider session connected to delivery.");
    shared.metrics.provider_sessions.inc();
    let leases = Leases::new(
        shared.js.clone(),
        shared.provider_sessions.clone(),
        &opened.provider,
        &opened.id,
    );
    let mut s = ProviderSession {
        opened,
        leases,
        owned: BTreeMap::new(),
        in_flight: HashMap::new(),
        next_tag: 1,
        next_generation: 1,
        members: HashMap::new(),
        assigned: Vec::new(),
        assigned_sessions: 0,
        last_renew: Instant::now(),
        last_cursor_write: Instant::now(),
    };
    let ended = Box::pin(run(&mut s, stream, out, shared)).await;
    // Cursors stored and partitions given back before the close is
    // answered: a server that closes cleanly knows its acks counted.
    Box::pin(close_down(&mut s, shared)).await;
    if let Ok(Some((code, reason))) = ended {
        ws::push(out, Outbound::close(code, reason)).await;
    } else if let Err(e) = ended {
        warn!(provider = %s.opened.provider, error = %e, "Provider session ended by an error.");
        ws::push(
            out,
            Outbound::close(close::GOING_AWAY, "temporary server error; reconnect"),
        )
        .await;
    }
    shared.metrics.provider_sessions.dec();
    debug!(provider = %s.opened.provider, "Provider session disconnected from delivery.");
}

/// The session until it ends; the close to send once its partitions are
/// given back, if any.
async fn run(
    s: &mut ProviderSession,
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shared: &Arc<Shared>,
) -> Result<Option<(u16, &'static str)>, BoxError> {
    let (tx, mut rx) = mpsc::channel::<FromReader>(1);
    let (typing_tx, mut typing_rx) = mpsc::channel::<ServerFrame>(256);
    let mut members = watch_members(shared, &s.opened.provider).await?;
    s.leases.heartbeat(false).await?;
    let mut registry = shared.providers.clone();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                return Ok(Some((close::GOING_AWAY, "server shutting down")));
            }
            changed = registry.changed() => {
                if changed.is_err() || !registry.borrow().has_credential(&s.opened.provider, &s.opened.credential) {
                    info!(provider = %s.opened.provider, "Closing a provider session whose credential was revoked.");
                    return Ok(Some((close::POLICY_VIOLATION, "credential revoked")));
                }
            }
            msg = stream.next() => {
                if let std::ops::ControlFlow::Break(close) = on_client(s, msg, out, shared).await? {
                    return Ok(close);
                }
            }
            Some(from) = rx.recv(), if s.in_flight.len() < MAX_UNACKED_BATCHES => {
                if on_reader(s, from, out, shared).await.is_break() {
                    return Ok(None);
                }
            }
            Some(frame) = typing_rx.recv() => {
                if out.try_send(Outbound::frame(frame)).is_ok() {
                    shared.metrics.ephemeral.inc();
                }
            }
            m = members.next() => {
                let m = m.ok_or("the provider sessions' heartbeats ended")??;
                let session = m.subject.as_str().rsplit('.').next().unwrap_or_default().to_owned();
                if let Some(member) = Member::parse(&m.payload) {
                    s.members.insert(session, member);
                }
            }
            _ = tick.tick() => {
                Box::pin(look_after(s, shared, &tx, &typing_tx, out)).await?;
            }
        }
    }
}

/// Every provider session's heartbeat, the last of each and then each new
/// one.
async fn watch_members(
    shared: &Shared,
    provider: &str,
) -> Result<async_nats::jetstream::consumer::pull::Ordered, BoxError> {
    let consumer = shared
        .provider_sessions
        .create_consumer(pull::OrderedConfig {
            filter_subject: provider_members(provider),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await?;
    Ok(consumer.messages().await?)
}

/// Heartbeat, lease renewals, the partitions to take and give back, and
/// cursor writes.
async fn look_after(
    s: &mut ProviderSession,
    shared: &Arc<Shared>,
    tx: &mpsc::Sender<FromReader>,
    typing: &mpsc::Sender<ServerFrame>,
    out: &mpsc::Sender<Outbound>,
) -> Result<(), BoxError> {
    if s.last_renew.elapsed() >= RENEW_EVERY {
        s.last_renew = Instant::now();
        s.leases.heartbeat(false).await?;
        let held: Vec<(u32, u64)> = s.owned.iter().map(|(p, o)| (*p, o.lease_seq)).collect();
        for (p, seq) in held {
            match s.leases.renew(p, seq).await? {
                Some(seq) => {
                    if let Some(o) = s.owned.get_mut(&p) {
                        o.lease_seq = seq;
                    }
                }
                None => lose(s, p, shared),
            }
        }
    }
    // What to take and what to give back.
    let alive = partitions::alive(&s.members, interop_proto::now_ms());
    let wanted = partitions::wanted(&s.opened.id, &alive, PARTITIONS);
    for (p, o) in &mut s.owned {
        if !wanted.contains(p) && o.releasing.is_none() {
            debug!(
                partition = p,
                "Giving a partition to another provider session."
            );
            o.cancel.cancel();
            o.releasing = Some(Instant::now());
        }
    }
    for p in wanted {
        if s.owned.contains_key(&p) {
            continue;
        }
        let Some(lease_seq) = s.leases.acquire(p).await? else {
            continue;
        };
        let cursor = read_cursor(shared, &s.opened.provider, p).await?;
        let generation = s.next_generation;
        s.next_generation += 1;
        let cancel = CancellationToken::new();
        let window = spawn_reader(shared, s, p, generation, cursor, &cancel, tx, typing);
        s.owned.insert(
            p,
            Owned {
                lease_seq,
                generation,
                cancel,
                window,
                cursor,
                cursor_stored: cursor,
                pending: VecDeque::new(),
                releasing: None,
                restart: false,
            },
        );
    }
    // Readers that failed read again from the cursor.
    let restart: Vec<u32> = s
        .owned
        .iter()
        .filter(|(_, o)| o.restart && o.releasing.is_none())
        .map(|(p, _)| *p)
        .collect();
    for p in restart {
        let generation = s.next_generation;
        s.next_generation += 1;
        let cancel = CancellationToken::new();
        let cursor = s.owned[&p].cursor;
        let window = spawn_reader(shared, s, p, generation, cursor, &cancel, tx, typing);
        s.in_flight.retain(|_, f| f.partition != p);
        if let Some(o) = s.owned.get_mut(&p) {
            o.generation = generation;
            o.cancel = cancel;
            o.window = window;
            o.pending.clear();
            o.restart = false;
        }
    }
    // Partitions given back once their batches are acked (or the wait is
    // over): cursor first, then the lease.
    let done: Vec<u32> = s
        .owned
        .iter()
        .filter(|(_, o)| {
            o.releasing
                .is_some_and(|at| o.pending.is_empty() || at.elapsed() >= RELEASE_WAIT)
        })
        .map(|(p, _)| *p)
        .collect();
    for p in done {
        if let Some(o) = s.owned.remove(&p) {
            s.in_flight.retain(|_, f| f.partition != p);
            write_cursor(shared, &s.opened.provider, p, o.cursor, o.cursor_stored).await?;
            s.leases.release(p, o.lease_seq).await?;
        }
    }
    if s.last_cursor_write.elapsed() >= CURSOR_EVERY {
        s.last_cursor_write = Instant::now();
        for (p, o) in &mut s.owned {
            write_cursor(shared, &s.opened.provider, *p, o.cursor, o.cursor_stored).await?;
            o.cursor_stored = o.cursor;
        }
    }
    let assigned: Vec<u32> = s
        .owned
        .iter()
        .filter(|(_, o)| o.releasing.is_none())
        .map(|(p, _)| *p)
        .collect();
    // Told again when either changes: a session whose partitions stay the
    // same while another joins still learns how many sessions there are.
    let sessions = u32::try_from(alive_with(&s.members, &s.opened.id).len()).unwrap_or(0);
    if assigned != s.assigned || sessions != s.assigned_sessions {
        shared
            .metrics
            .provider_partitions
            .inc_by(assigned.len() as i64 - s.assigned.len() as i64);
        s.assigned = assigned.clone();
        s.assigned_sessions = sessions;
        let frame = ServerFrame {
            request_id: 0,
            frame: Some(server_frame::Frame::PartitionsAssigned(
                PartitionsAssigned {
                    partitions: assigned,
                    sessions,
                },
            )),
        };
        ws::push(out, Outbound::frame(frame)).await;
    }
    Ok(())
}

fn alive_with(members: &HashMap<String, Member>, me: &str) -> BTreeSet<String> {
    let mut alive = partitions::alive(members, interop_proto::now_ms());
    alive.insert(me.to_owned());
    alive
}

/// A lease lost (this session stalled past its life and another took the
/// partition): stop at once, and forget what was pushed from it (the new
/// owner delivers it again).
fn lose(s: &mut ProviderSession, p: u32, shared: &Shared) {
    if let Some(o) = s.owned.remove(&p) {
        warn!(provider = %s.opened.provider, partition = p, "A provider session lost a partition's lease.");
        o.cancel.cancel();
        s.in_flight.retain(|_, f| f.partition != p);
        shared.metrics.provider_leases_lost.inc();
    }
}

/// Starts a reader of `partition`; returns its window (see `Owned`).
#[allow(clippy::too_many_arguments)]
fn spawn_reader(
    shared: &Arc<Shared>,
    s: &ProviderSession,
    partition: u32,
    generation: u64,
    after: u64,
    cancel: &CancellationToken,
    tx: &mpsc::Sender<FromReader>,
    typing: &mpsc::Sender<ServerFrame>,
) -> Arc<tokio::sync::Semaphore> {
    let window = Arc::new(tokio::sync::Semaphore::new(
        MAX_UNACKED_BATCHES_PER_PARTITION,
    ));
    let reader = Reader {
        shared: shared.clone(),
        provider: s.opened.provider.clone(),
        partition,
        generation,
        cancel: cancel.clone(),
        window: window.clone(),
        tx: tx.clone(),
        typing: typing.clone(),
    };
    tokio::spawn(async move {
        if let Err(e) = Box::pin(reader.read(after)).await {
            let failed = FromReader::Failed {
                partition,
                generation,
                error: e.to_string(),
            };
            tokio::select! {
                () = reader.cancel.cancelled() => {}
                _ = reader.tx.send(failed) => {}
            }
        }
    });
    window
}

/// The partition's stored cursor (0: none).
async fn read_cursor(shared: &Shared, provider: &str, partition: u32) -> Result<u64, BoxError> {
    match shared
        .cursors
        .get_last_raw_message_by_subject(&partition_cursor(provider, partition))
        .await
    {
        Ok(m) => Ok(std::str::from_utf8(&m.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(0),
        Err(e) => Err(e.into()),
    }
}

async fn write_cursor(
    shared: &Shared,
    provider: &str,
    partition: u32,
    cursor: u64,
    stored: u64,
) -> Result<(), BoxError> {
    if cursor <= stored {
        return Ok(());
    }
    shared
        .js
        .publish(
            partition_cursor(provider, partition),
            cursor.to_string().into(),
        )
        .await?
        .await?;
    Ok(())
}

/// At the end of a session: readers stopped, cursors stored, leases given
/// back (so other sessions take the partitions at once), the heartbeat
/// marked left. Bounded: what does not finish in time runs out by itself.
async fn close_down(s: &mut ProviderSession, shared: &Shared) {
    for o in s.owned.values() {
        o.cancel.cancel();
    }
    let work = async {
        for (p, o) in &s.owned {
            write_cursor(shared, &s.opened.provider, *p, o.cursor, o.cursor_stored).await?;
            s.leases.release(*p, o.lease_seq).await?;
        }
        s.leases.heartbeat(true).await
    };
    match tokio::time::timeout(Duration::from_secs(3), work).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            debug!(error = %e, "A provider session's partitions were not all given back.")
        }
        Err(_) => debug!("Giving back a provider session's partitions timed out."),
    }
    shared
        .metrics
        .provider_partitions
        .dec_by(s.assigned.len() as i64);
    s.owned.clear();
}

/// A batch (or a failure) from a partition's reader.
async fn on_reader(
    s: &mut ProviderSession,
    from: FromReader,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
) -> std::ops::ControlFlow<()> {
    let (partition, generation, items) = match from {
        FromReader::Batch {
            partition,
            generation,
            items,
        } => (partition, generation, items),
        FromReader::Failed {
            partition,
            generation,
            error,
        } => {
            if let Some(o) = s.owned.get_mut(&partition) {
                if o.generation == generation {
                    warn!(partition, error = %error, "A provider partition's reader failed; reading it again.");
                    o.restart = true;
                }
            }
            return std::ops::ControlFlow::Continue(());
        }
    };
    let Some(o) = s.owned.get_mut(&partition) else {
        return std::ops::ControlFlow::Continue(());
    };
    if o.generation != generation || o.releasing.is_some() {
        return std::ops::ControlFlow::Continue(());
    }
    let Some(last) = items.last().map(|i| i.seq) else {
        return std::ops::ControlFlow::Continue(());
    };
    let mut messages = Vec::new();
    let mut receipts = Vec::new();
    for item in items {
        if let Some(d) = item.deliver {
            messages.push(d);
        }
        if let Some(r) = item.receipt_for {
            receipts.push(r);
        }
    }
    if messages.is_empty() {
        // Nothing to show (all withheld or skipped): as if acked.
        o.pending.push_back((0, last, true));
        o.advance();
        o.window.add_permits(1);
        return std::ops::ControlFlow::Continue(());
    }
    let tag = s.next_tag;
    s.next_tag += 1;
    o.pending.push_back((tag, last, false));
    let count = messages.len();
    shared.metrics.delivered.inc_by(count as u64);
    shared.metrics.provider_batches.inc();
    s.in_flight.insert(
        tag,
        InFlight {
            partition,
            generation,
            count,
            receipts,
        },
    );
    let frame = ServerFrame {
        request_id: 0,
        frame: Some(server_frame::Frame::DeliverBatch(DeliverBatch {
            batch_tag: tag,
            partition,
            messages,
        })),
    };
    // The writer's queue is bounded: a slow server pushes back here.
    if !ws::push(out, Outbound::frame(frame)).await {
        return std::ops::ControlFlow::Break(());
    }
    std::ops::ControlFlow::Continue(())
}

/// Acks, `MarkRead`, or the end of the session (`Break`, with the close
/// to answer).
async fn on_client(
    s: &mut ProviderSession,
    msg: Option<Result<axum::extract::ws::Message, axum::Error>>,
    out: &mpsc::Sender<Outbound>,
    shared: &Shared,
) -> Result<std::ops::ControlFlow<Option<(u16, &'static str)>>, BoxError> {
    use std::ops::ControlFlow;
    match ws::classify(msg) {
        Incoming::Frame(frame) => match frame.frame {
            Some(client_frame::Frame::Ack(ack)) if !ack.delivery_tags.is_empty() => {
                let r = ws::rejected(
                    frame.request_id,
                    "",
                    RejectCode::UnsupportedFrame,
                    "a provider session acks whole batches: Ack.batch_tags",
                    0,
                );
                ws::push(out, Outbound::frame(r)).await;
            }
            Some(client_frame::Frame::Ack(ack)) => {
                on_ack(s, &ack.batch_tags, shared).await?;
            }
            Some(client_frame::Frame::MarkRead(m)) => {
                let answer = match Address::parse(&m.user) {
                    Ok(user) if user.provider() == s.opened.provider => {
                        let subject = delivery_queued(&interop_bus::recipient_path(user.as_str()));
                        let tags = &m.delivery_tags;
                        Box::pin(crate::session::on_mark_read(
                            &subject,
                            frame.request_id,
                            tags,
                            shared,
                        ))
                        .await
                    }
                    Ok(_) => Some(ws::rejected(
                        frame.request_id,
                        "",
                        RejectCode::SenderNotOwned,
                        "mark_read.user must be a user of the authenticated provider",
                        0,
                    )),
                    Err(_) if m.user.is_empty() => Some(ws::rejected(
                        frame.request_id,
                        "",
                        RejectCode::MissingField,
                        "mark_read.user is required on a provider session",
                        0,
                    )),
                    Err(e) => Some(ws::rejected(
                        frame.request_id,
                        "",
                        RejectCode::InvalidAddress,
                        format!("mark_read.user: {e}"),
                        0,
                    )),
                };
                if let Some(r) = answer {
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
        Incoming::Close(code, reason) => return Ok(ControlFlow::Break(Some((code, reason)))),
        Incoming::End => return Ok(ControlFlow::Break(None)),
        Incoming::Ignore => {}
    }
    Ok(ControlFlow::Continue(()))
}

/// The server stored these batches: their senders get `DELIVERED`, and
/// their partitions' cursors move.
async fn on_ack(s: &mut ProviderSession, tags: &[u64], shared: &Shared) -> Result<(), BoxError> {
    for tag in tags {
        // Unknown tags (acked twice, never sent, or of a partition given
        // away meanwhile) are ignored.
        let Some(f) = s.in_flight.remove(tag) else {
            continue;
        };
        shared.metrics.acked.inc_by(f.count as u64);
        for original in &f.receipts {
            let r = pipeline::receipt_to_sender(
                original,
                ReceiptStatus::Delivered,
                RejectCode::Unspecified,
                "",
            );
            crate::session::publish_receipt(shared, r).await?;
        }
        if let Some(o) = s.owned.get_mut(&f.partition) {
            if o.generation == f.generation {
                if let Some(entry) = o.pending.iter_mut().find(|e| e.0 == *tag) {
                    entry.2 = true;
                }
                o.advance();
                o.window.add_permits(1);
            }
        }
    }
    Ok(())
}

/// Reads one partition of the provider's users' stores for a session.
struct Reader {
    shared: Arc<Shared>,
    provider: String,
    partition: u32,
    generation: u64,
    cancel: CancellationToken,
    /// A permit per batch pushed; the session gives it back at the ack.
    window: Arc<tokio::sync::Semaphore>,
    tx: mpsc::Sender<FromReader>,
    typing: mpsc::Sender<ServerFrame>,
}

type Preparing<'a> =
    FuturesOrdered<std::pin::Pin<Box<dyn std::future::Future<Output = Item> + Send + 'a>>>;

impl Reader {
    async fn open(
        &self,
        after: u64,
    ) -> Result<async_nats::jetstream::consumer::pull::Ordered, BoxError> {
        let deliver_policy = interop_bus::store::deliver_after(after);
        // The partition's stream (docs/adr/0032): its cursor is a
        // sequence of that stream.
        let consumer = self
            .shared
            .inbox
            .for_partition(self.partition)
            .create_consumer(pull::OrderedConfig {
                filter_subject: partition_store(&self.provider, self.partition),
                deliver_policy,
                ..Default::default()
            })
            .await?;
        self.shared.metrics.consumers_opened.inc();
        Ok(consumer.messages().await?)
    }

    async fn read(&self, after: u64) -> Result<(), BoxError> {
        let client = self.shared.js.client();
        let mut changed = client
            .subscribe(partition_events(
                &self.provider,
                self.partition,
                SESSION_CHANGED,
            ))
            .await?;
        let mut typing = client
            .subscribe(partition_events(
                &self.provider,
                self.partition,
                SESSION_EPHEMERAL,
            ))
            .await?;
        // Changes announced before the subscriptions were made are not
        // heard: they count as now (docs/adr/0018).
        let mut changed_ms = interop_proto::now_ms();
        let mut taken = after;
        let mut messages = self.open(after).await?;
        let mut preparing: Preparing<'_> = FuturesOrdered::new();
        let mut batch: Vec<Item> = Vec::new();
        let mut batch_bytes = 0usize;
        // Since when a full batch waits for the window (the consumer is
        // not polled meanwhile).
        let mut blocked_since: Option<Instant> = None;
        loop {
            let full = batch.len() >= MAX_BATCH_MESSAGES || batch_bytes >= BATCH_BYTES;
            let ready = !batch.is_empty() && (preparing.is_empty() || full);
            if ready {
                if let Ok(permit) = self.window.try_acquire() {
                    permit.forget();
                    let items = std::mem::take(&mut batch);
                    batch_bytes = 0;
                    let waited = Instant::now();
                    let send = self.tx.send(FromReader::Batch {
                        partition: self.partition,
                        generation: self.generation,
                        items,
                    });
                    tokio::select! {
                        () = self.cancel.cancelled() => return Ok(()),
                        sent = send => if sent.is_err() { return Ok(()) },
                    }
                    let blocked = blocked_since.take().map_or(waited, |b| b.min(waited));
                    if blocked.elapsed() >= REOPEN_AFTER_WAIT && preparing.is_empty() {
                        messages = self.open(taken).await?;
                    }
                    continue;
                }
                if full {
                    blocked_since.get_or_insert_with(Instant::now);
                }
            }
            // Waiting for the window, a batch not yet full takes what
            // comes meanwhile.
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Ok(()),
                Some(_) = changed.next() => changed_ms = interop_proto::now_ms(),
                Some(event) = typing.next() => self.push_typing(&event.payload),
                Ok(permit) = self.window.acquire(), if ready => drop(permit),
                Some(item) = preparing.next(), if !preparing.is_empty() && !full => {
                    batch_bytes += item.deliver.as_ref().map_or(0, |d| d.encoded_len() + 8);
                    batch.push(item);
                    // Take what is already here before the batch goes.
                    while preparing.len() < crate::session::CHECK_DEPTH {
                        // Polled with this task's waker (not a no-op one):
                        // what is not ready yet still wakes the reader.
                        let ready = std::future::poll_fn(|cx| {
                            std::task::Poll::Ready(match messages.poll_next_unpin(cx) {
                                std::task::Poll::Ready(m) => Some(m),
                                std::task::Poll::Pending => None,
                            })
                        })
                        .await;
                        let Some(next) = ready else { break };
                        let m = next.ok_or("partition consumer ended")??;
                        taken = m.info()?.stream_sequence;
                        preparing.push_back(Box::pin(self.prepare(m, changed_ms)));
                    }
                }
                next = messages.next(), if preparing.len() < crate::session::CHECK_DEPTH && !full => {
                    let m = next.ok_or("partition consumer ended")??;
                    taken = m.info()?.stream_sequence;
                    preparing.push_back(Box::pin(self.prepare(m, changed_ms)));
                }
            }
        }
    }

    /// One stored message made ready for the provider: its user found,
    /// consent re-checked unless nothing changed since it was accepted,
    /// content adapted to the provider's capabilities.
    async fn prepare(&self, m: async_nats::jetstream::Message, changed_ms: i64) -> Item {
        let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
        let skipped = Item {
            seq,
            deliver: None,
            receipt_for: None,
        };
        let shared = &self.shared;
        let Some(key) = interop_bus::subjects::store_subject_key(m.subject.as_str()) else {
            return skipped;
        };
        let Ok(pm) = pipeline::decode(&m.payload) else {
            return skipped;
        };
        let Some(env) = pm.envelope.clone() else {
            return skipped;
        };
        // Whose store: the recipient, or the sender (a receipt, a copy of
        // what they sent).
        let user = [&env.to, &env.from]
            .into_iter()
            .find(|a| interop_bus::recipient_key(a) == key)
            .cloned();
        let Some(user) = user else {
            return skipped;
        };
        let inbox = if crate::session::admission_unchanged(env.accepted_at_ms, changed_ms) {
            shared.metrics.unchecked.inc();
            Some(crate::session::filed_inbox(&pm))
        } else {
            crate::session::still_admitted(shared, &user, &env, &pm).await
        };
        let Some(inbox) = inbox else {
            shared.metrics.withheld.inc();
            return skipped;
        };
        let receipt_for = crate::session::needs_delivered_receipt(&env, key).then(|| Envelope {
            content: None,
            sender_info: None,
            ..env.clone()
        });
        let Some(mut env) = crate::session::adapt_for(shared, &self.provider, env) else {
            return skipped;
        };
        crate::session::observe_end_to_end(shared, &env);
        env.sender_info = crate::session::sender_info(shared, &env.from);
        Item {
            seq,
            deliver: Some(Deliver {
                delivery_tag: seq,
                envelope: Some(env),
                inbox,
                user,
            }),
            receipt_for,
        }
    }

    /// A typing indicator for a user in the partition, alone in a batch with
    /// tag 0; dropped when the session is busy (it is ephemeral).
    fn push_typing(&self, payload: &[u8]) {
        let Ok(pm) = pipeline::decode(payload) else {
            return;
        };
        let Some(env) = pm.envelope else { return };
        let user = env.to.clone();
        let Some(mut env) = crate::session::adapt_for(&self.shared, &self.provider, env) else {
            return;
        };
        env.sender_info = crate::session::sender_info(&self.shared, &env.from);
        let frame = ServerFrame {
            request_id: 0,
            frame: Some(server_frame::Frame::DeliverBatch(DeliverBatch {
                batch_tag: 0,
                partition: self.partition,
                messages: vec![Deliver {
                    delivery_tag: 0,
                    envelope: Some(env),
                    inbox: 0,
                    user,
                }],
            })),
        };
        // Full: the session is busy and the indicator is dropped.
        self.typing.try_send(frame).ok();
    }
}
