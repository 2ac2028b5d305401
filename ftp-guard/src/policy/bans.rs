//! Login-failure bans (what operators do with fail2ban reading the origin's log): the
//! proxy reports each refused login ([`Bans::record_failure`]); `ban_after_failures` of
//! them from one client address within `ban_window_secs` of the first ban the address for
//! `ban_secs`. A ban is refused at admission (`421`, before any origin connection) by
//! every service of the gateway: the list is one, keyed by the canonical address, and
//! records the service whose policy banned it and why.
//!
//! The kernel learns of bans through a [`BanSink`] (the BPF ban map, dropping the
//! address's packets in XDP); userspace refusal does not depend on it, so bans also work
//! without the kernel path. The default sink, [`ListSink`], only keeps a list.
//!
//! Memory: the failure counters and the ban list are each capped ([`MAX_TRACKED`],
//! [`MAX_BANS`]); full, the entry due soonest makes room. Expired entries are swept on
//! every call, in deadline order.
use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::expiring::Expiring;
use crate::{config::Service, sync::LockUnpoisoned as _};

/// Client addresses (per service) whose login failures are counted at once.
pub const MAX_TRACKED: usize = 65_536;
/// Addresses banned at once.
pub const MAX_BANS: usize = 65_536;

/// A service's ban policy; [`BanPolicy::of`] is `None` when its bans are off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BanPolicy {
    pub after_failures: u32,
    pub window: Duration,
    pub duration: Duration,
}

impl BanPolicy {
    pub fn of(service: &Service) -> Option<BanPolicy> {
        (service.ban_after_failures > 0).then(|| BanPolicy {
            after_failures: service.ban_after_failures,
            window: Duration::from_secs(service.ban_window_secs),
            duration: Duration::from_secs(service.ban_secs),
        })
    }
}

/// Why an address is banned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum BanReason {
    LoginFailures,
}

impl BanReason {
    /// The `reason` label of `bans_total` and the reason `ftp-guard status` shows.
    pub fn name(self) -> &'static str {
        match self {
            BanReason::LoginFailures => "login_failures",
        }
    }

    /// The reason code the kernel's ban map stores.
    pub fn code(self) -> u32 {
        match self {
            BanReason::LoginFailures => 1,
        }
    }
}

impl fmt::Display for BanReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where bans go besides the userspace list: the kernel's ban map. Called with the
/// tracker's lock held, in the order bans are made and lifted (expired, evicted, unbanned).
pub trait BanSink: Send {
    fn ban(&mut self, address: IpAddr, until: Instant, reason: BanReason);
    fn unban(&mut self, address: IpAddr);
}

/// A sink that keeps what it was told (the default: no kernel map). Clones share the list.
#[derive(Clone, Debug, Default)]
pub struct ListSink(Arc<Mutex<BTreeMap<IpAddr, (Instant, BanReason)>>>);

impl ListSink {
    /// The bans as the sink holds them now.
    pub fn entries(&self) -> Vec<(IpAddr, Instant, BanReason)> {
        let list = self.0.lock_unpoisoned();
        list.iter().map(|(a, (u, r))| (*a, *u, *r)).collect()
    }
}

impl BanSink for ListSink {
    fn ban(&mut self, address: IpAddr, until: Instant, reason: BanReason) {
        self.0.lock_unpoisoned().insert(address, (until, reason));
    }
    fn unban(&mut self, address: IpAddr) {
        self.0.lock_unpoisoned().remove(&address);
    }
}

/// `until` on the clock the kernel's ban map compares with (`bpf_ktime_get_ns`,
/// CLOCK_MONOTONIC), for a sink writing it.
pub fn ktime_ns(until: Instant) -> u64 {
    let left = until.saturating_duration_since(Instant::now());
    monotonic_ns().saturating_add(left.as_nanos().min(u64::MAX as u128) as u64)
}

/// CLOCK_MONOTONIC now, in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64) * 1_000_000_000 + now.tv_nsec as u64
}

/// One ban as status shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ban {
    pub address: IpAddr,
    /// The service whose policy banned it.
    pub service: String,
    pub until: Instant,
    pub reason: BanReason,
}

/// The failures of one address at one service, counted from the first.
#[derive(Debug)]
struct Failures {
    count: u32,
}

struct Tracker {
    /// (address, service) → failures, until the window of the first one ends.
    failures: Expiring<(IpAddr, String), Failures>,
    /// address → (service, reason), until the ban ends.
    bans: Expiring<IpAddr, (String, BanReason)>,
    sink: Box<dyn BanSink>,
    /// Bans made since start, by reason.
    totals: BTreeMap<BanReason, u64>,
}

/// The gateway's ban list and failure counters; shared by its services.
pub struct Bans {
    tracker: Mutex<Tracker>,
}

impl fmt::Debug for Bans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Bans")
    }
}

impl Default for Bans {
    fn default() -> Self {
        Bans::new(Box::new(ListSink::default()))
    }
}

