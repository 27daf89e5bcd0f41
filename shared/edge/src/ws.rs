//! WebSocket framing shared by the two provider-facing endpoints (ingest and
//! delivery): one protobuf frame per binary WebSocket message, size checked
//! before decoding, and a writer task so handlers never block on a slow
//! socket.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use prost::Message as _;
use tokio::sync::mpsc;

use interop_proto::limits::{HARD_MAX_FRAME_BYTES, MAX_FRAME_BYTES};
use interop_proto::v1::{server_frame, ClientFrame, RejectCode, Rejected, ServerFrame};

/// WebSocket close codes the gateway uses (RFC 6455).
pub mod close {
    /// The server is shutting down; reconnect elsewhere or later.
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame arrived: the protocol is binary only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// Authentication failed, or the connection broke the protocol's rules.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame larger than the hard limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
}

/// Something for the writer task to send. Boxed: tokio's channel allocates
/// 32 slots when it is made, so every idle connection holds 32 of these;
/// a box each is 256 bytes, the enum inline would be 1 KiB (issue 5's
/// memory bar for idle sessions).
#[derive(Debug)]
pub struct Outbound(Box<OutboundKind>);

/// What an [`Outbound`] holds.
#[derive(Debug)]
pub enum OutboundKind {
    /// An encoded `ServerFrame` (encoded by the sender, off the writer task).
    Frame(bytes::Bytes),
    /// Send a close frame and stop writing.
    Close(u16, &'static str),
}

impl Outbound {
    pub fn frame(frame: ServerFrame) -> Self {
        Self(Box::new(OutboundKind::Frame(frame.encode_to_vec().into())))
    }

    /// A close frame with this code and reason; the writer stops after it.
    pub fn close(code: u16, reason: &'static str) -> Self {
        Self(Box::new(OutboundKind::Close(code, reason)))
    }

