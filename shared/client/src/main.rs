//! `interop`: the command-line client of the gateway. On a terminal it
//! prints short readable lines; with `--json`, or when stdout is not a
//! terminal (piped, redirected), one JSON object per line, which scripts
//! parse (`human.rs`). Diagnostics go to stderr. Exit codes: [`EXIT_CODES`].

#![warn(clippy::unwrap_used)] // docs/adr/0024: an expect says why it cannot fail

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use serde_json::json;

use interop_client::config::ClientConfig;
use interop_client::media::{MediaClient, MediaError, Upload};
use interop_client::olm::{self, LocalDevice};
use interop_client::{
    ConsentOutcome, ConsentStateOutcome, GroupOutcome, Receiver, RequestOutcome, SendOutcome,
    Sender,
};
use interop_proto::v1::{
    envelope::Content, Ciphertext, Encryption, Envelope, Inbox, ReceiptStatus, RejectCode,
    Rejected, RequestAction,
};
use interop_proto::Address;

mod human;
mod send_many;
use human::Style;

/// Done.
const EXIT_OK: i32 = 0;
/// Something went wrong: the gateway cannot be reached, a connection broke,
/// a download was damaged.
const EXIT_ERROR: i32 = 1;
/// The gateway refused (its answer is printed).
const EXIT_REFUSED: i32 = 2;
/// `listen --count N` timed out before N messages.
const EXIT_TIMEOUT: i32 = 3;
/// Bad usage or configuration: an unknown flag, a bad address, no token or
/// URL, an unreadable config or CA file (sysexits' EX_USAGE).
const EXIT_USAGE: i32 = 64;

/// What `interop --help` says after the commands; docs/protocol.md repeats it.
const EXIT_CODES: &str = "\
Output:
  On a terminal: short readable lines. With --json, or when stdout is not a
  terminal (piped, redirected): one JSON object per line, for scripts.
  Diagnostics go to stderr.

Exit codes:
  0   done
  1   error: the gateway could not be reached, a connection broke, a
      download did not match its SHA-256
  2   refused by the gateway (its answer is printed: {\"rejected\": ...})
  3   timed out: `listen --count N` got fewer than N messages in --timeout
  64  bad usage or configuration: an unknown flag or value, a bad address,
      no token or URL, an unreadable config or CA file";

/// What each command's `--help` says at the end.
const EXIT_CODES_SHORT: &str = "\
Prints readable lines on a terminal, JSON with --json or when piped.
Exit codes: 0 done, 1 error, 2 refused by the gateway, 3 timed out (listen),
64 bad usage or configuration; `interop --help` says more.";

/// The command line: [`Cli`], each subcommand's help ending with the exit
/// codes.
fn cli_command() -> clap::Command {
    fn with_codes(c: clap::Command) -> clap::Command {
        c.mut_subcommands(with_codes).after_help(EXIT_CODES_SHORT)
    }
    Cli::command().mut_subcommands(with_codes)
}

/// Parses the command line (`args`, the program name first).
fn parse_args<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches as _;
    Cli::from_arg_matches(&cli_command().try_get_matches_from(args)?)
}

#[derive(Parser)]
#[command(
    name = "interop",
    version,
    about = "Command-line client of the interop gateway",
    after_help = EXIT_CODES
)]
struct Cli {
    /// Print one JSON object per line (the default when stdout is not a
    /// terminal).
    #[arg(long, global = true)]
    json: bool,
    /// Client config file (default: .run/client.toml here or in a parent).
    #[arg(long, env = "INTEROP_CLIENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// The provider's token (default: from the client config).
    #[arg(long, env = "INTEROP_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// CA certificates (PEM) to trust for wss:// endpoints.
    #[arg(long, env = "INTEROP_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Client certificate (PEM) to present for mutual TLS; with it, the
    /// token may be left out. Needs --ca-file and --client-key.
    #[arg(long, env = "INTEROP_CLIENT_CERT", global = true, requires_all = ["ca_file", "client_key"])]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        env = "INTEROP_CLIENT_KEY",
        global = true,
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// Provider id to authenticate as (default: the provider of --as).
    #[arg(long, env = "INTEROP_PROVIDER", global = true)]
    provider: Option<String>,
    /// Where end-to-end encryption keeps this machine's devices' Olm
    /// accounts and sessions (default: `keys/` beside the client config,
    /// i.e. `.run/keys`).
    #[arg(long, env = "INTEROP_KEYS_DIR", global = true)]
    keys_dir: Option<PathBuf>,
    /// The gateway's key transparency VRF public key (64 hex digits, from
    /// its operator; `interop keys vrf-public-key` derives it). Proofs under
    /// another key, and answers without a proof, are refused. Default: the
    /// client config's `kt_vrf_public_key`, else the first key seen is
    /// pinned in the keys directory (trust on first use).
    #[arg(long, env = "INTEROP_KT_VRF_PUBLIC_KEY", global = true)]
    kt_vrf_public_key: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Opt a user in to interoperability and choose who may reach them.
    OptIn {
        /// The user, e.g. home:+4915112345678.
        #[arg(long = "as")]
        user: String,
        /// Provider allowed to reach the user (repeat, or comma-separate).
        #[arg(long, value_delimiter = ',')]
        allow: Vec<String>,
        #[arg(long, env = "INTEROP_INGEST_URL")]
        ingest_url: Option<String>,
    },
    /// Opt a user out: nothing from third parties reaches them any more.
    OptOut {
        #[arg(long = "as")]
        user: String,
        #[arg(long, env = "INTEROP_INGEST_URL")]
        ingest_url: Option<String>,
    },
    /// A user's settings: show them, or change opt-in, allowed providers
    /// and inbox (any not given keep their current value).
    Consent {
        /// The user, e.g. home:+4915112345678.
        #[arg(long = "as")]
        user: String,
        /// Opt in (true) or out (false): out stops all third-party delivery at once.
        #[arg(long)]
        opted_in: Option<bool>,
        /// Providers allowed to reach the user (repeat, or comma-separate);
        /// `--allow ''` allows none.
        #[arg(long, value_delimiter = ',')]
        allow: Option<Vec<String>>,
        /// `separate` (a third-party inbox) or `combined` (with other chats).
        #[arg(long, value_parser = ["separate", "combined"])]
        inbox: Option<String>,
        #[arg(long, env = "INTEROP_INGEST_URL")]
        ingest_url: Option<String>,
    },
    /// Answer a message request, or change an earlier answer.
    Request {
        /// accept, decline, block, report (block and report as spam) or
        /// reset (the next message is a request again).
        #[arg(value_parser = ["accept", "decline", "block", "report", "reset"])]
        action: String,
        /// The recipient answering, e.g. home:+4915112345678.
        #[arg(long = "as")]
        user: String,
        /// The sender, e.g. signal:alice.
        #[arg(long)]
        sender: String,
        #[arg(long, env = "INTEROP_INGEST_URL")]
        ingest_url: Option<String>,
    },
    /// Send a message (text, ciphertext or media) to a user or a group and
    /// print the gateway's answer.
    #[command(group(clap::ArgGroup::new("content").required(true).args(["text", "ciphertext_b64", "media", "file", "typing", "react_to", "delete"])))]
    Send {
        /// The sender, e.g. signal:alice.
        #[arg(long = "as")]
        from: String,
        /// The recipient, e.g. home:+4915112345678.
        #[arg(long, required_unless_present = "group", conflicts_with = "group")]
        to: Option<String>,
        /// Send to this group instead (every other member gets a copy).
        #[arg(long)]
        group: Option<String>,
        /// Server-visible text (sent TRANSPORT_ONLY).
        #[arg(long)]
        text: Option<String>,
        /// End-to-end-encrypted payload, base64 (sent E2EE).
        #[arg(long)]
        ciphertext_b64: Option<String>,
        /// Media uploaded before (`interop media upload`): its media id, with
        /// the upload's --content-type and --size.
        #[arg(long, requires_all = ["content_type", "size"])]
        media: Option<String>,
        /// Upload this file to the media API and send it (the type from
        /// --content-type or the file name's extension).
        #[arg(long)]
        file: Option<PathBuf>,
        /// The media type of --media (as uploaded) or --file.
        #[arg(long)]
        content_type: Option<String>,
        /// The size in bytes of --media (as uploaded).
        #[arg(long, requires = "media")]
        size: Option<u64>,
        /// The SHA-256 (hex) of --media, if the gateway should check it.
        #[arg(long, requires = "media")]
        sha256: Option<String>,
        /// The file name the recipient sees (default for --file: its name).
        #[arg(long)]
        filename: Option<String>,
        /// With --text: encrypt it end to end (Olm) for every device of the
        /// recipient and the sender's other devices, with keys from the
        /// gateway's key directory; publishes this device's keys first if
        /// needed (the sender must have opted in). With --media or --file:
        /// the media is end-to-end encrypted (uploaded as `e2ee`; the file
        /// must be encrypted already: the gateway passes it through as is).
        #[arg(long, conflicts_with = "ciphertext_b64")]
        e2ee: bool,
        /// This machine's device id for --e2ee.
        #[arg(long, default_value = "cli")]
        device: String,
        /// Instead of a message: tell the recipient's open sessions the
        /// sender is typing (`true`) or stopped (`false`); not stored.
        #[arg(long)]
        typing: Option<bool>,
        /// Instead of a message: react to this message id with --emoji
        /// (an empty --emoji takes the reaction back).
        #[arg(long, requires = "emoji")]
        react_to: Option<String>,
        /// The reaction of --react-to, e.g. 👍.
        #[arg(long, requires = "react_to")]
        emoji: Option<String>,
        /// Instead of a message: delete this message (one the sender sent)
        /// for everyone.
        #[arg(long)]
        delete: Option<String>,
        /// Send --text (with --e2ee: encrypted) or --ciphertext-b64 as the
        /// new content of this message (one the sender sent).
        #[arg(long)]
        edit: Option<String>,
        /// Client message id (default: a fresh UUID). Re-use it to retry.
        #[arg(long)]
        client_message_id: Option<String>,
        #[arg(long, env = "INTEROP_INGEST_URL")]
        ingest_url: Option<String>,
        /// The media API, for --file.
        #[arg(long, env = "INTEROP_MEDIA_URL")]
        media_url: Option<String>,
    },
    /// Send many messages from a JSON lines file, in transactions, and
    /// print one answer per message.
    ///
    /// One message per line of --file, sent in transactions of up to the
    /// gateway's limit (256); the answers come in line order, each with its
    /// line number ("line"). A line:
    /// {"from": "signal:alice", "to": "home:+4915112345678" (or "group":
    /// "g-..."), "text": "hi" (or "ciphertext_b64": "..."),
    /// "client_message_id": "..." (optional; default a fresh UUID)}. Every
    /// sender must be a user of one provider. Exit 2 if any was refused.
    SendMany {
        /// The JSON lines file; `-` reads stdin.
        #[arg(long)]
        file: PathBuf,
        #[arg(long, env = "INTEROP_INGEST_URL")]
        ingest_url: Option<String>,
    },
    /// Groups: create one, change it, show it (send to one with `send --group`).
    Group {
        #[command(subcommand)]
        command: GroupCommand,
        #[arg(long, env = "INTEROP_INGEST_URL", global = true)]
        ingest_url: Option<String>,
    },
    /// Media: upload a file to send, download one that was delivered.
    Media {
        #[command(subcommand)]
        command: MediaCommand,
        /// The media API, e.g. http://127.0.0.1:8082.
        #[arg(long, env = "INTEROP_MEDIA_URL", global = true)]
        media_url: Option<String>,
    },
    /// Print a shell completion script, e.g. `interop completions bash >
    /// /etc/bash_completion.d/interop`, or for zsh into a directory of
    /// $fpath as `_interop`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Manage providers (platform team): add, list, rotate, revoke, remove.
    Provider {
        #[command(subcommand)]
        command: ProviderCommand,
        /// The provider admin API, e.g. http://127.0.0.1:8090.
        #[arg(long, env = "INTEROP_ADMIN_URL", global = true)]
        admin_url: Option<String>,
        /// The admin API's bearer token.
        #[arg(
            long,
            env = "INTEROP_ADMIN_TOKEN",
            global = true,
            hide_env_values = true
        )]
        admin_token: Option<String>,
    },
    /// Erase a user (platform team): their inbox, device cursors, media,
    /// consent, contacts, reputation and group memberships. Prints what was
    /// removed; running it again is harmless.
    EraseUser {
        /// The user, e.g. home:+4915112345678.
        address: String,
        /// The provider admin API, e.g. http://127.0.0.1:8090.
        #[arg(long, env = "INTEROP_ADMIN_URL")]
        admin_url: Option<String>,
        /// The admin API's bearer token.
        #[arg(long, env = "INTEROP_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
    },
    /// End-to-end encryption: this machine's device keys in the gateway's
    /// key directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
        #[arg(long, env = "INTEROP_INGEST_URL", global = true)]
        ingest_url: Option<String>,
    },
    /// Receive messages for a user, print each as JSON and ack it.
    /// End-to-end-encrypted messages for this machine's device are
    /// decrypted (`text`, with `e2ee_scheme`).
    Listen {
        #[arg(long = "as")]
        user: String,
        /// Device id of this session.
        #[arg(long, default_value = "cli")]
        device: String,
        /// Exit after this many messages (exit code 3 if the timeout came first).
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(long, env = "INTEROP_DELIVERY_URL")]
        delivery_url: Option<String>,
        /// Ingest, for looking up senders' keys when decrypting.
        #[arg(long, env = "INTEROP_INGEST_URL")]
        ingest_url: Option<String>,
    },
    /// Receive messages for every user of a provider as a provider session
    /// (server to server, in batches: docs/protocol.md, "Provider
    /// sessions"); print each message as JSON (with its `user`, `partition`
    /// and `batch`) and ack each batch once printed.
    ListenProvider {
        /// The provider id, e.g. `home` (its token from --token or the
        /// client config).
        #[arg(long = "for")]
        provider: String,
        /// Exit after this many messages (exit code 3 if the timeout came first).
        #[arg(long)]
        count: Option<u64>,
        /// Exit after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
        #[arg(long, env = "INTEROP_DELIVERY_URL")]
        delivery_url: Option<String>,
    },
}

