//! The admin API under `/api/v1` (JSON), served by `http.rs` on the same listener and behind
//! the same bearer token:
//!
//! | request | answer |
//! |---|---|
//! | `GET /api/v1/summary` | version, uptime and the main gauges |
//! | `GET /api/v1/clients?connected=&user=&prefix=&offset=&limit=` | sessions, filtered, paged |
//! | `DELETE /api/v1/clients/{id}` | disconnects a connected client: MQTT 5 DISCONNECT 0x98 |
//! | `GET /api/v1/retained?filter=&limit=` | retained messages matching a filter (default `#`) |
//! | `DELETE /api/v1/retained?filter=` | deletes the retained messages matching the filter |
//!
//! Errors are `{"error": "..."}` with 400, 404, 405 or 409. Query values are percent-decoded
//! ('#' must be sent as `%23`; '+' is taken literally, as MQTT's wildcard). Retained messages
//! under `$SYS/` belong to the broker and are neither listed by `#` [MQTT-4.7.2-1] nor deleted.

use std::fmt::Write as _;
use std::sync::Arc;

use bytestring::ByteString;

use crate::http::{Request, Response};
use crate::message::Message;
use crate::metrics::{get, METRICS};
use crate::packet::QoS;
use crate::router::topic;
use crate::session::ClientId;
use crate::storage::Op;
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
    match (method, path) {
        ("GET", "/summary") => summary(broker),
        ("GET", "/clients") => clients(broker, &query),
        ("DELETE", path) if path.starts_with("/clients/") => {
            match percent_decode(&path["/clients/".len()..]) {
                Some(id) if !id.is_empty() => kick(broker, &id),
                _ => error(400, "client id is not valid percent-encoded UTF-8"),
            }
        }
        ("GET", "/retained") => retained(broker, &query),
        ("DELETE", "/retained") => delete_retained(broker, &query).await,
        (_, "/summary" | "/clients" | "/retained") => error(405, "method not allowed"),
        (_, path) if path.starts_with("/clients/") => error(405, "method not allowed"),
        _ => error(404, "no such endpoint"),
    }
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

fn clients(broker: &Broker, query: &Query) -> Response {
    let connected = match query.get("connected") {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return error(400, "connected must be true or false"),
    };
    let Some((offset, limit)) = query.page() else { return error(400, "offset and limit must be numbers") };
    let mut sessions = broker.router.registry.sessions();
    sessions.retain(|mailbox| {
        connected.is_none_or(|c| mailbox.is_online() == c)
            && query.get("prefix").is_none_or(|p| mailbox.client_id().0.starts_with(p))
            && query.get("user").is_none_or(|u| mailbox.username().as_deref() == Some(u))
    });
    sessions.sort_by(|a, b| a.client_id().0.cmp(&b.client_id().0));
    let mut body = format!("{{\"total\":{},\"offset\":{offset},\"clients\":[", sessions.len());
    for (i, mailbox) in sessions.iter().skip(offset).take(limit).enumerate() {
        let user = mailbox.username().map_or("null".into(), |u| json_str(&u));
        let _ = write!(
            body,
            "{}{{\"client_id\":{},\"connected\":{},\"user\":{user},\"persistent\":{},\"queued\":{},\"dropped\":{}}}",
            if i == 0 { "" } else { "," },
            json_str(&mailbox.client_id().0),
            mailbox.is_online(),
            mailbox.is_persistent(),
            mailbox.pending(),
            mailbox.dropped(),
        );
    }
    body.push_str("]}\n");
    json(200, body)
}

/// Disconnects a connected client. Its session then goes on as any session does after a
/// server-side disconnect: a persistent one stays (offline), a clean one ends; the will goes.
fn kick(broker: &Broker, id: &str) -> Response {
    let client_id = ClientId(ByteString::from(id));
    let online =
        broker.router.registry.sessions().iter().find(|m| m.client_id() == &client_id).map(|m| m.is_online());
    match online {
        None => error(404, "no session with this client id"),
        Some(false) => error(409, "the client is not connected"),
        Some(true) if broker.router.registry.kick(&client_id) => {
            json(200, format!("{{\"disconnected\":{}}}\n", json_str(id)))
        }
        Some(true) => error(404, "no session with this client id"),
    }
}

/// The filter of a retained request (`#` by default), validated.
fn retained_filter<'a>(query: &'a Query, default: Option<&'a str>) -> Result<&'a str, Response> {
    let Some(filter) = query.get("filter").or(default) else {
        return Err(error(400, "filter is required (send '#' as %23)"));
    };
    topic::validate_topic_filter(filter).map_err(|e| error(400, &format!("invalid filter: {e}")))?;
    Ok(filter)
}

fn retained(broker: &Broker, query: &Query) -> Response {
    let filter = match retained_filter(query, Some("#")) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    let Some((offset, limit)) = query.page() else { return error(400, "offset and limit must be numbers") };
    let mut messages = broker.router.retained.matching(filter);
    messages.sort_by(|a, b| a.topic.cmp(&b.topic));
    let mut body = format!("{{\"total\":{},\"offset\":{offset},\"messages\":[", messages.len());
    for (i, message) in messages.iter().skip(offset).take(limit).enumerate() {
        let payload = std::str::from_utf8(&message.payload).map_or("null".into(), json_str);
        let _ = write!(
            body,
            "{}{{\"topic\":{},\"qos\":{},\"payload_bytes\":{},\"payload\":{payload}}}",
            if i == 0 { "" } else { "," },
            json_str(&message.topic),
            message.qos as u8,
            message.payload.len(),
        );
    }
    body.push_str("]}\n");
    json(200, body)
}

/// Deletes the retained messages matching the filter, in memory and in storage, as an empty
/// retained PUBLISH would [MQTT-3.3.1-10], but without delivering anything.
async fn delete_retained(broker: &Broker, query: &Query) -> Response {
    let filter = match retained_filter(query, None) {
        Ok(filter) => filter,
        Err(response) => return response,
    };
    let mut ops = Vec::new();
    for message in broker.router.retained.matching(filter) {
        if topic::is_broker_topic(&message.topic) {
            continue;
        }
        let mut clear = Message::new(message.topic.clone(), bytes::Bytes::new(), QoS::AtMostOnce);
        clear.retain = true;
        broker.router.retained.apply(&Arc::new(clear));
        ops.push(Op::DeleteRetained(message.topic.clone()));
    }
    let deleted = ops.len();
    if !ops.is_empty() {
        if let Err(e) = broker.store.commit(ops).await {
            return error(500, &format!("deleted in memory, not in storage: {e}"));
        }
    }
    tracing::info!(%filter, deleted, "retained messages deleted through the admin API");
    json(200, format!("{{\"deleted\":{deleted}}}\n"))
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
