//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as an MQTT 5 Authentication Method.
//!
//! MQTT 5 §4.12 carries each SCRAM message in the Authentication Data property: client-first in
//! CONNECT, server-first in AUTH 0x18, client-final in AUTH 0x18, server-final in CONNACK (or in
//! AUTH 0x00 when re-authenticating). The broker stores only the RFC 5803 verifier (StoredKey and
//! ServerKey), never the password, and the password never crosses the wire.
//!
//! Every refusal is the same `0x86 Bad User Name or Password`, and an unknown user is answered with
//! a plausible challenge before being refused, so a client cannot tell why it failed nor enumerate
//! user names. The reason is logged at debug level for the operator.

use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use bytes::Bytes;
use bytestring::ByteString;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{AuthExchange, AuthStep, EnhancedAuthenticator};
use crate::packet::ReasonCode;
use crate::session::ClientId;

/// The MQTT Authentication Method name (the SASL mechanism name of RFC 7677).
const METHOD: &str = "SCRAM-SHA-256";

/// Iteration count for new verifiers and for the decoy credential of unknown users: RFC 7677's
/// minimum, and what PostgreSQL writes, so decoys look like real entries.
pub(crate) const DEFAULT_ITERATIONS: u32 = 4096;

/// Salt length for new verifiers and decoys (PostgreSQL's choice as well).
pub(crate) const SALT_LEN: usize = 16;

/// Random bytes in the server nonce; 18 bytes encode to 24 base64 characters without padding.
const SERVER_NONCE_LEN: usize = 18;

type HmacSha256 = Hmac<Sha256>;

/// One user's SCRAM-SHA-256 verifier: what the server needs to check a proof and to prove itself.
#[derive(Clone)]
pub struct ScramCredential {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramCredential {
    /// Derives the verifier of `password` (RFC 5802 §3). This is the one key derivation shared by new
    /// verifiers and by plain CONNECT passwords checked against a stored verifier.
    ///
    /// The password is used as given, without SASLprep: identical for ASCII passwords, and clients
    /// that normalise non-ASCII passwords differently will not match.
    pub fn from_password(password: &[u8], salt: Vec<u8>, iterations: u32) -> Self {
        let mut salted_password = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, iterations, &mut salted_password);
        let client_key = hmac_sha256(&salted_password, b"Client Key");
        ScramCredential {
            iterations,
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac_sha256(&salted_password, b"Server Key"),
            salt,
        }
    }

    /// Whether this verifier was derived from `password`, compared in constant time.
    pub fn matches_password(&self, password: &[u8]) -> bool {
        let derived = ScramCredential::from_password(password, self.salt.clone(), self.iterations);
        derived.stored_key.ct_eq(&self.stored_key).into()
    }

    /// Checks a ClientProof: it must unmask to a ClientKey whose hash is StoredKey (RFC 5802 §3).
    fn accepts_proof(&self, auth_message: &[u8], proof: &[u8; 32]) -> bool {
        let signature = hmac_sha256(&self.stored_key, auth_message);
        let client_key: Vec<u8> = proof.iter().zip(signature).map(|(p, s)| p ^ s).collect();
        Sha256::digest(client_key).ct_eq(&self.stored_key).into()
    }
}

/// Keys stay out of logs: they are password equivalents for anyone who can speak SCRAM.
impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .field("salt", &BASE64.encode(&self.salt))
            .field("stored_key", &"<redacted>")
            .field("server_key", &"<redacted>")
            .finish()
    }
}

/// Where SCRAM verifiers come from. The broker implements it over its current (reloadable) password
/// file; it is asked at the time of each exchange, so a reload takes effect for the next login.
pub trait ScramCredentials: Send + Sync + fmt::Debug {
    fn scram_credential(&self, user: &str) -> Option<ScramCredential>;
}

/// The SCRAM-SHA-256 Authentication Method.
pub struct ScramSha256 {
    lookup: Arc<Lookup>,
}

impl ScramSha256 {
    /// # Panics
    /// If the operating system's random number generator fails, as the decoy salts of unknown users
    /// would otherwise be predictable.
    pub fn new(credentials: Arc<dyn ScramCredentials>) -> Self {
        let decoy_key = random_bytes().expect("the operating system's random number generator failed");
        ScramSha256 { lookup: Arc::new(Lookup { credentials, decoy_key }) }
    }