#[derive(Subcommand)]
enum GroupCommand {
    /// Create a group; the creator (one of your users) is its first admin.
    Create {
        #[arg(long)]
        creator: String,
        /// A member (repeat, or comma-separate), e.g. home:+4915112345678.
        #[arg(long = "member", value_delimiter = ',')]
        members: Vec<String>,
        /// The group's name (at most 128 bytes).
        #[arg(long)]
        name: Option<String>,
    },
    /// Change a group as one of its admins: add, remove, make admins, rename.
    Change {
        group_id: String,
        /// The admin making the change (one of your users).
        #[arg(long)]
        actor: String,
        /// Members to add (repeat, or comma-separate).
        #[arg(long, value_delimiter = ',')]
        add: Vec<String>,
        /// Members to remove (repeat, or comma-separate).
        #[arg(long, value_delimiter = ',')]
        remove: Vec<String>,
        /// Members to make admins (repeat, or comma-separate).
        #[arg(long = "admin", value_delimiter = ',')]
        admins: Vec<String>,
        /// A new name; `--name ''` removes the name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Show a group's members, admins and name, as one of its members.
    Show {
        group_id: String,
        /// The member asking (one of your users).
        #[arg(long = "as")]
        user: String,
    },
}

#[derive(Subcommand)]
enum MediaCommand {
    /// Upload a file to send (`interop send --media ID --content-type ...
    /// --size ...`); prints its media id. Kept 30 days by default.
    Upload {
        /// The user who will send it (its provider uploads), e.g. signal:alice.
        #[arg(long = "from", visible_alias = "as")]
        from: String,
        file: PathBuf,
        /// The media type (default: from the file name's extension).
        #[arg(long)]
        content_type: Option<String>,
        /// End-to-end-encrypted media: passed through byte for byte, never
        /// converted (the file must be encrypted already).
        #[arg(long)]
        e2ee: bool,
        /// A sticker (images only).
        #[arg(long)]
        sticker: bool,
    },
    /// Download media delivered to one of your users; checks its SHA-256.
    Download {
        media_id: String,
        /// The user it was delivered to.
        #[arg(long = "as")]
        user: String,
        /// Where to write it (written beside it first, then renamed).
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Publish (or top up) the keys of a user's device on this machine: an
    /// Olm account kept under the keys directory. The user must have opted
    /// in.
    Publish {
        #[arg(long = "as")]
        user: String,
        #[arg(long, default_value = "cli")]
        device: String,
        /// One-time keys to add (at most 100).
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// List a user's devices and identity keys, as one of your users sees them.
    Devices {
        /// The asking user (one of your provider's).
        #[arg(long = "as")]
        requester: String,
        #[arg(long)]
        user: String,
    },
    /// Audit key transparency's history (docs/adr/0029): verifies every
    /// append-only proof from epoch --from to --to against the published
    /// roots, and finds a fork or rollback (two roots for one epoch), a
    /// missing root or proof. Needs read access to the stream
    /// INTEROP_KT_ROOTS only (a NATS user allowed to read it). Exits 1 when
    /// it finds a problem.
    Audit {
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Default: the latest published epoch.
        #[arg(long)]
        to: Option<u64>,
        /// The gateway's NATS (credentials in the URL if it needs them).
        #[arg(long, env = "INTEROP_NATS_URL")]
        nats_url: String,
    },
    /// Print the key transparency VRF public key of the secret key in
    /// --secret-file (ingest's --kt-vrf-key-file): what providers' apps pin.
    VrfPublicKey {
        #[arg(long)]
        secret_file: PathBuf,
    },
}

#[derive(Subcommand)]
enum ProviderCommand {
    /// Register a provider; prints its first token (shown once).
    Add {
        /// Provider id: `[a-z][a-z0-9-]{0,31}`.
        id: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "")]
        privacy_policy_url: String,
        /// e2ee or transport-only.
        #[arg(long)]
        encryption: String,
        #[arg(long)]
        max_per_second: Option<f64>,
        #[arg(long)]
        burst: Option<u32>,
        /// Content kinds its clients show (comma-separated: text, ciphertext,
        /// media, reply, reaction, edit, delete, read-receipt, typing, group,
        /// group-change, key-notice). Default: all.
        #[arg(long, value_delimiter = ',')]
        content: Option<Vec<String>>,
        /// Media MIME types its clients take (comma-separated). Default: any.
        #[arg(long, value_delimiter = ',')]
        media_formats: Option<Vec<String>>,
        /// SHA-256 (hex) of a client certificate that authenticates as it
        /// over mutual TLS (repeat, or comma-separate).
        #[arg(long = "client-cert-sha256", value_delimiter = ',')]
        client_cert_sha256: Vec<String>,
        /// Refuse its token alone: it must present one of its client certificates.
        #[arg(long)]
        require_client_cert: bool,
    },
    /// Change what a provider's clients support (replaces both lists).
    Capabilities {
        id: String,
        /// Content kinds (comma-separated; see `add`). Default: all.
        #[arg(long, value_delimiter = ',')]
        content: Option<Vec<String>>,
        /// Media MIME types (comma-separated). Default: any.
        #[arg(long, value_delimiter = ',')]
        media_formats: Option<Vec<String>>,
    },
    /// Set a provider's client certificates (replaces the list; connections
    /// using a certificate no longer listed are closed).
    ClientCerts {
        id: String,
        /// SHA-256 (hex) of a client certificate (repeat, or comma-separate;
        /// none: token only).
        #[arg(long = "sha256", value_delimiter = ',')]
        sha256: Vec<String>,
        /// Refuse its token alone.
        #[arg(long)]
        require: bool,
    },
    /// List providers: capabilities, client certificates, credential ids.
    List,
    /// Add a credential (the old ones keep working until revoked); prints the token.
    Rotate { id: String },
    /// Revoke a credential: connections using it are closed.
    Revoke {
        id: String,
        #[arg(long)]
        credential: String,
    },
    /// Remove a provider and all its credentials.
    Remove { id: String },
}

/// The `capabilities` JSON of the admin API; a list not given is left out
/// so the gateway's default (everything) applies.
fn capabilities(
    content: Option<Vec<String>>,
    media_formats: Option<Vec<String>>,
) -> serde_json::Value {
    let mut caps = serde_json::Map::new();
    if let Some(c) = content {
        let c: Vec<String> = c
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        caps.insert("content".into(), json!(c));
    }
    if let Some(m) = media_formats {
        let m: Vec<String> = m
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        caps.insert("media_formats".into(), json!(m));
    }
    serde_json::Value::Object(caps)
}

/// Bad usage or configuration: exits with [`EXIT_USAGE`].
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(message: impl Into<String>) -> anyhow::Error {
    Usage(message.into()).into()
}

struct Ctx {
    /// How to print answers.
    out: Style,
    file: ClientConfig,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// A client certificate authenticates: no token needed.
    cert_auth: bool,
    token: Option<String>,
    provider: Option<String>,
    keys_dir: Option<PathBuf>,
    config_path: Option<PathBuf>,
    /// The configured VRF public key to pin (flag, then client config).
    kt_vrf_public_key: Option<Vec<u8>>,
}

impl Ctx {
    /// What this machine trusts of key transparency, with the configured
    /// VRF key pinned.
    fn trust(&self) -> anyhow::Result<interop_client::trust::Trust> {
        let mut trust = interop_client::trust::Trust::open(&self.keys_dir()?)?;
        if let Some(k) = &self.kt_vrf_public_key {
            trust.configure(k.clone());
        }
        Ok(trust)
    }

