//! The control-connection state machine under arbitrary event sequences: no panic, every
//! line sent to the origin is exactly one clean command line, and no origin address ever
//! reaches the client.
//!
//! Input: a sequence of events, each `kind, len, bytes…`. In origin bytes, 0x01 and 0x02
//! stand for the origin's address in dotted and comma form, so real leaks get tried.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use ftp_guard::ftp::{
    scrub::Scrubber,
    session::{Action, Event, Session, SessionConfig},
};
use libfuzzer_sys::fuzz_target;

const ORIGIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

fuzz_target!(|data: &[u8]| {
    let scrubber = Scrubber::new(&[IpAddr::V4(ORIGIN)], Ipv4Addr::new(203, 0, 113, 1));
    let oracle = Scrubber::new(&[IpAddr::V4(ORIGIN)], Ipv4Addr::new(203, 0, 113, 1));
    let mut session = Session::new(SessionConfig {
        public_ip: Ipv4Addr::new(203, 0, 113, 1),
        origin_ip: ORIGIN,
        scrubber,
        max_command_line: 64,
        max_reply_line: 256,
        max_reply_lines: 16,
        max_pending: 8,
    });
    let mut rest = data;
    while let [kind, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, next) = tail.split_at(n);
        rest = next;
        match kind % 7 {
            0 => session.handle(Event::FromClient(chunk)),
            1 => {
                let mut bytes = Vec::with_capacity(chunk.len() * 4);
                for b in chunk {
                    match b {
                        1 => bytes.extend_from_slice(b"198.51.100.2"),
                        2 => bytes.extend_from_slice(b"198,51,100,2"),
                        _ => bytes.push(*b),
                    }
                }
                session.handle(Event::FromOrigin(&bytes));
            }
            2 => session.handle(Event::LeaseInstalled {
                public_port: u16::from(*len) + 40000,
            }),
            3 => session.handle(Event::LeaseFailed {
                reason: "full".into(),
            }),
            4 => session.origin_closed(),
            5 => session.idle_timeout(),
            _ => session.client_closed(),
        }
        let mut closed = false;
        while let Some(action) = session.poll_action() {
            assert!(!closed, "action after Close: {action:?}");
            match action {
                Action::ToOrigin(line) => {
                    assert!(line.ends_with(b"\r\n"), "{line:?}");
                    let body = &line[..line.len() - 2];
                    assert!(
                        !body.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
                        "not one clean line: {line:?}"
                    );
                }
                Action::ToClient(bytes) => {
                    assert!(!oracle.leaks(&bytes), "leak: {:?}", String::from_utf8_lossy(&bytes));
                }
                Action::Close => closed = true,
                _ => {}
            }
        }
    }
});
