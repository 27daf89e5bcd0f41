//! A run against a real gateway: set-up (consent, sessions, connections),
//! the open-loop send phase, the drain, and tear-down.
//!
//! Shape, kept cheap for a 2-core machine:
//! - a few ingest connections per run (`users.ingest_connections`), each
//!   with many sends in flight (pipelined, answered in any order);
//! - one pacer task submitting messages at their intended times;
//! - one delivery session per recipient, and one per sender that tracks
//!   receipts; each acks what it read in one `Ack` per batch.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use interop_client::provider::ProviderReceiver;
use interop_client::{
    ClientError, ConsentOutcome, Delivered, GroupOutcome, PendingSend, Receiver, RequestOutcome,
    SendOutcome, Sender,
};
use interop_proto::v1::{envelope, server_frame, Inbox, ReceiptStatus, RejectCode, RequestAction};

use crate::ceiling::CeilingReport;
use crate::plan::{mix64, parse_client_message_id, Plan, RunId};
use crate::recorder::{Answer, ReceiptKind, Recorder};
use crate::report::{Report, RunFacts, TargetInfo};
use crate::scenario::{Mode, Scenario};
use crate::schedule::{pace, Clock, Job, Sink};

/// Where the gateway is and the providers' tokens.
#[derive(Clone)]
pub struct Target {
    pub ingest_url: String,
    pub delivery_url: String,
    /// The media API (`http://…:8082`), for `mix.media_share`.
    pub media_url: Option<String>,
    /// Provider id → token. Never logged.
    pub tokens: HashMap<String, String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("ingest_url", &self.ingest_url)
            .field("delivery_url", &self.delivery_url)
            .field("media_url", &self.media_url)
            .field("tokens", &self.tokens.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// How to show progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Off,
    /// A live line on stderr (rewritten in place on a terminal).
    Stderr,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no token for provider {0:?} (client config [tokens], or INTEROP_TOKEN_<PROVIDER>)")]
    MissingToken(String),
    #[error("cannot open {what}")]
    Connect {
        what: &'static str,
        source: ClientError,
    },
    #[error("the gateway refused to opt a recipient in: {0}")]
    Consent(String),
    #[error("the gateway refused to create a group: {0}")]
    Group(String),
    #[error("no media URL (client config media_url, --media-url or INTEROP_MEDIA_URL) for mix.media_share")]
    NoMediaUrl,
    #[error("cannot upload the media pool: {0}")]
    Media(#[from] crate::media::MediaError),
    #[error("provider {provider}'s {sessions} sessions did not settle which partitions each owns within {SETTLE_TIMEOUT:?}")]
    Unsettled { provider: String, sessions: usize },
    #[error("provider {provider} has {seen} provider sessions on the gateway and the run opened {sessions}: another client (the home messenger `scripts/up` starts is one) would receive some of its users' messages; stop it, or give the scenario another provider")]
    OtherSessions {
        provider: String,
        sessions: usize,
        seen: usize,
    },
}

/// How long a provider's sessions may take to split the partitions between
/// them before the run (moving a partition waits for its acks and leases).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Waits until `sessions` (one provider's) own every partition between
/// them, each exactly once, and each knows how many sessions there are:
/// measuring while partitions move would count the move's pause as latency.
async fn settle(
    provider: &str,
    sessions: &mut [(ProviderLogin, ProviderReceiver)],
) -> Result<(), RunError> {
    let n = sessions.len();
    let settled = |sessions: &[(ProviderLogin, ProviderReceiver)]| {
        let mut seen = HashSet::new();
        sessions.iter().all(|(_, rx)| {
            rx.sessions() as usize == n && rx.partitions().iter().all(|p| seen.insert(*p))
        }) && seen.len() == interop_proto::limits::PARTITIONS as usize
    };
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while !settled(sessions) {
        // Whichever session hears of a change first.
        let changed = futures_util::future::select_all(
            sessions
                .iter_mut()
                .map(|(_, rx)| Box::pin(rx.next_assignment())),
        );
        let outcome = tokio::time::timeout_at(deadline, changed)
            .await
            .map(|(r, _, _)| r.map(|_| ()));
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(source)) => {
                return Err(RunError::Connect {
                    what: "a provider session",
                    source,
                })
            }
            Err(_) => {
                let seen = sessions
                    .iter()
                    .map(|(_, rx)| rx.sessions())
                    .max()
                    .unwrap_or(0) as usize;
                let provider = provider.to_owned();
                return Err(if seen > n {
                    RunError::OtherSessions {
                        provider,
                        sessions: n,
                        seen,
                    }
                } else {
                    RunError::Unsettled {
                        provider,
                        sessions: n,
                    }
                });
            }
        }
    }
    Ok(())
}

/// Sends on one ingest connection may be outstanding at most this many;
/// past it the connection stops taking messages and the pacer falls behind
/// (which the latency then shows).
pub const MAX_IN_FLIGHT_PER_CONNECTION: usize = 4096;
/// Deliveries acked together at most.
const ACK_BATCH: usize = 256;
/// Sessions opened at once during set-up.
const SETUP_CONCURRENCY: usize = 16;
/// Distinct blobs uploaded at set-up per media size: media messages of a
/// size take them in turn (the gateway allows sending one upload many times).
pub const MEDIA_POOL_PER_SIZE: usize = 4;
/// Media uploads at once during set-up, and downloads at once during the run.
const MEDIA_CONCURRENCY: usize = 8;

