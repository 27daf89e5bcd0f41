//! Helpers the suite's modules share: connecting as a provider, opting a
//! user in, waiting for deliveries and reading send outcomes. A user's
//! provider is the part of their address before `:` (`home:+49...`), and
//! each provider of `interop_e2e::registry` has its token here.

use std::future::Future;
use std::time::Duration;

use prost::Message as _;

use interop_client::{ConsentOutcome, Delivered, Receiver, SendOutcome, Sender};
use interop_e2e::{HOME_TOKEN, SIGNAL_TOKEN, TELEGRAM_TOKEN};
use interop_proto::v1::{Accepted, Envelope, PipelineMessage, Rejected};

/// How long a helper waits for a delivery unless it says otherwise.
pub const WAIT: Duration = Duration::from_secs(15);

/// `f`, or a panic naming `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// The token of a provider of `interop_e2e::registry`.
pub fn token(provider: &str) -> &'static str {
    match provider {
        "home" => HOME_TOKEN,
        "signal" => SIGNAL_TOKEN,
        _ => TELEGRAM_TOKEN,
    }
}

/// The provider of `user`: the part of the address before `:`.
pub fn provider_of(user: &str) -> &str {
    user.split(':').next().unwrap_or_default()
}

/// A connection to ingest (`ingest_url`) as `provider`.
pub async fn sender(ingest_url: &str, provider: &str) -> Sender {
    Sender::connect(ingest_url, provider, token(provider))
        .await
        .expect("connecting to ingest")
}

/// A delivery session (`delivery_url`) of `user`'s `device`, opened by
/// the user's provider.
pub async fn receiver(delivery_url: &str, user: &str, device: &str) -> Receiver {
    let provider = provider_of(user);
    Receiver::connect(delivery_url, provider, token(provider), user, device)
        .await
        .expect("opening a session")
}

/// Opts `user` in through their provider, allowing `allow`.
pub async fn opt_in(ingest_url: &str, user: &str, allow: &[&str]) {
    let out = sender(ingest_url, provider_of(user))
        .await
        .set_consent(user, true, allow)
        .await
        .expect("consent");
    assert!(
        matches!(out, ConsentOutcome::Updated(ref u) if u.opted_in),
        "{out:?}"
    );
}

/// The next delivery (within [`WAIT`]), acknowledged.
pub async fn next_acked(rx: &mut Receiver) -> Delivered {
    next_acked_within(rx, WAIT).await
}

/// The next delivery (within `wait`), acknowledged.
pub async fn next_acked_within(rx: &mut Receiver, wait: Duration) -> Delivered {
    let d = tokio::time::timeout(wait, rx.next())
        .await
        .unwrap_or_else(|_| panic!("timed out: a delivery within {wait:?}"))
        .expect("the session is open");
    rx.ack(&[d.delivery_tag]).await.expect("ack");
    d
}

/// Asserts that nothing is delivered for `ms` milliseconds.
pub async fn nothing_within(rx: &mut Receiver, ms: u64) {
    let extra = tokio::time::timeout(Duration::from_millis(ms), rx.next()).await;
    assert!(extra.is_err(), "unexpected delivery: {extra:?}");
}

/// Receives (and acks) until a message `want` accepts arrived, within 20 s.
pub async fn receive_until(rx: &mut Receiver, want: impl Fn(&Envelope) -> bool) -> Envelope {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let d = tokio::time::timeout_at(deadline, rx.next())
            .await
            .expect("the expected message within 20 s")
            .expect("the session is open");
        rx.ack(&[d.delivery_tag]).await.expect("ack");
        if want(&d.envelope) {
            return d.envelope;
        }
    }
}

/// The acceptance, or a panic if the send was rejected.
pub fn accepted(out: SendOutcome) -> Accepted {
    match out {
        SendOutcome::Accepted(a) => a,
        SendOutcome::Rejected(r) => panic!("rejected: {r:?}"),
    }
}

