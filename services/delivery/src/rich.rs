//! What a recipient's app can show: rich content is delivered as is when the
//! recipient's provider declares the kind in its registry record
//! (`capabilities.content`), and as a visible text fallback when it does not
//! — never dropped silently. Decisions in docs/adr/0010.
//!
//! | content | not supported → delivered as |
//! |---|---|
//! | reaction | text "👍 reacted to your message" / "removed a reaction", `in_reply_to` = target |
//! | edit with text | text `"edited: <new text>"`, `in_reply_to` = target |
//! | edit with ciphertext (E2EE) | the new ciphertext as an ordinary message, `in_reply_to` = target: the gateway cannot read it to write a fallback, and the recipient's app can decrypt and show it |
//! | delete | text "deleted a message", `in_reply_to` = target |
//! | text with `in_reply_to` (reply) | text prefixed "↩ " |
//! | text in a group (`group_id`) | text prefixed `"[group] "` |
//! | call attempt | always a notice (no provider can take a call across apps) |
//! | group change | text `"[group] created the group “Ski trip” with you, telegram:tom"` from the admin (what they did; at most 5 addresses per list, the recipient as "you", then "and N more") |
//! | key notice about a contact's keys (device added or removed, identity key changed) | text from the contact, e.g. "🔒 added a device; your security code with them changed" |
//! | key notice to the owner (one-time prekeys or KeyPackages low) | not shown (auto-acked): the app could not act on it |
//! | READ receipt | not shown (auto-acked): a status, not content |
//! | typing | not shown: ephemeral |
//!
//! Gateway-written text is marked `TRANSPORT_ONLY`: the gateway wrote it.

use interop_proto::limits::MAX_TEXT_BYTES;
use interop_proto::v1::{
    envelope::Content, key_notice::Kind as KeyNoticeKind, Encryption, Envelope, GroupChange,
    KeyNotice, ReceiptStatus, Text,
};
use interop_providers::{Capabilities, ContentKind};

/// The notice a call attempt becomes.
pub const CALL_NOTICE: &str =
    "tried to call you. Calls don't work between different messaging apps yet; reply with a message instead.";

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Members named in a group change's fallback text; more are counted.
const NAMED_MEMBERS: usize = 5;

/// "a, b and 3 more", with the recipient as "you".
fn some_of(list: &[String], you: &str) -> String {
    let mut names: Vec<&str> = list
        .iter()
        .map(|a| if a == you { "you" } else { a.as_str() })
        .collect();
    // The recipient first: the part they care about.
    names.sort_by_key(|n| *n != "you");
    let more = names.len().saturating_sub(NAMED_MEMBERS);
    names.truncate(NAMED_MEMBERS);
    let mut out = names.join(", ");
    if more > 0 {
        out.push_str(&format!(" and {more} more"));
    }
    out
}

/// A group's name in the gateway's text: in curly quotes, with the quotes
/// it holds made plain apostrophes, so it cannot seem to end early.
fn quoted(name: &str) -> String {
    format!("“{}”", name.replace(['"', '“', '”'], "'"))
}

/// What a group change says, for an app that does not show it: e.g.
/// `[group] created the group “Ski trip” with you, telegram:tom`, from the
/// admin.
pub fn group_change_text(c: &GroupChange, you: &str) -> String {
    let mut did = Vec::new();
    if c.created {
        did.push(if c.name.is_empty() {
            format!("created a group with {}", some_of(&c.added, you))
        } else {
            format!(
                "created the group {} with {}",
                quoted(&c.name),
                some_of(&c.added, you)
            )
        });
    } else {
        if !c.added.is_empty() {
            did.push(format!("added {}", some_of(&c.added, you)));
        }
        if !c.removed.is_empty() {
            did.push(format!("removed {}", some_of(&c.removed, you)));
        }
        if c.renamed {
            did.push(if c.name.is_empty() {
                "removed the group's name".to_owned()
            } else {
                format!("renamed the group to {}", quoted(&c.name))
            });
        }
    }
    let admins: Vec<String> = c
        .new_admins
        .iter()
        .filter(|a| !c.created || c.added.contains(a))
        .cloned()
        .collect();
    if !admins.is_empty() {
        did.push(format!("made {} admin", some_of(&admins, you)));
    }
    if did.is_empty() {
        did.push("changed the group".to_owned());
    }
    format!("[group] {}", did.join("; "))
}

