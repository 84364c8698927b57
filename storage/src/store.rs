//! The public face of storage: [`Store`], its configuration and the outcomes of each write.

use crate::backup::BackupReport;
use crate::calls;
use crate::compact::CompactReport;
use crate::device_registry::LinkOutcome;
use crate::engine::{self, Engine, EngineSlot, Tuning};
use crate::group_commit::{self, Request};
use crate::groups::{self, GroupRefusal, GroupSendOutcome};
use crate::health::{HealthCell, StorageHealth};
use crate::key_directory::{ClaimFrom, ClaimedBundle, KeyStatus, KeyUpload, UploadOutcome};
use crate::media::{self, BlobRecord, MediaLimits, OpenOutcome};
use crate::records::{decode_item, decode_user, StoredItem, UserRecord};
use crate::stories::{self, StoryOutcome};
use crate::write::{Typed, Write};
use crate::{accounts, device_registry, group_log, key_directory, mailbox};
use crate::{keys, layout, MailboxId, StorageError};
use missive_proto::{
    BlobId, ClientMsgId, DeviceEnvelope, DeviceId, GroupId, GroupInfo, GroupReceipt, GroupSummary,
    ServerSeq, UserDevices, Visibility,
};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;

/// Tuning of the store; every field has a default that suits one edge on one machine.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The embedded engine. Default [`Engine::Sled`] (the design card's choice). A store
    /// directory opens only with the engine that made it; `migrate` moves it to the other.
    pub engine: Engine,
    /// Page cache (sled) or block cache (fjall) in bytes. Default 256 MiB. sled's resident
    /// memory follows its cache (its own default of 1 GiB made a 1M-envelope queue cost
    /// 540 MiB of RSS; see bench/RESULTS.md); fjall's block cache fills from reads only.
    pub cache_capacity_bytes: u64,
    /// fjall only: the in-memory write buffer (memtable) is flushed to a table once it holds
    /// this many bytes. It bounds the journal replayed after a crash (and so the reopen time)
    /// and the memory it holds. Default 32 MiB; at least 1 MiB, at most 1 GiB.
    pub memtable_bytes: u64,
    /// Most operations folded into one group commit (one flush + fsync). Default 4096.
    pub max_batch: usize,
    /// Undelivered items and dedup keys older than this are swept. Default 30 days.
    pub retention: Duration,
    /// Least time between two fsyncs, so that under load one fsync covers the writes of several
    /// batches (like PostgreSQL's `commit_delay`). A write after a quiet spell is fsync'd at
    /// once; later ones wait at most this long after the previous fsync began. Writes are
    /// applied at once; live recipients get their items, and the answers that promise
    /// durability (a sender's `Sent`, a registration) go out, after the fsync. Zero: every
    /// batch is fsync'd as soon as it is applied. Default 1 ms.
    pub commit_delay: Duration,
    /// Most undelivered items one device mailbox holds; a send that would pass it is refused
    /// ([`AppendOutcome::MailboxFull`]). Default 10,000.
    pub mailbox_max_items: u64,
    /// Most bytes of undelivered items one device mailbox holds. Default 256 MiB.
    pub mailbox_max_bytes: u64,
    /// Most undelivered messages of one sender in one device mailbox: a stranger cannot fill
    /// someone's mailbox alone. Default 2,000.
    pub mailbox_max_items_per_sender: u64,
    /// Most bytes of undelivered messages of one sender in one device mailbox. Default 64 MiB.
    pub mailbox_max_bytes_per_sender: u64,
    /// Invite tokens older than this register nobody and are swept. Default 7 days.
    pub invite_ttl: Duration,
    /// Device link codes older than this link nothing and are swept. Default 5 minutes.
    pub link_code_ttl: Duration,
    /// Free bytes on the store's filesystem below which new messages, accounts, invites and
    /// devices are refused with [`StorageError::Unavailable`] (acks and expiry go on). 0
    /// turns the watermark off. Default 256 MiB.
    pub min_free_bytes: u64,
    /// Hand appended items to the [`CommitListener`] (live delivery) when their batch is
    /// applied instead of after its fsync. Saves the recipient one fsync of latency (about
    /// 1 ms of p50 at a paced load on the reference VM) and a thread hand-off per message, at
    /// a price: should that fsync fail, the recipient already has a message that the engine
    /// then drops and its sender is told to send again (the recipient's SDK drops the
    /// repeat by id). Default false: nobody hears of a write before it is durable.
    pub deliver_before_fsync: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            engine: Engine::default(),
            cache_capacity_bytes: 256 * 1024 * 1024,
            memtable_bytes: 32 * 1024 * 1024,
            max_batch: 4096,
            retention: Duration::from_secs(30 * 24 * 3600),
            commit_delay: Duration::from_millis(1),
            mailbox_max_items: 10_000,
            mailbox_max_bytes: 256 * 1024 * 1024,
            mailbox_max_items_per_sender: 2_000,
            mailbox_max_bytes_per_sender: 64 * 1024 * 1024,
            invite_ttl: Duration::from_secs(7 * 24 * 3600),
            link_code_ttl: Duration::from_secs(300),
            min_free_bytes: 256 * 1024 * 1024,
            deliver_before_fsync: false,
        }
    }
}

