//! The Missive edge server.
//!
//! One process terminates QUIC (and a TCP+TLS 1.3 fallback carrying the same frames),
//! authenticates devices, stores envelopes durably (group commit in `missive-storage`), and
//! delivers them live or on reconnect.
//!
//! Structure, one concern per module:
//! - [`session`]: the per-connection protocol as a sans-I/O state machine (login and its
//!   deadline, sends in flight, delivery window in items and bytes, a budget per request
//!   kind, idle timeout);
//! - [`connection`]: the async driver that feeds a session from a transport;
//! - [`listener`]: QUIC and TCP accept loops (admission before any handshake: connection
//!   limit, per-address budgets from [`address_limits`], QUIC Retry under load);
//! - [`budget`]: the token buckets every rate limit spends (time passed in, never read);
//! - [`registry`]: live sessions per device and presence subscriptions;
//! - [`session_queue`]: a session's inbox of events from the rest of the edge;
//! - [`notifier`]: push wake-ups for offline devices;
//! - [`turn`]: the STUN/TURN relay (`missive-relay`) for calls, and the credentials it
//!   mints for logged-in clients; [`turn_secret`] reads or makes their shared secret;
//! - [`admin`]: `missive-edge admin …`, served by the running edge on its admin socket
//!   ([`admin::socket`]) or run offline on a stopped edge's data directory;
//! - [`config`], [`tls`], [`server`]: configuration, certificates, wiring and lifecycle.
//!
//! Data flow of one message: a `Send` frame becomes `Action::Store`; the store appends it to
//! every recipient device's mailbox in one group commit (flush + fsync); after the fsync the
//! commit listener hands it to each live session ([`registry::Registry::push`]) or wakes the device
//! via push, and the sender gets `Sent`. The recipient's `AckDelivery` deletes it and queues
//! `Delivered` receipts for the sender's devices in the same batch.

#![forbid(unsafe_code)]

pub mod address_limits;
pub mod admin;
pub mod budget;
pub mod calls;
pub mod claim_budget;
pub mod config;
pub mod connection;
pub mod group_requests;
pub mod group_service;
pub mod group_streams;
pub mod http;
pub mod key_requests;
pub mod link_code;
pub mod listener;
pub mod media;
pub mod metrics;
pub mod notifier;
pub mod ops;
pub mod registry;
pub mod reset_key;
pub mod sd_notify;
pub mod server;
pub mod session;
pub mod session_queue;
pub mod shared;
pub mod tls;
pub mod turn;
pub mod turn_secret;
