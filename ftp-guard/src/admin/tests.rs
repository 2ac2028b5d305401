//! The endpoint over real sockets: exact bytes on the wire, the token, the limits, the
//! readiness cache; the token file and the exposure warning.
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{get as get_body, post as post_body, *};
use crate::{
    config::Config,
    dataplane::userspace::{RelaySettings, UserspaceRelay},
    metrics::Metrics,
};

const TOKEN: &str = "s3cret-Token_1";
/// Bound on every wait in these tests (they finish far sooner).
const STEP: Duration = Duration::from_secs(5);

fn limits() -> Limits {
    Limits {
        max_connections: 4,
        read_timeout: Duration::from_millis(300),
        write_timeout: Duration::from_secs(2),
    }
}

async fn start(state: AdminState) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Arc::new(state), std::future::pending()));
    addr
}

/// Sends `request`, returns all the endpoint wrote before closing (a reset, as from a
/// connection closed at accept with the request unread, ends it too).
async fn exchange(addr: SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    match tokio::time::timeout(STEP, stream.read_to_end(&mut out))
        .await
        .expect("the endpoint answers and closes")
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{e}"),
    }
    String::from_utf8(out).unwrap()
}

fn get(path: &str, authorization: Option<&str>) -> String {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n")
}

fn response(code: &str, kind: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
}

const METRICS_KIND: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[tokio::test]
async fn token_guards_status_and_metrics_but_not_probes() {
    let state = AdminState::new(Registry::default(), limits());
    state.set_token(Some(TOKEN.into()));
    let addr = start(state).await;
    let missing = response(
        "401 Unauthorized",
        "text/plain",
        "Www-Authenticate: Bearer realm=\"ftp-guard\"\r\n",
        "this path needs Authorization: Bearer <admin token>\n",
    );
    let wrong = response(
        "401 Unauthorized",
        "text/plain",
        "Www-Authenticate: Bearer realm=\"ftp-guard\", error=\"invalid_token\"\r\n",
        "wrong token\n",
    );
    let right = format!("Bearer {TOKEN}");
    let metrics = response("200 OK", METRICS_KIND, "", "# EOF\n");
    for path in ["/metrics", "/status"] {
        assert_eq!(exchange(addr, &get(path, None)).await, missing, "{path}");
        for bad in [
            "Bearer s3cret-Token_2",
            "Bearer s3cret-Token_",
            "Basic czNjcmV0LVRva2VuXzE=",
            "Bearer",
        ] {
            let expected = if bad.starts_with("Bearer ") {
                &wrong
            } else {
                &missing
            };
            assert_eq!(
                &exchange(addr, &get(path, Some(bad))).await,
                expected,
                "{bad}"
            );
        }
    }
    assert_eq!(
        exchange(addr, &get("/metrics", Some(&right))).await,
        metrics
    );
    // Header name and scheme in any case.
    let lower = format!("GET /metrics HTTP/1.1\r\nauthorization: bearer {TOKEN}\r\n\r\n");
    assert_eq!(exchange(addr, &lower).await, metrics);
    let status = exchange(addr, &get("/status", Some(&right))).await;
    let (head, body) = status.split_once("\r\n\r\n").unwrap();
    assert_eq!(
        head,
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close",
            body.len()
        )
    );
    let parsed: Status = serde_json::from_str(body).unwrap();
    assert_eq!(
        (
            parsed.version.as_str(),
            parsed.services.len(),
            parsed.kernel.is_none()
        ),
        (env!("CARGO_PKG_VERSION"), 0, true)
    );
    assert_eq!(
        exchange(addr, &get("/healthz", None)).await,
        response("200 OK", "text/plain", "", "ok\n")
    );
    assert_eq!(
        exchange(addr, &get("/readyz", None)).await,
        response(
            "503 Service Unavailable",
            "text/plain",
            "",
            "no service running\n"
        )
    );
}

