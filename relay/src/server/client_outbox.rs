//! What a worker sends to UDP clients from its listening socket, gathered over one round of
//! its scheduler and sent with one `sendmmsg` ([`super::batch_send`]).
//!
//! A round: the I/O driver wakes the tasks whose sockets have datagrams (a paced client
//! sends its sessions' packets together, so one wakeup often readies dozens of relay
//! sockets); each task reads, handles and [`ClientOutbox::push`]es its datagrams for
//! clients. The first push wakes the worker's flush task ([`ClientOutbox::run`]), which the
//! single-threaded scheduler queues behind the tasks already woken, so it runs once they
//! have all pushed and sends what they queued in one system call instead of one each.

use super::batch_send::{self, Datagram};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use tokio::net::UdpSocket;
use tokio::sync::{watch, Notify, Semaphore};

/// Most datagrams queued for one listening socket. A push waits while the queue is full (the
/// socket buffer refused more), so a burst slows the tasks that make it, as a blocking
/// send would, instead of piling up here. Sized like a listening socket's buffer in
/// datagrams of a few hundred bytes.
const CAPACITY: usize = 4_096;

/// The datagrams waiting for one listening socket.
#[derive(Debug)]
pub(super) struct ClientOutbox {
    queue: Mutex<Vec<Datagram>>,
    /// Woken by the push that found the queue empty.
    wake: Notify,
    /// Free places in the queue; a push takes one per datagram, a flush gives them back.
    room: Semaphore,
}

impl ClientOutbox {
    pub(super) fn new() -> Self {
        Self::with_capacity(CAPACITY)
    }

    fn with_capacity(capacity: usize) -> Self {
        Self {
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
            room: Semaphore::new(capacity),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Datagram>> {
        // The queue is a plain Vec; a panic elsewhere cannot leave it half-updated.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `data` for `to`; [`ClientOutbox::run`] sends it. Waits while the queue is full.
    pub(super) async fn push(&self, to: SocketAddr, data: Vec<u8>) {
        match self.room.try_acquire() {
            Ok(p) => p.forget(),
            Err(_) => match self.room.acquire().await {
                Ok(p) => p.forget(),
                Err(_) => return, // closed: the relay is shutting down
            },
        }
        let was_empty = {
            let mut q = self.lock();
            q.push((to, data));
            q.len() == 1
        };
        if was_empty {
            // Stores a permit if the flush task is busy sending; it then looks again.
            self.wake.notify_one();
        }
    }

    /// The flush task of the worker that reads `sock`: sends what was pushed, in push order,
    /// until `shutdown`.
    pub(super) async fn run(&self, sock: &UdpSocket, mut shutdown: watch::Receiver<bool>) {
        let mut sending = Vec::new();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => break,
            }
            loop {
                // Swap rather than drain: both Vecs keep their capacity across rounds.
                std::mem::swap(&mut *self.lock(), &mut sending);
                if sending.is_empty() {
                    break;
                }
                batch_send::send(sock, &sending).await;
                self.room.add_permits(sending.len());
                sending.clear();
            }
        }
        // Wake pushes still waiting for room; nothing will send what they hold.
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn pushes_of_one_round_go_out_in_order_and_a_full_queue_waits_for_room() {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        // Small, so that the receiver's default buffer holds everything sent.
        const CAP: usize = 16;
        let outbox = Arc::new(ClientOutbox::with_capacity(CAP));
        // Fill the queue before the flush task runs: the next push must wait.
        for i in 0..CAP {
            outbox.push(to, (i as u32).to_be_bytes().to_vec()).await;
        }
        let extra = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push(to, u32::MAX.to_be_bytes().to_vec()).await }
        });
        tokio::task::yield_now().await;
        assert!(!extra.is_finished(), "a push into a full queue waits");
        assert_eq!(outbox.lock().len(), CAP);

        let (stop, stopped) = watch::channel(false);
        let flusher = tokio::spawn({
            let (outbox, sock) = (outbox.clone(), sock.clone());
            async move { outbox.run(&sock, stopped).await }
        });
        tokio::time::timeout(Duration::from_secs(5), extra)
            .await
            .expect("room within 5 s")
            .expect("push task");
        // Read on a blocking thread: the flush task shares this test's runtime.
        let got = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 16];
            (0..=CAP)
                .map(|_| {
                    let n = rx.recv(&mut buf).expect("datagram within 5 s");
                    u32::from_be_bytes(buf[..n].try_into().expect("4 bytes"))
                })
                .collect::<Vec<u32>>()
        });
        let got = tokio::time::timeout(Duration::from_secs(10), got)
            .await
            .expect("within 10 s")
            .expect("reader");
        let want: Vec<u32> = (0..CAP as u32).chain([u32::MAX]).collect();
        assert_eq!(got, want);
        let _ = stop.send(true);
        flusher.await.expect("flush task ends at shutdown");
    }
}
