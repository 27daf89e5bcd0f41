//! Client library for providers: speaks protocol v1 to the gateway.
//!
//! - [`Sender`] connects to ingest and sends messages (pipelined: many
//!   sends may be in flight on one connection) and consent changes.
//! - [`Receiver`] opens a delivery session for one user's device, yields
//!   each message once (it de-duplicates by server message id, as the
//!   protocol asks clients to) and acks it.
//! - [`media::MediaClient`] uploads to and downloads from the media API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), interop_client::ClientError> {
//! use interop_client::{Sender, Receiver, text_envelope};
//! let sender = Sender::connect("ws://127.0.0.1:8080/v1/ws", "signal", "signal-token").await?;
//! let outcome = sender.send(text_envelope("c-1", "signal:alice", "home:+4915112345678", "hi")).await?;
//! let mut rx = Receiver::connect("ws://127.0.0.1:8081/v1/ws", "home", "home-token",
//!     "home:+4915112345678", "phone").await?;
//! let delivered = rx.next().await?;
//! rx.ack(&[delivered.delivery_tag]).await?;
//! # Ok(()) }
//! ```

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

pub mod admin;
pub mod config;
pub mod keys;
pub mod media;
pub mod olm;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use interop_proto::v1::{
    client_frame, envelope, server_frame, Accepted, Ack, ChangeGroup, ClientFrame, ConsentState,
    ConsentUpdated, CreateGroup, Encryption, Envelope, GetConsent, GetGroup, GroupUpdated, Hello,
    Inbox, MarkRead, Reaction, Rejected, RequestAction, RequestResponded, RespondToRequest, Send,
    ServerFrame, SetConsent, Text, Welcome,
};
use interop_proto::PROTOCOL_VERSION;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Errors of the client library.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {url}: {source}")]
    Connect {
        url: String,
        source: Box<tokio_tungstenite::tungstenite::Error>,
    },
    #[error("the gateway refused the hello: {}: {}", .0.code().as_str_name(), .0.detail)]
    HelloRefused(Rejected),
    #[error("the connection closed{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Closed(Option<String>),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
}

/// The answer to a send.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Accepted(Accepted),
    Rejected(Rejected),
}

/// The answer to a consent change.
#[derive(Debug, Clone, PartialEq)]
pub enum ConsentOutcome {
    Updated(ConsentUpdated),
    Rejected(Rejected),
}

/// The answer to a group change.
#[derive(Debug, Clone, PartialEq)]
pub enum GroupOutcome {
    Updated(GroupUpdated),
    Rejected(Rejected),
}

/// A reaction to `target_message_id` (TRANSPORT_ONLY); an empty emoji
/// removes the sender's reaction.
pub fn reaction_envelope(
    client_message_id: &str,
    from: &str,
    to: &str,
    target_message_id: &str,
    emoji: &str,
) -> Envelope {
    Envelope {
        content: Some(envelope::Content::Reaction(Reaction {
            target_message_id: target_message_id.to_owned(),
            emoji: emoji.to_owned(),
        })),
        ..text_envelope(client_message_id, from, to, "")
    }
}

/// A text envelope to a group (`to` empty, `group_id` set).
pub fn group_text_envelope(
    client_message_id: &str,
    from: &str,
    group_id: &str,
    body: &str,
) -> Envelope {
    Envelope {
        group_id: group_id.to_owned(),
        ..text_envelope(client_message_id, from, "", body)
    }
}

/// The answer to a [`Sender::respond_to_request`].
#[derive(Debug, Clone, PartialEq)]
pub enum RequestOutcome {
    Responded(RequestResponded),
    Rejected(Rejected),
}

/// The answer to a [`Sender::get_consent`].
#[derive(Debug, Clone, PartialEq)]
pub enum ConsentStateOutcome {
    State(ConsentState),
    Rejected(Rejected),
}

/// A server-visible text envelope (TRANSPORT_ONLY).
pub fn text_envelope(client_message_id: &str, from: &str, to: &str, body: &str) -> Envelope {
    Envelope {
        client_message_id: client_message_id.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        encryption: Encryption::TransportOnly as i32,
        sent_at_ms: interop_proto::now_ms(),
        content: Some(envelope::Content::Text(Text {
            body: body.to_owned(),
        })),
        ..Default::default()
    }
}

async fn connect_ws(url: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Result<Ws, ClientError> {
    let connector = tls.map(tokio_tungstenite::Connector::Rustls);
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector)
        .await
        .map_err(|e| ClientError::Connect {
            url: url.to_owned(),
            source: Box::new(e),
        })?;
    Ok(ws)
}

