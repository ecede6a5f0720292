//! A connection's mailbox: the room traffic waiting for its session, bounded in bytes.
//!
//! Rooms drop [`Delivery`]s into it without ever waiting. When a delivery would take it over
//! its limit the connection is *lagging*: from then on nothing more is queued for it, only the
//! names of the rooms whose traffic it missed are noted. Its session takes what was queued,
//! then [`resume`](Mailbox::resume)s and catches those rooms up from the store. Everything
//! queued before the gap is kept, so the client sees no hole; one slow reader never stalls a
//! room, and loses nothing.
//!
//! Unlike a channel, a mailbox holds no memory while empty, which matters with thousands of
//! idle connections. It also carries the connection's login state, so that the server's one
//! login watch can wake a session that took too long to choose a name.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;
use futures::task::AtomicWaker;

use crate::express::{Express, Flushed};
use crate::fanout::LiveBatch;
use crate::protocol::MessageId;
use crate::transport::Transport;

/// What a closed mailbox counts as queued: more than any limit, so that it takes nothing.
const CLOSED: usize = usize::MAX / 2;

/// Identifies one connection for the server's lifetime.
pub type ConnId = u64;

/// What a room delivers to a member.
#[derive(Debug)]
pub enum Delivery {
    /// Live messages; their room and ids let the session drop what its replay already showed.
    /// `only_ours` marks a batch of nothing but the recipient's own messages: nothing to show
    /// (and no cost), but it keeps the recipient's place in the room's order.
    Messages {
        batch: Arc<LiveBatch>,
        only_ours: bool,
    },
    /// A presence line (`JOINED`, `LEFT`, `NICK`) about a room.
    Presence { room: Arc<str>, line: Bytes },
}

impl Delivery {
    /// What the item counts against the connection's limit.
    pub fn cost(&self) -> usize {
        match self {
            Delivery::Messages {
                only_ours: true, ..
            } => 0,
            Delivery::Messages { batch, .. } => batch.bytes.len(),
            Delivery::Presence { line, .. } => line.len(),
        }
    }

    /// The room it is about.
    pub fn room(&self) -> &Arc<str> {
        match self {
            Delivery::Messages { batch, .. } => &batch.room,
            Delivery::Presence { room, .. } => room,
        }
    }
}

/// How rooms reach one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub mailbox: Arc<Mailbox>,
}

/// A connection's queue of room traffic; see the module documentation.
#[derive(Debug)]
pub struct Mailbox {
    queue: Mutex<Queue>,
    /// Bytes queued and not yet taken by the session.
    queued: AtomicUsize,
    /// Bytes of queued traffic above which the connection lags.
    limit: usize,
    /// Signalled when items arrive, when the connection starts lagging, and when its login
    /// time is up.
    pub ready: Signal,
    /// Set while traffic is not queued because the queue overflowed. Changed only under the
    /// queue's lock (so deliveries and `resume` agree), read without it for cheap checks.
    lagging: AtomicBool,
    /// Set once the connection chose a name.
    named: AtomicBool,
    /// Why the server closes the connection from outside ([`Eviction`] as a number; 0: it
    /// does not): the login watch, or the name watch.
    evicted: AtomicU8,
}

/// Why the server closes a connection from outside its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// No name came within the login timeout.
    LoginTimeout = 1,
    /// It holds a guest name that has been registered since (on any server).
    NameRegistered = 2,
    /// It is logged in to an account that was removed, or whose password was changed
    /// elsewhere.
    AccountChanged = 3,
    /// Its name, taken while the database was away, is held by a connection on another
    /// server sharing it ([`crate::cluster`]).
    NameTaken = 4,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Delivery>,
    /// Rooms whose traffic was not queued since the connection started lagging. Boxed, and
    /// allocated only then: every connection has a queue, and a `Vec` is three words.
    #[allow(clippy::box_collection)]
    missed: Option<Box<Vec<Arc<str>>>>,
    /// The lag is not the client's (the server's own delivery was interrupted): it is caught
    /// up without `LAGGED`.
    quiet: bool,
    /// Made when a plain TCP session first arms: while it waits, the flusher writes what is
    /// queued to its socket ([`crate::express`]).
    express: Option<Box<Express>>,
}

