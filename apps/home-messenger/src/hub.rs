//! The adapter's side of the gateway: one ingest connection (a
//! [`Sender`]) that carries every signed-in user's frames, and one provider
//! session on delivery ([`ProviderReceiver`]) that receives every home
//! user's messages in batches. This is what a gatekeeper's backend does
//! instead of one gateway connection per user device.
//!
//! Received messages go into each user's mailbox (the backend's store: a
//! batch is acked to the gateway once its messages are written to disk and
//! synced, so nothing the gateway let go of is lost when the adapter stops)
//! and out to the user's open browsers; a message stays in the mailbox
//! until a browser acks it (it then keeps it, decrypted, in its own
//! storage).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interop_client::provider::ProviderReceiver;
use interop_client::{SendOutcome, Sender};
use interop_proto::v1::{
    client_frame::Frame, server_frame, Deliver, Inbox, RejectCode, Rejected, ServerFrame,
};
use tokio::sync::mpsc;

use crate::relay::{masked, refusal};

/// Where and as whom the adapter connects to the gateway.
#[derive(Clone)]
pub struct GatewayConfig {
    pub ingest_url: String,
    pub delivery_url: String,
    pub media_url: String,
    /// The provider admin API, for the registry's providers (their names
    /// and privacy policies) shown on the opt-in screen.
    pub admin_url: Option<String>,
    pub admin_token: Option<String>,
    /// The gatekeeper's provider id, `home`.
    pub provider: String,
    pub token: String,
}

impl std::fmt::Debug for GatewayConfig {
    // Tokens never go into logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayConfig")
            .field("ingest_url", &self.ingest_url)
            .field("delivery_url", &self.delivery_url)
            .field("media_url", &self.media_url)
            .field("admin_url", &self.admin_url)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// A user's mailbox is full with this many messages waiting for their
/// browsers. A batch with a message for a user whose mailbox is full is not
/// taken (nor acked to the gateway) until their browsers take some: the
/// gateway keeps it meanwhile (back-pressure, never a dropped message;
/// other users of the same partition wait too). So a mailbox holds at most
/// this many plus one batch (256).
pub const MAILBOX_LIMIT: usize = 10_000;

/// A mailbox file is rewritten with its waiting messages only once it
/// holds this many records more than twice their number.
const COMPACT_SLACK: usize = 1_024;

/// A record in a mailbox file: a kind byte, a little-endian u32 length,
/// then the payload (a `Deliver`, or the acked delivery tags as
/// little-endian u64s).
const RECORD_MESSAGE: u8 = 1;
const RECORD_ACK: u8 = 2;

/// What a browser connection receives: frames to write.
pub type Outbox = mpsc::Sender<ServerFrame>;

#[derive(Default)]
struct Mailbox {
    /// Undelivered messages by the user's delivery tag (store order).
    pending: BTreeMap<u64, Deliver>,
    /// The user's open browser connections.
    live: Vec<(u64, Outbox)>,
    /// Its file (appended to), and the records in it.
    file: Option<std::fs::File>,
    records: usize,
}

/// Every user's mailbox: what waits for their browsers, and the browsers
/// they have open. With a directory ([`Mailboxes::open`]) each mailbox is
/// kept in a file there; [`Mailboxes::default`] keeps them in memory only.
#[derive(Default)]
pub struct Mailboxes {
    boxes: Mutex<HashMap<String, Mailbox>>,
    next_conn: AtomicU64,
    dir: Option<PathBuf>,
}

/// A user's mailbox file: named by a hash of the address, so no phone
/// number is in a path.
fn mailbox_path(dir: &Path, user: &str) -> PathBuf {
    use sha2::Digest as _;
    dir.join(format!(
        "{}.mbox",
        hex::encode(&sha2::Sha256::digest(user.as_bytes())[..16])
    ))
}

fn record(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 5);
    out.push(kind);
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(payload);
    out
}

