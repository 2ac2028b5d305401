//! A whole control session under arbitrary interleavings of client lines, origin replies,
//! lease results and time passing. Invariants: no panic; every line sent to the origin is
//! one clean command line; no origin address (the origin's IP or any hidden address or
//! name, in any form the scrubber knows) reaches the client; nothing follows `Close`; only
//! leases the session asked for are revoked; the actions of one event and the
//! memory the session holds between events stay within bounds derived from its limits,
//! however long the input runs.
//!
//! Input: 2 header bytes (limits and active mode, see [`session_config`]), then events,
//! each `kind, len, bytes…`. In origin bytes, 0x01..=0x06 stand for the hidden addresses
//! and name written out, so real leaks get tried next to arbitrary bytes.
#![no_main]
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use ftp_guard::ftp::{
    scrub::Scrubber,
    session::{Action, Event, LeaseTicket, Session, SessionConfig, SessionTimeouts},
};
use libfuzzer_sys::fuzz_target;

const ORIGIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const ORIGIN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
const ORIGIN_NAME: &str = "ftp.internal.example";
const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);

/// Counts live heap bytes, so "bounded memory" is measured, not inferred.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn scrubber() -> Scrubber {
    Scrubber::new(&[IpAddr::V4(ORIGIN), IpAddr::V6(ORIGIN_V6)], PUBLIC).with_names(&[ORIGIN_NAME])
}

/// The one place that builds a `SessionConfig` (its fields change as limits are added).
/// Small, input-chosen limits, so that the bounds below bite early.
fn session_config(limits: u8, flags: u8) -> SessionConfig {
    SessionConfig {
        client_ip: IpAddr::V4(CLIENT),
        active_mode: flags & 1 == 1,
        public_ip: PUBLIC,
        origin_ip: IpAddr::V4(ORIGIN),
        scrubber: scrubber(),
        max_command_line: 16 + usize::from(limits & 0x3f),
        max_reply_line: 64 + usize::from(flags >> 2),
        max_reply_lines: 1 + usize::from(limits >> 6) * 4,
        max_pending: 1 + usize::from((flags >> 1) & 1) * 7,
        max_consecutive_errors: 1 + usize::from(limits & 0x7),
        max_reply_bytes: 128 + usize::from(flags) * 4,
        timeouts: SessionTimeouts {
            greeting: Duration::from_secs(10),
            login: Duration::from_secs(60),
            idle: Duration::from_secs(30),
        },
    }
}

/// Most heap bytes a session may hold between events: its line buffers, one reply being
/// assembled, and per queued command a reply (a local one or one held from the origin).
/// Generous constants (allocator rounding, queue growth by doubling), but independent of
/// how much input has been fed. On top, the line readers keep the capacity of the largest
/// single read (the driver's read buffer bounds that), see the check below.
fn memory_bound(config: &SessionConfig) -> usize {
    let reply = config.max_reply_line * config.max_reply_lines
        + 64 * config.max_reply_lines
        + config.max_reply_bytes;
    2 * (config.max_command_line + config.max_reply_line)
        + 2 * reply
        + 4 * (config.max_pending + 2) * (reply + 256)
        + 4096
}

fn origin_bytes(chunk: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(chunk.len() * 4);
    for b in chunk {
        match b {
            1 => bytes.extend_from_slice(b"198.51.100.2"),
            2 => bytes.extend_from_slice(b"198,51,100,2"),
            3 => bytes.extend_from_slice(b"2001:db8::2"),
            4 => bytes.extend_from_slice(b"2001:0DB8:0000:0000:0000:0000:0000:0002"),
            5 => bytes.extend_from_slice(b"::ffff:198.51.100.2"),
            6 => bytes.extend_from_slice(b"FTP.Internal.Example"),
            _ => bytes.push(*b),
        }
    }
    bytes
}

/// Lease requests the session made and the harness has not answered yet, oldest first.
#[derive(Default)]
struct Requests {
    passive: Vec<LeaseTicket>,
    active: Vec<LeaseTicket>,
}