/// Called for every appended item, in sequence order per mailbox, once the fsync that makes
/// its batch durable has ended (with [`StoreConfig::deliver_before_fsync`], once its batch is
/// applied). It runs on the committer thread, or on the thread that submitted the write when
/// that applied it (see `group_commit::Handle`), with the committer's lock held: it must only
/// hand the item off (e.g. `try_send` to a session), never block and never write to the
/// store.
pub type CommitListener = Arc<dyn Fn(&Appended) + Send + Sync>;

/// An item a batch appended, as the [`CommitListener`] hears of it.
#[derive(Debug, Clone)]
pub enum Appended {
    /// An item of one device's mailbox.
    Mailbox {
        /// The mailbox.
        mailbox: MailboxId,
        /// Its seq there.
        seq: ServerSeq,
        /// The item (a reference shown with the body it refers to).
        item: StoredItem,
    },
    /// An item of a group's log, for every device of `readers`.
    Group {
        /// The group.
        group: missive_proto::GroupId,
        /// Its seq in the group's log.
        seq: ServerSeq,
        /// The item (a `Payload::Group` or `Payload::GroupEvent`).
        item: StoredItem,
        /// The users whose devices read it (the members, and those it removed).
        readers: Arc<[String]>,
    },
}

/// Result of appending a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored durably in `devices` mailboxes (one per device copy).
    Stored {
        /// Storage time, ms since the Unix epoch.
        server_ts_ms: u64,
        /// How many device mailboxes got a copy.
        devices: usize,
    },
    /// This sender had already stored this message id; nothing was written.
    Duplicate {
        /// When the first copy was stored.
        server_ts_ms: u64,
    },
    /// The recipient user has no registered device.
    UnknownRecipient,
    /// A mailbox of the recipient holds its quota of items or bytes; nothing was written.
    MailboxFull,
    /// The copies did not name exactly the current devices of these users (the recipient,
    /// the sender, or both; each list is ascending); nothing was written.
    DeviceMismatch(Vec<UserDevices>),
}

/// Result of acknowledging a mailbox range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckOutcome {
    /// Items removed from the mailbox.
    pub deleted: usize,
    /// Delivery receipts appended to senders' mailboxes.
    pub receipts: usize,
    /// Group messages whose delivered count grew: (sender, new counts). Senders learn these
    /// live; they are not queued (see `groups.rs`).
    pub group_receipts: Vec<(String, missive_proto::GroupReceipt)>,
}

/// A change of a group's membership, asked by one of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupChangeRequest {
    /// Add users (admins only).
    Add(Vec<String>),
    /// Remove members (admins only).
    Remove(Vec<String>),
    /// Make a member an admin (admins only).
    Promote(String),
    /// The asker leaves.
    Leave,
}

/// Result of a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The user and its first device were created.
    Created,
    /// The name is taken.
    Taken,
    /// Invites are required and the token is missing or unknown.
    InviteInvalid,
}

/// Result of one expiry sweep step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SweepOutcome {
    /// Expired mailbox items removed.
    pub items: usize,
    /// Expired dedup keys removed.
    pub dedup_keys: usize,
    /// Expired invite tokens and device link codes removed.
    pub invites: usize,
    /// The step hit its work limit; call again to continue.
    pub more: bool,
}

/// Counters kept by the committer (exported as metrics by the edge).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Group commits done: fsyncs, each covering every batch applied since the one before.
    pub commits: AtomicU64,
    /// Operations made durable across all commits.
    pub ops: AtomicU64,
    /// Items appended to mailboxes (messages per device, and receipts).
    pub items_appended: AtomicU64,
    /// Items deleted by acks and expiry.
    pub items_deleted: AtomicU64,
    /// Total time spent in the commits' fsyncs, in microseconds.
    pub flush_micros_total: AtomicU64,
    /// Most operations one commit made durable.
    pub max_batch_seen: AtomicU64,
    /// fsync latency histogram: counts per [`FLUSH_BUCKETS_US`] upper bound, the last slot
    /// counting everything slower.
    pub flush_buckets: [AtomicU64; FLUSH_BUCKETS_US.len() + 1],
    /// Total time spent building and applying batches (the reads a batch needs: duplicate
    /// checks, seq counters, acked items; then its memtable inserts and journal write), in
    /// microseconds.
    pub build_micros_total: AtomicU64,
    /// Times the engine failed a write or an fsync (and was closed to be reopened).
    pub failures: AtomicU64,
    /// Times a failed engine was reopened.
    pub reopens: AtomicU64,
    /// Batch build-and-apply latency histogram, with the bounds of
    /// [`StoreStats::flush_buckets`]; it counts every batch, the failed ones too. A slow build
    /// next to a fast flush means the engine held its readers and writers back (fjall does
    /// while it installs a flushed memtable).
    pub build_buckets: [AtomicU64; FLUSH_BUCKETS_US.len() + 1],
}

/// Upper bounds (µs) of the latency histograms in [`StoreStats`].
pub const FLUSH_BUCKETS_US: [u64; 12] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];

impl StoreStats {
    /// Records one commit's fsync time.
    pub(crate) fn record_flush(&self, micros: u64) {
        self.flush_micros_total.fetch_add(micros, Ordering::Relaxed);
        record_latency(&self.flush_buckets, micros);
    }

