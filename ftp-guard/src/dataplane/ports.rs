//! Data ports.
//! - [`PortPool`] (userspace relay): a port is a listening socket, so each is held by one
//!   lease until the lease is completely over.
//! - [`PeerPorts`] (kernel path): a lease is keyed by (peer, gateway address, port), so a
//!   port is held only against the peer whose lease waits on it: other peers may lease it
//!   at the same time, and the peer itself again as soon as its lease is claimed or gone.
//! - [`NatPorts`] (kernel path): the source port of a data connection towards its target,
//!   unique per (NAT port, target address and port) among leases and connections alive,
//!   and rested after use (the target's TIME_WAIT).
//!
//! Ports are handed out from a random start, so they are not predictable.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::PortRange;
use crate::sync::LockUnpoisoned as _;

/// The first port of `range`, scanning from a random start, for which `taken` is false.
fn scan(range: PortRange, mut taken: impl FnMut(u16) -> bool) -> Option<u16> {
    let size = range.len();
    let start = rand::random_range(0..size);
    // O(range) in the worst case, bounded by 64 Ki.
    (0..size)
        .map(|i| range.first + ((start + i) % size) as u16)
        .find(|port| !taken(*port))
}

pub struct PortPool {
    range: PortRange,
    in_use: Mutex<HashSet<u16>>,
}

impl PortPool {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            in_use: Mutex::new(HashSet::new()),
        }
    }

    /// A free port, or `None` when all are taken.
    pub fn allocate(&self) -> Option<u16> {
        let mut in_use = self.in_use.lock_unpoisoned();
        if in_use.len() >= self.range.len() {
            return None;
        }
        let port = scan(self.range, |p| in_use.contains(&p))?;
        in_use.insert(port);
        Some(port)
    }

    pub fn release(&self, port: u16) {
        self.in_use.lock_unpoisoned().remove(&port);
    }

    pub fn in_use(&self) -> usize {
        self.in_use.lock_unpoisoned().len()
    }

    pub fn capacity(&self) -> usize {
        self.range.len()
    }
}

/// Ports held by waiting leases, per (peer, gateway address). Owned by the kernel path's
/// lease table, under its lock.
pub struct PeerPorts {
    range: PortRange,
    held: HashMap<(IpAddr, IpAddr), HashSet<u16>>,
}

impl PeerPorts {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            held: HashMap::new(),
        }
    }

    /// A port of `local` that `peer` holds no waiting lease on, now held; `None` when the
    /// peer holds them all.
    pub fn allocate(&mut self, peer: IpAddr, local: IpAddr) -> Option<u16> {
        let ports = self.held.entry((peer, local)).or_default();
        if ports.len() >= self.range.len() {
            return None;
        }
        let port = scan(self.range, |p| ports.contains(&p))?;
        ports.insert(port);
        Some(port)
    }

    /// Marks `port` as held by `peer` (a lease adopted from a previous process).
    pub fn mark(&mut self, peer: IpAddr, local: SocketAddr) {
        if self.range.contains(local.port()) {
            self.held
                .entry((peer, local.ip()))
                .or_default()
                .insert(local.port());
        }
    }

    pub fn release(&mut self, peer: IpAddr, local: SocketAddr) {
        let key = (peer, local.ip());
        if let Some(ports) = self.held.get_mut(&key) {
            ports.remove(&local.port());
            if ports.is_empty() {
                self.held.remove(&key);
            }
        }
    }

    /// Ports held over all peers.
    pub fn held(&self) -> usize {
        self.held.values().map(HashSet::len).sum()
    }

    pub fn capacity(&self) -> usize {
        self.range.len()
    }
}

/// How long a (source port, target) pair rests after its connection: the target, which
/// usually closes first, keeps the connection in TIME_WAIT for 60 s (Linux), and a SYN
/// that meets it gets an ACK instead of a SYN-ACK — a data connection that never opens.
pub const NAT_PAIR_REST: Duration = Duration::from_secs(61);

/// Source ports towards targets, unique per (port, target) among connections alive, and
/// not reused for [`NAT_PAIR_REST`] after one ends while another port is free. Owned by
/// the kernel path's lease table, under its lock; told the time rather than reading it.
#[derive(Debug)]
pub struct NatPorts {
    range: PortRange,
    in_use: HashSet<(u16, SocketAddr)>,
    /// Pairs whose connection ended, with when it did.
    resting: HashMap<(u16, SocketAddr), Instant>,
    /// The same in the order they began to rest (an entry whose time no longer matches
    /// `resting` is stale: the pair was taken and released again since).
    rest_order: VecDeque<(Instant, (u16, SocketAddr))>,
}