impl Bans {
    /// Bans mirrored into `sink` (the kernel's ban map, where the kernel path runs).
    pub fn new(sink: Box<dyn BanSink>) -> Self {
        Bans::with_caps(sink, MAX_TRACKED, MAX_BANS)
    }

    pub fn with_caps(sink: Box<dyn BanSink>, max_tracked: usize, max_bans: usize) -> Self {
        Bans {
            tracker: Mutex::new(Tracker {
                failures: Expiring::new(max_tracked),
                bans: Expiring::new(max_bans),
                sink,
                totals: BTreeMap::new(),
            }),
        }
    }

    /// Mirrors bans into `sink` from now on, starting with those in force.
    pub fn set_sink(&self, mut sink: Box<dyn BanSink>) {
        let mut t = self.tracker.lock_unpoisoned();
        for (address, (_, reason), until) in t.bans.iter() {
            sink.ban(*address, until, *reason);
        }
        t.sink = sink;
    }

    /// A login from `client` failed at `service` at `now`: the ban it is under, a new one
    /// when this failure reaches the policy's count within its window, else `None`.
    pub fn record_failure(
        &self,
        client: IpAddr,
        service: &str,
        policy: &BanPolicy,
        now: Instant,
    ) -> Option<Ban> {
        let client = client.to_canonical();
        let mut t = self.swept(now);
        if let Some(ban) = t.ban_of(client) {
            return Some(ban);
        }
        let key = (client, service.to_owned());
        let count = match t.failures.get_mut(&key) {
            Some(failures) => {
                failures.count += 1;
                failures.count
            }
            None => {
                t.failures
                    .insert(key.clone(), Failures { count: 1 }, now + policy.window);
                1
            }
        };
        if count < policy.after_failures {
            return None;
        }
        t.failures.remove(&key);
        let reason = BanReason::LoginFailures;
        let until = now + policy.duration;
        *t.totals.entry(reason).or_default() += 1;
        if let Some((evicted, _)) = t.bans.insert(client, (key.1, reason), until) {
            t.sink.unban(evicted);
        }
        t.sink.ban(client, until, reason);
        t.ban_of(client)
    }

    /// The ban `client` is under at `now`, if any.
    pub fn banned(&self, client: IpAddr, now: Instant) -> Option<Ban> {
        self.swept(now).ban_of(client.to_canonical())
    }

    /// Lifts `client`'s ban and forgets its failures; whether it was banned.
    pub fn unban(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        let mut t = self.tracker.lock_unpoisoned();
        let counted: Vec<_> = t
            .failures
            .iter()
            .filter(|((a, _), _, _)| *a == client)
            .map(|(k, _, _)| k.clone())
            .collect();
        for key in counted {
            t.failures.remove(&key);
        }
        let was = t.bans.remove(&client).is_some();
        if was {
            t.sink.unban(client);
        }
        was
    }

    /// Every ban in force at `now`, by address.
    pub fn list(&self, now: Instant) -> Vec<Ban> {
        let t = self.swept(now);
        let mut bans: Vec<Ban> = t
            .bans
            .iter()
            .map(|(a, _, _)| *a)
            .filter_map(|a| t.ban_of(a))
            .collect();
        bans.sort_by_key(|b| b.address);
        bans
    }

    /// Bans made since start, by reason (every reason listed).
    pub fn totals(&self) -> Vec<(BanReason, u64)> {
        let t = self.tracker.lock_unpoisoned();
        [BanReason::LoginFailures]
            .into_iter()
            .map(|r| (r, t.totals.get(&r).copied().unwrap_or(0)))
            .collect()
    }

    /// Addresses whose failures are being counted now (for tests of the cap).
    pub fn tracked(&self) -> usize {
        self.tracker.lock_unpoisoned().failures.len()
    }

    /// The tracker, with what expired by `now` removed (bans also from the sink).
    fn swept(&self, now: Instant) -> std::sync::MutexGuard<'_, Tracker> {
        let mut t = self.tracker.lock_unpoisoned();
        t.failures.sweep(now);
        for (address, _) in t.bans.sweep(now) {
            t.sink.unban(address);
        }
        t
    }
}

impl Tracker {
    fn ban_of(&self, address: IpAddr) -> Option<Ban> {
        let ((service, reason), until) = self.bans.get(&address)?;
        Some(Ban {
            address,
            service: service.clone(),
            until,
            reason: *reason,
        })
    }
}

/// A list with `addresses` banned at `now` for `duration` (for tests of its readers).
#[cfg(test)]
pub(crate) fn banned_for_tests(addresses: &[&str], duration: Duration, now: Instant) -> Arc<Bans> {
    let bans = Arc::new(Bans::default());
    let policy = BanPolicy {
        after_failures: 1,
        window: duration,
        duration,
    };
    for address in addresses {
        bans.record_failure(address.parse().unwrap(), "ftp", &policy, now);
    }
    bans
}

#[cfg(test)]
mod tests;