/// A TLS client config trusting the CA certificates in a PEM file, for
/// `wss://` endpoints.
pub fn tls_config(ca_pem: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    Ok(Arc::new(tls_builder(ca_pem)?.with_no_client_auth()))
}

/// Like [`tls_config`], also presenting a client certificate (PEM chain and
/// key) for mutual TLS: a gateway that has the certificate registered for a
/// provider authenticates that provider's `Hello` by it (the token may then
/// be empty).
pub fn tls_config_with_client_cert(
    ca_pem: &std::path::Path,
    cert_pem: &std::path::Path,
    key_pem: &std::path::Path,
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |p: &std::path::Path, e: &dyn std::fmt::Display| {
        ClientError::Tls(format!("{}: {e}", p.display()))
    };
    let chain = rustls_pki_types::CertificateDer::pem_file_iter(cert_pem)
        .map_err(|e| bad(cert_pem, &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(cert_pem, &e))?;
    if chain.is_empty() {
        return Err(bad(cert_pem, &"no certificate"));
    }
    let key =
        rustls_pki_types::PrivateKeyDer::from_pem_file(key_pem).map_err(|e| bad(key_pem, &e))?;
    let config = tls_builder(ca_pem)?
        .with_client_auth_cert(chain, key)
        .map_err(|e| ClientError::Tls(format!("the client certificate and key do not fit: {e}")))?;
    Ok(Arc::new(config))
}

fn tls_builder(
    ca_pem: &std::path::Path,
) -> Result<rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>, ClientError>
{
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(ca_pem)
        .map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?;
    for cert in certs {
        let cert = cert.map_err(|e| ClientError::Tls(format!("{}: {e}", ca_pem.display())))?;
        roots
            .add(cert)
            .map_err(|e| ClientError::Tls(e.to_string()))?;
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots))
}

fn encode(frame: &ClientFrame) -> Message {
    Message::Binary(frame.encode_to_vec().into())
}

/// Reads the next server frame, skipping pings.
async fn read_frame(stream: &mut SplitStream<Ws>) -> Result<ServerFrame, ClientError> {
    loop {
        match stream.next().await {
            None => return Err(ClientError::Closed(None)),
            Some(Err(e)) => return Err(ClientError::WebSocket(Box::new(e))),
            Some(Ok(Message::Binary(b))) => {
                return ServerFrame::decode(b)
                    .map_err(|e| ClientError::Protocol(format!("bad server frame: {e}")))
            }
            Some(Ok(Message::Close(c))) => {
                return Err(ClientError::Closed(
                    c.map(|c| format!("{} {}", u16::from(c.code), c.reason)),
                ))
            }
            Some(Ok(_)) => continue,
        }
    }
}

