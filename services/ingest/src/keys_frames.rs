//! The key-directory frames (docs/protocol.md, "End-to-end encryption: the
//! key directory"; docs/adr/0025). Each is answered right away; none goes
//! through the pipeline.
//!
//! - `PublishKeys{user, device, one_time_prekeys, key_packages}`: the user's
//!   own provider, for a user who opted in → `KeysPublished`.
//! - `ListDevices{requester, user}` → `DeviceList`.
//! - `FetchBundles{requester, user, device_ids}` → `Bundles`, each claiming
//!   one one-time prekey.
//! - `FetchKeyPackages{requester, users}` → `KeyPackages`.
//! - `RemoveDevice{user, device_id}`: own provider → `DeviceList`.
//!
//! **Discovery follows consent.** A user's keys are visible to their own
//! provider, and to another provider only while the user is opted in and
//! allows it. Otherwise the answer is `RECIPIENT_UNAVAILABLE` with the same
//! detail as for a user nobody knows, so a provider cannot tell the cases
//! apart. Fetches count against the requesting provider's and the
//! requesting user's key-fetch rate limits (their own GCRA buckets, apart
//! from the send limits), so nobody can drain a user's one-time prekeys
//! faster than those allow.

use std::sync::Arc;

use tracing::warn;

use interop_keys::KeysError;
use interop_proto::keys::MAX_KEY_PACKAGE_USERS;
use interop_proto::v1::{
    server_frame, Bundles, DeviceInfo, DeviceList, FetchBundles, FetchKeyPackages, KeyPackages,
    KeysPublished, ListDevices, PublishKeys, RejectCode, RemoveDevice,
};
use interop_proto::Address;
use interop_state::gcra;
use interop_state::ConsentStore;

use crate::key_notices::{self, Kind};
use crate::send::{answer, checks, rate_limited, reject, unavailable, Prepared};
use crate::validate::{validate_own_user, Rejection};
use crate::Shared;

/// The one answer for a user whose keys the requester may not see, whatever
/// the reason (unknown, not opted in, provider not allowed).
const NOT_VISIBLE: &str = "the user is not reachable from this provider";

fn not_visible() -> Rejection {
    Rejection::new(RejectCode::RecipientUnavailable, NOT_VISIBLE)
}

fn directory_error(request_id: u64, e: KeysError) -> Prepared {
    match e {
        KeysError::Rejected(r) => reject(request_id, "", Rejection::new(r.code, r.detail)),
        KeysError::Unavailable(e) => {
            warn!(error = %e, "The key directory is unavailable.");
            reject(request_id, "", unavailable("the key directory"))
        }
    }
}

