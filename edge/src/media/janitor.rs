//! Collects expired blobs and stalled uploads in the background.

use super::MediaService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Runs a collection pass every `interval` (and one at start) until shutdown.
pub async fn run(
    media: Arc<MediaService>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let done = media.collect().await;
        if done.expired + done.stalled > 0 {
            tracing::info!(
                expired = done.expired,
                stalled = done.stalled,
                "media collected"
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
