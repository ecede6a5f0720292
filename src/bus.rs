//! Servers sharing one database are one chat: each delivers what any of them stored, its own
//! batches included, in the order the database committed them (which, per room, is id
//! order: schema.sql's migration 5). Without this, a message said on one server would never
//! reach members on another, and two servers' batches into one room could reach members in
//! different orders.
//!
//! The writer hands its stored batches to a [`Bus`] instead of the fan-out. The database
//! notifies every server of every commit ([`HistoryStore::subscribe`]); [`deliver`] takes
//! those notifications in order and publishes each batch: its own from memory (with the
//! senders, who get `OK SAY` rather than their own `MSG`), another server's from the
//! notification if it carries them (schema.sql's migration 7) or else read from the store,
//! and only for rooms that have members here. What other programs insert (a bulk
//! load) is history only, as it always was.
//!
//! `OK SAY` waits for its batch's delivery too (the writer hands the answers over,
//! [`Publish::hold_acks`]): sent at commit, an answer with id 9 could reach its sender before
//! the message 8 another server committed first, and a client that resumes from the largest
//! id it saw would never get 8.
//!
//! A lost subscription (the connection broke, the database restarted) is taken again, and
//! then every member catches up from the store from what it was last shown, quietly (no
//! `LAGGED`: the lag was the server's): nothing stored meanwhile is missed, nothing shown
//! twice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::fanout::Fanout;
use crate::mailbox::ConnId;
use crate::protocol::MessageId;
use crate::rooms::Rooms;
use crate::store::writer::{HeldAck, Publish, StoredBatch};
use crate::store::{Event, HistoryStore, NewMessage, Stored, StoredMessage};

/// Own messages kept for their notification: a few batches' worth. More means notifications
/// were lost (the catch-up after the lost subscription covers them): the oldest batches go.
const MAX_OWN_MESSAGES: usize = 8 * 1024;
/// Most messages read for one room of one notification (the writer stores at most 1,024 a
/// batch).
const MAX_READ: usize = 4096;
/// Most notifications delivered together.
const MAX_GATHERED: usize = 64;
/// The sender of a message another server stored: no connection here.
const NOBODY: ConnId = 0;

/// The writer's publisher when the store is shared: keeps each stored batch until the
/// database's notification of it comes.
pub struct Bus {
    shared: Arc<Shared>,
    /// The batch just published, kept with its answers by [`Publish::hold_acks`], which the
    /// writer calls next: both go to the shared state at once, or a notification could take
    /// the messages before their answers were with them.
    published: Option<VecDeque<(NewMessage, StoredMessage, ConnId)>>,
}

/// What the writer and [`deliver`] share.
pub struct Shared {
    state: Mutex<State>,
    /// Told whenever a batch of ours was stored or given up on.
    changed: Notify,
    /// How long a kept batch's answers may wait for its notification (`--db-timeout`): past
    /// that they are sent anyway (the notification is late or lost; the catch-up after
    /// listening again delivers the batch).
    answer_within: Duration,
}

#[derive(Default)]
struct State {
    /// Batches the writer began to store, and finished with (stored or given up on). A
    /// notification of ours that matches no kept batch may be for the one in between.
    started: u64,
    finished: u64,
    /// Our stored batches, oldest first, each message with its sender, until notified.
    own: VecDeque<OwnBatch>,
    /// Messages in `own`.
    own_messages: usize,
    /// False while there is no subscription: batches stored then are not kept (no
    /// notification of them will come; the catch-up after subscribing covers them).
    listening: bool,
}

#[derive(Default)]
struct OwnBatch {
    messages: VecDeque<(NewMessage, StoredMessage, ConnId)>,
    /// The answers to its messages not delivered yet.
    acks: Vec<HeldAck>,
    kept_at: Option<tokio::time::Instant>,
}

impl Drop for OwnBatch {
    /// A batch dropped undelivered (its notification lost, or too many kept) is stored all
    /// the same: its answers go now.
    fn drop(&mut self) {
        send_acks(std::mem::take(&mut self.acks));
    }
}

