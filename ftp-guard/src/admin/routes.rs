//! What each path answers: [`answer`] routes a request (GET, and POST for
//! `/bans/unban`; `/status`, `/metrics` and the unban behind the token), [`Answer`] is the
//! response before it becomes hyper's.
use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue, WWW_AUTHENTICATE},
};

use super::{AdminState, auth::authorize, readiness::cached_readiness, status::status};

const METRICS_KIND: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A response: status code, content type, the 401's challenge, body.
#[derive(Debug, PartialEq)]
pub(super) struct Answer {
    code: StatusCode,
    kind: &'static str,
    /// `WWW-Authenticate`, for a 401.
    challenge: Option<&'static str>,
    body: String,
}

impl Answer {
    fn new(code: StatusCode, kind: &'static str, body: String) -> Answer {
        Answer {
            code,
            kind,
            challenge: None,
            body,
        }
    }

    fn text(code: StatusCode, body: impl Into<String>) -> Answer {
        Answer::new(code, "text/plain", body.into())
    }

    pub(super) fn unauthorized(challenge: &'static str, body: &str) -> Answer {
        Answer {
            challenge: Some(challenge),
            ..Answer::text(StatusCode::UNAUTHORIZED, body)
        }
    }

    /// hyper's response; the header lines in the order they always had.
    pub(super) fn into_http(self) -> Response<Full<Bytes>> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(self.kind));
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        if let Some(challenge) = self.challenge {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        let mut response = Response::new(Full::new(Bytes::from(self.body)));
        *response.status_mut() = self.code;
        *response.headers_mut() = headers;
        response
    }
}

/// The answer to one request.
pub(super) async fn answer<B>(request: &Request<B>, state: &AdminState) -> Answer {
    if request.uri().path() == UNBAN {
        if request.method() != Method::POST {
            return Answer::text(StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
        }
        if let Err(denied) = authorize(request.headers(), state) {
            return denied;
        }
        return unban(request.uri().query(), state);
    }
    if request.method() != Method::GET {
        return Answer::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET only (POST for /bans/unban)\n",
        );
    }
    // The request target as sent, query included: `/status?x` is no route.
    let path = request.uri().path_and_query().map_or("", |p| p.as_str());
    if matches!(path, "/metrics" | "/status")
        && let Err(denied) = authorize(request.headers(), state)
    {
        return denied;
    }
    match path {
        "/metrics" => {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
                Ok(()) => Answer::new(StatusCode::OK, METRICS_KIND, text),
                Err(_) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
            }
        }
        "/healthz" => Answer::text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let problems = cached_readiness(state).await;
            if problems.is_empty() {
                Answer::text(StatusCode::OK, "ready\n")
            } else {
                Answer::text(StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
            }
        }
        "/status" => match serde_json::to_string_pretty(&status(state)) {
            Ok(json) => Answer::new(StatusCode::OK, "application/json", json + "\n"),
            Err(e) => Answer::text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
        },
        _ => Answer::text(
            StatusCode::NOT_FOUND,
            "not found: /metrics /healthz /readyz /status\n",
        ),
    }
}

/// The unban route: `POST /bans/unban?addr=ADDRESS`.
pub const UNBAN: &str = "/bans/unban";

/// Lifts the ban of the address the query names (`addr=`; `%3A` for `:` is taken).
fn unban(query: Option<&str>, state: &AdminState) -> Answer {
    let Some(text) = query.and_then(|q| q.strip_prefix("addr=")) else {
        return Answer::text(StatusCode::BAD_REQUEST, "want ?addr=ADDRESS\n");
    };
    let text = text.replace("%3A", ":").replace("%3a", ":");
    let Ok(address) = text.parse::<IpAddr>() else {
        return Answer::text(
            StatusCode::BAD_REQUEST,
            format!("`{}` is not an IP address\n", text.escape_debug()),
        );
    };
    let lifted = state.bans().is_some_and(|bans| bans.unban(address));
    let address = address.to_canonical();
    if lifted {
        tracing::info!(%address, "ban lifted (admin)");
        Answer::text(StatusCode::OK, format!("unbanned {address}\n"))
    } else {
        Answer::text(StatusCode::NOT_FOUND, format!("{address} is not banned\n"))
    }
}
