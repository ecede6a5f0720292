//! Password guessing limits: a budget of wrong passwords per name and per address.
//!
//! Every password check takes a token from the name's bucket and from the address's; a
//! right password gives both back, so only wrong ones count. Once a bucket is empty, checks
//! are refused (`TOO_MANY_GUESSES`, with the wait) until it refills. The name's budget stops a
//! guesser with many addresses; the address's stops one address guessing at many names.
//!
//! An attacker could spend a name's budget to lock its owner out. So an address that has
//! logged in to a name before (since the server started) is exempt from that name's budget:
//! its owner, coming back from where they usually do, is held only by its own address's.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::budget::{Limit, Millis, TokenBucket};

/// Wrong passwords a name may get at once, then one every [`NAME_EVERY`].
pub const NAME_BURST: u32 = 10;
pub const NAME_EVERY: Duration = Duration::from_secs(30);
/// Wrong passwords an address may give at once, then one every [`ADDRESS_EVERY`].
pub const ADDRESS_BURST: u32 = 20;
pub const ADDRESS_EVERY: Duration = Duration::from_secs(10);
/// Names, addresses and (name, address) pairs remembered, each.
const REMEMBERED: usize = 65_536;

/// The guessing budgets of every name and address.
pub struct Guesses {
    by_name: Budgets<String>,
    by_address: Budgets<IpAddr>,
    /// (name, address) pairs that logged in: exempt from the name's budget.
    known: Mutex<HashSet<(String, IpAddr)>>,
}

/// A password check allowed by [`Guesses::begin`]: say how it went with
/// [`Guesses::right`] or [`Guesses::wrong`].
#[derive(Debug)]
#[must_use]
pub struct Guess {
    name: String,
    address: Option<IpAddr>,
    /// The name's token was taken (not an exempt address).
    name_charged: bool,
}

impl Default for Guesses {
    fn default() -> Self {
        Guesses::new(
            Limit::every(NAME_EVERY, NAME_BURST),
            Limit::every(ADDRESS_EVERY, ADDRESS_BURST),
        )
    }
}

impl Guesses {
    pub fn new(name: Limit, address: Limit) -> Guesses {
        Guesses {
            by_name: Budgets::new(name),
            by_address: Budgets::new(address),
            known: Mutex::new(HashSet::new()),
        }
    }

    /// Takes a guess for `name` (its lower-case key) from `address`, or says how long to
    /// wait before the next one.
    pub fn begin(
        &self,
        name: &str,
        address: Option<IpAddr>,
        now: Millis,
    ) -> Result<Guess, Duration> {
        if let Some(ip) = address {
            self.by_address.take(&ip, now)?;
        }
        let exempt = address.is_some_and(|ip| {
            self.known
                .lock()
                .expect("guesses lock")
                .contains(&(name.to_string(), ip))
        });
        if !exempt {
            if let Err(wait) = self.by_name.take(&name.to_string(), now) {
                if let Some(ip) = address {
                    self.by_address.put_back(&ip);
                }
                return Err(wait);
            }
        }
        Ok(Guess {
            name: name.to_string(),
            address,
            name_charged: !exempt,
        })
    }

    /// The password was right: the guess is given back, and the address becomes known for
    /// the name.
    pub fn right(&self, guess: Guess) {
        if let Some(ip) = guess.address {
            self.by_address.put_back(&ip);
            let mut known = self.known.lock().expect("guesses lock");
            if known.len() >= REMEMBERED {
                known.clear();
            }
            known.insert((guess.name.clone(), ip));
        }
        if guess.name_charged {
            self.by_name.put_back(&guess.name);
        }
    }

    /// The password was wrong: the guess stays spent.
    pub fn wrong(&self, guess: Guess) {
        drop(guess);
    }

    /// The check could not be made (busy, store down): nothing was learnt, nothing is spent.
    pub fn undone(&self, guess: Guess) {
        if let Some(ip) = guess.address {
            self.by_address.put_back(&ip);
        }
        if guess.name_charged {
            self.by_name.put_back(&guess.name);
        }
    }
}

