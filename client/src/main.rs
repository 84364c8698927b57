//! `missive`: the command-line client. Scripts rely on its commands, output and exit codes:
//!
//! ```text
//! missive --profile PDIR --server HOST:PORT --ca CERT register NAME [--invite TOKEN] [--device N]
//! missive --profile PDIR send NAME TEXT          # prints the client_msg_id once the server stored it
//! missive --profile PDIR send --group ID TEXT    # the same, to every member of group ID
//! missive --profile PDIR group create NAME       # prints the new group's id
//! missive --profile PDIR group add|remove ID USER...  |  promote ID USER  |  leave ID
//! missive --profile PDIR group info ID | list | invite ID [--expires SECS] | join TOKEN | revoke ID TOKEN
//! missive --profile PDIR recv --wait SECS [--json] [--no-read] [--stats]
//! missive --profile PDIR presence NAME --wait SECS [--json]
//! missive --profile PDIR visibility everyone|nobody
//! missive --profile PDIR turn-credentials [--json]   # username, password, ttl and URLs of the edge's TURN relay
//! ```
//!
//! Exit status 0 on success, 1 on any error (with a message on stderr).

#![forbid(unsafe_code)]

use clap::{Parser, Subcommand, ValueEnum};
use missive_client::profile::resolve;
use missive_client::{
    link, register, Client, ClientConfig, ClientError, ClientMsgId, Content, DeviceId, Event,
    EventStream, GroupChange, GroupId, GroupInfo, Identity, PresenceState, Profile, ServerSeq,
    Visibility,
};
use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

mod call_cmd;
mod media_cmd;
use std::process::ExitCode;
use std::time::Duration;
use tokio::time::Instant;