    /// Builds an exchange with a given server nonce; `None` (no randomness) fails the exchange.
    /// Separate from `start` so tests can inject the RFC 7677 nonce.
    fn exchange(
        &self,
        client_id: &ClientId,
        username: Option<&ByteString>,
        server_nonce: Option<String>,
    ) -> ScramExchange {
        ScramExchange {
            lookup: Arc::clone(&self.lookup),
            client_id: client_id.clone(),
            state: State::Start { expected_user: username.cloned(), server_nonce },
        }
    }
}

impl fmt::Debug for ScramSha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramSha256").field("credentials", &self.lookup.credentials).finish_non_exhaustive()
    }
}

impl EnhancedAuthenticator for ScramSha256 {
    fn method(&self) -> &str {
        METHOD
    }

    fn start(&self, client_id: &ClientId, username: Option<&ByteString>) -> Box<dyn AuthExchange> {
        Box::new(self.exchange(client_id, username, random_server_nonce()))
    }
}

/// Credential lookup shared by an authenticator and all of its exchanges.
struct Lookup {
    credentials: Arc<dyn ScramCredentials>,
    /// Keys the decoy salts, so they are stable per user yet unguessable.
    decoy_key: [u8; 32],
}

impl Lookup {
    /// The user's verifier and whether the user exists. An unknown user gets a decoy whose salt is
    /// stable per user (a changing salt would give the user away on a second try); its keys match
    /// no password, and the caller refuses it anyway.
    fn credential(&self, user: &str) -> (ScramCredential, bool) {
        match self.credentials.scram_credential(user) {
            Some(credential) => (credential, true),
            None => (self.decoy(user), false),
        }
    }

    fn decoy(&self, user: &str) -> ScramCredential {
        let salt = hmac_sha256(&self.decoy_key, user.as_bytes())[..SALT_LEN].to_vec();
        ScramCredential { iterations: DEFAULT_ITERATIONS, salt, stored_key: [0; 32], server_key: [0; 32] }
    }
}

/// Why an exchange was refused; logged, never sent (the client only sees 0x86).
type Refusal = &'static str;

/// The server side of one SCRAM-SHA-256 exchange.
struct ScramExchange {
    lookup: Arc<Lookup>,
    client_id: ClientId,
    state: State,
}

enum State {
    /// Waiting for the client-first-message.
    Start {
        expected_user: Option<ByteString>,
        server_nonce: Option<String>,
    },
    /// The server-first-message was sent; waiting for the client-final-message.
    Challenged(Challenge),
    Authenticated(ByteString),
    /// Refused; every later step is refused too.
    Failed,
}

/// What the server must remember between its challenge and the client's proof.
struct Challenge {
    user: String,
    credential: ScramCredential,
    known_user: bool,
    gs2_header: String,
    nonce: String,
    /// `client-first-message-bare "," server-first-message ","`: the AuthMessage up to the
    /// client-final-message-without-proof.
    auth_message_start: String,
}

impl AuthExchange for ScramExchange {
    fn step(&mut self, data: Option<&Bytes>) -> AuthStep {
        let state = std::mem::replace(&mut self.state, State::Failed);
        match self.advance(state, data) {
            Ok((state, step)) => {
                self.state = state;
                step
            }
            Err(reason) => {
                tracing::debug!(
                    client_id = &*self.client_id.0,
                    reason,
                    "SCRAM-SHA-256 authentication refused"
                );
                AuthStep::Failure(ReasonCode::BAD_USER_NAME_OR_PASSWORD)
            }
        }
    }

    fn authenticated_user(&self) -> Option<ByteString> {
        match &self.state {
            State::Authenticated(user) => Some(user.clone()),
            _ => None,
        }
    }
}

impl ScramExchange {
    fn advance(&self, state: State, data: Option<&Bytes>) -> Result<(State, AuthStep), Refusal> {
        match state {
            State::Start { expected_user, server_nonce } => {
                self.challenge(message_text(data)?, expected_user, server_nonce)
            }
            State::Challenged(challenge) => finish(message_text(data)?, challenge),
            State::Authenticated(_) | State::Failed => Err("step after the exchange ended"),
        }
    }

