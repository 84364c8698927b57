//! Key layout of the single sled tree. Every key starts with a one-byte space tag; user names
//! (validated: no NUL) end with a NUL so that prefixes never collide, and numbers are
//! big-endian so that range scans walk them in order.
//!
//! | space | key | value |
//! | --- | --- | --- |
//! | `m` | `m user\0 device:u32 seq:u64` | rkyv [`crate::StoredItem`] |
//! | `s` | `s user\0 device:u32` | a mark every seq at or above which is unused, u64 |
//! | `d` | `d user\0 device:u32 client_msg_id:[16]` | stored-at ms, u64 (dedup) |
//! | `u` | `u user` | rkyv [`crate::UserRecord`] |
//! | `k` | `k user\0 device:u32` | Ed25519 public key, 32 bytes |
//! | `i` | `i token` | created-at ms, u64 (invite) |
//! | `c` | `c owner\0 other` | first-message ms, u64: `owner` has sent `other` a message |
//! | `y` | `y user\0 device:u32` | rkyv `IdentityKeys` of the device (E2EE identity) |
//! | `o` | `o user\0 device:u32 key:[32]` | signature, 64 bytes (an unclaimed one-time key) |
//! | `f` | `f user\0 device:u32` | rkyv [`crate::records::FallbackRecord`] |
//! | `l` | `l code` | created-at ms, u64, then the user name (a device link code) |
//! | `n` | `n user` | the id the next linked device gets, u32 (ids are never reused) |
//! | `e` | `e at_ms:u64 mailbox-item-key` | empty: that item expires at `at_ms` (disappearing) |
//! | `g` | `g group:u64` | rkyv `groups::GroupRecord` (name, epoch, members) |
//! | `G` | `G user\0 group:u64` | empty: `user` is a member of `group` |
//! | `x` | `x` | the id the next group gets, u64 |
//! | `t` | `t token` | rkyv `groups::InviteRecord` (a group invite token) |
//! | `b` | `b group:u64 sender\0 client_msg_id:[16]` | a group message's body, stored once |
//! | `r` | `r group:u64 sender\0 client_msg_id:[16]` | rkyv `groups::ReceiptRecord` of that message |
//! | `p` | `p poster\0 client_msg_id:[16]` | rkyv `stories::StoryRecord` (audience, viewers) |
//! | `q` | `q poster\0 client_msg_id:[16]` | a status update's body, stored once |
//! | `M` | `M blob:[32]` | rkyv `media::BlobRecord` (size, owner, lifetime, downloads) |
//! | `Q` | `Q user` | bytes of live blobs the user owns, u64 |
//! | `C` | `C user\0 ended_ms:u64 call_id:[16]` | rkyv `CallRecord` (the user's call history) |
//! | `L` | `L group:u64 seq:u64` | rkyv [`crate::StoredItem`]: an item of the group's log |
//! | `h` | `h group:u64` | the seq the group log's next item gets, u64 |
//! | `K` | `K group:u64 user\0 device:u32` | highest log seq the device acknowledged, u64 |
//! | `R` | `R user\0 group:u64` | the log span `user` may read: from, until (u64 each) |
//! | `j` | `j group:u64 sender\0 client_msg_id:[16]` | rkyv `group_log::LogReceipt` |

use crate::MailboxId;
use missive_proto::{ClientMsgId, DeviceId, GroupId, ServerSeq};

