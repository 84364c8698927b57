//! The CLI's calls: how call events print, and the call history.

use missive_client::{CallEndReason, CallEvent, CallMedia, CallRecord};
use serde_json::{json, Value};

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
