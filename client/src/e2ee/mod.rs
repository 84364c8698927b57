//! End-to-end encryption: Olm sessions per peer device (vodozemac), the device's state and
//! where it is kept, and the part of the session state machine that claims keys, encrypts
//! each send for every device and decrypts each delivery; Megolm group sessions (`megolm`),
//! whose keys travel over Olm.
//!
//! The server sees only what [`olm`] produces: per device, a version byte, the Olm message
//! type and the Olm ciphertext of a `DevicePlaintext`.

pub(crate) mod megolm;
pub mod olm;
pub(crate) mod sealer;
pub mod status_key;
mod store;

pub use megolm::RotationPolicy;
pub use olm::{OlmMachine, PeerIdentity};
pub use store::E2eeStore;
