//! The registry's durable home: the `INTEROP_PROVIDERS` stream, one JSON
//! record per provider on `interop.v1.providers.<id>` (the stream keeps the
//! latest per subject). Every ingest and delivery replica watches it, so a
//! rotation or revocation reaches all of them within moments, and it
//! survives restarts of everything (Redis is not involved).
//!
//! The file given with `--providers-file` seeds it: a provider the stream
//! does not know yet is added; one it knows is left as the admin API last
//! wrote it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{
    self, consumer::pull, consumer::DeliverPolicy, stream::LastRawMessageErrorKind,
};
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use interop_bus::subjects::{provider_record, PROVIDERS_ALL, STREAM_PROVIDERS};

use crate::{Provider, Registry, RegistryError};

/// A registry store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the registry stream is unavailable: {0}")]
    Unavailable(String),
    #[error("a registry record is not valid JSON: {0}")]
    BadRecord(#[from] serde_json::Error),
    #[error(transparent)]
    Invalid(#[from] RegistryError),
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The longest pause between two attempts at the start-up read.
const START_RETRY_MAX: Duration = Duration::from_secs(5);

/// Reads and writes provider records.
#[derive(Clone)]
pub struct RegistryStore {
    js: jetstream::Context,
}

impl RegistryStore {
    /// The streams must exist (`interop_bus::ensure_streams`).
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }

    /// The current record of `id`, removed ones included.
    pub async fn get(&self, id: &str) -> Result<Option<Provider>, StoreError> {
        let stream = self
            .js
            .get_stream(STREAM_PROVIDERS)
            .await
            .map_err(unavailable)?;
        match stream
            .get_last_raw_message_by_subject(&provider_record(id))
            .await
        {
            Ok(m) => Ok(Some(serde_json::from_slice(&m.payload)?)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// Validates and stores `provider`, replacing its record.
    pub async fn put(&self, provider: &Provider) -> Result<(), StoreError> {
        Registry::from_providers(vec![provider.clone()])?;
        let payload = serde_json::to_vec(provider)?;
        self.js
            .publish(provider_record(&provider.id), payload.into())
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    /// Adds every provider of `seed` the store does not know yet. Returns
    /// how many were added.
    pub async fn seed(&self, seed: &Registry) -> Result<usize, StoreError> {
        let mut added = 0;
        for p in seed.providers() {
            if self.get(&p.id).await?.is_none() {
                self.put(p).await?;
                added += 1;
            }
        }
        Ok(added)
    }

    /// Every current record (removed ones included).
    pub async fn list(&self) -> Result<Vec<Provider>, StoreError> {
        let (records, _) = self.read_all().await?;
        Ok(records.into_values().collect())
    }

    async fn read_all(
        &self,
    ) -> Result<
        (
            HashMap<String, Provider>,
            jetstream::consumer::pull::Ordered,
        ),
        StoreError,
    > {
        let stream = self
            .js
            .get_stream(STREAM_PROVIDERS)
            .await
            .map_err(unavailable)?;
        let consumer = stream
            .create_consumer(pull::OrderedConfig {
                filter_subject: PROVIDERS_ALL.to_owned(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(unavailable)?;
        let pending = consumer.cached_info().num_pending;
        let mut messages = consumer.messages().await.map_err(unavailable)?;
        let mut records = HashMap::new();
        let mut left = pending;
        while left > 0 {
            let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
                .await
                .map_err(|_| unavailable("timed out reading the registry"))?
                .ok_or_else(|| unavailable("registry consumer ended"))?
                .map_err(unavailable)?;
            let p: Provider = serde_json::from_slice(&msg.payload)?;
            records.insert(p.id.clone(), p);
            left = msg.info().map(|i| i.pending).unwrap_or(0);
        }
        Ok((records, messages))
    }

    /// [`Self::read_all`], repeated **until it succeeds** while the stream
    /// is unavailable (with a warning each time and a pause growing to 5 s):
    /// a service restarted under load (kill -9, then a busy NATS) timed out
    /// its first read and exited, and a NATS that is unreachable at start
    /// must only delay the service (ADR 14; both found by the fault suite).
    /// An invalid record is returned at once.
    async fn read_all_at_start(
        &self,
    ) -> Result<
        (
            HashMap<String, Provider>,
            jetstream::consumer::pull::Ordered,
        ),
        StoreError,
    > {
        until_available("read the provider registry", || self.read_all()).await
    }

    /// What ingest and delivery do at start: seed from the providers file,
    /// then watch.
    pub async fn seed_and_watch(
        &self,
        seed: &Registry,
        shutdown: CancellationToken,
    ) -> Result<watch::Receiver<Arc<Registry>>, StoreError> {
        let seeded = until_available("seed the provider registry", || self.seed(seed)).await?;
        if seeded > 0 {
            info!(
                seeded,
                "Seeded the provider registry from the providers file."
            );
        }
        self.watch(shutdown).await
    }

    /// Loads the registry and keeps it current until `shutdown`: the
    /// receiver always holds the latest registry.
    pub async fn watch(
        &self,
        shutdown: CancellationToken,
    ) -> Result<watch::Receiver<Arc<Registry>>, StoreError> {
        let (records, mut messages) = self.read_all_at_start().await?;
        let registry = build(&records);
        info!(providers = registry.len(), "Provider registry loaded.");
        let (tx, rx) = watch::channel(Arc::new(registry));
        tokio::spawn(async move {
            let mut records = records;
            loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    n = messages.next() => n,
                };
                let Some(next) = next else {
                    warn!("The registry watch ended; keeping the last registry.");
                    // Keep the sender alive: receivers read "closed" as
                    // shutting down.
                    shutdown.cancelled().await;
                    return;
                };
                let msg = match next {
                    Ok(m) => m,
                    Err(e) => {
                        // The ordered consumer recreates itself after errors.
                        warn!(error = %e, "Registry watch interrupted.");
                        continue;
                    }
                };
                match serde_json::from_slice::<Provider>(&msg.payload) {
                    Ok(p) => {
                        records.insert(p.id.clone(), p);
                        if tx.send(Arc::new(build(&records))).is_err() {
                            return;
                        }
                    }
                    Err(e) => warn!(error = %e, "Ignoring an invalid registry record."),
                }
            }
        });
        Ok(rx)
    }
}

/// Runs `attempt` until it returns anything but [`StoreError::Unavailable`],
/// pausing between tries (250 ms, doubling up to [`START_RETRY_MAX`]) and
/// logging a warning for each failure. Cancel the future to stop.
async fn until_available<T, F, Fut>(what: &str, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut pause = Duration::from_millis(250);
    let mut n = 1u32;
    loop {
        match attempt().await {
            Err(StoreError::Unavailable(e)) => {
                warn!(attempt = n, error = %e, "Cannot {what} yet; retrying (not ready until it is done).");
                n += 1;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(START_RETRY_MAX);
            }
            other => return other,
        }
    }
}

/// The registry of the valid records; an invalid record (or one whose
/// client certificate another provider already lists) is skipped and logged
/// rather than taking every provider down. Records are taken in id order so
/// every replica skips the same one.
fn build(records: &HashMap<String, Provider>) -> Registry {
    let mut ids: Vec<&String> = records.keys().collect();
    ids.sort();
    let mut registry = Registry::default();
    for id in ids {
        let p = &records[id];
        if let Err(e) = registry.try_add(p.clone()) {
            warn!(provider = %p.id, error = %e, "Skipping an invalid provider record.");
        }
    }
    registry
}