/// The outcome of [`run`], before the report is made.
pub struct Finished {
    pub recorder: Arc<Recorder>,
    pub facts: RunFacts,
}

impl Finished {
    pub fn report(&self, scenario: &Scenario, ceiling: Option<CeilingReport>) -> Report {
        Report::build(
            scenario,
            &self.recorder.stats(),
            &self.recorder.ledger,
            &self.facts,
            ceiling,
        )
    }
}

fn token<'a>(target: &'a Target, provider: &str) -> Result<&'a str, RunError> {
    target
        .tokens
        .get(provider)
        .map(String::as_str)
        .ok_or_else(|| RunError::MissingToken(provider.to_owned()))
}

/// The sink the pacer feeds: one channel per ingest connection, chosen by
/// sender so each sender's messages keep their order on the wire.
struct Dispatch {
    plan: Arc<Plan>,
    lanes: Vec<mpsc::Sender<Job>>,
}

impl Sink for Dispatch {
    async fn submit(&mut self, job: Job) -> bool {
        let lane = match self.plan.at(job.seq).from {
            crate::plan::Origin::Normal(i) => i as usize,
            crate::plan::Origin::Spammer(i) => i as usize + 7,
            crate::plan::Origin::GroupAdmin(i) => i as usize + 3,
        } % self.lanes.len();
        self.lanes[lane].send(job).await.is_ok()
    }
}

/// How long one attempt to re-open a lost connection or session may take.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The wait between two attempts to re-open a lost connection or session.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(250);

/// How a [`connection`] task ended.
#[derive(Debug, Default, Clone, Copy)]
struct ConnectionEnd {
    /// Sends the client library wrote again after a reconnect.
    resent: u64,
}

/// One ingest connection: takes jobs, stamps and sends them, records the
/// answers. When the connection fails it is re-opened (every
/// [`RECONNECT_BACKOFF`]) on the same [`Sender`], which re-sends every
/// unanswered send with its original client message id, as a provider's
/// client must; jobs that come meanwhile wait and are sent after it. Ends
/// when the pacer is done and every send is answered, or at `give_up`
/// (the drain is over): what is still waiting is counted unanswered.
async fn connection(
    first: Sender,
    mut jobs: mpsc::Receiver<Job>,
    recorder: Arc<Recorder>,
    clock: Clock,
    give_up: CancellationToken,
) -> ConnectionEnd {
    let plan = recorder.plan().clone();
    let sender = first;
    let mut in_flight = FuturesUnordered::new();
    // Sequence numbers sent and not answered yet.
    let mut waiting: HashSet<u64> = HashSet::new();
    // Jobs taken while the connection was down, in order.
    let mut backlog: VecDeque<Job> = VecDeque::new();
    // `Some(when to try)` while the connection is down.
    let mut retry_at: Option<Instant> = None;
    let mut open = true;
    loop {
        if !open && in_flight.is_empty() && backlog.is_empty() {
            break;
        }
        let down = retry_at.is_some();
        tokio::select! {
            biased;
            () = give_up.cancelled() => break,
            Some((seq, result)) = in_flight.next(), if !in_flight.is_empty() => {
                waiting.remove(&seq);
                let answer = match result {
                    Ok(SendOutcome::Accepted(_)) => Answer::Accepted,
                    Ok(SendOutcome::Rejected(r)) => {
                        Answer::Rejected(RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified))
                    }
                    Err(_) => Answer::Unanswered,
                };
                recorder.answered(seq, answer, clock.now_us());
            }
            () = sender.closed(), if !down => {
                recorder.connection_error();
                retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
            }
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if down => {
                match tokio::time::timeout(RECONNECT_TIMEOUT, sender.reconnect()).await {
                    Ok(Ok(_resent)) => {
                        retry_at = None;
                        while let Some(job) = backlog.pop_front() {
                            let now = clock.now_us();
                            let planned = plan.at(job.seq);
                            let envelope = plan.envelope(job.seq, &planned, now);
                            match sender.submit(envelope).await {
                                Ok(pending) => {
                                    recorder.sent(job.seq, now);
                                    waiting.insert(job.seq);
                                    in_flight.push(answer_of(job.seq, pending));
                                }
                                // Down again before it was written: it waits.
                                Err(_) => {
                                    backlog.push_front(job);
                                    break;
                                }
                            }
                        }
                    }
                    _ => {
                        recorder.connection_error();
                        retry_at = Some(Instant::now() + RECONNECT_BACKOFF);
                    }
                }
            }
            job = jobs.recv(), if open && in_flight.len() + backlog.len() < MAX_IN_FLIGHT_PER_CONNECTION => {
                let Some(job) = job else {
                    open = false;
                    continue;
                };
                if down || !backlog.is_empty() {
                    backlog.push_back(job);
                    continue;
                }
                let now = clock.now_us();
                let planned = plan.at(job.seq);
                let envelope = plan.envelope(job.seq, &planned, now);
                match sender.submit(envelope).await {
                    Ok(pending) => {
                        recorder.sent(job.seq, now);
                        waiting.insert(job.seq);
                        in_flight.push(answer_of(job.seq, pending));
                    }
                    // Not written (the connection just ended): it waits for
                    // the reconnect, which the `closed` branch starts.
                    Err(_) => backlog.push_back(job),
                }
            }
        }
    }
    // The drain is over: no answer came for these.
    let now = clock.now_us();
    for seq in waiting
        .into_iter()
        .chain(backlog.into_iter().map(|j| j.seq))
    {
        recorder.answered(seq, Answer::Unanswered, now);
    }
    ConnectionEnd {
        resent: sender.resent(),
    }
}

