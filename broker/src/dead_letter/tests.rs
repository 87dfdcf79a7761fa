use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use super::letter::build;
use super::*;
use crate::message::Message;
use crate::packet::{PublishProperties, QoS};

fn settings(format: Format, max_payload: usize) -> Settings {
    Settings { policy: Policy::new(&Reason::ALL, 3), max_rate: 0, max_payload, format }
}

fn original(qos: QoS) -> Arc<Message> {
    let mut m = Message::new("sensors/1/temp", &b"21.5"[..], qos);
    m.retain = true;
    m.origin = Some(ClientId::from("publisher-1"));
    m.properties = PublishProperties {
        payload_is_utf8: true,
        message_expiry: Some(60),
        content_type: Some("text/plain".into()),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("site".into(), "north".into())],
        ..PublishProperties::default()
    };
    Arc::new(m)
}

fn user<'a>(letter: &'a Message, key: &str) -> Option<&'a str> {
    letter.properties.user_properties.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
}

const AT: Duration = Duration::from_millis(1_796_390_826_123);

#[test]
fn raw_keeps_payload_and_properties_but_expiry_adds_facts_and_caps_qos() {
    let mut lost = Lost::new(original(QoS::ExactlyOnce), ClientId::from("reader-7"), Reason::Rejected);
    lost.code = ReasonCode::NOT_AUTHORIZED;
    let letter = build(&lost, &settings(Format::Raw, 1024), UNIX_EPOCH + AT);
    assert_eq!(letter.topic, "$DLQ/rejected/sensors/1/temp");
    assert_eq!(letter.payload, "21.5");
    assert_eq!(letter.qos, QoS::AtLeastOnce, "min(original, 1)");
    assert!(!letter.retain && letter.origin.is_none());
    let p = &letter.properties;
    assert_eq!(p.message_expiry, None, "the dead letter does not expire with the original");
    assert!(p.payload_is_utf8);
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.response_topic.as_deref(), Some("replies/1"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"\x01\x02"[..]));
    assert_eq!(p.user_properties[0], ("site".into(), "north".into()), "original user properties first");
    for (key, value) in [
        ("dlq-reason", "rejected"),
        ("dlq-reason-code", "0x87"),
        ("dlq-original-topic", "sensors/1/temp"),
        ("dlq-client-id", "reader-7"),
        ("dlq-publisher", "publisher-1"),
        ("dlq-time", "2026-12-04T13:27:06.123Z"),
        ("dlq-original-qos", "2"),
        ("dlq-original-expiry", "60"),
    ] {
        assert_eq!(user(&letter, key), Some(value), "{key}");
    }
    assert_eq!(user(&letter, "dlq-payload-dropped"), None);
}

#[test]
fn facts_that_do_not_apply_are_left_out_and_qos_0_stays_0() {
    let lost = Lost::new(
        Arc::new(Message::new("t", &b"x"[..], QoS::AtMostOnce)),
        ClientId::from("c"),
        Reason::QueueFull,
    );
    let letter = build(&lost, &settings(Format::Raw, 1024), UNIX_EPOCH + AT);
    assert_eq!(letter.qos, QoS::AtMostOnce);
    assert_eq!(user(&letter, "dlq-reason-code"), Some("0x97"));
    assert_eq!(user(&letter, "dlq-publisher"), None, "made by the broker: no publisher");
    assert_eq!(user(&letter, "dlq-original-expiry"), None);
}

#[test]
fn a_payload_over_max_payload_is_left_out_and_flagged() {
    let lost = Lost::new(original(QoS::AtLeastOnce), ClientId::from("c"), Reason::TooLarge);
    let raw = build(&lost, &settings(Format::Raw, 3), UNIX_EPOCH + AT);
    assert!(raw.payload.is_empty());
    assert_eq!(user(&raw, "dlq-payload-dropped"), Some("4"));
    assert_eq!(user(&raw, "dlq-reason-code"), Some("0x95"));
    assert!(!raw.properties.payload_is_utf8 && raw.properties.content_type.is_none());
    let json = build(&lost, &settings(Format::Json, 3), UNIX_EPOCH + AT);
    let doc: serde_json::Value = serde_json::from_slice(&json.payload).unwrap();
    assert_eq!(doc["payload"], serde_json::Value::Null);
    assert_eq!(doc["payload_size"], 4);
}

#[test]
fn json_carries_the_same_facts_and_the_payload_in_base64() {
    let lost = Lost::new(original(QoS::AtLeastOnce), ClientId::from("reader-7"), Reason::Expired);
    let letter = build(&lost, &settings(Format::Json, 1024), UNIX_EPOCH + AT);
    assert_eq!(letter.topic, "$DLQ/expired/sensors/1/temp");
    assert_eq!(letter.properties.content_type.as_deref(), Some("application/json"));
    assert_eq!(letter.properties.message_expiry, None);
    assert!(letter.properties.user_properties.is_empty());
    let doc: serde_json::Value = serde_json::from_slice(&letter.payload).unwrap();
    assert_eq!(doc["reason"], "expired");
    assert_eq!(doc["reason_code"], "0x80");
    assert_eq!(doc["original_topic"], "sensors/1/temp");
    assert_eq!(doc["client_id"], "reader-7");
    assert_eq!(doc["publisher"], "publisher-1");
    assert_eq!(doc["time"], "2026-12-04T13:27:06.123Z");
    assert_eq!(doc["original_qos"], "1");
    assert_eq!(doc["original_expiry"], "60");
    assert_eq!(doc["payload"], "MjEuNQ==");
    assert_eq!(doc["correlation_data"], "AQI=");
    assert_eq!(doc["user_properties"], serde_json::json!([["site", "north"]]));
}

