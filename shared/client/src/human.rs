//! (Of the `interop` binary.) How `interop` prints: one JSON object per line
//! for programs (`--json`, or stdout not a terminal), or short readable
//! lines for a person at a terminal.
//!
//! Each command builds the JSON object it has always printed; the readable
//! form is made from that object, so the JSON stays exactly what scripts
//! parse and both forms say the same thing. Text that came from another
//! user (a message, a group name, a file name) is shown with control and
//! text-direction characters escaped: a message cannot rewrite the
//! terminal or disguise what it says.

use std::io::IsTerminal as _;

use serde_json::Value;

/// Where the output goes: a program or a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Json,
    Human,
}

impl Style {
    /// JSON when asked for, or when stdout is not a terminal (piped or
    /// redirected); readable lines otherwise.
    pub fn detect(json: bool) -> Self {
        if json || !std::io::stdout().is_terminal() {
            Style::Json
        } else {
            Style::Human
        }
    }

    /// Prints one answer: a JSON line, or its readable form. A reader that
    /// went away (`interop listen | head -1`) ends the program quietly:
    /// what was not printed was not acked either.
    pub fn print(self, v: &Value) {
        use std::io::Write as _;
        let line = match self {
            Style::Json => v.to_string(),
            Style::Human => render(v),
        };
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(crate::EXIT_OK);
            }
            eprintln!("interop: cannot write to stdout: {e}");
            std::process::exit(crate::EXIT_ERROR);
        }
    }
}

/// The readable form of one of the objects `interop` prints.
pub fn render(v: &Value) -> String {
    // `send-many`: a send's answer with the line it answers.
    if let (Some(n), Some(rest)) = (v.get("line").and_then(Value::as_u64), v.as_object()) {
        let mut rest = rest.clone();
        rest.remove("line");
        return format!("line {n}: {}", render(&Value::Object(rest)));
    }
    if let Some(a) = v.get("accepted") {
        return format!(
            "✓ accepted {} (duplicate: {})",
            str_of(&a["message_id"]),
            if a["duplicate"].as_bool() == Some(true) {
                "yes, sent before"
            } else {
                "no"
            }
        );
    }
    if let Some(r) = v.get("rejected") {
        return rejected(r);
    }
    if v.get("message_id").is_some() && v.get("from").is_some() {
        return message(v);
    }
    if let Some(c) = v.get("consent") {
        return consent(c);
    }
    if let Some(r) = v.get("request") {
        let verb = match r["action"].as_str().unwrap_or_default() {
            "accept" => "accepted",
            "decline" => "declined",
            "block" => "blocked",
            "report" => "reported (and blocked)",
            "reset" => "reset their answer to",
            other => other,
        };
        return format!("✓ {} {verb} {}", str_of(&r["user"]), str_of(&r["sender"]));
    }
    if let Some(p) = v.get("published") {
        return format!(
            "✓ published the keys of device {} of {}: {} one-time keys unclaimed",
            clean(str_of(&p["device_id"])),
            str_of(&p["user"]),
            p["one_time_prekeys"]
        );
    }
    if let (Some(user), Some(devices)) = (v.get("user"), v.get("devices")) {
        return devices_list(user, devices);
    }
    if let Some(g) = v.get("group") {
        return group(g);
    }
    if let Some(u) = v.get("uploaded") {
        return format!(
            "✓ uploaded {} ({}, {}, {}; kept {})",
            str_of(&u["media_id"]),
            clean(str_of(&u["content_type"])),
            size(u["size"].as_u64().unwrap_or(0)),
            str_of(&u["encryption"]),
            kept_until(u["expires_at_ms"].as_u64().unwrap_or(0)),
        );
    }
    if let Some(d) = v.get("downloaded") {
        return format!(
            "✓ saved {} to {} ({}, {}; SHA-256 checked)",
            str_of(&d["media_id"]),
            clean(str_of(&d["file"])),
            clean(str_of(&d["content_type"])),
            size(d["size"].as_u64().unwrap_or(0)),
        );
    }
    if let Some(Value::Object(counts)) = v.get("erased") {
        let list: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
        return format!("✓ erased: {}", list.join(", "));
    }
    // Anything else (the provider admin API's answers): indented JSON.
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

fn list_of(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| clean(str_of(s))).collect())
        .unwrap_or_default()
}

/// `s` with control characters (but newlines, indented) and text-direction
/// overrides escaped.
pub fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\n  "),
            '\t' => out.push(' '),
            c if c.is_control()
                || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}') =>
            {
                out.push_str(&c.escape_unicode().to_string())
            }
            c => out.push(c),
        }
    }
    out
}

