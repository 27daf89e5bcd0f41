//! The `interop` CLI as people and scripts run it, against the whole
//! gateway: media up and down, groups, sends to a group, shell completions,
//! JSON when piped or with `--json` (and readable lines on a terminal), and
//! the exit codes `--help` lists.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};

const BOB: &str = "home:+4915112345678";
const CAROL: &str = "home:+4915112345679";
const ALICE: &str = "signal:alice";
const TOM: &str = "telegram:tom";

/// A client config naming the cluster's endpoints and every provider's
/// token, as `scripts/up` writes `.run/client.toml`.
fn client_config(c: &Cluster, dir: &Path) -> PathBuf {
    let path = dir.join("client.toml");
    std::fs::write(
        &path,
        format!(
            "ingest_url = \"{}\"\ndelivery_url = \"{}\"\nmedia_url = \"{}\"\n\
             [tokens]\nhome = \"{HOME_TOKEN}\"\nsignal = \"{SIGNAL_TOKEN}\"\ntelegram = \"{TELEGRAM_TOKEN}\"\n",
            c.gateway.ingest_url, c.gateway.delivery_url, c.gateway.media_url
        ),
    )
    .unwrap();
    path
}

/// `interop` with `config` and nothing from the developer's environment.
fn command(config: Option<&Path>, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(interop_e2e::interop_cli());
    cmd.args(args).current_dir(std::env::temp_dir());
    for var in [
        "INTEROP_CLIENT_CONFIG",
        "INTEROP_TOKEN",
        "INTEROP_PROVIDER",
        "INTEROP_INGEST_URL",
        "INTEROP_DELIVERY_URL",
        "INTEROP_MEDIA_URL",
        "INTEROP_CA_FILE",
        "INTEROP_CLIENT_CERT",
        "INTEROP_CLIENT_KEY",
        "INTEROP_KEYS_DIR",
    ] {
        cmd.env_remove(var);
    }
    if let Some(config) = config {
        cmd.env("INTEROP_CLIENT_CONFIG", config);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The stdout lines, each a JSON object.
    fn json(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    /// The one JSON object printed.
    fn one(&self) -> Value {
        let lines = self.json();
        assert_eq!(lines.len(), 1, "{}", self.stdout);
        lines.into_iter().next().unwrap()
    }
}

/// Runs `interop` with stdout piped.
async fn interop(config: Option<&Path>, args: &[&str]) -> Run {
    let out = tokio::time::timeout(Duration::from_secs(60), command(config, args).output())
        .await
        .expect("interop finished within 60 s")
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs `interop` and expects exit 0 and one JSON object.
async fn ok(config: &Path, args: &[&str]) -> Value {
    let run = interop(Some(config), args).await;
    assert_eq!(
        run.code, 0,
        "interop {args:?}: {}{}",
        run.stdout, run.stderr
    );
    run.one()
}

/// `interop listen` started in the background; its lines once it exits.
struct Listener {
    child: tokio::process::Child,
    /// Everything it wrote to stderr, read to its end.
    stderr: tokio::task::JoinHandle<String>,
}

impl Listener {
    async fn start(config: &Path, user: &str, count: u32) -> Self {
        let count = count.to_string();
        Self::start_with(
            config,
            &["listen", "--as", user, "--count", &count, "--timeout", "45"],
        )
        .await
    }

    /// `interop listen-provider --for <provider>`: every user of it.
    async fn start_provider(config: &Path, provider: &str, count: u32) -> Self {
        let count = count.to_string();
        Self::start_with(
            config,
            &[
                "listen-provider",
                "--for",
                provider,
                "--count",
                &count,
                "--timeout",
                "45",
            ],
        )
        .await
    }

    async fn start_with(config: &Path, args: &[&str]) -> Self {
        use tokio::io::AsyncReadExt as _;
        let mut cmd = command(Some(config), args);
        let mut child = cmd.spawn().unwrap();
        // Its session is open once it says so on stderr; the rest of
        // stderr is kept for a failure's message.
        let mut stderr = child.stderr.take().unwrap();
        let (open_tx, open_rx) = tokio::sync::oneshot::channel();
        let stderr = tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut open_tx = Some(open_tx);
            let mut buf = [0u8; 256];
            while let Ok(n @ 1..) = stderr.read(&mut buf).await {
                seen.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&seen).contains("interop: listening") {
                    if let Some(tx) = open_tx.take() {
                        tx.send(()).ok();
                    }
                }
            }
            String::from_utf8_lossy(&seen).into_owned()
        });
        let opened = tokio::time::timeout(Duration::from_secs(30), open_rx).await;
        if !matches!(opened, Ok(Ok(()))) {
            child.kill().await.ok();
            panic!("the listener did not start: {}", stderr.await.unwrap());
        }
        Self { child, stderr }
    }

    async fn lines(self) -> Vec<Value> {
        let out = tokio::time::timeout(Duration::from_secs(60), self.child.wait_with_output())
            .await
            .expect("the listener finished")
            .unwrap();
        let stderr = self.stderr.await.unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "the listener failed or timed out: {stderr}"
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_goes_up_out_and_down_through_the_cli_byte_for_byte() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&c, dir.path());
    ok(&config, &["opt-in", "--as", BOB, "--allow", "signal"]).await;

    // A file (not an image, sound or video): delivered as it is.
    let notes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let notes_path = dir.path().join("notes.bin");
    std::fs::write(&notes_path, &notes).unwrap();
    let report: Vec<u8> = b"%PDF-1.4 a report\n".repeat(100);
    let report_path = dir.path().join("report.pdf");
    std::fs::write(&report_path, &report).unwrap();

    let uploaded = ok(
        &config,
        &[
            "media",
            "upload",
            "--from",
            ALICE,
            notes_path.to_str().unwrap(),
            "--content-type",
            "application/octet-stream",
        ],
    )
    .await;
    let up = &uploaded["uploaded"];
    let media_id = up["media_id"].as_str().unwrap().to_owned();
    assert!(media_id.starts_with("m-"), "{uploaded}");
    assert_eq!(up["size"], notes.len() as u64);
    assert_eq!(up["encryption"], "transport-only");
    let sha256 = up["sha256"].as_str().unwrap().to_owned();
    assert_eq!(sha256.len(), 64);

    let bob = Listener::start(&config, BOB, 2).await;
    let size = notes.len().to_string();
    let sent = ok(
        &config,
        &[
            "send",
            "--as",
            ALICE,
            "--to",
            BOB,
            "--media",
            &media_id,
            "--content-type",
            "application/octet-stream",
            "--size",
            &size,
            "--sha256",
            &sha256,
            "--filename",
            "notes.bin",
        ],
    )
    .await;
    assert!(sent["accepted"]["message_id"].is_string(), "{sent}");
    // --file uploads and sends in one go, the type from the extension.
    let sent_file = ok(
        &config,
        &[
            "send",
            "--as",
            ALICE,
            "--to",
            BOB,
            "--file",
            report_path.to_str().unwrap(),
        ],
    )
    .await;
    assert!(
        sent_file["accepted"]["message_id"].is_string(),
        "{sent_file}"
    );

    let got = bob.lines().await;
    assert_eq!(got.len(), 2, "{got:?}");
    let by_id = |id: &Value| {
        got.iter()
            .find(|l| l["message_id"] == *id)
            .unwrap_or_else(|| panic!("{id} not in {got:?}"))
            .clone()
    };
    let first = by_id(&sent["accepted"]["message_id"]);
    assert_eq!(first["media"]["media_id"], media_id.as_str());
    assert_eq!(first["media"]["content_type"], "application/octet-stream");
    assert_eq!(first["encryption"], "TRANSPORT_ONLY");
    let second = by_id(&sent_file["accepted"]["message_id"]);
    assert_eq!(second["media"]["content_type"], "application/pdf");
    assert_eq!(second["media"]["size"], report.len() as u64);

    for (line, want, name) in [
        (&first, &notes, "notes.out"),
        (&second, &report, "report.out"),
    ] {
        let out = dir.path().join(name);
        let id = line["media"]["media_id"].as_str().unwrap();
        let downloaded = ok(
            &config,
            &[
                "media",
                "download",
                id,
                "--as",
                BOB,
                "-o",
                out.to_str().unwrap(),
            ],
        )
        .await;
        assert_eq!(downloaded["downloaded"]["size"], want.len() as u64);
        assert!(std::fs::read(&out).unwrap() == *want, "byte for byte");
    }

    // Carol was sent nothing: refused (2) the same as for no media, and
    // no file is left behind.
    let out = dir.path().join("carol.out");
    let refused = interop(
        Some(&config),
        &[
            "media",
            "download",
            &media_id,
            "--as",
            CAROL,
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(refused.code, 2, "{}{}", refused.stdout, refused.stderr);
    assert_eq!(refused.one()["rejected"]["code"], "NOT_FOUND");
    assert!(!out.exists() && !dir.path().join("carol.out.part").exists());
    // Another provider cannot download as Bob.
    let forbidden = interop(
        Some(&config),
        &[
            "media",
            "download",
            &media_id,
            "--as",
            BOB,
            "--provider",
            "signal",
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(forbidden.code, 2, "{}", forbidden.stderr);
    assert_eq!(forbidden.one()["rejected"]["code"], "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_are_created_changed_shown_and_sent_to_through_the_cli() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&c, dir.path());
    for user in [BOB, CAROL, TOM] {
        ok(&config, &["opt-in", "--as", user, "--allow", "signal"]).await;
    }
    let created = ok(
        &config,
        &[
            "group",
            "create",
            "--creator",
            ALICE,
            "--member",
            BOB,
            "--member",
            TOM,
            "--name",
            "Ski trip",
        ],
    )
    .await;
    let g = &created["group"];
    let id = g["group_id"].as_str().unwrap().to_owned();
    assert_eq!(g["name"], "Ski trip");
    assert_eq!(g["admins"], serde_json::json!([ALICE]));
    let mut members = vec![BOB, ALICE, TOM];
    members.sort();
    assert_eq!(g["members"], serde_json::json!(members));

    let changed = ok(
        &config,
        &[
            "group", "change", &id, "--actor", ALICE, "--add", CAROL, "--remove", TOM, "--admin",
            BOB, "--name", "Family",
        ],
    )
    .await;
    let mut members = vec![BOB, CAROL, ALICE];
    members.sort();
    assert_eq!(changed["group"]["members"], serde_json::json!(members));
    assert_eq!(changed["group"]["name"], "Family");
    let mut admins = vec![BOB, ALICE];
    admins.sort();
    assert_eq!(changed["group"]["admins"], serde_json::json!(admins));

    // A member sees it as it is; Tom, removed, gets what no group gets.
    let shown = ok(&config, &["group", "show", &id, "--as", CAROL]).await;
    assert_eq!(shown, changed);
    let tom = interop(Some(&config), &["group", "show", &id, "--as", TOM]).await;
    assert_eq!(tom.code, 2, "{}{}", tom.stdout, tom.stderr);
    assert_eq!(tom.one()["rejected"]["code"], "GROUP_NOT_FOUND");
    // Only admins change it.
    let carol = interop(
        Some(&config),
        &["group", "change", &id, "--actor", CAROL, "--name", "Mine"],
    )
    .await;
    assert_eq!(carol.code, 2);
    assert_eq!(carol.one()["rejected"]["code"], "NOT_GROUP_ADMIN");

    // Carol hears of being added, then the message to the group.
    let listener = Listener::start(&config, CAROL, 2).await;
    let sent = ok(
        &config,
        &[
            "send",
            "--as",
            ALICE,
            "--group",
            &id,
            "--text",
            "see you at the lift",
        ],
    )
    .await;
    let got = listener.lines().await;
    assert!(got.iter().all(|l| l["group_id"] == id.as_str()), "{got:?}");
    let message = got
        .iter()
        .find(|l| l["message_id"] == sent["accepted"]["message_id"])
        .unwrap_or_else(|| panic!("the group message is not in {got:?}"));
    assert_eq!(message["text"], "see you at the lift");
    assert_eq!(message["to"], CAROL);
    assert_eq!(message["from"], ALICE);

    // --to and --group together is bad usage.
    let both = interop(
        Some(&config),
        &[
            "send", "--as", ALICE, "--to", BOB, "--group", &id, "--text", "x",
        ],
    )
    .await;
    assert_eq!(both.code, 64, "{}", both.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_session_through_the_cli_gets_every_users_messages() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&c, dir.path());
    for user in [BOB, CAROL] {
        ok(&config, &["opt-in", "--as", user, "--allow", "signal"]).await;
    }
    let listener = Listener::start_provider(&config, "home", 2).await;
    for (to, text) in [(BOB, "for bob"), (CAROL, "for carol")] {
        ok(
            &config,
            &["send", "--as", ALICE, "--to", to, "--text", text],
        )
        .await;
    }
    let got = listener.lines().await;
    let seen: Vec<(&str, &str)> = got
        .iter()
        .map(|l| (l["user"].as_str().unwrap(), l["text"].as_str().unwrap()))
        .collect();
    assert_eq!(seen.len(), 2, "{got:?}");
    assert!(seen.contains(&(BOB, "for bob")) && seen.contains(&(CAROL, "for carol")));
    assert!(got
        .iter()
        .all(|l| l["batch"].as_u64().unwrap() > 0 && l["partition"].is_u64()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_a_reaction_an_encrypted_edit_and_a_delete_go_through_the_cli() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&c, dir.path());
    let keys = dir.path().join("keys");
    let keys = keys.to_str().unwrap();
    ok(&config, &["opt-in", "--as", BOB, "--allow", "signal"]).await;
    ok(&config, &["opt-in", "--as", ALICE, "--allow", "home"]).await;
    ok(
        &config,
        &["keys", "publish", "--as", BOB, "--keys-dir", keys],
    )
    .await;
    let listener = Listener::start_with(
        &config,
        &[
            "listen",
            "--as",
            BOB,
            "--count",
            "5",
            "--timeout",
            "45",
            "--keys-dir",
            keys,
        ],
    )
    .await;
    let send = |extra: &[&str]| {
        let mut args = vec!["send", "--as", ALICE, "--to", BOB, "--keys-dir", keys];
        args.extend_from_slice(extra);
        args.iter()
            .map(|a| (*a).to_owned())
            .collect::<Vec<String>>()
    };
    let run = |args: Vec<String>| {
        let config = config.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(&config, &args).await
        }
    };
    let sent = run(send(&["--e2ee", "--text", "meet at noon"])).await;
    let id = sent["accepted"]["message_id"].as_str().unwrap().to_owned();
    ok(
        &config,
        &["request", "accept", "--as", BOB, "--sender", ALICE],
    )
    .await;
    for extra in [
        &["--typing", "true"][..],
        &["--react-to", &id, "--emoji", "👍"],
        &["--e2ee", "--edit", &id, "--text", "meet at one"],
        &["--delete", &id],
    ] {
        run(send(extra)).await;
    }
    let lines = listener.lines().await;
    let has = |what: &str, f: &dyn Fn(&Value) -> bool| {
        assert!(lines.iter().any(f), "no {what} in {lines:#?}");
    };
    has("message", &|l| l["text"] == "meet at noon");
    has("typing", &|l| l["typing"]["active"] == true);
    has("reaction", &|l| {
        l["reaction"]["target_message_id"] == id.as_str() && l["reaction"]["emoji"] == "👍"
    });
    // The edit is end-to-end encrypted: the gateway had only ciphertext,
    // and `listen` decrypts it with Bob's device keys.
    has("encrypted edit", &|l| {
        l["edit"]["target_message_id"] == id.as_str()
            && l["encryption"] == "E2EE"
            && l["edit"]["text"] == "meet at one"
            && l["e2ee_scheme"] == "olm.v1"
    });
    has("delete", &|l| {
        l["delete"]["target_message_id"] == id.as_str()
    });
    // Each flag stands alone: an edit needs its new text.
    let refused = interop(
        Some(&config),
        &["send", "--as", ALICE, "--to", BOB, "--edit", &id],
    )
    .await;
    assert_eq!(refused.code, 64, "{}{}", refused.stdout, refused.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn piped_output_is_the_json_of_json_and_each_exit_code_means_what_help_says() {
    let c = Cluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = client_config(&c, dir.path());
    ok(&config, &["opt-in", "--as", BOB, "--allow", "signal"]).await;

    // Piped, and with --json: the same bytes.
    let args = ["consent", "--as", BOB];
    let piped = interop(Some(&config), &args).await;
    let json = interop(Some(&config), &[&args[..], &["--json"]].concat()).await;
    assert_eq!((piped.code, json.code), (0, 0));
    assert_eq!(piped.stdout, json.stdout);
    assert_eq!(
        piped.one(),
        serde_json::json!({"consent": {"user": BOB, "opted_in": true, "allowed_providers": ["signal"],
            "inbox": "separate", "blocked": [], "declined": []}})
    );

    // On a terminal: a readable line (through `script`, which gives the
    // command a pseudo-terminal; skipped where util-linux's is missing).
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let cli = interop_e2e::interop_cli();
        let shell = format!(
            "INTEROP_CLIENT_CONFIG={} {} consent --as {BOB}",
            config.display(),
            cli.display()
        );
        let out = tokio::process::Command::new("script")
            .args(["-qec", &shell, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!(
                "{BOB} · opted in · allows signal · inbox: separate"
            )),
            "{text:?}"
        );
        assert!(!text.contains('{'), "no JSON on a terminal: {text:?}");
        // --json there too.
        let out = tokio::process::Command::new("script")
            .args(["-qec", &format!("{shell} --json"), "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("{\"consent\""));
    }

    // 0: done.
    let sent = interop(
        Some(&config),
        &["send", "--as", ALICE, "--to", BOB, "--text", "hello"],
    )
    .await;
    assert_eq!(sent.code, 0, "{}", sent.stderr);
    // A reader that goes away (`| head -1`): listen ends quietly, and the
    // message it could not print was not acked: the next session gets it.
    {
        use tokio::io::AsyncBufReadExt as _;
        let mut listen = command(
            Some(&config),
            &["listen", "--as", BOB, "--count", "5", "--timeout", "30"],
        )
        .spawn()
        .unwrap();
        let mut lines = tokio::io::BufReader::new(listen.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the first message")
            .unwrap()
            .unwrap();
        assert!(first.contains("\"text\":\"hello\""), "{first}");
        drop(lines);
        let again = interop(
            Some(&config),
            &["send", "--as", ALICE, "--to", BOB, "--text", "again"],
        )
        .await;
        assert_eq!(again.code, 0, "{}", again.stderr);
        let out = tokio::time::timeout(Duration::from_secs(30), listen.wait_with_output())
            .await
            .expect("listen ended once it could not print")
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        let next = interop(Some(&config), &["listen", "--as", BOB, "--timeout", "3"]).await;
        assert_eq!(next.code, 0, "{}", next.stderr);
        assert!(
            next.json().iter().any(|l| l["text"] == "again"),
            "{}",
            next.stdout
        );
    }
    // 2: refused by the gateway, the answer printed.
    let refused = interop(
        Some(&config),
        &["send", "--as", ALICE, "--to", CAROL, "--text", "hello"],
    )
    .await;
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert_eq!(refused.one()["rejected"]["code"], "RECIPIENT_UNAVAILABLE");
    // 3: listen --count timed out (Carol gets nothing).
    let timed_out = interop(
        Some(&config),
        &["listen", "--as", CAROL, "--count", "1", "--timeout", "1"],
    )
    .await;
    assert_eq!(timed_out.code, 3, "{}", timed_out.stderr);
    assert_eq!(timed_out.stdout, "");
    // 1: an error (nothing listens there).
    let unreachable = interop(
        Some(&config),
        &[
            "send",
            "--as",
            ALICE,
            "--to",
            BOB,
            "--text",
            "hello",
            "--ingest-url",
            "ws://127.0.0.1:1/v1/ws",
        ],
    )
    .await;
    assert_eq!(unreachable.code, 1, "{}", unreachable.stderr);
    assert!(unreachable.stderr.starts_with("interop: cannot connect"));
    // 64: bad usage or configuration.
    for (args, says) in [
        (&["send", "--as", ALICE, "--to", BOB][..], "required"),
        (
            &["send", "--as", ALICE, "--to", BOB, "--text", "x", "--bogus"][..],
            "unexpected argument",
        ),
        (
            &["send", "--as", "alice", "--to", BOB, "--text", "x"][..],
            "not an address",
        ),
        (
            &["consent", "--as", BOB, "--inbox", "requests"][..],
            "invalid value",
        ),
    ] {
        let run = interop(Some(&config), args).await;
        assert_eq!(run.code, 64, "{args:?}: {}", run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert_eq!(run.stdout, "");
    }
    // A config without the provider's token (with none, the binary would
    // find the `.run/client.toml` of a checkout where `scripts/up` ran).
    let tokenless = dir.path().join("tokenless.toml");
    std::fs::write(
        &tokenless,
        format!("ingest_url = \"{}\"\n", c.gateway.ingest_url),
    )
    .unwrap();
    let run = interop(Some(&tokenless), &["consent", "--as", BOB]).await;
    assert_eq!(run.code, 64, "{}", run.stderr);
    assert!(
        run.stderr.contains("no token for provider"),
        "{}",
        run.stderr
    );
    // An unreadable config.
    let run = interop(
        Some(&dir.path().join("missing.toml")),
        &["consent", "--as", BOB],
    )
    .await;
    assert_eq!(run.code, 64, "{}", run.stderr);
    // Tokens never show in any output.
    for run in [&sent, &refused, &unreachable] {
        for token in [HOME_TOKEN, SIGNAL_TOKEN] {
            assert!(!run.stdout.contains(token) && !run.stderr.contains(token));
        }
    }
}

#[tokio::test]
async fn completions_and_help_need_no_gateway() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let run = interop(None, &["completions", shell]).await;
        assert_eq!(run.code, 0, "{shell}: {}", run.stderr);
        assert!(run.stdout.contains("interop"), "{shell}");
        for sub in ["send", "listen", "group", "media", "completions"] {
            assert!(run.stdout.contains(sub), "{shell} completes {sub}");
        }
    }
    let bash = interop(None, &["completions", "bash"]).await;
    assert!(
        bash.stdout.contains("complete -F _interop"),
        "{}",
        bash.stdout
    );
    assert_eq!(interop(None, &["completions", "tcsh"]).await.code, 64);

    let help = interop(None, &["--help"]).await;
    assert_eq!(help.code, 0);
    for line in [
        "Exit codes:",
        "  0   done",
        "  1   error",
        "  2   refused by the gateway",
        "  3   timed out",
        "  64  bad usage or configuration",
        "--json",
    ] {
        assert!(
            help.stdout.contains(line),
            "--help lacks {line:?}: {}",
            help.stdout
        );
    }
    for sub in [
        &["group", "--help"][..],
        &["media", "--help"],
        &["send", "--help"],
    ] {
        let run = interop(None, sub).await;
        assert_eq!(run.code, 0, "{sub:?}");
    }
}
