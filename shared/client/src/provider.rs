//! A provider session on delivery (server to server): one connection
//! receives every user of the provider in the partitions the gateway gives
//! it, as batches, and acks a whole batch at once (docs/protocol.md,
//! "Provider sessions").
//!
//! ```no_run
//! # async fn demo() -> Result<(), interop_client::ClientError> {
//! use interop_client::provider::ProviderReceiver;
//! let mut rx = ProviderReceiver::connect("ws://127.0.0.1:8081/v1/ws", "home", "token").await?;
//! loop {
//!     let batch = rx.next_batch().await?;
//!     for m in &batch.messages {
//!         // Store m.envelope for m.user, then:
//!     }
//!     if batch.batch_tag != 0 {
//!         rx.ack(&[batch.batch_tag]).await?;
//!     }
//! }
//! # }
//! ```
//!
//! Several receivers of one provider (on one gateway replica or many) split
//! the partitions between them; when one goes, the others take its
//! partitions and deliver again what it had not acked. Messages handed out
//! before are dropped here (the same user and server message id, within
//! the last [`crate::DEDUP_MEMORY`]), so an application sees each once.

use std::sync::Arc;

use futures_util::SinkExt;

use interop_proto::v1::{
    client_frame, server_frame, Ack, ClientFrame, DeliverBatch, Envelope, Hello, Inbox, MarkRead,
    Rejected, Welcome,
};

use crate::{
    connect_ws, encode, hello, read_frame, ClientError, DedupWindow, Session, DEDUP_MEMORY,
    PROTOCOL_VERSION,
};

/// One message of a batch.
#[derive(Debug, Clone)]
pub struct ProviderDelivered {
    /// Whose store it came from (a user of the provider).
    pub user: String,
    /// The user's store sequence: what `mark_read` names.
    pub delivery_tag: u64,
    pub envelope: Envelope,
    pub inbox: Inbox,
}

/// A batch of stored messages of one partition, in store order per user.
#[derive(Debug, Clone)]
pub struct Batch {
    /// What [`ProviderReceiver::ack`] takes; 0 for a typing indicator
    /// (nothing to ack).
    pub batch_tag: u64,
    pub partition: u32,
    /// New messages only: those handed out before were dropped.
    pub messages: Vec<ProviderDelivered>,
}

/// A provider session on delivery.
pub struct ProviderReceiver {
    session: Session,
    welcome: Welcome,
    partitions: Vec<u32>,
    sessions: u32,
    window: DedupWindow,
    duplicates: u64,
    rejections: Vec<Rejected>,
    /// An assignment came since `next_assignment` started waiting.
    assigned: bool,
    /// Batches read while waiting for an assignment, handed out first.
    queued: std::collections::VecDeque<DeliverBatch>,
}