impl Queue {
    fn note_missed(&mut self, room: &Arc<str>) {
        let missed = self.missed.get_or_insert_with(Default::default);
        if !missed.iter().any(|r| r == room) {
            missed.push(room.clone());
        }
    }
}

impl Mailbox {
    /// A mailbox that lags past `limit` bytes (at least 1).
    pub fn new(limit: usize) -> Mailbox {
        Mailbox {
            queue: Mutex::default(),
            queued: AtomicUsize::new(0),
            limit: limit.max(1),
            ready: Signal::default(),
            lagging: AtomicBool::new(false),
            named: AtomicBool::new(false),
            evicted: AtomicU8::new(0),
        }
    }

    /// Queues an item, or notes its room as missed if the connection lags or would start to.
    /// Returns true if the session was not woken because it waits armed: the caller must
    /// have the mailbox flushed ([`crate::express::Flusher`]).
    pub fn deliver(&self, item: Delivery) -> bool {
        let mut queue = self.queue.lock().expect("mailbox lock");
        let express = matches!(item, Delivery::Messages { .. })
            && queue.express.as_deref().is_some_and(Express::is_armed);
        // Once lagging, nothing more until the session has caught up: a later, smaller item
        // must not slip in after one that was refused, or the client would see a hole.
        // Except presence in a quiet catch-up (the server's lag, not the client's: its
        // messages come from the store, but presence is in no store), while it fits.
        let keep_presence = queue.quiet
            && matches!(item, Delivery::Presence { .. })
            && self.queued.load(Ordering::Relaxed) + item.cost() <= self.limit;
        if self.lagging.load(Ordering::Relaxed) && !keep_presence {
            // A marker of our own messages alone is no reason to catch the room up: their
            // ids are known from their acks, and the room's next traffic moves past them.
            if !matches!(
                item,
                Delivery::Messages {
                    only_ours: true,
                    ..
                }
            ) {
                queue.note_missed(item.room());
            }
            return false;
        }
        let cost = item.cost();
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        // An empty queue always takes the item, so one large batch never counts as lagging;
        // the queue is bounded by the limit plus one batch.
        if cost > 0 && before > 0 && before + cost > self.limit {
            self.queued.fetch_sub(cost, Ordering::Relaxed);
            self.lagging.store(true, Ordering::Relaxed);
            queue.quiet = false;
            queue.note_missed(item.room());
        } else {
            queue.items.push_back(item);
            if express {
                return true;
            }
        }
        drop(queue);
        self.ready.notify();
        false
    }

    /// Writes what was queued while the session waits armed, if it still does; wakes it if
    /// the socket did not take everything ([`crate::express`]).
    pub fn flush_express(&self) {
        let mut queue = self.queue.lock().expect("mailbox lock");
        let Queue { items, express, .. } = &mut *queue;
        let Some(express) = express.as_deref_mut() else {
            return;
        };
        if !express.is_armed() || self.lagging.load(Ordering::Relaxed) {
            // The session took over (or will: a lag wakes it).
            return;
        }
        let flushed = express.flush(items, |item| {
            self.queued.fetch_sub(item.cost(), Ordering::Relaxed);
        });
        drop(queue);
        if flushed == Flushed::Wake {
            self.ready.notify();
        }
    }

    /// Moves queued items into `take` while it says so; returns how many.
    pub fn take_while(&self, mut take: impl FnMut(Delivery) -> bool) -> usize {
        let mut queue = self.queue.lock().expect("mailbox lock");
        let mut n = 0;
        while let Some(item) = queue.items.pop_front() {
            self.queued.fetch_sub(item.cost(), Ordering::Relaxed);
            n += 1;
            if !take(item) {
                break;
            }
        }
        if queue.items.is_empty() && queue.items.capacity() > 16 {
            // Give back what a burst made it grow to.
            queue.items = VecDeque::new();
        }
        n
    }

