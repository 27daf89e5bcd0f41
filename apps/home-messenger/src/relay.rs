//! What a signed-in browser may ask of the gateway through the adapter, and
//! what it gets of each delivered message.
//!
//! A browser speaks the gateway's own frames (`ClientFrame` up,
//! `ServerFrame` down) to the adapter, but with the user's session cookie
//! instead of the provider token: every frame it sends is checked here to be
//! about the signed-in user only, before the adapter sends it on as the
//! `home` provider. Deliveries come from the provider session with every
//! device's ciphertext; [`for_device`] keeps the browser's own.

use interop_proto::v1::{client_frame::Frame, Envelope, RejectCode, Rejected};

/// Why a frame from a browser is not sent on.
pub fn refusal(code: RejectCode, detail: &str) -> Rejected {
    Rejected {
        code: code as i32,
        detail: detail.to_owned(),
        ..Default::default()
    }
}

fn own(user: &str, named: &str, what: &str) -> Result<(), Rejected> {
    if named == user {
        Ok(())
    } else {
        Err(refusal(
            RejectCode::SenderNotOwned,
            &format!("{what} must be the signed-in user"),
        ))
    }
}

/// Checks that `frame`, sent by the browser of `user`, only acts as that
/// user. `Ok` means it may go to ingest as it is. Frames a browser has no
/// business sending (`Hello` to the gateway, transactions, other users'
/// key directory entries) are refused.
pub fn authorize(user: &str, frame: &Frame) -> Result<(), Rejected> {
    match frame {
        Frame::Send(s) => {
            let from = s.envelope.as_ref().map_or("", |e| e.from.as_str());
            own(user, from, "envelope.from")
        }
        Frame::SetConsent(c) => own(user, &c.user, "SetConsent.user"),
        Frame::RespondToRequest(r) => own(user, &r.user, "RespondToRequest.user"),
        Frame::GetConsent(c) => own(user, &c.user, "GetConsent.user"),
        Frame::CreateGroup(g) => own(user, &g.creator, "CreateGroup.creator"),
        Frame::ChangeGroup(g) => own(user, &g.actor, "ChangeGroup.actor"),
        Frame::GetGroup(g) => own(user, &g.user, "GetGroup.user"),
        Frame::PublishKeys(p) => own(user, &p.user, "PublishKeys.user"),
        Frame::ListDevices(l) => own(user, &l.requester, "ListDevices.requester"),
        Frame::FetchBundles(f) => own(user, &f.requester, "FetchBundles.requester"),
        Frame::RemoveDevice(r) => own(user, &r.user, "RemoveDevice.user"),
        _ => Err(refusal(
            RejectCode::UnsupportedFrame,
            "the home messenger does not relay this frame",
        )),
    }
}

/// Whether `id` is a device id the gateway accepts: 1-64 of `[A-Za-z0-9_-]`.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The envelope as `user`'s device `device` gets it: a provider session
/// carries one ciphertext per device (`Ciphertext.devices`, or for the
/// sender's own copy `sender_devices`); this device gets only its own, as
/// `payload`, or `missing_for_device` when none was made for it, as the
/// gateway does for a device's own session (docs/protocol.md, "One
/// ciphertext per device"). Also for an edit's ciphertext.
pub fn for_device(mut envelope: Envelope, user: &str, device: &str) -> Envelope {
    let own = envelope.from == user;
    if let Some(c) = interop_proto::ciphertext_mut(&mut envelope) {
        let list = if own && !c.sender_devices.is_empty() {
            std::mem::take(&mut c.sender_devices)
        } else {
            std::mem::take(&mut c.devices)
        };
        c.devices.clear();
        c.sender_devices.clear();
        if !list.is_empty() {
            match list.into_iter().find(|d| d.device_id == device) {
                Some(d) => c.payload = d.payload,
                None => c.missing_for_device = true,
            }
        }
    }
    envelope
}

