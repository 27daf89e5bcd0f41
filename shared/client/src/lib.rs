//! Client library for providers: speaks protocol v1 to the gateway.
//!
//! - [`Sender`] connects to ingest and sends messages (pipelined: many
//!   sends may be in flight on one connection) and consent changes. It
//!   keeps every send until it is answered; [`Sender::reconnect`] logs in
//!   again and re-sends the unanswered ones with their original client
//!   message ids (the gateway's idempotency makes them the same messages).
//! - [`Receiver`] opens a delivery session for one user's device, yields
//!   each message once (it de-duplicates by server message id, as the
//!   protocol asks clients to, over the last [`DEDUP_MEMORY`] messages,
//!   across [`Receiver::reconnect`]) and acks it.
//! - [`media::MediaClient`] uploads to and downloads from the media API.
//! - [`Sender::transact`] sends many frames, for any users of the
//!   provider, as one transaction ([`transaction`]).
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
mod files;
pub mod keys;
pub mod media;
pub mod olm;
pub mod provider;
pub mod transaction;
pub mod trust;

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
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

/// One request waiting for the gateway's answer.
struct Waiter {
    answer: oneshot::Sender<ServerFrame>,
    /// A send keeps its envelope until it is answered: it outlives the
    /// connection it was written on, and [`Sender::reconnect`] writes it
    /// again. Other requests (`None`) end with their connection.
    resend: Option<Envelope>,
    /// The connection it was written on.
    conn: u64,
}

/// Waiters by request id. Request ids are never reused by a [`Sender`], so
/// the order of the map is the order the requests were first written in.
type Pending = Arc<Mutex<BTreeMap<u64, Waiter>>>;

/// Where and as whom a [`Sender`] logs in, to log in again after a
/// connection loss. No `Debug`: it holds the token.
#[derive(Clone)]
struct Login {
    url: String,
    provider: String,
    token: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// One WebSocket connection of a [`Sender`] (cheap to clone).
#[derive(Clone)]
struct Conn {
    id: u64,
    out: mpsc::Sender<Message>,
    /// `Some(reason)` once the connection has ended (set by its reader).
    closed: watch::Receiver<Option<String>>,
    /// Asks the writer to close the connection.
    shutdown: Arc<tokio::sync::Notify>,
}

impl Conn {
    fn is_closed(&self) -> bool {
        self.closed.borrow().is_some()
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.closed.borrow().clone())
    }
}

