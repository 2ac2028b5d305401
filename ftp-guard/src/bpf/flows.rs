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
    /// This direction's initial sequence number (of its SYN or SYN-ACK).
    pub isn: u32,
    /// The latest acknowledgment number sent this way, once one was.
    pub last_ack: Option<u32>,
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
            isn: v.claim_seq,
            last_ack: (v.flags & ftp_guard_common::FLOW_ACKED != 0).then_some(v.last_ack),
        }
    }
}

impl FlowState {
    /// The payload bytes this direction sent that `pair` (the other direction) has
    /// acknowledged: from the sequence numbers, so exact whatever the headers were. They
    /// wrap every 4 GiB; the IP byte count (40 to 80 bytes of headers a packet, 52 with
    /// timestamps) tells how often.
    pub fn payload_acked_by(&self, pair: &FlowState) -> u64 {
        const WRAP: u64 = 1 << 32;
        let Some(ack) = pair.last_ack else {
            return 0;
        };
        // The SYN and an acknowledged FIN take a sequence number each.
        let controls = 1 + u32::from(pair.peer_fin_acked);
        let modulo = u64::from(ack.wrapping_sub(self.isn).wrapping_sub(controls));
        let estimate = self.bytes.saturating_sub(52 * self.packets);
        let wraps = (estimate.saturating_sub(modulo) + WRAP / 2) / WRAP;
        let payload = modulo + wraps * WRAP;
        // More than was sent at all (an acknowledgment of nothing yet): none.
        if payload > self.bytes.saturating_add(WRAP / 2) {
            0
        } else {
            payload
        }
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    /// One direction as read from the map: its ISN, packets and IP bytes, the latest
    /// acknowledgment it sent, and whether that covered the other direction's FIN.
    fn entry(isn: u32, packets: u64, bytes: u64, ack: Option<u32>, fin_acked: bool) -> FlowState {
        let flag = |on: bool, flag: u32| if on { flag } else { 0 };
        FlowState::from(FlowValue {
            claim_seq: isn,
            packets,
            bytes,
            last_ack: ack.unwrap_or(0),
            flags: flag(ack.is_some(), ftp_guard_common::FLOW_ACKED)
                | flag(fin_acked, ftp_guard_common::FLOW_PEER_FIN_ACKED),
            ..FlowValue::default()
        })
    }

    /// (sent: isn, packets, IP bytes; acknowledged up to; FIN acknowledged) → payload.
    #[test]
    fn payload_is_what_the_other_side_acknowledged() {
        let gib = 1u64 << 30;
        let cases: [(u32, u64, u64, Option<u32>, bool, u64); 7] = [
            // 1000 bytes in 1 segment plus SYN and FIN, the FIN acknowledged.
            (100, 3, 1000 + 3 * 52, Some(100 + 1 + 1000 + 1), true, 1000),
            // The same, the FIN not acknowledged yet (RST), the data was.
            (100, 3, 1000 + 3 * 52, Some(100 + 1 + 1000), false, 1000),
            // Across the sequence space's end.
            (u32::MAX - 10, 2, 500 + 2 * 52, Some(489 + 1), false, 500),
            // Nothing acknowledged yet, or no acknowledgment at all.
            (100, 1, 52, Some(101), false, 0),
            (100, 1, 52, None, false, 0),
            // 5 GiB: the sequence numbers wrapped once (1448-byte segments).
            (
                7,
                5 * gib / 1448 + 2,
                5 * gib + (5 * gib / 1448 + 2) * 52,
                Some(7u32.wrapping_add((5 * gib) as u32).wrapping_add(2)),
                true,
                5 * gib,
            ),
            // An acknowledgment behind the ISN (nothing sent): none, not 4 GiB.
            (100, 1, 52, Some(50), false, 0),
        ];
        for (isn, packets, bytes, ack, fin_acked, want) in cases {
            let sent = entry(isn, packets, bytes, None, false);
            let acks = entry(0, 1, 52, ack, fin_acked);
            assert_eq!(sent.payload_acked_by(&acks), want, "isn {isn} ack {ack:?}");
        }
    }
}
