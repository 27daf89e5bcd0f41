//! The store's republish (docs/adr/0016), against the real nats-server the
//! gateway runs on: what delivery sessions rely on.

use std::time::Duration;

use async_nats::jetstream;
use futures_util::StreamExt;

use interop_bus::subjects::{delivery_queued, session_events, session_stored, STREAM_INBOX};
use interop_bus::{ensure_streams, BusError, StreamSettings};
use interop_test_support::NatsServer;

fn header(m: &async_nats::Message, name: &str) -> u64 {
    m.headers
        .as_ref()
        .and_then(|h| h.get(name))
        .unwrap_or_else(|| panic!("{name} missing"))
        .as_str()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_stored_message_is_republished_with_its_sequence_and_the_previous_one_of_its_subject() {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    ensure_streams(&js, &StreamSettings::default())
        .await
        .unwrap();
    let (a, b) = (
        interop_bus::recipient_path("home:+491"),
        interop_bus::recipient_path("home:+492"),
    );
    let mut events = client.subscribe(session_events(&a)).await.unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    );
    for (key, body) in [(&a, "1"), (&b, "2"), (&a, "3"), (&a, "4")] {
        js.publish_with_headers(delivery_queued(key), headers.clone(), body.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let m = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(m.subject.as_str(), session_stored(&a));
        // The original headers come along (the trace parent).
        assert!(m.headers.as_ref().unwrap().get("traceparent").is_some());
        got.push((
            std::str::from_utf8(&m.payload).unwrap().to_owned(),
            header(&m, "Nats-Sequence"),
            header(&m, "Nats-Last-Sequence"),
        ));
    }
    // The previous sequence is that of the same subject: 2 went to b.
    assert_eq!(
        got,
        [
            ("1".to_owned(), 1, 0),
            ("3".to_owned(), 3, 1),
            ("4".to_owned(), 4, 3)
        ]
    );
    // Nothing of b's on a's session subject.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), events.next())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_store_created_without_republish_is_refused_with_what_to_do() {
    // NATS 2.9 refuses to add a republish to an existing stream: a store made
    // by an older version is named, with the remedy, instead of a bare
    // JetStream error.
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let settings = StreamSettings::default();
    let mut old = interop_bus::streams::stream_configs(&settings)
        .into_iter()
        .find(|c| c.name == STREAM_INBOX)
        .unwrap();
    old.republish = None;
    js.create_stream(old).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(30), ensure_streams(&js, &settings))
        .await
        .expect("an answer, not a retry loop")
        .unwrap_err();
    assert!(
        matches!(e, BusError::StreamUpgrade { ref name, .. } if name == STREAM_INBOX),
        "{e}"
    );
    assert!(
        e.to_string().contains("nats stream rm INTEROP_INBOX"),
        "{e}"
    );
}