fn rejected(r: &Value) -> String {
    let mut line = String::from("✗ refused");
    if let Some(status) = r["status"].as_u64() {
        line.push_str(&format!(" (HTTP {status})"));
    }
    line.push_str(&format!(": {}", str_of(&r["code"])));
    let detail = str_of(&r["detail"]);
    if !detail.is_empty() {
        line.push_str(&format!(": {}", clean(detail)));
    }
    if let Some(ms) = r["retry_after_ms"].as_u64().filter(|ms| *ms > 0) {
        line.push_str(&format!(" (retry after {:.1} s)", ms as f64 / 1000.0));
    }
    line
}

fn consent(c: &Value) -> String {
    let mut line = str_of(&c["user"]).to_owned();
    if c["opted_in"].as_bool() == Some(true) {
        let allowed = list_of(&c["allowed_providers"]);
        line.push_str(" · opted in · allows ");
        line.push_str(&if allowed.is_empty() {
            "no provider".to_owned()
        } else {
            allowed.join(", ")
        });
    } else {
        line.push_str(" · opted out: nothing from other providers reaches them");
    }
    if let Some(inbox) = c["inbox"].as_str() {
        line.push_str(&format!(" · inbox: {inbox}"));
    }
    for key in ["blocked", "declined"] {
        let l = list_of(&c[key]);
        if !l.is_empty() {
            line.push_str(&format!(" · {key}: {}", l.join(", ")));
        }
    }
    line
}

fn devices_list(user: &Value, devices: &Value) -> String {
    let devices = devices.as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "{} has {} device{}",
        str_of(user),
        devices.len(),
        if devices.len() == 1 { "" } else { "s" }
    );
    for d in &devices {
        out.push_str(&format!(
            "\n  {}  identity key {}",
            clean(str_of(&d["device_id"])),
            d["identity_key_b64"].as_str().unwrap_or("(none)")
        ));
        if let Some(n) = d["one_time_prekeys"].as_u64().filter(|n| *n > 0) {
            out.push_str(&format!("  ({n} one-time keys unclaimed)"));
        }
    }
    out
}

fn group(g: &Value) -> String {
    let id = str_of(&g["group_id"]);
    let members = list_of(&g["members"]);
    if members.is_empty() {
        return format!("group {id} has no members left: it is gone");
    }
    let name = str_of(&g["name"]);
    let mut out = format!("group {id}");
    if !name.is_empty() {
        out.push_str(&format!(" “{}”", clean(name)));
    }
    out.push_str(&format!(
        "\n  admins:  {}",
        list_of(&g["admins"]).join(", ")
    ));
    out.push_str(&format!(
        "\n  members: {} ({})",
        members.join(", "),
        members.len()
    ));
    out
}

