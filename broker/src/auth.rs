//! Authentication hooks.
//!
//! Every CONNECT passes through an `Authenticator` (user name and password) before a session is
//! created; the default allows everyone (the listener is loopback-only by default). MQTT 5
//! enhanced authentication (section 4.12) plugs in as `EnhancedAuthenticator`s, one per
//! Authentication Method, each running a challenge/response `AuthExchange` for a CONNECT or a
//! re-authentication. With none registered, a CONNECT naming a method is refused with 0x8C.

use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;

use crate::packet::ReasonCode;
use crate::session::ClientId;

/// The credentials a client presented.
#[derive(Debug)]
pub struct Credentials<'a> {
    pub client_id: &'a ClientId,
    pub username: Option<&'a ByteString>,
    pub password: Option<&'a Bytes>,
}

/// The verdict on a CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthDecision {
    Allow,
    /// Refuse with this reason code (0x86 or 0x87; 3.1.1 clients see 0x04 or 0x05).
    Deny(ReasonCode),
}

pub trait Authenticator: Send + Sync + fmt::Debug {
    fn authenticate(&self, credentials: &Credentials<'_>) -> AuthDecision;
}

/// Accepts every client, with or without credentials.
#[derive(Debug, Default)]
pub struct AllowAll;

impl Authenticator for AllowAll {
    fn authenticate(&self, _: &Credentials<'_>) -> AuthDecision {
        AuthDecision::Allow
    }
}

/// One step of an enhanced-authentication exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Send AUTH 0x18 with this data and wait for the client's answer.
    Continue(Option<Bytes>),
    /// Authenticated: CONNACK 0x00 (or AUTH 0x00 when re-authenticating) with this data.
    Success(Option<Bytes>),
    /// Refused: CONNACK, or DISCONNECT when re-authenticating, with this reason code.
    Failure(ReasonCode),
}

/// The server side of one challenge/response exchange.
pub trait AuthExchange: Send {
    /// Takes the client's Authentication Data (from CONNECT, or AUTH 0x18/0x19).
    fn step(&mut self, data: Option<&Bytes>) -> AuthStep;
}

/// An MQTT 5 Authentication Method.
pub trait EnhancedAuthenticator: Send + Sync + fmt::Debug {
    /// The method name clients put in CONNECT, e.g. "SCRAM-SHA-256".
    fn method(&self) -> &str;
    /// Begins an exchange for `client_id`; its first `step` gets the CONNECT's (or the
    /// re-authentication AUTH's) data.
    fn start(&self, client_id: &ClientId, username: Option<&ByteString>) -> Box<dyn AuthExchange>;
}
