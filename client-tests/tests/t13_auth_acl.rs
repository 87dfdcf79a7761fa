//! Area 13: authentication and authorisation. Mosquitto-format password files (written by the
//! real `mosquitto_passwd` and by `tern passwd`), anonymous access per listener, SIGHUP reload,
//! Mosquitto-format ACLs, and MQTT 5 enhanced authentication with SCRAM-SHA-256 (§4.12,
//! RFC 5802/7677), driven by a small SCRAM client written here.
//!
//! Raw sockets throughout, so return codes, reason codes and properties are checked on the wire.
//! "Not delivered" is checked with a fence: the same publisher then sends a message the
//! subscriber may read, and everything the subscriber received before that fence is compared.

use std::hash::{BuildHasher, Hasher};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use client_tests::v5::{self, Connect, Props};
use client_tests::*;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Files, external tools, brokers
// ---------------------------------------------------------------------------------------

/// Password of every user of the ACL tests.
const PW: &str = "pw";

/// Logged once per successful SIGHUP reload of the security files (server.rs).
const RELOADED: &str = "reloaded the password file and ACL";
/// Logged when a SIGHUP reload fails and the previous files stay in use.
const RELOAD_FAILED: &str = "reload failed";

/// One test's password file and (optional) ACL file, in a temporary directory.
struct Files {
    _dir: tempfile::TempDir,
    passwd: String,
    acl: String,
    has_acl: bool,
}

impl Files {
    /// A directory whose password file does not exist yet.
    fn new() -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| dir.path().join(name).to_str().expect("UTF-8 temp path").to_string();
        let (passwd, acl) = (path("passwd"), path("acl"));
        Files { _dir: dir, passwd, acl, has_acl: false }
    }

    /// A password file with these (user, password) pairs, written by `tern passwd`.
    fn users(users: &[(&str, &str)]) -> Files {
        let files = Files::new();
        for (user, password) in users {
            tern_passwd(&[&files.passwd, user, password]);
        }
        files
    }

    /// Adds the ACL file (`[auth] acl_file`) with this text.
    fn with_acl(mut self, text: &str) -> Files {
        self.set_acl(text);
        self.has_acl = true;
        self
    }

    fn set_acl(&self, text: &str) {
        std::fs::write(&self.acl, text).expect("write ACL");
    }

    fn set_passwd(&self, text: &str) {
        std::fs::write(&self.passwd, text).expect("write password file");
    }

    fn passwd_text(&self) -> String {
        std::fs::read_to_string(&self.passwd).expect("read password file")
    }

    /// The `[auth]` table naming these files (the password file only if it was created).
    fn auth_toml(&self) -> String {
        let mut toml = String::from("[auth]\n");
        if Path::new(&self.passwd).exists() {
            toml += &format!("password_file = {:?}\n", self.passwd);
        }
        if self.has_acl {
            toml += &format!("acl_file = {:?}\n", self.acl);
        }
        toml
    }

    /// Tern on the harness's loopback listener (anonymous clients allowed) with these files.
    fn broker(&self) -> Broker {
        Broker::launch(Launch::config(&self.auth_toml()))
    }

    /// Tern with these `[[listener]]` tables instead of the harness's listener.
    fn broker_with_listeners(&self, listeners: &str) -> Broker {
        Broker::launch(Launch::config(&format!("{listeners}\n{}", self.auth_toml())).args(&[]))
    }
}