fuzz_target!(|data: &[u8]| {
    let [limits, flags, input @ ..] = data else {
        return;
    };
    let mut rest = input;
    let oracle = scrubber();
    let config = session_config(*limits, *flags);
    let bound = memory_bound(&config);
    let max_command_line = config.max_command_line;
    let baseline = LIVE.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut now = start;
    let mut session = Session::new(config, start);
    let mut requests = Requests::default();
    // Tickets the session asked for and has not revoked yet.
    let mut issued = BTreeSet::new();
    let mut closed = false;
    let mut largest_read = 0;
    // Login failures reported and not answered with a ban yet.
    let mut failed_logins = 0usize;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        // Lines an event can complete: what bounds the actions it may cause.
        let lines = chunk.iter().filter(|&&b| b == b'\n').count() * 2 + 2;
        match kind % 13 {
            // The driver reads the client only while the session wants input
            // (backpressure at the pipelining bound).
            0 | 1 if session.wants_client_input() => {
                largest_read = largest_read.max(chunk.len());
                session.handle(now, Event::FromClient(chunk));
            }
            2 | 3 => {
                let bytes = origin_bytes(chunk);
                largest_read = largest_read.max(bytes.len());
                session.handle(now, Event::FromOrigin(&bytes));
            }
            // Answers in the driver's manner: only to what was asked.
            4 if !requests.passive.is_empty() => {
                let ticket = requests.passive.remove(0);
                session.handle(
                    now,
                    Event::LeaseInstalled {
                        ticket,
                        public_port: 40000 + u16::from(*len),
                    },
                );
            }
            4 if !requests.active.is_empty() => {
                let ticket = requests.active.remove(0);
                session.handle(
                    now,
                    Event::ActiveLeaseInstalled {
                        ticket,
                        origin_side: SocketAddr::from(([10, 9, 0, 1], 50000)),
                    },
                );
            }
            5 if !requests.passive.is_empty() || !requests.active.is_empty() => {
                let queue = if requests.passive.is_empty() {
                    &mut requests.active
                } else {
                    &mut requests.passive
                };
                let ticket = queue.remove(0);
                session.handle(
                    now,
                    if len % 2 == 0 {
                        Event::LeaseFailed {
                            ticket,
                            reason: "no port free".into(),
                        }
                    } else {
                        Event::LeaseLimit { ticket }
                    },
                );
            }
            // And out of turn, as a buggy or racing driver might.
            6 => session.handle(
                now,
                Event::LeaseInstalled {
                    ticket: LeaseTicket(u64::from(*len % 4)),
                    public_port: u16::from_le_bytes([*len, chunk.first().copied().unwrap_or(0)]),
                },
            ),
            7 => session.handle(
                now,
                Event::ActiveLeaseInstalled {
                    ticket: LeaseTicket(u64::from(*len % 4)),
                    origin_side: SocketAddr::from((ORIGIN, 20)),
                },
            ),
            8 => session.handle(
                now,
                Event::LeaseFailed {
                    ticket: LeaseTicket(u64::from(*len % 4)),
                    reason: String::from_utf8_lossy(chunk).into_owned(),
                },
            ),
            9 => match len % 2 {
                0 => session.origin_closed(),
                _ => session.client_closed(),
            },
            // Time passes: `len` seconds (past deadlines or not), or to the next deadline.
            10 => {
                now += Duration::from_secs(u64::from(*len));
                session.handle_timeout(now);
            }
            11 => {
                if let Some(due) = session.poll_timeout() {
                    assert!(due > start, "a deadline at the start");
                    now = now.max(due);
                    session.handle_timeout(now);
                }
            }
            // The driver's ban policy answers a login failure (or, out of turn, anything).
            12 if failed_logins > 0 || len % 2 == 1 => {
                failed_logins = failed_logins.saturating_sub(1);
                session.handle(now, Event::Banned);
            }
            _ => {}
        }
        let mut actions = 0;
        while let Some(action) = session.poll_action() {
            actions += 1;
            assert!(!closed, "action after Close: {action:?}");
            match action {
                Action::ToOrigin(line) => {
                    assert!(line.ends_with(b"\r\n"), "{line:?}");
                    let body = &line[..line.len() - 2];
                    assert!(body.len() <= max_command_line.max(64), "{line:?}");
                    assert!(
                        !body.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
                        "not one clean line: {line:?}"
                    );
                }
                Action::ToClient(bytes) => {
                    assert!(
                        !oracle.leaks(&bytes),
                        "leak: {:?}",
                        String::from_utf8_lossy(&bytes)
                    );
                }
                Action::InstallLease { ticket, origin } => {
                    assert_eq!(origin.ip(), IpAddr::V4(ORIGIN), "lease to a third party");
                    assert!(issued.insert(ticket), "{ticket:?} asked for twice");
                    requests.passive.push(ticket);
                }
                Action::InstallActiveLease { ticket, client } => {
                    assert_eq!(client.ip(), IpAddr::V4(CLIENT), "active lease to a third party");
                    assert!(issued.insert(ticket), "{ticket:?} asked for twice");
                    requests.active.push(ticket);
                }
                Action::RevokeLease { ticket } => {
                    assert!(issued.contains(&ticket), "{ticket:?} revoked, never asked for");
                }
                Action::LoginFailed { user } => {
                    assert!(user.as_ref().is_none_or(|u| u.len() <= 64), "{user:?}");
                    failed_logins += 1;
                }
                Action::TransferDone(transfer) => {
                    assert!(
                        transfer.reply_code == 0 || (100..600).contains(&transfer.reply_code),
                        "{transfer:?}"
                    );
                    assert!(transfer.started <= transfer.ended, "{transfer:?}");
                    assert!(
                        transfer.ticket.is_none_or(|t| issued.contains(&t)),
                        "a transfer on a lease never asked for: {transfer:?}"
                    );
                    assert!(
                        transfer.user.as_ref().is_none_or(|u| u.len() <= 64)
                            && transfer.path.as_ref().is_none_or(|p| p.len() <= max_command_line),
                        "{transfer:?}"
                    );
                }
                Action::Close => closed = true,
                _ => {}
            }
        }
        assert!(
            actions <= 4 * lines + 8,
            "{actions} actions from one event of {n} bytes"
        );
        assert_eq!(session.is_closed(), closed);
        let held = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
        let bound = bound + 4 * largest_read;
        assert!(held <= bound, "session holds {held} bytes (bound {bound})");
    }
});
