//! Missive client SDK: what a messaging app embeds to talk to a Missive edge.
//!
//! # Public API
//!
//! ```text
//! // Who we are
//! pub struct Identity { pub user: String, pub device: DeviceId, pub signing_key: SigningKey }
//! impl Identity {
//!     pub fn generate(user: impl Into<String>, device: DeviceId) -> Identity;
//!     pub fn public_key(&self) -> [u8; 32];
//!     pub fn sign_login(&self, challenge: &[u8; 32], exporter: &[u8; 32]) -> [u8; 64];
//! }
//!
//! // Connecting
//! pub struct ClientConfig { pub server: SocketAddr, pub server_name: String, pub ca_pem: Vec<u8>,
//!     pub identity: Identity, pub quic_timeout: Duration, pub force_tcp: bool,
//!     pub reconnect: ReconnectPolicy, pub auto_ack: bool, pub client_name: String,
//!     pub seen: SeenSet, pub rotate_after_messages: u32, pub rotate_after: Duration, ... }
//! impl ClientConfig { pub fn new(server: SocketAddr, ca_pem: impl Into<Vec<u8>>, identity: Identity) -> Self; }
//! pub struct ReconnectPolicy { pub initial: Duration, pub max: Duration, pub jitter: f64 }
//! pub async fn register(config: impl Borrow<ClientConfig>, invite: Option<String>) -> Result<(), ClientError>;
//!
//! // The handle (Clone) and its events
//! impl Client {
//!     pub async fn connect(config: ClientConfig) -> Result<(Client, EventStream), ClientError>;
//!     pub fn send(&self, to: impl Into<String>, content: Content) -> impl Future<Output = Result<SendReceipt, ClientError>>; // queued at call time
//!     pub fn send_with_id(&self, id: ClientMsgId, to: impl Into<String>, content: Content) -> impl Future<Output = Result<SendReceipt, ClientError>>;
//!     pub fn mark_read(&self, to_user: impl Into<String>, ids: Vec<ClientMsgId>) -> impl Future<Output = Result<SendReceipt, ClientError>>;
//!     pub fn subscribe_presence(&self, user: impl Into<String>) -> Result<(), ClientError>;
//!     pub fn set_visibility(&self, visibility: Visibility) -> Result<(), ClientError>;
//!     pub fn typing(&self, to: impl Into<String>, typing: bool) -> Result<(), ClientError>;
//!     pub fn ack(&self, seq: ServerSeq) -> Result<(), ClientError>;
//!     pub async fn close(&self) -> Result<(), ClientError>;
//!     pub async fn turn_credentials(&self) -> Result<TurnCredentials, ClientError>; // username, password, ttl, urls of the edge's relay
//!     // Calls (signaling; what happens comes as Event::Call(CallEvent))
//!     pub fn invite_call(&self, to, media: CallMedia, offer: CallOffer) -> Result<CallId, ClientError>;
//!     pub fn accept_call(&self, call: CallId, description: Vec<u8>) -> Result<(), ClientError>;
//!     pub fn decline_call(&self, call: CallId) -> Result<(), ClientError>;
//!     pub fn hang_up(&self, call: CallId) -> Result<(), ClientError>;
//!     pub fn send_call_candidates(&self, call: CallId, description: Vec<u8>) -> Result<(), ClientError>;
//!     pub async fn call_history(&self, limit: u16) -> Result<Vec<CallRecord>, ClientError>; // newest first
//!     // Groups (refusals are ClientError::GroupRefused { code, .. }; see ClientError::code)
//!     pub async fn create_group(&self, name) -> Result<GroupInfo, ClientError>;
//!     pub async fn add_members(&self, group: GroupId, users: Vec<String>) -> Result<GroupInfo, ClientError>;
//!     pub async fn remove_members(&self, group, users) -> Result<GroupInfo, ClientError>;
//!     pub async fn promote(&self, group, user) -> Result<GroupInfo, ClientError>;
//!     pub async fn leave_group(&self, group) -> Result<(), ClientError>;
//!     pub async fn group_info(&self, group) -> Result<GroupInfo, ClientError>;
//!     pub async fn groups(&self) -> Result<Vec<GroupSummary>, ClientError>;
//!     pub async fn create_group_invite(&self, group, expires_in_secs: u32) -> Result<GroupInvite, ClientError>;
//!     pub async fn join_group(&self, token) -> Result<GroupInfo, ClientError>;
//!     pub async fn revoke_group_invite(&self, group, token) -> Result<(), ClientError>;
//!     pub fn send_group(&self, group, text) -> impl Future<Output = Result<SendReceipt, ClientError>>; // queued at call time
//!     pub fn mark_group_read(&self, group, from, id: ClientMsgId) -> Result<(), ClientError>;
//!     pub async fn group_receipts(&self, group, ids: Vec<ClientMsgId>) -> Result<Vec<GroupReceipt>, ClientError>;
//! }
//! pub struct GroupInvite { pub group: GroupId, pub token: String, pub expires_at_ms: u64 }
//! pub struct SendReceipt { pub client_msg_id: ClientMsgId, pub server_ts_ms: u64, pub duplicate: bool }
//! impl EventStream {
//!     pub async fn next(&mut self) -> Option<Event>;
//!     pub fn try_next(&mut self) -> Option<Event>;
//!     pub fn delivery_pending(&self, seq: ServerSeq) -> bool;
//! }
//! pub enum Event {
//!     Message { from, from_device, client_msg_id, server_seq, server_ts_ms, text: String },
//!     Receipt { from, client_msg_id, status: ReceiptStatus, server_seq, server_ts_ms, envelope_id },
//!     Presence { user, state: PresenceState },
//!     Typing { from, typing: bool },
//!     Connected { transport: TransportKind },
//!     Disconnected { reason: String },
//!     GroupMessage { group, from, from_device, client_msg_id, text, server_seq, server_ts_ms },
//!     GroupChanged { group, by, epoch, change: GroupChange, server_seq },
//!     GroupReceipt { group, client_msg_id, delivered, read, of },
//!     GroupUndecryptable { group, from, from_device, client_msg_id, server_seq, reason },
//!     ... // Undecryptable, TimerChanged, Deleted, KeysRejected, DevicesChanged
//! }
//! impl Event { pub fn server_seq(&self) -> Option<ServerSeq>; pub fn delivery_key(&self) -> Option<DeliveryKey>; }
//! pub enum ReceiptStatus { Delivered, Read }
//!
//! // Envelope content and the end-to-end encryption seam
//! pub enum Content { Text(String), Read { ids }, Timer { secs }, Delete { ids }, ResendRequest { ids }, GroupKey(Box<GroupKey>) }
//! impl Content { pub fn encode(&self) -> Vec<u8>; pub fn decode(bytes: &[u8]) -> Result<Content, ClientError>; }
//! pub fn seal(content: &Content) -> Result<Vec<u8>, ClientError>;
//! pub fn open(envelope: &[u8]) -> Result<Content, ClientError>;
//!
//! // Lower layers, usable on their own
//! pub struct Transport;  // Transport::connect(&TransportConfig), connect_quic_only(..), kind(), exporter(), reader(), writer(), into_parts()
//! pub struct DeliveryStats { pub deliveries, pub redeliveries, pub duplicates } // Client::delivery_stats(): before the duplicate filter
//! pub enum TransportKind { Quic, Tcp }
//! pub struct SeenSet; pub struct DeliveryKey { pub from, pub client_msg_id, pub kind: DeliveryKind }
//! pub struct Profile;    // feature `cli`: the CLI's profile directory (profile.toml, device.key, ca.pem, seen.txt)
//! pub enum ClientError;  // one error type; `is_fatal()`, `code()`
//! // Re-exported from missive_proto: ClientMsgId, DeviceId, PresenceState, ServerSeq, Visibility,
//! // GroupId, GroupInfo, GroupMember, GroupSummary, GroupReceipt, GroupChange
//! ```
//!
//! # How it fits together
//!
//! - **Transport** ([`transport`]): QUIC first (one bidirectional stream carries every
//!   frame), TCP+TLS 1.3 when the QUIC handshake does not finish within `quic_timeout`. Both
//!   trust only the CA given as PEM and use ALPN `missive/1`.
//! - **Login** (`login`, a socket-free state machine): `Hello` → `ServerHello` →
//!   `Login`/`Register` signed over the login transcript, which includes this connection's
//!   TLS exporter, so a signature cannot be replayed on another connection → `Welcome`.
//! - **Session** (`session`, socket- and clock-free): the state that outlives connections —
//!   the outbox of unanswered sends (resent with the same `client_msg_id` after every
//!   reconnect, which the edge stores once), presence subscriptions, the bounded duplicate
//!   filter, and cumulative acknowledgements that never cover a delivery the app has not
//!   acknowledged.
//! - **Driver** (`driver`, a tokio task per [`Client`]): moves frames, commands and timers
//!   in and out of the session, writes through a batching writer task (one flush per batch:
//!   TLS records are not emitted per frame), reconnects with [`ReconnectPolicy`] or after the
//!   delay a `Goaway` asks for, and stops on fatal errors (bad key, account disabled, this device
//!   logged in on another connection...).
//! - **Content** ([`content`]): envelope bytes are the rkyv archive of a [`Content`],
//!   validated on receipt. [`seal`]/[`open`] are the seam where end-to-end encryption will
//!   wrap exactly these bytes; nothing else touches envelope bytes.
//!
//! - **Groups** (`group`): the server keeps the membership and an epoch that grows with each
//!   change; every message is one Megolm ciphertext stored once. This device makes a new
//!   Megolm session at each epoch (and after `rotate_after_messages` / `rotate_after`), sends
//!   its key to every other member as an Olm-encrypted `Content::GroupKey` and sends the
//!   message only once the server stored those keys, so a member's mailbox holds the key
//!   before the message, a removed member never gets a later key and a new member no earlier
//!   one. A stale epoch is refused (`GroupChanged`): the session fetches `Info`, rotates and
//!   sends again under the same id. Sessions and the groups this device is in are kept in
//!   the E2EE state.
//! - **Read receipts** are ordinary messages (`Content::Read`), so the edge answers them with
//!   `Delivered` receipts like any message. Their ids are tagged with this device's key
//!   (`receipt_id`), which lets the session drop those `Delivered` receipts without keeping
//!   state across runs.
//! - **Acknowledgements** are cumulative (`AckDelivery{up_to}`). With `auto_ack` the driver
//!   acks a delivery once its events are in the [`EventStream`]; without it the app calls
//!   [`Client::ack`], and deliveries the client handled itself (duplicates, undecodable
//!   envelopes) are acked only once everything below them was acked by the app.
//!
//! Logs never carry message content or keys.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod call;
pub mod call_media;
mod client;
mod connection;
pub mod content;
pub mod dedup;
pub mod delivery_stats;
mod devices;
mod driver;
pub mod e2ee;
mod error;
pub mod event;
mod frame_io;
mod group;
pub mod identity;
mod login;
pub mod media;
mod path_mtu;
mod post_keys;
#[cfg(feature = "cli")]
pub mod profile;
mod receipt_id;
mod session;
pub mod transfer;
pub mod transport;
mod turn;

pub use backoff::ReconnectPolicy;
pub use call::{CallEvent, CallOffer};
pub use client::{link, register, Client, ClientConfig, GroupInvite, SendReceipt};
pub use content::{open, seal, Content};
pub use dedup::{DeliveryKey, DeliveryKind, SeenSet};
pub use delivery_stats::DeliveryStats;
pub use e2ee::RotationPolicy;
pub use error::ClientError;
pub use event::{AckPoint, Event, EventStream, ReceiptStatus};
pub use identity::Identity;
#[cfg(feature = "cli")]
pub use profile::Profile;
pub use transport::{QuicEndpoint, QuicPath, Transport, TransportConfig, TransportKind};
pub use turn::TurnCredentials;

pub use missive_proto::{
    CallEndReason, CallId, CallMedia, CallRecord, ClientMsgId, DeviceId, GroupChange, GroupId,
    GroupInfo, GroupMember, GroupReceipt, GroupSummary, PresenceState, ServerSeq, Visibility,
};