pub(crate) const MAILBOX: u8 = b'm';
pub(crate) const SEQ: u8 = b's';
pub(crate) const DEDUP: u8 = b'd';
pub(crate) const USER: u8 = b'u';
pub(crate) const DEVICE: u8 = b'k';
pub(crate) const INVITE: u8 = b'i';
pub(crate) const CONTACT: u8 = b'c';
pub(crate) const IDENTITY: u8 = b'y';
pub(crate) const ONE_TIME_KEY: u8 = b'o';
pub(crate) const FALLBACK_KEY: u8 = b'f';
pub(crate) const LINK_CODE: u8 = b'l';
pub(crate) const NEXT_DEVICE: u8 = b'n';
pub(crate) const EXPIRY: u8 = b'e';
pub(crate) const GROUP: u8 = b'g';
pub(crate) const MEMBERSHIP: u8 = b'G';
pub(crate) const NEXT_GROUP: u8 = b'x';
pub(crate) const GROUP_INVITE: u8 = b't';
pub(crate) const GROUP_BODY: u8 = b'b';
pub(crate) const GROUP_RECEIPT: u8 = b'r';
pub(crate) const STORY: u8 = b'p';
pub(crate) const STORY_BODY: u8 = b'q';
pub(crate) const BLOB: u8 = b'M';
pub(crate) const MEDIA_USAGE: u8 = b'Q';
pub(crate) const CALL: u8 = b'C';
pub(crate) const GROUP_LOG: u8 = b'L';
pub(crate) const GROUP_HEAD: u8 = b'h';
pub(crate) const GROUP_CURSOR: u8 = b'K';
pub(crate) const GROUP_READER: u8 = b'R';
pub(crate) const GROUP_LOG_RECEIPT: u8 = b'j';

fn user_device(tag: u8, user: &str, device: DeviceId, extra: usize) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + user.len() + 1 + 4 + extra);
    k.push(tag);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(&device.0.to_be_bytes());
    k
}

/// Prefix of every item of one mailbox.
pub(crate) fn mailbox_prefix(mb: &MailboxId) -> Vec<u8> {
    user_device(MAILBOX, &mb.user, mb.device, 8)
}

/// Key of one mailbox item.
pub(crate) fn mailbox_item(mb: &MailboxId, seq: ServerSeq) -> Vec<u8> {
    let mut k = mailbox_prefix(mb);
    k.extend_from_slice(&seq.0.to_be_bytes());
    k
}

/// Splits a mailbox item key back into (mailbox, seq); `None` for a foreign or damaged key.
pub(crate) fn parse_mailbox_item(key: &[u8]) -> Option<(MailboxId, ServerSeq)> {
    let rest = key.strip_prefix(&[MAILBOX])?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let user = std::str::from_utf8(&rest[..nul]).ok()?.to_owned();
    let tail = &rest[nul + 1..];
    if tail.len() != 12 {
        return None;
    }
    let device = u32::from_be_bytes(tail[..4].try_into().ok()?);
    let seq = u64::from_be_bytes(tail[4..].try_into().ok()?);
    Some((
        MailboxId {
            user,
            device: DeviceId(device),
        },
        ServerSeq(seq),
    ))
}

/// Key of a mailbox's seq counter (a mark above every seq used: see `SEQ_RESERVATION`).
pub(crate) fn seq_counter(mb: &MailboxId) -> Vec<u8> {
    user_device(SEQ, &mb.user, mb.device, 0)
}

/// Key remembering that a sender's message id was stored.
pub(crate) fn dedup(user: &str, device: DeviceId, id: &ClientMsgId) -> Vec<u8> {
    let mut k = user_device(DEDUP, user, device, 16);
    k.extend_from_slice(&id.0);
    k
}

/// Key of a user record.
pub(crate) fn user(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + name.len());
    k.push(USER);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Key of a device's public key.
pub(crate) fn device(name: &str, device: DeviceId) -> Vec<u8> {
    user_device(DEVICE, name, device, 0)
}

/// Prefix of every device key of a user.
pub(crate) fn devices_of(name: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + name.len());
    k.push(DEVICE);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

/// Key of an invite token.
pub(crate) fn invite(token: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + token.len());
    k.push(INVITE);
    k.extend_from_slice(token.as_bytes());
    k
}

/// Key saying that `owner` counts `other` as a contact (owner has messaged other).
pub(crate) fn contact(owner: &str, other: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + owner.len() + other.len());
    k.push(CONTACT);
    k.extend_from_slice(owner.as_bytes());
    k.push(0);
    k.extend_from_slice(other.as_bytes());
    k
}

/// Key of a device's E2EE identity keys.
pub(crate) fn identity(user: &str, device: DeviceId) -> Vec<u8> {
    user_device(IDENTITY, user, device, 0)
}

/// Prefix of a device's unclaimed one-time keys.
pub(crate) fn one_time_keys_of(user: &str, device: DeviceId) -> Vec<u8> {
    user_device(ONE_TIME_KEY, user, device, 32)
}

