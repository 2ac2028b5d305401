//! Tests of the session state machine: tables of client and origin bytes and the actions
//! they cause.
use std::{sync::OnceLock, time::Duration};

use super::*;

const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const ORIGIN: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);

const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);

const TIMEOUTS: SessionTimeouts = SessionTimeouts {
    greeting: Duration::from_secs(10),
    login: Duration::from_secs(60),
    idle: Duration::from_secs(30),
};

/// When every test session starts; events come at this instant unless a test says.
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn start(config: SessionConfig) -> Session {
    Session::new(config, t0())
}

/// The session's first lease request, its second…
fn ticket(n: u64) -> LeaseTicket {
    LeaseTicket(n)
}

fn session() -> Session {
    session_with(true)
}

fn config() -> SessionConfig {
    SessionConfig {
        client_ip: IpAddr::V4(CLIENT),
        active_mode: true,
        public_ip: PUBLIC,
        origin_ip: IpAddr::V4(ORIGIN),
        scrubber: Scrubber::new(&[IpAddr::V4(ORIGIN)], PUBLIC),
        max_command_line: 500,
        max_reply_line: 8192,
        max_reply_lines: 100,
        max_pending: 8,
        max_consecutive_errors: 20,
        max_reply_bytes: 1024,
        timeouts: TIMEOUTS,
    }
}

fn session_with(active_mode: bool) -> Session {
    start(SessionConfig {
        active_mode,
        ..config()
    })
}

/// The answer to the session's `n`th lease request: installed on `public_port`.
fn installed(n: u64, public_port: u16) -> Event<'static> {
    Event::LeaseInstalled {
        ticket: ticket(n),
        public_port,
    }
}

/// The session's `n`th lease request, for the client's data port 51201 (active mode).
fn install_active(n: u64) -> Action {
    Action::InstallActiveLease {
        ticket: ticket(n),
        client: SocketAddr::from((CLIENT, 51201)),
    }
}

/// The answer to the session's `n`th lease request (active mode): the origin is to
/// connect to the gateway's 198.51.100.1 at `port`.
fn active_installed(n: u64, port: u16) -> Event<'static> {
    Event::ActiveLeaseInstalled {
        ticket: ticket(n),
        origin_side: SocketAddr::from(([198, 51, 100, 1], port)),
    }
}

/// A session past its greeting that holds its first lease (public port 40001).
fn with_lease() -> Session {
    let mut s = greeted();
    client(&mut s, b"PASV\r\n");
    origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
    s.handle(t0(), installed(1, 40001));
    drain(&mut s);
    s
}

/// A session past its greeting.
fn greeted() -> Session {
    let mut s = session();
    s.handle(t0(), Event::FromOrigin(b"220 ready\r\n"));
    assert_eq!(drain(&mut s), vec![to_client("220 ready\r\n")]);
    s
}

fn drain(s: &mut Session) -> Vec<Action> {
    std::iter::from_fn(|| s.poll_action()).collect()
}

fn to_client(text: &str) -> Action {
    Action::ToClient(text.as_bytes().to_vec())
}

fn to_origin(text: &str) -> Action {
    Action::ToOrigin(text.as_bytes().to_vec())
}

fn client(s: &mut Session, text: &[u8]) -> Vec<Action> {
    s.handle(t0(), Event::FromClient(text));
    drain(s)
}

fn origin(s: &mut Session, text: &[u8]) -> Vec<Action> {
    s.handle(t0(), Event::FromOrigin(text));
    drain(s)
}

