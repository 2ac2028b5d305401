//! Faults and bad input through the real proxy (in-process, on loopback) against a
//! scripted origin: each must end in a proper FTP reply and a log line, never a stall.
use std::{
    net::{SocketAddr, SocketAddrV4},
    sync::{Arc, Mutex},
    time::Duration,
};

use ftp_guard::{
    config::{Config, Service},
    dataplane::{
        DataTimeouts,
        userspace::{RelaySettings, UserspaceRelay},
    },
    proxy::{self, ServiceContext, SessionSlots},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    time::timeout,
};

const STEP: Duration = Duration::from_secs(5);

/// A scripted origin: greets, records every command line, answers with `respond`.
struct FakeOrigin {
    addr: SocketAddrV4,
    received: Arc<Mutex<Vec<String>>>,
    closed: Arc<Mutex<usize>>,
}

impl FakeOrigin {
    async fn start(
        greeting: &'static str,
        respond: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) -> FakeOrigin {
        let respond = Arc::new(respond);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let received = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(0));
        let (r, c) = (received.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, c, respond) = (r.clone(), c.clone(), respond.clone());
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let _ = write.write_all(greeting.as_bytes()).await;
                    let mut lines = BufReader::new(read).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        r.lock().unwrap().push(line.clone());
                        match respond(&line) {
                            Some(reply) => {
                                let _ = write.write_all(reply.as_bytes()).await;
                            }
                            None => break, // hang up
                        }
                    }
                    *c.lock().unwrap() += 1;
                });
            }
        });
        FakeOrigin {
            addr,
            received,
            closed,
        }
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

fn answer_everything(line: &str) -> Option<String> {
    Some(match line {
        "PASV" => "227 Entering Passive Mode (127,0,0,1,117,48).\r\n".into(),
        _ => "200 ok\r\n".into(),
    })
}

/// A running proxy in front of `origin`; stops when dropped.
struct Proxy {
    addr: SocketAddr,
    ctx: Arc<ServiceContext>,
    _stop: oneshot::Sender<()>,
}

async fn start_proxy(origin: SocketAddrV4, max_sessions: usize, tweak: fn(&mut Service)) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let text = format!(
        "[[service]]\nname = \"faults\"\nlisten = \"{addr}\"\norigin = \"{origin}\"\n\
         data_ports = \"41000-41009\"\ndataplane = \"userspace\"\nhide_addresses = [\"127.0.0.9\"]\nconnect_timeout_secs = 2\n"
    );
    let config = Config::parse(&text).unwrap();
    let mut service = config.services().next().unwrap().clone();
    tweak(&mut service);
    let addresses = service.ipv4().unwrap();
    let relay = UserspaceRelay::new(
        RelaySettings {
            bind_ip: *addresses.listen.ip(),
            origin_side_ip: *addresses.listen.ip(),
            active_port_20: false,
            ports: service.data_ports,
            public_ip: addresses.public_ip,
        },
        DataTimeouts::of(&service),
    );
    let ctx = Arc::new(ServiceContext::new(
        service,
        Arc::new(relay),
        SessionSlots::new(max_sessions),
        Arc::new(ftp_guard::metrics::Metrics::new()),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy::serve(listener, ctx.clone(), async move {
        let _ = stopped.await;
    }));
    Proxy {
        addr,
        ctx,
        _stop: stop,
    }
}

/// Waits (up to the step time) until `done` holds; false if it never did.
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + STEP;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

