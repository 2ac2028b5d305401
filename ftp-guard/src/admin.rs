//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (programs attached and every origin reachable) and `/status` (JSON,
//! what `ftp-guard status` shows). A deliberately small HTTP/1.1 responder: GET only, one
//! request per connection, bounded request size, connection count and time.
//!
//! `/status` names every client and live lease, and `/metrics` the traffic: with a token
//! configured (`admin_token_file`) both want `Authorization: Bearer <token>`. `/healthz`
//! and `/readyz` stay open for probes; `/readyz` probes the origins at most once per
//! [`READY_CACHE`], however often it is asked.
use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};
use tracing::{debug, warn};

use crate::{
    bpf, dataplane::LeaseInfo, dataplane::Snapshot, proxy::ServiceContext,
    sync::LockUnpoisoned as _,
};

const MAX_REQUEST: usize = 8192;
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long one `/readyz` probe of the origins answers for.
pub const READY_CACHE: Duration = Duration::from_secs(2);

/// Bounds on the endpoint's connections: what one scraper, prober or attacker can hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; more are closed at accept.
    pub max_connections: usize,
    /// Time for the request head to arrive (a client sending half a request is cut then).
    pub read_timeout: Duration,
    /// Time to write the whole response (a client that stops reading is cut then).
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// What the endpoint reads; the gateway updates it on start and reload.
pub struct AdminState {
    pub registry: Registry,
    pub services: RwLock<Vec<Arc<ServiceContext>>>,
    pub kernel: Mutex<Option<bpf::Handle>>,
    pub started: Instant,
    /// Bearer token `/status` and `/metrics` require; `None`: they are open.
    pub token: RwLock<Option<String>>,
    pub limits: Limits,
    /// The last readiness probe: when it started and what it found. Held across a probe,
    /// so concurrent requests wait for one probe instead of each opening connections.
    ready: tokio::sync::Mutex<Option<(Instant, Vec<String>)>>,
}

impl AdminState {
    pub fn new(registry: Registry, limits: Limits) -> Self {
        AdminState {
            registry,
            services: RwLock::default(),
            kernel: Mutex::default(),
            started: Instant::now(),
            token: RwLock::default(),
            limits,
            ready: tokio::sync::Mutex::default(),
        }
    }

    pub fn set_token(&self, token: Option<String>) {
        *self.token.write().unwrap_or_else(|e| e.into_inner()) = token;
    }
}

/// Reads a bearer token file: its first line, trimmed. Refused when others may read or
/// write it (the token guards client addresses and leases) or when it is empty.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let at = || format!("admin_token_file: {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
    let mode = meta.permissions().mode() & 0o777;
    anyhow::ensure!(
        mode & 0o006 == 0,
        "{}: mode {mode:03o} lets other users read or change the token; chmod o-rw it",
        at()
    );
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
    let token = text.lines().next().unwrap_or("").trim();
    anyhow::ensure!(!token.is_empty(), "{}: the file holds no token", at());
    anyhow::ensure!(
        token.bytes().all(|b| b.is_ascii_graphic()),
        "{}: the token must be printable ASCII without spaces",
        at()
    );
    Ok(token.to_owned())
}

/// The warning for an endpoint anyone on the network may read, if it is one.
pub fn exposure_warning(listen: SocketAddr, token: bool) -> Option<String> {
    (!listen.ip().is_loopback() && !token).then(|| {
        format!(
            "admin_listen {listen} is not a loopback address and no admin_token_file is set: \
             anyone who reaches it can read /status (client addresses, live data ports) and /metrics"
        )
    })
}

/// `/status`, also the input of `ftp-guard status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub uptime_secs: f64,
    pub services: Vec<ServiceStatus>,
    pub kernel: Option<KernelStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    pub name: String,
    pub listen: String,
    pub origin: String,
    pub public_ip: String,
    pub dataplane: String,
    pub sessions: Vec<SessionStatus>,
    pub leases: Vec<LeaseInfo>,
    pub totals: Snapshot,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionStatus {
    pub id: u64,
    pub client: String,
    pub age_secs: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct KernelStatus {
    /// (interface, mode)
    pub attachments: Vec<(String, String)>,
    /// (counter, packets)
    pub counters: Vec<(String, u64)>,
}

pub async fn serve(
    listener: TcpListener,
    state: Arc<AdminState>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Over the cap: closed at once (dropped), so idle connections cannot pile up.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!(%peer, "admin connection refused: too many open");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            handle(stream, peer, &state).await;
            drop(slot);
        });
    }
}

