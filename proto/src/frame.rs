//! Every frame of the protocol. `PROTOCOL.md` explains when each may be sent.
//!
//! Kinds 1..=63 travel client → server, 64..=127 server → client; `Ping`, `Pong` and `Bye`
//! may go both ways.

pub use crate::call::{
    CallAction, CallHistory, CallHistoryRequest, CallIncoming, CallInvite, CallUpdate,
};
pub use crate::group::{GroupAnswer, GroupRead, GroupReceipt, GroupRequest, GroupSend};
use crate::group::{GroupMessage, GroupNotice};
use crate::ids::{ClientMsgId, DeviceId, GroupId, ServerSeq};
pub use crate::media::{
    MediaChunk, MediaChunkAck, MediaData, MediaDownload, MediaSignUrl, MediaUploadOpen,
    MediaUploadState, MediaUrl,
};
use crate::story::StoryMessage;
pub use crate::story::{ListStories, StoryList, StoryPost, StoryView, StoryViewed};
pub use crate::turn::{TurnCredentials, TurnCredentialsRequest};
use rkyv::{Archive, Deserialize, Serialize};

impl Frame {
    /// Bytes to reserve for this frame's archive: a media frame's bytes are serialised into a
    /// buffer of the right size at once, instead of one grown (and copied) several times.
    fn archive_size_hint(&self) -> usize {
        /// Room for the fields beside the bytes and rkyv's padding.
        const FIELDS: usize = 256;
        match self {
            Self::MediaChunk(c) => c.bytes.len() + FIELDS,
            Self::MediaData(d) => d.bytes.len() + FIELDS,
            _ => 0,
        }
    }
}