/// Key of one unclaimed one-time key.
pub(crate) fn one_time_key(user: &str, device: DeviceId, key: &[u8; 32]) -> Vec<u8> {
    let mut k = one_time_keys_of(user, device);
    k.extend_from_slice(key);
    k
}

/// Key of a device's fallback key.
pub(crate) fn fallback_key(user: &str, device: DeviceId) -> Vec<u8> {
    user_device(FALLBACK_KEY, user, device, 0)
}

/// Key of a device link code.
pub(crate) fn link_code(code: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + code.len());
    k.push(LINK_CODE);
    k.extend_from_slice(code.as_bytes());
    k
}

/// Key saying that the mailbox item `item_key` expires at `at_ms` (ordered by time).
pub(crate) fn expiry(at_ms: u64, item_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + item_key.len());
    k.push(EXPIRY);
    k.extend_from_slice(&at_ms.to_be_bytes());
    k.extend_from_slice(item_key);
    k
}

/// Splits an expiry key into (at_ms, mailbox item key).
pub(crate) fn parse_expiry(key: &[u8]) -> Option<(u64, &[u8])> {
    let rest = key.strip_prefix(&[EXPIRY])?;
    Some((be_u64(rest.get(..8)?)?, rest.get(8..)?))
}

/// Key of a user's next-device-id counter.
pub(crate) fn next_device(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + user.len());
    k.push(NEXT_DEVICE);
    k.extend_from_slice(user.as_bytes());
    k
}

/// Key of a group record.
pub(crate) fn group(group: GroupId) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(GROUP);
    k.extend_from_slice(&group.0.to_be_bytes());
    k
}

/// Prefix of the membership marks of `user`.
pub(crate) fn memberships_of(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + user.len());
    k.push(MEMBERSHIP);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

/// Key marking `user` as a member of `group`.
pub(crate) fn membership(user: &str, group: GroupId) -> Vec<u8> {
    let mut k = memberships_of(user);
    k.extend_from_slice(&group.0.to_be_bytes());
    k
}

/// Key of the next-group-id counter.
pub(crate) fn next_group() -> Vec<u8> {
    vec![NEXT_GROUP]
}

/// Key of a group invite token.
pub(crate) fn group_invite(token: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + token.len());
    k.push(GROUP_INVITE);
    k.extend_from_slice(token.as_bytes());
    k
}

fn group_message(tag: u8, group: GroupId, sender: &str, id: &ClientMsgId) -> Vec<u8> {
    let mut k = Vec::with_capacity(26 + sender.len());
    k.push(tag);
    k.extend_from_slice(&group.0.to_be_bytes());
    k.extend_from_slice(sender.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.0);
    k
}

/// Key of a group message's body.
pub(crate) fn group_body(group: GroupId, sender: &str, id: &ClientMsgId) -> Vec<u8> {
    group_message(GROUP_BODY, group, sender, id)
}

/// Key of a group message's receipt record.
pub(crate) fn group_receipt(group: GroupId, sender: &str, id: &ClientMsgId) -> Vec<u8> {
    group_message(GROUP_RECEIPT, group, sender, id)
}

/// The receipt key of the message whose body key is `body_key`.
pub(crate) fn receipt_of_body(body_key: &[u8]) -> Option<Vec<u8>> {
    let rest = body_key.strip_prefix(&[GROUP_BODY])?;
    let mut k = Vec::with_capacity(body_key.len());
    k.push(GROUP_RECEIPT);
    k.extend_from_slice(rest);
    Some(k)
}

/// The body key of the message whose receipt key is `receipt_key`.
pub(crate) fn body_of_receipt(receipt_key: &[u8]) -> Option<Vec<u8>> {
    let rest = receipt_key.strip_prefix(&[GROUP_RECEIPT])?;
    let mut k = Vec::with_capacity(receipt_key.len());
    k.push(GROUP_BODY);
    k.extend_from_slice(rest);
    Some(k)
}

