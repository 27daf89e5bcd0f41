//! Handling of frames after `Hello`.
//!
//! `Send` (wire: `ClientFrame{request_id, send: Send{envelope}}`): validate;
//! one Redis round trip reads the recipient's consent and claims the
//! idempotency key `interop:idem:<from>:<client_message_id>` (`SET NX GET`:
//! a re-send gets the server message id of the first try); publish to
//! `interop.v1.ingest.accepted` with `Nats-Msg-Id` = server message id;
//! answer `Accepted` once JetStream acked, else `Rejected{UNAVAILABLE}`.
//!
//! `SetConsent`, `RespondToRequest`, `GetConsent`: see `consent_frames`.
//! The key directory's frames: see `keys_frames`.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tracing::{debug, warn, Instrument};

use interop_edge::ws::rejected;
use interop_proto::v1::{
    client_frame, server_frame, Accepted, ClientFrame, PipelineMessage, RejectCode, ServerFrame,
};
use interop_state::consent::{self, Consent};
use interop_state::gcra::{self, RateLimit};
use interop_state::group::GroupStore;
use interop_state::ConsentStore;

use crate::validate::{validate_send, Rejection};
use crate::Shared;

/// Retry advice when a dependency is down.
const UNAVAILABLE_RETRY_MS: u32 = 1000;

/// A frame ready to publish.
pub(crate) struct ToPublish {
    pub(crate) request_id: u64,
    pub(crate) client_message_id: String,
    pub(crate) message_id: String,
    pub(crate) accepted_at_ms: i64,
    pub(crate) payload: Bytes,
    pub(crate) span: tracing::Span,
    /// Ephemeral content (typing): published on this core NATS subject to
    /// the recipient's open sessions instead of being stored.
    pub(crate) ephemeral_subject: Option<String>,
    /// A re-send of a client message id (it got the first try's message
    /// id): stored alone, so JetStream drops it if the first was stored.
    pub(crate) resend: bool,
    /// The answer once stored, instead of `Accepted` (a group change's
    /// `GroupUpdated`, sent once the members' notice is stored).
    pub(crate) answer: Option<Box<ServerFrame>>,
    /// A group made for this notice (`CreateGroup`): deleted if the notice
    /// cannot be stored, so that no group exists that its members were not
    /// told of and whose id its creator never got.
    pub(crate) created_group: Option<String>,
}

pub(crate) enum Prepared {
    /// Answer right away (rejections, consent updates).
    Answer(Box<ServerFrame>),
    Publish(ToPublish),
}

/// An answer right away: `frame` for request `request_id`.
pub(crate) fn answer(request_id: u64, frame: server_frame::Frame) -> Prepared {
    Prepared::Answer(Box::new(ServerFrame {
        request_id,
        frame: Some(frame),
    }))
}

pub(crate) fn reject(request_id: u64, client_message_id: &str, r: Rejection) -> Prepared {
    let frame = rejected(
        request_id,
        client_message_id,
        r.code,
        r.detail,
        r.retry_after_ms,
    );
    Prepared::Answer(Box::new(frame))
}

/// The provider's rate limit: its registry record's, or the gateway's
/// default for what the record leaves out.
pub(crate) fn provider_limit(shared: &Shared, provider: &str) -> RateLimit {
    shared
        .providers
        .borrow()
        .get(provider)
        .map(|p| RateLimit {
            per_second: p
                .max_per_second
                .unwrap_or(shared.default_provider_limit.per_second),
            burst: p.burst.unwrap_or(shared.default_provider_limit.burst),
        })
        .unwrap_or(shared.default_provider_limit)
}

pub(crate) fn unavailable(what: &str) -> Rejection {
    Rejection::retryable(
        RejectCode::Unavailable,
        format!("{what} is unavailable; retry"),
        UNAVAILABLE_RETRY_MS,
    )
}

