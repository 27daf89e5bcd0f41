//! What both provider endpoints (ingest and delivery) check when a `Hello`
//! arrives, beyond the registry itself:
//!
//! - **Credential guessing is throttled.** Failed `Hello`s are counted in
//!   Redis (so across every ingest and delivery replica) per peer address and
//!   per provider id, in fixed windows. Past the per-address limit, every
//!   `Hello` from that address is answered `RATE_LIMITED` (with
//!   `retry_after_ms`, the rest of the window) *before* its token is checked,
//!   so guesses stop being answered. Past the per-provider limit, a token
//!   `Hello` for that provider is refused the same way, except from an
//!   address that authenticated as that provider within the last
//!   [`KNOWN_ADDRESS_TTL`] or over a connection presenting one of its client
//!   certificates: an attacker guessing a provider's tokens from many
//!   addresses cannot lock the real provider out of the places it already
//!   connects from. See docs/security.md.
//! - **Connections per provider are capped** on each replica: past the cap a
//!   `Hello` gets `TOO_MANY_CONNECTIONS`.
//!
//! If Redis does not answer within [`REDIS_TIMEOUT`] the throttle lets the
//! `Hello` through to the token check (tokens are 256-bit random secrets:
//! the throttle is defence in depth, not what keeps them secret) and says so
//! in a warning.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use interop_proto::v1::{Hello, RejectCode};
use interop_providers::{AuthError, Registry};
use interop_state::keys;

use crate::tls::Peer;

/// How long an address that authenticated as a provider keeps passing that
/// provider's failure throttle.
pub const KNOWN_ADDRESS_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the throttle waits for Redis before failing open.
pub const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Flags of the `Hello` checks, shared by ingest and delivery.
#[derive(Debug, Clone, clap::Args)]
pub struct EdgeArgs {
    /// Open connections one provider may have to this replica (default:
    /// 1,000 on ingest, 50,000 on delivery).
    #[arg(long, env = "INTEROP_MAX_CONNECTIONS_PER_PROVIDER")]
    pub max_connections_per_provider: Option<usize>,
    #[command(flatten)]
    pub auth: AuthThrottleArgs,
}

/// Flags of the failed-authentication throttle (ingest, delivery and the
/// media API).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthThrottleArgs {
    /// Failed authentications from one address per window before that
    /// address is refused (0: off, e.g. when every client arrives through
    /// one proxy).
    #[arg(
        long,
        env = "INTEROP_AUTH_MAX_FAILURES_PER_ADDRESS",
        default_value_t = 20
    )]
    pub auth_max_failures_per_address: u32,
    /// Failed authentications for one provider id per window before token
    /// authentications for it are refused from addresses it has not
    /// authenticated from.
    #[arg(
        long,
        env = "INTEROP_AUTH_MAX_FAILURES_PER_PROVIDER",
        default_value_t = 100
    )]
    pub auth_max_failures_per_provider: u32,
    /// Length of the failure-counting window, in seconds.
    #[arg(long, env = "INTEROP_AUTH_FAILURE_WINDOW_SECS", default_value_t = 60)]
    pub auth_failure_window_secs: u64,
}

impl EdgeArgs {
    /// The limits, with `default_connections` when the flag is not given.
    pub fn limits(
        &self,
        default_connections: usize,
    ) -> Result<EdgeLimits, interop_service::ConfigError> {
        let max_connections_per_provider = self
            .max_connections_per_provider
            .unwrap_or(default_connections);
        if max_connections_per_provider == 0 {
            return Err(interop_service::ConfigError(
                "--max-connections-per-provider must be positive".into(),
            ));
        }
        self.auth.limits(max_connections_per_provider)
    }
}

impl AuthThrottleArgs {
    /// The limits, with this connection cap.
    pub fn limits(
        &self,
        max_connections_per_provider: usize,
    ) -> Result<EdgeLimits, interop_service::ConfigError> {
        if self.auth_failure_window_secs == 0 {
            return Err(interop_service::ConfigError(
                "--auth-failure-window-secs must be positive".into(),
            ));
        }
        Ok(EdgeLimits {
            max_connections_per_provider,
            auth_max_failures_per_address: self.auth_max_failures_per_address,
            auth_max_failures_per_provider: self.auth_max_failures_per_provider,
            auth_failure_window: Duration::from_secs(self.auth_failure_window_secs),
        })
    }
}

/// The limits [`EdgeGuard`] enforces.
#[derive(Debug, Clone, Copy)]
pub struct EdgeLimits {
    pub max_connections_per_provider: usize,
    /// 0: no per-address throttle.
    pub auth_max_failures_per_address: u32,
    /// 0: no per-provider throttle.
    pub auth_max_failures_per_provider: u32,
    pub auth_failure_window: Duration,
}

