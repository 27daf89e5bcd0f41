//! Transactions (provider sessions, docs/protocol.md "Provider sessions"):
//! many ingest frames, for any users of the provider, in one WebSocket
//! message, answered with one answer per item.
//!
//! ```no_run
//! # async fn demo() -> Result<(), interop_client::ClientError> {
//! use interop_client::transaction::{send_item, TransactionOutcome};
//! use interop_client::{text_envelope, Sender};
//! let sender = Sender::connect("ws://127.0.0.1:8080/v1/ws", "signal", "signal-token").await?;
//! let items = vec![
//!     send_item(1, text_envelope("c-1", "signal:alice", "home:+4915112345678", "hi")),
//!     send_item(2, text_envelope("c-2", "signal:bob", "home:+4915112345678", "hello")),
//! ];
//! match sender.transact(items).await? {
//!     TransactionOutcome::Answered(answers) => { /* one per item, in order */ }
//!     TransactionOutcome::Rejected(r) => { /* empty, or too many items */ }
//! }
//! # Ok(()) }
//! ```

use interop_proto::v1::{
    client_frame, server_frame, ClientFrame, Envelope, GetConsent, Inbox, Rejected, Send,
    ServerFrame, SetConsent, Transaction,
};

use crate::{ClientError, SendOutcome, Sender};

/// The answer to a [`Sender::transact`].
#[derive(Debug, Clone, PartialEq)]
pub enum TransactionOutcome {
    /// One answer per item, in item order, each with its item's
    /// `request_id` (`Accepted` or `Rejected` for a send, `ConsentUpdated`
    /// for a consent change, ...): an item's refusal leaves the others.
    Answered(Vec<ServerFrame>),
    /// The whole transaction was refused: `MISSING_FIELD` when it is
    /// empty, `TOO_LONG` over [`Sender::max_transaction_items`].
    Rejected(Rejected),
}

/// A `Send` item.
pub fn send_item(request_id: u64, envelope: Envelope) -> ClientFrame {
    ClientFrame {
        request_id,
        frame: Some(client_frame::Frame::Send(Send {
            envelope: Some(envelope),
        })),
    }
}

/// A `SetConsent` item (as [`Sender::set_consent_with`]).
pub fn set_consent_item(
    request_id: u64,
    user: &str,
    opted_in: bool,
    allowed_providers: &[&str],
    inbox: Inbox,
) -> ClientFrame {
    ClientFrame {
        request_id,
        frame: Some(client_frame::Frame::SetConsent(SetConsent {
            user: user.to_owned(),
            opted_in,
            allowed_providers: allowed_providers.iter().map(|s| (*s).to_owned()).collect(),
            inbox: inbox as i32,
        })),
    }
}

/// A `GetConsent` item.
pub fn get_consent_item(request_id: u64, user: &str) -> ClientFrame {
    ClientFrame {
        request_id,
        frame: Some(client_frame::Frame::GetConsent(GetConsent {
            user: user.to_owned(),
        })),
    }
}

/// A send's answer in a transaction: `Accepted` or `Rejected`.
pub fn send_outcome(answer: ServerFrame) -> Result<SendOutcome, ClientError> {
    crate::send_outcome(answer)
}

/// `items` split into transactions of at most `max` items (at least one),
/// in order.
pub fn split<T>(items: Vec<T>, max: usize) -> Vec<Vec<T>> {
    let max = max.max(1);
    let mut out: Vec<Vec<T>> = Vec::with_capacity(items.len().div_ceil(max));
    for item in items {
        match out.last_mut() {
            Some(last) if last.len() < max => last.push(item),
            _ => out.push(vec![item]),
        }
    }
    out
}

