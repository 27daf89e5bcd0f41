//! The router and its per-recipient decision: where one message goes for
//! one recipient ([`Placement`], [`place`], [`Router::admit`]). Both the
//! handler of `interop.v1.ingest.accepted` (`handler.rs`) and the group
//! fan-out (`group.rs`) use it; it uses neither, so imports between those
//! files go one way only (handler to group; issue 24).

use std::time::Duration;

use interop_bus::HandleError;
use interop_proto::v1::{Inbox, Verdict};
use interop_state::{Admission, ContactStore, Refusal, StateError};
use interop_telemetry::metrics::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Where one message goes for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Not delivered; the sender gets FAILED with `RECIPIENT_UNAVAILABLE`.
    Refuse(Refusal),
    /// Not delivered; the sender gets FAILED with `SPAM`.
    RejectAsSpam,
    /// Held in the quarantine stream, in no inbox; no receipt.
    Quarantine,
    /// Into the recipient's store, filed in this inbox.
    Deliver(Inbox),
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Self::Refuse(r) => r.as_str(),
            Self::RejectAsSpam => "spam",
            Self::Quarantine => "quarantine",
            Self::Deliver(Inbox::Requests) => "requests",
            Self::Deliver(_) => "inbox",
        }
    }
}

/// The pure rule: consent and the recipient's answers first (a blocked
/// sender is refused whatever their score), then the verdict: REJECT
/// refuses, QUARANTINE holds, REQUEST files even an accepted sender's
/// message as a request, ALLOW leaves the admission as it is.
pub fn place(admission: Admission, verdict: Verdict) -> Placement {
    match admission.under(verdict) {
        Admission::Refused(r) => Placement::Refuse(r),
        Admission::Request | Admission::Inbox(_) if verdict == Verdict::Reject => {
            Placement::RejectAsSpam
        }
        Admission::Request | Admission::Inbox(_) if verdict == Verdict::Quarantine => {
            Placement::Quarantine
        }
        Admission::Request => Placement::Deliver(Inbox::Requests),
        Admission::Inbox(inbox) => Placement::Deliver(inbox),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PlacementLabel {
    pub(crate) placement: &'static str,
}

pub struct Router {
    pub(crate) scorer: crate::score::ScoreClient,
    pub(crate) contacts: ContactStore,
    /// Admissions of concurrent handlers, made together: one Redis round
    /// trip for what is asked while one is in flight (issue 22).
    pub(crate) admissions: interop_state::contacts::AdmissionBatcher,
    pub(crate) placements: Family<PlacementLabel, Counter>,
    pub(crate) groups: interop_state::GroupStore,
    /// Announces implicit acceptances to the accepting user's sessions.
    pub(crate) nats: async_nats::Client,
    /// The stage's `interop_routing_dead_lettered_total`, for a message of a
    /// batch that can never be routed (the batch itself is acked).
    pub(crate) dead_lettered: Counter,
}

impl Router {
    pub fn new(
        records: interop_state::Records,
        nats: async_nats::Client,
        scorer: crate::score::ScoreClient,
        metrics: &Metrics,
        dead_lettered: Counter,
    ) -> Self {
        let placements = Family::<PlacementLabel, Counter>::default();
        metrics.register(
            "interop_routing_placements",
            "Where routed messages went, by placement (inbox, requests, quarantine, spam, or why refused).",
            placements.clone(),
        );
        Self {
            scorer,
            groups: interop_state::GroupStore::new(records.clone()),
            admissions: interop_state::contacts::AdmissionBatcher::new(ContactStore::new(
                records.clone(),
            )),
            contacts: ContactStore::new(records),
            placements,
            nats,
            dead_lettered,
        }
    }

    /// The per-recipient admission path, for 1:1 messages and for each
    /// member of a group: may a message from `sender` (a user of
    /// `sender_provider`) with this spam `verdict` reach `recipient`, and
    /// where? The consent record and the contact record, read in one
    /// Redis round trip with the admissions other handlers ask meanwhile.
    pub async fn admit(
        &self,
        recipient: &str,
        sender: &str,
        sender_provider: &str,
        verdict: Verdict,
    ) -> Result<Placement, StateError> {
        let (admission, _) = self
            .admissions
            .admit(interop_state::contacts::AdmissionAsk {
                recipient: recipient.to_owned(),
                sender: sender.to_owned(),
                sender_provider: sender_provider.to_owned(),
                reply_state: false,
            })
            .await?;
        Ok(self.place_counted(admission, verdict))
    }

    /// [`place`], counted in `interop_routing_placements_total`.
    pub(crate) fn place_counted(&self, admission: Admission, verdict: Verdict) -> Placement {
        let placement = place(admission, verdict);
        self.placements
            .get_or_create(&PlacementLabel {
                placement: placement.label(),
            })
            .inc();
        placement
    }
}

/// A state failure as the stage sees it: an outage of Redis or the
/// user-state stream is everybody's ([`HandleError::Unavailable`]: the
/// message keeps its place however long it lasts), anything else this
/// message's own.
pub(crate) fn retry(e: StateError) -> HandleError {
    let reason = e.to_string();
    let after = Duration::from_millis(500);
    if e.is_unavailable() {
        HandleError::Unavailable { reason, after }
    } else {
        HandleError::Retry { reason, after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_win_then_the_verdict_then_the_admission() {
        let blocked = Admission::Refused(Refusal::Blocked);
        assert_eq!(
            place(blocked, Verdict::Allow),
            Placement::Refuse(Refusal::Blocked)
        );
        assert_eq!(
            place(blocked, Verdict::Reject),
            Placement::Refuse(Refusal::Blocked)
        );
        let accepted = Admission::Inbox(Inbox::Combined);
        assert_eq!(
            place(accepted, Verdict::Allow),
            Placement::Deliver(Inbox::Combined)
        );
        assert_eq!(
            place(accepted, Verdict::Request),
            Placement::Deliver(Inbox::Requests)
        );
        assert_eq!(place(accepted, Verdict::Quarantine), Placement::Quarantine);
        assert_eq!(place(accepted, Verdict::Reject), Placement::RejectAsSpam);
        assert_eq!(
            place(Admission::Request, Verdict::Allow),
            Placement::Deliver(Inbox::Requests)
        );
        assert_eq!(
            place(Admission::Request, Verdict::Quarantine),
            Placement::Quarantine
        );
        assert_eq!(
            place(Admission::Request, Verdict::Unspecified),
            Placement::Deliver(Inbox::Requests)
        );
    }
}