async fn hello(
    sink: &mut SplitSink<Ws, Message>,
    stream: &mut SplitStream<Ws>,
    hello: Hello,
) -> Result<Welcome, ClientError> {
    let frame = ClientFrame {
        request_id: 1,
        frame: Some(client_frame::Frame::Hello(hello)),
    };
    sink.send(encode(&frame))
        .await
        .map_err(|e| ClientError::WebSocket(Box::new(e)))?;
    match read_frame(stream).await?.frame {
        Some(server_frame::Frame::Welcome(w)) => Ok(w),
        Some(server_frame::Frame::Rejected(r)) => Err(ClientError::HelloRefused(r)),
        other => Err(ClientError::Protocol(format!(
            "expected Welcome, got {other:?}"
        ))),
    }
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<ServerFrame>>>>;

/// A connection to ingest. Cheap to share (`&self` methods); sends on one
/// connection are pipelined and answered in any order.
pub struct Sender {
    out: mpsc::Sender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    welcome: Welcome,
    closed: Arc<Mutex<Option<String>>>,
}

impl Sender {
    /// Connects and authenticates as `provider`.
    pub async fn connect(url: &str, provider: &str, token: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, provider, token, None).await
    }

    /// Like [`Sender::connect`], with a TLS config for `wss://` (see [`tls_config`]).
    pub async fn connect_with(
        url: &str,
        provider: &str,
        token: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let ws = connect_ws(url, tls).await?;
        let (mut sink, mut stream) = ws.split();
        let welcome = hello(
            &mut sink,
            &mut stream,
            Hello {
                protocol_version: PROTOCOL_VERSION,
                provider: provider.to_owned(),
                token: token.to_owned(),
                client_name: concat!("interop-client/", env!("CARGO_PKG_VERSION")).to_owned(),
                ..Default::default()
            },
        )
        .await?;
        let (out, mut out_rx) = mpsc::channel::<Message>(1024);
        tokio::spawn(async move {
            // Frames queued together are flushed together (one write).
            'outer: while let Some(m) = out_rx.recv().await {
                let mut queued = Some(m);
                let mut fed = 0usize;
                while let Some(m) = queued.take() {
                    if sink.feed(m).await.is_err() {
                        break 'outer;
                    }
                    fed += 1;
                    if fed < 64 {
                        queued = out_rx.try_recv().ok();
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            sink.close().await.ok();
        });
        let pending: Pending = Arc::default();
        let closed: Arc<Mutex<Option<String>>> = Arc::default();
        let (p, c) = (pending.clone(), closed.clone());
        tokio::spawn(async move {
            let reason = loop {
                match read_frame(&mut stream).await {
                    Ok(frame) => {
                        // The lock is never held across an await.
                        let waiter = p
                            .lock()
                            .map(|mut m| m.remove(&frame.request_id))
                            .ok()
                            .flatten();
                        if let Some(w) = waiter {
                            // The caller may have given up waiting.
                            w.send(frame).ok();
                        }
                    }
                    Err(e) => break e.to_string(),
                }
            };
            if let Ok(mut c) = c.lock() {
                *c = Some(reason);
            }
            // Dropping the waiters tells them the connection is gone.
            if let Ok(mut m) = p.lock() {
                m.clear();
            }
        });
        Ok(Self {
            out,
            pending,
            next_id: AtomicU64::new(2),
            welcome,
            closed,
        })
    }

    /// The limits the gateway announced.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Writes a frame (in call order) and returns the receiver of its answer.
    async fn enqueue(
        &self,
        frame: client_frame::Frame,
    ) -> Result<oneshot::Receiver<ServerFrame>, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.pending.lock() {
            m.insert(id, tx);
        }
        // The reader marks the connection closed before it drops the
        // waiters; checking after inserting ours means it cannot be missed.
        if self.closed.lock().map(|c| c.is_some()).unwrap_or(true) {
            if let Ok(mut m) = self.pending.lock() {
                m.remove(&id);
            }
            return Err(self.closed_error());
        }
        let msg = encode(&ClientFrame {
            request_id: id,
            frame: Some(frame),
        });
        if self.out.send(msg).await.is_err() {
            return Err(self.closed_error());
        }
        Ok(rx)
    }

    async fn request(&self, frame: client_frame::Frame) -> Result<ServerFrame, ClientError> {
        let rx = self.enqueue(frame).await?;
        rx.await.map_err(|_| self.closed_error())
    }

    /// Writes a send now and returns its pending answer: call it for several
    /// messages in a row, then await the answers, and the gateway receives
    /// them in call order (pipelining without losing order).
    pub async fn submit(&self, envelope: Envelope) -> Result<PendingSend<'_>, ClientError> {
        let rx = self
            .enqueue(client_frame::Frame::Send(Send {
                envelope: Some(envelope),
            }))
            .await?;
        Ok(PendingSend { sender: self, rx })
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.closed.lock().ok().and_then(|c| c.clone()))
    }

    /// Sends one message and waits for `Accepted` or `Rejected`.
    pub async fn send(&self, envelope: Envelope) -> Result<SendOutcome, ClientError> {
        let frame = self
            .request(client_frame::Frame::Send(Send {
                envelope: Some(envelope),
            }))
            .await?;
        match frame.frame {
            Some(server_frame::Frame::Accepted(a)) => Ok(SendOutcome::Accepted(a)),
            Some(server_frame::Frame::Rejected(r)) => Ok(SendOutcome::Rejected(r)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to Send: {other:?}"
            ))),
        }
    }

    /// Sends a raw frame and returns the answer (for tests of bad input).
    pub async fn send_frame(&self, frame: client_frame::Frame) -> Result<ServerFrame, ClientError> {
        self.request(frame).await
    }

    /// Changes a user's consent (with a separate third-party inbox).
    pub async fn set_consent(
        &self,
        user: &str,
        opted_in: bool,
        allowed_providers: &[&str],
    ) -> Result<ConsentOutcome, ClientError> {
        self.set_consent_with(user, opted_in, allowed_providers, Inbox::ThirdParty)
            .await
    }

    /// Changes all of a user's settings: opt-in, allowed providers, inbox.
    pub async fn set_consent_with(
        &self,
        user: &str,
        opted_in: bool,
        allowed_providers: &[&str],
        inbox: Inbox,
    ) -> Result<ConsentOutcome, ClientError> {
        let frame = self
            .request(client_frame::Frame::SetConsent(SetConsent {
                user: user.to_owned(),
                opted_in,
                allowed_providers: allowed_providers.iter().map(|s| (*s).to_owned()).collect(),
                inbox: inbox as i32,
            }))
            .await?;
        match frame.frame {
            Some(server_frame::Frame::ConsentUpdated(c)) => Ok(ConsentOutcome::Updated(c)),
            Some(server_frame::Frame::Rejected(r)) => Ok(ConsentOutcome::Rejected(r)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to SetConsent: {other:?}"
            ))),
        }
    }
}