impl EdgeLimits {
    /// The defaults, with this many connections per provider.
    pub fn with_connections(max_connections_per_provider: usize) -> Self {
        Self {
            max_connections_per_provider,
            auth_max_failures_per_address: 20,
            auth_max_failures_per_provider: 100,
            auth_failure_window: Duration::from_secs(60),
        }
    }
}

/// Why a `Hello` was refused: the `Rejected` to answer with (then close).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: RejectCode,
    pub detail: &'static str,
    pub retry_after_ms: u32,
}

/// A successful `Hello`: who it is, and its place among the provider's
/// connections (freed when dropped).
#[derive(Debug)]
pub struct Admitted {
    pub provider: String,
    /// The credential id that matched (a token's, or `cert-…`).
    pub credential: String,
    pub slot: ConnectionSlot,
}

/// One open connection of a provider; dropping it frees the place.
#[derive(Debug)]
pub struct ConnectionSlot {
    provider: String,
    counts: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // A poisoned lock only means another thread panicked mid-update; the
        // map is still usable.
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(&self.provider) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.provider);
            }
        }
    }
}

/// Checks `Hello`s: throttle, registry, connection cap.
#[derive(Clone)]
pub struct EdgeGuard {
    redis: redis::aio::ConnectionManager,
    limits: EdgeLimits,
    counts: Arc<Mutex<HashMap<String, usize>>>,
    /// Authentications checked without the failure throttle because Redis
    /// did not answer (the throttle fails open; docs/security.md).
    throttle_unavailable: prometheus_client::metrics::counter::Counter,
}

impl EdgeGuard {
    pub fn new(redis: redis::aio::ConnectionManager, limits: EdgeLimits) -> Self {
        Self {
            redis,
            limits,
            counts: Arc::default(),
            throttle_unavailable: Default::default(),
        }
    }

    /// Registers the guard's counter as
    /// `interop_<service>_auth_throttle_unavailable_total`.
    pub fn register_metrics(&self, metrics: &interop_service::Metrics, service: &str) {
        metrics.register(
            &format!("interop_{}_auth_throttle_unavailable", service.replace('-', "_")),
            "Authentications checked without the failed-authentication throttle because Redis did not answer (it fails open; alert on a steady rate).",
            self.throttle_unavailable.clone(),
        );
    }

    pub fn limits(&self) -> EdgeLimits {
        self.limits
    }

    /// Open connections of `provider` on this replica.
    pub fn connections(&self, provider: &str) -> usize {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(provider).copied().unwrap_or(0)
    }

    /// Checks a `Hello` from `peer` against the throttle, the registry and
    /// the connection cap.
    pub async fn admit(
        &self,
        registry: &Registry,
        peer: &Peer,
        hello: &Hello,
    ) -> Result<Admitted, Refusal> {
        let ip = peer.addr.ip();
        let provider_exists = registry.get(&hello.provider).is_some();
        let cert_is_providers = peer
            .client_cert_sha256
            .as_deref()
            .and_then(|c| registry.cert_owner(c))
            .is_some_and(|owner| owner == hello.provider);
        if let Some(refusal) = self
            .throttled(ip, &hello.provider, provider_exists, cert_is_providers)
            .await
        {
            return Err(refusal);
        }
        let result = registry
            .authenticate_hello(
                &hello.provider,
                &hello.token,
                peer.client_cert_sha256.as_deref(),
            )
            .map(|(p, credential)| (p.id.clone(), credential));
        let (provider, credential) = match result {
            Ok(ok) => ok,
            Err(e) => {
                self.count_failure(ip, &hello.provider, provider_exists)
                    .await;
                let detail = match e {
                    AuthError::Failed => "unknown provider or wrong token",
                    AuthError::CertOfOtherProvider => {
                        "the client certificate belongs to another provider"
                    }
                    AuthError::CertRequired => "this provider must present its client certificate",
                };
                return Err(Refusal {
                    code: RejectCode::AuthFailed,
                    detail,
                    retry_after_ms: 0,
                });
            }
        };
        self.remember(&provider, ip).await;
        let slot = {
            let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            let n = counts.entry(provider.clone()).or_insert(0);
            if *n >= self.limits.max_connections_per_provider {
                return Err(Refusal {
                    code: RejectCode::TooManyConnections,
                    detail: "the provider has as many connections open as it may",
                    retry_after_ms: 1000,
                });
            }
            *n += 1;
            ConnectionSlot {
                provider: provider.clone(),
                counts: self.counts.clone(),
            }
        };
        Ok(Admitted {
            provider,
            credential,
            slot,
        })
    }

    /// The throttle and token check of an HTTP request (the media API): like
    /// [`EdgeGuard::admit`] without client certificates or a connection slot.
    pub async fn check_token(
        &self,
        registry: &Registry,
        ip: IpAddr,
        provider: &str,
        token: &str,
    ) -> Result<(), Refusal> {
        let provider_exists = registry.get(provider).is_some();
        if let Some(refusal) = self.throttled(ip, provider, provider_exists, false).await {
            return Err(refusal);
        }
        if registry.authenticate(provider, token).is_none() {
            self.count_failure(ip, provider, provider_exists).await;
            return Err(Refusal {
                code: RejectCode::AuthFailed,
                detail: "unknown provider or wrong token",
                retry_after_ms: 0,
            });
        }
        self.remember(provider, ip).await;
        Ok(())
    }