impl ProviderReceiver {
    /// Connects to delivery and opens a provider session.
    pub async fn connect(url: &str, provider: &str, token: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, provider, token, None).await
    }

    /// Like [`ProviderReceiver::connect`], with a TLS config for `wss://`.
    pub async fn connect_with(
        url: &str,
        provider: &str,
        token: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let ws = connect_ws(url, tls).await?;
        let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
        let welcome = hello(
            &mut sink,
            &mut stream,
            Hello {
                protocol_version: PROTOCOL_VERSION,
                provider: provider.to_owned(),
                token: token.to_owned(),
                client_name: concat!("interop-client/", env!("CARGO_PKG_VERSION")).to_owned(),
                provider_session: true,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self {
            session: (sink, stream),
            welcome,
            partitions: Vec::new(),
            sessions: 0,
            window: DedupWindow::new(DEDUP_MEMORY),
            duplicates: 0,
            rejections: Vec::new(),
            assigned: false,
            queued: std::collections::VecDeque::new(),
        })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The partitions this session owns, as the gateway last said.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// How many provider sessions the provider has open, as the gateway
    /// last said.
    pub fn sessions(&self) -> u32 {
        self.sessions
    }

    /// Messages received again and dropped so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Refusals the gateway sent so far, taken out.
    pub fn take_rejections(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejections)
    }

    /// Reads the next frame: an assignment or a refusal is taken in here;
    /// a batch is returned.
    async fn read(&mut self) -> Result<Option<DeliverBatch>, ClientError> {
        let frame = read_frame(&mut self.session.1).await?;
        match frame.frame {
            Some(server_frame::Frame::DeliverBatch(b)) => return Ok(Some(b)),
            Some(server_frame::Frame::PartitionsAssigned(a)) => {
                self.partitions = a.partitions;
                self.sessions = a.sessions;
                self.assigned = true;
            }
            Some(server_frame::Frame::Rejected(r)) => self.rejections.push(r),
            _ => {}
        }
        Ok(None)
    }

    /// Waits until the gateway next says which partitions this session
    /// owns (after a change of the provider's sessions); returns them.
    /// Batches that come meanwhile are kept for
    /// [`ProviderReceiver::next_batch`].
    pub async fn next_assignment(&mut self) -> Result<Vec<u32>, ClientError> {
        self.assigned = false;
        while !self.assigned {
            if let Some(b) = self.read().await? {
                self.queued.push_back(b);
            }
        }
        Ok(self.partitions.clone())
    }

    /// The next batch with a new message. A batch whose messages were all
    /// handed out before is acked and skipped. Partition assignments that
    /// come meanwhile update [`ProviderReceiver::partitions`].
    pub async fn next_batch(&mut self) -> Result<Batch, ClientError> {
        loop {
            let b = match self.queued.pop_front() {
                Some(b) => b,
                None => match self.read().await? {
                    Some(b) => b,
                    None => continue,
                },
            };
            let mut messages = Vec::with_capacity(b.messages.len());
            for d in b.messages {
                let Some(envelope) = d.envelope else {
                    return Err(ClientError::Protocol("Deliver without envelope".into()));
                };
                // Copies of one group message share the server id: the key
                // is the user's.
                let key = format!("{}\u{0}{}", d.user, envelope.message_id);
                if b.batch_tag != 0 && !self.window.first_sight(&key) {
                    self.duplicates += 1;
                    continue;
                }
                messages.push(ProviderDelivered {
                    user: d.user,
                    delivery_tag: d.delivery_tag,
                    envelope,
                    inbox: Inbox::try_from(d.inbox).unwrap_or(Inbox::Unspecified),
                });
            }
            if messages.is_empty() && b.batch_tag != 0 {
                self.ack(&[b.batch_tag]).await?;
                continue;
            }
            return Ok(Batch {
                batch_tag: b.batch_tag,
                partition: b.partition,
                messages,
            });
        }
    }

    /// Acknowledges whole batches, once their messages are stored.
    pub async fn ack(&mut self, batch_tags: &[u64]) -> Result<(), ClientError> {
        self.send(client_frame::Frame::Ack(Ack {
            delivery_tags: Vec::new(),
            batch_tags: batch_tags.to_vec(),
        }))
        .await
    }

    /// Reports `user`'s messages (their delivery tags) as read: each sender
    /// gets a READ receipt. The gateway answers only a refusal.
    pub async fn mark_read(&mut self, user: &str, tags: &[u64]) -> Result<(), ClientError> {
        self.send(client_frame::Frame::MarkRead(MarkRead {
            delivery_tags: tags.to_vec(),
            user: user.to_owned(),
        }))
        .await
    }

    async fn send(&mut self, frame: client_frame::Frame) -> Result<(), ClientError> {
        let frame = ClientFrame {
            request_id: 0,
            frame: Some(frame),
        };
        self.session
            .0
            .send(encode(&frame))
            .await
            .map_err(|e| ClientError::WebSocket(Box::new(e)))
    }

    /// Closes the session cleanly: the gateway handles the acks sent
    /// before, stores the partitions' cursors and gives the partitions to
    /// the provider's other sessions; this waits for its answer (at most
    /// 5 s).
    pub async fn close(self) {
        let (mut sink, mut stream) = self.session;
        sink.close().await.ok();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(_)) = futures_util::StreamExt::next(&mut stream).await {}
        })
        .await
        .ok();
    }
}