/// The rejection, or a panic if the send was accepted.
pub fn rejected(out: SendOutcome) -> Rejected {
    match out {
        SendOutcome::Rejected(r) => r,
        SendOutcome::Accepted(a) => panic!("expected a rejection, got {a:?}"),
    }
}

/// Sends `env` and returns its acceptance (panics on a rejection).
pub async fn send_ok(s: &Sender, env: Envelope) -> Accepted {
    accepted(s.send(env).await.expect("an answer"))
}

/// Polls `check` every 50 ms until it gives `Some`, instead of sleeping
/// for a guess of how long something takes; panics naming `what` after
/// `wait`.
pub async fn poll<T, F, Fut>(what: &str, wait: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(t) = check().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {wait:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The messages stored for `user` (their store subject, in whichever store
/// stream holds it), in order.
pub async fn store_of(nats_url: &str, user: &str) -> Vec<Envelope> {
    let js = async_nats::jetstream::new(async_nats::connect(nats_url).await.expect("NATS"));
    let subject = interop_bus::subjects::delivery_queued(&interop_bus::recipient_path(user));
    let name = interop_bus::inbox::stream_holding(&js, &subject)
        .await
        .expect("the store stream holding the user");
    let mut stream = js.get_stream(name).await.expect("the store stream");
    let state = stream.info().await.expect("stream info").state.clone();
    let mut out = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            if m.subject.as_str() == subject {
                out.extend(
                    PipelineMessage::decode(m.payload)
                        .expect("a pipeline message")
                        .envelope,
                );
            }
        }
    }
    out
}

/// Waits (up to [`WAIT`]) until `user`'s store holds what `done` looks for.
pub async fn until_stored(
    nats_url: &str,
    user: &str,
    what: &str,
    done: impl Fn(&[Envelope]) -> bool,
) {
    poll(what, WAIT, || async {
        done(&store_of(nats_url, user).await).then_some(())
    })
    .await
}

/// Waits (up to [`WAIT`]) until a delivery session of `user` listens to its
/// events on core NATS (`interop.v1.delivery.session.<key>.*`), so that
/// what is published there from now on (typing) reaches it. Observed with a
/// request on a token sessions ignore: nobody listening answers "no
/// responders" at once; a session takes it and answers nothing.
pub async fn until_session_listens(nats_url: &str, user: &str) {
    let nats = async_nats::connect(nats_url).await.expect("NATS");
    let probe = format!(
        "{}.{}.probe",
        interop_bus::subjects::SESSION_PREFIX,
        interop_bus::recipient_path(user)
    );
    poll("a session listening", WAIT, || async {
        let asked = nats.request(probe.clone(), bytes::Bytes::new());
        // Silence (no answer within 200 ms) is a session listening.
        match tokio::time::timeout(Duration::from_millis(200), asked).await {
            Err(_) | Ok(Ok(_)) => Some(()),
            Ok(Err(_)) => None,
        }
    })
    .await
}

/// A fetch's bundles, checked as an app must check them (key transparency,
/// docs/adr/0029): each identity key is the one the directory committed
/// for the user, proved under the test gateway's VRF key. Panics on a
/// rejection or a failed check.
pub async fn verified_bundles(
    outcome: interop_client::keys::KeysOutcome<interop_proto::v1::Bundles>,
) -> interop_proto::v1::Bundles {
    let bundles = outcome.done().expect("bundles, not a rejection");
    let pinned = interop_e2e::kt_vrf_public_key().await;
    interop_client::keys::verify_bundles(&bundles, Some(&pinned))
        .unwrap_or_else(|e| panic!("bundles of {} do not verify: {e}", bundles.user));
    bundles
}

/// [`verified_bundles`] for a device list.
pub async fn verified_devices(
    outcome: interop_client::keys::KeysOutcome<interop_proto::v1::DeviceList>,
) -> interop_proto::v1::DeviceList {
    let list = outcome.done().expect("a device list, not a rejection");
    let pinned = interop_e2e::kt_vrf_public_key().await;
    interop_client::keys::verify_device_list(&list, Some(&pinned))
        .unwrap_or_else(|e| panic!("devices of {} do not verify: {e}", list.user));
    list
}
