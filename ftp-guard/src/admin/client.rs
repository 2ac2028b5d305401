//! The admin endpoint's client, for `ftp-guard status` and `ftp-guard unban`: one GET or
//! POST on hyper's HTTP/1.1 client connection, the body of a 200 or an error that says
//! what went wrong.
use std::{net::SocketAddr, time::Duration};

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{
    Method, Request, StatusCode,
    header::{AUTHORIZATION, CONNECTION, HOST},
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// How long `ftp-guard status` waits for each step (connecting, then the exchange).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Fetches `path` from an admin endpoint (for `ftp-guard status`): the body of a 200.
/// `token`: sent as `Authorization: Bearer`.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    request(Method::GET, addr, path, token).await
}

/// POSTs to `path` (for `ftp-guard unban`): the body of a 200; otherwise an error with
/// the status line and the endpoint's words (e.g. `404 Not Found: 192.0.2.7 is not banned`).
pub async fn post(addr: SocketAddr, path: &str, token: Option<&str>) -> anyhow::Result<String> {
    request(Method::POST, addr, path, token).await
}

async fn request(
    method: Method,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let stream = tokio::time::timeout(CLIENT_TIMEOUT, TcpStream::connect(addr))
        .await
        .context("timed out")?
        .with_context(|| {
            format!(
                "cannot reach the admin endpoint at {addr} (is ftp-guard running? see admin_listen)"
            )
        })?;
    tokio::time::timeout(CLIENT_TIMEOUT, exchange(method, stream, addr, path, token))
        .await
        .context("timed out")?
}

async fn exchange(
    method: Method,
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> anyhow::Result<String> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    // Drives the connection; it ends with the response (Connection: close).
    tokio::spawn(connection);
    let post = method == Method::POST;
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr.to_string())
        .header(CONNECTION, "close");
    if let Some(token) = token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new())?)
        .await?;
    let status_line = format!("{:?} {}", response.version(), response.status());
    let code = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if code == StatusCode::UNAUTHORIZED {
        anyhow::bail!(
            "{status_line}: the admin endpoint wants its token (--token-file, or --config with admin_token_file)"
        );
    }
    let body =
        String::from_utf8(body.to_vec()).context("the admin endpoint's answer is not UTF-8")?;
    if post {
        anyhow::ensure!(code == StatusCode::OK, "{status_line}: {}", body.trim_end());
    }
    anyhow::ensure!(code == StatusCode::OK, "{status_line}");
    Ok(body)
}
