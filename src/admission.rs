//! Admission: how many connections the server holds, in all and per client address, how
//! long a connection may stay without a name, and how fast one address may make new rooms.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::{Limit, Millis, TokenBucket};
use crate::mailbox::Mailbox;

/// Counts live connections against `--max-connections` and `--max-per-ip` (0: unlimited).
/// Loopback addresses are not counted per address unless asked: tests and the benchmark
/// open thousands of connections from 127.0.0.1.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    count_loopback: bool,
    state: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

/// A held place; giving it back happens on drop.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    /// Boxed: most tickets (loopback, or no per-address limit) have none, and every idle
    /// connection carries its ticket.
    ip: Option<Box<IpAddr>>,
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize, count_loopback: bool) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            count_loopback,
            state: Mutex::new(Counts::default()),
        })
    }

    /// Takes a place for a connection from `ip`, or says why there is none.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Ticket, Refusal> {
        let per_ip = self.max_per_ip > 0 && (self.count_loopback || !ip.is_loopback());
        let mut counts = self.state.lock().expect("admission lock");
        if self.max_total > 0 && counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        if per_ip && counts.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        counts.total += 1;
        if per_ip {
            *counts.per_ip.entry(ip).or_default() += 1;
        }
        Ok(Ticket {
            admission: self.clone(),
            ip: per_ip.then(|| Box::new(ip)),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut counts = self.admission.state.lock().expect("admission lock");
        counts.total -= 1;
        if let Some(ip) = self.ip.as_deref() {
            if let Some(n) = counts.per_ip.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    counts.per_ip.remove(ip);
                }
            }
        }
    }
}

/// Addresses whose new-room budgets are remembered at most: past it, only budgets still
/// refilling are kept, and a new address is not charged (the total `--max-rooms` still holds).
const NEW_ROOM_ADDRESSES: usize = 65_536;

/// New rooms per address (`--new-rooms-per-minute`): a token bucket per address, all of which
/// may come at once, refilled at that many a minute. Loopback addresses are not limited
/// unless asked, as for `--max-per-ip`. Its memory is bounded: a bucket that has refilled
/// (untouched for a minute) is forgotten, and at most [`NEW_ROOM_ADDRESSES`] are held.
pub struct NewRoomLimit {
    limit: Option<Limit>,
    count_loopback: bool,
    buckets: Mutex<HashMap<IpAddr, (TokenBucket, Millis)>>,
}

/// A bucket untouched this long has refilled: it holds nothing worth keeping.
const REFILLED_MS: u64 = 60_000;

