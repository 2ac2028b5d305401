//! A map whose entries each carry a deadline, with a cap on its size: what expires is
//! swept in deadline order, and an insert into a full map evicts the entry due soonest.
//! Both the failure counters and the ban list are one (a flood of addresses can churn
//! them but never grow them past their cap).
use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    time::Instant,
};

#[derive(Debug)]
pub(super) struct Expiring<K, V> {
    cap: usize,
    entries: HashMap<K, (V, Instant, u64)>,
    /// (deadline, insertion number) → key: the order of expiry and eviction.
    by_deadline: BTreeMap<(Instant, u64), K>,
    next_seq: u64,
}

impl<K: Clone + Eq + Hash, V> Expiring<K, V> {
    pub(super) fn new(cap: usize) -> Self {
        Expiring {
            cap: cap.max(1),
            entries: HashMap::new(),
            by_deadline: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(super) fn get(&self, key: &K) -> Option<(&V, Instant)> {
        self.entries.get(key).map(|(v, due, _)| (v, *due))
    }

    pub(super) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|(v, _, _)| v)
    }

    /// Puts `value` under `key` until `due`; gives back what had to go for it: the entry
    /// due soonest when the map was full.
    pub(super) fn insert(&mut self, key: K, value: V, due: Instant) -> Option<(K, V)> {
        self.remove(&key);
        let evicted = if self.entries.len() >= self.cap {
            self.pop_first()
        } else {
            None
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_deadline.insert((due, seq), key.clone());
        self.entries.insert(key, (value, due, seq));
        evicted
    }

    pub(super) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, due, seq) = self.entries.remove(key)?;
        self.by_deadline.remove(&(due, seq));
        Some(value)
    }

    /// Removes and gives back every entry due at or before `now`.
    pub(super) fn sweep(&mut self, now: Instant) -> Vec<(K, V)> {
        let mut gone = Vec::new();
        while self
            .by_deadline
            .first_key_value()
            .is_some_and(|((due, _), _)| *due <= now)
        {
            gone.extend(self.pop_first());
        }
        gone
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V, Instant)> {
        self.entries.iter().map(|(k, (v, due, _))| (k, v, *due))
    }

    fn pop_first(&mut self) -> Option<(K, V)> {
        let (_, key) = self.by_deadline.pop_first()?;
        let (value, _, _) = self.entries.remove(&key)?;
        Some((key, value))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sweeps_in_deadline_order_and_evicts_the_soonest_when_full() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut map = Expiring::new(3);
        assert_eq!(map.insert("a", 1, at(30)), None);
        assert_eq!(map.insert("b", 2, at(10)), None);
        assert_eq!(map.insert("c", 3, at(20)), None);
        // Full: "b" (due soonest) makes room; replacing "a" evicts nothing.
        assert_eq!(map.insert("d", 4, at(40)), Some(("b", 2)));
        assert_eq!(map.insert("a", 5, at(50)), None);
        assert_eq!(map.len(), 3);
        assert_eq!(map.sweep(at(19)), vec![]);
        assert_eq!(map.sweep(at(40)), vec![("c", 3), ("d", 4)]);
        assert_eq!(map.get(&"a"), Some((&5, at(50))));
        assert_eq!(map.remove(&"a"), Some(5));
        assert_eq!(map.sweep(at(100)), vec![]);
        assert_eq!(map.len(), 0);
    }
}