    async fn throttled(
        &self,
        ip: IpAddr,
        provider: &str,
        provider_exists: bool,
        cert_is_providers: bool,
    ) -> Option<Refusal> {
        let l = self.limits;
        let check_addr = l.auth_max_failures_per_address > 0;
        let check_provider =
            l.auth_max_failures_per_provider > 0 && provider_exists && !cert_is_providers;
        if !check_addr && !check_provider {
            return None;
        }
        let mut pipe = redis::pipe();
        pipe.get(keys::authfail_addr(ip))
            .pttl(keys::authfail_addr(ip))
            .get(keys::authfail_provider(provider))
            .pttl(keys::authfail_provider(provider))
            .exists(keys::authok(provider, ip));
        let mut redis = self.redis.clone();
        let answer = tokio::time::timeout(
            REDIS_TIMEOUT,
            pipe.query_async::<(Option<u32>, i64, Option<u32>, i64, bool)>(&mut redis),
        )
        .await;
        let (addr_fails, addr_ttl, prov_fails, prov_ttl, known) = match answer {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                self.throttle_unavailable.inc();
                tracing::warn!(error = %e, "Cannot read the authentication throttle; checking the Hello anyway.");
                return None;
            }
            Err(_) => {
                self.throttle_unavailable.inc();
                tracing::warn!("The authentication throttle timed out; checking the Hello anyway.");
                return None;
            }
        };
        let retry = |ttl: i64| u32::try_from(ttl.max(1)).unwrap_or(u32::MAX);
        if check_addr && addr_fails.unwrap_or(0) >= l.auth_max_failures_per_address {
            return Some(Refusal {
                code: RejectCode::RateLimited,
                detail: "too many failed authentications from this address",
                retry_after_ms: retry(addr_ttl),
            });
        }
        if check_provider && !known && prov_fails.unwrap_or(0) >= l.auth_max_failures_per_provider {
            return Some(Refusal {
                code: RejectCode::RateLimited,
                detail: "too many failed authentications for this provider from new addresses",
                retry_after_ms: retry(prov_ttl),
            });
        }
        None
    }

    async fn count_failure(&self, ip: IpAddr, provider: &str, provider_exists: bool) {
        let window = i64::try_from(self.limits.auth_failure_window.as_secs()).unwrap_or(i64::MAX);
        let mut pipe = redis::pipe();
        // INCR then EXPIRE NX: the window starts with its first failure.
        pipe.incr(keys::authfail_addr(ip), 1)
            .ignore()
            .cmd("EXPIRE")
            .arg(keys::authfail_addr(ip))
            .arg(window)
            .arg("NX")
            .ignore();
        if provider_exists {
            pipe.incr(keys::authfail_provider(provider), 1)
                .ignore()
                .cmd("EXPIRE")
                .arg(keys::authfail_provider(provider))
                .arg(window)
                .arg("NX")
                .ignore();
        }
        let mut redis = self.redis.clone();
        match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<()>(&mut redis)).await {
            Ok(Ok(())) => {}
            _ => tracing::warn!("Cannot count a failed authentication."),
        }
    }

    async fn remember(&self, provider: &str, ip: IpAddr) {
        let mut redis = self.redis.clone();
        let mut set = redis::cmd("SET");
        set.arg(keys::authok(provider, ip))
            .arg(1)
            .arg("EX")
            .arg(KNOWN_ADDRESS_TTL.as_secs());
        let done = tokio::time::timeout(REDIS_TIMEOUT, set.query_async::<()>(&mut redis)).await;
        if !matches!(done, Ok(Ok(()))) {
            tracing::debug!("Cannot remember an authenticated address.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(connections: Option<usize>, window: u64) -> EdgeArgs {
        EdgeArgs {
            max_connections_per_provider: connections,
            auth: AuthThrottleArgs {
                auth_max_failures_per_address: 0,
                auth_max_failures_per_provider: 5,
                auth_failure_window_secs: window,
            },
        }
    }

    #[test]
    fn limits_take_the_service_default_and_refuse_zero() {
        let l = args(None, 60).limits(1000).unwrap();
        assert_eq!(l.max_connections_per_provider, 1000);
        assert_eq!(l.auth_max_failures_per_address, 0, "0 turns it off");
        assert_eq!(l.auth_failure_window, Duration::from_secs(60));
        assert_eq!(
            args(Some(7), 60)
                .limits(1000)
                .unwrap()
                .max_connections_per_provider,
            7
        );
        assert!(args(Some(0), 60).limits(1000).is_err());
        assert!(args(None, 0).limits(1000).is_err());
    }
}