    /// Records the time one batch took to build and apply.
    pub(crate) fn record_build(&self, micros: u64) {
        self.build_micros_total.fetch_add(micros, Ordering::Relaxed);
        record_latency(&self.build_buckets, micros);
    }

    /// The flush-latency histogram counts (non-cumulative), per bucket.
    pub fn flush_histogram(&self) -> Vec<u64> {
        latency_counts(&self.flush_buckets)
    }

    /// The batch-build latency histogram counts (non-cumulative), per bucket.
    pub fn build_histogram(&self) -> Vec<u64> {
        latency_counts(&self.build_buckets)
    }

    /// Mean operations per group commit so far.
    pub fn mean_batch(&self) -> f64 {
        let c = self.commits.load(Ordering::Relaxed);
        if c == 0 {
            0.0
        } else {
            self.ops.load(Ordering::Relaxed) as f64 / c as f64
        }
    }
}

/// Counts `micros` in the bucket of the first [`FLUSH_BUCKETS_US`] bound it does not exceed
/// (the last slot: slower than every bound).
fn record_latency(buckets: &[AtomicU64], micros: u64) {
    let slot = FLUSH_BUCKETS_US
        .iter()
        .position(|b| micros <= *b)
        .unwrap_or(FLUSH_BUCKETS_US.len());
    if let Some(b) = buckets.get(slot) {
        b.fetch_add(1, Ordering::Relaxed);
    }
}

fn latency_counts(buckets: &[AtomicU64]) -> Vec<u64> {
    buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect()
}

/// Longest [`StoreConfig::commit_delay`] accepted: a sender's `Sent` waits for it.
pub const MAX_COMMIT_DELAY: Duration = Duration::from_millis(100);

impl StoreConfig {
    /// Refuses values the engines cannot work with.
    fn validate(&self) -> Result<(), StorageError> {
        const MIB: u64 = 1024 * 1024;
        if !(MIB..=1024 * MIB).contains(&self.memtable_bytes) {
            return Err(StorageError::InvalidConfig(format!(
                "memtable size must be 1 MiB..=1 GiB, got {} bytes",
                self.memtable_bytes
            )));
        }
        if self.commit_delay > MAX_COMMIT_DELAY {
            return Err(StorageError::InvalidConfig(format!(
                "commit delay must be at most {MAX_COMMIT_DELAY:?}, got {:?}",
                self.commit_delay
            )));
        }
        if self.cache_capacity_bytes < MIB {
            return Err(StorageError::InvalidConfig(format!(
                "cache must be at least 1 MiB, got {} bytes",
                self.cache_capacity_bytes
            )));
        }
        Ok(())
    }

    pub(crate) fn tuning(&self) -> Tuning {
        Tuning {
            cache_bytes: self.cache_capacity_bytes,
            memtable_bytes: self.memtable_bytes,
        }
    }
}

/// Handle to the durable store. Cheap to clone; every clone talks to the same committer.
#[derive(Clone)]
pub struct Store {
    db: Arc<EngineSlot>,
    health: Arc<HealthCell>,
    engine: Engine,
    ops: group_commit::Handle,
    stats: Arc<StoreStats>,
    committer: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    dir: PathBuf,
    tuning: Tuning,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("engine", &self.engine)
            .finish()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with `config.engine` and starts its committer
    /// thread. The engine's files live in `dir/<engine>/`; a directory whose data belongs to
    /// the other engine is refused with [`StorageError::EngineMismatch`].
    ///
    /// `listener` sees every appended item (see [`CommitListener`]).
    pub fn open(
        dir: &Path,
        config: StoreConfig,
        listener: Option<CommitListener>,
    ) -> Result<Self, StorageError> {
        config.validate()?;
        let engine_dir = layout::prepare_open(dir, config.engine)?;
        let db = Arc::new(EngineSlot::new(engine::open(
            config.engine,
            &engine_dir,
            config.tuning(),
        )?));
        let stats = Arc::new(StoreStats::default());
        let health = Arc::new(HealthCell::default());
        let (ops, handle) = group_commit::spawn(
            db.clone(),
            group_commit::EngineHome {
                reopen: {
                    let (engine, dir, tuning) =
                        (config.engine, engine_dir.clone(), config.tuning());
                    Box::new(move || engine::open(engine, &dir, tuning))
                },
                dir: engine_dir,
                min_free_bytes: config.min_free_bytes,
            },
            group_commit::Limits {
                max_batch: config.max_batch.max(1),
                commit_delay: config.commit_delay,
                mailbox_max_items: config.mailbox_max_items.max(1),
                mailbox_max_bytes: config.mailbox_max_bytes.max(1),
                mailbox_max_items_per_sender: config.mailbox_max_items_per_sender.max(1),
                mailbox_max_bytes_per_sender: config.mailbox_max_bytes_per_sender.max(1),
                invite_ttl: config.invite_ttl,
                link_code_ttl: config.link_code_ttl,
                deliver_before_fsync: config.deliver_before_fsync,
                retention: config.retention,
            },
            listener,
            stats.clone(),
            health.clone(),
        )?;
        Ok(Self {
            db,
            health,
            engine: config.engine,
            ops,
            stats,
            committer: Arc::new(Mutex::new(Some(handle))),
            dir: dir.to_path_buf(),
            tuning: config.tuning(),
        })
    }

