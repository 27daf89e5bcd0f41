//! The adapter's side of the gateway: one ingest connection (a
//! [`Sender`]) that carries every signed-in user's frames, and one provider
//! session on delivery ([`ProviderReceiver`]) that receives every home
//! user's messages in batches. This is what a gatekeeper's backend does
//! instead of one gateway connection per user device.
//!
//! Received messages go into each user's mailbox (the backend's store: a
//! batch is acked to the gateway once its messages are in it) and out to the
//! user's open browsers; a message stays in the mailbox until a browser acks
//! it (it then keeps it, decrypted, in its own storage).

use std::collections::{BTreeMap, HashMap};
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

/// At most this many undelivered messages are kept per user; past it the
/// oldest go (a demo store in memory; a real backend has its own database).
pub const MAILBOX_LIMIT: usize = 10_000;

/// What a browser connection receives: frames to write.
pub type Outbox = mpsc::Sender<ServerFrame>;

#[derive(Default)]
struct Mailbox {
    /// Undelivered messages by the user's delivery tag (store order).
    pending: BTreeMap<u64, Deliver>,
    /// The user's open browser connections.
    live: Vec<(u64, Outbox)>,
}

/// Every user's mailbox: what waits for their browsers, and the browsers
/// they have open.
#[derive(Default)]
pub struct Mailboxes {
    boxes: Mutex<HashMap<String, Mailbox>>,
    next_conn: AtomicU64,
}

/// The gateway connections and every user's mailbox.
pub struct Hub {
    pub config: GatewayConfig,
    pub mailboxes: Mailboxes,
    sender: Sender,
    reads: mpsc::Sender<(String, Vec<u64>)>,
}

impl Mailboxes {
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

    /// The browser has stored these messages: they leave the mailbox.
    pub fn ack(&self, user: &str, tags: &[u64]) {
        let mut boxes = self.boxes();
        if let Some(b) = boxes.get_mut(user) {
            for t in tags {
                b.pending.remove(t);
            }
        }
    }

    /// How many messages wait for `user`'s browser.
    pub fn pending(&self, user: &str) -> usize {
        self.boxes().get(user).map_or(0, |b| b.pending.len())
    }

    /// Files one delivered message: into the mailbox (unless it is a typing
    /// indicator, which is never stored) and out to the user's browsers.
    pub fn file(&self, d: Deliver, typing: bool) {
        let mut boxes = self.boxes();
        let b = boxes.entry(d.user.clone()).or_default();
        if !typing {
            if b.pending.len() >= MAILBOX_LIMIT {
                if let Some((&oldest, _)) = b.pending.iter().next() {
                    b.pending.remove(&oldest);
                    tracing::warn!(user = %masked(&d.user), "mailbox full: dropped the oldest message");
                }
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
    }
}

impl Hub {
    /// Connects to ingest, then starts the provider session on delivery in
    /// a task that reconnects by itself.
    ///
    /// A gateway that cannot be reached yet is retried (with back-off, up
    /// to 5 s between tries, a warning each time) rather than given up on;
    /// a refused `Hello` (a wrong token) is an error at once.
    pub async fn start(config: GatewayConfig) -> anyhow::Result<Arc<Self>> {
        let sender = retry("ingest", || {
            Sender::connect(&config.ingest_url, &config.provider, &config.token)
        })
        .await?;
        let (reads_tx, reads_rx) = mpsc::channel(1024);
        let hub = Arc::new(Self {
            config,
            mailboxes: Mailboxes::default(),
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
                        for m in batch.messages {
                            hub.mailboxes.file(
                                Deliver {
                                    delivery_tag: m.delivery_tag,
                                    envelope: Some(m.envelope),
                                    inbox: m.inbox as i32,
                                    user: m.user,
                                },
                                typing,
                            );
                        }
                        if !typing {
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
        m.file(deliver("u", 2), false);
        m.file(deliver("u", 1), false);
        m.file(deliver("v", 7), false);
        let (tx, mut rx) = mpsc::channel(16);
        let (id, waiting) = m.attach("u", tx);
        // Store order, this user's only.
        assert_eq!(
            waiting.iter().map(|d| d.delivery_tag).collect::<Vec<_>>(),
            [1, 2]
        );
        m.file(deliver("u", 3), false);
        m.file(deliver("u", 0), true);
        assert_eq!(tags(&mut rx), [3, 0], "live, typing too");
        assert_eq!(m.pending("u"), 3, "typing is not kept");
        m.ack("u", &[1, 3]);
        assert_eq!(m.pending("u"), 1);
        m.detach("u", id);
        m.file(deliver("u", 4), false);
        assert!(tags(&mut rx).is_empty(), "a detached browser gets nothing");
        let (tx, _rx) = mpsc::channel(16);
        let (_, waiting) = m.attach("u", tx);
        assert_eq!(
            waiting.iter().map(|d| d.delivery_tag).collect::<Vec<_>>(),
            [2, 4]
        );
    }

    #[test]
    fn a_browser_that_does_not_keep_up_is_let_go_and_a_full_mailbox_drops_the_oldest() {
        let m = Mailboxes::default();
        let (tx, mut rx) = mpsc::channel(1);
        m.attach("u", tx);
        m.file(deliver("u", 1), false);
        m.file(deliver("u", 2), false);
        // Its channel was full: the mailbox dropped its sender, so the
        // browser's writer sees the channel end after what it holds.
        assert_eq!(rx.try_recv().ok().map(|_| ()), Some(()));
        assert!(matches!(
            rx.try_recv(),
            Err(mpsc::error::TryRecvError::Disconnected)
        ));
        assert_eq!(m.pending("u"), 2, "what it missed still waits");

        for tag in 3..=(MAILBOX_LIMIT as u64 + 1) {
            m.file(deliver("u", tag), false);
        }
        assert_eq!(m.pending("u"), MAILBOX_LIMIT);
        let (tx, _rx) = mpsc::channel(1);
        let (_, waiting) = m.attach("u", tx);
        assert_eq!(waiting.first().map(|d| d.delivery_tag), Some(2));
    }
}
