//! The session-setup storm: every new conversation fetches a prekey bundle
//! from the key directory (docs/adr/0025). `loadtest key-fetches` publishes
//! keys for `users` users of one provider (opted in, allowing the other),
//! then fetches bundles open-loop at `rate` per second from many requesting
//! users of the other provider, and measures fetches per second and the
//! latency from each fetch's intended start (so a slow gateway cannot hide
//! behind a slow generator).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;
use tokio::time::Instant;

use interop_client::keys::KeysOutcome;
use interop_client::Sender;
use interop_proto::keys::{MAX_ONE_TIME_PREKEYS_PER_PUBLISH, SIGNATURE_BYTES};
use interop_proto::v1::{DeviceKeys, PublicKey};

/// What to run.
#[derive(Debug, Clone)]
pub struct KeyFetchOptions {
    pub ingest_url: String,
    /// The provider whose users' keys are fetched, and its token.
    pub owner: (String, String),
    /// The provider whose users fetch, and its token.
    pub requester: (String, String),
    /// Users whose keys are fetched (each publishes one device).
    pub users: usize,
    /// One-time prekeys each user's device publishes (beyond them, fetches
    /// get the last-resort key, which is still a full fetch).
    pub one_time_prekeys: usize,
    /// Distinct requesting users (each has its own fetch limit).
    pub requesters: usize,
    /// Intended fetches per second.
    pub rate: f64,
    pub duration: Duration,
    /// WebSocket connections the fetches are spread over.
    pub connections: usize,
}

/// What [`key_fetches`] measured.
#[derive(Debug, serde::Serialize)]
pub struct KeyFetchReport {
    pub intended_rate: f64,
    pub fetches: u64,
    /// Fetches answered with a bundle per second, over the measured phase.
    pub fetches_per_s: f64,
    /// Bundles that carried a claimed one-time prekey; the others fell back
    /// to the last-resort prekey.
    pub with_one_time_prekey: u64,
    pub refused: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub setup_s: f64,
}

fn key(fill: u32, algorithm: &str, key_id: u32) -> PublicKey {
    let mut bytes = vec![0u8; 32];
    bytes[..4].copy_from_slice(&fill.to_be_bytes());
    bytes[4..8].copy_from_slice(&key_id.to_be_bytes());
    PublicKey {
        algorithm: algorithm.into(),
        key_id,
        key: bytes.into(),
        signature: Default::default(),
    }
}

/// Synthetic keys of the right sizes: the gateway does not look inside them.
fn device(i: u32) -> DeviceKeys {
    DeviceKeys {
        device_id: "bench".into(),
        identity_key: Some(key(i, "curve25519", 0)),
        signing_key: Some(key(i, "ed25519", 0)),
        signed_prekey: Some(PublicKey {
            signature: vec![1; SIGNATURE_BYTES].into(),
            ..key(i, "curve25519", 0)
        }),
        last_resort_prekey: Some(key(i, "curve25519", 0)),
        pq_last_resort_prekey: None,
        last_resort_key_package: Default::default(),
    }
}

/// Publishes the users' keys, then runs the fetches and measures them.
pub async fn key_fetches(o: &KeyFetchOptions) -> anyhow::Result<KeyFetchReport> {
    let setup = Instant::now();
    let owner = Sender::connect(&o.ingest_url, &o.owner.0, &o.owner.1).await?;
    if o.users == 0 || o.users > 10_000 {
        bail!("users must be 1 to 10,000");
    }
    // A run-unique range of phone numbers (the gatekeeper's users are E.164
    // numbers): one-time key ids must rise per device, and a second run
    // would find the first run's devices.
    let run = uuid::Uuid::now_v7().as_u128() % 1_000_000;
    let users: Vec<String> = (0..o.users)
        .map(|i| format!("{}:+49{run:06}{i:04}", o.owner.0))
        .collect();
    for (i, u) in users.iter().enumerate() {
        match owner
            .set_consent(u, true, &[o.requester.0.as_str()])
            .await?
        {
            interop_client::ConsentOutcome::Updated(_) => {}
            interop_client::ConsentOutcome::Rejected(r) => {
                bail!("opting {u} in was refused: {r:?}")
            }
        }
        let mut first = 1u32;
        let mut left = o.one_time_prekeys;
        loop {
            let n = left.min(MAX_ONE_TIME_PREKEYS_PER_PUBLISH);
            let otks: Vec<PublicKey> = (0..n as u32)
                .map(|k| key(i as u32, "curve25519", first + k))
                .collect();
            match owner
                .publish_keys(u, device(i as u32), otks, vec![])
                .await?
            {
                KeysOutcome::Done(_) => {}
                KeysOutcome::Rejected(r) => bail!("publishing keys was refused: {r:?}"),
            }
            first += n as u32;
            left -= n;
            if left == 0 {
                break;
            }
        }
    }
    let setup_s = setup.elapsed().as_secs_f64();
    let mut conns = Vec::with_capacity(o.connections.max(1));
    for _ in 0..o.connections.max(1) {
        conns.push(Arc::new(
            Sender::connect(&o.ingest_url, &o.requester.0, &o.requester.1)
                .await
                .context("opening a requester connection")?,
        ));
    }
    let total = (o.rate * o.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / o.rate.max(0.001));
    #[derive(Default)]
    struct Tally {
        ok: u64,
        with_otk: u64,
        refused: u64,
        errors: u64,
    }
    let histogram = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let intended = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(intended).await;
        let conn = conns[i as usize % conns.len()].clone();
        let requester = format!("{}:req{}", o.requester.0, i as usize % o.requesters.max(1));
        let user = users[i as usize % users.len()].clone();
        let (histogram, tally) = (histogram.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let answer = conn.fetch_bundles(&requester, &user, &[]).await;
            let micros = intended.elapsed().as_micros() as u64;
            let mut t = tally.lock().await;
            match answer {
                Ok(KeysOutcome::Done(b)) => {
                    t.ok += 1;
                    if b.bundles.iter().any(|b| b.one_time_prekey.is_some()) {
                        t.with_otk += 1;
                    }
                    histogram.lock().await.record(micros.max(1)).ok();
                }
                Ok(KeysOutcome::Rejected(_)) => t.refused += 1,
                Err(_) => t.errors += 1,
            }
        }));
    }
    for t in tasks {
        t.await.ok();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = histogram.lock().await;
    let t = tally.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Ok(KeyFetchReport {
        intended_rate: o.rate,
        fetches: t.ok,
        fetches_per_s: t.ok as f64 / elapsed,
        with_one_time_prekey: t.with_otk,
        refused: t.refused,
        errors: t.errors,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: h.max() as f64 / 1000.0,
        setup_s,
    })
}
