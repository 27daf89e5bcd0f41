//! The provider registry: which providers may connect, what they guarantee,
//! and their credentials.
//!
//! The registry is a TOML file (mounted from a Secret in Kubernetes):
//!
//! ```toml
//! [[providers]]
//! id = "signal"
//! display_name = "Signal"
//! privacy_policy_url = "https://signal.org/legal/"
//! encryption = "e2ee"            # or "transport-only"
//! token_sha256 = ["<hex sha-256 of a token>"]   # several = rotation
//!
//! [providers.capabilities]       # optional; default: everything
//! content = ["text", "ciphertext", "media", "reply", "reaction"]
//! media_formats = ["image/jpeg", "audio/ogg"]  # empty: media-transcoding's --accept-formats
//! ```
//!
//! Optional mutual TLS: `client_cert_sha256` lists the SHA-256 (hex) of the
//! DER client certificates that authenticate as this provider (the endpoint
//! must trust their CA, `--tls-client-ca`); with `require_client_cert = true`
//! a token alone no longer authenticates it. A fingerprint belongs to one
//! provider only.
//!
//! Tokens are never stored, only their SHA-256. Tokens are random secrets of
//! at least 128 bits, so a plain hash (no salt, no stretching) is enough and
//! lets every connection be checked in constant time.

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use interop_proto::address::is_provider_id;
use interop_proto::v1::Encryption;

/// Why a registry could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read providers file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("providers file is not valid TOML: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("provider id {0:?} is not [a-z][a-z0-9-]{{0,31}}")]
    BadId(String),
    #[error("provider {0:?} is listed twice")]
    Duplicate(String),
    #[error("provider {id:?} has a max_per_second or burst that is not positive")]
    BadLimit { id: String },
    #[error("provider {id:?} has a token_sha256 that is not 64 hex digits")]
    BadTokenHash { id: String },
    #[error("provider {id:?} has a client_cert_sha256 that is not 64 hex digits")]
    BadCertHash { id: String },
    #[error("client certificate {fingerprint} is listed for both {first:?} and {second:?}")]
    DuplicateCert {
        fingerprint: String,
        first: String,
        second: String,
    },
    #[error("provider {id:?} requires a client certificate but lists none")]
    RequiresCertWithoutCert { id: String },
}

/// What a provider guarantees about message content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderEncryption {
    /// End-to-end encryption (Signal Protocol, MLS): may also send
    /// transport-only messages, e.g. to users whose app has no E2EE with it.
    E2ee,
    /// Transport encryption only.
    TransportOnly,
}

impl ProviderEncryption {
    pub fn as_proto(self) -> Encryption {
        match self {
            Self::E2ee => Encryption::E2ee,
            Self::TransportOnly => Encryption::TransportOnly,
        }
    }
}

/// A kind of content or event a provider's clients can show. A recipient
/// whose provider does not declare a kind gets a visible fallback instead
/// (e.g. a reaction as text), never a silent drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContentKind {
    Text,
    Ciphertext,
    Media,
    /// `in_reply_to` shown as a reply.
    Reply,
    Reaction,
    Edit,
    Delete,
    /// Receipts with status `READ`.
    ReadReceipt,
    Typing,
    Group,
    /// `GroupChange`: a group was created or changed (members, admins,
    /// name).
    GroupChange,
    /// `KeyNotice`: the key directory's notices (a device's keys run low, a
    /// contact's device or identity key changed).
    KeyNotice,
}

impl ContentKind {
    /// Every kind: first those of the first protocol version, then those
    /// added later.
    pub const ALL: [ContentKind; 12] = [
        Self::Text,
        Self::Ciphertext,
        Self::Media,
        Self::Reply,
        Self::Reaction,
        Self::Edit,
        Self::Delete,
        Self::ReadReceipt,
        Self::Typing,
        Self::Group,
        // Added later: declared, never assumed.
        Self::GroupChange,
        Self::KeyNotice,
    ];

    /// How many of [`Self::ALL`] the first protocol version had.
    const FIRST_VERSION: usize = 10;