/// Deliveries remembered in the profile's `seen.txt`.
const SEEN_CAPACITY: usize = 10_000;
/// How long `recv` waits before taking the session back from another instance of its device.
const REPLACED_PAUSE: Duration = Duration::from_secs(1);
/// How long `send` waits for the server to store the message.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Missive command-line client.
#[derive(Debug, Parser)]
#[command(name = "missive", version, about)]
struct Cli {
    /// Profile directory (identity, server, CA; created by `register`).
    #[arg(long, global = true, env = "MISSIVE_PROFILE")]
    profile: Option<PathBuf>,
    /// Edge address HOST:PORT (required by `register`; overrides the profile otherwise).
    #[arg(long, global = true)]
    server: Option<String>,
    /// PEM certificate to trust for the edge (required by `register`; overrides the profile).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Name on the edge's certificate [default: the profile's, or "localhost"].
    #[arg(long, global = true)]
    server_name: Option<String>,
    /// Use TCP+TLS only, never QUIC.
    #[arg(long, global = true)]
    force_tcp: bool,
    /// How long to wait for QUIC before falling back to TCP+TLS, in milliseconds.
    #[arg(long, global = true, default_value_t = 1500)]
    quic_timeout_ms: u64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create the account NAME bound to a new device key, and save the profile.
    Register {
        /// User name (a-z, 0-9, '_', '.', '-'; at most 32 bytes).
        name: String,
        /// Invite token, when the server requires one.
        #[arg(long)]
        invite: Option<String>,
        /// Device id of this device.
        #[arg(long, default_value_t = 1)]
        device: u32,
    },
    /// Send TEXT to NAME (or, with --group ID, to every member of the group); prints the
    /// message id once the server has stored it.
    Send {
        /// The group to send to (then the only argument is the text).
        #[arg(long, value_name = "ID")]
        group: Option<u64>,
        /// Recipient user (with --group: the text).
        name: String,
        /// Message text.
        text: Option<String>,
    },
    /// Send a file (photo, video, voice note, document) to NAME, or with --group ID to a
    /// group: encrypted here, uploaded (resumable: run the same command again after an
    /// interruption), then announced in an end-to-end encrypted message. Prints the message
    /// id and the media id.
    SendFile {
        /// Recipient user (with --group: the file).
        name: String,
        /// The file.
        path: Option<PathBuf>,
        /// A caption shown with the file.
        #[arg(long, default_value = "")]
        caption: String,
        /// The group to send it to.
        #[arg(long, value_name = "ID")]
        group: Option<u64>,
    },
    /// Download, verify and decrypt a received file (ID: the media id `recv` printed, or a
    /// unique prefix of it).
    Fetch {
        /// The media id.
        id: String,
        /// Where to write the file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Group chats: create, change membership, invites.
    Group {
        #[command(subcommand)]
        action: GroupCmd,
    },
    /// Status updates: post one to your contacts, list, mark one viewed.
    Status {
        #[command(subcommand)]
        action: StatusCmd,
    },
    /// Broadcast lists: one command sends a separate 1:1 message to each user of a list.
    Broadcast {
        #[command(subcommand)]
        action: BroadcastCmd,
    },
    /// Print incoming events for a while, acknowledge them, send read receipts.
    Recv {
        /// Seconds to listen.
        #[arg(long, default_value_t = 5.0)]
        wait: f64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Do not send read receipts for the printed messages.
        #[arg(long)]
        no_read: bool,
        /// At the end, print what the server delivered, counted before the duplicate filter:
        /// messages, those delivered again (expected after a reconnect), and those it had
        /// stored twice (never expected). With --json: a `{"type":"deliveries",…}` line.
        #[arg(long)]
        stats: bool,
    },
    /// Subscribe to NAME's presence and print presence events for a while.
    Presence {
        /// Watched user.
        name: String,
        /// Seconds to listen.
        #[arg(long, default_value_t = 5.0)]
        wait: f64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Set who may see this user's presence.
    Visibility {
        /// everyone or nobody.
        value: VisibilityArg,
    },
    /// Link another device (laptop, tablet) to this account.
    Link {
        #[command(subcommand)]
        action: LinkCmd,
    },
    /// This account's devices.
    Devices {
        #[command(subcommand)]
        action: DevicesCmd,
    },
    /// Disappearing messages in the chat with NAME: messages sent from now on disappear
    /// SECS seconds after they are sent (0: off). Both sides apply it.
    Timer {
        /// The other user.
        name: String,
        /// Seconds (0 turns it off).
        secs: u32,
    },
    /// Delete for everyone a message this user sent to NAME (ID as `send` printed it).
    Delete {
        /// Its recipient.
        name: String,
        /// Its id (32 hex digits).
        id: String,
    },
    /// Print the safety number of this user and NAME: compare it with NAME's (in person, or
    /// over another channel); if both match, nobody sits between you.
    SafetyNumber {
        /// The other user.
        name: String,
    },
    /// Call NAME: ring every device of NAME, and once one picks up run the call's media
    /// (synthetic audio, and video with --video) for --seconds, printing the path (direct or
    /// relay), RTT, loss, jitter, bitrate and an estimated MOS each second and at the end.
    /// Several names (up to 3) make a group call: a full mesh, a call between each pair.
    Call {
        /// The users to call.
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds of media before hanging up.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[command(flatten)]
        flags: CallFlags,
    },
    /// Wait for a call to ring this device, pick it up and run it like `call` does.
    Answer {
        /// Seconds to wait for a ring.
        #[arg(long, default_value_t = 60.0)]
        wait: f64,
        /// Seconds of media before hanging up (unless the caller hangs up first).
        #[arg(long, default_value_t = 3600.0)]
        seconds: f64,
        #[command(flatten)]
        flags: CallFlags,
    },
    /// Print this user's call history, newest first: peer, direction, type, times, how it
    /// ended, duration.
    Calls {
        /// Most records (at most 200).
        #[arg(long, default_value_t = 50)]
        limit: u16,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print short-lived credentials for the edge's STUN/TURN relay (username, password,
    /// lifetime, ICE URLs), e.g. for `turnutils_uclient -u USER -w PASS`.
    TurnCredentials {
        /// One JSON object: {"username", "password", "ttl_secs", "urls"}.
        #[arg(long)]
        json: bool,
    },
}

/// The flags `call` and `answer` share.
#[derive(clap::Args, Debug, Clone, Copy)]
struct CallFlags {
    /// Video as well as audio (`answer`: a video call is answered with video anyway).
    #[arg(long)]
    video: bool,
    /// Media only through the edge's TURN relay (which sees only ciphertext).
    #[arg(long)]
    force_relay: bool,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand, Debug)]
enum LinkCmd {
    /// On an existing device: print a one-time code for the new device (valid minutes).
    New,
    /// On the new device: join NAME's account with CODE and save this profile for it
    /// (needs --server and --ca).
    Join {
        /// The account's user name.
        name: String,
        /// The code `link new` printed.
        code: String,
    },
}

#[derive(Subcommand, Debug)]
enum StatusCmd {
    /// Post TEXT to your contacts (the users this device has talked with), or to --to users;
    /// prints its id. It lives 24 h (the server's `stories.ttl_secs`).
    Post {
        /// The text.
        text: String,
        /// Post to these users instead of all contacts.
        #[arg(long = "to", value_name = "USER")]
        to: Vec<String>,
    },
    /// Print your live status updates with who viewed each, then your contacts' updates
    /// that arrive within --wait seconds (acknowledged as printed).
    List {
        /// Seconds to listen for contacts' updates.
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Tell NAME you viewed their status update ID.
    View {
        /// The poster.
        name: String,
        /// The update's id (as `status list` or `recv` printed it).
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum BroadcastCmd {
    /// Save the broadcast list NAME with USERS (replacing a list of that name).
    Create {
        /// The list's name (one word).
        name: String,
        /// Its recipients.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Print the saved lists.
    List,
    /// Send TEXT to each user of list NAME as a 1:1 message; prints one id per user.
    Send {
        /// The list.
        name: String,
        /// The text.
        text: String,
    },
}

#[derive(Subcommand, Debug)]
enum GroupCmd {
    /// Create a group named NAME with this user as its admin; prints its id.
    Create {
        /// Its name.
        name: String,
    },
    /// Add users to group ID (admins only).
    Add {
        /// The group.
        id: u64,
        /// Who.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Remove members from group ID (admins only); they cannot read what is sent after.
    Remove {
        /// The group.
        id: u64,
        /// Who.
        #[arg(required = true)]
        users: Vec<String>,
    },
    /// Make USER an admin of group ID (admins only).
    Promote {
        /// The group.
        id: u64,
        /// Who.
        user: String,
    },
    /// Leave group ID.
    Leave {
        /// The group.
        id: u64,
    },
    /// Print group ID's name, epoch and members.
    Info {
        /// The group.
        id: u64,
    },
    /// List this user's groups.
    List,
    /// Print an invite token for group ID (admins only).
    Invite {
        /// The group.
        id: u64,
        /// The token stops working after SECS seconds (0: only when revoked).
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        expires: u32,
    },
    /// Join a group with an invite token.
    Join {
        /// The token `group invite` printed.
        token: String,
    },
    /// Revoke an invite token of group ID (admins only).
    Revoke {
        /// The group.
        id: u64,
        /// The token.
        token: String,
    },
}

#[derive(Subcommand, Debug)]
enum DevicesCmd {
    /// List the account's devices.
    List,
    /// Remove a device: it receives nothing more and cannot log in again.
    Remove {
        /// Its id (see `devices list`).
        id: u32,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum VisibilityArg {
    Everyone,
    Nobody,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("missive: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("missive: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> CliResult {
    let dir = cli
        .profile
        .clone()
        .ok_or("--profile PDIR is required (or MISSIVE_PROFILE)")?;
    match &cli.command {
        Cmd::Register {
            name,
            invite,
            device,
        } => cmd_register(&cli, &dir, name, invite.clone(), *device).await,
        Cmd::Send {
            group: None,
            name,
            text: Some(text),
        } => cmd_send(&cli, &dir, name, text).await,
        Cmd::Send {
            group: None,
            text: None,
            ..
        } => Err("send needs NAME TEXT (or --group ID TEXT)".into()),
        Cmd::Send {
            group: Some(id),
            name: text,
            text: None,
        } => cmd_send_group(&cli, &dir, GroupId(*id), text).await,
        Cmd::Send {
            group: Some(_),
            text: Some(_),
            ..
        } => Err("send --group ID takes only the TEXT".into()),
        Cmd::SendFile {
            name,
            path,
            caption,
            group,
        } => {
            let (to, path) = match (group, path) {
                (None, Some(p)) => (Some(name.as_str()), p.clone()),
                (Some(_), None) => (None, PathBuf::from(name)),
                (None, None) => return Err("send-file needs NAME PATH (or --group ID PATH)".into()),
                (Some(_), Some(_)) => return Err("send-file --group ID takes only the PATH".into()),
            };
            media_cmd::cmd_send_file(&cli, &dir, to, group.map(GroupId), &path, caption).await
        }
        Cmd::Fetch { id, out } => media_cmd::cmd_fetch(&cli, &dir, id, out).await,
        Cmd::Group { action } => cmd_group(&cli, &dir, action).await,
        Cmd::Status { action } => cmd_status(&cli, &dir, action).await,
        Cmd::Broadcast { action } => cmd_broadcast(&cli, &dir, action).await,
        Cmd::Recv {
            wait,
            json,
            no_read,
            stats,
        } => {
            let show = RecvOutput {
                json: *json,
                stats: *stats,
            };
            cmd_recv(&cli, &dir, secs(*wait)?, show, *no_read).await
        }
        Cmd::Presence { name, wait, json } => {
            cmd_presence(&cli, &dir, name, secs(*wait)?, *json).await
        }
        Cmd::Visibility { value } => {
            let v = match value {
                VisibilityArg::Everyone => Visibility::Everyone,
                VisibilityArg::Nobody => Visibility::Nobody,
            };
            cmd_visibility(&cli, &dir, v).await
        }
        Cmd::Link {
            action: LinkCmd::New,
        } => cmd_link_new(&cli, &dir).await,
        Cmd::Link {
            action: LinkCmd::Join { name, code },
        } => cmd_link_join(&cli, &dir, name, code).await,
        Cmd::Devices {
            action: DevicesCmd::List,
        } => cmd_devices_list(&cli, &dir).await,
        Cmd::Devices {
            action: DevicesCmd::Remove { id },
        } => cmd_devices_remove(&cli, &dir, DeviceId(*id)).await,
        Cmd::Timer { name, secs } => {
            let profile = Profile::load(&dir)?;
            let (client, _events) = connect(&cli, &profile).await?;
            client.set_disappearing(name.as_str(), *secs)?;
            // Bye is answered only after the server stored what was sent before it.
            client.close().await?;
            profile.set_timer(name, *secs)?;
            println!("disappearing messages with {name}: {secs} s");
            Ok(())
        }
        Cmd::Delete { name, id } => {
            let id = ClientMsgId::from_hex(id)
                .ok_or_else(|| format!("not a message id (32 hex digits): {id}"))?;
            let profile = Profile::load(&dir)?;
            let (client, _events) = connect(&cli, &profile).await?;
            let done =
                tokio::time::timeout(SEND_TIMEOUT, client.delete_for_everyone(name, id)).await;
            close(&client).await;
            let removed = done.map_err(|_| ClientError::Timeout("waiting for the deletion"))??;
            println!("deleted ({removed} undelivered copies dropped by the server)");
            Ok(())
        }
        Cmd::TurnCredentials { json } => cmd_turn_credentials(&cli, &dir, *json).await,
        Cmd::Calls { limit, json } => cmd_calls(&cli, &dir, *limit, *json).await,
        Cmd::Call {
            names,
            seconds,
            flags,
        } => cmd_call(&cli, &dir, Some(names), None, *seconds, *flags).await,
        Cmd::Answer {
            wait,
            seconds,
            flags,
        } => cmd_call(&cli, &dir, None, Some(secs(*wait)?), *seconds, *flags).await,
        Cmd::SafetyNumber { name } => {
            let profile = Profile::load(&dir)?;
            let number = profile.identity.safety_number(name).ok_or_else(|| {
                format!("no keys of {name} known yet: exchange a message with {name} first")
            })?;
            println!("{number}");
            Ok(())
        }
    }
}

/// `call` (with `names`) or `answer` (waiting `wait` for a ring).
async fn cmd_call(
    cli: &Cli,
    dir: &Path,
    names: Option<&[String]>,
    wait: Option<Duration>,
    seconds: f64,
    flags: CallFlags,
) -> CliResult {
    let args = call_cmd::CallArgs {
        video: flags.video,
        seconds,
        force_relay: flags.force_relay,
        json: flags.json,
    };
    let profile = Profile::load(dir)?;
    let (client, mut events) = connect(cli, &profile).await?;
    let done = match (names, wait) {
        (Some(names), _) => call_cmd::call(&client, &mut events, names, args).await,
        (None, wait) => {
            let wait = wait.unwrap_or(Duration::from_secs(60));
            call_cmd::answer(&client, &mut events, wait, args).await
        }
    };
    close(&client).await;
    done
}

async fn cmd_calls(cli: &Cli, dir: &Path, limit: u16, json: bool) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, _events) = connect(cli, &profile).await?;
    let got = tokio::time::timeout(SEND_TIMEOUT, client.call_history(limit)).await;
    close(&client).await;
    let records = got.map_err(|_| ClientError::Timeout("waiting for the call history"))??;
    for r in &records {
        if json {
            println!("{}", call_cmd::record_json(r));
        } else {
            println!("{}", call_cmd::record_text(r));
        }
    }
    Ok(())
}

async fn cmd_turn_credentials(cli: &Cli, dir: &Path, json: bool) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, _events) = connect(cli, &profile).await?;
    let got = tokio::time::timeout(SEND_TIMEOUT, client.turn_credentials()).await;
    close(&client).await;
    let creds = got.map_err(|_| ClientError::Timeout("waiting for TURN credentials"))??;
    if json {
        let line = serde_json::json!({
            "username": creds.username,
            "password": creds.password,
            "ttl_secs": creds.ttl.as_secs(),
            "urls": creds.urls,
        });
        println!("{line}");
    } else {
        println!("username: {}", creds.username);
        println!("password: {}", creds.password);
        println!("ttl_secs: {}", creds.ttl.as_secs());
        for url in &creds.urls {
            println!("url: {url}");
        }
    }
    Ok(())
}

async fn cmd_link_new(cli: &Cli, dir: &Path) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, _events) = connect(cli, &profile).await?;
    let made = tokio::time::timeout(SEND_TIMEOUT, client.create_link_code()).await;
    close(&client).await;
    let (code, valid) = made.map_err(|_| ClientError::Timeout("waiting for a link code"))??;
    println!("{code}");
    eprintln!(
        "missive: on the new device run `missive --profile NEW --server ... --ca ... link join {} {code}` within {} s",
        profile.identity.user,
        valid.as_secs()
    );
    Ok(())
}

async fn cmd_link_join(cli: &Cli, dir: &Path, name: &str, code: &str) -> CliResult {
    missive_proto::validate_user_name(name).map_err(|e| ClientError::InvalidName(e.to_string()))?;
    let server = cli
        .server
        .as_deref()
        .ok_or("link join needs --server HOST:PORT")?;
    let ca_path = cli.ca.as_deref().ok_or("link join needs --ca CERT")?;
    let ca_pem = read_ca(ca_path)?;
    let server_name = cli.server_name.as_deref().unwrap_or("localhost");
    // Device 0 until the server picks this device's id.
    let identity = Identity::generate(name, DeviceId(0));
    let mut profile = Profile::create(dir, server, server_name, &ca_pem, &identity)?;
    let linked = match client_config(cli, &profile) {
        Ok(cfg) => link(&cfg, code).await,
        Err(e) => {
            profile.remove_files();
            return Err(e);
        }
    };
    match linked {
        Ok(identity) => {
            profile.set_device(identity.device)?;
            println!("linked {name} device {}", identity.device.0);
            Ok(())
        }
        Err(e) => {
            profile.remove_files();
            Err(e.into())
        }
    }
}

async fn cmd_devices_list(cli: &Cli, dir: &Path) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, _events) = connect(cli, &profile).await?;
    let listed = tokio::time::timeout(SEND_TIMEOUT, client.devices()).await;
    close(&client).await;
    let devices = listed.map_err(|_| ClientError::Timeout("waiting for the device list"))??;
    for d in devices {
        let this = if d == profile.identity.device {
            " (this device)"
        } else {
            ""
        };
        println!("{}{this}", d.0);
    }
    Ok(())
}

async fn cmd_devices_remove(cli: &Cli, dir: &Path, device: DeviceId) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, _events) = connect(cli, &profile).await?;
    let removed = tokio::time::timeout(SEND_TIMEOUT, client.remove_device(device)).await;
    close(&client).await;
    removed.map_err(|_| ClientError::Timeout("waiting for the removal"))??;
    println!("removed device {}", device.0);
    Ok(())
}

fn secs(wait: f64) -> CliResult<Duration> {
    Duration::try_from_secs_f64(wait)
        .map_err(|_| format!("--wait must be a non-negative number of seconds, not {wait}").into())
}

/// The SDK configuration for `profile`, with command-line overrides applied.
fn client_config(cli: &Cli, profile: &Profile) -> CliResult<ClientConfig> {
    let server = match &cli.server {
        Some(s) => resolve(s)?,
        None => profile.server_addr()?,
    };
    let ca_pem = match &cli.ca {
        Some(path) => read_ca(path)?,
        None => profile.ca_pem()?,
    };
    let mut cfg = ClientConfig::new(server, ca_pem, profile.identity.clone());
    cfg.server_name = cli
        .server_name
        .clone()
        .unwrap_or_else(|| profile.server_name.clone());
    cfg.quic_timeout = Duration::from_millis(cli.quic_timeout_ms);
    cfg.force_tcp = cli.force_tcp;
    // The CLI acknowledges only what it has printed.
    cfg.auto_ack = false;
    cfg.disappearing = profile.timers()?;
    Ok(cfg)
}

fn read_ca(path: &Path) -> CliResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| format!("cannot read CA certificate {}: {e}", path.display()).into())
}