macro_rules! frames {
    ($( $(#[$doc:meta])* $kind:literal => $name:ident ),* $(,)?) => {
        /// One decoded frame of any kind.
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum Frame {
            $( $(#[$doc])* $name($name), )*
        }

        impl Frame {
            /// The kind byte carried in the header.
            pub fn kind(&self) -> u8 {
                match self { $( Self::$name(_) => $kind, )* }
            }

            /// A stable name for logs and metrics.
            pub fn name(&self) -> &'static str {
                match self { $( Self::$name(_) => stringify!($name), )* }
            }

            /// The name of a kind byte, or `None` for an unknown kind.
            pub fn kind_name(kind: u8) -> Option<&'static str> {
                match kind { $( $kind => Some(stringify!($name)), )* _ => None }
            }

            pub(crate) fn archive(&self) -> Result<rkyv::util::AlignedVec, rkyv::rancor::Error> {
                let out = rkyv::util::AlignedVec::with_capacity(self.archive_size_hint());
                match self { $( Self::$name(f) => rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(f, out), )* }
            }

            /// Validates `bytes` (aligned) as the archive of `kind` and deserialises it.
            pub(crate) fn from_archive(kind: u8, bytes: &[u8]) -> Result<Self, crate::ProtoError> {
                match kind {
                    $( $kind => rkyv::from_bytes::<$name, rkyv::rancor::Error>(bytes)
                        .map(Self::$name)
                        .map_err(|e| crate::ProtoError::Invalid {
                            kind: stringify!($name),
                            reason: e.to_string(),
                        }), )*
                    other => Err(crate::ProtoError::UnknownKind(other)),
                }
            }
        }

        $(
            impl From<$name> for Frame {
                fn from(f: $name) -> Self { Self::$name(f) }
            }
        )*
    };
}

frames! {
    /// Client's opening frame: the versions it speaks.
    1 => Hello,
    /// Bind a new user name to this device's public key.
    2 => Register,
    /// Authenticate as an existing device.
    3 => Login,
    /// Store and forward a message: one opaque envelope per device of the recipient and per
    /// other device of the sender.
    4 => Send,
    /// Cumulative acknowledgement of deliveries up to a mailbox sequence.
    5 => AckDelivery,
    /// Who may see this user's online / last-seen state.
    6 => SetPresenceVisibility,
    /// Receive `Presence` updates about a user.
    7 => SubscribePresence,
    /// Ephemeral typing indicator towards a user; never stored.
    8 => Typing,
    /// Liveness probe; answered with `Pong`.
    9 => Ping,
    /// Orderly close: the receiver answers `Bye` once everything sent before it is processed.
    10 => Bye,
    /// Answer to `Ping`.
    11 => Pong,
    /// Publish this device's identity keys, one-time keys and fallback key.
    12 => UploadKeys,
    /// Fetch one key bundle per device of a user, claiming one one-time key each.
    13 => ClaimKeys,
    /// Join a user's account as a new device, with a link code from one of its devices.
    14 => LinkDevice,
    /// Ask for a one-time code that links a new device to this account.
    15 => CreateLinkCode,
    /// Ask for this account's devices.
    16 => ListDevices,
    /// Remove a device from this account.
    17 => RemoveDevice,
    /// Delete for everyone: drop the still-undelivered copies of one of this user's messages.
    18 => Retract,
    /// A group membership request (create, add, remove, promote, leave, info, list, invites,
    /// receipts).
    19 => GroupRequest,
    /// One message to every member of a group, stored once.
    20 => GroupSend,
    /// A group message was read (aggregated into the sender's receipts).
    21 => GroupRead,
    /// Post a status update to an audience, stored once.
    22 => StoryPost,
    /// A status update was viewed (its poster learns who).
    23 => StoryViewed,
    /// Ask for this user's live status updates and their viewers.
    24 => ListStories,
    /// Open (or resume) an upload; first frame of an upload stream.
    25 => MediaUploadOpen,
    /// Bytes of an upload.
    26 => MediaChunk,
    /// Download a range of a blob; first frame of a download stream.
    27 => MediaDownload,
    /// Ask for a signed HTTPS URL of a blob.
    28 => MediaSignUrl,
    /// Ask for short-lived credentials for the edge's STUN/TURN relay.
    29 => TurnCredentialsRequest,
    /// Authenticate a connection that carries one media transfer (the TCP+TLS fallback's
    /// transfer stream): like `Login`, but the device's session stays where it is.
    30 => TransferLogin,
    /// Ring every device of a user (version 5).
    31 => CallInvite,
    /// Pick up, decline, send candidates or hang up in a call.
    32 => CallAction,
    /// Ask for this user's call history.
    33 => CallHistoryRequest,
    /// Cumulative acknowledgement of a group log's deliveries up to a seq (version 6).
    34 => AckGroup,
    /// Server's answer to `Hello`: chosen version and the login challenge.
    64 => ServerHello,
    /// Login or registration succeeded.
    65 => Welcome,
    /// A `Send` is durably stored (fsync'd); the sender may show "sent".
    66 => Sent,
    /// A `Send` was refused; the connection stays open.
    67 => Rejected,
    /// An item from this device's mailbox: a message or a delivery receipt.
    68 => Deliver,
    /// Presence state of a subscribed user.
    69 => Presence,
    /// Typing indicator from another user.
    70 => TypingNotice,
    /// Fatal error; the server closes the connection after sending it.
    71 => Error,
    /// The server is going away; reconnect after the given delay.
    72 => Goaway,
    /// A `Send` named another device set than the current one; nothing was stored.
    73 => DeviceMismatch,
    /// Answer to `UploadKeys`: what the server now holds for this device.
    74 => KeysStored,
    /// Answer to `ClaimKeys`: one bundle per device.
    75 => KeyBundles,
    /// This device's one-time keys are running low (or its fallback key was used): upload.
    76 => KeysLow,
    /// A request (`UploadKeys`, `ClaimKeys`, device management) was refused; the connection
    /// stays open.
    77 => RequestRefused,
    /// Answer to `CreateLinkCode`.
    78 => LinkCode,
    /// Answer to `ListDevices`.
    79 => DeviceList,
    /// Answer to `RemoveDevice`: the device and everything the server held for it are gone.
    80 => DeviceRemoved,
    /// Answer to `Retract`: how many undelivered copies were dropped.
    81 => Retracted,
    /// Answer to `GroupRequest`.
    82 => GroupAnswer,
    /// The delivery and read counts of one of this user's group messages changed.
    83 => GroupReceipt,
    /// Someone viewed one of this user's status updates.
    84 => StoryView,
    /// Answer to `ListStories`.
    85 => StoryList,
    /// Which bytes of an upload the server holds.
    86 => MediaUploadState,
    /// A chunk of an upload was written.
    87 => MediaChunkAck,
    /// Bytes of a download.
    88 => MediaData,
    /// Answer to `MediaSignUrl`.
    89 => MediaUrl,
    /// Answer to `TurnCredentialsRequest`.
    90 => TurnCredentials,
    /// A call rings this device.
    91 => CallIncoming,
    /// What happened to a call this device is in.
    92 => CallUpdate,
    /// Answer to `CallHistoryRequest`.
    93 => CallHistory,
    /// An item of a group's log: a group message or a membership change (version 6).
    94 => GroupDeliver,
}

/// Client → server, first frame on every connection.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// Free-form client name and version, for logs only (max 64 bytes honoured).
    pub client: String,
}

/// Server → client, answer to `Hello`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServerHello {
    /// The version both sides now speak.
    pub version: u16,
    /// Fresh random challenge for this connection's login signature.
    pub challenge: [u8; 32],
    /// Largest frame payload the server accepts, in bytes.
    pub max_frame: u32,
}