/// The messages a mailbox file leaves waiting, and its records. A record
/// cut short (the adapter stopped while writing it) ends the file: it was
/// never synced, so its batch was never acked.
fn replay(bytes: &[u8]) -> (BTreeMap<u64, Deliver>, usize) {
    use prost::Message as _;
    let (mut pending, mut records, mut at) = (BTreeMap::new(), 0, 0);
    while let Some(header) = bytes.get(at..at + 5) {
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let Some(payload) = bytes.get(at + 5..at + 5 + len) else {
            break;
        };
        match header[0] {
            RECORD_MESSAGE => {
                if let Ok(d) = Deliver::decode(payload) {
                    pending.insert(d.delivery_tag, d);
                }
            }
            RECORD_ACK => {
                for tag in payload.chunks_exact(8) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(tag);
                    pending.remove(&u64::from_le_bytes(b));
                }
            }
            _ => {}
        }
        records += 1;
        at += 5 + len;
    }
    (pending, records)
}

/// The gateway connections and every user's mailbox.
pub struct Hub {
    pub config: GatewayConfig,
    pub mailboxes: Mailboxes,
    sender: Sender,
    reads: mpsc::Sender<(String, Vec<u64>)>,
}

impl Mailboxes {
    /// The mailboxes kept in `dir` (created if missing), with what waits
    /// in them. Each file is rewritten with its waiting messages only.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut boxes = HashMap::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("mbox") {
                continue;
            }
            let (pending, _) = replay(&std::fs::read(&path)?);
            let Some(user) = pending.values().next().map(|d| d.user.clone()) else {
                std::fs::remove_file(&path)?;
                continue;
            };
            let mut b = Mailbox {
                pending,
                ..Default::default()
            };
            rewrite(&path, &mut b)?;
            boxes.insert(user, b);
        }
        Ok(Self {
            boxes: Mutex::new(boxes),
            next_conn: AtomicU64::new(0),
            dir: Some(dir.to_owned()),
        })
    }

    fn boxes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Mailbox>> {
        // A panic while holding the lock left the maps consistent enough
        // (each change is one insert or remove): go on with them.
        self.boxes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a browser connection of `user` and returns its id and the
    /// messages waiting for it, in store order; from now on new ones go to
    /// `out` (taken under one lock: nothing is missed or sent twice).
    pub fn attach(&self, user: &str, out: Outbox) -> (u64, Vec<Deliver>) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed) + 1;
        let mut boxes = self.boxes();
        let b = boxes.entry(user.to_owned()).or_default();
        b.live.push((id, out));
        (id, b.pending.values().cloned().collect())
    }

    pub fn detach(&self, user: &str, id: u64) {
        let mut boxes = self.boxes();
        if let Some(b) = boxes.get_mut(user) {
            b.live.retain(|(i, _)| *i != id);
        }
    }

    /// The browser has stored these messages: they leave the mailbox. (Not
    /// synced: an ack lost when the adapter stops only shows the browser a
    /// message again, which it recognises by its delivery tag.)
    pub fn ack(&self, user: &str, tags: &[u64]) {
        let mut boxes = self.boxes();
        let Some(b) = boxes.get_mut(user) else { return };
        let acked: Vec<u8> = tags
            .iter()
            .filter(|t| b.pending.remove(t).is_some())
            .flat_map(|t| t.to_le_bytes())
            .collect();
        if acked.is_empty() {
            return;
        }
        let Some(dir) = &self.dir else { return };
        let path = mailbox_path(dir, user);
        let written = if b.records > 2 * b.pending.len() + COMPACT_SLACK {
            rewrite(&path, b)
        } else {
            append(&path, b, &record(RECORD_ACK, &acked))
        };
        if let Err(e) = written {
            tracing::warn!(user = %masked(user), error = %e, "cannot record an ack in the mailbox file; the browser may get those messages again");
        }
    }

    /// Whether `user`'s mailbox holds [`MAILBOX_LIMIT`] messages.
    pub fn is_full(&self, user: &str) -> bool {
        self.boxes()
            .get(user)
            .is_some_and(|b| b.pending.len() >= MAILBOX_LIMIT)
    }

    /// Syncs the mailbox files of `users` to disk (before their batch is
    /// acked to the gateway).
    pub fn sync<'a>(&self, users: impl IntoIterator<Item = &'a str>) -> std::io::Result<()> {
        let boxes = self.boxes();
        for user in users {
            if let Some(f) = boxes.get(user).and_then(|b| b.file.as_ref()) {
                f.sync_data()?;
            }
        }
        Ok(())
    }

    /// How many messages wait for `user`'s browser.
    pub fn pending(&self, user: &str) -> usize {
        self.boxes().get(user).map_or(0, |b| b.pending.len())
    }

    /// Files one delivered message: into the mailbox and its file (unless
    /// it is a typing indicator, which is never stored) and out to the
    /// user's browsers. Call [`Mailboxes::sync`] before acking its batch; a
    /// write that failed is returned (the batch must not be acked then).
    pub fn file(&self, d: Deliver, typing: bool) -> std::io::Result<()> {
        use prost::Message as _;
        let mut boxes = self.boxes();
        let b = boxes.entry(d.user.clone()).or_default();
        if !typing {
            if let Some(dir) = &self.dir {
                append(
                    &mailbox_path(dir, &d.user),
                    b,
                    &record(RECORD_MESSAGE, &d.encode_to_vec()),
                )?;
            }
            b.pending.insert(d.delivery_tag, d.clone());
        }
        let frame = ServerFrame {
            request_id: 0,
            frame: Some(server_frame::Frame::Deliver(d)),
        };
        // A browser that does not keep up is let go: its connection ends
        // (the writer sees its channel closed) and it gets everything
        // pending again when it reconnects.
        b.live
            .retain(|(_, out)| out.try_send(frame.clone()).is_ok());
        Ok(())
    }
}

