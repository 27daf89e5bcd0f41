//! Handler of `interop.v1.spam-scoring.scored`.
//!
//! Input: `PipelineMessage` {envelope, verdict}. Output, one of:
//! - `interop.v1.delivery.queued.<key>`: the message with `route` set;
//! - `interop.v1.routing.media-requested`: the same, for media content;
//! - a FAILED receipt (`RECIPIENT_UNAVAILABLE`) into the sender's store.
//!
//! Nats-Msg-Id is the server message id, so a redelivered input is stored once.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;

use interop_bus::subjects::ROUTING_MEDIA_REQUESTED;
use interop_bus::{pipeline, recipient_key, HandleError, Handler, Input, Outgoing};
use interop_proto::v1::{envelope, Inbox, ReceiptStatus, RejectCode, Route};
use interop_state::ConsentStore;

pub struct Router {
    consent: ConsentStore,
    pub(crate) groups: interop_state::GroupStore,
}

impl Router {
    pub fn new(redis: redis::aio::ConnectionManager) -> Self {
        Self {
            consent: ConsentStore::new(redis.clone()),
            groups: interop_state::GroupStore::new(redis),
        }
    }

    /// Per-recipient admission: may this message reach `to`? Used for
    /// one-to-one messages and for each member of a group.
    pub(crate) async fn admits(
        &self,
        to: &str,
        pm: &interop_proto::v1::PipelineMessage,
    ) -> Result<bool, HandleError> {
        self.consent
            .admits(to, &pm.sender_provider)
            .await
            .map_err(|e| HandleError::Retry {
                reason: e.to_string(),
                after: Duration::from_millis(500),
            })
    }
}

impl Handler for Router {
    async fn handle(&self, input: Input<'_>) -> Result<Vec<Outgoing>, HandleError> {
        let mut pm = pipeline::decode(input.payload)?;
        if pm.envelope.as_ref().is_some_and(|e| !e.group_id.is_empty()) {
            return crate::group::fan_out(self, pm).await;
        }
        let env = pm
            .envelope
            .as_ref()
            .ok_or_else(|| HandleError::Permanent("no envelope".into()))?;
        let admitted = self.admits(&env.to, &pm).await?;
        if !admitted {
            return Ok(vec![pipeline::receipt_to_sender(
                env,
                ReceiptStatus::Failed,
                RejectCode::RecipientUnavailable,
                "recipient unavailable",
            )]);
        }
        let call_answer = crate::group::call_answer(env);
        let is_media = matches!(env.content, Some(envelope::Content::Media(_)));
        let msg_id = env.message_id.clone();
        pm.route = Some(Route {
            inbox: Inbox::ThirdParty as i32,
            recipient_key: recipient_key(&env.to),
        });
        if is_media {
            Ok(vec![Outgoing {
                subject: ROUTING_MEDIA_REQUESTED.to_owned(),
                msg_id,
                payload: Bytes::from(pm.encode_to_vec()),
            }])
        } else {
            let mut out = vec![pipeline::to_recipient_store(&pm)];
            out.extend(call_answer);
            Ok(out)
        }
    }
}