    /// What a provider that declares nothing supports: the first version's
    /// kinds. A kind added later (`group-change`, `key-notice`) is left out because an
    /// app built before it could not decode it: it would show nothing,
    /// where a provider that does not declare a kind gets a visible text.
    pub const DEFAULT: &'static [ContentKind] = Self::ALL.split_at(Self::FIRST_VERSION).0;
}

/// What a provider's clients support. The default (no `capabilities` in the
/// record) is every kind of the first protocol version
/// ([`ContentKind::DEFAULT`]), so existing registries keep working; newer
/// kinds are declared.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capabilities {
    /// Content kinds the clients can show.
    pub content: Vec<ContentKind>,
    /// MIME types (`type/subtype`, `type/*`, `*/*`) of media the clients can
    /// show or play; empty means the operator's default list
    /// (media-transcoding's `--accept-formats`).
    pub media_formats: Vec<String>,
}

impl Default for Capabilities {
    fn default() -> Self {
        Self {
            content: ContentKind::DEFAULT.to_vec(),
            media_formats: Vec::new(),
        }
    }
}

impl Capabilities {
    pub fn supports(&self, kind: ContentKind) -> bool {
        self.content.contains(&kind)
    }

    /// Whether the clients can take media of `content_type`.
    pub fn accepts_media_format(&self, content_type: &str) -> bool {
        self.supports(ContentKind::Media)
            && (self.media_formats.is_empty()
                || self
                    .media_formats
                    .iter()
                    .any(|f| f.eq_ignore_ascii_case(content_type)))
    }
}

/// One provider. The same shape is the TOML file's entry and the JSON
/// record in the registry stream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub id: String,
    pub display_name: String,
    #[serde(default)]
    pub privacy_policy_url: String,
    pub encryption: ProviderEncryption,
    /// SHA-256 (hex) of each active token. Several = rotation in progress.
    /// A credential's id is the first 12 hex digits of its hash.
    #[serde(default)]
    pub token_sha256: Vec<String>,
    /// Sustained messages per second the provider may send (all its users
    /// together, across every ingest replica). Default: the gateway's.
    #[serde(default)]
    pub max_per_second: Option<f64>,
    /// Messages the provider may send at once above the sustained rate.
    #[serde(default)]
    pub burst: Option<u32>,
    /// What the provider's clients support.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// SHA-256 (hex) of each DER client certificate that authenticates as
    /// this provider over mutual TLS. Its credential id is `cert-` and the
    /// first 12 hex digits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_cert_sha256: Vec<String>,
    /// Refuse a `Hello` for this provider unless the connection presented
    /// one of its client certificates (a token alone is not enough).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_client_cert: bool,
    /// A removed provider (a tombstone in the registry stream).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// The id of a credential: the first 12 hex digits of its token's SHA-256.
/// Safe to show and log; it does not reveal the token.
pub fn credential_id(token_sha256: &str) -> String {
    token_sha256.trim().chars().take(12).collect()
}

/// The credential id of a client certificate (by its SHA-256, hex).
pub fn cert_credential_id(cert_sha256: &str) -> String {
    format!("cert-{}", credential_id(&cert_sha256.to_ascii_lowercase()))
}

/// Hex SHA-256 of a DER certificate: the fingerprint the registry lists.
pub fn cert_fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

impl Provider {
    /// Ids of the active credentials: tokens, then client certificates.
    pub fn credential_ids(&self) -> Vec<String> {
        self.token_sha256
            .iter()
            .map(|h| credential_id(h))
            .chain(
                self.client_cert_sha256
                    .iter()
                    .map(|h| cert_credential_id(h)),
            )
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    providers: Vec<Provider>,
}

/// The loaded registry.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    providers: HashMap<String, Provider>,
    hashes: HashMap<String, Vec<[u8; 32]>>,
    /// Client-certificate fingerprint (lowercase hex) → provider id.
    certs: HashMap<String, String>,
}

/// How a `Hello` was authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown provider, wrong token, or no token where one is needed.
    Failed,
    /// The connection's client certificate belongs to another provider.
    CertOfOtherProvider,
    /// The provider requires its client certificate and none was presented.
    CertRequired,
}

