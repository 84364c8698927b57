//! Group chat on the wire: membership requests and their answers, group messages (one
//! Megolm ciphertext for every member, stored once by the server), membership events, and
//! aggregated receipts.
//!
//! The server keeps the membership (it decides who may send and who gets a copy) and an
//! `epoch` that grows with every membership change. A [`GroupSend`] names the epoch its
//! sender encrypted for; a stale one is refused ([`crate::ErrorCode::GroupChanged`]), so a
//! client always learns of a removal before it sends again, rotates its Megolm session, and
//! a removed member never gets the new key.

use crate::ids::{ClientMsgId, GroupId};
use rkyv::{Archive, Deserialize, Serialize};

/// Most members a group may have, whatever the server's configuration says.
pub const MAX_GROUP_MEMBERS: usize = 4096;
/// Longest group name, in bytes.
pub const MAX_GROUP_NAME: usize = 128;
/// Most users one `Add` or `Remove` may name.
pub const MAX_USERS_PER_CHANGE: usize = 256;

/// Checks a group name: 1 to [`MAX_GROUP_NAME`] bytes, no control characters.
pub fn validate_group_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > MAX_GROUP_NAME {
        return Err("a group name has 1 to 128 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("a group name has no control characters");
    }
    Ok(())
}

mod groupop_def {
    //! rkyv derives a resolver with undocumented fields for enums with named fields; the
    //! fields are documented on the enum itself.
    #![allow(missing_docs)]
    use super::*;

    /// What a [`GroupRequest`] asks.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum GroupOp {
        /// Create a group; the requester is its first member and admin.
        Create {
            /// Its name.
            name: String,
        },
        /// Add users (admins only).
        Add {
            /// The group.
            group: GroupId,
            /// Who.
            users: Vec<String>,
        },
        /// Remove members (admins only).
        Remove {
            /// The group.
            group: GroupId,
            /// Who.
            users: Vec<String>,
        },
        /// Make a member an admin (admins only).
        Promote {
            /// The group.
            group: GroupId,
            /// Who.
            user: String,
        },
        /// Leave the group. When the last admin leaves, the longest-standing member is promoted.
        Leave {
            /// The group.
            group: GroupId,
        },
        /// The group's name, epoch and members (members only).
        Info {
            /// The group.
            group: GroupId,
        },
        /// The groups the requester is a member of.
        List,
        /// Make an invite token that lets anyone holding it join (admins only).
        CreateInvite {
            /// The group.
            group: GroupId,
            /// The token stops working this many seconds from now (0: only when revoked).
            expires_in_secs: u32,
        },
        /// Join with an invite token.
        Join {
            /// The token.
            token: String,
        },
        /// Revoke an invite token (admins only).
        Revoke {
            /// The group.
            group: GroupId,
            /// The token.
            token: String,
        },
        /// Aggregated receipts of the requester's own messages (members only).
        Receipts {
            /// The group.
            group: GroupId,
            /// The messages.
            ids: Vec<ClientMsgId>,
        },
    }
}
pub use groupop_def::{ArchivedGroupOp, GroupOp};

/// Client → server: a group request, answered [`GroupAnswer`] or `RequestRefused`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupRequest {
    /// Echoed in the answer.
    pub request_id: u32,
    /// What is asked.
    pub op: GroupOp,
}

/// A member and its role.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The user.
    pub user: String,
    /// May change membership and settings.
    pub admin: bool,
}

/// A group as its members see it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    /// The group.
    pub group: GroupId,
    /// Its name.
    pub name: String,
    /// Grows with every membership change.
    pub epoch: u64,
    /// Members, longest-standing first.
    pub members: Vec<GroupMember>,
}

/// One group in a [`GroupAnswer::List`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupSummary {
    /// The group.
    pub group: GroupId,
    /// Its name.
    pub name: String,
    /// Members.
    pub members: u32,
    /// The requester is an admin.
    pub admin: bool,
}

/// Delivery and read state of one group message, counted per member (any of a member's
/// devices counts for the member).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupReceipt {
    /// The group.
    pub group: GroupId,
    /// The sender's message.
    pub client_msg_id: ClientMsgId,
    /// Members with at least one device that received it.
    pub delivered: u32,
    /// Members who read it.
    pub read: u32,
    /// Members it was sent to (the sender not counted).
    pub of: u32,
}

mod groupanswerkind_def {
    //! rkyv derives a resolver with undocumented fields for enums with named fields; the
    //! fields are documented on the enum itself.
    #![allow(missing_docs)]
    use super::*;

    /// What a [`GroupAnswer`] carries.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub enum GroupAnswerKind {
        /// The group as it is now (after `Create`, `Add`, `Remove`, `Promote`, `Join`, `Info`).
        Info(GroupInfo),
        /// The requester left; the group's epoch after it.
        Left {
            /// The group.
            group: GroupId,
        },
        /// The requester's groups.
        List(Vec<GroupSummary>),
        /// A new invite token.
        Invite {
            /// The group.
            group: GroupId,
            /// The token (random; share it out of band).
            token: String,
            /// When it stops working, ms since the Unix epoch (0: only when revoked).
            expires_at_ms: u64,
        },
        /// The token no longer works.
        Revoked,
        /// Receipts of the asked messages that the server still knows.
        Receipts(Vec<GroupReceipt>),
    }
}
pub use groupanswerkind_def::{ArchivedGroupAnswerKind, GroupAnswerKind};

/// Server → client: answer to a [`GroupRequest`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupAnswer {
    /// The request's id.
    pub request_id: u32,
    /// The answer.
    pub answer: GroupAnswerKind,
}

/// Client → server: one message to every member of a group: a single ciphertext (Megolm)
/// that the server stores once and references from each member device's mailbox. Answered
/// `Sent` once the body and every reference are on disk, or `Rejected`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupSend {
    /// Sender-chosen id; a retry with the same id is stored once.
    pub client_msg_id: ClientMsgId,
    /// The group.
    pub group: GroupId,
    /// The membership epoch the sender encrypted for; another one is refused with
    /// `GroupChanged` (fetch `Info`, rotate the session, send again).
    pub epoch: u64,
    /// The ciphertext. The server never reads it.
    pub body: Vec<u8>,
    /// Undelivered references are dropped this many seconds after storing (0: never).
    pub expires_in_secs: u32,
}

/// Client → server: the sender's message was read here (counted once per member).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupRead {
    /// The group.
    pub group: GroupId,
    /// Who sent the message.
    pub from: String,
    /// Its id.
    pub client_msg_id: ClientMsgId,
}

/// A delivered group message (inside `Deliver`, whose `from` is the sender).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupMessage {
    /// The group.
    pub group: GroupId,
    /// The ciphertext, as the sender gave it.
    pub body: Vec<u8>,
}

/// A change of a group, made by the `Deliver`'s `from` (the actor).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum GroupChange {
    /// The group was created with this name.
    Created(String),
    /// These users were added.
    Added(Vec<String>),
    /// These members were removed.
    Removed(Vec<String>),
    /// The actor left.
    Left,
    /// The actor joined with an invite.
    Joined,
    /// These members became admins (a promotion, or the last admin leaving).
    Promoted(Vec<String>),
}

/// A delivered group event (inside `Deliver`), in order with the group's messages.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupNotice {
    /// The group.
    pub group: GroupId,
    /// The epoch after the change.
    pub epoch: u64,
    /// What changed.
    pub change: GroupChange,
}
