//! MQTT 5.0 <-> Tern's packet model.

use std::num::{NonZeroU16, NonZeroU32};

use rmqtt_codec::types::{Publish as WirePublish, QoS as WireQoS};
use rmqtt_codec::v5::{self, RetainHandling as WireRetainHandling};

use super::CodecError;
use crate::packet::{
    Ack, Auth, ConnAck, Connect, Disconnect, Packet, PacketId, ProtocolVersion, Publish, PublishProperties,
    QoS, ReasonCode, RetainHandling, SubscriptionOptions, Will,
};

pub(super) fn qos_from_wire(q: WireQoS) -> QoS {
    match q {
        WireQoS::AtMostOnce => QoS::AtMostOnce,
        WireQoS::AtLeastOnce => QoS::AtLeastOnce,
        WireQoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(super) fn qos_to_wire(q: QoS) -> WireQoS {
    match q {
        QoS::AtMostOnce => WireQoS::AtMostOnce,
        QoS::AtLeastOnce => WireQoS::AtLeastOnce,
        QoS::ExactlyOnce => WireQoS::ExactlyOnce,
    }
}

/// A reason code the wire type can carry, or Unspecified Error (0x80) for one it cannot.
fn reason<T: TryFrom<u8>>(code: ReasonCode, unspecified: T) -> T {
    T::try_from(code.0).unwrap_or(unspecified)
}

fn properties_from_wire(p: Option<v5::PublishProperties>) -> PublishProperties {
    let Some(p) = p else { return PublishProperties::default() };
    PublishProperties {
        payload_is_utf8: p.is_utf8_payload,
        message_expiry: p.message_expiry_interval.map(NonZeroU32::get),
        topic_alias: p.topic_alias.map(NonZeroU16::get),
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_ids: p.subscription_ids.into_iter().map(NonZeroU32::get).collect(),
        content_type: p.content_type,
    }
}

fn properties_to_wire(p: PublishProperties) -> v5::PublishProperties {
    v5::PublishProperties {
        topic_alias: p.topic_alias.and_then(NonZeroU16::new),
        correlation_data: p.correlation_data,
        message_expiry_interval: p.message_expiry.and_then(NonZeroU32::new),
        content_type: p.content_type,
        user_properties: p.user_properties,
        is_utf8_payload: p.payload_is_utf8,
        response_topic: p.response_topic,
        subscription_ids: p.subscription_ids.into_iter().filter_map(NonZeroU32::new).collect(),
    }
}

fn ack_from_wire(packet_id: NonZeroU16, code: u8) -> Ack {
    Ack { packet_id: PacketId(packet_id), reason: ReasonCode(code) }
}

/// `from_server`: decoding a server's packets (the client side of a bridge).
pub(super) fn from_wire(packet: v5::Packet, from_server: bool) -> Result<Packet, CodecError> {
    let client_only = matches!(
        packet,
        v5::Packet::Connect(_)
            | v5::Packet::Subscribe(_)
            | v5::Packet::Unsubscribe(_)
            | v5::Packet::PingRequest
    );
    if from_server && client_only {
        return Err(CodecError::Violation("server sent a packet only a client may send"));
    }
    Ok(match packet {
        v5::Packet::Connect(c) => Packet::Connect(Box::new(Connect {
            version: ProtocolVersion::V5,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            client_id: c.client_id,
            will: c.last_will.map(|w| Will {
                topic: w.topic,
                payload: w.message,
                qos: qos_from_wire(w.qos),
                retain: w.retain,
                delay: w.will_delay_interval_sec.unwrap_or(0),
                properties: PublishProperties {
                    payload_is_utf8: w.is_utf8_payload.unwrap_or(false),
                    message_expiry: w.message_expiry_interval.map(NonZeroU32::get),
                    response_topic: w.response_topic,
                    correlation_data: w.correlation_data,
                    user_properties: w.user_properties,
                    content_type: w.content_type,
                    ..PublishProperties::default()
                },
            }),
            username: c.username,
            password: c.password,
            session_expiry: c.session_expiry_interval_secs,
            receive_maximum: c.receive_max.map_or(u16::MAX, NonZeroU16::get),
            max_packet_size: c.max_packet_size.map(NonZeroU32::get),
            topic_alias_maximum: c.topic_alias_max,
            request_response_info: c.request_response_info,
            request_problem_info: c.request_problem_info,
            user_properties: c.user_properties,
            auth_method: c.auth_method,
            auth_data: c.auth_data,
        })),
        v5::Packet::Publish(p) => Packet::Publish(Box::new(Publish {
            dup: p.dup,
            qos: qos_from_wire(p.qos),
            retain: p.retain,
            topic: p.topic,
            packet_id: p.packet_id.map(PacketId),
            payload: p.payload,
            properties: properties_from_wire(p.properties),
        })),
        v5::Packet::PublishAck(a) => Packet::PubAck(ack_from_wire(a.packet_id, a.reason_code.into())),
        v5::Packet::PublishReceived(a) => Packet::PubRec(ack_from_wire(a.packet_id, a.reason_code.into())),
        v5::Packet::PublishRelease(a) => Packet::PubRel(ack_from_wire(a.packet_id, a.reason_code.into())),
        v5::Packet::PublishComplete(a) => Packet::PubComp(ack_from_wire(a.packet_id, a.reason_code.into())),
        v5::Packet::Subscribe(s) => Packet::Subscribe {
            packet_id: PacketId(s.packet_id),
            subscription_id: s.id.map(NonZeroU32::get),
            filters: s
                .topic_filters
                .into_iter()
                .map(|(filter, o)| {
                    let retain_handling = match o.retain_handling {
                        WireRetainHandling::AtSubscribe => RetainHandling::OnSubscribe,
                        WireRetainHandling::AtSubscribeNew => RetainHandling::OnNewSubscribe,
                        WireRetainHandling::NoAtSubscribe => RetainHandling::Never,
                    };
                    let options = SubscriptionOptions {
                        qos: qos_from_wire(o.qos),
                        no_local: o.no_local,
                        retain_as_published: o.retain_as_published,
                        retain_handling,
                    };
                    (filter, options)
                })
                .collect(),
        },
        v5::Packet::Unsubscribe(u) => {
            Packet::Unsubscribe { packet_id: PacketId(u.packet_id), filters: u.topic_filters }
        }
        v5::Packet::PingRequest => Packet::PingReq,
        v5::Packet::Disconnect(d) => Packet::Disconnect(Disconnect {
            reason: ReasonCode(d.reason_code.into()),
            session_expiry: d.session_expiry_interval_secs,
            reason_string: d.reason_string,
        }),
        v5::Packet::Auth(a) => Packet::Auth(Auth {
            reason: ReasonCode(a.reason_code.into()),
            method: a.auth_method,
            data: a.auth_data,
        }),
        v5::Packet::ConnectAck(a) if from_server => Packet::ConnAck(Box::new(connack_from_wire(*a))),
        v5::Packet::SubscribeAck(a) if from_server => Packet::SubAck {
            packet_id: PacketId(a.packet_id),
            reasons: a.status.into_iter().map(|r| ReasonCode(r.into())).collect(),
        },
        v5::Packet::UnsubscribeAck(a) if from_server => Packet::UnsubAck {
            packet_id: PacketId(a.packet_id),
            reasons: a.status.into_iter().map(|r| ReasonCode(r.into())).collect(),
        },
        v5::Packet::PingResponse if from_server => Packet::PingResp,
        v5::Packet::ConnectAck(_)
        | v5::Packet::SubscribeAck(_)
        | v5::Packet::UnsubscribeAck(_)
        | v5::Packet::PingResponse => {
            return Err(CodecError::Violation("client sent a packet only a server may send"))
        }
    })
}

fn ack_to_wire(a: Ack) -> v5::PublishAck {
    v5::PublishAck {
        packet_id: a.packet_id.0,
        reason_code: reason(a.reason, v5::PublishAckReason::UnspecifiedError),
        properties: Vec::new(),
        reason_string: None,
    }
}

fn ack2_to_wire(a: Ack) -> v5::PublishAck2 {
    v5::PublishAck2 {
        packet_id: a.packet_id.0,
        reason_code: reason(a.reason, v5::PublishAck2Reason::PacketIdNotFound),
        properties: Vec::new(),
        reason_string: None,
    }
}

/// A server's CONNACK (the client side of a bridge). Absent properties take the values the
/// spec gives them (the decoder fills them in: Receive Maximum 65,535, Maximum QoS 2, ...).
fn connack_from_wire(a: v5::ConnectAck) -> ConnAck {
    ConnAck {
        session_present: a.session_present,
        reason: ReasonCode(a.reason_code.into()),
        session_expiry: a.session_expiry_interval_secs,
        receive_maximum: Some(a.receive_max.get()),
        maximum_qos: Some(qos_from_wire(a.max_qos)),
        retain_available: a.retain_available,
        maximum_packet_size: a.max_packet_size,
        assigned_client_id: a.assigned_client_id,
        topic_alias_maximum: a.topic_alias_max,
        reason_string: a.reason_string,
        wildcard_subscription_available: a.wildcard_subscription_available,
        subscription_identifiers_available: a.subscription_identifiers_available,
        shared_subscription_available: a.shared_subscription_available,
        server_keep_alive: a.server_keepalive_sec,
        response_information: a.response_info,
        auth_method: a.auth_method,
        auth_data: a.auth_data,
        user_properties: a.user_properties,
    }
}

fn connack_to_wire(a: ConnAck) -> v5::ConnectAck {
    v5::ConnectAck {
        session_present: a.session_present,
        reason_code: reason(a.reason, v5::ConnectAckReason::UnspecifiedError),
        session_expiry_interval_secs: a.session_expiry,
        receive_max: a.receive_maximum.and_then(NonZeroU16::new).unwrap_or(NonZeroU16::MAX),
        max_qos: qos_to_wire(a.maximum_qos.unwrap_or(QoS::ExactlyOnce)),
        max_packet_size: a.maximum_packet_size,
        assigned_client_id: a.assigned_client_id,
        topic_alias_max: a.topic_alias_maximum,
        retain_available: a.retain_available,
        wildcard_subscription_available: a.wildcard_subscription_available,
        subscription_identifiers_available: a.subscription_identifiers_available,
        shared_subscription_available: a.shared_subscription_available,
        server_keepalive_sec: a.server_keep_alive,
        response_info: a.response_information,
        server_reference: None,
        auth_method: a.auth_method,
        auth_data: a.auth_data,
        reason_string: a.reason_string,
        user_properties: a.user_properties,
    }
}

fn publish_to_wire(p: Publish) -> v5::Packet {
    v5::Packet::Publish(Box::new(WirePublish {
        dup: p.dup,
        retain: p.retain,
        qos: qos_to_wire(p.qos),
        topic: p.topic,
        packet_id: p.packet_id.map(|i| i.0),
        payload: p.payload,
        properties: Some(properties_to_wire(p.properties)),
    }))
}

pub(super) fn to_wire(packet: Packet) -> v5::Packet {
    match packet {
        Packet::ConnAck(a) => v5::Packet::ConnectAck(Box::new(connack_to_wire(*a))),
        Packet::Publish(p) => publish_to_wire(*p),
        Packet::Forward(f) => publish_to_wire(f.into_publish()),
        Packet::PubAck(a) => v5::Packet::PublishAck(ack_to_wire(a)),
        Packet::PubRec(a) => v5::Packet::PublishReceived(ack_to_wire(a)),
        Packet::PubRel(a) => v5::Packet::PublishRelease(ack2_to_wire(a)),
        Packet::PubComp(a) => v5::Packet::PublishComplete(ack2_to_wire(a)),
        Packet::SubAck { packet_id, reasons } => v5::Packet::SubscribeAck(v5::SubscribeAck {
            packet_id: packet_id.0,
            properties: Vec::new(),
            reason_string: None,
            status: reasons
                .into_iter()
                .map(|r| reason(r, v5::SubscribeAckReason::UnspecifiedError))
                .collect(),
        }),
        Packet::UnsubAck { packet_id, reasons } => v5::Packet::UnsubscribeAck(v5::UnsubscribeAck {
            packet_id: packet_id.0,
            properties: Vec::new(),
            reason_string: None,
            status: reasons
                .into_iter()
                .map(|r| reason(r, v5::UnsubscribeAckReason::UnspecifiedError))
                .collect(),
        }),
        Packet::PingResp => v5::Packet::PingResponse,
        Packet::Disconnect(d) => v5::Packet::Disconnect(v5::Disconnect {
            reason_code: reason(d.reason, v5::DisconnectReasonCode::UnspecifiedError),
            session_expiry_interval_secs: d.session_expiry,
            server_reference: None,
            reason_string: d.reason_string,
            user_properties: Vec::new(),
        }),
        Packet::Auth(a) => v5::Packet::Auth(v5::Auth {
            reason_code: reason(a.reason, v5::AuthReasonCode::Success),
            auth_method: a.method,
            auth_data: a.data,
            reason_string: None,
            user_properties: Vec::new(),
        }),
        // Client-to-server packets: what a bridge sends upstream (`Codec::client`), and tests.
        Packet::Connect(c) => v5::Packet::Connect(Box::new(v5::Connect {
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            session_expiry_interval_secs: c.session_expiry,
            auth_method: c.auth_method,
            auth_data: c.auth_data,
            request_problem_info: c.request_problem_info,
            request_response_info: c.request_response_info,
            receive_max: NonZeroU16::new(c.receive_maximum),
            topic_alias_max: c.topic_alias_maximum,
            user_properties: c.user_properties,
            max_packet_size: c.max_packet_size.and_then(NonZeroU32::new),
            last_will: c.will.map(|w| v5::LastWill {
                qos: qos_to_wire(w.qos),
                retain: w.retain,
                topic: w.topic,
                message: w.payload,
                will_delay_interval_sec: Some(w.delay).filter(|d| *d > 0),
                correlation_data: w.properties.correlation_data,
                message_expiry_interval: w.properties.message_expiry.and_then(NonZeroU32::new),
                content_type: w.properties.content_type,
                user_properties: w.properties.user_properties,
                is_utf8_payload: Some(w.properties.payload_is_utf8).filter(|u| *u),
                response_topic: w.properties.response_topic,
            }),
            client_id: c.client_id,
            username: c.username,
            password: c.password,
            cert: None,
        })),
        Packet::Subscribe { packet_id, subscription_id, filters } => v5::Packet::Subscribe(v5::Subscribe {
            packet_id: packet_id.0,
            id: subscription_id.and_then(NonZeroU32::new),
            user_properties: Vec::new(),
            topic_filters: filters
                .into_iter()
                .map(|(f, o)| {
                    let retain_handling = match o.retain_handling {
                        RetainHandling::OnSubscribe => WireRetainHandling::AtSubscribe,
                        RetainHandling::OnNewSubscribe => WireRetainHandling::AtSubscribeNew,
                        RetainHandling::Never => WireRetainHandling::NoAtSubscribe,
                    };
                    let options = v5::SubscriptionOptions {
                        qos: qos_to_wire(o.qos),
                        no_local: o.no_local,
                        retain_as_published: o.retain_as_published,
                        retain_handling,
                    };
                    (f, options)
                })
                .collect(),
        }),
        Packet::Unsubscribe { packet_id, filters } => v5::Packet::Unsubscribe(v5::Unsubscribe {
            packet_id: packet_id.0,
            user_properties: Vec::new(),
            topic_filters: filters,
        }),
        Packet::PingReq => v5::Packet::PingRequest,
    }
}
