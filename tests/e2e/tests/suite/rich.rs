//! Issue 5 end to end: read receipts and reactions between providers,
//! visible fallbacks for a provider that declares only text, typing that is
//! never stored, call attempts, expiry of undelivered messages, groups
//! across three providers (and what their members are told of changes),
//! and a session that pauses at its un-acked limit.

use std::time::Duration;

use interop_client::{
    group_text_envelope, reaction_envelope, text_envelope, Delivered, GroupOutcome, Receiver,
    SendOutcome,
};
use interop_e2e::{registry, Stack};
use interop_proto::v1::envelope::Content;
use interop_proto::v1::{
    CallAttempt, ChangeGroup, Delete, Edit, Envelope, GroupChange, Inbox, Receipt, ReceiptStatus,
    RejectCode, Text, Typing,
};
use interop_providers::{Capabilities, ContentKind, Provider, Registry};

use crate::common::{
    nothing_within, opt_in, poll, receiver, send_ok, sender, until_session_listens, until_stored,
    WAIT,
};

const BOB: &str = "home:+4915112345678";
const ALICE: &str = "signal:alice";
const TOM: &str = "telegram:tom";

/// The harness registry, with telegram's clients declaring text and media
/// only.
fn registry_with_plain_telegram() -> Registry {
    registry_declaring(&[("telegram", &[ContentKind::Text, ContentKind::Media])])
}

/// The harness registry, with these providers' clients declaring these
/// kinds (the others declare nothing: the default).
fn registry_declaring(declared: &[(&str, &[ContentKind])]) -> Registry {
    let mut providers: Vec<Provider> = registry().providers().cloned().collect();
    for p in &mut providers {
        if let Some((_, kinds)) = declared.iter().find(|(id, _)| *id == p.id) {
            p.capabilities = Capabilities {
                content: kinds.to_vec(),
                media_formats: Vec::new(),
            };
        }
    }
    Registry::from_providers(providers).expect("a valid registry")
}

/// The next message (within 20 s), acked.
async fn next(rx: &mut Receiver) -> Delivered {
    let d = tokio::time::timeout(Duration::from_secs(20), rx.next())
        .await
        .expect("a message within 20 s")
        .expect("the session is open");
    if d.delivery_tag != 0 {
        rx.ack(&[d.delivery_tag]).await.expect("ack");
    }
    d
}

fn receipt(env: &Envelope) -> Option<&Receipt> {
    match &env.content {
        Some(Content::Receipt(r)) => Some(r),
        _ => None,
    }
}

/// The group change a member was told of.
fn group_change(env: &Envelope) -> &GroupChange {
    match &env.content {
        Some(Content::GroupChange(c)) => c,
        other => panic!("expected a group change, got {other:?}"),
    }
}