    /// `user`'s device `device` on this machine, with the configured VRF
    /// key pinned.
    fn open_device(&self, user: &str, device: &str) -> anyhow::Result<LocalDevice> {
        let mut me = LocalDevice::open(&self.keys_dir()?, user, device)?;
        if let Some(k) = &self.kt_vrf_public_key {
            me.trust.configure(k.clone());
        }
        Ok(me)
    }

    /// Where this machine's devices' Olm accounts and sessions live.
    fn keys_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.keys_dir {
            return Ok(d.clone());
        }
        self.config_path
            .as_deref()
            .and_then(std::path::Path::parent)
            .map(|d| d.join("keys"))
            .ok_or_else(|| usage("no keys directory: pass --keys-dir or run scripts/up"))
    }

    fn creds(&self, user: &str) -> anyhow::Result<(String, String)> {
        let address =
            Address::parse(user).map_err(|e| usage(format!("{user:?} is not an address: {e}")))?;
        let provider = self
            .provider
            .clone()
            .unwrap_or_else(|| address.provider().to_owned());
        self.provider_creds(provider)
    }

    /// The token of `provider` (flags first, then the client config).
    fn provider_creds(&self, provider: String) -> anyhow::Result<(String, String)> {
        let token = match (&self.token, self.file.tokens.get(&provider)) {
            (Some(t), _) | (None, Some(t)) => t.clone(),
            // The client certificate authenticates the provider.
            (None, None) if self.cert_auth => String::new(),
            (None, None) => {
                return Err(usage(format!(
                "no token for provider {provider:?}: pass --token (or --client-cert) or run scripts/up"
            )))
            }
        };
        Ok((provider, token))
    }

    /// The admin API client: flags first, then the client config.
    fn admin(
        &self,
        url: Option<String>,
        token: Option<String>,
    ) -> anyhow::Result<interop_client::admin::AdminClient> {
        let url = url
            .or_else(|| self.file.admin_url.clone())
            .ok_or_else(|| usage("no admin URL: pass --admin-url or run scripts/up"))?;
        let token = token
            .or_else(|| self.file.admin_token.clone())
            .ok_or_else(|| usage("no admin token: pass --admin-token or run scripts/up"))?;
        interop_client::admin::AdminClient::new(&url, &token).map_err(|e| usage(e.to_string()))
    }

    fn url(
        &self,
        flag: Option<String>,
        from_file: Option<&String>,
        what: &str,
    ) -> anyhow::Result<String> {
        flag.or_else(|| from_file.cloned()).ok_or_else(|| {
            usage(format!(
                "no {what} URL: pass --{what}-url or run scripts/up"
            ))
        })
    }

    /// An ingest connection authenticated as `user`'s provider.
    async fn sender(&self, user: &str, ingest_url: Option<String>) -> anyhow::Result<Sender> {
        let (provider, token) = self.creds(user)?;
        let url = self.url(ingest_url, self.file.ingest_url.as_ref(), "ingest")?;
        Ok(Sender::connect_with(&url, &provider, &token, self.tls.clone()).await?)
    }

    /// The media API client.
    fn media(&self, url: Option<String>) -> anyhow::Result<MediaClient> {
        let url = self.url(url, self.file.media_url.as_ref(), "media")?;
        MediaClient::new(&url, self.tls.clone()).map_err(|e| usage(e.to_string()))
    }
}

fn encryption_name(e: i32) -> &'static str {
    match Encryption::try_from(e).unwrap_or(Encryption::Unspecified) {
        Encryption::E2ee => "E2EE",
        Encryption::TransportOnly => "TRANSPORT_ONLY",
        Encryption::Unspecified => "UNSPECIFIED",
    }
}

