//! Who may connect and what they may do.
//!
//! `Security` holds the password file and the ACL (both in Mosquitto's formats), reloaded on
//! SIGHUP without dropping connections, and answers the three questions the protocol code
//! asks: may this client connect, publish to this topic, subscribe to this filter — and, for
//! each message routed, may this session read it.
//!
//! MQTT 5 enhanced authentication (section 4.12) plugs in as `EnhancedAuthenticator`s, one per
//! Authentication Method, each running a challenge/response `AuthExchange` for a CONNECT or a
//! re-authentication. With none registered, a CONNECT naming a method is refused with 0x8C.
//! `scram::ScramSha256` is the one Tern ships, over the same password file.

pub mod acl;
pub mod nkey;
pub mod password;
pub mod scram;

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use bytestring::ByteString;
use tracing::info;

use crate::config::AuthConfig;
use crate::packet::ReasonCode;
use crate::session::queue::Mailbox;
use crate::session::ClientId;
use acl::{Access, Acl, AclError};
use password::{PasswordFile, PasswordFileError};
use scram::{ScramCredential, ScramCredentials};

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

    /// The user the exchange proved, once it succeeded (methods that establish one).
    fn authenticated_user(&self) -> Option<ByteString> {
        None
    }
}

/// An MQTT 5 Authentication Method.
pub trait EnhancedAuthenticator: Send + Sync + fmt::Debug {
    /// The method name clients put in CONNECT, e.g. "SCRAM-SHA-256".
    fn method(&self) -> &str;
    /// Begins an exchange for `client_id`; its first `step` gets the CONNECT's (or the
    /// re-authentication AUTH's) data.
    fn start(&self, client_id: &ClientId, username: Option<&ByteString>) -> Box<dyn AuthExchange>;
}

/// A security file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("auth.password_file: {0}")]
    Passwords(#[from] PasswordFileError),
    #[error("auth.acl_file: {0}")]
    Acl(#[from] AclError),
}

/// How a client proved who it is, decided before the session starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// Nothing beyond what CONNECT carries.
    None,
    /// The listener took the user name from a verified client certificate.
    Certificate,
    /// An enhanced-authentication method (e.g. SCRAM) proved the user.
    Enhanced,
}

/// The files as last loaded.
#[derive(Debug, Default)]
struct Loaded {
    passwords: Option<PasswordFile>,
    acl: Option<Acl>,
}

#[derive(Debug)]
pub struct Security {
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    /// Swapped whole on reload; readers clone the `Arc` and never wait for a reload.
    loaded: RwLock<Arc<Loaded>>,
}

impl Security {
    /// Loads the configured files; an error names the key and the line.
    pub fn load(config: &AuthConfig) -> Result<Security, SecurityError> {
        let security = Security {
            password_file: config.password_file.clone(),
            acl_file: config.acl_file.clone(),
            loaded: RwLock::default(),
        };
        security.reload()?;
        Ok(security)
    }

    /// No password file and no ACL: anonymous rules only.
    pub fn open() -> Security {
        Security { password_file: None, acl_file: None, loaded: RwLock::default() }
    }

    /// Reads both files again. On an error the files in use stay in use.
    pub fn reload(&self) -> Result<(), SecurityError> {
        let passwords = self.password_file.as_deref().map(PasswordFile::load).transpose()?;
        let acl = self.acl_file.as_deref().map(Acl::load).transpose()?;
        if let Some(p) = &self.password_file {
            info!(file = %p.display(), "password file loaded");
        }
        if let Some(a) = &self.acl_file {
            info!(file = %a.display(), "ACL loaded");
        }
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(Loaded { passwords, acl });
        Ok(())
    }

    /// Whether `authenticate` will verify a password (slow by design) for such a client.
    pub fn hashes_password(&self, has_username: bool, proof: Proof) -> bool {
        has_username && proof == Proof::None && self.password_file.is_some()
    }

    /// Whether an ACL is configured; without one no topic check needs the lock.
    fn has_acl(&self) -> bool {
        self.acl_file.is_some()
    }

