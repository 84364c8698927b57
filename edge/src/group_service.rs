//! Carries out group requests over storage and words the answers: the async half of
//! `group_requests.rs` (which checks them inside the session).

use crate::group_requests::{invite_token, refusal};
use missive_proto::{
    ErrorCode, Frame, GroupAnswer, GroupAnswerKind, GroupInfo, GroupOp, RequestRefused,
};
use missive_storage::{GroupChangeRequest, GroupRefusal, StorageError, Store};
use std::future::Future;

/// The answer frame to `op` asked by `user` (a `GroupAnswer`, or a `RequestRefused` with the
/// refusal's code). Writes resolve after their fsync; reads are answered from the engine.
pub fn answer(
    store: &Store,
    user: &str,
    request_id: u32,
    op: GroupOp,
    max_members: usize,
    now_ms: u64,
) -> impl Future<Output = Frame> + Send + 'static {
    let refused = move |r: &GroupRefusal| -> Frame {
        let (code, message) = refusal(r);
        RequestRefused::new(request_id, code, &message).into()
    };
    let failed = move |e: StorageError| -> Frame {
        let (code, message) = match e {
            StorageError::Unavailable(_) => (
                ErrorCode::StorageUnavailable,
                "storage is refusing writes for now; retry later",
            ),
            e => {
                tracing::error!(error = %e, "group request failed");
                (ErrorCode::Internal, "storage failed; retry")
            }
        };
        RequestRefused::new(request_id, code, message).into()
    };
    let answered =
        move |answer: GroupAnswerKind| -> Frame { GroupAnswer { request_id, answer }.into() };
    let info = move |r: Result<Result<GroupInfo, GroupRefusal>, StorageError>| match r {
        Ok(Ok(info)) => answered(GroupAnswerKind::Info(info)),
        Ok(Err(why)) => refused(&why),
        Err(e) => failed(e),
    };
    let store = store.clone();
    let user = user.to_owned();
    async move {
        let change =
            |c: GroupChangeRequest, group| store.change_group(&user, group, c, max_members, now_ms);
        match op {
            GroupOp::Create { name } => match store.create_group(&user, &name, now_ms).await {
                Ok(i) => answered(GroupAnswerKind::Info(i)),
                Err(e) => failed(e),
            },
            GroupOp::Add { group, users } => {
                info(change(GroupChangeRequest::Add(users), group).await)
            }
            GroupOp::Remove { group, users } => {
                info(change(GroupChangeRequest::Remove(users), group).await)
            }
            GroupOp::Promote { group, user: who } => {
                info(change(GroupChangeRequest::Promote(who), group).await)
            }
            GroupOp::Leave { group } => match change(GroupChangeRequest::Leave, group).await {
                Ok(Ok(_)) => answered(GroupAnswerKind::Left { group }),
                Ok(Err(why)) => refused(&why),
                Err(e) => failed(e),
            },
            GroupOp::Info { group } => info(store.group_info(group, &user)),
            GroupOp::List => match store.groups_of(&user) {
                Ok(list) => answered(GroupAnswerKind::List(list)),
                Err(e) => failed(e),
            },
            GroupOp::CreateInvite {
                group,
                expires_in_secs,
            } => {
                let token = invite_token();
                let expires_at_ms = if expires_in_secs == 0 {
                    0
                } else {
                    now_ms.saturating_add(u64::from(expires_in_secs) * 1000)
                };
                match store
                    .create_group_invite(&user, group, &token, expires_at_ms)
                    .await
                {
                    Ok(Ok(())) => answered(GroupAnswerKind::Invite {
                        group,
                        token,
                        expires_at_ms,
                    }),
                    Ok(Err(why)) => refused(&why),
                    Err(e) => failed(e),
                }
            }
            GroupOp::Join { token } => {
                info(store.join_group(&user, &token, max_members, now_ms).await)
            }
            GroupOp::Revoke { group, token } => {
                match store.revoke_group_invite(&user, group, &token).await {
                    Ok(Ok(())) => answered(GroupAnswerKind::Revoked),
                    Ok(Err(why)) => refused(&why),
                    Err(e) => failed(e),
                }
            }
            GroupOp::Receipts { group, ids } => match store.group_info(group, &user) {
                Ok(Ok(_)) => match store.group_receipts(group, &user, &ids) {
                    Ok(r) => answered(GroupAnswerKind::Receipts(r)),
                    Err(e) => failed(e),
                },
                Ok(Err(why)) => refused(&why),
                Err(e) => failed(e),
            },
        }
    }
}
