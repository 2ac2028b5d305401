//! Typed access to the protection-policy maps: each service's ACL (LPM trie keyed by
//! service index and source block, with a packet counter per rule), the bans of source
//! addresses, and the control port's SYN buckets. The programs read the first two and
//! keep the third; see `ftp-guard-ebpf/src/policy.rs`.
//!
//! ACL semantics: the most specific block matching the source decides (longest prefix);
//! the same block in `allow` and `deny` is a deny; a service with any `allow` rule also
//! gets a catch-all deny (prefix length 0 within the service: the "not in the allow list"
//! rule), which every allow rule is more specific than.
use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use aya::maps::{PerCpuValues, lpm_trie::Key};
use ftp_guard_common::{
    ACL_ALLOW, ACL_DENY, ACL_SERVICE_BITS, AclKeyData, AclValue, BanValue, IpAddrBe, MAX_ACL_RULES,
    SynBucket, SynKey, names,
};

use super::{
    Bpf, BpfError,
    maps::{found, removed},
};
use crate::config::Cidr;

/// What an ACL rule does with the sources it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AclAction {
    Allow,
    Deny,
}

/// One ACL rule as the kernel holds it, with the packets it decided (summed over CPUs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclRuleCount {
    /// Index of the service (its position among the protected services).
    pub service: u32,
    /// The source block; `None` for the catch-all of a service with an allow list (the
    /// sources in none of its blocks).
    pub block: Option<Cidr>,
    pub action: AclAction,
    pub packets: u64,
}

/// One trie entry: (prefix length, service index and address) → action.
type AclEntry = (u32, AclKeyData, AclAction);

/// Bits of the 16-byte address a block of `cidr`'s family covers: IPv4 blocks are
/// v4-mapped (`::ffff:a.b.c.d`), so they start 96 bits in.
fn address_bits(cidr: &Cidr) -> u32 {
    match cidr.addr {
        IpAddr::V4(_) => ftp_guard_common::ACL_V4_MAPPED_BITS + u32::from(cidr.prefix),
        IpAddr::V6(_) => u32::from(cidr.prefix),
    }
}

fn entry(service: u32, block: Option<&Cidr>, action: AclAction) -> AclEntry {
    let data = AclKeyData {
        service_be: service.to_be(),
        addr_be: block.map_or(IpAddrBe::UNSPECIFIED, |b| b.addr.into()),
    };
    let prefix = ACL_SERVICE_BITS + block.map_or(0, address_bits);
    (prefix, data, action)
}

/// The inverse of [`entry`]'s key: the block (`None` for the catch-all).
fn block_of(prefix: u32, data: &AclKeyData) -> Option<Cidr> {
    let bits = prefix.checked_sub(ACL_SERVICE_BITS).filter(|b| *b > 0)?;
    let addr = data.addr_be.to_ip();
    let prefix = match addr {
        IpAddr::V4(_) => bits.checked_sub(ftp_guard_common::ACL_V4_MAPPED_BITS)?,
        IpAddr::V6(_) => bits,
    };
    Some(Cidr {
        addr,
        prefix: prefix as u8,
    })
}

fn action_of(value: &AclValue) -> AclAction {
    if value.action == ACL_ALLOW {
        AclAction::Allow
    } else {
        AclAction::Deny
    }
}

fn acl_error(source: aya::maps::MapError) -> BpfError {
    BpfError::Map {
        map: names::ACL,
        source,
    }
}

