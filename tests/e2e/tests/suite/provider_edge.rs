//! The provider edge under pressure: rate limits shared by several ingest
//! replicas, and backpressure when JetStream is gone.

use std::sync::Arc;
use std::time::Duration;

use interop_client::{text_envelope, SendOutcome, Sender};
use interop_e2e::{connect_service, registry, wait_listening, Cluster, HOME_TOKEN, SIGNAL_TOKEN};
use interop_proto::v1::RejectCode;
use interop_test_support::{NatsServer, RedisServer};
use tokio_util::sync::CancellationToken;

async fn ingest(
    nats: &str,
    redis: &str,
    limit: interop_ingest::RateLimit,
    shutdown: &CancellationToken,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
    let deps = connect_service(nats, redis, "ingest").await;
    let mut config = interop_ingest::Config::new(listener, Arc::new(registry()));
    config.default_provider_limit = limit;
    config.sender_limit = interop_ingest::RateLimit {
        per_second: 10_000.0,
        burst: 10_000,
    };
    let s = shutdown.clone();
    tokio::spawn(async move { interop_ingest::run(config, deps, s).await });
    wait_listening(url.trim_start_matches("ws://").trim_end_matches("/v1/ws")).await;
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingest_replicas_keep_a_provider_within_its_limit() {
    let nats = NatsServer::start();
    let redis = RedisServer::start();
    let shutdown = CancellationToken::new();
    const RATE: f64 = 50.0;
    const BURST: u32 = 10;
    let limit = interop_ingest::RateLimit {
        per_second: RATE,
        burst: BURST,
    };
    let a = ingest(&nats.url(), &redis.url(), limit, &shutdown).await;
    let b = ingest(&nats.url(), &redis.url(), limit, &shutdown).await;
    let home = Sender::connect(&a, "home", HOME_TOKEN).await.unwrap();
    for i in 0..20 {
        home.set_consent(&format!("home:+49151000000{i:02}"), true, &["signal"])
            .await
            .unwrap();
    }
    const SECS: f64 = 2.0;
    // Connected before the clock starts: the window measured is sending.
    let mut senders = Vec::new();
    for url in [a, b] {
        senders.push(Sender::connect(&url, "signal", SIGNAL_TOKEN).await.unwrap());
    }
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, s) in senders.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let (mut accepted, mut limited, mut n) = (0u32, 0u32, 0u32);
            while start.elapsed() < Duration::from_secs_f64(SECS) {
                let to = format!("home:+49151000000{:02}", n % 20);
                let env = text_envelope(&format!("r{i}-{n}"), &format!("signal:u{i}"), &to, "x");
                match s.send(env).await.unwrap() {
                    SendOutcome::Accepted(_) => accepted += 1,
                    SendOutcome::Rejected(r) => {
                        assert_eq!(r.code(), RejectCode::RateLimited, "{r:?}");
                        assert!(r.retry_after_ms > 0);
                        limited += 1;
                    }
                }
                n += 1;
            }
            (accepted, limited)
        }));
    }
    let mut accepted = 0;
    let mut limited = 0;
    for t in tasks {
        let (a, l) = t.await.unwrap();
        accepted += a;
        limited += l;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let allowed = RATE * elapsed + f64::from(BURST);
    assert!(limited > 0, "the limit never applied ({accepted} accepted)");
    // Within the limit, give or take one burst.
    assert!(
        f64::from(accepted) <= allowed + f64::from(BURST),
        "{accepted} accepted in {elapsed:.2}s, limit allows {allowed:.0}"
    );
    assert!(
        f64::from(accepted) >= allowed - f64::from(BURST),
        "{accepted} accepted in {elapsed:.2}s, expected about {allowed:.0}"
    );
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_sends_get_a_retryable_rejection_fast_and_resends_arrive_once() {
    let mut c = Cluster::start().await;
    let bob = "home:+4915112345678";
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(bob, true, &["signal"]).await.unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    c.nats.stop();
    let mut refused = Vec::new();
    for i in 0..5 {
        let started = tokio::time::Instant::now();
        let out = alice
            .send(text_envelope(
                &format!("down-{i}"),
                "signal:alice",
                bob,
                "hi",
            ))
            .await
            .unwrap();
        let took = started.elapsed();
        match out {
            SendOutcome::Rejected(r) => {
                assert_eq!(r.code(), RejectCode::Unavailable, "{r:?}");
                assert!(r.retry_after_ms > 0);
                refused.push(i);
            }
            SendOutcome::Accepted(a) => panic!("accepted while NATS is down: {a:?}"),
        }
        assert!(took <= Duration::from_secs(2), "answered after {took:?}");
    }
    c.nats.restart();
    // The client retries with the same client message ids until accepted,
    // except the last, which it gives up: refused, it is never delivered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut ids = Vec::new();
    for i in &refused[..refused.len() - 1] {
        loop {
            match alice
                .send(text_envelope(
                    &format!("down-{i}"),
                    "signal:alice",
                    bob,
                    "hi",
                ))
                .await
                .unwrap()
            {
                SendOutcome::Accepted(a) => {
                    ids.push(a.message_id);
                    break;
                }
                SendOutcome::Rejected(r) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "still refused: {r:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(r.retry_after_ms.into())).await;
                }
            }
        }
    }
    let mut rx =
        interop_client::Receiver::connect(&c.gateway.delivery_url, "home", HOME_TOKEN, bob, "p")
            .await
            .unwrap();
    let mut got = Vec::new();
    for _ in 0..ids.len() {
        let d = tokio::time::timeout(Duration::from_secs(20), rx.next())
            .await
            .unwrap()
            .unwrap();
        rx.ack(&[d.delivery_tag]).await.unwrap();
        got.push(d.envelope.message_id);
    }
    assert_eq!(got, ids, "each message once, in order");
    let extra = tokio::time::timeout(Duration::from_millis(1000), rx.next()).await;
    assert!(
        extra.is_err(),
        "a message arrived twice, or the refused one given up: {extra:?}"
    );
    assert_eq!(rx.duplicates(), 0, "duplicates before client de-dup");
}

