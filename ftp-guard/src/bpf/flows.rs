//! Typed access to the flow map: the NATed data connections the programs carry, one entry
//! per direction, as userspace reads, adopts and removes them.
use std::net::SocketAddrV4;

use ftp_guard_common::{FlowKey, FlowValue, MAX_DATA_RANGES, names};

use super::{
    Bpf, BpfError,
    maps::{FlowTuple, flow_key, found, ip_of, removed, tuple_of},
};

/// The state of one direction of a NATed data connection, as read from the flow map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    pub packets: u64,
    pub bytes: u64,
    pub last_seen_ns: u64,
    pub fin: bool,
    pub rst: bool,
    /// This direction has acknowledged the other direction's FIN.
    pub peer_fin_acked: bool,
    /// Its handshake has not completed: the lease it was started under is not claimed.
    pub tentative: bool,
    /// The other direction's key: which connection this entry belongs to (a later
    /// connection may take over a 4-tuple once this one is over).
    pub reverse: FlowTuple,
}

impl From<FlowValue> for FlowState {
    fn from(v: FlowValue) -> Self {
        FlowState {
            packets: v.packets,
            bytes: v.bytes,
            last_seen_ns: v.last_seen_ns,
            fin: v.flags & ftp_guard_common::FLOW_FIN != 0,
            rst: v.flags & ftp_guard_common::FLOW_RST != 0,
            peer_fin_acked: v.flags & ftp_guard_common::FLOW_PEER_FIN_ACKED != 0,
            tentative: v.flags & ftp_guard_common::FLOW_TENTATIVE != 0,
            reverse: tuple_of(&v.reverse),
        }
    }
}

impl FlowState {
    /// True when the connection of this entry and its `pair` is over, by the kernel's own
    /// rule (`connection_over`): a RST either way, or both FINs acknowledged.
    pub fn over_with(&self, pair: &FlowState) -> bool {
        let flags = |f: &FlowState| {
            (if f.rst { ftp_guard_common::FLOW_RST } else { 0 })
                | if f.peer_fin_acked {
                    ftp_guard_common::FLOW_PEER_FIN_ACKED
                } else {
                    0
                }
        };
        ftp_guard_common::connection_over(flags(self), flags(pair))
    }
}

impl Bpf {
    /// One direction of a flow, keyed as its packets arrive at the gateway.
    pub fn flow(&self, tuple: FlowTuple) -> Result<Option<FlowState>, BpfError> {
        Ok(found(names::FLOWS, self.flows.get(&flow_key(tuple), 0))?.map(FlowState::from))
    }

    /// One direction of a flow as the programs keep it (for tests and diagnostics).
    pub fn flow_value(&self, tuple: FlowTuple) -> Result<Option<FlowValue>, BpfError> {
        found(names::FLOWS, self.flows.get(&flow_key(tuple), 0))
    }

    /// Every connection in the flow map that claimed its lease (its handshake completed), by
    /// the claiming direction: (peer's address, gateway address it connected to, new
    /// source, new destination).
    pub fn claimed_flows(&self) -> Vec<(SocketAddrV4, SocketAddrV4, SocketAddrV4, SocketAddrV4)> {
        self.flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| {
                v.flags & ftp_guard_common::FLOW_CLAIMER != 0
                    && v.flags & ftp_guard_common::FLOW_TENTATIVE == 0
            })
            .map(|(k, v)| {
                (
                    SocketAddrV4::new(ip_of(k.src_addr_be), u16::from_be(k.src_port_be)),
                    SocketAddrV4::new(ip_of(k.dst_addr_be), u16::from_be(k.dst_port_be)),
                    SocketAddrV4::new(ip_of(v.new_src_addr_be), u16::from_be(v.new_src_port_be)),
                    SocketAddrV4::new(ip_of(v.new_dst_addr_be), u16::from_be(v.new_dst_port_be)),
                )
            })
            .collect()
    }

    /// Number of flow entries (walks the map: for status and tests).
    pub fn flow_count(&self) -> usize {
        self.flows.keys().filter(Result::is_ok).count()
    }

    pub fn remove_flow(&mut self, tuple: FlowTuple) -> Result<bool, BpfError> {
        removed(names::FLOWS, self.flows.remove(&flow_key(tuple)))
    }

    /// Removes every entry of a connection whose handshake never completed (a previous
    /// process's: their leases are gone with it); returns how many.
    pub fn remove_tentative_flows(&mut self) -> Result<usize, BpfError> {
        let keys: Vec<FlowKey> = self
            .flows
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.flags & ftp_guard_common::FLOW_TENTATIVE != 0)
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            removed(names::FLOWS, self.flows.remove(k))?;
        }
        Ok(keys.len())
    }

    /// Removes flow entries that no connection accounts for, e.g. left in pinned maps by
    /// a previous process: an entry whose pair is missing or paired with another entry,
    /// and both entries of a connection whose claimed address and port lie in no protected
    /// range (a service since removed from the config). Returns how many were removed.
    pub fn sweep_unclaimed_flows(&mut self) -> Result<usize, BpfError> {
        let config = self
            .filter_config
            .get(&0, 0)
            .map_err(|source| BpfError::Map {
                map: names::FILTER_CONFIG,
                source,
            })?;
        let ranges = &config.ranges[..(config.range_count as usize).min(MAX_DATA_RANGES)];
        let protected = |k: &FlowKey| {
            let port = u16::from_be(k.dst_port_be);
            ranges.iter().any(|r| {
                (r.addr_be == k.dst_addr_be
                    || (!r.nat_addr_be.is_unspecified() && r.nat_addr_be == k.dst_addr_be))
                    && r.contains(port)
            })
        };
        let entries: std::collections::HashMap<FlowKey, FlowValue> =
            self.flows.iter().filter_map(Result::ok).collect();
        let doomed: Vec<FlowKey> = entries
            .iter()
            .filter(|(key, value)| {
                let paired = entries
                    .get(&value.reverse)
                    .is_some_and(|pair| pair.reverse == **key);
                // The claiming direction's destination: the lease's address and port.
                let claimed = if value.flags & ftp_guard_common::FLOW_CLAIMER != 0 {
                    **key
                } else {
                    value.reverse
                };
                !paired || !protected(&claimed)
            })
            .map(|(key, _)| *key)
            .collect();
        let mut count = 0;
        for key in doomed {
            if removed(names::FLOWS, self.flows.remove(&key))? {
                count += 1;
            }
        }
        Ok(count)
    }
}
