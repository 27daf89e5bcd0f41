//! The key directory's rules that every side checks the same way: the
//! algorithm labels and their key sizes, and the limits of a publish
//! (docs/protocol.md, "End-to-end encryption: the key directory").

use crate::v1::{DeviceKeys, PublicKey, PublishKeys, RejectCode};

/// One-time prekeys in one `PublishKeys`.
pub const MAX_ONE_TIME_PREKEYS_PER_PUBLISH: usize = 100;
/// MLS KeyPackages in one `PublishKeys`.
pub const MAX_KEY_PACKAGES_PER_PUBLISH: usize = 100;
/// Unclaimed one-time prekeys a device may hold.
pub const MAX_ONE_TIME_PREKEYS_PER_DEVICE: usize = 500;
/// Unclaimed KeyPackages a device may hold.
pub const MAX_KEY_PACKAGES_PER_DEVICE: usize = 500;
/// Devices a user may have in the directory.
pub const MAX_DEVICES_PER_USER: usize = 8;
/// Bytes of one MLS KeyPackage.
pub const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;
/// Bytes of a signature (Ed25519 and XEdDSA both make 64).
pub const SIGNATURE_BYTES: usize = 64;
/// Users in one `FetchKeyPackages`.
pub const MAX_KEY_PACKAGE_USERS: usize = 64;
/// Below this many unclaimed one-time prekeys a device's pool is low: its
/// owner should publish more (`KeysPublished` and `DeviceList` give counts).
pub const LOW_ONE_TIME_PREKEYS: usize = 10;
/// Below this many unclaimed KeyPackages a device's pool is low.
pub const LOW_KEY_PACKAGES: usize = 10;

/// The algorithm labels the directory accepts, with their key sizes.
pub const ALGORITHMS: &[(&str, usize)] = &[
    ("curve25519", 32),
    ("curve25519-signal", 33),
    ("ed25519", 32),
    ("ml-kem-768", 1184),
    ("ml-kem-1024", 1568),
];

/// Why a key-directory frame is refused: a typed code and a detail for the
/// provider's engineers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRejection {
    pub code: RejectCode,
    pub detail: String,
}