async fn cmd_register(
    cli: &Cli,
    dir: &Path,
    name: &str,
    invite: Option<String>,
    device: u32,
) -> CliResult {
    missive_proto::validate_user_name(name).map_err(|e| ClientError::InvalidName(e.to_string()))?;
    let server = cli
        .server
        .as_deref()
        .ok_or("register needs --server HOST:PORT")?;
    let ca_path = cli.ca.as_deref().ok_or("register needs --ca CERT")?;
    let ca_pem = read_ca(ca_path)?;
    let server_name = cli.server_name.as_deref().unwrap_or("localhost");
    let identity = Identity::generate(name, DeviceId(device));
    let profile = Profile::create(dir, server, server_name, &ca_pem, &identity)?;
    let cfg = match client_config(cli, &profile) {
        Ok(c) => c,
        Err(e) => {
            profile.remove_files();
            return Err(e);
        }
    };
    match register(&cfg, invite).await {
        Ok(()) => {
            println!("registered {name} (device {device})");
            Ok(())
        }
        Err(e) => {
            let ambiguous = matches!(
                e,
                ClientError::Timeout(_) | ClientError::ConnectionClosed(_) | ClientError::Io(_)
            );
            if ambiguous {
                // The server may have created the account before the connection failed: keep
                // the key so the account is not orphaned.
                eprintln!(
                    "missive: registration outcome unknown; profile kept in {}",
                    dir.display()
                );
            } else {
                profile.remove_files();
            }
            Err(e.into())
        }
    }
}