/// Runs the checks in `pipe` (they include the rate-limit script) in one
/// round trip, bounded like the store: a slow or absent Redis means
/// `UNAVAILABLE`, fast. Reloads the script once if Redis lost it.
pub(crate) async fn checks<T: redis::FromRedisValue>(
    shared: &Shared,
    pipe: &redis::Pipeline,
) -> Result<T, String> {
    let mut conn = shared.redis.clone();
    let query = async {
        let mut reply: Result<T, redis::RedisError> = pipe.query_async(&mut conn).await;
        if reply.as_ref().err().is_some_and(gcra::is_noscript) {
            // Redis restarted and lost its script cache: load and try again.
            reply = match gcra::load(&mut conn).await {
                Ok(()) => pipe.query_async(&mut conn).await,
                Err(e) => return Err(e.to_string()),
            };
        }
        reply.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(shared.store_timeout, query).await {
        Ok(r) => r,
        Err(_) => Err("timed out".to_owned()),
    }
}

/// The `RATE_LIMITED` answer for a rate-limit script's reply, if it refused.
pub(crate) fn rate_limited(rate: (i64, i64, i64)) -> Option<Rejection> {
    match gcra::decision(rate) {
        gcra::Decision::Allowed => None,
        gcra::Decision::Limited { by, retry_after_ms } => {
            let detail = match by {
                gcra::LimitedBy::Provider => "provider rate limit reached",
                gcra::LimitedBy::Sender => "sender rate limit reached",
            };
            Some(Rejection::retryable(
                RejectCode::RateLimited,
                detail,
                retry_after_ms,
            ))
        }
    }
}

/// Everything up to the publish; runs concurrently with other frames.
pub(crate) async fn prepare(shared: Arc<Shared>, provider: String, frame: ClientFrame) -> Prepared {
    let ClientFrame { request_id, frame } = frame;
    match frame {
        Some(client_frame::Frame::Send(send)) => {
            prepare_send(&shared, &provider, request_id, send.envelope).await
        }
        Some(client_frame::Frame::SetConsent(sc)) => {
            crate::consent_frames::set_consent(&shared, &provider, request_id, sc).await
        }
        Some(client_frame::Frame::RespondToRequest(r)) => {
            crate::consent_frames::respond_to_request(&shared, &provider, request_id, r).await
        }
        Some(client_frame::Frame::GetConsent(g)) => {
            crate::consent_frames::get_consent(&shared, &provider, request_id, g).await
        }
        Some(client_frame::Frame::CreateGroup(c)) => {
            crate::group::create(&shared, &provider, request_id, c).await
        }
        Some(client_frame::Frame::ChangeGroup(c)) => {
            crate::group::change(&shared, &provider, request_id, c).await
        }
        Some(client_frame::Frame::GetGroup(g)) => {
            crate::group::get(&shared, &provider, request_id, g).await
        }
        Some(client_frame::Frame::PublishKeys(p)) => {
            crate::keys_frames::publish(&shared, &provider, request_id, p).await
        }
        Some(client_frame::Frame::ListDevices(l)) => {
            crate::keys_frames::list_devices(&shared, &provider, request_id, l).await
        }
        Some(client_frame::Frame::FetchBundles(f)) => {
            crate::keys_frames::fetch_bundles(&shared, &provider, request_id, f).await
        }
        Some(client_frame::Frame::FetchKeyPackages(f)) => {
            crate::keys_frames::fetch_key_packages(&shared, &provider, request_id, f).await
        }
        Some(client_frame::Frame::RemoveDevice(r)) => {
            crate::keys_frames::remove_device(&shared, &provider, request_id, r).await
        }
        Some(client_frame::Frame::GetKeyHistory(h)) => {
            crate::keys_frames::key_history(&shared, &provider, request_id, h).await
        }
        Some(client_frame::Frame::Transaction(_)) => reject(
            request_id,
            "",
            Rejection::new(
                RejectCode::UnsupportedFrame,
                "Transaction is not served by this ingest version",
            ),
        ),
        Some(client_frame::Frame::MarkRead(_)) => reject(
            request_id,
            "",
            Rejection::new(
                RejectCode::UnsupportedFrame,
                "MarkRead goes to the delivery endpoint",
            ),
        ),
        Some(client_frame::Frame::Hello(_)) => reject(
            request_id,
            "",
            Rejection::new(
                RejectCode::AlreadyAuthenticated,
                "this connection is authenticated already",
            ),
        ),
        Some(client_frame::Frame::Ack(_)) => reject(
            request_id,
            "",
            Rejection::new(
                RejectCode::UnsupportedFrame,
                "acks go to the delivery endpoint",
            ),
        ),
        None => reject(
            request_id,
            "",
            Rejection::new(RejectCode::MalformedFrame, "no frame set"),
        ),
    }
}

async fn prepare_send(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    envelope: Option<interop_proto::v1::Envelope>,
) -> Prepared {
    let cmid = envelope
        .as_ref()
        .map(|e| e.client_message_id.clone())
        .unwrap_or_default();
    if let Some(env) = envelope
        .as_ref()
        .filter(|e| !e.group_id.is_empty() && e.to.is_empty())
    {
        let env = env.clone();
        return crate::group::prepare_group_send(shared, provider, request_id, env).await;
    }
    let (from, to) = match validate_send(provider, envelope.as_ref(), shared.max_sent_at_age_ms) {
        Ok(a) => a,
        Err(r) => {
            debug!(%provider, code = r.code.as_str_name(), "Rejected a send.");
            return reject(request_id, &cmid, r);
        }
    };
    let Some(mut envelope) = envelope else {
        // validate_send refuses a missing envelope.
        return reject(
            request_id,
            &cmid,
            Rejection::new(RejectCode::MissingField, "envelope"),
        );
    };
    let fresh_id = uuid::Uuid::now_v7().to_string();
    let idem_key = interop_state::keys::idem(from.as_str(), &cmid);
    let provider_limit = provider_limit(shared, provider);
    // One round trip: rate limits, consent, and the idempotency claim.
    let mut pipe = redis::pipe();
    gcra::add_check(
        &mut pipe,
        provider,
        from.as_str(),
        provider_limit,
        shared.sender_limit,
    );
    pipe.cmd("HMGET")
        .arg(consent::key(to.as_str()))
        .arg("rev")
        .arg("opted_in")
        .arg("allowed")
        .cmd("SET")
        .arg(&idem_key)
        .arg(&fresh_id)
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(shared.idempotency_secs);
    // (rate decision, consent fields, previous server id for this client id)
    type Reply = (
        (i64, i64, i64),
        (Option<String>, Option<String>, Option<String>),
        Option<String>,
    );
    let (rate, (rev, opted_in, allowed), existing) = match checks::<Reply>(shared, &pipe).await {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "Redis unavailable; refusing sends.");
            return reject(request_id, &cmid, unavailable("state storage"));
        }
    };
    if let Some(limited) = rate_limited(rate) {
        debug!(%provider, detail = %limited.detail, "Rate-limited a send.");
        return reject(request_id, &cmid, limited);
    }
    let consent = if rev.is_some() {
        Consent::from_fields(opted_in.as_deref(), allowed.as_deref())
    } else {
        // Not cached (Redis lost it, or never read): load it from the
        // user-state stream (docs/adr/0028).
        match ConsentStore::new(shared.records.clone())
            .get(to.as_str())
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "User state unavailable; refusing sends.");
                return reject(request_id, &cmid, unavailable("state storage"));
            }
        }
    };
    if !consent.admits(provider) {
        debug!(%provider, to = %to.redacted(), "Recipient unavailable.");
        return reject(
            request_id,
            &cmid,
            Rejection::new(RejectCode::RecipientUnavailable, "recipient unavailable"),
        );
    }
    let resend = existing.is_some();
    let message_id = existing.unwrap_or(fresh_id);
    let accepted_at_ms = interop_proto::now_ms();
    envelope.message_id.clone_from(&message_id);
    envelope.accepted_at_ms = accepted_at_ms;
    envelope.sender_info = None;
    let ephemeral_subject = matches!(
        envelope.content,
        Some(interop_proto::v1::envelope::Content::Typing(_))
    )
    .then(|| interop_bus::subjects::ephemeral_sent(&interop_bus::recipient_path(to.as_str())));
    if ephemeral_subject.is_some() {
        // Typing skips routing, so routing's admission is applied here: only
        // a sender the recipient accepted may show typing. Otherwise it is
        // answered like a typing with nobody listening (dropped), so a
        // blocked sender learns nothing.
        let admission = interop_state::ContactStore::new(shared.records.clone())
            .admission(to.as_str(), from.as_str(), provider)
            .await;
        match admission {
            Ok(interop_state::Admission::Inbox(_)) => {}
            Ok(_) => {
                return Prepared::Answer(Box::new(accepted(
                    request_id,
                    cmid,
                    message_id,
                    accepted_at_ms,
                    false,
                )))
            }
            Err(e) => {
                warn!(error = %e, "Redis unavailable; refusing a typing indicator.");
                return reject(request_id, &cmid, unavailable("state storage"));
            }
        }
    }
    let pm = PipelineMessage {
        envelope: Some(envelope),
        sender_provider: provider.to_owned(),
        ..Default::default()
    };
    let span =
        tracing::info_span!("send", otel.name = "ingest send", %provider, message_id = %message_id);
    Prepared::Publish(ToPublish {
        request_id,
        client_message_id: cmid,
        message_id,
        accepted_at_ms,
        payload: Bytes::from(pm.encode_to_vec()),
        span,
        ephemeral_subject,
        resend,
        answer: None,
        created_group: None,
    })
}

