//! Helpers for pipeline events: decoding, routing a message to a recipient's
//! store, and the receipts the gateway itself writes.

use bytes::Bytes;
use prost::Message as _;

use async_nats::HeaderMap;
use interop_proto::v1::{
    envelope, AcceptedBatch, Envelope, PipelineMessage, Receipt, ReceiptStatus, RejectCode, Verdict,
};

use crate::handling::{HandleError, Outgoing};
use crate::recipient_key;
use crate::subjects::delivery_queued;

/// Decodes a pipeline event. A payload that does not decode can never be
/// handled, so it is a permanent failure.
pub fn decode(payload: &[u8]) -> Result<PipelineMessage, HandleError> {
    let pm = PipelineMessage::decode(payload)
        .map_err(|e| HandleError::Permanent(format!("undecodable pipeline message: {e}")))?;
    if pm.envelope.is_none() {
        return Err(HandleError::Permanent(
            "pipeline message without envelope".into(),
        ));
    }
    Ok(pm)
}

/// The header that marks an `interop.v1.ingest.accepted` message as an
/// [`AcceptedBatch`] (its value: how many messages it holds). Without it the
/// payload is one [`PipelineMessage`] (docs/adr/0019).
pub const BATCH_HEADER: &str = "Interop-Batch";

/// Whether a stream message with these headers is an [`AcceptedBatch`].
pub fn is_batch(headers: Option<&HeaderMap>) -> bool {
    headers.is_some_and(|h| h.get(BATCH_HEADER).is_some())
}

/// Decodes an [`AcceptedBatch`]. One that does not decode can never be
/// handled: a permanent failure (its messages are not lost silently: the
/// stage logs it as dead-lettered).
pub fn decode_batch(payload: &[u8]) -> Result<AcceptedBatch, HandleError> {
    AcceptedBatch::decode(payload)
        .map_err(|e| HandleError::Permanent(format!("undecodable accepted batch: {e}")))
}

/// The spam verdict `pm` carries: `ALLOW` when it has none (not scored, or
/// an unknown value), so the admission alone decides.
pub fn verdict(pm: &PipelineMessage) -> Verdict {
    pm.verdict
        .as_ref()
        .and_then(|v| Verdict::try_from(v.verdict).ok())
        .unwrap_or(Verdict::Allow)
}

/// Publishes `pm` into its recipient's store, deduplicated by message id
/// (per member for a group message: see [`copy_id`]).
pub fn to_recipient_store(pm: &PipelineMessage) -> Outgoing {
    let env = pm.envelope.as_ref();
    let to = env.map_or("", |e| e.to.as_str());
    Outgoing {
        subject: delivery_queued(&recipient_key(to)),
        msg_id: env.map(copy_id).unwrap_or_default(),
        payload: Bytes::from(pm.encode_to_vec()),
        trace: None,
    }
}

/// The deduplication id of one recipient's copy of a message: the message
/// id, and for a group message (one message id, one copy per member) the
/// member's key after it.
pub fn copy_id(env: &Envelope) -> String {
    if env.group_id.is_empty() {
        env.message_id.clone()
    } else {
        format!("{}:{}", env.message_id, recipient_key(&env.to))
    }
}

/// A receipt about `original`, addressed to its sender: "from" the original
/// recipient, with the original's encryption level. Deduplicated per status
/// and copy (`receipt-<STATUS>-<copy id>`): one receipt of each status per
/// recipient, however many devices or retries.
pub fn receipt_to_sender(
    original: &Envelope,
    status: ReceiptStatus,
    code: RejectCode,
    detail: &str,
) -> Outgoing {
    let receipt = Envelope {
        message_id: uuid::Uuid::now_v7().to_string(),
        client_message_id: String::new(),
        from: original.to.clone(),
        to: original.from.clone(),
        encryption: original.encryption,
        sent_at_ms: 0,
        accepted_at_ms: interop_proto::now_ms(),
        in_reply_to: String::new(),
        sender_info: None,
        group_id: original.group_id.clone(),
        content: Some(envelope::Content::Receipt(Receipt {
            message_id: original.message_id.clone(),
            client_message_id: original.client_message_id.clone(),
            status: status as i32,
            code: code as i32,
            detail: detail.to_owned(),
        })),
        ..Default::default()
    };
    let pm = PipelineMessage {
        envelope: Some(receipt),
        ..Default::default()
    };
    Outgoing {
        subject: delivery_queued(&recipient_key(&original.from)),
        msg_id: format!("receipt-{}-{}", status.as_str_name(), copy_id(original)),
        payload: Bytes::from(pm.encode_to_vec()),
        trace: None,
    }
}

/// Whether the envelope is itself a receipt (receipts get no receipts).
pub fn is_receipt(env: &Envelope) -> bool {
    matches!(env.content, Some(envelope::Content::Receipt(_)))
}
