//! GCRA against a real redis-server.

use interop_state::gcra::{self, Decision, LimitedBy, RateLimit};
use interop_test_support::RedisServer;

async fn conn(redis: &RedisServer) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis.url()).unwrap();
    redis::aio::ConnectionManager::new(client).await.unwrap()
}

async fn check(
    c: &mut redis::aio::ConnectionManager,
    p: RateLimit,
    s: RateLimit,
    sender: &str,
) -> Decision {
    let mut pipe = redis::pipe();
    gcra::add_check(&mut pipe, "prov", sender, p, s);
    let (reply,): ((i64, i64, i64),) = pipe.query_async(c).await.unwrap();
    gcra::decision(reply)
}

#[tokio::test]
async fn allows_a_burst_then_limits_with_retry_advice() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    gcra::load(&mut c).await.unwrap();
    let wide = RateLimit {
        per_second: 1000.0,
        burst: 1000,
    };
    let sender = RateLimit {
        per_second: 10.0,
        burst: 5,
    };
    for i in 0..5 {
        assert_eq!(
            check(&mut c, wide, sender, "s1").await,
            Decision::Allowed,
            "message {i}"
        );
    }
    match check(&mut c, wide, sender, "s1").await {
        Decision::Limited { by, retry_after_ms } => {
            assert_eq!(by, LimitedBy::Sender);
            assert!((1..=100).contains(&retry_after_ms), "{retry_after_ms}");
        }
        Decision::Allowed => panic!("the sixth message of a burst of 5 passed"),
    }
    // Another sender of the same provider has its own bucket.
    assert_eq!(check(&mut c, wide, sender, "s2").await, Decision::Allowed);
    // After the advised wait, one more message passes.
    tokio::time::sleep(std::time::Duration::from_millis(110)).await;
    assert_eq!(check(&mut c, wide, sender, "s1").await, Decision::Allowed);
}

#[tokio::test]
async fn the_provider_limit_holds_across_senders_and_a_refusal_consumes_nothing() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    gcra::load(&mut c).await.unwrap();
    let provider = RateLimit {
        per_second: 1.0,
        burst: 3,
    };
    let sender = RateLimit {
        per_second: 1.0,
        burst: 2,
    };
    assert_eq!(
        check(&mut c, provider, sender, "a").await,
        Decision::Allowed
    );
    assert_eq!(
        check(&mut c, provider, sender, "a").await,
        Decision::Allowed
    );
    // a's own limit refuses; the provider bucket must not be charged.
    assert!(matches!(
        check(&mut c, provider, sender, "a").await,
        Decision::Limited {
            by: LimitedBy::Sender,
            ..
        }
    ));
    assert_eq!(
        check(&mut c, provider, sender, "b").await,
        Decision::Allowed
    );
    assert!(matches!(
        check(&mut c, provider, sender, "c").await,
        Decision::Limited { by: LimitedBy::Provider, retry_after_ms } if retry_after_ms > 900
    ));
}

#[tokio::test]
async fn a_flushed_script_cache_is_reported_as_noscript() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    gcra::load(&mut c).await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut c)
        .await
        .unwrap();
    let mut pipe = redis::pipe();
    let l = RateLimit {
        per_second: 1.0,
        burst: 1,
    };
    gcra::add_check(&mut pipe, "p", "s", l, l);
    let err = pipe
        .query_async::<((i64, i64, i64),)>(&mut c)
        .await
        .unwrap_err();
    assert!(gcra::is_noscript(&err), "{err}");
    gcra::load(&mut c).await.unwrap();
    assert_eq!(check(&mut c, l, l, "s").await, Decision::Allowed);
}

/// Decisions of `senders` in one batched call.
async fn check_batch(
    c: &mut redis::aio::ConnectionManager,
    provider: &str,
    p: RateLimit,
    s: RateLimit,
    senders: &[&str],
) -> Vec<Decision> {
    let mut pipe = redis::pipe();
    gcra::add_checks(&mut pipe, provider, senders, p, s);
    let (replies,): (Vec<(i64, i64, i64)>,) = pipe.query_async(c).await.unwrap();
    replies.into_iter().map(gcra::decision).collect()
}

/// A decision without its retry advice, which depends on the clock.
fn kind(d: Decision) -> Option<LimitedBy> {
    match d {
        Decision::Allowed => None,
        Decision::Limited { by, .. } => Some(by),
    }
}