/// Connects for a command that only sends: deliveries stay in the mailbox for `recv`
/// (which may be running on this profile right now).
async fn connect(cli: &Cli, profile: &Profile) -> CliResult<(Client, EventStream)> {
    let mut cfg = client_config(cli, profile)?;
    cfg.receive = false;
    Ok(Client::connect(cfg).await?)
}

async fn close(client: &Client) {
    if let Err(e) = client.close().await {
        eprintln!("missive: warning: closing the connection: {e}");
    }
}

/// Waits (bounded) for a send to be stored; on failure closes the connection. Then shows
/// what the SDK learnt before encrypting ("bob has a new device").
async fn await_stored(
    client: &Client,
    events: &mut EventStream,
    sent: impl std::future::Future<Output = Result<missive_client::SendReceipt, ClientError>>,
) -> CliResult<missive_client::SendReceipt> {
    let receipt = match tokio::time::timeout(SEND_TIMEOUT, sent).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            close(client).await;
            return Err(e.into());
        }
        Err(_) => {
            close(client).await;
            return Err(ClientError::Timeout("waiting for the server to store the message").into());
        }
    };
    while let Some(e) = events.try_next() {
        if matches!(e, Event::DevicesChanged { .. } | Event::KeysRejected { .. }) {
            eprintln!("missive: {}", render(&e, false));
        }
    }
    Ok(receipt)
}

async fn cmd_send(cli: &Cli, dir: &Path, to: &str, text: &str) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, mut events) = connect(cli, &profile).await?;
    let receipt = await_stored(
        &client,
        &mut events,
        client.send(to, Content::Text(text.into())),
    )
    .await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", receipt.client_msg_id.to_hex())?;
    out.flush()?;
    close(&client).await;
    Ok(())
}

async fn cmd_send_group(cli: &Cli, dir: &Path, group: GroupId, text: &str) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, mut events) = connect(cli, &profile).await?;
    let receipt = await_stored(&client, &mut events, client.send_group(group, text)).await?;
    let mut out = std::io::stdout();
    writeln!(out, "{}", receipt.client_msg_id.to_hex())?;
    out.flush()?;
    // The Bye also saves what the send changed in the group state (a new key).
    close(&client).await;
    Ok(())
}

async fn cmd_status(cli: &Cli, dir: &Path, action: &StatusCmd) -> CliResult {
    let profile = Profile::load(dir)?;
    // `status list` reads the mailbox (contacts' updates); the others only send.
    let (client, mut events) = if matches!(action, StatusCmd::List { .. }) {
        Client::connect(client_config(cli, &profile)?).await?
    } else {
        connect(cli, &profile).await?
    };
    let result = match action {
        StatusCmd::Post { text, to } => {
            let audience = if to.is_empty() {
                client.contacts()
            } else {
                to.clone()
            };
            if audience.is_empty() {
                close(&client).await;
                return Err("no contacts yet: name the audience with --to USER".into());
            }
            match tokio::time::timeout(SEND_TIMEOUT, client.post_status(text.as_str(), audience))
                .await
            {
                Ok(Ok(r)) => {
                    println!("{}", r.client_msg_id.to_hex());
                    Ok(())
                }
                Ok(Err(e)) => Err(e.into()),
                Err(_) => {
                    Err(ClientError::Timeout("waiting for the server to store the update").into())
                }
            }
        }
        StatusCmd::View { name, id } => match ClientMsgId::from_hex(id) {
            Some(id) => client.view_status(name.as_str(), id).map_err(Into::into),
            None => Err(format!("not a status id: {id}").into()),
        },
        StatusCmd::List { wait, json } => {
            let mine = tokio::time::timeout(SEND_TIMEOUT, client.my_statuses())
                .await
                .map_err(|_| ClientError::Timeout("waiting for your status updates"));
            match mine {
                Ok(Ok(mine)) => {
                    for s in mine {
                        if *json {
                            println!(
                                "{}",
                                serde_json::json!({
                                    "type": "my_status",
                                    "client_msg_id": s.client_msg_id.to_hex(),
                                    "posted_ms": s.posted_ms,
                                    "expires_at_ms": s.expires_at_ms,
                                    "audience": s.audience,
                                    "viewers": s.viewers,
                                })
                            );
                        } else {
                            println!(
                                "mine {}: to {}, viewed by {} ({})",
                                s.client_msg_id.to_hex(),
                                s.audience,
                                s.viewers.len(),
                                s.viewers.join(", ")
                            );
                        }
                    }
                    let deadline = tokio::time::Instant::now() + secs(*wait)?;
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0);
                    while let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.next()).await {
                        let live = match &e {
                            Event::Status { expires_at_ms, .. } => *expires_at_ms > now_ms,
                            Event::StatusUnreadable { .. } | Event::StatusViewed { .. } => true,
                            _ => false,
                        };
                        if live {
                            println!("{}", render(&e, *json));
                        }
                        if let Some(point) = e.ack_point() {
                            client.ack(point)?;
                        }
                    }
                    Ok(())
                }
                Ok(Err(e)) => Err(e.into()),
                Err(e) => Err(e.into()),
            }
        }
    };
    close(&client).await;
    result
}

async fn cmd_broadcast(cli: &Cli, dir: &Path, action: &BroadcastCmd) -> CliResult {
    let profile = Profile::load(dir)?;
    match action {
        BroadcastCmd::Create { name, users } => {
            for u in users {
                missive_proto::validate_user_name(u).map_err(|e| format!("{u}: {e}"))?;
            }
            profile.save_broadcast_list(name, users)?;
            println!("broadcast list {name}: {}", users.join(" "));
            Ok(())
        }
        BroadcastCmd::List => {
            for (name, users) in profile.broadcast_lists()? {
                println!("{name}: {}", users.join(" "));
            }
            Ok(())
        }
        BroadcastCmd::Send { name, text } => {
            let lists = profile.broadcast_lists()?;
            let users = lists
                .get(name)
                .ok_or_else(|| format!("no broadcast list {name} (see `broadcast list`)"))?;
            let (client, _events) = connect(cli, &profile).await?;
            let sent = tokio::time::timeout(SEND_TIMEOUT, client.broadcast(users, text)).await;
            close(&client).await;
            let results = sent.map_err(|_| ClientError::Timeout("waiting for the sends"))?;
            let mut failed = 0;
            for (user, r) in users.iter().zip(results) {
                match r {
                    Ok(r) => println!("{user} {}", r.client_msg_id.to_hex()),
                    Err(e) => {
                        failed += 1;
                        eprintln!("missive: {user}: {e}");
                    }
                }
            }
            if failed > 0 {
                return Err(format!("{failed} of {} sends failed", users.len()).into());
            }
            Ok(())
        }
    }
}

