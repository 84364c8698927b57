//! The CLI's calls: how call events print, and the call history.

use missive_client::call_media::{
    CallSecret, CallStats, MediaCall, MediaDescription, MediaEndpoint, MediaOptions, PathKind, Role,
};
use missive_client::{
    CallEndReason, CallEvent, CallId, CallMedia, CallOffer, CallRecord, Client, ClientError, Event,
    EventStream,
};
use serde_json::{json, Value};
use std::collections::HashMap;
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
            conference,
            ..
        } => json!({"type": "call", "event": "incoming", "call": id, "from": from,
            "from_device": from_device.0, "media": media_name(*media),
            "rings_for_ms": rings_for.as_millis() as u64,
            "group_call": conference.map(|g| g.to_hex())}),
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
        CallEvent::Conference { others, .. } => {
            json!({"type": "call", "event": "conference", "call": id, "others": others})
        }
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
        CallEvent::Conference { others, .. } if others.is_empty() => {
            format!("call {id}: group call joined")
        }
        CallEvent::Conference { others, .. } => {
            format!(
                "call {id}: group call joined; calling {}",
                others.join(", ")
            )
        }
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

/// How long a call waits for its first answer: past the edge's ring timeout (30 s by default,
/// at most 300), whose `Ended` comes first.
const RING_WAIT: Duration = Duration::from_secs(330);
/// How often running legs are looked at (connection, statistics every tenth time).
const TICK: Duration = Duration::from_millis(100);

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

