//! `/api/v1/subscriptions`, `/api/v1/retained` and `/api/v1/publish`: topics as the operator
//! sees them.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;
use serde_json::json;

use super::{clients::subscription_json, error, json, json_str, Query};
use crate::connection;
use crate::http::Response;
use crate::message::Message;
use crate::packet::QoS;
use crate::router::topic;
use crate::storage::Op;
use crate::Broker;

/// `GET /subscriptions?filter=&client_id=&offset=&limit=`: the subscriptions whose filter,
/// read as a topic name, `filter` matches (so `sensors/#` lists `sensors/+/temp` and
/// `sensors/#`; an exact filter lists just that one), sorted by filter then client id. A
/// shared subscription is matched by the filter after its `$share/{group}/`. Without `filter`,
/// every subscription, `$SYS/...` ones included.
pub(super) fn subscriptions(broker: &Broker, query: &Query) -> Response {
    let filter = match query.get("filter") {
        None => None,
        Some(filter) => match topic::validate_topic_filter(filter) {
            Ok(()) => Some(filter),
            Err(e) => return error(400, &format!("invalid filter: {e}")),
        },
    };
    let Some((offset, limit)) = query.page() else { return error(400, "offset and limit must be numbers") };
    let mut found =
        broker.router.subscriptions(|subscribed| filter.is_none_or(|f| topic::filter_matches(f, subscribed)));
    if let Some(client_id) = query.get("client_id") {
        found.retain(|s| &*s.client_id.0 == client_id);
    }
    found.sort_by(|a, b| (&a.filter, &a.client_id.0).cmp(&(&b.filter, &b.client_id.0)));
    let page: Vec<_> = found.iter().skip(offset).take(limit).map(subscription_json).collect();
    let body = json!({ "total": found.len(), "offset": offset, "subscriptions": page });
    json(200, format!("{body}\n"))
}

/// The filter of a retained request (`#` by default), validated.
fn retained_filter<'a>(query: &'a Query, default: Option<&'a str>) -> Result<&'a str, Response> {
    let Some(filter) = query.get("filter").or(default) else {
        return Err(error(400, "filter is required (send '#' as %23)"));
    };
    topic::validate_topic_filter(filter).map_err(|e| error(400, &format!("invalid filter: {e}")))?;
    Ok(filter)
}

pub(super) fn retained(broker: &Broker, query: &Query) -> Response {
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
pub(super) async fn delete_retained(broker: &Broker, query: &Query) -> Response {
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

/// The body of `POST /publish`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    topic: String,
    /// UTF-8 text; or `payload_base64` for binary payloads (not both).
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    payload_base64: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
}

/// `POST /publish`: routes a message as the broker, as if a client without ACL limits had
/// published it (it has no origin, so No Local does not apply), stored first where a
/// persistent session or the retained store needs it. `$SYS/` is refused with 403: the
/// broker's own tree is not to be forged.
pub(super) async fn publish(broker: &Broker, body: &[u8]) -> Response {
    let request: PublishRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(e) => return error(400, &format!("invalid JSON body: {e}")),
    };
    if let Err(e) = topic::validate_topic_name(&request.topic) {
        return error(400, &format!("invalid topic: {e}"));
    }
    if topic::is_broker_topic(&request.topic) {
        return error(403, "topics under $SYS/ and $DLQ/ are the broker's");
    }
    let qos = match request.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        2 => QoS::ExactlyOnce,
        _ => return error(400, "qos must be 0, 1 or 2"),
    };
    let payload = match (request.payload, request.payload_base64) {
        (Some(_), Some(_)) => return error(400, "give payload or payload_base64, not both"),
        (text, None) => text.unwrap_or_default().into_bytes(),
        (None, Some(encoded)) => match base64::engine::general_purpose::STANDARD.decode(encoded) {
            Ok(bytes) => bytes,
            Err(e) => return error(400, &format!("payload_base64 is not base64: {e}")),
        },
    };
    let mut message = Message::new(request.topic, payload, qos);
    message.retain = request.retain;
    let message = Arc::new(message);
    let routed = connection::route(broker, &message);
    match connection::route_now(broker, routed).await {
        Ok(outcome) => {
            tracing::info!(topic = %message.topic, matched = outcome.matched, "published through the admin API");
            let body = json!({
                "topic": &*message.topic,
                "matched": outcome.matched,
                "queued": outcome.queued,
                "dropped": outcome.dropped,
            });
            json(200, format!("{body}\n"))
        }
        Err(e) => error(500, &format!("not published, storage failed: {e}")),
    }
}
