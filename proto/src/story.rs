//! Status updates ("stories"): a post to an audience that the server stores once, references
//! from each audience device's mailbox, and drops after its lifetime (24 h by default). The
//! body is encrypted by the poster with a fresh key per post, which travels to the audience
//! over their 1:1 sessions; the server sees who may view and who viewed, never the content.

use crate::ids::ClientMsgId;
use rkyv::{Archive, Deserialize, Serialize};

/// Client → server: post a status to `audience` (the poster's contacts, or a chosen list).
/// Answered `Sent` once the body and every reference are on disk, or `Rejected`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoryPost {
    /// Poster-chosen id; a retry with the same id is stored once.
    pub client_msg_id: ClientMsgId,
    /// Who may view it (user names; the poster's own other devices get it too).
    pub audience: Vec<String>,
    /// The encrypted post. The server never reads it.
    pub body: Vec<u8>,
}

/// Client → server: this user viewed `from`'s status `client_msg_id` (its poster learns who).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoryViewed {
    /// The poster.
    pub from: String,
    /// The post.
    pub client_msg_id: ClientMsgId,
}

/// Server → client: someone viewed one of this user's statuses.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoryView {
    /// The post.
    pub client_msg_id: ClientMsgId,
    /// Who viewed it.
    pub viewer: String,
}

/// Client → server: this user's statuses that have not expired, with their viewers
/// (answered `StoryList`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ListStories {
    /// Echoed in the answer.
    pub request_id: u32,
}

/// One of the requester's statuses.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StorySummary {
    /// The post.
    pub client_msg_id: ClientMsgId,
    /// When it was posted, ms since the Unix epoch.
    pub posted_ms: u64,
    /// When the server drops it, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Users it was posted to.
    pub audience: u32,
    /// Who viewed it, in the order they did.
    pub viewers: Vec<String>,
}

/// Server → client: answer to `ListStories`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoryList {
    /// The request's id.
    pub request_id: u32,
    /// The requester's live statuses, oldest first.
    pub stories: Vec<StorySummary>,
}

/// A delivered status (inside `Deliver`, whose `from` is the poster).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StoryMessage {
    /// When the server drops it, ms since the Unix epoch: not to be shown after.
    pub expires_at_ms: u64,
    /// The encrypted post, as the poster gave it.
    pub body: Vec<u8>,
}
