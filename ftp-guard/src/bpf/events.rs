//! The programs' events (a claim, a FIN, a RST): decoding them, reading their ring buffer
//! as it fills, and routing each to the dataplanes that handle it.
use std::{
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use tracing::warn;

use super::maps::{FlowTuple, tuple_of};
use crate::sync::LockUnpoisoned as _;

/// What happened to a flow, as the programs report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A connection's handshake completed and claimed its lease; `key` is the claiming
    /// direction.
    Claimed,
    /// The first FIN one way.
    Fin,
    /// The first RST one way.
    Rst,
}

/// One event from the programs' ring buffer: `key` is the direction the packet came in,
/// `reverse` the other one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub key: FlowTuple,
    pub reverse: FlowTuple,
}

/// Decodes one ring-buffer item; `None` for anything that is not a known event.
pub fn parse_event(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < std::mem::size_of::<ftp_guard_common::FlowEvent>() {
        return None;
    }
    // SAFETY: long enough (checked), and FlowEvent is plain integers: any bits are valid.
    let e: ftp_guard_common::FlowEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = match e.kind {
        ftp_guard_common::EVENT_CLAIMED => EventKind::Claimed,
        ftp_guard_common::EVENT_FIN => EventKind::Fin,
        ftp_guard_common::EVENT_RST => EventKind::Rst,
        _ => return None,
    };
    Some(Event {
        kind,
        key: tuple_of(&e.key),
        reverse: tuple_of(&e.reverse),
    })
}

/// Whoever takes the programs' events: each kernel dataplane settles those about its own
/// leases and ignores the rest.
pub trait EventHandler: Send + Sync {
    fn on_event(&self, event: &Event);
}

/// Hands each event from the programs to the handlers alive (each takes its own).
#[derive(Default)]
pub struct EventRouter {
    handlers: Mutex<Vec<Weak<dyn EventHandler>>>,
}

impl EventRouter {
    /// Adds a handler for as long as it lives (the router holds it weakly).
    pub fn add<H: EventHandler + 'static>(&self, handler: &Arc<H>) {
        let handler: Weak<dyn EventHandler> = Arc::downgrade(handler) as _;
        let mut handlers = self.handlers.lock_unpoisoned();
        handlers.retain(|w| w.strong_count() > 0);
        handlers.push(handler);
    }

    fn route(&self, event: &Event) {
        // Called outside the lock: handlers take locks of their own.
        let handlers: Vec<Arc<dyn EventHandler>> = self
            .handlers
            .lock_unpoisoned()
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for handler in handlers {
            handler.on_event(event);
        }
    }
}

/// Reads the programs' event ring buffer as it fills, until the process ends.
pub(super) async fn read_events(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    router: Arc<EventRouter>,
) {
    use tokio::io::{Interest, unix::AsyncFd};
    // SAFETY: the ring's map fd is owned by `ring`, which the AsyncFd owns from here on:
    // it stays open and the same until the AsyncFd is dropped.
    let mut ring = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e, "cannot watch the kernel's event ring: leases settle at the sweeper's pace");
            return;
        }
    };
    // FINs and RSTs do not wake the reader (see the programs' `notify`): drained with
    // the next claim, or by this tick.
    let mut tick = tokio::time::interval(EVENT_DRAIN_EVERY);
    loop {
        let woken = tokio::select! {
            ready = ring.readable_mut() => match ready {
                Ok(mut guard) => {
                    drain_events(guard.get_inner_mut(), &router);
                    guard.clear_ready();
                    true
                }
                Err(e) => {
                    warn!(error = %e, "the kernel's event ring failed: leases settle at the sweeper's pace");
                    return;
                }
            },
            _ = tick.tick() => false,
        };
        if !woken {
            drain_events(ring.get_mut(), &router);
        }
    }
}

/// How often the event reader drains events that did not wake it.
const EVENT_DRAIN_EVERY: Duration = Duration::from_millis(100);

fn drain_events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>, router: &EventRouter) {
    while let Some(item) = ring.next() {
        let event = parse_event(&item);
        drop(item);
        if let Some(event) = event {
            router.route(&event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use ftp_guard_common::{EVENT_CLAIMED, EVENT_FIN, EVENT_RST, FlowEvent};

    use super::*;
    use crate::bpf::maps::flow_key;

    const CLAIM: FlowTuple = (
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 10), 50_000),
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 1), 40_001),
    );
    const CLAIM_REVERSE: FlowTuple = (
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 2), 30_000),
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 40_001),
    );

    /// A ring-buffer item as the programs write it.
    fn item(kind: u32, key: FlowTuple, reverse: FlowTuple) -> Vec<u8> {
        let event = FlowEvent {
            kind,
            key: flow_key(key),
            reverse: flow_key(reverse),
        };
        // SAFETY: FlowEvent is #[repr(C)] integers without padding: every byte is initialised.
        unsafe {
            std::slice::from_raw_parts(
                (&event as *const FlowEvent).cast::<u8>(),
                std::mem::size_of::<FlowEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn ring_items_decode_to_events() {
        for (kind, expected) in [
            (EVENT_CLAIMED, Some(EventKind::Claimed)),
            (EVENT_FIN, Some(EventKind::Fin)),
            (EVENT_RST, Some(EventKind::Rst)),
            (0, None),
            (99, None),
        ] {
            let expected = expected.map(|kind| Event {
                kind,
                key: CLAIM,
                reverse: CLAIM_REVERSE,
            });
            assert_eq!(
                parse_event(&item(kind, CLAIM, CLAIM_REVERSE)),
                expected,
                "kind {kind}"
            );
        }
        let whole = item(EVENT_FIN, CLAIM, CLAIM_REVERSE);
        assert_eq!(parse_event(&whole[..whole.len() - 1]), None);
    }

    /// Records the events it is handed.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Event>>);

    impl EventHandler for Recorder {
        fn on_event(&self, event: &Event) {
            self.0.lock_unpoisoned().push(*event);
        }
    }

    #[test]
    fn every_handler_alive_gets_each_event() {
        let claimed = Event {
            kind: EventKind::Claimed,
            key: CLAIM,
            reverse: CLAIM_REVERSE,
        };
        let fin = Event {
            kind: EventKind::Fin,
            ..claimed
        };
        let router = EventRouter::default();
        let staying = Arc::new(Recorder::default());
        let leaving = Arc::new(Recorder::default());
        router.add(&staying);
        router.add(&leaving);
        router.route(&claimed);
        let leaving_saw = std::mem::take(&mut *leaving.0.lock_unpoisoned());
        drop(leaving);
        router.route(&fin);
        assert_eq!(leaving_saw, vec![claimed]);
        assert_eq!(*staying.0.lock_unpoisoned(), vec![claimed, fin]);
    }
}