    /// What it holds.
    pub fn into_kind(self) -> OutboundKind {
        *self.0
    }
}

/// Queues `out` for the writer; false when the connection is gone (then
/// there is nobody left to tell, so callers may ignore it).
pub async fn push(out: &mpsc::Sender<Outbound>, item: Outbound) -> bool {
    out.send(item).await.is_ok()
}

/// Frames the writer may hold before handlers wait (backpressure).
pub const OUTBOUND_QUEUE: usize = 1024;

/// Bytes the WebSocket layer collects before writing to the socket.
pub const WRITE_BUFFER_BYTES: usize = 64 * 1024;
/// Most bytes a connection's WebSocket write buffer may hold while the peer
/// does not read: the buffer plus one largest message. Past it the write
/// fails and the connection ends.
pub const MAX_WRITE_BUFFER_BYTES: usize = WRITE_BUFFER_BYTES + 2 * HARD_MAX_FRAME_BYTES;

/// The WebSocket settings of both provider endpoints: incoming messages and
/// frames over [`HARD_MAX_FRAME_BYTES`] are refused from their header,
/// before their payload is read (close 1009), and the write buffer is
/// bounded by [`MAX_WRITE_BUFFER_BYTES`].
pub fn configure(ws: axum::extract::WebSocketUpgrade) -> axum::extract::WebSocketUpgrade {
    ws.max_message_size(HARD_MAX_FRAME_BYTES)
        .max_frame_size(HARD_MAX_FRAME_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(MAX_WRITE_BUFFER_BYTES)
}

/// Starts the task that writes frames to the socket. It ends when every
/// sender is dropped, after a `Close`, or when the socket fails.
pub fn spawn_writer(
    mut sink: SplitSink<WebSocket, Message>,
) -> (mpsc::Sender<Outbound>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Outbound>(OUTBOUND_QUEUE);
    let task = tokio::spawn(async move {
        // Frames queued together are written together: fed into the
        // socket's write buffer and flushed once (one write, not one per
        // frame, when a session is busy), at most WRITE_BATCH at a time.
        let mut next = rx.recv().await;
        'outer: while let Some(out) = next.take() {
            let mut queued = Some(out);
            let mut fed = 0usize;
            while let Some(out) = queued.take() {
                match out.into_kind() {
                    OutboundKind::Frame(bytes) => {
                        if sink.feed(Message::Binary(bytes)).await.is_err() {
                            break 'outer;
                        }
                        fed += 1;
                    }
                    OutboundKind::Close(code, reason) => {
                        // The socket ends either way.
                        sink.send(Message::Close(Some(CloseFrame {
                            code,
                            reason: reason.into(),
                        })))
                        .await
                        .ok();
                        break 'outer;
                    }
                }
                if fed < WRITE_BATCH {
                    queued = rx.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() {
                break;
            }
            next = rx.recv().await;
        }
        sink.close().await.ok();
    });
    (tx, task)
}

/// Frames written with one flush at most.
const WRITE_BATCH: usize = 64;

/// What one incoming WebSocket message turned out to be.
#[derive(Debug)]
pub enum Incoming {
    /// A well-formed frame.
    Frame(ClientFrame),
    /// A bad frame: answer with this rejection and keep serving.
    Reject(ServerFrame),
    /// A protocol violation: close with this code and reason.
    Close(u16, &'static str),
    /// The peer closed the connection, or it failed.
    End,
    /// Ping/pong: nothing to do.
    Ignore,
}

/// A `Rejected` server frame.
pub fn rejected(
    request_id: u64,
    client_message_id: &str,
    code: RejectCode,
    detail: impl Into<String>,
    retry_after_ms: u32,
) -> ServerFrame {
    ServerFrame {
        request_id,
        frame: Some(server_frame::Frame::Rejected(Rejected {
            client_message_id: client_message_id.to_owned(),
            code: code as i32,
            detail: detail.into(),
            retry_after_ms,
        })),
    }
}

/// Classifies one message read from the socket.
pub fn classify(msg: Option<Result<Message, axum::Error>>) -> Incoming {
    match msg {
        None | Some(Ok(Message::Close(_))) => Incoming::End,
        Some(Err(e)) => {
            // tungstenite reports frames over the hard limit as an error.
            if e.to_string().contains("too long") || e.to_string().contains("Space limit") {
                Incoming::Close(close::MESSAGE_TOO_BIG, "frame exceeds the hard size limit")
            } else {
                Incoming::End
            }
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Ignore,
        Some(Ok(Message::Text(_))) => {
            Incoming::Close(close::UNSUPPORTED_DATA, "binary protobuf frames only")
        }
        Some(Ok(Message::Binary(bytes))) => {
            if bytes.len() > MAX_FRAME_BYTES {
                return Incoming::Reject(rejected(
                    0,
                    "",
                    RejectCode::FrameTooLarge,
                    format!(
                        "frame is {} bytes; the limit is {MAX_FRAME_BYTES}",
                        bytes.len()
                    ),
                    0,
                ));
            }
            match ClientFrame::decode(bytes) {
                Ok(frame) if frame.frame.is_some() => Incoming::Frame(frame),
                Ok(frame) => Incoming::Reject(rejected(
                    frame.request_id,
                    "",
                    RejectCode::MalformedFrame,
                    "no frame set (unknown frame type?)",
                    0,
                )),
                Err(e) => Incoming::Reject(rejected(
                    0,
                    "",
                    RejectCode::MalformedFrame,
                    format!("not a ClientFrame: {e}"),
                    0,
                )),
            }
        }
    }
}

/// Reads frames until a `Hello` arrives, answering anything else with
/// `NOT_AUTHENTICATED`. Returns `None` (after sending a close where one is
/// due) when the peer leaves, breaks the protocol, takes longer than
/// `HELLO_TIMEOUT_SECS`, or the server shuts down.
pub async fn read_hello(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    out: &mpsc::Sender<Outbound>,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Option<(u64, interop_proto::v1::Hello)> {
    use futures_util::StreamExt;
    use interop_proto::v1::client_frame;
    let deadline = tokio::time::Instant::now()
        + std::time::Duration::from_secs(interop_proto::limits::HELLO_TIMEOUT_SECS);
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout_at(deadline, stream.next()) => n,
            () = shutdown.cancelled() => {
                push(out, Outbound::close(close::GOING_AWAY, "server shutting down")).await;
                return None;
            }
        };
        let Ok(msg) = next else {
            push(
                out,
                Outbound::close(close::POLICY_VIOLATION, "no hello in time"),
            )
            .await;
            return None;
        };
        match classify(msg) {
            Incoming::Frame(ClientFrame {
                request_id,
                frame: Some(client_frame::Frame::Hello(h)),
            }) => {
                if h.protocol_version != interop_proto::PROTOCOL_VERSION {
                    push(
                        out,
                        Outbound::frame(rejected(
                            request_id,
                            "",
                            RejectCode::UnsupportedVersion,
                            format!(
                                "this gateway speaks protocol version {}",
                                interop_proto::PROTOCOL_VERSION
                            ),
                            0,
                        )),
                    )
                    .await;
                    push(
                        out,
                        Outbound::close(close::POLICY_VIOLATION, "unsupported protocol version"),
                    )
                    .await;
                    return None;
                }
                return Some((request_id, h));
            }
            Incoming::Frame(f) => {
                push(
                    out,
                    Outbound::frame(rejected(
                        f.request_id,
                        "",
                        RejectCode::NotAuthenticated,
                        "send Hello first",
                        0,
                    )),
                )
                .await;
            }
            Incoming::Reject(r) => {
                push(out, Outbound::frame(r)).await;
            }
            Incoming::Close(code, reason) => {
                push(out, Outbound::close(code, reason)).await;
                return None;
            }
            Incoming::End => return None,
            Incoming::Ignore => {}
        }
    }
}

/// Refuses a `Hello` with `code` and closes the connection.
pub async fn refuse_hello(
    out: &mpsc::Sender<Outbound>,
    request_id: u64,
    code: RejectCode,
    detail: &str,
) {
    push(
        out,
        Outbound::frame(rejected(request_id, "", code, detail, 0)),
    )
    .await;
    let reason = if code == RejectCode::AuthFailed {
        "authentication failed"
    } else {
        "hello refused"
    };
    push(out, Outbound::close(close::POLICY_VIOLATION, reason)).await;
}

/// Refuses a `Hello` as the edge checks decided (see
/// [`crate::EdgeGuard::admit`]) and closes the connection.
pub async fn refuse(out: &mpsc::Sender<Outbound>, request_id: u64, refusal: &crate::Refusal) {
    push(
        out,
        Outbound::frame(rejected(
            request_id,
            "",
            refusal.code,
            refusal.detail,
            refusal.retry_after_ms,
        )),
    )
    .await;
    let reason = match refusal.code {
        RejectCode::AuthFailed => "authentication failed",
        RejectCode::RateLimited => "too many failed authentications",
        RejectCode::TooManyConnections => "too many connections",
        _ => "hello refused",
    };
    push(out, Outbound::close(close::POLICY_VIOLATION, reason)).await;
}