/// How long [`Sender::reconnect`] waits for a connection that is still open
/// to end before it opens the next one.
const RECONNECT_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A connection to ingest. Cheap to share (`&self` methods); sends on one
/// connection are pipelined and answered in any order.
///
/// Every send is kept (with its envelope) until the gateway answers it
/// `Accepted` or `Rejected`, whatever happens to the connection. After a
/// connection loss, [`Sender::reconnect`] logs in again and re-sends every
/// unanswered send, in the order they were first sent, with its original
/// `client_message_id`: the gateway's idempotency gives it the message id
/// of the first try, so it is stored and delivered once. A send that was
/// answered is never re-sent (`RATE_LIMITED` and `UNAVAILABLE` are answers:
/// re-sending those is the caller's decision).
pub struct Sender {
    login: Login,
    conn: Mutex<Conn>,
    pending: Pending,
    next_id: AtomicU64,
    next_conn: AtomicU64,
    welcome: Welcome,
    reconnecting: tokio::sync::Mutex<()>,
    resent: AtomicU64,
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
        let login = Login {
            url: url.to_owned(),
            provider: provider.to_owned(),
            token: token.to_owned(),
            tls,
        };
        let pending: Pending = Arc::default();
        let (conn, welcome) = open_ingest(&login, 0, pending.clone()).await?;
        Ok(Self {
            login,
            conn: Mutex::new(conn),
            pending,
            next_id: AtomicU64::new(2),
            next_conn: AtomicU64::new(1),
            welcome,
            reconnecting: tokio::sync::Mutex::new(()),
            resent: AtomicU64::new(0),
        })
    }

    /// The connection in use now.
    fn current(&self) -> Conn {
        match self.conn.lock() {
            Ok(c) => c.clone(),
            // A panic while swapping connections left the old one: use it.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether the connection in use has ended (then [`Sender::reconnect`]).
    pub fn is_closed(&self) -> bool {
        self.current().is_closed()
    }

    /// Resolves once the connection in use when called has ended.
    pub async fn closed(&self) {
        let mut closed = self.current().closed;
        // An error means the reader is gone, which is an end too.
        closed.wait_for(Option::is_some).await.ok();
    }

    /// Sends written and not answered yet (in flight, or waiting for a
    /// [`Sender::reconnect`] after a connection loss).
    pub fn unanswered(&self) -> usize {
        self.pending
            .lock()
            .map(|m| m.values().filter(|w| w.resend.is_some()).count())
            .unwrap_or(0)
    }

    /// Sends written again by [`Sender::reconnect`] so far (each time counts).
    pub fn resent(&self) -> u64 {
        self.resent.load(Ordering::Relaxed)
    }

    /// Logs in again on a new connection (same URL, provider, token and
    /// TLS) and re-sends every unanswered send on it, oldest first, with its
    /// original envelope; returns how many it re-sent. Their answers go to
    /// [`PendingSend::answered`] (and to [`Sender::send_until_answered`]).
    /// Sends answered on the old connection are not re-sent. If the
    /// connection in use is still open it is closed first (waiting up to
    /// 5 s for its end, so no answer is still coming on it). On an error
    /// nothing changed: the unanswered sends wait for the next try.
    /// Requests other than sends (consent, groups, ...) are not re-sent:
    /// they failed with [`ClientError::Closed`] and are safe to repeat.
    pub async fn reconnect(&self) -> Result<usize, ClientError> {
        let _one_at_a_time = self.reconnecting.lock().await;
        let old = self.current();
        if !old.is_closed() {
            old.shutdown.notify_one();
            let mut closed = old.closed.clone();
            tokio::time::timeout(RECONNECT_CLOSE_WAIT, closed.wait_for(Option::is_some))
                .await
                .ok();
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (conn, _welcome) = open_ingest(&self.login, id, self.pending.clone()).await?;
        let resend: Vec<(u64, Envelope)> = self
            .pending
            .lock()
            .map(|m| {
                m.iter()
                    .filter_map(|(rid, w)| w.resend.clone().map(|e| (*rid, e)))
                    .collect()
            })
            .unwrap_or_default();
        // Written before the new connection is shared, so sends submitted
        // from now on come after them on the wire.
        for (request_id, envelope) in &resend {
            let msg = encode(&ClientFrame {
                request_id: *request_id,
                frame: Some(client_frame::Frame::Send(Send {
                    envelope: Some(envelope.clone()),
                })),
            });
            if conn.out.send(msg).await.is_err() {
                return Err(conn.closed_error());
            }
        }
        match self.conn.lock() {
            Ok(mut c) => *c = conn,
            Err(poisoned) => *poisoned.into_inner() = conn,
        }
        self.resent
            .fetch_add(resend.len() as u64, Ordering::Relaxed);
        Ok(resend.len())
    }

    /// The limits the gateway announced on the first connection (a
    /// [`Sender::reconnect`] does not change them).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Writes a frame (in call order) and returns the receiver of its answer
    /// and the state of the connection it was written on. A send
    /// (`resend`) stays registered until it is answered.
    async fn enqueue(
        &self,
        frame: client_frame::Frame,
        resend: Option<Envelope>,
    ) -> Result<(oneshot::Receiver<ServerFrame>, Conn), ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let conn = self.current();
        if let Ok(mut m) = self.pending.lock() {
            m.insert(
                id,
                Waiter {
                    answer: tx,
                    resend,
                    conn: conn.id,
                },
            );
        }
        // Until the frame is handed to the writer, a cancelled or failed
        // call takes its waiter out again: nothing was written.
        let mut unwritten = Unregister {
            pending: &self.pending,
            id: Some(id),
        };
        // The reader marks the connection closed before it drops the
        // waiters; checking after inserting ours means it cannot be missed.
        if conn.is_closed() {
            return Err(conn.closed_error());
        }
        let msg = encode(&ClientFrame {
            request_id: id,
            frame: Some(frame),
        });
        if conn.out.send(msg).await.is_err() {
            return Err(conn.closed_error());
        }
        unwritten.id = None;
        Ok((rx, conn))
    }

    async fn request(&self, frame: client_frame::Frame) -> Result<ServerFrame, ClientError> {
        let (rx, conn) = self.enqueue(frame, None).await?;
        rx.await.map_err(|_| conn.closed_error())
    }

    /// Writes a send now and returns its pending answer: call it for several
    /// messages in a row, then await the answers, and the gateway receives
    /// them in call order (pipelining without losing order). On a
    /// connection that has ended it fails with [`ClientError::Closed`] and
    /// keeps nothing: [`Sender::reconnect`] first.
    pub async fn submit(&self, envelope: Envelope) -> Result<PendingSend<'_>, ClientError> {
        let (rx, conn) = self
            .enqueue(
                client_frame::Frame::Send(Send {
                    envelope: Some(envelope.clone()),
                }),
                Some(envelope),
            )
            .await?;
        Ok(PendingSend {
            sender: std::marker::PhantomData,
            rx,
            closed: conn.closed,
        })
    }

    /// Sends one message and waits for `Accepted` or `Rejected` on this
    /// connection: [`ClientError::Closed`] if it ends first (the send is
    /// then re-sent by a [`Sender::reconnect`]; see
    /// [`Sender::send_until_answered`]).
    pub async fn send(&self, envelope: Envelope) -> Result<SendOutcome, ClientError> {
        self.submit(envelope).await?.outcome().await
    }

    /// Sends one message and waits for its answer, across connection losses
    /// and [`Sender::reconnect`]s (someone must call it: this waits until
    /// the gateway answers or the `Sender` is dropped).
    pub async fn send_until_answered(
        &self,
        envelope: Envelope,
    ) -> Result<SendOutcome, ClientError> {
        self.submit(envelope).await?.answered().await
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
    sender: std::marker::PhantomData<&'a Sender>,
    rx: oneshot::Receiver<ServerFrame>,
    /// The state of the connection the send was first written on.
    closed: watch::Receiver<Option<String>>,
}

impl PendingSend<'_> {
    /// Waits for `Accepted` or `Rejected` on the connection the send was
    /// written on; [`ClientError::Closed`] if that connection ends first.
    /// The send stays unanswered in its [`Sender`] and a
    /// [`Sender::reconnect`] re-sends it; to wait for that answer too, use
    /// [`PendingSend::answered`].
    pub async fn outcome(mut self) -> Result<SendOutcome, ClientError> {
        let mut closed = self.closed.clone();
        let gone = |c: &watch::Receiver<Option<String>>| ClientError::Closed(c.borrow().clone());
        let frame = tokio::select! {
            biased;
            frame = &mut self.rx => frame.map_err(|_| gone(&self.closed))?,
            _ = closed.wait_for(Option::is_some) => match self.rx.try_recv() {
                // Answered just before the end.
                Ok(frame) => frame,
                Err(_) => return Err(gone(&self.closed)),
            },
        };
        send_outcome(frame)
    }

    /// Waits for `Accepted` or `Rejected`, whichever connection brings it:
    /// after a connection loss it comes once [`Sender::reconnect`] has
    /// re-sent the send (someone must call it; this does not). Exactly one
    /// answer per send.
    pub async fn answered(self) -> Result<SendOutcome, ClientError> {
        let frame = self
            .rx
            .await
            .map_err(|_| ClientError::Closed(self.closed.borrow().clone()))?;
        send_outcome(frame)
    }
}

