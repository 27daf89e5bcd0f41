//! Issue 23, item 2: apps never see a duplicate. A provider's connections
//! to ingest and delivery are dropped (a chaos proxy cuts them) with sends
//! in flight; the same client objects reconnect. Every send is answered
//! exactly once (the client library re-sends the unanswered ones with
//! their original client message ids, and only those), the gateway turns a
//! re-send into the message it already stored, and the recipient's app gets
//! every message once (the de-duplication window survives the reconnect).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use interop_client::{text_envelope, ClientError, Receiver, SendOutcome, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN};
use interop_test_support::{ChaosProxy, Mode};

use crate::common::{accepted, nothing_within, opt_in, poll, store_of, within};

const BOB: &str = "home:+4915112345678";
const ALICE: &str = "signal:alice";
/// Sends in each phase (all from one sender: 15 stay within its burst of
/// 40, so none is rate-limited).
const EACH: usize = 5;

/// A chaos proxy in front of a gateway WebSocket endpoint
/// (`ws://host:port/v1/ws`), and the same endpoint's URL through it.
fn proxied(url: &str) -> (ChaosProxy, String) {
    let rest = url.strip_prefix("ws://").expect("a ws:// URL");
    let (addr, path) = rest.split_once('/').expect("a path");
    let proxy = ChaosProxy::start_to(addr.parse::<SocketAddr>().expect("host:port"));
    let through = format!("{}/{path}", proxy.url("ws"));
    (proxy, through)
}

/// What the app saw: each delivery counted by client message id, and the
/// server message id it came with.
#[derive(Default)]
struct App {
    seen: HashMap<String, (String, u32)>,
}

impl App {
    /// The next message the library hands out (within 15 s).
    async fn take(&mut self, rx: &mut Receiver) -> interop_client::Delivered {
        let d = within("a delivery", rx.next())
            .await
            .expect("the session is open");
        let e = &d.envelope;
        let entry = self
            .seen
            .entry(e.client_message_id.clone())
            .or_insert_with(|| (e.message_id.clone(), 0));
        entry.1 += 1;
        d
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_with_sends_in_flight_answer_every_send_once_and_show_no_duplicate() {
    let c = Cluster::start().await;
    opt_in(&c.gateway.ingest_url, BOB, &["signal"]).await;
    let (ingest_proxy, ingest_url) = proxied(&c.gateway.ingest_url);
    let (delivery_proxy, delivery_url) = proxied(&c.gateway.delivery_url);
    let alice = Sender::connect(&ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .expect("ingest through the proxy");
    let mut bob = Receiver::connect(&delivery_url, "home", HOME_TOKEN, BOB, "phone")
        .await
        .expect("delivery through the proxy");
    let mut app = App::default();
    let env = |phase: &str, i: usize| {
        text_envelope(&format!("{phase}-{i}"), ALICE, BOB, &format!("{phase} {i}"))
    };

    // A: answered before the cut; never re-sent.
    for i in 0..EACH {
        accepted(alice.send(env("a", i)).await.expect("an answer"));
    }
    for _ in 0..EACH {
        let d = app.take(&mut bob).await;
        bob.ack(&[d.delivery_tag]).await.expect("ack");
    }

    // B: stored by the gateway, its answers held back (3 s each way) and
    // lost in the cut. Bob's app gets the messages but does not ack them,
    // so the gateway delivers them again on his next session.
    ingest_proxy.set_mode(Mode::Delay(Duration::from_secs(3)));
    let mut in_flight = Vec::new();
    for i in 0..EACH {
        in_flight.push(alice.submit(env("b", i)).await.expect("written"));
    }
    for _ in 0..EACH {
        app.take(&mut bob).await;
    }
    // C: written while ingest is unreachable; it never sees them.
    ingest_proxy.set_mode(Mode::Blackhole);
    for i in 0..EACH {
        in_flight.push(alice.submit(env("c", i)).await.expect("written"));
    }
    assert_eq!(alice.unanswered(), 2 * EACH, "B and C are in flight");

    // The cut: both of the provider's connections drop.
    ingest_proxy.set_mode(Mode::Cut);
    delivery_proxy.set_mode(Mode::Cut);
    within("ingest's connection ends", alice.closed()).await;
    let ended = within("the session ends", bob.next()).await;
    assert!(
        matches!(
            ended,
            Err(ClientError::Closed(_) | ClientError::WebSocket(_))
        ),
        "{ended:?}"
    );
    assert_eq!(alice.unanswered(), 2 * EACH, "no answer came for B or C");
    ingest_proxy.set_mode(Mode::Pass);
    delivery_proxy.set_mode(Mode::Pass);

    // The same objects reconnect: B and C are re-sent, A is not.
    assert_eq!(
        within("ingest reconnects", alice.reconnect())
            .await
            .expect("reconnect"),
        2 * EACH
    );
    within("delivery reconnects", bob.reconnect())
        .await
        .expect("reconnect");
    assert_eq!(
        alice.resent(),
        (2 * EACH) as u64,
        "only unanswered sends are re-sent"
    );

    // Every send answered once: B as the message it already was.
    for (k, pending) in in_flight.into_iter().enumerate() {
        let (phase, i) = if k < EACH { ("b", k) } else { ("c", k - EACH) };
        let id = format!("{phase}-{i}");
        let answer = within("the answer after the reconnect", pending.answered())
            .await
            .expect("answered");
        let SendOutcome::Accepted(a) = answer else {
            panic!("{id}: {answer:?}")
        };
        assert_eq!(a.client_message_id, id);
        // B reached the gateway before the cut, C did not.
        assert_eq!(a.duplicate, phase == "b", "{id}: {a:?}");
        if phase == "b" {
            assert_eq!(
                a.message_id, app.seen[&id].0,
                "{id}: the re-send got another server message id than the first try"
            );
        }
    }
    assert_eq!(alice.unanswered(), 0);

    // Bob's app: C arrives; B's redeliveries are dropped by the library.
    while (0..EACH).any(|i| !app.seen.contains_key(&format!("c-{i}"))) {
        let d = app.take(&mut bob).await;
        bob.ack(&[d.delivery_tag]).await.expect("ack");
    }
    for (id, (_, n)) in &app.seen {
        assert_eq!(*n, 1, "the app saw {id} {n} times");
    }
    nothing_within(&mut bob, 1_000).await;
    assert!(
        bob.duplicates() >= EACH as u64,
        "B was never delivered again ({} duplicates): this test did not exercise the window",
        bob.duplicates()
    );
    assert_eq!(app.seen.len(), 3 * EACH, "{:?}", app.seen.keys());
    // Stored once each: the re-sends of B were the same messages.
    let stored = poll(
        "Bob's store holds all 15",
        Duration::from_secs(15),
        || async {
            let s = store_of(&c.nats.url(), BOB).await;
            (s.len() >= 3 * EACH).then_some(s)
        },
    )
    .await;
    assert_eq!(stored.len(), 3 * EACH, "a re-send was stored twice");
    c.gateway
        .stop()
        .await
        .into_iter()
        .for_each(|(n, r)| assert!(r.is_ok(), "{n}: {r:?}"));
}
