//! Values stored on disk. They are rkyv archives and are validated on every read, like
//! network input: a damaged file gives an error, never undefined behaviour.

use missive_proto::{ClientMsgId, DeviceId, Payload, Visibility};
use rkyv::{Archive, Deserialize, Serialize};

/// One mailbox item: a message envelope or a server-made delivery receipt.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoredItem {
    /// Sender user (for a receipt: the user whose device received the message).
    pub from: String,
    /// Sender device.
    pub from_device: DeviceId,
    /// Message id (for a receipt: the id of the delivered message).
    pub client_msg_id: ClientMsgId,
    /// When the server stored it, ms since the Unix epoch; drives expiry.
    pub server_ts_ms: u64,
    /// The item itself.
    pub payload: Payload,
}

/// A user account.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// When the user registered, ms since the Unix epoch.
    pub created_ms: u64,
    /// Who may see this user's presence.
    pub visibility: Visibility,
    /// Last time a device of this user disconnected, ms since the Unix epoch (0 = never).
    pub last_seen_ms: u64,
    /// An administrator disabled the account: logins are refused.
    pub disabled: bool,
}

/// A device's fallback key: handed out when its one-time keys ran out, until replaced.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FallbackRecord {
    /// The key and its signature.
    pub key: missive_proto::SignedKey,
    /// It was handed out at least once since it was uploaded.
    pub used: bool,
}

/// Validates and decodes an rkyv archive read from the store.
pub(crate) fn decode<T>(bytes: &[u8], what: &str) -> Result<T, crate::StorageError>
where
    T: Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<T, rkyv::rancor::Error>(&aligned)
        .map_err(|e| crate::StorageError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn encode<T>(value: &T) -> Result<Vec<u8>, crate::StorageError>
where
    T: for<'a> Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(value)
        .map(|v| v.to_vec())
        .map_err(|e| crate::StorageError::Corrupt(format!("encode: {e}")))
}

pub(crate) fn decode_item(bytes: &[u8]) -> Result<StoredItem, crate::StorageError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<StoredItem, rkyv::rancor::Error>(&aligned)
        .map_err(|e| crate::StorageError::Corrupt(format!("mailbox item: {e}")))
}

pub(crate) fn decode_user(bytes: &[u8]) -> Result<UserRecord, crate::StorageError> {
    let mut aligned = rkyv::util::AlignedVec::<16>::new();
    aligned.extend_from_slice(bytes);
    rkyv::from_bytes::<UserRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|e| crate::StorageError::Corrupt(format!("user record: {e}")))
}