/// Client → server: create an account bound to this device key, and log in.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Register {
    /// Requested user name (see `validate_user_name`).
    pub user: String,
    /// The registering device's id (the first device is usually 1).
    pub device: DeviceId,
    /// Ed25519 public key of the device.
    pub device_key: [u8; 32],
    /// Invite token, required when the server runs with invites.
    pub invite: Option<String>,
    /// Ed25519 signature over `login_transcript(challenge, exporter, user, device)`.
    pub signature: [u8; 64],
}

/// Client → server: log in as a registered device.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// User name.
    pub user: String,
    /// Device id.
    pub device: DeviceId,
    /// Ed25519 signature over `login_transcript(challenge, exporter, user, device)`.
    pub signature: [u8; 64],
}

/// Client → server, instead of `Login` on a connection of its own: authenticate it for one
/// media transfer. Answered `Welcome`; the connection then carries the transfer's frames
/// exactly as a QUIC transfer stream does, and closes when it is done. The device's session
/// on its control connection is not touched.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TransferLogin {
    /// User name.
    pub user: String,
    /// Device id.
    pub device: DeviceId,
    /// Ed25519 signature over `login_transcript(challenge, exporter, user, device)`.
    pub signature: [u8; 64],
}

/// Server → client: authenticated.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The authenticated user.
    pub user: String,
    /// The authenticated device.
    pub device: DeviceId,
    /// Server wall clock, milliseconds since the Unix epoch.
    pub server_time_ms: u64,
}

/// One device's own copy of a message: the envelope encrypted for that device.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeviceEnvelope {
    /// The device this copy is for.
    pub device: DeviceId,
    /// Opaque bytes (end-to-end encrypted by the client for this device).
    pub envelope: Vec<u8>,
}

/// Client → server: deliver a message to every device of `to`, and a copy to each of the
/// sender's other devices.
///
/// `envelopes` must name exactly the current devices of `to`, and `own` exactly the sender's
/// devices other than the sending one (empty when it has none, and always empty when `to` is
/// the sender: then `envelopes` covers all of its devices). Otherwise nothing is stored and
/// the server answers [`DeviceMismatch`] with the current lists.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Sender-chosen id; a retry with the same id is stored once.
    pub client_msg_id: ClientMsgId,
    /// Recipient user name.
    pub to: String,
    /// One copy per device of `to`. The server never reads them.
    pub envelopes: Vec<DeviceEnvelope>,
    /// One copy per other device of the sender (so every device sees the conversation).
    pub own: Vec<DeviceEnvelope>,
    /// Disappearing messages: the server drops copies still undelivered this many seconds
    /// after storing them (0: kept until delivered, or the server's retention). The clients
    /// apply the chat's timer to what they show.
    pub expires_in_secs: u32,
}

