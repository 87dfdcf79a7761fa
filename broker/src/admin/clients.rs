//! `/api/v1/clients`: the sessions (online and offline), one session in detail, and kicking.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use bytestring::ByteString;
use serde_json::{json, Value};

use super::{error, json, json_str, Query};
use crate::http::Response;
use crate::router::SubscriptionEntry;
use crate::session::queue::ConnectionInfo;
use crate::session::ClientId;
use crate::Broker;

/// `GET /clients?connected=&user=&prefix=&offset=&limit=`, sorted by client id.
pub(super) fn list(broker: &Broker, query: &Query) -> Response {
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

/// `GET /clients/{id}`: the session, its latest connection (`null` for a session restored at
/// start whose client has not come back), its queue and its subscriptions.
pub(super) fn show(broker: &Broker, id: &str) -> Response {
    let client_id = ClientId(ByteString::from(id));
    let Some(mailbox) = broker.router.registry.session(&client_id) else {
        return error(404, "no session with this client id");
    };
    let identity = mailbox.identity();
    let mut subscriptions = broker.router.subscriptions(|_| true);
    subscriptions.retain(|s| s.client_id == client_id);
    subscriptions.sort_by(|a, b| a.filter.cmp(&b.filter));
    let body = json!({
        "client_id": id,
        "connected": mailbox.is_online(),
        "user": identity.username.as_deref(),
        "persistent": mailbox.is_persistent(),
        "connection": identity.connection.as_ref().map(connection_json),
        "inflight": mailbox.inflight(),
        "queued": mailbox.pending(),
        "queued_bytes": mailbox.pending_bytes(),
        "dropped": mailbox.dropped(),
        "subscriptions": subscriptions.iter().map(subscription_json).collect::<Vec<_>>(),
    });
    json(200, format!("{body}\n"))
}

fn connection_json(c: &ConnectionInfo) -> Value {
    let since = c.connected_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    json!({
        "protocol": c.protocol.to_string(),
        "peer": c.peer.to_string(),
        "listener": c.listener.to_string(),
        "keep_alive": c.keep_alive,
        "connected_since": since,
    })
}

/// One subscription as `GET /clients/{id}` and `GET /subscriptions` show it.
pub(super) fn subscription_json(s: &SubscriptionEntry) -> Value {
    let options = &s.subscription.options;
    json!({
        "filter": s.filter,
        "client_id": &*s.client_id.0,
        "qos": options.qos as u8,
        "no_local": options.no_local,
        "retain_as_published": options.retain_as_published,
        "retain_handling": options.retain_handling as u8,
        "subscription_id": s.subscription.id,
    })
}

/// `DELETE /clients/{id}?discard=`: disconnects a connected client. Without `discard` its
/// session then goes on as after any server-side disconnect (a persistent one stays, offline;
/// a clean one ends); with `discard=true` it ends, online or offline, its will published and
/// everything stored for it deleted.
pub(super) fn kick(broker: &Broker, id: &str, query: &Query) -> Response {
    let discard = match query.get("discard") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return error(400, "discard must be true or false"),
    };
    let client_id = ClientId(ByteString::from(id));
    let Some(mailbox) = broker.router.registry.session(&client_id) else {
        return error(404, "no session with this client id");
    };
    if !mailbox.is_online() && !discard {
        return error(409, "the client is not connected (add discard=true to end its session)");
    }
    if !broker.router.registry.kick(&client_id, discard) {
        return error(404, "no session with this client id");
    }
    tracing::info!(%client_id, discard, "client kicked through the admin API");
    json(200, format!("{{\"disconnected\":{},\"discarded\":{discard}}}\n", json_str(id)))
}