fn describe(env: &Envelope) -> serde_json::Value {
    let mut v = json!({
        "message_id": env.message_id,
        "from": env.from,
        "to": env.to,
        "encryption": encryption_name(env.encryption),
    });
    if let Some(info) = &env.sender_info {
        v["sender_provider"] = json!(info.display_name);
        v["sender_provider_id"] = json!(info.provider);
        v["sender_provider_encryption"] = json!(encryption_name(info.provider_encryption));
        v["privacy_policy_url"] = json!(info.privacy_policy_url);
    }
    // Only where set: every other line stays as it always was.
    if !env.group_id.is_empty() {
        v["group_id"] = json!(env.group_id);
    }
    if !env.in_reply_to.is_empty() {
        v["in_reply_to"] = json!(env.in_reply_to);
    }
    match &env.content {
        Some(Content::Text(t)) => v["text"] = json!(t.body),
        Some(Content::Ciphertext(c)) => {
            v["ciphertext_b64"] =
                json!(base64::engine::general_purpose::STANDARD.encode(&c.payload))
        }
        Some(Content::Media(m)) => {
            v["media"] =
                json!({"media_id": m.media_id, "content_type": m.content_type, "size": m.size})
        }
        Some(Content::Receipt(r)) => {
            let status = ReceiptStatus::try_from(r.status).unwrap_or(ReceiptStatus::Unspecified);
            v["receipt"] = json!({
                "message_id": r.message_id,
                "client_message_id": r.client_message_id,
                "status": status.as_str_name().trim_start_matches("RECEIPT_STATUS_"),
            });
            match RejectCode::try_from(r.code) {
                Ok(RejectCode::Unspecified) => {}
                Ok(code) => {
                    v["receipt"]["code"] =
                        json!(code.as_str_name().trim_start_matches("REJECT_CODE_"))
                }
                Err(_) => v["receipt"]["code"] = json!(r.code),
            }
        }
        Some(Content::KeyNotice(k)) => {
            v["key_notice"] = json!({
                "kind": k.kind().as_str_name(),
                "device_id": k.device_id,
                "left": k.left,
            })
        }
        // The kinds below were printed as `"content": "other"` alone; that
        // stays, with what they carry beside it.
        Some(Content::Reaction(r)) => {
            v["content"] = json!("other");
            v["reaction"] = json!({"target_message_id": r.target_message_id, "emoji": r.emoji});
        }
        Some(Content::Edit(e)) => {
            v["content"] = json!("other");
            v["edit"] = json!({"target_message_id": e.target_message_id});
            if let Some(t) = &e.text {
                v["edit"]["text"] = json!(t.body);
            }
            if let Some(c) = &e.ciphertext {
                v["edit"]["ciphertext_b64"] =
                    json!(base64::engine::general_purpose::STANDARD.encode(&c.payload));
            }
        }
        Some(Content::Delete(d)) => {
            v["content"] = json!("other");
            v["delete"] = json!({"target_message_id": d.target_message_id});
        }
        Some(Content::Typing(t)) => {
            v["content"] = json!("other");
            v["typing"] = json!({"active": t.active});
        }
        Some(Content::Call(c)) => {
            v["content"] = json!("other");
            v["call"] = json!({"video": c.video});
        }
        Some(Content::GroupChange(g)) => {
            v["content"] = json!("other");
            v["group_change"] = json!({
                "created": g.created,
                "added": g.added,
                "removed": g.removed,
                "new_admins": g.new_admins,
                "renamed": g.renamed,
                "name": g.name,
                "members": g.members,
            })
        }
        _ => v["content"] = json!("other"),
    }
    v
}

#[tokio::main]
async fn main() {
    let cli = match parse_args(std::env::args_os()) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed.
            e.print().ok();
            std::process::exit(if e.use_stderr() { EXIT_USAGE } else { EXIT_OK });
        }
    };
    match run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("interop: {e:#}");
            std::process::exit(exit_code(&e));
        }
    }
}

/// `interop completions SHELL`.
fn completions(shell: clap_complete::Shell) -> i32 {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cli_command(), "interop", &mut script);
    // A reader that stops early (`| head`) is not an error.
    std::io::Write::write_all(&mut std::io::stdout(), &script).ok();
    EXIT_OK
}

