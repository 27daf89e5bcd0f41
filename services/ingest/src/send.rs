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
//! The key directory's frames: see `keys_frames`. `Transaction`: see
//! `transaction` (its one-to-one sends share one Redis round trip,
//! [`prepare_sends`]).

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tracing::{debug, info, warn, Instrument};

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
    /// A transaction's items, each prepared, in item order
    /// ([`crate::transaction`]).
    Transaction {
        request_id: u64,
        items: Vec<Prepared>,
    },
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

/// Runs the checks in `pipe` (they include a rate-limit script) in one
/// round trip, bounded like the store: a slow or absent Redis means
/// `UNAVAILABLE`, fast. Reloads the scripts once if Redis lost them. While
/// Redis is out, refuses at once without a round trip but for one probe
/// every 250 ms (`crate::breaker`). Logs failures itself (a round trip
/// that failed; the breaker opening and closing), so callers only answer.
pub(crate) async fn checks<T: redis::FromRedisValue>(
    shared: &Shared,
    pipe: &redis::Pipeline,
) -> Result<T, String> {
    use crate::breaker::{Outcome, Pass};
    let pass = shared.redis_breaker.pass(std::time::Instant::now());
    if pass == Pass::Refuse {
        shared.metrics.redis_refused_at_once.inc();
        return Err("Redis is out".to_owned());
    }
    let mut conn = shared.redis.clone();
    let query = async {
        shared.metrics.redis_checks.inc();
        let mut reply: Result<T, interop_state::StateError> =
            pipe.query_async(&mut conn).await.map_err(Into::into);
        if reply.as_ref().err().is_some_and(
            |e| matches!(e, interop_state::StateError::Redis(r) if gcra::is_noscript(r)),
        ) {
            // Redis restarted and lost its script cache: load and try again.
            reply = match load_scripts(&mut conn).await {
                Ok(()) => {
                    shared.metrics.redis_checks.inc();
                    pipe.query_async(&mut conn).await.map_err(Into::into)
                }
                Err(e) => Err(e),
            };
        }
        reply
    };
    let (reply, outcome) = match tokio::time::timeout(shared.store_timeout, query).await {
        Ok(Ok(v)) => (Ok(v), Outcome::Answered),
        Ok(Err(e)) if e.is_unavailable() => (Err(e.to_string()), Outcome::Outage),
        Ok(Err(e)) => (Err(e.to_string()), Outcome::Answered),
        Err(_) => (Err("timed out".to_owned()), Outcome::Outage),
    };
    let was_open =
        shared
            .redis_breaker
            .record(pass == Pass::Probe, outcome, std::time::Instant::now());
    match (&reply, outcome, was_open) {
        (Ok(_), _, true) => info!("Redis answers again: sends are checked again."),
        (Ok(_), _, false) => {}
        (Err(e), Outcome::Outage, false) => warn!(
            error = %e,
            "Redis is out: refusing sends (UNAVAILABLE) at once, looking every 250 ms whether it is back."
        ),
        (Err(e), Outcome::Outage, true) => debug!(error = %e, "Redis is still out."),
        // Redis answered with an error about the call itself.
        (Err(e), Outcome::Answered, _) => {
            warn!(error = %e, "Redis refused a round trip of send checks.")
        }
    }
    reply
}