/// Only what went to the client, as text.
fn client_text(actions: &[Action]) -> String {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::ToClient(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

#[test]
fn greeting_is_scrubbed() {
    let mut s = session();
    let out = origin(
        &mut s,
        b"220-Welcome to 198.51.100.2\r\n220 ProFTPD [198.51.100.2]\r\n",
    );
    assert_eq!(
        client_text(&out),
        "220-Welcome to 203.0.113.1\r\n220 ProFTPD [203.0.113.1]\r\n"
    );
}

#[test]
fn pasv_and_epsv_are_rewritten_to_the_public_port() {
    // (client command, origin's 227, reply the client must get)
    let cases: &[(&[u8], &[u8], &str)] = &[
        (
            b"PASV\r\n",
            b"227 Entering Passive Mode (198,51,100,2,117,48).\r\n",
            "227 Entering Passive Mode (203,0,113,1,156,65).\r\n",
        ),
        (
            b"pasv\r\n",
            b"227 Entering Passive Mode (0,0,0,0,117,48)\r\n",
            "227 Entering Passive Mode (203,0,113,1,156,65).\r\n",
        ),
        (
            b"EPSV\r\n",
            b"227 =10,0,0,5,117,48\r\n",
            "229 Entering Extended Passive Mode (|||40001|)\r\n",
        ),
        (
            b"EPSV 1\r\n",
            b"227 Entering Passive Mode 198,51,100,2,117,48\r\n",
            "229 Entering Extended Passive Mode (|||40001|)\r\n",
        ),
    ];
    for (command, reply, want) in cases {
        let mut s = greeted();
        assert_eq!(client(&mut s, command), vec![to_origin("PASV\r\n")]);
        let out = origin(&mut s, reply);
        // The origin's data port with the origin's control address, whatever the 227 said.
        assert_eq!(
            out,
            vec![Action::InstallLease {
                ticket: ticket(1),
                origin: SocketAddr::from((ORIGIN, 30000))
            }],
            "{}",
            String::from_utf8_lossy(reply)
        );
        s.handle(t0(), installed(1, 40001));
        assert_eq!(client_text(&drain(&mut s)), *want);
    }
}

#[test]
fn replies_keep_command_order_around_local_answers() {
    let mut s = greeted();
    let out = client(&mut s, b"NOOP\r\nAUTH TLS\r\nSYST\r\nPORT 1,2,3,4,5,6\r\n");
    let sent: Vec<_> = out
        .iter()
        .filter(|a| matches!(a, Action::ToOrigin(_)))
        .collect();
    assert_eq!(sent, [&to_origin("NOOP\r\n"), &to_origin("SYST\r\n")]);
    let out = origin(&mut s, b"200 ok\r\n");
    let text = client_text(&out);
    assert!(text.starts_with("200 ok\r\n534 "), "{text}");
    assert!(!text.contains("215"), "{text}");
    let text = client_text(&origin(&mut s, b"215 UNIX Type: L8\r\n"));
    assert!(text.starts_with("215 UNIX Type: L8\r\n504 "), "{text}");
}

#[test]
fn replies_held_while_a_lease_is_installed() {
    let mut s = greeted();
    client(&mut s, b"PASV\r\nTYPE I\r\n");
    let out = origin(&mut s, b"227 (198,51,100,2,117,48)\r\n200 Type set\r\n");
    assert_eq!(client_text(&out), "", "the 200 must wait for the 227");
    s.handle(t0(), installed(1, 40002));
    let text = client_text(&drain(&mut s));
    assert_eq!(
        text,
        "227 Entering Passive Mode (203,0,113,1,156,66).\r\n200 Type set\r\n"
    );
}

#[test]
fn lease_failure_gives_a_4xx() {
    let mut s = greeted();
    client(&mut s, b"EPSV\r\n");
    origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
    s.handle(
        t0(),
        Event::LeaseFailed {
            ticket: ticket(1),
            reason: "all 100 data ports are leased".into(),
        },
    );
    let out = drain(&mut s);
    assert!(client_text(&out).starts_with("425 "), "{out:?}");
    assert!(out.iter().any(|a| matches!(a, Action::Warn(_))));
}

#[test]
fn a_new_passive_request_revokes_the_lease() {
    let mut s = with_lease();
    assert_eq!(
        client(&mut s, b"EPSV\r\n"),
        vec![
            Action::RevokeLease { ticket: ticket(1) },
            to_origin("PASV\r\n")
        ]
    );
}

#[test]
fn bad_origin_passive_replies_give_425() {
    for reply in [
        &b"227 Entering Passive Mode\r\n"[..],
        b"227 (1,2,3,4,0,0)\r\n",
        b"227 (1,2,3,4,999,1)\r\n",
    ] {
        let mut s = greeted();
        client(&mut s, b"PASV\r\n");
        let out = origin(&mut s, reply);
        assert!(client_text(&out).starts_with("425 "), "{out:?}");
        assert!(!out.iter().any(|a| matches!(a, Action::InstallLease { .. })));
    }
}

#[test]
fn origin_refusing_pasv_is_passed_on() {
    let mut s = greeted();
    client(&mut s, b"PASV\r\n");
    let out = origin(&mut s, b"530 Please login with USER and PASS.\r\n");
    assert_eq!(
        client_text(&out),
        "530 Please login with USER and PASS.\r\n"
    );
}

#[test]
fn bad_client_lines_get_errors_and_the_session_goes_on() {
    let mut long = vec![b'A'; 600];
    long.extend_from_slice(b"\r\n");
    let cases: &[(&[u8], &str)] = &[
        (&long, "500 "),
        (b"NO\0OP\r\n", "500 "),
        (b"STOR \xc3\x28\r\n", "501 "),
        (b"12345\r\n", "500 "),
    ];
    for (line, code) in cases {
        let mut s = greeted();
        let out = client(&mut s, line);
        assert!(
            client_text(&out).starts_with(code),
            "{:?}: {out:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::ToOrigin(_) | Action::Close))
        );
        assert_eq!(client(&mut s, b"NOOP\r\n"), vec![to_origin("NOOP\r\n")]);
    }
}

#[test]
fn epsv_arguments() {
    let cases: &[(&[u8], &str)] = &[
        (b"EPSV 2\r\n", "522 "),
        (b"EPSV x\r\n", "501 "),
        (b"EPSV ALL\r\n", "200 "),
    ];
    for (line, code) in cases {
        let mut s = greeted();
        let text = client_text(&client(&mut s, line));
        assert!(text.starts_with(code), "{text}");
    }
    let mut s = greeted();
    client(&mut s, b"EPSV ALL\r\n");
    for refused in [
        &b"PASV\r\n"[..],
        b"PORT 203,0,113,2,200,1\r\n",
        b"EPRT |1|203.0.113.2|51201|\r\n",
    ] {
        assert!(client_text(&client(&mut s, refused)).starts_with("503 "));
    }
    assert_eq!(client(&mut s, b"EPSV\r\n"), vec![to_origin("PASV\r\n")]);
}

#[test]
fn tls_is_refused_and_hidden_from_feat() {
    let mut s = greeted();
    for (line, code) in [
        (&b"AUTH TLS\r\n"[..], "534 "),
        (b"AUTH SSL\r\n", "534 "),
        (b"PBSZ 0\r\n", "503 "),
        (b"PROT P\r\n", "503 "),
    ] {
        let out = client(&mut s, line);
        assert!(client_text(&out).starts_with(code), "{out:?}");
        assert!(!out.iter().any(|a| matches!(a, Action::ToOrigin(_))));
    }
    assert_eq!(client(&mut s, b"FEAT\r\n"), vec![to_origin("FEAT\r\n")]);
    let feat = b"211-Features:\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n EPRT\r\n SIZE\r\n MDTM\r\n UTF8\r\n211 End\r\n";
    let text = client_text(&origin(&mut s, feat));
    assert_eq!(
        text,
        "211-Features:\r\n EPRT\r\n SIZE\r\n MDTM\r\n UTF8\r\n EPSV\r\n211 End\r\n"
    );
    // Without active mode, EPRT is not offered and PORT/EPRT get a clear refusal.
    let mut s = session_with(false);
    s.handle(t0(), Event::FromOrigin(b"220 ready\r\n"));
    drain(&mut s);
    client(&mut s, b"FEAT\r\n");
    let text = client_text(&origin(&mut s, feat));
    assert_eq!(
        text,
        "211-Features:\r\n SIZE\r\n MDTM\r\n UTF8\r\n EPSV\r\n211 End\r\n"
    );
    for line in [
        &b"PORT 203,0,113,2,200,1\r\n"[..],
        b"EPRT |1|203.0.113.2|51201|\r\n",
    ] {
        let out = client(&mut s, line);
        assert!(client_text(&out).starts_with("502 "), "{out:?}");
        assert!(!out.iter().any(|a| matches!(a, Action::ToOrigin(_))));
    }
}

#[test]
fn quit_revokes_and_closes_after_the_reply() {
    let mut s = with_lease();
    assert_eq!(
        client(&mut s, b"QUIT\r\n"),
        vec![
            Action::RevokeLease { ticket: ticket(1) },
            to_origin("QUIT\r\n")
        ]
    );
    assert_eq!(
        origin(&mut s, b"221 Goodbye.\r\n"),
        vec![to_client("221 Goodbye.\r\n"), Action::Close]
    );
    assert!(s.is_closed());
    assert_eq!(client(&mut s, b"NOOP\r\n"), vec![]);
}

#[test]
fn abort_sends_telnet_synch_as_urgent_data() {
    let mut s = greeted();
    client(&mut s, b"RETR big\r\n");
    origin(&mut s, b"150 Opening BINARY mode data connection\r\n");
    // Telnet IP and Synch from a BSD-style client, inline (SO_OOBINLINE).
    let out = client(&mut s, b"\xff\xf4\xff\xf2ABOR\r\n");
    assert_eq!(
        out,
        vec![
            Action::ToOriginUrgent(vec![0xff, 0xf4, 0xff, 0xf2]),
            to_origin("ABOR\r\n")
        ]
    );
    let text = client_text(&origin(&mut s, b"426 Transfer aborted\r\n226 ABOR ok\r\n"));
    assert_eq!(text, "426 Transfer aborted\r\n226 ABOR ok\r\n");
}

#[test]
fn preliminary_replies_do_not_complete_a_command() {
    let mut s = greeted();
    client(&mut s, b"RETR a\r\nNOOP\r\n");
    let text = client_text(&origin(&mut s, b"150 here\r\n226 done\r\n200 noop\r\n"));
    assert_eq!(text, "150 here\r\n226 done\r\n200 noop\r\n");
    assert_eq!(s.commands_in_flight(), 0);
}

#[test]
fn origin_faults_end_the_session_with_421() {
    let mut s = greeted();
    s.origin_closed();
    let out = drain(&mut s);
    assert!(client_text(&out).starts_with("421 "));
    assert_eq!(out.last(), Some(&Action::Close));

    let mut s = greeted();
    let out = origin(&mut s, b"hello there\r\n");
    assert!(client_text(&out).starts_with("421 "), "{out:?}");
    assert_eq!(out.last(), Some(&Action::Close));

    let mut s = greeted();
    let out = origin(&mut s, b"421 Timeout (no operation for 300 seconds)\r\n");
    assert_eq!(
        out,
        vec![
            to_client("421 Timeout (no operation for 300 seconds)\r\n"),
            Action::Close
        ]
    );

    let mut s = greeted();
    s.handle_timeout(t0() + TIMEOUTS.idle);
    assert!(client_text(&drain(&mut s)).starts_with("421 Idle"));

    // Before any greeting: a client that already sent a command gets only the 421.
    let mut s = session();
    assert_eq!(client(&mut s, b"USER a\r\n"), vec![to_origin("USER a\r\n")]);
    s.handle_timeout(t0() + TIMEOUTS.greeting);
    let out = drain(&mut s);
    assert_eq!(
        out,
        vec![
            Action::TimedOut(Timer::Greeting),
            to_client("421 Service not available: the server did not answer.\r\n"),
            Action::Close
        ]
    );
    s.handle_timeout(t0() + TIMEOUTS.greeting);
    assert_eq!(drain(&mut s), vec![]);
}

#[test]
fn a_transfer_success_waits_for_its_data_connection() {
    for line in ["RETR f", "STOR f", "STOU", "APPE f", "LIST", "NLST", "MLSD"] {
        let mut s = greeted();
        client(&mut s, format!("{line}\r\n").as_bytes());
        assert_eq!(
            origin(&mut s, b"150 Opening data connection\r\n"),
            vec![to_client("150 Opening data connection\r\n")]
        );
        let (verb, path) = line
            .split_once(' ')
            .map_or((line, None), |(v, p)| (v, Some(p)));
        assert_eq!(
            origin(&mut s, b"226 Transfer complete\r\n"),
            vec![
                Action::AwaitData,
                Action::TransferDone(Transfer {
                    command: verb.into(),
                    path: path.map(Into::into),
                    user: None,
                    ticket: None,
                    data_opened: true,
                    reply_code: 226,
                    started: t0(),
                    ended: t0(),
                }),
                to_client("226 Transfer complete\r\n")
            ],
            "{line}"
        );
    }
    // Failures, replies without a data connection, other commands: no wait.
    let cases: &[(&[u8], &[u8])] = &[
        (b"RETR f\r\n", b"550 No such file\r\n"),
        (b"RETR f\r\n", b"150 Opening\r\n426 Connection closed\r\n"),
        (b"LIST\r\n", b"425 Can't open data connection\r\n"),
        (b"NOOP\r\n", b"200 ok\r\n"),
        (b"SIZE f\r\n", b"213 5\r\n"),
    ];
    for (command, replies) in cases {
        let mut s = greeted();
        client(&mut s, command);
        let out = origin(&mut s, replies);
        assert!(!out.contains(&Action::AwaitData), "{out:?}");
        assert_eq!(client_text(&out), String::from_utf8_lossy(replies));
    }
    // ABOR during a download: the 426 ends RETR, the 226 answers ABOR; nothing waits.
    let mut s = greeted();
    client(&mut s, b"RETR f\r\n");
    origin(&mut s, b"150 Opening\r\n");
    client(&mut s, b"ABOR\r\n");
    let out = origin(&mut s, b"426 Aborted\r\n226 ABOR ok\r\n");
    assert!(!out.contains(&Action::AwaitData), "{out:?}");
}

/// Each transfer's record: the last USER's name, the lease live when the command went,
/// whether a data connection opened, the final reply, and the times of command and reply.
#[test]
fn a_transfer_is_recorded_with_its_lease_user_and_reply() {
    let mut s = with_lease();
    client(&mut s, b"USER alice\r\n");
    origin(&mut s, b"331 Password\r\n");
    let sent = t0() + secs(3);
    s.handle(sent, Event::FromClient(b"RETR /pub/f\r\n"));
    drain(&mut s);
    s.handle(sent + secs(1), Event::FromOrigin(b"150 Opening\r\n"));
    s.handle(sent + secs(5), Event::FromOrigin(b"226 Done\r\n"));
    let done = |s: &mut Session| {
        drain(s)
            .into_iter()
            .filter_map(|a| match a {
                Action::TransferDone(t) => Some(t),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let retr = Transfer {
        command: "RETR".into(),
        path: Some("/pub/f".into()),
        user: Some("alice".into()),
        ticket: Some(ticket(1)),
        data_opened: true,
        reply_code: 226,
        started: sent,
        ended: sent + secs(5),
    };
    assert_eq!(done(&mut s), vec![retr.clone()]);
    // The same lease again: the origin cannot open a data connection (425), nothing waits.
    client(&mut s, b"STOR g\r\n");
    let out = origin(&mut s, b"425 No data connection\r\n");
    assert!(!out.contains(&Action::AwaitData), "{out:?}");
    assert_eq!(
        out.into_iter()
            .filter(|a| matches!(a, Action::TransferDone(_)))
            .collect::<Vec<_>>(),
        vec![Action::TransferDone(Transfer {
            command: "STOR".into(),
            path: Some("g".into()),
            data_opened: false,
            reply_code: 425,
            started: t0(),
            ended: t0(),
            ..retr
        })]
    );
}

/// A session that ends during a transfer (the client went away mid-download) reports it
/// with reply code 0, before it closes.
#[test]
fn a_transfer_cut_short_is_reported_without_a_reply() {
    let mut s = with_lease();
    client(&mut s, b"RETR big\r\n");
    origin(&mut s, b"150 Opening\r\n");
    s.handle(t0() + secs(2), Event::FromClient(b""));
    s.client_closed();
    assert_eq!(
        drain(&mut s),
        vec![
            Action::RevokeLease { ticket: ticket(1) },
            Action::TransferDone(Transfer {
                command: "RETR".into(),
                path: Some("big".into()),
                user: None,
                ticket: Some(ticket(1)),
                data_opened: true,
                reply_code: 0,
                started: t0(),
                ended: t0() + secs(2),
            }),
            Action::Close
        ]
    );
}

/// At `max_pending` replies owed the session takes no more lines (the driver stops
/// reading); each reply makes room for one more, in order.
#[test]
fn pipelining_is_bounded_by_backpressure() {
    let mut s = greeted();
    let out = client(&mut s, &b"NOOP\r\n".repeat(20));
    assert_eq!(out, vec![to_origin("NOOP\r\n"); 8]);
    assert!(!s.wants_client_input());
    assert_eq!(s.replies_owed(), 8);
    let out = origin(&mut s, b"200 one\r\n200 two\r\n");
    assert_eq!(
        out,
        vec![
            to_client("200 one\r\n"),
            to_client("200 two\r\n"),
            to_origin("NOOP\r\n"),
            to_origin("NOOP\r\n"),
        ]
    );
    assert_eq!(s.replies_owed(), 8);
    assert!(!s.wants_client_input());
    // Ten lines left: eight go on now, the last two after eight more replies.
    assert_eq!(origin(&mut s, &b"200 ok\r\n".repeat(8)).len(), 8 + 8);
    assert_eq!(s.replies_owed(), 8);
    assert_eq!(origin(&mut s, &b"200 ok\r\n".repeat(8)).len(), 8 + 2);
    assert_eq!(s.replies_owed(), 2);
    assert!(s.wants_client_input());
}

/// The memory-and-logs attack: junk lines behind a slow reply (vsftpd delays a failed
/// login) wait within the pipelining bound, and the session ends after
/// `max_consecutive_errors` error replies; warnings past the first few are only counted.
#[test]
fn junk_behind_a_slow_reply_is_bounded_and_ends_the_session() {
    let mut s = start(SessionConfig {
        max_consecutive_errors: 6,
        ..config()
    });
    origin(&mut s, b"220 ready\r\n");
    let mut flood = b"USER a\r\nPASS b\r\n".to_vec();
    flood.extend(b"1\n".repeat(1000));
    let syntax = "Syntax error: command verb must be 1 to 8 ASCII letters.";
    let warn = || Action::Warn(format!("client: {syntax}"));
    // Two commands, six junk lines queued: eight replies owed, input stops.
    let out = client(&mut s, &flood);
    let mut want = vec![to_origin("USER a\r\n"), to_origin("PASS b\r\n")];
    want.extend(std::iter::repeat_with(warn).take(5));
    assert_eq!(out, want);
    assert_eq!(s.replies_owed(), 8);
    assert!(!s.wants_client_input());
    // 331 resets the count; one more junk line takes its place (its warning not logged).
    assert_eq!(origin(&mut s, b"331 pw\r\n"), vec![to_client("331 pw\r\n")]);
    assert_eq!(s.replies_owed(), 8);
    // The failed login (not a syntax error: not counted), then six 500s and the end.
    let out = origin(&mut s, b"530 Login incorrect.\r\n");
    let mut want = vec![
        to_client("530 Login incorrect.\r\n"),
        Action::LoginFailed {
            user: Some("a".into()),
        },
    ];
    want.extend(std::iter::repeat_n(
        to_client(&format!("500 {syntax}\r\n")),
        6,
    ));
    want.extend([
        Action::Warn("closing: 6 error replies in a row".into()),
        to_client("421 Too many errors in a row: closing control connection.\r\n"),
        Action::Warn("2 more warnings of this session not logged".into()),
        Action::Close,
    ]);
    assert_eq!(out, want);
    assert!(s.is_closed());
}

/// (client lines, origin replies in order, whether the session ends): with a limit of
/// 3, local refusals and origin 500-504 count, any 1xx-3xx starts over, other 4xx/5xx
/// neither count nor start over.
#[test]
fn consecutive_errors() {
    let cases: &[(&[u8], &[u8], bool)] = &[
        (b"1\r\n1\r\n", b"", false),
        (b"1\r\n1\r\n1\r\n", b"", true),
        (b"1\r\n1\r\nNOOP\r\n1\r\n1\r\n", b"200 ok\r\n", false),
        (b"1\r\nSITE x\r\n1\r\n", b"500 unknown\r\n", true),
        (b"1\r\nSITE x\r\n1\r\n", b"504 no\r\n", true),
        (b"1\r\nRETR x\r\n1\r\n", b"550 no such file\r\n", false),
        (b"1\r\nRETR x\r\n1\r\n1\r\n", b"550 no such file\r\n", true),
        (b"1\r\nRETR x\r\n1\r\n", b"150 go\r\n226 ok\r\n", false),
        (b"AUTH TLS\r\nPROT P\r\nEPSV 2\r\n", b"", true),
        (b"AUTH TLS\r\nEPSV ALL\r\nPASV\r\nPASV\r\n", b"", false),
    ];
    for (lines, replies, ends) in cases {
        let mut s = start(SessionConfig {
            max_consecutive_errors: 3,
            ..config()
        });
        origin(&mut s, b"220 ready\r\n");
        let mut out = client(&mut s, lines);
        out.extend(origin(&mut s, replies));
        let shown = String::from_utf8_lossy(lines);
        assert_eq!(s.is_closed(), *ends, "{shown}: {out:?}");
        if *ends {
            assert!(
                client_text(&out)
                    .ends_with("421 Too many errors in a row: closing control connection.\r\n"),
                "{shown}: {out:?}"
            );
        }
    }
}

/// A long multi-line reply (STAT of a big directory) reaches the client whole and
/// scrubbed, while the session never holds much more than `max_reply_bytes` of it.
#[test]
fn a_long_reply_is_passed_on_in_pieces() {
    // (command, first line, a middle line as sent and as the client gets it, last line):
    // long lines pass the byte limit (1024 here), short ones the line limit (100).
    let long = |i: usize| {
        (
            format!("-rw-r--r-- 1 ftp ftp {i:8} Jan 1 198.51.100.2"),
            format!("-rw-r--r-- 1 ftp ftp {i:8} Jan 1 203.0.113.1"),
        )
    };
    let short = |i: usize| (format!(" {}", i % 10), format!(" {}", i % 10));
    type Middle<'a> = &'a dyn Fn(usize) -> (String, String);
    let cases: [(&str, &str, Middle<'_>, &str); 3] = [
        (
            "STAT /\r\n",
            "213-Status follows:",
            &long,
            "213 End of status",
        ),
        ("LIST\r\n", "150-Here comes the listing:", &long, "150 go"),
        (
            "STAT /\r\n",
            "213-Status follows:",
            &short,
            "213 End of status",
        ),
    ];
    for (command, first, middle, last) in cases {
        let mut s = greeted();
        client(&mut s, command.as_bytes());
        let mut reply = format!("{first}\r\n");
        let mut want = reply.clone();
        for i in 0..5000 {
            let (sent, seen) = middle(i);
            reply.push_str(&format!("{sent}\r\n"));
            want.push_str(&format!("{seen}\r\n"));
        }
        reply.push_str(&format!("{last}\r\n"));
        want.push_str(&format!("{last}\r\n"));
        let mut out = Vec::new();
        let mut most = 0;
        for chunk in reply.as_bytes().chunks(4096) {
            out.extend(origin(&mut s, chunk));
            most = most.max(s.buffered_bytes());
        }
        // The reply's limit, plus one line in the reply and one in the reader.
        assert!(most <= 1024 + 2 * 60, "held {most} bytes");
        assert_eq!(client_text(&out), want);
        assert!(!s.is_closed());
        assert_eq!(client(&mut s, b"NOOP\r\n"), vec![to_origin("NOOP\r\n")]);
    }
    // Replies the gateway must read whole cannot be that long.
    for (command, head) in [("FEAT\r\n", "211-Features:"), ("PASV\r\n", "227-x")] {
        let mut s = greeted();
        client(&mut s, command.as_bytes());
        let long = format!("{head}\r\n{}", " SIZE\r\n".repeat(300));
        let out = origin(&mut s, long.as_bytes());
        assert_eq!(
            out,
            vec![
                Action::Warn(
                    "origin sent an invalid reply: longer than 1024 bytes where it must be \
                     read whole"
                        .into()
                ),
                to_client("421 The server sent an invalid reply; closing.\r\n"),
                Action::Close
            ]
        );
    }
}

/// (what the peers send when, in seconds from the start) → the deadline that passes
/// first, when, and the 421 the client gets. Timeouts: greeting 10 s, login 60 s, idle 30 s.
/// The driver sleeps until `poll_timeout` and calls `handle_timeout` then; earlier, the
/// call does nothing.
#[test]
fn each_timer_fires_at_its_deadline() {
    #[derive(Clone, Copy)]
    enum Peer {
        Client,
        Origin,
    }
    use Peer::{Client, Origin};
    type Step = (u64, Peer, &'static [u8]);
    let greet: Step = (1, Origin, b"220 hi\r\n");
    let user: Step = (2, Client, b"USER a\r\nPASS b\r\n");
    let logged_in: Step = (3, Origin, b"331 pw\r\n230 in\r\n");
    let no_greeting = "421 Service not available: the server did not answer.\r\n";
    let no_login = "421 Login timeout: closing control connection.\r\n";
    let idle = "421 Idle timeout: closing control connection.\r\n";
    /// The timer, when it fires (seconds from the start), the client's last reply.
    type Fired = (Timer, u64, &'static str);
    let cases: Vec<(Vec<Step>, Fired)> = vec![
        (vec![], (Timer::Greeting, 10, no_greeting)),
        // Client bytes are activity, not a greeting.
        (
            vec![(5, Client, b"USER a\r\n")],
            (Timer::Greeting, 10, no_greeting),
        ),
        (vec![greet], (Timer::Idle, 31, idle)),
        // Active but never logged in.
        (
            vec![
                greet,
                (20, Client, b"USER a\r\n"),
                (40, Client, b"PASS b\r\n"),
            ],
            (Timer::Login, 60, no_login),
        ),
        // Logged in: only idleness ends the session, counted from the last byte.
        (vec![greet, user, logged_in], (Timer::Idle, 33, idle)),
        (
            vec![
                greet,
                user,
                logged_in,
                (30, Client, b"NOOP\r\n"),
                (50, Origin, b"200 ok\r\n"),
            ],
            (Timer::Idle, 80, idle),
        ),
    ];
    for (steps, (timer, at, reply)) in cases {
        let mut s = session();
        for (when, from, bytes) in steps {
            let event = match from {
                Client => Event::FromClient(bytes),
                Origin => Event::FromOrigin(bytes),
            };
            s.handle(t0() + secs(when), event);
        }
        drain(&mut s);
        let due = s.poll_timeout().unwrap();
        assert_eq!(due - t0(), secs(at), "{timer:?}");
        s.handle_timeout(due - Duration::from_millis(1));
        assert_eq!(drain(&mut s), vec![]);
        s.handle_timeout(due);
        assert_eq!(
            drain(&mut s),
            vec![Action::TimedOut(timer), to_client(reply), Action::Close]
        );
        assert_eq!(s.poll_timeout(), None);
    }
}

#[test]
fn the_client_lease_limit_gives_a_clear_425() {
    // Passive, then active: both answered in place, the session goes on.
    let mut s = greeted();
    client(&mut s, b"EPSV\r\n");
    origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
    s.handle(t0(), Event::LeaseLimit { ticket: ticket(1) });
    let refusal =
        "425 Can't open data connection: too many data connections pending for your address.\r\n";
    let warning =
        Action::Warn("no data lease: the client's address holds as many as it may".into());
    assert_eq!(drain(&mut s), vec![warning, to_client(refusal)]);
    client(&mut s, b"PORT 203,0,113,2,200,1\r\nNOOP\r\n");
    s.handle(t0(), Event::LeaseLimit { ticket: ticket(2) });
    let out = drain(&mut s);
    assert_eq!(
        out,
        vec![
            Action::Warn("no data lease: the client's address holds as many as it may".into()),
            to_client(refusal),
            to_origin("NOOP\r\n")
        ]
    );
}

/// Found by the `session` fuzz target: rejected lines queued a local reply each behind
/// an unanswered command, without bound.
#[test]
fn rejected_lines_count_against_the_pipelining_bound() {
    let mut s = greeted();
    assert_eq!(client(&mut s, b"USER a\r\n"), vec![to_origin("USER a\r\n")]);
    let out = client(&mut s, &b"1\r\n".repeat(20));
    let warn =
        || Action::Warn("client: Syntax error: command verb must be 1 to 8 ASCII letters.".into());
    // Seven take the places left (five warnings logged, the rest only counted); the
    // others wait unread until replies make room.
    assert_eq!(
        out,
        std::iter::repeat_with(warn).take(5).collect::<Vec<_>>()
    );
    assert_eq!(s.replies_owed(), 8);
    assert!(!s.wants_client_input());
}

#[test]
fn port_and_eprt_name_a_gateway_port_to_the_origin() {
    for line in [
        &b"PORT 203,0,113,2,200,1\r\n"[..],
        b"EPRT |1|203.0.113.2|51201|\r\n",
        b"eprt !1!203.0.113.2!51201!\r\n",
    ] {
        let mut s = greeted();
        let out = client(&mut s, line);
        assert_eq!(out, vec![install_active(1)]);
        s.handle(t0(), active_installed(1, 40005));
        assert_eq!(
            drain(&mut s),
            vec![to_origin("PORT 198,51,100,1,156,69\r\n")]
        );
        let text = client_text(&origin(&mut s, b"200 PORT command successful.\r\n"));
        assert_eq!(text, "200 PORT command successful.\r\n");
    }
}

#[test]
fn bounce_and_malformed_active_requests_are_refused() {
    // (line, reply code): nothing may reach the origin, no lease may be asked for.
    let cases: &[(&[u8], &str)] = &[
        (b"PORT 192,0,2,66,200,1\r\n", "504 "),
        (b"PORT 198,51,100,2,0,22\r\n", "504 "),
        (b"PORT 203,0,113,2,0,21\r\n", "504 "),
        (b"PORT 203,0,113,2,3,255\r\n", "504 "),
        (b"EPRT |1|192.0.2.66|51201|\r\n", "504 "),
        (b"EPRT |1|203.0.113.2|20|\r\n", "504 "),
        (b"EPRT |2|2001:db8::2|51201|\r\n", "522 "),
        (b"PORT 203,0,113,2,200\r\n", "501 "),
        (b"PORT 203,0,113,256,200,1\r\n", "501 "),
        (b"PORT\r\n", "501 "),
        (b"PORT 203,0,113,2,200,1,7\r\n", "501 "),
        (b"EPRT |1|203.0.113.2|\r\n", "501 "),
        (b"EPRT |3|203.0.113.2|51201|\r\n", "501 "),
        (b"EPRT 1|203.0.113.2|51201\r\n", "501 "),
    ];
    for (line, code) in cases {
        let mut s = greeted();
        let out = client(&mut s, line);
        let text = client_text(&out);
        let shown = String::from_utf8_lossy(line);
        assert!(text.starts_with(code), "{shown}: {text}");
        assert!(
            !out.iter()
                .any(|a| matches!(a, Action::ToOrigin(_) | Action::InstallActiveLease { .. })),
            "{shown}: {out:?}"
        );
        // The session goes on.
        assert_eq!(client(&mut s, b"NOOP\r\n"), vec![to_origin("NOOP\r\n")]);
    }
}

#[test]
fn commands_after_port_wait_for_its_lease() {
    let mut s = greeted();
    let out = client(&mut s, b"PORT 203,0,113,2,200,1\r\nRETR f\r\nNOOP\r\n");
    assert_eq!(out, vec![install_active(1)]);
    s.handle(t0(), active_installed(1, 40000));
    assert_eq!(
        drain(&mut s),
        vec![
            to_origin("PORT 198,51,100,1,156,64\r\n"),
            to_origin("RETR f\r\n"),
            to_origin("NOOP\r\n")
        ]
    );
    let replies = b"200 PORT ok\r\n150 go\r\n226 done\r\n200 noop\r\n";
    let text = client_text(&origin(&mut s, replies));
    assert_eq!(text, String::from_utf8_lossy(replies));

    // A failed lease: 425, and the held commands go on in order.
    let mut s = greeted();
    client(&mut s, b"EPRT |1|203.0.113.2|51201|\r\nNOOP\r\n");
    s.handle(
        t0(),
        Event::LeaseFailed {
            ticket: ticket(1),
            reason: "all 2 data ports are leased".into(),
        },
    );
    let out = drain(&mut s);
    assert!(client_text(&out).starts_with("425 "), "{out:?}");
    assert!(out.contains(&to_origin("NOOP\r\n")));

    // The next data command revokes the active lease.
    let mut s = greeted();
    client(&mut s, b"PORT 203,0,113,2,200,1\r\n");
    s.handle(t0(), active_installed(1, 40000));
    drain(&mut s);
    origin(&mut s, b"200 ok\r\n");
    let out = client(&mut s, b"PASV\r\n");
    assert_eq!(
        out,
        vec![
            Action::RevokeLease { ticket: ticket(1) },
            to_origin("PASV\r\n")
        ]
    );
}

/// The same conversation fed whole and one byte at a time gives the same actions.
#[test]
fn byte_by_byte_equals_whole() {
    let client_bytes: &[u8] = b"USER a\r\nPASS b\r\nEPSV\r\nRETR f\r\nQUIT\r\n";
    let origin_bytes: &[u8] =
        b"220-hi 198.51.100.2\r\n220 x\r\n331 pw\r\n230 in\r\n227 (198,51,100,2,117,48)\r\n";
    let tail: &[u8] = b"150 go\r\n226 ok\r\n221 bye\r\n";
    let run = |chunk: usize| {
        let mut s = session();
        let mut out = Vec::new();
        for c in client_bytes.chunks(chunk) {
            out.extend(client(&mut s, c));
        }
        for c in origin_bytes.chunks(chunk) {
            out.extend(origin(&mut s, c));
        }
        s.handle(t0(), installed(1, 40000));
        out.extend(drain(&mut s));
        for c in tail.chunks(chunk) {
            out.extend(origin(&mut s, c));
        }
        out
    };
    let whole = run(usize::MAX);
    assert_eq!(run(1), whole);
    assert_eq!(run(3), whole);
    let text = client_text(&whole);
    assert!(
        text.contains("229 Entering Extended Passive Mode (|||40000|)"),
        "{text}"
    );
    assert!(!text.contains("198.51.100.2"), "{text}");
    assert_eq!(whole.last(), Some(&Action::Close));
}

/// Leases are named by tickets: a new request revokes the live lease by its ticket, results
/// are matched to the request that holds theirs, and a lease revoked while it was being
/// installed is revoked again once it exists.
#[test]
fn lease_tickets_route_results_and_revocations() {
    let pasv_227 = |port: u16| {
        format!(
            "227 Entering Passive Mode (203,0,113,1,{},{}).\r\n",
            port >> 8,
            port & 0xff
        )
    };
    let install = |n, port| Action::InstallLease {
        ticket: ticket(n),
        origin: SocketAddr::from((ORIGIN, port)),
    };

    // Two PASV in one segment: the second lease replaces the first.
    let mut s = greeted();
    client(&mut s, b"PASV\r\nPASV\r\n");
    assert_eq!(
        origin(&mut s, b"227 (198,51,100,2,117,48)\r\n"),
        vec![install(1, 30000)]
    );
    s.handle(t0(), installed(1, 40001));
    assert_eq!(drain(&mut s), vec![to_client(&pasv_227(40001))]);
    assert_eq!(
        origin(&mut s, b"227 (198,51,100,2,117,49)\r\n"),
        vec![Action::RevokeLease { ticket: ticket(1) }, install(2, 30001)]
    );

    // A result naming another ticket is not this request's.
    let mut s = greeted();
    client(&mut s, b"PASV\r\n");
    origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
    s.handle(t0(), installed(7, 40007));
    assert_eq!(
        drain(&mut s),
        vec![Action::Warn(
            "lease result for LeaseTicket(7), not requested".into()
        )]
    );
    s.handle(t0(), installed(1, 40001));
    assert_eq!(drain(&mut s), vec![to_client(&pasv_227(40001))]);

    // Revoked (QUIT) while being installed: revoked again once installed.
    let mut s = greeted();
    client(&mut s, b"PASV\r\n");
    origin(&mut s, b"227 (198,51,100,2,117,48)\r\n");
    assert_eq!(
        client(&mut s, b"QUIT\r\n"),
        vec![
            Action::RevokeLease { ticket: ticket(1) },
            to_origin("QUIT\r\n")
        ]
    );
    s.handle(t0(), installed(1, 40001));
    assert_eq!(
        drain(&mut s),
        vec![
            Action::RevokeLease { ticket: ticket(1) },
            to_client(&pasv_227(40001))
        ]
    );
}

/// (USER, the origin's reply to PASS) → what follows the reply: a 530 or 430 to PASS is a
/// login failure naming the user; a success, a 331 to USER, a 530 to another command or a
/// 421 are not.
#[test]
fn login_failures_are_reported_after_the_reply() {
    let failed = |user: &str| Action::LoginFailed {
        user: Some(user.to_owned()),
    };
    /// (client lines, the origin's reply to USER, its reply to the last line, the actions).
    type Case<'a> = (&'a [u8], &'a [u8], &'a [u8], Vec<Action>);
    let cases: &[Case] = &[
        (
            b"USER alice\r\nPASS wrong\r\n",
            b"331 Password required\r\n",
            b"530 Login incorrect.\r\n",
            vec![to_client("530 Login incorrect.\r\n"), failed("alice")],
        ),
        (
            b"USER bob\r\nPASS wrong\r\n",
            b"331 Password required\r\n",
            b"430 Invalid username or password\r\n",
            vec![
                to_client("430 Invalid username or password\r\n"),
                failed("bob"),
            ],
        ),
        (
            b"USER alice\r\nPASS right\r\n",
            b"331 Password required\r\n",
            b"230 Login successful.\r\n",
            vec![to_client("230 Login successful.\r\n")],
        ),
        (
            b"USER alice\r\nCWD /x\r\n",
            b"331 Password required\r\n",
            b"530 Please login with USER and PASS.\r\n",
            vec![to_client("530 Please login with USER and PASS.\r\n")],
        ),
        (
            b"USER alice\r\nPASS x\r\n",
            b"331 Password required\r\n",
            b"421 Too many users.\r\n",
            vec![to_client("421 Too many users.\r\n"), Action::Close],
        ),
    ];
    for (lines, user_reply, pass_reply, want) in cases {
        let mut s = greeted();
        client(&mut s, lines);
        origin(&mut s, user_reply);
        assert_eq!(&origin(&mut s, pass_reply), want, "{pass_reply:?}");
    }
}

/// A PASS without USER reports no name; a long name is kept cut to 64 bytes.
#[test]
fn login_failures_name_the_user_as_sent() {
    let mut s = greeted();
    client(&mut s, b"PASS x\r\n");
    assert_eq!(
        origin(&mut s, b"530 Login incorrect.\r\n"),
        vec![
            to_client("530 Login incorrect.\r\n"),
            Action::LoginFailed { user: None }
        ]
    );
    let long = "é".repeat(40);
    client(&mut s, format!("USER {long}\r\nPASS x\r\n").as_bytes());
    origin(&mut s, b"331 Password required\r\n");
    assert_eq!(
        origin(&mut s, b"530 Login incorrect.\r\n"),
        vec![
            to_client("530 Login incorrect.\r\n"),
            Action::LoginFailed {
                user: Some("é".repeat(32))
            }
        ]
    );
}

/// Banned after a failure: a 421 that says why, and the session closes.
#[test]
fn a_banned_client_gets_421_and_the_session_closes() {
    let mut s = greeted();
    client(&mut s, b"USER alice\r\nPASS wrong\r\n");
    origin(&mut s, b"331 Password required\r\n");
    origin(&mut s, b"530 Login incorrect.\r\n");
    s.handle(t0(), Event::Banned);
    assert_eq!(
        drain(&mut s),
        vec![
            to_client(
                "421 Too many failed logins from your address: closing control connection.\r\n"
            ),
            Action::Close
        ]
    );
    assert!(s.is_closed());
}
