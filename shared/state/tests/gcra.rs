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
