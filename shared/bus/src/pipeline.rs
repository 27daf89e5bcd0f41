//! Helpers for pipeline events: decoding, routing a message to a recipient's
//! store, and the receipts the gateway itself writes.

use bytes::Bytes;
use prost::Message as _;

use async_nats::HeaderMap;
use interop_proto::v1::{
    envelope, AcceptedBatch, Envelope, PipelineMessage, Receipt, ReceiptStatus, RejectCode, Verdict,
};

use crate::handling::{HandleError, Outgoing};
use crate::subjects::delivery_queued;
use crate::{recipient_key, recipient_path};

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
        subject: delivery_queued(&recipient_path(to)),
        msg_id: env.map(copy_id).unwrap_or_default(),
        payload: Bytes::from(pm.encode_to_vec()),
        trace: None,
    }
}

pub use interop_proto::ciphertext_mut;

/// Takes the sender's other devices' ciphertexts (`sender_devices`) out of
/// `pm`, so the recipient's copy goes without them, and returns the copy
/// for the sender's own store: the same message with them as `devices`,
/// deduplicated as `sync-<message id>`. `None` when there are none.
pub fn take_sender_copy(pm: &mut PipelineMessage) -> Option<Outgoing> {
    let env = pm.envelope.as_mut()?;
    let c = ciphertext_mut(env)?;
    if c.sender_devices.is_empty() {
        return None;
    }
    let mine = std::mem::take(&mut c.sender_devices);
    let mut copy = pm.clone();
    let env = copy.envelope.as_mut()?;
    let c = ciphertext_mut(env)?;
    c.devices = mine;
    copy.route = Some(interop_proto::v1::Route {
        inbox: interop_proto::v1::Inbox::Unspecified as i32,
        recipient_key: recipient_key(&env.from),
    });
    Some(Outgoing {
        subject: delivery_queued(&recipient_path(&env.from)),
        msg_id: format!("sync-{}", env.message_id),
        payload: Bytes::from(copy.encode_to_vec()),
        trace: None,
    })
}

/// Whether a stored message is in its own sender's store (a copy for their
/// other devices, [`take_sender_copy`]): it gets no receipts.
pub fn in_senders_store(env: &Envelope, store_key: &str) -> bool {
    recipient_key(&env.from) == store_key
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
        subject: delivery_queued(&recipient_path(&original.from)),
        msg_id: format!("receipt-{}-{}", status.as_str_name(), copy_id(original)),
        payload: Bytes::from(pm.encode_to_vec()),
        trace: None,
    }
}

/// Whether the envelope is itself a receipt (receipts get no receipts).
pub fn is_receipt(env: &Envelope) -> bool {
    matches!(env.content, Some(envelope::Content::Receipt(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::v1::{Ciphertext, DeviceCiphertext, Edit};

    fn device(id: &str, byte: u8) -> DeviceCiphertext {
        DeviceCiphertext {
            device_id: id.into(),
            payload: vec![byte].into(),
        }
    }

    fn pm(content: envelope::Content) -> PipelineMessage {
        PipelineMessage {
            envelope: Some(Envelope {
                message_id: "m1".into(),
                from: "home:bob".into(),
                to: "signal:alice".into(),
                content: Some(content),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_senders_devices_get_their_own_copy_and_the_recipient_none_of_it() {
        let c = Ciphertext {
            scheme: "olm.v1".into(),
            devices: vec![device("phone", 1)],
            sender_devices: vec![device("laptop", 2)],
            ..Default::default()
        };
        for content in [
            envelope::Content::Ciphertext(c.clone()),
            envelope::Content::Edit(Edit {
                target_message_id: "m0".into(),
                ciphertext: Some(c.clone()),
                ..Default::default()
            }),
        ] {
            let mut recipients = pm(content);
            let out = take_sender_copy(&mut recipients).expect("a copy for the sender");
            assert_eq!(out.subject, delivery_queued(&recipient_path("home:bob")));
            assert_eq!(out.msg_id, "sync-m1");
            let mut env = recipients.envelope.unwrap();
            let theirs = ciphertext_mut(&mut env).unwrap();
            assert!(theirs.sender_devices.is_empty());
            assert_eq!(theirs.devices, vec![device("phone", 1)]);
            let mut copy = decode(&out.payload).unwrap().envelope.unwrap();
            assert!(in_senders_store(&copy, &recipient_key("home:bob")));
            assert!(!in_senders_store(&copy, &recipient_key("signal:alice")));
            let mine = ciphertext_mut(&mut copy).unwrap();
            assert_eq!(mine.devices, vec![device("laptop", 2)]);
            assert!(mine.sender_devices.is_empty());
        }
        // Without sender devices: nothing to copy, nothing changed.
        let mut plain = pm(envelope::Content::Ciphertext(Ciphertext {
            sender_devices: vec![],
            ..c
        }));
        let before = plain.clone();
        assert!(take_sender_copy(&mut plain).is_none());
        assert_eq!(plain, before);
    }
}