impl NatPorts {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            in_use: HashSet::new(),
            resting: HashMap::new(),
            rest_order: VecDeque::new(),
        }
    }

    /// Ends the rests that are over by `now`.
    fn expire(&mut self, now: Instant) {
        while let Some((since, pair)) = self.rest_order.front().copied() {
            if now.duration_since(since) < NAT_PAIR_REST {
                break;
            }
            self.rest_order.pop_front();
            if self.resting.get(&pair) == Some(&since) {
                self.resting.remove(&pair);
            }
        }
    }

    /// A source port towards `target`: not in use, preferably not resting; else the one
    /// that has rested longest.
    pub fn allocate(&mut self, target: SocketAddr, now: Instant) -> Option<u16> {
        self.expire(now);
        let port = scan(self.range, |p| {
            self.in_use.contains(&(p, target)) || self.resting.contains_key(&(p, target))
        })
        .or_else(|| {
            // Every port rests or is in use towards this target: the longest-rested one.
            self.resting
                .iter()
                .filter(|((_, t), _)| *t == target)
                .min_by_key(|(_, since)| **since)
                .map(|((p, _), _)| *p)
        })?;
        self.resting.remove(&(port, target));
        self.in_use.insert((port, target));
        Some(port)
    }

    /// Marks (`port`, `target`) as in use (a connection adopted from a previous process,
    /// or one reopened).
    pub fn mark(&mut self, port: u16, target: SocketAddr) {
        self.resting.remove(&(port, target));
        self.in_use.insert((port, target));
    }

    /// The connection over (`port`, `target`) is over at `now`: the pair rests.
    pub fn release(&mut self, port: u16, target: SocketAddr, now: Instant) {
        if self.in_use.remove(&(port, target)) {
            self.resting.insert((port, target), now);
            self.rest_order.push_back((now, (port, target)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;

    const RANGE: PortRange = PortRange {
        first: 40000,
        last: 40009,
    };

    fn ip(last: u8) -> IpAddr {
        Ipv4Addr::new(203, 0, 113, last).into()
    }

    fn origin(port: u16) -> SocketAddr {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), port).into()
    }

    #[test]
    fn hands_out_every_port_once_then_none() {
        let pool = PortPool::new(RANGE);
        let mut got: Vec<u16> = (0..10).map(|_| pool.allocate().unwrap()).collect();
        assert_eq!(pool.allocate(), None);
        got.sort_unstable();
        assert_eq!(got, (40000..=40009).collect::<Vec<_>>());
        pool.release(40005);
        assert_eq!(pool.allocate(), Some(40005));
        assert_eq!(pool.in_use(), 10);
    }

    #[test]
    fn allocation_order_is_not_sequential() {
        let pool = PortPool::new(PortRange {
            first: 40000,
            last: 49999,
        });
        let ports: Vec<u16> = (0..20).map(|_| pool.allocate().unwrap()).collect();
        let sequential = ports.windows(2).filter(|w| w[1] == w[0] + 1).count();
        assert!(sequential < 5, "{ports:?}");
    }

    #[test]
    fn peers_share_ports_and_each_holds_at_most_the_range() {
        let mut ports = PeerPorts::new(RANGE);
        let public = ip(1);
        for peer in [ip(2), ip(3)] {
            let mut got: Vec<u16> = (0..10)
                .map(|_| ports.allocate(peer, public).unwrap())
                .collect();
            assert_eq!(ports.allocate(peer, public), None, "peer {peer}");
            got.sort_unstable();
            assert_eq!(got, (40000..=40009).collect::<Vec<_>>());
        }
        assert_eq!(ports.held(), 20);
        // Released by one peer: free for that peer again, the other peer is unaffected.
        ports.release(ip(2), SocketAddr::new(public, 40003));
        assert_eq!(ports.allocate(ip(3), public), None);
        assert_eq!(ports.allocate(ip(2), public), Some(40003));
        // Another gateway address is another set.
        assert!(ports.allocate(ip(2), ip(9)).is_some());
    }

    #[test]
    fn nat_ports_are_unique_per_target() {
        let mut nat = NatPorts::new(RANGE);
        let (a, b) = (origin(50000), origin(50001));
        let now = Instant::now();
        let mut got: Vec<u16> = (0..10).map(|_| nat.allocate(a, now).unwrap()).collect();
        assert_eq!(nat.allocate(a, now), None);
        got.sort_unstable();
        assert_eq!(got, (40000..=40009).collect::<Vec<_>>());
        assert!(nat.allocate(b, now).is_some());
        nat.release(40007, a, now);
        assert_eq!(nat.allocate(a, now), Some(40007));
    }

    #[test]
    fn nat_pairs_rest_after_their_connection() {
        let mut nat = NatPorts::new(RANGE);
        let target = origin(50000);
        let t0 = Instant::now();
        let first = nat.allocate(target, t0).unwrap();
        nat.release(first, target, t0);
        // While others are free, the pair that just ended is not handed out again.
        let next: Vec<u16> = (0..9).map(|_| nat.allocate(target, t0).unwrap()).collect();
        assert!(!next.contains(&first), "{first} reused at once: {next:?}");
        // Only the resting one is left: better than a refusal.
        assert_eq!(nat.allocate(target, t0), Some(first));
        assert_eq!(nat.allocate(target, t0), None);
        // Taken from its rest and released again, a pair rests its full time anew (the
        // earlier rest's record, expiring meanwhile, does not end the new one).
        let other = origin(50001);
        let p = nat.allocate(other, t0).unwrap();
        nat.release(p, other, t0);
        nat.mark(p, other);
        let t1 = t0 + Duration::from_secs(30);
        nat.release(p, other, t1);
        nat.expire(t0 + NAT_PAIR_REST);
        assert_eq!(
            nat.resting.get(&(p, other)),
            Some(&t1),
            "the stale record of the first rest ended the second one"
        );
        // After its rest, a pair is an ordinary free port again.
        nat.release(first, target, t0);
        assert_eq!(nat.allocate(target, t0 + NAT_PAIR_REST), Some(first));
    }
}
