//! Collects expired blobs and stalled uploads in the background.

use super::MediaService;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Time between two collection passes.
const INTERVAL: Duration = Duration::from_secs(60);

/// Runs a collection pass every minute (and one at start) until shutdown.
pub async fn run(media: Arc<MediaService>, mut shutdown: watch::Receiver<bool>) {
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
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}
