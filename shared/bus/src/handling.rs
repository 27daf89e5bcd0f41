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
    /// A dependency is down or slow: the message is redelivered after `after`.
    #[error("retry later: {reason}")]
    Retry { reason: String, after: Duration },
    /// The message can never be handled (e.g. it does not decode): it is
    /// terminated and logged as dead-lettered.
    #[error("permanent failure: {0}")]
    Permanent(String),
}