impl Send {
    /// Every envelope of the send, the recipient's first.
    pub fn copies(&self) -> impl Iterator<Item = &DeviceEnvelope> {
        self.envelopes.iter().chain(self.own.iter())
    }
}

/// A user's current devices, as the server knows them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UserDevices {
    /// The user.
    pub user: String,
    /// Its devices, ascending.
    pub devices: Vec<DeviceId>,
}

/// Server → client: the send `client_msg_id` named other devices than the current ones
/// (a device was linked or removed since the client last looked). Nothing was stored; the
/// client encrypts for the devices listed and sends again with the same id.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeviceMismatch {
    /// The refused send.
    pub client_msg_id: ClientMsgId,
    /// The current device lists of the users whose set did not match (the recipient, the
    /// sender, or both). For the sender the list includes the sending device.
    pub current: Vec<UserDevices>,
}

/// Server → client: the send with this id is on disk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The acknowledged send.
    pub client_msg_id: ClientMsgId,
    /// When the server stored it, ms since the Unix epoch.
    pub server_ts_ms: u64,
    /// True when this id had been stored before (a retry); nothing was stored twice.
    pub duplicate: bool,
}

/// Server → client: a request was refused; the connection stays open.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The refused send.
    pub client_msg_id: ClientMsgId,
    /// Stable code (`ErrorCode`).
    pub code: u16,
    /// Human-readable reason.
    pub message: String,
}

/// What a delivered mailbox item carries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A message: the sender's opaque envelope.
    Envelope(Vec<u8>),
    /// A delivery receipt generated by the server: the recipient's device acknowledged the
    /// message `client_msg_id` of `Deliver`.
    Delivered,
    /// A group message (boxed, so that the archived enum keeps its size and stored items
    /// written before groups existed still read).
    Group(Box<GroupMessage>),
    /// A change of a group's membership, in order with its messages.
    GroupEvent(Box<GroupNotice>),
    /// A status update of the `Deliver`'s `from`.
    Story(Box<StoryMessage>),
}

/// Server → client: one item from this device's mailbox. Acknowledge with `AckDelivery`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Deliver {
    /// Position in this device's mailbox (strictly increasing).
    pub seq: ServerSeq,
    /// Sender user (for `Delivered`, the user whose device received the message).
    pub from: String,
    /// Sender device.
    pub from_device: DeviceId,
    /// The message id (for `Delivered`, the id of the message that was delivered).
    pub client_msg_id: ClientMsgId,
    /// When the server stored the item, ms since the Unix epoch.
    pub server_ts_ms: u64,
    /// The item.
    pub payload: Payload,
}

/// Client → server: every item with `seq <= up_to` was processed; the server deletes them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AckDelivery {
    /// Highest processed sequence.
    pub up_to: ServerSeq,
}

/// Server → client (version 6): one item of a group's log, read by this device through its
/// own cursor. `deliver.seq` is the item's position in the group's log (not in the device's
/// mailbox); acknowledge with `AckGroup`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GroupDeliver {
    /// The group whose log this is.
    pub group: GroupId,
    /// The item; its payload is `Group` or `GroupEvent` of `group`.
    pub deliver: Deliver,
}

/// Client → server (version 6): every item of `group`'s log with `seq <= up_to` was
/// processed; the server moves this device's cursor there.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AckGroup {
    /// The group.
    pub group: GroupId,
    /// Highest processed seq of its log.
    pub up_to: ServerSeq,
}

/// Who may see a user's presence.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Every subscriber sees online / last seen.
    Everyone,
    /// Nobody does; subscribers get `PresenceState::Hidden`.
    Nobody,
}

/// Client → server: set this user's presence visibility (persisted).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SetPresenceVisibility {
    /// The new setting.
    pub visibility: Visibility,
}

/// Client → server: send me `Presence` for `user` now and whenever it changes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SubscribePresence {
    /// The watched user.
    pub user: String,
}