fn text(env: &Envelope) -> &str {
    match &env.content {
        Some(Content::Text(t)) => &t.body,
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_and_reactions_round_trip_between_two_providers() {
    let stack = Stack::start(registry(), Default::default()).await;
    let d = stack.delivery().await;
    opt_in(&stack.ingest_url, BOB, &["signal"]).await;
    opt_in(&stack.ingest_url, ALICE, &["home"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let home = sender(&stack.ingest_url, "home").await;
    let mut bob = receiver(&d.url, BOB, "phone").await;
    let mut alice = receiver(&d.url, ALICE, "phone").await;

    let a1 = send_ok(&signal, text_envelope("a1", ALICE, BOB, "hi bob")).await;
    let got = next(&mut bob).await;
    assert_eq!(got.envelope.message_id, a1.message_id);
    bob.mark_read(&[got.delivery_tag]).await.unwrap();
    // A second device reading the same message sends no second receipt.
    let mut bob_laptop = receiver(&d.url, BOB, "laptop").await;
    let again = next(&mut bob_laptop).await;
    bob_laptop.mark_read(&[again.delivery_tag]).await.unwrap();

    let mut statuses = Vec::new();
    while statuses.len() < 2 {
        let r = next(&mut alice).await;
        let r = receipt(&r.envelope).expect("a receipt").clone();
        assert_eq!(r.message_id, a1.message_id);
        assert_eq!(r.client_message_id, "a1");
        statuses.push(r.status());
    }
    assert_eq!(statuses, [ReceiptStatus::Delivered, ReceiptStatus::Read]);

    // Bob reacts, then takes the reaction back.
    let r1 = send_ok(
        &home,
        reaction_envelope("r1", BOB, ALICE, &a1.message_id, "👍"),
    )
    .await;
    let r2 = send_ok(
        &home,
        reaction_envelope("r2", BOB, ALICE, &a1.message_id, ""),
    )
    .await;
    for (id, emoji) in [(&r1.message_id, "👍"), (&r2.message_id, "")] {
        let got = next(&mut alice).await;
        if emoji == "👍" {
            alice.mark_read(&[got.delivery_tag]).await.unwrap();
        }
        let got = got.envelope;
        assert_eq!(&got.message_id, id);
        match got.content {
            Some(Content::Reaction(r)) => {
                assert_eq!(r.target_message_id, a1.message_id);
                assert_eq!(r.emoji, emoji);
            }
            other => panic!("expected a reaction, got {other:?}"),
        }
    }
    // Alice read the reaction: bob gets delivered + read for it, and
    // delivered for the un-reaction.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let r = next(&mut bob).await;
        let r = receipt(&r.envelope).expect("a receipt").clone();
        seen.push((r.client_message_id.clone(), r.status()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("r1".to_owned(), ReceiptStatus::Delivered),
            ("r1".to_owned(), ReceiptStatus::Read),
            ("r2".to_owned(), ReceiptStatus::Delivered)
        ]
    );

    // A tag that names no message of bob's is refused, typed.
    bob.mark_read(&[u64::MAX - 1]).await.unwrap();
    bob.mark_read(&[]).await.unwrap();
    send_ok(&signal, text_envelope("a2", ALICE, BOB, "still there?")).await;
    assert_eq!(next(&mut bob).await.envelope.client_message_id, "a2");
    // Refusals are pushed in order with deliveries; read on a little.
    nothing_within(&mut bob, 1000).await;
    let codes: Vec<_> = bob.take_rejections().iter().map(|r| r.code()).collect();
    assert_eq!(
        codes,
        [RejectCode::UnknownMessage, RejectCode::MissingField]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_without_rich_content_gets_visible_fallbacks() {
    let stack = Stack::start(registry_with_plain_telegram(), Default::default()).await;
    let d = stack.delivery().await;
    opt_in(&stack.ingest_url, TOM, &["signal"]).await;
    opt_in(&stack.ingest_url, ALICE, &["telegram"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let telegram = sender(&stack.ingest_url, "telegram").await;
    let mut tom = receiver(&d.url, TOM, "phone").await;
    let mut alice = receiver(&d.url, ALICE, "phone").await;

    let a1 = send_ok(&signal, text_envelope("a1", ALICE, TOM, "hello")).await;
    let target = a1.message_id.clone();
    send_ok(&signal, reaction_envelope("a2", ALICE, TOM, &target, "🎉")).await;
    let mut edit = text_envelope("a3", ALICE, TOM, "");
    edit.content = Some(Content::Edit(Edit {
        target_message_id: target.clone(),
        text: Some(Text {
            body: "hello!".into(),
        }),
        ciphertext: None,
    }));
    send_ok(&signal, edit).await;
    let mut delete = text_envelope("a4", ALICE, TOM, "");
    delete.content = Some(Content::Delete(Delete {
        target_message_id: target.clone(),
    }));
    send_ok(&signal, delete).await;
    let mut reply = text_envelope("a5", ALICE, TOM, "re");
    reply.in_reply_to = target.clone();
    send_ok(&signal, reply).await;
    let mut call = text_envelope("a6", ALICE, TOM, "");
    call.encryption = interop_proto::v1::Encryption::E2ee as i32;
    call.content = Some(Content::Call(CallAttempt { video: false }));
    let call = send_ok(&signal, call).await;

    let mut bodies = Vec::new();
    for _ in 0..6 {
        let got = next(&mut tom).await.envelope;
        bodies.push(text(&got).to_owned());
        if !["a1", "a5", "a6"].contains(&got.client_message_id.as_str()) {
            assert_eq!(got.in_reply_to, target, "{}", got.client_message_id);
        }
    }
    assert_eq!(bodies[0], "hello");
    assert_eq!(bodies[1], "🎉 reacted to your message");
    assert_eq!(bodies[2], "edited: hello!");
    assert_eq!(bodies[3], "deleted a message");
    assert_eq!(bodies[4], "↩ re");
    assert!(bodies[5].contains("Calls don't work"), "{}", bodies[5]);

    // The caller gets a typed answer.
    let mut call_answer = None;
    while call_answer.is_none() {
        let got = next(&mut alice).await.envelope;
        if let Some(r) = receipt(&got).filter(|r| r.message_id == call.message_id) {
            call_answer = Some(r.clone());
        }
    }
    let answer = call_answer.unwrap();
    assert_eq!(answer.status(), ReceiptStatus::Failed);
    assert_eq!(answer.code(), RejectCode::CallsNotSupported);

    // READ receipts are not shown to an app that does not declare them.
    let t1 = send_ok(&telegram, text_envelope("t1", TOM, ALICE, "hi alice")).await;
    let got = loop {
        let got = next(&mut alice).await;
        if got.envelope.message_id == t1.message_id {
            break got;
        }
    };
    alice.mark_read(&[got.delivery_tag]).await.unwrap();
    // The read receipt is stored before the next message.
    until_stored(&stack.nats.url(), TOM, "the read receipt stored", |s| {
        s.iter().any(|e| {
            receipt(e)
                .is_some_and(|r| r.message_id == t1.message_id && r.status() == ReceiptStatus::Read)
        })
    })
    .await;
    send_ok(&signal, text_envelope("a7", ALICE, TOM, "after")).await;
    let mut tom_saw = Vec::new();
    loop {
        let got = next(&mut tom).await.envelope;
        match receipt(&got) {
            Some(r) => tom_saw.push(r.status()),
            None => {
                assert_eq!(text(&got), "after");
                break;
            }
        }
    }
    assert!(tom_saw.contains(&ReceiptStatus::Delivered));
    assert!(!tom_saw.contains(&ReceiptStatus::Read), "{tom_saw:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_open_sessions_only_and_is_never_stored() {
    let stack = Stack::start(registry(), Default::default()).await;
    let d = stack.delivery().await;
    opt_in(&stack.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    // Only a sender bob accepted may show typing (typing skips routing, so
    // ingest applies the same admission).
    sender(&stack.ingest_url, "home")
        .await
        .respond_to_request(BOB, ALICE, interop_proto::v1::RequestAction::Accept)
        .await
        .unwrap();
    let typing = |id: &str, from: &str| {
        let mut e = text_envelope(id, from, BOB, "");
        e.content = Some(Content::Typing(Typing { active: true }));
        e
    };
    // Nobody is listening: accepted, and dropped.
    send_ok(&signal, typing("t0", ALICE)).await;
    let mut bob = receiver(&d.url, BOB, "phone").await;
    until_session_listens(&stack.nats.url(), BOB).await;
    // A stranger's typing is answered the same and dropped.
    send_ok(&signal, typing("s1", "signal:stranger")).await;
    send_ok(&signal, typing("t1", ALICE)).await;
    send_ok(&signal, text_envelope("m1", ALICE, BOB, "hi")).await;
    let first = next(&mut bob).await;
    assert_eq!(first.delivery_tag, 0, "typing has no tag");
    assert_eq!(first.envelope.client_message_id, "t1");
    assert!(matches!(first.envelope.content, Some(Content::Typing(_))));
    assert_eq!(text(&next(&mut bob).await.envelope), "hi");
    // A new device reads the store: only the text is there.
    let mut laptop = receiver(&d.url, BOB, "laptop").await;
    assert_eq!(text(&next(&mut laptop).await.envelope), "hi");
    nothing_within(&mut laptop, 1000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_in_a_group_reaches_members_who_accepted_the_sender_and_is_never_stored() {
    let stack = Stack::start(registry(), Default::default()).await;
    let d = stack.delivery().await;
    let signal = sender(&stack.ingest_url, "signal").await;
    // Three members besides alice: two accepted her, one did not answer.
    let (friend, other_friend, stranger) = (member(3), member(1), member(5));
    for m in [&friend, &other_friend, &stranger] {
        opt_in(&stack.ingest_url, m, &["signal"]).await;
    }
    for m in [&friend, &other_friend] {
        sender(&stack.ingest_url, m.split(':').next().unwrap_or_default())
            .await
            .respond_to_request(m, ALICE, interop_proto::v1::RequestAction::Accept)
            .await
            .unwrap();
    }
    let members = vec![friend.clone(), other_friend.clone(), stranger.clone()];
    let group = match signal.create_group(ALICE, &members).await.unwrap() {
        GroupOutcome::Updated(g) => g,
        GroupOutcome::Rejected(r) => panic!("{r:?}"),
    };
    let mut sessions = Vec::new();
    for m in &members {
        let mut rx = receiver(&d.url, m, "phone").await;
        // Each was told of the group first (as text: the harness's
        // providers do not declare group changes).
        assert!(text(&next(&mut rx).await.envelope).starts_with("[group] created a group with"));
        sessions.push(rx);
    }
    for m in &members {
        until_session_listens(&stack.nats.url(), m).await;
    }
    let mut typing = group_text_envelope("gt1", ALICE, &group.group_id, "");
    typing.content = Some(Content::Typing(Typing { active: true }));
    let accepted = send_ok(&signal, typing).await;
    for (m, rx) in members.iter().zip(&mut sessions).take(2) {
        let got = next(rx).await;
        assert_eq!(got.delivery_tag, 0, "typing has no tag");
        assert_eq!(got.envelope.to, *m);
        assert_eq!(got.envelope.group_id, group.group_id);
        assert_eq!(got.envelope.message_id, accepted.message_id);
        assert!(matches!(got.envelope.content, Some(Content::Typing(_))));
    }
    // Not to the member who never accepted alice.
    nothing_within(&mut sessions[2], 1000).await;
    // Never stored: a new device of a friend finds only the group's notice.
    let mut laptop = receiver(&d.url, &friend, "laptop").await;
    assert!(text(&next(&mut laptop).await.envelope).starts_with("[group] created"));
    nothing_within(&mut laptop, 1000).await;
    // A non-member's typing to the group is refused like its messages.
    let mut outsider = group_text_envelope("gt2", "signal:mallory", &group.group_id, "");
    outsider.content = Some(Content::Typing(Typing { active: true }));
    match signal.send(outsider).await.unwrap() {
        SendOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::GroupNotFound),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_past_retention_yields_expired_at_the_sender() {
    let streams = interop_bus::StreamSettings {
        inbox_max_age: Duration::from_secs(3),
        ..Default::default()
    };
    let stack = Stack::start(registry(), streams).await;
    let d = stack.delivery().await;
    opt_in(&stack.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let mut alice = receiver(&d.url, ALICE, "phone").await;
    // Delivered in time: no EXPIRED for this one.
    let mut bob = receiver(&d.url, BOB, "phone").await;
    let m1 = send_ok(&signal, text_envelope("m1", ALICE, BOB, "in time")).await;
    assert_eq!(next(&mut bob).await.envelope.message_id, m1.message_id);
    bob.close().await;
    // Bob is offline while this one ages out.
    let m2 = send_ok(&signal, text_envelope("m2", ALICE, BOB, "too late")).await;
    let mut receipts = Vec::new();
    while !receipts
        .iter()
        .any(|(id, s)| *id == m2.message_id && *s == ReceiptStatus::Expired)
    {
        let got = next(&mut alice).await.envelope;
        let r = receipt(&got).expect("a receipt");
        receipts.push((r.message_id.clone(), r.status()));
    }
    assert_eq!(
        receipts,
        [
            (m1.message_id.clone(), ReceiptStatus::Delivered),
            (m2.message_id.clone(), ReceiptStatus::Expired)
        ]
    );
    // Bob comes back: the expired message is not delivered any more.
    let mut bob = receiver(&d.url, BOB, "phone").await;
    nothing_within(&mut bob, 2000).await;
    // And the sender got exactly one EXPIRED.
    nothing_within(&mut alice, 3000).await;
}

fn member(i: usize) -> String {
    match i % 3 {
        0 => format!("home:+49151{:08}", 10_000_000 + i),
        1 => format!("signal:member{i}"),
        _ => format!("telegram:member{i}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_fifty_across_three_providers_gets_one_copy_each_except_who_blocked_the_sender()
{
    let stack = Stack::start(registry(), Default::default()).await;
    let d = stack.delivery().await;
    let signal = sender(&stack.ingest_url, "signal").await;
    // 49 members besides alice, from home, signal and telegram, all opted
    // in and allowing signal; one of them blocked alice.
    let members: Vec<String> = (1..50).map(member).collect();
    let excluded = members[10].clone();
    for m in &members {
        opt_in(&stack.ingest_url, m, &["signal"]).await;
    }
    let blocked = sender(
        &stack.ingest_url,
        excluded.split(':').next().unwrap_or_default(),
    )
    .await
    .respond_to_request(&excluded, ALICE, interop_proto::v1::RequestAction::Block)
    .await
    .unwrap();
    assert!(
        matches!(blocked, interop_client::RequestOutcome::Responded(_)),
        "{blocked:?}"
    );
    let group = match signal.create_group(ALICE, &members).await.unwrap() {
        GroupOutcome::Updated(g) => g,
        GroupOutcome::Rejected(r) => panic!("{r:?}"),
    };
    assert_eq!(group.members.len(), 50);
    assert_eq!(group.admins, [ALICE]);

    let sent = send_ok(
        &signal,
        group_text_envelope("g1", ALICE, &group.group_id, "hello group"),
    )
    .await;
    let mut sessions = Vec::new();
    for m in &members {
        sessions.push((m.clone(), receiver(&d.url, m, "phone").await));
    }
    for (m, rx) in &mut sessions {
        if *m == excluded {
            continue;
        }
        // Told of the group first (not who blocked alice), as text.
        let told = next(rx).await.envelope;
        assert!(text(&told).starts_with("[group] created a group with you, "));
        let got = next(rx).await.envelope;
        assert_eq!(got.message_id, sent.message_id);
        assert_eq!(got.group_id, group.group_id);
        assert_eq!(got.to, *m);
        assert_eq!(text(&got), "hello group");
    }
    for (m, rx) in &mut sessions {
        nothing_within(rx, 300).await;
        assert_eq!(rx.duplicates(), 0, "{m}");
    }
    // Each member's device acked: alice gets one DELIVERED per member (for
    // the message; the gateway's notices have no receipts).
    let mut alice = receiver(&d.url, ALICE, "phone").await;
    let mut from = std::collections::BTreeSet::new();
    while from.len() < 48 {
        let got = next(&mut alice).await.envelope;
        let r = receipt(&got).expect("a receipt");
        assert_eq!(r.status(), ReceiptStatus::Delivered);
        assert!(
            from.insert(got.from.clone()),
            "two receipts from {}",
            got.from
        );
    }
    assert!(!from.contains(&excluded));
    nothing_within(&mut alice, 500).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_membership_is_changed_by_admins_within_the_size_limit() {
    use interop_proto::limits::MAX_GROUP_MEMBERS;
    let stack = Stack::start(registry(), Default::default()).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let telegram = sender(&stack.ingest_url, "telegram").await;
    let group = match signal.create_group(ALICE, &[TOM.to_owned()]).await.unwrap() {
        GroupOutcome::Updated(g) => g,
        other => panic!("{other:?}"),
    };
    let change = |actor: &str, add: Vec<String>, remove: Vec<String>| ChangeGroup {
        group_id: group.group_id.clone(),
        actor: actor.to_owned(),
        add,
        remove,
        add_admins: Vec::new(),
        name: None,
    };
    let code = |o: GroupOutcome| match o {
        GroupOutcome::Rejected(r) => r.code(),
        GroupOutcome::Updated(_) => RejectCode::Unspecified,
    };
    // Not an admin.
    let o = telegram
        .change_group(change(TOM, vec!["telegram:x".into()], vec![]))
        .await
        .unwrap();
    assert_eq!(code(o), RejectCode::NotGroupAdmin);
    // Up to the limit: alice, tom and 254 more.
    let fill: Vec<String> = (0..MAX_GROUP_MEMBERS - 2)
        .map(|i| format!("signal:fill{i}"))
        .collect();
    match signal
        .change_group(change(ALICE, fill, vec![]))
        .await
        .unwrap()
    {
        GroupOutcome::Updated(g) => assert_eq!(g.members.len(), MAX_GROUP_MEMBERS),
        other => panic!("{other:?}"),
    }
    // One over.
    let o = signal
        .change_group(change(ALICE, vec!["signal:one-more".into()], vec![]))
        .await
        .unwrap();
    assert_eq!(code(o), RejectCode::GroupFull);
    // Swap one for another: still at the limit, allowed.
    let o = signal
        .change_group(change(
            ALICE,
            vec!["signal:one-more".into()],
            vec!["signal:fill0".into()],
        ))
        .await
        .unwrap();
    assert_eq!(code(o), RejectCode::Unspecified);
    // Tom is removed; he can no longer send to the group.
    signal
        .change_group(change(ALICE, vec![], vec![TOM.into()]))
        .await
        .unwrap();
    let o = telegram
        .send(group_text_envelope("x1", TOM, &group.group_id, "hi"))
        .await
        .unwrap();
    assert!(
        matches!(o, SendOutcome::Rejected(ref r) if r.code() == RejectCode::GroupNotFound),
        "{o:?}"
    );
    // An unknown group answers the same.
    let o = signal
        .send(group_text_envelope(
            "x2",
            ALICE,
            &format!("g-{}", "0".repeat(32)),
            "hi",
        ))
        .await
        .unwrap();
    assert!(
        matches!(o, SendOutcome::Rejected(ref r) if r.code() == RejectCode::GroupNotFound),
        "{o:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_told_when_a_group_is_made_renamed_or_changed() {
    // home's apps declare every kind, group changes included; telegram's
    // text and media only; signal's nothing (the default).
    let registry = registry_declaring(&[
        ("home", &ContentKind::ALL),
        ("telegram", &[ContentKind::Text, ContentKind::Media]),
    ]);
    let stack = Stack::start(registry, Default::default()).await;
    let d = stack.delivery().await;
    // Carol is never in the group.
    let carol = "home:+4915199999999";
    for m in [BOB, TOM, carol] {
        opt_in(&stack.ingest_url, m, &["signal"]).await;
    }
    let mut carol_rx = receiver(&d.url, carol, "phone").await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let home = sender(&stack.ingest_url, "home").await;
    let mut alice = receiver(&d.url, ALICE, "phone").await;
    let mut bob = receiver(&d.url, BOB, "phone").await;
    let mut tom = receiver(&d.url, TOM, "phone").await;

    let group = match signal
        .create_named_group(ALICE, &[BOB.to_owned(), TOM.to_owned()], "Ski trip")
        .await
        .unwrap()
    {
        GroupOutcome::Updated(g) => g,
        other => panic!("{other:?}"),
    };
    assert_eq!(group.name, "Ski trip");
    // Bob's app shows group changes: he gets the notice as is, from alice,
    // as a request (he has not accepted her).
    let told = next(&mut bob).await;
    assert_eq!(told.inbox, Inbox::Requests);
    assert_eq!(told.envelope.from, ALICE);
    assert_eq!(told.envelope.to, BOB);
    assert_eq!(told.envelope.group_id, group.group_id);
    let mut members = vec![ALICE.to_owned(), BOB.to_owned(), TOM.to_owned()];
    members.sort();
    assert_eq!(
        *group_change(&told.envelope),
        GroupChange {
            created: true,
            added: vec![BOB.to_owned(), TOM.to_owned()],
            new_admins: vec![ALICE.to_owned()],
            renamed: true,
            name: "Ski trip".into(),
            members: members.clone(),
            ..Default::default()
        }
    );
    // Tom's app declares text and media only: he reads what happened.
    assert_eq!(
        text(&next(&mut tom).await.envelope),
        format!("[group] created the group “Ski trip” with you, {BOB}")
    );

    // A rename that also removes tom: both are told, tom that he is out.
    // Naming carol, who is not a member, tells her nothing (nor anyone
    // about her).
    let change = ChangeGroup {
        group_id: group.group_id.clone(),
        actor: ALICE.into(),
        remove: vec![TOM.into(), carol.into()],
        name: Some("Family".into()),
        ..Default::default()
    };
    match signal.change_group(change).await.unwrap() {
        GroupOutcome::Updated(g) => {
            assert_eq!(g.name, "Family");
            assert_eq!(g.members, [BOB, ALICE], "sorted");
        }
        other => panic!("{other:?}"),
    }
    let c = next(&mut bob).await.envelope;
    let c = group_change(&c);
    assert!(c.renamed && !c.created);
    assert_eq!(
        (c.name.as_str(), c.removed.as_slice()),
        ("Family", [TOM.to_owned()].as_slice())
    );
    assert_eq!(c.members, [BOB, ALICE]);
    assert_eq!(
        text(&next(&mut tom).await.envelope),
        "[group] removed you; renamed the group to “Family”"
    );
    // Bob's app can read the group as it is now; tom, no longer a member,
    // cannot (the same answer as for no group).
    match home.get_group(&group.group_id, BOB).await.unwrap() {
        GroupOutcome::Updated(g) => {
            assert_eq!(
                (g.name.as_str(), g.admins.as_slice()),
                ("Family", [ALICE.to_owned()].as_slice())
            );
            assert_eq!(g.members, [BOB, ALICE]);
        }
        other => panic!("{other:?}"),
    }
    let telegram = sender(&stack.ingest_url, "telegram").await;
    match telegram.get_group(&group.group_id, TOM).await.unwrap() {
        GroupOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::GroupNotFound),
        other => panic!("{other:?}"),
    }
    // Only as one's own users.
    match telegram.get_group(&group.group_id, BOB).await.unwrap() {
        GroupOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::SenderNotOwned),
        other => panic!("{other:?}"),
    }

    // Not by a member who is not an admin; and a change that asks nothing
    // is answered without telling anyone.
    let by_bob = ChangeGroup {
        group_id: group.group_id.clone(),
        actor: BOB.into(),
        name: Some("Bob's".into()),
        ..Default::default()
    };
    match home.change_group(by_bob).await.unwrap() {
        GroupOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::NotGroupAdmin),
        other => panic!("{other:?}"),
    }
    let nothing = ChangeGroup {
        group_id: group.group_id.clone(),
        actor: ALICE.into(),
        ..Default::default()
    };
    match signal.change_group(nothing).await.unwrap() {
        GroupOutcome::Updated(g) => assert_eq!(g.name, "Family"),
        other => panic!("{other:?}"),
    }
    // Nobody hears more; alice gets no receipts for the gateway's notices.
    nothing_within(&mut bob, 1000).await;
    nothing_within(&mut tom, 300).await;
    nothing_within(&mut alice, 300).await;
    nothing_within(&mut carol_rx, 300).await;

    // Emptied: the group is gone, and the last member is told.
    let last = ChangeGroup {
        group_id: group.group_id.clone(),
        actor: ALICE.into(),
        remove: vec![ALICE.into(), BOB.into()],
        name: Some("Ignored".into()),
        ..Default::default()
    };
    match signal.change_group(last).await.unwrap() {
        GroupOutcome::Updated(g) => assert!(g.members.is_empty() && g.name.is_empty()),
        other => panic!("{other:?}"),
    }
    let c = next(&mut bob).await.envelope;
    let c = group_change(&c);
    assert_eq!(c.removed, [BOB, ALICE]);
    assert!(c.members.is_empty() && !c.renamed && c.name.is_empty());
    match home.get_group(&group.group_id, BOB).await.unwrap() {
        GroupOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::GroupNotFound),
        other => panic!("{other:?}"),
    }

    // A client cannot write a group change itself.
    let mut forged = group_text_envelope("forged", ALICE, &group.group_id, "");
    forged.content = Some(Content::GroupChange(GroupChange::default()));
    match signal.send(forged).await.unwrap() {
        SendOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::UnsupportedContent),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_paused_at_its_unacked_limit_resumes_without_gap_or_duplicate() {
    use interop_proto::limits::MAX_UNACKED;
    let stack = Stack::start(registry(), Default::default()).await;
    let d = stack.delivery().await;
    opt_in(&stack.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    const N: usize = 700;
    let mut ids = Vec::new();
    for i in 0..N {
        let p = signal
            .submit(text_envelope(&format!("p{i}"), ALICE, BOB, "x"))
            .await
            .unwrap();
        ids.push(p);
    }
    let mut want = Vec::new();
    for p in ids {
        match p.outcome().await.unwrap() {
            SendOutcome::Accepted(a) => want.push(a.message_id),
            SendOutcome::Rejected(r) => panic!("{r:?}"),
        }
    }
    let mut bob = receiver(&d.url, BOB, "phone").await;
    let mut got = Vec::new();
    let mut tags = Vec::new();
    // Take the limit without acking; the session pauses.
    while got.len() < MAX_UNACKED {
        let m = tokio::time::timeout(Duration::from_secs(20), bob.next())
            .await
            .unwrap()
            .unwrap();
        tags.push(m.delivery_tag);
        got.push(m.envelope.message_id);
    }
    nothing_within(&mut bob, 500).await;
    // Longer than the ordered consumer's missed-heartbeat window.
    tokio::time::sleep(Duration::from_secs(12)).await;
    bob.ack(&tags).await.unwrap();
    while got.len() < N {
        let m = next(&mut bob).await;
        got.push(m.envelope.message_id);
    }
    assert_eq!(got, want);
    assert_eq!(bob.duplicates(), 0);
    nothing_within(&mut bob, 500).await;
}

async fn inbox_consumers(stack: &Stack) -> usize {
    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await.unwrap());
    let mut inbox = js
        .get_stream(interop_bus::subjects::STREAM_INBOX)
        .await
        .unwrap();
    inbox.info().await.unwrap().state.consumer_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_hold_no_store_consumer_and_wake_on_a_new_message() {
    let stack = Stack::start(registry(), Default::default()).await;
    let d = stack.delivery().await;
    opt_in(&stack.ingest_url, BOB, &["signal"]).await;
    let signal = sender(&stack.ingest_url, "signal").await;
    let mut sessions = Vec::new();
    for i in 0..20 {
        sessions.push(receiver(&d.url, BOB, &format!("device{i}")).await);
    }
    // Only the expiry sweeper's durable consumer: idle sessions open none
    // (or close the one they caught up with).
    poll("idle sessions to hold no store consumer", WAIT, || async {
        (inbox_consumers(&stack).await == 1).then_some(())
    })
    .await;
    send_ok(&signal, text_envelope("m1", ALICE, BOB, "one")).await;
    for rx in &mut sessions {
        assert_eq!(text(&next(rx).await.envelope), "one");
    }
    // Once no session holds a consumer (a caught-up one is closed after a
    // while), the next message arrives through a wake-up.
    poll(
        "caught-up sessions to close their consumers",
        WAIT,
        || async { (inbox_consumers(&stack).await == 1).then_some(()) },
    )
    .await;
    send_ok(&signal, text_envelope("m2", ALICE, BOB, "two")).await;
    for rx in &mut sessions {
        assert_eq!(text(&next(rx).await.envelope), "two");
        assert_eq!(rx.duplicates(), 0);
    }
}
