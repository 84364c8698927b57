//! Status updates ("stories"): like a group message, a post is one body record (`q`) plus a
//! small reference in each audience device's mailbox, written in one batch; its record (`p`)
//! holds the audience, the viewers and the references not yet acknowledged (the body goes
//! with the last). The whole post, record and body, is dropped when its lifetime ends (an
//! entry in the expiry index); references left in mailboxes are then skipped when read.

use crate::records::{decode, encode, StoredItem};
use crate::write::{Class, Reads, Tx, Write};
use crate::{keys, MailboxId, StorageError};
use missive_proto::{ClientMsgId, DeviceId, Payload, StoryMessage, StorySummary};
use rkyv::{Archive, Deserialize, Serialize};

/// A status update as stored.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoryRecord {
    /// When it was posted, ms since the Unix epoch.
    pub(crate) posted_ms: u64,
    /// When it is dropped, ms since the Unix epoch.
    pub(crate) expires_at_ms: u64,
    /// Who may view it.
    pub(crate) audience: Vec<String>,
    /// Who viewed it, in order.
    pub(crate) viewers: Vec<String>,
    /// References not acknowledged yet; the body is freed at 0.
    pub(crate) refs_left: u32,
}

/// What a post did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoryOutcome {
    /// Stored: the body once, a reference in each of `references` device mailboxes.
    Stored {
        /// Storage time, ms since the Unix epoch.
        server_ts_ms: u64,
        /// Device mailboxes that got a reference.
        references: usize,
    },
    /// This poster had already stored this id; nothing was written.
    Duplicate {
        /// When the first copy was stored.
        server_ts_ms: u64,
    },
    /// A user of the audience does not exist; nothing was written.
    UnknownUser(String),
}

/// Posts a status update to `audience` (and the poster's other devices).
#[derive(Debug)]
pub(crate) struct PostStory {
    pub(crate) poster: String,
    pub(crate) device: DeviceId,
    pub(crate) client_msg_id: ClientMsgId,
    pub(crate) audience: Vec<String>,
    pub(crate) body: Vec<u8>,
    /// How long it lives.
    pub(crate) ttl_ms: u64,
    pub(crate) now_ms: u64,
}

impl Write for PostStory {
    type Output = StoryOutcome;

    /// Up to audience × devices references: never on a network thread.
    fn class(&self) -> Class {
        Class {
            inline: false,
            ..Class::ADDS
        }
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<StoryOutcome, StorageError> {
        let dedup_key = keys::dedup(&self.poster, self.device, &self.client_msg_id);
        if let Some(v) = tx.read(&dedup_key)? {
            let ts = keys::be_u64(&v).unwrap_or(0);
            return Ok(StoryOutcome::Duplicate { server_ts_ms: ts });
        }
        let mut audience: Vec<String> = Vec::with_capacity(self.audience.len());
        for user in self.audience {
            if user != self.poster && !audience.contains(&user) {
                audience.push(user);
            }
        }
        let mut mailboxes = Vec::new();
        for user in &audience {
            let devices = tx.devices(user)?;
            if devices.is_empty() {
                return Ok(StoryOutcome::UnknownUser(user.clone()));
            }
            mailboxes.extend(devices.into_iter().map(|d| MailboxId::new(user.clone(), d)));
        }
        for d in tx.devices(&self.poster)? {
            if d != self.device {
                mailboxes.push(MailboxId::new(self.poster.clone(), d));
            }
        }
        let expires_at_ms = self.now_ms.saturating_add(self.ttl_ms);
        let record_key = keys::story(&self.poster, &self.client_msg_id);
        let record = StoryRecord {
            posted_ms: self.now_ms,
            expires_at_ms,
            audience,
            viewers: Vec::new(),
            refs_left: mailboxes.len() as u32,
        };
        tx.put(record_key.clone(), encode(&record)?);
        tx.put(keys::expiry(expires_at_ms, &record_key), Vec::new());
        let stored = StoredItem {
            from: self.poster.clone(),
            from_device: self.device,
            client_msg_id: self.client_msg_id,
            server_ts_ms: self.now_ms,
            payload: Payload::Story(Box::new(StoryMessage {
                expires_at_ms,
                body: Vec::new(),
            })),
        };
        let shown = StoredItem {
            payload: Payload::Story(Box::new(StoryMessage {
                expires_at_ms,
                body: self.body.clone(),
            })),
            ..stored.clone()
        };
        let references = tx.push_references(mailboxes, &stored, &shown)?;
        tx.put_unseen(
            keys::story_body(&self.poster, &self.client_msg_id),
            self.body,
        );
        tx.put(dedup_key, self.now_ms.to_be_bytes().to_vec());
        Ok(StoryOutcome::Stored {
            server_ts_ms: self.now_ms,
            references,
        })
    }
}

/// `viewer` viewed `poster`'s status `client_msg_id`: recorded once, for its audience only.
#[derive(Debug)]
pub(crate) struct MarkViewed {
    pub(crate) viewer: String,
    pub(crate) poster: String,
    pub(crate) client_msg_id: ClientMsgId,
}

impl Write for MarkViewed {
    /// True when this is the viewer's first view (the poster is then told).
    type Output = bool;

