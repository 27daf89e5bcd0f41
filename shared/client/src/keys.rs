//! The key directory from a provider's side (docs/protocol.md, "End-to-end
//! encryption: the key directory"): publish a device's keys, list a user's
//! devices, fetch prekey bundles and MLS KeyPackages, remove a device.

use interop_proto::v1::{
    client_frame, server_frame, Bundles, DeviceKeys, DeviceList, FetchBundles, FetchKeyPackages,
    KeyPackages, KeysPublished, ListDevices, PublicKey, PublishKeys, Rejected, RemoveDevice,
};

use crate::{ClientError, Sender};

pub use interop_transparency::VerifyError;

/// Key transparency (docs/adr/0029): checks that every bundle's identity
/// (and signing) key is the one the auditable key directory committed for
/// `bundles.user`, against the VRF key the app pinned (`None`: the one in
/// the proof, which only checks the proof's own consistency). A typed
/// [`VerifyError`] when it is not: use none of the keys then. The app
/// should also check the proof's root is the one published for its epoch.
pub fn verify_bundles(bundles: &Bundles, pinned_vrf_key: Option<&[u8]>) -> Result<(), VerifyError> {
    let value =
        interop_transparency::verify(bundles.transparency.as_ref(), &bundles.user, pinned_vrf_key)?;
    bundle_keys_committed(&value, bundles)
}

/// [`verify_bundles`] against what `trust` pinned (its configured VRF key,
/// or the one seen first) and the roots it saw: an answer without a proof
/// is accepted only while nothing is pinned (a gateway without key
/// transparency).
pub fn check_bundles(
    trust: &mut crate::trust::Trust,
    bundles: &Bundles,
) -> Result<(), crate::trust::TrustError> {
    let Some(value) = trust.check(bundles.transparency.as_ref(), &bundles.user)? else {
        return Ok(());
    };
    Ok(bundle_keys_committed(&value, bundles)?)
}

/// [`check_bundles`] for a device list.
pub fn check_device_list(
    trust: &mut crate::trust::Trust,
    list: &DeviceList,
) -> Result<(), crate::trust::TrustError> {
    let Some(value) = trust.check(list.transparency.as_ref(), &list.user)? else {
        return Ok(());
    };
    Ok(list_keys_committed(&value, list)?)
}

/// [`verify_bundles`] for a device list.
pub fn verify_device_list(
    list: &DeviceList,
    pinned_vrf_key: Option<&[u8]>,
) -> Result<(), VerifyError> {
    let value =
        interop_transparency::verify(list.transparency.as_ref(), &list.user, pinned_vrf_key)?;
    list_keys_committed(&value, list)
}

/// Every bundle's identity (and signing) key is in `value`, the committed
/// value of the bundles' user.
fn bundle_keys_committed(
    value: &interop_proto::v1::TransparencyValue,
    bundles: &Bundles,
) -> Result<(), VerifyError> {
    interop_transparency::check_keys(
        value,
        bundles
            .bundles
            .iter()
            .filter_map(|b| b.device.as_ref())
            .map(|d| {
                (
                    d.device_id.as_str(),
                    d.identity_key.as_ref(),
                    d.signing_key.as_ref(),
                )
            }),
    )
}

/// [`bundle_keys_committed`] for a device list.
fn list_keys_committed(
    value: &interop_proto::v1::TransparencyValue,
    list: &DeviceList,
) -> Result<(), VerifyError> {
    interop_transparency::check_keys(
        value,
        list.devices.iter().map(|d| {
            (
                d.device_id.as_str(),
                d.identity_key.as_ref(),
                d.signing_key.as_ref(),
            )
        }),
    )
}

/// The gateway's answer to a key-directory request: what was asked for, or a
/// typed refusal.
#[derive(Debug, Clone, PartialEq)]
pub enum KeysOutcome<T> {
    Done(T),
    Rejected(Rejected),
}

impl<T> KeysOutcome<T> {
    /// The answer, or the refusal as an error (for callers that treat every
    /// refusal alike).
    pub fn done(self) -> Result<T, ClientError> {
        match self {
            Self::Done(t) => Ok(t),
            Self::Rejected(r) => Err(ClientError::Protocol(format!(
                "refused: {} ({})",
                r.code().as_str_name(),
                r.detail
            ))),
        }
    }
}

