//! The CLI's calls: how call events print, and the call history.

use missive_client::call_media::{
    CallSecret, CallStats, MediaCall, MediaDescription, MediaEndpoint, MediaOptions, PathKind, Role,
};
use missive_client::{
    CallEndReason, CallEvent, CallId, CallMedia, CallOffer, CallRecord, Client, ClientError, Event,
    EventStream,
};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

/// The stable name of an end reason, as the CLI prints it.
pub(crate) fn reason_name(reason: CallEndReason) -> String {
    match reason {
        CallEndReason::HungUp => "hung_up".into(),
        CallEndReason::Cancelled => "cancelled".into(),
        CallEndReason::Declined => "declined".into(),
        CallEndReason::Busy => "busy".into(),
        CallEndReason::Missed => "missed".into(),
        CallEndReason::Glare => "glare".into(),
        CallEndReason::ConnectionLost => "connection_lost".into(),
        CallEndReason::ShuttingDown => "shutting_down".into(),
        CallEndReason::Refused(code) => match missive_proto::ErrorCode::from_u16(code) {
            Some(c) => format!("refused:{}", c.name()),
            None => format!("refused:{code}"),
        },
    }
}

fn media_name(media: CallMedia) -> &'static str {
    match media {
        CallMedia::Audio => "audio",
        CallMedia::Video => "video",
    }
}

/// One JSON line for a call event (never the call's secret or descriptions).
pub(crate) fn event_json(ev: &CallEvent) -> Value {
    let id = ev.call_id().to_hex();
    match ev {
        CallEvent::Incoming {
            from,
            from_device,
            media,
            rings_for,
            ..
        } => json!({"type": "call", "event": "incoming", "call": id, "from": from,
            "from_device": from_device.0, "media": media_name(*media),
            "rings_for_ms": rings_for.as_millis() as u64}),
        CallEvent::Unreadable { from, reason, .. } => {
            json!({"type": "call", "event": "unreadable", "call": id, "from": from, "reason": reason})
        }
        CallEvent::Ringing { devices, .. } => {
            json!({"type": "call", "event": "ringing", "call": id, "devices": devices})
        }
        CallEvent::Accepted { device, .. } => {
            json!({"type": "call", "event": "accepted", "call": id, "device": device.0})
        }
        CallEvent::AnsweredElsewhere { device, .. } => {
            json!({"type": "call", "event": "answered_elsewhere", "call": id, "device": device.0})
        }
        CallEvent::Candidates { .. } => json!({"type": "call", "event": "candidates", "call": id}),
        CallEvent::Ended { reason, .. } => {
            json!({"type": "call", "event": "ended", "call": id, "reason": reason_name(*reason)})
        }
    }
}

/// One text line for a call event.
pub(crate) fn event_text(ev: &CallEvent) -> String {
    let id = ev.call_id().to_hex();
    match ev {
        CallEvent::Incoming { from, media, .. } => format!(
            "call {id}: {} call from {from} (missive answer)",
            media_name(*media)
        ),
        CallEvent::Unreadable { from, reason, .. } => {
            format!("call {id}: from {from}, cannot be answered here ({reason})")
        }
        CallEvent::Ringing { devices, .. } => format!("call {id}: ringing on {devices} device(s)"),
        CallEvent::Accepted { device, .. } => format!("call {id}: answered on device {}", device.0),
        CallEvent::AnsweredElsewhere { device, .. } => {
            format!("call {id}: answered on device {}", device.0)
        }
        CallEvent::Candidates { .. } => format!("call {id}: more candidates"),
        CallEvent::Ended { reason, .. } => format!("call {id}: ended ({})", reason_name(*reason)),
    }
}

/// One history record as JSON.
pub(crate) fn record_json(r: &CallRecord) -> Value {
    json!({
        "type": "call_record",
        "call": r.call_id.to_hex(),
        "peer": r.peer,
        "direction": if r.outgoing { "outgoing" } else { "incoming" },
        "media": media_name(r.media),
        "started_ms": r.started_ms,
        "answered_ms": r.answered_ms,
        "ended_ms": r.ended_ms,
        "duration_ms": r.duration_ms(),
        "end": reason_name(r.end),
        "missed": r.missed(),
    })
}

/// One history record as text.
pub(crate) fn record_text(r: &CallRecord) -> String {
    let direction = if r.outgoing { "to" } else { "from" };
    let how = if r.missed() {
        "missed".to_owned()
    } else if r.answered_ms == 0 {
        reason_name(r.end)
    } else {
        format!("{} s", r.duration_ms() / 1000)
    };
    format!(
        "{} {} call {direction} {}: {how} ({})",
        r.started_ms,
        media_name(r.media),
        r.peer,
        reason_name(r.end)
    )
}

/// What `missive call` and `missive answer` were asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallArgs {
    /// Send video too.
    pub(crate) video: bool,
    /// Seconds of media before hanging up.
    pub(crate) seconds: f64,
    /// Media only through the edge's TURN relay.
    pub(crate) force_relay: bool,
    /// One JSON object per line.
    pub(crate) json: bool,
}

