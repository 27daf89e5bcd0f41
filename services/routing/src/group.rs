//! Group fan-out and call attempts.
//!
//! A message with `group_id` goes to every member but the sender: each copy
//! has `to` = the member, passes the same per-recipient admission as a
//! one-to-one message ([`Router::admit`]), and is published with a per-member deduplication id
//! (`<message id>:<member key>`), so a redelivered input stores nothing
//! twice. Blocks, declines and message requests apply per member through
//! [`Router::admit`]; a REJECT verdict answers the sender once (`SPAM`). A member who is not admitted gets nothing, and the sender gets no
//! receipt about it (that would tell who blocked them).
//!
//! A group change (`GroupChange`, written by ingest after `CreateGroup` or
//! `ChangeGroup`) goes to the members it lists (the group after the change)
//! and to those it removed, through the same admission.
//!
//! A call attempt reaches the recipient (delivery shows it as a notice) and
//! the caller gets a `FAILED` receipt with `CALLS_NOT_SUPPORTED`.

use bytes::Bytes;
use prost::Message as _;

use interop_bus::subjects::ROUTING_MEDIA_REQUESTED;
use interop_bus::{pipeline, recipient_key, HandleError, Outgoing};
use interop_proto::v1::{envelope, Envelope, PipelineMessage, ReceiptStatus, RejectCode, Route};

use crate::router::{retry, Placement, Router};

/// The caller's answer to a call attempt, if `env` is one.
pub(crate) fn call_answer(env: &Envelope) -> Option<Outgoing> {
    matches!(env.content, Some(envelope::Content::Call(_))).then(|| {
        pipeline::receipt_to_sender(
            env,
            ReceiptStatus::Failed,
            RejectCode::CallsNotSupported,
            "calls don't work across providers; the recipient was told",
        )
    })
}

/// Whether `env` is the gateway's notice of a group change.
pub(crate) fn is_notice(env: &Envelope) -> bool {
    matches!(env.content, Some(envelope::Content::GroupChange(_)))
}

pub(crate) async fn fan_out(
    router: &Router,
    pm: PipelineMessage,
) -> Result<Vec<Outgoing>, HandleError> {
    let env = pm
        .envelope
        .as_ref()
        .ok_or_else(|| HandleError::Permanent("no envelope".into()))?;
    let members = match &env.content {
        Some(envelope::Content::GroupChange(c)) => {
            let mut to: Vec<String> = c.members.iter().chain(&c.removed).cloned().collect();
            to.sort();
            to.dedup();
            to
        }
        _ => router
            .groups
            .members(&env.group_id)
            .await
            .map_err(crate::router::retry)?,
    };
    let is_media = matches!(env.content, Some(envelope::Content::Media(_)));
    let verdict = pipeline::verdict(&pm);
    let members: Vec<String> = members.into_iter().filter(|m| *m != env.from).collect();
    // The checks run concurrently (their Redis calls share one pipelined
    // connection); the copies are published in member order.
    let placements = futures_util::future::try_join_all(
        members
            .iter()
            .map(|m| router.admit(m, &env.from, &pm.sender_provider, verdict)),
    )
    .await
    .map_err(retry)?;
    let mut out = Vec::with_capacity(members.len());
    let mut calls_answered = false;
    let mut spam_answered = false;
    for (member, placement) in members.into_iter().zip(placements) {
        let inbox = match placement {
            Placement::Deliver(inbox) => inbox,
            Placement::RejectAsSpam => {
                // The verdict is about the message: one answer, not one per
                // member; none for the gateway's notice.
                if !spam_answered && !is_notice(env) {
                    out.push(pipeline::receipt_to_sender(
                        env,
                        ReceiptStatus::Failed,
                        RejectCode::Spam,
                        "refused as spam",
                    ));
                    spam_answered = true;
                }
                continue;
            }
            // Refused (consent, declined, blocked) or held: nothing, and no
            // receipt that would tell the sender who refused them.
            Placement::Refuse(_) | Placement::Quarantine => continue,
        };
        let mut copy = pm.clone();
        let Some(e) = copy.envelope.as_mut() else {
            continue;
        };
        e.to = member;
        copy.route = Some(Route {
            inbox: inbox as i32,
            recipient_key: recipient_key(&e.to),
        });
        if is_media {
            out.push(Outgoing {
                subject: ROUTING_MEDIA_REQUESTED.to_owned(),
                msg_id: pipeline::copy_id(e),
                payload: Bytes::from(copy.encode_to_vec()),
                trace: None,
            });
        } else {
            if !calls_answered {
                if let Some(answer) = call_answer(e) {
                    out.push(answer);
                    calls_answered = true;
                }
            }
            out.push(pipeline::to_recipient_store(&copy));
        }
    }
    Ok(out)
}