    fn class(&self) -> Class {
        Class::UPDATE
    }

    fn apply(self, tx: &mut Tx<'_>) -> Result<bool, StorageError> {
        let key = keys::story(&self.poster, &self.client_msg_id);
        let Some(v) = tx.read(&key)? else {
            return Ok(false);
        };
        let mut rec = decode::<StoryRecord>(&v, "status update")?;
        if !rec.audience.contains(&self.viewer) || rec.viewers.contains(&self.viewer) {
            return Ok(false);
        }
        rec.viewers.push(self.viewer);
        tx.put(key, encode(&rec)?);
        Ok(true)
    }
}

/// The body of a stored reference `item` (a `Payload::Story` with an empty body), put in
/// place; false when the post is gone (expired).
pub(crate) fn resolve(
    r: &(impl Reads + ?Sized),
    item: &mut StoredItem,
) -> Result<bool, StorageError> {
    let Payload::Story(s) = &mut item.payload else {
        return Ok(true);
    };
    if !s.body.is_empty() {
        return Ok(true);
    }
    match r.read(&keys::story_body(&item.from, &item.client_msg_id))? {
        Some(body) => {
            s.body = body;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// A reference to `poster`'s post was acknowledged: one fewer; the body goes with the last.
pub(crate) fn reference_acked(
    tx: &mut Tx<'_>,
    poster: &str,
    client_msg_id: ClientMsgId,
) -> Result<(), StorageError> {
    let key = keys::story(poster, &client_msg_id);
    let Some(v) = tx.read(&key)? else {
        return Ok(()); // expired
    };
    let mut rec = decode::<StoryRecord>(&v, "status update")?;
    rec.refs_left = rec.refs_left.saturating_sub(1);
    if rec.refs_left == 0 {
        tx.remove(keys::story_body(poster, &client_msg_id));
    }
    tx.put(key, encode(&rec)?);
    Ok(())
}

/// A post's lifetime ended: its record and body go.
pub(crate) fn expire(tx: &mut Tx<'_>, record_key: &[u8]) {
    let mut body = record_key.to_vec();
    body[0] = keys::STORY_BODY;
    tx.remove(body);
    tx.remove(record_key.to_vec());
}

/// `poster`'s posts that have not expired, oldest first.
pub(crate) fn stories_of(
    r: &(impl Reads + ?Sized),
    poster: &str,
    now_ms: u64,
) -> Result<Vec<StorySummary>, StorageError> {
    let prefix = keys::stories_of(poster);
    let mut out = Vec::new();
    for kv in r.scan(&prefix) {
        let (k, v) = kv?;
        let Some(id) = k
            .get(prefix.len()..)
            .and_then(|t| <[u8; 16]>::try_from(t).ok())
        else {
            continue;
        };
        let rec = decode::<StoryRecord>(&v, "status update")?;
        if rec.expires_at_ms <= now_ms {
            continue; // the sweep has not dropped it yet
        }
        out.push(StorySummary {
            client_msg_id: ClientMsgId(id),
            posted_ms: rec.posted_ms,
            expires_at_ms: rec.expires_at_ms,
            audience: rec.audience.len() as u32,
            viewers: rec.viewers,
        });
    }
    out.sort_by_key(|s| s.posted_ms);
    Ok(out)
}