/// The answer to a transaction of `items` items whose request ids are
/// `request_ids`, checked: one answer per item, in order.
fn outcome(request_ids: &[u64], answer: ServerFrame) -> Result<TransactionOutcome, ClientError> {
    match answer.frame {
        Some(server_frame::Frame::TransactionResult(t)) => {
            let echoed: Vec<u64> = t.results.iter().map(|r| r.request_id).collect();
            if echoed != request_ids {
                return Err(ClientError::Protocol(format!(
                    "a transaction of {} items answered with {} answers, request ids {echoed:?}",
                    request_ids.len(),
                    t.results.len()
                )));
            }
            Ok(TransactionOutcome::Answered(t.results))
        }
        Some(server_frame::Frame::Rejected(r)) => Ok(TransactionOutcome::Rejected(r)),
        other => Err(ClientError::Protocol(format!(
            "unexpected answer to Transaction: {other:?}"
        ))),
    }
}

impl Sender {
    /// Most items the gateway takes in one transaction (its `Welcome`); 0
    /// when it takes none.
    pub fn max_transaction_items(&self) -> usize {
        self.welcome().max_transaction_items as usize
    }

    /// Sends `items` as one transaction and waits for the answer: one per
    /// item, in item order (see [`TransactionOutcome`]). Items keep the
    /// `request_id`s they have (each answer echoes its item's; they are
    /// not matched against other requests). The gateway handles them as
    /// if they had come one after another: sends are stored in item order.
    ///
    /// Unlike [`Sender::submit`], a transaction is not kept for
    /// [`Sender::reconnect`]: if the connection ends first this fails with
    /// [`ClientError::Closed`], and sending the same items again is safe
    /// (a send already accepted is answered `duplicate: true` with its
    /// first `message_id`).
    pub async fn transact(
        &self,
        items: Vec<ClientFrame>,
    ) -> Result<TransactionOutcome, ClientError> {
        let request_ids: Vec<u64> = items.iter().map(|i| i.request_id).collect();
        let answer = self
            .request(client_frame::Frame::Transaction(Transaction { items }))
            .await?;
        outcome(&request_ids, answer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_proto::v1::{Accepted, RejectCode, TransactionResult};

    #[test]
    fn items_split_into_transactions_of_at_most_max_in_order() {
        let items: Vec<u32> = (0..600).collect();
        let txs = split(items, 256);
        assert_eq!(txs.iter().map(Vec::len).collect::<Vec<_>>(), [256, 256, 88]);
        assert_eq!(txs.concat(), (0..600).collect::<Vec<_>>());
        assert!(split(Vec::<u32>::new(), 256).is_empty());
        assert_eq!(split(vec![1, 2, 3], 0), [[1], [2], [3]], "at least one");
    }

    fn accepted(request_id: u64) -> ServerFrame {
        ServerFrame {
            request_id,
            frame: Some(server_frame::Frame::Accepted(Accepted::default())),
        }
    }

    #[test]
    fn an_answer_must_hold_one_frame_per_item_in_order() {
        let result = |ids: &[u64]| ServerFrame {
            request_id: 9,
            frame: Some(server_frame::Frame::TransactionResult(TransactionResult {
                results: ids.iter().map(|i| accepted(*i)).collect(),
            })),
        };
        assert!(matches!(
            outcome(&[1, 2], result(&[1, 2])),
            Ok(TransactionOutcome::Answered(a)) if a.len() == 2
        ));
        assert!(matches!(
            outcome(&[1, 2], result(&[1])),
            Err(ClientError::Protocol(_))
        ));
        assert!(matches!(
            outcome(&[1, 2], result(&[2, 1])),
            Err(ClientError::Protocol(_))
        ));
        let refused = ServerFrame {
            request_id: 9,
            frame: Some(server_frame::Frame::Rejected(Rejected {
                code: RejectCode::TooLong as i32,
                ..Default::default()
            })),
        };
        assert!(matches!(
            outcome(&[1], refused),
            Ok(TransactionOutcome::Rejected(r)) if r.code() == RejectCode::TooLong
        ));
        assert!(matches!(
            outcome(&[1], accepted(9)),
            Err(ClientError::Protocol(_))
        ));
    }
}