/// The answer to a send, across reconnects of its connection.
async fn answer_of(seq: u64, pending: PendingSend<'_>) -> (u64, Result<SendOutcome, ClientError>) {
    (seq, pending.answered().await)
}

/// Reads a delivered envelope into the recorder's terms.
enum Seen {
    Message(u64, u64),
    /// A group message's copy: sequence number, actual send time.
    Copy(u64, u64),
    Receipt(u64, ReceiptKind),
    /// The gateway's notice that a group was made or changed (as is, or as
    /// text for an app that does not declare group changes): acked, not
    /// counted.
    GroupNotice,
    Foreign,
}

fn classify(run: RunId, d: &Delivered) -> Seen {
    classify_envelope(run, &d.envelope)
}

fn classify_envelope(run: RunId, env: &interop_proto::v1::Envelope) -> Seen {
    // Every send has a client message id; the gateway's notices have none.
    let notice = matches!(env.content, Some(envelope::Content::GroupChange(_)))
        || (!env.group_id.is_empty() && env.client_message_id.is_empty());
    if notice {
        return Seen::GroupNotice;
    }
    if let Some(envelope::Content::Receipt(r)) = &env.content {
        return match parse_client_message_id(&r.client_message_id) {
            Some(tag) if tag.run == run => {
                let kind = match ReceiptStatus::try_from(r.status) {
                    Ok(ReceiptStatus::Delivered) => ReceiptKind::Delivered,
                    Ok(ReceiptStatus::Failed) => ReceiptKind::Failed(
                        RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified),
                    ),
                    _ => ReceiptKind::Other,
                };
                Seen::Receipt(tag.seq, kind)
            }
            _ => Seen::Foreign,
        };
    }
    match parse_client_message_id(&env.client_message_id) {
        Some(tag) if tag.run == run && !env.group_id.is_empty() => Seen::Copy(tag.seq, tag.sent_us),
        Some(tag) if tag.run == run => Seen::Message(tag.seq, tag.sent_us),
        _ => Seen::Foreign,
    }
}

/// Downloads delivered media as the recipient (`mix.fetch_media`), a few
/// at a time, off the session's reading loop.
#[derive(Clone)]
struct Fetcher {
    url: String,
    provider: String,
    token: String,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Fetcher {
    fn fetch(&self, recorder: &Arc<Recorder>, user: String, media_id: String) {
        let (this, recorder) = (self.clone(), recorder.clone());
        tokio::spawn(async move {
            // The semaphore is never closed.
            let Ok(_slot) = this.slots.acquire().await else {
                return;
            };
            let start = std::time::Instant::now();
            let got =
                crate::media::download(&this.url, &this.provider, &this.token, &user, &media_id)
                    .await;
            recorder.media_downloaded(got.ok().map(|_| start.elapsed().as_micros() as u64));
        });
    }
}

/// Who a delivery session is for.
#[derive(Clone)]
struct SessionLogin {
    url: String,
    provider: String,
    token: String,
    user: String,
    device: String,
    /// Recipients' sessions download delivered media with it.
    fetcher: Option<Fetcher>,
}

impl SessionLogin {
    async fn connect(&self) -> Result<Receiver, ClientError> {
        Receiver::connect(
            &self.url,
            &self.provider,
            &self.token,
            &self.user,
            &self.device,
        )
        .await
    }
}

/// Who a provider session is for (`users.mode = "provider"`).
#[derive(Clone)]
struct ProviderLogin {
    url: String,
    provider: String,
    token: String,
    fetcher: Option<Fetcher>,
}

impl ProviderLogin {
    async fn connect(&self) -> Result<ProviderReceiver, ClientError> {
        ProviderReceiver::connect(&self.url, &self.provider, &self.token).await
    }
}

/// One provider session on delivery: reads batches for every user of the
/// provider in its partitions, records each message, acks each batch. A
/// failed session is opened again (every [`RECONNECT_BACKOFF`]); what it
/// had not acked comes again and is counted by the ledger as a duplicate
/// if it was recorded. Returns the duplicates the client library dropped.
async fn provider_session(
    login: ProviderLogin,
    first: ProviderReceiver,
    recorder: Arc<Recorder>,
    clock: Clock,
    stop: CancellationToken,
) -> u64 {
    let run = recorder.plan().run;
    let mut rx = Some(first);
    let mut suppressed = 0;
    let mut messages = Vec::new();
    let mut requests = Vec::new();
    while !stop.is_cancelled() {
        let Some(r) = rx.as_mut() else {
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_BACKOFF) => {}
                () = stop.cancelled() => break,
            }
            match tokio::time::timeout(RECONNECT_TIMEOUT, login.connect()).await {
                Ok(Ok(again)) => rx = Some(again),
                _ => recorder.connection_error(),
            }
            continue;
        };
        let next = tokio::select! {
            b = r.next_batch() => b,
            () = stop.cancelled() => break,
        };
        let Ok(batch) = next else {
            recorder.connection_error();
            suppressed += r.duplicates();
            rx = None;
            continue;
        };
        let now = clock.now_us();
        messages.clear();
        requests.clear();
        for m in &batch.messages {
            if let (Some(f), Some(envelope::Content::Media(media))) =
                (&login.fetcher, &m.envelope.content)
            {
                f.fetch(&recorder, m.user.clone(), media.media_id.clone());
            }
            let message = match classify_envelope(run, &m.envelope) {
                Seen::Message(seq, sent_us) => (seq, sent_us),
                Seen::Receipt(seq, kind) => {
                    recorder.receipt(seq, kind, now);
                    continue;
                }
                Seen::Copy(seq, sent_us) => {
                    recorder.delivered_copy(seq, sent_us, &m.envelope.to, now);
                    continue;
                }
                Seen::GroupNotice => continue,
                Seen::Foreign => (u64::MAX, 0),
            };
            messages.push(message);
            requests.push(m.inbox == Inbox::Requests);
        }
        if !messages.is_empty() {
            recorder.delivered_filed(&messages, &requests, now);
        }
        if batch.batch_tag != 0 && r.ack(&[batch.batch_tag]).await.is_err() {
            recorder.connection_error();
            suppressed += r.duplicates();
            rx = None;
        }
    }
    if let Some(r) = rx {
        suppressed += r.duplicates();
        r.close().await;
    }
    suppressed
}