/// A client speaking raw bytes, reading whole replies.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = timeout(STEP, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        Client {
            reader: BufReader::new(stream),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads one complete (possibly multi-line) reply; panics on timeout: a stall is a bug.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = timeout(STEP, self.reader.read_line(&mut line))
                .await
                .unwrap_or_else(|_| panic!("no reply within {STEP:?}; got so far: {all:?}"))
                .unwrap();
            assert!(n > 0, "connection closed; got so far: {all:?}");
            all.push_str(&line);
            let b = line.as_bytes();
            if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                return all;
            }
        }
    }

    /// True when the proxy closes the connection within the step time.
    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            timeout(STEP, self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

#[tokio::test]
async fn greeting_hides_origin_addresses() {
    let origin = FakeOrigin::start(
        "220-Welcome to 127.0.0.9\r\n220 Server [127.0.0.9] ready\r\n",
        answer_everything,
    )
    .await;
    let proxy = start_proxy(origin.addr, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    let greeting = c.reply().await;
    // On loopback the public address is the origin's own (127.0.0.1), which the scrubber
    // will not print either: it falls back to a neutral address.
    assert!(!greeting.contains("127.0.0.9"), "{greeting}");
    assert!(
        greeting.starts_with("220-Welcome to ") && greeting.contains("\r\n220 Server ["),
        "{greeting}"
    );
}

#[tokio::test]
async fn origin_unreachable_gives_421() {
    // A port nothing listens on: bind one, then free it.
    let free = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(dead) = free.local_addr().unwrap() else {
        unreachable!()
    };
    drop(free);
    let proxy = start_proxy(dead, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    assert!(c.reply().await.starts_with("421 "));
    assert!(c.closed().await);
}

#[tokio::test]
async fn origin_hanging_up_is_reported() {
    let origin = FakeOrigin::start("220 hi\r\n", |line| {
        (line != "SITE BYE").then(|| "200 ok\r\n".into())
    })
    .await;
    let proxy = start_proxy(origin.addr, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    c.send(b"SITE BYE\r\n").await;
    assert!(c.reply().await.starts_with("421 "));
    assert!(c.closed().await);
}

/// An origin whose connections are accepted by the kernel but never greeted: it stands for
/// a server whose kernel completed the handshake (e.g. with a SYN cookie) and then lost it
/// in a full accept queue, or a daemon that is stuck. Counts the connections that the proxy
/// closed (EOF on the origin side).
async fn silent_origin() -> (SocketAddrV4, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    let closed = Arc::new(Mutex::new(0));
    let c = closed.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = stream.read_to_end(&mut sink).await;
                *c.lock().unwrap() += 1;
            });
        }
    });
    (addr, closed)
}

#[tokio::test]
async fn origin_that_never_greets_gives_421() {
    let (origin, closed) = silent_origin().await;
    // The test config's connect timeout (2 s) covers the greeting too.
    let proxy = start_proxy(origin, 8, |_| {}).await;
    let started = std::time::Instant::now();
    let mut c = Client::connect(proxy.addr).await;
    // A client that does not wait for the greeting gets the same answer.
    c.send(b"USER anonymous\r\n").await;
    let reply = c.reply().await;
    assert_eq!(
        reply,
        "421 Service not available: the server did not answer.\r\n"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(4),
        "421 after {waited:?}, the connect timeout is 2 s"
    );
    assert!(c.closed().await);
    for _ in 0..100 {
        if *closed.lock().unwrap() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the silent origin connection was not closed");
}

#[tokio::test]
async fn origin_closing_before_its_greeting_gives_421() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(origin) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    // Accepts and hangs up at once, like a daemon over its connection limit without a reply.
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let proxy = start_proxy(origin, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 "), "{reply}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn slow_greeting_within_the_connect_timeout_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(origin) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Half the 2 s connect timeout, like a server doing a slow ident lookup.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = stream.write_all(b"220 late but here\r\n").await;
                let mut lines = BufReader::new(stream);
                let mut line = String::new();
                while lines.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    let _ = lines.get_mut().write_all(b"200 ok\r\n").await;
                    line.clear();
                }
            });
        }
    });
    let proxy = start_proxy(origin, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    assert_eq!(c.reply().await, "220 late but here\r\n");
    // Past the greeting the connect timeout no longer applies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.send(b"NOOP\r\n").await;
    assert_eq!(c.reply().await, "200 ok\r\n");
}

#[tokio::test]
async fn idle_timeout_gives_421() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 8, |s| s.idle_timeout_secs = 1).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    let reply = c.reply().await;
    assert!(reply.starts_with("421 Idle"), "{reply}");
    assert!(c.closed().await);
}

