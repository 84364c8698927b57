//! What this device knows of each group it is in: name, membership epoch and members, as
//! the server last told it (a `GroupInfo` answer, then the `GroupNotice`s that arrive in
//! order with the group's messages). Kept with the E2EE state, so a later run sends with the
//! epoch it knew (a stale one is refused with `GroupChanged` and fetched again).

use missive_proto::{GroupChange, GroupId, GroupInfo, GroupMember, GroupNotice, GroupSummary};
use std::collections::BTreeMap;

/// One group as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupView {
    /// Its name (empty until learnt).
    pub(crate) name: String,
    /// The membership epoch last seen.
    pub(crate) epoch: u64,
    /// Members, as far as known (see `complete`).
    pub(crate) members: Vec<GroupMember>,
    /// `members` is the whole list at `epoch` (from `Info`, or followed event by event since).
    pub(crate) complete: bool,
    /// This user is a member.
    pub(crate) joined: bool,
}

impl GroupView {
    fn empty() -> Self {
        Self {
            name: String::new(),
            epoch: 0,
            members: Vec::new(),
            complete: false,
            joined: false,
        }
    }

    /// Whether `user` is a member as far as known.
    pub(crate) fn has(&self, user: &str) -> bool {
        self.members.iter().any(|m| m.user == user)
    }

    fn add(&mut self, user: &str, admin: bool) {
        if let Some(m) = self.members.iter_mut().find(|m| m.user == user) {
            m.admin |= admin;
        } else {
            self.members.push(GroupMember {
                user: user.to_owned(),
                admin,
            });
        }
    }

    fn remove(&mut self, user: &str) {
        self.members.retain(|m| m.user != user);
    }
}

/// The groups of this device.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct GroupDirectory {
    groups: BTreeMap<GroupId, GroupView>,
}

/// What a notice changed for this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct NoticeEffect {
    /// This user is no longer a member (removed, or left from another device).
    pub(crate) left: bool,
    /// The member list is not known whole (a first notice of a group, or one skipped).
    pub(crate) incomplete: bool,
}

impl GroupDirectory {
    /// The group as known, if at all.
    pub(crate) fn get(&self, group: GroupId) -> Option<&GroupView> {
        self.groups.get(&group)
    }

    /// The server's whole view of a group (we are a member: only members get `Info`).
    pub(crate) fn set_info(&mut self, info: &GroupInfo) {
        self.groups.insert(
            info.group,
            GroupView {
                name: info.name.clone(),
                epoch: info.epoch,
                members: info.members.clone(),
                complete: true,
                joined: true,
            },
        );
    }

    /// The server said the list of our groups: names of known ones, stubs for new ones.
    pub(crate) fn set_list(&mut self, list: &[GroupSummary]) {
        for s in list {
            let v = self.groups.entry(s.group).or_insert_with(GroupView::empty);
            v.name.clone_from(&s.name);
            v.joined = true;
            if v.members.len() != s.members as usize {
                v.complete = false;
            }
        }
    }

    /// This user left `group` (the server confirmed).
    pub(crate) fn left(&mut self, group: GroupId, me: &str) {
        if let Some(v) = self.groups.get_mut(&group) {
            v.joined = false;
            v.remove(me);
        }
    }

    /// The next send to `group` must learn its members first (its epoch was refused).
    pub(crate) fn mark_stale(&mut self, group: GroupId) {
        if let Some(v) = self.groups.get_mut(&group) {
            v.complete = false;
        }
    }

    /// Applies a change `actor` made (delivered in order with the group's messages).
    pub(crate) fn apply(&mut self, me: &str, actor: &str, notice: &GroupNotice) -> NoticeEffect {
        let v = self
            .groups
            .entry(notice.group)
            .or_insert_with(GroupView::empty);
        // A notice that is not the next epoch: we missed changes (or this is the first).
        let follows = v.complete && notice.epoch == v.epoch + 1;
        if notice.epoch <= v.epoch && v.complete {
            // Already in what `Info` told us: nothing to learn from it.
            return NoticeEffect {
                left: !v.joined,
                incomplete: !v.complete,
            };
        }
        v.epoch = notice.epoch;
        let mut left = false;
        match &notice.change {
            GroupChange::Created(name) => {
                v.name.clone_from(name);
                v.members = vec![GroupMember {
                    user: actor.to_owned(),
                    admin: true,
                }];
                v.complete = true;
                v.joined = actor == me;
                return NoticeEffect {
                    left: !v.joined,
                    incomplete: false,
                };
            }
            GroupChange::Added(users) => {
                // Only admins add: the actor is one.
                v.add(actor, true);
                for u in users {
                    v.add(u, false);
                    if u == me {
                        v.joined = true;
                    }
                }
            }
            GroupChange::Removed(users) => {
                for u in users {
                    v.remove(u);
                    if u == me {
                        v.joined = false;
                        left = true;
                    }
                }
            }
            GroupChange::Left => {
                v.remove(actor);
                if actor == me {
                    v.joined = false;
                    left = true;
                }
            }
            GroupChange::Joined => {
                v.add(actor, false);
                if actor == me {
                    v.joined = true;
                }
            }
            GroupChange::Promoted(users) => {
                for u in users {
                    v.add(u, true);
                }
            }
        }
        v.complete = follows;
        NoticeEffect {
            left,
            incomplete: !v.complete,
        }
    }