    fn current(&self) -> Arc<Loaded> {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The CONNECT check. A user name counts only when something proved it: the password file,
    /// a client certificate or an enhanced-authentication method; otherwise the client is
    /// anonymous, which `allow_anonymous` decides. Returns the proven user name, if any: an
    /// unproven one must not gain a user's ACL rights.
    pub fn authenticate<'a>(
        &self,
        allow_anonymous: bool,
        username: Option<&'a str>,
        password: Option<&[u8]>,
        proof: Proof,
    ) -> Result<Option<&'a str>, ReasonCode> {
        if proof != Proof::None {
            return Ok(username);
        }
        let loaded = self.current();
        match (&loaded.passwords, username) {
            (Some(passwords), Some(user)) => {
                // A named user must prove it, even where anonymous clients are welcome.
                match password {
                    Some(password) if passwords.verify(user, password) => Ok(Some(user)),
                    _ => Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD),
                }
            }
            _ if allow_anonymous => Ok(None),
            _ => Err(ReasonCode::NOT_AUTHORIZED),
        }
    }

    /// Whether the ACL lets this client publish to `topic` (no ACL: yes).
    pub fn may_publish(&self, username: Option<&str>, client_id: &ClientId, topic: &str) -> bool {
        !self.has_acl()
            || self
                .current()
                .acl
                .as_ref()
                .is_none_or(|acl| acl.allows_topic(username, &client_id.0, topic, Access::Write))
    }

    /// Whether the ACL lets this client subscribe to `filter` (no ACL: yes).
    pub fn may_subscribe(&self, username: Option<&str>, client_id: &ClientId, filter: &str) -> bool {
        !self.has_acl()
            || self
                .current()
                .acl
                .as_ref()
                .is_none_or(|acl| acl.allows_subscription(username, &client_id.0, filter))
    }

    /// Whether the ACL lets this client receive a message published to `topic` (no ACL: yes).
    pub fn may_read(&self, username: Option<&str>, client_id: &ClientId, topic: &str) -> bool {
        !self.has_acl()
            || self
                .current()
                .acl
                .as_ref()
                .is_none_or(|acl| acl.allows_topic(username, &client_id.0, topic, Access::Read))
    }
}

/// The router asks, for each session a message would go to, whether it may read it.
pub trait ReadGate {
    fn may_read(&self, mailbox: &Mailbox, topic: &str) -> bool;
}

impl ReadGate for Security {
    fn may_read(&self, mailbox: &Mailbox, topic: &str) -> bool {
        // Without an ACL the user name (a lock and a copy per delivery) is not needed.
        if !self.has_acl() {
            return true;
        }
        let username = mailbox.username();
        Security::may_read(self, username.as_deref(), mailbox.client_id(), topic)
    }
}

impl ScramCredentials for Security {
    fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
        self.current().passwords.as_ref()?.scram_credential(user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_passwords(text: &str) -> Security {
        let security = Security::open();
        let passwords = PasswordFile::parse(text).unwrap();
        *security.loaded.write().unwrap() = Arc::new(Loaded { passwords: Some(passwords), acl: None });
        security
    }

    #[test]
    fn anonymous_follows_the_listener_and_unproven_names_are_anonymous() {
        let open = Security::open();
        assert_eq!(open.authenticate(true, None, None, Proof::None), Ok(None));
        assert_eq!(open.authenticate(false, None, None, Proof::None), Err(ReasonCode::NOT_AUTHORIZED));
        // Without a password file nothing can prove a name: still anonymous.
        assert_eq!(
            open.authenticate(false, Some("alice"), Some(b"x"), Proof::None),
            Err(ReasonCode::NOT_AUTHORIZED)
        );
        assert_eq!(open.authenticate(true, Some("alice"), Some(b"x"), Proof::None), Ok(None));
        assert_eq!(open.authenticate(false, Some("alice"), None, Proof::Certificate), Ok(Some("alice")));
    }

    #[test]
    fn named_users_must_give_their_password_even_where_anonymous_is_allowed() {
        let entry = password::hash_password(b"s3cret");
        let security = with_passwords(&format!("alice:{entry}\n"));
        assert_eq!(
            security.authenticate(false, Some("alice"), Some(b"s3cret"), Proof::None),
            Ok(Some("alice"))
        );
        for allow in [true, false] {
            let wrong = security.authenticate(allow, Some("alice"), Some(b"nope"), Proof::None);
            assert_eq!(wrong, Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
            let missing = security.authenticate(allow, Some("alice"), None, Proof::None);
            assert_eq!(missing, Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
            let unknown = security.authenticate(allow, Some("bob"), Some(b"s3cret"), Proof::None);
            assert_eq!(unknown, Err(ReasonCode::BAD_USER_NAME_OR_PASSWORD));
        }
        assert_eq!(security.authenticate(true, None, None, Proof::None), Ok(None));
    }
}