#[tokio::test]
async fn a_batch_decides_like_one_check_after_another() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    gcra::load(&mut c).await.unwrap();
    gcra::load_batch(&mut c).await.unwrap();
    let provider = RateLimit {
        per_second: 1.0,
        burst: 6,
    };
    let sender = RateLimit {
        per_second: 1.0,
        burst: 3,
    };
    // Senders repeat, one runs over its own limit, and then the provider's
    // bucket runs out: every kind of decision, in an order that matters.
    let senders = ["a", "a", "b", "a", "a", "c", "b", "a", "d", "d", "e", "b"];
    let one_by_one = {
        let mut out = Vec::new();
        for s in senders {
            out.push(check(&mut c, provider, sender, &format!("one-{s}")).await);
        }
        out
    };
    // The single checks used the provider bucket "prov"; the batch gets its
    // own provider and senders.
    let batched: Vec<String> = senders.iter().map(|s| format!("batch-{s}")).collect();
    let batched: Vec<&str> = batched.iter().map(String::as_str).collect();
    let batch = check_batch(&mut c, "prov-batch", provider, sender, &batched).await;
    assert_eq!(
        batch.iter().map(|d| kind(*d)).collect::<Vec<_>>(),
        one_by_one.iter().map(|d| kind(*d)).collect::<Vec<_>>(),
    );
    assert!(batch.iter().any(|d| kind(*d) == Some(LimitedBy::Sender)));
    assert!(batch.iter().any(|d| kind(*d) == Some(LimitedBy::Provider)));
    for (b, o) in batch.iter().zip(&one_by_one) {
        if let (
            Decision::Limited {
                retry_after_ms: rb, ..
            },
            Decision::Limited {
                retry_after_ms: ro, ..
            },
        ) = (b, o)
        {
            // The same advice, but for the milliseconds between the checks.
            assert!(rb.abs_diff(*ro) <= 100, "{rb} against {ro}");
        }
    }
    // What the batch left in the buckets is what one by one left: the next
    // single check of each decides alike.
    for s in ["a", "b", "c", "d", "e"] {
        let after_one = check(&mut c, provider, sender, &format!("one-{s}")).await;
        let mut pipe = redis::pipe();
        gcra::add_check(
            &mut pipe,
            "prov-batch",
            &format!("batch-{s}"),
            provider,
            sender,
        );
        let (reply,): ((i64, i64, i64),) = pipe.query_async(&mut c).await.unwrap();
        assert_eq!(kind(gcra::decision(reply)), kind(after_one), "sender {s}");
    }
}

/// `cmdstat_<command>`'s calls since the last `CONFIG RESETSTAT`.
async fn calls(c: &mut redis::aio::ConnectionManager, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn a_batch_of_256_senders_is_one_script_call() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    gcra::load_batch(&mut c).await.unwrap();
    let wide = RateLimit {
        per_second: 1000.0,
        burst: 1000,
    };
    let senders: Vec<String> = (0..256).map(|i| format!("s{i}")).collect();
    let senders: Vec<&str> = senders.iter().map(String::as_str).collect();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    let decisions = check_batch(&mut c, "p", wide, wide, &senders).await;
    assert_eq!(decisions.len(), 256);
    assert!(decisions.iter().all(|d| *d == Decision::Allowed));
    assert_eq!(calls(&mut c, "evalsha").await, 1);
    // Each bucket written once: the provider's and 256 senders'.
    assert_eq!(calls(&mut c, "set").await, 257);
}

#[tokio::test]
async fn a_flushed_script_cache_is_reported_as_noscript_for_a_batch_too() {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    let l = RateLimit {
        per_second: 1.0,
        burst: 1,
    };
    let mut pipe = redis::pipe();
    gcra::add_checks(&mut pipe, "p", &["s", "s"], l, l);
    let err = pipe
        .query_async::<(Vec<(i64, i64, i64)>,)>(&mut c)
        .await
        .unwrap_err();
    assert!(gcra::is_noscript(&err), "{err}");
    gcra::load_batch(&mut c).await.unwrap();
    let wide = RateLimit {
        per_second: 1000.0,
        burst: 1000,
    };
    assert_eq!(
        check_batch(&mut c, "p", wide, l, &["s", "s"])
            .await
            .iter()
            .map(|d| kind(*d))
            .collect::<Vec<_>>(),
        [None, Some(LimitedBy::Sender)]
    );
}