async fn cmd_group(cli: &Cli, dir: &Path, action: &GroupCmd) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, _events) = connect(cli, &profile).await?;
    let done = tokio::time::timeout(SEND_TIMEOUT, group_action(&client, action)).await;
    // Closing saves what the answer taught the SDK (epoch, members) in the profile.
    close(&client).await;
    let lines = done.map_err(|_| ClientError::Timeout("waiting for the server's answer"))??;
    let mut out = std::io::stdout();
    for line in lines {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

/// Runs one `group` command; returns the lines to print.
async fn group_action(client: &Client, action: &GroupCmd) -> Result<Vec<String>, ClientError> {
    Ok(match action {
        GroupCmd::Create { name } => {
            vec![client.create_group(name.as_str()).await?.group.to_string()]
        }
        GroupCmd::Add { id, users } => {
            info_lines(&client.add_members(GroupId(*id), users.clone()).await?)
        }
        GroupCmd::Remove { id, users } => {
            info_lines(&client.remove_members(GroupId(*id), users.clone()).await?)
        }
        GroupCmd::Promote { id, user } => {
            info_lines(&client.promote(GroupId(*id), user.as_str()).await?)
        }
        GroupCmd::Leave { id } => {
            client.leave_group(GroupId(*id)).await?;
            vec![format!("left group {id}")]
        }
        GroupCmd::Info { id } => info_lines(&client.group_info(GroupId(*id)).await?),
        GroupCmd::List => client
            .groups()
            .await?
            .into_iter()
            .map(|g| {
                let admin = if g.admin { ", admin" } else { "" };
                format!("{} {} ({} members{admin})", g.group, g.name, g.members)
            })
            .collect(),
        GroupCmd::Invite { id, expires } => {
            let invite = client.create_group_invite(GroupId(*id), *expires).await?;
            if invite.expires_at_ms > 0 {
                eprintln!(
                    "missive: valid until {} ms after the epoch; join with `missive group join TOKEN`",
                    invite.expires_at_ms
                );
            }
            vec![invite.token]
        }
        GroupCmd::Join { token } => info_lines(&client.join_group(token.as_str()).await?),
        GroupCmd::Revoke { id, token } => {
            client
                .revoke_group_invite(GroupId(*id), token.as_str())
                .await?;
            vec![format!("revoked the invite to group {id}")]
        }
    })
}

/// `ID NAME (epoch E)` and one line per member, longest-standing first.
fn info_lines(info: &GroupInfo) -> Vec<String> {
    let mut lines = vec![format!(
        "{} {} (epoch {})",
        info.group, info.name, info.epoch
    )];
    lines.extend(info.members.iter().map(|m| {
        let admin = if m.admin { " (admin)" } else { "" };
        format!("  {}{admin}", m.user)
    }));
    lines
}

async fn cmd_visibility(cli: &Cli, dir: &Path, v: Visibility) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, _events) = connect(cli, &profile).await?;
    client.set_visibility(v)?;
    // Bye is answered only after the server applied everything before it.
    client.close().await?;
    Ok(())
}

async fn cmd_presence(cli: &Cli, dir: &Path, user: &str, wait: Duration, json: bool) -> CliResult {
    let profile = Profile::load(dir)?;
    let (client, mut events) = connect(cli, &profile).await?;
    client.subscribe_presence(user)?;
    let deadline = Instant::now() + wait;
    let mut out = std::io::stdout();
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.next()).await {
        match &ev {
            Event::Presence { .. } => {
                writeln!(out, "{}", render(&ev, json))?;
                out.flush()?;
            }
            Event::Disconnected { reason } => eprintln!("missive: disconnected: {reason}"),
            _ => {}
        }
    }
    close(&client).await;
    Ok(())
}

/// What `recv` prints.
#[derive(Debug, Clone, Copy)]
struct RecvOutput {
    /// One JSON object per line.
    json: bool,
    /// The delivery counts at the end.
    stats: bool,
}

async fn cmd_recv(
    cli: &Cli,
    dir: &Path,
    wait: Duration,
    show: RecvOutput,
    no_read: bool,
) -> CliResult {
    let json = show.json;
    let profile = Profile::load(dir)?;
    let mut seen = profile.load_seen(SEEN_CAPACITY)?;
    let mut cfg = client_config(cli, &profile)?;
    // Deliveries printed by an earlier run but not acknowledged are dropped (and acked).
    cfg.seen = seen.clone();
    let (mut client, mut events) = Client::connect(cfg.clone()).await?;
    let deadline = Instant::now() + wait;
    let mut out = std::io::stdout();
    let mut to_mark_read: BTreeMap<String, Vec<ClientMsgId>> = BTreeMap::new();
    let mut group_reads: Vec<(GroupId, String, ClientMsgId)> = Vec::new();
    // Per mailbox (`None`) and per group log: the highest seq acknowledged.
    let mut acked: HashMap<Option<missive_proto::GroupId>, ServerSeq> = HashMap::new();
    let replaced = ClientError::SessionReplaced.to_string();
    let mut last_disconnect = String::new();
    let mut earlier_stats = missive_client::DeliveryStats::default();
    loop {
        while let Ok(Some(first)) = tokio::time::timeout_at(deadline, events.next()).await {
            // Print everything that is ready, then record and acknowledge it as one batch. A
            // delivery's events enter the stream together, so the batch never splits one.
            let mut batch_max: HashMap<Option<missive_proto::GroupId>, ServerSeq> = HashMap::new();
            let mut new_keys = false;
            let mut ev = Some(first);
            while let Some(e) = ev.take().or_else(|| events.try_next()) {
                match &e {
                    Event::Connected { transport } if !json => {
                        eprintln!("missive: connected over {transport}")
                    }
                    Event::Disconnected { reason } => {
                        eprintln!("missive: disconnected: {reason}");
                        last_disconnect.clone_from(reason);
                    }
                    Event::Connected { .. } => {}
                    Event::Media { media, .. } => {
                        // `fetch` finds the key and hash here later.
                        media_cmd::remember(&profile, media)?;
                        writeln!(out, "{}", render(&e, json))?
                    }
                    Event::TimerChanged { chat, secs, .. } => {
                        // Later `send`s on this profile apply the chat's new timer.
                        profile.set_timer(chat, *secs)?;
                        writeln!(out, "{}", render(&e, json))?
                    }
                    _ => writeln!(out, "{}", render(&e, json))?,
                }
                if let Event::Message {
                    from,
                    client_msg_id,
                    ..
                } = &e
                {
                    to_mark_read
                        .entry(from.clone())
                        .or_default()
                        .push(*client_msg_id);
                }
                if let Event::GroupMessage {
                    group,
                    from,
                    client_msg_id,
                    ..
                } = &e
                {
                    if *from != profile.identity.user {
                        group_reads.push((*group, from.clone(), *client_msg_id));
                    }
                }
                if let Some(key) = e.delivery_key() {
                    new_keys |= seen.insert(key);
                }
                if let Some(p) = e.ack_point() {
                    let max = batch_max.entry(p.group).or_insert(p.seq);
                    *max = (*max).max(p.seq);
                }
            }
            out.flush()?;
            if new_keys {
                profile.save_seen(&seen)?;
            }
            for (group, seq) in batch_max {
                if acked.get(&group).is_none_or(|a| seq > *a) {
                    client.ack(missive_client::AckPoint { group, seq })?;
                    acked.insert(group, seq);
                }
            }
        }
        // Another instance of this device (say `missive send` on the same profile) took the
        // session. The SDK does not fight for it; `recv` waits a moment and takes it back while
        // it still has time to wait, so a short command in between does not end it.
        if last_disconnect != replaced || Instant::now() + REPLACED_PAUSE >= deadline {
            break;
        }
        last_disconnect.clear();
        tokio::time::sleep(REPLACED_PAUSE).await;
        cfg.seen = seen.clone();
        // The other instance moved this device's E2EE state on (new sessions, spent keys):
        // read it again rather than go on from ours, which is now behind.
        cfg.identity = Profile::load(&profile.dir)?.identity;
        earlier_stats = add_stats(earlier_stats, client.delivery_stats());
        (client, events) = Client::connect(cfg.clone()).await?;
        acked.clear();
    }
    if show.stats {
        // What the edge sent, before the duplicate filter: for scripts and tests that check
        // "exactly once" at the server, not after the filter that hides its mistakes.
        let s = add_stats(earlier_stats, client.delivery_stats());
        if json {
            let line = serde_json::json!({
                "type": "deliveries",
                "deliveries": s.deliveries,
                "redeliveries": s.redeliveries,
                "duplicates": s.duplicates,
            });
            writeln!(out, "{line}")?;
        } else {
            writeln!(
                out,
                "deliveries: {} ({} again after a reconnect, {} stored twice by the server)",
                s.deliveries, s.redeliveries, s.duplicates
            )?;
        }
    }
    let mut result: CliResult = Ok(());
    if !no_read {
        for (group, from, id) in group_reads {
            // Applied by the server before it answers the closing Bye.
            client.mark_group_read(group, from, id)?;
        }
        for (from, ids) in to_mark_read {
            let sent =
                tokio::time::timeout(SEND_TIMEOUT, client.mark_read(from.clone(), ids)).await;
            match sent {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    result = Err(format!("sending the read receipt to {from}: {e}").into())
                }
                Err(_) => {
                    result = Err(format!("sending the read receipt to {from}: timed out").into())
                }
            }
        }
    }
    close(&client).await;
    result
}

