//! Building the dead letter itself: topic, QoS, properties and payload, in the raw or the JSON
//! format (README "Dead letters" documents both).

use std::time::SystemTime;

use base64::Engine;
use bytes::Bytes;
use bytestring::ByteString;

use super::{Format, Lost, Settings};
use crate::clock::rfc3339_utc_ms;
use crate::message::Message;
use crate::packet::{PublishProperties, QoS};
use crate::router::topic::DLQ_ROOT;

/// The dead letter for `lost`, made at `now`.
pub fn build(lost: &Lost, settings: &Settings, now: SystemTime) -> Message {
    let original = &lost.message;
    let topic = format!("{DLQ_ROOT}/{}/{}", lost.reason.label(), original.topic);
    let facts = facts(lost, now);
    let keep_payload = original.payload.len() <= settings.max_payload;
    let (payload, properties) = match settings.format {
        Format::Raw => raw(original, facts, keep_payload),
        Format::Json => json(original, &facts, keep_payload),
    };
    let mut letter = Message::new(topic, payload, original.qos.min(QoS::AtLeastOnce));
    letter.properties = properties;
    letter
}

/// The `dlq-*` facts, in the order they are sent.
fn facts(lost: &Lost, now: SystemTime) -> Vec<(&'static str, String)> {
    let original = &lost.message;
    let mut facts = vec![
        ("dlq-reason", lost.reason.label().to_owned()),
        ("dlq-reason-code", format!("{:#04x}", lost.code.0)),
        ("dlq-original-topic", original.topic.to_string()),
        ("dlq-client-id", lost.client_id.to_string()),
    ];
    if let Some(publisher) = &original.origin {
        facts.push(("dlq-publisher", publisher.to_string()));
    }
    facts.push(("dlq-time", rfc3339_utc_ms(now)));
    facts.push(("dlq-original-qos", (original.qos as u8).to_string()));
    if let Some(expiry) = original.properties.message_expiry {
        facts.push(("dlq-original-expiry", expiry.to_string()));
    }
    facts
}

/// The original payload and properties (Message Expiry left out: the dead letter must not
/// expire with the original), the facts as user properties after the original ones.
fn raw(
    original: &Message,
    facts: Vec<(&'static str, String)>,
    keep_payload: bool,
) -> (Bytes, PublishProperties) {
    let mut properties = original.properties.clone();
    properties.message_expiry = None;
    let user = &mut properties.user_properties;
    user.extend(facts.into_iter().map(|(k, v)| (ByteString::from_static(k), ByteString::from(v))));
    if keep_payload {
        return (original.payload.clone(), properties);
    }
    user.push(("dlq-payload-dropped".into(), original.payload.len().to_string().into()));
    // The original says nothing about an empty payload.
    properties.payload_is_utf8 = false;
    properties.content_type = None;
    (Bytes::new(), properties)
}

/// One JSON object: the facts (without the `dlq-` prefix, `-` as `_`), the original's
/// properties and its payload in base64 (`null` when over `max_payload`).
fn json(
    original: &Message,
    facts: &[(&'static str, String)],
    keep_payload: bool,
) -> (Bytes, PublishProperties) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut doc = serde_json::Map::new();
    for (key, value) in facts {
        let key = key.trim_start_matches("dlq-").replace('-', "_");
        doc.insert(key, value.clone().into());
    }
    let p = &original.properties;
    let user: Vec<serde_json::Value> =
        p.user_properties.iter().map(|(k, v)| serde_json::json!([k.to_string(), v.to_string()])).collect();
    doc.insert("user_properties".into(), user.into());
    doc.insert("content_type".into(), p.content_type.as_ref().map(|c| c.to_string()).into());
    doc.insert("response_topic".into(), p.response_topic.as_ref().map(|t| t.to_string()).into());
    doc.insert("correlation_data".into(), p.correlation_data.as_ref().map(|d| b64.encode(d)).into());
    doc.insert("payload_is_utf8".into(), p.payload_is_utf8.into());
    doc.insert("payload_size".into(), original.payload.len().into());
    doc.insert("payload".into(), keep_payload.then(|| b64.encode(&original.payload)).into());
    let properties = PublishProperties {
        payload_is_utf8: true,
        content_type: Some(ByteString::from_static("application/json")),
        ..PublishProperties::default()
    };
    (Bytes::from(serde_json::Value::Object(doc).to_string()), properties)
}
