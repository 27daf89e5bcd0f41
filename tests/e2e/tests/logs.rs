//! Message content, tokens and full phone numbers never reach the logs (a
//! user erasure included), at
//! the default level or at debug (which includes everything the default
//! level writes), from our crates or the libraries under them.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interop_client::{text_envelope, Receiver, SendOutcome, Sender};
use interop_e2e::{Cluster, HOME_TOKEN, SIGNAL_TOKEN};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const MARKER: &str = "MARKER-7f3a9c-secret-words";
const PHONE: &str = "+4915199887766";
const WRONG_TOKEN: &str = "guessed-token-d41d8cd98f00b204";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_content_token_or_phone_number_in_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let options = interop_telemetry::Options {
        filter: "debug".into(),
        writer: Some(tracing_subscriber::fmt::writer::BoxMakeWriter::new(
            move || writer.clone(),
        )),
        ..interop_telemetry::Options::new("interop-e2e")
    };
    let _guard = interop_telemetry::init(options).unwrap();
    let c = Cluster::start().await;
    let bob = format!("home:{PHONE}");
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(&bob, true, &["signal"]).await.unwrap();
    let mut rx = Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, &bob, "p")
        .await
        .unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    for i in 0..3 {
        let out = alice
            .send(text_envelope(
                &format!("m{i}"),
                "signal:alice",
                &bob,
                MARKER,
            ))
            .await
            .unwrap();
        assert!(matches!(out, SendOutcome::Accepted(_)));
    }
    // Rejections log too: a bad recipient, an over-long text, a wrong token.
    let _ = alice
        .send(text_envelope(
            "x",
            "signal:alice",
            "home:+4915199887700",
            MARKER,
        ))
        .await
        .unwrap();
    let _ = alice
        .send(text_envelope(
            "y",
            "signal:alice",
            &bob,
            &MARKER.repeat(500),
        ))
        .await
        .unwrap();
    assert!(
        Sender::connect(&c.gateway.ingest_url, "signal", WRONG_TOKEN)
            .await
            .is_err()
    );
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(10), rx.next())
            .await
            .unwrap()
            .unwrap();
        rx.ack(&[d.delivery_tag]).await.unwrap();
    }
    rx.close().await;
    // Erasing the user logs only their redacted address.
    let admin =
        interop_client::admin::AdminClient::new(&c.gateway.admin_api_url, interop_e2e::ADMIN_TOKEN)
            .unwrap();
    admin
        .call(
            "POST",
            "/admin/v1/erasures",
            Some(&serde_json::json!({ "address": bob })),
        )
        .await
        .unwrap();
    let results = c.gateway.stop().await;
    assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    // The test is only meaningful if debug logging really happened.
    assert!(
        logs.contains("Provider connected to ingest"),
        "no debug logs captured:\n{logs}"
    );
    assert!(logs.contains("Rejected a send"), "{logs}");
    assert!(logs.contains("User erased."), "{logs}");
    for secret in [
        MARKER,
        SIGNAL_TOKEN,
        HOME_TOKEN,
        WRONG_TOKEN,
        &PHONE[1..],
        "4915199887700",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} appears in the logs:\n{logs}"
        );
    }
}
