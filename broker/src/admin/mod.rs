//! The admin API under `/api/v1` (JSON), served by `http.rs` on the same listener and behind
//! the same bearer token:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/v1/summary` | version, uptime and the main gauges |
//! | `GET /api/v1/clients?connected=&user=&prefix=&offset=&limit=` | sessions, filtered, paged |
//! | `GET /api/v1/clients/{id}` | one session: its connection, queue, in-flight, subscriptions |
//! | `DELETE /api/v1/clients/{id}?discard=` | disconnects the client (MQTT 5 DISCONNECT 0x98); with `discard=true` the session ends too |
//! | `GET /api/v1/subscriptions?filter=&client_id=&offset=&limit=` | subscriptions whose filter `filter` matches |
//! | `GET /api/v1/retained?filter=&limit=` | retained messages matching a filter (default `#`) |
//! | `DELETE /api/v1/retained?filter=` | deletes the retained messages matching the filter |
//! | `POST /api/v1/publish` | publishes `{"topic", "payload", "qos", "retain"}` as the broker |
//! | `POST /api/v1/reload` | what SIGHUP does: password file, ACL, certificates, bridges |
//!
//! Errors are `{"error": "..."}` with 400, 403, 404, 405, 409 or 500 (401 comes from
//! `http.rs`). Path segments and query values are percent-decoded ('#' must be sent as `%23`,
//! '/' in a client id as `%2F`; '+' is taken literally, as MQTT's wildcard). Topics under
//! `$SYS/` belong to the broker: their retained messages are neither listed by `#`
//! [MQTT-4.7.2-1] nor deleted, and nothing is published there.

mod clients;
mod topics;

use std::fmt::Write as _;

use crate::http::{Request, Response};
use crate::metrics::{get, METRICS};
use crate::Broker;

/// Page size of a listing when the request names none, and the largest allowed.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;

/// The answer to a request under `/api/v1` (already authorized).
pub async fn respond(request: &Request, broker: &Broker) -> Response {
    let path = request.path.strip_prefix("/api/v1").unwrap_or_default();
    let method = request.method.as_str();
    let query = Query::parse(&request.query);
    let Some(query) = query else { return error(400, "query string is not valid percent-encoded UTF-8") };
    if let Some(id) = path.strip_prefix("/clients/") {
        let Some(id) = percent_decode(id).filter(|id| !id.is_empty()) else {
            return error(400, "client id is not valid percent-encoded UTF-8");
        };
        return match method {
            "GET" => clients::show(broker, &id),
            "DELETE" => clients::kick(broker, &id, &query),
            _ => error(405, "method not allowed"),
        };
    }
    match (method, path) {
        ("GET", "/summary") => summary(broker),
        ("GET", "/clients") => clients::list(broker, &query),
        ("GET", "/subscriptions") => topics::subscriptions(broker, &query),
        ("GET", "/retained") => topics::retained(broker, &query),
        ("DELETE", "/retained") => topics::delete_retained(broker, &query).await,
        ("POST", "/publish") => topics::publish(broker, &request.body).await,
        ("POST", "/reload") => reload(broker).await,
        (_, "/summary" | "/clients" | "/subscriptions" | "/retained" | "/publish" | "/reload") => {
            error(405, "method not allowed")
        }
        _ => error(404, "no such endpoint"),
    }
}

/// What SIGHUP does (`server::reload`); 500 naming each file that failed, whose previous
/// version stays in use.
async fn reload(broker: &Broker) -> Response {
    tracing::info!("reload requested through the admin API");
    let failures = crate::server::reload(broker).await;
    if failures.is_empty() {
        return json(200, "{\"reloaded\":true}\n".into());
    }
    error(500, &format!("reload failed, previous versions kept: {}", failures.join("; ")))
}

fn summary(broker: &Broker) -> Response {
    let m = &METRICS;
    let totals = broker.router.registry.queue_totals();
    let body = format!(
        "{{\"version\":{},\"uptime_seconds\":{},\"clients_connected\":{},\"clients_maximum\":{},\
         \"sessions_disconnected\":{},\"subscriptions\":{},\"retained_messages\":{},\
         \"queued_messages\":{},\"queued_bytes\":{},\"inflight_messages\":{}}}\n",
        json_str(env!("CARGO_PKG_VERSION")),
        broker.started.elapsed().as_secs(),
        get(&m.clients_connected),
        get(&m.clients_maximum),
        broker.router.registry.offline_len(),
        get(&m.subscriptions_current),
        get(&m.retained_current),
        totals.messages,
        totals.bytes,
        totals.inflight,
    );
    json(200, body)
}

fn json(status: u16, body: String) -> Response {
    Response { status, content_type: "application/json", body, head_only: false }
}

fn error(status: u16, message: &str) -> Response {
    json(status, format!("{{\"error\":{}}}\n", json_str(message)))
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Decodes `%XX` escapes (no '+' → space: '+' is MQTT's single-level wildcard).
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(query: &str) -> Option<Query> {
        let pairs = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                Some((percent_decode(name)?, percent_decode(value)?))
            })
            .collect::<Option<_>>()?;
        Some(Query(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// `offset` (default 0) and `limit` (default 100, at most 1000).
    fn page(&self) -> Option<(usize, usize)> {
        let offset = self.get("offset").map_or(Some(0), |v| v.parse().ok())?;
        let limit = self.get("limit").map_or(Some(DEFAULT_LIMIT), |v| v.parse().ok())?;
        Some((offset, limit.min(MAX_LIMIT)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_keeps_plus_as_the_wildcard() {
        assert_eq!(percent_decode("a%2F%23").as_deref(), Some("a/#"));
        assert_eq!(percent_decode("a/+/b").as_deref(), Some("a/+/b"));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
    }

    #[test]
    fn query_parameters_and_paging() {
        let q = Query::parse("filter=%23&limit=5000&x").unwrap();
        assert_eq!(q.get("filter"), Some("#"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.page(), Some((0, MAX_LIMIT)));
        assert_eq!(Query::parse("offset=no").unwrap().page(), None);
        assert_eq!(Query::parse("").unwrap().page(), Some((0, DEFAULT_LIMIT)));
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
    }
}