/// Why no request head was read.
enum HeadProblem {
    Closed,
    TooLarge,
}

async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadProblem> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return Err(HeadProblem::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_REQUEST {
            return Err(HeadProblem::TooLarge);
        }
    }
    Ok(buf)
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, state: &AdminState) {
    let limits = state.limits;
    let head = match tokio::time::timeout(limits.read_timeout, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadProblem::Closed)) => return,
        Ok(Err(HeadProblem::TooLarge)) => {
            let response = Response::text(431, "request too large\n");
            let _ = tokio::time::timeout(limits.write_timeout, response.write(&mut stream)).await;
            return;
        }
        Err(_) => {
            debug!(%peer, "admin request head timed out");
            return;
        }
    };
    let response = route(&String::from_utf8_lossy(&head), state).await;
    if tokio::time::timeout(limits.write_timeout, response.write(&mut stream))
        .await
        .is_err()
    {
        debug!(%peer, "admin response write timed out");
    }
}

/// A response: status code, content type, extra header lines, body.
struct Response {
    code: u16,
    kind: &'static str,
    extra: &'static str,
    body: String,
}

impl Response {
    fn text(code: u16, body: impl Into<String>) -> Response {
        Response {
            code,
            kind: "text/plain",
            extra: "",
            body: body.into(),
        }
    }

    async fn write(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let reason = match self.code {
            200 => "OK",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            431 => "Request Header Fields Too Large",
            503 => "Service Unavailable",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.code,
            self.kind,
            self.body.len(),
            self.extra,
        );
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(self.body.as_bytes()).await?;
        stream.shutdown().await
    }
}

/// Whether the request may see `/status` and `/metrics`: `Err` is the 401 to send.
fn authorize(head: &str, state: &AdminState) -> Result<(), Response> {
    let token = state.token.read().unwrap_or_else(|e| e.into_inner());
    let Some(token) = token.as_deref() else {
        return Ok(());
    };
    let given = head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("authorization")
            .then(|| value.trim())
    });
    let bearer = given.and_then(|v| {
        let (scheme, credentials) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| credentials.trim())
    });
    match bearer {
        Some(b) if same_secret(b.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Response {
            code: 401,
            kind: "text/plain",
            extra: "WWW-Authenticate: Bearer realm=\"ftp-guard\", error=\"invalid_token\"\r\n",
            body: "wrong token\n".into(),
        }),
        None => Err(Response {
            code: 401,
            kind: "text/plain",
            extra: "WWW-Authenticate: Bearer realm=\"ftp-guard\"\r\n",
            body: "this path needs Authorization: Bearer <admin token>\n".into(),
        }),
    }
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn route(head: &str, state: &AdminState) -> Response {
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        return Response::text(405, "GET only\n");
    }
    if matches!(path, "/metrics" | "/status")
        && let Err(denied) = authorize(head, state)
    {
        return denied;
    }
    match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => Response {
                    code: 200,
                    kind: "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    extra: "",
                    body: text,
                },
                Err(_) => Response::text(500, "encoding failed\n"),
            }
        }
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" => {
            let problems = cached_readiness(state).await;
            if problems.is_empty() {
                Response::text(200, "ready\n")
            } else {
                Response::text(503, problems.join("\n") + "\n")
            }
        }
        "/status" => match serde_json::to_string_pretty(&status(state)) {
            Ok(json) => Response {
                code: 200,
                kind: "application/json",
                extra: "",
                body: json + "\n",
            },
            Err(e) => Response::text(500, format!("{e}\n")),
        },
        _ => Response::text(404, "not found: /metrics /healthz /readyz /status\n"),
    }
}