/// [`EXIT_USAGE`] for bad usage or configuration, else [`EXIT_ERROR`].
fn exit_code(e: &anyhow::Error) -> i32 {
    if e.downcast_ref::<Usage>().is_some() {
        EXIT_USAGE
    } else {
        EXIT_ERROR
    }
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    let out = Style::detect(cli.json);
    // Needs no configuration.
    if let Command::Completions { shell } = cli.command {
        return Ok(completions(shell));
    }
    let config_path = ClientConfig::locate(cli.config.as_deref());
    let file = match &config_path {
        Some(path) => ClientConfig::load(path).map_err(|e| usage(e.to_string()))?,
        None => ClientConfig::default(),
    };
    let tls = match (&cli.ca_file, &cli.client_cert, &cli.client_key) {
        (Some(ca), Some(cert), Some(key)) => Some(
            interop_client::tls_config_with_client_cert(ca, cert, key)
                .map_err(|e| usage(e.to_string()))?,
        ),
        (Some(ca), _, _) => Some(interop_client::tls_config(ca).map_err(|e| usage(e.to_string()))?),
        _ => None,
    };
    let kt_vrf_public_key = match cli
        .kt_vrf_public_key
        .as_deref()
        .or(file.kt_vrf_public_key.as_deref())
    {
        Some(hex_key) => Some(
            hex::decode(hex_key.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .ok_or_else(|| {
                    usage("the key transparency VRF public key must be 64 hex digits")
                })?,
        ),
        None => None,
    };
    let ctx = Ctx {
        out,
        file,
        tls,
        cert_auth: cli.client_cert.is_some(),
        token: cli.token,
        provider: cli.provider,
        keys_dir: cli.keys_dir,
        config_path,
        kt_vrf_public_key,
    };
    match cli.command {
        Command::OptIn {
            user,
            allow,
            ingest_url,
        } => consent(&ctx, &user, true, &allow, ingest_url).await,
        Command::OptOut { user, ingest_url } => consent(&ctx, &user, false, &[], ingest_url).await,
        Command::Consent {
            user,
            opted_in,
            allow,
            inbox,
            ingest_url,
        } => consent_settings(&ctx, &user, opted_in, allow, inbox, ingest_url).await,
        Command::Request {
            action,
            user,
            sender,
            ingest_url,
        } => request(&ctx, &action, &user, &sender, ingest_url).await,
        Command::Send {
            from,
            to,
            group,
            text,
            ciphertext_b64,
            media,
            file,
            content_type,
            size,
            sha256,
            filename,
            e2ee,
            device,
            typing,
            react_to,
            emoji,
            delete,
            edit,
            client_message_id,
            ingest_url,
            media_url,
        } => {
            let to = to.unwrap_or_default();
            let group = group.unwrap_or_default();
            let cmid = client_message_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            if e2ee && text.is_some() && !group.is_empty() {
                return Err(usage(
                    "--e2ee --text to a group is not supported: Olm is one to one (groups use MLS)",
                ));
            }
            if edit.is_some() && text.is_none() && ciphertext_b64.is_none() {
                return Err(usage(
                    "--edit takes the new content as --text or --ciphertext-b64",
                ));
            }
            let sender = ctx.sender(&from, ingest_url).await?;
            let control = control_content(typing, react_to, emoji, delete, e2ee);
            let (encryption, content) = if let Some(control) = control {
                control
            } else {
                let (encryption, content) = match (text, ciphertext_b64, media, file) {
                    (Some(t), ..) if e2ee => (
                        Encryption::E2ee,
                        Content::Ciphertext(
                            e2ee_ciphertext(&ctx, &sender, &device, &from, &to, &t).await?,
                        ),
                    ),
                    (Some(t), ..) => (
                        Encryption::TransportOnly,
                        Content::Text(interop_proto::v1::Text { body: t }),
                    ),
                    (None, Some(b64), ..) => {
                        let payload = base64::engine::general_purpose::STANDARD
                            .decode(b64.trim())
                            .map_err(|_| usage("--ciphertext-b64 is not base64"))?;
                        (
                            Encryption::E2ee,
                            Content::Ciphertext(Ciphertext {
                                scheme: "opaque".into(),
                                payload: payload.into(),
                                ..Default::default()
                            }),
                        )
                    }
                    (None, None, Some(media_id), _) => {
                        let sha256 = match sha256 {
                            Some(h) => hex::decode(h.trim())
                                .ok()
                                .filter(|b| b.len() == 32)
                                .ok_or_else(|| usage("--sha256 is not 64 hex digits"))?,
                            None => Vec::new(),
                        };
                        let media = interop_proto::v1::Media {
                            media_id,
                            content_type: content_type.unwrap_or_default(),
                            size: size.unwrap_or_default(),
                            sha256: sha256.into(),
                            filename: filename.unwrap_or_default(),
                            ..Default::default()
                        };
                        (media_encryption(e2ee), Content::Media(media))
                    }
                    (None, None, None, Some(path)) => {
                        let uploaded =
                            match upload(&ctx, media_url, &from, &path, content_type, e2ee, false)
                                .await?
                            {
                                Ok(u) => u,
                                Err(code) => return Ok(code),
                            };
                        let filename = filename.unwrap_or_else(|| {
                            path.file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default()
                        });
                        let media = interop_proto::v1::Media {
                            media_id: uploaded.media_id,
                            content_type: uploaded.content_type,
                            size: uploaded.size,
                            sha256: hex::decode(&uploaded.sha256).unwrap_or_default().into(),
                            filename,
                            ..Default::default()
                        };
                        (media_encryption(e2ee), Content::Media(media))
                    }
                    (None, None, None, None) => {
                        return Err(usage("pass --text, --ciphertext-b64, --media or --file"))
                    }
                };
                as_edit(edit, encryption, content)?
            };
            let envelope = Envelope {
                client_message_id: cmid,
                from,
                to,
                group_id: group,
                encryption: encryption as i32,
                sent_at_ms: interop_proto::now_ms(),
                content: Some(content),
                ..Default::default()
            };
            let outcome = sender.send(envelope).await?;
            ctx.out.print(&send_answer(&outcome));
            Ok(match outcome {
                SendOutcome::Accepted(_) => EXIT_OK,
                SendOutcome::Rejected(_) => EXIT_REFUSED,
            })
        }
        Command::SendMany { file, ingest_url } => {
            send_many::send_many(&ctx, &file, ingest_url).await
        }
        Command::Group {
            command,
            ingest_url,
        } => group(&ctx, command, ingest_url).await,
        Command::Media { command, media_url } => media(&ctx, command, media_url).await,
        Command::Completions { shell } => Ok(completions(shell)),
        Command::EraseUser {
            address,
            admin_url,
            admin_token,
        } => {
            Address::parse(&address).with_context(|| format!("{address:?} is not an address"))?;
            let admin = ctx.admin(admin_url, admin_token)?;
            let answer = admin
                .call(
                    "POST",
                    "/admin/v1/erasures",
                    Some(&json!({ "address": address })),
                )
                .await;
            print_admin_answer(ctx.out, answer)
        }
        Command::Provider {
            command,
            admin_url,
            admin_token,
        } => {
            let admin = ctx.admin(admin_url, admin_token)?;
            let answer = match command {
                ProviderCommand::Add {
                    id,
                    name,
                    privacy_policy_url,
                    encryption,
                    max_per_second,
                    burst,
                    content,
                    media_formats,
                    client_cert_sha256,
                    require_client_cert,
                } => {
                    let body = json!({"id": id, "display_name": name, "privacy_policy_url": privacy_policy_url,
                        "encryption": encryption, "max_per_second": max_per_second, "burst": burst,
                        "capabilities": capabilities(content, media_formats),
                        "client_cert_sha256": client_cert_sha256, "require_client_cert": require_client_cert});
                    admin.call("POST", "/admin/v1/providers", Some(&body)).await
                }
                ProviderCommand::Capabilities {
                    id,
                    content,
                    media_formats,
                } => {
                    admin
                        .call(
                            "PUT",
                            &format!("/admin/v1/providers/{id}/capabilities"),
                            Some(&capabilities(content, media_formats)),
                        )
                        .await
                }
                ProviderCommand::ClientCerts {
                    id,
                    sha256,
                    require,
                } => admin
                    .call(
                        "PUT",
                        &format!("/admin/v1/providers/{id}/client-certs"),
                        Some(
                            &json!({"client_cert_sha256": sha256, "require_client_cert": require}),
                        ),
                    )
                    .await,
                ProviderCommand::List => admin.call("GET", "/admin/v1/providers", None).await,
                ProviderCommand::Rotate { id } => {
                    admin
                        .call(
                            "POST",
                            &format!("/admin/v1/providers/{id}/credentials"),
                            None,
                        )
                        .await
                }
                ProviderCommand::Revoke { id, credential } => {
                    admin
                        .call(
                            "DELETE",
                            &format!("/admin/v1/providers/{id}/credentials/{credential}"),
                            None,
                        )
                        .await
                }
                ProviderCommand::Remove { id } => {
                    admin
                        .call("DELETE", &format!("/admin/v1/providers/{id}"), None)
                        .await
                }
            };
            print_admin_answer(ctx.out, answer)
        }
        Command::Keys {
            command,
            ingest_url,
        } => keys(&ctx, command, ingest_url).await,
        Command::Listen {
            user,
            device,
            count,
            timeout,
            delivery_url,
            ingest_url,
        } => {
            let (provider, token) = ctx.creds(&user)?;
            let url = ctx.url(delivery_url, ctx.file.delivery_url.as_ref(), "delivery")?;
            let mut rx =
                Receiver::connect_with(&url, &provider, &token, &user, &device, ctx.tls.clone())
                    .await?;
            // Opened on the first end-to-end-encrypted message: this
            // device's Olm account, and an ingest connection to look up
            // senders' keys.
            let mut e2ee: Option<(LocalDevice, Sender)> = None;
            eprintln!("interop: listening as {user}");
            let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            let mut received = 0u64;
            while count.is_none_or(|c| received < c) {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, rx.next()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                    None => rx.next().await,
                };
                let d = next?;
                let mut v = describe(&d.envelope);
                // A message's ciphertext, or an edit's (`edit`).
                let ciphertext = match &d.envelope.content {
                    Some(Content::Ciphertext(c)) => Some((c, false)),
                    Some(Content::Edit(e)) => e.ciphertext.as_ref().map(|c| (c, true)),
                    _ => None,
                };
                if let Some((c, edit)) = ciphertext {
                    if c.scheme == olm::SCHEME && !c.payload.is_empty() {
                        if e2ee.is_none() {
                            let me = ctx.open_device(&user, &device)?;
                            let ingest = ctx.url(
                                ingest_url.clone(),
                                ctx.file.ingest_url.as_ref(),
                                "ingest",
                            )?;
                            let s =
                                Sender::connect_with(&ingest, &provider, &token, ctx.tls.clone())
                                    .await?;
                            e2ee = Some((me, s));
                        }
                        if let Some((me, s)) = e2ee.as_mut() {
                            match olm::decrypt_from(s, me, &user, &d.envelope.from, c).await {
                                Ok(plain) => {
                                    let text = json!(String::from_utf8_lossy(&plain));
                                    if edit {
                                        v["edit"]["text"] = text;
                                    } else {
                                        v["text"] = text;
                                    }
                                    v["e2ee_scheme"] = json!(c.scheme);
                                }
                                Err(e) => v["decrypt_error"] = json!(e.to_string()),
                            }
                        }
                    }
                }
                if d.inbox != Inbox::Unspecified {
                    v["inbox"] = json!(inbox_name(d.inbox));
                }
                ctx.out.print(&v);
                rx.ack(&[d.delivery_tag]).await?;
                received += 1;
            }
            rx.close().await;
            Ok(if count.is_some_and(|c| received < c) {
                EXIT_TIMEOUT
            } else {
                EXIT_OK
            })
        }
        Command::ListenProvider {
            provider,
            count,
            timeout,
            delivery_url,
        } => {
            let (provider, token) = ctx.provider_creds(provider)?;
            let url = ctx.url(delivery_url, ctx.file.delivery_url.as_ref(), "delivery")?;
            let mut rx = interop_client::provider::ProviderReceiver::connect_with(
                &url,
                &provider,
                &token,
                ctx.tls.clone(),
            )
            .await?;
            eprintln!("interop: listening for every user of {provider} (a provider session)");
            let deadline = timeout.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
            let mut received = 0u64;
            while count.is_none_or(|c| received < c) {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, rx.next_batch()).await {
                        Ok(n) => n,
                        Err(_) => break,
                    },
                    None => rx.next_batch().await,
                };
                let batch = next?;
                for m in &batch.messages {
                    let mut v = describe(&m.envelope);
                    v["user"] = json!(m.user);
                    v["partition"] = json!(batch.partition);
                    v["batch"] = json!(batch.batch_tag);
                    if m.inbox != Inbox::Unspecified {
                        v["inbox"] = json!(inbox_name(m.inbox));
                    }
                    ctx.out.print(&v);
                    if batch.batch_tag != 0 {
                        received += 1;
                    }
                }
                if batch.batch_tag != 0 {
                    rx.ack(&[batch.batch_tag]).await?;
                }
            }
            rx.close().await;
            Ok(if count.is_some_and(|c| received < c) {
                EXIT_TIMEOUT
            } else {
                EXIT_OK
            })
        }
    }
}

/// What `send` (and `send-many`, per message) prints for a send's answer.
fn send_answer(outcome: &SendOutcome) -> serde_json::Value {
    match outcome {
        SendOutcome::Accepted(a) => {
            json!({"accepted": {"client_message_id": a.client_message_id, "message_id": a.message_id, "accepted_at_ms": a.accepted_at_ms, "duplicate": a.duplicate}})
        }
        SendOutcome::Rejected(r) => {
            json!({"rejected": {"client_message_id": r.client_message_id, "code": r.code().as_str_name().trim_start_matches("REJECT_CODE_"), "detail": r.detail, "retry_after_ms": r.retry_after_ms}})
        }
    }
}

/// Prints an admin API answer: the JSON of a success (exit 0), or
/// `{"rejected": ...}` (exit 2).
fn print_admin_answer(
    out: Style,
    answer: Result<serde_json::Value, interop_client::admin::AdminError>,
) -> anyhow::Result<i32> {
    match answer {
        Ok(v) => {
            out.print(&v);
            Ok(EXIT_OK)
        }
        Err(interop_client::admin::AdminError::Refused {
            status,
            code,
            detail,
        }) => {
            out.print(&json!({"rejected": {"status": status, "code": code, "detail": detail}}));
            Ok(EXIT_REFUSED)
        }
        Err(e) => Err(e.into()),
    }
}

async fn consent(
    ctx: &Ctx,
    user: &str,
    opted_in: bool,
    allow: &[String],
    ingest_url: Option<String>,
) -> anyhow::Result<i32> {
    let sender = ctx.sender(user, ingest_url).await?;
    let allow: Vec<&str> = allow.iter().map(String::as_str).collect();
    match sender.set_consent(user, opted_in, &allow).await? {
        ConsentOutcome::Updated(c) => {
            ctx.out.print(
                &json!({"consent": {"user": c.user, "opted_in": c.opted_in, "allowed_providers": c.allowed_providers}}),
            );
            Ok(EXIT_OK)
        }
        ConsentOutcome::Rejected(r) => Ok(print_rejected(ctx.out, &r)),
    }
}