    /// Answers the client-first-message with the server-first-message.
    fn challenge(
        &self,
        message: &str,
        expected_user: Option<ByteString>,
        server_nonce: Option<String>,
    ) -> Result<(State, AuthStep), Refusal> {
        let first = parse_client_first(message)?;
        if expected_user.is_some_and(|expected| *expected != *first.user) {
            return Err("the CONNECT User Name differs from the SCRAM user name");
        }
        let server_nonce = server_nonce.ok_or("no server nonce: the random number generator failed")?;
        let (credential, known_user) = self.lookup.credential(&first.user);
        let nonce = format!("{}{server_nonce}", first.nonce);
        let server_first =
            format!("r={nonce},s={},i={}", BASE64.encode(&credential.salt), credential.iterations);
        let challenge = Challenge {
            auth_message_start: format!("{},{server_first},", first.bare),
            user: first.user,
            credential,
            known_user,
            gs2_header: first.gs2_header.to_owned(),
            nonce,
        };
        Ok((State::Challenged(challenge), AuthStep::Continue(Some(Bytes::from(server_first)))))
    }
}

/// Checks the client-final-message and answers with the server-final-message.
fn finish(message: &str, challenge: Challenge) -> Result<(State, AuthStep), Refusal> {
    let last = parse_client_final(message)?;
    if last.channel_binding != challenge.gs2_header.as_bytes() {
        return Err("the channel binding (c=) does not repeat the GS2 header");
    }
    if last.nonce != challenge.nonce {
        return Err("the nonce (r=) differs from the combined nonce");
    }
    let auth_message = format!("{}{}", challenge.auth_message_start, last.without_proof);
    // The proof is checked even for an unknown user, so both refusals take the same time.
    let proof_ok = challenge.credential.accepts_proof(auth_message.as_bytes(), &last.proof);
    if !challenge.known_user {
        return Err("unknown user");
    }
    if !proof_ok {
        return Err("wrong password (ClientProof)");
    }
    let signature = hmac_sha256(&challenge.credential.server_key, auth_message.as_bytes());
    let server_final = Bytes::from(format!("v={}", BASE64.encode(signature)));
    Ok((State::Authenticated(ByteString::from(challenge.user)), AuthStep::Success(Some(server_final))))
}

/// SCRAM messages are UTF-8 text (RFC 5802 §7).
fn message_text(data: Option<&Bytes>) -> Result<&str, Refusal> {
    let data = data.ok_or("no Authentication Data")?;
    std::str::from_utf8(data).map_err(|_| "Authentication Data is not UTF-8")
}

struct ClientFirst<'a> {
    /// `gs2-header`, e.g. `n,,`, which the client must repeat (base64) in `c=`.
    gs2_header: &'a str,
    /// `client-first-message-bare`, part of the AuthMessage.
    bare: &'a str,
    user: String,
    nonce: &'a str,
}

/// Parses `gs2-header client-first-message-bare` (RFC 5802 §7).
fn parse_client_first(message: &str) -> Result<ClientFirst<'_>, Refusal> {
    let mut parts = message.splitn(3, ',');
    let (cbind_flag, authzid, bare) = match (parts.next(), parts.next(), parts.next()) {
        (Some(flag), Some(authzid), Some(bare)) => (flag, authzid, bare),
        _ => return Err("malformed GS2 header"),
    };
    match cbind_flag {
        "n" | "y" => {}
        flag if flag.starts_with("p=") => return Err("channel binding is not supported"),
        _ => return Err("malformed GS2 channel-binding flag"),
    }
    if !authzid.is_empty() {
        return Err("an authorization identity (a=) is not supported");
    }
    let mut fields = bare.split(',');
    let user_field = fields.next().unwrap_or_default();
    if user_field.starts_with("m=") {
        return Err("mandatory extension (m=) not supported");
    }
    let user = unescape_user(attribute(user_field, 'n').ok_or("missing user name (n=)")?)?;
    let nonce = attribute(fields.next().unwrap_or_default(), 'r').ok_or("missing nonce (r=)")?;
    if !is_valid_nonce(nonce) {
        return Err("malformed client nonce");
    }
    check_extensions(fields)?;
    Ok(ClientFirst { gs2_header: &message[..message.len() - bare.len()], bare, user, nonce })
}