impl Sender {
    async fn keys_request<T>(
        &self,
        what: &str,
        frame: client_frame::Frame,
        pick: impl FnOnce(server_frame::Frame) -> Option<T>,
    ) -> Result<KeysOutcome<T>, ClientError> {
        match self.request(frame).await?.frame {
            Some(server_frame::Frame::Rejected(r)) => Ok(KeysOutcome::Rejected(r)),
            Some(f) => {
                let shown = format!("{f:?}");
                pick(f).map(KeysOutcome::Done).ok_or_else(|| {
                    ClientError::Protocol(format!("unexpected answer to {what}: {shown}"))
                })
            }
            None => Err(ClientError::Protocol(format!("an empty answer to {what}"))),
        }
    }

    /// Publishes (or replaces) `device`'s keys for `user`, adding one-time
    /// prekeys and MLS KeyPackages to its pools.
    pub async fn publish_keys(
        &self,
        user: &str,
        device: DeviceKeys,
        one_time_prekeys: Vec<PublicKey>,
        key_packages: Vec<Vec<u8>>,
    ) -> Result<KeysOutcome<KeysPublished>, ClientError> {
        let frame = client_frame::Frame::PublishKeys(PublishKeys {
            user: user.to_owned(),
            device: Some(device),
            one_time_prekeys,
            key_packages: key_packages.into_iter().map(Into::into).collect(),
        });
        self.keys_request("PublishKeys", frame, |f| match f {
            server_frame::Frame::KeysPublished(p) => Some(p),
            _ => None,
        })
        .await
    }

    /// `user`'s devices, asked by `requester` (one of this provider's users).
    pub async fn list_devices(
        &self,
        requester: &str,
        user: &str,
    ) -> Result<KeysOutcome<DeviceList>, ClientError> {
        let frame = client_frame::Frame::ListDevices(ListDevices {
            requester: requester.to_owned(),
            user: user.to_owned(),
        });
        self.keys_request("ListDevices", frame, |f| match f {
            server_frame::Frame::DeviceList(d) => Some(d),
            _ => None,
        })
        .await
    }

    /// A prekey bundle for each device of `user` (or those in `device_ids`),
    /// each with a one-time prekey claimed for `requester`.
    pub async fn fetch_bundles(
        &self,
        requester: &str,
        user: &str,
        device_ids: &[&str],
    ) -> Result<KeysOutcome<Bundles>, ClientError> {
        let frame = client_frame::Frame::FetchBundles(FetchBundles {
            requester: requester.to_owned(),
            user: user.to_owned(),
            device_ids: device_ids.iter().map(|d| (*d).to_owned()).collect(),
        });
        self.keys_request("FetchBundles", frame, |f| match f {
            server_frame::Frame::Bundles(b) => Some(b),
            _ => None,
        })
        .await
    }

    /// One MLS KeyPackage for each device of each of `users`.
    pub async fn fetch_key_packages(
        &self,
        requester: &str,
        users: &[&str],
    ) -> Result<KeysOutcome<KeyPackages>, ClientError> {
        let frame = client_frame::Frame::FetchKeyPackages(FetchKeyPackages {
            requester: requester.to_owned(),
            users: users.iter().map(|u| (*u).to_owned()).collect(),
        });
        self.keys_request("FetchKeyPackages", frame, |f| match f {
            server_frame::Frame::KeyPackages(k) => Some(k),
            _ => None,
        })
        .await
    }

    /// `user`'s key transparency history (one of your provider's users):
    /// verify it with [`interop_transparency::verify_history`] and check it
    /// with [`interop_transparency::foreign_keys`] against every identity
    /// key your apps published for them.
    pub async fn key_history(
        &self,
        user: &str,
    ) -> Result<KeysOutcome<interop_proto::v1::KeyHistory>, ClientError> {
        let frame = client_frame::Frame::GetKeyHistory(interop_proto::v1::GetKeyHistory {
            user: user.to_owned(),
        });
        self.keys_request("GetKeyHistory", frame, |f| match f {
            server_frame::Frame::KeyHistory(h) => Some(h),
            _ => None,
        })
        .await
    }

    /// Removes one of `user`'s devices and its unclaimed keys.
    pub async fn remove_device(
        &self,
        user: &str,
        device_id: &str,
    ) -> Result<KeysOutcome<DeviceList>, ClientError> {
        let frame = client_frame::Frame::RemoveDevice(RemoveDevice {
            user: user.to_owned(),
            device_id: device_id.to_owned(),
        });
        self.keys_request("RemoveDevice", frame, |f| match f {
            server_frame::Frame::DeviceList(d) => Some(d),
            _ => None,
        })
        .await
    }
}
