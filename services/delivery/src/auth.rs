//! The `Hello` check of a delivery session (the edge checks shared with
//! ingest: throttle, registry with tokens or client certificates, connection
//! cap; see `interop_edge`).

use tokio::sync::mpsc;
use tracing::debug;

use interop_edge::tls::Peer;
use interop_edge::ws::{self, Outbound};
use interop_edge::Admitted;
use interop_proto::v1::Hello;

use crate::Shared;

/// Authenticates `hello` from `peer`; on refusal answers it, closes, and
/// returns `None`.
pub(crate) async fn admit(
    shared: &Shared,
    peer: &Peer,
    request_id: u64,
    hello: &Hello,
    out: &mpsc::Sender<Outbound>,
) -> Option<Admitted> {
    let registry = shared.providers.borrow().clone();
    match shared.edge.admit(&registry, peer, hello).await {
        Ok(a) => Some(a),
        Err(refusal) => {
            debug!(code = ?refusal.code, "Hello refused.");
            ws::refuse(out, request_id, &refusal).await;
            None
        }
    }
}