struct ClientFinal<'a> {
    channel_binding: Vec<u8>,
    nonce: &'a str,
    /// `client-final-message-without-proof`, the last part of the AuthMessage.
    without_proof: &'a str,
    proof: [u8; 32],
}

/// Parses `c=...,r=...[,extensions],p=...` (RFC 5802 §7); the proof always comes last.
fn parse_client_final(message: &str) -> Result<ClientFinal<'_>, Refusal> {
    let (without_proof, proof_field) = message.rsplit_once(',').ok_or("malformed client-final-message")?;
    let proof = attribute(proof_field, 'p').ok_or("missing proof (p=)")?;
    let proof = decode_base64(proof)?.try_into().map_err(|_| "the proof is not 32 bytes")?;
    let mut fields = without_proof.split(',');
    let channel_binding =
        attribute(fields.next().unwrap_or_default(), 'c').ok_or("missing channel binding (c=)")?;
    let nonce = attribute(fields.next().unwrap_or_default(), 'r').ok_or("missing nonce (r=)")?;
    check_extensions(fields)?;
    Ok(ClientFinal { channel_binding: decode_base64(channel_binding)?, nonce, without_proof, proof })
}

/// The value of an `x=value` field whose attribute is `name`.
fn attribute(field: &str, name: char) -> Option<&str> {
    field.strip_prefix(name)?.strip_prefix('=')
}

/// Optional extensions (`attr=value`, one ASCII letter) are allowed and ignored (RFC 5802 §7).
fn check_extensions<'a>(mut fields: impl Iterator<Item = &'a str>) -> Result<(), Refusal> {
    let well_formed = |field: &str| {
        let mut bytes = field.bytes();
        matches!((bytes.next(), bytes.next()), (Some(attr), Some(b'=')) if attr.is_ascii_alphabetic())
    };
    if fields.all(well_formed) {
        Ok(())
    } else {
        Err("malformed extension attribute")
    }
}

/// `c-nonce`: printable ASCII except `,` (RFC 5802 §7), at least one character.
fn is_valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty() && nonce.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Decodes a `saslname`: `=2C` is `,` and `=3D` is `=`; any other `=` is malformed (RFC 5802 §5.1).
fn unescape_user(name: &str) -> Result<String, Refusal> {
    let mut user = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        user.push_str(&rest[..at]);
        let escaped = rest.get(at..at + 3).ok_or("malformed user name escape")?;
        user.push(match escaped {
            "=2C" => ',',
            "=3D" => '=',
            _ => return Err("malformed user name escape"),
        });
        rest = &rest[at + 3..];
    }
    user.push_str(rest);
    if user.is_empty() || user.contains('\0') {
        return Err("empty or NUL-containing user name");
    }
    Ok(user)
}