fn inbox_name(inbox: Inbox) -> &'static str {
    match inbox {
        Inbox::ThirdParty => "separate",
        Inbox::Combined => "combined",
        Inbox::Requests => "requests",
        Inbox::Unspecified => "unspecified",
    }
}

/// Prints `{"rejected": {code, detail}}`; exit 2.
fn print_rejected(out: Style, r: &Rejected) -> i32 {
    out.print(
        &json!({"rejected": {"code": r.code().as_str_name().trim_start_matches("REJECT_CODE_"), "detail": r.detail}}),
    );
    EXIT_REFUSED
}

/// `interop consent`: reads the settings, changes what was given, and
/// prints the settings in force.
async fn consent_settings(
    ctx: &Ctx,
    user: &str,
    opted_in: Option<bool>,
    allow: Option<Vec<String>>,
    inbox: Option<String>,
    ingest_url: Option<String>,
) -> anyhow::Result<i32> {
    let (provider, token) = ctx.creds(user)?;
    let url = ctx.url(ingest_url, ctx.file.ingest_url.as_ref(), "ingest")?;
    let sender = Sender::connect_with(&url, &provider, &token, ctx.tls.clone()).await?;
    let mut state = match sender.get_consent(user).await? {
        ConsentStateOutcome::State(s) => s,
        ConsentStateOutcome::Rejected(r) => return Ok(print_rejected(ctx.out, &r)),
    };
    if opted_in.is_some() || allow.is_some() || inbox.is_some() {
        let opted_in = opted_in.unwrap_or(state.opted_in);
        let allow: Vec<String> = allow
            .map(|a| a.into_iter().filter(|p| !p.is_empty()).collect())
            .unwrap_or_else(|| state.allowed_providers.clone());
        let inbox = match inbox.as_deref() {
            Some("combined") => Inbox::Combined,
            Some(_) => Inbox::ThirdParty,
            None => Inbox::try_from(state.inbox).unwrap_or(Inbox::ThirdParty),
        };
        let allow_refs: Vec<&str> = allow.iter().map(String::as_str).collect();
        match sender
            .set_consent_with(user, opted_in, &allow_refs, inbox)
            .await?
        {
            ConsentOutcome::Updated(c) => {
                state.opted_in = c.opted_in;
                state.allowed_providers = c.allowed_providers;
                state.inbox = c.inbox;
            }
            ConsentOutcome::Rejected(r) => return Ok(print_rejected(ctx.out, &r)),
        }
    }
    let inbox = Inbox::try_from(state.inbox).unwrap_or(Inbox::Unspecified);
    ctx.out.print(
        &json!({"consent": {"user": state.user, "opted_in": state.opted_in,
        "allowed_providers": state.allowed_providers, "inbox": inbox_name(inbox),
        "blocked": state.blocked, "declined": state.declined}}),
    );
    Ok(EXIT_OK)
}

/// `interop request ACTION`.
async fn request(
    ctx: &Ctx,
    action: &str,
    user: &str,
    sender_address: &str,
    ingest_url: Option<String>,
) -> anyhow::Result<i32> {
    let action = match action {
        "accept" => RequestAction::Accept,
        "decline" => RequestAction::Decline,
        "block" => RequestAction::Block,
        "report" => RequestAction::Report,
        "reset" => RequestAction::Reset,
        other => bail!("unknown action {other:?}"),
    };
    let (provider, token) = ctx.creds(user)?;
    let url = ctx.url(ingest_url, ctx.file.ingest_url.as_ref(), "ingest")?;
    let sender = Sender::connect_with(&url, &provider, &token, ctx.tls.clone()).await?;
    match sender
        .respond_to_request(user, sender_address, action)
        .await?
    {
        RequestOutcome::Responded(r) => {
            ctx.out.print(&json!({"request": {"user": r.user, "sender": r.sender,
                "action": action.as_str_name().trim_start_matches("REQUEST_ACTION_").to_lowercase()}}));
            Ok(EXIT_OK)
        }
        RequestOutcome::Rejected(r) => Ok(print_rejected(ctx.out, &r)),
    }
}

/// `interop keys ...`: prints the gateway's answer as JSON (exit 2 when
/// refused).
async fn keys(ctx: &Ctx, command: KeysCommand, ingest_url: Option<String>) -> anyhow::Result<i32> {
    let user = match &command {
        KeysCommand::Publish { user, .. } => user.clone(),
        KeysCommand::Devices { requester, .. } => requester.clone(),
        KeysCommand::Audit { from, to, nats_url } => {
            return audit_keys(ctx, *from, *to, nats_url).await
        }
        KeysCommand::VrfPublicKey { secret_file } => {
            let key = interop_transparency::VrfKey::from_file(secret_file).map_err(usage)?;
            ctx.out
                .print(&json!({"vrf_public_key": hex::encode(key.public_key().await?)}));
            return Ok(EXIT_OK);
        }
    };
    let (provider, token) = ctx.creds(&user)?;
    let url = ctx.url(ingest_url, ctx.file.ingest_url.as_ref(), "ingest")?;
    let sender = Sender::connect_with(&url, &provider, &token, ctx.tls.clone()).await?;
    let refused = |r: Rejected| {
        ctx.out.print(
            &json!({"rejected": {"code": r.code().as_str_name().trim_start_matches("REJECT_CODE_"), "detail": r.detail, "retry_after_ms": r.retry_after_ms}}),
        );
        Ok(EXIT_REFUSED)
    };
    match command {
        KeysCommand::Publish {
            user,
            device,
            count,
        } => {
            let mut me = ctx.open_device(&user, &device)?;
            let (keys, otks) = me.keys_to_publish(&device, count)?;
            match sender.publish_keys(&user, keys, otks, vec![]).await? {
                interop_client::keys::KeysOutcome::Done(p) => {
                    me.mark_published()?;
                    ctx.out.print(
                        &json!({"published": {"user": p.user, "device_id": p.device_id, "one_time_prekeys": p.one_time_prekeys}}),
                    );
                    Ok(EXIT_OK)
                }
                interop_client::keys::KeysOutcome::Rejected(r) => refused(r),
            }
        }
        KeysCommand::Devices { requester, user } => {
            match sender.list_devices(&requester, &user).await? {
                interop_client::keys::KeysOutcome::Done(list) => {
                    // Keys key transparency does not vouch for are not shown.
                    interop_client::keys::check_device_list(&mut ctx.trust()?, &list)?;
                    let devices: Vec<_> = list
                        .devices
                        .iter()
                        .map(|d| {
                            json!({
                                "device_id": d.device_id,
                                "identity_key_b64": d.identity_key.as_ref().map(|k| base64::engine::general_purpose::STANDARD.encode(&k.key)),
                                "one_time_prekeys": d.one_time_prekeys,
                            })
                        })
                        .collect();
                    ctx.out
                        .print(&json!({"user": list.user, "devices": devices}));
                    Ok(EXIT_OK)
                }
                interop_client::keys::KeysOutcome::Rejected(r) => refused(r),
            }
        }
        KeysCommand::Audit { .. } | KeysCommand::VrfPublicKey { .. } => {
            unreachable!("answered before connecting to ingest")
        }
    }
}

/// `interop keys audit`: key transparency's history, verified from the
/// published roots and proofs alone.
async fn audit_keys(ctx: &Ctx, from: u64, to: Option<u64>, nats_url: &str) -> anyhow::Result<i32> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await?);
    let to = match to {
        Some(t) => t,
        None => interop_transparency::read_roots(&js)
            .await?
            .iter()
            .map(|r| r.epoch)
            .max()
            .unwrap_or(0),
    };
    let report = interop_transparency::audit(&js, from, to).await?;
    let problems: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
    ctx.out.print(&json!({"audit": {
        "from": from,
        "to": to,
        "verified": report.verified.len(),
        "problems": problems,
        "proof_bytes": report.proof_bytes,
        "elapsed_ms": report.elapsed.as_millis() as u64,
    }}));
    Ok(if problems.is_empty() {
        EXIT_OK
    } else {
        EXIT_ERROR
    })
}

/// `interop group ...`: prints the group as it is after the command
/// (`{"group": ...}`), or the refusal (exit 2).
async fn group(
    ctx: &Ctx,
    command: GroupCommand,
    ingest_url: Option<String>,
) -> anyhow::Result<i32> {
    let user = match &command {
        GroupCommand::Create { creator, .. } => creator,
        GroupCommand::Change { actor, .. } => actor,
        GroupCommand::Show { user, .. } => user,
    };
    let sender = ctx.sender(user, ingest_url).await?;
    let outcome = match command {
        GroupCommand::Create {
            creator,
            members,
            name,
        } => {
            sender
                .create_named_group(&creator, &members, name.as_deref().unwrap_or_default())
                .await?
        }
        GroupCommand::Change {
            group_id,
            actor,
            add,
            remove,
            admins,
            name,
        } => {
            sender
                .change_group(interop_proto::v1::ChangeGroup {
                    group_id,
                    actor,
                    add,
                    remove,
                    add_admins: admins,
                    name,
                })
                .await?
        }
        GroupCommand::Show { group_id, user } => sender.get_group(&group_id, &user).await?,
    };
    match outcome {
        GroupOutcome::Updated(g) => {
            ctx.out.print(
                &json!({"group": {"group_id": g.group_id, "admins": g.admins,
                "members": g.members, "name": g.name}}),
            );
            Ok(EXIT_OK)
        }
        GroupOutcome::Rejected(r) => Ok(print_rejected(ctx.out, &r)),
    }
}

