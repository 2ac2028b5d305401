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
    net::{Ipv4Addr, SocketAddrV4},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::config::PortRange;

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
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        if in_use.len() >= self.range.len() {
            return None;
        }
        let port = scan(self.range, |p| in_use.contains(&p))?;
        in_use.insert(port);
        Some(port)
    }

    pub fn release(&self, port: u16) {
        self.in_use
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&port);
    }

    pub fn in_use(&self) -> usize {
        self.in_use.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn capacity(&self) -> usize {
        self.range.len()
    }
}

/// Ports held by waiting leases, per (peer, gateway address).
pub struct PeerPorts {
    range: PortRange,
    held: Mutex<HashMap<(Ipv4Addr, Ipv4Addr), HashSet<u16>>>,
}

impl PeerPorts {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            held: Mutex::default(),
        }
    }

    /// A port of `local` that `peer` holds no waiting lease on, now held; `None` when the
    /// peer holds them all.
    pub fn allocate(&self, peer: Ipv4Addr, local: Ipv4Addr) -> Option<u16> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let ports = held.entry((peer, local)).or_default();
        if ports.len() >= self.range.len() {
            return None;
        }
        let port = scan(self.range, |p| ports.contains(&p))?;
        ports.insert(port);
        Some(port)
    }

    /// Marks `port` as held by `peer` (a lease adopted from a previous process).
    pub fn mark(&self, peer: Ipv4Addr, local: SocketAddrV4) {
        if self.range.contains(local.port()) {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            held.entry((peer, *local.ip()))
                .or_default()
                .insert(local.port());
        }
    }

    pub fn release(&self, peer: Ipv4Addr, local: SocketAddrV4) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ports) = held.get_mut(&(peer, *local.ip())) {
            ports.remove(&local.port());
            if ports.is_empty() {
                held.remove(&(peer, *local.ip()));
            }
        }
    }

    /// Ports held over all peers.
    pub fn held(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.values().map(HashSet::len).sum()
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
/// not reused for [`NAT_PAIR_REST`] after one ends while another port is free.
pub struct NatPorts {
    range: PortRange,
    state: Mutex<NatState>,
}

#[derive(Default)]
struct NatState {
    in_use: HashSet<(u16, SocketAddrV4)>,
    /// Pairs whose connection ended, with when it did.
    resting: HashMap<(u16, SocketAddrV4), Instant>,
    /// The same in the order they began to rest (an entry whose time no longer matches
    /// `resting` is stale: the pair was taken and released again since).
    rest_order: VecDeque<(Instant, (u16, SocketAddrV4))>,
}

impl NatState {
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
}

impl NatPorts {
    pub fn new(range: PortRange) -> Self {
        Self {
            range,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, NatState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A source port towards `target`: not in use, preferably not resting; else the one
    /// that has rested longest.
    pub fn allocate(&self, target: SocketAddrV4) -> Option<u16> {
        self.allocate_at(target, Instant::now())
    }

    fn allocate_at(&self, target: SocketAddrV4, now: Instant) -> Option<u16> {
        let mut st = self.state();
        st.expire(now);
        let port = scan(self.range, |p| {
            st.in_use.contains(&(p, target)) || st.resting.contains_key(&(p, target))
        })
        .or_else(|| {
            // Every port rests or is in use towards this target: the longest-rested one.
            st.resting
                .iter()
                .filter(|((_, t), _)| *t == target)
                .min_by_key(|(_, since)| **since)
                .map(|((p, _), _)| *p)
        })?;
        st.resting.remove(&(port, target));
        st.in_use.insert((port, target));
        Some(port)
    }

    /// Marks (`port`, `target`) as in use (a connection adopted from a previous process).
    pub fn mark(&self, port: u16, target: SocketAddrV4) {
        let mut st = self.state();
        st.resting.remove(&(port, target));
        st.in_use.insert((port, target));
    }

    /// The connection over (`port`, `target`) is over: the pair rests.
    pub fn release(&self, port: u16, target: SocketAddrV4) {
        self.release_at(port, target, Instant::now());
    }

    fn release_at(&self, port: u16, target: SocketAddrV4, now: Instant) {
        let mut st = self.state();
        if st.in_use.remove(&(port, target)) {
            st.resting.insert((port, target), now);
            st.rest_order.push_back((now, (port, target)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: PortRange = PortRange {
        first: 40000,
        last: 40009,
    };

    fn ip(last: u8) -> Ipv4Addr {
        Ipv4Addr::new(203, 0, 113, last)
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
        let ports = PeerPorts::new(RANGE);
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
        ports.release(ip(2), SocketAddrV4::new(public, 40003));
        assert_eq!(ports.allocate(ip(3), public), None);
        assert_eq!(ports.allocate(ip(2), public), Some(40003));
        // Another gateway address is another set.
        assert!(ports.allocate(ip(2), ip(9)).is_some());
    }

    #[test]
    fn nat_ports_are_unique_per_target() {
        let nat = NatPorts::new(RANGE);
        let a = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 50000);
        let b = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 50001);
        let mut got: Vec<u16> = (0..10).map(|_| nat.allocate(a).unwrap()).collect();
        assert_eq!(nat.allocate(a), None);
        got.sort_unstable();
        assert_eq!(got, (40000..=40009).collect::<Vec<_>>());
        assert!(nat.allocate(b).is_some());
        nat.release(40007, a);
        assert_eq!(nat.allocate(a), Some(40007));
    }

    #[test]
    fn nat_pairs_rest_after_their_connection() {
        let nat = NatPorts::new(RANGE);
        let target = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 50000);
        let t0 = Instant::now();
        let first = nat.allocate_at(target, t0).unwrap();
        nat.release_at(first, target, t0);
        // While others are free, the pair that just ended is not handed out again.
        let next: Vec<u16> = (0..9)
            .map(|_| nat.allocate_at(target, t0).unwrap())
            .collect();
        assert!(!next.contains(&first), "{first} reused at once: {next:?}");
        // Only the resting one is left: better than a refusal.
        assert_eq!(nat.allocate_at(target, t0), Some(first));
        assert_eq!(nat.allocate_at(target, t0), None);
        // Taken from its rest and released again, a pair rests its full time anew (the
        // earlier rest's record, expiring meanwhile, does not end the new one).
        let other = SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 50001);
        let p = nat.allocate_at(other, t0).unwrap();
        nat.release_at(p, other, t0);
        nat.mark(p, other);
        let t1 = t0 + Duration::from_secs(30);
        nat.release_at(p, other, t1);
        nat.state().expire(t0 + NAT_PAIR_REST);
        assert_eq!(
            nat.state().resting.get(&(p, other)),
            Some(&t1),
            "the stale record of the first rest ended the second one"
        );
        // After its rest, a pair is an ordinary free port again.
        nat.release_at(first, target, t0);
        assert_eq!(nat.allocate_at(target, t0 + NAT_PAIR_REST), Some(first));
    }
}