type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Media options for this device: the edge's STUN and TURN (with fresh credentials) when it
/// runs a relay; host candidates only when it does not (and then `force_relay` fails).
async fn media_options(client: &Client, args: CallArgs) -> CliResult<MediaOptions> {
    let mut opts = match client.turn_credentials().await {
        Ok(creds) => MediaOptions::from_credentials(&creds),
        Err(ClientError::Rejected { code, .. })
            if code == missive_proto::ErrorCode::RelayUnavailable.as_u16() && !args.force_relay =>
        {
            MediaOptions::default()
        }
        Err(e) => return Err(format!("TURN credentials: {e}").into()),
    };
    opts.video = args.video;
    opts.force_relay = args.force_relay;
    Ok(opts)
}

fn print_line(args: CallArgs, value: Value, text: String) {
    if args.json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn path_name(p: Option<PathKind>) -> &'static str {
    match p {
        Some(PathKind::Direct) => "direct",
        Some(PathKind::Relayed) => "relay",
        None => "none",
    }
}

fn stats_json(kind: &str, call: CallId, s: &CallStats) -> Value {
    json!({
        "type": kind,
        "call": call.to_hex(),
        "path": path_name(s.path),
        "rtt_ms": round1(s.rtt_ms),
        "loss_percent": round1(s.loss_percent),
        "remote_loss_percent": round1(s.remote_loss_percent),
        "jitter_ms": round1(s.jitter_ms),
        "send_kbps": round1(s.send_kbps),
        "recv_kbps": round1(s.recv_kbps),
        "video_target_kbps": round1(s.video_target_kbps),
        "mos": (s.mos * 100.0).round() / 100.0,
        "frames_sent": s.frames_sent,
        "frames_received": s.frames_received,
        "frames_decrypted": s.frames_decrypted,
        "decrypt_failures": s.decrypt_failures,
        "path_switches": s.path_switches,
        "first_media_ms": s.first_media_after.map(|d| d.as_millis() as u64),
    })
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn stats_text(s: &CallStats) -> String {
    format!(
        "path {} rtt {:.1} ms loss {:.1}% jitter {:.1} ms send {:.0} kbit/s recv {:.0} kbit/s video {:.0} kbit/s MOS {:.2}",
        path_name(s.path),
        s.rtt_ms,
        s.loss_percent,
        s.jitter_ms,
        s.send_kbps,
        s.recv_kbps,
        s.video_target_kbps,
        s.mos
    )
}

/// Waits for the next call event of `call`, printing it; `None` when the time is up.
async fn next_call_event(
    events: &mut EventStream,
    call: Option<CallId>,
    until: Instant,
) -> Option<CallEvent> {
    loop {
        match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(Event::Call(c))) if call.is_none_or(|id| c.call_id() == id) => return Some(c),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// `missive call NAME`: rings NAME, and once answered runs the call's media for
/// `args.seconds`, printing the path and quality each second and a summary at the end.
pub(crate) async fn call(
    client: &Client,
    events: &mut EventStream,
    to: &str,
    args: CallArgs,
) -> CliResult {
    let opts = media_options(client, args).await?;
    let endpoint = MediaEndpoint::gather(opts).await?;
    let secret = CallSecret::random();
    let offer = CallOffer {
        secret: *secret.expose_bytes(),
        description: endpoint.description().encode(),
    };
    let media = if args.video {
        CallMedia::Video
    } else {
        CallMedia::Audio
    };
    let invited = Instant::now();
    let call_id = client.invite_call(to, media, offer)?;
    // The ring timeout is the edge's (30 s by default); wait a little longer for its word.
    let until = invited + Duration::from_secs(330);
    loop {
        let Some(ev) = next_call_event(events, None, until).await else {
            let _ = client.hang_up(call_id);
            endpoint.close().await;
            return Err("no answer from the edge".into());
        };
        if ev.call_id() != call_id {
            if let CallEvent::Incoming { .. } = ev {
                // Another call rings us meanwhile: we are busy with ours.
                print_line(args, event_json(&ev), event_text(&ev));
            }
            continue;
        }
        print_line(args, event_json(&ev), event_text(&ev));
        match ev {
            CallEvent::Accepted { description, .. } => {
                let remote = MediaDescription::decode(&description)?;
                let media = endpoint.start(remote, Role::Caller, &secret);
                let times = Times {
                    began: invited,
                    media: Instant::now(),
                };
                return run_media(client, events, call_id, media, times, args).await;
            }
            CallEvent::Ended {
                reason: CallEndReason::Glare,
                ..
            } => {
                // They called us at the same moment: their call is the one; pick it up.
                let incoming = wait_incoming(events, Some(to), until, args).await?;
                return pick_up(client, events, incoming, endpoint, args).await;
            }
            CallEvent::Ended { reason, .. } => {
                endpoint.close().await;
                return Err(format!("call ended: {}", reason_name(reason)).into());
            }
            _ => {}
        }
    }
}

/// A ringing call: its id, the caller and the decrypted offer.
struct Ringing {
    call_id: CallId,
    media: CallMedia,
    offer: missive_client::CallOffer,
}

async fn wait_incoming(
    events: &mut EventStream,
    from: Option<&str>,
    until: Instant,
    args: CallArgs,
) -> CliResult<Ringing> {
    loop {
        let Some(ev) = next_call_event(events, None, until).await else {
            return Err("no call rang".into());
        };
        print_line(args, event_json(&ev), event_text(&ev));
        if let CallEvent::Incoming {
            call_id,
            from: caller,
            offer,
            media,
            ..
        } = ev
        {
            if from.is_none_or(|f| f == caller) {
                return Ok(Ringing {
                    call_id,
                    media,
                    offer,
                });
            }
        }
    }
}

/// `missive answer`: waits up to `wait` for a call to ring this device, picks it up and runs
/// its media like `call` does.
pub(crate) async fn answer(
    client: &Client,
    events: &mut EventStream,
    wait: Duration,
    args: CallArgs,
) -> CliResult {
    let ringing = wait_incoming(events, None, Instant::now() + wait, args).await?;
    // A video call is answered with video: the caller chose it.
    let args = CallArgs {
        video: args.video || ringing.media == CallMedia::Video,
        ..args
    };
    let opts = media_options(client, args).await?;
    let endpoint = MediaEndpoint::gather(opts).await?;
    pick_up(client, events, ringing, endpoint, args).await
}

async fn pick_up(
    client: &Client,
    events: &mut EventStream,
    ringing: Ringing,
    endpoint: MediaEndpoint,
    args: CallArgs,
) -> CliResult {
    let started = Instant::now();
    let remote = MediaDescription::decode(&ringing.offer.description)?;
    let secret = CallSecret::from_bytes(ringing.offer.secret);
    client.accept_call(ringing.call_id, endpoint.description().encode())?;
    let media = endpoint.start(remote, Role::Callee, &secret);
    let times = Times {
        began: started,
        media: Instant::now(),
    };
    run_media(client, events, ringing.call_id, media, times, args).await
}

/// When a call began on this side (the invite, or the pick-up) and when its media started.
#[derive(Debug, Clone, Copy)]
struct Times {
    began: Instant,
    media: Instant,
}

/// Runs an answered call's media: waits for a path, then for `args.seconds` (or until the
/// other side hangs up), printing statistics every second and a summary at the end.
async fn run_media(
    client: &Client,
    events: &mut EventStream,
    call_id: CallId,
    media: MediaCall,
    times: Times,
    args: CallArgs,
) -> CliResult {
    let path = match media.connected(Duration::from_secs(15)).await {
        Ok(p) => p,
        Err(e) => {
            let _ = client.hang_up(call_id);
            media.stop().await;
            return Err(format!("call connected no media path: {e}").into());
        }
    };
    let connect_ms = times.began.elapsed().as_millis() as u64;
    print_line(
        args,
        json!({"type": "call", "event": "connected", "call": call_id.to_hex(),
            "path": path_name(Some(path)), "connect_ms": connect_ms}),
        format!(
            "call {}: connected ({}, {connect_ms} ms after the invite)",
            call_id.to_hex(),
            path_name(Some(path))
        ),
    );
    let end = Instant::now() + Duration::from_secs_f64(args.seconds.max(0.0));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut hung_up_by_peer = None;
    while Instant::now() < end {
        tokio::select! {
            _ = tick.tick() => {
                let s = media.stats();
                print_line(args, stats_json("call_stats", call_id, &s), stats_text(&s));
            }
            ev = next_call_event(events, Some(call_id), end) => match ev {
                Some(CallEvent::Candidates { description, .. }) => {
                    if let Ok(more) = MediaDescription::decode(&description) {
                        for c in more.candidates {
                            media.add_remote_candidate(c);
                        }
                    }
                }
                Some(CallEvent::Ended { reason, .. }) => {
                    hung_up_by_peer = Some(reason);
                    break;
                }
                Some(_) | None => {}
            }
        }
    }
    if hung_up_by_peer.is_none() {
        client.hang_up(call_id)?;
    }
    let s = media.stop().await;
    let ended = match hung_up_by_peer {
        Some(reason) => reason,
        None => {
            // Our hang-up, confirmed by the edge (briefly waited for).
            let wait = Instant::now() + Duration::from_secs(3);
            let mut reason = CallEndReason::HungUp;
            while let Some(ev) = next_call_event(events, Some(call_id), wait).await {
                if let CallEvent::Ended { reason: r, .. } = ev {
                    reason = r;
                    break;
                }
            }
            reason
        }
    };
    let mut summary = stats_json("call_summary", call_id, &s);
    // Set-up time: from the invite (the caller) or the pick-up (the callee) to the first
    // media packet decrypted here.
    let setup = s
        .first_media_after
        .map(|d| (times.media - times.began + d).as_secs_f64() * 1000.0);
    summary["setup_ms"] = json!(setup.map(round1));
    summary["ended"] = json!(reason_name(ended));
    print_line(
        args,
        summary,
        format!(
            "call {}: ended ({}); {}",
            call_id.to_hex(),
            reason_name(ended),
            stats_text(&s)
        ),
    );
    Ok(())
}
