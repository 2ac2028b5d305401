//! Public data ports: handed out at random from a service's range, each held until the
//! lease that took it is completely over.
use std::{collections::HashSet, sync::Mutex};

use crate::config::PortRange;

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

    /// A free port chosen at random (so ports are not predictable), or `None` when all are
    /// taken.
    pub fn allocate(&self) -> Option<u16> {
        let mut in_use = self.in_use.lock().unwrap_or_else(|e| e.into_inner());
        let size = self.range.len();
        if in_use.len() >= size {
            return None;
        }
        let start = rand::random_range(0..size);
        // Scan from a random start: O(range) in the worst case, bounded by 64 Ki.
        (0..size)
            .map(|i| self.range.first + ((start + i) % size) as u16)
            .find(|port| !in_use.contains(port))
            .inspect(|port| {
                in_use.insert(*port);
            })
    }

    /// Marks `port` as taken (a connection adopted from a previous process).
    pub fn mark(&self, port: u16) {
        if self.range.contains(port) {
            self.in_use
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(port);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_every_port_once_then_none() {
        let pool = PortPool::new(PortRange {
            first: 40000,
            last: 40009,
        });
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
}