/// The sum of two clients' delivery counts (a `recv` that reconnected).
fn add_stats(
    a: missive_client::DeliveryStats,
    b: missive_client::DeliveryStats,
) -> missive_client::DeliveryStats {
    missive_client::DeliveryStats {
        deliveries: a.deliveries + b.deliveries,
        redeliveries: a.redeliveries + b.redeliveries,
        duplicates: a.duplicates + b.duplicates,
    }
}

/// One output line for an event.
fn render(ev: &Event, json: bool) -> String {
    if json {
        render_json(ev).to_string()
    } else {
        render_text(ev)
    }
}

fn render_json(ev: &Event) -> serde_json::Value {
    use serde_json::json;
    match ev {
        Event::Call(c) => call_cmd::event_json(c),
        Event::Media {
            group,
            from,
            from_device,
            client_msg_id,
            server_seq,
            server_ts_ms,
            media,
            sent_to,
        } => {
            let mut v = json!({
                "type": "media",
                "from": from,
                "id": media_cmd::hex(&media.blob),
                "name": media.name,
                "mime": media.mime,
                "size": media.plaintext_size,
                "caption": media.caption,
                "preview_bytes": media.preview.len(),
                "server_seq": server_seq.0,
                "client_msg_id": client_msg_id.to_hex(),
                "server_ts_ms": server_ts_ms,
                "from_device": from_device.0,
            });
            if let Some(g) = group {
                v["group"] = json!(g.0);
            }
            if let Some(to) = sent_to {
                v["sent_to"] = json!(to);
            }
            v
        }
        Event::Message {
            from,
            from_device,
            client_msg_id,
            server_seq,
            server_ts_ms,
            text,
            sent_to,
            expires_in_secs,
        } => {
            let mut v = json!({
                "type": "message",
                "from": from,
                "text": text,
                "server_seq": server_seq.0,
                "client_msg_id": client_msg_id.to_hex(),
                "server_ts_ms": server_ts_ms,
                "from_device": from_device.0,
            });
            if let Some(to) = sent_to {
                v["sent_to"] = json!(to);
            }
            if *expires_in_secs > 0 {
                v["expires_in_secs"] = json!(expires_in_secs);
            }
            v
        }
        Event::TimerChanged {
            chat,
            by,
            secs,
            server_seq,
        } => json!({
            "type": "timer",
            "chat": chat,
            "by": by,
            "secs": secs,
            "server_seq": server_seq.0,
        }),
        Event::Receipt {
            from,
            client_msg_id,
            status,
            server_seq,
            server_ts_ms,
            ..
        } => json!({
            "type": "receipt",
            "from": from,
            "client_msg_id": client_msg_id.to_hex(),
            "status": status.as_str(),
            "server_seq": server_seq.0,
            "server_ts_ms": server_ts_ms,
        }),
        Event::Presence { user, state } => {
            let (name, last_seen) = presence_parts(state);
            let mut v = json!({ "type": "presence", "user": user, "state": name });
            if let Some(ms) = last_seen {
                v["last_seen_ms"] = json!(ms);
            }
            v
        }
        Event::Typing { from, typing } => {
            json!({ "type": "typing", "from": from, "typing": typing })
        }
        Event::Connected { transport } => {
            json!({ "type": "connected", "transport": transport.as_str() })
        }
        Event::Disconnected { reason } => json!({ "type": "disconnected", "reason": reason }),
        Event::Deleted {
            from,
            client_msg_id,
            server_seq,
            ..
        } => json!({
            "type": "deleted",
            "from": from,
            "client_msg_id": client_msg_id.to_hex(),
            "server_seq": server_seq.0,
        }),
        Event::Undecryptable {
            from,
            from_device,
            client_msg_id,
            server_seq,
        } => json!({
            "type": "undecryptable",
            "from": from,
            "from_device": from_device.0,
            "client_msg_id": client_msg_id.to_hex(),
            "server_seq": server_seq.0,
        }),
        Event::KeysRejected {
            user,
            device,
            reason,
        } => json!({
            "type": "keys_rejected",
            "user": user,
            "device": device.0,
            "reason": reason,
        }),
        Event::GroupMessage {
            group,
            from,
            from_device,
            client_msg_id,
            text,
            server_seq,
            server_ts_ms,
        } => json!({
            "type": "group_message",
            "group": group.0,
            "from": from,
            "text": text,
            "server_seq": server_seq.0,
            "client_msg_id": client_msg_id.to_hex(),
            "server_ts_ms": server_ts_ms,
            "from_device": from_device.0,
        }),
        Event::GroupChanged {
            group,
            by,
            epoch,
            change,
            server_seq,
        } => {
            let (name, users) = change_parts(change, by);
            let mut v = json!({
                "type": "group_changed",
                "group": group.0,
                "by": by,
                "epoch": epoch,
                "change": name,
                "users": users,
                "server_seq": server_seq.0,
            });
            if let GroupChange::Created(group_name) = change {
                v["name"] = json!(group_name);
            }
            v
        }
        Event::Status {
            from,
            from_device,
            client_msg_id,
            text,
            expires_at_ms,
            server_seq,
            server_ts_ms,
        } => json!({
            "type": "status",
            "from": from,
            "from_device": from_device.0,
            "client_msg_id": client_msg_id.to_hex(),
            "text": text,
            "expires_at_ms": expires_at_ms,
            "server_seq": server_seq.0,
            "server_ts_ms": server_ts_ms,
        }),
        Event::StatusUnreadable {
            from,
            client_msg_id,
            server_seq,
            reason,
        } => json!({
            "type": "status_unreadable",
            "from": from,
            "client_msg_id": client_msg_id.to_hex(),
            "server_seq": server_seq.0,
            "reason": reason,
        }),
        Event::StatusViewed {
            client_msg_id,
            viewer,
        } => json!({
            "type": "status_viewed",
            "client_msg_id": client_msg_id.to_hex(),
            "viewer": viewer,
        }),
        Event::GroupReceipt {
            group,
            client_msg_id,
            delivered,
            read,
            of,
        } => json!({
            "type": "group_receipt",
            "group": group.0,
            "client_msg_id": client_msg_id.to_hex(),
            "delivered": delivered,
            "read": read,
            "of": of,
        }),
        Event::GroupUndecryptable {
            group,
            from,
            from_device,
            client_msg_id,
            server_seq,
            reason,
        } => json!({
            "type": "group_undecryptable",
            "group": group.0,
            "from": from,
            "from_device": from_device.0,
            "client_msg_id": client_msg_id.to_hex(),
            "server_seq": server_seq.0,
            "reason": reason,
        }),
        Event::DevicesChanged {
            user,
            added,
            removed,
        } => json!({
            "type": "devices_changed",
            "user": user,
            "added": added.iter().map(|d| d.0).collect::<Vec<_>>(),
            "removed": removed.iter().map(|d| d.0).collect::<Vec<_>>(),
        }),
    }
}