/// An address as it may appear in a log line: the provider, and of the user
/// no more than the first four and last two characters (full phone numbers
/// never go into logs).
pub fn masked(address: &str) -> String {
    let (provider, user) = address.split_once(':').unwrap_or(("?", address));
    let chars: Vec<char> = user.chars().collect();
    if chars.len() <= 6 {
        return format!("{provider}:…");
    }
    let head: String = chars[..4].iter().collect();
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{provider}:{head}…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::v1::envelope::Content;
    use interop_proto::v1::{
        Ciphertext, DeviceCiphertext, FetchBundles, GetConsent, Hello, ListDevices, PublishKeys,
        RespondToRequest, Send, SetConsent, Transaction,
    };

    const BOB: &str = "home:+4915112345678";

    fn send_from(from: &str) -> Frame {
        Frame::Send(Send {
            envelope: Some(Envelope {
                from: from.into(),
                to: "signal:alice".into(),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn a_browser_acts_only_as_its_signed_in_user() {
        assert!(authorize(BOB, &send_from(BOB)).is_ok());
        let other = "home:+4915112345679";
        for frame in [
            send_from(other),
            Frame::Send(Send { envelope: None }),
            Frame::SetConsent(SetConsent {
                user: other.into(),
                ..Default::default()
            }),
            Frame::RespondToRequest(RespondToRequest {
                user: other.into(),
                ..Default::default()
            }),
            Frame::GetConsent(GetConsent { user: other.into() }),
            Frame::PublishKeys(PublishKeys {
                user: other.into(),
                ..Default::default()
            }),
            Frame::ListDevices(ListDevices {
                requester: other.into(),
                user: BOB.into(),
            }),
            Frame::FetchBundles(FetchBundles {
                requester: other.into(),
                user: BOB.into(),
                device_ids: vec![],
            }),
        ] {
            let r = authorize(BOB, &frame).unwrap_err();
            assert_eq!(r.code(), RejectCode::SenderNotOwned, "{frame:?}");
        }
        // Reading another user's keys as oneself is what E2EE needs.
        assert!(authorize(
            BOB,
            &Frame::ListDevices(ListDevices {
                requester: BOB.into(),
                user: "signal:alice".into(),
            })
        )
        .is_ok());
        for frame in [
            Frame::Hello(Hello::default()),
            Frame::Transaction(Transaction::default()),
        ] {
            assert_eq!(
                authorize(BOB, &frame).unwrap_err().code(),
                RejectCode::UnsupportedFrame
            );
        }
    }

    fn e2ee(devices: &[(&str, &[u8])], sender_devices: &[(&str, &[u8])]) -> Envelope {
        let list = |l: &[(&str, &[u8])]| {
            l.iter()
                .map(|(d, p)| DeviceCiphertext {
                    device_id: (*d).into(),
                    payload: p.to_vec().into(),
                })
                .collect()
        };
        Envelope {
            from: "signal:alice".into(),
            to: BOB.into(),
            content: Some(Content::Ciphertext(Ciphertext {
                scheme: "olm.v1".into(),
                devices: list(devices),
                sender_devices: list(sender_devices),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn ciphertext(e: &Envelope) -> &Ciphertext {
        match &e.content {
            Some(Content::Ciphertext(c)) => c,
            other => panic!("not a ciphertext: {other:?}"),
        }
    }

    #[test]
    fn each_device_gets_only_its_own_ciphertext() {
        let e = e2ee(&[("phone", b"p"), ("web-1", b"w")], &[]);
        let mine = for_device(e.clone(), BOB, "web-1");
        let c = ciphertext(&mine);
        assert_eq!(&c.payload[..], b"w");
        assert!(c.devices.is_empty() && !c.missing_for_device);

        let none = for_device(e, BOB, "web-2");
        let c = ciphertext(&none);
        assert!(c.payload.is_empty() && c.missing_for_device);

        // The sender's own copy carries its other devices' ciphertexts.
        let mut copy = e2ee(&[("cli", b"r")], &[("web-1", b"s")]);
        copy.from = BOB.into();
        copy.to = "signal:alice".into();
        let c = for_device(copy, BOB, "web-1");
        assert_eq!(&ciphertext(&c).payload[..], b"s");

        // A ciphertext every device reads stays as it is.
        let mut shared = e2ee(&[], &[]);
        if let Some(Content::Ciphertext(c)) = shared.content.as_mut() {
            c.payload = b"all".to_vec().into();
        }
        assert_eq!(
            &ciphertext(&for_device(shared, BOB, "x")).payload[..],
            b"all"
        );
    }

    #[test]
    fn an_edits_ciphertext_is_kept_for_its_device_too() {
        let mut e = e2ee(&[("phone", b"p"), ("web-1", b"w")], &[]);
        let Some(Content::Ciphertext(c)) = e.content.take() else {
            unreachable!()
        };
        e.content = Some(Content::Edit(interop_proto::v1::Edit {
            target_message_id: "m-1".into(),
            text: None,
            ciphertext: Some(c),
        }));
        let mine = for_device(e, BOB, "web-1");
        let Some(Content::Edit(edit)) = &mine.content else {
            panic!("not an edit: {mine:?}")
        };
        let c = edit.ciphertext.as_ref().unwrap();
        assert_eq!(&c.payload[..], b"w");
        assert!(c.devices.is_empty() && !c.missing_for_device);
    }

    #[test]
    fn device_ids_and_masked_addresses() {
        assert!(valid_device_id("web-3f2a_9"));
        assert!(!valid_device_id(""));
        assert!(!valid_device_id("a/b"));
        assert!(!valid_device_id(&"x".repeat(65)));
        assert_eq!(masked(BOB), "home:+491…78");
        assert!(!masked(BOB).contains("5112345"));
        assert_eq!(masked("signal:al"), "signal:…");
    }
}
