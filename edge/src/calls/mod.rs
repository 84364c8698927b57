//! Call signaling on the edge: the [`switchboard`] decides (a state machine without sockets
//! or clocks), the [`service`] task runs it: it takes requests from sessions, arms its timer,
//! and carries its outputs to live sessions, the push notifier and the call history.

pub mod service;
pub mod switchboard;

pub use service::{CallService, CallStats};
pub use switchboard::{CallPolicy, Now, Party, Switchboard};
