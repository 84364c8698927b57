//! Group requests before storage: what a well-formed request is (names, counts) and how a
//! storage refusal reads on the wire. Sans-IO: the session asks, the driver stores.

use missive_proto::{
    validate_group_name, validate_user_name, ErrorCode, GroupOp, MAX_USERS_PER_CHANGE,
};
use missive_storage::GroupRefusal;

/// Checks a request's fields before any storage work; the reason when it is malformed.
pub fn check(op: &GroupOp) -> Result<(), String> {
    let users = |users: &[String]| -> Result<(), String> {
        if users.is_empty() || users.len() > MAX_USERS_PER_CHANGE {
            return Err(format!("name 1 to {MAX_USERS_PER_CHANGE} users"));
        }
        for u in users {
            validate_user_name(u).map_err(|e| format!("{u:?}: {e}"))?;
        }
        Ok(())
    };
    match op {
        GroupOp::Create { name } => validate_group_name(name).map_err(str::to_owned),
        GroupOp::Add { users: u, .. } | GroupOp::Remove { users: u, .. } => users(u),
        GroupOp::Promote { user, .. } => validate_user_name(user).map_err(str::to_owned),
        GroupOp::Join { token } | GroupOp::Revoke { token, .. } => {
            if token.is_empty() || token.len() > 64 || !token.is_ascii() {
                Err("not an invite token".into())
            } else {
                Ok(())
            }
        }
        GroupOp::Receipts { ids, .. } if ids.len() > MAX_USERS_PER_CHANGE => Err(format!(
            "ask for at most {MAX_USERS_PER_CHANGE} receipts at once"
        )),
        GroupOp::Leave { .. }
        | GroupOp::Info { .. }
        | GroupOp::List
        | GroupOp::CreateInvite { .. }
        | GroupOp::Receipts { .. } => Ok(()),
    }
}

/// The wire code and message of a storage refusal.
pub fn refusal(r: &GroupRefusal) -> (ErrorCode, String) {
    match r {
        GroupRefusal::UnknownGroup => (ErrorCode::UnknownGroup, "no such group".into()),
        GroupRefusal::NotMember => (
            ErrorCode::NotGroupMember,
            "only members of the group may do this".into(),
        ),
        GroupRefusal::NotAdmin => (
            ErrorCode::NotGroupAdmin,
            "only admins of the group may do this".into(),
        ),
        GroupRefusal::Full => (
            ErrorCode::GroupFull,
            "the group has as many members as allowed".into(),
        ),
        GroupRefusal::Changed { epoch } => (
            ErrorCode::GroupChanged,
            format!("the group changed (epoch {epoch}): fetch its info and send again"),
        ),
        GroupRefusal::InviteInvalid => (
            ErrorCode::GroupInviteInvalid,
            "the invite is unknown, expired or revoked".into(),
        ),
        GroupRefusal::UnknownUser(u) => (ErrorCode::UnknownRecipient, format!("no such user {u}")),
    }
}

/// A fresh invite token: 128 random bits as 32 lower-case hex digits.
pub fn invite_token() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::GroupId;

    #[test]
    fn malformed_requests_are_named() {
        assert!(check(&GroupOp::Create {
            name: String::new()
        })
        .is_err());
        assert!(check(&GroupOp::Create {
            name: "hikers".into()
        })
        .is_ok());
        let add = |users: Vec<String>| GroupOp::Add {
            group: GroupId(1),
            users,
        };
        assert!(check(&add(vec![])).is_err());
        assert!(check(&add(vec!["bad name\n".into()])).is_err());
        assert!(check(&add(vec!["bob".into()])).is_ok());
        assert!(check(&add(vec!["bob".into(); MAX_USERS_PER_CHANGE + 1])).is_err());
        assert!(check(&GroupOp::Join {
            token: "x".repeat(65)
        })
        .is_err());
    }

    #[test]
    fn tokens_are_random_and_url_safe() {
        let a = invite_token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, invite_token());
    }
}