impl Bpf {
    /// Replaces service `service`'s ACL with `allow` and `deny` (semantics in the module
    /// comment). New and changed rules are written first, the catch-all last; then stale
    /// ones are removed, the catch-all first: a source allowed before and after is never
    /// dropped meanwhile. A rule kept as it was keeps its id and its packet count.
    pub fn set_acl(&mut self, service: u32, allow: &[Cidr], deny: &[Cidr]) -> Result<(), BpfError> {
        let mut wanted: Vec<AclEntry> = deny
            .iter()
            .map(|b| entry(service, Some(b), AclAction::Deny))
            .collect();
        let denied: HashSet<&Cidr> = deny.iter().collect();
        for block in allow.iter().filter(|b| !denied.contains(b)) {
            wanted.push(entry(service, Some(block), AclAction::Allow));
        }
        if !allow.is_empty() {
            wanted.push(entry(service, None, AclAction::Deny));
        }
        let current: HashMap<(u32, AclKeyData), AclValue> = self
            .acl_entries()?
            .into_iter()
            .map(|(k, v)| ((k.prefix_len(), k.data()), v))
            .collect();
        let mut used: HashSet<u32> = current.values().map(|v| v.rule_id).collect();
        let mut next_free = 0u32;
        for (prefix, data, action) in &wanted {
            let kept = current.get(&(*prefix, *data));
            if kept.is_some_and(|v| action_of(v) == *action) {
                continue;
            }
            while used.contains(&next_free) {
                next_free += 1;
            }
            if next_free >= MAX_ACL_RULES {
                return Err(BpfError::AclFull(MAX_ACL_RULES));
            }
            let rule_id = next_free;
            used.insert(rule_id);
            self.reset_acl_hits(rule_id)?;
            let value = AclValue {
                rule_id,
                action: match action {
                    AclAction::Allow => ACL_ALLOW,
                    AclAction::Deny => ACL_DENY,
                },
            };
            self.acl
                .insert(&Key::new(*prefix, *data), value, 0)
                .map_err(acl_error)?;
        }
        let wanted_keys: HashSet<(u32, AclKeyData)> =
            wanted.iter().map(|(p, d, _)| (*p, *d)).collect();
        let mut stale: Vec<Key<AclKeyData>> = current
            .keys()
            .filter(|(_, d)| u32::from_be(d.service_be) == service)
            .filter(|key| !wanted_keys.contains(key))
            .map(|(p, d)| Key::new(*p, *d))
            .collect();
        // The catch-all first (shortest prefix first).
        stale.sort_by_key(|k| k.prefix_len());
        for key in stale {
            removed(names::ACL, self.acl.remove(&key))?;
        }
        Ok(())
    }

