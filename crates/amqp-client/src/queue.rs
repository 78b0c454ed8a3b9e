//! A bounded queue between tasks that costs one short lock per item sent and one per *batch*
//! received: the request queue from the handles to the connection task, and each consumer's
//! delivery queue from the connection task to the application.
//!
//! ```text
//!  Sender ─┐  push (lock, append, unlock;      ┌──────────── Receiver ────────────┐
//!  Sender ─┼──►  wake the receiver only if ───►│ shared items ──swap──► its batch │──► recv
//!  Sender ─┘     it is waiting)                │ (one lock per refill)            │
//!                                              └──────────────────────────────────┘
//! ```
//!
//! Why not tokio's mpsc: at several hundred thousand messages a second, its per-item
//! bookkeeping (a semaphore permit taken per send and given back under a lock per receive,
//! plus the waker handshake) was about a sixth of the client's CPU time. Here the receiver
//! takes everything queued in one go and hands it out without touching the lock again.
//!
//! Bounded: a send waits while `capacity` items are queued or sit in the receiver's current
//! batch. The batch's items count until the receiver comes back for more (they are released
//! all at once, when the batch is used up), so the bound holds for everything not yet handed
//! out. Order: one lock, so items come out in the order they went in.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// A bounded queue of `capacity` items (at least 1).
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            in_batch: 0,
            capacity: capacity.max(1),
            receiver: None,
            senders_waiting: Vec::new(),
            receiver_closed: false,
            senders: 1,
        }),
        unreceived: AtomicUsize::new(0),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            batch: VecDeque::new(),
        },
    )
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Items sent and not yet handed out by the receiver (queued or in its batch): what the
    /// receiving side still has to work through. Read without the lock, as a hint.
    unreceived: AtomicUsize,
}

impl<T> Shared<T> {
    /// The state. A panic while it was locked (only an allocation failure could cause one)
    /// leaves the items consistent, so the lock is taken over rather than failed.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

struct State<T> {
    /// Sent and not yet taken by the receiver.
    items: VecDeque<T>,
    /// How many items the receiver took in its current batch: they count against the
    /// capacity until it comes back for more.
    in_batch: usize,
    capacity: usize,
    /// The receiver, when it waits for an item.
    receiver: Option<Waker>,
    /// Senders waiting for room.
    senders_waiting: Vec<Waker>,
    /// The receiver is gone or closed: sends fail.
    receiver_closed: bool,
    /// Live senders; when the last goes, the receiver sees the end once the items are out.
    senders: usize,
}

impl<T> State<T> {
    fn has_room(&self) -> bool {
        self.items.len() + self.in_batch < self.capacity
    }