/// One received message: who from, how protected, what.
fn message(v: &Value) -> String {
    let mut line = String::new();
    if v["inbox"].as_str() == Some("requests") {
        line.push_str("[message request] ");
    }
    line.push_str(&format!("from {}", str_of(&v["from"])));
    if let Some(p) = v["sender_provider"].as_str().filter(|p| !p.is_empty()) {
        line.push_str(&format!(" ({})", clean(p)));
    }
    if let Some(g) = v["group_id"].as_str() {
        line.push_str(&format!(" in group {g}"));
    }
    line.push_str(" · ");
    if let Some(target) = v["in_reply_to"].as_str() {
        line.push_str(&format!("reply to {target} · "));
    }
    let e2ee = v["encryption"].as_str() == Some("E2EE");
    let protection = |scheme: Option<&str>| match (e2ee, scheme) {
        (true, Some(s)) => format!("e2ee ({})", clean(s)),
        (true, None) => "e2ee".to_owned(),
        (false, _) => "transport-only".to_owned(),
    };
    if let Some(r) = v.get("receipt") {
        let status = str_of(&r["status"]).to_lowercase();
        line.push_str(&format!(
            "receipt for {}: {status}",
            str_of(&r["message_id"])
        ));
        if let Some(code) = r.get("code") {
            match code {
                Value::String(c) => line.push_str(&format!(": {c}")),
                other => line.push_str(&format!(": code {other}")),
            }
        }
        return line;
    }
    if let Some(err) = v["decrypt_error"].as_str() {
        line.push_str(&format!(
            "{}: cannot decrypt: {}",
            protection(None),
            clean(err)
        ));
        return line;
    }
    if let Some(text) = v["text"].as_str() {
        line.push_str(&format!(
            "{}: {}",
            protection(v["e2ee_scheme"].as_str()),
            clean(text)
        ));
        return line;
    }
    if let Some(b64) = v["ciphertext_b64"].as_str() {
        line.push_str(&format!(
            "{}: {} of ciphertext this device cannot read",
            protection(None),
            size(b64_len(b64))
        ));
        return line;
    }
    if let Some(m) = v.get("media") {
        line.push_str(&format!(
            "{}: media {} ({}, {}); get it with `interop media download {} --as {} -o FILE`",
            protection(None),
            str_of(&m["media_id"]),
            clean(str_of(&m["content_type"])),
            size(m["size"].as_u64().unwrap_or(0)),
            str_of(&m["media_id"]),
            str_of(&v["to"]),
        ));
        return line;
    }
    if let Some(k) = v.get("key_notice") {
        let kind = str_of(&k["kind"]).trim_start_matches("KIND_");
        let device = clean(str_of(&k["device_id"]));
        let what = match kind {
            "ONE_TIME_PREKEYS_LOW" => format!(
                "device {device} has {} one-time keys left: publish more (`interop keys publish`)",
                k["left"]
            ),
            "KEY_PACKAGES_LOW" => format!("device {device} has {} KeyPackages left", k["left"]),
            "DEVICE_ADDED" => {
                format!("added device {device}; your security code with them changed")
            }
            "DEVICE_REMOVED" => {
                format!("removed device {device}; your security code with them changed")
            }
            "IDENTITY_KEY_CHANGED" => format!(
                "device {device} has a new identity key; your security code with them changed"
            ),
            other => format!("{other} (device {device})"),
        };
        line.push_str(&format!("🔒 key notice: {what}"));
        return line;
    }
    if let Some(c) = v.get("group_change") {
        line.push_str(&group_change(c));
        return line;
    }
    if let Some(r) = v.get("reaction") {
        let target = str_of(&r["target_message_id"]);
        match str_of(&r["emoji"]) {
            "" => line.push_str(&format!("removed their reaction to {target}")),
            emoji => line.push_str(&format!("reacted {} to {target}", clean(emoji))),
        }
        return line;
    }
    if let Some(e) = v.get("edit") {
        let target = str_of(&e["target_message_id"]);
        match (e["text"].as_str(), e["ciphertext_b64"].as_str()) {
            (Some(t), _) => line.push_str(&format!(
                "{}: edited {target}: {}",
                protection(None),
                clean(t)
            )),
            (None, Some(b64)) => line.push_str(&format!(
                "{}: edited {target} ({} of ciphertext)",
                protection(None),
                size(b64_len(b64))
            )),
            (None, None) => line.push_str(&format!("edited {target}")),
        }
        return line;
    }
    if let Some(d) = v.get("delete") {
        line.push_str(&format!(
            "deleted {} for everyone",
            str_of(&d["target_message_id"])
        ));
        return line;
    }
    if let Some(t) = v.get("typing") {
        line.push_str(if t["active"].as_bool() == Some(true) {
            "is typing…"
        } else {
            "stopped typing"
        });
        return line;
    }
    if let Some(c) = v.get("call") {
        line.push_str(&format!(
            "📞 tried to {}call you (calls do not work between apps)",
            if c["video"].as_bool() == Some(true) {
                "video "
            } else {
                ""
            }
        ));
        return line;
    }
    line.push_str(&format!(
        "{}: a kind of message this tool does not show (--json has its id)",
        protection(None)
    ));
    line
}

fn group_change(c: &Value) -> String {
    let mut parts = Vec::new();
    let created = c["created"].as_bool() == Some(true);
    for (key, verb) in [
        (
            "added",
            if created {
                "created the group with"
            } else {
                "added"
            },
        ),
        ("removed", "removed"),
        ("new_admins", "made admin"),
    ] {
        let l = list_of(&c[key]);
        if !l.is_empty() {
            parts.push(format!("{verb} {}", l.join(", ")));
        } else if created && key == "added" {
            parts.push("created the group".to_owned());
        }
    }
    if c["renamed"].as_bool() == Some(true) {
        let name = str_of(&c["name"]);
        parts.push(if name.is_empty() {
            "removed the group's name".to_owned()
        } else {
            format!("renamed the group to “{}”", clean(name))
        });
    }
    let members = list_of(&c["members"]);
    format!(
        "group change: {}; members now: {}",
        if parts.is_empty() {
            "changed the group".to_owned()
        } else {
            parts.join("; ")
        },
        if members.is_empty() {
            "none".to_owned()
        } else {
            members.join(", ")
        }
    )
}