impl Registry {
    pub fn load(path: &Path) -> Result<Self, RegistryError> {
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, RegistryError> {
        let file: File = toml::from_str(text)?;
        Self::from_providers(file.providers)
    }

    /// Validates and indexes providers; removed ones are left out.
    pub fn from_providers(providers: Vec<Provider>) -> Result<Self, RegistryError> {
        let mut registry = Self::default();
        for p in providers {
            registry.try_add(p)?;
        }
        Ok(registry)
    }

    /// Validates `p` against itself and the providers already here, and
    /// adds it; on error the registry is unchanged. A removed provider is
    /// left out.
    pub fn try_add(&mut self, p: Provider) -> Result<(), RegistryError> {
        if p.removed {
            return Ok(());
        }
        if !is_provider_id(&p.id) {
            return Err(RegistryError::BadId(p.id));
        }
        let mut hashes = Vec::with_capacity(p.token_sha256.len());
        for h in &p.token_sha256 {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h.trim(), &mut out)
                .map_err(|_| RegistryError::BadTokenHash { id: p.id.clone() })?;
            hashes.push(out);
        }
        if p.max_per_second
            .is_some_and(|r| !(r > 0.0 && r.is_finite()))
            || p.burst == Some(0)
        {
            return Err(RegistryError::BadLimit { id: p.id });
        }
        if self.providers.contains_key(&p.id) {
            return Err(RegistryError::Duplicate(p.id));
        }
        if p.require_client_cert && p.client_cert_sha256.is_empty() {
            return Err(RegistryError::RequiresCertWithoutCert { id: p.id });
        }
        let mut certs = Vec::with_capacity(p.client_cert_sha256.len());
        for c in &p.client_cert_sha256 {
            let c = c.trim().to_ascii_lowercase();
            if c.len() != 64 || hex::decode(&c).is_err() {
                return Err(RegistryError::BadCertHash { id: p.id });
            }
            if let Some(first) = self.certs.get(&c) {
                return Err(RegistryError::DuplicateCert {
                    fingerprint: c,
                    first: first.clone(),
                    second: p.id,
                });
            }
            certs.push(c);
        }
        for c in certs {
            self.certs.insert(c, p.id.clone());
        }
        self.hashes.insert(p.id.clone(), hashes);
        self.providers.insert(p.id.clone(), p);
        Ok(())
    }

    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.providers.get(id)
    }

    /// Every provider, in no particular order.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }

    /// Whether `provider` still has the credential `credential_id` (it was
    /// not revoked and the provider not removed).
    pub fn has_credential(&self, provider: &str, credential_id: &str) -> bool {
        self.providers
            .get(provider)
            .is_some_and(|p| p.credential_ids().iter().any(|c| c == credential_id))
    }

    /// Like [`Registry::authenticate`], also returning which credential
    /// matched, so a connection can be closed when it is revoked.
    pub fn authenticate_credential(
        &self,
        provider: &str,
        token: &str,
    ) -> Option<(&Provider, String)> {
        let hashes = self.hashes.get(provider)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut matched = None;
        for h in hashes {
            if constant_time_eq(h, &digest) {
                matched = Some(credential_id(&hex::encode(h)));
            }
        }
        let id = matched?;
        self.providers.get(provider).map(|p| (p, id))
    }

    /// Authenticates a `Hello` for `provider` on a connection that
    /// presented the verified client certificate `cert_sha256` (if any).
    ///
    /// A certificate listed for provider P authenticates a `Hello` for P
    /// without a token; a token, if sent as well, must be valid too. It never
    /// authenticates any other provider, not even with that provider's
    /// valid token. Without a listed certificate the token decides, unless
    /// the provider requires its certificate. Returns the provider and the
    /// credential id that matched.
    pub fn authenticate_hello(
        &self,
        provider: &str,
        token: &str,
        cert_sha256: Option<&str>,
    ) -> Result<(&Provider, String), AuthError> {
        let cert_owner = cert_sha256.and_then(|c| {
            self.certs
                .get(&c.to_ascii_lowercase())
                .map(|owner| (owner, c))
        });
        match cert_owner {
            Some((owner, _)) if owner != provider => Err(AuthError::CertOfOtherProvider),
            Some((_, cert)) => {
                let p = self.providers.get(provider).ok_or(AuthError::Failed)?;
                if !token.is_empty() && self.authenticate(provider, token).is_none() {
                    return Err(AuthError::Failed);
                }
                Ok((p, cert_credential_id(cert)))
            }
            None => {
                let (p, id) = self
                    .authenticate_credential(provider, token)
                    .ok_or(AuthError::Failed)?;
                if p.require_client_cert {
                    return Err(AuthError::CertRequired);
                }
                Ok((p, id))
            }
        }
    }

    /// The provider a client certificate (SHA-256, hex) is listed for.
    pub fn cert_owner(&self, cert_sha256: &str) -> Option<&str> {
        self.certs
            .get(&cert_sha256.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.providers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.providers.is_empty()
    }

    /// Whether `token` is an active credential of `provider`. Compares the
    /// token's hash against every active hash in constant time.
    pub fn authenticate(&self, provider: &str, token: &str) -> Option<&Provider> {
        let hashes = self.hashes.get(provider)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut ok = false;
        for h in hashes {
            ok |= constant_time_eq(h, &digest);
        }
        if ok {
            self.providers.get(provider)
        } else {
            None
        }
    }
}

