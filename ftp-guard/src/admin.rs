//! The admin HTTP endpoint: `/metrics` (Prometheus text), `/healthz` (the process
//! answers), `/readyz` (programs attached and every origin reachable) and `/status` (JSON,
//! what `ftp-guard status` shows). A deliberately small HTTP/1.1 responder: GET only, one
//! request per connection, bounded request size and time.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, warn};

use crate::{dataplane::LeaseInfo, dataplane::Snapshot, kernel::Kernel, proxy::ServiceContext};

const MAX_REQUEST: usize = 8192;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// What the endpoint reads; the gateway updates it on start and reload.
pub struct AdminState {
    pub registry: Registry,
    pub services: RwLock<Vec<Arc<ServiceContext>>>,
    pub kernel: Mutex<Option<Arc<Mutex<Kernel>>>>,
    pub started: Instant,
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
        let state = state.clone();
        tokio::spawn(async move {
            if let Err(e) = tokio::time::timeout(REQUEST_TIMEOUT, handle(stream, &state)).await {
                debug!(%peer, error = %e, "admin request timed out");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, state: &AdminState) {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_REQUEST {
            let _ = respond(&mut stream, 431, "text/plain", "request too large\n").await;
            return;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if method != "GET" {
        let _ = respond(&mut stream, 405, "text/plain", "GET only\n").await;
        return;
    }
    let (code, kind, body) = match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => (
                    200,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    text,
                ),
                Err(_) => (500, "text/plain", "encoding failed\n".into()),
            }
        }
        "/healthz" => (200, "text/plain", "ok\n".into()),
        "/readyz" => {
            let problems = readiness(state).await;
            if problems.is_empty() {
                (200, "text/plain", "ready\n".into())
            } else {
                (503, "text/plain", problems.join("\n") + "\n")
            }
        }
        "/status" => match serde_json::to_string_pretty(&status(state)) {
            Ok(json) => (200, "application/json", json + "\n"),
            Err(e) => (500, "text/plain", format!("{e}\n")),
        },
        _ => (
            404,
            "text/plain",
            "not found: /metrics /healthz /readyz /status\n".into(),
        ),
    };
    let _ = respond(&mut stream, code, kind, &body).await;
}

async fn respond(stream: &mut TcpStream, code: u16, kind: &str, body: &str) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
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
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .is_some_and(|k| {
            !k.lock()
                .unwrap_or_else(|e| e.into_inner())
                .attachments()
                .is_empty()
        });
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
    let kernel = state
        .kernel
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .map(|k| {
            let k = k.lock().unwrap_or_else(|e| e.into_inner());
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

/// Fetches `path` from an admin endpoint (for `ftp-guard status`): the body of a 200.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    let mut stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("timed out")?
        .with_context(|| {
            format!(
                "cannot reach the admin endpoint at {addr} (is ftp-guard running? see admin_listen)"
            )
        })?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_string(&mut response))
        .await
        .context("timed out")??;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "{}",
        head.lines().next().unwrap_or(head)
    );
    Ok(body.to_owned())
}
