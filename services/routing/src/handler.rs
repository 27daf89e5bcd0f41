//! Handler of `interop.v1.ingest.accepted`.
//!
//! Input: `PipelineMessage` {envelope}. spam-scoring gives the verdict
//! ([`crate::score`]); REJECT answers the sender with a FAILED receipt,
//! code `SPAM`, and the signals that fired. Otherwise, for the recipient,
//! [`Router::admit`] makes the one per-recipient decision (consent, the
//! recipient's answer about the sender, the spam verdict). Output, one of:
//! - `interop.v1.delivery.queued.<key>`: the message with `route` set
//!   (`inbox` = REQUESTS for a message request, else the recipient's inbox);
//! - `interop.v1.routing.media-requested`: the same, for media content;
//! - `interop.v1.routing.quarantined`: held, in no inbox (verdict QUARANTINE);
//! - a FAILED receipt into the sender's store: `RECIPIENT_UNAVAILABLE`
//!   (not opted in, provider not allowed, declined or blocked — one code, so
//!   the sender cannot tell which) or `SPAM` (verdict REJECT).
//!
//! Nats-Msg-Id is the server message id, so a redelivered input is stored once.

use bytes::Bytes;
use prost::Message as _;
use tracing::{error, warn, Instrument};

use interop_bus::subjects::{INGEST_ACCEPTED, ROUTING_MEDIA_REQUESTED, ROUTING_QUARANTINED};
use interop_bus::{pipeline, recipient_key, HandleError, Handler, Input, Outgoing};
use interop_proto::v1::{
    envelope, AcceptedBatch, Inbox, PipelineMessage, ReceiptStatus, RejectCode, Route, Verdict,
};
use interop_state::contacts::SetOutcome;

use crate::group;
use crate::router::{retry, Placement, PlacementLabel, Router};

impl Handler for Router {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        if pipeline::is_batch(input.headers) {
            let batch = pipeline::decode_batch(input.payload)?;
            return self.route_batch(batch, input.stream_sequence).await;
        }
        self.route(pipeline::decode(input.payload)?).await
    }
}

/// How long the messages of a batch that must be retried while others were
/// routed are tried again in place (as long as the stage holds a message,
/// `interop_bus::stage::HOLD_FOR`), the wait before the first try
/// (doubling) and the longest wait.
const PARTIAL_RETRY_FOR: std::time::Duration = interop_bus::stage::HOLD_FOR;
const PARTIAL_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
const PARTIAL_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