/// Prefix of `poster`'s status updates.
pub(crate) fn stories_of(poster: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(18 + poster.len());
    k.push(STORY);
    k.extend_from_slice(poster.as_bytes());
    k.push(0);
    k
}

/// Key of a status update's record.
pub(crate) fn story(poster: &str, id: &ClientMsgId) -> Vec<u8> {
    let mut k = stories_of(poster);
    k.extend_from_slice(&id.0);
    k
}

/// Key of a status update's body.
pub(crate) fn story_body(poster: &str, id: &ClientMsgId) -> Vec<u8> {
    let mut k = story(poster, id);
    k[0] = STORY_BODY;
    k
}

/// Prefix of every item of `group`'s log.
pub(crate) fn group_log_prefix(group: GroupId) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(GROUP_LOG);
    k.extend_from_slice(&group.0.to_be_bytes());
    k
}

/// Key of the item `seq` of `group`'s log.
pub(crate) fn group_log(group: GroupId, seq: u64) -> Vec<u8> {
    let mut k = group_log_prefix(group);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The group and seq of a log item's key.
pub(crate) fn parse_group_log(key: &[u8]) -> Option<(GroupId, u64)> {
    let rest = key.strip_prefix(&[GROUP_LOG])?;
    if rest.len() != 16 {
        return None;
    }
    Some((GroupId(be_u64(&rest[..8])?), be_u64(&rest[8..])?))
}

/// Key of `group`'s log head (the seq its next item gets).
pub(crate) fn group_head(group: GroupId) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(GROUP_HEAD);
    k.extend_from_slice(&group.0.to_be_bytes());
    k
}

/// Prefix of every log cursor of `group`.
pub(crate) fn group_cursors(group: GroupId) -> Vec<u8> {
    let mut k = Vec::with_capacity(30);
    k.push(GROUP_CURSOR);
    k.extend_from_slice(&group.0.to_be_bytes());
    k
}

/// Key of the log cursor of `user`'s `device` in `group`.
pub(crate) fn group_cursor(group: GroupId, user: &str, device: DeviceId) -> Vec<u8> {
    let mut k = group_cursors(group);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k.extend_from_slice(&device.0.to_be_bytes());
    k
}

/// The user and device of a cursor key of `group` (as listed under [`group_cursors`]).
pub(crate) fn parse_group_cursor(key: &[u8]) -> Option<(&str, DeviceId)> {
    let rest = key.get(9..)?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let user = std::str::from_utf8(&rest[..nul]).ok()?;
    let device: [u8; 4] = rest.get(nul + 1..)?.try_into().ok()?;
    Some((user, DeviceId(u32::from_be_bytes(device))))
}

/// Prefix of the log spans `user` may read.
pub(crate) fn group_readers_of(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(10 + user.len());
    k.push(GROUP_READER);
    k.extend_from_slice(user.as_bytes());
    k.push(0);
    k
}

/// Key of the log span `user` may read in `group`.
pub(crate) fn group_reader(user: &str, group: GroupId) -> Vec<u8> {
    let mut k = group_readers_of(user);
    k.extend_from_slice(&group.0.to_be_bytes());
    k
}

/// Key of a logged group message's receipt record.
pub(crate) fn group_log_receipt(group: GroupId, sender: &str, id: &ClientMsgId) -> Vec<u8> {
    group_message(GROUP_LOG_RECEIPT, group, sender, id)
}

/// Reads a big-endian u64 value; `None` when the stored value has the wrong size.
pub(crate) fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_keys_round_trip_and_sort_by_seq() {
        let mb = MailboxId {
            user: "al".into(),
            device: DeviceId(3),
        };
        let a = mailbox_item(&mb, ServerSeq(2));
        let b = mailbox_item(&mb, ServerSeq(256));
        assert!(a < b);
        assert_eq!(parse_mailbox_item(&b), Some((mb.clone(), ServerSeq(256))));
        // "al" must not be a prefix of "alice"'s items.
        let other = MailboxId {
            user: "alice".into(),
            device: DeviceId(3),
        };
        assert!(!mailbox_item(&other, ServerSeq(1)).starts_with(&mailbox_prefix(&mb)));
        assert_eq!(parse_mailbox_item(b"mxx"), None);
    }
}
