//! `Transaction` (provider sessions, docs/protocol.md "Provider
//! sessions"): many frames, for any users of the provider, in one
//! WebSocket message, answered with one `TransactionResult`.
//!
//! - Each item is prepared as if it had come alone (`send::prepare`), all
//!   of them concurrently; the one-to-one sends among them share one Redis
//!   round trip (`send::prepare_sends`: every rate check in one script
//!   call, then each send's consent read and idempotency claim, in item
//!   order).
//! - The transaction is published where its frame arrived (a connection's
//!   frames are published in arrival order), its sends in item order,
//!   through the process's publishing task like any send
//!   (`crate::accepted`): handed over one after the other, they leave
//!   together in an `AcceptedBatch` when they arrive while a publish waits
//!   for its ack.
//! - Its answer waits for every item's, and holds them in item order, each
//!   with its item's `request_id`.
//! - `Hello`, `Ack`, `MarkRead` and a nested `Transaction` are refused
//!   `UNSUPPORTED_FRAME`, that item only; an empty transaction is refused
//!   `MISSING_FIELD`, one of more than [`MAX_TRANSACTION_ITEMS`] items
//!   `TOO_LONG` (the whole frame).
//! - The connection's in-flight budget counts a transaction as its items
//!   ([`weight`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tracing::debug;

use interop_proto::limits::MAX_TRANSACTION_ITEMS;
use interop_proto::v1::{
    client_frame, server_frame, ClientFrame, RejectCode, ServerFrame, Transaction,
    TransactionResult,
};

use crate::send::{self, reject, Planned, Prepared};
use crate::validate::Rejection;
use crate::Shared;

/// How many frames `frame` counts as in the connection's in-flight budget
/// (`session::MAX_IN_FLIGHT`): a transaction as its items (one refused for
/// its size as [`MAX_TRANSACTION_ITEMS`]; an empty one as one), any other
/// frame as one.
pub(crate) fn weight(frame: &ClientFrame) -> usize {
    match &frame.frame {
        Some(client_frame::Frame::Transaction(t)) => t.items.len().clamp(1, MAX_TRANSACTION_ITEMS),
        _ => 1,
    }
}

/// Prepares any frame after `Hello`: a transaction here, the others in
/// `send::prepare`.
pub(crate) async fn prepare_frame(
    shared: Arc<Shared>,
    provider: String,
    frame: ClientFrame,
) -> Prepared {
    match frame.frame {
        Some(client_frame::Frame::Transaction(t)) => {
            prepare(&shared, &provider, frame.request_id, t).await
        }
        other => {
            send::prepare(
                shared,
                provider,
                ClientFrame {
                    request_id: frame.request_id,
                    frame: other,
                },
            )
            .await
        }
    }
}

/// The refusal of a whole transaction for its size, if it gets one.
fn size_refusal(items: usize) -> Option<Rejection> {
    if items == 0 {
        return Some(Rejection::new(
            RejectCode::MissingField,
            "transaction.items is empty",
        ));
    }
    (items > MAX_TRANSACTION_ITEMS).then(|| {
        Rejection::new(
            RejectCode::TooLong,
            format!("a transaction holds at most {MAX_TRANSACTION_ITEMS} items, not {items}"),
        )
    })
}

/// The name of a frame a transaction may not hold, if `frame` is one.
fn refused_item(frame: &Option<client_frame::Frame>) -> Option<&'static str> {
    match frame {
        Some(client_frame::Frame::Hello(_)) => Some("Hello"),
        Some(client_frame::Frame::Ack(_)) => Some("Ack"),
        Some(client_frame::Frame::MarkRead(_)) => Some("MarkRead"),
        Some(client_frame::Frame::Transaction(_)) => Some("Transaction"),
        _ => None,
    }
}

type ItemFuture<'a> = Pin<Box<dyn Future<Output = (usize, Prepared)> + Send + 'a>>;

/// Prepares every item of `t` (see the module's documentation).
async fn prepare(
    shared: &Arc<Shared>,
    provider: &str,
    request_id: u64,
    t: Transaction,
) -> Prepared {
    if let Some(r) = size_refusal(t.items.len()) {
        debug!(%provider, code = r.code.as_str_name(), "Rejected a transaction.");
        return reject(request_id, "", r);
    }
    let n = t.items.len();
    let mut answers: Vec<Option<Prepared>> = (0..n).map(|_| None).collect();
    // The one-to-one sends, prepared together, and where each goes.
    let mut plans = Vec::new();
    let mut plan_slots = Vec::new();
    let mut others: Vec<ItemFuture<'_>> = Vec::new();
    for (i, item) in t.items.into_iter().enumerate() {
        let ClientFrame {
            request_id: item_id,
            frame,
        } = item;
        if let Some(name) = refused_item(&frame) {
            answers[i] = Some(reject(
                item_id,
                "",
                Rejection::new(
                    RejectCode::UnsupportedFrame,
                    format!("a transaction cannot hold {name}"),
                ),
            ));
            continue;
        }
        match frame {
            Some(client_frame::Frame::Send(s)) => {
                match send::plan_send(shared, provider, item_id, s.envelope) {
                    Planned::One(plan) => {
                        plans.push(plan);
                        plan_slots.push(i);
                    }
                    Planned::Group(env) => others.push(Box::pin(async move {
                        let p = crate::group::prepare_group_send(shared, provider, item_id, env);
                        (i, p.await)
                    })),
                    Planned::Answer(answer) => answers[i] = Some(answer),
                }
            }
            frame => {
                let p = send::prepare(
                    shared.clone(),
                    provider.to_owned(),
                    ClientFrame {
                        request_id: item_id,
                        frame,
                    },
                );
                others.push(Box::pin(async move { (i, p.await) }));
            }
        }
    }
    let (sends, others) = tokio::join!(
        send::prepare_sends(shared, provider, plans),
        futures_util::future::join_all(others),
    );
    for (i, answer) in plan_slots.into_iter().zip(sends).chain(others) {
        answers[i] = Some(answer);
    }
    Prepared::Transaction {
        request_id,
        items: answers
            .into_iter()
            .map(|a| {
                // Every item was given its answer above.
                a.unwrap_or_else(|| {
                    reject(
                        0,
                        "",
                        Rejection::new(RejectCode::Internal, "item left unanswered"),
                    )
                })
            })
            .collect(),
    }
}

