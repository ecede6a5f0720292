//! Admission: how many connections the server holds, in all and per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
        let many: Vec<_> = (0..100).map(|_| unlimited.admit(local).unwrap()).collect();
        assert_eq!(many.len(), 100);
    }
}
