//! Lookup proofs: the server's side ([`crate::Transparency::prove`]) and the
//! client's ([`verify`], [`check_keys`]), in the wire form
//! `interop.v1.TransparencyProof`.

use akd::AkdLabel;
use interop_proto::v1::{PublicKey, TransparencyProof, TransparencyValue};
use interop_proto::Message as _;
use protobuf::Message as _;

use crate::Config;

/// Why a client refuses keys (never a silent fallback).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The answer carries no proof.
    #[error("the answer carries no key transparency proof")]
    Missing,
    /// The proof names another VRF key than the one pinned.
    #[error("the proof's VRF key is not the pinned one")]
    WrongVrfKey,
    /// The proof does not verify against its root (a key not in the
    /// committed tree, a forged proof, or another user's).
    #[error("the lookup proof does not verify: {0}")]
    Invalid(String),
    /// The root is not the one published for the epoch.
    #[error("the root of epoch {0} is not the published one")]
    UnpublishedRoot(u64),
    /// The proof's root differs from the root the app saw before for the
    /// same epoch: the directory showed it two histories (a fork).
    #[error("epoch {0} has another root than the one seen before for it (a fork)")]
    SeenOtherRoot(u64),
    /// A key in the answer is not in the committed value.
    #[error("device {0}'s identity keys are not the committed ones")]
    KeyNotCommitted(String),
}

/// Verifies `proof` for `user` (with `pinned_vrf_key`, if the client pinned
/// one) and returns the committed value: the user's devices' identity keys.
pub fn verify(
    proof: Option<&TransparencyProof>,
    user: &str,
    pinned_vrf_key: Option<&[u8]>,
) -> Result<TransparencyValue, VerifyError> {
    let proof = proof.ok_or(VerifyError::Missing)?;
    if pinned_vrf_key.is_some_and(|k| k != proof.vrf_public_key.as_ref()) {
        return Err(VerifyError::WrongVrfKey);
    }
    let root: [u8; 32] = proof
        .root_hash
        .as_ref()
        .try_into()
        .map_err(|_| VerifyError::Invalid("a root hash is 32 bytes".into()))?;
    let wire = akd::proto::specs::types::LookupProof::parse_from_bytes(&proof.lookup_proof)
        .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let lookup =
        akd::LookupProof::try_from(&wire).map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let result = akd::client::lookup_verify::<Config>(
        &proof.vrf_public_key,
        root,
        proof.epoch,
        AkdLabel::from(user),
        lookup,
    )
    .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    TransparencyValue::decode(&result.value.0[..]).map_err(|e| VerifyError::Invalid(e.to_string()))
}

/// One committed version of a user's value, from their history.
#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub version: u64,
    pub epoch: u64,
    pub value: TransparencyValue,
}

/// Verifies an owner's key history (with the pinned VRF key) and returns
/// every committed version, newest first.
pub fn verify_history(
    history: &interop_proto::v1::KeyHistory,
    pinned_vrf_key: Option<&[u8]>,
) -> Result<Vec<Version>, VerifyError> {
    if pinned_vrf_key.is_some_and(|k| k != history.vrf_public_key.as_ref()) {
        return Err(VerifyError::WrongVrfKey);
    }
    let root: [u8; 32] = history
        .root_hash
        .as_ref()
        .try_into()
        .map_err(|_| VerifyError::Invalid("a root hash is 32 bytes".into()))?;
    let wire = akd::proto::specs::types::HistoryProof::parse_from_bytes(&history.history_proof)
        .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let proof =
        akd::HistoryProof::try_from(&wire).map_err(|e| VerifyError::Invalid(e.to_string()))?;
    let results = akd::client::key_history_verify::<Config>(
        &history.vrf_public_key,
        root,
        history.epoch,
        AkdLabel::from(history.user.as_str()),
        proof,
        akd::HistoryVerificationParams::default(),
    )
    .map_err(|e| VerifyError::Invalid(e.to_string()))?;
    results
        .into_iter()
        .map(|r| {
            Ok(Version {
                version: r.version,
                epoch: r.epoch,
                value: TransparencyValue::decode(&r.value.0[..])
                    .map_err(|e| VerifyError::Invalid(e.to_string()))?,
            })
        })
        .collect()
}

/// The (version, device id) of every identity key in `history` that is
/// not one the owner's apps published: `published` is every (device id,
/// identity key bytes) they ever published. Empty: nothing foreign.
pub fn foreign_keys(history: &[Version], published: &[(&str, &[u8])]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for v in history {
        for d in &v.value.devices {
            let key = d.identity_key.as_ref().map(|k| k.key.as_ref());
            let known = published
                .iter()
                .any(|(id, k)| *id == d.device_id && key == Some(*k));
            if !known {
                out.push((v.version, d.device_id.clone()));
            }
        }
    }
    out
}

/// Checks that each device's identity (and signing) key is the committed
/// one.
pub fn check_keys<'a>(
    value: &TransparencyValue,
    devices: impl IntoIterator<Item = (&'a str, Option<&'a PublicKey>, Option<&'a PublicKey>)>,
) -> Result<(), VerifyError> {
    for (device_id, identity, signing) in devices {
        let committed = value
            .devices
            .iter()
            .find(|d| d.device_id == device_id)
            .ok_or_else(|| VerifyError::KeyNotCommitted(device_id.to_owned()))?;
        let same = |a: Option<&PublicKey>, b: Option<&PublicKey>| {
            a.map(|k| (&k.algorithm, &k.key)) == b.map(|k| (&k.algorithm, &k.key))
        };
        if !same(committed.identity_key.as_ref(), identity)
            || !same(committed.signing_key.as_ref(), signing)
        {
            return Err(VerifyError::KeyNotCommitted(device_id.to_owned()));
        }
    }
    Ok(())
}

/// The wire form of a lookup proof.
pub(crate) fn to_wire(
    proof: &akd::LookupProof,
    epoch: u64,
    root: [u8; 32],
    vrf_public_key: &[u8],
) -> Result<TransparencyProof, protobuf::Error> {
    Ok(TransparencyProof {
        epoch,
        root_hash: root.to_vec().into(),
        lookup_proof: akd::proto::specs::types::LookupProof::from(proof)
            .write_to_bytes()?
            .into(),
        vrf_public_key: vrf_public_key.to_vec().into(),
    })
}