/// The length of what `b64` (padded base64) encodes: 3 bytes per 4
/// characters, less the padding.
fn b64_len(b64: &str) -> u64 {
    (b64.len() / 4 * 3 - b64.bytes().rev().take_while(|b| *b == b'=').count()) as u64
}

/// Bytes for people: 412 B, 3.5 KiB, 2.4 MiB.
pub fn size(n: u64) -> String {
    const KIB: f64 = 1024.0;
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.1} KiB", n as f64 / KIB),
        n if n < 1024 * 1024 * 1024 => format!("{:.1} MiB", n as f64 / KIB / KIB),
        n => format!("{:.1} GiB", n as f64 / KIB / KIB / KIB),
    }
}

/// "for 30 days" from an expiry time (Unix ms).
fn kept_until(expires_at_ms: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = expires_at_ms.saturating_sub(now);
    let days = left / 86_400_000;
    if days >= 1 {
        format!("for {days} day{}", if days == 1 { "" } else { "s" })
    } else {
        format!("for {} hours", left / 3_600_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(extra: Value) -> Value {
        let mut v = json!({"message_id": "0199-m", "from": "signal:alice", "to": "home:+4915112345678",
            "encryption": "TRANSPORT_ONLY", "sender_provider": "Signal", "sender_provider_id": "signal",
            "sender_provider_encryption": "E2EE", "privacy_policy_url": "https://signal.example/privacy"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    #[test]
    fn answers_to_sends_and_refusals() {
        assert_eq!(
            render(
                &json!({"accepted": {"client_message_id": "c1", "message_id": "0199-a", "accepted_at_ms": 1, "duplicate": false}})
            ),
            "✓ accepted 0199-a (duplicate: no)"
        );
        assert_eq!(
            render(
                &json!({"accepted": {"client_message_id": "c1", "message_id": "0199-a", "accepted_at_ms": 1, "duplicate": true}})
            ),
            "✓ accepted 0199-a (duplicate: yes, sent before)"
        );
        assert_eq!(
            render(
                &json!({"rejected": {"client_message_id": "c1", "code": "RATE_LIMITED", "detail": "sender over its limit", "retry_after_ms": 1500}})
            ),
            "✗ refused: RATE_LIMITED: sender over its limit (retry after 1.5 s)"
        );
        assert_eq!(
            render(
                &json!({"rejected": {"code": "RECIPIENT_UNAVAILABLE", "detail": "", "retry_after_ms": 0}})
            ),
            "✗ refused: RECIPIENT_UNAVAILABLE"
        );
        assert_eq!(
            render(
                &json!({"rejected": {"status": 404, "code": "NOT_FOUND", "detail": "no such provider"}})
            ),
            "✗ refused (HTTP 404): NOT_FOUND: no such provider"
        );
        // `send-many`: each answer with its line.
        assert_eq!(
            render(
                &json!({"line": 7, "accepted": {"client_message_id": "c1", "message_id": "0199-a", "accepted_at_ms": 1, "duplicate": false}})
            ),
            "line 7: ✓ accepted 0199-a (duplicate: no)"
        );
        assert_eq!(
            render(
                &json!({"line": 8, "rejected": {"code": "SENDER_NOT_OWNED", "detail": "", "retry_after_ms": 0}})
            ),
            "line 8: ✗ refused: SENDER_NOT_OWNED"
        );
    }

    #[test]
    fn received_messages_say_who_how_protected_and_what() {
        assert_eq!(
            render(&msg(json!({"text": "hello"}))),
            "from signal:alice (Signal) · transport-only: hello"
        );
        assert_eq!(
            render(&msg(
                json!({"encryption": "E2EE", "text": "hello", "e2ee_scheme": "olm.v1", "inbox": "requests"})
            )),
            "[message request] from signal:alice (Signal) · e2ee (olm.v1): hello"
        );
        assert_eq!(
            render(&msg(
                json!({"encryption": "E2EE", "ciphertext_b64": "AAECAwQ=", "decrypt_error": "no session"})
            )),
            "from signal:alice (Signal) · e2ee: cannot decrypt: no session"
        );
        assert_eq!(
            render(&msg(
                json!({"encryption": "E2EE", "ciphertext_b64": "AAECAwQ="})
            )),
            "from signal:alice (Signal) · e2ee: 5 B of ciphertext this device cannot read"
        );
        assert_eq!(
            render(&msg(
                json!({"group_id": "g-1", "text": "hi all", "inbox": "separate"})
            )),
            "from signal:alice (Signal) in group g-1 · transport-only: hi all"
        );
        assert_eq!(
            render(&msg(
                json!({"media": {"media_id": "m-1", "content_type": "image/jpeg", "size": 2_500_000}})
            )),
            "from signal:alice (Signal) · transport-only: media m-1 (image/jpeg, 2.4 MiB); \
             get it with `interop media download m-1 --as home:+4915112345678 -o FILE`"
        );
        assert_eq!(
            render(&msg(json!({"content": "other"}))),
            "from signal:alice (Signal) · transport-only: a kind of message this tool does not show (--json has its id)"
        );
    }

    #[test]
    fn replies_reactions_edits_deletes_typing_and_calls() {
        let from = "from signal:alice (Signal) · ";
        for (extra, want) in [
            (
                json!({"in_reply_to": "0199-t", "text": "yes"}),
                "reply to 0199-t · transport-only: yes",
            ),
            (
                json!({"content": "other", "reaction": {"target_message_id": "0199-t", "emoji": "👍"}}),
                "reacted 👍 to 0199-t",
            ),
            (
                json!({"content": "other", "reaction": {"target_message_id": "0199-t", "emoji": ""}}),
                "removed their reaction to 0199-t",
            ),
            (
                json!({"content": "other", "edit": {"target_message_id": "0199-t", "text": "fixed"}}),
                "transport-only: edited 0199-t: fixed",
            ),
            (
                json!({"encryption": "E2EE", "content": "other",
                    "edit": {"target_message_id": "0199-t", "ciphertext_b64": "AAEC"}}),
                "e2ee: edited 0199-t (3 B of ciphertext)",
            ),
            (
                json!({"content": "other", "delete": {"target_message_id": "0199-t"}}),
                "deleted 0199-t for everyone",
            ),
            (
                json!({"content": "other", "typing": {"active": true}}),
                "is typing…",
            ),
            (
                json!({"content": "other", "typing": {"active": false}}),
                "stopped typing",
            ),
            (
                json!({"content": "other", "call": {"video": true}}),
                "📞 tried to video call you (calls do not work between apps)",
            ),
        ] {
            assert_eq!(render(&msg(extra)), format!("{from}{want}"));
        }
    }

    #[test]
    fn receipts_say_delivered_read_or_failed_with_the_code() {
        for (status, code, want) in [
            ("DELIVERED", None, "delivered"),
            ("READ", None, "read"),
            ("EXPIRED", None, "expired"),
            ("FAILED", Some(json!("SPAM")), "failed: SPAM"),
            ("FAILED", Some(json!(999)), "failed: code 999"),
        ] {
            let mut r = json!({"message_id": "0199-x", "client_message_id": "c", "status": status});
            if let Some(c) = code {
                r["code"] = c;
            }
            assert_eq!(
                render(&msg(
                    json!({"from": "home:+4915112345678", "sender_provider": "Home", "receipt": r})
                )),
                format!("from home:+4915112345678 (Home) · receipt for 0199-x: {want}")
            );
        }
    }

    #[test]
    fn key_notices_and_group_changes() {
        assert_eq!(
            render(&msg(
                json!({"key_notice": {"kind": "KIND_ONE_TIME_PREKEYS_LOW", "device_id": "cli", "left": 3}})
            )),
            "from signal:alice (Signal) · 🔒 key notice: device cli has 3 one-time keys left: publish more (`interop keys publish`)"
        );
        for (kind, want) in [
            ("KIND_KEY_PACKAGES_LOW", "device cli has 0 KeyPackages left"),
            (
                "KIND_DEVICE_ADDED",
                "added device cli; your security code with them changed",
            ),
            (
                "KIND_DEVICE_REMOVED",
                "removed device cli; your security code with them changed",
            ),
            (
                "KIND_IDENTITY_KEY_CHANGED",
                "device cli has a new identity key; your security code with them changed",
            ),
        ] {
            assert_eq!(
                render(&msg(
                    json!({"key_notice": {"kind": kind, "device_id": "cli", "left": 0}})
                )),
                format!("from signal:alice (Signal) · 🔒 key notice: {want}")
            );
        }
        assert_eq!(
            render(&msg(json!({"group_id": "g-1", "group_change": {"created": true,
                "added": ["home:+4915112345678"], "removed": [], "new_admins": [], "renamed": true,
                "name": "Ski trip", "members": ["home:+4915112345678", "signal:alice"]}}))),
            "from signal:alice (Signal) in group g-1 · group change: created the group with \
             home:+4915112345678; renamed the group to “Ski trip”; members now: home:+4915112345678, signal:alice"
        );
        assert_eq!(
            render(&msg(
                json!({"group_id": "g-1", "group_change": {"created": false,
                "added": ["telegram:tom"], "removed": ["home:+4915112345678"], "new_admins": ["telegram:tom"],
                "renamed": true, "name": "", "members": ["signal:alice", "telegram:tom"]}})
            )),
            "from signal:alice (Signal) in group g-1 · group change: added telegram:tom; \
             removed home:+4915112345678; made admin telegram:tom; removed the group's name; \
             members now: signal:alice, telegram:tom"
        );
    }

    #[test]
    fn settings_keys_groups_and_media() {
        assert_eq!(
            render(
                &json!({"consent": {"user": "home:+4915112345678", "opted_in": true, "allowed_providers": ["signal", "telegram"]}})
            ),
            "home:+4915112345678 · opted in · allows signal, telegram"
        );
        assert_eq!(
            render(&json!({"consent": {"user": "home:+1", "opted_in": false, "allowed_providers": [],
                "inbox": "separate", "blocked": ["signal:mallory"], "declined": []}})),
            "home:+1 · opted out: nothing from other providers reaches them · inbox: separate · blocked: signal:mallory"
        );
        assert_eq!(
            render(
                &json!({"request": {"user": "home:+1", "sender": "signal:alice", "action": "accept"}})
            ),
            "✓ home:+1 accepted signal:alice"
        );
        assert_eq!(
            render(
                &json!({"published": {"user": "signal:alice", "device_id": "cli", "one_time_prekeys": 20}})
            ),
            "✓ published the keys of device cli of signal:alice: 20 one-time keys unclaimed"
        );
        assert_eq!(
            render(&json!({"user": "home:+1", "devices": [
                {"device_id": "cli", "identity_key_b64": "AAAA", "one_time_prekeys": 20},
                {"device_id": "phone", "identity_key_b64": null, "one_time_prekeys": 0}]})),
            "home:+1 has 2 devices\n  cli  identity key AAAA  (20 one-time keys unclaimed)\n  phone  identity key (none)"
        );
        assert_eq!(
            render(
                &json!({"group": {"group_id": "g-1", "admins": ["signal:alice"],
                "members": ["home:+1", "signal:alice"], "name": "Ski trip"}})
            ),
            "group g-1 “Ski trip”\n  admins:  signal:alice\n  members: home:+1, signal:alice (2)"
        );
        assert_eq!(
            render(&json!({"group": {"group_id": "g-1", "admins": [], "members": [], "name": ""}})),
            "group g-1 has no members left: it is gone"
        );
        let in_30_days = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
            + 30 * 86_400_000
            + 60_000;
        assert_eq!(
            render(
                &json!({"uploaded": {"media_id": "m-1", "size": 3584, "content_type": "image/png",
                "sha256": "ab", "encryption": "transport-only", "expires_at_ms": in_30_days}})
            ),
            "✓ uploaded m-1 (image/png, 3.5 KiB, transport-only; kept for 30 days)"
        );
        assert_eq!(
            render(
                &json!({"downloaded": {"media_id": "m-1", "file": "out.png", "content_type": "image/png",
                "size": 12, "sha256": "ab"}})
            ),
            "✓ saved m-1 to out.png (image/png, 12 B; SHA-256 checked)"
        );
        assert_eq!(
            render(&json!({"erased": {"messages": 3, "media": 1}})),
            "✓ erased: media 1, messages 3"
        );
        // Anything else: indented JSON.
        assert_eq!(
            render(&json!({"providers": []})),
            "{\n  \"providers\": []\n}"
        );
    }

    #[test]
    fn text_from_others_cannot_drive_the_terminal() {
        assert_eq!(
            render(&msg(json!({"text": "hi\u{1b}[2J\u{7}\u{202E}gpj.exe\r\nline 2"}))),
            "from signal:alice (Signal) · transport-only: hi\\u{1b}[2J\\u{7}\\u{202e}gpj.exe\\u{d}\n  line 2"
        );
        assert_eq!(size(0), "0 B");
        assert_eq!(size(1024 * 1024 * 1024 * 3), "3.0 GiB");
    }
}