/// Transactions of one ingest connection in flight at once
/// (`users.mode = "provider"`).
const TRANSACTIONS_IN_FLIGHT: usize = 8;

/// A transaction's sends: (sequence number, envelope) in item order.
type TxItems = Vec<(u64, interop_proto::v1::Envelope)>;

/// [`connection`] for provider mode: the jobs waiting when one is taken go
/// together as one `Transaction` (up to the gateway's limit; no timer), up
/// to [`TRANSACTIONS_IN_FLIGHT`] at once. A transaction whose answer did
/// not come (the connection failed) is sent again, the same envelopes with
/// the same client ids, once the connection is open again: what was
/// accepted comes back `duplicate`.
async fn transaction_connection(
    sender: Sender,
    mut jobs: mpsc::Receiver<Job>,
    recorder: Arc<Recorder>,
    clock: Clock,
    give_up: CancellationToken,
) -> ConnectionEnd {
    let plan = recorder.plan().clone();
    let max = sender.max_transaction_items().max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut waiting: HashSet<u64> = HashSet::new();
    // Transactions to send again after a reconnect, in order.
    let mut again: VecDeque<TxItems> = VecDeque::new();
    let mut open = true;
    let mut resent = 0u64;
    let transact = |items: TxItems| {
        let frames = items
            .iter()
            .enumerate()
            .map(|(i, (_, env))| interop_client::transaction::send_item(i as u64 + 1, env.clone()))
            .collect();
        let sender = &sender;
        async move { (items, sender.transact(frames).await) }
    };
    loop {
        if !open && in_flight.is_empty() && again.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            () = give_up.cancelled() => break,
            Some((items, result)) = in_flight.next(), if !in_flight.is_empty() => {
                let items: TxItems = items;
                let now = clock.now_us();
                match result {
                    Ok(interop_client::transaction::TransactionOutcome::Answered(frames)) => {
                        for ((seq, _), frame) in items.iter().zip(frames) {
                            waiting.remove(seq);
                            let answer = match frame.frame {
                                Some(server_frame::Frame::Accepted(_)) => Answer::Accepted,
                                Some(server_frame::Frame::Rejected(r)) => Answer::Rejected(
                                    RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified),
                                ),
                                _ => Answer::Unanswered,
                            };
                            recorder.answered(*seq, answer, now);
                        }
                    }
                    Ok(interop_client::transaction::TransactionOutcome::Rejected(r)) => {
                        let code = RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified);
                        for (seq, _) in &items {
                            waiting.remove(seq);
                            recorder.answered(*seq, Answer::Rejected(code), now);
                        }
                    }
                    Err(_) => {
                        recorder.connection_error();
                        again.push_back(items);
                    }
                }
            }
            () = tokio::time::sleep(RECONNECT_BACKOFF), if !again.is_empty() && in_flight.is_empty() => {
                match tokio::time::timeout(RECONNECT_TIMEOUT, sender.reconnect()).await {
                    Ok(Ok(_)) => {
                        while let Some(items) = again.pop_front() {
                            resent += items.len() as u64;
                            in_flight.push(transact(items));
                        }
                    }
                    _ => recorder.connection_error(),
                }
            }
            job = jobs.recv(), if open && again.is_empty() && in_flight.len() < TRANSACTIONS_IN_FLIGHT => {
                let Some(job) = job else {
                    open = false;
                    continue;
                };
                let mut batch = vec![job];
                while batch.len() < max {
                    match jobs.try_recv() {
                        Ok(j) => batch.push(j),
                        Err(_) => break,
                    }
                }
                let now = clock.now_us();
                let items: TxItems = batch
                    .into_iter()
                    .map(|job| {
                        let planned = plan.at(job.seq);
                        recorder.sent(job.seq, now);
                        waiting.insert(job.seq);
                        (job.seq, plan.envelope(job.seq, &planned, now))
                    })
                    .collect();
                in_flight.push(transact(items));
            }
        }
    }
    let now = clock.now_us();
    for seq in waiting {
        recorder.answered(seq, Answer::Unanswered, now);
    }
    ConnectionEnd { resent }
}