    /// Before the session waits: until it wakes, what is queued is written to `socket` by the
    /// flusher, showing `rooms` on from the ids given (see [`crate::express`]). Only while
    /// nothing is queued and it does not lag; returns whether it armed.
    pub fn arm<'a>(
        &self,
        socket: &Arc<Transport>,
        me: ConnId,
        rooms: impl Iterator<Item = (&'a Arc<str>, MessageId)>,
    ) -> bool {
        let mut queue = self.queue.lock().expect("mailbox lock");
        if !queue.items.is_empty() || self.lagging.load(Ordering::Relaxed) {
            return false;
        }
        queue
            .express
            .get_or_insert_with(|| Box::new(Express::new(socket.clone(), me)))
            .arm(rooms);
        true
    }

    /// When the session wakes from an armed wait: `shown` hears how far each room was shown
    /// meanwhile, `leftover` gets what the socket has still to take, before anything queued
    /// (with whether its line was begun).
    pub fn disarm(
        &self,
        shown: impl FnMut(&Arc<str>, MessageId),
        leftover: impl FnMut(Bytes, bool),
    ) {
        let mut queue = self.queue.lock().expect("mailbox lock");
        if let Some(express) = queue.express.as_deref_mut() {
            express.disarm(shown, leftover);
        }
    }

    /// True while traffic is not being queued because the queue overflowed.
    pub fn is_lagging(&self) -> bool {
        self.lagging.load(Ordering::Relaxed)
    }

    /// Ends a lag once the session has taken everything queued before it: traffic is queued
    /// again from now on, and the rooms whose traffic was missed are returned for the session
    /// to catch up from the store, with whether to do so quietly (see
    /// [`Mailbox::catch_up_quietly`]). `None` while not lagging or while items are still
    /// queued.
    pub fn resume(&self) -> Option<(Vec<Arc<str>>, bool)> {
        let mut queue = self.queue.lock().expect("mailbox lock");
        if !self.lagging.load(Ordering::Relaxed) || !queue.items.is_empty() {
            return None;
        }
        self.lagging.store(false, Ordering::Relaxed);
        let rooms = queue.missed.take().map(|rooms| *rooms).unwrap_or_default();
        Some((rooms, std::mem::take(&mut queue.quiet)))
    }

    /// Has the session catch `rooms` up from the store, without `LAGGED` unless it lags on
    /// its own account too: the server's delivery of stored messages was interrupted (it lost
    /// the database's notifications for a while), not the client's reading.
    pub fn catch_up_quietly(&self, rooms: Vec<Arc<str>>) {
        {
            let mut queue = self.queue.lock().expect("mailbox lock");
            if !self.lagging.load(Ordering::Relaxed) {
                queue.quiet = true;
            }
        }
        self.defer_catch_up(rooms);
        self.ready.notify();
    }

    /// Lags again with these rooms still to catch up (the store refused the catch-up). What
    /// was queued for them since the catch-up began is dropped: it is in the store, and
    /// delivered now it would overtake the part of the gap not yet caught up.
    pub fn defer_catch_up(&self, rooms: Vec<Arc<str>>) {
        let mut queue = self.queue.lock().expect("mailbox lock");
        self.lagging.store(true, Ordering::Relaxed);
        queue.items.retain(|item| {
            let keep = !rooms.contains(item.room());
            if !keep {
                self.queued.fetch_sub(item.cost(), Ordering::Relaxed);
            }
            keep
        });
        for room in rooms {
            queue.note_missed(&room);
        }
    }

    /// Records that the connection chose a name: the login watch leaves it alone.
    pub fn mark_named(&self) {
        self.named.store(true, Ordering::Relaxed);
    }

    pub fn is_named(&self) -> bool {
        self.named.load(Ordering::Relaxed)
    }

    /// True once the login watch found no name in time.
    pub fn login_expired(&self) -> bool {
        self.eviction() == Some(Eviction::LoginTimeout)
    }

    /// Marks the connection as out of time to choose a name, unless it has one.
    pub fn expire_login(&self) {
        if !self.named.load(Ordering::Relaxed) {
            self.evict(Eviction::LoginTimeout);
        }
    }

    /// Asks the session to close the connection for `why` (the first reason stays).
    pub fn evict(&self, why: Eviction) {
        let _ = self
            .evicted
            .compare_exchange(0, why as u8, Ordering::Relaxed, Ordering::Relaxed);
        self.ready.notify();
    }

