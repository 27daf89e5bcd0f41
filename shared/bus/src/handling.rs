//! What a stage's handler gives back: the messages it wants published, or
//! why it could not finish. Its own module so that the pipeline helpers
//! (`pipeline.rs`) need not import the stage loop (`stage.rs`): imports
//! between those two go one way only, stage to pipeline (issue 24).

use std::time::Duration;

use bytes::Bytes;

/// One message a handler wants published.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    /// Deduplication id (`Nats-Msg-Id`); derive it from the input so a
    /// redelivered input publishes the same id.
    pub msg_id: String,
    pub payload: Bytes,
    /// The W3C trace context (`traceparent`, `tracestate`) to publish it
    /// with; `None`: the stage's span for the input. A handler that takes
    /// several messages in one input (an ingest batch) sets each output's
    /// own, so each message stays one trace.
    pub trace: Option<std::collections::HashMap<String, String>>,
}

/// Why a handler could not finish a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// This message could not be handled now (a call made for it failed):
    /// it is tried again, in place, and if it keeps failing while other
    /// messages pass it is let go and redelivered after `after`
    /// (`stage::HOLD_FOR`).
    #[error("retry later: {reason}")]
    Retry { reason: String, after: Duration },
    /// A dependency every message of its kind needs does not answer (Redis
    /// unreachable, timing out or loading its data; spam-scoring silent;
    /// the user-state stream unreadable): everybody's failure, not the
    /// message's. It is tried again in place for as long as the outage
    /// lasts: messages of other kinds that pass meanwhile (receipts need no
    /// Redis) say nothing about this one, and letting it go would put it
    /// behind its sender's later messages. See `stage::HOLD_FOR` for when
    /// it is let go all the same.
    #[error("dependency unavailable: {reason}")]
    Unavailable { reason: String, after: Duration },
    /// The message can never be handled (e.g. it does not decode): it is
    /// terminated and logged as dead-lettered.
    #[error("permanent failure: {0}")]
    Permanent(String),
}

impl HandleError {
    /// The delay a retry asks for; `None` for a permanent failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Retry { after, .. } | Self::Unavailable { after, .. } => Some(*after),
            Self::Permanent(_) => None,
        }
    }

    /// Whether the message is to be tried again (either kind of retry).
    pub fn is_retry(&self) -> bool {
        self.retry_after().is_some()
    }
}