/// Appends `bytes` to the mailbox's file (opened on first use).
fn append(path: &Path, b: &mut Mailbox, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    if b.file.is_none() {
        b.file = Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        );
    }
    if let Some(f) = b.file.as_mut() {
        f.write_all(bytes)?;
    }
    b.records += 1;
    Ok(())
}

/// Replaces the mailbox's file with its waiting messages only (written,
/// synced, then renamed over the old one).
fn rewrite(path: &Path, b: &mut Mailbox) -> std::io::Result<()> {
    use prost::Message as _;
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    for d in b.pending.values() {
        f.write_all(&record(RECORD_MESSAGE, &d.encode_to_vec()))?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    b.file = Some(std::fs::OpenOptions::new().append(true).open(path)?);
    b.records = b.pending.len();
    Ok(())
}

impl Hub {
    /// Connects to ingest, then starts the provider session on delivery in
    /// a task that reconnects by itself.
    ///
    /// A gateway that cannot be reached yet is retried (with back-off, up
    /// to 5 s between tries, a warning each time) rather than given up on;
    /// a refused `Hello` (a wrong token) is an error at once.
    pub async fn start(config: GatewayConfig, mailboxes: Mailboxes) -> anyhow::Result<Arc<Self>> {
        let sender = retry("ingest", || {
            Sender::connect(&config.ingest_url, &config.provider, &config.token)
        })
        .await?;
        let (reads_tx, reads_rx) = mpsc::channel(1024);
        let hub = Arc::new(Self {
            config,
            mailboxes,
            sender,
            reads: reads_tx,
        });
        let first = retry("delivery", || {
            ProviderReceiver::connect(
                &hub.config.delivery_url,
                &hub.config.provider,
                &hub.config.token,
            )
        })
        .await?;
        tokio::spawn(receive(Arc::downgrade(&hub), first, reads_rx));
        Ok(hub)
    }

    /// The user read these messages: READ receipts to their senders, sent
    /// on the provider session.
    pub async fn mark_read(&self, user: &str, tags: Vec<u64>) {
        if self.reads.send((user.to_owned(), tags)).await.is_err() {
            tracing::warn!("the provider session is gone; a read report was dropped");
        }
    }

    /// Sends a checked frame on as the provider and returns the gateway's
    /// answer. Sends go through [`Sender::send`], which keeps them for a
    /// re-send after a reconnect.
    pub async fn forward(&self, frame: Frame) -> server_frame::Frame {
        if self.sender.is_closed() {
            if let Err(e) = self.sender.reconnect().await {
                tracing::warn!(error = %e, "cannot reconnect to ingest");
                return unavailable();
            }
        }
        match frame {
            Frame::Send(s) => {
                let Some(envelope) = s.envelope else {
                    return server_frame::Frame::Rejected(refusal(
                        RejectCode::MissingField,
                        "Send without an envelope",
                    ));
                };
                match self.sender.send(envelope).await {
                    Ok(SendOutcome::Accepted(a)) => server_frame::Frame::Accepted(a),
                    Ok(SendOutcome::Rejected(r)) => server_frame::Frame::Rejected(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "a send got no answer");
                        unavailable()
                    }
                }
            }
            other => match self.sender.send_frame(other).await {
                Ok(answer) => answer.frame.unwrap_or_else(unavailable),
                Err(e) => {
                    tracing::warn!(error = %e, "a request got no answer");
                    unavailable()
                }
            },
        }
    }
}

