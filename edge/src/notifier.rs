//! Push notifications for devices without a live session: a content-free JSON wake-up POSTed
//! to a configured gateway, retried with backoff, coalesced per device and reason while one
//! is pending. The reason (`message` or `call`) lets the gateway send a call's wake-up as a
//! high-priority (VoIP) push; it names no caller and no content.

use crate::config::GatewayUrl;
use dashmap::DashSet;
use missive_storage::MailboxId;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Wake-ups waiting to be sent before new ones are dropped (and counted).
const QUEUE: usize = 10_000;
/// Concurrent requests to the gateway.
const CONCURRENCY: usize = 32;

/// Counters of the notifier.
#[derive(Debug, Default)]
pub struct PushStats {
    /// Wake-ups the gateway accepted (2xx).
    pub delivered: AtomicU64,
    /// Wake-ups given up after the last attempt or a permanent (4xx) refusal.
    pub failed: AtomicU64,
    /// Wake-ups dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Wake-ups skipped because one for the same device was already pending.
    pub coalesced: AtomicU64,
}

/// Why a device is woken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WakeReason {
    /// Something waits in its mailbox.
    Message,
    /// A call rings it.
    Call,
}

impl WakeReason {
    /// The name the gateway sees.
    pub fn name(self) -> &'static str {
        match self {
            Self::Message => "message",
            Self::Call => "call",
        }
    }
}

type Wake = (MailboxId, WakeReason);

/// Hands wake-ups to the push gateway; a no-op when push is off.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: Option<mpsc::Sender<Wake>>,
    pending: Arc<DashSet<Wake>>,
    /// Counters, shared with the worker.
    pub stats: Arc<PushStats>,
}

impl Notifier {
    /// A notifier that sends nothing (push off).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            pending: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Starts the worker that POSTs to `gateway`.
    pub fn start(gateway: GatewayUrl, max_attempts: u32, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending: Arc<DashSet<Wake>> = Arc::default();
        let stats: Arc<PushStats> = Arc::default();
        tokio::spawn(worker(
            rx,
            Arc::new(gateway),
            max_attempts,
            timeout,
            pending.clone(),
            stats.clone(),
        ));
        Self {
            tx: Some(tx),
            pending,
            stats,
        }
    }

    /// Asks the gateway to wake `mailbox`'s device: something waits in its mailbox. Never
    /// blocks; never carries content.
    pub fn wake(&self, mailbox: &MailboxId) {
        self.wake_because(mailbox, WakeReason::Message)
    }

    /// Asks the gateway to wake `mailbox`'s device: a call rings it.
    pub fn wake_for_call(&self, mailbox: &MailboxId) {
        self.wake_because(mailbox, WakeReason::Call)
    }

    fn wake_because(&self, mailbox: &MailboxId, reason: WakeReason) {
        let Some(tx) = &self.tx else { return };
        let wake = (mailbox.clone(), reason);
        if !self.pending.insert(wake.clone()) {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tx.try_send(wake.clone()).is_err() {
            self.pending.remove(&wake);
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Wake>,
    gateway: Arc<GatewayUrl>,
    max_attempts: u32,
    timeout: Duration,
    pending: Arc<DashSet<Wake>>,
    stats: Arc<PushStats>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    while let Some(wake) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (gateway, pending, stats) = (gateway.clone(), pending.clone(), stats.clone());
        tokio::spawn(async move {
            let ok = deliver_with_retries(&gateway, &wake, max_attempts, timeout).await;
            pending.remove(&wake);
            if ok {
                stats.delivered.fetch_add(1, Ordering::Relaxed);
            } else {
                stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            drop(permit);
        });
    }
}

/// What one attempt came to.
enum Attempt {
    Accepted,
    /// 4xx other than 408/429: retrying cannot help.
    Refused(u16),
    /// Network error, timeout, 5xx, 408 or 429.
    Retry(String),
}

async fn deliver_with_retries(
    gateway: &GatewayUrl,
    (mb, reason): &Wake,
    max_attempts: u32,
    timeout: Duration,
) -> bool {
    let body = wake_body(mb, *reason);
    let mut delay = Duration::from_millis(200);
    for attempt in 1..=max_attempts {
        let outcome = match tokio::time::timeout(timeout, post(gateway, &body)).await {
            Ok(o) => o,
            Err(_) => Attempt::Retry("timeout".into()),
        };
        match outcome {
            Attempt::Accepted => return true,
            Attempt::Refused(status) => {
                tracing::warn!(user = %mb.user, device = mb.device.0, status, "push gateway refused wake-up");
                return false;
            }
            Attempt::Retry(why) => {
                tracing::debug!(user = %mb.user, device = mb.device.0, attempt, %why, "push attempt failed");
                if attempt < max_attempts {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
    tracing::warn!(user = %mb.user, device = mb.device.0, "push wake-up given up");
    false
}

/// The JSON body of a wake-up: who to wake and why, never what arrived or from whom.
pub fn wake_body(mb: &MailboxId, reason: WakeReason) -> String {
    serde_json::json!({ "user": mb.user, "device": mb.device.0, "reason": reason.name() })
        .to_string()
}

async fn post(gateway: &GatewayUrl, body: &str) -> Attempt {
    let sent = crate::http::client::post(
        &gateway.authority,
        &gateway.path,
        "application/json",
        body.to_owned(),
    )
    .await;
    match sent {
        Ok(s) if (200..300).contains(&s) => Attempt::Accepted,
        Ok(s) if (400..500).contains(&s) && s != 408 && s != 429 => Attempt::Refused(s),
        Ok(s) => Attempt::Retry(format!("status {s}")),
        Err(e) => Attempt::Retry(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use missive_proto::DeviceId;

    #[test]
    fn body_has_no_content() {
        let b = wake_body(&MailboxId::new("bob", DeviceId(2)), WakeReason::Call);
        let v: serde_json::Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["user"], "bob");
        assert_eq!(v["device"], 2);
        assert_eq!(v["reason"], "call");
        assert_eq!(v.as_object().unwrap().len(), 3);
    }
}