/// What `ftp-guard status` does: with the token it gets the body, without it an error
/// that says what is missing.
#[tokio::test]
async fn the_status_client_sends_the_token() {
    let state = AdminState::new(Registry::default(), limits());
    state.set_token(Some(TOKEN.into()));
    let addr = start(state).await;
    assert_eq!(
        get_body(addr, "/metrics", Some(TOKEN)).await.unwrap(),
        "# EOF\n"
    );
    assert_eq!(
        get_body(addr, "/metrics", None)
            .await
            .unwrap_err()
            .to_string(),
        "HTTP/1.1 401 Unauthorized: the admin endpoint wants its token (--token-file, or \
         --config with admin_token_file)"
    );
}

#[tokio::test]
async fn without_a_token_everything_is_open() {
    let addr = start(AdminState::new(Registry::default(), limits())).await;
    assert_eq!(
        exchange(addr, &get("/metrics", None)).await,
        response("200 OK", METRICS_KIND, "", "# EOF\n")
    );
    assert_eq!(
        exchange(addr, &get("/metrics", Some("Bearer anything"))).await,
        response("200 OK", METRICS_KIND, "", "# EOF\n")
    );
}

/// What is no GET of a route: each answered whole, the connection closed.
#[tokio::test]
async fn other_methods_unknown_paths_and_oversized_heads() {
    let addr = start(AdminState::new(Registry::default(), limits())).await;
    assert_eq!(
        exchange(
            addr,
            "POST /status HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        )
        .await,
        response(
            "405 Method Not Allowed",
            "text/plain",
            "",
            "GET only (POST for /bans/unban)\n"
        )
    );
    let not_found = response(
        "404 Not Found",
        "text/plain",
        "",
        "not found: /metrics /healthz /readyz /status\n",
    );
    for path in ["/", "/statusx", "/healthz?verbose"] {
        assert_eq!(exchange(addr, &get(path, None)).await, not_found, "{path}");
    }
    // A head over MAX_REQUEST: hyper's own 431, no body.
    let huge = format!(
        "GET /healthz HTTP/1.1\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(MAX_REQUEST)
    );
    assert_eq!(
        exchange(addr, &huge).await,
        "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
}

/// `ftp-guard status` against an endpoint that is not ready: the status line is the error.
#[tokio::test]
async fn the_status_client_reports_other_answers_by_their_status_line() {
    let addr = start(AdminState::new(Registry::default(), limits())).await;
    assert_eq!(get_body(addr, "/healthz", None).await.unwrap(), "ok\n");
    assert_eq!(
        get_body(addr, "/readyz", None)
            .await
            .unwrap_err()
            .to_string(),
        "HTTP/1.1 503 Service Unavailable"
    );
}

#[tokio::test]
async fn a_half_sent_request_is_cut_after_the_timeout_while_others_are_served() {
    let addr = start(AdminState::new(Registry::default(), limits())).await;
    let started = Instant::now();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    assert_eq!(
        exchange(addr, &get("/healthz", None)).await,
        response("200 OK", "text/plain", "", "ok\n")
    );
    let mut out = Vec::new();
    tokio::time::timeout(STEP, slow.read_to_end(&mut out))
        .await
        .expect("the half request is cut")
        .unwrap();
    assert_eq!(out, b"");
    assert!(started.elapsed() >= limits().read_timeout);
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_unanswered() {
    let addr = start(AdminState::new(
        Registry::default(),
        Limits {
            read_timeout: STEP * 4,
            ..limits()
        },
    ))
    .await;
    // The cap's worth of idle connections (accepted in order, before the next one).
    let mut idle = Vec::new();
    for _ in 0..limits().max_connections {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    assert_eq!(exchange(addr, &get("/healthz", None)).await, "");
    // One ends: its place is free again once the endpoint has seen it go.
    drop(idle.pop());
    let deadline = Instant::now() + STEP;
    loop {
        let answer = exchange(addr, &get("/healthz", None)).await;
        if !answer.is_empty() {
            assert_eq!(answer, response("200 OK", "text/plain", "", "ok\n"));
            break;
        }
        assert!(Instant::now() < deadline, "no place freed");
        tokio::task::yield_now().await;
    }
}

/// A fake origin that records whom it accepted.
struct CountingOrigin {
    addr: std::net::SocketAddrV4,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl CountingOrigin {
    async fn start() -> CountingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let SocketAddr::V4(addr) = listener.local_addr().unwrap() else {
            unreachable!()
        };
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        tokio::spawn(async move {
            while let Ok((_, peer)) = listener.accept().await {
                seen.lock().unwrap().push(peer);
            }
        });
        CountingOrigin { addr, peers }
    }

    /// Connections accepted so far: a marker connection is accepted after every
    /// earlier one (accept order), so once it is seen the count is complete.
    async fn accepted(&self) -> usize {
        let marker = TcpStream::connect(self.addr).await.unwrap();
        let marker = marker.local_addr().unwrap();
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(i) = self.peers.lock().unwrap().iter().position(|p| *p == marker) {
                return i;
            }
            assert!(Instant::now() < deadline, "marker never accepted");
            tokio::task::yield_now().await;
        }
    }
}

fn userspace_service(origin: std::net::SocketAddrV4) -> Arc<ServiceContext> {
    let text = format!(
        "[[service]]\nname = \"ready\"\nlisten = \"127.0.0.1:2121\"\norigin = \"{origin}\"\n\
         data_ports = \"41000-41009\"\ndataplane = \"userspace\"\n"
    );
    let config = Config::parse(&text).unwrap();
    let service = config.services().next().unwrap().clone();
    let addresses = service.ipv4().unwrap();
    let relay = UserspaceRelay::new(
        RelaySettings {
            bind_ip: *addresses.listen.ip(),
            origin_side_ip: *addresses.listen.ip(),
            active_port_20: false,
            ports: service.data_ports,
            public_ip: addresses.public_ip,
        },
        crate::dataplane::DataTimeouts::of(&service),
    );
    Arc::new(ServiceContext::new(
        service,
        Arc::new(relay),
        crate::proxy::SessionSlots::new(4),
        Arc::new(Metrics::new()),
    ))
}

#[tokio::test]
async fn readyz_asked_50_times_in_a_second_probes_the_origin_once() {
    let origin = CountingOrigin::start().await;
    let state = AdminState::new(Registry::default(), limits());
    *state.services.write().unwrap() = vec![userspace_service(origin.addr)];
    let addr = start(state).await;
    let started = Instant::now();
    let mut requests = Vec::new();
    for _ in 0..50 {
        let request = get("/readyz", None);
        requests.push(tokio::spawn(async move { exchange(addr, &request).await }));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for r in requests {
        assert_eq!(
            r.await.unwrap(),
            response("200 OK", "text/plain", "", "ready\n")
        );
    }
    assert!(
        started.elapsed() < READY_CACHE,
        "the test ran too slowly to tell"
    );
    assert_eq!(origin.accepted().await, 1);
}

#[test]
fn token_files_others_may_read_are_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::temp_dir().join(format!("ftp-guard-token-{}", std::process::id()));
    let write = |text: &str, mode: u32| {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let shown = path.display();
    write(&format!("{TOKEN}\n"), 0o600);
    assert_eq!(read_token(&path).unwrap(), TOKEN);
    write(&format!("  {TOKEN}  \nsecond line\n"), 0o640);
    assert_eq!(read_token(&path).unwrap(), TOKEN);
    write(&format!("{TOKEN}\n"), 0o644);
    assert_eq!(
        read_token(&path).unwrap_err().to_string(),
        format!(
            "admin_token_file: {shown}: mode 644 lets other users read or change the token; chmod o-rw it"
        )
    );
    write("\n", 0o600);
    assert_eq!(
        read_token(&path).unwrap_err().to_string(),
        format!("admin_token_file: {shown}: the file holds no token")
    );
    std::fs::remove_file(&path).unwrap();
    assert!(
        read_token(&path)
            .unwrap_err()
            .to_string()
            .starts_with(&format!("admin_token_file: {shown}: No such file"))
    );
}

#[test]
fn an_exposed_endpoint_without_a_token_is_warned_about() {
    let exposed: SocketAddr = "192.0.2.10:9640".parse().unwrap();
    assert_eq!(
        exposure_warning(exposed, false).as_deref(),
        Some(
            "admin_listen 192.0.2.10:9640 is not a loopback address and no admin_token_file \
             is set: anyone who reaches it can read /status (client addresses, live data \
             ports) and /metrics"
        )
    );
    assert_eq!(exposure_warning(exposed, true), None);
    assert_eq!(
        exposure_warning("127.0.0.1:9640".parse().unwrap(), false),
        None
    );
    assert_eq!(exposure_warning("[::1]:9640".parse().unwrap(), false), None);
}

/// `POST /bans/unban?addr=`: behind the token; lifts the ban once (then 404), says what
/// is wrong with a bad request; `/status` lists the ban before; `post` carries the answer
/// or the error with the endpoint's words.
#[tokio::test]
async fn unban_lifts_a_ban_behind_the_token() {
    let now = tokio::time::Instant::now().into_std();
    let bans = crate::policy::bans::banned_for_tests(
        &["192.0.2.7", "2001:db8::7"],
        Duration::from_secs(600),
        now,
    );
    let state = AdminState::new(Registry::default(), limits());
    state.set_token(Some(TOKEN.into()));
    *state.bans.lock().unwrap() = Some(bans.clone());
    let addr = start(state).await;
    let right = format!("Bearer {TOKEN}");
    let post = |path: &str, auth: Option<&str>| {
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!("POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\n\r\n")
    };
    let status = get_body(addr, "/status", Some(TOKEN)).await.unwrap();
    let status: Status = serde_json::from_str(&status).unwrap();
    let listed: Vec<_> = status
        .bans
        .iter()
        .map(|b| (b.address.as_str(), b.service.as_str(), b.reason.as_str()))
        .collect();
    assert_eq!(
        listed,
        [
            ("192.0.2.7", "ftp", "login_failures"),
            ("2001:db8::7", "ftp", "login_failures")
        ]
    );
    let text = |code, body: &str| response(code, "text/plain", "", body);
    let cases = [
        (
            post("/bans/unban?addr=192.0.2.7", None),
            response(
                "401 Unauthorized",
                "text/plain",
                "Www-Authenticate: Bearer realm=\"ftp-guard\"\r\n",
                "this path needs Authorization: Bearer <admin token>\n",
            ),
        ),
        (
            get("/bans/unban?addr=192.0.2.7", Some(&right)),
            text("405 Method Not Allowed", "POST only\n"),
        ),
        (
            post("/bans/unban", Some(&right)),
            text("400 Bad Request", "want ?addr=ADDRESS\n"),
        ),
        (
            post("/bans/unban?addr=192.0.2.x", Some(&right)),
            text("400 Bad Request", "`192.0.2.x` is not an IP address\n"),
        ),
        (
            post("/bans/unban?addr=::ffff:192.0.2.7", Some(&right)),
            text("200 OK", "unbanned 192.0.2.7\n"),
        ),
        (
            post("/bans/unban?addr=192.0.2.7", Some(&right)),
            text("404 Not Found", "192.0.2.7 is not banned\n"),
        ),
    ];
    for (request, want) in cases {
        assert_eq!(exchange(addr, &request).await, want, "{request}");
    }
    assert_eq!(
        post_body(addr, "/bans/unban?addr=2001%3Adb8::7", Some(TOKEN))
            .await
            .unwrap(),
        "unbanned 2001:db8::7\n"
    );
    let err = post_body(addr, "/bans/unban?addr=2001:db8::7", Some(TOKEN))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "HTTP/1.1 404 Not Found: 2001:db8::7 is not banned"
    );
    assert_eq!(bans.list(now), vec![]);
}

/// A ban's remaining seconds in `/status` count down from its length, and
/// `ftp-guard status` rounds them up: banned 100.8 s ago for 600 s shows 500.
#[test]
fn a_bans_remaining_seconds_count_down() {
    let banned_at = tokio::time::Instant::now().into_std() - Duration::from_millis(100_800);
    let bans =
        crate::policy::bans::banned_for_tests(&["192.0.2.7"], Duration::from_secs(600), banned_at);
    let state = AdminState::new(Registry::default(), limits());
    *state.bans.lock().unwrap() = Some(bans);
    let status = super::status::status(&state);
    let remaining = status.bans[0].remaining_secs;
    assert!((499.0..=499.2).contains(&remaining), "{remaining}");
    let rendered = crate::status_cmd::render(&status);
    assert_eq!(
        &rendered[rendered.find("BANS\n").unwrap()..],
        "BANS\n\
         ADDRESS    SERVICE  REMAINING_S  REASON\n\
         192.0.2.7  ftp      500          login_failures\n"
    );
}