/// [`readiness`], probed at most once per [`READY_CACHE`]: a prober (or anyone) asking
/// often must not turn into a stream of connections to the origins.
async fn cached_readiness(state: &AdminState) -> Vec<String> {
    let mut last = state.ready.lock().await;
    if let Some((at, problems)) = last.as_ref()
        && at.elapsed() < READY_CACHE
    {
        return problems.clone();
    }
    let at = Instant::now();
    let problems = readiness(state).await;
    *last = Some((at, problems.clone()));
    problems
}

/// What keeps the gateway from being ready; empty when ready.
async fn readiness(state: &AdminState) -> Vec<String> {
    let services = state
        .services
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let mut problems = Vec::new();
    if services.is_empty() {
        problems.push("no service running".to_owned());
    }
    let kernel_wanted = services
        .iter()
        .any(|s| s.service.dataplane == crate::config::DataplaneKind::Kernel);
    let attached = state
        .kernel
        .lock_unpoisoned()
        .as_ref()
        .is_some_and(|k| !k.lock().attachments().is_empty());
    if kernel_wanted && !attached {
        problems.push("kernel data path not attached".to_owned());
    }
    let probes = services.iter().map(|s| {
        let origin = s.service.origin;
        let name = s.service.name.clone();
        async move {
            match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(origin)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!(
                    "service `{name}`: origin {origin} unreachable: {e}"
                )),
                Err(_) => Some(format!("service `{name}`: origin {origin} did not answer")),
            }
        }
    });
    for p in futures_join(probes).await.into_iter().flatten() {
        problems.push(p);
    }
    problems
}

/// Runs the futures concurrently (a handful of origin probes).
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

fn status(state: &AdminState) -> Status {
    let services = state
        .services
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    let kernel = state.kernel.lock_unpoisoned().clone().map(|k| {
        let k = k.lock();
        KernelStatus {
            attachments: k
                .attachments()
                .iter()
                .map(|(i, m)| (i.clone(), m.to_string()))
                .collect(),
            counters: k
                .counters()
                .map(|c| c.0.iter().map(|(c, v)| (c.name().to_owned(), *v)).collect())
                .unwrap_or_default(),
        }
    });
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_secs: state.started.elapsed().as_secs_f64(),
        services: services
            .iter()
            .map(|c| ServiceStatus {
                name: c.service.name.clone(),
                listen: c.service.listen.to_string(),
                origin: c.service.origin.to_string(),
                public_ip: c.service.public_ip().to_string(),
                dataplane: format!("{:?}", c.service.dataplane).to_lowercase(),
                sessions: c
                    .open_sessions()
                    .into_iter()
                    .map(|(id, s)| SessionStatus {
                        id,
                        client: s.client.to_string(),
                        age_secs: s.since.elapsed().as_secs_f64(),
                    })
                    .collect(),
                leases: c.dataplane.leases(),
                totals: c.dataplane.snapshot(),
            })
            .collect(),
        kernel,
    }
}

/// How long `ftp-guard status` waits for each step.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches `path` from an admin endpoint (for `ftp-guard status`): the body of a 200.
/// `token`: sent as `Authorization: Bearer`.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let mut stream = tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("timed out")?
        .with_context(|| {
            format!(
                "cannot reach the admin endpoint at {addr} (is ftp-guard running? see admin_listen)"
            )
        })?;
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(CLIENT_TIMEOUT, stream.read_to_string(&mut response))
        .await
        .context("timed out")??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    let status_line = head.lines().next().unwrap_or(head);
    if status_line.starts_with("HTTP/1.1 401") {
        anyhow::bail!(
            "{status_line}: the admin endpoint wants its token (--token-file, or --config with admin_token_file)"
        );
    }
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{status_line}");
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::{get as get_body, *};
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
            "WWW-Authenticate: Bearer realm=\"ftp-guard\"\r\n",
            "this path needs Authorization: Bearer <admin token>\n",
        );
        let wrong = response(
            "401 Unauthorized",
            "text/plain",
            "WWW-Authenticate: Bearer realm=\"ftp-guard\", error=\"invalid_token\"\r\n",
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
        let relay = UserspaceRelay::new(
            RelaySettings {
                bind_ip: *service.listen.ip(),
                origin_side_ip: *service.listen.ip(),
                active_port_20: false,
                ports: service.data_ports,
                public_ip: service.public_ip(),
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
}