/// Publishes `p`: hands it to the publishing task now (the caller calls
/// this in arrival order, so per-connection order is kept; see
/// [`crate::accepted`]) and returns a future that answers once JetStream
/// acked the stream message holding it, or with `UNAVAILABLE` when the
/// store does not answer within the store timeout.
pub(crate) async fn publish(
    shared: Arc<Shared>,
    p: ToPublish,
) -> impl std::future::Future<Output = ServerFrame> + Send {
    let span = p.span.clone();
    if let Some(subject) = p.ephemeral_subject.clone() {
        return futures_util::future::Either::Left(publish_ephemeral(shared, p, subject));
    }
    let started = tokio::time::Instant::now();
    let deadline = started + shared.store_timeout;
    let (reply, stored) = tokio::sync::oneshot::channel();
    let queued = crate::accepted::Queued {
        message_id: p.message_id.clone(),
        payload: p.payload.clone(),
        resend: p.resend,
        trace: span.in_scope(interop_bus::trace::current_fields),
        deadline,
        reply,
    };
    // Waits only when the task's queue is full; bounded by the deadline.
    let handed = tokio::time::timeout_at(deadline, shared.accepted.hand_over(queued)).await;
    futures_util::future::Either::Right(
        async move {
            let stored: crate::accepted::Stored = match handed {
                Ok(true) => match tokio::time::timeout_at(deadline, stored).await {
                    Ok(Ok(stored)) => stored,
                    Ok(Err(_)) => Err("the publishing task is gone".to_owned()),
                    Err(_) => Err("JetStream did not ack in time".to_owned()),
                },
                Ok(false) => Err("the publishing task is gone".to_owned()),
                Err(_) => Err("the publishing task did not take the send in time".to_owned()),
            };
            shared
                .metrics
                .store_seconds
                .observe(started.elapsed().as_secs_f64());
            match stored {
                // `duplicate`: this client message id was sent before
                // (docs/protocol.md, "Retries and idempotency").
                Ok(()) => match p.answer {
                    Some(answer) => *answer,
                    None => accepted(
                        p.request_id,
                        p.client_message_id,
                        p.message_id,
                        p.accepted_at_ms,
                        p.resend,
                    ),
                },
                Err(reason) => {
                    warn!(%reason, "Refusing a send: message storage unavailable.");
                    if let Some(id) = &p.created_group {
                        if let Err(e) = GroupStore::new(shared.records.clone()).delete(id).await {
                            warn!(error = %e, "A group whose members could not be told was not deleted.");
                        }
                    }
                    let r = unavailable("message storage");
                    rejected(
                        p.request_id,
                        &p.client_message_id,
                        r.code,
                        r.detail,
                        r.retry_after_ms,
                    )
                }
            }
        }
        .instrument(span),
    )
}

/// The answer to a send the gateway took.
pub(crate) fn accepted(
    request_id: u64,
    client_message_id: String,
    message_id: String,
    accepted_at_ms: i64,
    duplicate: bool,
) -> ServerFrame {
    ServerFrame {
        request_id,
        frame: Some(server_frame::Frame::Accepted(Accepted {
            client_message_id,
            message_id,
            accepted_at_ms,
            duplicate,
        })),
    }
}

/// Typing indicators: core NATS to the recipient's open sessions, never
/// stored. `Accepted` means handed to the bus; with no session open it is
/// dropped, as an ephemeral event should be.
async fn publish_ephemeral(shared: Arc<Shared>, p: ToPublish, subject: String) -> ServerFrame {
    match shared.js.client().publish(subject, p.payload).await {
        Ok(()) => accepted(
            p.request_id,
            p.client_message_id,
            p.message_id,
            p.accepted_at_ms,
            false,
        ),
        Err(e) => {
            warn!(error = %e, "Cannot publish an ephemeral event.");
            let r = unavailable("the message bus");
            rejected(
                p.request_id,
                &p.client_message_id,
                r.code,
                r.detail,
                r.retry_after_ms,
            )
        }
    }
}