/// Activity keeps a session alive past the idle timeout (the timer counts silence, not
/// age), and silence after it still ends the session.
#[tokio::test]
async fn activity_postpones_the_idle_timeout() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 8, |s| s.idle_timeout_secs = 1).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    let started = std::time::Instant::now();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.send(b"NOOP\r\n").await;
        let reply = c.reply().await;
        assert!(!reply.starts_with("421"), "cut while active: {reply}");
    }
    assert!(started.elapsed() > Duration::from_secs(2));
    let reply = c.reply().await;
    assert!(reply.starts_with("421 Idle"), "{reply}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn session_limit_gives_421_and_frees_on_close() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 1, |_| {}).await;
    let mut first = Client::connect(proxy.addr).await;
    first.reply().await;
    let mut second = Client::connect(proxy.addr).await;
    assert!(second.reply().await.starts_with("421 Too many"));
    drop(first);
    // The permit is released when the first session ends.
    let mut third = None;
    for _ in 0..50 {
        let mut c = Client::connect(proxy.addr).await;
        if c.reply().await.starts_with("220") {
            third = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(third.is_some(), "session slot never freed");
}

#[tokio::test]
async fn bad_lines_get_errors_not_stalls() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    let mut long = vec![b'X'; 2000];
    long.extend_from_slice(b"\r\n");
    let cases: &[(&[u8], &str)] = &[
        (&long, "500 "),
        (b"NOOP\0\r\n", "500 "),
        (b"CWD \xc3\x28\r\n", "501 "),
        (b"\xff\xf4\xff\xf2NOOP\r\n", "200 "),
        (b"AUTH TLS\r\n", "534 "),
        (b"PORT 127,0,0,2,200,1\r\n", "504 "),
    ];
    for (line, code) in cases {
        c.send(line).await;
        let reply = c.reply().await;
        assert!(
            reply.starts_with(code),
            "{:?} → {reply}",
            String::from_utf8_lossy(line)
        );
    }
    // A line split over several segments is one command.
    c.send(b"NO").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"OP\r\n").await;
    assert_eq!(c.reply().await, "200 ok\r\n");
    let received = origin.received();
    assert_eq!(
        received,
        ["NOOP", "NOOP"],
        "only clean commands reach the origin"
    );
}

#[tokio::test]
async fn malformed_passive_reply_gives_425() {
    let origin = FakeOrigin::start("220 hi\r\n", |line| {
        Some(
            if line == "PASV" {
                "227 No address today\r\n"
            } else {
                "200 ok\r\n"
            }
            .into(),
        )
    })
    .await;
    let proxy = start_proxy(origin.addr, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    c.send(b"EPSV\r\n").await;
    assert!(c.reply().await.starts_with("425 "));
    c.send(b"NOOP\r\n").await;
    assert_eq!(c.reply().await, "200 ok\r\n");
}

#[tokio::test]
async fn vanished_client_releases_its_origin_connection() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    c.send(b"NOOP\r\nNO").await; // half a command, then gone
    drop(c);
    for _ in 0..100 {
        if *origin.closed.lock().unwrap() == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the origin connection was not closed after the client vanished");
}

#[tokio::test]
async fn passive_lease_admits_the_client_once() {
    // A fake origin data port: the 227 points at it.
    let data = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let data_port = data.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = data.accept().await {
            let _ = s.write_all(b"payload").await;
        }
    });
    let origin = FakeOrigin::start("220 hi\r\n", move |line| {
        Some(match line {
            "PASV" => format!(
                "227 Entering Passive Mode (127,0,0,1,{},{}).\r\n",
                data_port >> 8,
                data_port & 0xff
            ),
            _ => "200 ok\r\n".into(),
        })
    })
    .await;
    let proxy = start_proxy(origin.addr, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    c.send(b"EPSV\r\n").await;
    let reply = c.reply().await;
    let port: u16 = reply
        .split("|||")
        .nth(1)
        .and_then(|r| r.split('|').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {reply}"));
    assert!((41000..=41009).contains(&port), "{reply}");
    let mut d = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut got = Vec::new();
    timeout(STEP, d.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"payload");
    // Single use: the listener is gone.
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
}

#[tokio::test]
async fn active_transfer_reply_waits_for_the_relayed_data() {
    // An origin that does an active-mode LIST as fast as it can: 150, connect to the PORT
    // address (the relay's listener: the handshake completes in the kernel at once), send
    // the listing (it fits in the socket buffers), close, 226. The relay still has to
    // accept, connect to the client and copy; the client makes that connect slow (its
    // listener's accept queue is full, so the relay's SYN is dropped and sent again a second
    // later). The 226 must still come after the data: curl fails a transfer whose 226 comes
    // before the data connection.
    const LISTING: usize = 64 << 10;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(origin) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let _ = write.write_all(b"220 hi\r\n").await;
                let mut lines = BufReader::new(read).lines();
                let mut port_to = None;
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(arg) = line.strip_prefix("PORT ") {
                        let n: Vec<u8> = arg.split(',').filter_map(|x| x.parse().ok()).collect();
                        port_to = Some(SocketAddrV4::new(
                            std::net::Ipv4Addr::new(n[0], n[1], n[2], n[3]),
                            u16::from(n[4]) << 8 | u16::from(n[5]),
                        ));
                        let _ = write.write_all(b"200 PORT ok\r\n").await;
                    } else if line == "LIST" {
                        let _ = write.write_all(b"150 Here it comes\r\n").await;
                        let mut data = TcpStream::connect(port_to.unwrap()).await.unwrap();
                        data.write_all(&vec![b'x'; LISTING]).await.unwrap();
                        drop(data);
                        let _ = write.write_all(b"226 Transfer complete\r\n").await;
                    } else {
                        let _ = write.write_all(b"200 ok\r\n").await;
                    }
                }
            });
        }
    });
    let proxy = start_proxy(origin, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    // The client's data listener, its accept queue (one connection) filled by a stranger.
    let data_socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    data_socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    data_socket.listen(0).unwrap();
    let data_listener: std::net::TcpListener = data_socket.into();
    let data_addr = data_listener.local_addr().unwrap();
    let _stranger = std::net::TcpStream::connect(data_addr).unwrap();
    data_listener.set_nonblocking(true).unwrap();
    let port = data_addr.port();
    c.send(format!("PORT 127,0,0,1,{},{}\r\nLIST\r\n", port >> 8, port & 0xff).as_bytes())
        .await;
    assert!(c.reply().await.starts_with("200 "));
    assert!(c.reply().await.starts_with("150 "));
    // The origin is done by now; the relay's connect waits for room.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (stranger, _) = data_listener.accept().unwrap();
    drop(stranger);
    assert_eq!(c.reply().await, "226 Transfer complete\r\n");
    // By the 226 the relayed data connection is there, all of it.
    let (data, _) = data_listener
        .accept()
        .expect("the 226 came before the data connection");
    data.set_nonblocking(false).unwrap();
    data.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut &data, &mut got).expect("the data was not all there");
    assert_eq!(got.len(), LISTING);
}