impl Router {
    /// A batch of accepted sends (docs/adr/0019), the stream message `seq`:
    /// each routed as if it came alone, at once (their Redis calls and
    /// score requests leave together), outputs in batch order.
    /// - If every message must be retried (a dependency is down), the batch
    ///   is, by the stage (in place, keeping its place; docs/adr/0030).
    /// - If only some must, those are tried again here (for up to
    ///   `PARTIAL_RETRY_FOR`, keeping their place). If one still fails on an
    ///   outage (`HandleError::Unavailable`), the whole batch goes back to
    ///   the stage, as above. If some still fail otherwise,
    ///   the others' outputs are published and each of those is stored
    ///   again alone (`Nats-Msg-Id` `retry-<seq>-<index>`,
    ///   so a redelivered batch stores it once), to be retried on its own:
    ///   one message that keeps failing holds up nobody else, and the
    ///   others are not scored twice.
    /// - One that can never be routed is dropped with an error and counted
    ///   as dead-lettered, like a single message.
    async fn route_batch(
        &self,
        batch: AcceptedBatch,
        seq: u64,
    ) -> Result<Vec<Outgoing>, HandleError> {
        let AcceptedBatch { messages, traces } = batch;
        let route_one = |i: usize| {
            let pm = messages[i].clone();
            let span = tracing::info_span!("route", otel.name = "routing route", batch_index = i);
            if let Some(t) = traces.get(i) {
                interop_bus::trace::set_parent_from_fields(&span, &t.fields);
            }
            async move {
                // Each output continues this message's trace, not the
                // batch's (docs/adr/0019).
                let routed = self.route(pm).await;
                let fields = interop_bus::trace::current_fields();
                routed.map(|mut outputs| {
                    for o in &mut outputs {
                        o.trace = Some(fields.clone());
                    }
                    outputs
                })
            }
            .instrument(span)
        };
        let mut routed = futures_util::future::join_all((0..messages.len()).map(route_one)).await;
        // Some routed and some to retry: those are tried again here, a few
        // times, so that they keep their place among their sender's
        // messages (docs/adr/0030); only one that still fails is stored
        // again alone, behind later messages.
        let mut wait = PARTIAL_RETRY_FIRST;
        let since = tokio::time::Instant::now();
        while since.elapsed() < PARTIAL_RETRY_FOR {
            let again: Vec<usize> = (0..routed.len())
                .filter(|&i| routed[i].as_ref().is_err_and(HandleError::is_retry))
                .collect();
            if again.is_empty() || again.len() == routed.len() {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(PARTIAL_RETRY_MAX);
            let results = futures_util::future::join_all(again.iter().map(|&i| route_one(i))).await;
            for (i, r) in again.into_iter().zip(results) {
                routed[i] = r;
            }
        }
        // Nothing routed: a dependency is down; a message to retry makes the
        // whole batch wait for the stage's delay. One still failing on an
        // outage (Redis, spam-scoring) does too, though others were routed:
        // those need less (a receipt needs no Redis), and storing it again
        // alone would put it behind its sender's later messages; the routed
        // ones are routed again with it (their outputs' ids are the same).
        let outage = routed
            .iter()
            .position(|r| matches!(r, Err(HandleError::Unavailable { .. })));
        if let Some(i) = outage {
            // The failure itself (an `Err`): the stage retries the batch.
            return routed.swap_remove(i);
        }
        let none_routed = routed.iter().all(Result::is_err);
        let mut retry_all = None;
        let mut out = Vec::new();
        for (i, (r, pm)) in routed.into_iter().zip(messages).enumerate() {
            match r {
                Ok(o) => out.extend(o),
                Err(HandleError::Permanent(reason)) => {
                    self.dead_lettered.inc();
                    let id = pm.envelope.as_ref().map_or("", |e| e.message_id.as_str());
                    error!(seq, batch_index = i, message_id = id, %reason, "Dead-lettered a message of a batch that can never be routed.");
                }
                Err(retry) if none_routed => {
                    retry_all.get_or_insert(retry);
                }
                Err(retry) => {
                    warn!(seq, batch_index = i, error = %retry, "A message of a batch will be retried alone.");
                    out.push(Outgoing {
                        subject: INGEST_ACCEPTED.to_owned(),
                        msg_id: format!("retry-{seq}-{i}"),
                        payload: Bytes::from(pm.encode_to_vec()),
                        // The sender's trace, as the batch carried it.
                        trace: traces.get(i).map(|t| t.fields.clone()),
                    });
                }
            }
        }
        match retry_all {
            Some(retry) => Err(retry),
            None => Ok(out),
        }
    }

    /// One accepted send.
    async fn route(&self, mut pm: PipelineMessage) -> Result<Vec<Outgoing>, HandleError> {
        let Some(env) = pm.envelope.as_ref() else {
            return Err(HandleError::Permanent("no envelope".into()));
        };
        if pm.verdict.is_none() {
            let verdict = self.scorer.score(pm.clone()).await?;
            if verdict.verdict == Verdict::Reject as i32 {
                let names: Vec<&str> = verdict.signals.iter().map(|s| s.name.as_str()).collect();
                let detail = format!("score {:.1}: {}", verdict.score, names.join(", "));
                self.placements
                    .get_or_create(&PlacementLabel { placement: "spam" })
                    .inc();
                // A group notice is the gateway's, not a message the admin
                // sent: it goes nowhere, with no receipt about an id the
                // admin never saw.
                if group::is_notice(env) {
                    return Ok(Vec::new());
                }
                return Ok(vec![pipeline::receipt_to_sender(
                    env,
                    ReceiptStatus::Failed,
                    RejectCode::Spam,
                    &detail,
                )]);
            }
            pm.verdict = Some(verdict);
        }
        if pm.envelope.as_ref().is_some_and(|e| !e.group_id.is_empty()) {
            return group::fan_out(self, pm).await;
        }
        let env = pm
            .envelope
            .as_ref()
            .ok_or_else(|| HandleError::Permanent("no envelope".into()))?;
        let verdict = pipeline::verdict(&pm);
        let (admission, sender_answered) = self
            .admissions
            .admit(interop_state::contacts::AdmissionAsk {
                recipient: env.to.clone(),
                sender: env.from.clone(),
                sender_provider: pm.sender_provider.clone(),
                reply_state: true,
            })
            .await
            .map_err(retry)?;
        let placement = self.place_counted(admission, verdict);
        let call_answer = group::call_answer(env);
        let msg_id = env.message_id.clone();
        let inbox = match placement {
            Placement::Refuse(_) => {
                return Ok(vec![pipeline::receipt_to_sender(
                    env,
                    ReceiptStatus::Failed,
                    RejectCode::RecipientUnavailable,
                    "recipient unavailable",
                )]);
            }
            Placement::RejectAsSpam => {
                return Ok(vec![pipeline::receipt_to_sender(
                    env,
                    ReceiptStatus::Failed,
                    RejectCode::Spam,
                    "refused as spam",
                )]);
            }
            Placement::Quarantine => {
                pm.route = Some(Route {
                    inbox: Inbox::Unspecified as i32,
                    recipient_key: recipient_key(&env.to),
                });
                return Ok(vec![Outgoing {
                    subject: ROUTING_QUARANTINED.to_owned(),
                    msg_id,
                    payload: Bytes::from(pm.encode_to_vec()),
                    trace: None,
                }]);
            }
            Placement::Deliver(inbox) => inbox,
        };
        // Whoever writes to someone accepts their replies (unless they
        // answered about them already, e.g. blocked them). Read in the
        // admission's round trip: a conversation's later messages need no
        // second one.
        //
        // The writer now accepts the recipient: the recipient's messages to
        // the writer still on their way as requests belong in the writer's
        // inbox, so the writer's sessions hear of it (docs/adr/0018); it
        // leaves with the outputs below. If not announced, those are shown
        // as requests: nothing is shown that the writer refused.
        if !sender_answered
            && self
                .contacts
                .accept_if_unknown(&env.from, &env.to)
                .await
                .map_err(retry)?
                == SetOutcome::Set
        {
            if let Err(e) = interop_bus::admissions::announce_soon(&self.nats, &env.from).await {
                warn!(error = %e, "An implicit acceptance was not announced.");
            }
        }
        let is_media = matches!(env.content, Some(envelope::Content::Media(_)));
        pm.route = Some(Route {
            inbox: inbox as i32,
            recipient_key: recipient_key(&env.to),
        });
        if is_media {
            Ok(vec![Outgoing {
                subject: ROUTING_MEDIA_REQUESTED.to_owned(),
                msg_id,
                payload: Bytes::from(pm.encode_to_vec()),
                trace: None,
            }])
        } else {
            // The sender's other devices' ciphertexts go to the sender's
            // own store, not to the recipient.
            let senders_copy = pipeline::take_sender_copy(&mut pm);
            let mut out = vec![pipeline::to_recipient_store(&pm)];
            out.extend(senders_copy);
            out.extend(call_answer);
            Ok(out)
        }
    }
}