/// Counts one fetch (of `cost` users) against the requester's provider's
/// and the requester's key-fetch limits; the refusal if either is spent.
async fn fetch_allowed(
    shared: &Shared,
    provider: &str,
    requester: &Address,
    cost: usize,
) -> Result<(), Rejection> {
    let (p, u) = (shared.key_fetch_provider_limit, shared.key_fetch_user_limit);
    // One token per user fetched: a fetch of several users is that many
    // checks in one round trip.
    let mut pipe = redis::pipe();
    for _ in 0..cost.max(1) {
        pipe.invoke_script(
            gcra::GCRA
                .key(interop_state::keys::gcra_key_fetch_provider(provider))
                .key(interop_state::keys::gcra_key_fetch_user(requester.as_str()))
                .arg(format!("{:.3}", p.interval_ms()))
                .arg(p.burst)
                .arg(format!("{:.3}", u.interval_ms()))
                .arg(u.burst),
        );
    }
    let rates: Vec<(i64, i64, i64)> = checks(shared, &pipe).await.map_err(|e| {
        warn!(error = %e, "Redis unavailable; refusing key fetches.");
        unavailable("state storage")
    })?;
    match rates.into_iter().find_map(rate_limited) {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// Whether `provider` may see `user`'s keys: its own user, or one who opted
/// in and allows it.
async fn visible(shared: &Shared, provider: &str, user: &Address) -> Result<bool, Rejection> {
    if user.provider() == provider {
        return Ok(true);
    }
    let consent = ConsentStore::new(shared.records.clone())
        .get(user.as_str())
        .await
        .map_err(|e| {
            warn!(error = %e, "Cannot read consent for a key fetch.");
            unavailable("the consent registry")
        })?;
    Ok(consent.admits(provider))
}

/// The requester (a user of `provider`) and the target of a fetch, once the
/// requester may ask and the target is visible; the rejection otherwise.
async fn fetch_target(
    shared: &Shared,
    provider: &str,
    requester: &str,
    user: &str,
) -> Result<(Address, Address), Rejection> {
    let requester = validate_own_user(provider, requester)?;
    if user.is_empty() {
        return Err(Rejection::new(RejectCode::MissingField, "user is required"));
    }
    let user = Address::parse(user)
        .map_err(|e| Rejection::new(RejectCode::InvalidAddress, format!("user: {e}")))?;
    fetch_allowed(shared, provider, &requester, 1).await?;
    if !visible(shared, provider, &user).await? {
        return Err(not_visible());
    }
    Ok((requester, user))
}

/// `PublishKeys`. A new device or a changed identity key is then told to
/// the users who fetched this user's keys (`key_notices`).
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    provider: &str,
    request_id: u64,
    p: PublishKeys,
) -> Prepared {
    let user = match validate_own_user(provider, &p.user) {
        Ok(u) => u,
        Err(r) => return reject(request_id, "", r),
    };
    match ConsentStore::new(shared.records.clone())
        .get(user.as_str())
        .await
    {
        Ok(c) if c.opted_in => {}
        Ok(_) => {
            return reject(
                request_id,
                "",
                Rejection::new(
                    RejectCode::NotOptedIn,
                    "the user has not opted in to interoperability (SetConsent)",
                ),
            )
        }
        Err(e) => {
            warn!(error = %e, "Cannot read consent for a key publish.");
            return reject(request_id, "", unavailable("the consent registry"));
        }
    }
    let device_id = p
        .device
        .as_ref()
        .map(|d| d.device_id.clone())
        .unwrap_or_default();
    // The device as it was, to tell what the publish changes. A publish
    // racing another of the same device may misjudge that; both are told.
    let before = match shared.keys.devices(user.as_str()).await {
        Ok(devices) => devices
            .into_iter()
            .find(|d| d.keys.as_ref().is_some_and(|k| k.device_id == device_id)),
        Err(e) => return directory_error(request_id, e),
    };
    match shared.keys.publish(user.as_str(), &p).await {
        Ok(counts) => {
            let change = p
                .device
                .as_ref()
                .and_then(|after| key_notices::change_of(before.as_ref(), after));
            if let Some(kind) = change {
                key_notices::tell_watchers(shared, &user, kind, &device_id);
            }
            answer(
                request_id,
                server_frame::Frame::KeysPublished(KeysPublished {
                    user: p.user,
                    device_id,
                    one_time_prekeys: counts.one_time_prekeys,
                    key_packages: counts.key_packages,
                }),
            )
        }
        Err(e) => directory_error(request_id, e),
    }
}

/// Key transparency's proof that `devices` (all of `user`'s) hold the
/// committed identity keys; `None` without key transparency, for a user
/// without devices, or when the directory cannot answer (the client then
/// refuses the keys, typed: docs/adr/0029).
async fn transparency_proof(
    shared: &Shared,
    user: &Address,
    devices: Vec<interop_proto::v1::StoredDevice>,
) -> Option<interop_proto::v1::TransparencyProof> {
    let kt = shared.transparency.as_ref()?;
    if devices.is_empty() {
        return None;
    }
    let value = interop_transparency::epoch::value_of(&interop_proto::v1::StoredDevices {
        devices,
        user: user.as_str().to_owned(),
    });
    match kt.prove(user.as_str(), &value).await {
        Ok(p) => Some(p),
        Err(e) => {
            warn!(error = %e, "Cannot prove a user's keys; the answer carries no transparency proof.");
            None
        }
    }
}

/// The device list answer; pool counts only for the user's own provider.
async fn device_list(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    user: &Address,
    devices: Vec<interop_proto::v1::StoredDevice>,
) -> Prepared {
    let own = user.provider() == provider;
    let transparency = transparency_proof(shared, user, devices.clone()).await;
    let mut out = Vec::with_capacity(devices.len());
    for d in devices {
        let Some(keys) = d.keys else { continue };
        let counts = if own {
            match shared
                .keys
                .pool_counts(user.as_str(), &keys.device_id)
                .await
            {
                Ok(c) => c,
                Err(e) => return directory_error(request_id, e),
            }
        } else {
            Default::default()
        };
        out.push(DeviceInfo {
            device_id: keys.device_id,
            identity_key: keys.identity_key,
            signing_key: keys.signing_key,
            one_time_prekeys: counts.one_time_prekeys,
            key_packages: counts.key_packages,
        });
    }
    answer(
        request_id,
        server_frame::Frame::DeviceList(DeviceList {
            user: user.as_str().to_owned(),
            devices: out,
            transparency,
        }),
    )
}

/// `ListDevices`.
pub(crate) async fn list_devices(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    l: ListDevices,
) -> Prepared {
    let user = match fetch_target(shared, provider, &l.requester, &l.user).await {
        Ok((_, u)) => u,
        Err(r) => return reject(request_id, "", r),
    };
    match shared.keys.devices(user.as_str()).await {
        // A visible user without devices: an empty list, as for anyone
        // whose app has not published yet.
        Ok(devices) => device_list(shared, provider, request_id, &user, devices).await,
        Err(e) => directory_error(request_id, e),
    }
}

/// `FetchBundles`. The requester is remembered as someone who fetched the
/// user's keys, and the owner is told if the claim left a pool low.
pub(crate) async fn fetch_bundles(
    shared: &Arc<Shared>,
    provider: &str,
    request_id: u64,
    f: FetchBundles,
) -> Prepared {
    let (requester, user) = match fetch_target(shared, provider, &f.requester, &f.user).await {
        Ok(t) => t,
        Err(r) => return reject(request_id, "", r),
    };
    match shared
        .keys
        .fetch_bundles(user.as_str(), &f.device_ids)
        .await
    {
        Ok(fetched) => {
            key_notices::record_fetch(shared, &user, &requester);
            key_notices::tell_owner(shared, &user, fetched.low);
            let transparency = match &shared.transparency {
                Some(_) => match shared.keys.devices(user.as_str()).await {
                    Ok(devices) => transparency_proof(shared, &user, devices).await,
                    Err(e) => return directory_error(request_id, e),
                },
                None => None,
            };
            answer(
                request_id,
                server_frame::Frame::Bundles(Bundles {
                    user: f.user,
                    bundles: fetched.items,
                    transparency,
                }),
            )
        }
        Err(e) => directory_error(request_id, e),
    }
}

/// `FetchKeyPackages` (requesters remembered and owners told as for
/// `FetchBundles`).
pub(crate) async fn fetch_key_packages(
    shared: &Arc<Shared>,
    provider: &str,
    request_id: u64,
    f: FetchKeyPackages,
) -> Prepared {
    let requester = match validate_own_user(provider, &f.requester) {
        Ok(r) => r,
        Err(r) => return reject(request_id, "", r),
    };
    if f.users.is_empty() {
        return reject(
            request_id,
            "",
            Rejection::new(RejectCode::MissingField, "users is empty"),
        );
    }
    if f.users.len() > MAX_KEY_PACKAGE_USERS {
        return reject(
            request_id,
            "",
            Rejection::new(
                RejectCode::TooLong,
                format!("at most {MAX_KEY_PACKAGE_USERS} users per fetch"),
            ),
        );
    }
    let mut users = Vec::with_capacity(f.users.len());
    for u in &f.users {
        match Address::parse(u) {
            Ok(a) => users.push(a),
            Err(e) => {
                return reject(
                    request_id,
                    "",
                    Rejection::new(RejectCode::InvalidAddress, format!("users: {e}")),
                )
            }
        }
    }
    if let Err(r) = fetch_allowed(shared, provider, &requester, users.len()).await {
        return reject(request_id, "", r);
    }
    let mut key_packages = Vec::new();
    for user in &users {
        match visible(shared, provider, user).await {
            Ok(true) => {}
            // Left out, like a user without devices.
            Ok(false) => continue,
            Err(r) => return reject(request_id, "", r),
        }
        match shared.keys.fetch_key_packages(user.as_str()).await {
            Ok(kps) => {
                key_notices::record_fetch(shared, user, &requester);
                key_notices::tell_owner(shared, user, kps.low);
                key_packages.extend(kps.items);
            }
            Err(e) => return directory_error(request_id, e),
        }
    }
    answer(
        request_id,
        server_frame::Frame::KeyPackages(KeyPackages { key_packages }),
    )
}

/// `RemoveDevice`; the users who fetched this user's keys are told.
/// `GetKeyHistory`: an own user's key transparency history (docs/adr/0029).
pub(crate) async fn key_history(
    shared: &Arc<Shared>,
    provider: &str,
    request_id: u64,
    h: interop_proto::v1::GetKeyHistory,
) -> Prepared {
    let user = match validate_own_user(provider, &h.user) {
        Ok(u) => u,
        Err(rej) => return reject(request_id, "", rej),
    };
    let Some(kt) = shared.transparency.as_ref() else {
        return reject(
            request_id,
            "",
            unavailable("key transparency (not configured)"),
        );
    };
    match kt.history(user.as_str()).await {
        Ok(history) => answer(request_id, server_frame::Frame::KeyHistory(history)),
        Err(e) => {
            warn!(error = %e, "Cannot prove a user's key history.");
            reject(request_id, "", unavailable("key transparency"))
        }
    }
}

pub(crate) async fn remove_device(
    shared: &Arc<Shared>,
    provider: &str,
    request_id: u64,
    r: RemoveDevice,
) -> Prepared {
    let user = match validate_own_user(provider, &r.user) {
        Ok(u) => u,
        Err(rej) => return reject(request_id, "", rej),
    };
    match shared.keys.remove_device(user.as_str(), &r.device_id).await {
        Ok(devices) => {
            key_notices::tell_watchers(shared, &user, Kind::DeviceRemoved, &r.device_id);
            device_list(shared, provider, request_id, &user, devices).await
        }
        Err(e) => directory_error(request_id, e),
    }
}