    /// Why the connection is to be closed, if it is.
    pub fn eviction(&self) -> Option<Eviction> {
        match self.evicted.load(Ordering::Relaxed) {
            1 => Some(Eviction::LoginTimeout),
            2 => Some(Eviction::NameRegistered),
            3 => Some(Eviction::AccountChanged),
            4 => Some(Eviction::NameTaken),
            _ => None,
        }
    }

    /// Empties the queue for good (the connection is closing): nothing more is queued.
    pub fn close(&self) {
        let mut queue = self.queue.lock().expect("mailbox lock");
        *queue = Queue::default();
        self.lagging.store(true, Ordering::Relaxed);
        self.queued.store(CLOSED, Ordering::Relaxed);
    }

    /// True once [`close`](Self::close)d (it then counts as lagging, to take nothing more).
    fn is_closed(&self) -> bool {
        self.queued.load(Ordering::Relaxed) >= CLOSED
    }

    /// Holds the mailbox's lock, as a delivery that is slow to finish would (tests only).
    #[cfg(test)]
    pub(crate) fn hold_lock(&self) -> std::sync::MutexGuard<'_, impl Sized> {
        self.queue.lock().expect("mailbox lock")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_signal_is_never_lost_and_several_count_as_one() {
        use futures::FutureExt;
        let signal = Signal::default();
        assert!(
            signal.wait().now_or_never().is_none(),
            "nothing signalled yet"
        );
        signal.notify();
        signal.notify();
        assert!(signal.wait().now_or_never().is_some());
        assert!(
            signal.wait().now_or_never().is_none(),
            "two notifies, one wake"
        );
    }

    #[tokio::test]
    async fn a_signal_wakes_a_waiting_task() {
        let mailbox = Arc::new(Mailbox::new(1024));
        let waiter = tokio::spawn({
            let mailbox = mailbox.clone();
            async move { mailbox.ready.wait().await }
        });
        tokio::task::yield_now().await;
        mailbox.expire_login();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }

    use super::*;

    fn presence(room: &str, len: usize) -> Delivery {
        Delivery::Presence {
            room: room.into(),
            line: Bytes::from(vec![b'x'; len]),
        }
    }

    fn taken(mailbox: &Mailbox) -> Vec<String> {
        let mut rooms = Vec::new();
        mailbox.take_while(|item| {
            rooms.push(item.room().to_string());
            true
        });
        rooms
    }

    /// Every idle connection may keep a few queue slots: they must stay small.
    #[test]
    fn a_delivery_is_no_bigger_than_a_presence_line() {
        assert_eq!(
            std::mem::size_of::<Delivery>(),
            std::mem::size_of::<Arc<str>>() + std::mem::size_of::<Bytes>()
        );
    }

    #[test]
    fn over_the_limit_it_lags_and_keeps_what_came_before() {
        let mailbox = Mailbox::new(100);
        mailbox.deliver(presence("a", 60));
        mailbox.deliver(presence("b", 30));
        mailbox.deliver(presence("c", 30)); // 120 > 100: lags
        assert!(mailbox.is_lagging());
        mailbox.deliver(presence("d", 1)); // small, but after a refusal: not queued either
        assert_eq!(mailbox.resume(), None, "items still queued");
        assert_eq!(taken(&mailbox), ["a", "b"]);
        let (missed, quietly) = mailbox.resume().expect("drained: the lag ends");
        assert_eq!(missed.iter().map(|r| &**r).collect::<Vec<_>>(), ["c", "d"]);
        assert!(!quietly, "the client's own lag is announced");
        assert!(!mailbox.is_lagging());
        mailbox.deliver(presence("e", 30));
        assert_eq!(taken(&mailbox), ["e"]);
    }

    #[test]
    fn an_empty_mailbox_takes_one_item_of_any_size() {
        let mailbox = Mailbox::new(10);
        mailbox.deliver(presence("big", 1000));
        assert!(!mailbox.is_lagging());
        assert_eq!(taken(&mailbox), ["big"]);
    }