    /// The stored form.
    pub(crate) fn to_stored(&self) -> Vec<stored::Group> {
        self.groups
            .iter()
            .map(|(g, v)| stored::Group {
                group: g.0,
                name: v.name.clone(),
                epoch: v.epoch,
                members: v
                    .members
                    .iter()
                    .map(|m| (m.user.clone(), m.admin))
                    .collect(),
                complete: v.complete,
                joined: v.joined,
            })
            .collect()
    }

    /// Reads what [`GroupDirectory::to_stored`] made.
    pub(crate) fn from_stored(groups: Vec<stored::Group>) -> Self {
        Self {
            groups: groups
                .into_iter()
                .map(|g| {
                    (
                        GroupId(g.group),
                        GroupView {
                            name: g.name,
                            epoch: g.epoch,
                            members: g
                                .members
                                .into_iter()
                                .map(|(user, admin)| GroupMember { user, admin })
                                .collect(),
                            complete: g.complete,
                            joined: g.joined,
                        },
                    )
                })
                .collect(),
        }
    }
}

/// The stored form of the directory (rkyv).
#[allow(missing_docs)]
pub(crate) mod stored {
    use rkyv::{Archive, Deserialize, Serialize};

    #[derive(Archive, Serialize, Deserialize)]
    pub(crate) struct Group {
        pub(crate) group: u64,
        pub(crate) name: String,
        pub(crate) epoch: u64,
        pub(crate) members: Vec<(String, bool)>,
        pub(crate) complete: bool,
        pub(crate) joined: bool,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: GroupId = GroupId(3);

    fn notice(epoch: u64, change: GroupChange) -> GroupNotice {
        GroupNotice {
            group: G,
            epoch,
            change,
        }
    }

    fn users(v: &GroupView) -> Vec<&str> {
        v.members.iter().map(|m| m.user.as_str()).collect()
    }

    #[test]
    fn notices_in_order_keep_the_list_whole() {
        let mut d = GroupDirectory::default();
        let e = d.apply(
            "alice",
            "alice",
            &notice(1, GroupChange::Created("team".into())),
        );
        assert_eq!(e, NoticeEffect::default());
        d.apply(
            "alice",
            "alice",
            &notice(2, GroupChange::Added(vec!["bob".into(), "carol".into()])),
        );
        d.apply(
            "alice",
            "alice",
            &notice(3, GroupChange::Promoted(vec!["bob".into()])),
        );
        d.apply(
            "alice",
            "bob",
            &notice(4, GroupChange::Removed(vec!["carol".into()])),
        );
        let v = d.get(G).unwrap();
        assert_eq!(
            (v.name.as_str(), v.epoch, v.complete, v.joined),
            ("team", 4, true, true)
        );
        assert_eq!(users(v), ["alice", "bob"]);
        assert!(v.members[1].admin);
        // A skipped epoch: the list may be wrong now.
        let e = d.apply("alice", "dave", &notice(6, GroupChange::Joined));
        assert!(e.incomplete);
        assert!(!d.get(G).unwrap().complete);
    }

    #[test]
    fn being_added_gives_a_partial_list_and_removal_ends_membership() {
        let mut d = GroupDirectory::default();
        let e = d.apply(
            "bob",
            "alice",
            &notice(5, GroupChange::Added(vec!["bob".into()])),
        );
        assert!(e.incomplete && !e.left);
        let v = d.get(G).unwrap();
        assert!(v.joined && !v.complete);
        assert_eq!(users(v), ["alice", "bob"]);
        d.set_info(&GroupInfo {
            group: G,
            name: "team".into(),
            epoch: 5,
            members: vec![
                GroupMember {
                    user: "alice".into(),
                    admin: true,
                },
                GroupMember {
                    user: "carol".into(),
                    admin: false,
                },
                GroupMember {
                    user: "bob".into(),
                    admin: false,
                },
            ],
        });
        assert!(d.get(G).unwrap().complete);
        // An event older than the info changes nothing.
        d.apply(
            "bob",
            "alice",
            &notice(4, GroupChange::Removed(vec!["carol".into()])),
        );
        assert!(d.get(G).unwrap().has("carol"));
        let e = d.apply(
            "bob",
            "alice",
            &notice(6, GroupChange::Removed(vec!["bob".into()])),
        );
        assert!(e.left);
        assert!(!d.get(G).unwrap().joined);
        let again = GroupDirectory::from_stored(d.to_stored());
        assert_eq!(again, d);
    }
}
