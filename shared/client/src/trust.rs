//! What an app trusts of the gateway's key transparency (docs/adr/0029):
//! the directory's VRF public key and the root hash of every epoch it has
//! seen, kept beside its devices' keys.
//!
//! A lookup proof checked against the VRF key it carries only shows that
//! the proof is consistent with itself: a gateway that made up another
//! directory (its own VRF key, a tree with a substituted key in it) would
//! pass. So the app pins the VRF key: the one its configuration names (the
//! operator publishes it), or else the first one it sees (trust on first
//! use, as SSH does with host keys). Once a key is pinned:
//!
//! - a proof under another VRF key is refused ([`VerifyError::WrongVrfKey`]);
//! - an answer without a proof is refused ([`VerifyError::Missing`]): a
//!   gateway cannot switch transparency off for one app;
//! - a proof whose root differs from the root this app saw before for the
//!   same epoch is refused ([`VerifyError::SeenOtherRoot`]): the directory
//!   showed two histories (a fork), which the published roots' audit
//!   (`interop keys audit`) finds for everyone.
//!
//! The roots of the newest [`MAX_REMEMBERED_ROOTS`] epochs are remembered.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use interop_proto::v1::TransparencyProof;
use interop_proto::v1::TransparencyValue;
use serde::{Deserialize, Serialize};

pub use interop_transparency::VerifyError;

/// Most epochs whose root is remembered (the oldest are forgotten first).
pub const MAX_REMEMBERED_ROOTS: usize = 1_000;

/// The file in a keys directory that holds what is trusted.
pub const TRUST_FILE: &str = "kt-trust.json";

/// Why an answer's proof was refused, or what was trusted could not be kept.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error("cannot keep what key transparency trusts in {path}: {detail}")]
    Store { path: PathBuf, detail: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    /// The VRF public key pinned on first use (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vrf_public_key: Option<String>,
    /// The root hash seen for each epoch (hex).
    #[serde(default)]
    roots: BTreeMap<u64, String>,
}

/// The pinned VRF key and the roots seen (see the module's documentation).
#[derive(Debug)]
pub struct Trust {
    path: PathBuf,
    configured: Option<Vec<u8>>,
    state: State,
}

impl Trust {
    /// What is trusted in the keys directory `dir` (nothing yet if its
    /// file is not there).
    pub fn open(dir: &Path) -> Result<Self, TrustError> {
        let path = dir.join(TRUST_FILE);
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TrustError::Store {
                path: path.clone(),
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(TrustError::Store {
                    path,
                    detail: e.to_string(),
                })
            }
        };
        Ok(Self {
            path,
            configured: None,
            state,
        })
    }

    /// Pins `key` (the operator's VRF public key, from the app's
    /// configuration): it is used instead of one pinned on first use.
    pub fn configure(&mut self, key: Vec<u8>) {
        self.configured = Some(key);
    }

    /// The VRF public key proofs must carry, if one is pinned.
    pub fn pinned(&self) -> Option<Vec<u8>> {
        self.configured.clone().or_else(|| {
            self.state
                .vrf_public_key
                .as_deref()
                .and_then(|k| hex::decode(k).ok())
        })
    }

    /// Checks an answer's proof for `user` and returns the committed value
    /// (`None` if the gateway runs without key transparency and no key was
    /// ever pinned). Pins the proof's VRF key on first use and remembers
    /// its root.
    pub fn check(
        &mut self,
        proof: Option<&TransparencyProof>,
        user: &str,
    ) -> Result<Option<TransparencyValue>, TrustError> {
        let pinned = self.pinned();
        let Some(proof) = proof else {
            return match pinned {
                Some(_) => Err(VerifyError::Missing.into()),
                None => Ok(None),
            };
        };
        let value = interop_transparency::verify(Some(proof), user, pinned.as_deref())?;
        let root = hex::encode(&proof.root_hash);
        let mut changed = false;
        match self.state.roots.get(&proof.epoch) {
            Some(seen) if *seen != root => {
                return Err(VerifyError::SeenOtherRoot(proof.epoch).into())
            }
            Some(_) => {}
            None => {
                self.state.roots.insert(proof.epoch, root);
                while self.state.roots.len() > MAX_REMEMBERED_ROOTS {
                    self.state.roots.pop_first();
                }
                changed = true;
            }
        }
        if pinned.is_none() {
            self.state.vrf_public_key = Some(hex::encode(&proof.vrf_public_key));
            changed = true;
        }
        if changed {
            self.save()?;
        }
        Ok(Some(value))
    }

    fn save(&self) -> Result<(), TrustError> {
        let store = |detail: String| TrustError::Store {
            path: self.path.clone(),
            detail,
        };
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| store(e.to_string()))?;
        crate::files::write_private(&self.path, &bytes).map_err(|e| store(e.to_string()))
    }
}
