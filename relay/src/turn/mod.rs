//! TURN (RFC 8656) and STUN Binding (RFC 8489) as a state machine without sockets or clocks.

pub(crate) mod allocation;
pub(crate) mod relay;
pub(crate) mod stats;
#[cfg(test)]
mod tests;

pub use allocation::AllocationId;
pub use relay::{Family, OpenRelayError, Output, Received, Relay, Transport};
pub use stats::{Refusals, Stats};