#[test]
fn policy_bits_and_the_delivery_limit() {
    let off = Policy::default();
    assert!(Reason::ALL.iter().all(|&r| !off.wants(r)));
    let some = Policy::new(&[Reason::Expired, Reason::SessionExpired], 4);
    assert!(some.wants(Reason::Expired) && some.wants(Reason::SessionExpired));
    assert!(!some.wants(Reason::QueueFull));
    assert_eq!(some.delivery_limit(), None, "not enforced unless chosen");
    assert_eq!(Policy::new(&[Reason::DeliveryLimit], 4).delivery_limit(), Some(4));
    for reason in Reason::ALL {
        assert_eq!(Reason::from_label(reason.label()), Some(reason));
    }
}

#[test]
fn only_filters_rooted_at_dlq_read_dead_letters() {
    // [MQTT-4.7.2-1]: '#' and '+' at the first level never match a '$' topic.
    for filter in ["$DLQ/#", "$DLQ/expired/#", "$DLQ/+/sensors/#", "$DLQ"] {
        assert!(is_dead_letter_filter(filter), "{filter}");
    }
    for filter in ["#", "+/#", "+/expired/#", "$SYS/#", "DLQ/#"] {
        assert!(!is_dead_letter_filter(filter), "{filter}");
    }
}

/// The session side: each reason is reported only when the policy wants it, with the
/// receiver's client id, and the subscriber's own reason code for a rejection.
mod session {
    use tokio::time::Instant;

    use super::*;
    use crate::message::Delivery;
    use crate::packet::ProtocolVersion;
    use crate::packet::{Ack, Packet};
    use crate::session::queue::QueueLimits;
    use crate::session::{Session, SessionLimits};

    fn session(policy: Policy) -> Session {
        let limits = SessionLimits {
            max_inflight: 4,
            max_inflight_qos2: 4,
            queue: QueueLimits { max_messages: 8, max_bytes: 1 << 20, stall_after_ms: 2000 },
        };
        let mut s = Session::new(ClientId::from("sub"), ProtocolVersion::V5, 60, limits);
        s.pending.mailbox().set_online(true);
        s.dead_letter = policy;
        s
    }

    fn send(s: &mut Session, message: Arc<Message>) -> crate::packet::PacketId {
        let mut out = Vec::new();
        s.handle_deliver(Delivery::new(message, QoS::AtLeastOnce, false), &mut out, Instant::now());
        match &out[..] {
            [Packet::Forward(f)] => f.packet_id.unwrap(),
            other => panic!("expected one PUBLISH, got {other:?}"),
        }
    }

    #[test]
    fn a_puback_with_an_error_code_is_a_rejection() {
        let mut s = session(Policy::new(&[Reason::Rejected], 0));
        let id = send(&mut s, original(QoS::AtLeastOnce));
        let puback = Packet::PubAck(Ack { packet_id: id, reason: ReasonCode::NOT_AUTHORIZED });
        s.handle_ack(&puback, &mut Vec::new(), Instant::now()).unwrap();
        assert_eq!(s.lost.len(), 1);
        assert_eq!((s.lost[0].reason, s.lost[0].code), (Reason::Rejected, ReasonCode::NOT_AUTHORIZED));
        assert_eq!(s.lost[0].client_id, ClientId::from("sub"));
        assert!(s.outbound.is_empty(), "settled: not sent again");
        let id = send(&mut s, original(QoS::AtLeastOnce));
        s.handle_ack(&Packet::PubAck(Ack::success(id)), &mut Vec::new(), Instant::now()).unwrap();
        assert_eq!(s.lost.len(), 1, "a success is no loss");
    }

    #[test]
    fn nothing_is_collected_for_reasons_not_chosen() {
        let mut s = session(Policy::new(&[Reason::QueueFull], 0));
        let id = send(&mut s, original(QoS::AtLeastOnce));
        let puback = Packet::PubAck(Ack { packet_id: id, reason: ReasonCode::UNSPECIFIED_ERROR });
        s.handle_ack(&puback, &mut Vec::new(), Instant::now()).unwrap();
        let mut expired = Message::new("t", &b"x"[..], QoS::AtLeastOnce);
        expired.properties.message_expiry = Some(1);
        expired.received -= Duration::from_secs(2);
        s.handle_deliver(
            Delivery::new(Arc::new(expired), QoS::AtLeastOnce, false),
            &mut Vec::new(),
            Instant::now(),
        );
        s.note_expired();
        assert!(s.lost.is_empty() && s.lost.capacity() == 0, "nothing allocated");
    }

    #[test]
    fn an_expired_message_and_an_expired_session_are_reported() {
        let mut s = session(Policy::new(&[Reason::Expired, Reason::SessionExpired], 0));
        let mut expired = Message::new("t", &b"x"[..], QoS::AtLeastOnce);
        expired.properties.message_expiry = Some(1);
        expired.received -= Duration::from_secs(2);
        s.handle_deliver(
            Delivery::new(Arc::new(expired), QoS::AtLeastOnce, false),
            &mut Vec::new(),
            Instant::now(),
        );
        assert_eq!(s.lost.len(), 1);
        assert_eq!(s.lost[0].reason, Reason::Expired);
        send(&mut s, original(QoS::AtLeastOnce));
        s.pending.mailbox().set_online(false);
        s.pending.push(Delivery::new(original(QoS::AtLeastOnce), QoS::AtLeastOnce, false));
        s.note_expired();
        let reasons: Vec<_> = s.lost.iter().map(|l| l.reason).collect();
        assert_eq!(reasons, [Reason::Expired, Reason::SessionExpired, Reason::SessionExpired]);
    }
}