fn send_outcome(frame: ServerFrame) -> Result<SendOutcome, ClientError> {
    match frame.frame {
        Some(server_frame::Frame::Accepted(a)) => Ok(SendOutcome::Accepted(a)),
        Some(server_frame::Frame::Rejected(r)) => Ok(SendOutcome::Rejected(r)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer to Send: {other:?}"
        ))),
    }
}

/// Takes a waiter out of [`Pending`] on drop unless `id` was cleared.
struct Unregister<'a> {
    pending: &'a Pending,
    id: Option<u64>,
}

impl Drop for Unregister<'_> {
    fn drop(&mut self) {
        if let (Some(id), Ok(mut m)) = (self.id, self.pending.lock()) {
            m.remove(&id);
        }
    }
}

/// Opens an ingest connection (`id`) and logs in: a writer task that
/// flushes queued frames together, and a reader task that hands each answer
/// to its waiter in `pending`. When the connection ends the reader marks it
/// closed, then drops its waiters other than sends (their callers get
/// [`ClientError::Closed`]); sends stay for [`Sender::reconnect`].
async fn open_ingest(
    login: &Login,
    id: u64,
    pending: Pending,
) -> Result<(Conn, Welcome), ClientError> {
    let ws = connect_ws(&login.url, login.tls.clone()).await?;
    let (mut sink, mut stream) = ws.split();
    let welcome = hello(
        &mut sink,
        &mut stream,
        Hello {
            protocol_version: PROTOCOL_VERSION,
            provider: login.provider.clone(),
            token: login.token.clone(),
            client_name: concat!("interop-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            ..Default::default()
        },
    )
    .await?;
    let (out, mut out_rx) = mpsc::channel::<Message>(1024);
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        // Frames queued together are flushed together (one write).
        'outer: loop {
            // Frames queued before a shutdown are still written.
            let m = tokio::select! {
                biased;
                m = out_rx.recv() => m,
                () = stop.notified() => None,
            };
            let Some(m) = m else { break };
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
    let (closed_tx, closed) = watch::channel(None);
    tokio::spawn(async move {
        let reason = loop {
            match read_frame(&mut stream).await {
                Ok(frame) => {
                    // The lock is never held across an await.
                    let waiter = pending
                        .lock()
                        .map(|mut m| m.remove(&frame.request_id))
                        .ok()
                        .flatten();
                    if let Some(w) = waiter {
                        // The caller may have given up waiting.
                        w.answer.send(frame).ok();
                    }
                }
                Err(e) => break e.to_string(),
            }
        };
        closed_tx.send_replace(Some(reason));
        // Dropping the waiters tells them the connection is gone.
        if let Ok(mut m) = pending.lock() {
            m.retain(|_, w| w.resend.is_some() || w.conn != id);
        }
    });
    Ok((
        Conn {
            id,
            out,
            closed,
            shutdown,
        },
        welcome,
    ))
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

/// How many server message ids a [`Receiver`] remembers for de-duplication
/// (its [`DedupWindow`]): the last 65,536 distinct messages it handed to
/// the application, across reconnects. A redelivery of a message older
/// than that reaches the application again.
pub const DEDUP_MEMORY: usize = 65_536;

/// The server message ids a device's session handed to the application,
/// the last `capacity` of them (first seen, first forgotten): a message
/// whose id is in the window is a redelivery. Bounded: memory is about
/// `capacity` × (id length + 40 bytes).
#[derive(Debug, Clone)]
pub struct DedupWindow {
    capacity: usize,
    ids: HashSet<Arc<str>>,
    order: VecDeque<Arc<str>>,
}

impl DedupWindow {
    /// A window of the last `capacity` ids (0 remembers nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// `true` the first time `id` is seen within the window (and remembers
    /// it, forgetting the oldest id if the window is full); `false` for a
    /// redelivery. Seeing an id again does not make it younger.
    pub fn first_sight(&mut self, id: &str) -> bool {
        if self.capacity == 0 {
            return true;
        }
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(id.clone());
        self.order.push_back(id);
        true
    }

    /// Whether `id` is in the window.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Ids remembered now (at most [`DedupWindow::capacity`]).
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

/// Where and as whom a [`Receiver`] opens its session, to open it again.
/// No `Debug`: it holds the token.
#[derive(Clone)]
struct SessionLogin {
    url: String,
    provider: String,
    token: String,
    user: String,
    device_id: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

type Session = (SplitSink<Ws, Message>, SplitStream<Ws>);

async fn open_session(login: &SessionLogin) -> Result<(Session, Welcome), ClientError> {
    let ws = connect_ws(&login.url, login.tls.clone()).await?;
    let (mut sink, mut stream) = ws.split();
    let welcome = hello(
        &mut sink,
        &mut stream,
        Hello {
            protocol_version: PROTOCOL_VERSION,
            provider: login.provider.clone(),
            token: login.token.clone(),
            user: login.user.clone(),
            device_id: login.device_id.clone(),
            client_name: concat!("interop-client/", env!("CARGO_PKG_VERSION")).to_owned(),
            provider_session: false,
        },
    )
    .await?;
    Ok(((sink, stream), welcome))
}

/// A delivery session for one user's device. It hands each message to the
/// application once: redeliveries (same server message id, within the last
/// [`DEDUP_MEMORY`] messages) are acked and dropped, also after
/// [`Receiver::reconnect`], which keeps the window.
pub struct Receiver {
    login: SessionLogin,
    /// `None` after a failed [`Receiver::reconnect`].
    session: Option<Session>,
    welcome: Welcome,
    window: DedupWindow,
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
        let login = SessionLogin {
            url: url.to_owned(),
            provider: provider.to_owned(),
            token: token.to_owned(),
            user: user.to_owned(),
            device_id: device_id.to_owned(),
            tls,
        };
        let (session, welcome) = open_session(&login).await?;
        Ok(Self {
            login,
            session: Some(session),
            welcome,
            window: DedupWindow::new(DEDUP_MEMORY),
            duplicates: 0,
            rejections: Vec::new(),
        })
    }

    /// Opens the session again, for the same user and device (after the
    /// connection failed, or to move to another gateway replica). The
    /// de-duplication window, the duplicate count and the refusals are
    /// kept, so messages the old session handed out and the gateway
    /// delivers again (not acked in time) are dropped, not handed out
    /// twice. Delivery tags of the old session mean nothing on the new
    /// one: do not ack them there. On an error the receiver has no session
    /// until a later `reconnect` succeeds.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        // The old connection (if any) closes when it is dropped.
        self.session = None;
        let (session, welcome) = open_session(&self.login).await?;
        self.session = Some(session);
        self.welcome = welcome;
        Ok(())
    }

    fn session(&mut self) -> Result<&mut Session, ClientError> {
        self.session
            .as_mut()
            .ok_or_else(|| ClientError::Closed(Some("no session: reconnect".into())))
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Duplicates received and suppressed so far (a redelivery after a lost
    /// ack or a crash; the protocol is at-least-once on the wire), across
    /// reconnects.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// The de-duplication window (server message ids handed out).
    pub fn window(&self) -> &DedupWindow {
        &self.window
    }

    /// The next new message. Duplicates are acked and skipped. The caller
    /// acks the result with [`Receiver::ack`] once it is stored. Ephemeral
    /// events (typing) come with delivery tag 0, need no ack and are never
    /// redelivered (they do not enter the window).
    pub async fn next(&mut self) -> Result<Delivered, ClientError> {
        loop {
            let frame = read_frame(&mut self.session()?.1).await?;
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
            if d.delivery_tag != 0 && !self.window.first_sight(&envelope.message_id) {
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
                user: String::new(),
            })),
        };
        self.session()?
            .0
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
                batch_tags: Vec::new(),
            })),
        };
        self.session()?
            .0
            .send(encode(&frame))
            .await
            .map_err(|e| ClientError::WebSocket(Box::new(e)))
    }

    /// Closes the session cleanly: the gateway finishes processing the acks
    /// sent before the close (so the device's position is saved) before it
    /// answers the close, and this waits for that answer (at most 5 s).
    pub async fn close(self) {
        let Some((mut sink, mut stream)) = self.session else {
            return;
        };
        sink.close().await.ok();
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while let Some(Ok(_)) = stream.next().await {}
        })
        .await
        .ok();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_window_remembers_exactly_its_capacity() {
        let mut w = DedupWindow::new(3);
        assert!(w.first_sight("a") && w.first_sight("b") && w.first_sight("c"));
        assert_eq!((w.len(), w.capacity()), (3, 3));
        // Full: every id in it is a redelivery, and seeing one again
        // neither evicts anything nor makes it younger.
        assert!(!w.first_sight("a") && !w.first_sight("c"));
        assert_eq!(w.len(), 3);
        // The fourth id pushes out the oldest (a), only that one.
        assert!(w.first_sight("d"));
        assert_eq!(w.len(), 3);
        assert!(!w.contains("a") && w.contains("b") && w.contains("d"));
        assert!(!w.first_sight("b"));
        // Forgotten: a redelivery of `a` now passes (the documented limit).
        assert!(w.first_sight("a"));
        assert!(!w.contains("b"));
    }

    #[test]
    fn a_window_of_dedup_memory_forgets_the_first_id_at_the_next_one() {
        let mut w = DedupWindow::new(DEDUP_MEMORY);
        for i in 0..DEDUP_MEMORY {
            assert!(w.first_sight(&format!("m-{i}")));
        }
        assert_eq!(w.len(), DEDUP_MEMORY);
        assert!(!w.first_sight("m-0"), "the oldest of a full window is kept");
        assert!(w.first_sight(&format!("m-{DEDUP_MEMORY}")));
        assert!(!w.contains("m-0") && w.contains("m-1"));
        assert_eq!(w.len(), DEDUP_MEMORY);
    }

    #[test]
    fn a_window_of_zero_remembers_nothing() {
        let mut w = DedupWindow::new(0);
        assert!(w.first_sight("a") && w.first_sight("a"));
        assert!(w.is_empty());
    }

    use tokio::net::TcpListener;
    use tokio_tungstenite::accept_async;

    type ServerWs = WebSocketStream<TcpStream>;

    async fn server_frame_of(ws: &mut ServerWs) -> Option<ClientFrame> {
        loop {
            match ws.next().await? {
                Ok(Message::Binary(b)) => return ClientFrame::decode(b).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    async fn answer(ws: &mut ServerWs, request_id: u64, frame: server_frame::Frame) {
        let f = ServerFrame {
            request_id,
            frame: Some(frame),
        };
        ws.send(Message::Binary(f.encode_to_vec().into()))
            .await
            .unwrap();
    }

    /// Accepts one connection and answers its `Hello`.
    async fn accept_hello(listener: &TcpListener) -> ServerWs {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = accept_async(tcp).await.unwrap();
        let hello = server_frame_of(&mut ws).await.unwrap();
        assert!(matches!(hello.frame, Some(client_frame::Frame::Hello(_))));
        answer(
            &mut ws,
            hello.request_id,
            server_frame::Frame::Welcome(Welcome::default()),
        )
        .await;
        ws
    }

    fn accepted_frame(envelope: &Envelope, duplicate: bool) -> server_frame::Frame {
        server_frame::Frame::Accepted(Accepted {
            client_message_id: envelope.client_message_id.clone(),
            message_id: format!("srv-{}", envelope.client_message_id),
            accepted_at_ms: 1,
            duplicate,
        })
    }

    fn sent_envelope(f: ClientFrame) -> (u64, Envelope) {
        match f.frame {
            Some(client_frame::Frame::Send(Send {
                envelope: Some(e), ..
            })) => (f.request_id, e),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    /// A fake ingest: answers two of five sends, drops the connection; on
    /// the next connection it must see exactly the three others again, in
    /// their order, with their client message ids, and answers them.
    #[tokio::test]
    async fn reconnect_resends_exactly_the_unanswered_sends_in_order() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut ws = accept_hello(&listener).await;
            let mut first = Vec::new();
            for _ in 0..5 {
                first.push(sent_envelope(server_frame_of(&mut ws).await.unwrap()));
            }
            // Answer c-1 (accepted) and c-3 (refused), then drop.
            answer(&mut ws, first[1].0, accepted_frame(&first[1].1, false)).await;
            answer(
                &mut ws,
                first[3].0,
                server_frame::Frame::Rejected(Rejected {
                    client_message_id: first[3].1.client_message_id.clone(),
                    code: interop_proto::v1::RejectCode::RateLimited as i32,
                    ..Default::default()
                }),
            )
            .await;
            // Let the answers through before the connection goes.
            ws.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            drop(ws);
            let mut ws = accept_hello(&listener).await;
            let mut again = Vec::new();
            for _ in 0..3 {
                let (rid, e) = sent_envelope(server_frame_of(&mut ws).await.unwrap());
                answer(&mut ws, rid, accepted_frame(&e, true)).await;
                again.push(e.client_message_id);
            }
            // Then the send submitted after the reconnect.
            let (rid, e) = sent_envelope(server_frame_of(&mut ws).await.unwrap());
            answer(&mut ws, rid, accepted_frame(&e, false)).await;
            again.push(e.client_message_id);
            // Nothing else comes (no second copy of an answered send).
            let extra = tokio::time::timeout(
                std::time::Duration::from_millis(300),
                server_frame_of(&mut ws),
            )
            .await;
            assert!(extra.is_err(), "an extra frame: {extra:?}");
            again
        });
        let sender = Sender::connect(&url, "signal", "t").await.unwrap();
        let mut pending = Vec::new();
        for i in 0..5 {
            let env = text_envelope(&format!("c-{i}"), "signal:a", "home:+4915112345678", "x");
            pending.push(sender.submit(env).await.unwrap());
        }
        sender.closed().await;
        assert!(sender.is_closed());
        assert_eq!(sender.unanswered(), 3);
        // `outcome` ends with the connection; `answered` waits on.
        let mut pending = pending.into_iter();
        let p0 = pending.next().unwrap();
        let p1 = pending.next().unwrap();
        assert!(matches!(p1.outcome().await, Ok(SendOutcome::Accepted(_))));
        assert!(matches!(p0.outcome().await, Err(ClientError::Closed(_))));
        let rest: Vec<_> = pending.collect();
        // A send on the ended connection fails and is not kept.
        let late = text_envelope("late", "signal:a", "home:+4915112345678", "x");
        assert!(matches!(
            sender.submit(late.clone()).await,
            Err(ClientError::Closed(_))
        ));
        assert_eq!(sender.unanswered(), 3);
        assert_eq!(sender.reconnect().await.unwrap(), 3);
        assert_eq!(sender.resent(), 3);
        let p5 = sender.submit(late).await.unwrap();
        let mut outcomes = Vec::new();
        for p in rest {
            outcomes.push(p.answered().await.unwrap());
        }
        // c-3 was answered (refused) before the loss; c-2 and c-4 after it.
        assert!(matches!(&outcomes[1], SendOutcome::Rejected(_)));
        for o in [&outcomes[0], &outcomes[2]] {
            assert!(
                matches!(o, SendOutcome::Accepted(a) if a.duplicate),
                "{o:?}"
            );
        }
        assert!(matches!(
            p5.answered().await.unwrap(),
            SendOutcome::Accepted(a) if a.client_message_id == "late"
        ));
        assert_eq!(sender.unanswered(), 0);
        assert_eq!(server.await.unwrap(), ["c-0", "c-2", "c-4", "late"]);
    }

    /// `reconnect` on a connection still open closes it first, so an
    /// answer cannot come on both.
    #[tokio::test]
    async fn reconnect_on_an_open_connection_closes_it_first() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut ws = accept_hello(&listener).await;
            let (_, e) = sent_envelope(server_frame_of(&mut ws).await.unwrap());
            // The client closes this connection: nothing more on it.
            assert!(server_frame_of(&mut ws).await.is_none());
            // Sends the answer to the client's close.
            ws.flush().await.ok();
            let mut ws2 = accept_hello(&listener).await;
            let (rid, e2) = sent_envelope(server_frame_of(&mut ws2).await.unwrap());
            assert_eq!(e2.client_message_id, e.client_message_id);
            answer(&mut ws2, rid, accepted_frame(&e2, true)).await;
            ws2
        });
        let sender = Sender::connect(&url, "signal", "t").await.unwrap();
        let env = text_envelope("c-open", "signal:a", "home:+4915112345678", "x");
        let p = sender.submit(env).await.unwrap();
        assert_eq!(sender.reconnect().await.unwrap(), 1);
        assert!(matches!(p.answered().await.unwrap(), SendOutcome::Accepted(a) if a.duplicate));
        drop(server.await.unwrap());
    }
    fn deliver(tag: u64, message_id: &str) -> server_frame::Frame {
        server_frame::Frame::Deliver(interop_proto::v1::Deliver {
            delivery_tag: tag,
            envelope: Some(Envelope {
                message_id: message_id.to_owned(),
                ..Default::default()
            }),
            inbox: 0,
            user: String::new(),
        })
    }

    /// A fake delivery: the first session hands out m-1 and m-2 and drops;
    /// the second delivers m-2 again (never acked) and m-3. The same
    /// receiver, reconnected, hands out m-3 only and acks the redelivery.
    #[tokio::test]
    async fn a_reconnected_receiver_keeps_its_window() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let mut ws = accept_hello(&listener).await;
            answer(&mut ws, 0, deliver(1, "m-1")).await;
            answer(&mut ws, 0, deliver(2, "m-2")).await;
            // The client acks m-1 only, then the connection is lost.
            let ack = server_frame_of(&mut ws).await.unwrap();
            assert!(
                matches!(ack.frame, Some(client_frame::Frame::Ack(a)) if a.delivery_tags == [1])
            );
            drop(ws);
            let mut ws = accept_hello(&listener).await;
            answer(&mut ws, 0, deliver(7, "m-2")).await;
            answer(&mut ws, 0, deliver(8, "m-3")).await;
            let mut acked = Vec::new();
            while acked.len() < 2 {
                match server_frame_of(&mut ws).await.unwrap().frame {
                    Some(client_frame::Frame::Ack(a)) => acked.extend(a.delivery_tags),
                    other => panic!("{other:?}"),
                }
            }
            acked
        });
        let mut rx = Receiver::connect(&url, "home", "t", "home:+4915112345678", "d")
            .await
            .unwrap();
        let m1 = rx.next().await.unwrap();
        let m2 = rx.next().await.unwrap();
        assert_eq!(
            (
                m1.envelope.message_id.as_str(),
                m2.envelope.message_id.as_str()
            ),
            ("m-1", "m-2")
        );
        rx.ack(&[m1.delivery_tag]).await.unwrap();
        assert!(rx.next().await.is_err(), "the first session ends");
        rx.reconnect().await.unwrap();
        let m3 = rx.next().await.unwrap();
        assert_eq!(m3.envelope.message_id, "m-3");
        assert_eq!(rx.duplicates(), 1);
        assert_eq!(rx.window().len(), 3);
        rx.ack(&[m3.delivery_tag]).await.unwrap();
        // The redelivery (tag 7) was acked by the library, then m-3.
        assert_eq!(server.await.unwrap(), [7, 8]);
    }
}
