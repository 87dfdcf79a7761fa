//! Tern's own model of MQTT control packets.
//!
//! The protocol code (sessions, router, connection) speaks only these types; the wire codec
//! (`codec.rs`) converts between them and whatever decoder sits underneath. That keeps a codec
//! swap to one file and keeps the protocol version a property of the session, not of the types.
//! The model is MQTT 5's (reason codes, properties); for 3.1.1 clients the codec maps reason
//! codes to return codes and drops properties.

use std::fmt;
use std::num::NonZeroU16;

use bytes::Bytes;
use bytestring::ByteString;

use crate::message::Forward;

/// The protocol revision a client connected with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1, protocol name "MQTT", level 4.
    V311,
    /// MQTT 5.0, protocol name "MQTT", level 5.
    V5,
}

impl ProtocolVersion {
    pub fn is_v5(self) -> bool {
        self == ProtocolVersion::V5
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProtocolVersion::V31 => "3.1",
            ProtocolVersion::V311 => "3.1.1",
            ProtocolVersion::V5 => "5.0",
        })
    }
}

/// Quality of service. Ordered, so `min`/`max` give downgrade and "highest match".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

/// A non-zero packet identifier [MQTT-2.3.1-1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(pub NonZeroU16);

impl PacketId {
    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for PacketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An MQTT 5 reason code (section 2.4). 3.1.1 return codes are derived from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    pub const SUCCESS: Self = Self(0x00);
    pub const GRANTED_QOS_1: Self = Self(0x01);
    pub const GRANTED_QOS_2: Self = Self(0x02);
    pub const DISCONNECT_WITH_WILL: Self = Self(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    pub const REAUTHENTICATE: Self = Self(0x19);
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    pub const MALFORMED_PACKET: Self = Self(0x81);
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    pub const SERVER_BUSY: Self = Self(0x89);
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);

    /// Codes below 0x80 report success [MQTT-2.4].
    pub fn is_success(self) -> bool {
        self.0 < 0x80
    }

    /// The SUBACK code granting `qos`.
    pub fn granted(qos: QoS) -> Self {
        Self(qos as u8)
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:02X}", self.0)
    }
}

/// Name/value pairs carried by MQTT 5 packets, in order [MQTT-3.3.2-18].
pub type UserProperties = Vec<(ByteString, ByteString)>;

/// MQTT 5 PUBLISH properties (section 3.3.2.3); all empty for 3.1.1.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    /// Payload Format Indicator 1: the payload is UTF-8.
    pub payload_is_utf8: bool,
    /// Seconds the message may live; forwarded decremented by the time it waited [MQTT-3.3.2-6].
    pub message_expiry: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<ByteString>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: UserProperties,
    /// Identifiers of the receiving client's matching subscriptions [MQTT-3.3.4-3].
    pub subscription_ids: Vec<u32>,
    pub content_type: Option<ByteString>,
}

/// A PUBLISH packet in either direction.
#[derive(Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    pub topic: ByteString,
    /// Present exactly when `qos` is 1 or 2.
    pub packet_id: Option<PacketId>,
    pub payload: Bytes,
    pub properties: PublishProperties,
}

impl fmt::Debug for Publish {
    // Payloads are user data: never written to logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publish")
            .field("topic", &self.topic)
            .field("qos", &self.qos)
            .field("packet_id", &self.packet_id)
            .field("dup", &self.dup)
            .field("retain", &self.retain)
            .field("payload_len", &self.payload.len())
            .field("properties", &self.properties)
            .finish()
    }
}

/// The will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: ByteString,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Will Delay Interval in seconds (MQTT 5; 0 for 3.1.1).
    pub delay: u32,
    pub properties: PublishProperties,
}