/// Connects with `connect` until it succeeds; a refused `Hello` ends it.
async fn retry<T, F, Fut>(what: &str, mut connect: F) -> Result<T, interop_client::ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, interop_client::ClientError>>,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match connect().await {
            Ok(t) => return Ok(t),
            Err(e @ interop_client::ClientError::HelloRefused(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach the gateway's {what} yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

fn unavailable() -> server_frame::Frame {
    server_frame::Frame::Rejected(Rejected {
        code: RejectCode::Unavailable as i32,
        detail: "the gateway did not answer; try again".into(),
        retry_after_ms: 1000,
        ..Default::default()
    })
}

/// The provider session: files each batch, then acks it; carries read
/// reports; reconnects after a lost connection. Ends when the hub is gone.
async fn receive(
    hub: std::sync::Weak<Hub>,
    mut rx: ProviderReceiver,
    mut reads: mpsc::Receiver<(String, Vec<u64>)>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let result: Result<(), interop_client::ClientError> = async {
            loop {
                // `next_batch` may be dropped while waiting: it loses
                // nothing (a frame is read whole or not at all, and an ack
                // written half way is flushed with the next frame).
                tokio::select! {
                    biased;
                    read = reads.recv() => {
                        let Some((user, tags)) = read else { return Ok(()) };
                        rx.mark_read(&user, &tags).await?;
                    }
                    batch = rx.next_batch() => {
                        let batch = batch?;
                        let Some(hub) = hub.upgrade() else { return Ok(()) };
                        let typing = batch.batch_tag == 0;
                        let users: std::collections::BTreeSet<String> =
                            batch.messages.iter().map(|m| m.user.clone()).collect();
                        if !typing {
                            wait_for_room(&hub.mailboxes, &users).await;
                        }
                        for m in batch.messages {
                            hub.mailboxes
                                .file(
                                    Deliver {
                                        delivery_tag: m.delivery_tag,
                                        envelope: Some(m.envelope),
                                        inbox: m.inbox as i32,
                                        user: m.user,
                                    },
                                    typing,
                                )
                                .map_err(mailbox_error)?;
                        }
                        if !typing {
                            hub.mailboxes
                                .sync(users.iter().map(String::as_str))
                                .map_err(mailbox_error)?;
                            rx.ack(&[batch.batch_tag]).await?;
                        }
                    }
                }
            }
        }
        .await;
        match result {
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %e, "the provider session ended; reconnecting"),
        }
        loop {
            let Some(h) = hub.upgrade() else { return };
            let config = h.config.clone();
            drop(h);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            match ProviderReceiver::connect(&config.delivery_url, &config.provider, &config.token)
                .await
            {
                Ok(r) => {
                    rx = r;
                    backoff = Duration::from_millis(200);
                    tracing::info!("the provider session is open again");
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "cannot open the provider session"),
            }
        }
    }
}

/// A mailbox file that cannot be written ends the provider session
/// without acking the batch: the gateway delivers it again.
fn mailbox_error(e: std::io::Error) -> interop_client::ClientError {
    tracing::error!(error = %e, "cannot write a mailbox file; the batch is not acked");
    interop_client::ClientError::Protocol(format!("writing a mailbox: {e}"))
}

/// Waits until none of `users` has a full mailbox (see [`MAILBOX_LIMIT`]).
async fn wait_for_room(mailboxes: &Mailboxes, users: &std::collections::BTreeSet<String>) {
    let mut warned = false;
    while let Some(full) = users.iter().find(|u| mailboxes.is_full(u)) {
        if !warned {
            tracing::warn!(user = %masked(full), "mailbox full: the next batch waits until their browsers take some");
            warned = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `Inbox` of a delivered message, for logs and tests.
pub fn inbox_of(d: &Deliver) -> Inbox {
    Inbox::try_from(d.inbox).unwrap_or(Inbox::Unspecified)
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::v1::Envelope;

    fn deliver(user: &str, tag: u64) -> Deliver {
        Deliver {
            delivery_tag: tag,
            envelope: Some(Envelope {
                message_id: format!("m{tag}"),
                ..Default::default()
            }),
            inbox: Inbox::Requests as i32,
            user: user.into(),
        }
    }

    fn tags(frames: &mut mpsc::Receiver<ServerFrame>) -> Vec<u64> {
        let mut out = Vec::new();
        while let Ok(f) = frames.try_recv() {
            if let Some(server_frame::Frame::Deliver(d)) = f.frame {
                out.push(d.delivery_tag);
            }
        }
        out
    }

    #[test]
    fn a_message_waits_until_a_browser_acks_it_and_goes_live_to_open_ones() {
        let m = Mailboxes::default();
        m.file(deliver("u", 2), false).unwrap();
        m.file(deliver("u", 1), false).unwrap();
        m.file(deliver("v", 7), false).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        let (id, waiting) = m.attach("u", tx);
        // Store order, this user's only.
        assert_eq!(
            waiting.iter().map(|d| d.delivery_tag).collect::<Vec<_>>(),
            [1, 2]
        );
        m.file(deliver("u", 3), false).unwrap();
        m.file(deliver("u", 0), true).unwrap();
        assert_eq!(tags(&mut rx), [3, 0], "live, typing too");
        assert_eq!(m.pending("u"), 3, "typing is not kept");
        m.ack("u", &[1, 3]);
        assert_eq!(m.pending("u"), 1);
        m.detach("u", id);
        m.file(deliver("u", 4), false).unwrap();
        assert!(tags(&mut rx).is_empty(), "a detached browser gets nothing");
        let (tx, _rx) = mpsc::channel(16);
        let (_, waiting) = m.attach("u", tx);
        assert_eq!(
            waiting.iter().map(|d| d.delivery_tag).collect::<Vec<_>>(),
            [2, 4]
        );
    }

    #[test]
    fn a_browser_that_does_not_keep_up_is_let_go_and_gets_it_all_again() {
        let m = Mailboxes::default();
        let (tx, mut rx) = mpsc::channel(1);
        m.attach("u", tx);
        m.file(deliver("u", 1), false).unwrap();
        m.file(deliver("u", 2), false).unwrap();
        // Its channel was full: the mailbox dropped its sender, so the
        // browser's writer sees the channel end after what it holds.
        assert_eq!(rx.try_recv().ok().map(|_| ()), Some(()));
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(m.pending("u"), 2, "what it missed still waits");
        let (tx, _rx) = mpsc::channel(1);
        let (_, waiting) = m.attach("u", tx);
        assert_eq!(waiting.len(), 2);
    }

    #[test]
    fn a_mailbox_is_full_at_its_limit_and_has_room_again_after_an_ack() {
        let m = Mailboxes::default();
        for tag in 1..MAILBOX_LIMIT as u64 {
            m.file(deliver("u", tag), false).unwrap();
        }
        assert!(!m.is_full("u"), "one below the limit");
        m.file(deliver("u", MAILBOX_LIMIT as u64), false).unwrap();
        assert!(m.is_full("u"));
        assert!(!m.is_full("v"), "per user");
        m.ack("u", &[1]);
        assert!(!m.is_full("u"));
        assert_eq!(m.pending("u"), MAILBOX_LIMIT - 1, "nothing was dropped");
    }

    #[tokio::test]
    async fn a_batch_for_a_full_mailbox_waits_until_a_browser_takes_some() {
        let m = Arc::new(Mailboxes::default());
        for tag in 1..=MAILBOX_LIMIT as u64 {
            m.file(deliver("u", tag), false).unwrap();
        }
        let users: std::collections::BTreeSet<String> = ["v".into(), "u".into()].into();
        let waiting = tokio::spawn({
            let m = m.clone();
            async move { wait_for_room(&m, &users).await }
        });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(!waiting.is_finished(), "it went on with a full mailbox");
        m.ack("u", &[5]);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("it waits no longer once there is room")
            .unwrap();
    }

    #[test]
    fn what_waits_survives_a_restart_and_acked_messages_do_not_come_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let m = Mailboxes::open(dir.path()).unwrap();
            for tag in 1..=4 {
                m.file(deliver("home:+4915112345678", tag), false).unwrap();
            }
            m.file(deliver("home:+4915112345679", 9), false).unwrap();
            m.file(deliver("home:+4915112345679", 0), true).unwrap();
            m.sync(["home:+4915112345678", "home:+4915112345679"])
                .unwrap();
            m.ack("home:+4915112345678", &[2, 3]);
            m.ack("home:+4915112345679", &[9]);
        }
        // No phone number in a file name.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            assert!(!name.contains("4915"), "{name}");
        }
        let m = Mailboxes::open(dir.path()).unwrap();
        let (tx, _rx) = mpsc::channel(16);
        let (_, waiting) = m.attach("home:+4915112345678", tx);
        assert_eq!(
            waiting.iter().map(|d| d.delivery_tag).collect::<Vec<_>>(),
            [1, 4]
        );
        assert_eq!(m.pending("home:+4915112345679"), 0);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "an empty mailbox's file is removed"
        );
        // A record cut short (stopped while writing, never synced, never
        // acked to the gateway) is left out, and what came before stays.
        let path = mailbox_path(dir.path(), "home:+4915112345678");
        let mut bytes = std::fs::read(&path).unwrap();
        use prost::Message as _;
        let cut = record(
            RECORD_MESSAGE,
            &deliver("home:+4915112345678", 5).encode_to_vec(),
        );
        bytes.extend_from_slice(&cut[..cut.len() - 3]);
        std::fs::write(&path, bytes).unwrap();
        drop(m);
        let m = Mailboxes::open(dir.path()).unwrap();
        assert_eq!(m.pending("home:+4915112345678"), 2);
    }

    #[test]
    fn a_mailbox_file_is_rewritten_once_acks_outnumber_what_waits() {
        let dir = tempfile::tempdir().unwrap();
        let m = Mailboxes::open(dir.path()).unwrap();
        let path = mailbox_path(dir.path(), "u");
        let n = 2 * COMPACT_SLACK as u64;
        for tag in 1..=n {
            m.file(deliver("u", tag), false).unwrap();
        }
        let full = std::fs::metadata(&path).unwrap().len();
        for tag in 1..n {
            m.ack("u", &[tag]);
        }
        let after = std::fs::metadata(&path).unwrap().len();
        assert!(after < full / 2, "{after} bytes of {full}");
        drop(m);
        let m = Mailboxes::open(dir.path()).unwrap();
        assert_eq!(m.pending("u"), 1);
    }
}