fn decode_base64(text: &str) -> Result<Vec<u8>, Refusal> {
    BASE64.decode(text).map_err(|_| "malformed base64")
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A fresh server nonce, or `None` (logged) if the system has no randomness to give: the exchange
/// then fails rather than the broker.
fn random_server_nonce() -> Option<String> {
    match random_bytes::<SERVER_NONCE_LEN>() {
        Ok(bytes) => Some(BASE64.encode(bytes)),
        Err(error) => {
            tracing::error!(%error, "no randomness for a SCRAM-SHA-256 server nonce");
            None
        }
    }
}

/// Bytes from the operating system's random number generator.
pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], getrandom::Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A fixed credential store for the tests.
    #[derive(Debug, Default)]
    struct Users(HashMap<String, ScramCredential>);

    impl Users {
        fn with(user: &str, password: &str, salt: &[u8], iterations: u32) -> Arc<Users> {
            let credential = ScramCredential::from_password(password.as_bytes(), salt.to_vec(), iterations);
            Arc::new(Users(HashMap::from([(user.to_owned(), credential)])))
        }
    }

    impl ScramCredentials for Users {
        fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
            self.0.get(user).cloned()
        }
    }

    /// An independent SCRAM-SHA-256 client written straight from RFC 5802 §3, sharing no code with
    /// the server beyond the primitives (PBKDF2, HMAC, SHA-256).
    struct Client {
        gs2_header: &'static str,
        bare: String,
        nonce: String,
    }

    impl Client {
        fn new(gs2_header: &'static str, user: &str, nonce: &str) -> Client {
            Client { gs2_header, bare: format!("n={user},r={nonce}"), nonce: nonce.to_owned() }
        }

        fn first(&self) -> Bytes {
            Bytes::from(format!("{}{}", self.gs2_header, self.bare))
        }

        /// The client-final-message for `server_first`, and the server signature to expect.
        fn last(&self, server_first: &str, password: &str) -> (String, String) {
            let mut nonce = None;
            let mut salt = None;
            let mut iterations = None;
            for field in server_first.split(',') {
                match field.split_at(2) {
                    ("r=", value) => nonce = Some(value),
                    ("s=", value) => salt = Some(BASE64.decode(value).unwrap()),
                    ("i=", value) => iterations = Some(value.parse().unwrap()),
                    _ => panic!("unexpected server-first field {field}"),
                }
            }
            let (nonce, salt, iterations) = (nonce.unwrap(), salt.unwrap(), iterations.unwrap());
            assert!(nonce.starts_with(&self.nonce), "the server must extend the client nonce");

            let mut salted = [0u8; 32];
            pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), &salt, iterations, &mut salted);
            let mac = |key: &[u8], data: &[u8]| {
                let mut mac = HmacSha256::new_from_slice(key).unwrap();
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            };
            let client_key = mac(&salted, b"Client Key");
            let stored_key = Sha256::digest(&client_key);
            let without_proof = format!("c={},r={nonce}", BASE64.encode(self.gs2_header));
            let auth_message = format!("{},{server_first},{without_proof}", self.bare);
            let signature = mac(&stored_key, auth_message.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&signature).map(|(k, s)| k ^ s).collect();
            let server_signature = mac(&mac(&salted, b"Server Key"), auth_message.as_bytes());
            (
                format!("{without_proof},p={}", BASE64.encode(proof)),
                format!("v={}", BASE64.encode(server_signature)),
            )
        }
    }

    const REFUSED: AuthStep = AuthStep::Failure(ReasonCode::BAD_USER_NAME_OR_PASSWORD);

    fn client_id() -> ClientId {
        ClientId(ByteString::from_static("test-client"))
    }

    fn alice() -> ScramSha256 {
        ScramSha256::new(Users::with("alice", "correct horse", b"0123456789abcdef", 4096))
    }

    fn start(authenticator: &ScramSha256) -> Box<dyn AuthExchange> {
        authenticator.start(&client_id(), None)
    }

    fn step(exchange: &mut dyn AuthExchange, message: &str) -> AuthStep {
        exchange.step(Some(&Bytes::copy_from_slice(message.as_bytes())))
    }

    fn continued(step: AuthStep) -> String {
        match step {
            AuthStep::Continue(Some(data)) => String::from_utf8(data.to_vec()).unwrap(),
            other => panic!("expected Continue with data, got {other:?}"),
        }
    }

    fn succeeded(step: AuthStep) -> String {
        match step {
            AuthStep::Success(Some(data)) => String::from_utf8(data.to_vec()).unwrap(),
            other => panic!("expected Success with data, got {other:?}"),
        }
    }

    /// Runs a whole exchange as `user` with `password`; returns the final step.
    fn login(exchange: &mut dyn AuthExchange, client: &Client, password: &str) -> (AuthStep, String) {
        let server_first = continued(exchange.step(Some(&client.first())));
        let (client_final, expected_signature) = client.last(&server_first, password);
        (step(exchange, &client_final), expected_signature)
    }

    #[test]
    fn rfc7677_example() {
        let salt = BASE64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let authenticator = ScramSha256::new(Users::with("user", "pencil", &salt, 4096));
        let mut exchange =
            authenticator.exchange(&client_id(), None, Some("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".to_owned()));

        let server_first = continued(step(&mut exchange, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO"));
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let client_final = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                            p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let expected_server_final = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";
        // The test client must agree with the RFC too, or the other tests prove nothing.
        let client = Client::new("n,,", "user", "rOprNGfwEbeRWgbNEkqO");
        assert_eq!(
            client.last(&server_first, "pencil"),
            (client_final.to_owned(), expected_server_final.to_owned())
        );

        assert_eq!(succeeded(step(&mut exchange, client_final)), expected_server_final);
        assert_eq!(exchange.authenticated_user().as_deref(), Some("user"));
    }

    #[test]
    fn full_exchange_with_random_server_nonce() {
        let authenticator = alice();
        assert_eq!(authenticator.method(), "SCRAM-SHA-256");
        let mut exchange = start(&authenticator);
        let client = Client::new("n,,", "alice", "fyko+d2lbbFgONRv9qkxdawL");
        let server_first = continued(exchange.step(Some(&client.first())));
        let server_nonce = server_first.split(',').next().unwrap().strip_prefix("r=fyko+d2lbbFgONRv9qkxdawL");
        let server_nonce = server_nonce.unwrap();
        assert!(server_nonce.len() >= 24 && is_valid_nonce(server_nonce), "{server_nonce}");
        assert_eq!(exchange.authenticated_user(), None);

        let (client_final, expected_signature) = client.last(&server_first, "correct horse");
        assert_eq!(succeeded(step(exchange.as_mut(), &client_final)), expected_signature);
        assert_eq!(exchange.authenticated_user().as_deref(), Some("alice"));
    }

    #[test]
    fn y_flag_without_channel_binding_is_accepted() {
        let authenticator = alice();
        let mut exchange = start(&authenticator);
        let (last, expected) = login(exchange.as_mut(), &Client::new("y,,", "alice", "abc"), "correct horse");
        assert_eq!(succeeded(last), expected);
    }

    #[test]
    fn wrong_password_is_refused() {
        let authenticator = alice();
        let mut exchange = start(&authenticator);
        let (last, _) = login(exchange.as_mut(), &Client::new("n,,", "alice", "abc"), "wrong horse");
        assert_eq!(last, REFUSED);
        assert_eq!(exchange.authenticated_user(), None);
    }

    #[test]
    fn unknown_user_gets_a_plausible_challenge_then_is_refused() {
        let authenticator = alice();
        let challenge =
            |user: &str| continued(step(start(&authenticator).as_mut(), &format!("n,,n={user},r=abc")));
        let salt_and_iterations = |server_first: &str| server_first.split_once(",s=").unwrap().1.to_owned();

        let mallory = challenge("mallory");
        let salt = salt_and_iterations(&mallory);
        let (encoded_salt, iterations) = salt.split_once(",i=").unwrap();
        assert_eq!(BASE64.decode(encoded_salt).unwrap().len(), SALT_LEN);
        assert_eq!(iterations, "4096");
        assert_eq!(salt_and_iterations(&challenge("mallory")), salt, "same user, same salt");
        assert_ne!(salt_and_iterations(&challenge("eve")), salt, "other user, other salt");

        let mut exchange = start(&authenticator);
        let (last, _) = login(exchange.as_mut(), &Client::new("n,,", "mallory", "abc"), "anything");
        assert_eq!(last, REFUSED);
    }

    #[test]
    fn tampered_nonce_is_refused() {
        let authenticator = alice();
        let mut exchange = start(&authenticator);
        let client = Client::new("n,,", "alice", "abc");
        let server_first = continued(exchange.step(Some(&client.first())));
        // A proof computed over a server-first-message carrying another server nonce.
        let tampered = server_first.replacen("r=abc", "r=abcX", 1);
        let (client_final, _) = client.last(&tampered, "correct horse");
        assert_eq!(step(exchange.as_mut(), &client_final), REFUSED);
    }

    #[test]
    fn corrupted_proof_is_refused() {
        let authenticator = alice();
        let mut exchange = start(&authenticator);
        let client = Client::new("n,,", "alice", "abc");
        let server_first = continued(exchange.step(Some(&client.first())));
        let (client_final, _) = client.last(&server_first, "correct horse");
        let mut proof = BASE64.decode(client_final.rsplit_once(",p=").unwrap().1).unwrap();
        proof[0] ^= 1;
        let forged = format!("{},p={}", client_final.rsplit_once(",p=").unwrap().0, BASE64.encode(proof));
        assert_eq!(step(exchange.as_mut(), &forged), REFUSED);
    }

    #[test]
    fn channel_binding_is_refused() {
        let authenticator = alice();
        assert_eq!(step(start(&authenticator).as_mut(), "p=tls-unique,,n=alice,r=abc"), REFUSED);
        assert_eq!(step(start(&authenticator).as_mut(), "p=tls-exporter,,n=alice,r=abc"), REFUSED);
    }

    #[test]
    fn wrong_channel_binding_data_is_refused() {
        let authenticator = alice();
        let mut exchange = start(&authenticator);
        let client = Client::new("n,,", "alice", "abc");
        let server_first = continued(exchange.step(Some(&client.first())));
        let (client_final, _) = client.last(&server_first, "correct horse");
        // `eSws` is base64 of `y,,`, but the client sent `n,,`.
        assert_eq!(step(exchange.as_mut(), &client_final.replacen("c=biws", "c=eSws", 1)), REFUSED);
    }

    #[test]
    fn authzid_and_mandatory_extension_are_refused() {
        let authenticator = alice();
        for first in ["n,a=alice,n=alice,r=abc", "n,a=,n=alice,r=abc", "n,,m=ext,n=alice,r=abc"] {
            assert_eq!(step(start(&authenticator).as_mut(), first), REFUSED, "{first}");
        }
    }

    #[test]
    fn missing_authentication_data_is_refused() {
        let authenticator = alice();
        assert_eq!(start(&authenticator).step(None), REFUSED);

        let mut exchange = start(&authenticator);
        continued(step(exchange.as_mut(), "n,,n=alice,r=abc"));
        assert_eq!(exchange.step(None), REFUSED);
    }

    #[test]
    fn steps_after_the_end_are_refused() {
        let authenticator = alice();
        let mut exchange = start(&authenticator);
        let (last, _) = login(exchange.as_mut(), &Client::new("n,,", "alice", "abc"), "correct horse");
        succeeded(last);
        assert_eq!(step(exchange.as_mut(), "n,,n=alice,r=abc"), REFUSED);
        assert_eq!(exchange.step(None), REFUSED);
        assert_eq!(exchange.authenticated_user(), None, "a refused step ends the authentication");

        let mut failed = start(&authenticator);
        assert_eq!(step(failed.as_mut(), "garbage"), REFUSED);
        assert_eq!(step(failed.as_mut(), "n,,n=alice,r=abc"), REFUSED);
    }

    #[test]
    fn one_authenticator_serves_independent_exchanges() {
        let authenticator = alice();
        let client = Client::new("n,,", "alice", "abc");
        let mut first = start(&authenticator);
        let mut second = start(&authenticator);
        let first_challenge = continued(first.step(Some(&client.first())));
        let second_challenge = continued(second.step(Some(&client.first())));
        assert_ne!(first_challenge, second_challenge, "each exchange has its own server nonce");

        // Answering one exchange's challenge in the other fails; each succeeds on its own.
        let (for_first, first_signature) = client.last(&first_challenge, "correct horse");
        let (for_second, second_signature) = client.last(&second_challenge, "correct horse");
        let mut third = start(&authenticator);
        continued(third.step(Some(&client.first())));
        assert_eq!(step(third.as_mut(), &for_first), REFUSED);
        assert_eq!(succeeded(step(second.as_mut(), &for_second)), second_signature);
        assert_eq!(succeeded(step(first.as_mut(), &for_first)), first_signature);
    }

    #[test]
    fn connect_user_name_must_match_the_scram_user() {
        let authenticator = alice();
        let client = Client::new("n,,", "alice", "abc");
        let mut other = authenticator.start(&client_id(), Some(&ByteString::from_static("bob")));
        assert_eq!(other.step(Some(&client.first())), REFUSED);

        let mut same = authenticator.start(&client_id(), Some(&ByteString::from_static("alice")));
        let (last, expected) = login(same.as_mut(), &client, "correct horse");
        assert_eq!(succeeded(last), expected);
    }

    #[test]
    fn escaped_user_names() {
        assert_eq!(unescape_user("a=2Cb=3Dc").as_deref(), Ok("a,b=c"));
        assert_eq!(unescape_user("plain").as_deref(), Ok("plain"));
        for bad in ["a=41", "a=2c", "a=", "a=2", "", "=00"] {
            assert!(unescape_user(bad).is_err(), "{bad:?}");
        }

        let authenticator = ScramSha256::new(Users::with("a,b=c", "pw", b"salt", 4096));
        let mut exchange = start(&authenticator);
        let (last, expected) = login(exchange.as_mut(), &Client::new("n,,", "a=2Cb=3Dc", "abc"), "pw");
        assert_eq!(succeeded(last), expected);
        assert_eq!(exchange.authenticated_user().as_deref(), Some("a,b=c"));
    }

    #[test]
    fn extensions_are_ignored() {
        let authenticator = alice();
        let mut exchange = start(&authenticator);
        let client = Client::new("n,,", "alice", "abc");
        let server_first = continued(step(exchange.as_mut(), "n,,n=alice,r=abc,x=extra"));
        // The AuthMessage includes the extension, so the test client must sign the same bare message.
        let client = Client { bare: format!("{},x=extra", client.bare), ..client };
        let (client_final, expected) = client.last(&server_first, "correct horse");
        assert_eq!(succeeded(step(exchange.as_mut(), &client_final)), expected);
    }

    #[test]
    fn malformed_messages_are_refused_without_panicking() {
        let authenticator = alice();
        let client = Client::new("n,,", "alice", "abc");
        let first = String::from_utf8(client.first().to_vec()).unwrap();
        let mut probe = start(&authenticator);
        let server_first = continued(step(probe.as_mut(), &first));
        let (client_final, _) = client.last(&server_first, "correct horse");

        // Every truncation short of a one-character nonce.
        let mut firsts: Vec<String> = (0..first.len() - 2).map(|end| first[..end].to_owned()).collect();
        firsts.extend(
            ["n,,n=alice,r=a,b", "n,,n=alice,r=a b", "n,,n=alice", "x,,n=alice,r=a", "n,,r=a,n=alice"]
                .map(String::from),
        );
        firsts.push("n,,n=alice,r=abc,=x".to_owned());
        for message in &firsts {
            assert_eq!(step(start(&authenticator).as_mut(), message), REFUSED, "{message:?}");
        }
        assert_eq!(start(&authenticator).step(Some(&Bytes::from_static(b"n,,n=\xff,r=a"))), REFUSED);

        let mut finals: Vec<String> =
            (0..client_final.len()).map(|end| client_final[..end].to_owned()).collect();
        finals.push(format!("{client_final},x=after-proof"));
        finals.push(client_final.replacen("c=biws", "c=bi!ws", 1));
        for message in &finals {
            let mut exchange = authenticator.exchange(&client_id(), None, None);
            assert_eq!(step(&mut exchange, &first), REFUSED, "no server nonce, no exchange");
            let mut exchange = start(&authenticator);
            continued(step(exchange.as_mut(), &first));
            assert_eq!(step(exchange.as_mut(), message), REFUSED, "{message:?}");
        }
    }

    #[test]
    fn debug_output_hides_keys() {
        let credential = ScramCredential::from_password(b"pw", b"salt".to_vec(), 1);
        let shown = format!("{credential:?} {:?}", alice());
        assert!(shown.contains("<redacted>"), "{shown}");
        for key in [credential.stored_key, credential.server_key] {
            assert!(!shown.contains(&format!("{key:?}")) && !shown.contains(&BASE64.encode(key)), "{shown}");
        }
    }

    #[test]
    fn matches_password() {
        let credential = ScramCredential::from_password(b"pw", b"salt".to_vec(), 2);
        assert!(credential.matches_password(b"pw"));
        assert!(!credential.matches_password(b"pW"));
    }
}
