//! `call`: call set-up through the SDK and the real edge, direct and through the edge's TURN
//! relay. Each call: the caller gathers candidates (the edge's STUN, a TURN allocation with
//! minted credentials), rings the callee with the sealed offer; the callee gathers, picks up;
//! media flows. Set-up time is from the invite to the first media packet the caller
//! decrypted; the call then runs for a second and both sides check what they decrypted.
//! The spawned edge runs its relay with loopback peers allowed (both clients are here).

use super::{Knobs, Run, Under};
use crate::fleet::{connect_all, register_users, run_prefix};
use crate::tracker::Tracker;
use missive_client::call_media::{
    CallSecret, MediaDescription, MediaEndpoint, MediaOptions, PathKind, Role,
};
use missive_client::{CallEvent, CallMedia, CallOffer, Client, Event, EventStream};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long each call's media runs after it connected.
const TALK: Duration = Duration::from_secs(1);
/// The most any one step may take before the run fails.
const STEP: Duration = Duration::from_secs(15);

async fn options(client: &Client, force_relay: bool) -> Result<MediaOptions, String> {
    let creds = client
        .turn_credentials()
        .await
        .map_err(|e| format!("TURN credentials (does the edge run its relay?): {e}"))?;
    let mut opts = MediaOptions::from_credentials(&creds);
    opts.force_relay = force_relay;
    opts.video = true;
    Ok(opts)
}

async fn next_call_event(events: &mut EventStream) -> Result<CallEvent, String> {
    loop {
        match tokio::time::timeout(STEP, events.next()).await {
            Ok(Some(Event::Call(c))) => return Ok(c),
            Ok(Some(_)) => continue,
            Ok(None) => return Err("event stream ended".into()),
            Err(_) => return Err("no call event in time".into()),
        }
    }
}

/// What one call measured.
struct Measured {
    setup: Duration,
    path: PathKind,
    mos: f64,
    decrypted: u64,
    received: u64,
    failures: u64,
}

/// The callee's side of one call: picks up the next ring and runs the media until the
/// caller hangs up. Returns (decrypted, received, failures).
async fn callee(
    client: Client,
    mut events: EventStream,
    force_relay: bool,
) -> Result<((u64, u64, u64), (Client, EventStream)), String> {
    let (call_id, offer) = loop {
        if let CallEvent::Incoming { call_id, offer, .. } = next_call_event(&mut events).await? {
            break (call_id, offer);
        }
    };
    let endpoint = MediaEndpoint::gather(options(&client, force_relay).await?)
        .await
        .map_err(|e| e.to_string())?;
    let remote = MediaDescription::decode(&offer.description).map_err(|e| e.to_string())?;
    client
        .accept_call(call_id, endpoint.description().encode())
        .map_err(|e| e.to_string())?;
    let media = endpoint.start(remote, Role::Callee, &CallSecret::from_bytes(offer.secret));
    loop {
        match next_call_event(&mut events).await? {
            CallEvent::Ended { call_id: id, .. } if id == call_id => break,
            _ => {}
        }
    }
    let s = media.stop().await;
    Ok((
        (s.frames_decrypted, s.frames_received, s.decrypt_failures),
        (client, events),
    ))
}

async fn one_call(
    caller: &Client,
    caller_events: &mut EventStream,
    callee_side: (Client, EventStream),
    callee_name: &str,
    force_relay: bool,
) -> Result<(Measured, (Client, EventStream)), String> {
    let answering = tokio::spawn(callee(callee_side.0, callee_side.1, force_relay));
    let invited = Instant::now();
    let endpoint = MediaEndpoint::gather(options(caller, force_relay).await?)
        .await
        .map_err(|e| e.to_string())?;
    let secret = CallSecret::random();
    let offer = CallOffer {
        secret: *secret.expose_bytes(),
        description: endpoint.description().encode(),
    };
    let call_id = caller
        .invite_call(callee_name, CallMedia::Video, offer)
        .map_err(|e| e.to_string())?;
    let description = loop {
        // Skips what is left of the previous call (its `Ended`).
        match next_call_event(caller_events).await? {
            e if e.call_id() != call_id => {}
            CallEvent::Accepted { description, .. } => break description,
            CallEvent::Ended { reason, .. } => return Err(format!("call ended: {reason:?}")),
            _ => {}
        }
    };
    let remote = MediaDescription::decode(&description).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let media = endpoint.start(remote, Role::Caller, &secret);
    let path = media
        .connected(STEP)
        .await
        .map_err(|e| format!("no media path: {e}"))?;
    let first = loop {
        if let Some(d) = media.stats().first_media_after {
            break d;
        }
        if started.elapsed() > STEP {
            return Err("no media decrypted".into());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let setup = (started - invited) + first;
    tokio::time::sleep(TALK).await;
    caller.hang_up(call_id).map_err(|e| e.to_string())?;
    let s = media.stop().await;
    let (theirs, back) = answering.await.map_err(|e| e.to_string())??;
    Ok((
        Measured {
            setup,
            path,
            mos: s.mos,
            decrypted: s.frames_decrypted + theirs.0,
            received: s.frames_received + theirs.1,
            failures: s.decrypt_failures + theirs.2,
        },
        back,
    ))
}

/// Runs the scenario: `calls` calls each way (direct, then relayed).
pub async fn run(
    under: &mut Under<'_>,
    knobs: &Knobs,
    tracker: Arc<Mutex<Tracker>>,
) -> Result<Run, String> {
    let started = Instant::now();
    let prefix = run_prefix("call");
    let users = register_users(&under.target, &format!("{prefix}p"), 2).await?;
    let callee_name = users[1].config.identity.user.clone();
    let mut clients = connect_all(&users).await?;
    let callee_side = clients.pop().ok_or("no callee")?;
    let (caller, mut caller_events) = clients.pop().ok_or("no caller")?;
    let mut callee_side = Some(callee_side);
    let mut extra = BTreeMap::new();
    let calls = knobs.calls.max(1);
    for (name, force_relay, expect) in [
        ("direct", false, PathKind::Direct),
        ("relayed", true, PathKind::Relayed),
    ] {
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).map_err(|e| e.to_string())?;
        let (mut mos, mut failures, mut lost) = (0.0, 0, 0);
        for _ in 0..calls {
            let side = callee_side.take().ok_or("callee lost")?;
            let (m, back) =
                one_call(&caller, &mut caller_events, side, &callee_name, force_relay).await?;
            callee_side = Some(back);
            if m.path != expect {
                return Err(format!("{name} call took the {:?} path", m.path));
            }
            hist.record(m.setup.as_micros() as u64)
                .map_err(|e| e.to_string())?;
            mos += m.mos;
            failures += m.failures;
            lost += m.received - m.decrypted;
        }
        extra.insert(
            format!("{name}_setup_p50_ms"),
            hist.value_at_quantile(0.5) as f64 / 1e3,
        );
        extra.insert(
            format!("{name}_setup_p99_ms"),
            hist.value_at_quantile(0.99) as f64 / 1e3,
        );
        extra.insert(format!("{name}_mos_mean"), mos / calls as f64);
        extra.insert(
            format!("{name}_undecrypted_packets"),
            (failures + lost) as f64,
        );
    }
    extra.insert("calls_per_path".into(), calls as f64);
    let _ = caller.close().await;
    if let Some((c, _)) = callee_side {
        let _ = c.close().await;
    }
    Ok(Run {
        tracker,
        duration: started.elapsed(),
        extra,
        message_phase_cpu_s: None,
    })
}