    /// Applies or enqueues `write` now (so writes keep the order of the calls that made
    /// them) and returns a future that resolves once the committer has made it durable (or,
    /// for the writes whose class allows it, once it is applied).
    fn write<W: Write>(
        &self,
        write: W,
    ) -> impl std::future::Future<Output = Result<W::Output, StorageError>> + Send + 'static {
        let (reply, rx) = oneshot::channel();
        let queued = self.ops.submit(Request::Write(Typed::boxed(write, reply)));
        async move {
            if !queued {
                return Err(StorageError::Closed);
            }
            rx.await.map_err(|_| StorageError::Closed)?
        }
    }

    /// Appends a message from (`from`, `from_device`): each of `envelopes` to its device
    /// mailbox of `to`, each of `own` to its device mailbox of `from`.
    ///
    /// The copies must name exactly the current devices (see [`missive_proto::Send`]);
    /// otherwise nothing is written and the outcome is [`AppendOutcome::DeviceMismatch`].
    /// Resolves only after the batch holding it is flushed and fsync'd. A second call with the
    /// same sender and `client_msg_id` (also after a restart) stores nothing and returns
    /// [`AppendOutcome::Duplicate`].
    #[allow(clippy::too_many_arguments)]
    pub fn append_message(
        &self,
        from: &str,
        from_device: DeviceId,
        client_msg_id: ClientMsgId,
        to: &str,
        envelopes: Vec<DeviceEnvelope>,
        own: Vec<DeviceEnvelope>,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<AppendOutcome, StorageError>> + Send + 'static
    {
        self.append_expiring(
            (from, from_device, client_msg_id),
            to,
            (envelopes, own),
            0,
            now_ms,
        )
    }

    /// [`Store::append_message`] for a disappearing message: the copies still undelivered
    /// `expires_in_secs` after `now_ms` are dropped by the sweep (0: never).
    pub fn append_expiring(
        &self,
        (from, from_device, client_msg_id): (&str, DeviceId, ClientMsgId),
        to: &str,
        (envelopes, own): (Vec<DeviceEnvelope>, Vec<DeviceEnvelope>),
        expires_in_secs: u32,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<AppendOutcome, StorageError>> + Send + 'static
    {
        self.write(mailbox::Append {
            from: from.to_owned(),
            from_device,
            client_msg_id,
            to: to.to_owned(),
            envelopes,
            own,
            expires_in_secs,
            now_ms,
        })
    }

    /// Deletes every item of `mailbox` with seq `<= up_to` and, for each deleted message,
    /// appends a `Delivered` receipt to every device of its sender — in one atomic batch.
    pub fn ack(
        &self,
        mailbox: MailboxId,
        up_to: ServerSeq,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<AckOutcome, StorageError>> + Send + 'static {
        self.write(mailbox::Ack {
            mailbox,
            up_to,
            now_ms,
        })
    }

    /// Creates `user` with its first `device` and public key. When `require_invite`, the
    /// `invite` token must exist and is consumed in the same batch.
    pub fn register(
        &self,
        user: &str,
        device: DeviceId,
        key: [u8; 32],
        invite: Option<String>,
        require_invite: bool,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<RegisterOutcome, StorageError>> + Send + 'static
    {
        self.write(accounts::Register {
            user: user.to_owned(),
            device,
            key,
            invite,
            require_invite,
            now_ms,
        })
    }

    /// Sets who may see `user`'s presence. Returns false when the user does not exist.
    pub fn set_visibility(
        &self,
        user: &str,
        visibility: Visibility,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.update_user(user, accounts::UserUpdate::Visibility(visibility))
    }

    /// Records when a device of `user` was last online. Returns false for an unknown user.
    pub fn set_last_seen(
        &self,
        user: &str,
        at_ms: u64,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.update_user(user, accounts::UserUpdate::LastSeen(at_ms))
    }

    /// Enables or disables an account. Returns false for an unknown user.
    pub fn set_disabled(
        &self,
        user: &str,
        disabled: bool,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.update_user(user, accounts::UserUpdate::Disabled(disabled))
    }

    fn update_user(
        &self,
        user: &str,
        update: accounts::UserUpdate,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.write(accounts::UpdateUser {
            user: user.to_owned(),
            update,
        })
    }

    /// Stores an invite token that one registration may consume.
    pub fn add_invite(
        &self,
        token: &str,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<(), StorageError>> + Send + 'static {
        self.write(accounts::AddInvite {
            token: token.to_owned(),
            now_ms,
        })
    }

    /// Links another device (with its public key) to an existing user. Returns false when the
    /// user does not exist or already has that device id.
    pub fn add_device(
        &self,
        user: &str,
        device: DeviceId,
        key: [u8; 32],
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.write(accounts::AddDevice {
            user: user.to_owned(),
            device,
            key,
        })
    }

    /// Stores a one-time code that links one more device to `user` (see
    /// [`Store::link_device`]). Returns false for an unknown user.
    pub fn create_link_code(
        &self,
        user: &str,
        code: &str,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.write(device_registry::CreateLinkCode {
            user: user.to_owned(),
            code: code.to_owned(),
            now_ms,
        })
    }

    /// Adds a device with login key `key` to `user`, consuming `code` (made by
    /// [`Store::create_link_code`], within `StoreConfig::link_code_ttl`), under the next
    /// device id the user never had, unless it already has `max_devices`.
    pub fn link_device(
        &self,
        user: &str,
        code: &str,
        key: [u8; 32],
        max_devices: usize,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<LinkOutcome, StorageError>> + Send + 'static {
        self.write(device_registry::LinkDevice {
            user: user.to_owned(),
            code: code.to_owned(),
            key,
            max_devices,
            now_ms,
        })
    }

    /// Removes a device of `user` and everything stored for it (login key, published keys,
    /// mailbox). Returns the mailbox items dropped, or `None` when there is no such device.
    pub fn remove_device(
        &self,
        user: &str,
        device: DeviceId,
    ) -> impl std::future::Future<Output = Result<Option<usize>, StorageError>> + Send + 'static
    {
        self.write(device_registry::RemoveDevice {
            user: user.to_owned(),
            device,
        })
    }

    /// Drops every still-queued copy of `from`'s message `client_msg_id` to `to`, in the
    /// mailboxes of `to`'s devices and `from`'s other devices ("delete for everyone"). Returns
    /// how many were dropped; resolves after the fsync.
    pub fn retract(
        &self,
        from: &str,
        client_msg_id: ClientMsgId,
        to: &str,
    ) -> impl std::future::Future<Output = Result<usize, StorageError>> + Send + 'static {
        self.write(mailbox::Retract {
            from: from.to_owned(),
            client_msg_id,
            to: to.to_owned(),
        })
    }

    /// Creates a group named `name` with `creator` as its first member and admin.
    pub fn create_group(
        &self,
        creator: &str,
        name: &str,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<GroupInfo, StorageError>> + Send + 'static {
        self.write(groups::CreateGroup {
            creator: creator.to_owned(),
            name: name.to_owned(),
            now_ms,
        })
    }

    /// Adds or removes members, promotes one, or lets `actor` leave (see `groups::Change`),
    /// with the group's limit of `max_members`. Members hear of it in their mailboxes.
    pub fn change_group(
        &self,
        actor: &str,
        group: GroupId,
        change: GroupChangeRequest,
        max_members: usize,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<Result<GroupInfo, GroupRefusal>, StorageError>>
           + Send
           + 'static {
        let change = match change {
            GroupChangeRequest::Add(users) => groups::Change::Add(users),
            GroupChangeRequest::Remove(users) => groups::Change::Remove(users),
            GroupChangeRequest::Promote(user) => groups::Change::Promote(user),
            GroupChangeRequest::Leave => groups::Change::Leave,
        };
        self.write(groups::ChangeMembers {
            actor: actor.to_owned(),
            group,
            change,
            max_members,
            now_ms,
        })
    }

    /// Stores an invite token of `group` made by the admin `actor` (`expires_at_ms` 0: valid
    /// until revoked).
    pub fn create_group_invite(
        &self,
        actor: &str,
        group: GroupId,
        token: &str,
        expires_at_ms: u64,
    ) -> impl std::future::Future<Output = Result<Result<(), GroupRefusal>, StorageError>> + Send + 'static
    {
        self.write(groups::CreateInvite {
            actor: actor.to_owned(),
            group,
            token: token.to_owned(),
            expires_at_ms,
        })
    }

    /// Revokes an invite token of `group` (the admin `actor`).
    pub fn revoke_group_invite(
        &self,
        actor: &str,
        group: GroupId,
        token: &str,
    ) -> impl std::future::Future<Output = Result<Result<(), GroupRefusal>, StorageError>> + Send + 'static
    {
        self.write(groups::RevokeInvite {
            actor: actor.to_owned(),
            group,
            token: token.to_owned(),
        })
    }

    /// `user` joins the group of invite `token`.
    pub fn join_group(
        &self,
        user: &str,
        token: &str,
        max_members: usize,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<Result<GroupInfo, GroupRefusal>, StorageError>>
           + Send
           + 'static {
        self.write(groups::JoinByInvite {
            user: user.to_owned(),
            token: token.to_owned(),
            max_members,
            now_ms,
        })
    }

    /// Appends a group message once to the group's log, which every member device reads
    /// through its own cursor; resolves after its fsync. Refused (nothing written) for a
    /// non-member or a stale `epoch`.
    #[allow(clippy::too_many_arguments)]
    pub fn group_send(
        &self,
        (from, from_device, client_msg_id): (&str, DeviceId, ClientMsgId),
        group: GroupId,
        epoch: u64,
        body: Vec<u8>,
        expires_in_secs: u32,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<GroupSendOutcome, StorageError>> + Send + 'static
    {
        self.write(groups::GroupSend {
            from: from.to_owned(),
            from_device,
            client_msg_id,
            group,
            epoch,
            body,
            expires_in_secs,
            now_ms,
        })
    }

    /// `user`'s `device` acknowledged `group`'s log up to `up_to`: its cursor moves there.
    /// Resolves (before the fsync, like a mailbox ack) with the senders whose messages'
    /// counts are worth telling live.
    pub fn ack_group(
        &self,
        (user, device): (&str, DeviceId),
        group: GroupId,
        up_to: ServerSeq,
    ) -> impl std::future::Future<Output = Result<Vec<(String, GroupReceipt)>, StorageError>>
           + Send
           + 'static {
        self.write(group_log::AckLog {
            user: user.to_owned(),
            device,
            group,
            up_to: up_to.0,
        })
    }

    /// Where `user`'s `device` stands in each group log it may read.
    pub fn group_positions(
        &self,
        user: &str,
        device: DeviceId,
    ) -> Result<Vec<group_log::LogPosition>, StorageError> {
        group_log::positions(self.db.get().as_ref(), user, device)
    }

    /// Items `from..=until` of `group`'s log: at most `limit`, and stopping once their
    /// bodies reach `max_bytes`.
    pub fn read_group_log(
        &self,
        group: GroupId,
        from: ServerSeq,
        until: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(ServerSeq, StoredItem)>, StorageError> {
        let db = self.db.get();
        group_log::read(db.as_ref(), group, from.0, until.0, limit, max_bytes)
    }

    /// `reader` read `sender`'s group message: the new counts when they changed.
    pub fn mark_group_read(
        &self,
        reader: &str,
        group: GroupId,
        sender: &str,
        client_msg_id: ClientMsgId,
    ) -> impl std::future::Future<Output = Result<Option<GroupReceipt>, StorageError>> + Send + 'static
    {
        self.write(groups::MarkRead {
            reader: reader.to_owned(),
            group,
            sender: sender.to_owned(),
            client_msg_id,
        })
    }

    /// `group` as the member `user` sees it.
    pub fn group_info(
        &self,
        group: GroupId,
        user: &str,
    ) -> Result<Result<GroupInfo, GroupRefusal>, StorageError> {
        groups::info_for(self.db.get().as_ref(), group, user)
    }

    /// The groups `user` is a member of.
    pub fn groups_of(&self, user: &str) -> Result<Vec<GroupSummary>, StorageError> {
        groups::groups_of(self.db.get().as_ref(), user)
    }

    /// Receipts of `sender`'s messages `ids` in `group` (those still known).
    pub fn group_receipts(
        &self,
        group: GroupId,
        sender: &str,
        ids: &[ClientMsgId],
    ) -> Result<Vec<GroupReceipt>, StorageError> {
        groups::receipts(self.db.get().as_ref(), group, sender, ids)
    }

    /// Posts a status update of (`poster`, `device`) to `audience` for `ttl`: the body once,
    /// a reference in each audience device's mailbox (and the poster's other devices'), in
    /// one batch; resolves after its fsync.
    pub fn post_story(
        &self,
        (poster, device, client_msg_id): (&str, DeviceId, ClientMsgId),
        audience: Vec<String>,
        body: Vec<u8>,
        ttl: Duration,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<StoryOutcome, StorageError>> + Send + 'static
    {
        self.write(stories::PostStory {
            poster: poster.to_owned(),
            device,
            client_msg_id,
            audience,
            body,
            ttl_ms: ttl.as_millis() as u64,
            now_ms,
        })
    }

    /// `viewer` viewed `poster`'s status update: true on the first view by a member of its
    /// audience (the poster is then told).
    pub fn mark_story_viewed(
        &self,
        viewer: &str,
        poster: &str,
        client_msg_id: ClientMsgId,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.write(stories::MarkViewed {
            viewer: viewer.to_owned(),
            poster: poster.to_owned(),
            client_msg_id,
        })
    }

    /// `poster`'s status updates that have not expired at `now_ms`, with their viewers.
    pub fn stories_of(
        &self,
        poster: &str,
        now_ms: u64,
    ) -> Result<Vec<missive_proto::StorySummary>, StorageError> {
        stories::stories_of(self.db.get().as_ref(), poster, now_ms)
    }

    /// Opens (or resumes) `owner`'s upload of `blob` under `limits`: a new blob's size is
    /// counted against the owner's quota at once. Resolves after the fsync.
    pub fn open_upload(
        &self,
        owner: &str,
        blob: BlobId,
        size: u64,
        downloads: u32,
        limits: MediaLimits,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<OpenOutcome, StorageError>> + Send + 'static {
        self.write(media::OpenUpload {
            blob,
            owner: owner.to_owned(),
            size,
            downloads,
            limits,
            now_ms,
        })
    }

    /// Marks `blob` complete (its file is installed and verified); false when it has no record.
    pub fn complete_upload(
        &self,
        blob: BlobId,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.write(media::CompleteUpload { blob })
    }

    /// Forgets `blob` and gives its bytes back to its owner's quota; the caller removes its
    /// file. False when it had no record.
    pub fn delete_blob(
        &self,
        blob: BlobId,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.write(media::DeleteBlob { blob })
    }

    /// The device tagged `tag` downloaded all of `blob`. True when that was the last expected
    /// download: the record is gone, and the caller removes the file.
    pub fn record_download(
        &self,
        blob: BlobId,
        tag: u64,
    ) -> impl std::future::Future<Output = Result<bool, StorageError>> + Send + 'static {
        self.write(media::RecordDownload { blob, tag })
    }

    /// The record of `blob`.
    pub fn blob(&self, blob: &BlobId) -> Result<Option<BlobRecord>, StorageError> {
        media::blob(self.db.get().as_ref(), blob)
    }

    /// Every blob record (for expiry and collection).
    pub fn blobs(&self) -> Result<Vec<(BlobId, BlobRecord)>, StorageError> {
        media::blobs(self.db.get().as_ref())
    }

    /// Bytes of live blobs `user` owns (what their quota counts).
    pub fn media_usage(&self, user: &str) -> Result<u64, StorageError> {
        media::user_usage(self.db.get().as_ref(), user)
    }

    /// Adds a call to `user`'s history (dropping the oldest past
    /// [`crate::MAX_CALLS_KEPT`]); resolves after the fsync.
    pub fn record_call(
        &self,
        user: &str,
        record: missive_proto::CallRecord,
    ) -> impl std::future::Future<Output = Result<(), StorageError>> + Send + 'static {
        self.write(calls::RecordCall {
            user: user.to_owned(),
            record,
        })
    }

    /// `user`'s most recent `limit` calls, newest first.
    pub fn calls_of(
        &self,
        user: &str,
        limit: usize,
    ) -> Result<Vec<missive_proto::CallRecord>, StorageError> {
        calls::calls_of(self.db.get().as_ref(), user, limit)
    }

    /// Publishes keys of a device (see [`KeyUpload`]); resolves after the fsync.
    pub fn upload_keys(
        &self,
        upload: KeyUpload,
    ) -> impl std::future::Future<Output = Result<UploadOutcome, StorageError>> + Send + 'static
    {
        self.write(upload)
    }

    /// One bundle per current device of `user` (ascending; empty for an unknown user), each
    /// with a one-time key that nobody else will get (deleted durably before this resolves),
    /// or the device's fallback key when its one-time keys ran out (or, with
    /// [`ClaimFrom::FallbackOnly`], in any case).
    pub fn claim_keys(
        &self,
        user: &str,
        from: ClaimFrom,
    ) -> impl std::future::Future<Output = Result<Vec<ClaimedBundle>, StorageError>> + Send + 'static
    {
        self.write(key_directory::ClaimKeys {
            user: user.to_owned(),
            from,
        })
    }

    /// What a device holds in the key directory (read from the engine; a claim in flight may
    /// not be counted yet).
    pub fn key_status(&self, user: &str, device: DeviceId) -> Result<KeyStatus, StorageError> {
        crate::key_directory::status(self.db.get().as_ref(), user, device)
    }

    /// One bounded step dropping the disappearing messages whose timer ran out (cheap: it
    /// reads only what is due; run it every few seconds). Call again while `more` is true.
    pub fn expire(
        &self,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<SweepOutcome, StorageError>> + Send + 'static
    {
        self.write(mailbox::Expire { now_ms })
    }

    /// One bounded step of the expiry sweep: removes items and dedup keys older than the
    /// configured retention. Call again while `more` is true.
    pub fn sweep(
        &self,
        now_ms: u64,
    ) -> impl std::future::Future<Output = Result<SweepOutcome, StorageError>> + Send + 'static
    {
        self.write(mailbox::Sweep { now_ms })
    }

    /// Makes a consistent, verified copy of the whole store in the store directory `dest`
    /// (which must not exist or be empty), on the same engine; [`Store::open`] opens it.
    ///
    /// The committer runs it between two group commits: every write queued before this call
    /// is in the copy, none queued after it is, and **writes wait until the copy is made and
    /// verified** (reads go on). See `backup.rs`.
    pub fn backup_to(
        &self,
        dest: &Path,
    ) -> impl std::future::Future<Output = Result<BackupReport, StorageError>> + Send + 'static
    {
        let (reply, rx) = oneshot::channel();
        let queued = self.ops.submit(Request::Backup {
            dest: dest.to_path_buf(),
            engine: self.engine,
            tuning: self.tuning,
            reply,
        });
        async move {
            if !queued {
                return Err(StorageError::Closed);
            }
            rx.await.map_err(|_| StorageError::Closed)?
        }
    }

    /// Gives back the disk space of deleted entries while the store is in use (fjall: a
    /// major compaction; writes go on meanwhile). sled cannot: it answers
    /// [`StorageError::CompactionNeedsStop`], and [`crate::compact`] rewrites the stopped
    /// store instead. Runs on a blocking thread of the tokio runtime.
    pub fn compact(
        &self,
    ) -> impl std::future::Future<Output = Result<CompactReport, StorageError>> + Send + 'static
    {
        let db = self.db.get();
        let engine = self.engine;
        let open = self.is_healthy();
        async move {
            if !open {
                return Err(StorageError::Closed);
            }
            tokio::task::spawn_blocking(move || {
                let bytes_before = db.size_on_disk()?;
                if !db.compact()? {
                    return Err(StorageError::CompactionNeedsStop { engine });
                }
                Ok(CompactReport {
                    engine,
                    bytes_before,
                    bytes_after: db.size_on_disk()?,
                    rewritten: None,
                })
            })
            .await
            .map_err(|e| StorageError::Compaction(e.to_string()))?
        }
    }

    /// Reads up to `limit` items of `mailbox` with seq `>= from`, in order, stopping after
    /// the item whose envelopes reach `max_bytes` in all (receipts count 0; at least one item
    /// is returned). A read that returns fewer than `limit` items and fewer than `max_bytes`
    /// envelope bytes has reached the end of the mailbox.
    pub fn read_mailbox(
        &self,
        mailbox: &MailboxId,
        from: ServerSeq,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(ServerSeq, StoredItem)>, StorageError> {
        let start = keys::mailbox_item(mailbox, from);
        let end = keys::mailbox_item(mailbox, ServerSeq(u64::MAX));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let db = self.db.get();
        let range = db.range(Bound::Included(start), Bound::Included(end));
        for kv in range.take(limit) {
            let (k, v) = kv?;
            let (_, seq) = keys::parse_mailbox_item(&k)
                .ok_or_else(|| StorageError::Corrupt("mailbox key".into()))?;
            let mut item = decode_item(&v)?;
            // A reference to a group message whose body expired is not delivered.
            if !groups::resolve(db.as_ref(), &mut item)?
                || !stories::resolve(db.as_ref(), &mut item)?
            {
                continue;
            }
            match &item.payload {
                missive_proto::Payload::Envelope(e) => bytes = bytes.saturating_add(e.len()),
                missive_proto::Payload::Group(g) => bytes = bytes.saturating_add(g.body.len()),
                missive_proto::Payload::Story(s) => bytes = bytes.saturating_add(s.body.len()),
                _ => {}
            }
            out.push((seq, item));
            if bytes >= max_bytes {
                break;
            }
        }
        Ok(out)
    }

    /// Whether `owner` has sent `other` a message (so `other` counts as `owner`'s contact:
    /// may see `owner`'s presence and send `owner` typing notices).
    pub fn is_contact(&self, owner: &str, other: &str) -> Result<bool, StorageError> {
        Ok(owner == other || self.db.get().get(&keys::contact(owner, other))?.is_some())
    }

    /// What storage can do right now, and why when it is not everything.
    pub fn health(&self) -> (StorageHealth, String) {
        (self.health.get(), self.health.reason())
    }

    /// Number of items waiting in `mailbox` (a scan: for stats, not hot paths).
    pub fn mailbox_depth(&self, mailbox: &MailboxId) -> Result<usize, StorageError> {
        count(self.db.get().prefix(&keys::mailbox_prefix(mailbox)))
    }

    /// Total items waiting in all mailboxes (a full scan: for admin stats).
    pub fn total_queued(&self) -> Result<usize, StorageError> {
        count(self.db.get().prefix(&[keys::MAILBOX]))
    }

    /// The account record of `name`, if registered.
    pub fn user(&self, name: &str) -> Result<Option<UserRecord>, StorageError> {
        match self.db.get().get(&keys::user(name))? {
            Some(v) => Ok(Some(decode_user(&v)?)),
            None => Ok(None),
        }
    }

    /// Number of registered users (a scan: for admin stats).
    pub fn user_count(&self) -> Result<usize, StorageError> {
        count(self.db.get().prefix(&[keys::USER]))
    }

    /// The Ed25519 public key of a device, if registered.
    pub fn device_key(
        &self,
        name: &str,
        device: DeviceId,
    ) -> Result<Option<[u8; 32]>, StorageError> {
        match self.db.get().get(&keys::device(name, device))? {
            Some(v) => Ok(Some(v.as_slice().try_into().map_err(|_| {
                StorageError::Corrupt(format!("device key of {name}/{}", device.0))
            })?)),
            None => Ok(None),
        }
    }

    /// Every registered device of `name`.
    pub fn devices(&self, name: &str) -> Result<Vec<DeviceId>, StorageError> {
        mailbox::devices_on_disk(self.db.get().as_ref(), name)
    }

    /// The engine this store runs on.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Counters of the committer.
    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Bytes the database occupies on disk.
    pub fn size_on_disk(&self) -> Result<u64, StorageError> {
        self.db.get().size_on_disk()
    }

    /// Bytes of every key and value in the store (a full scan: for tests, the bench and admin
    /// stats). Unlike [`Store::size_on_disk`] it does not depend on how the engine lays out
    /// its files, so it shows what a write added.
    pub fn logical_bytes(&self) -> Result<u64, StorageError> {
        let mut n = 0u64;
        for kv in self.db.get().range(Bound::Unbounded, Bound::Unbounded) {
            let (k, v) = kv?;
            n += (k.len() + v.len()) as u64;
        }
        Ok(n)
    }

    /// False once the committer has stopped (shut down, or died): writes cannot complete.
    pub fn is_healthy(&self) -> bool {
        self.ops.is_alive()
    }

    /// Stops accepting writes, lets the committer finish every queued operation (each one
    /// flushed and fsync'd), closes the engine cleanly (so the next open is fast), and waits
    /// for it. Reads still work afterwards. Safe to call more than once.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.ops.submit(Request::Shutdown(reply)) {
            let _ = rx.await;
        }
        let handle = self
            .committer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Counts the entries of a scan.
fn count(iter: engine::KvIter<'_>) -> Result<usize, StorageError> {
    let mut n = 0;
    for kv in iter {
        kv?;
        n += 1;
    }
    Ok(n)
}
