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
//! A name keeps its [`KNOWN_PER_NAME`] most recent addresses, and the table its most recently
//! used pairs: an attacker cannot push its owner's out with logins of its own names from
//! thousands of addresses.
//!
//! Apart from guessing, password work itself is budgeted per address ([`Work`]): every hash
//! or check (right or wrong, `REGISTER` included) costs tens of milliseconds of a password
//! thread, so one address cannot keep them all busy; and registrations are budgeted per
//! address too, so that one address cannot squat names by the thousand.
//!
//! An IPv6 address counts by its /64, the block one subscriber usually gets.

use std::collections::HashMap;
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
/// Password hashes or checks an address may ask for at once, then one every [`WORK_EVERY`].
pub const WORK_BURST: u32 = 20;
pub const WORK_EVERY: Duration = Duration::from_secs(3);
/// Names an address may register at once, then one every [`REGISTER_EVERY`].
pub const REGISTER_BURST: u32 = 3;
pub const REGISTER_EVERY: Duration = Duration::from_secs(60);
/// Addresses remembered per name as known.
pub const KNOWN_PER_NAME: usize = 8;
/// Names, addresses and (name, address) pairs remembered, each.
const REMEMBERED: usize = 65_536;

/// The address a budget is kept for: an IPv6 address's /64 (an IPv4-mapped one as IPv4).
pub fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & (!0u128 << 64)).into()),
        },
    }
}

/// The guessing budgets of every name and address.
pub struct Guesses {
    by_name: Budgets<String>,
    by_address: Budgets<IpAddr>,
    /// Addresses that logged in to a name, with when they last did: exempt from the name's
    /// budget.
    known: Mutex<Known>,
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
            known: Mutex::new(Known::default()),
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
        let address = address.map(budget_key);
        if let Some(ip) = address {
            self.by_address.take(&ip, now)?;
        }
        let exempt =
            address.is_some_and(|ip| self.known.lock().expect("guesses lock").has(name, ip));
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
    pub fn right(&self, guess: Guess, now: Millis) {
        if let Some(ip) = guess.address {
            self.by_address.put_back(&ip);
            let mut known = self.known.lock().expect("guesses lock");
            known.insert(&guess.name, ip, now);
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

/// Addresses known per name: see the module's documentation.
#[derive(Default)]
struct Known {
    by_name: HashMap<String, Vec<(IpAddr, Millis)>>,
    pairs: usize,
}

impl Known {
    fn has(&self, name: &str, ip: IpAddr) -> bool {
        self.by_name
            .get(name)
            .is_some_and(|ips| ips.iter().any(|(known, _)| *known == ip))
    }

    fn insert(&mut self, name: &str, ip: IpAddr, now: Millis) {
        if let Some((_, used)) = self
            .by_name
            .get_mut(name)
            .and_then(|ips| ips.iter_mut().find(|(known, _)| *known == ip))
        {
            *used = now;
            return;
        }
        if self.pairs >= REMEMBERED {
            self.forget_least_recent();
        }
        let ips = self.by_name.entry(name.to_string()).or_default();
        if ips.len() >= KNOWN_PER_NAME {
            // The name's least recently used address makes room.
            let oldest = (0..ips.len()).min_by_key(|&i| ips[i].1).expect("not empty");
            ips.swap_remove(oldest);
            self.pairs -= 1;
        }
        ips.push((ip, now));
        self.pairs += 1;
    }

    /// Forgets the least recently used quarter of all pairs.
    fn forget_least_recent(&mut self) {
        let mut ages: Vec<Millis> = self.by_name.values().flatten().map(|(_, t)| *t).collect();
        if ages.is_empty() {
            return;
        }
        let quarter = ages.len() / 4;
        let (_, &mut cut, _) = ages.select_nth_unstable(quarter);
        self.by_name.retain(|_, ips| {
            ips.retain(|(_, used)| *used > cut);
            !ips.is_empty()
        });
        self.pairs = self.by_name.values().map(Vec::len).sum();
    }
}

/// Password work and registrations per address: see the module's documentation.
pub struct Work {
    hashing: Budgets<IpAddr>,
    registering: Budgets<IpAddr>,
    /// Loopback addresses count too (`--limit-loopback`).
    count_loopback: bool,
}

impl Work {
    pub fn new(count_loopback: bool) -> Work {
        Work {
            hashing: Budgets::new(Limit::every(WORK_EVERY, WORK_BURST)),
            registering: Budgets::new(Limit::every(REGISTER_EVERY, REGISTER_BURST)),
            count_loopback,
        }
    }

    fn counted(&self, address: Option<IpAddr>) -> Option<IpAddr> {
        address
            .filter(|ip| self.count_loopback || !ip.is_loopback())
            .map(budget_key)
    }

    /// Takes one password hash or check for `address`, or says how long to wait.
    pub fn hash(&self, address: Option<IpAddr>, now: Millis) -> Result<(), Duration> {
        match self.counted(address) {
            Some(ip) => self.hashing.take(&ip, now),
            None => Ok(()),
        }
    }

    /// Takes one registration for `address`, or says how long to wait.
    pub fn register(&self, address: Option<IpAddr>, now: Millis) -> Result<(), Duration> {
        match self.counted(address) {
            Some(ip) => self.registering.take(&ip, now),
            None => Ok(()),
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
            g.right(guess, t);
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
        g.right(g.begin("alice", ip("10.0.0.1"), t).unwrap(), t);
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

    #[test]
    fn an_ipv6_address_counts_by_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(budget_key(a), budget_key(b));
        assert_ne!(budget_key(a), budget_key(other));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(budget_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_name_keeps_its_most_recent_addresses_and_the_table_its_most_recent_pairs() {
        let mut known = Known::default();
        for n in 0..10u8 {
            known.insert("mallory", IpAddr::from([10, 0, 0, n]), Millis(u64::from(n)));
        }
        assert_eq!(known.pairs, KNOWN_PER_NAME);
        assert!(!known.has("mallory", IpAddr::from([10, 0, 0, 0])));
        assert!(known.has("mallory", IpAddr::from([10, 0, 0, 9])));
        known.insert("alice", IpAddr::from([10, 1, 1, 1]), Millis(100));
        known.forget_least_recent();
        assert!(known.has("alice", IpAddr::from([10, 1, 1, 1])));
        assert!(!known.has("mallory", IpAddr::from([10, 0, 0, 2])));
        assert_eq!(
            known.pairs,
            known.by_name.values().map(Vec::len).sum::<usize>()
        );
    }

    #[test]
    fn password_work_and_registrations_are_budgeted_per_address() {
        let work = Work::new(false);
        let t = Millis(0);
        let remote = ip("10.0.0.1");
        for _ in 0..WORK_BURST {
            assert!(work.hash(remote, t).is_ok());
        }
        assert_eq!(work.hash(remote, t), Err(WORK_EVERY));
        assert!(work.hash(ip("10.0.0.2"), t).is_ok());
        for _ in 0..REGISTER_BURST {
            assert!(work.register(remote, t).is_ok());
        }
        assert!(work.register(remote, t).is_err());
        let local = ip("127.0.0.1");
        assert!(
            (0..100).all(|_| work.hash(local, t).is_ok()),
            "loopback is not counted"
        );
        assert!(Work::new(true).register(local, t).is_ok());
    }
}