fn notice(env: &mut Envelope, body: String) {
    env.encryption = Encryption::TransportOnly as i32;
    env.content = Some(Content::Text(Text {
        body: truncate(body, MAX_TEXT_BYTES),
    }));
}

/// What a key notice about a contact says, for an app that does not show
/// key notices; `None` for the owner's own notices (keys running low), which
/// such an app could not act on.
pub fn key_notice_text(k: &KeyNotice) -> Option<&'static str> {
    match k.kind() {
        KeyNoticeKind::DeviceAdded => {
            Some("🔒 added a device; your security code with them changed")
        }
        KeyNoticeKind::DeviceRemoved => {
            Some("🔒 removed a device; your security code with them changed")
        }
        KeyNoticeKind::IdentityKeyChanged => {
            Some("🔒 your security code with them changed (a device has a new identity key)")
        }
        KeyNoticeKind::OneTimePrekeysLow
        | KeyNoticeKind::KeyPackagesLow
        | KeyNoticeKind::Unspecified => None,
    }
}

/// Adapts `env` to what the recipient's provider supports; `None` when there
/// is nothing to show (a READ receipt or typing the app does not take).
pub fn adapt(mut env: Envelope, caps: &Capabilities) -> Option<Envelope> {
    let supports = |k| caps.supports(k);
    let was_text = matches!(env.content, Some(Content::Text(_)));
    match env.content.take() {
        Some(Content::Receipt(r))
            if r.status == ReceiptStatus::Read as i32 && !supports(ContentKind::ReadReceipt) =>
        {
            return None
        }
        Some(Content::Typing(_)) if !supports(ContentKind::Typing) => return None,
        Some(Content::Call(c)) => {
            let kind = if c.video { "📹" } else { "📞" };
            notice(&mut env, format!("{kind} {CALL_NOTICE}"));
        }
        Some(Content::Reaction(r)) if !supports(ContentKind::Reaction) => {
            env.in_reply_to = r.target_message_id;
            let body = if r.emoji.is_empty() {
                "removed a reaction from your message".to_owned()
            } else {
                format!("{} reacted to your message", r.emoji)
            };
            notice(&mut env, body);
        }
        Some(Content::Edit(e)) if !supports(ContentKind::Edit) => {
            env.in_reply_to = e.target_message_id;
            match (e.text, e.ciphertext) {
                (Some(t), _) => notice(&mut env, format!("edited: {}", t.body)),
                (None, Some(c)) => env.content = Some(Content::Ciphertext(c)),
                (None, None) => notice(&mut env, "edited a message".to_owned()),
            }
        }
        Some(Content::Delete(d)) if !supports(ContentKind::Delete) => {
            env.in_reply_to = d.target_message_id;
            notice(&mut env, "deleted a message".to_owned());
        }
        Some(Content::GroupChange(c)) if !supports(ContentKind::GroupChange) => {
            let body = group_change_text(&c, &env.to);
            notice(&mut env, body);
        }
        Some(Content::KeyNotice(k)) if !supports(ContentKind::KeyNotice) => {
            notice(&mut env, key_notice_text(&k)?.to_owned());
        }
        other => env.content = other,
    }
    if let Some(Content::Text(t)) = env.content.as_mut().filter(|_| was_text) {
        if !env.group_id.is_empty() && !supports(ContentKind::Group) {
            t.body = truncate(format!("[group] {}", t.body), MAX_TEXT_BYTES);
        }
        if !env.in_reply_to.is_empty() && !supports(ContentKind::Reply) {
            t.body = truncate(format!("↩ {}", t.body), MAX_TEXT_BYTES);
        }
    }
    Some(env)
}