/// Sends `cmid` from alice to `to` until it is accepted (the gateway
/// recovered), failing after 20 s.
async fn accepted_within_20_s(alice: &Sender, cmid: &str, to: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let sent = alice
            .send(text_envelope(cmid, "signal:alice", to, "hi"))
            .await
            .unwrap();
        if matches!(sent, SendOutcome::Accepted(_)) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no recovery: {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Freezes (`SIGSTOP`) or thaws (`SIGCONT`) a process: a server that
/// holds its connections open and answers nothing, as one stuck loading
/// its data or swapping does.
fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {sig} {pid} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_not_answering_sends_are_refused_at_once_after_the_first_timeout() {
    // Each round trip to a Redis that answers nothing waits the store
    // timeout (1.5 s); before, every send did, and at 1,000 sends a second
    // the queue grew for as long as Redis was out (the soak's Redis
    // restart: answers after up to 50 s). After the first, sends are
    // refused at once until a probe finds Redis back.
    let c = Cluster::start().await;
    let bob = "home:+4915112345678";
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(bob, true, &["signal"]).await.unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    let pid = c.redis.pid().expect("redis runs");
    signal(pid, "-STOP");
    let refused = |out: &SendOutcome| matches!(out, SendOutcome::Rejected(r) if r.code() == RejectCode::Unavailable);
    let first = alice
        .send(text_envelope("frozen-0", "signal:alice", bob, "hi"))
        .await
        .unwrap();
    assert!(refused(&first), "{first:?}");
    let started = tokio::time::Instant::now();
    for i in 1..=10 {
        let out = alice
            .send(text_envelope(
                &format!("frozen-{i}"),
                "signal:alice",
                bob,
                "hi",
            ))
            .await
            .unwrap();
        assert!(refused(&out), "{out:?}");
    }
    let took = started.elapsed();
    signal(pid, "-CONT");
    // Ten round trips would have taken 15 s; a probe every 250 ms may make
    // a few of them wait 1.5 s.
    assert!(took < Duration::from_secs(6), "10 refusals took {took:?}");
    accepted_within_20_s(&alice, "thawed", bob).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_sends_get_a_retryable_rejection_fast_and_recover() {
    let mut c = Cluster::start().await;
    let bob = "home:+4915112345678";
    let home = Sender::connect(&c.gateway.ingest_url, "home", HOME_TOKEN)
        .await
        .unwrap();
    home.set_consent(bob, true, &["signal"]).await.unwrap();
    let alice = Sender::connect(&c.gateway.ingest_url, "signal", SIGNAL_TOKEN)
        .await
        .unwrap();
    c.redis.stop();
    let started = tokio::time::Instant::now();
    let out = alice
        .send(text_envelope("r-down", "signal:alice", bob, "hi"))
        .await
        .unwrap();
    assert!(
        started.elapsed() <= Duration::from_secs(2),
        "answered after {:?}",
        started.elapsed()
    );
    match out {
        SendOutcome::Rejected(r) => assert_eq!(r.code(), RejectCode::Unavailable, "{r:?}"),
        SendOutcome::Accepted(a) => panic!("accepted without Redis: {a:?}"),
    }
    // Redis comes back empty (no persistence): consent is loaded again from
    // the user-state stream (ADR 28), and sends work with no restart of the
    // gateway and without opting in again.
    c.redis.restart();
    accepted_within_20_s(&alice, "r-down", bob).await;
}