/// Token buckets by key, at most [`REMEMBERED`] of them.
struct Budgets<K> {
    limit: Limit,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq + Clone> Budgets<K> {
    fn new(limit: Limit) -> Self {
        Budgets {
            limit,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn take(&self, key: &K, now: Millis) -> Result<(), Duration> {
        let limit = &self.limit;
        let mut buckets = self.buckets.lock().expect("guesses lock");
        if buckets.len() >= REMEMBERED && !buckets.contains_key(key) {
            // Full buckets remember nothing: forget them. If none is, refuse rather than
            // forget a spent budget (that would let a guesser reset it by filling the table).
            buckets.retain(|_, bucket| !bucket.is_full(limit, now));
            if buckets.len() >= REMEMBERED {
                return Err(Duration::from_millis(60_000));
            }
        }
        let bucket = buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::full(limit, now));
        if bucket.try_take(limit, now) {
            Ok(())
        } else {
            Err(bucket.until_next(limit, now))
        }
    }

    fn put_back(&self, key: &K) {
        if let Some(bucket) = self.buckets.lock().expect("guesses lock").get_mut(key) {
            bucket.put_back(&self.limit);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    fn small() -> Guesses {
        Guesses::new(
            Limit::every(Duration::from_secs(30), 3),
            Limit::every(Duration::from_secs(10), 5),
        )
    }

    #[test]
    fn wrong_passwords_spend_the_names_budget_then_wait() {
        let g = small();
        let t = Millis(1_000);
        for n in 0..3 {
            let guess = g
                .begin("alice", ip(&format!("10.0.0.{n}")), t)
                .expect("within the budget");
            g.wrong(guess);
        }
        let wait = g.begin("alice", ip("10.0.0.9"), t).unwrap_err();
        assert_eq!(wait, Duration::from_secs(30), "from any address");
        assert!(
            g.begin("bob", ip("10.0.0.9"), t).is_ok(),
            "other names are not held"
        );
        let later = Millis(1_000 + 30_000);
        assert!(
            g.begin("alice", ip("10.0.0.9"), later).is_ok(),
            "one back after 30 s"
        );
    }

    #[test]
    fn right_passwords_cost_nothing() {
        let g = small();
        let t = Millis(0);
        for _ in 0..20 {
            let guess = g.begin("alice", ip("10.0.0.1"), t).unwrap();
            g.right(guess);
        }
        for _ in 0..20 {
            let guess = g.begin("alice", ip("10.0.0.1"), t).unwrap();
            g.undone(guess);
        }
    }

    #[test]
    fn one_address_guessing_at_many_names_is_held_by_its_own_budget() {
        let g = small();
        let t = Millis(0);
        for n in 0..5 {
            let guess = g.begin(&format!("user{n}"), ip("10.0.0.1"), t).unwrap();
            g.wrong(guess);
        }
        assert_eq!(
            g.begin("user9", ip("10.0.0.1"), t).unwrap_err(),
            Duration::from_secs(10)
        );
        assert!(g.begin("user9", ip("10.0.0.2"), t).is_ok());
    }

    #[test]
    fn a_refusal_by_the_name_does_not_spend_the_address() {
        let g = small();
        let t = Millis(0);
        for _ in 0..3 {
            g.wrong(g.begin("alice", ip("10.0.0.1"), t).unwrap());
        }
        for _ in 0..10 {
            assert!(g.begin("alice", ip("10.0.0.2"), t).is_err());
        }
        assert!(
            g.begin("bob", ip("10.0.0.2"), t).is_ok(),
            "10.0.0.2 was refused, not charged"
        );
    }

    #[test]
    fn the_owner_from_a_known_address_is_not_locked_out() {
        let g = small();
        let t = Millis(0);
        g.right(g.begin("alice", ip("10.0.0.1"), t).unwrap());
        for n in 0..3 {
            g.wrong(g.begin("alice", ip(&format!("10.9.9.{n}")), t).unwrap());
        }
        assert!(
            g.begin("alice", ip("10.9.9.9"), t).is_err(),
            "the guesser waits"
        );
        let owner = g.begin("alice", ip("10.0.0.1"), t);
        assert!(owner.is_ok(), "alice's own address still may");
    }
}
