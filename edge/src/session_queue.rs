//! A session's inbox: the events other parts of the edge hand to one connection (pushed
//! items, forwarded frames, "replaced", "disabled").
//!
//! Bounded like a channel, but it allocates only while it holds something: a tokio mpsc
//! allocates a block of 32 slots when it is made (1.3 KB per connection in heaptrack), and
//! most connections are idle with an empty inbox. Here an idle connection's inbox is one small
//! shared allocation; the event buffer comes with the first event and goes once a burst has
//! been read.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// Above this capacity, an emptied buffer gives its memory back.
const KEEP_CAPACITY: usize = 16;

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// The inbox holds its limit of events.
    Full(T),
    /// The session is gone.
    Closed(T),
    /// `send_timeout` waited its whole time for room.
    Timeout(T),
}

struct State<T> {
    events: VecDeque<T>,
    receiver_alive: bool,
}

struct Inner<T> {
    state: Mutex<State<T>>,
    limit: usize,
    /// Rung when an event arrives; holds a permit if the receiver is not waiting yet.
    arrived: Notify,
    /// Rung when the receiver takes an event out of a full inbox, or goes away.
    room: Notify,
    /// Set when an offered event did not fit; the session then re-reads from storage.
    overflowed: AtomicBool,
}

impl<T> Inner<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Every critical section below leaves the state whole, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The sending side; cheap to clone.
pub struct Sender<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender")
            .field("limit", &self.inner.limit)
            .finish_non_exhaustive()
    }
}

/// The session's side. Dropping it closes the inbox: later sends are refused `Closed`.
pub struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

/// A new inbox holding at most `limit` events.
pub fn inbox<T>(limit: usize) -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            events: VecDeque::new(),
            receiver_alive: true,
        }),
        limit,
        arrived: Notify::new(),
        room: Notify::new(),
        overflowed: AtomicBool::new(false),
    });
    (
        Sender {
            inner: inner.clone(),
        },
        Receiver { inner },
    )
}

impl<T> Sender<T> {
    /// Queues `event` if there is room, without waiting.
    pub fn try_send(&self, event: T) -> Result<(), Refused<T>> {
        {
            let mut state = self.inner.lock();
            if !state.receiver_alive {
                return Err(Refused::Closed(event));
            }
            if state.events.len() >= self.inner.limit {
                return Err(Refused::Full(event));
            }
            state.events.push_back(event);
        }
        self.inner.arrived.notify_one();
        Ok(())
    }

    /// Queues `event`, or marks the inbox overflowed when it is full (the event is dropped;
    /// the session sees the mark and re-reads what it missed). A closed inbox is ignored.
    pub fn offer(&self, event: T) {
        // No wake-up needed on overflow: the receiver has a full inbox to read first, and it
        // looks at the mark after each event it handles.
        if let Err(Refused::Full(_)) = self.try_send(event) {
            self.inner.overflowed.store(true, Ordering::Release);
        }
    }

    /// Queues `event`, waiting up to `timeout` for room in a full inbox.
    pub async fn send_timeout(&self, event: T, timeout: Duration) -> Result<(), Refused<T>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut event = event;
        loop {
            // Registered before trying, so a slot freed in between is not missed.
            let room = self.inner.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(event) {
                Err(Refused::Full(back)) => event = back,
                other => return other,
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(Refused::Timeout(event));
            }
        }
    }
}

impl<T> Receiver<T> {
    /// The next event; waits while the inbox is empty. Cancel-safe: an event is taken only
    /// when the call returns it.
    pub async fn recv(&mut self) -> T {
        loop {
            if let Some(event) = self.try_recv() {
                return event;
            }
            self.inner.arrived.notified().await;
        }
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        let (event, was_full) = {
            let mut state = self.inner.lock();
            let was_full = state.events.len() >= self.inner.limit;
            let event = state.events.pop_front();
            if state.events.is_empty() && state.events.capacity() > KEEP_CAPACITY {
                state.events = VecDeque::new();
            }
            (event, was_full)
        };
        if was_full && event.is_some() {
            self.inner.room.notify_waiters();
        }
        event
    }

    /// True once, after an offered event did not fit (clears the mark).
    pub fn take_overflow(&self) -> bool {
        self.inner.overflowed.swap(false, Ordering::AcqRel)
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let dropped = {
            let mut state = self.inner.lock();
            state.receiver_alive = false;
            std::mem::take(&mut state.events)
        };
        drop(dropped);
        self.inner.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_arrive_in_order_and_a_waiting_receiver_wakes() {
        let (tx, mut rx) = inbox::<u32>(4);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..3 {
                got.push(rx.recv().await);
            }
            got
        });
        tokio::task::yield_now().await;
        for i in 1..=3 {
            tx.try_send(i).unwrap();
        }
        assert_eq!(reader.await.unwrap(), vec![1, 2, 3]);
    }

    #[tokio::test]
    async fn a_full_inbox_refuses_and_offer_marks_the_overflow_once() {
        let (tx, mut rx) = inbox::<u32>(2);
        tx.try_send(1).unwrap();
        tx.offer(2);
        assert_eq!(tx.try_send(3), Err(Refused::Full(3)));
        assert!(!rx.take_overflow(), "try_send does not mark");
        tx.offer(4);
        assert!(rx.take_overflow());
        assert!(!rx.take_overflow(), "the mark is taken once");
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn send_timeout_waits_for_room_and_gives_up_at_its_deadline() {
        let (tx, mut rx) = inbox::<u32>(1);
        tx.try_send(1).unwrap();
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send_timeout(2, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(rx.recv().await, 1);
        assert_eq!(waiting.await.unwrap(), Ok(()));
        assert_eq!(rx.recv().await, 2);

        tx.try_send(3).unwrap();
        let r = tx.send_timeout(4, Duration::from_millis(30)).await;
        assert_eq!(r, Err(Refused::Timeout(4)));
    }

    #[tokio::test]
    async fn a_dropped_receiver_closes_the_inbox_and_frees_a_waiting_sender() {
        let (tx, rx) = inbox::<u32>(1);
        tx.try_send(1).unwrap();
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send_timeout(2, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(Refused::Closed(2)));
        assert_eq!(tx.try_send(3), Err(Refused::Closed(3)));
        tx.offer(4); // ignored, no panic
    }

    #[test]
    fn an_emptied_inbox_gives_back_a_large_buffer() {
        let (tx, mut rx) = inbox::<u64>(1024);
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert_eq!(rx.inner.lock().events.capacity(), 0);
        for i in 0..3 {
            tx.try_send(i).unwrap();
        }
        while rx.try_recv().is_some() {}
        assert!(rx.inner.lock().events.capacity() <= KEEP_CAPACITY);
    }
}