    /// Removes the ACL rules of every service index from `first` on (services gone).
    pub fn clear_acl_from(&mut self, first: u32) -> Result<(), BpfError> {
        let mut gone: Vec<Key<AclKeyData>> = self
            .acl_entries()?
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| u32::from_be(k.data().service_be) >= first)
            .collect();
        gone.sort_by_key(|k| k.prefix_len());
        for key in gone {
            removed(names::ACL, self.acl.remove(&key))?;
        }
        Ok(())
    }

    /// Every ACL rule with the packets it decided, by service, then most specific first.
    pub fn acl_counts(&self) -> Result<Vec<AclRuleCount>, BpfError> {
        let mut out = Vec::new();
        for (key, value) in self.acl_entries()? {
            let per_cpu = self
                .acl_hits
                .get(&value.rule_id, 0)
                .map_err(|source| BpfError::Map {
                    map: names::ACL_HITS,
                    source,
                })?;
            out.push(AclRuleCount {
                service: u32::from_be(key.data().service_be),
                block: block_of(key.prefix_len(), &key.data()),
                action: action_of(&value),
                packets: per_cpu.iter().sum(),
            });
        }
        out.sort_by_key(|r| {
            (
                r.service,
                std::cmp::Reverse(r.block.map(|b| (b.prefix, b.addr))),
            )
        });
        Ok(out)
    }

    fn acl_entries(&self) -> Result<Vec<(Key<AclKeyData>, AclValue)>, BpfError> {
        self.acl
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(acl_error)
    }

    fn reset_acl_hits(&mut self, rule_id: u32) -> Result<(), BpfError> {
        let map_error = |source| BpfError::Map {
            map: names::ACL_HITS,
            source,
        };
        // As many zeros as the map has CPUs.
        let cpus = self.acl_hits.get(&rule_id, 0).map_err(map_error)?.len();
        let zeros = PerCpuValues::try_from(vec![0u64; cpus])
            .map_err(|e| map_error(aya::maps::MapError::IoError(e)))?;
        self.acl_hits.set(rule_id, zeros, 0).map_err(map_error)
    }

    /// Bans `addr` until `until_ns` (CLOCK_MONOTONIC, see [`super::monotonic_ns`]):
    /// its packets to every protected endpoint are dropped until then. Replaces an
    /// earlier ban of the same address.
    pub fn insert_ban(&mut self, addr: IpAddr, until_ns: u64, reason: u32) -> Result<(), BpfError> {
        let value = BanValue {
            expires_ns: until_ns,
            reason,
            _pad: 0,
        };
        self.bans
            .insert(IpAddrBe::from(addr), value, 0)
            .map_err(|source| BpfError::Map {
                map: names::BANS,
                source,
            })
    }

    /// Lifts the ban of `addr`; `Ok(false)` when there was none.
    pub fn remove_ban(&mut self, addr: IpAddr) -> Result<bool, BpfError> {
        removed(names::BANS, self.bans.remove(&IpAddrBe::from(addr)))
    }

    /// Every ban in the map, expired or not: (address, until ns, reason).
    pub fn bans(&self) -> Vec<(IpAddr, u64, u32)> {
        self.bans
            .iter()
            .filter_map(Result::ok)
            .map(|(addr, ban)| (addr.to_ip(), ban.expires_ns, ban.reason))
            .collect()
    }

    /// Removes the bans that ended at `now_ns` or before (the programs already ignore
    /// them); returns how many.
    pub fn sweep_bans(&mut self, now_ns: u64) -> Result<usize, BpfError> {
        let expired: Vec<IpAddr> = self
            .bans()
            .into_iter()
            .filter(|(_, until, _)| *until <= now_ns)
            .map(|(addr, ..)| addr)
            .collect();
        let mut swept = 0;
        for addr in expired {
            swept += usize::from(self.remove_ban(addr)?);
        }
        Ok(swept)
    }

    /// The control-port SYN bucket of `source` on service `service`: the time (ns) at
    /// which it is full again, if the source is tracked.
    pub fn syn_bucket(&self, service: u32, source: IpAddr) -> Result<Option<u64>, BpfError> {
        let key = SynKey {
            addr_be: source.into(),
            service,
        };
        Ok(found(names::SYN_BUCKETS, self.syn_buckets.get(&key, 0))?.map(|b| b.tat_ns))
    }

    /// Sets the SYN bucket of `source` on service `service` to be full again at `full_at_ns`
    /// (e.g. to give a source its burst back at once: any time in the past).
    pub fn set_syn_bucket(
        &mut self,
        service: u32,
        source: IpAddr,
        full_at_ns: u64,
    ) -> Result<(), BpfError> {
        let key = SynKey {
            addr_be: source.into(),
            service,
        };
        self.syn_buckets
            .insert(key, SynBucket { tat_ns: full_at_ns }, 0)
            .map_err(|source| BpfError::Map {
                map: names::SYN_BUCKETS,
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_keys_convert_back_to_their_blocks() {
        for text in [
            "192.0.2.0/24",
            "0.0.0.0/0",
            "198.51.100.7/32",
            "2001:db8::/32",
        ] {
            let block: Cidr = text.parse().unwrap();
            let (prefix, data, _) = entry(3, Some(&block), AclAction::Deny);
            assert_eq!(block_of(prefix, &data), Some(block), "{text}");
            assert_eq!(u32::from_be(data.service_be), 3);
        }
        let (prefix, data, _) = entry(3, None, AclAction::Deny);
        assert_eq!((prefix, block_of(prefix, &data)), (32, None));
        // An IPv4 /24 covers the service, the v4-mapped prefix and 24 bits.
        let (prefix, ..) = entry(0, Some(&"192.0.2.0/24".parse().unwrap()), AclAction::Allow);
        assert_eq!(prefix, 32 + 96 + 24);
    }
}
