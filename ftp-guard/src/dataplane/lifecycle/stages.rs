//! How one lease moves through its stages on what the driver observed: the transitions of
//! the lifecycle (see the parent module for the life they make), with the ports given
//! back and the totals counted on the way.
use std::{
    net::SocketAddrV4,
    time::{Duration, Instant},
};

use super::{
    CLOSE_GRACE, LOOK_CARRYING, LOOK_WAITING, LeaseSeen, Observed, Report, SWEEP_EVERY, Shared,
    Stage, Step, TENTATIVE_LINGER, Tracked,
};
use crate::{
    bpf::FlowState,
    dataplane::{DataBytes, Totals},
};

impl Shared {
    pub(super) fn release_nat_port(&mut self, t: &mut Tracked, now: Instant) {
        if !t.active && !t.nat_released {
            self.nat_ports
                .release(t.source.port(), t.target.into(), now);
            t.nat_released = true;
        }
    }

    /// A waiting (or withdrawn) lease was claimed by a connection from `peer_port`: its
    /// port is free for its peer again, the kernel carries the connection.
    pub(super) fn claimed(&mut self, t: &mut Tracked, peer_port: u16, step: &mut Step) {
        Totals::add(&self.totals.used, 1);
        step.reports.push(Report::Started {
            mode: t.mode(),
            from: SocketAddrV4::new(t.peer, peer_port),
            to: t.target,
            port: t.local.port(),
        });
        // A withdrawn lease's port was given back then (and may be held again by now).
        if t.stage == Stage::Waiting {
            self.ports.release(t.peer.into(), t.local.into());
        }
        t.stage = Stage::Carrying { peer_port };
    }

    /// Deletes the tentative flow `f` of a handshake that never completed under `t`.
    fn drop_tentative(t: &Tracked, f: FlowState, step: &mut Step) {
        step.remove_flows.push(f.reverse);
        step.remove_flows.push(t.pair());
        step.reports.push(Report::Unfinished {
            from: f.reverse.0,
            port: t.local.port(),
        });
    }

    /// Advances one lease; false when it is over, to be forgotten.
    pub(super) fn advance(
        &mut self,
        t: &mut Tracked,
        seen: &Observed,
        now: Instant,
        idle_timeout: Duration,
        step: &mut Step,
    ) -> bool {
        match t.stage {
            Stage::Waiting => self.waiting(t, seen, now, step),
            Stage::Withdrawn { since } => self.watch_withdrawn(t, since, seen, now, step),
            Stage::Carrying { peer_port } => {
                self.carrying(t, peer_port, seen, now, idle_timeout, step)
            }
        }
    }

    fn waiting(&mut self, t: &mut Tracked, seen: &Observed, now: Instant, step: &mut Step) -> bool {
        match seen.lease {
            // Claimed (its completed handshake deleted the lease) or gone otherwise: either
            // way its port is free for its peer again.
            LeaseSeen::Absent => {
                // The kernel marks the target's entry complete before it deletes the lease.
                match t.ours(seen.pair).filter(|f| !f.tentative) {
                    Some(f) => {
                        self.claimed(t, f.reverse.0.port(), step);
                        step.again = true;
                        return true;
                    }
                    // Removed by hand, or its connection over and taken over already: look
                    // once more (at the next sweep) before giving the lease up.
                    None if !t.vanished => t.vanished = true,
                    None => {
                        self.ports.release(t.peer.into(), t.local.into());
                        self.release_nat_port(t, now);
                        return false;
                    }
                }
            }
            LeaseSeen::Removed => return self.withdrawn(t, seen, now, step),
            LeaseSeen::InMap | LeaseSeen::NotLooked => {}
        }
        t.next_look = if t.vanished {
            now
        } else {
            t.deadline.min(now + LOOK_WAITING)
        };
        true
    }

    /// A withdrawn lease, watched until its linger is over.
    fn watch_withdrawn(
        &mut self,
        t: &mut Tracked,
        since: Instant,
        seen: &Observed,
        now: Instant,
        step: &mut Step,
    ) -> bool {
        match t.ours(seen.pair) {
            // The handshake completed after all (its ACK crossed the withdrawal).
            Some(f) if !f.tentative => {
                self.claimed(t, f.reverse.0.port(), step);
                step.again = true;
            }
            Some(f) => {
                Self::drop_tentative(t, f, step);
                t.next_look = now + SWEEP_EVERY;
            }
            None if now.duration_since(since) >= TENTATIVE_LINGER => {
                self.release_nat_port(t, now);
                return false;
            }
            None => t.next_look = since + TENTATIVE_LINGER,
        }
        true
    }