/// `interop media ...`.
async fn media(ctx: &Ctx, command: MediaCommand, media_url: Option<String>) -> anyhow::Result<i32> {
    match command {
        MediaCommand::Upload {
            from,
            file,
            content_type,
            e2ee,
            sticker,
        } => Ok(
            match upload(ctx, media_url, &from, &file, content_type, e2ee, sticker).await? {
                Ok(u) => {
                    ctx.out.print(&json!({ "uploaded": u }));
                    EXIT_OK
                }
                Err(code) => code,
            },
        ),
        MediaCommand::Download {
            media_id,
            user,
            output,
        } => {
            let (provider, token) = ctx.creds(&user)?;
            let client = ctx.media(media_url)?;
            // Written beside the target, renamed once complete and checked.
            let name = output
                .file_name()
                .ok_or_else(|| usage(format!("-o {}: not a file name", output.display())))?;
            let mut part_name = name.to_os_string();
            part_name.push(".part");
            let part = output.with_file_name(part_name);
            let file = tokio::fs::File::create(&part)
                .await
                .with_context(|| format!("cannot write {}", part.display()))?;
            let result = client
                .download(&provider, &token, &user, &media_id, file)
                .await;
            match result {
                Ok(d) => {
                    tokio::fs::rename(&part, &output)
                        .await
                        .with_context(|| format!("cannot write {}", output.display()))?;
                    ctx.out.print(&json!({"downloaded": {"media_id": media_id,
                        "file": output.display().to_string(), "content_type": d.content_type,
                        "size": d.size, "sha256": d.sha256}}));
                    Ok(EXIT_OK)
                }
                Err(e) => {
                    tokio::fs::remove_file(&part).await.ok();
                    media_refused(ctx.out, e)
                }
            }
        }
    }
}

/// Uploads `path` for `from` to send: the API's answer, or the exit code of
/// a printed refusal.
async fn upload(
    ctx: &Ctx,
    media_url: Option<String>,
    from: &str,
    path: &std::path::Path,
    content_type: Option<String>,
    e2ee: bool,
    sticker: bool,
) -> anyhow::Result<Result<interop_client::media::Uploaded, i32>> {
    let (provider, token) = ctx.creds(from)?;
    let client = ctx.media(media_url)?;
    if !path.is_file() {
        return Err(usage(format!("{}: no such file", path.display())));
    }
    let upload = Upload {
        content_type: content_type.unwrap_or_else(|| guess_content_type(path).to_owned()),
        e2ee,
        sticker,
    };
    match client.upload_file(&provider, &token, path, &upload).await {
        Ok(u) => Ok(Ok(u)),
        Err(e) => media_refused(ctx.out, e).map(Err),
    }
}

/// Prints the media API's refusal (exit 2); other errors are errors.
fn media_refused(out: Style, e: MediaError) -> anyhow::Result<i32> {
    match e {
        MediaError::Refused {
            status,
            code,
            detail,
            retry_after_s,
        } => {
            let mut r = json!({"status": status, "code": code, "detail": detail});
            if let Some(s) = retry_after_s {
                r["retry_after_ms"] = json!(s * 1000);
            }
            out.print(&json!({ "rejected": r }));
            Ok(EXIT_REFUSED)
        }
        e @ (MediaError::BadHeader(_) | MediaError::BadUrl(_) | MediaError::NoTls) => {
            Err(usage(e.to_string()))
        }
        e => Err(e.into()),
    }
}

/// How a media message goes: as its upload was made.
fn media_encryption(e2ee: bool) -> Encryption {
    if e2ee {
        Encryption::E2ee
    } else {
        Encryption::TransportOnly
    }
}

/// The media type of a file from its extension; files of unknown types go
/// as `application/octet-stream`.
fn guess_content_type(path: &std::path::Path) -> &'static str {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "heic" => "image/heic",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "aac" => "audio/aac",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "amr" => "audio/amr",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "3gp" => "video/3gpp",
        "pdf" => "application/pdf",
        "txt" => "text/plain",
        "zip" => "application/zip",
        _ => "application/octet-stream",
    }
}

/// The content of `send --typing`, `--react-to` or `--delete` (`None`
/// for a message). Typing and deletes go with either encryption (the
/// chat's, `--e2ee`); a reaction is server-visible.
fn control_content(
    typing: Option<bool>,
    react_to: Option<String>,
    emoji: Option<String>,
    delete: Option<String>,
    e2ee: bool,
) -> Option<(Encryption, Content)> {
    let chat = if e2ee {
        Encryption::E2ee
    } else {
        Encryption::TransportOnly
    };
    if let Some(active) = typing {
        return Some((chat, Content::Typing(interop_proto::v1::Typing { active })));
    }
    if let Some(target_message_id) = react_to {
        let reaction = interop_proto::v1::Reaction {
            target_message_id,
            emoji: emoji.unwrap_or_default(),
        };
        return Some((Encryption::TransportOnly, Content::Reaction(reaction)));
    }
    delete.map(|target_message_id| {
        (
            chat,
            Content::Delete(interop_proto::v1::Delete { target_message_id }),
        )
    })
}

/// `content` as the new content of message `edit` (`send --edit`), or as
/// it is without one.
fn as_edit(
    edit: Option<String>,
    encryption: Encryption,
    content: Content,
) -> anyhow::Result<(Encryption, Content)> {
    let Some(target_message_id) = edit else {
        return Ok((encryption, content));
    };
    let (text, ciphertext) = match content {
        Content::Text(t) => (Some(t), None),
        Content::Ciphertext(c) => (None, Some(c)),
        _ => {
            return Err(usage(
                "--edit takes the new content as --text or --ciphertext-b64",
            ))
        }
    };
    Ok((
        encryption,
        Content::Edit(interop_proto::v1::Edit {
            target_message_id,
            text,
            ciphertext,
        }),
    ))
}

