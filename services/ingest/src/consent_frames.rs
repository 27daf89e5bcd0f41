//! The consent and message-request frames (docs/protocol.md, docs/spam.md).
//! Each is answered right away; none is published.
//!
//! - `SetConsent{user, opted_in, allowed_providers, inbox}` → writes
//!   `interop:consent:<user>`, answers `ConsentUpdated`.
//! - `RespondToRequest{user, sender, action}` → writes the user's answer
//!   about `sender` in `interop:contacts:<user>`; DECLINE, BLOCK and REPORT
//!   also feed the sender's and the sender's provider's reputation (once per
//!   recipient, sender and kind per 28 days); answers `RequestResponded`.
//! - `GetConsent{user}` → answers `ConsentState` (settings, blocked and
//!   declined senders).
//!
//! Only the user's own provider may send them (`SENDER_NOT_OWNED`).
//!
//! `SetConsent` and `RespondToRequest` announce the change to the user's
//! delivery sessions before they answer (docs/adr/0018); when the
//! announcement cannot be sent they answer `UNAVAILABLE`, and the retry
//! (the writes are idempotent) announces it again.

use tracing::{debug, warn};

use interop_proto::v1::{
    server_frame, ConsentState, ConsentUpdated, GetConsent, Inbox, RejectCode, RequestAction,
    RequestResponded, RespondToRequest, SetConsent,
};
use interop_state::contacts::{ContactState, ContactStore, SetOutcome, MAX_CONTACTS};
use interop_state::reputation::{self, Feedback};
use interop_state::{Consent, ConsentStore};

use crate::send::{answer, reject, Prepared};
use crate::validate::{validate_consent, validate_own_user, validate_respond, Rejection};
use crate::Shared;

/// Retry advice when Redis is down.
const UNAVAILABLE_RETRY_MS: u32 = 1000;

fn unavailable(request_id: u64, e: &dyn std::fmt::Display) -> Prepared {
    warn!(error = %e, "Cannot reach the consent registry.");
    reject(
        request_id,
        "",
        Rejection::retryable(
            RejectCode::Unavailable,
            "the consent registry is unavailable; retry",
            UNAVAILABLE_RETRY_MS,
        ),
    )
}

/// `SetConsent`.
pub(crate) async fn set_consent(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    sc: SetConsent,
) -> Prepared {
    let user = match validate_consent(provider, &sc) {
        Ok(u) => u,
        Err(r) => return reject(request_id, "", r),
    };
    let record = Consent {
        opted_in: sc.opted_in,
        allowed_providers: sc.allowed_providers.clone(),
        combined_inbox: sc.inbox == Inbox::Combined as i32,
    };
    match ConsentStore::new(shared.records.clone())
        .set(user.as_str(), &record)
        .await
    {
        Ok(()) => {
            if let Err(e) =
                interop_bus::admissions::announce(&shared.js.client(), user.as_str()).await
            {
                return unavailable(request_id, &e);
            }
            debug!(user = %user.redacted(), opted_in = sc.opted_in, "Consent updated.");
            answer(
                request_id,
                server_frame::Frame::ConsentUpdated(ConsentUpdated {
                    user: sc.user,
                    opted_in: sc.opted_in,
                    allowed_providers: sc.allowed_providers,
                    inbox: record.inbox() as i32,
                }),
            )
        }
        Err(e) => unavailable(request_id, &e),
    }
}

/// `RespondToRequest`.
pub(crate) async fn respond_to_request(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    r: RespondToRequest,
) -> Prepared {
    let (user, sender, action) = match validate_respond(provider, &r) {
        Ok(v) => v,
        Err(rej) => return reject(request_id, "", rej),
    };
    let contacts = ContactStore::new(shared.records.clone());
    let (state, feedback) = match action {
        RequestAction::Accept => (Some(ContactState::Accepted), None),
        RequestAction::Decline => (Some(ContactState::Declined), Some(Feedback::Decline)),
        RequestAction::Block => (Some(ContactState::Blocked), Some(Feedback::Block)),
        RequestAction::Report => (Some(ContactState::Blocked), Some(Feedback::Report)),
        // validate_respond refuses UNSPECIFIED.
        RequestAction::Reset | RequestAction::Unspecified => (None, None),
    };
    let stored = match state {
        Some(state) => contacts
            .set(user.as_str(), sender.as_str(), state)
            .await
            .map(|o| o != SetOutcome::Full),
        None => contacts
            .reset(user.as_str(), sender.as_str())
            .await
            .map(|()| true),
    };
    match stored {
        Ok(true) => {}
        Ok(false) => {
            return reject(
                request_id,
                "",
                Rejection::new(
                    RejectCode::ListFull,
                    format!("the user's contact record holds {MAX_CONTACTS} senders already"),
                ),
            )
        }
        Err(e) => return unavailable(request_id, &e),
    }
    if let Err(e) = interop_bus::admissions::announce(&shared.js.client(), user.as_str()).await {
        return unavailable(request_id, &e);
    }
    if let Some(feedback) = feedback {
        if let Err(e) = reputation::record(
            &shared.redis,
            user.as_str(),
            sender.as_str(),
            sender.provider(),
            feedback,
        )
        .await
        {
            return unavailable(request_id, &e);
        }
    }
    debug!(
        user = %user.redacted(),
        action = action.as_str_name(),
        "A message request was answered."
    );
    answer(
        request_id,
        server_frame::Frame::RequestResponded(RequestResponded {
            user: r.user,
            sender: r.sender,
            action: action as i32,
        }),
    )
}

/// `GetConsent`.
pub(crate) async fn get_consent(
    shared: &Shared,
    provider: &str,
    request_id: u64,
    g: GetConsent,
) -> Prepared {
    let user = match validate_own_user(provider, &g.user) {
        Ok(u) => u,
        Err(r) => return reject(request_id, "", r),
    };
    let consent = match ConsentStore::new(shared.records.clone())
        .get(user.as_str())
        .await
    {
        Ok(c) => c,
        Err(e) => return unavailable(request_id, &e),
    };
    let list = match ContactStore::new(shared.records.clone())
        .list(user.as_str())
        .await
    {
        Ok(l) => l,
        Err(e) => return unavailable(request_id, &e),
    };
    let pick = |want: ContactState| -> Vec<String> {
        list.iter()
            .filter(|(_, s)| *s == want)
            .map(|(a, _)| a.clone())
            .collect()
    };
    answer(
        request_id,
        server_frame::Frame::ConsentState(ConsentState {
            user: g.user,
            opted_in: consent.opted_in,
            inbox: consent.inbox() as i32,
            allowed_providers: consent.allowed_providers.clone(),
            blocked: pick(ContactState::Blocked),
            declined: pick(ContactState::Declined),
        }),
    )
}
