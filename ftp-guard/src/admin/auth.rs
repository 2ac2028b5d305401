//! The admin token: reading it from its file, checking a request's bearer credentials
//! against it, and the warning for an endpoint that has none where others can reach it.
use std::{net::SocketAddr, path::Path};

use hyper::header::{AUTHORIZATION, HeaderMap};

use super::{AdminState, routes::Answer};
use crate::sync::RwLockUnpoisoned as _;

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

/// Whether the request may see `/status` and `/metrics`: `Err` is the 401 to send.
pub(super) fn authorize(headers: &HeaderMap, state: &AdminState) -> Result<(), Answer> {
    let token = state.token.read_unpoisoned();
    let Some(token) = token.as_deref() else {
        return Ok(());
    };
    match bearer(headers) {
        Some(given) if same_secret(given.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(Answer::unauthorized(
            "Bearer realm=\"ftp-guard\", error=\"invalid_token\"",
            "wrong token\n",
        )),
        None => Err(Answer::unauthorized(
            "Bearer realm=\"ftp-guard\"",
            "this path needs Authorization: Bearer <admin token>\n",
        )),
    }
}

/// The credentials of an `Authorization: Bearer …` header (scheme in any case).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// Compares in time independent of where the inputs differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