/// Hex SHA-256 of a token, as stored in the registry.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b) {
        diff |= x ^ y;
    }
    diff == 0
}

pub mod store;

#[cfg(test)]
mod tests {
    use super::*;

    fn registry() -> Registry {
        let text = format!(
            r#"
            [[providers]]
            id = "signal"
            display_name = "Signal"
            privacy_policy_url = "https://signal.org/legal/"
            encryption = "e2ee"
            token_sha256 = ["{}", "{}"]

            [[providers]]
            id = "home"
            display_name = "Home"
            encryption = "transport-only"
            "#,
            hash_token("old-token"),
            hash_token("new-token")
        );
        Registry::from_toml(&text).unwrap()
    }

    #[test]
    fn authenticates_any_active_token() {
        let r = registry();
        assert_eq!(r.len(), 2);
        assert_eq!(r.authenticate("signal", "old-token").unwrap().id, "signal");
        assert_eq!(r.authenticate("signal", "new-token").unwrap().id, "signal");
        assert!(r.authenticate("signal", "other").is_none());
        assert!(r.authenticate("signal", "").is_none());
        assert!(r.authenticate("nobody", "old-token").is_none());
        let (_, cred) = r.authenticate_credential("signal", "new-token").unwrap();
        assert_eq!(cred, credential_id(&hash_token("new-token")));
        assert_eq!(cred.len(), 12);
        assert!(r.has_credential("signal", &cred));
        assert!(!r.has_credential("signal", "000000000000"));
        assert!(!r.has_credential("home", &cred));
        // A provider without credentials cannot connect.
        assert!(r.authenticate("home", "").is_none());
    }

    #[test]
    fn capabilities_default_to_the_first_versions_kinds_and_parse() {
        let r = registry();
        let home = r.get("home").unwrap();
        assert!(ContentKind::DEFAULT
            .iter()
            .all(|k| home.capabilities.supports(*k)));
        // A kind added later is declared, never assumed.
        assert!(!home.capabilities.supports(ContentKind::GroupChange));
        assert!(!home.capabilities.supports(ContentKind::KeyNotice));
        assert!(home.capabilities.accepts_media_format("video/mp4"));
        let text = "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\n[providers.capabilities]\ncontent = [\"text\", \"media\", \"read-receipt\"]\nmedia_formats = [\"image/jpeg\"]\n";
        let r = Registry::from_toml(text).unwrap();
        let caps = &r.get("a").unwrap().capabilities;
        assert!(caps.supports(ContentKind::ReadReceipt));
        assert!(!caps.supports(ContentKind::Reaction));
        assert!(caps.accepts_media_format("IMAGE/JPEG"));
        assert!(!caps.accepts_media_format("video/mp4"));
        let bad = "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\n[providers.capabilities]\ncontent = [\"hologram\"]\n";
        assert!(matches!(
            Registry::from_toml(bad),
            Err(RegistryError::Parse(_))
        ));
    }