/// A CONNECT packet. Fields after `password` are MQTT 5 properties, defaulted for 3.1.1.
#[derive(Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    /// Clean Session (3.1.1) / Clean Start (5.0).
    pub clean_start: bool,
    /// Seconds; 0 disables the keep-alive check [MQTT-3.1.2-24].
    pub keep_alive: u16,
    pub client_id: ByteString,
    pub will: Option<Will>,
    pub username: Option<ByteString>,
    pub password: Option<Bytes>,
    /// Session Expiry Interval in seconds; 0xFFFF_FFFF never expires.
    pub session_expiry: u32,
    /// How many QoS 1/2 PUBLISH the client accepts unacknowledged.
    pub receive_maximum: u16,
    /// Largest packet the client accepts.
    pub max_packet_size: Option<u32>,
    pub topic_alias_maximum: u16,
    pub request_response_info: bool,
    pub request_problem_info: bool,
    pub user_properties: UserProperties,
    pub auth_method: Option<ByteString>,
    pub auth_data: Option<Bytes>,
}

impl fmt::Debug for Connect {
    // The password and authentication data never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("version", &self.version)
            .field("client_id", &self.client_id)
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("session_expiry", &self.session_expiry)
            .field("will", &self.will.as_ref().map(|w| &w.topic))
            .field("username", &self.username)
            .field("auth_method", &self.auth_method)
            .finish()
    }
}

/// CONNACK; the properties are sent to MQTT 5 clients only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    pub reason: ReasonCode,
    pub session_expiry: Option<u32>,
    pub receive_maximum: Option<u16>,
    pub maximum_qos: Option<QoS>,
    pub retain_available: bool,
    pub maximum_packet_size: Option<u32>,
    pub assigned_client_id: Option<ByteString>,
    pub topic_alias_maximum: u16,
    pub reason_string: Option<ByteString>,
    pub wildcard_subscription_available: bool,
    pub subscription_identifiers_available: bool,
    pub shared_subscription_available: bool,
    pub server_keep_alive: Option<u16>,
    pub response_information: Option<ByteString>,
    pub auth_method: Option<ByteString>,
    pub auth_data: Option<Bytes>,
    pub user_properties: UserProperties,
}

impl Default for ReasonCode {
    fn default() -> Self {
        ReasonCode::SUCCESS
    }
}

impl ConnAck {
    /// A refusal with `reason` [MQTT-3.2.2-6]: session present 0, no properties (the
    /// availability flags are left at their defaults, which encode as absent).
    pub fn refuse(reason: ReasonCode) -> Self {
        ConnAck {
            reason,
            retain_available: true,
            wildcard_subscription_available: true,
            subscription_identifiers_available: true,
            shared_subscription_available: true,
            ..ConnAck::default()
        }
    }
}

/// Retain Handling subscription option (MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetainHandling {
    /// Send retained messages at subscribe time.
    #[default]
    OnSubscribe,
    /// Only when the subscription did not already exist.
    OnNewSubscribe,
    Never,
}

/// Options of one SUBSCRIBE entry; 3.1.1 uses `qos` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    pub fn qos(qos: QoS) -> Self {
        SubscriptionOptions {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::default(),
        }
    }
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: PacketId,
    pub reason: ReasonCode,
}

impl Ack {
    pub fn success(packet_id: PacketId) -> Self {
        Ack { packet_id, reason: ReasonCode::SUCCESS }
    }
}

/// DISCONNECT, either direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    pub reason: ReasonCode,
    pub session_expiry: Option<u32>,
    pub reason_string: Option<ByteString>,
}

/// AUTH (MQTT 5 enhanced authentication).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub reason: ReasonCode,
    pub method: Option<ByteString>,
    pub data: Option<Bytes>,
}

/// Every control packet Tern sends or receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(Box<ConnAck>),
    Publish(Box<Publish>),
    /// An outbound PUBLISH of a routed message (see `Forward`).
    Forward(Forward),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe {
        packet_id: PacketId,
        subscription_id: Option<u32>,
        filters: Vec<(ByteString, SubscriptionOptions)>,
    },
    SubAck {
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
    },
    Unsubscribe {
        packet_id: PacketId,
        filters: Vec<ByteString>,
    },
    UnsubAck {
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
    },
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// The spec's name for the packet type, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) | Packet::Forward(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe { .. } => "SUBSCRIBE",
            Packet::SubAck { .. } => "SUBACK",
            Packet::Unsubscribe { .. } => "UNSUBSCRIBE",
            Packet::UnsubAck { .. } => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}