/// An origin that answers USER with 331 and PASS, after `pass_delay`, with 530 (vsftpd
/// delays failed logins); anything else gets 200.
async fn slow_login_origin(pass_delay: Duration) -> SocketAddrV4 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
        unreachable!()
    };
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let _ = write.write_all(b"220 hi\r\n").await;
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let reply: &[u8] = if line.starts_with("USER") {
                        b"331 Please specify the password.\r\n"
                    } else if line.starts_with("PASS") {
                        tokio::time::sleep(pass_delay).await;
                        b"530 Login incorrect.\r\n"
                    } else {
                        b"200 ok\r\n"
                    };
                    let _ = write.write_all(reply).await;
                }
            });
        }
    });
    addr
}

/// The memory-and-logs attack: 1.5 MB of "1\n" behind a failed login that the origin
/// answers late. The junk waits within the pipelining bound (the proxy stops reading),
/// and the session ends after 20 error replies in a row.
#[tokio::test]
async fn junk_flood_behind_a_slow_login_is_bounded() {
    let origin = slow_login_origin(Duration::from_millis(500)).await;
    let proxy = start_proxy(origin, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    assert_eq!(c.reply().await, "220 hi\r\n");
    let mut flood = b"USER a\r\nPASS b\r\n".to_vec();
    flood.extend(b"1\n".repeat(750_000));
    // The proxy stops reading, so the write never ends: another task does it.
    let (read, mut write) = c.reader.into_inner().into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&flood).await;
        write
    });
    // Everything up to the close: EOF, or a reset (the proxy closes with junk unread).
    let mut c = read;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = timeout(Duration::from_secs(10), c.read(&mut buf))
        .await
        .expect("the session did not end")
        && n > 0
    {
        got.extend_from_slice(&buf[..n]);
    }
    let got = String::from_utf8(got).unwrap();
    let mut want = String::from("331 Please specify the password.\r\n530 Login incorrect.\r\n");
    want.push_str(&"500 Syntax error: command verb must be 1 to 8 ASCII letters.\r\n".repeat(20));
    want.push_str("421 Too many errors in a row: closing control connection.\r\n");
    assert_eq!(got, want);
    // Replies owed at most 64 (each a 62-byte 500 here), plus one read of input.
    let held = proxy.ctx.peak_session_buffer();
    assert!(held <= 64 * 62 + 4096 + 512, "a session held {held} bytes");
    writer.abort();
}

