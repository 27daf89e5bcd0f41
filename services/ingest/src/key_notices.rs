//! The key directory's notices (`KeyNotice`, docs/adr/0026): stored straight
//! into the recipient's store (`interop.v1.delivery.queued.<key>`, like the
//! gateway's receipts), so every device of the recipient gets each one and
//! acks it like a message; nothing to score or route.
//!
//! - **Keys running low**, to the owner (`from` = `to` = the owner): after a
//!   fetch left a device's one-time prekeys or KeyPackages under 10. One per
//!   device pool and top-up within the inbox's duplicate window (its
//!   `Nats-Msg-Id` names the pool and what the device had published), so a
//!   storm of fetches of a drained device sends one, not thousands.
//! - **A contact's keys changed**, to each user who fetched the keys of the
//!   user whose device was added, removed or got another identity key
//!   (`interop_state::key_watchers`), from that user. Only to watchers
//!   whose provider may still see the user's keys (the fetch rule: their
//!   own provider, or opted in and allowed), and not between two users
//!   where either blocked the other.
//!
//! A notice that cannot be stored is logged and dropped: it is advice (apps
//! also notice a changed key when they next fetch or decrypt), and the
//! frame that caused it has already been answered.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use tracing::{debug, warn};

use interop_bus::subjects::delivery_queued;
use interop_bus::{recipient_key, recipient_path};
use interop_keys::{LowPool, Pool};
pub(crate) use interop_proto::v1::key_notice::Kind;
use interop_proto::v1::{
    envelope, DeviceKeys, Encryption, Envelope, KeyNotice, PipelineMessage, StoredDevice,
};
use interop_proto::Address;
use interop_state::{key_watchers, keys, ConsentStore, ContactState, ContactStore};

use crate::Shared;

/// The notice as a stored message, and its deduplication id.
fn stored(from: &str, to: &str, notice: KeyNotice) -> (String, Bytes) {
    let message_id = uuid::Uuid::now_v7().to_string();
    let pm = PipelineMessage {
        envelope: Some(Envelope {
            message_id: message_id.clone(),
            from: from.to_owned(),
            to: to.to_owned(),
            encryption: Encryption::TransportOnly as i32,
            accepted_at_ms: interop_proto::now_ms(),
            content: Some(envelope::Content::KeyNotice(notice)),
            ..Default::default()
        }),
        ..Default::default()
    };
    (message_id, Bytes::from(pm.encode_to_vec()))
}

/// Stores notices (recipient, dedup id, payload), all published before any
/// ack is awaited; returns how many were stored.
async fn store(shared: &Shared, notices: Vec<(String, String, Bytes)>) -> usize {
    let mut acks = Vec::with_capacity(notices.len());
    for (to, msg_id, payload) in notices {
        let subject = delivery_queued(&recipient_path(&to));
        // Not into a store full of undelivered messages (docs/adr/0027).
        let admitted = match interop_bus::store::admit(&shared.js, &subject).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                warn!("Cannot store a key notice: its recipient's store is full of undelivered messages.");
                continue;
            }
            Err(e) => {
                warn!(error = %e, "Cannot store a key notice.");
                continue;
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        match shared
            .js
            .publish_with_headers(subject, headers, payload)
            .await
        {
            Ok(ack) => acks.push((ack, admitted)),
            Err(e) => warn!(error = %e, "Cannot store a key notice."),
        }
    }
    let mut stored = 0;
    for (ack, _admitted) in acks {
        match ack.await {
            Ok(_) => stored += 1,
            Err(e) => warn!(error = %e, "Cannot store a key notice."),
        }
    }
    stored
}

/// Tells `owner` about the pools a fetch left low. In the background: the
/// fetch's answer does not wait for it.
pub(crate) fn tell_owner(shared: &Arc<Shared>, owner: &Address, low: Vec<LowPool>) {
    if low.is_empty() {
        return;
    }
    let owner = owner.as_str().to_owned();
    let ukey = recipient_key(&owner);
    let notices = low
        .into_iter()
        .map(|l| {
            let (kind, pool) = match l.pool {
                Pool::OneTimePrekeys => (Kind::OneTimePrekeysLow, "otk"),
                Pool::KeyPackages => (Kind::KeyPackagesLow, "kp"),
            };
            let (_, payload) = stored(
                &owner,
                &owner,
                KeyNotice {
                    kind: kind as i32,
                    device_id: l.device_id.clone(),
                    left: l.left,
                },
            );
            let msg_id = format!("keys-low.{ukey}.{}.{pool}.{}", l.device_id, l.generation);
            (owner.clone(), msg_id, payload)
        })
        .collect::<Vec<_>>();
    let shared2 = shared.clone();
    shared.sessions.spawn(async move {
        store(&shared2, notices).await;
    });
}

