//! Audit: anyone with read access to `INTEROP_KT_ROOTS` checks that the
//! directory's history only grew. Each epoch's append-only proof (from the
//! epoch before) is published next to its root, in chunks on
//! `interop.v1.kt.audit`; [`audit`] reads the roots and the proofs and
//! verifies every step with akd's auditor. A root published twice for one
//! epoch with different hashes (a fork or a rollback), a missing root or
//! proof, and a proof that does not verify are each a typed
//! [`AuditProblem`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy};
use interop_bus::subjects::{KT_AUDIT, KT_ROOTS, STREAM_KT_ROOTS};
use protobuf::Message as _;

use crate::epoch::{KtError, Root};
use crate::Config;

/// Most bytes of an append-only proof in one message.
const AUDIT_CHUNK_BYTES: usize = 256 * 1024;
const EPOCH: &str = "Interop-Kt-Epoch";
const PART: &str = "Interop-Kt-Part";
const PARTS: &str = "Interop-Kt-Parts";

fn unavailable(what: &str, e: impl std::fmt::Display) -> KtError {
    KtError::Unavailable(format!("{what}: {e}"))
}

/// What an audit found wrong, epoch by epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditProblem {
    #[error("epoch {0}: two different roots were published (a fork or a rollback)")]
    Fork(u64),
    #[error("epoch {0}: no root was published")]
    MissingRoot(u64),
    #[error("epoch {0}: no append-only proof was published")]
    MissingProof(u64),
    #[error("epoch {0}: the append-only proof from the epoch before does not verify: {1}")]
    Invalid(u64, String),
}

/// What an audit checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditReport {
    /// Epochs whose step from the epoch before verified.
    pub verified: Vec<u64>,
    pub problems: Vec<AuditProblem>,
    /// Bytes of the proofs checked.
    pub proof_bytes: usize,
    pub elapsed: Duration,
}

/// Publishes the append-only proof from `epoch - 1` to `epoch` (chunks
/// with message ids, so a repeat within the duplicate window adds nothing).
pub(crate) async fn publish_proof(
    js: &jetstream::Context,
    epoch: u64,
    proof: &akd::SingleAppendOnlyProof,
) -> Result<(), KtError> {
    let bytes = akd::proto::specs::types::SingleAppendOnlyProof::from(proof)
        .write_to_bytes()
        .map_err(|e| unavailable("encoding an append-only proof", e))?;
    let chunks: Vec<&[u8]> = bytes.chunks(AUDIT_CHUNK_BYTES).collect();
    let mut acks = Vec::with_capacity(chunks.len());
    for (i, chunk) in chunks.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(EPOCH, epoch.to_string().as_str());
        headers.insert(PART, i.to_string().as_str());
        headers.insert(PARTS, chunks.len().to_string().as_str());
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            format!("kt-audit-{epoch}-{i}").as_str(),
        );
        acks.push(
            js.publish_with_headers(KT_AUDIT, headers, chunk.to_vec().into())
                .await
                .map_err(|e| unavailable("publishing an append-only proof", e))?,
        );
    }
    for ack in acks {
        ack.await
            .map_err(|e| unavailable("publishing an append-only proof", e))?;
    }
    Ok(())
}

/// Everything published: roots by epoch (every hash seen for it) and the
/// append-only proofs' bytes by epoch (complete ones only).
pub(crate) async fn read_public(
    js: &jetstream::Context,
) -> Result<(BTreeMap<u64, Vec<Vec<u8>>>, HashMap<u64, Vec<u8>>), KtError> {
    let what = "reading the published roots and proofs";
    let stream = js
        .get_stream(STREAM_KT_ROOTS)
        .await
        .map_err(|e| unavailable(what, e))?;
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(what, e))?;
    let mut roots: BTreeMap<u64, Vec<Vec<u8>>> = BTreeMap::new();
    let mut parts: HashMap<u64, (usize, BTreeMap<usize, Vec<u8>>)> = HashMap::new();
    // Read up to the last sequence as the stream's leader gave it (in the
    // stream info), not until the consumer says nothing is pending: before
    // nats-server 2.12 an ephemeral consumer may sit on a replica still
    // catching up, which reported the latest root missing in a cluster
    // test after a node came back.
    let last = stream.cached_info().state.last_sequence;
    if last > 0 {
        crate::epoch::read_through(consumer, last, what, |msg| {
            if msg.subject.as_str() == KT_ROOTS {
                let root: Root = ciborium::from_reader(&msg.payload[..])
                    .map_err(|e| unavailable("decoding a root", e))?;
                let seen = roots.entry(root.epoch).or_default();
                if !seen.contains(&root.root) {
                    seen.push(root.root);
                }
            } else if msg.subject.as_str() == KT_AUDIT {
                let header = |name: &str| -> Option<usize> {
                    msg.headers
                        .as_ref()
                        .and_then(|h| h.get(name))
                        .and_then(|v| v.as_str().parse().ok())
                };
                if let (Some(epoch), Some(part), Some(total)) =
                    (header(EPOCH), header(PART), header(PARTS))
                {
                    let entry = parts
                        .entry(epoch as u64)
                        .or_insert_with(|| (total, BTreeMap::new()));
                    entry.1.insert(part, msg.payload.to_vec());
                }
            }
            Ok(())
        })
        .await?;
    }
    let proofs = parts
        .into_iter()
        .filter(|(_, (total, got))| got.len() == *total)
        .map(|(epoch, (_, got))| (epoch, got.into_values().flatten().collect()))
        .collect();
    Ok((roots, proofs))
}

/// Audits the published history from epoch `from` to epoch `to` (each
/// step from an epoch to the next), with read access to
/// `INTEROP_KT_ROOTS` only.
pub async fn audit(js: &jetstream::Context, from: u64, to: u64) -> Result<AuditReport, KtError> {
    let started = Instant::now();
    let (roots, proofs) = read_public(js).await?;
    let mut report = AuditReport::default();
    let root_of = |e: u64, report: &mut AuditReport| -> Option<[u8; 32]> {
        match roots.get(&e).map(Vec::as_slice) {
            Some([one]) => one.as_slice().try_into().ok(),
            Some([]) | None => {
                report.problems.push(AuditProblem::MissingRoot(e));
                None
            }
            Some(_) => {
                report.problems.push(AuditProblem::Fork(e));
                None
            }
        }
    };
    for e in from.max(1)..=to {
        let Some(after) = root_of(e, &mut report) else {
            continue;
        };
        if e == from.max(1) {
            continue;
        }
        let Some(before) = root_of(e - 1, &mut report) else {
            continue;
        };
        let Some(bytes) = proofs.get(&e) else {
            report.problems.push(AuditProblem::MissingProof(e));
            continue;
        };
        report.proof_bytes += bytes.len();
        let single = akd::proto::specs::types::SingleAppendOnlyProof::parse_from_bytes(bytes)
            .map_err(|e| e.to_string())
            .and_then(|p| akd::SingleAppendOnlyProof::try_from(&p).map_err(|e| e.to_string()));
        let result = match single {
            Ok(single) => {
                akd::auditor::verify_consecutive_append_only::<Config>(&single, before, after, e)
                    .await
                    .map_err(|err| err.to_string())
            }
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => report.verified.push(e),
            Err(err) => report.problems.push(AuditProblem::Invalid(e, err)),
        }
    }
    report.problems.dedup();
    report.elapsed = started.elapsed();
    Ok(report)
}