    /// Appends `item`, counting it in `unreceived`; returns the receiver's waker if it was
    /// waiting.
    fn push(&mut self, item: T, unreceived: &AtomicUsize) -> Option<Waker> {
        self.items.push_back(item);
        unreceived.fetch_add(1, Ordering::Relaxed);
        self.receiver.take()
    }
}

/// Why a send failed; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The queue is at capacity.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// The sending side; clones send into the same queue.
pub(crate) struct Sender<T> {
    shared: Arc<Shared<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            if state.senders == 0 {
                state.receiver.take()
            } else {
                None
            }
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Sender<T> {
    /// How many items sent here the receiver has not handed out yet (queued, or taken into its
    /// batch and not yet returned): a hint of the work waiting on the receiving side.
    pub(crate) fn unreceived(&self) -> usize {
        self.shared.unreceived.load(Ordering::Relaxed)
    }

    /// Sends `item`, waiting while the queue is full. Fails (handing the item back) only
    /// when the receiver is gone.
    pub(crate) async fn send(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        poll_fn(|cx| self.poll_send(cx, &mut item)).await
    }

    fn poll_send(&self, cx: &mut Context<'_>, item: &mut Option<T>) -> Poll<Result<(), T>> {
        let Some(value) = item.take() else {
            return Poll::Ready(Ok(()));
        };
        let waker = {
            let mut state = self.shared.lock();
            if state.receiver_closed {
                return Poll::Ready(Err(value));
            }
            if !state.has_room() {
                if !state
                    .senders_waiting
                    .iter()
                    .any(|w| w.will_wake(cx.waker()))
                {
                    state.senders_waiting.push(cx.waker().clone());
                }
                *item = Some(value);
                return Poll::Pending;
            }
            state.push(value, &self.shared.unreceived)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Poll::Ready(Ok(()))
    }

    /// Sends `item` if there is room, without waiting.
    pub(crate) fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.shared.lock();
            if state.receiver_closed {
                return Err(TrySendError::Closed(item));
            }
            if !state.has_room() {
                return Err(TrySendError::Full(item));
            }
            state.push(item, &self.shared.unreceived)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// [`try_send`](Self::try_send) without waking the receiver: returns its waker, if it
    /// waits, for the caller to wake once it has sent everything it has (one wake for a batch,
    /// so the receiver wakes to a full queue rather than to each item).
    pub(crate) fn try_send_deferred(&self, item: T) -> Result<Option<Waker>, TrySendError<T>> {
        let mut state = self.shared.lock();
        if state.receiver_closed {
            return Err(TrySendError::Closed(item));
        }
        if !state.has_room() {
            return Err(TrySendError::Full(item));
        }
        Ok(state.push(item, &self.shared.unreceived))
    }

    /// Sends `item` whatever the capacity: the one last item (an error ending a consumer)
    /// that must not wait behind the application, nor be lost. Fails only when the receiver
    /// is gone.
    pub(crate) fn send_last(&self, item: T) -> Result<(), T> {
        let waker = {
            let mut state = self.shared.lock();
            if state.receiver_closed {
                return Err(item);
            }
            state.push(item, &self.shared.unreceived)
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Ready when there is room for an item (or the receiver is gone: a send then fails at
    /// once); otherwise wakes the task when room is made.
    pub(crate) fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut state = self.shared.lock();
        if state.receiver_closed || state.has_room() {
            return Poll::Ready(());
        }
        if !state
            .senders_waiting
            .iter()
            .any(|w| w.will_wake(cx.waker()))
        {
            state.senders_waiting.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Whether the receiver is gone or closed.
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.lock().receiver_closed
    }
}

/// The receiving side.
pub(crate) struct Receiver<T> {
    shared: Arc<Shared<T>>,
    /// Items taken from the queue in one go, handed out one by one.
    batch: VecDeque<T>,
}

impl<T> Receiver<T> {
    /// The next item; `Ready(None)` once every sender is gone and every item is out.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        if let Some(item) = self.batch.pop_front() {
            return Poll::Ready(Some(self.handed_out(item)));
        }
        let (item, senders) = {
            let mut state = self.shared.lock();
            let senders = refill(&mut self.batch, &mut state);
            match self.batch.pop_front() {
                Some(item) => (Some(item), senders),
                None if state.senders == 0 => return Poll::Ready(None),
                None => {
                    match &mut state.receiver {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        slot => *slot = Some(cx.waker().clone()),
                    }
                    (None, senders)
                }
            }
        };
        senders.into_iter().for_each(Waker::wake);
        match item {
            Some(item) => Poll::Ready(Some(self.handed_out(item))),
            None => Poll::Pending,
        }
    }

    /// Counts `item` out of [`Shared::unreceived`] as it is handed out.
    fn handed_out(&self, item: T) -> T {
        self.shared.unreceived.fetch_sub(1, Ordering::Relaxed);
        item
    }

    /// The next item, waiting for one; None once every sender is gone and every item is out.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        if let Some(item) = self.batch.pop_front() {
            return Some(self.handed_out(item));
        }
        let senders = {
            let mut state = self.shared.lock();
            refill(&mut self.batch, &mut state)
        };
        senders.into_iter().for_each(Waker::wake);
        let item = self.batch.pop_front()?;
        Some(self.handed_out(item))
    }

    /// Closes the queue: every later send fails; what was sent can still be received.
    pub(crate) fn close(&mut self) {
        let senders = {
            let mut state = self.shared.lock();
            state.receiver_closed = true;
            std::mem::take(&mut state.senders_waiting)
        };
        senders.into_iter().for_each(Waker::wake);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (items, senders) = {
            let mut state = self.shared.lock();
            state.receiver_closed = true;
            (
                std::mem::take(&mut state.items),
                std::mem::take(&mut state.senders_waiting),
            )
        };
        // The items are dropped outside the lock: their drops may take other locks.
        drop(items);
        senders.into_iter().for_each(Waker::wake);
    }
}

/// Swaps the queued items into the receiver's used-up `batch`, releasing the old batch's
/// room, and returns the senders to wake if room was made.
fn refill<T>(batch: &mut VecDeque<T>, state: &mut State<T>) -> Vec<Waker> {
    std::mem::swap(batch, &mut state.items);
    let released = state.in_batch > 0;
    state.in_batch = batch.len();
    if released && state.has_room() {
        std::mem::take(&mut state.senders_waiting)
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unreceived_counts_items_until_they_are_handed_out_not_until_taken_in_a_batch() {
        let (tx, mut rx) = bounded::<u32>(8);
        assert_eq!(tx.unreceived(), 0);
        for i in 0..3 {
            tx.send(i).await.unwrap();
        }
        assert_eq!(tx.unreceived(), 3);
        // The first receive takes all three into the batch and hands out one.
        assert_eq!(rx.recv().await, Some(0));
        assert_eq!(tx.unreceived(), 2);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(tx.unreceived(), 0);
        assert_eq!(rx.try_recv(), None);
        assert_eq!(tx.unreceived(), 0);
    }

    #[tokio::test]
    async fn items_come_out_in_the_order_they_went_in() {
        let (tx, mut rx) = bounded(8);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn try_send_refuses_beyond_capacity_counting_the_receivers_batch() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        // The receiver took both into its batch and handed out one: the batch still counts.
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        // Its batch is used up when it comes back for more: the room is released.
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
        tx.try_send(3).unwrap();
        assert_eq!(rx.try_recv(), Some(3));
    }

    #[tokio::test]
    async fn a_deferred_send_hands_back_the_waiting_receivers_waker_instead_of_waking_it() {
        let (tx, mut rx) = bounded(4);
        let mut receiving = poll_once(&mut rx);
        assert!(receiving.is_pending());
        let waker = tx.try_send_deferred(1).unwrap();
        assert!(waker.is_some(), "the receiver was waiting");
        assert_eq!(
            tx.try_send_deferred(2).unwrap().map(|_| ()),
            None,
            "taken once"
        );
        waker.unwrap().wake();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        receiving = poll_once(&mut rx);
        assert!(receiving.is_pending());
    }

    /// Polls `rx` once with a no-op waker, registering it as waiting when empty.
    fn poll_once(rx: &mut Receiver<i32>) -> Poll<Option<i32>> {
        let mut cx = Context::from_waker(Waker::noop());
        rx.poll_recv(&mut cx)
    }

    #[test]
    fn send_last_goes_in_whatever_the_capacity() {
        let (tx, mut rx) = bounded(1);
        tx.try_send(1).unwrap();
        tx.send_last(2).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn receiver_sees_the_end_after_the_items_when_every_sender_is_gone() {
        let (tx, mut rx) = bounded(4);
        let tx2 = tx.clone();
        tx.send(1).await.unwrap();
        drop(tx);
        tx2.send(2).await.unwrap();
        drop(tx2);
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn sends_fail_with_the_item_once_the_receiver_is_closed_or_gone() {
        let (tx, mut rx) = bounded(4);
        tx.send(1).await.unwrap();
        rx.close();
        assert_eq!(tx.send(2).await, Err(2));
        assert_eq!(tx.try_send(3), Err(TrySendError::Closed(3)));
        assert!(tx.is_closed());
        // What was sent before the close can still be taken.
        assert_eq!(rx.try_recv(), Some(1));
        drop(rx);
        assert_eq!(tx.send_last(4), Err(4));
    }

    #[tokio::test]
    async fn a_waiting_sender_is_woken_when_the_receiver_makes_room() {
        let (tx, mut rx) = bounded(1);
        tx.send(0).await.unwrap();
        let sender = tokio::spawn(async move {
            tx.send(1).await.unwrap();
            tx.send(2).await.unwrap();
        });
        let mut got = Vec::new();
        while let Some(i) = rx.recv().await {
            got.push(i);
        }
        sender.await.unwrap();
        assert_eq!(got, vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_fails_when_the_receiver_goes() {
        let (tx, rx) = bounded(1);
        tx.send(0).await.unwrap();
        let sender = tokio::spawn(async move { tx.send(1).await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(sender.await.unwrap(), Err(1));
    }

    #[tokio::test]
    async fn poll_ready_waits_for_room() {
        let (tx, mut rx) = bounded(1);
        tx.try_send(0).unwrap();
        let waiter = tokio::spawn(async move {
            poll_fn(|cx| tx.poll_ready(cx)).await;
            tx.try_send(1)
        });
        tokio::task::yield_now().await;
        assert_eq!(rx.recv().await, Some(0));
        // Room is released when the receiver comes back for more.
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_senders_on_other_threads_lose_nothing_and_keep_each_senders_order() {
        const SENDERS: usize = 4;
        const EACH: usize = 20_000;
        let (tx, mut rx) = bounded(16);
        let mut tasks = Vec::new();
        for sender in 0..SENDERS {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    tx.send((sender, i)).await.unwrap();
                }
            }));
        }
        drop(tx);
        let mut next = [0usize; SENDERS];
        let mut total = 0;
        while let Some((sender, i)) = rx.recv().await {
            assert_eq!(i, next[sender], "sender {sender} out of order");
            next[sender] += 1;
            total += 1;
        }
        assert_eq!(total, SENDERS * EACH);
        for task in tasks {
            task.await.unwrap();
        }
    }
}