/// One delivery session (a recipient's, or a sender's for receipts): reads,
/// records and acks in batches until `stop`. If it fails, the same
/// [`Receiver`] re-opens it (every [`RECONNECT_BACKOFF`]), keeping its
/// de-duplication window, as an app's device would: what the ledger counts
/// is what an app sees. Returns the duplicates the client library dropped
/// (same server id).
async fn session(
    login: SessionLogin,
    first: Receiver,
    recorder: Arc<Recorder>,
    clock: Clock,
    stop: CancellationToken,
) -> u64 {
    let run = recorder.plan().run;
    let mut rx = first;
    let mut connected = true;
    let mut messages = Vec::with_capacity(ACK_BATCH);
    let mut requests = Vec::with_capacity(ACK_BATCH);
    let mut tags = Vec::with_capacity(ACK_BATCH);
    while !stop.is_cancelled() {
        if !connected {
            tokio::select! {
                () = tokio::time::sleep(RECONNECT_BACKOFF) => {}
                () = stop.cancelled() => break,
            }
            match tokio::time::timeout(RECONNECT_TIMEOUT, rx.reconnect()).await {
                Ok(Ok(())) => connected = true,
                _ => recorder.connection_error(),
            }
            continue;
        }
        let r = &mut rx;
        let first = tokio::select! {
            d = r.next() => d,
            () = stop.cancelled() => break,
        };
        let mut failed = first.is_err();
        let mut batch: Vec<Delivered> = first.into_iter().collect();
        // Take what has already arrived, to ack it in one frame.
        while !failed && batch.len() < ACK_BATCH {
            match r.next().now_or_never() {
                Some(Ok(d)) => batch.push(d),
                Some(Err(_)) => failed = true,
                None => break,
            }
        }
        let now = clock.now_us();
        messages.clear();
        requests.clear();
        tags.clear();
        for d in &batch {
            tags.push(d.delivery_tag);
            if let (Some(f), Some(envelope::Content::Media(m))) =
                (&login.fetcher, &d.envelope.content)
            {
                f.fetch(&recorder, d.envelope.to.clone(), m.media_id.clone());
            }
            let message = match classify(run, d) {
                Seen::Message(seq, sent_us) => (seq, sent_us),
                Seen::Receipt(seq, kind) => {
                    recorder.receipt(seq, kind, now);
                    continue;
                }
                Seen::Copy(seq, sent_us) => {
                    recorder.delivered_copy(seq, sent_us, &d.envelope.to, now);
                    continue;
                }
                Seen::GroupNotice => continue,
                Seen::Foreign => (u64::MAX, 0),
            };
            messages.push(message);
            requests.push(d.inbox == Inbox::Requests);
        }
        if !messages.is_empty() {
            recorder.delivered_filed(&messages, &requests, now);
        }
        if !tags.is_empty() && r.ack(&tags).await.is_err() {
            failed = true;
        }
        if failed {
            recorder.connection_error();
            connected = false;
        }
    }
    let suppressed = rx.duplicates();
    if connected {
        rx.close().await;
    }
    suppressed
}

async fn opt_in(scenario: &Scenario, plan: &Plan, target: &Target) -> Result<(), RunError> {
    let u = &scenario.file.users;
    const HOME: &str = "the recipients' ingest connection";
    let home = set_up_connection(target, &u.recipient_provider, HOME).await?;
    let allow = [u.sender_provider.as_str()];
    let mut answers = futures_util::stream::iter(plan.recipients())
        .map(|user| {
            set_up_with_retries(
                || home.set_consent(user, true, &allow),
                |o| match o {
                    ConsentOutcome::Rejected(r) => unavailable_for(r),
                    _ => None,
                },
            )
        })
        .buffer_unordered(64);
    while let Some(answer) = answers.next().await {
        match answer {
            Ok(ConsentOutcome::Updated(_)) => {}
            Ok(ConsentOutcome::Rejected(r)) => {
                let code = RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified);
                return Err(RunError::Consent(code.as_str_name().to_owned()));
            }
            Err(source) => return Err(RunError::Connect { what: HOME, source }),
        }
    }
    // The contacts accept every normal sender and group sender (they talk
    // already); the strangers accept nobody, so first contacts and spam
    // are requests.
    let pairs = plan.contacts().iter().flat_map(|r| {
        plan.senders()
            .iter()
            .chain(plan.group_admins())
            .map(move |s| (r, s))
    });
    accept_all(&home, pairs, HOME).await?;
    if u.senders_accept_contacts {
        // ... and each sender them (`users.senders_accept_contacts`).
        const SENDERS: &str = "the senders' ingest connection";
        let senders = set_up_connection(target, &u.sender_provider, SENDERS).await?;
        let pairs = plan
            .senders()
            .iter()
            .flat_map(|s| plan.contacts().iter().map(move |r| (s, r)));
        accept_all(&senders, pairs, SENDERS).await?;
    }
    Ok(())
}