fn send_acks(acks: Vec<HeldAck>) {
    for (ack, answer) in acks {
        let _ = ack.send(Ok(answer));
    }
}

/// Our messages of one room of one notification, and their answers.
type Taken = (Vec<(NewMessage, StoredMessage, ConnId)>, Vec<HeldAck>);

impl Bus {
    /// A bus whose kept answers wait at most `answer_within` for their notification.
    pub fn new(answer_within: Duration) -> (Bus, Arc<Shared>) {
        let shared = Arc::new(Shared {
            state: Mutex::default(),
            changed: Notify::new(),
            answer_within,
        });
        (
            Bus {
                shared: shared.clone(),
                published: None,
            },
            shared,
        )
    }

    fn change(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.shared.state.lock().expect("bus lock"));
        self.shared.changed.notify_one();
    }
}

impl Publish<ConnId> for Bus {
    fn storing(&mut self) {
        self.change(|state| state.started += 1);
    }

    fn publish(&mut self, batch: StoredBatch<'_, ConnId>) {
        self.published = Some(
            batch
                .iter()
                .map(|(m, s, tag)| (m.clone(), s.clone(), *tag))
                .collect(),
        );
    }

    fn not_stored(&mut self) {
        self.change(|state| state.finished += 1);
    }

    fn hold_acks(&mut self, acks: &mut Vec<HeldAck>) {
        let messages = self.published.take().unwrap_or_default();
        self.change(|state| {
            state.finished += 1;
            if !state.listening {
                // Not kept: no notification of it will come. Answered now.
                return;
            }
            state.own_messages += messages.len();
            state.own.push_back(OwnBatch {
                messages,
                acks: std::mem::take(acks),
                kept_at: Some(tokio::time::Instant::now()),
            });
            while state.own_messages > MAX_OWN_MESSAGES && state.own.len() > 1 {
                let dropped = state.own.pop_front().expect("more than one");
                state.own_messages -= dropped.messages.len();
            }
        });
    }
}

impl State {
    /// Takes our messages of `room` with ids `first..=last` if a kept batch holds them.
    /// Batches before that one are dropped: ours commit in order, so their notifications
    /// came first or were lost.
    fn take_own(&mut self, room: &str, first: MessageId, last: MessageId) -> Option<Taken> {
        let at = self.own.iter().position(|batch| {
            batch
                .messages
                .iter()
                .any(|(m, s, _)| s.id == first && *m.room == *room)
        })?;
        for dropped in self.own.drain(..at) {
            self.own_messages -= dropped.messages.len();
        }
        let batch = self.own.front_mut().expect("found");
        let (taken, kept): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut batch.messages)
            .into_iter()
            .partition(|(m, s, _)| *m.room == *room && (first..=last).contains(&s.id));
        batch.messages = kept;
        self.own_messages -= taken.len();
        // A set: a batch of 1,024 messages into one room would otherwise cost a million
        // comparisons.
        let ids: std::collections::HashSet<MessageId> =
            taken.iter().map(|(_, s, _)| s.id).collect();
        let (acks, held): (Vec<HeldAck>, Vec<HeldAck>) = std::mem::take(&mut batch.acks)
            .into_iter()
            .partition(|(_, answer)| ids.contains(&answer.id));
        batch.acks = held;
        if batch.messages.is_empty() {
            self.own.pop_front();
        }
        Some((taken.into_iter().collect(), acks))
    }

    /// The answers of kept batches older than `within`, to send now.
    fn overdue_acks(&mut self, within: Duration) -> Vec<HeldAck> {
        let now = tokio::time::Instant::now();
        self.own
            .iter_mut()
            .filter(|b| b.kept_at.is_some_and(|at| now.duration_since(at) >= within))
            .flat_map(|b| std::mem::take(&mut b.acks))
            .collect()
    }
}

