//! spam-scoring's counters for a whole score request in one script call
//! (`spam::observe_batch`) against a real redis-server: the same answers and
//! the same state as counting the messages one after another
//! (`spam::observe`), in one `EVALSHA`, with fewer commands.

use interop_state::keys;
use interop_state::reputation::{self, Feedback};
use interop_state::spam::{self, Observation, ObservationInput};
use interop_test_support::RedisServer;

async fn conn(redis: &RedisServer) -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis.url()).unwrap();
    redis::aio::ConnectionManager::new(client).await.unwrap()
}

/// A message as the test writes it down (owned; borrowed as an input).
#[derive(Clone)]
struct Msg {
    from: String,
    provider: String,
    to: String,
    payload: Option<String>,
}

fn msg(from: &str, provider: &str, to: &str, payload: Option<&str>) -> Msg {
    Msg {
        from: from.into(),
        provider: provider.into(),
        to: to.into(),
        payload: payload.map(Into::into),
    }
}

fn inputs(batch: &[Msg]) -> Vec<ObservationInput<'_>> {
    batch
        .iter()
        .map(|m| ObservationInput {
            from: &m.from,
            provider: &m.provider,
            to: &m.to,
            payload_hash: m.payload.as_deref(),
        })
        .collect()
}

/// Reputation hashes compared as sets of fields (a hash has no order).
fn sorted(mut o: Observation) -> Observation {
    o.sender_reputation.sort();
    o.provider_reputation.sort();
    o
}

async fn one_by_one(c: &redis::aio::ConnectionManager, batch: &[Msg]) -> Vec<Observation> {
    let mut out = Vec::new();
    for m in batch {
        let o = spam::observe(c, &m.from, &m.provider, &m.to, m.payload.as_deref())
            .await
            .unwrap();
        out.push(sorted(o));
    }
    out
}

async fn batched(c: &redis::aio::ConnectionManager, batch: &[Msg]) -> Vec<Observation> {
    spam::observe_batch(c, &inputs(batch))
        .await
        .unwrap()
        .into_iter()
        .map(sorted)
        .collect()
}

/// Sets a recipient's answer about a sender in the contacts cache, as
/// routing and ingest leave it (`a` accepted, `d` declined, `b` blocked).
async fn contact(c: &mut redis::aio::ConnectionManager, to: &str, from: &str, state: &str) {
    let _: i64 = redis::cmd("HSET")
        .arg(keys::contacts(to))
        .arg(from)
        .arg(format!("{state}:1"))
        .query_async(c)
        .await
        .unwrap();
}

/// Every key's content (HyperLogLogs by their count: their bytes also hold
/// a cached count, which depends on when they were last counted) and
/// whether it has a TTL.
async fn state(c: &mut redis::aio::ConnectionManager) -> Vec<(String, String, bool)> {
    let mut names: Vec<String> = redis::cmd("KEYS").arg("*").query_async(c).await.unwrap();
    names.sort();
    let mut out = Vec::new();
    for k in names {
        let kind: String = redis::cmd("TYPE").arg(&k).query_async(c).await.unwrap();
        let value = if kind == "hash" {
            let mut h: Vec<(String, String)> =
                redis::cmd("HGETALL").arg(&k).query_async(c).await.unwrap();
            h.sort();
            format!("{h:?}")
        } else if ["recipients", "strangers", "payload"]
            .iter()
            .any(|h| k.starts_with(&format!("interop:spam:{h}:")))
        {
            let n: u64 = redis::cmd("PFCOUNT").arg(&k).query_async(c).await.unwrap();
            format!("~{n}")
        } else {
            redis::cmd("GET").arg(&k).query_async(c).await.unwrap()
        };
        let ttl: i64 = redis::cmd("TTL").arg(&k).query_async(c).await.unwrap();
        out.push((k, value, ttl > 0));
    }
    out
}

/// The same answers, reputation and old counters on a fresh Redis: some
/// recipients accepted (or declined, or blocked) some senders, senders and
/// a provider have feedback, a provider's hash has a day older than the
/// window (pruned on its first message of the day), the other has
/// today's count already, and one sender has counters from before.
async fn prepare(c: &mut redis::aio::ConnectionManager) {
    contact(c, "home:+r0", "signal:alice", "a").await;
    contact(c, "home:+r1", "signal:alice", "a").await;
    contact(c, "home:+r1", "telegram:bob", "d").await;
    contact(c, "home:+r2", "telegram:bob", "a").await;
    contact(c, "home:+r3", "signal:carol", "b").await;
    contact(c, "home:+r4", "signal:carol", "a").await;
    for (recipient, sender, provider, kind) in [
        ("home:+x1", "telegram:bob", "telegram", Feedback::Report),
        ("home:+x2", "telegram:bob", "telegram", Feedback::Block),
        ("home:+x1", "signal:carol", "signal", Feedback::Decline),
    ] {
        reputation::record(c, recipient, sender, provider, kind)
            .await
            .unwrap();
    }
    // whatsapp's hash: a report from 40 days ago and a block today, no
    // message counted today yet (so its first message prunes the report).
    let today = reputation::today();
    let _: () = redis::cmd("HSET")
        .arg(keys::reputation_provider("whatsapp"))
        .arg(format!("report:{}", today - 40))
        .arg(3)
        .arg(format!("block:{today}"))
        .arg(2)
        .query_async(c)
        .await
        .unwrap();
    // telegram: messages counted today already.
    spam::observe(c, "telegram:old", "telegram", "home:+r9", Some("p9"))
        .await
        .unwrap();
    // alice wrote before: her counters do not start at zero.
    spam::observe(c, "signal:alice", "signal", "home:+r5", Some("pa"))
        .await
        .unwrap();
}