impl Sender {
    async fn group_request(&self, frame: client_frame::Frame) -> Result<GroupOutcome, ClientError> {
        match self.request(frame).await?.frame {
            Some(server_frame::Frame::GroupUpdated(g)) => Ok(GroupOutcome::Updated(g)),
            Some(server_frame::Frame::Rejected(r)) => Ok(GroupOutcome::Rejected(r)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to a group change: {other:?}"
            ))),
        }
    }

    /// Answers a message request (or changes an earlier answer) for `user`
    /// about `sender`.
    pub async fn respond_to_request(
        &self,
        user: &str,
        sender: &str,
        action: RequestAction,
    ) -> Result<RequestOutcome, ClientError> {
        let frame = self
            .request(client_frame::Frame::RespondToRequest(RespondToRequest {
                user: user.to_owned(),
                sender: sender.to_owned(),
                action: action as i32,
            }))
            .await?;
        match frame.frame {
            Some(server_frame::Frame::RequestResponded(r)) => Ok(RequestOutcome::Responded(r)),
            Some(server_frame::Frame::Rejected(r)) => Ok(RequestOutcome::Rejected(r)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to RespondToRequest: {other:?}"
            ))),
        }
    }

    /// Creates a group without a name; `creator` (one of this provider's
    /// users) is its first admin.
    pub async fn create_group(
        &self,
        creator: &str,
        members: &[String],
    ) -> Result<GroupOutcome, ClientError> {
        self.create_named_group(creator, members, "").await
    }

    /// Creates a group called `name` (at most 128 bytes; empty: no name).
    pub async fn create_named_group(
        &self,
        creator: &str,
        members: &[String],
        name: &str,
    ) -> Result<GroupOutcome, ClientError> {
        self.group_request(client_frame::Frame::CreateGroup(CreateGroup {
            creator: creator.to_owned(),
            members: members.to_vec(),
            name: name.to_owned(),
        }))
        .await
    }

    /// Adds and removes members, makes admins, renames (as `change.actor`,
    /// an admin).
    pub async fn change_group(&self, change: ChangeGroup) -> Result<GroupOutcome, ClientError> {
        self.group_request(client_frame::Frame::ChangeGroup(change))
            .await
    }

    /// Reads a group as it is now, as `user` (one of this provider's users
    /// and a member).
    pub async fn get_group(&self, group_id: &str, user: &str) -> Result<GroupOutcome, ClientError> {
        self.group_request(client_frame::Frame::GetGroup(GetGroup {
            group_id: group_id.to_owned(),
            user: user.to_owned(),
        }))
        .await
    }

    /// Reads a user's settings and the senders they blocked or declined.
    pub async fn get_consent(&self, user: &str) -> Result<ConsentStateOutcome, ClientError> {
        let frame = self
            .request(client_frame::Frame::GetConsent(GetConsent {
                user: user.to_owned(),
            }))
            .await?;
        match frame.frame {
            Some(server_frame::Frame::ConsentState(c)) => Ok(ConsentStateOutcome::State(c)),
            Some(server_frame::Frame::Rejected(r)) => Ok(ConsentStateOutcome::Rejected(r)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to GetConsent: {other:?}"
            ))),
        }
    }
}

/// The answer to a [`Sender::submit`], still to come.
pub struct PendingSend<'a> {
    sender: &'a Sender,
    rx: oneshot::Receiver<ServerFrame>,
}

impl PendingSend<'_> {
    /// Waits for `Accepted` or `Rejected`.
    pub async fn outcome(self) -> Result<SendOutcome, ClientError> {
        let frame = self.rx.await.map_err(|_| self.sender.closed_error())?;
        match frame.frame {
            Some(server_frame::Frame::Accepted(a)) => Ok(SendOutcome::Accepted(a)),
            Some(server_frame::Frame::Rejected(r)) => Ok(SendOutcome::Rejected(r)),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer to Send: {other:?}"
            ))),
        }
    }
}

/// One message handed to the application.
#[derive(Debug, Clone)]
pub struct Delivered {
    pub delivery_tag: u64,
    pub envelope: Envelope,
    /// Where the app files it: `Requests` for a message request, else the
    /// inbox the user chose; `Unspecified` on receipts.
    pub inbox: Inbox,
}