/// A user's presence as a subscriber sees it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceState {
    /// At least one device has a live session.
    Online,
    /// Offline; last seen at this time (ms since the Unix epoch).
    LastSeen(u64),
    /// Offline and never seen since the server started keeping track.
    Offline,
    /// The user does not share presence.
    Hidden,
}

/// Server → client: presence of a subscribed user.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The watched user.
    pub user: String,
    /// Current state.
    pub state: PresenceState,
}

/// Client → server: I am (not) typing to `to`. Ephemeral: dropped if `to` is offline.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Typing {
    /// The user being typed to.
    pub to: String,
    /// Started (true) or stopped (false).
    pub typing: bool,
}

/// Server → client: `from` is (not) typing to you.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct TypingNotice {
    /// Who is typing.
    pub from: String,
    /// Started (true) or stopped (false).
    pub typing: bool,
}

/// Either direction: liveness probe.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// Echoed in `Pong`.
    pub nonce: u64,
}

/// Either direction: answer to `Ping`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Pong {
    /// The `Ping`'s nonce.
    pub nonce: u64,
}

/// Either direction: orderly close (see `PROTOCOL.md`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Bye {}

/// Server → client: fatal error; the connection is closed after this frame.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// Stable code (`ErrorCode`).
    pub code: u16,
    /// Human-readable reason (never message content).
    pub message: String,
}

/// A device's long-term end-to-end identity: its Curve25519 and Ed25519 keys (Olm), signed
/// with the device's login key so that nobody but the device can publish them.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct IdentityKeys {
    /// Curve25519 identity key.
    pub curve25519: [u8; 32],
    /// Ed25519 signing key of the E2EE account (signs one-time keys).
    pub ed25519: [u8; 32],
    /// Ed25519 signature by the device's login key over
    /// [`crate::identity_transcript`]`(user, device, curve25519, ed25519)`.
    pub signature: [u8; 64],
}

/// A Curve25519 one-time (or fallback) key, signed by the device's E2EE Ed25519 key.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct SignedKey {
    /// The public key.
    pub key: [u8; 32],
    /// Ed25519 signature by `IdentityKeys::ed25519` over [`crate::signed_key_transcript`].
    /// The server does not check it; the claiming client does.
    pub signature: [u8; 64],
}

/// Client → server: publish keys of this (logged-in) device. Answered `KeysStored` or
/// `RequestRefused`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UploadKeys {
    /// Echoed in the answer.
    pub request_id: u32,
    /// The device's identity keys; may be set once (the same keys again are accepted, other
    /// keys are refused: a new identity is a new device). Boxed: it would make every
    /// `Frame` value twice as large.
    pub identity: Option<Box<IdentityKeys>>,
    /// More one-time keys (at most [`crate::MAX_KEYS_PER_UPLOAD`]).
    pub one_time_keys: Vec<SignedKey>,
    /// A new fallback key, replacing the old one.
    pub fallback_key: Option<SignedKey>,
}

/// Server → client: answer to `UploadKeys`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeysStored {
    /// The upload's id.
    pub request_id: u32,
    /// Unclaimed one-time keys the server now holds for this device.
    pub one_time_keys: u32,
}

/// Client → server: fetch `user`'s devices with a bundle each, claiming (and so removing)
/// one one-time key per device. Answered `KeyBundles` or `RequestRefused`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ClaimKeys {
    /// Echoed in the answer.
    pub request_id: u32,
    /// Whose devices.
    pub user: String,
}

/// What a client needs to start an Olm session with one device.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeviceBundle {
    /// The device.
    pub device: DeviceId,
    /// Its login key (verifies `identity.signature`).
    pub device_key: [u8; 32],
    /// Its identity keys; `None` while the device has not published any.
    pub identity: Option<IdentityKeys>,
    /// A one-time key claimed for this requester alone, or the device's fallback key when
    /// none is left (see `fallback`); `None` when the device has neither.
    pub one_time_key: Option<SignedKey>,
    /// `one_time_key` is the fallback key (shared by every claimer until replaced).
    pub fallback: bool,
}

