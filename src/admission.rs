//! Admission: how many connections the server holds, in all and per client address, and how
//! long a connection may stay without a name.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

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

/// The login timeout for every connection at once: one queue of deadlines (the timeout is
/// the same for all, so arrival order is deadline order) checked by one task, instead of a
/// timer per connection. A connection out of time is marked in its mailbox, which wakes its
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

    /// Starts the clock for a new connection.
    pub fn watch(&self, mailbox: &Arc<Mailbox>) {
        if !self.timeout.is_zero() {
            let deadline = Instant::now() + self.timeout;
            let mut queue = self.queue.lock().expect("login watch lock");
            queue.push_back((deadline, mailbox.clone()));
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

    #[tokio::test(start_paused = true)]
    async fn the_login_watch_expires_only_the_unnamed() {
        let watch = LoginWatch::new(Duration::from_secs(10));
        let (named, silent, late) = (
            Arc::new(Mailbox::new(10)),
            Arc::new(Mailbox::new(10)),
            Arc::new(Mailbox::new(10)),
        );
        watch.watch(&named);
        watch.watch(&silent);
        tokio::time::advance(Duration::from_secs(5)).await;
        watch.watch(&late);
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