type AnswerFuture = Pin<Box<dyn Future<Output = ServerFrame> + Send>>;

/// Publishes a prepared transaction's sends, in item order, now (the
/// caller calls this where the transaction's frame arrived, see
/// `send::publish`), and returns its answer: one `TransactionResult` once
/// every item is answered.
pub(crate) async fn publish(
    shared: Arc<Shared>,
    request_id: u64,
    items: Vec<Prepared>,
) -> impl Future<Output = ServerFrame> + Send {
    let mut answers: Vec<AnswerFuture> = Vec::with_capacity(items.len());
    for item in items {
        match item {
            Prepared::Answer(frame) => answers.push(Box::pin(std::future::ready(*frame))),
            Prepared::Publish(p) => answers.push(Box::pin(send::publish(shared.clone(), p).await)),
            // `prepare` refuses nested transactions.
            Prepared::Transaction { request_id, .. } => {
                answers.push(Box::pin(std::future::ready(interop_edge::ws::rejected(
                    request_id,
                    "",
                    RejectCode::UnsupportedFrame,
                    "a transaction cannot hold Transaction",
                    0,
                ))))
            }
        }
    }
    async move {
        ServerFrame {
            request_id,
            frame: Some(server_frame::Frame::TransactionResult(TransactionResult {
                results: futures_util::future::join_all(answers).await,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::v1::{Ack, GetConsent, Hello, MarkRead, Send};

    fn tx(n: usize) -> ClientFrame {
        ClientFrame {
            request_id: 9,
            frame: Some(client_frame::Frame::Transaction(Transaction {
                items: (0..n)
                    .map(|i| ClientFrame {
                        request_id: i as u64,
                        frame: Some(client_frame::Frame::Send(Send::default())),
                    })
                    .collect(),
            })),
        }
    }

    #[test]
    fn a_transaction_weighs_its_items_in_the_in_flight_budget() {
        assert_eq!(weight(&tx(256)), 256);
        assert_eq!(weight(&tx(3)), 3);
        // Refused at once, but still read: at least one, at most the limit.
        assert_eq!(weight(&tx(0)), 1);
        assert_eq!(weight(&tx(10_000)), MAX_TRANSACTION_ITEMS);
        let send = ClientFrame {
            request_id: 1,
            frame: Some(client_frame::Frame::Send(Send::default())),
        };
        assert_eq!(weight(&send), 1);
        assert_eq!(weight(&ClientFrame::default()), 1);
    }

    #[test]
    fn empty_and_oversized_transactions_are_refused_whole() {
        assert_eq!(
            size_refusal(0).map(|r| r.code),
            Some(RejectCode::MissingField)
        );
        assert!(size_refusal(1).is_none());
        assert!(size_refusal(MAX_TRANSACTION_ITEMS).is_none());
        assert_eq!(
            size_refusal(MAX_TRANSACTION_ITEMS + 1).map(|r| r.code),
            Some(RejectCode::TooLong)
        );
    }

    #[test]
    fn session_and_delivery_frames_and_transactions_are_no_items() {
        use client_frame::Frame;
        assert_eq!(
            refused_item(&Some(Frame::Hello(Hello::default()))),
            Some("Hello")
        );
        assert_eq!(refused_item(&Some(Frame::Ack(Ack::default()))), Some("Ack"));
        assert_eq!(
            refused_item(&Some(Frame::MarkRead(MarkRead::default()))),
            Some("MarkRead")
        );
        assert_eq!(
            refused_item(&Some(Frame::Transaction(Transaction::default()))),
            Some("Transaction")
        );
        assert_eq!(refused_item(&Some(Frame::Send(Send::default()))), None);
        assert_eq!(
            refused_item(&Some(Frame::GetConsent(GetConsent::default()))),
            None
        );
        // No frame at all is the item's own error (MALFORMED_FRAME), as alone.
        assert_eq!(refused_item(&None), None);
    }
}
