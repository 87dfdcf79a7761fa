//! Authentication hook: every CONNECT's credentials pass through an `Authenticator` before the
//! session is created. The default allows everyone (the listener is loopback-only by default);
//! password files and ACLs plug in here.

use bytes::Bytes;
use bytestring::ByteString;

use crate::packet::ConnectReturnCode;
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
    /// Refuse with this CONNACK return code (0x04 or 0x05).
    Deny(ConnectReturnCode),
}

pub trait Authenticator: Send + Sync + std::fmt::Debug {
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
