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
    proxy::{self, ServiceContext},
};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
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
    let relay = UserspaceRelay::new(
        RelaySettings {
            bind_ip: *service.listen.ip(),
            origin_side_ip: *service.listen.ip(),
            active_port_20: false,
            ports: service.data_ports,
            public_ip: service.public_ip(),
        },
        DataTimeouts::of(&service),
    );
    let ctx = Arc::new(ServiceContext::new(
        service,
        Arc::new(relay),
        Arc::new(Semaphore::new(max_sessions)),
        Arc::new(ftp_guard::metrics::Metrics::new()),
    ));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(proxy::serve(listener, ctx, async move {
        let _ = stopped.await;
    }));
    Proxy { addr, _stop: stop }
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