/// Keeps, of a ciphertext with one entry per device, only `device_id`'s:
/// it becomes the `payload`, and the other devices' ciphertexts never leave
/// the gateway for this device. A device without an entry gets an empty
/// payload and `missing_for_device`, so its app can ask the sender to fetch
/// its keys again; but in a copy of what its own user sent (`own`: the
/// copy for the sender's other devices) a device without an entry is the
/// one that sent it, and gets nothing: `false`, skip the message. Also for
/// an edit's ciphertext. The sender's devices' ciphertexts
/// (`sender_devices`) never reach a device. Nothing else changes.
pub fn for_device(env: &mut Envelope, device_id: &str, own: bool) -> bool {
    let Some(c) = interop_bus::pipeline::ciphertext_mut(env) else {
        return true;
    };
    c.sender_devices.clear();
    if c.devices.is_empty() {
        return true;
    }
    let mine = std::mem::take(&mut c.devices)
        .into_iter()
        .find(|d| d.device_id == device_id);
    match mine {
        Some(d) => c.payload = d.payload,
        None if own => return false,
        None => c.missing_for_device = true,
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::v1::{CallAttempt, Ciphertext, Delete, Edit, Reaction, Receipt, Typing};

    fn caps(kinds: &[ContentKind]) -> Capabilities {
        Capabilities {
            content: kinds.to_vec(),
            media_formats: Vec::new(),
        }
    }

    fn env(content: Content) -> Envelope {
        Envelope {
            message_id: "m2".into(),
            from: "signal:alice".into(),
            to: "telegram:tom".into(),
            encryption: Encryption::TransportOnly as i32,
            content: Some(content),
            ..Default::default()
        }
    }

    #[test]
    fn each_device_gets_only_its_own_ciphertext() {
        use interop_proto::v1::{Ciphertext, DeviceCiphertext};
        let c = Ciphertext {
            scheme: "olm.v1".into(),
            devices: vec![
                DeviceCiphertext {
                    device_id: "phone".into(),
                    payload: vec![1].into(),
                },
                DeviceCiphertext {
                    device_id: "laptop".into(),
                    payload: vec![2].into(),
                },
            ],
            ..Default::default()
        };
        let mut phone = env(Content::Ciphertext(Ciphertext {
            sender_devices: vec![DeviceCiphertext {
                device_id: "desk".into(),
                payload: vec![9].into(),
            }],
            ..c.clone()
        }));
        assert!(for_device(&mut phone, "phone", false));
        let Some(Content::Ciphertext(p)) = phone.content else {
            panic!()
        };
        assert_eq!(
            (p.payload.as_ref(), p.devices.len(), p.missing_for_device),
            (&[1u8][..], 0, false)
        );
        assert!(p.sender_devices.is_empty(), "never handed to a device");
        let mut tablet = env(Content::Ciphertext(c.clone()));
        assert!(for_device(&mut tablet, "tablet", false));
        let Some(Content::Ciphertext(t)) = tablet.content else {
            panic!()
        };
        assert!(t.payload.is_empty() && t.devices.is_empty() && t.missing_for_device);
        // In a copy of what its user sent, a device without an entry is the
        // one that sent it: it gets nothing.
        let mut sent = env(Content::Ciphertext(c.clone()));
        assert!(!for_device(&mut sent, "tablet", true));
        let mut synced = env(Content::Ciphertext(c.clone()));
        assert!(for_device(&mut synced, "laptop", true));
        // One ciphertext for every device passes unchanged.
        let shared = Ciphertext {
            scheme: "mls".into(),
            payload: vec![3].into(),
            ..Default::default()
        };
        let mut any = env(Content::Ciphertext(shared.clone()));
        assert!(for_device(&mut any, "phone", false));
        assert_eq!(any.content, Some(Content::Ciphertext(shared)));
    }

    #[test]
    fn a_group_change_becomes_text_naming_at_most_five() {
        let you = "telegram:tom";
        let others: Vec<String> = (1..=7).map(|i| format!("signal:m{i}")).collect();
        let mut added = vec![you.to_owned()];
        added.extend(others.iter().take(2).cloned());
        let created = GroupChange {
            created: true,
            added,
            new_admins: vec!["signal:alice".into()],
            renamed: true,
            name: "Ski trip".into(),
            ..Default::default()
        };
        assert_eq!(
            group_change_text(&created, you),
            "[group] created the group “Ski trip” with you, signal:m1, signal:m2"
        );
        let change = GroupChange {
            added: others.clone(),
            removed: vec![you.to_owned()],
            new_admins: vec!["signal:m1".into()],
            renamed: true,
            ..Default::default()
        };
        assert_eq!(
            group_change_text(&change, you),
            "[group] added signal:m1, signal:m2, signal:m3, signal:m4, signal:m5 and 2 more; \
             removed you; removed the group's name; made signal:m1 admin"
        );
        let rename = GroupChange {
            renamed: true,
            name: "Family".into(),
            ..Default::default()
        };
        assert_eq!(
            group_change_text(&rename, you),
            "[group] renamed the group to “Family”"
        );
        let spoof = GroupChange {
            renamed: true,
            name: "x\"; removed you; made signal:eve admin".into(),
            ..Default::default()
        };
        assert_eq!(
            group_change_text(&spoof, you),
            "[group] renamed the group to “x'; removed you; made signal:eve admin”"
        );
        // Delivered as is to an app that declares it, as text otherwise.
        let mut e = env(Content::GroupChange(rename));
        e.group_id = "g-0123456789abcdef0123456789abcdef".into();
        let as_is = adapt(e.clone(), &caps(&ContentKind::ALL)).unwrap();
        assert!(matches!(as_is.content, Some(Content::GroupChange(_))));
        let plain = adapt(e, &caps(&[ContentKind::Text, ContentKind::Group])).unwrap();
        assert_eq!(text(&plain), "[group] renamed the group to “Family”");
        assert_eq!(plain.encryption, Encryption::TransportOnly as i32);
    }

    #[test]
    fn key_notices_about_a_contact_become_text_and_the_owners_are_not_shown() {
        let notice = |kind: KeyNoticeKind| {
            env(Content::KeyNotice(KeyNotice {
                kind: kind as i32,
                device_id: "phone".into(),
                left: 3,
            }))
        };
        let plain = caps(ContentKind::DEFAULT);
        let changed = adapt(notice(KeyNoticeKind::IdentityKeyChanged), &plain).unwrap();
        assert_eq!(
            text(&changed),
            "🔒 your security code with them changed (a device has a new identity key)"
        );
        for kind in [KeyNoticeKind::DeviceAdded, KeyNoticeKind::DeviceRemoved] {
            let t = adapt(notice(kind), &plain).unwrap();
            assert!(text(&t).contains("security code"), "{kind:?}");
        }
        for kind in [
            KeyNoticeKind::OneTimePrekeysLow,
            KeyNoticeKind::KeyPackagesLow,
        ] {
            assert!(adapt(notice(kind), &plain).is_none(), "{kind:?}");
        }
        // Delivered as is to an app that declares key notices.
        let as_is = adapt(
            notice(KeyNoticeKind::OneTimePrekeysLow),
            &caps(&ContentKind::ALL),
        )
        .unwrap();
        assert!(matches!(as_is.content, Some(Content::KeyNotice(k)) if k.left == 3));
    }

    fn text(e: &Envelope) -> &str {
        match &e.content {
            Some(Content::Text(t)) => &t.body,
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn supported_kinds_pass_unchanged() {
        let all = Capabilities::default();
        let r = env(Content::Reaction(Reaction {
            target_message_id: "m1".into(),
            emoji: "👍".into(),
        }));
        assert_eq!(adapt(r.clone(), &all), Some(r));
    }

    #[test]
    fn fallbacks_are_visible_text() {
        let plain = caps(&[ContentKind::Text]);
        let r = adapt(
            env(Content::Reaction(Reaction {
                target_message_id: "m1".into(),
                emoji: "👍".into(),
            })),
            &plain,
        )
        .unwrap();
        assert_eq!(text(&r), "👍 reacted to your message");
        assert_eq!(r.in_reply_to, "m1");
        let un = adapt(
            env(Content::Reaction(Reaction {
                target_message_id: "m1".into(),
                emoji: String::new(),
            })),
            &plain,
        )
        .unwrap();
        assert_eq!(text(&un), "removed a reaction from your message");
        let e = adapt(
            env(Content::Edit(Edit {
                target_message_id: "m1".into(),
                text: Some(Text {
                    body: "fixed".into(),
                }),
                ciphertext: None,
            })),
            &plain,
        )
        .unwrap();
        assert_eq!(text(&e), "edited: fixed");
        let d = adapt(
            env(Content::Delete(Delete {
                target_message_id: "m1".into(),
            })),
            &plain,
        )
        .unwrap();
        assert_eq!(text(&d), "deleted a message");
        let c = adapt(
            env(Content::Call(CallAttempt { video: false })),
            &Capabilities::default(),
        )
        .unwrap();
        assert!(text(&c).contains("Calls don't work"));
    }

    #[test]
    fn an_edit_at_the_text_limit_stays_within_it() {
        let e = adapt(
            env(Content::Edit(Edit {
                target_message_id: "m1".into(),
                text: Some(Text {
                    body: "é".repeat(MAX_TEXT_BYTES / 2),
                }),
                ciphertext: None,
            })),
            &caps(&[ContentKind::Text]),
        )
        .unwrap();
        assert!(text(&e).len() <= MAX_TEXT_BYTES);
        assert!(text(&e).starts_with("edited: é"));
    }

    #[test]
    fn e2ee_edits_fall_back_to_the_new_ciphertext() {
        let mut m = env(Content::Edit(Edit {
            target_message_id: "m1".into(),
            text: None,
            ciphertext: Some(Ciphertext {
                scheme: "mls".into(),
                payload: vec![9u8; 8].into(),
                ..Default::default()
            }),
        }));
        m.encryption = Encryption::E2ee as i32;
        let out = adapt(m, &caps(&[ContentKind::Ciphertext])).unwrap();
        assert!(matches!(out.content, Some(Content::Ciphertext(ref c)) if c.payload.len() == 8));
        assert_eq!(out.encryption, Encryption::E2ee as i32);
        assert_eq!(out.in_reply_to, "m1");
    }

    #[test]
    fn statuses_and_typing_are_skipped_when_unsupported() {
        let plain = caps(&[ContentKind::Text]);
        let read = env(Content::Receipt(Receipt {
            status: ReceiptStatus::Read as i32,
            ..Default::default()
        }));
        assert_eq!(adapt(read, &plain), None);
        let delivered = env(Content::Receipt(Receipt {
            status: ReceiptStatus::Delivered as i32,
            ..Default::default()
        }));
        assert!(adapt(delivered, &plain).is_some());
        assert_eq!(
            adapt(env(Content::Typing(Typing { active: true })), &plain),
            None
        );
    }

    #[test]
    fn replies_and_groups_are_marked_in_text() {
        let mut m = env(Content::Text(Text { body: "hi".into() }));
        m.in_reply_to = "m1".into();
        m.group_id = "g-0".into();
        let out = adapt(m, &caps(&[ContentKind::Text])).unwrap();
        assert_eq!(text(&out), "↩ [group] hi");
    }
}