impl NewRoomLimit {
    /// `per_minute` new rooms an address (0: unlimited).
    pub fn new(per_minute: u32, count_loopback: bool) -> NewRoomLimit {
        NewRoomLimit {
            limit: Limit::per_minute(per_minute),
            count_loopback,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// True if `ip` may make a new room now (and charges it).
    pub fn try_take(&self, ip: IpAddr, now: Millis) -> bool {
        let Some(limit) = &self.limit else {
            return true;
        };
        if ip.is_loopback() && !self.count_loopback {
            return true;
        }
        let mut buckets = self.buckets.lock().expect("new room limit lock");
        if buckets.len() >= NEW_ROOM_ADDRESSES && !buckets.contains_key(&ip) {
            buckets.retain(|_, (_, used)| now.since(*used) < REFILLED_MS);
            if buckets.len() >= NEW_ROOM_ADDRESSES {
                return true;
            }
        }
        let (bucket, used) = buckets
            .entry(ip)
            .or_insert_with(|| (TokenBucket::full(limit, now), now));
        *used = now;
        bucket.try_take(limit, now)
    }

    /// Addresses remembered (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }
}

/// The login timeout for every connection at once: one queue of deadlines, counted from
/// accept (a TLS connection joins it after its handshake, so it is placed by its deadline),
/// checked by one task, instead of a timer per connection. A connection out of time is marked in its mailbox, which wakes its
/// session.
pub struct LoginWatch {
    timeout: Duration,
    queue: Mutex<VecDeque<(Instant, Arc<Mailbox>)>>,
}

impl LoginWatch {
    /// A watch for `timeout` (zero: no limit, nothing is watched).
    pub fn new(timeout: Duration) -> Self {
        LoginWatch {
            timeout,
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Watches a connection accepted at `accepted`: its time to choose a name counts from
    /// then, a TLS handshake included.
    pub fn watch_from(&self, mailbox: &Arc<Mailbox>, accepted: Instant) {
        if !self.timeout.is_zero() {
            let deadline = accepted + self.timeout;
            let mut queue = self.queue.lock().expect("login watch lock");
            // Almost always at the back; a connection whose handshake took a while goes
            // before those accepted after it.
            let at = queue
                .iter()
                .rposition(|(other, _)| *other <= deadline)
                .map_or(0, |i| i + 1);
            queue.insert(at, (deadline, mailbox.clone()));
        }
    }

    /// Checks deadlines until the task is aborted; run as one task per server.
    pub async fn run(self: Arc<Self>) {
        if self.timeout.is_zero() {
            return;
        }
        let tick = (self.timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            self.expire(Instant::now());
        }
    }

    /// Marks every connection whose deadline has passed by `now`.
    fn expire(&self, now: Instant) {
        let mut queue = self.queue.lock().expect("login watch lock");
        while queue.front().is_some_and(|(deadline, _)| *deadline <= now) {
            if let Some((_, mailbox)) = queue.pop_front() {
                mailbox.expire_login();
            }
        }
        // Connections that chose a name need no watching: let them go now rather than at
        // their deadline, so thousands of new connections cost no memory here.
        queue.retain(|(_, mailbox)| !mailbox.is_named());
        if queue.capacity() > 64 && queue.capacity() > 4 * queue.len() {
            queue.shrink_to_fit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_watch_counts_from_accept_whenever_the_session_starts() {
        let watch = LoginWatch::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let plain = Arc::new(Mailbox::new(10));
        watch.watch_from(&plain, t0 + Duration::from_secs(3));
        // Accepted first, its handshake done later: it goes first all the same.
        let tls = Arc::new(Mailbox::new(10));
        watch.watch_from(&tls, t0);
        watch.expire(t0 + Duration::from_secs(10));
        assert!(tls.login_expired(), "10 s from its accept");
        assert!(!plain.login_expired());
        watch.expire(t0 + Duration::from_secs(13));
        assert!(plain.login_expired());
    }

    #[test]
    fn limits_and_release() {
        let a = Admission::new(3, 2, false);
        let remote: IpAddr = "10.0.0.1".parse().unwrap();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let t1 = a.admit(remote).unwrap();
        let _t2 = a.admit(remote).unwrap();
        assert_eq!(a.admit(remote).unwrap_err(), Refusal::PerIp);
        let _t3 = a.admit(local).unwrap(); // loopback is not counted per address
        assert_eq!(a.admit(local).unwrap_err(), Refusal::Total);
        drop(t1);
        let _t4 = a.admit(remote).unwrap();
        let unlimited = Admission::new(0, 0, true);
        let held: Vec<Ticket> = (0..100).map(|_| unlimited.admit(local).unwrap()).collect();
        assert_eq!(unlimited.state.lock().unwrap().total, held.len());
    }

    #[test]
    fn places_are_given_back() {
        let a = Admission::new(0, 2, true);
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let tickets: Vec<Ticket> = (0..2).map(|_| a.admit(local).unwrap()).collect();
        assert_eq!(a.admit(local).unwrap_err(), Refusal::PerIp);
        drop(tickets);
        let counts = a.state.lock().unwrap();
        assert_eq!(counts.total, 0);
        assert!(counts.per_ip.is_empty(), "no entry left for a gone address");
    }

    #[test]
    fn new_rooms_are_limited_per_address_and_refill() {
        let limit = NewRoomLimit::new(3, false);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Millis(1_000);
        assert!(
            (0..3).all(|_| limit.try_take(a, t0)),
            "a burst of 3 at once"
        );
        assert!(!limit.try_take(a, t0), "the fourth waits");
        assert!(limit.try_take(b, t0), "another address has its own budget");
        assert!(!limit.try_take(a, Millis(1_000 + 19_000)));
        assert!(
            limit.try_take(a, Millis(1_000 + 20_000)),
            "one back every 20 s"
        );
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            (0..10).all(|_| limit.try_take(local, t0)),
            "loopback is not limited"
        );
        assert_eq!(limit.remembered(), 2);
        let counted = NewRoomLimit::new(1, true);
        assert!(counted.try_take(local, t0));
        assert!(!counted.try_take(local, t0), "unless asked");
        let unlimited = NewRoomLimit::new(0, true);
        assert!((0..100).all(|_| unlimited.try_take(a, t0)));
    }

    #[test]
    fn the_new_room_budgets_held_are_bounded() {
        let limit = NewRoomLimit::new(1, false);
        let ip = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        let n = NEW_ROOM_ADDRESSES as u32;
        for i in 0..n {
            assert!(limit.try_take(ip(i), Millis(0)));
        }
        // Full of budgets still refilling: a new address is let through, not remembered.
        assert!(limit.try_take(ip(n), Millis(1)));
        assert!(limit.try_take(ip(n), Millis(1)));
        assert_eq!(limit.remembered(), NEW_ROOM_ADDRESSES);
        // A minute on they have refilled, and are forgotten to make room.
        assert!(limit.try_take(ip(n), Millis(REFILLED_MS)));
        assert!(!limit.try_take(ip(n), Millis(REFILLED_MS)));
        assert_eq!(limit.remembered(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_login_watch_expires_only_the_unnamed() {
        let watch = LoginWatch::new(Duration::from_secs(10));
        let (named, silent, late) = (
            Arc::new(Mailbox::new(10)),
            Arc::new(Mailbox::new(10)),
            Arc::new(Mailbox::new(10)),
        );
        watch.watch_from(&named, Instant::now());
        watch.watch_from(&silent, Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        watch.watch_from(&late, Instant::now());
        named.mark_named();
        watch.expire(Instant::now());
        assert_eq!(
            watch.queue.lock().unwrap().len(),
            2,
            "the named one is let go"
        );
        tokio::time::advance(Duration::from_secs(5)).await;
        watch.expire(Instant::now());
        assert!(silent.login_expired());
        assert!(!late.login_expired(), "its deadline is 5 s away");
        assert!(!named.login_expired());
        tokio::time::advance(Duration::from_secs(5)).await;
        watch.expire(Instant::now());
        assert!(late.login_expired());
        assert!(watch.queue.lock().unwrap().is_empty());
    }
}