/// Loads the rate-limit scripts (one send's, and a transaction's sends').
pub(crate) async fn load_scripts(
    conn: &mut redis::aio::ConnectionManager,
) -> Result<(), interop_state::StateError> {
    gcra::load(conn).await?;
    gcra::load_batch(conn).await
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
        // A connection's transactions go to `crate::transaction::prepare`;
        // here only an item of one could be one.
        Some(client_frame::Frame::Transaction(_)) => reject(
            request_id,
            "",
            Rejection::new(
                RejectCode::UnsupportedFrame,
                "a transaction's item cannot be a Transaction",
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

/// A one-to-one send that passed validation, waiting for its Redis checks
/// (rate limits, the recipient's consent, the idempotency claim).
pub(crate) struct SendPlan {
    request_id: u64,
    cmid: String,
    from: interop_proto::Address,
    to: interop_proto::Address,
    envelope: interop_proto::v1::Envelope,
    /// Its server message id, unless its client message id was claimed
    /// before.
    fresh_id: String,
}

impl SendPlan {
    pub(crate) fn request_id(&self) -> u64 {
        self.request_id
    }

    pub(crate) fn cmid(&self) -> &str {
        &self.cmid
    }
}

/// What validation made of a `Send`.
pub(crate) enum Planned {
    /// To a user: its checks come next.
    One(SendPlan),
    /// To a group: [`crate::group::prepare_group_send`] takes it.
    Group(interop_proto::v1::Envelope),
    /// Refused already.
    Answer(Prepared),
}

/// Validates a `Send` (no I/O).
pub(crate) fn plan_send(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    envelope: Option<interop_proto::v1::Envelope>,
) -> Planned {
    let cmid = envelope
        .as_ref()
        .map(|e| e.client_message_id.clone())
        .unwrap_or_default();
    let envelope = match envelope {
        Some(env) if !env.group_id.is_empty() && env.to.is_empty() => return Planned::Group(env),
        other => other,
    };
    let (from, to) = match validate_send(provider, envelope.as_ref(), shared.max_sent_at_age_ms) {
        Ok(a) => a,
        Err(r) => {
            debug!(%provider, code = r.code.as_str_name(), "Rejected a send.");
            return Planned::Answer(reject(request_id, &cmid, r));
        }
    };
    let Some(envelope) = envelope else {
        // validate_send refuses a missing envelope.
        return Planned::Answer(reject(
            request_id,
            &cmid,
            Rejection::new(RejectCode::MissingField, "envelope"),
        ));
    };
    Planned::One(SendPlan {
        request_id,
        cmid,
        from,
        to,
        envelope,
        fresh_id: uuid::Uuid::now_v7().to_string(),
    })
}

/// The consent fields a send reads: `rev`, `opted_in`, `allowed`.
type ConsentFields = (Option<String>, Option<String>, Option<String>);

/// What Redis answered for one send: (rate decision, consent fields, the
/// server message id its client message id was claimed with before).
type SendReply = ((i64, i64, i64), ConsentFields, Option<String>);

/// Adds `plan`'s consent read and idempotency claim (`SET NX GET`) to
/// `pipe`: two replies.
fn add_reads(pipe: &mut redis::Pipeline, shared: &Shared, plan: &SendPlan) {
    pipe.cmd("HMGET")
        .arg(consent::key(plan.to.as_str()))
        .arg("rev")
        .arg("opted_in")
        .arg("allowed")
        .cmd("SET")
        .arg(interop_state::keys::idem(plan.from.as_str(), &plan.cmid))
        .arg(&plan.fresh_id)
        .arg("NX")
        .arg("GET")
        .arg("EX")
        .arg(shared.idempotency_secs);
}

async fn prepare_send(
    shared: &Arc<Shared>,
    provider: &str,
    request_id: u64,
    envelope: Option<interop_proto::v1::Envelope>,
) -> Prepared {
    let plan = match plan_send(shared, provider, request_id, envelope) {
        Planned::One(plan) => plan,
        Planned::Group(env) => {
            return crate::group::prepare_group_send(shared, provider, request_id, env).await
        }
        Planned::Answer(answer) => return answer,
    };
    // Rate limits, consent and the idempotency claim: one round trip, with
    // the other sends of this replica waiting meanwhile
    // (`crate::send_checks`).
    shared.send_checks.check(shared, provider, plan).await
}

/// Prepares the one-to-one sends of a transaction, in order: their checks
/// in one Redis round trip (every rate check in one script call,
/// [`gcra::add_checks`], then each send's consent read and idempotency
/// claim, in order), then each the rest of the way as if it came alone,
/// concurrently. A client message id claimed twice in it is answered, the
/// second time, as a re-send of the first. Answers in the order of
/// `plans`.
pub(crate) async fn prepare_sends(
    shared: &Shared,
    provider: &str,
    plans: Vec<SendPlan>,
) -> Vec<Prepared> {
    if plans.is_empty() {
        return Vec::new();
    }
    let mut pipe = redis::pipe();
    let senders: Vec<&str> = plans.iter().map(|p| p.from.as_str()).collect();
    gcra::add_checks(
        &mut pipe,
        provider,
        &senders,
        provider_limit(shared, provider),
        shared.sender_limit,
    );
    for plan in &plans {
        add_reads(&mut pipe, shared, plan);
    }
    let replies = checks::<Vec<redis::Value>>(shared, &pipe)
        .await
        .and_then(|values| split_replies(plans.len(), values));
    match replies {
        Ok(replies) => {
            futures_util::future::join_all(
                plans
                    .into_iter()
                    .zip(replies)
                    .map(|(plan, reply)| finish_send(shared, provider, plan, reply)),
            )
            .await
        }
        Err(_) => {
            // Logged by `checks`.
            plans
                .iter()
                .map(|p| reject(p.request_id, &p.cmid, unavailable("state storage")))
                .collect()
        }
    }
}

/// The replies of [`prepare_sends`]' pipeline, one per send: the batched
/// rate checks' list first, then each send's consent fields and claim.
fn split_replies(n: usize, values: Vec<redis::Value>) -> Result<Vec<SendReply>, String> {
    let bad = |e: redis::ParsingError| format!("unexpected reply: {e}");
    if values.len() != 1 + 2 * n {
        return Err(format!(
            "{} replies to a pipeline of {} commands",
            values.len(),
            1 + 2 * n
        ));
    }
    let mut values = values.into_iter();
    let rates: Vec<(i64, i64, i64)> =
        redis::from_redis_value(values.next().unwrap_or_default()).map_err(bad)?;
    if rates.len() != n {
        return Err(format!("{} rate decisions for {n} sends", rates.len()));
    }
    let mut out = Vec::with_capacity(n);
    for rate in rates {
        let fields: ConsentFields =
            redis::from_redis_value(values.next().unwrap_or_default()).map_err(bad)?;
        let existing: Option<String> =
            redis::from_redis_value(values.next().unwrap_or_default()).map_err(bad)?;
        out.push((rate, fields, existing));
    }
    Ok(out)
}

/// The rest of a send once Redis answered its checks.
async fn finish_send(
    shared: &Shared,
    provider: &str,
    plan: SendPlan,
    (rate, (rev, opted_in, allowed), existing): SendReply,
) -> Prepared {
    let SendPlan {
        request_id,
        cmid,
        from,
        to,
        mut envelope,
        fresh_id,
    } = plan;
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
    // Our own claim comes back when the pipeline was run again (Redis had
    // lost the rate-limit script): that is no re-send.
    let resend = existing.as_ref().is_some_and(|id| *id != fresh_id);
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

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn rate(allowed: i64, retry: i64, by: i64) -> Value {
        Value::Array(vec![Value::Int(allowed), Value::Int(retry), Value::Int(by)])
    }

    #[test]
    fn a_transactions_replies_split_into_one_per_send_in_order() {
        let values = vec![
            Value::Array(vec![rate(1, 0, 0), rate(0, 250, 2)]),
            Value::Array(vec![bulk("7"), bulk("1"), bulk("signal")]),
            Value::Nil,
            Value::Array(vec![Value::Nil, Value::Nil, Value::Nil]),
            bulk("first-id"),
        ];
        let replies = split_replies(2, values).expect("well-formed");
        assert_eq!(
            replies,
            vec![
                (
                    (1, 0, 0),
                    (Some("7".into()), Some("1".into()), Some("signal".into())),
                    None
                ),
                ((0, 250, 2), (None, None, None), Some("first-id".into())),
            ]
        );
        assert!(rate_limited(replies[0].0).is_none());
        let limited = rate_limited(replies[1].0).expect("limited");
        assert_eq!(limited.code, RejectCode::RateLimited);
        assert_eq!(limited.retry_after_ms, 250);
    }

    #[test]
    fn replies_of_the_wrong_shape_are_errors_not_panics() {
        // Too few replies.
        assert!(split_replies(2, vec![Value::Array(vec![rate(1, 0, 0)])]).is_err());
        // As many replies, but fewer rate decisions than sends.
        let values = vec![
            Value::Array(vec![rate(1, 0, 0)]),
            Value::Array(vec![Value::Nil, Value::Nil, Value::Nil]),
            Value::Nil,
            Value::Array(vec![Value::Nil, Value::Nil, Value::Nil]),
            Value::Nil,
        ];
        assert!(split_replies(2, values).is_err());
        // A reply of the wrong type.
        let values = vec![Value::Int(3), Value::Nil, Value::Nil];
        assert!(split_replies(1, values).is_err());
    }
}
