//! Lone sends' Redis checks made together (issue 22 item 2): the sends of
//! every connection of this replica that wait for their checks (rate
//! limits, the recipient's consent, the idempotency claim) while a round
//! trip is in flight go in the next one, one rate-limit script call per
//! provider ([`crate::send::prepare_sends`], the same checks a transaction's
//! sends get). No timer: a send arriving alone goes at once, as before; the
//! gathering is what arrives meanwhile (docs/adr/0019's rule). At most
//! [`IN_FLIGHT`] round trips at once, so a slow one (a consent record
//! loaded from the stream on a cache miss) holds back only its own batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::send::{Prepared, SendPlan};
use crate::Shared;

/// Sends checked in one round trip at most.
const BATCH_MAX: usize = 256;
/// Round trips of lone sends' checks in flight at once.
const IN_FLIGHT: usize = 2;

pub(crate) struct Pending {
    shared: Arc<Shared>,
    provider: String,
    plan: SendPlan,
    answer: oneshot::Sender<Prepared>,
}

/// Where lone sends wait for their checks.
#[derive(Clone)]
pub(crate) struct SendChecks {
    tx: mpsc::Sender<Pending>,
}

impl SendChecks {
    /// Starts the task that makes the round trips; it ends when every
    /// handle is dropped.
    pub(crate) fn start() -> Self {
        let (tx, rx) = mpsc::channel(4 * BATCH_MAX);
        tokio::spawn(run(rx));
        Self { tx }
    }

    /// The send's checks, made with whatever else waits, and what follows
    /// from them (`Prepared::Publish`, or the refusal).
    pub(crate) async fn check(
        &self,
        shared: &Arc<Shared>,
        provider: &str,
        plan: SendPlan,
    ) -> Prepared {
        let (answer, rx) = oneshot::channel();
        let (request_id, cmid) = (plan.request_id(), plan.cmid().to_owned());
        let pending = Pending {
            shared: shared.clone(),
            provider: provider.to_owned(),
            plan,
            answer,
        };
        if self.tx.send(pending).await.is_ok() {
            if let Ok(p) = rx.await {
                return p;
            }
        }
        // Only while the replica stops.
        crate::send::reject(request_id, &cmid, crate::send::unavailable("shutting down"))
    }
}

async fn run(mut rx: mpsc::Receiver<Pending>) {
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = rx.recv().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        tokio::spawn(async move {
            check_batch(batch).await;
            drop(permit);
        });
    }
}

/// One round trip per provider in the batch (at once), each answer to its
/// sender.
async fn check_batch(batch: Vec<Pending>) {
    let mut by_provider: BTreeMap<String, Vec<Pending>> = BTreeMap::new();
    for p in batch {
        by_provider.entry(p.provider.clone()).or_default().push(p);
    }
    futures_util::future::join_all(
        by_provider
            .into_iter()
            .map(|(provider, pending)| async move {
                let Some(shared) = pending.first().map(|p| p.shared.clone()) else {
                    return;
                };
                let mut answers = Vec::with_capacity(pending.len());
                let mut plans = Vec::with_capacity(pending.len());
                for p in pending {
                    answers.push(p.answer);
                    plans.push(p.plan);
                }
                shared.metrics.send_check_batches.inc();
                let prepared = crate::send::prepare_sends(&shared, &provider, plans).await;
                for (answer, p) in answers.into_iter().zip(prepared) {
                    answer.send(p).ok();
                }
            }),
    )
    .await;
}