/// A membership change's name and the users it names (`by` for `Left`, `Joined`, `Created`).
fn change_parts<'a>(change: &'a GroupChange, by: &'a str) -> (&'static str, Vec<&'a str>) {
    let names = |users: &'a [String]| users.iter().map(String::as_str).collect();
    match change {
        GroupChange::Created(_) => ("created", vec![by]),
        GroupChange::Added(users) => ("added", names(users)),
        GroupChange::Removed(users) => ("removed", names(users)),
        GroupChange::Left => ("left", vec![by]),
        GroupChange::Joined => ("joined", vec![by]),
        GroupChange::Promoted(users) => ("promoted", names(users)),
    }
}

fn presence_parts(state: &PresenceState) -> (&'static str, Option<u64>) {
    match state {
        PresenceState::Online => ("online", None),
        PresenceState::LastSeen(ms) => ("offline", Some(*ms)),
        PresenceState::Offline => ("offline", None),
        PresenceState::Hidden => ("hidden", None),
    }
}

fn render_text(ev: &Event) -> String {
    match ev {
        Event::Call(c) => call_cmd::event_text(c),
        Event::Media {
            group,
            from,
            server_seq,
            media,
            ..
        } => {
            let at = group.map(|g| format!("#{g} ")).unwrap_or_default();
            format!(
                "[{}] {at}{from}: file {} ({}, {} bytes){}{} (missive fetch {} --out FILE)",
                server_seq.0,
                media.name,
                media.mime,
                media.plaintext_size,
                if media.caption.is_empty() { "" } else { ": " },
                media.caption,
                &media_cmd::hex(&media.blob)[..16]
            )
        }
        Event::Message {
            from,
            text,
            server_seq,
            sent_to: Some(to),
            ..
        } => format!("[{}] {from} (another device) → {to}: {text}", server_seq.0),
        Event::Message {
            from,
            text,
            server_seq,
            ..
        } => format!("[{}] {from}: {text}", server_seq.0),
        Event::Receipt {
            from,
            client_msg_id,
            status,
            ..
        } => format!("{} by {from}: {client_msg_id}", status.as_str()),
        Event::Presence { user, state } => match presence_parts(state) {
            (_, Some(ms)) => format!("{user} is offline, last seen {ms} ms after the epoch"),
            (name, None) => format!("{user} is {name}"),
        },
        Event::Typing { from, typing: true } => format!("{from} is typing"),
        Event::Typing {
            from,
            typing: false,
        } => format!("{from} stopped typing"),
        Event::Connected { transport } => format!("connected over {transport}"),
        Event::Disconnected { reason } => format!("disconnected: {reason}"),
        Event::Deleted {
            from,
            client_msg_id,
            ..
        } => format!("{from} deleted message {client_msg_id}"),
        Event::TimerChanged {
            chat, by, secs: 0, ..
        } => {
            format!("{by} turned disappearing messages off in the chat with {chat}")
        }
        Event::TimerChanged { chat, by, secs, .. } => {
            format!("{by} set disappearing messages to {secs} s in the chat with {chat}")
        }
        Event::Undecryptable {
            from,
            from_device,
            client_msg_id,
            ..
        } => format!(
            "could not decrypt message {client_msg_id} from {from} (device {}); asked for it again",
            from_device.0
        ),
        Event::KeysRejected {
            user,
            device,
            reason,
        } => format!(
            "WARNING: not encrypting to {user}'s device {}: {reason}",
            device.0
        ),
        Event::GroupMessage {
            group,
            from,
            text,
            server_seq,
            ..
        } => format!("[{}] #{group} {from}: {text}", server_seq.0),
        Event::GroupChanged {
            group, by, change, ..
        } => match change {
            GroupChange::Created(name) => format!("#{group}: {by} created the group \"{name}\""),
            GroupChange::Added(users) => format!("#{group}: {by} added {}", users.join(", ")),
            GroupChange::Removed(users) => {
                format!("#{group}: {by} removed {}", users.join(", "))
            }
            GroupChange::Left => format!("#{group}: {by} left"),
            GroupChange::Joined => format!("#{group}: {by} joined"),
            GroupChange::Promoted(users) => {
                format!("#{group}: {} now admin (by {by})", users.join(", "))
            }
        },
        Event::GroupReceipt {
            group,
            client_msg_id,
            delivered,
            read,
            of,
        } => format!("#{group} {client_msg_id}: delivered {delivered}/{of}, read {read}/{of}"),
        Event::Status {
            from,
            client_msg_id,
            text,
            ..
        } => format!("status {} from {from}: {text}", client_msg_id.to_hex()),
        Event::StatusUnreadable {
            from,
            client_msg_id,
            reason,
            ..
        } => format!(
            "could not read status {} from {from}: {reason}",
            client_msg_id.to_hex()
        ),
        Event::StatusViewed {
            client_msg_id,
            viewer,
        } => format!("{viewer} viewed your status {}", client_msg_id.to_hex()),
        Event::GroupUndecryptable {
            group,
            from,
            from_device,
            client_msg_id,
            reason,
            ..
        } => format!(
            "could not decrypt group message {client_msg_id} in #{group} from {from} (device {}): {reason}",
            from_device.0
        ),
        Event::DevicesChanged {
            user,
            added,
            removed,
        } => {
            let ids = |d: &[DeviceId]| d.iter().map(|d| d.0.to_string()).collect::<Vec<_>>();
            match (added.is_empty(), removed.is_empty()) {
                (false, true) => format!("{user} has a new device ({})", ids(added).join(", ")),
                (true, false) => format!("{user} removed a device ({})", ids(removed).join(", ")),
                _ => format!(
                    "{user}'s devices changed: added {}, removed {}",
                    ids(added).join(", "),
                    ids(removed).join(", ")
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_client::ReceiptStatus;

    #[test]
    fn json_shapes_match_the_script_contract() {
        let id = ClientMsgId([0xab; 16]);
        let m = render_json(&Event::Message {
            from: "alice".into(),
            from_device: DeviceId(1),
            client_msg_id: id,
            server_seq: ServerSeq(7),
            server_ts_ms: 99,
            text: "hi".into(),
            sent_to: None,
            expires_in_secs: 0,
        });
        assert_eq!(m["type"], "message");
        assert_eq!(m["from"], "alice");
        assert_eq!(m["text"], "hi");
        assert_eq!(m["server_seq"], 7);
        assert_eq!(m["client_msg_id"], "ab".repeat(16));
        assert_eq!(m["server_ts_ms"], 99);
        let r = render_json(&Event::Receipt {
            from: "bob".into(),
            client_msg_id: id,
            status: ReceiptStatus::Read,
            server_seq: ServerSeq(8),
            server_ts_ms: 1,
            envelope_id: ClientMsgId([1; 16]),
        });
        assert_eq!(r["type"], "receipt");
        assert_eq!(r["status"], "read");
        assert_eq!(r["client_msg_id"], "ab".repeat(16));
        let p = render_json(&Event::Presence {
            user: "bob".into(),
            state: PresenceState::LastSeen(123),
        });
        assert_eq!(
            p.to_string(),
            r#"{"last_seen_ms":123,"state":"offline","type":"presence","user":"bob"}"#
        );
        let h = render_json(&Event::Presence {
            user: "bob".into(),
            state: PresenceState::Hidden,
        });
        assert_eq!(h["state"], "hidden");
        let t = render_json(&Event::Typing {
            from: "alice".into(),
            typing: true,
        });
        assert_eq!(
            t.to_string(),
            r#"{"from":"alice","type":"typing","typing":true}"#
        );
    }

    #[test]
    fn cli_parses_the_documented_commands() {
        let c = Cli::try_parse_from([
            "missive",
            "--profile",
            "/p",
            "--server",
            "127.0.0.1:4433",
            "--ca",
            "c.pem",
            "register",
            "alice",
            "--invite",
            "tok",
            "--device",
            "2",
        ])
        .unwrap();
        assert!(matches!(c.command, Cmd::Register { ref name, device: 2, .. } if name == "alice"));
        let c = Cli::try_parse_from([
            "missive",
            "--profile",
            "/p",
            "recv",
            "--wait",
            "2",
            "--json",
            "--no-read",
        ])
        .unwrap();
        assert!(matches!(
            c.command,
            Cmd::Recv {
                json: true,
                no_read: true,
                ..
            }
        ));
        let c =
            Cli::try_parse_from(["missive", "--profile", "/p", "visibility", "nobody"]).unwrap();
        assert!(matches!(
            c.command,
            Cmd::Visibility {
                value: VisibilityArg::Nobody
            }
        ));
        // Global options may also follow the subcommand.
        let c = Cli::try_parse_from([
            "missive",
            "send",
            "bob",
            "hi",
            "--profile",
            "/p",
            "--force-tcp",
        ])
        .unwrap();
        assert!(c.force_tcp);
        assert!(
            Cli::try_parse_from(["missive", "--profile", "/p", "visibility", "friends"]).is_err()
        );
    }

    #[test]
    fn cli_parses_the_group_commands() {
        let parse = |args: &[&str]| {
            let mut all = vec!["missive", "--profile", "/p"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map(|c| c.command)
        };
        assert!(matches!(
            parse(&["send", "--group", "5", "hello all"]).unwrap(),
            Cmd::Send { group: Some(5), ref name, text: None } if name == "hello all"
        ));
        assert!(matches!(
            parse(&["send", "bob", "hi"]).unwrap(),
            Cmd::Send {
                group: None,
                text: Some(_),
                ..
            }
        ));
        assert!(matches!(
            parse(&["group", "create", "team"]).unwrap(),
            Cmd::Group { action: GroupCmd::Create { ref name } } if name == "team"
        ));
        assert!(matches!(
            parse(&["group", "add", "5", "bob", "carol"]).unwrap(),
            Cmd::Group { action: GroupCmd::Add { id: 5, ref users } } if users.len() == 2
        ));
        assert!(parse(&["group", "add", "5"]).is_err(), "at least one user");
        assert!(matches!(
            parse(&["group", "remove", "5", "bob"]).unwrap(),
            Cmd::Group {
                action: GroupCmd::Remove { id: 5, .. }
            }
        ));
        assert!(matches!(
            parse(&["group", "promote", "5", "bob"]).unwrap(),
            Cmd::Group {
                action: GroupCmd::Promote { id: 5, .. }
            }
        ));
        assert!(matches!(
            parse(&["group", "invite", "5", "--expires", "60"]).unwrap(),
            Cmd::Group {
                action: GroupCmd::Invite { id: 5, expires: 60 }
            }
        ));
        assert!(matches!(
            parse(&["group", "invite", "5"]).unwrap(),
            Cmd::Group {
                action: GroupCmd::Invite { id: 5, expires: 0 }
            }
        ));
        for args in [
            &["group", "leave", "5"][..],
            &["group", "info", "5"],
            &["group", "list"],
            &["group", "join", "tok"],
            &["group", "revoke", "5", "tok"],
        ] {
            assert!(parse(args).is_ok(), "{args:?}");
        }
        assert!(parse(&["group", "info", "five"]).is_err());
    }

    #[test]
    fn group_events_render_with_their_group() {
        let id = ClientMsgId([0xcd; 16]);
        let m = render_json(&Event::GroupMessage {
            group: GroupId(5),
            from: "alice".into(),
            from_device: DeviceId(2),
            client_msg_id: id,
            text: "hi all".into(),
            server_seq: ServerSeq(3),
            server_ts_ms: 10,
        });
        assert_eq!(m["type"], "group_message");
        assert_eq!(m["group"], 5);
        assert_eq!(m["from"], "alice");
        assert_eq!(m["text"], "hi all");
        assert_eq!(m["client_msg_id"], "cd".repeat(16));
        let c = render_json(&Event::GroupChanged {
            group: GroupId(5),
            by: "alice".into(),
            epoch: 4,
            change: GroupChange::Removed(vec!["bob".into()]),
            server_seq: ServerSeq(4),
        });
        assert_eq!(
            c.to_string(),
            r#"{"by":"alice","change":"removed","epoch":4,"group":5,"server_seq":4,"type":"group_changed","users":["bob"]}"#
        );
        let j = render_json(&Event::GroupChanged {
            group: GroupId(5),
            by: "dave".into(),
            epoch: 5,
            change: GroupChange::Joined,
            server_seq: ServerSeq(5),
        });
        assert_eq!(j["users"], serde_json::json!(["dave"]));
        assert_eq!(
            render_text(&Event::GroupChanged {
                group: GroupId(5),
                by: "alice".into(),
                epoch: 1,
                change: GroupChange::Created("team".into()),
                server_seq: ServerSeq(1),
            }),
            "#5: alice created the group \"team\""
        );
    }
}