/// Records, in the background, that `requester` fetched `owner`'s keys.
pub(crate) fn record_fetch(shared: &Arc<Shared>, owner: &Address, requester: &Address) {
    if owner == requester {
        return;
    }
    let (owner, requester) = (owner.as_str().to_owned(), requester.as_str().to_owned());
    let shared2 = shared.clone();
    shared.sessions.spawn(async move {
        if let Err(e) =
            key_watchers::record(&shared2.redis, &owner, &requester, interop_proto::now_ms()).await
        {
            warn!(error = %e, "Cannot record a key fetch; its requester may miss a key notice.");
        }
    });
}

/// What a publish changed about a device, for the users who fetched the
/// owner's keys: a new device, or other identity keys (the Curve25519
/// identity key or the Ed25519 signing key) than before.
pub(crate) fn change_of(before: Option<&StoredDevice>, after: &DeviceKeys) -> Option<Kind> {
    let Some(keys) = before.and_then(|d| d.keys.as_ref()) else {
        return Some(Kind::DeviceAdded);
    };
    (keys.identity_key != after.identity_key || keys.signing_key != after.signing_key)
        .then_some(Kind::IdentityKeyChanged)
}

/// Tells everyone who fetched `user`'s keys that `device_id` changed, in
/// the background.
pub(crate) fn tell_watchers(shared: &Arc<Shared>, user: &Address, kind: Kind, device_id: &str) {
    let (user, device_id) = (user.clone(), device_id.to_owned());
    let shared2 = shared.clone();
    shared.sessions.spawn(async move {
        notify_watchers(&shared2, &user, kind, &device_id).await;
    });
}

async fn notify_watchers(shared: &Shared, user: &Address, kind: Kind, device_id: &str) {
    let watchers = match key_watchers::list(&shared.redis, user.as_str()).await {
        Ok(w) => w,
        Err(e) => {
            warn!(error = %e, "Cannot read who fetched a user's keys; no key notices sent.");
            return;
        }
    };
    if watchers.is_empty() {
        return;
    }
    let consent = match ConsentStore::new(shared.records.clone())
        .get(user.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "Cannot read consent; no key notices sent.");
            return;
        }
    };
    let watchers: Vec<Address> = watchers
        .iter()
        .filter_map(|w| Address::parse(w).ok())
        .filter(|w| w.provider() == user.provider() || consent.admits(w.provider()))
        .collect();
    // Blocks either way, in one round trip (once every record is cached).
    let mut users: Vec<&str> = watchers.iter().map(Address::as_str).collect();
    users.push(user.as_str());
    if let Err(e) = ContactStore::new(shared.records.clone())
        .ensure_cached(&users)
        .await
    {
        warn!(error = %e, "Cannot read blocks; no key notices sent.");
        return;
    }
    let mut pipe = redis::pipe();
    for w in &watchers {
        pipe.cmd("HGET")
            .arg(keys::contacts(user.as_str()))
            .arg(w.as_str());
        pipe.cmd("HGET")
            .arg(keys::contacts(w.as_str()))
            .arg(user.as_str());
    }
    let mut conn = shared.redis.clone();
    let answers: Vec<Option<String>> = match pipe.query_async(&mut conn).await {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "Cannot read blocks; no key notices sent.");
            return;
        }
    };
    let blocked = |a: &Option<String>| {
        a.as_deref().and_then(ContactState::from_field) == Some(ContactState::Blocked)
    };
    let notices: Vec<(String, String, Bytes)> = watchers
        .iter()
        .zip(answers.chunks(2))
        .filter(|(_, pair)| !pair.iter().any(blocked))
        .map(|(w, _)| {
            let (message_id, payload) = stored(
                user.as_str(),
                w.as_str(),
                KeyNotice {
                    kind: kind as i32,
                    device_id: device_id.to_owned(),
                    left: 0,
                },
            );
            (w.as_str().to_owned(), message_id, payload)
        })
        .collect();
    let n = store(shared, notices).await;
    debug!(
        notices = n,
        kind = kind.as_str_name(),
        "Told users who fetched a user's keys that they changed."
    );
}