/// Delivers every stored batch, as the database notifies them, until `stopping`.
pub async fn deliver(
    shared: Arc<Shared>,
    store: Arc<dyn HistoryStore>,
    rooms: Arc<Rooms>,
    stopping: CancellationToken,
) {
    let mut fanout = Fanout::new(rooms.clone());
    let mut retry = Retry::default();
    loop {
        shared.state.lock().expect("bus lock").listening = true;
        let subscribed = tokio::select! {
            subscribed = store.subscribe() => subscribed,
            () = stopping.cancelled() => return,
        };
        let mut subscription = match subscribed {
            None => return,
            Some(Ok(subscription)) => subscription,
            Some(Err(e)) => {
                if retry.failed() {
                    tracing::warn!(error = %e, "cannot listen for stored messages; retrying");
                }
                shared.state.lock().expect("bus lock").listening = false;
                if retry.wait(&stopping).await.is_err() {
                    return;
                }
                continue;
            }
        };
        // Who is on other servers now; changes from here on come as notifications.
        let mut others_now = None;
        if let Some(directory) = store.directory() {
            let others = tokio::select! {
                others = directory.others() => others,
                () = stopping.cancelled() => return,
            };
            match others {
                Ok(others) => others_now = Some(others),
                Err(e) => {
                    if retry.failed() {
                        tracing::warn!(error = %e, "cannot read who is on other servers; retrying");
                    }
                    shared.state.lock().expect("bus lock").listening = false;
                    if retry.wait(&stopping).await.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        if retry.succeeded() {
            tracing::info!("listening for stored messages again: members catch up from the store");
        }
        // Whatever was stored before the subscription began comes from the store.
        rooms.catch_up_everyone();
        // After the catch-up began, which empties the rooms' queues: what changed on other
        // servers meanwhile is told now, and kept (a quiet catch-up keeps presence).
        if let Some(others) = others_now {
            rooms.remote_replaced(others);
        }
        let mut overdue = tokio::time::interval(shared.answer_within / 4);
        // A presence change read while gathering notifications: it waits for the messages
        // notified before it.
        let mut next: Option<Event> = None;
        loop {
            let event = match next.take() {
                Some(event) => Some(event),
                None => tokio::select! {
                    event = subscription.events.recv() => event,
                    () = stopping.cancelled() => return,
                    _ = overdue.tick() => {
                        let late = shared.state.lock().expect("bus lock").overdue_acks(shared.answer_within);
                        send_acks(late);
                        continue;
                    }
                },
            };
            let stored = match event {
                None => break,
                Some(Event::Presence(p)) => {
                    if *p.member.node != *subscription.origin {
                        rooms.remote_changed(&p);
                    }
                    continue;
                }
                Some(Event::Stored(stored)) => stored,
            };
            // Every notification already waiting is delivered with this one: one read of
            // the store for all of them, one publish per room.
            let mut notified = vec![stored];
            while notified.len() < MAX_GATHERED {
                match subscription.events.try_recv() {
                    Ok(Event::Stored(stored)) => notified.push(stored),
                    Ok(presence) => {
                        next = Some(presence);
                        break;
                    }
                    Err(_) => break,
                }
            }
            let gathered = notified
                .into_iter()
                .filter(Stored::by_a_server)
                .map(|stored| {
                    let own = stored.origin == subscription.origin;
                    (stored, own)
                })
                .collect();
            let batch = collect(&shared, &*store, &rooms, gathered, &stopping).await;
            let Some((messages, kept, tags, acks)) = batch else {
                return;
            };
            if !messages.is_empty() {
                fanout.publish(StoredBatch::new(&messages, &kept, &tags));
            }
            send_acks(acks);
        }
        tracing::warn!("lost the notifications of stored messages; listening again");
        {
            let mut state = shared.state.lock().expect("bus lock");
            state.listening = false;
            state.own.clear();
            state.own_messages = 0;
        }
        retry.failed();
    }
}

/// A notification's messages to deliver here, and the answers to send once they are.
type Parts = (
    Vec<NewMessage>,
    Vec<StoredMessage>,
    Vec<ConnId>,
    Vec<HeldAck>,
);

/// The messages of several notifications (each with whether it is ours) that rooms here
/// need, in notification order, with their senders if ours. Other servers' are read from
/// the store, all in one round trip. `None` if the server stops meanwhile.
async fn collect(
    shared: &Shared,
    store: &dyn HistoryStore,
    rooms: &Rooms,
    notified: Vec<(Stored, bool)>,
    stopping: &CancellationToken,
) -> Option<Parts> {
    enum Piece {
        /// Ours, or carried by the notification.
        Ours(Vec<(NewMessage, StoredMessage, ConnId)>),
        /// The `i`th range to read.
        Read(usize),
    }
    let mut parts: Parts = Default::default();
    let mut pieces = Vec::new();
    let mut ranges = Vec::new();
    for (stored, own) in notified {
        tracing::trace!(?stored, own, "stored");
        let mut carried = stored.carried.map(Vec::into_iter);
        for (room, first, last) in stored.rooms {
            let here = rooms.exists(&room);
            let carried = carried.as_mut().and_then(Iterator::next);
            // Ours are taken even for a room with nobody here: their answers go with them.
            let taken = if own {
                take_own(shared, &room, first, last).await
            } else {
                None
            };
            match (taken, carried) {
                (Some((messages, acks)), _) => {
                    parts.3.extend(acks);
                    if here {
                        pieces.push(Piece::Ours(messages));
                    }
                }
                (None, _) if !here => {}
                (None, Some(carried)) => pieces.push(Piece::Ours(from_elsewhere(&room, carried))),
                (None, None) => {
                    pieces.push(Piece::Read(ranges.len()));
                    ranges.push((room, first, last));
                }
            }
        }
    }
    let mut read = if ranges.is_empty() {
        Vec::new()
    } else {
        read(store, &ranges, shared, &mut parts.3, stopping).await?
    };
    for piece in pieces {
        let messages = match piece {
            Piece::Ours(messages) => messages,
            Piece::Read(i) => from_elsewhere(&ranges[i].0, std::mem::take(&mut read[i])),
        };
        for (m, s, tag) in messages {
            parts.0.push(m);
            parts.1.push(s);
            parts.2.push(tag);
        }
    }
    Some(parts)
}

/// Messages of `room` stored by another server (or ours, given up on by the writer), to
/// publish: no sender here.
fn from_elsewhere(
    room: &Arc<str>,
    stored: Vec<StoredMessage>,
) -> Vec<(NewMessage, StoredMessage, ConnId)> {
    stored
        .into_iter()
        .map(|s| {
            let m = NewMessage {
                room: room.clone(),
                nick: s.nick.clone(),
                text: s.text.clone(),
            };
            (m, s, NOBODY)
        })
        .collect()
}

/// Our messages of `room` in `first..=last`, once the writer has them; `None` if it gave up
/// on the batch (its outcome unknown to it: the notification says it was stored).
async fn take_own(
    shared: &Shared,
    room: &Arc<str>,
    first: MessageId,
    last: MessageId,
) -> Option<Taken> {
    // Only the batch being stored now can be this one: the writer stores one at a time,
    // and took any earlier one back before it began the next.
    let mut in_flight = None;
    loop {
        let changed = shared.changed.notified();
        {
            let mut state = shared.state.lock().expect("bus lock");
            if let Some(taken) = state.take_own(room, first, last) {
                return Some(taken);
            }
            let awaited = *in_flight.get_or_insert(state.started);
            if state.finished >= awaited {
                return None;
            }
        }
        // Its INSERT has committed (this is its notification); its answer is on the way.
        changed.await;
    }
}

/// Other servers' messages of each `(room, first, last)`, from the store, retried until it
/// answers; `None` if the server stops first.
///
/// Every delivery after these waits for them, but no answer waits past `--db-timeout`
/// (PROTOCOL.md: a `SAY` is answered within it) for a store that does not answer: while
/// the reads fail, the kept batches' overdue answers go out, and `held` (the answers to our
/// messages delivered with these) once the reads have failed that long.
async fn read(
    store: &dyn HistoryStore,
    ranges: &[(Arc<str>, MessageId, MessageId)],
    shared: &Shared,
    held: &mut Vec<HeldAck>,
    stopping: &CancellationToken,
) -> Option<Vec<Vec<StoredMessage>>> {
    let mut retry = Retry::default();
    let began = tokio::time::Instant::now();
    loop {
        // A server's batch holds at most the writer's batch size of messages: read no more,
        // whatever range a notification names.
        match store.read_ranges(ranges, MAX_READ).await {
            Ok(read) => return Some(read),
            Err(e) => {
                if retry.failed() {
                    tracing::warn!(error = %e, "cannot read another server's messages; retrying");
                }
                if began.elapsed() >= shared.answer_within {
                    send_acks(std::mem::take(held));
                }
                let late = shared
                    .state
                    .lock()
                    .expect("bus lock")
                    .overdue_acks(shared.answer_within);
                send_acks(late);
                retry.wait(stopping).await.ok()?;
            }
        }
    }
}

/// Backoff between attempts, and whether a run of failures is worth a log line.
#[derive(Default)]
pub(crate) struct Retry {
    failures: u32,
}

impl Retry {
    /// Counts a failure; true for the first of a run.
    pub(crate) fn failed(&mut self) -> bool {
        self.failures += 1;
        self.failures == 1
    }

    /// Ends a run of failures; true if there was one.
    pub(crate) fn succeeded(&mut self) -> bool {
        std::mem::take(&mut self.failures) > 0
    }

    pub(crate) async fn wait(&self, stopping: &CancellationToken) -> Result<(), ()> {
        // As the store's own probe: 0.1 s, doubling, at most 2 s.
        let delay = Duration::from_millis(100 << self.failures.min(5)).min(Duration::from_secs(2));
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = stopping.cancelled() => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(room: &str, id: MessageId, sender: ConnId) -> (NewMessage, StoredMessage, ConnId) {
        (
            NewMessage {
                room: room.into(),
                nick: "n".into(),
                text: format!("m{id}"),
            },
            StoredMessage {
                id,
                millis: 0,
                nick: "n".into(),
                text: format!("m{id}"),
            },
            sender,
        )
    }

    fn state(batches: &[&[(&str, MessageId)]]) -> State {
        let own: VecDeque<OwnBatch> = batches
            .iter()
            .map(|b| OwnBatch {
                messages: b.iter().map(|(r, id)| stored(r, *id, 7)).collect(),
                acks: Vec::new(),
                kept_at: None,
            })
            .collect();
        State {
            own_messages: own.iter().map(|b| b.messages.len()).sum(),
            own,
            listening: true,
            ..State::default()
        }
    }

    fn ids(taken: Option<Taken>) -> Option<Vec<MessageId>> {
        taken.map(|(t, _)| t.into_iter().map(|(_, s, _)| s.id).collect())
    }

    #[test]
    fn own_messages_are_taken_a_room_at_a_time_and_earlier_batches_dropped() {
        let mut s = state(&[&[("a", 1)], &[("a", 2), ("b", 3), ("a", 4)], &[("a", 5)]]);
        // Batch 1's notification never came; batch 2's comes room by room.
        assert_eq!(ids(s.take_own("b", 3, 3)), Some(vec![3]));
        assert_eq!(s.own.len(), 2, "batch 1 dropped, batch 2 kept for room a");
        assert_eq!(ids(s.take_own("a", 2, 4)), Some(vec![2, 4]));
        assert_eq!(s.own.len(), 1);
        // Not ours (or not kept): read from the store instead.
        assert_eq!(ids(s.take_own("a", 9, 9)), None);
        assert_eq!(ids(s.take_own("a", 5, 5)), Some(vec![5]));
        assert!(s.own.is_empty());
        assert_eq!(s.own_messages, 0);
    }

    /// A notification of ours that comes before the writer has its batch back waits for
    /// that batch only: found once published, read from the store once given up on, and
    /// never waiting for batches begun later.
    #[tokio::test]
    async fn a_notification_of_ours_waits_for_the_batch_in_flight_only() {
        let (mut bus, shared) = Bus::new(Duration::from_secs(5));
        shared.state.lock().unwrap().listening = true;
        let room: Arc<str> = "r".into();
        bus.storing();
        let waiting = tokio::spawn({
            let (shared, room) = (shared.clone(), room.clone());
            async move { take_own(&shared, &room, 1, 1).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let (m, s, tag) = stored("r", 1, 7);
        bus.publish(StoredBatch::new(&[m], &[s], &[tag]));
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "not before its answers are held with it"
        );
        bus.hold_acks(&mut Vec::new());
        assert_eq!(ids(waiting.await.unwrap()), Some(vec![1]));

        // Given up on, and the writer goes on with the next batch: no waiting for that one.
        bus.storing();
        let waiting = tokio::spawn({
            let (shared, room) = (shared.clone(), room.clone());
            async move { take_own(&shared, &room, 2, 2).await }
        });
        tokio::task::yield_now().await;
        bus.not_stored();
        bus.storing();
        assert_eq!(ids(waiting.await.unwrap()), None);
    }

    /// An answer goes out when its message is delivered: not at commit, and not with
    /// another room's messages of the same batch. One whose batch is dropped undelivered,
    /// or kept too long, goes out then.
    #[tokio::test]
    async fn answers_wait_for_their_messages_delivery() {
        let (mut bus, shared) = Bus::new(Duration::from_secs(5));
        shared.state.lock().unwrap().listening = true;
        let batch = [stored("a", 1, 7), stored("b", 2, 7), stored("a", 3, 7)];
        let (mut answers, mut receivers) = (Vec::new(), Vec::new());
        for (_, s, _) in &batch {
            let (tx, rx) = tokio::sync::oneshot::channel();
            answers.push((
                tx,
                crate::store::Ack {
                    id: s.id,
                    millis: 0,
                },
            ));
            receivers.push(rx);
        }
        let (m, s, t): (Vec<_>, Vec<_>, Vec<_>) = batch.into_iter().fold(
            (Vec::new(), Vec::new(), Vec::new()),
            |(mut m, mut s, mut t), (a, b, c)| {
                m.push(a);
                s.push(b);
                t.push(c);
                (m, s, t)
            },
        );
        bus.storing();
        bus.publish(StoredBatch::new(&m, &s, &t));
        bus.hold_acks(&mut answers);
        assert!(answers.is_empty(), "the bus holds them");
        let answered = |rx: &mut tokio::sync::oneshot::Receiver<_>| rx.try_recv().is_ok();
        assert!(!receivers.iter_mut().any(answered), "none at commit");
        let (_, acks) = shared.state.lock().unwrap().take_own("b", 2, 2).unwrap();
        assert_eq!(acks.iter().map(|(_, a)| a.id).collect::<Vec<_>>(), [2]);
        send_acks(acks);
        assert!(answered(&mut receivers[1]));
        assert!(!answered(&mut receivers[0]) && !answered(&mut receivers[2]));
        // Kept past the deadline: answered anyway, still kept for delivery.
        let late = shared.state.lock().unwrap().overdue_acks(Duration::ZERO);
        assert_eq!(late.len(), 2);
        send_acks(late);
        assert!(answered(&mut receivers[0]) && answered(&mut receivers[2]));
        assert_eq!(
            ids(shared.state.lock().unwrap().take_own("a", 1, 3)),
            Some(vec![1, 3])
        );

        // A batch dropped undelivered (the subscription lost) is answered as it goes.
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let (m, s, t) = stored("a", 4, 7);
        bus.storing();
        bus.publish(StoredBatch::new(&[m], &[s], &[t]));
        bus.hold_acks(&mut vec![(tx, crate::store::Ack { id: 4, millis: 0 })]);
        assert!(rx.try_recv().is_err());
        shared.state.lock().unwrap().own.clear();
        assert_eq!(rx.try_recv().unwrap().unwrap().id, 4);
    }

    /// A store that refuses every read of history while `refusing`.
    struct RefusesReads(
        crate::store::memory::MemoryStore,
        std::sync::atomic::AtomicBool,
    );

    #[async_trait::async_trait]
    impl HistoryStore for RefusesReads {
        async fn append(
            &self,
            batch: &[NewMessage],
        ) -> Result<Vec<StoredMessage>, crate::store::StoreError> {
            self.0.append(batch).await
        }

        async fn page(
            &self,
            room: &str,
            page: crate::store::Page,
        ) -> Result<Vec<StoredMessage>, crate::store::StoreError> {
            if self.1.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(crate::store::StoreError::Unavailable("refused".into()));
            }
            self.0.page(room, page).await
        }

        async fn latest_id(&self, room: &str) -> Result<MessageId, crate::store::StoreError> {
            self.0.latest_id(room).await
        }
    }

    /// Another server's message, too long for its notification, must be read back, and the
    /// store refuses: delivery waits for it, our messages behind it too, but their answers go
    /// out once they have waited `--db-timeout`; then everything is delivered in order.
    #[tokio::test(start_paused = true)]
    async fn answers_do_not_wait_past_the_timeout_for_a_read_the_store_refuses() {
        use crate::mailbox::{ConnHandle, Mailbox};
        let within = Duration::from_secs(5);
        let (mut bus, shared) = Bus::new(within);
        shared.state.lock().unwrap().listening = true;
        let store = RefusesReads(crate::store::memory::MemoryStore::new(100), true.into());
        let theirs = store.0.append(&[stored("r", 0, 0).0]).await.unwrap()[0].clone();
        let rooms = Rooms::with_max_rooms(0);
        let member = ConnHandle {
            id: 3,
            mailbox: Arc::new(Mailbox::new(1 << 20)),
        };
        assert!(rooms.join(&"r".into(), &"m".into(), &member));
        // Ours, stored after theirs, kept with its answer.
        let (tx, mut answer) = tokio::sync::oneshot::channel();
        let (m, s, t) = stored("r", theirs.id + 1, 7);
        bus.storing();
        bus.publish(StoredBatch::new(&[m], std::slice::from_ref(&s), &[t]));
        bus.hold_acks(&mut vec![(
            tx,
            crate::store::Ack {
                id: s.id,
                millis: 0,
            },
        )]);
        let notified = vec![
            (
                Stored {
                    origin: "linechat-other".into(),
                    rooms: vec![("r".into(), theirs.id, theirs.id)],
                    carried: None,
                },
                false,
            ),
            (
                Stored {
                    origin: "linechat-us".into(),
                    rooms: vec![("r".into(), s.id, s.id)],
                    carried: None,
                },
                true,
            ),
        ];
        let stopping = CancellationToken::new();
        let store = Arc::new(store);
        let collecting = tokio::spawn({
            let (shared, store, stopping) = (shared.clone(), store.clone(), stopping.clone());
            async move { collect(&shared, &*store, &rooms, notified, &stopping).await }
        });
        tokio::time::sleep(within / 2).await;
        assert!(answer.try_recv().is_err(), "not before the timeout");
        tokio::time::sleep(within).await;
        assert_eq!(answer.try_recv().unwrap().unwrap().id, s.id);
        assert!(
            !collecting.is_finished(),
            "delivery still waits for the read"
        );
        store.1.store(false, std::sync::atomic::Ordering::SeqCst);
        let (messages, kept, senders, acks) = collecting.await.unwrap().unwrap();
        assert_eq!(
            kept.iter().map(|m| m.id).collect::<Vec<_>>(),
            [theirs.id, s.id]
        );
        assert_eq!(messages.len(), 2);
        assert_eq!(senders, [NOBODY, 7]);
        assert!(acks.is_empty(), "answered already");
    }
}
