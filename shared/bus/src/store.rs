//! The recipients' offline store (`INTEROP_INBOX`) at its per-recipient
//! count limit (`--inbox-max-per-recipient`).
//!
//! The store refuses a message for a recipient who already has the limit
//! (`discard_new_per_subject`) instead of dropping the oldest silently.
//! Whoever was refused calls [`make_room`]: the recipient's oldest message
//! is removed, and if no device of the recipient had acked it, its sender
//! first gets an `EXPIRED` receipt. Then the refused publish is made again.
//! So a message pushed out by newer ones ends like one that aged out:
//! delivered, or `EXPIRED` at its sender (docs/adr/0016).

use std::collections::HashMap;

use async_nats::jetstream::{self, message::PublishMessage, stream::LastRawMessageErrorKind};
use futures_util::TryStreamExt;

use interop_proto::v1::{envelope, Envelope, ReceiptStatus, RejectCode};

use crate::subjects::{
    DELIVERY_ACKED_PREFIX, DELIVERY_QUEUED_PREFIX, STREAM_CURSORS, STREAM_INBOX,
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The detail of an `EXPIRED` receipt for a message pushed out by newer
/// ones.
pub const PUSHED_OUT: &str = "pushed out of the recipient's offline store by newer messages";

/// How many stores one [`make_room`] may have to make room in: an
/// `EXPIRED` receipt can meet its own recipient's full store, and so on.
const MAX_DEPTH: usize = 4;

/// Whether a publish was refused because its recipient's store is full.
pub fn is_store_full(error: &dyn std::fmt::Display) -> bool {
    error
        .to_string()
        .contains("maximum messages per subject exceeded")
}

/// What [`make_room`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// The oldest message was removed; its sender was told it expired.
    RemovedExpired,
    /// The oldest message was removed; a device had it already (or it was a
    /// receipt, which gets no receipt).
    Removed,
    /// Nothing to remove (another replica made room meanwhile).
    Nothing,
}

/// Makes room for one message in the store subject `subject`
/// (`interop.v1.delivery.queued.<key>`): removes its oldest message, after
/// telling that message's sender it expired if no device acked it.
pub async fn make_room(js: &jetstream::Context, subject: &str) -> Result<Room, BoxError> {
    make_room_at(js, subject, 0).await
}

fn make_room_at<'a>(
    js: &'a jetstream::Context,
    subject: &'a str,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Room, BoxError>> + Send + 'a>> {
    Box::pin(async move {
        let inbox = js.get_stream_no_info(STREAM_INBOX).await?;
        let oldest = match inbox.get_first_raw_message_by_subject(subject, 0).await {
            Ok(m) => m,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
                return Ok(Room::Nothing)
            }
            Err(e) => return Err(e.into()),
        };
        let seq = oldest.sequence;
        let mut room = Room::Removed;
        if let Some(original) = needs_expired(&oldest.payload) {
            let key = subject
                .strip_prefix(DELIVERY_QUEUED_PREFIX)
                .and_then(|k| k.strip_prefix('.'))
                .unwrap_or_default();
            let cursors = js.get_stream_no_info(STREAM_CURSORS).await?;
            if highest_cursor(&cursors, key).await? < seq {
                let r = crate::pipeline::receipt_to_sender(
                    &original,
                    ReceiptStatus::Expired,
                    RejectCode::Unspecified,
                    PUSHED_OUT,
                );
                loop {
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert("Nats-Msg-Id", r.msg_id.as_str());
                    let publish = PublishMessage::build()
                        .payload(r.payload.clone())
                        .headers(headers);
                    match js.send_publish(r.subject.clone(), publish).await?.await {
                        Ok(_) => break,
                        Err(e) if is_store_full(&e) && depth < MAX_DEPTH => {
                            make_room_at(js, &r.subject, depth + 1).await?;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                room = Room::RemovedExpired;
            }
        }
        match inbox.delete_message(seq).await {
            Ok(_) => Ok(room),
            // Removed meanwhile (another replica, the age limit).
            Err(e) if e.to_string().contains("no message found") => Ok(room),
            Err(e) => Err(e.into()),
        }
    })
}

/// The stored message as its sender's receipt needs it (without content),
/// if it is one that gets an `EXPIRED` receipt: not a receipt, not a call
/// attempt (routing answered those), not undecodable.
fn needs_expired(payload: &[u8]) -> Option<Envelope> {
    let env = crate::pipeline::decode(payload).ok()?.envelope?;
    if matches!(
        env.content,
        Some(envelope::Content::Receipt(_)) | Some(envelope::Content::Call(_))
    ) {
        return None;
    }
    Some(Envelope {
        content: None,
        ..env
    })
}

/// The furthest cursor of any device of the recipient `key` (0 = none):
/// every message at or before it was acked by some device.
pub async fn highest_cursor<I>(
    cursors: &jetstream::stream::Stream<I>,
    key: &str,
) -> Result<u64, BoxError> {
    let filter = format!("{DELIVERY_ACKED_PREFIX}.{key}.*");
    let subjects: HashMap<String, usize> = cursors
        .info_with_subjects(&filter)
        .await?
        .try_collect()
        .await?;
    let mut highest = 0;
    for subject in subjects.keys() {
        match cursors.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let cursor = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                highest = highest.max(cursor);
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(highest)
}