/// Runs `program` to completion (at most 20 s), feeding it `stdin`; asserts it succeeded.
fn run_tool(program: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    if let Some(text) = stdin {
        // Dropped at the end of the statement: the tool sees end of file.
        child.stdin.take().expect("piped stdin").write_all(text.as_bytes()).expect("write stdin");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("{} {args:?} still running after 20 s", program.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().expect("tool output");
    assert!(
        out.status.success(),
        "{} {args:?} failed ({}): {}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `tern passwd ARGS...`
fn tern_passwd(args: &[&str]) {
    run_tool(&tern_bin(), &[&["passwd"], args].concat(), None);
}

/// `tern passwd ARGS...` with the password on standard input, as scripts pipe it in.
fn tern_passwd_stdin(args: &[&str], input: &str) {
    run_tool(&tern_bin(), &[&["passwd"], args].concat(), Some(input));
}

/// The real `mosquitto_passwd` (Debian package `mosquitto`).
fn mosquitto_passwd(args: &[&str]) {
    run_tool(Path::new("/usr/bin/mosquitto_passwd"), args, None);
}

/// SIGHUP, then wait until the broker logs `outcome` once more than before.
async fn sighup_expect(b: &Broker, outcome: &str) {
    let count = || b.logs().matches(outcome).count();
    let before = count();
    b.sighup();
    let deadline = tokio::time::Instant::now() + WAIT;
    while count() <= before {
        assert!(tokio::time::Instant::now() < deadline, "no {outcome:?} after SIGHUP; log:\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGHUP and wait for the successful reload of the password file and ACL.
async fn reload(b: &Broker) {
    sighup_expect(b, RELOADED).await;
}

/// The client-side address of a listener: a wildcard bind is reached over loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

// ---------------------------------------------------------------------------------------
// CONNECT outcomes
// ---------------------------------------------------------------------------------------

/// What a CONNECT presents.
#[derive(Clone, Copy, Debug)]
enum Who<'a> {
    /// No user name.
    Anonymous,
    /// A user name without password.
    Name(&'a str),
    /// User name and password.
    Login(&'a str, &'a str),
}

impl Who<'_> {
    fn v3(self, id: &str) -> pkt::Connect {
        let c = pkt::Connect::new(id);
        match self {
            Who::Anonymous => c,
            Who::Name(user) => c.credentials(user, None),
            Who::Login(user, password) => c.credentials(user, Some(password.as_bytes())),
        }
    }

    fn v5(self, id: &str) -> Connect {
        let mut c = Connect::new(id);
        match self {
            Who::Anonymous => {}
            Who::Name(user) => c.username = Some(user.into()),
            Who::Login(user, password) => {
                c.username = Some(user.into());
                c.password = Some(password.as_bytes().to_vec());
            }
        }
        c
    }
}

/// A 3.1.1 CONNECT: the connection and the CONNACK return code. After a refusal the broker
/// must close the connection [MQTT-3.2.2-5], sending nothing more.
async fn connect_v3(addr: SocketAddr, c: &pkt::Connect) -> (Raw, u8) {
    let mut r = Raw::connect(addr).await;
    r.send(&c.encode()).await;
    let ack = r.recv().await;
    assert_eq!(ack.header, 0x20, "expected CONNACK, got {ack:?}");
    assert_eq!(ack.body.len(), 2, "3.1.1 CONNACK remaining length is 2: {ack:?}");
    let code = ack.body[1];
    if code != 0 {
        assert_eq!(ack.body[0], 0, "session present 0 with a refusal [MQTT-3.2.2-4]: {ack:?}");
        let after = r.expect_closed_after(WAIT).await;
        assert!(after.is_empty(), "packets after a refusing CONNACK: {after:?}");
    }
    (r, code)
}

/// An MQTT 5 CONNECT: the connection and the CONNACK. After a reason code of 0x80 or more the
/// broker must close the connection [MQTT-3.2.2-7], sending nothing more.
async fn connect_v5(addr: SocketAddr, c: &Connect) -> (Raw, v5::Connack) {
    let (mut r, ack) = Raw::connect5(addr, c).await;
    if ack.reason >= 0x80 {
        assert!(!ack.session_present, "session present 0 with a refusal [MQTT-3.2.2-6]: {ack:?}");
        let after = r.expect_closed_after(WAIT).await;
        assert!(after.is_empty(), "packets after a refusing CONNACK: {after:?}");
    }
    (r, ack)
}

/// Connects as `who` once with 3.1.1 and once with MQTT 5; asserts the 3.1.1 return code and
/// the MQTT 5 reason code, and disconnects the clients that were accepted.
async fn expect_connack(addr: SocketAddr, who: Who<'_>, v3: u8, v5: u8) {
    let (r, code) = connect_v3(addr, &who.v3(&unique("v3"))).await;
    assert_eq!(code, v3, "3.1.1 CONNACK return code for {who:?} on {addr}");
    if code == 0 {
        r.disconnect().await;
    }
    let (r, ack) = connect_v5(addr, &who.v5(&unique("v5"))).await;
    assert_eq!(ack.reason, v5, "MQTT 5 CONNACK reason code for {who:?} on {addr}: {ack:?}");
    if ack.reason == 0 {
        r.disconnect5().await;
    }
}

/// A connected 3.1.1 client logged in as `user` (password [`PW`]).
async fn v3_as(addr: SocketAddr, id: &str, user: &str) -> Raw {
    Raw::handshake(addr, &Who::Login(user, PW).v3(id)).await.0
}

/// A connected MQTT 5 client logged in as `user` (password [`PW`]).
async fn v5_as(addr: SocketAddr, id: &str, user: &str) -> Raw {
    Raw::handshake5(addr, &Who::Login(user, PW).v5(id)).await.0
}

// ---------------------------------------------------------------------------------------
// Deliveries
// ---------------------------------------------------------------------------------------

/// (topic, retain) of every PUBLISH `sub` receives before one on `fence`. Subscriptions are
/// QoS 0, so nothing needs acknowledging; `v5` selects the decoder.
async fn deliveries_before(sub: &mut Raw, v5: bool, fence: &str) -> Vec<(String, bool)> {
    let mut got = Vec::new();
    loop {
        let p = sub.recv_skip_ping().await;
        let (topic, retain) = if v5 {
            let m = p.publish5();
            (m.topic, m.retain)
        } else {
            let m = p.publish();
            (m.topic, m.retain)
        };
        if topic == fence {
            return got;
        }
        got.push((topic, retain));
    }
}

/// The topics of [`deliveries_before`].
async fn topics_before(sub: &mut Raw, v5: bool, fence: &str) -> Vec<String> {
    deliveries_before(sub, v5, fence).await.into_iter().map(|(t, _)| t).collect()
}

/// `publisher` (3.1.1) sends one QoS 0 message to each topic, then `fence`.
async fn publish_then_fence(publisher: &mut Raw, topics: &[&str], fence: &str) {
    for topic in topics.iter().chain([&fence]) {
        publisher.publish_flow(topic, 0, false, 0, topic.as_bytes()).await;
    }
}

/// Sends an MQTT 5 PUBLISH (QoS 1 or 2) and returns the PUBACK/PUBREC reason code, without
/// continuing a QoS 2 flow. Only for connections that receive nothing else meanwhile.
async fn publish5_ack(r: &mut Raw, topic: &str, qos: u8, pid: u16) -> u8 {
    r.send(&v5::publish(topic, qos, false, pid, &Props::new(), b"x")).await;
    let a = r.recv_skip_ping().await.ack5();
    assert_eq!((a.kind, a.pid), (if qos == 1 { 4 } else { 5 }, pid), "PUBACK/PUBREC for {topic}: {a:?}");
    a.reason
}

// ---------------------------------------------------------------------------------------
// Password files
// ---------------------------------------------------------------------------------------

/// A password file written by the real mosquitto_passwd: alice/secret and bob/pw2.
fn mosquitto_users() -> Files {
    let files = Files::new();
    mosquitto_passwd(&["-c", "-b", &files.passwd, "alice", "secret"]);
    mosquitto_passwd(&["-b", &files.passwd, "bob", "pw2"]);
    files
}

// mosquitto.conf(5) password_file: the file mosquitto_passwd writes ($7$ PBKDF2-SHA512 hashes)
// is read unchanged; its users connect with their passwords (CONNACK 0x00).
#[tokio::test]
async fn mosquitto_passwd_file_users_connect() {
    let files = mosquitto_users();
    assert!(files.passwd_text().contains("alice:$7$"), "mosquitto_passwd wrote {}", files.passwd_text());
    let b = files.broker();
    expect_connack(b.addr(), Who::Login("alice", "secret"), 0, 0).await;
    expect_connack(b.addr(), Who::Login("bob", "pw2"), 0, 0).await;
}

// A wrong password, another user's password or an unknown user: MQTT 5 CONNACK 0x86 Bad User
// Name or Password (§3.2.2.2); 3.1.1 0x05 Not authorized, as Mosquitto answers (its 0x04 means
// malformed fields), then the connection is closed [MQTT-3.2.2-5].
#[tokio::test]
async fn wrong_password_or_unknown_user_is_refused() {
    let b = mosquitto_users().broker();
    for who in [Who::Login("alice", "wrong"), Who::Login("bob", "secret"), Who::Login("mallory", "secret")] {
        expect_connack(b.addr(), who, 0x05, 0x86).await;
    }
    assert!(b.wait_log("authentication failed for user mallory", WAIT).await, "log:\n{}", b.logs());
    // The refusals did not lock anybody out.
    expect_connack(b.addr(), Who::Login("alice", "secret"), 0, 0).await;
}

// Mosquitto (unpwd check): with a password file, a client giving a user name must give that
// user's password, even on a listener that admits anonymous clients; anonymous clients still
// connect there.
#[tokio::test]
async fn named_user_without_password_is_refused_where_anonymous_is_allowed() {
    let b = mosquitto_users().broker();
    expect_connack(b.addr(), Who::Anonymous, 0, 0).await;
    expect_connack(b.addr(), Who::Name("alice"), 0x05, 0x86).await;
    expect_connack(b.addr(), Who::Name("nobody"), 0x05, 0x86).await;
}

// ---------------------------------------------------------------------------------------
// Anonymous clients
// ---------------------------------------------------------------------------------------

// mosquitto.conf(5) allow_anonymous false: a client without user name is refused, 3.1.1
// CONNACK 0x05, MQTT 5 0x87 Not authorized (§3.2.2.2); users in the password file connect.
#[tokio::test]
async fn allow_anonymous_false_refuses_clients_without_user_name() {
    let files = Files::users(&[("alice", "secret")]);
    let b = files.broker_with_listeners("[[listener]]\nbind = \"127.0.0.1:0\"\nallow_anonymous = false\n");
    expect_connack(b.addr(), Who::Anonymous, 0x05, 0x87).await;
    expect_connack(b.addr(), Who::Login("alice", "secret"), 0, 0).await;
}

// config/tern.toml (like Mosquitto 2, which admits anonymous clients only on its default local
// listener): unset allow_anonymous refuses them on a listener bound beyond loopback and admits
// them on a loopback one, in the same broker.
#[tokio::test]
async fn anonymous_default_follows_the_listener_bind_address() {
    let files = Files::users(&[("alice", "secret")]);
    let b = files
        .broker_with_listeners("[[listener]]\nbind = \"0.0.0.0:0\"\n[[listener]]\nbind = \"127.0.0.1:0\"\n");
    let addrs = b.listener_addrs();
    assert_eq!(addrs.len(), 2, "two listeners: {addrs:?}");
    assert!(addrs[0].ip().is_unspecified() && addrs[1].ip().is_loopback(), "{addrs:?}");
    let (exposed, local) = (reachable(addrs[0]), addrs[1]);
    expect_connack(exposed, Who::Anonymous, 0x05, 0x87).await;
    expect_connack(exposed, Who::Login("alice", "secret"), 0, 0).await;
    expect_connack(local, Who::Anonymous, 0, 0).await;
}

// auth/mod.rs (`Security::authenticate`): a user name counts only when something proved it;
// without a password file nothing does, so a client merely claiming "admin" is anonymous and
// gets the ACL's anonymous rules, not admin's.
#[tokio::test]
async fn unproven_user_name_gets_the_anonymous_acl_rules() {
    let files = Files::new().with_acl("topic read public/#\nuser admin\ntopic readwrite #\n");
    let b = files.broker();
    let filters = [("public/#", 0), ("secret/#", 0)];
    let (mut r3, code) = connect_v3(b.addr(), &Who::Name("admin").v3("claims-admin-3")).await;
    assert_eq!(code, 0, "anonymous clients are allowed on loopback");
    assert_eq!(r3.subscribe(1, &filters).await, vec![0, 0x80]);
    let (mut r5, ack) = connect_v5(b.addr(), &Who::Login("admin", "guess").v5("claims-admin-5")).await;
    assert_eq!(ack.reason, 0, "{ack:?}");
    assert_eq!(r5.subscribe5(1, &Props::new(), &filters).await, vec![0, 0x87]);
    r3.disconnect().await;
    r5.disconnect5().await;
}

// ---------------------------------------------------------------------------------------
// `tern passwd` and SIGHUP reload
// ---------------------------------------------------------------------------------------

// config/tern.toml [auth]: the password file is read at start and on SIGHUP, without dropping
// connections (Mosquitto reloads it on SIGHUP too). `tern passwd FILE USER PW` changes a
// password and `-D` deletes the user; each applies at the next reload only.
#[tokio::test]
async fn tern_passwd_change_and_delete_apply_on_sighup_without_dropping_clients() {
    let files = Files::users(&[("carol", "pw"), ("bob", "bobpw")]);
    let b = files.broker();
    let addr = b.addr();
    expect_connack(addr, Who::Login("carol", "pw"), 0, 0).await;
    let mut watcher = Raw::handshake(addr, &Who::Login("bob", "bobpw").v3("watcher")).await.0;
    assert_eq!(watcher.subscribe(1, &[("news/#", 0)]).await, vec![0]);

    tern_passwd(&[&files.passwd, "carol", "newpw"]);
    // Not applied before the reload.
    expect_connack(addr, Who::Login("carol", "pw"), 0, 0).await;
    expect_connack(addr, Who::Login("carol", "newpw"), 0x05, 0x86).await;
    reload(&b).await;
    expect_connack(addr, Who::Login("carol", "newpw"), 0, 0).await;
    expect_connack(addr, Who::Login("carol", "pw"), 0x05, 0x86).await;

    // The client connected before the reload is still served.
    let mut carol = Raw::handshake(addr, &Who::Login("carol", "newpw").v3("carol")).await.0;
    carol.publish_flow("news/1", 1, false, 1, b"after change").await;
    assert_eq!(watcher.recv_publish().await.payload, b"after change");

    tern_passwd(&["-D", &files.passwd, "carol"]);
    let text = files.passwd_text();
    assert!(!text.contains("carol:") && text.contains("bob:$7$"), "after -D carol:\n{text}");
    expect_connack(addr, Who::Login("carol", "newpw"), 0, 0).await;
    reload(&b).await;
    expect_connack(addr, Who::Login("carol", "newpw"), 0x05, 0x86).await;
    expect_connack(addr, Who::Login("bob", "bobpw"), 0, 0).await;

    carol.publish_flow("news/2", 1, false, 2, b"after delete").await;
    assert_eq!(watcher.recv_publish().await.payload, b"after delete");
    carol.disconnect().await;
    watcher.disconnect().await;
}

// `tern passwd FILE USER` without a password reads one line from standard input (like
// `mosquitto_passwd`'s prompt, scriptable); a user added after start connects only once SIGHUP
// reloaded the file.
#[tokio::test]
async fn tern_passwd_reads_stdin_and_a_new_user_needs_sighup() {
    let files = Files::users(&[("bob", "bobpw")]);
    let b = files.broker();
    tern_passwd_stdin(&[&files.passwd, "dave"], "davepw\n");
    assert!(files.passwd_text().contains("dave:$7$"), "{}", files.passwd_text());
    expect_connack(b.addr(), Who::Login("dave", "davepw"), 0x05, 0x86).await;
    reload(&b).await;
    expect_connack(b.addr(), Who::Login("dave", "davepw"), 0, 0).await;
    // The trailing newline is not part of the password.
    expect_connack(b.addr(), Who::Login("dave", "davepw\n"), 0x05, 0x86).await;
    expect_connack(b.addr(), Who::Login("bob", "bobpw"), 0, 0).await;
}

// `tern passwd --scram` writes an RFC 5803 verifier line
// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64; 32-byte keys); the user
// can also log in with a plain CONNECT password.
#[tokio::test]
async fn tern_passwd_scram_writes_a_verifier_that_also_serves_plain_passwords() {
    let files = Files::new();
    tern_passwd(&["--scram", &files.passwd, "erin", "erinpw"]);
    let text = files.passwd_text();
    let entry = text.trim_end().strip_prefix("erin:SCRAM-SHA-256$").unwrap_or_else(|| panic!("{text}"));
    let (params, keys) = entry.split_once('$').unwrap_or_else(|| panic!("{text}"));
    let (iterations, salt) = params.split_once(':').unwrap_or_else(|| panic!("{text}"));
    assert!(iterations.parse::<u32>().is_ok_and(|i| i >= 4096), "RFC 7677 minimum 4096: {text}");
    assert!(BASE64.decode(salt).is_ok_and(|s| !s.is_empty()), "salt: {text}");
    for key in keys.split(':') {
        assert_eq!(BASE64.decode(key).map(|k| k.len()).ok(), Some(32), "key {key:?} in {text}");
    }
    let b = files.broker();
    expect_connack(b.addr(), Who::Login("erin", "erinpw"), 0, 0).await;
    expect_connack(b.addr(), Who::Login("erin", "wrong"), 0x05, 0x86).await;
}

// config/tern.toml [auth]: "a file that fails to parse on reload is reported and the old one
// kept" (Mosquitto likewise keeps running on a bad reload); connected clients are unaffected.
#[tokio::test]
async fn unparsable_password_file_on_reload_is_reported_and_the_old_one_kept() {
    let files = Files::users(&[("alice", "secret")]);
    let b = files.broker();
    let mut alice = Raw::handshake(b.addr(), &Who::Login("alice", "secret").v3("alice")).await.0;
    assert_eq!(alice.subscribe(1, &[("t", 0)]).await, vec![0]);

    // Line 2 lacks the ':' between user name and hash.
    files.set_passwd(&format!("{}no separator here\n", files.passwd_text()));
    sighup_expect(&b, RELOAD_FAILED).await;
    let failure = b.logs().lines().find(|l| l.contains(RELOAD_FAILED)).unwrap_or_default().to_string();
    assert!(failure.contains(&format!("{}:2", files.passwd)), "names file and line: {failure}");

    expect_connack(b.addr(), Who::Login("alice", "secret"), 0, 0).await;
    alice.publish_flow("t", 0, false, 0, b"still here").await;
    assert_eq!(alice.recv_publish().await.payload, b"still here");
    alice.disconnect().await;
}

// ---------------------------------------------------------------------------------------
// ACL
// ---------------------------------------------------------------------------------------

/// The ACL of these tests, in Mosquitto's format (mosquitto.conf(5) acl_file). `reader` may read
/// everything except `reader_denied`; `writer_extra` adds lines to `writer`'s section. `carol`
/// has no section: only the patterns apply to her.
fn acl_text(reader_denied: &str, writer_extra: &str) -> String {
    format!(
        "# Patterns apply to every client, wherever they appear.\n\
         pattern readwrite users/%u/#\n\
         pattern read clients/%c/#\n\
         \n\
         user admin\n\
         topic readwrite #\n\
         \n\
         user writer\n\
         topic readwrite allowed/#\n\
         topic write outbox/#\n\
         {writer_extra}\n\
         \n\
         user reader\n\
         topic read #\n\
         topic deny {reader_denied}\n"
    )
}

/// Users admin, writer, reader and carol (password [`PW`]) and the ACL of [`acl_text`].
fn acl_files() -> Files {
    let users = ["admin", "writer", "reader", "carol"].map(|u| (u, PW));
    Files::users(&users).with_acl(&acl_text("secret/#", ""))
}

// MQTT 5 §3.4.2.1 / §3.5.2.1: a PUBLISH the server does not authorise is answered with PUBACK or
// PUBREC 0x87 Not authorized (as Mosquitto 2 does) and not delivered; after a PUBREC error the
// packet identifier is free again [MQTT-4.3.3-4] (no PUBREL follows).
#[tokio::test]
async fn v5_denied_publish_gets_0x87_and_is_not_delivered() {
    let b = acl_files().broker();
    let mut admin = v3_as(b.addr(), "admin", "admin").await;
    assert_eq!(admin.subscribe(1, &[("#", 0)]).await, vec![0]);
    let mut writer = v5_as(b.addr(), "writer", "writer").await;

    assert_eq!(publish5_ack(&mut writer, "allowed/a", 1, 1).await, 0x00);
    assert_eq!(publish5_ack(&mut writer, "news/a", 1, 2).await, 0x87, "QoS 1 PUBACK");
    assert_eq!(publish5_ack(&mut writer, "news/b", 2, 3).await, 0x87, "QoS 2 PUBREC");
    writer.send(&v5::publish("news/c", 0, false, 0, &Props::new(), b"x")).await;
    // The refused QoS 2 id is reusable: a new message, routed and completed.
    assert_eq!(writer.publish5_flow("allowed/b", 2, false, 3, &Props::new(), b"x").await, 0x00);
    assert_eq!(writer.publish5_flow("allowed/fence", 1, false, 4, &Props::new(), b"x").await, 0x00);

    assert_eq!(topics_before(&mut admin, false, "allowed/fence").await, ["allowed/a", "allowed/b"]);
    writer.disconnect5().await;
    admin.disconnect().await;
}

// 3.1.1 has no negative PUBACK: Mosquitto completes the QoS 1/2 flow of a denied PUBLISH as
// usual and drops the message, so a subscriber allowed to read the topic never gets it.
#[tokio::test]
async fn v311_denied_publish_completes_its_flow_but_is_not_delivered() {
    let b = acl_files().broker();
    let mut admin = v3_as(b.addr(), "admin", "admin").await;
    assert_eq!(admin.subscribe(1, &[("#", 0)]).await, vec![0]);
    let mut writer = v3_as(b.addr(), "writer", "writer").await;
    // publish_flow asserts the plain PUBACK, and PUBREC/PUBREL/PUBCOMP for QoS 2.
    writer.publish_flow("news/a", 0, false, 0, b"x").await;
    writer.publish_flow("news/b", 1, false, 1, b"x").await;
    writer.publish_flow("news/c", 2, false, 2, b"x").await;
    writer.publish_flow("outbox/d", 1, false, 3, b"x").await;
    writer.publish_flow("allowed/fence", 1, false, 4, b"x").await;
    assert_eq!(topics_before(&mut admin, false, "allowed/fence").await, ["outbox/d"]);
    writer.disconnect().await;
    admin.disconnect().await;
}

// A SUBSCRIBE the ACL does not grant read access to: 3.1.1 SUBACK 0x80 Failure (§3.9.3), MQTT 5
// 0x87 Not authorized (§3.9.3), per filter. A `write` rule gives no right to subscribe.
#[tokio::test]
async fn denied_subscriptions_get_0x80_and_0x87() {
    let b = acl_files().broker();
    let mut w3 = v3_as(b.addr(), "w3", "writer").await;
    let filters = [("allowed/#", 1), ("outbox/#", 1), ("news/x", 0), ("#", 0)];
    assert_eq!(w3.subscribe(1, &filters).await, vec![1, 0x80, 0x80, 0x80]);
    let mut w5 = v5_as(b.addr(), "w5", "writer").await;
    assert_eq!(w5.subscribe5(1, &Props::new(), &filters).await, vec![1, 0x87, 0x87, 0x87]);
    w3.disconnect().await;
    w5.disconnect5().await;
}

// acl.rs (after Mosquitto's dynamic-security sub_acl_check): a deny rule refuses a subscription
// it covers (`deny secret/#` against `secret/#` or `secret/x`), while a subscription it only
// overlaps (`#`) is granted and the denied topics are withheld message by message.
#[tokio::test]
async fn deny_rule_refuses_covered_subscriptions_and_filters_overlapping_ones() {
    let b = acl_files().broker();
    let mut reader = v5_as(b.addr(), "reader", "reader").await;
    let filters = [("secret/#", 0), ("secret/x", 0), ("#", 0)];
    assert_eq!(reader.subscribe5(1, &Props::new(), &filters).await, vec![0x87, 0x87, 0x00]);
    let mut admin = v3_as(b.addr(), "admin", "admin").await;
    publish_then_fence(&mut admin, &["secret/x", "news/x", "secret/y/z", "secret"], "news/fence").await;
    assert_eq!(topics_before(&mut reader, true, "news/fence").await, ["news/x"]);
    reader.disconnect5().await;
    admin.disconnect().await;
}

// Mosquitto checks read access for retained messages too: on SUBSCRIBE only the retained
// messages the client may read are sent (with RETAIN set, [MQTT-3.3.1-8]).
#[tokio::test]
async fn retained_messages_the_client_may_not_read_are_not_sent() {
    let b = acl_files().broker();
    let mut admin = v3_as(b.addr(), "admin", "admin").await;
    admin.publish_flow("secret/r", 1, true, 1, b"hidden").await;
    admin.publish_flow("news/r", 1, true, 2, b"shown").await;
    let mut reader = v3_as(b.addr(), "reader", "reader").await;
    assert_eq!(reader.subscribe(1, &[("#", 0)]).await, vec![0]);
    admin.publish_flow("news/fence", 0, false, 0, b"").await;
    let got = deliveries_before(&mut reader, false, "news/fence").await;
    assert_eq!(got, [("news/r".to_string(), true)]);
    reader.disconnect().await;
    admin.disconnect().await;
}

// mosquitto.conf(5): `pattern` rules apply to every client, %u standing for its user name and
// %c for its client id (as a whole topic level). carol has no section of her own.
#[tokio::test]
async fn patterns_substitute_user_name_and_client_id() {
    let b = acl_files().broker();
    let mut carol = v5_as(b.addr(), "dev1", "carol").await;
    // Publish first (nothing subscribed): 0x10 No matching subscribers is still a success.
    assert_eq!(publish5_ack(&mut carol, "users/carol/t", 1, 1).await, 0x10);
    assert_eq!(publish5_ack(&mut carol, "users/bob/t", 1, 2).await, 0x87);
    assert_eq!(publish5_ack(&mut carol, "clients/dev1/t", 1, 3).await, 0x87, "read-only pattern");
    let filters = [
        ("users/carol/#", 0),
        ("users/bob/#", 0),
        ("users/+/t", 0),
        ("clients/dev1/#", 0),
        ("clients/dev2/#", 0),
        ("news/#", 0),
    ];
    assert_eq!(carol.subscribe5(1, &Props::new(), &filters).await, vec![0, 0x87, 0x87, 0, 0x87, 0x87]);
    let mut admin = v3_as(b.addr(), "admin", "admin").await;
    let topics = ["users/carol/in", "users/bob/in", "clients/dev1/cmd", "clients/dev2/cmd"];
    publish_then_fence(&mut admin, &topics, "clients/dev1/fence").await;
    let got = topics_before(&mut carol, true, "clients/dev1/fence").await;
    assert_eq!(got, ["users/carol/in", "clients/dev1/cmd"]);
    carol.disconnect5().await;
    admin.disconnect().await;
}

// Mosquitto checks the will topic for write access at CONNECT and refuses the connection when it
// is denied: 3.1.1 CONNACK 0x05, MQTT 5 0x87 Not authorized.
#[tokio::test]
async fn will_on_a_topic_the_user_may_not_publish_refuses_the_connect() {
    let b = acl_files().broker();
    let login = Who::Login("writer", PW);
    for (topic, v3_code, v5_code) in
        [("news/will", 0x05, 0x87), ("allowed/will", 0, 0), ("outbox/will", 0, 0)]
    {
        let (r, code) = connect_v3(b.addr(), &login.v3("w3").will(topic, b"bye", 1, false)).await;
        assert_eq!(code, v3_code, "3.1.1 will on {topic}");
        if code == 0 {
            r.disconnect().await;
        }
        let (r, ack) =
            connect_v5(b.addr(), &login.v5("w5").will(topic, b"bye", 1, false, Props::new())).await;
        assert_eq!(ack.reason, v5_code, "MQTT 5 will on {topic}: {ack:?}");
        if ack.reason == 0 {
            r.disconnect5().await;
        }
    }
}

// config/tern.toml [auth] (and Mosquitto): SIGHUP reloads the ACL without dropping connections,
// and the new rules apply at once to the clients already connected: publishing, subscribing and
// the per-message read check of an existing subscription.
#[tokio::test]
async fn acl_reload_changes_permissions_of_connected_clients() {
    let files = acl_files();
    let b = files.broker();
    let mut admin = v3_as(b.addr(), "admin", "admin").await;
    let mut reader = v3_as(b.addr(), "reader", "reader").await;
    assert_eq!(reader.subscribe(1, &[("#", 0), ("secret/#", 0)]).await, vec![0, 0x80]);
    let mut writer = v5_as(b.addr(), "writer", "writer").await;
    assert_eq!(publish5_ack(&mut writer, "news/w", 1, 1).await, 0x87);
    publish_then_fence(&mut admin, &["secret/1", "news/1"], "fence/1").await;
    assert_eq!(topics_before(&mut reader, false, "fence/1").await, ["news/1"]);

    files.set_acl(&acl_text("news/#", "topic write news/#"));
    reload(&b).await;

    let reason = publish5_ack(&mut writer, "news/w", 1, 2).await;
    assert!(reason < 0x80, "writer may publish to news/# after the reload: reason {reason:#04x}");
    publish_then_fence(&mut admin, &["secret/2", "news/2"], "fence/2").await;
    assert_eq!(topics_before(&mut reader, false, "fence/2").await, ["secret/2"]);
    assert_eq!(reader.subscribe(2, &[("secret/#", 0), ("news/#", 0)]).await, vec![0, 0x80]);
    writer.disconnect5().await;
    reader.disconnect().await;
    admin.disconnect().await;
}

// As for the password file: an ACL that fails to parse on reload is reported (naming the file
// and line) and the previous rules stay in force.
#[tokio::test]
async fn unparsable_acl_on_reload_keeps_the_previous_rules() {
    let files = acl_files();
    let b = files.broker();
    let mut writer = v5_as(b.addr(), "writer", "writer").await;
    assert_eq!(publish5_ack(&mut writer, "news/w", 1, 1).await, 0x87);
    files.set_acl("user writer\ntopic readwrite #\nbogus directive\n");
    sighup_expect(&b, RELOAD_FAILED).await;
    let failure = b.logs().lines().find(|l| l.contains(RELOAD_FAILED)).unwrap_or_default().to_string();
    assert!(failure.contains(&format!("{}:3", files.acl)), "names file and line: {failure}");
    assert_eq!(publish5_ack(&mut writer, "news/w", 1, 2).await, 0x87, "old ACL still in force");
    assert_eq!(publish5_ack(&mut writer, "allowed/w", 1, 3).await, 0x10);
    writer.disconnect5().await;
}

// ---------------------------------------------------------------------------------------
// SCRAM-SHA-256 enhanced authentication
// ---------------------------------------------------------------------------------------

const SCRAM: &str = "SCRAM-SHA-256";
/// AUTH reason codes (MQTT 5 §3.15.2.1).
const AUTH_SUCCESS: u8 = 0x00;
const CONTINUE_AUTHENTICATION: u8 = 0x18;
const REAUTHENTICATE: u8 = 0x19;

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// A random client nonce: printable ASCII without ',' (RFC 5802 §7 c-nonce).
fn client_nonce() -> String {
    let random = || std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("{:016x}{:016x}", random(), random())
}

/// The client side of one SCRAM-SHA-256 exchange (RFC 5802 §3, RFC 7677), no channel binding.
struct ScramClient {
    password: String,
    nonce: String,
    /// client-first-message-bare: `n=USER,r=NONCE`.
    first_bare: String,
    /// The ServerSignature the server must prove, once the client-final-message is built.
    server_signature: Option<[u8; 32]>,
}

impl ScramClient {
    fn new(user: &str, password: &str) -> ScramClient {
        let nonce = client_nonce();
        let first_bare = format!("n={user},r={nonce}");
        ScramClient { password: password.into(), nonce, first_bare, server_signature: None }
    }

    /// client-first-message with the GS2 header `n,,` (no channel binding, no authzid).
    fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.first_bare).into_bytes()
    }

    /// Answers the server-first-message `r=NONCE,s=SALT,i=ITERATIONS` with the
    /// client-final-message `c=biws,r=NONCE,p=PROOF`.
    fn client_final(&mut self, server_first: &[u8]) -> Vec<u8> {
        let server_first = std::str::from_utf8(server_first).expect("server-first-message is UTF-8");
        let field = |name: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("no {name}= in server-first-message {server_first:?}"))
        };
        let nonce = field("r");
        assert!(
            nonce.starts_with(&self.nonce) && nonce.len() > self.nonce.len(),
            "the server nonce must extend the client's (RFC 5802 §5.1): {server_first:?}"
        );
        let salt = BASE64.decode(field("s")).expect("salt is base64");
        let iterations: u32 = field("i").parse().expect("iteration count");
        assert!(iterations >= 4096, "RFC 7677: at least 4096 iterations: {server_first:?}");

        let mut salted_password = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(self.password.as_bytes(), &salt, iterations, &mut salted_password);
        let client_key = hmac_sha256(&salted_password, b"Client Key");
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        // "biws" is base64("n,,"), the GS2 header repeated.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.first_bare);
        let client_signature = hmac_sha256(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(client_signature).map(|(k, s)| k ^ s).collect();
        let server_key = hmac_sha256(&salted_password, b"Server Key");
        self.server_signature = Some(hmac_sha256(&server_key, auth_message.as_bytes()));
        format!("{without_proof},p={}", BASE64.encode(proof)).into_bytes()
    }

    /// Checks the server-final-message `v=ServerSignature` (RFC 5802 §3: the server proves it
    /// knows the user's ServerKey).
    fn verify_server_final(&self, data: Option<&[u8]>) {
        let expected = format!("v={}", BASE64.encode(self.server_signature.expect("client-final sent")));
        let data = data.map(String::from_utf8_lossy);
        assert_eq!(data.as_deref(), Some(expected.as_str()), "server-final-message");
    }
}

/// Authentication Method SCRAM-SHA-256 and this Authentication Data (§3.1.2.11.9-10).
fn scram_props(data: &[u8]) -> Props {
    Props::new().with_str(v5::AUTH_METHOD, SCRAM).with_bin(v5::AUTH_DATA, data)
}

/// Reads the server's AUTH 0x18 challenge and answers it with the client-final-message
/// [MQTT-4.12.0-2]; returns the packet that follows (CONNACK, AUTH or DISCONNECT).
async fn answer_challenge(r: &mut Raw, scram: &mut ScramClient) -> RawPacket {
    let p = r.recv_skip_ping().await;
    assert_eq!(p.kind(), 15, "expected AUTH 0x18 with the server-first-message, got {p:?}");
    let challenge = p.disconnect5();
    assert_eq!(challenge.reason, CONTINUE_AUTHENTICATION, "{challenge:?}");
    assert_eq!(challenge.props.str(v5::AUTH_METHOD), Some(SCRAM), "same method [MQTT-4.12.0-5]");
    let server_first = challenge.props.bin(v5::AUTH_DATA).expect("server-first-message").to_vec();
    let client_final = scram.client_final(&server_first);
    r.send(&v5::auth(CONTINUE_AUTHENTICATION, &scram_props(&client_final))).await;
    r.recv_skip_ping().await
}

/// CONNECT with SCRAM-SHA-256 (no User Name: SCRAM names the user) and the whole exchange;
/// returns the CONNACK. A successful CONNACK repeats the method and carries the verified
/// server-final-message; a refusal is followed by the close [MQTT-3.2.2-7].
async fn scram_connect(addr: SocketAddr, id: &str, scram: &mut ScramClient) -> (Raw, v5::Connack) {
    let mut r = Raw::connect(addr).await;
    r.send(&Connect::new(id).props(scram_props(&scram.client_first())).encode()).await;
    let ack = answer_challenge(&mut r, scram).await.connack5();
    if ack.reason == 0 {
        assert_eq!(ack.props.str(v5::AUTH_METHOD), Some(SCRAM), "CONNACK method §3.2.2.3.17: {ack:?}");
        scram.verify_server_final(ack.props.bin(v5::AUTH_DATA));
    } else {
        let after = r.expect_closed_after(WAIT).await;
        assert!(after.is_empty(), "packets after a refusing CONNACK: {after:?}");
    }
    (r, ack)
}

/// Re-authentication on a connected client: AUTH 0x19 with a new client-first-message, then
/// the challenge [MQTT-4.12.1-1]; returns the server's final packet.
async fn scram_reauthenticate(r: &mut Raw, scram: &mut ScramClient) -> RawPacket {
    r.send(&v5::auth(REAUTHENTICATE, &scram_props(&scram.client_first()))).await;
    answer_challenge(r, scram).await
}

/// A password file with the SCRAM user erin (password "erinpw"), written by `tern passwd --scram`.
fn scram_files() -> Files {
    let files = Files::new();
    tern_passwd(&["--scram", &files.passwd, "erin", "erinpw"]);
    files
}

// MQTT 5 §4.12 with RFC 5802/7677: CONNECT carries client-first, AUTH 0x18 server-first, AUTH
// 0x18 client-final, and CONNACK 0x00 the server-final `v=ServerSignature`, which must verify.
#[tokio::test]
async fn scram_connect_succeeds_and_the_server_signature_verifies() {
    let b = scram_files().broker();
    let mut scram = ScramClient::new("erin", "erinpw");
    let (mut r, ack) = scram_connect(b.addr(), "scram", &mut scram).await;
    assert_eq!(ack.reason, 0, "{ack:?}");
    r.sub5("scram/t", 1).await;
    assert_eq!(r.publish5_flow("scram/t", 0, false, 0, &Props::new(), b"hello").await, 0);
    assert_eq!(r.recv_publish5().await.payload, b"hello");
    r.disconnect5().await;
}

// A wrong password fails the proof and an unknown user still gets a challenge (no user
// enumeration), then CONNACK 0x86 Bad User Name or Password (§3.2.2.2) and the close.
#[tokio::test]
async fn scram_wrong_password_or_unknown_user_gets_0x86() {
    let b = scram_files().broker();
    for (user, password) in [("erin", "wrong"), ("nobody", "erinpw")] {
        let mut scram = ScramClient::new(user, password);
        let (_, ack) = scram_connect(b.addr(), "scram", &mut scram).await;
        assert_eq!(ack.reason, 0x86, "{user}/{password}: {ack:?}");
    }
    let mut scram = ScramClient::new("erin", "erinpw");
    assert_eq!(scram_connect(b.addr(), "scram", &mut scram).await.1.reason, 0, "refusals locked erin out");
}

// §4.12.1: re-authentication on a connected client (AUTH 0x19, then 0x18 exchanges) ends with
// AUTH 0x00 Success carrying the server-final-message; the connection goes on.
#[tokio::test]
async fn scram_reauthentication_succeeds_and_the_connection_goes_on() {
    let b = scram_files().broker();
    let mut scram = ScramClient::new("erin", "erinpw");
    let (mut r, _) = scram_connect(b.addr(), "reauth", &mut scram).await;
    for round in 0..2 {
        let mut again = ScramClient::new("erin", "erinpw");
        let done = scram_reauthenticate(&mut r, &mut again).await;
        assert_eq!(done.kind(), 15, "round {round}: expected AUTH 0x00, got {done:?}");
        let done = done.disconnect5();
        assert_eq!(done.reason, AUTH_SUCCESS, "round {round}: {done:?}");
        assert_eq!(done.props.str(v5::AUTH_METHOD), Some(SCRAM), "{done:?}");
        again.verify_server_final(done.props.bin(v5::AUTH_DATA));
    }
    r.sub5("reauth/t", 0).await;
    assert_eq!(r.publish5_flow("reauth/t", 0, false, 0, &Props::new(), b"on").await, 0);
    assert_eq!(r.recv_publish5().await.payload, b"on");
    r.disconnect5().await;
}

// [MQTT-4.12.1-2]: a failed re-authentication ends the connection with DISCONNECT and an
// appropriate reason code, then the close. 0x86 Bad User Name or Password is not among the
// DISCONNECT reason codes (§3.14.2.1, [MQTT-3.14.2-1]); 0x87 Not authorized is, and is what
// Mosquitto sends (src/handle_auth.c: `send__disconnect(context, MQTT_RC_NOT_AUTHORIZED)`).
#[tokio::test]
async fn scram_failed_reauthentication_disconnects_0x87() {
    let b = scram_files().broker();
    let mut scram = ScramClient::new("erin", "erinpw");
    let (mut r, _) = scram_connect(b.addr(), "reauth", &mut scram).await;
    let p = scram_reauthenticate(&mut r, &mut ScramClient::new("erin", "wrong")).await;
    assert_eq!(p.kind(), 14, "expected DISCONNECT, got {p:?}");
    assert_eq!(p.disconnect5().reason, 0x87, "{p:?}");
    // [MQTT-3.14.4-1]: nothing after DISCONNECT, then the close.
    r.expect_closed(WAIT).await;
}

// The user SCRAM proved is the one the ACL applies to (no CONNECT User Name is sent).
#[tokio::test]
async fn scram_user_is_subject_to_the_acl() {
    let files = scram_files().with_acl("user erin\ntopic readwrite erin/#\n");
    let b = files.broker();
    let mut scram = ScramClient::new("erin", "erinpw");
    let (mut r, _) = scram_connect(b.addr(), "scram-acl", &mut scram).await;
    let filters = [("erin/#", 1), ("other/#", 1)];
    assert_eq!(r.subscribe5(1, &Props::new(), &filters).await, vec![1, 0x87]);
    assert_eq!(publish5_ack(&mut r, "other/x", 1, 1).await, 0x87);
    assert_eq!(r.publish5_flow("erin/x", 0, false, 0, &Props::new(), b"mine").await, 0);
    assert_eq!(r.recv_publish5().await.payload, b"mine");
    r.disconnect5().await;
}
