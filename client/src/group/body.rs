//! What a `GroupSend.body` holds: the Megolm session id and the Megolm ciphertext of a
//! [`GroupPlaintext`], which binds the sealed [`crate::Content`] to its group and message id
//! (the server cannot move a ciphertext to another group or give it another id).

use crate::ClientError;
use missive_proto::{ClientMsgId, GroupId};

pub(crate) use wire::{GroupBody, GroupPlaintext};

/// First field of every body; another value is a body this SDK cannot read.
pub(crate) const BODY_VERSION: u8 = 1;

#[allow(missing_docs)]
mod wire {
    use missive_proto::{ClientMsgId, GroupId};
    use rkyv::{Archive, Deserialize, Serialize};

    /// The bytes the server stores once and hands every member.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub(crate) struct GroupBody {
        /// [`super::BODY_VERSION`].
        pub(crate) version: u8,
        /// The sender's Megolm session (base64 of its public signing key).
        pub(crate) session_id: String,
        /// The Megolm message (its byte encoding) of a [`GroupPlaintext`] archive.
        pub(crate) ciphertext: Vec<u8>,
    }

    /// What the Megolm ciphertext decrypts to.
    #[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
    pub(crate) struct GroupPlaintext {
        /// The group it was sent to.
        pub(crate) group: GroupId,
        /// The `client_msg_id` it was sent under.
        pub(crate) client_msg_id: ClientMsgId,
        /// The sealed `Content` (see `seal`).
        pub(crate) content: Vec<u8>,
    }
}

fn aligned(bytes: &[u8]) -> rkyv::util::AlignedVec<16> {
    let mut a = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
    a.extend_from_slice(bytes);
    a
}

impl GroupBody {
    /// The body's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("archiving a group message into a growable buffer cannot fail")
            .into_vec()
    }

    /// Validates and decodes a body (never trusts the bytes: they come from the server).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Self, ClientError> {
        let b = rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned(bytes))
            .map_err(|e| ClientError::InvalidContent(e.to_string()))?;
        if b.version != BODY_VERSION {
            return Err(ClientError::InvalidContent(format!(
                "group body version {}",
                b.version
            )));
        }
        Ok(b)
    }
}

impl GroupPlaintext {
    /// The bytes that get encrypted.
    pub(crate) fn encode(&self) -> Vec<u8> {
        rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .expect("archiving a group message into a growable buffer cannot fail")
            .into_vec()
    }

    /// Decodes a decrypted plaintext and checks it was made for `group` and `id`.
    pub(crate) fn decode_for(
        bytes: &[u8],
        group: GroupId,
        id: ClientMsgId,
    ) -> Result<Self, ClientError> {
        let p = rkyv::from_bytes::<Self, rkyv::rancor::Error>(&aligned(bytes))
            .map_err(|e| ClientError::InvalidContent(e.to_string()))?;
        if p.group != group || p.client_msg_id != id {
            return Err(ClientError::InvalidContent(
                "a group message moved to another group or id".into(),
            ));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_round_trip_and_garbage_is_refused() {
        let b = GroupBody {
            version: BODY_VERSION,
            session_id: "abc".into(),
            ciphertext: vec![1, 2, 3],
        };
        assert_eq!(GroupBody::decode(&b.encode()).unwrap(), b);
        let mut v2 = b.clone();
        v2.version = 2;
        assert!(GroupBody::decode(&v2.encode()).is_err());
        assert!(GroupBody::decode(&[]).is_err());
        assert!(GroupBody::decode(&[0xff; 40]).is_err());
        let p = GroupPlaintext {
            group: GroupId(1),
            client_msg_id: ClientMsgId([2; 16]),
            content: vec![9],
        };
        let bytes = p.encode();
        assert_eq!(
            GroupPlaintext::decode_for(&bytes, GroupId(1), ClientMsgId([2; 16])).unwrap(),
            p
        );
        assert!(GroupPlaintext::decode_for(&bytes, GroupId(2), ClientMsgId([2; 16])).is_err());
        assert!(GroupPlaintext::decode_for(&bytes, GroupId(1), ClientMsgId([3; 16])).is_err());
    }
}