fn stats_json(kind: &str, call: CallId, peer: &str, s: &CallStats) -> Value {
    json!({
        "type": kind,
        "call": call.to_hex(),
        "peer": peer,
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

fn stats_text(peer: &str, s: &CallStats) -> String {
    format!(
        "{peer}: path {} rtt {:.1} ms loss {:.1}% jitter {:.1} ms send {:.0} kbit/s recv {:.0} kbit/s video {:.0} kbit/s MOS {:.2}",
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

/// When a leg began on this side (the invite, or the pick-up) and when its media started.
#[derive(Debug, Clone, Copy)]
struct Times {
    began: Instant,
    media: Instant,
}

/// One call of this device: a 1:1 call, or one leg of a group call (one per other user).
enum Leg {
    /// Invited; waiting for the answer.
    Inviting {
        peer: String,
        endpoint: Box<MediaEndpoint>,
        secret: CallSecret,
        began: Instant,
    },
    /// Answered: media runs.
    Running {
        peer: String,
        media: MediaCall,
        times: Times,
        connected: bool,
    },
}

/// A ringing call: its id, the caller, the call's kind and the decrypted offer.
struct Ringing {
    call_id: CallId,
    from: String,
    media: CallMedia,
    conference: Option<CallId>,
    offer: CallOffer,
}

/// This device's side of a call: its legs, until the time is up or every leg ended.
struct CallRun<'a> {
    client: &'a Client,
    args: CallArgs,
    media: CallMedia,
    /// The group call, for a call of more than two users.
    conference: Option<CallId>,
    legs: HashMap<CallId, Leg>,
    /// A leg has run: the call is on (and the time counts) from then.
    until: Option<Instant>,
    /// Why the last leg that never ran ended.
    last_end: Option<CallEndReason>,
    /// Ran at least one leg.
    ran: bool,
    /// After a lost glare race: the user whose call to us is the one to pick up.
    pick_up_from: Option<String>,
}

impl<'a> CallRun<'a> {
    fn new(client: &'a Client, args: CallArgs, conference: Option<CallId>) -> Self {
        let media = if args.video {
            CallMedia::Video
        } else {
            CallMedia::Audio
        };
        Self {
            client,
            args,
            media,
            conference,
            legs: HashMap::new(),
            until: None,
            last_end: None,
            ran: false,
            pick_up_from: None,
        }
    }

    /// Gathers this leg's candidates and rings `peer` with the sealed offer.
    async fn invite(&mut self, peer: &str) -> CliResult {
        let endpoint = MediaEndpoint::gather(media_options(self.client, self.args).await?).await?;
        let secret = CallSecret::random();
        let offer = CallOffer {
            secret: *secret.expose_bytes(),
            description: endpoint.description().encode(),
        };
        let began = Instant::now();
        let call_id = match self.conference {
            Some(g) => self
                .client
                .invite_to_group_call(peer, self.media, offer, g)?,
            None => self.client.invite_call(peer, self.media, offer)?,
        };
        self.legs.insert(
            call_id,
            Leg::Inviting {
                peer: peer.to_owned(),
                endpoint: Box::new(endpoint),
                secret,
                began,
            },
        );
        Ok(())
    }

    /// Picks up a ringing call: gathers, answers with our description, starts the media.
    async fn pick_up(&mut self, ringing: Ringing) -> CliResult {
        let began = Instant::now();
        let endpoint = MediaEndpoint::gather(media_options(self.client, self.args).await?).await?;
        let remote = MediaDescription::decode(&ringing.offer.description)?;
        let secret = CallSecret::from_bytes(ringing.offer.secret);
        self.client
            .accept_call(ringing.call_id, endpoint.description().encode())?;
        let media = endpoint.start(remote, Role::Callee, &secret);
        self.running(ringing.call_id, ringing.from, media, began);
        Ok(())
    }

    fn running(&mut self, call_id: CallId, peer: String, media: MediaCall, began: Instant) {
        let times = Times {
            began,
            media: Instant::now(),
        };
        self.legs.insert(
            call_id,
            Leg::Running {
                peer,
                media,
                times,
                connected: false,
            },
        );
        self.ran = true;
        self.until.get_or_insert_with(|| {
            Instant::now() + Duration::from_secs_f64(self.args.seconds.max(0.0))
        });
    }

    /// Handles one call event.
    async fn on_event(&mut self, ev: CallEvent) -> CliResult {
        let args = self.args;
        let id = ev.call_id();
        match ev {
            CallEvent::Accepted {
                ref description, ..
            } => {
                print_line(args, event_json(&ev), event_text(&ev));
                if let Some(Leg::Inviting {
                    peer,
                    endpoint,
                    secret,
                    began,
                }) = self.legs.remove(&id)
                {
                    let remote = MediaDescription::decode(description)?;
                    let media = endpoint.start(remote, Role::Caller, &secret);
                    self.running(id, peer, media, began);
                }
            }
            CallEvent::Conference { ref others, .. } => {
                print_line(args, event_json(&ev), event_text(&ev));
                for other in others.clone() {
                    self.invite(&other).await?;
                }
            }
            CallEvent::Incoming {
                call_id,
                ref from,
                media,
                conference,
                ref offer,
                ..
            } => {
                print_line(args, event_json(&ev), event_text(&ev));
                let ours = conference.is_some() && conference == self.conference;
                let glare = conference.is_none() && self.pick_up_from.as_deref() == Some(from);
                if ours || glare {
                    self.pick_up_from = None;
                    let ringing = Ringing {
                        call_id,
                        from: from.clone(),
                        media,
                        conference,
                        offer: offer.clone(),
                    };
                    self.pick_up(ringing).await?;
                }
            }
            CallEvent::Candidates { description, .. } => {
                if let (Some(Leg::Running { media, .. }), Ok(more)) =
                    (self.legs.get(&id), MediaDescription::decode(&description))
                {
                    for c in more.candidates {
                        media.add_remote_candidate(c);
                    }
                }
            }
            CallEvent::Ended { reason, .. } => {
                let Some(leg) = self.legs.remove(&id) else {
                    return Ok(());
                };
                match leg {
                    Leg::Inviting { peer, endpoint, .. } => {
                        print_line(args, event_json(&ev), event_text(&ev));
                        endpoint.close().await;
                        if reason == CallEndReason::Glare {
                            // They called us at the same moment: their call is the one.
                            self.pick_up_from = Some(peer);
                        } else {
                            self.last_end = Some(reason);
                        }
                    }
                    Leg::Running {
                        peer, media, times, ..
                    } => self.summary(id, &peer, media, times, reason).await,
                }
            }
            other => print_line(args, event_json(&other), event_text(&other)),
        }
        Ok(())
    }

    /// Prints a leg's connection once, and its statistics when `report` says so.
    fn look(&mut self, report: bool) {
        let args = self.args;
        for (id, leg) in &mut self.legs {
            let Leg::Running {
                peer,
                media,
                times,
                connected,
            } = leg
            else {
                continue;
            };
            let s = media.stats();
            if !*connected && s.path.is_some() {
                *connected = true;
                let connect_ms = times.began.elapsed().as_millis() as u64;
                print_line(
                    args,
                    json!({"type": "call", "event": "connected", "call": id.to_hex(), "peer": peer,
                        "path": path_name(s.path), "connect_ms": connect_ms}),
                    format!(
                        "call {}: connected to {peer} ({}, {connect_ms} ms after it began)",
                        id.to_hex(),
                        path_name(s.path)
                    ),
                );
            }
            if report && *connected {
                print_line(
                    args,
                    stats_json("call_stats", *id, peer, &s),
                    stats_text(peer, &s),
                );
            }
        }
    }

    async fn summary(
        &self,
        id: CallId,
        peer: &str,
        media: MediaCall,
        times: Times,
        ended: CallEndReason,
    ) {
        let s = media.stop().await;
        let mut summary = stats_json("call_summary", id, peer, &s);
        // Set-up time: from the invite (the caller) or the pick-up (the callee) to the first
        // media packet decrypted here.
        let setup = s
            .first_media_after
            .map(|d| (times.media - times.began + d).as_secs_f64() * 1000.0);
        summary["setup_ms"] = json!(setup.map(round1));
        summary["ended"] = json!(reason_name(ended));
        print_line(
            self.args,
            summary,
            format!(
                "call {}: ended ({}); {}",
                id.to_hex(),
                reason_name(ended),
                stats_text(peer, &s)
            ),
        );
    }

    /// Runs until the time is up (then hangs up every leg) or every leg ended.
    async fn run(mut self, events: &mut EventStream, ring_until: Instant) -> CliResult {
        let mut tick = tokio::time::interval(TICK);
        let mut ticks = 0u64;
        loop {
            if self.legs.is_empty() && self.pick_up_from.is_none() {
                break;
            }
            let deadline = self.until.unwrap_or(ring_until);
            if Instant::now() >= deadline {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {
                    ticks += 1;
                    self.look(ticks.is_multiple_of(10));
                }
                ev = tokio::time::timeout_at(deadline, events.next()) => match ev {
                    Ok(Some(Event::Call(c))) => self.on_event(c).await?,
                    Ok(Some(_)) => {}
                    Ok(None) => return Err("the connection ended".into()),
                    Err(_) => {}
                }
            }
        }
        // Time is up: hang up what is left, and wait (briefly) for the edge's word on each.
        let left: Vec<CallId> = self.legs.keys().copied().collect();
        for id in &left {
            let _ = self.client.hang_up(*id);
        }
        let wait = Instant::now() + Duration::from_secs(3);
        while !self.legs.is_empty() {
            match tokio::time::timeout_at(wait, events.next()).await {
                Ok(Some(Event::Call(c @ CallEvent::Ended { .. }))) => self.on_event(c).await?,
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        for (id, leg) in std::mem::take(&mut self.legs) {
            match leg {
                Leg::Running {
                    peer, media, times, ..
                } => {
                    self.summary(id, &peer, media, times, CallEndReason::HungUp)
                        .await
                }
                Leg::Inviting { endpoint, .. } => endpoint.close().await,
            }
        }
        if self.ran {
            Ok(())
        } else {
            match self.last_end {
                Some(reason) => Err(format!("call ended: {}", reason_name(reason)).into()),
                None => Err("nobody answered".into()),
            }
        }
    }
}

/// `missive call NAME [NAME...]`: rings each of them (a group call of up to four users when
/// there are several), runs the media of every leg that is answered for `args.seconds`,
/// printing each leg's path and quality every second and a summary at the end.
pub(crate) async fn call(
    client: &Client,
    events: &mut EventStream,
    to: &[String],
    args: CallArgs,
) -> CliResult {
    if to.is_empty() || to.len() >= missive_proto::MAX_CONFERENCE {
        return Err(format!(
            "name 1 to {} users (a group call has at most {})",
            missive_proto::MAX_CONFERENCE - 1,
            missive_proto::MAX_CONFERENCE
        )
        .into());
    }
    let conference = (to.len() > 1).then(|| CallId(rand::random()));
    let mut run = CallRun::new(client, args, conference);
    for peer in to {
        run.invite(peer).await?;
    }
    run.run(events, Instant::now() + RING_WAIT).await
}

/// `missive answer`: waits up to `wait` for a call to ring this device, picks it up (a group
/// call: and calls the others already in it) and runs it like `call` does.
pub(crate) async fn answer(
    client: &Client,
    events: &mut EventStream,
    wait: Duration,
    args: CallArgs,
) -> CliResult {
    let until = Instant::now() + wait;
    let ringing = loop {
        let ev = match tokio::time::timeout_at(until, events.next()).await {
            Ok(Some(Event::Call(c))) => c,
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return Err("no call rang".into()),
        };
        print_line(args, event_json(&ev), event_text(&ev));
        if let CallEvent::Incoming {
            call_id,
            from,
            media,
            conference,
            offer,
            ..
        } = ev
        {
            break Ringing {
                call_id,
                from,
                media,
                conference,
                offer,
            };
        }
    };
    // A video call is answered with video: the caller chose it.
    let args = CallArgs {
        video: args.video || ringing.media == CallMedia::Video,
        ..args
    };
    let mut run = CallRun::new(client, args, ringing.conference);
    run.pick_up(ringing).await?;
    run.run(events, Instant::now() + RING_WAIT).await
}
