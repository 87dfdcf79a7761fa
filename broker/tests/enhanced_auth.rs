//! In-process: MQTT 5 enhanced authentication (section 4.12) through the `EnhancedAuthenticator`
//! interface, with a small challenge/response method, on the wire with raw MQTT 5 packets.
//! The client side uses rmqtt-codec's v5 codec directly (it decodes server packets).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use rmqtt_codec::v5::{self, Packet as V5};
use tern::auth::{AuthExchange, AuthStep, EnhancedAuthenticator, Security};
use tern::packet::ReasonCode;
use tern::session::ClientId;
use tern::storage::MemoryStore;
use tern::{Broker, Config, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_util::codec::{Decoder, Encoder};

const WAIT: Duration = Duration::from_secs(5);
const METHOD: &str = "TEST-CHALLENGE";

/// Challenge "nonce"; the client must answer "nonce:secret". The server's final data is "ok".
#[derive(Debug)]
struct Challenge;

struct ChallengeExchange {
    challenged: bool,
}

impl AuthExchange for ChallengeExchange {
    fn step(&mut self, data: Option<&Bytes>) -> AuthStep {
        if !self.challenged {
            self.challenged = true;
            return AuthStep::Continue(Some(Bytes::from_static(b"nonce")));
        }
        match data.map(|d| &d[..]) {
            Some(b"nonce:secret") => AuthStep::Success(Some(Bytes::from_static(b"ok"))),
            _ => AuthStep::Failure(ReasonCode::NOT_AUTHORIZED),
        }
    }
}

impl EnhancedAuthenticator for Challenge {
    fn method(&self) -> &str {
        METHOD
    }

    fn start(&self, _: &ClientId, _: Option<&ByteString>) -> Box<dyn AuthExchange> {
        Box::new(ChallengeExchange { challenged: false })
    }
}

async fn start() -> (std::net::SocketAddr, tokio_util::sync::CancellationToken) {
    let config = Arc::new(Config::from_toml("[[listener]]\nbind = \"127.0.0.1:0\"").unwrap());
    let broker = Broker::new(config, Arc::new(MemoryStore::default()), Arc::new(Security::open()))
        .with_enhanced_auth(Arc::new(Challenge));
    let server = Server::bind_broker(broker).await.unwrap();
    let addr = server.local_addrs()[0];
    let token = server.shutdown_token();
    tokio::spawn(server.run());
    (addr, token)
}

struct Client {
    stream: TcpStream,
    codec: v5::Codec,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: std::net::SocketAddr) -> Self {
        Client {
            stream: TcpStream::connect(addr).await.unwrap(),
            codec: v5::Codec::new(0, 0),
            buf: BytesMut::new(),
        }
    }

    async fn send(&mut self, packet: V5) {
        let mut out = BytesMut::new();
        self.codec.encode(packet, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    async fn recv(&mut self) -> Option<V5> {
        timeout(WAIT, async {
            loop {
                if let Some((packet, _)) = self.codec.decode(&mut self.buf).unwrap() {
                    return Some(packet);
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("no packet in time")
    }

    async fn connect_with(&mut self, method: &str) {
        let connect = v5::Connect {
            client_id: "auth-client".into(),
            clean_start: true,
            keep_alive: 30,
            auth_method: Some(method.into()),
            ..v5::Connect::default()
        };
        self.send(V5::Connect(Box::new(connect))).await;
    }

    async fn auth(&mut self, reason: v5::AuthReasonCode, data: &'static [u8]) {
        let auth = v5::Auth {
            reason_code: reason,
            auth_method: Some(METHOD.into()),
            auth_data: Some(Bytes::from_static(data)),
            ..v5::Auth::default()
        };
        self.send(V5::Auth(auth)).await;
    }

    async fn expect_challenge(&mut self) {
        match self.recv().await {
            Some(V5::Auth(a)) => {
                assert_eq!(a.reason_code, v5::AuthReasonCode::ContinueAuth, "[MQTT-4.12.0-2]");
                assert_eq!(a.auth_method.as_deref(), Some(METHOD));
                assert_eq!(a.auth_data.as_deref(), Some(&b"nonce"[..]));
            }
            other => panic!("expected AUTH 0x18, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn challenge_response_then_connack_with_method_and_data() {
    let (addr, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    c.connect_with(METHOD).await;
    c.expect_challenge().await;
    c.auth(v5::AuthReasonCode::ContinueAuth, b"nonce:secret").await;
    match c.recv().await {
        Some(V5::ConnectAck(ack)) => {
            assert_eq!(ack.reason_code, v5::ConnectAckReason::Success);
            // CONNACK carries the same Authentication Method (section 3.2.2.3.17).
            assert_eq!(ack.auth_method.as_deref(), Some(METHOD));
            assert_eq!(ack.auth_data.as_deref(), Some(&b"ok"[..]));
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

#[tokio::test]
async fn wrong_response_is_refused_with_not_authorized() {
    let (addr, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    c.connect_with(METHOD).await;
    c.expect_challenge().await;
    c.auth(v5::AuthReasonCode::ContinueAuth, b"nonce:guess").await;
    match c.recv().await {
        Some(V5::ConnectAck(ack)) => assert_eq!(ack.reason_code, v5::ConnectAckReason::NotAuthorized),
        other => panic!("expected CONNACK 0x87, got {other:?}"),
    }
    assert!(c.recv().await.is_none(), "connection closed after the refusal [MQTT-3.2.2-7]");
}

#[tokio::test]
async fn unknown_method_gets_bad_authentication_method() {
    let (addr, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    c.connect_with("KERBEROS").await;
    match c.recv().await {
        Some(V5::ConnectAck(ack)) => {
            assert_eq!(ack.reason_code, v5::ConnectAckReason::BadAuthenticationMethod)
        }
        other => panic!("expected CONNACK 0x8C, got {other:?}"),
    }
}

#[tokio::test]
async fn reauthentication_succeeds_and_failure_disconnects() {
    // [MQTT-4.12.1-1]: AUTH 0x19 with the same method starts re-authentication.
    let (addr, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    c.connect_with(METHOD).await;
    c.expect_challenge().await;
    c.auth(v5::AuthReasonCode::ContinueAuth, b"nonce:secret").await;
    assert!(matches!(c.recv().await, Some(V5::ConnectAck(_))));

    c.auth(v5::AuthReasonCode::ReAuth, b"").await;
    c.expect_challenge().await;
    c.auth(v5::AuthReasonCode::ContinueAuth, b"nonce:secret").await;
    match c.recv().await {
        Some(V5::Auth(a)) => assert_eq!(a.reason_code, v5::AuthReasonCode::Success),
        other => panic!("expected AUTH 0x00, got {other:?}"),
    }

    c.auth(v5::AuthReasonCode::ReAuth, b"").await;
    c.expect_challenge().await;
    c.auth(v5::AuthReasonCode::ContinueAuth, b"nonce:wrong").await;
    match c.recv().await {
        Some(V5::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::NotAuthorized),
        other => panic!("expected DISCONNECT 0x87, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_without_enhanced_authentication_is_a_protocol_error() {
    let (addr, _stop) = start().await;
    let mut c = Client::connect(addr).await;
    let connect = v5::Connect { client_id: "plain".into(), clean_start: true, ..v5::Connect::default() };
    c.send(V5::Connect(Box::new(connect))).await;
    assert!(matches!(c.recv().await, Some(V5::ConnectAck(_))));
    c.auth(v5::AuthReasonCode::ReAuth, b"").await;
    match c.recv().await {
        Some(V5::Disconnect(d)) => assert_eq!(d.reason_code, v5::DisconnectReasonCode::ProtocolError),
        other => panic!("expected DISCONNECT 0x82, got {other:?}"),
    }
}
