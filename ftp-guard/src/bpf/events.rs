//! The programs' events (a claim, a FIN, a RST), as read from their ring buffer.
use super::maps::{FlowTuple, tuple_of};

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
