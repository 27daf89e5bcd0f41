//! Olm (vodozemac) on top of the key directory: what a provider's app does
//! to set up an end-to-end-encrypted 1:1 session through the gateway. The
//! gateway sees only public keys and ciphertext.
//!
//! - [`device_keys`] turns a vodozemac `Account` into the `DeviceKeys` and
//!   one-time prekeys to publish: the Curve25519 identity key, the Ed25519
//!   signing key, the fallback key as both the signed prekey (signed by the
//!   Ed25519 key) and the last-resort prekey.
//! - [`outbound_session`] checks a fetched bundle's signature and starts a
//!   session with its one-time prekey (or the fallback key when the pool was
//!   empty).
//! - [`encode`] and [`decode`] put an Olm message into a `Ciphertext` with
//!   scheme [`SCHEME`]: one byte for the message type (0 pre-key, 1 normal),
//!   then the message.

use std::path::{Path, PathBuf};

use interop_proto::v1::{Bundle, Ciphertext, DeviceCiphertext, DeviceKeys, PublicKey};
use vodozemac::olm::{Account, OlmMessage, Session, SessionConfig};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

/// The `Ciphertext.scheme` of Olm messages made here.
pub const SCHEME: &str = "olm.v1";

/// Why a bundle or a ciphertext cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OlmError {
    #[error("the bundle lacks {0}")]
    Missing(&'static str),
    #[error("a key in the bundle is malformed: {0}")]
    BadKey(String),
    #[error("the signed prekey's signature does not verify")]
    BadSignature,
    #[error("not an {SCHEME} ciphertext")]
    NotOlm,
    #[error("cannot decode the Olm message: {0}")]
    Decode(String),
    #[error(transparent)]
    Session(#[from] vodozemac::olm::SessionCreationError),
    #[error(transparent)]
    Encrypt(#[from] vodozemac::olm::EncryptionError),
}

fn curve(key: &Curve25519PublicKey, key_id: u32) -> PublicKey {
    PublicKey {
        algorithm: "curve25519".into(),
        key_id,
        key: key.to_bytes().to_vec().into(),
        signature: Default::default(),
    }
}

/// The keys `account` publishes as device `device_id`: its `DeviceKeys` and
/// its unpublished one-time keys, numbered from `first_key_id` (the
/// directory wants ids above every id the device published before). Marks
/// the keys published. Generates a fallback key if the account has none.
pub fn device_keys(
    account: &mut Account,
    device_id: &str,
    first_key_id: u32,
) -> (DeviceKeys, Vec<PublicKey>) {
    if account.fallback_key().is_empty() {
        account.generate_fallback_key();
    }
    // The fallback key stays the same until the next `generate_fallback_key`;
    // a fresh account has exactly one.
    let fallback = account.fallback_key().into_values().next();
    let fallback = fallback.map(|k| PublicKey {
        signature: account.sign(k.as_bytes()).to_bytes().to_vec().into(),
        ..curve(&k, 0)
    });
    let signing = account.ed25519_key();
    let keys = DeviceKeys {
        device_id: device_id.to_owned(),
        identity_key: Some(curve(&account.curve25519_key(), 0)),
        signing_key: Some(PublicKey {
            algorithm: "ed25519".into(),
            key_id: 0,
            key: signing.as_bytes().to_vec().into(),
            signature: Default::default(),
        }),
        signed_prekey: fallback.clone(),
        last_resort_prekey: fallback.map(|mut k| {
            k.signature = Default::default();
            k
        }),
        pq_last_resort_prekey: None,
        last_resort_key_package: Default::default(),
    };
    let mut one_time: Vec<Curve25519PublicKey> = account.one_time_keys().into_values().collect();
    // Any order will do; a stable one makes the ids reproducible.
    one_time.sort_by_key(|k| *k.as_bytes());
    let one_time = one_time
        .iter()
        .zip(first_key_id..)
        .map(|(k, id)| curve(k, id))
        .collect();
    account.mark_keys_as_published();
    (keys, one_time)
}

fn curve_of(key: &Option<PublicKey>, what: &'static str) -> Result<Curve25519PublicKey, OlmError> {
    let k = key.as_ref().ok_or(OlmError::Missing(what))?;
    Curve25519PublicKey::from_slice(&k.key).map_err(|e| OlmError::BadKey(e.to_string()))
}

/// Starts an Olm session with the device of `bundle`: checks that its signed
/// prekey is signed by its signing key, then uses the claimed one-time
/// prekey, or the signed prekey (the fallback key) when the pool was empty.
pub fn outbound_session(account: &Account, bundle: &Bundle) -> Result<Session, OlmError> {
    let device = bundle.device.as_ref().ok_or(OlmError::Missing("device"))?;
    let identity = curve_of(&device.identity_key, "identity_key")?;
    let signing = device
        .signing_key
        .as_ref()
        .ok_or(OlmError::Missing("signing_key"))?;
    let signing: [u8; 32] = signing.key[..]
        .try_into()
        .map_err(|_| OlmError::BadKey("signing_key".into()))?;
    let signing =
        Ed25519PublicKey::from_slice(&signing).map_err(|e| OlmError::BadKey(e.to_string()))?;
    let prekey = device
        .signed_prekey
        .as_ref()
        .ok_or(OlmError::Missing("signed_prekey"))?;
    let signature =
        Ed25519Signature::from_slice(&prekey.signature).map_err(|_| OlmError::BadSignature)?;
    signing
        .verify(&prekey.key, &signature)
        .map_err(|_| OlmError::BadSignature)?;
    let one_time = match &bundle.one_time_prekey {
        Some(_) => curve_of(&bundle.one_time_prekey, "one_time_prekey")?,
        None => curve_of(&device.signed_prekey, "signed_prekey")?,
    };
    Ok(account.create_outbound_session(SessionConfig::version_1(), identity, one_time)?)
}

/// An Olm message as a `Ciphertext`.
pub fn encode(message: &OlmMessage) -> Ciphertext {
    let (kind, body) = message.to_parts();
    let mut payload = Vec::with_capacity(body.len() + 1);
    // 0 pre-key, 1 normal: Olm's own message types.
    payload.push(u8::try_from(kind).unwrap_or(u8::MAX));
    payload.extend_from_slice(&body);
    Ciphertext {
        scheme: SCHEME.into(),
        payload: payload.into(),
        ..Default::default()
    }
}

/// The Olm message in a `Ciphertext` made by [`encode`].
pub fn decode(c: &Ciphertext) -> Result<OlmMessage, OlmError> {
    if c.scheme != SCHEME {
        return Err(OlmError::NotOlm);
    }
    let (kind, body) = c.payload.split_first().ok_or(OlmError::NotOlm)?;
    OlmMessage::from_parts(usize::from(*kind), body).map_err(|e| OlmError::Decode(e.to_string()))
}

/// The identity key of a bundle's device, as the recipient's app checks a
/// pre-key message against it.
pub fn identity_key(device: &DeviceKeys) -> Result<Curve25519PublicKey, OlmError> {
    curve_of(&device.identity_key, "identity_key")
}

/// Why the local key store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: cannot unpickle ({detail}); was it written with another pickle key?")]
    Pickle { path: PathBuf, detail: String },
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `data` to `path` readable by its owner only (keys and sessions).
fn write_private(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    crate::files::write_private(path, data).map_err(io(path))
}

/// One user's device on this machine, as an app keeps it: its Olm account
/// and its sessions with other devices, pickled and encrypted under a key
/// in the store's root (`pickle.key`, created on first use, owner-only).
///
/// Layout: `<root>/<user key>/<device>/account`, `.../next_key_id`,
/// `.../published`, and `.../sessions/<peer key>/<peer identity key>` (the
/// user key is the SHA-256-derived key subjects use, so no phone number is
/// in a path).
pub struct LocalDevice {
    dir: PathBuf,
    pickle_key: [u8; 32],
    pub account: Account,
    next_key_id: u32,
    /// What this store trusts of key transparency (`<root>/kt-trust.json`,
    /// shared by its devices): see [`crate::trust`].
    pub trust: crate::trust::Trust,
}

fn user_dir_name(user: &str) -> String {
    use sha2::Digest as _;
    hex::encode(&sha2::Sha256::digest(user.as_bytes())[..16])
}

fn identity_file_name(identity: &Curve25519PublicKey) -> String {
    // URL-safe base64 of the key: a valid file name.
    base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        identity.as_bytes(),
    )
}

impl LocalDevice {
    /// Opens (or creates, with a new Olm account) `user`'s device `device`
    /// under `root`.
    pub fn open(root: &Path, user: &str, device: &str) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        let key_path = root.join("pickle.key");
        let pickle_key: [u8; 32] = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => {
                let mut a = [0u8; 32];
                a.copy_from_slice(&k);
                a
            }
            Ok(_) => {
                return Err(StoreError::Pickle {
                    path: key_path,
                    detail: "not a 32-byte key".into(),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k: [u8; 32] = rand::random();
                write_private(&key_path, &k)?;
                k
            }
            Err(e) => return Err(io(&key_path)(e)),
        };
        let dir = root.join(user_dir_name(user)).join(device);
        std::fs::create_dir_all(dir.join("sessions")).map_err(io(&dir))?;
        let account_path = dir.join("account");
        let account = match std::fs::read_to_string(&account_path) {
            Ok(text) => Account::from_pickle(
                vodozemac::olm::AccountPickle::from_encrypted(&text, &pickle_key).map_err(|e| {
                    StoreError::Pickle {
                        path: account_path.clone(),
                        detail: e.to_string(),
                    }
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Account::new(),
            Err(e) => return Err(io(&account_path)(e)),
        };
        let next_key_id = std::fs::read_to_string(dir.join("next_key_id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1);
        let trust = crate::trust::Trust::open(root)?;
        let device = Self {
            dir,
            pickle_key,
            account,
            next_key_id,
            trust,
        };
        device.save()?;
        Ok(device)
    }

    /// Writes the account and the next key id.
    pub fn save(&self) -> Result<(), StoreError> {
        let pickled = self.account.pickle().encrypt(&self.pickle_key);
        write_private(&self.dir.join("account"), pickled.as_bytes())?;
        write_private(
            &self.dir.join("next_key_id"),
            self.next_key_id.to_string().as_bytes(),
        )
    }

    /// Whether this device's keys were published (by [`Self::keys_to_publish`]
    /// and [`Self::mark_published`]).
    pub fn published(&self) -> bool {
        self.dir.join("published").exists()
    }

    /// New one-time keys (`count`) and the device's keys, numbered after
    /// every key this device published before. Saved at once: an id is
    /// never handed out twice, even if the publish then fails.
    pub fn keys_to_publish(
        &mut self,
        device_id: &str,
        count: usize,
    ) -> Result<(DeviceKeys, Vec<PublicKey>), StoreError> {
        self.account.generate_one_time_keys(count);
        let (keys, otks) = device_keys(&mut self.account, device_id, self.next_key_id);
        self.next_key_id += u32::try_from(otks.len()).unwrap_or(u32::MAX);
        self.save()?;
        Ok((keys, otks))
    }

    /// Records that the keys were published.
    pub fn mark_published(&self) -> Result<(), StoreError> {
        write_private(&self.dir.join("published"), b"1")
    }

    fn session_path(&self, peer: &str, identity: &Curve25519PublicKey) -> PathBuf {
        self.dir
            .join("sessions")
            .join(user_dir_name(peer))
            .join(identity_file_name(identity))
    }

    /// The session with `peer`'s device whose identity key is `identity`.
    pub fn session(
        &self,
        peer: &str,
        identity: &Curve25519PublicKey,
    ) -> Result<Option<Session>, StoreError> {
        let path = self.session_path(peer, identity);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Session::from_pickle(
                vodozemac::olm::SessionPickle::from_encrypted(&text, &self.pickle_key).map_err(
                    |e| StoreError::Pickle {
                        path: path.clone(),
                        detail: e.to_string(),
                    },
                )?,
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every session with `peer`'s devices, with their identity keys.
    pub fn sessions(&self, peer: &str) -> Result<Vec<(Curve25519PublicKey, Session)>, StoreError> {
        let dir = self.dir.join("sessions").join(user_dir_name(peer));
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(&dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(bytes) =
                base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, name)
            else {
                continue;
            };
            let Ok(identity) = Curve25519PublicKey::from_slice(&bytes) else {
                continue;
            };
            if let Some(s) = self.session(peer, &identity)? {
                out.push((identity, s));
            }
        }
        Ok(out)
    }

    /// Stores the session with `peer`'s device `identity` (after every
    /// encrypt or decrypt: the ratchet moved).
    pub fn save_session(
        &self,
        peer: &str,
        identity: &Curve25519PublicKey,
        session: &Session,
    ) -> Result<(), StoreError> {
        let path = self.session_path(peer, identity);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        write_private(&path, session.pickle().encrypt(&self.pickle_key).as_bytes())
    }
}

/// Why an end-to-end-encrypted send or receive failed.
#[derive(Debug, thiserror::Error)]
pub enum E2eeError {
    #[error(transparent)]
    Client(#[from] crate::ClientError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Olm(#[from] OlmError),
    #[error("the gateway refused {what}: {code} ({detail})")]
    Refused {
        what: &'static str,
        code: &'static str,
        detail: String,
    },
    #[error("{0} has no devices with published keys")]
    NoDevices(String),
    /// The gateway's key transparency proof does not vouch for the keys it
    /// served (docs/adr/0029): none of them is used.
    #[error("key transparency refuses {0}'s keys: {1}")]
    Transparency(String, crate::trust::TrustError),
    #[error("the sender's identity key is not one of {0}'s devices in the key directory")]
    UnknownSender(String),
    #[error("no session with {0} decrypts this message")]
    NoSession(String),
    #[error(transparent)]
    Decrypt(#[from] vodozemac::olm::DecryptionError),
    #[error(transparent)]
    Inbound(#[from] vodozemac::olm::SessionCreationError),
}

fn done<T>(what: &'static str, o: crate::keys::KeysOutcome<T>) -> Result<T, E2eeError> {
    match o {
        crate::keys::KeysOutcome::Done(t) => Ok(t),
        crate::keys::KeysOutcome::Rejected(r) => Err(E2eeError::Refused {
            what,
            code: r.code().as_str_name(),
            detail: r.detail,
        }),
    }
}

/// How many one-time keys a device publishes at first.
pub const FIRST_ONE_TIME_KEYS: usize = 20;

/// Publishes `me`'s keys as `user`'s device `device_id` if it never did
/// (the user must have opted in).
pub async fn ensure_published(
    s: &crate::Sender,
    me: &mut LocalDevice,
    user: &str,
    device_id: &str,
) -> Result<(), E2eeError> {
    if me.published() {
        return Ok(());
    }
    let (keys, otks) = me.keys_to_publish(device_id, FIRST_ONE_TIME_KEYS)?;
    done(
        "PublishKeys",
        s.publish_keys(user, keys, otks, vec![]).await?,
    )?;
    me.mark_published()?;
    Ok(())
}

/// Encrypts `plaintext` from `from` (this device, `me`) for every device of
/// `to`: over the session each already has, or a new one from a freshly
/// fetched bundle. One ciphertext per device, with its device id.
pub async fn encrypt_for(
    s: &crate::Sender,
    me: &mut LocalDevice,
    from: &str,
    to: &str,
    plaintext: &[u8],
) -> Result<Vec<(String, Ciphertext)>, E2eeError> {
    let out = encrypt_for_devices(s, me, from, to, None, plaintext).await?;
    if out.is_empty() {
        return Err(E2eeError::NoDevices(to.to_owned()));
    }
    Ok(out)
}

/// What [`encrypt_for`] and [`encrypt_for_own_devices`] return, as
/// `Ciphertext.devices` / `Ciphertext.sender_devices` entries.
pub fn per_device(list: Vec<(String, Ciphertext)>) -> Vec<DeviceCiphertext> {
    list.into_iter()
        .map(|(device_id, c)| DeviceCiphertext {
            device_id,
            payload: c.payload,
        })
        .collect()
}

/// Encrypts `plaintext` for `from`'s other devices than `own_device` (this
/// one), for `Ciphertext.sender_devices`: their copy of what this device
/// sent. Empty when the user has no other device.
pub async fn encrypt_for_own_devices(
    s: &crate::Sender,
    me: &mut LocalDevice,
    from: &str,
    own_device: &str,
    plaintext: &[u8],
) -> Result<Vec<(String, Ciphertext)>, E2eeError> {
    encrypt_for_devices(s, me, from, from, Some(own_device), plaintext).await
}

async fn encrypt_for_devices(
    s: &crate::Sender,
    me: &mut LocalDevice,
    from: &str,
    to: &str,
    skip: Option<&str>,
    plaintext: &[u8],
) -> Result<Vec<(String, Ciphertext)>, E2eeError> {
    let mut devices = done("ListDevices", s.list_devices(from, to).await?)?;
    // With key transparency, only committed identity keys are used, under
    // the pinned VRF key (crate::trust).
    crate::keys::check_device_list(&mut me.trust, &devices)
        .map_err(|e| E2eeError::Transparency(to.to_owned(), e))?;
    devices
        .devices
        .retain(|d| Some(d.device_id.as_str()) != skip);
    let mut out = Vec::with_capacity(devices.devices.len());
    let mut missing = Vec::new();
    for d in &devices.devices {
        let identity = curve_of(&d.identity_key, "identity_key")?;
        match me.session(to, &identity)? {
            Some(mut session) => {
                out.push((
                    d.device_id.clone(),
                    encode(&session.encrypt(plaintext).map_err(OlmError::from)?),
                ));
                me.save_session(to, &identity, &session)?;
            }
            None => missing.push(d.device_id.as_str()),
        }
    }
    if !missing.is_empty() {
        let bundles = done("FetchBundles", s.fetch_bundles(from, to, &missing).await?)?;
        crate::keys::check_bundles(&mut me.trust, &bundles)
            .map_err(|e| E2eeError::Transparency(to.to_owned(), e))?;
        for b in &bundles.bundles {
            let Some(device) = &b.device else { continue };
            let identity = identity_key(device)?;
            let mut session = outbound_session(&me.account, b)?;
            out.push((
                device.device_id.clone(),
                encode(&session.encrypt(plaintext).map_err(OlmError::from)?),
            ));
            me.save_session(to, &identity, &session)?;
        }
    }
    me.save()?;
    Ok(out)
}

/// Decrypts a ciphertext `from` sent to `me` (the device of `user`). A
/// pre-key message starts a session, after checking that its identity key is
/// one of the sender's devices in the key directory; a normal message is
/// tried with each session with the sender.
pub async fn decrypt_from(
    s: &crate::Sender,
    me: &mut LocalDevice,
    user: &str,
    from: &str,
    c: &Ciphertext,
) -> Result<Vec<u8>, E2eeError> {
    let message = decode(c)?;
    for (identity, mut session) in me.sessions(from)? {
        if let Ok(plain) = session.decrypt(&message) {
            me.save_session(from, &identity, &session)?;
            return Ok(plain);
        }
    }
    let OlmMessage::PreKey(pre) = &message else {
        return Err(E2eeError::NoSession(from.to_owned()));
    };
    let identity = pre.identity_key();
    let devices = done("ListDevices", s.list_devices(user, from).await?)?;
    crate::keys::check_device_list(&mut me.trust, &devices)
        .map_err(|e| E2eeError::Transparency(from.to_owned(), e))?;
    let known = devices
        .devices
        .iter()
        .any(|d| curve_of(&d.identity_key, "identity_key").is_ok_and(|k| k == identity));
    if !known {
        return Err(E2eeError::UnknownSender(from.to_owned()));
    }
    let inbound = me
        .account
        .create_inbound_session(SessionConfig::version_1(), identity, pre)?;
    me.save_session(from, &identity, &inbound.session)?;
    // The one-time key it used is gone from the account.
    me.save()?;
    Ok(inbound.plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_and_its_sessions_survive_a_reopen_and_ids_never_repeat() {
        let root = tempfile::tempdir().unwrap();
        let mut alice = LocalDevice::open(root.path(), "signal:alice", "cli").unwrap();
        let (_, first) = alice.keys_to_publish("cli", 3).unwrap();
        assert_eq!(
            first.iter().map(|k| k.key_id).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        alice.mark_published().unwrap();
        let identity = alice.account.curve25519_key();

        let mut bob = Account::new();
        bob.generate_one_time_keys(1);
        let (bob_keys, bob_otks) = device_keys(&mut bob, "phone", 1);
        let bundle = Bundle {
            device: Some(bob_keys.clone()),
            one_time_prekey: Some(bob_otks[0].clone()),
        };
        let mut session = outbound_session(&alice.account, &bundle).unwrap();
        let bob_identity = identity_key(&bob_keys).unwrap();
        let message = session.encrypt("one").unwrap();
        alice
            .save_session("home:+4915112345678", &bob_identity, &session)
            .unwrap();

        let mut again = LocalDevice::open(root.path(), "signal:alice", "cli").unwrap();
        assert!(again.published());
        assert_eq!(again.account.curve25519_key(), identity);
        let (_, next) = again.keys_to_publish("cli", 2).unwrap();
        assert_eq!(
            next.iter().map(|k| k.key_id).collect::<Vec<_>>(),
            vec![4, 5]
        );
        let mut restored = again
            .session("home:+4915112345678", &bob_identity)
            .unwrap()
            .unwrap();
        assert_eq!(restored.session_id(), session.session_id());
        assert_eq!(again.sessions("home:+4915112345678").unwrap().len(), 1);
        // The restored session goes on where the first left off: Bob
        // decrypts both messages in order.
        let second = restored.encrypt("two").unwrap();
        let OlmMessage::PreKey(pre) = message else {
            panic!("pre-key first")
        };
        let mut inbound = bob
            .create_inbound_session(SessionConfig::version_1(), identity, &pre)
            .unwrap();
        assert_eq!(inbound.plaintext, b"one");
        assert_eq!(inbound.session.decrypt(&second).unwrap(), b"two");
        // Nothing readable on disk: the account is encrypted.
        let text = std::fs::read_to_string(again.dir.join("account")).unwrap();
        assert!(!text.contains("curve25519"));
    }

    #[test]
    fn a_ciphertext_round_trips_and_others_are_refused() {
        let mut a = Account::new();
        let mut b = Account::new();
        b.generate_one_time_keys(1);
        let (keys, otks) = device_keys(&mut b, "d", 1);
        let mut s = outbound_session(
            &a,
            &Bundle {
                device: Some(keys.clone()),
                one_time_prekey: Some(otks[0].clone()),
            },
        )
        .unwrap();
        let m = s.encrypt("x").unwrap();
        let c = encode(&m);
        assert_eq!(c.scheme, SCHEME);
        assert_eq!(decode(&c).unwrap().to_parts(), m.to_parts());
        let other = Ciphertext {
            scheme: "signal".into(),
            ..c.clone()
        };
        assert!(matches!(decode(&other), Err(OlmError::NotOlm)));
        // A bundle whose signed prekey was not signed by its signing key.
        let mut forged = keys;
        forged.signing_key = device_keys(&mut a, "x", 1).0.signing_key;
        let e = outbound_session(
            &Account::new(),
            &Bundle {
                device: Some(forged),
                one_time_prekey: None,
            },
        )
        .unwrap_err();
        assert!(matches!(e, OlmError::BadSignature), "{e}");
    }
}