/// Server → client: answer to `ClaimKeys`: every current device of the user, ascending.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeyBundles {
    /// The claim's id.
    pub request_id: u32,
    /// Whose devices.
    pub user: String,
    /// One bundle per device (empty: no such user).
    pub bundles: Vec<DeviceBundle>,
}

/// Server → client: this device holds few unclaimed one-time keys (sent after login and
/// whenever a claim leaves it below the server's threshold): upload more.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KeysLow {
    /// Unclaimed one-time keys left.
    pub one_time_keys: u32,
    /// The fallback key was handed out since it was uploaded: replace it.
    pub fallback_used: bool,
    /// Whether the server holds this device's identity keys (false: upload them).
    pub has_identity: bool,
}

/// Server → client: the request `request_id` was refused (stable `code`); the connection
/// stays open.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RequestRefused {
    /// The refused request.
    pub request_id: u32,
    /// Stable code (`ErrorCode`).
    pub code: u16,
    /// Human-readable reason.
    pub message: String,
}

/// Client → server, instead of `Login`/`Register`: join `user` as a new device. The server
/// picks the device id (never one the user had before) and answers `Welcome` with it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LinkDevice {
    /// The account to join.
    pub user: String,
    /// The one-time code one of its devices got with `CreateLinkCode`.
    pub code: String,
    /// Ed25519 public key of the new device.
    pub device_key: [u8; 32],
    /// Ed25519 signature over `login_transcript(challenge, exporter, user, DeviceId(0))`
    /// (device 0: the id is not known yet).
    pub signature: [u8; 64],
}

/// Client → server: a code that links one new device (answered `LinkCode`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CreateLinkCode {
    /// Echoed in the answer.
    pub request_id: u32,
}

/// Server → client: a one-time link code, valid for `expires_in_ms`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LinkCode {
    /// The request's id.
    pub request_id: u32,
    /// The code to type on the new device.
    pub code: String,
    /// How long it stays valid.
    pub expires_in_ms: u32,
}

/// Client → server: this account's devices (answered `DeviceList`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ListDevices {
    /// Echoed in the answer.
    pub request_id: u32,
}

/// Server → client: the account's current devices, ascending.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeviceList {
    /// The request's id.
    pub request_id: u32,
    /// The devices.
    pub devices: Vec<DeviceId>,
}

/// Client → server: remove `device` from this account (any device may remove any other, or
/// itself). Its mailbox and keys are deleted; its live session is closed with
/// `Error{DeviceRemoved}`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RemoveDevice {
    /// Echoed in the answer.
    pub request_id: u32,
    /// The device to remove.
    pub device: DeviceId,
}

/// Server → client: answer to `RemoveDevice`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DeviceRemoved {
    /// The request's id.
    pub request_id: u32,
    /// The removed device.
    pub device: DeviceId,
}

/// Client → server: "delete for everyone", the server's half. Every copy of this user's
/// message `client_msg_id` to `to` that is still waiting in a mailbox (of `to`'s devices, or
/// of the sender's other devices) is dropped. The clients' half is a tombstone message
/// (end-to-end encrypted like any other) that devices which already have it apply.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Retract {
    /// Echoed in the answer.
    pub request_id: u32,
    /// The message to drop.
    pub client_msg_id: ClientMsgId,
    /// The user it was sent to.
    pub to: String,
}

/// Server → client: answer to `Retract`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Retracted {
    /// The request's id.
    pub request_id: u32,
    /// Undelivered copies dropped (0: every device had it already, or no such message).
    pub removed: u32,
}

/// Server → client: this server is draining; reconnect after `reconnect_after_ms`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Goaway {
    /// Suggested delay before reconnecting.
    pub reconnect_after_ms: u32,
}

impl RequestRefused {
    /// Builds the refusal of request `request_id` from a code and a reason.
    pub fn new(request_id: u32, code: crate::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            request_id,
            code: code.as_u16(),
            message: message.into(),
        }
    }
}

impl Error {
    /// Builds an error frame from a code and a reason.
    pub fn new(code: crate::ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code: code.as_u16(),
            message: message.into(),
        }
    }
}
