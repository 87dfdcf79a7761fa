//! Area 19b: the admin API beyond listing (`/api/v1`): one client in detail, subscriptions by
//! filter, publishing as the broker (`$SYS/` refused with 403), reload (what SIGHUP does),
//! kick with discard of the session, and errors as JSON with 400, 401, 404 and 405.
//!
//! Requests go over raw TCP as curl sends them (`client_tests::http`); MQTT clients are rumqttc
//! (3.1.1) and raw MQTT 5 connections, so acknowledgements and DISCONNECT reasons are read on
//! the wire.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use client_tests::http::{http_addr, http_get, http_request, http_send, sample};
use client_tests::v5;
use client_tests::*;
use serde_json::Value;

/// HTTP on an ephemeral loopback port, `$SYS` off (its retained messages stay out of listings).
const API: &str = "[sys]\ninterval = 0\n[http]\nbind = \"127.0.0.1:0\"\n";

/// A 2xx-or-not JSON answer, parsed; panics on a body that is not JSON.
fn parse(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// GET that must answer 200 with JSON.
async fn get_json(http: std::net::SocketAddr, path: &str) -> Value {
    let (status, head, body) = http_get(http, path, None).await;
    assert_eq!(status, 200, "{path}: {body}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    parse(&body)
}

/// Polls `path` until `done` holds for its status and body (a session ends or goes offline as
/// its task gets to it), within WAIT.
async fn wait_for(http: std::net::SocketAddr, path: &str, done: impl Fn(u16, &str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, _, body) = http_get(http, path, None).await;
        if done(status, &body) {
            return;
        }
        assert!(Instant::now() < deadline, "{path} never reached the expected state: {status} {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An error answer: the status, JSON content and an "error" string.
fn assert_json_error(answer: &(u16, String, String), status: u16) {
    let (got, head, body) = answer;
    assert_eq!(*got, status, "{body}");
    assert!(head.contains("Content-Type: application/json"), "{head}");
    assert!(parse(body)["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
}

// One client in detail: its MQTT 5 connection (protocol, the peer address the client has,
// keep-alive, when it connected), its subscriptions with their options; after it leaves, its
// session with the messages queued for it and the connection it last had. A client id with '/'
// and a space is reached percent-encoded.
#[tokio::test]
async fn client_detail_shows_connection_queue_and_subscriptions() {
    let b = Broker::start_with(API);
    let http = http_addr(&b).await;
    let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let (mut c, connack) = Raw::connect5(
        b.addr(),
        &v5::Connect::new("detail/1 x").clean(false).session_expiry(600).keepalive(42),
    )
    .await;
    assert_eq!(connack.reason, 0);
    c.sub5("d/+/t", 1).await;
    c.sub5("d/x", 0).await;

    let detail = get_json(http, "/api/v1/clients/detail%2F1%20x").await;
    assert_eq!(detail["client_id"], "detail/1 x");
    assert_eq!(detail["connected"], true);
    assert_eq!(detail["persistent"], true);
    let connection = &detail["connection"];
    assert_eq!(connection["protocol"], "5.0");
    assert_eq!(connection["peer"], c.local.to_string(), "the client's own address");
    assert_eq!(connection["listener"], "127.0.0.1:0", "the listener as configured");
    assert_eq!(connection["keep_alive"], 42);
    let since = connection["connected_since"].as_u64().expect("unix seconds");
    assert!(since >= before && since <= before + 60, "{since} vs {before}");
    let subs: Vec<(String, u64)> = detail["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["filter"].as_str().unwrap().to_owned(), s["qos"].as_u64().unwrap()))
        .collect();
    assert_eq!(subs, [("d/+/t".to_owned(), 1), ("d/x".to_owned(), 0)]);
    assert_eq!((detail["inflight"].as_u64(), detail["queued"].as_u64()), (Some(0), Some(0)));

    // Away: QoS 1 messages queue for the session; the last connection is still shown.
    c.disconnect5().await;
    wait_for(http, "/api/v1/clients/detail%2F1%20x", |_, body| body.contains("\"connected\":false")).await;
    let mut p = Raw::connected(b.addr(), "detail-pub", true).await;
    for pid in 1..=3 {
        p.publish_flow("d/a/t", 1, false, pid, b"queued").await;
    }
    let detail = get_json(http, "/api/v1/clients/detail%2F1%20x").await;
    assert_eq!(detail["connected"], false);
    assert_eq!(detail["queued"], 3, "{detail}");
    assert_eq!(detail["connection"]["protocol"], "5.0");
    assert_json_error(&http_get(http, "/api/v1/clients/nobody", None).await, 404);
}

// Subscriptions by filter: the filter selects the subscriptions whose own filter it matches
// (wildcards included; a shared one by the filter after `$share/{group}/`), an exact filter
// selects just that one, and `client_id` narrows to one client.
#[tokio::test]
async fn subscriptions_are_listed_by_filter() {
    let b = Broker::start_with(API);
    let http = http_addr(&b).await;
    let mut a = Mqtt::connect(opts(&b, "sub-a")).await;
    a.subscribe("s/+/temp", 1).await;
    a.subscribe("other/#", 0).await;
    let mut c = Mqtt::connect(opts(&b, "sub-c")).await;
    c.subscribe("s/a/temp", 2).await;
    c.subscribe("$share/g/s/b/temp", 1).await;

    let listed = |v: &Value| -> Vec<(String, String, u64)> {
        v["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let field = |k: &str| s[k].as_str().unwrap().to_owned();
                (field("filter"), field("client_id"), s["qos"].as_u64().unwrap())
            })
            .collect()
    };
    let all = get_json(http, "/api/v1/subscriptions").await;
    assert_eq!(all["total"], 4, "{all}");
    let under_s = get_json(http, "/api/v1/subscriptions?filter=s%2F%23").await;
    assert_eq!(
        listed(&under_s),
        [
            ("$share/g/s/b/temp".into(), "sub-c".into(), 1),
            ("s/+/temp".into(), "sub-a".into(), 1),
            ("s/a/temp".into(), "sub-c".into(), 2),
        ]
    );
    let exact = get_json(http, "/api/v1/subscriptions?filter=s%2Fa%2Ftemp").await;
    assert_eq!(listed(&exact), [("s/a/temp".into(), "sub-c".into(), 2)]);
    let of_a = get_json(http, "/api/v1/subscriptions?client_id=sub-a").await;
    assert_eq!(listed(&of_a).len(), 2);
    assert_json_error(&http_get(http, "/api/v1/subscriptions?filter=a%2F%23%2Fb", None).await, 400);
}

// Publish as the broker: subscribers get it at the QoS asked for, a retained one is kept;
// `$SYS/` is refused with 403 and reaches nobody; bad bodies are 400.
#[tokio::test]
async fn publish_through_the_api_reaches_subscribers_and_sys_is_forbidden() {
    let b = Broker::start_with(API);
    let http = http_addr(&b).await;
    let mut sub = Mqtt::connect(opts(&b, "api-sub")).await;
    sub.subscribe("api/#", 1).await;
    sub.subscribe("$SYS/#", 0).await;

    let body = r#"{"topic":"api/x","payload":"hi","qos":1,"retain":true}"#;
    let (status, _, answer) = http_send(http, "POST", "/api/v1/publish", None, Some(body)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(parse(&answer)["matched"], 1);
    let got = sub.recv().await;
    assert_eq!((got.topic.as_str(), &got.payload[..], qos_num(got.qos)), ("api/x", &b"hi"[..], 1));
    let retained = get_json(http, "/api/v1/retained?filter=api%2F%23").await;
    assert_eq!(retained["messages"][0]["topic"], "api/x", "{retained}");

    let forged = r#"{"topic":"$SYS/broker/version","payload":"evil"}"#;
    assert_json_error(&http_send(http, "POST", "/api/v1/publish", None, Some(forged)).await, 403);
    for bad in [r#"{"topic":"a/#"}"#, r#"{"topic":"a","qos":3}"#, "{not json", r#"{"topic":"a","x":1}"#] {
        assert_json_error(&http_send(http, "POST", "/api/v1/publish", None, Some(bad)).await, 400);
    }
    sub.expect_silence().await;
}

// Reload through the API does what SIGHUP does: a user added to the password file can log in
// afterwards, not before.
#[tokio::test]
async fn reload_through_the_api_applies_a_changed_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    let add_user = |user: &str| {
        let out = std::process::Command::new(tern_bin())
            .args(["passwd", passwd.to_str().unwrap(), user, "pw"])
            .output()
            .expect("tern passwd");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    add_user("alice");
    let b = Broker::start_with(&format!("{API}[auth]\npassword_file = \"{}\"\n", passwd.display()));
    let http = http_addr(&b).await;
    let bob = || {
        let mut o = opts(&b, "bob-1");
        o.set_credentials("bob", "pw");
        o
    };
    assert!(Mqtt::try_connect(bob()).await.is_err(), "bob is not in the file yet");
    add_user("bob");
    assert!(Mqtt::try_connect(bob()).await.is_err(), "not before the reload");
    let (status, _, body) = http_request(http, "POST", "/api/v1/reload", None).await;
    assert_eq!((status, parse(&body)["reloaded"].as_bool()), (200, Some(true)), "{body}");
    Mqtt::try_connect(bob()).await.expect("bob logs in after the reload");
    assert_json_error(&http_get(http, "/api/v1/reload", None).await, 405);
}

// Kick with discard: the MQTT 5 client gets DISCONNECT 0x98 and its persistent session ends
// (gone from the API; a reconnect finds no session). A session whose client is away is
// discarded the same way; a plain kick of it is 409.
#[tokio::test]
async fn kick_with_discard_ends_the_session() {
    let b = Broker::start_with(API);
    let http = http_addr(&b).await;
    let connect = |id: &str| v5::Connect::new(id).clean(false).session_expiry(600);
    let (mut online, _) = Raw::connect5(b.addr(), &connect("gone-1")).await;
    online.sub5("k/t", 1).await;
    let (status, _, body) = http_request(http, "DELETE", "/api/v1/clients/gone-1?discard=true", None).await;
    assert_eq!((status, parse(&body)["discarded"].as_bool()), (200, Some(true)), "{body}");
    online.expect_disconnect_reason(0x98, "kicked through the admin API").await;
    wait_for(http, "/api/v1/clients/gone-1", |status, _| status == 404).await;
    assert_eq!(get_json(http, "/api/v1/subscriptions?filter=k%2Ft").await["total"], 0);
    let (_back, connack) = Raw::connect5(b.addr(), &connect("gone-1")).await;
    assert!(!connack.session_present, "the session was discarded");

    let (mut away, _) = Raw::connect5(b.addr(), &connect("gone-2")).await;
    away.sub5("k/u", 1).await;
    away.disconnect5().await;
    wait_for(http, "/api/v1/clients/gone-2", |_, body| body.contains("\"connected\":false")).await;
    assert_json_error(&http_request(http, "DELETE", "/api/v1/clients/gone-2", None).await, 409);
    assert_json_error(&http_request(http, "DELETE", "/api/v1/clients/gone-2?discard=maybe", None).await, 400);
    assert_eq!(http_request(http, "DELETE", "/api/v1/clients/gone-2?discard=true", None).await.0, 200);
    wait_for(http, "/api/v1/clients/gone-2", |status, _| status == 404).await;
    let (_back, connack) = Raw::connect5(b.addr(), &connect("gone-2")).await;
    assert!(!connack.session_present, "the offline session was discarded");
}

// Errors are JSON: 401 without the token (with a Bearer challenge), 404 for an unknown
// endpoint or client, 400 for bad percent-encoding and bad parameters, 405 for a wrong method.
#[tokio::test]
async fn errors_are_json_with_400_401_404_and_405() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret\n").unwrap();
    let b = Broker::start_with(&format!("{API}token_file = \"{}\"\n", token_file.display()));
    let http = http_addr(&b).await;
    let t = Some("s3cret");
    let unauthorized = http_get(http, "/api/v1/summary", Some("wrong")).await;
    assert_json_error(&unauthorized, 401);
    assert!(unauthorized.1.contains("WWW-Authenticate: Bearer"), "{}", unauthorized.1);
    assert_json_error(&http_get(http, "/api/v1/nothing-here", t).await, 404);
    assert_json_error(&http_get(http, "/api/v1/clients/nobody", t).await, 404);
    assert_json_error(&http_get(http, "/api/v1/clients/%zz", t).await, 400);
    assert_json_error(&http_get(http, "/api/v1/clients?connected=maybe", t).await, 400);
    assert_json_error(&http_get(http, "/api/v1/retained?limit=lots", t).await, 400);
    assert_json_error(&http_request(http, "PUT", "/api/v1/summary", t).await, 405);
    assert_eq!(http_get(http, "/api/v1/summary", t).await.0, 200);
}

// The series added for operations dashboards: clients by listener and protocol, RocksDB commits
// as a histogram (its `+Inf` bucket equal to its count, rising with a stored message), and the
// process start time.
#[tokio::test]
async fn metrics_count_connections_by_listener_and_storage_commits() {
    let b = Broker::start_with(API);
    let http = http_addr(&b).await;
    let mut v3 = Mqtt::connect(opts(&b, "m-v3")).await;
    let (_v5, _) = Raw::connect5(b.addr(), &v5::Connect::new("m-v5")).await;
    let (_, _, before) = http_get(http, "/metrics", None).await;
    assert_eq!(sample::<f64>(&before, "tern_connections{listener=\"127.0.0.1:0\",protocol=\"3.1.1\"}"), 1.0);
    assert_eq!(sample::<f64>(&before, "tern_connections{listener=\"127.0.0.1:0\",protocol=\"5.0\"}"), 1.0);
    assert_eq!(sample::<f64>(&before, "tern_connections{listener=\"127.0.0.1:0\",protocol=\"3.1\"}"), 0.0);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let started = sample::<f64>(&before, "process_start_time_seconds");
    assert!(started <= now && started > now - 60.0, "{started} vs {now}");

    v3.publish_wait("m/retained", 1, true, "stored").await;
    let (_, _, after) = http_get(http, "/metrics", None).await;
    let commits = |m: &str| sample::<f64>(m, "tern_storage_commit_duration_seconds_count");
    assert!(commits(&after) > commits(&before), "a retained message is a RocksDB write");
    assert_eq!(
        sample::<f64>(&after, "tern_storage_commit_duration_seconds_bucket{le=\"+Inf\"}"),
        commits(&after)
    );
    assert!(after.contains("# TYPE tern_storage_commit_duration_seconds histogram\n"));
}