    #[test]
    fn a_client_certificate_authenticates_only_its_own_provider() {
        let (p_cert, q_cert) = ("a".repeat(64), "b".repeat(64));
        let text = format!(
            r#"
            [[providers]]
            id = "p"
            display_name = "P"
            encryption = "e2ee"
            token_sha256 = ["{}"]
            client_cert_sha256 = ["{}"]

            [[providers]]
            id = "q"
            display_name = "Q"
            encryption = "e2ee"
            token_sha256 = ["{}"]
            client_cert_sha256 = ["{}"]
            require_client_cert = true
            "#,
            hash_token("p-token"),
            p_cert.to_uppercase(),
            hash_token("q-token"),
            q_cert
        );
        let r = Registry::from_toml(&text).unwrap();
        // The certificate alone authenticates its provider (any hex case).
        let (p, cred) = r.authenticate_hello("p", "", Some(&p_cert)).unwrap();
        assert_eq!(p.id, "p");
        assert_eq!(cred, cert_credential_id(&p_cert));
        assert!(r.has_credential("p", &cred));
        // With a token as well, the token must be right too.
        assert!(r.authenticate_hello("p", "p-token", Some(&p_cert)).is_ok());
        assert_eq!(
            r.authenticate_hello("p", "wrong", Some(&p_cert))
                .unwrap_err(),
            AuthError::Failed
        );
        // P's certificate never authenticates Q, not even with Q's token.
        assert_eq!(
            r.authenticate_hello("q", "q-token", Some(&p_cert))
                .unwrap_err(),
            AuthError::CertOfOtherProvider
        );
        // Q requires its certificate: its token alone is not enough.
        assert_eq!(
            r.authenticate_hello("q", "q-token", None).unwrap_err(),
            AuthError::CertRequired
        );
        assert!(r.authenticate_hello("q", "", Some(&q_cert)).is_ok());
        // P does not require one: the token alone works; no token does not.
        assert!(r.authenticate_hello("p", "p-token", None).is_ok());
        assert_eq!(
            r.authenticate_hello("p", "", None).unwrap_err(),
            AuthError::Failed
        );
        // A certificate no provider lists counts as none.
        assert!(r
            .authenticate_hello("p", "p-token", Some(&"c".repeat(64)))
            .is_ok());
        assert_eq!(r.cert_owner(&q_cert.to_uppercase()), Some("q"));

        // One certificate, two providers: refused.
        let dup = format!(
            "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\nclient_cert_sha256 = [\"{p_cert}\"]\n[[providers]]\nid = \"b\"\ndisplay_name = \"y\"\nencryption = \"e2ee\"\nclient_cert_sha256 = [\"{p_cert}\"]\n"
        );
        assert!(matches!(
            Registry::from_toml(&dup),
            Err(RegistryError::DuplicateCert { .. })
        ));
        let short = "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\nclient_cert_sha256 = [\"abcd\"]\n";
        assert!(matches!(
            Registry::from_toml(short),
            Err(RegistryError::BadCertHash { .. })
        ));
        let required = "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\nrequire_client_cert = true\n";
        assert!(matches!(
            Registry::from_toml(required),
            Err(RegistryError::RequiresCertWithoutCert { .. })
        ));
    }

    #[test]
    fn rejects_bad_files() {
        let bad_id = "[[providers]]\nid = \"Sig\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\n";
        assert!(matches!(
            Registry::from_toml(bad_id),
            Err(RegistryError::BadId(_))
        ));
        let bad_hash = "[[providers]]\nid = \"sig\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\ntoken_sha256 = [\"abc\"]\n";
        assert!(matches!(
            Registry::from_toml(bad_hash),
            Err(RegistryError::BadTokenHash { .. })
        ));
        let dup = "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\n[[providers]]\nid = \"a\"\ndisplay_name = \"y\"\nencryption = \"e2ee\"\n";
        assert!(matches!(
            Registry::from_toml(dup),
            Err(RegistryError::Duplicate(_))
        ));
        let zero = "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"e2ee\"\nmax_per_second = 0.0\n";
        assert!(matches!(
            Registry::from_toml(zero),
            Err(RegistryError::BadLimit { .. })
        ));
        let unknown = "[[providers]]\nid = \"a\"\ndisplay_name = \"x\"\nencryption = \"none\"\n";
        assert!(matches!(
            Registry::from_toml(unknown),
            Err(RegistryError::Parse(_))
        ));
        assert!(matches!(
            Registry::load(Path::new("/nonexistent/providers.toml")),
            Err(RegistryError::Read { .. })
        ));
    }
}