/// A 20 MB STAT reply (a huge directory) reaches the client whole, while the session
/// never holds more than the reply bound and a read or two.
#[tokio::test]
async fn a_huge_stat_reply_is_streamed_whole() {
    const LINE: &str = "-rw-r--r--    1 ftp      ftp       1048576 Jan 01 00:00 file-";
    let mut reply = String::from("213-Status of /:\r\n");
    let mut i = 0u32;
    while reply.len() < 20 << 20 {
        reply.push_str(&format!("{LINE}{i:08}\r\n"));
        i += 1;
    }
    reply.push_str("213 End of status\r\n");
    let expected = reply.clone();
    let origin = FakeOrigin::start("220 hi\r\n", move |line| {
        Some(if line == "STAT /" {
            reply.clone()
        } else {
            "200 ok\r\n".into()
        })
    })
    .await;
    let proxy = start_proxy(origin.addr, 8, |_| {}).await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    c.send(b"STAT /\r\n").await;
    let got = c.reply().await;
    assert!(
        got == expected,
        "the reply differs ({} bytes, want {})",
        got.len(),
        expected.len()
    );
    c.send(b"NOOP\r\n").await;
    assert_eq!(c.reply().await, "200 ok\r\n");
    let held = proxy.ctx.peak_session_buffer();
    let bound = ftp_guard::proxy::driver::MAX_REPLY_BYTES + 2 * 8193 + 4096;
    assert!(held <= bound, "a session held {held} bytes (bound {bound})");
}

/// 60 pipelined PASVs in one write leave one lease (each new lease revokes the one
/// before), and none once the session is closed.
#[tokio::test]
async fn pipelined_passives_leave_one_lease() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 8, |s| {
        s.data_ports = "41100-41199".parse().unwrap();
    })
    .await;
    let mut c = Client::connect(proxy.addr).await;
    c.reply().await;
    c.send(&b"PASV\r\n".repeat(60)).await;
    for i in 0..60 {
        let reply = c.reply().await;
        assert!(
            reply.starts_with("227 Entering Passive Mode (127,0,0,1,"),
            "reply {i}: {reply}"
        );
    }
    let dataplane = proxy.ctx.dataplane.clone();
    let leases = || dataplane.leases().len();
    assert!(eventually(|| leases() == 1).await, "{} leases", leases());
    assert_eq!(leases(), 1);
    assert_eq!(proxy.ctx.client_leases("127.0.0.1".parse().unwrap()), 1);
    c.send(b"QUIT\r\n").await;
    assert_eq!(c.reply().await, "200 ok\r\n");
    assert!(c.closed().await);
    assert!(eventually(|| leases() == 0).await, "{} leases", leases());
    assert_eq!(proxy.ctx.client_leases("127.0.0.1".parse().unwrap()), 0);
}

/// One client address holds at most `max_leases_per_client` leases over its sessions;
/// the next passive request gets a clear 425, and a session's end frees its slot.
#[tokio::test]
async fn leases_per_client_are_capped() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 8, |s| s.max_leases_per_client = 2).await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        let mut c = Client::connect(proxy.addr).await;
        c.reply().await;
        sessions.push(c);
    }
    for c in &mut sessions[..2] {
        c.send(b"EPSV\r\n").await;
        let reply = c.reply().await;
        assert!(reply.starts_with("229 "), "{reply}");
    }
    let third = &mut sessions[2];
    third.send(b"EPSV\r\n").await;
    let refused =
        "425 Can't open data connection: too many data connections pending for your address.\r\n";
    assert_eq!(third.reply().await, refused);
    third.send(b"PORT 127,0,0,1,200,1\r\n").await;
    assert_eq!(third.reply().await, refused);
    // A session's new request replaces its own lease: no slot needed.
    sessions[0].send(b"EPSV\r\n").await;
    assert!(sessions[0].reply().await.starts_with("229 "));
    let first = sessions.remove(0);
    drop(first);
    let ctx = proxy.ctx.clone();
    assert!(eventually(|| ctx.client_leases("127.0.0.1".parse().unwrap()) == 1).await);
    sessions[1].send(b"EPSV\r\n").await;
    assert!(sessions[1].reply().await.starts_with("229 "));
}