    /// A waiting lease was deleted now (revoked or expired), with any tentative flow on it.
    fn withdrawn(
        &mut self,
        t: &mut Tracked,
        seen: &Observed,
        now: Instant,
        step: &mut Step,
    ) -> bool {
        let counter = if t.revoked {
            &self.totals.revoked
        } else {
            &self.totals.expired
        };
        Totals::add(counter, 1);
        step.reports.push(Report::Unused {
            port: t.local.port(),
            revoked: t.revoked,
        });
        t.stage = Stage::Withdrawn { since: now };
        self.ports.release(t.peer.into(), t.local.into());
        match t.ours(seen.pair) {
            Some(f) if f.tentative => Self::drop_tentative(t, f, step),
            // Claimed between the look and the deletion.
            Some(f) => {
                self.claimed(t, f.reverse.0.port(), step);
                step.again = true;
                return true;
            }
            None => {}
        }
        t.next_look = now + TENTATIVE_LINGER;
        true
    }

    fn carrying(
        &mut self,
        t: &mut Tracked,
        peer_port: u16,
        seen: &Observed,
        now: Instant,
        idle_timeout: Duration,
        step: &mut Step,
    ) -> bool {
        let forward_key = (SocketAddrV4::new(t.peer, peer_port), t.local);
        let pair = t.pair();
        // The forward 4-tuple may belong to a newer connection by now (the kernel hands a
        // tuple over once its connection is over): only an entry paired with ours counts.
        let forward = seen.forward.filter(|f| f.reverse == pair);
        let reverse = seen.pair.filter(|f| f.reverse == forward_key);
        if forward.is_some() && reverse.is_some() {
            t.last_seen = (forward, reverse);
        }
        let (closed, idle) = match (forward, reverse) {
            (Some(a), Some(b)) => {
                let last = a.last_seen_ns.max(b.last_seen_ns);
                let idle_ns = seen.clock_ns.saturating_sub(last);
                (a.over_with(&b), idle_ns > idle_timeout.as_nanos() as u64)
            }
            // Gone from the kernel (removed by hand, or a previous process's leftovers).
            _ => (true, false),
        };
        if closed && !idle {
            // The pair's TIME_WAIT at the origin starts now: let it rest from here.
            self.release_nat_port(t, now);
            let since = *t.closed_since.get_or_insert(now);
            if now.duration_since(since) < CLOSE_GRACE {
                t.next_look = since + CLOSE_GRACE;
                return true;
            }
        } else if !idle {
            t.closed_since = None;
            // Reopened (its claiming SYN again after a reset): its NAT pair is in use again.
            if t.nat_released && !t.active {
                self.nat_ports.mark(t.source.port(), t.target.into());
                t.nat_released = false;
            }
            t.next_look = now + LOOK_CARRYING;
            return true;
        }
        if forward.is_some() {
            step.remove_flows.push(forward_key);
        }
        if reverse.is_some() {
            step.remove_flows.push(pair);
        }
        step.reports.push(self.finish(t, peer_port, idle));
        self.release_nat_port(t, now);
        false
    }

    /// Counts and reports a connection's end.
    fn finish(&self, t: &Tracked, peer_port: u16, idle: bool) -> Report {
        let (up, down) = t.up_down(t.last_seen);
        let bytes_to_origin = up.map_or(0, |f| f.bytes);
        let bytes_to_client = down.map_or(0, |f| f.bytes);
        Totals::add(&self.totals.bytes_to_origin, bytes_to_origin);
        Totals::add(&self.totals.bytes_to_client, bytes_to_client);
        let counter = if idle {
            &self.totals.flows_idle
        } else {
            &self.totals.flows_closed
        };
        Totals::add(counter, 1);
        let payload = |sent: Option<FlowState>, acks: Option<FlowState>| {
            sent.zip(acks).map_or(0, |(s, a)| s.payload_acked_by(&a))
        };
        Report::Done {
            mode: t.mode(),
            from: SocketAddrV4::new(t.peer, peer_port),
            to: t.target,
            port: t.local.port(),
            bytes_to_client,
            bytes_to_origin,
            payload: DataBytes {
                to_client: payload(down, up),
                to_origin: payload(up, down),
            },
            packets: up.map_or(0, |f| f.packets) + down.map_or(0, |f| f.packets),
            idle,
        }
    }
}