    #[test]
    fn a_deferred_catch_up_drops_what_came_since_for_those_rooms() {
        let mailbox = Mailbox::new(1000);
        mailbox.deliver(presence("a", 10));
        mailbox.deliver(presence("b", 10));
        mailbox.defer_catch_up(vec!["a".into()]);
        assert!(mailbox.is_lagging());
        assert_eq!(taken(&mailbox), ["b"]);
        let (missed, _) = mailbox.resume().unwrap();
        assert_eq!(missed.iter().map(|r| &**r).collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn a_quiet_catch_up_is_quiet_unless_the_client_lags_too() {
        let mailbox = Mailbox::new(100);
        mailbox.deliver(presence("a", 10));
        mailbox.catch_up_quietly(vec!["a".into()]);
        assert_eq!(
            taken(&mailbox),
            Vec::<String>::new(),
            "dropped: it is in the store"
        );
        // Presence still comes (no store holds it).
        mailbox.deliver(presence("c", 10));
        assert_eq!(taken(&mailbox), ["c"]);
        assert_eq!(mailbox.resume(), Some((vec!["a".into()], true)));
        // Lagging on its own account first: announced.
        mailbox.deliver(presence("b", 60));
        mailbox.deliver(presence("c", 60));
        mailbox.catch_up_quietly(vec!["b".into()]);
        taken(&mailbox);
        let (_, quietly) = mailbox.resume().unwrap();
        assert!(!quietly);
    }

    #[test]
    fn login_expiry_spares_a_named_connection() {
        let named = Mailbox::new(10);
        named.mark_named();
        named.expire_login();
        assert!(!named.login_expired());
        let anonymous = Mailbox::new(10);
        anonymous.expire_login();
        assert!(anonymous.login_expired());
    }
}

/// Every live connection's mailbox, so that shutdown reaches each session through the one
/// signal it waits on anyway: a wait of its own for shutdown would make every idle
/// connection's task about 80 bytes larger (and tokio rounds tasks up to 128 bytes).
#[derive(Default)]
pub struct Mailboxes {
    live: Mutex<HashMap<ConnId, Weak<Mailbox>>>,
}

impl Mailboxes {
    pub fn register(&self, conn: &ConnHandle) {
        let weak = Arc::downgrade(&conn.mailbox);
        self.live.lock().expect("mailboxes").insert(conn.id, weak);
    }

    pub fn unregister(&self, id: ConnId) {
        let mut live = self.live.lock().expect("mailboxes");
        live.remove(&id);
        if live.is_empty() && live.capacity() > 64 {
            *live = HashMap::new();
        }
    }

    /// The live mailbox of connection `id`.
    pub fn get(&self, id: ConnId) -> Option<Arc<Mailbox>> {
        let live = self.live.lock().expect("mailboxes");
        live.get(&id).and_then(Weak::upgrade)
    }

    /// How many live connections lag now (read at a metrics scrape).
    pub fn lagging(&self) -> usize {
        let live = self.live.lock().expect("mailboxes");
        live.values()
            .filter_map(Weak::upgrade)
            .filter(|m| m.is_lagging() && !m.is_closed())
            .count()
    }

    /// Wakes every session (to see that the server is shutting down).
    pub fn notify_all(&self) {
        let live: Vec<Arc<Mailbox>> = {
            let live = self.live.lock().expect("mailboxes");
            live.values().filter_map(Weak::upgrade).collect()
        };
        for mailbox in live {
            mailbox.ready.notify();
        }
    }
}

/// Wakes the one task that reads a mailbox. Like `tokio::sync::Notify` with a single waiter,
/// but waiting takes no waiter node: the session polls it afresh on every turn with nothing
/// pinned, which keeps each connection's task smaller.
#[derive(Default)]
pub struct Signal {
    waker: AtomicWaker,
    /// Set by `notify`, cleared by the wait that sees it: a notification is never lost, and
    /// several before a wait count as one.
    set: AtomicBool,
}

impl Signal {
    pub fn notify(&self) {
        self.set.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Completes once `notify` has been called since the last wait completed.
    pub fn wait(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.swap(false, Ordering::AcqRel) {
                return std::task::Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A notify between the check and the registration found no waker to wake.
            if self.set.swap(false, Ordering::AcqRel) {
                std::task::Poll::Ready(())
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

impl std::fmt::Debug for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field("set", &self.set.load(Ordering::Relaxed))
            .finish()
    }
}