impl KeyRejection {
    pub fn new(code: RejectCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// The size a key of `algorithm` has, if the label is known.
pub fn key_size(algorithm: &str) -> Option<usize> {
    ALGORITHMS
        .iter()
        .find(|(a, _)| *a == algorithm)
        .map(|(_, n)| *n)
}

/// Checks one key: a known algorithm, the size it fixes, a signature of
/// [`SIGNATURE_BYTES`] when there is one (or must be one).
pub fn check_key(what: &str, key: &PublicKey, signed: bool) -> Result<(), KeyRejection> {
    let Some(size) = key_size(&key.algorithm) else {
        return Err(KeyRejection::new(
            RejectCode::InvalidKey,
            format!("{what}: unknown algorithm {:?}", truncated(&key.algorithm)),
        ));
    };
    if key.key.len() != size {
        return Err(KeyRejection::new(
            RejectCode::InvalidKey,
            format!(
                "{what}: a {} key is {size} bytes, got {}",
                key.algorithm,
                key.key.len()
            ),
        ));
    }
    if signed && key.signature.is_empty() {
        return Err(KeyRejection::new(
            RejectCode::MissingField,
            format!("{what}: the signature is missing"),
        ));
    }
    if !key.signature.is_empty() && key.signature.len() != SIGNATURE_BYTES {
        return Err(KeyRejection::new(
            RejectCode::InvalidKey,
            format!(
                "{what}: a signature is {SIGNATURE_BYTES} bytes, got {}",
                key.signature.len()
            ),
        ));
    }
    Ok(())
}

fn truncated(s: &str) -> &str {
    match s.char_indices().nth(32) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn required<'a>(what: &str, key: &'a Option<PublicKey>) -> Result<&'a PublicKey, KeyRejection> {
    key.as_ref()
        .ok_or_else(|| KeyRejection::new(RejectCode::MissingField, format!("{what} is missing")))
}

/// Checks a device's keys: every key well-formed, the required ones there.
pub fn check_device_keys(d: &DeviceKeys) -> Result<(), KeyRejection> {
    if !crate::address::valid_device_id(&d.device_id) {
        return Err(KeyRejection::new(
            if d.device_id.is_empty() {
                RejectCode::MissingField
            } else {
                RejectCode::InvalidSetting
            },
            "device_id must be 1 to 64 bytes of [A-Za-z0-9_-]",
        ));
    }
    check_key(
        "identity_key",
        required("identity_key", &d.identity_key)?,
        false,
    )?;
    if let Some(k) = &d.signing_key {
        check_key("signing_key", k, false)?;
    }
    check_key(
        "signed_prekey",
        required("signed_prekey", &d.signed_prekey)?,
        true,
    )?;
    check_key(
        "last_resort_prekey",
        required("last_resort_prekey", &d.last_resort_prekey)?,
        false,
    )?;
    if let Some(k) = &d.pq_last_resort_prekey {
        check_key("pq_last_resort_prekey", k, true)?;
    }
    if d.last_resort_key_package.len() > MAX_KEY_PACKAGE_BYTES {
        return Err(KeyRejection::new(
            RejectCode::TooLong,
            format!("last_resort_key_package is over {MAX_KEY_PACKAGE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Checks a `PublishKeys` on its own (what the directory holds already, such
/// as earlier key ids and pool sizes, is checked when it is stored). The
/// user's address and ownership are the endpoint's to check.
pub fn check_publish(p: &PublishKeys) -> Result<(), KeyRejection> {
    let device = p
        .device
        .as_ref()
        .ok_or_else(|| KeyRejection::new(RejectCode::MissingField, "device is missing"))?;
    check_device_keys(device)?;
    if p.one_time_prekeys.len() > MAX_ONE_TIME_PREKEYS_PER_PUBLISH {
        return Err(KeyRejection::new(
            RejectCode::TooManyKeys,
            format!("at most {MAX_ONE_TIME_PREKEYS_PER_PUBLISH} one-time prekeys per publish"),
        ));
    }
    if p.key_packages.len() > MAX_KEY_PACKAGES_PER_PUBLISH {
        return Err(KeyRejection::new(
            RejectCode::TooManyKeys,
            format!("at most {MAX_KEY_PACKAGES_PER_PUBLISH} key packages per publish"),
        ));
    }
    let mut last_id = None;
    for (i, k) in p.one_time_prekeys.iter().enumerate() {
        check_key(&format!("one_time_prekeys[{i}]"), k, false)?;
        if last_id.is_some_and(|l| k.key_id <= l) {
            return Err(KeyRejection::new(
                RejectCode::KeyIdReused,
                "one-time prekey ids must increase within a publish",
            ));
        }
        last_id = Some(k.key_id);
    }
    for (i, kp) in p.key_packages.iter().enumerate() {
        if kp.is_empty() || kp.len() > MAX_KEY_PACKAGE_BYTES {
            return Err(KeyRejection::new(
                if kp.is_empty() {
                    RejectCode::EmptyContent
                } else {
                    RejectCode::TooLong
                },
                format!("key_packages[{i}] must be 1 to {MAX_KEY_PACKAGE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(algorithm: &str, len: usize) -> PublicKey {
        PublicKey {
            algorithm: algorithm.into(),
            key_id: 0,
            key: vec![7; len].into(),
            signature: Default::default(),
        }
    }

    fn signed(mut k: PublicKey) -> PublicKey {
        k.signature = vec![1; SIGNATURE_BYTES].into();
        k
    }

    pub(crate) fn device() -> DeviceKeys {
        DeviceKeys {
            device_id: "phone".into(),
            identity_key: Some(key("curve25519", 32)),
            signing_key: Some(key("ed25519", 32)),
            signed_prekey: Some(signed(key("curve25519", 32))),
            last_resort_prekey: Some(key("curve25519", 32)),
            pq_last_resort_prekey: None,
            last_resort_key_package: Default::default(),
        }
    }

    fn publish(otks: usize) -> PublishKeys {
        PublishKeys {
            user: "home:+4915112345678".into(),
            device: Some(device()),
            one_time_prekeys: (0..otks)
                .map(|i| PublicKey {
                    key_id: u32::try_from(i).unwrap() + 1,
                    ..key("curve25519", 32)
                })
                .collect(),
            key_packages: vec![],
        }
    }

    #[test]
    fn every_algorithm_takes_exactly_its_size() {
        for (alg, size) in ALGORITHMS {
            assert!(check_key("k", &key(alg, *size), false).is_ok(), "{alg}");
            for wrong in [size - 1, size + 1, 0] {
                let e = check_key("k", &key(alg, wrong), false).unwrap_err();
                assert_eq!(e.code, RejectCode::InvalidKey, "{alg} {wrong}");
            }
        }
        let e = check_key("k", &key("rsa-2048", 256), false).unwrap_err();
        assert_eq!(e.code, RejectCode::InvalidKey);
    }

    #[test]
    fn signatures_are_64_bytes_and_required_on_signed_prekeys() {
        let mut k = signed(key("curve25519", 32));
        assert!(check_key("k", &k, true).is_ok());
        k.signature = vec![1; 63].into();
        assert_eq!(
            check_key("k", &k, true).unwrap_err().code,
            RejectCode::InvalidKey
        );
        let unsigned = key("curve25519", 32);
        assert_eq!(
            check_key("k", &unsigned, true).unwrap_err().code,
            RejectCode::MissingField
        );
    }

    #[test]
    fn a_publish_is_limited_at_its_edges() {
        assert!(check_publish(&publish(MAX_ONE_TIME_PREKEYS_PER_PUBLISH)).is_ok());
        let e = check_publish(&publish(MAX_ONE_TIME_PREKEYS_PER_PUBLISH + 1)).unwrap_err();
        assert_eq!(e.code, RejectCode::TooManyKeys);
        let mut p = publish(0);
        p.key_packages = vec![vec![0; MAX_KEY_PACKAGE_BYTES].into(); MAX_KEY_PACKAGES_PER_PUBLISH];
        assert!(check_publish(&p).is_ok());
        p.key_packages.push(vec![0; 1].into());
        assert_eq!(check_publish(&p).unwrap_err().code, RejectCode::TooManyKeys);
        p.key_packages = vec![vec![0; MAX_KEY_PACKAGE_BYTES + 1].into()];
        assert_eq!(check_publish(&p).unwrap_err().code, RejectCode::TooLong);
        p.key_packages = vec![Default::default()];
        assert_eq!(
            check_publish(&p).unwrap_err().code,
            RejectCode::EmptyContent
        );
    }

    #[test]
    fn one_time_prekey_ids_must_increase_and_required_keys_be_there() {
        let mut p = publish(3);
        p.one_time_prekeys[2].key_id = 2;
        assert_eq!(check_publish(&p).unwrap_err().code, RejectCode::KeyIdReused);
        let mut p = publish(1);
        p.device.as_mut().unwrap().signed_prekey = None;
        assert_eq!(
            check_publish(&p).unwrap_err().code,
            RejectCode::MissingField
        );
        let mut p = publish(1);
        p.device.as_mut().unwrap().device_id = "bad id".into();
        assert_eq!(
            check_publish(&p).unwrap_err().code,
            RejectCode::InvalidSetting
        );
        let mut p = publish(1);
        p.device.as_mut().unwrap().last_resort_key_package =
            vec![0; MAX_KEY_PACKAGE_BYTES + 1].into();
        assert_eq!(check_publish(&p).unwrap_err().code, RejectCode::TooLong);
    }
}