/// Set-up attempts of one frame refused `UNAVAILABLE` (a retryable code:
/// the gateway could not store it yet) before the run gives up.
const SET_UP_ATTEMPTS: u32 = 5;

/// How long to wait before sending again a frame refused with `r`, if it
/// is `UNAVAILABLE`.
fn unavailable_for(r: &interop_proto::v1::Rejected) -> Option<u64> {
    (r.code == RejectCode::Unavailable as i32).then(|| u64::from(r.retry_after_ms.max(100)))
}

/// Sends a set-up frame, again after `retry_after_ms` while `retry` says it
/// was refused `UNAVAILABLE`, as a provider's client must
/// (docs/protocol.md); the last answer is returned as it is.
async fn set_up_with_retries<T, F, Fut>(
    mut attempt: F,
    retry: impl Fn(&T) -> Option<u64>,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut tries = 1;
    loop {
        let answer = attempt().await?;
        match retry(&answer) {
            Some(wait_ms) if tries < SET_UP_ATTEMPTS => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
            }
            _ => return Ok(answer),
        }
    }
}

/// An ingest connection for set-up as `provider`; `what` names it in errors.
async fn set_up_connection(
    target: &Target,
    provider: &str,
    what: &'static str,
) -> Result<Sender, RunError> {
    Sender::connect(&target.ingest_url, provider, token(target, provider)?)
        .await
        .map_err(|source| RunError::Connect { what, source })
}

/// For each `(user, sender)`: `user` accepts `sender`, on `conn`.
async fn accept_all<'a>(
    conn: &Sender,
    pairs: impl Iterator<Item = (&'a String, &'a String)>,
    what: &'static str,
) -> Result<(), RunError> {
    let mut answers = futures_util::stream::iter(pairs)
        .map(|(user, sender)| {
            set_up_with_retries(
                move || conn.respond_to_request(user, sender, RequestAction::Accept),
                |o| match o {
                    RequestOutcome::Rejected(r) => unavailable_for(r),
                    _ => None,
                },
            )
        })
        .buffer_unordered(64);
    while let Some(answer) = answers.next().await {
        match answer {
            Ok(RequestOutcome::Responded(_)) => {}
            Ok(RequestOutcome::Rejected(r)) => {
                let code = RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified);
                return Err(RunError::Consent(code.as_str_name().to_owned()));
            }
            Err(source) => return Err(RunError::Connect { what, source }),
        }
    }
    Ok(())
}

/// Uploads the media pool with the sender provider's credentials and
/// records it in the plan; the uploads' times go to the report, apart from
/// the send phase.
async fn upload_media_pool(
    scenario: &Scenario,
    plan: &Plan,
    url: &str,
    provider: &str,
    token: &str,
    recorder: &Recorder,
) -> Result<(), RunError> {
    let sizes = plan.media_sizes_used(&scenario.file.mix.media_sizes);
    let mut pool: Vec<Vec<crate::media::Uploaded>> =
        vec![Vec::new(); scenario.file.mix.media_sizes.len()];
    let jobs = sizes.iter().flat_map(|&(index, bytes)| {
        (0..MEDIA_POOL_PER_SIZE).map(move |k| (index, bytes, k as u64))
    });
    let mut uploads = futures_util::stream::iter(jobs)
        .map(|(index, bytes, k)| async move {
            // Random-looking bytes, different for every blob of the run.
            let seed = mix64(u64::from(plan.run.0) << 32 ^ (index as u64) << 8 ^ k);
            let data = filler_media(bytes as usize, seed);
            let start = std::time::Instant::now();
            let up = crate::media::upload(url, provider, token, &data).await?;
            Ok::<_, RunError>((index, up, start.elapsed().as_micros() as u64))
        })
        .buffer_unordered(MEDIA_CONCURRENCY);
    while let Some(done) = uploads.next().await {
        let (index, up, took_us) = done?;
        recorder.media_uploaded(up.size, took_us);
        pool[index].push(up);
    }
    plan.set_media_pool(pool);
    Ok(())
}