/// A batch with everything `observe_batch` must keep apart: several
/// senders of two providers, repeated recipients (the same sender to the
/// same recipient twice), one payload to many recipients from several
/// senders, messages without a fingerprint, accepted, declined and blocked
/// senders, a recipient new to a sender after being one before the batch.
fn mixed_batch() -> Vec<Msg> {
    vec![
        msg("signal:alice", "signal", "home:+r0", Some("pa")),
        msg("signal:alice", "signal", "home:+r1", Some("pa")),
        msg("telegram:bob", "telegram", "home:+r1", Some("pa")),
        msg("signal:alice", "signal", "home:+r2", None),
        msg("signal:alice", "signal", "home:+r5", Some("pa")),
        msg("telegram:bob", "telegram", "home:+r2", Some("pb")),
        msg("signal:carol", "signal", "home:+r3", Some("pa")),
        msg("signal:carol", "signal", "home:+r4", Some("pa")),
        msg("telegram:bob", "telegram", "home:+r3", Some("pb")),
        msg("signal:alice", "signal", "home:+r2", Some("pb")),
        msg("telegram:dave", "telegram", "home:+r6", None),
        msg("telegram:dave", "telegram", "home:+r6", None),
        msg("signal:carol", "signal", "home:+r7", Some("pa")),
        msg("signal:alice", "signal", "home:+r3", Some("pa")),
        msg("telegram:dave", "telegram", "home:+r7", Some("pa")),
        msg("whatsapp:erin", "whatsapp", "home:+r0", Some("pa")),
        msg("whatsapp:erin", "whatsapp", "home:+r1", Some("pa")),
    ]
}

/// `n` messages from `senders` senders of two providers, each to its own
/// recipient; three in four recipients accepted their sender; payloads
/// from four texts (as most traffic repeats a few; a quarter without a
/// fingerprint), or, with `spammer`, strangers only and a unique
/// ciphertext each.
fn realistic_batch(n: usize, senders: usize, spammer: bool) -> (Vec<Msg>, Vec<(String, String)>) {
    let mut batch = Vec::new();
    let mut accepted = Vec::new();
    for i in 0..n {
        let s = i % senders;
        let provider = if s.is_multiple_of(2) {
            "signal"
        } else {
            "telegram"
        };
        let from = format!("{provider}:+4915100{s:04}");
        let to = format!("home:+4917000{i:04}");
        let payload = if spammer {
            Some(format!("unique{i}"))
        } else if i % 4 == 3 {
            None
        } else {
            Some(format!("text{}", i % 4))
        };
        if !spammer && i % 4 != 0 {
            accepted.push((to.clone(), from.clone()));
        }
        batch.push(msg(&from, provider, &to, payload.as_deref()));
    }
    (batch, accepted)
}

/// Waits out the last seconds of a minute, so that counting one message
/// at a time and the whole batch at once see the same minute, hour and day.
async fn not_at_a_minute_end() {
    let into = interop_proto::now_ms().rem_euclid(60_000);
    if into > 50_000 {
        let wait = u64::try_from(60_000 - into).unwrap() + 100;
        tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    }
}

#[tokio::test]
async fn a_batch_counts_exactly_as_its_messages_one_after_another() {
    let (one, all) = (RedisServer::start(), RedisServer::start());
    let (mut a, mut b) = (conn(&one).await, conn(&all).await);
    not_at_a_minute_end().await;
    prepare(&mut a).await;
    prepare(&mut b).await;
    let batch = mixed_batch();
    let expected = one_by_one(&a, &batch).await;
    let got = batched(&b, &batch).await;
    assert_eq!(got.len(), batch.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g, e, "message {i}");
    }
    // Spot checks of what the batch must show.
    let accepted: Vec<usize> = (0..got.len()).filter(|&i| !got[i].to_stranger).collect();
    assert_eq!(accepted, [0, 1, 5, 7], "declined and blocked are strangers");
    assert_eq!(
        got[3].sent_this_minute, 4,
        "alice's 4th message (one before)"
    );
    assert_eq!(
        got[11].recipients_this_hour, 1,
        "dave to r6 twice: one recipient"
    );
    assert_eq!(
        got[16].payload_recipients_this_hour, 6,
        "pa to r5, r0, r1, r3, r4, r7"
    );
    assert!(got[2]
        .sender_reputation
        .iter()
        .any(|(f, n)| f.starts_with("report:") && *n == 1));
    let today = reputation::today();
    for (i, n) in [(15, 1), (16, 2)] {
        assert_eq!(
            got[i].provider_reputation,
            [(format!("block:{today}"), 2), (format!("msgs:{today}"), n)],
            "the 40-day-old report pruned, each message its own count"
        );
    }
    assert_eq!(state(&mut a).await, state(&mut b).await);

    // A second batch over what the first left, still the same.
    let (second, accepted) = realistic_batch(40, 7, false);
    for (to, from) in &accepted {
        contact(&mut a, to, from, "a").await;
        contact(&mut b, to, from, "a").await;
    }
    let mut second = second;
    second.extend(mixed_batch());
    assert_eq!(batched(&b, &second).await, one_by_one(&a, &second).await);
    assert_eq!(state(&mut a).await, state(&mut b).await);

    assert!(spam::observe_batch(&b, &[]).await.unwrap().is_empty());
}

