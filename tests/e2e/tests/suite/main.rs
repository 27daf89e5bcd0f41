//! The in-process end-to-end suite: one test binary (one link instead of one
//! per file), a module per area. Each test starts its own real `nats-server`
//! and `redis-server` (through `interop_test_support`) and, where it needs
//! the gateway, the five services in this process (`interop_e2e::Gateway`).
//!
//! `logs.rs` and `tracing.rs` beside this folder stay binaries of their own:
//! each installs a process-wide tracing subscriber.

mod cli;
mod common;
mod consent;
mod delivery;
mod durable_state;
mod edge;
mod erase_user;
mod erasure;
mod hostile;
mod key_notices;
mod keys;
mod loadtest_gateway;
mod media;
mod mls;
mod mtls;
mod observability;
mod partitioned_store;
mod pipeline;
mod provider_edge;
mod provider_sessions;
mod registry;
mod repository;
mod resend;
mod retention;
mod rich;
mod routing_batch;
mod routing_score;
mod scripts;
mod secured_deps;
mod security;
mod store_limits;
mod tls;
mod transactions;