/// How many server message ids a receiver remembers for de-duplication.
pub const DEDUP_MEMORY: usize = 65_536;

/// A delivery session for one user's device.
pub struct Receiver {
    sink: SplitSink<Ws, Message>,
    stream: SplitStream<Ws>,
    welcome: Welcome,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    duplicates: u64,
    rejections: Vec<Rejected>,
}

impl Receiver {
    /// Connects and opens a session for `user` on `device_id`.
    pub async fn connect(
        url: &str,
        provider: &str,
        token: &str,
        user: &str,
        device_id: &str,
    ) -> Result<Self, ClientError> {
        Self::connect_with(url, provider, token, user, device_id, None).await
    }

    /// Like [`Receiver::connect`], with a TLS config for `wss://`.
    pub async fn connect_with(
        url: &str,
        provider: &str,
        token: &str,
        user: &str,
        device_id: &str,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ClientError> {
        let ws = connect_ws(url, tls).await?;
        let (mut sink, mut stream) = ws.split();
        let welcome = hello(
            &mut sink,
            &mut stream,
            Hello {
                protocol_version: PROTOCOL_VERSION,
                provider: provider.to_owned(),
                token: token.to_owned(),
                user: user.to_owned(),
                device_id: device_id.to_owned(),
                client_name: concat!("interop-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            },
        )
        .await?;
        Ok(Self {
            sink,
            stream,
            welcome,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            duplicates: 0,
            rejections: Vec::new(),
        })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Duplicates received and suppressed so far (a redelivery after a lost
    /// ack or a crash; the protocol is at-least-once on the wire).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The next new message. Duplicates are acked and skipped. The caller
    /// acks the result with [`Receiver::ack`] once it is stored. Ephemeral
    /// events (typing) come with delivery tag 0 and need no ack.
    pub async fn next(&mut self) -> Result<Delivered, ClientError> {
        loop {
            let frame = read_frame(&mut self.stream).await?;
            let d = match frame.frame {
                Some(server_frame::Frame::Deliver(d)) => d,
                Some(server_frame::Frame::Rejected(r)) => {
                    self.rejections.push(r);
                    continue;
                }
                _ => continue,
            };
            let Some(envelope) = d.envelope else {
                return Err(ClientError::Protocol("Deliver without envelope".into()));
            };
            if !self.remember(&envelope.message_id) {
                self.duplicates += 1;
                self.ack(&[d.delivery_tag]).await?;
                continue;
            }
            return Ok(Delivered {
                delivery_tag: d.delivery_tag,
                envelope,
                inbox: Inbox::try_from(d.inbox).unwrap_or(Inbox::Unspecified),
            });
        }
    }

    fn remember(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_owned()) {
            return false;
        }
        self.seen_order.push_back(id.to_owned());
        if self.seen_order.len() > DEDUP_MEMORY {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    /// Refusals the gateway sent on this session so far (e.g. for a
    /// `MarkRead` naming an unknown message), taken out.
    pub fn take_rejections(&mut self) -> Vec<Rejected> {
        std::mem::take(&mut self.rejections)
    }

    /// Reports messages as read (their delivery tags): each sender gets a
    /// READ receipt. The gateway answers only a refusal (see
    /// [`Receiver::take_rejections`]).
    pub async fn mark_read(&mut self, tags: &[u64]) -> Result<(), ClientError> {
        let frame = ClientFrame {
            request_id: 0,
            frame: Some(client_frame::Frame::MarkRead(MarkRead {
                delivery_tags: tags.to_vec(),
            })),
        };
        self.sink
            .send(encode(&frame))
            .await
            .map_err(|e| ClientError::WebSocket(Box::new(e)))
    }

    /// Acknowledges delivered messages.
    pub async fn ack(&mut self, tags: &[u64]) -> Result<(), ClientError> {
        let frame = ClientFrame {
            request_id: 0,
            frame: Some(client_frame::Frame::Ack(Ack {
                delivery_tags: tags.to_vec(),
            })),
        };
        self.sink
            .send(encode(&frame))
            .await
            .map_err(|e| ClientError::WebSocket(Box::new(e)))
    }

    /// Closes the session cleanly: the gateway finishes processing the acks
    /// sent before the close (so the device's position is saved) before it
    /// answers the close, and this waits for that answer (at most 5 s).
    pub async fn close(mut self) {
        self.sink.close().await.ok();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.stream.next().await {}
        })
        .await
        .ok();
    }
}