/// A session not logged in within `login_timeout_secs` gets 421; a logged-in one stays.
#[tokio::test]
async fn login_timeout_gives_421() {
    let origin = FakeOrigin::start("220 hi\r\n", |line| {
        Some(
            match line.split(' ').next() {
                Some("USER") => "331 pw\r\n",
                Some("PASS") if line == "PASS right" => "230 in\r\n",
                Some("PASS") => "530 no\r\n",
                _ => "200 ok\r\n",
            }
            .into(),
        )
    })
    .await;
    let proxy = start_proxy(origin.addr, 8, |s| s.login_timeout_secs = 1).await;
    let started = std::time::Instant::now();
    let mut slow = Client::connect(proxy.addr).await;
    let mut quick = Client::connect(proxy.addr).await;
    slow.reply().await;
    quick.reply().await;
    slow.send(b"USER a\r\nPASS wrong\r\n").await;
    assert_eq!(slow.reply().await, "331 pw\r\n");
    assert_eq!(slow.reply().await, "530 no\r\n");
    quick.send(b"USER a\r\nPASS right\r\n").await;
    assert_eq!(quick.reply().await, "331 pw\r\n");
    assert_eq!(quick.reply().await, "230 in\r\n");
    assert_eq!(
        slow.reply().await,
        "421 Login timeout: closing control connection.\r\n"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "421 after {waited:?}"
    );
    assert!(slow.closed().await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    quick.send(b"NOOP\r\n").await;
    assert_eq!(quick.reply().await, "200 ok\r\n");
}

/// One client address may have `max_sessions_per_client` sessions; the next gets 421, and
/// a session's end makes room.
#[tokio::test]
async fn sessions_per_client_are_capped() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let proxy = start_proxy(origin.addr, 8, |s| s.max_sessions_per_client = 2).await;
    let mut first = Client::connect(proxy.addr).await;
    let mut second = Client::connect(proxy.addr).await;
    assert_eq!(first.reply().await, "220 hi\r\n");
    assert_eq!(second.reply().await, "220 hi\r\n");
    let mut third = Client::connect(proxy.addr).await;
    assert_eq!(
        third.reply().await,
        "421 Too many connections from your address, try again later.\r\n"
    );
    assert!(third.closed().await);
    drop(first);
    let ctx = proxy.ctx.clone();
    assert!(eventually(|| ctx.open_sessions().len() == 1).await);
    let mut fourth = Client::connect(proxy.addr).await;
    assert_eq!(fourth.reply().await, "220 hi\r\n");
}

/// Lowering `max_sessions` by a reload while every slot is taken takes effect as the
/// sessions end (a semaphore only forgets free permits).
#[tokio::test]
async fn lowering_max_sessions_takes_effect_as_sessions_end() {
    let origin = FakeOrigin::start("220 hi\r\n", answer_everything).await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let text = |max: usize| {
        format!(
            "max_sessions = {max}\nadmin_listen = \"127.0.0.1:0\"\n[[service]]\nname = \"reload\"\n\
             listen = \"127.0.0.1:{port}\"\norigin = \"{}\"\ndata_ports = \"41200-41209\"\n\
             dataplane = \"userspace\"\n",
            origin.addr
        )
    };
    let mut gateway = ftp_guard::gateway::Gateway::start(&Config::parse(&text(2)).unwrap())
        .await
        .unwrap();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let ctx = gateway.services()[0].clone();
    let mut a = Client::connect(addr).await;
    let mut b = Client::connect(addr).await;
    assert_eq!(a.reply().await, "220 hi\r\n");
    assert_eq!(b.reply().await, "220 hi\r\n");
    gateway
        .reload(Config::parse(&text(1)).unwrap())
        .await
        .unwrap();
    drop(a);
    assert!(eventually(|| ctx.open_sessions().len() == 1).await);
    let busy = "421 Too many connections, try again later.\r\n";
    let mut c = Client::connect(addr).await;
    assert_eq!(c.reply().await, busy, "one session open, the limit is 1");
    drop(b);
    assert!(eventually(|| ctx.open_sessions().is_empty()).await);
    let mut d = Client::connect(addr).await;
    assert_eq!(d.reply().await, "220 hi\r\n");
    let mut e = Client::connect(addr).await;
    assert_eq!(e.reply().await, busy);
    // Raising it again pays nothing back twice: two sessions now.
    gateway
        .reload(Config::parse(&text(2)).unwrap())
        .await
        .unwrap();
    let mut f = Client::connect(addr).await;
    assert_eq!(f.reply().await, "220 hi\r\n");
    let mut g = Client::connect(addr).await;
    assert_eq!(g.reply().await, busy);
    gateway.shutdown(Duration::ZERO).await;
}