fn filler_media(bytes: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes + 8);
    let mut x = seed;
    while out.len() < bytes {
        x = mix64(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(bytes);
    out
}

/// Creates the groups (each by its sender, with its members) and records
/// their ids in the plan.
async fn create_groups(plan: &Plan, ingest: &Sender) -> Result<(), RunError> {
    let mut ids = Vec::with_capacity(plan.group_admins().len());
    for (g, admin) in plan.group_admins().iter().enumerate() {
        let members = plan.group_members(g as u32);
        match ingest.create_group(admin, &members).await {
            Ok(GroupOutcome::Updated(group)) => ids.push(group.group_id),
            Ok(GroupOutcome::Rejected(r)) => {
                let code = RejectCode::try_from(r.code).unwrap_or(RejectCode::Unspecified);
                return Err(RunError::Group(code.as_str_name().to_owned()));
            }
            Err(source) => {
                return Err(RunError::Connect {
                    what: "the groups' ingest connection",
                    source,
                })
            }
        }
    }
    plan.set_group_ids(ids);
    Ok(())
}

async fn open_sessions(
    logins: Vec<SessionLogin>,
    what: &'static str,
) -> Result<Vec<(SessionLogin, Receiver)>, RunError> {
    futures_util::stream::iter(logins)
        .map(|login| async move {
            let rx = login
                .connect()
                .await
                .map_err(|source| RunError::Connect { what, source })?;
            Ok((login, rx))
        })
        .buffer_unordered(SETUP_CONCURRENCY)
        .collect::<Vec<Result<_, RunError>>>()
        .await
        .into_iter()
        .collect()
}

fn progress_line(recorder: &Recorder, clock: Clock, draining: bool) -> String {
    let now = clock.now_us();
    let s = recorder.snapshot(now);
    let schedule = recorder.schedule();
    let phase = if draining {
        format!(
            "drain  {:>4.0}s  waiting for {}",
            now.saturating_sub(schedule.end_us()) as f64 / 1e6,
            recorder.ledger.unresolved()
        )
    } else {
        let warm = if now < schedule.measured_start_us() {
            " warm-up"
        } else {
            ""
        };
        format!(
            "{:>4.0}s/{:.0}s{warm}  offered {:.0}/s",
            now as f64 / 1e6,
            schedule.end_us() as f64 / 1e6,
            schedule.rate_at_us(now)
        )
    };
    format!(
        "[{phase}]  sent {}/s  delivered {}/s ({} total)  p99 {:.1} ms  rejected {}  errors {}",
        s.sent_last_s, s.delivered_last_s, s.delivered, s.p99_ms, s.rejected, s.errors
    )
}

fn spawn_progress(
    recorder: Arc<Recorder>,
    clock: Clock,
    draining: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stderr().is_terminal();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            n += 1;
            let line = progress_line(
                &recorder,
                clock,
                draining.load(std::sync::atomic::Ordering::Relaxed),
            );
            let mut err = std::io::stderr().lock();
            // Progress output is best effort.
            if tty {
                write!(err, "\r\x1b[2K{line}").ok();
            } else if n.is_multiple_of(5) {
                writeln!(err, "{line}").ok();
            }
            err.flush().ok();
        }
        if tty {
            eprintln!();
        }
    })
}

/// Runs a scenario against the gateway at `target`. `stop` ends the send
/// phase early (what was sent is still drained); `abort` also cuts the
/// drain short.
pub async fn run(
    scenario: &Scenario,
    target: &Target,
    progress: Progress,
    stop: CancellationToken,
    abort: CancellationToken,
) -> Result<Finished, RunError> {
    run_observed(scenario, target, progress, stop, abort, |_, _| {}).await
}