/// `text` encrypted end to end from `from` (this machine's device `device`)
/// for every device of `to`: one ciphertext per device.
async fn e2ee_ciphertext(
    ctx: &Ctx,
    sender: &Sender,
    device: &str,
    from: &str,
    to: &str,
    text: &str,
) -> anyhow::Result<Ciphertext> {
    let mut me = ctx.open_device(from, device)?;
    olm::ensure_published(sender, &mut me, from, device).await?;
    let per_device = olm::encrypt_for(sender, &mut me, from, to, text.as_bytes()).await?;
    let own = olm::encrypt_for_own_devices(sender, &mut me, from, device, text.as_bytes()).await?;
    Ok(Ciphertext {
        scheme: olm::SCHEME.into(),
        devices: olm::per_device(per_device),
        sender_devices: olm::per_device(own),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_commands_carry_capabilities_and_client_certificates() {
        let cli = Cli::try_parse_from([
            "interop",
            "provider",
            "add",
            "matrix",
            "--name",
            "Matrix",
            "--encryption",
            "e2ee",
            "--content",
            "text, media,reaction",
            "--media-formats",
            "image/jpeg,video/mp4",
            "--client-cert-sha256",
            "ab,cd",
            "--require-client-cert",
        ])
        .unwrap();
        let Command::Provider {
            command:
                ProviderCommand::Add {
                    content,
                    media_formats,
                    client_cert_sha256,
                    require_client_cert,
                    ..
                },
            ..
        } = cli.command
        else {
            panic!("not provider add");
        };
        assert_eq!(
            capabilities(content, media_formats),
            json!({"content": ["text", "media", "reaction"], "media_formats": ["image/jpeg", "video/mp4"]})
        );
        assert_eq!(client_cert_sha256, ["ab", "cd"]);
        assert!(require_client_cert);
        // Lists not given are left out: the gateway's default applies.
        assert_eq!(capabilities(None, None), json!({}));
        assert_eq!(
            capabilities(Some(vec!["text".into()]), None),
            json!({"content": ["text"]})
        );
        let cli = Cli::try_parse_from([
            "interop",
            "provider",
            "capabilities",
            "matrix",
            "--content",
            "text",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Provider {
                command: ProviderCommand::Capabilities { .. },
                ..
            }
        ));
        let cli = Cli::try_parse_from([
            "interop",
            "provider",
            "client-certs",
            "matrix",
            "--sha256",
            "ab",
            "--require",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Provider {
                command: ProviderCommand::ClientCerts { require: true, .. },
                ..
            }
        ));
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        parse_args(std::iter::once("interop").chain(args.iter().copied()))
    }

    #[test]
    fn send_takes_one_content_and_a_user_or_a_group() {
        let base = ["send", "--as", "signal:a"];
        let with = |extra: &[&str]| parse(&[&base[..], extra].concat());
        assert!(with(&["--to", "home:+1", "--text", "hi"]).is_ok());
        assert!(with(&["--group", "g-1", "--text", "hi", "--json"]).is_ok());
        assert!(with(&["--to", "home:+1"]).is_err(), "no content");
        assert!(with(&["--text", "hi"]).is_err(), "no recipient");
        assert!(with(&["--to", "home:+1", "--group", "g-1", "--text", "hi"]).is_err());
        assert!(with(&[
            "--to",
            "home:+1",
            "--text",
            "hi",
            "--ciphertext-b64",
            "AA=="
        ])
        .is_err());
        assert!(with(&["--to", "home:+1", "--text", "hi", "--file", "x.jpg"]).is_err());
        // Typing, a reaction and a delete are content of their own; an edit
        // carries text or ciphertext.
        assert!(matches!(
            with(&["--to", "home:+1", "--typing", "true"])
                .unwrap()
                .command,
            Command::Send {
                typing: Some(true),
                ..
            }
        ));
        assert!(with(&["--to", "home:+1", "--typing", "yes"]).is_err());
        assert!(with(&["--to", "home:+1", "--typing", "true", "--text", "hi"]).is_err());
        assert!(with(&["--to", "home:+1", "--react-to", "m-1", "--emoji", "👍"]).is_ok());
        assert!(
            with(&["--to", "home:+1", "--react-to", "m-1"]).is_err(),
            "no emoji"
        );
        assert!(with(&["--to", "home:+1", "--delete", "m-1", "--text", "hi"]).is_err());
        assert!(matches!(
            with(&["--to", "home:+1", "--edit", "m-1", "--text", "new"]).unwrap().command,
            Command::Send { edit: Some(ref m), text: Some(_), .. } if m == "m-1"
        ));
        // --media needs what the upload said.
        assert!(with(&["--to", "home:+1", "--media", "m-1"]).is_err());
        assert!(with(&[
            "--to",
            "home:+1",
            "--media",
            "m-1",
            "--content-type",
            "image/png"
        ])
        .is_err());
        assert!(with(&["--to", "home:+1", "--size", "3", "--text", "hi"]).is_err());
        let cli = with(&[
            "--to",
            "home:+1",
            "--media",
            "m-1",
            "--content-type",
            "image/png",
            "--size",
            "3",
            "--e2ee",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Send { media: Some(ref m), size: Some(3), e2ee: true, .. } if m == "m-1"
        ));
        assert!(with(&["--to", "home:+1", "--file", "x.jpg", "--e2ee"]).is_ok());
        assert!(with(&["--to", "home:+1", "--ciphertext-b64", "AA==", "--e2ee"]).is_err());
    }

    #[test]
    fn group_media_and_completions_commands_parse() {
        let cli = parse(&[
            "group",
            "create",
            "--creator",
            "signal:a",
            "--member",
            "home:+1,telegram:t",
            "--member",
            "home:+2",
            "--name",
            "Ski trip",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Group { command: GroupCommand::Create { ref members, name: Some(ref n), .. }, .. }
                if members == &["home:+1", "telegram:t", "home:+2"] && n == "Ski trip"
        ));
        let cli = parse(&[
            "group", "change", "g-1", "--actor", "signal:a", "--add", "home:+3", "--remove",
            "home:+1", "--admin", "home:+2", "--name", "",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Group {
                command: GroupCommand::Change { ref group_id, ref add, ref remove, ref admins, name: Some(ref n), .. },
                ..
            } if group_id == "g-1" && add == &["home:+3"] && remove == &["home:+1"] && admins == &["home:+2"] && n.is_empty()
        ));
        // Without --name the name is kept.
        assert!(matches!(
            parse(&["group", "change", "g-1", "--actor", "signal:a", "--add", "home:+3"])
                .unwrap()
                .command,
            Command::Group {
                command: GroupCommand::Change { name: None, .. },
                ..
            }
        ));
        assert!(parse(&["group", "show", "g-1", "--as", "home:+1"]).is_ok());
        assert!(parse(&["group", "show", "g-1"]).is_err());
        assert!(parse(&["media", "upload", "--from", "signal:a", "x.jpg", "--e2ee"]).is_ok());
        assert!(parse(&["media", "upload", "--as", "signal:a", "x.jpg"]).is_ok());
        assert!(parse(&["media", "download", "m-1", "--as", "home:+1", "-o", "x.jpg"]).is_ok());
        assert!(parse(&["media", "download", "m-1", "--as", "home:+1"]).is_err());
        assert!(parse(&["completions", "zsh"]).is_ok());
        assert!(parse(&["completions", "tcsh"]).is_err());
    }

    #[test]
    fn usage_and_configuration_errors_exit_64_others_1() {
        assert_eq!(exit_code(&usage("no token")), EXIT_USAGE);
        assert_eq!(exit_code(&usage("no token").context("sending")), EXIT_USAGE);
        assert_eq!(
            exit_code(&anyhow::anyhow!("connection refused")),
            EXIT_ERROR
        );
        for code in [EXIT_OK, EXIT_ERROR, EXIT_REFUSED, EXIT_TIMEOUT, EXIT_USAGE] {
            assert!(
                EXIT_CODES.contains(&format!("\n  {code:<3} ")),
                "{code} in --help"
            );
        }
        cli_command().debug_assert();
        let help = cli_command().render_help().to_string();
        assert!(help.contains("Exit codes:\n  0   done"), "{help}");
        // Each command's help ends with them in short.
        let mut cli = cli_command();
        for path in [
            &["send"][..],
            &["group", "change"],
            &["media", "download"],
            &["listen"],
        ] {
            let mut c = &mut cli;
            for name in path {
                c = c.find_subcommand_mut(name).expect("a subcommand");
            }
            let help = c.render_help().to_string();
            assert!(
                help.trim_end().ends_with(EXIT_CODES_SHORT),
                "{path:?}: {help}"
            );
        }
    }

    #[test]
    fn listen_prints_what_it_always_printed_and_more_only_where_set() {
        let env = Envelope {
            message_id: "0199-m".into(),
            from: "signal:alice".into(),
            to: "home:+1".into(),
            encryption: Encryption::TransportOnly as i32,
            content: Some(Content::Text(interop_proto::v1::Text { body: "hi".into() })),
            ..Default::default()
        };
        assert_eq!(
            describe(&env).to_string(),
            r#"{"encryption":"TRANSPORT_ONLY","from":"signal:alice","message_id":"0199-m","text":"hi","to":"home:+1"}"#
        );
        let in_group = Envelope {
            group_id: "g-1".into(),
            in_reply_to: "0199-t".into(),
            ..env.clone()
        };
        let v = describe(&in_group);
        assert_eq!(
            (&v["group_id"], &v["in_reply_to"]),
            (&json!("g-1"), &json!("0199-t"))
        );
        let reaction = Envelope {
            content: Some(Content::Reaction(interop_proto::v1::Reaction {
                target_message_id: "0199-t".into(),
                emoji: "👍".into(),
            })),
            ..env
        };
        let v = describe(&reaction);
        assert_eq!(v["content"], "other", "as before");
        assert_eq!(
            v["reaction"],
            json!({"target_message_id": "0199-t", "emoji": "👍"})
        );
    }

    #[test]
    fn media_types_come_from_the_extension() {
        for (name, want) in [
            ("a.JPG", "image/jpeg"),
            ("b.png", "image/png"),
            ("voice.opus", "audio/ogg"),
            ("clip.mov", "video/quicktime"),
            ("doc.pdf", "application/pdf"),
            ("noext", "application/octet-stream"),
            ("x.weird", "application/octet-stream"),
        ] {
            assert_eq!(
                guess_content_type(std::path::Path::new(name)),
                want,
                "{name}"
            );
        }
    }

    #[test]
    fn consent_and_request_commands_parse_and_refuse_unknown_values() {
        let cli = Cli::try_parse_from([
            "interop",
            "consent",
            "--as",
            "home:+4915112345678",
            "--opted-in",
            "false",
            "--allow",
            "signal,telegram",
            "--inbox",
            "combined",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Consent { opted_in: Some(false), allow: Some(ref a), inbox: Some(ref i), .. }
                if a == &["signal", "telegram"] && i == "combined"
        ));
        assert!(Cli::try_parse_from([
            "interop", "consent", "--as", "home:+1", "--inbox", "requests"
        ])
        .is_err());
        for action in ["accept", "decline", "block", "report", "reset"] {
            let cli = Cli::try_parse_from([
                "interop", "request", action, "--as", "home:+1", "--sender", "signal:a",
            ])
            .unwrap();
            assert!(matches!(cli.command, Command::Request { action: ref a, .. } if a == action));
        }
        assert!(Cli::try_parse_from([
            "interop", "request", "ignore", "--as", "home:+1", "--sender", "signal:a"
        ])
        .is_err());
    }
}