/// Calls and µs since the start of each command (`INFO commandstats`;
/// Redis 7 counts the commands a script runs, and names subcommands
/// `a|b`).
async fn commandstats(c: &mut redis::aio::ConnectionManager) -> Vec<(String, u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(":calls=")?;
            let mut fields = rest.split(',');
            let calls = fields.next()?.parse().ok()?;
            let usec = fields.next()?.strip_prefix("usec=")?.parse().ok()?;
            Some((name.to_owned(), calls, usec))
        })
        .collect()
}

/// What ran between two readings of [`commandstats`] (`INFO` itself left
/// out).
struct Cost {
    /// Commands, those run by scripts included.
    commands: u64,
    /// `EVALSHA` calls.
    scripts: u64,
    /// µs inside `EVALSHA`.
    script_usec: u64,
    /// Calls by command, for reading.
    by_command: Vec<(String, u64)>,
}

fn delta(before: &[(String, u64, u64)], after: &[(String, u64, u64)]) -> Cost {
    let of = |name: &str| {
        before
            .iter()
            .find(|(n, ..)| n == name)
            .map_or((0, 0), |(_, calls, usec)| (*calls, *usec))
    };
    let by_command: Vec<(String, u64)> = after
        .iter()
        .filter(|(n, ..)| n != "info")
        .map(|(n, calls, _)| (n.clone(), calls - of(n).0))
        .filter(|(_, calls)| *calls > 0)
        .collect();
    let evalsha = after
        .iter()
        .find(|(n, ..)| n == "evalsha")
        .map_or((0, 0), |(_, calls, usec)| (*calls, *usec));
    Cost {
        commands: by_command.iter().map(|(_, calls)| calls).sum(),
        scripts: evalsha.0 - of("evalsha").0,
        script_usec: evalsha.1 - of("evalsha").1,
        by_command,
    }
}

/// Counts `batch` on a fresh Redis prepared with `accepted` and a little
/// reputation, one message at a time or in one call, and returns the
/// answers and what it cost.
async fn measure(
    batch: &[Msg],
    accepted: &[(String, String)],
    at_once: bool,
) -> (Vec<Observation>, Cost) {
    let redis = RedisServer::start();
    let mut c = conn(&redis).await;
    for (to, from) in accepted {
        contact(&mut c, to, from, "a").await;
    }
    for m in batch.iter().step_by(5) {
        reputation::record(&c, "home:+x", &m.from, &m.provider, Feedback::Decline)
            .await
            .unwrap();
    }
    // Both scripts loaded (a NOSCRIPT answer is an EVALSHA too).
    let warm = [msg("signal:warm", "signal", "home:+warm", None)];
    batched(&c, &warm).await;
    one_by_one(&c, &warm).await;
    let before = commandstats(&mut c).await;
    let answers = if at_once {
        batched(&c, batch).await
    } else {
        one_by_one(&c, batch).await
    };
    (answers, delta(&before, &commandstats(&mut c).await))
}

#[tokio::test]
async fn a_score_request_of_64_messages_is_one_evalsha_with_fewer_commands() {
    not_at_a_minute_end().await;
    for (what, spammer) in [
        ("16 senders, 64 recipients", false),
        ("a fan-out spammer's", true),
    ] {
        let senders = if spammer { 1 } else { 16 };
        let (batch, accepted) = realistic_batch(64, senders, spammer);
        let (expected, before) = measure(&batch, &accepted, false).await;
        let (got, after) = measure(&batch, &accepted, true).await;
        assert_eq!(got, expected, "{what}");
        assert_eq!((before.scripts, after.scripts), (64, 1), "{what}");
        let per = |n: u64| n as f64 / batch.len() as f64;
        eprintln!(
            "{what} batch of 64, per message: Redis commands {:.2} one at a time, {:.2} in one \
             call; script calls {:.3} and {:.3}; µs in scripts {:.1} and {:.1}\n  one at a \
             time: {:?}\n  in one call: {:?}",
            per(before.commands),
            per(after.commands),
            per(before.scripts),
            per(after.scripts),
            per(before.script_usec),
            per(after.script_usec),
            before.by_command,
            after.by_command,
        );
        assert!(
            after.commands * 3 < before.commands * 2,
            "{what}: {} commands in one call against {} one at a time",
            after.commands,
            before.commands
        );
    }
}