/// [`run`], handing the live recorder and the run's clock to `observe`
/// once set-up is done and just before the first send, so a caller can
/// watch deliveries while the run goes on (the fault-injection suite
/// measures recovery this way).
pub async fn run_observed(
    scenario: &Scenario,
    target: &Target,
    progress: Progress,
    stop: CancellationToken,
    abort: CancellationToken,
    observe: impl FnOnce(Arc<Recorder>, Clock),
) -> Result<Finished, RunError> {
    let run_id = RunId::fresh();
    let started_at_unix_ms = interop_proto::now_ms();
    let plan = Arc::new(Plan::new(scenario, run_id));
    let recorder = Arc::new(Recorder::new(scenario.schedule.clone(), plan.clone()));
    let u = &scenario.file.users;
    let sender_token = token(target, &u.sender_provider)?.to_owned();
    let recipient_token = token(target, &u.recipient_provider)?.to_owned();
    let device = format!("lt-{run_id}");

    // Set-up: consent, sessions, connections.
    opt_in(scenario, &plan, target).await?;
    let media = &scenario.file.mix;
    let media_url = if media.media_share > 0.0 {
        Some(target.media_url.clone().ok_or(RunError::NoMediaUrl)?)
    } else {
        None
    };
    if let Some(url) = &media_url {
        upload_media_pool(
            scenario,
            &plan,
            url,
            &u.sender_provider,
            &sender_token,
            &recorder,
        )
        .await?;
    }
    let fetcher = media_url.filter(|_| media.fetch_media).map(|url| Fetcher {
        url,
        provider: u.recipient_provider.clone(),
        token: recipient_token.clone(),
        slots: Arc::new(tokio::sync::Semaphore::new(MEDIA_CONCURRENCY)),
    });
    let login = |provider: &str, token: &str, user: &str| SessionLogin {
        url: target.delivery_url.clone(),
        provider: provider.to_owned(),
        token: token.to_owned(),
        user: user.to_owned(),
        device: device.clone(),
        fetcher: None,
    };
    let mut logins: Vec<SessionLogin> = plan
        .recipients()
        .iter()
        .map(|r| SessionLogin {
            fetcher: fetcher.clone(),
            ..login(&u.recipient_provider, &recipient_token, r)
        })
        .collect();
    logins.extend(
        plan.receipt_sessions()
            .map(|s| login(&u.sender_provider, &sender_token, s)),
    );
    let provider_mode = u.mode == Mode::Provider;
    let sessions = if provider_mode {
        Vec::new()
    } else {
        open_sessions(logins, "a delivery session").await?
    };
    // Provider mode: each provider's sessions on delivery (the recipients'
    // provider's, and the senders' provider's for receipts).
    let mut provider_sessions = Vec::new();
    if provider_mode {
        for (provider, token, fetcher) in [
            (&u.recipient_provider, &recipient_token, fetcher.clone()),
            (&u.sender_provider, &sender_token, None),
        ] {
            for _ in 0..u.provider_sessions {
                let login = ProviderLogin {
                    url: target.delivery_url.clone(),
                    provider: provider.clone(),
                    token: token.clone(),
                    fetcher: fetcher.clone(),
                };
                let rx = login.connect().await.map_err(|source| RunError::Connect {
                    what: "a provider session",
                    source,
                })?;
                provider_sessions.push((login, rx));
            }
            let first = provider_sessions.len() - u.provider_sessions as usize;
            settle(provider, &mut provider_sessions[first..]).await?;
        }
    }
    let mut senders = Vec::new();
    for _ in 0..u.ingest_connections {
        senders.push(
            Sender::connect(&target.ingest_url, &u.sender_provider, &sender_token)
                .await
                .map_err(|source| RunError::Connect {
                    what: "an ingest connection",
                    source,
                })?,
        );
    }
    if let (false, Some(first)) = (plan.group_admins().is_empty(), senders.first()) {
        create_groups(&plan, first).await?;
    }

    // Start shortly after now, so every task is waiting when it begins.
    let clock = Clock::starting_at(Instant::now() + Duration::from_millis(100));
    observe(recorder.clone(), clock);
    let sessions_stop = CancellationToken::new();
    let mut session_tasks: Vec<JoinHandle<u64>> = sessions
        .into_iter()
        .map(|(login, rx)| {
            tokio::spawn(session(
                login,
                rx,
                recorder.clone(),
                clock,
                sessions_stop.clone(),
            ))
        })
        .collect();
    session_tasks.extend(provider_sessions.into_iter().map(|(login, rx)| {
        tokio::spawn(provider_session(
            login,
            rx,
            recorder.clone(),
            clock,
            sessions_stop.clone(),
        ))
    }));
    let mut lanes = Vec::new();
    let mut connection_tasks = Vec::new();
    let give_up = CancellationToken::new();
    for s in senders {
        let (tx, rx) = mpsc::channel(1024);
        lanes.push(tx);
        connection_tasks.push(if provider_mode {
            tokio::spawn(transaction_connection(
                s,
                rx,
                recorder.clone(),
                clock,
                give_up.clone(),
            ))
        } else {
            tokio::spawn(connection(s, rx, recorder.clone(), clock, give_up.clone()))
        });
    }
    let progress_stop = CancellationToken::new();
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let progress_task = (progress == Progress::Stderr).then(|| {
        spawn_progress(
            recorder.clone(),
            clock,
            draining.clone(),
            progress_stop.clone(),
        )
    });

    // Send phase.
    let mut dispatch = Dispatch {
        plan: plan.clone(),
        lanes,
    };
    let paced = pace(&scenario.schedule, clock, &mut dispatch, &stop).await;
    drop(dispatch);
    draining.store(true, std::sync::atomic::Ordering::Relaxed);

    // Drain: every send answered, every accepted message delivered or
    // failed, every tracked receipt in; or the drain time is up.
    let drain_start = Instant::now();
    let deadline = drain_start + scenario.drain();
    let mut drained = false;
    let mut ends = Vec::new();
    let mut connection_tasks = connection_tasks.into_iter();
    let mut unfinished = None;
    for mut task in connection_tasks.by_ref() {
        tokio::select! {
            end = &mut task => ends.push(end),
            () = tokio::time::sleep_until(deadline) => {
                unfinished = Some(task);
                break;
            }
            () = abort.cancelled() => {
                unfinished = Some(task);
                break;
            }
        }
    }
    while Instant::now() < deadline && !abort.is_cancelled() {
        if recorder.ledger.unresolved() == 0 && recorder.pending_receipts() == 0 {
            drained = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drain_s = drain_start.elapsed().as_secs_f64();

    // Tear-down. Sends still unanswered are counted so.
    give_up.cancel();
    for task in unfinished.into_iter().chain(connection_tasks) {
        ends.push(task.await);
    }
    let resent_after_reconnect = ends
        .into_iter()
        .map(|end| end.map_or(0, |e| e.resent))
        .sum();
    sessions_stop.cancel();
    let mut suppressed = 0;
    for t in session_tasks {
        suppressed += t.await.unwrap_or(0);
    }
    progress_stop.cancel();
    if let Some(t) = progress_task {
        t.await.ok();
    }
    Ok(Finished {
        facts: RunFacts {
            run_id,
            started_at_unix_ms,
            target: TargetInfo {
                ingest_url: target.ingest_url.clone(),
                delivery_url: target.delivery_url.clone(),
            },
            max_lag_us: paced.max_lag_us,
            drain_s,
            drained,
            interrupted: paced.interrupted,
            duplicates_suppressed_by_client: suppressed,
            resent_after_reconnect,
        },
        recorder,
    })
}
