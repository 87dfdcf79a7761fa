//! Area 19: operating Tern. The `$SYS/broker/...` tree in Mosquitto 2.0's topics and formats
//! (read with `mosquitto_sub` and rumqttc), `$SYS` kept from `#` subscribers [MQTT-4.7.2-1] and
//! from publishers, the counters behind `$SYS` and `GET /metrics` (exact after 100 QoS 1
//! messages; the exposition linted by `promtool check metrics`), `/healthz` and `/readyz`, the
//! bearer token, the refusal to serve HTTP off loopback without one, and the admin API
//! (`/api/v1`: summary, client listing with filters, kick with DISCONNECT 0x98, retained
//! messages listed and deleted by filter).
//!
//! HTTP is spoken over a raw TCP stream (one GET per connection, as curl would send it), so
//! status lines and headers are checked on the wire.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use client_tests::http::*;
use client_tests::v5::{self, Props};
use client_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// `$SYS` every second, HTTP on an ephemeral loopback port.
const OPS: &str = "[sys]\ninterval = 1\n[http]\nbind = \"127.0.0.1:0\"\n";

/// A check of a payload's format.
type Format = fn(&str) -> bool;

/// Every topic of the tree, with a check of its payload's format.
fn documented_topics() -> Vec<(String, Format)> {
    let count: Format = |v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    let load: Format = |v| {
        let (int, frac) = v.split_once('.').unwrap_or(("", ""));
        !int.is_empty()
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.len() == 2
            && frac.bytes().all(|b| b.is_ascii_digit())
    };
    let mut topics: Vec<(String, Format)> = vec![
        ("version".into(), |v| v.starts_with("tern version ") && v.split('.').count() == 3),
        ("uptime".into(), |v| v.strip_suffix(" seconds").is_some_and(|n| n.parse::<u64>().is_ok())),
    ];
    for name in [
        "clients/connected",
        "clients/active",
        "clients/disconnected",
        "clients/inactive",
        "clients/total",
        "clients/maximum",
        "clients/expired",
        "messages/received",
        "messages/sent",
        "messages/stored",
        "store/messages/count",
        "store/messages/bytes",
        "publish/messages/received",
        "publish/messages/sent",
        "publish/messages/dropped",
        "publish/bytes/received",
        "publish/bytes/sent",
        "bytes/received",
        "bytes/sent",
        "subscriptions/count",
        "retained messages/count",
    ] {
        topics.push((name.into(), count));
    }
    for name in [
        "messages/received",
        "messages/sent",
        "publish/received",
        "publish/sent",
        "publish/dropped",
        "bytes/received",
        "bytes/sent",
        "sockets",
        "connections",
    ] {
        for window in ["1min", "5min", "15min"] {
            topics.push((format!("load/{name}/{window}"), load));
        }
    }
    topics.into_iter().map(|(t, f)| (format!("$SYS/broker/{t}"), f)).collect()
}

/// Collects `$SYS` messages (topic -> last payload) until every topic in `wanted` was seen.
async fn collect_sys(m: &mut Mqtt, wanted: &[String]) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wanted.iter().all(|t| seen.contains_key(t)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(p) = m.recv_timeout(left).await else {
            let missing: Vec<_> = wanted.iter().filter(|t| !seen.contains_key(*t)).collect();
            panic!("$SYS topics missing after 10 s: {missing:?}");
        };
        seen.insert(p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned());
    }
    seen
}

// interval = 1: every documented topic is published, retained, with Mosquitto's payload
// format; `mosquitto_sub -v -t '$SYS/#'` reads the whole tree from the retained messages.
#[tokio::test]
async fn sys_tree_has_every_documented_topic_in_mosquitto_format() {
    let b = Broker::start_with(OPS);
    let topics = documented_topics();
    let names: Vec<String> = topics.iter().map(|(t, _)| t.clone()).collect();
    let mut m = Mqtt::connect(opts(&b, "sys-reader")).await;
    assert_eq!(m.subscribe("$SYS/#", 0).await, vec![0]);
    let seen = collect_sys(&mut m, &names).await;
    for (topic, valid) in &topics {
        assert!(valid(&seen[topic]), "{topic} has payload {:?}", seen[topic]);
    }
    assert_eq!(seen.len(), topics.len(), "no other topics: {seen:?}");
    m.disconnect().await;

    // Every topic is retained: a new subscriber gets all of them at once.
    let n = topics.len().to_string();
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.port().to_string(), "-v", "-t", "$SYS/#", "-C", &n, "-W", "10"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .expect("run mosquitto_sub");
    assert!(out.status.success(), "mosquitto_sub: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut got: Vec<&str> = stdout.lines().map(|l| l.split_once(' ').map_or(l, |(t, _)| t)).collect();
    // Topics contain a space ("retained messages/count"): match on known names instead.
    got.sort();
    for name in &names {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{name} "))),
            "mosquitto_sub missed {name}:\n{stdout}"
        );
    }
    assert_eq!(got.len(), topics.len(), "{stdout}");
    let version = stdout.lines().find_map(|l| l.strip_prefix("$SYS/broker/version ")).unwrap();
    // The same version as `tern --version` ("tern X.Y.Z").
    let cli = std::process::Command::new(tern_bin()).arg("--version").output().expect("tern --version");
    let cli = String::from_utf8(cli.stdout).unwrap();
    assert_eq!(version, format!("tern version {}", cli.trim().strip_prefix("tern ").unwrap()));
}

// [MQTT-4.7.2-1]: a subscription whose filter starts with a wildcard ('#', '+') does not
// match topics beginning with '$'. Two rounds of the tree pass; only the ordinary message
// arrives.
#[tokio::test]
async fn wildcard_subscribers_get_no_sys_messages() {
    let b = Broker::start_with(OPS);
    let mut all = Mqtt::connect(opts(&b, "hash")).await;
    assert_eq!(all.subscribe("#", 0).await, vec![0]);
    let mut plus = Mqtt::connect(opts(&b, "plus")).await;
    assert_eq!(plus.subscribe("+/broker/#", 0).await, vec![0]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    all.publish("ordinary/topic", 0, false, "x").await;
    let p = all.recv().await;
    assert_eq!(p.topic, "ordinary/topic", "a '#' subscriber got a $SYS message [MQTT-4.7.2-1]");
    assert!(plus.recv_timeout(QUIET).await.is_none(), "'+/broker/#' matched a $SYS topic [MQTT-4.7.2-1]");
    all.expect_silence().await;
}

// Clients may not publish under $SYS/: MQTT 5 gets PUBACK and PUBREC with 0x87 (Not
// authorized, no PUBREL follows [MQTT-4.3.3-4]); MQTT 3.1.1 has no way to be told, so the flow
// completes and the message is dropped. Nothing reaches a `$SYS/#` subscriber, nothing is
// retained.
#[tokio::test]
async fn publish_under_sys_is_refused() {
    let b = Broker::start_with("[sys]\ninterval = 0\n");
    let mut watcher = Raw::connected(b.addr(), "watcher", true).await;
    assert_eq!(watcher.subscribe(1, &[("$SYS/#", 1)]).await, vec![1]);

    let mut p5 = Raw::connected5(b.addr(), "p5").await;
    let reason = p5.publish5_flow("$SYS/x", 1, true, 1, &Props::new(), b"forged").await;
    assert_eq!(reason, 0x87, "PUBACK reason for a $SYS publish");
    p5.send(&v5::publish("$SYS/broker/uptime", 2, false, 2, &Props::new(), b"1 seconds")).await;
    let rec = p5.recv_skip_ping().await.ack5();
    assert_eq!((rec.kind, rec.pid, rec.reason), (5, 2, 0x87), "PUBREC reason for a $SYS publish");

    let mut p3 = Raw::connected(b.addr(), "p3", true).await;
    p3.publish_flow("$SYS/x", 1, true, 1, b"forged").await;
    p3.publish_flow("$SYS", 2, false, 2, b"forged").await;

    watcher.expect_nothing(QUIET).await;
    let mut late = Raw::connected(b.addr(), "late", true).await;
    assert_eq!(late.subscribe(1, &[("$SYS/#", 1)]).await, vec![1]);
    late.expect_nothing(QUIET).await;
}

// 100 QoS 1 messages from one client to one subscriber: the $SYS count of received PUBLISH
// packets and the /metrics counters of QoS 1 PUBLISH received and sent each rise by exactly
// 100 (nothing else publishes; $SYS messages go out at QoS 0).
#[tokio::test]
async fn hundred_qos1_publishes_raise_the_counters_by_exactly_100() {
    const N: u64 = 100;
    let b = Broker::start_with(OPS);
    let http = http_addr(&b).await;
    let mut sys = Mqtt::connect(opts(&b, "sys")).await;
    sys.subscribe("$SYS/broker/publish/messages/received", 0).await;
    let before_sys: u64 = String::from_utf8_lossy(&sys.recv().await.payload).parse().unwrap();
    let mut sub = Mqtt::connect(opts(&b, "sub")).await;
    sub.subscribe("count/t", 1).await;
    let (status, _, before) = http_get(http, "/metrics", None).await;
    assert_eq!(status, 200);

    let mut publisher = Mqtt::connect(opts(&b, "pub")).await;
    for i in 0..N {
        publisher.publish_wait("count/t", 1, false, i.to_string()).await;
    }
    for _ in 0..N {
        assert_eq!(sub.recv().await.qos, qos(1));
    }
    let (_, _, after) = http_get(http, "/metrics", None).await;
    for series in ["tern_publish_received_total{qos=\"1\"}", "tern_publish_sent_total{qos=\"1\"}"] {
        assert_eq!(sample::<u64>(&after, series) - sample::<u64>(&before, series), N, "{series}");
    }
    assert_eq!(
        sample::<u64>(&after, "tern_publish_received_total{qos=\"0\"}"),
        sample::<u64>(&before, "tern_publish_received_total{qos=\"0\"}")
    );

    // The next rounds publish the new count (once it changed; never a value past it).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let p = sys.recv_timeout(deadline.saturating_duration_since(Instant::now())).await;
        let p = p.expect("$SYS/broker/publish/messages/received did not reach before + 100 within 5 s");
        let value: u64 = String::from_utf8_lossy(&p.payload).parse().unwrap();
        assert!(value <= before_sys + N, "counted more than was published: {value}");
        if value == before_sys + N {
            break;
        }
    }
}

// /metrics is Prometheus text format that `promtool check metrics` accepts (counters end in
// _total, every family has HELP and TYPE), served with the text format's content type.
#[tokio::test]
async fn metrics_pass_promtool_check() {
    let b = Broker::start_with(OPS);
    // Some traffic, so that labelled families have samples.
    let mut m = Mqtt::connect(opts(&b, "traffic")).await;
    m.subscribe("lint/t", 1).await;
    m.publish_wait("lint/t", 1, true, "x").await;
    m.recv().await;
    let (status, head, body) = http_get(http_addr(&b).await, "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert!(body.contains("# TYPE tern_publish_received_total counter"), "{body}");
    assert!(sample::<u64>(&body, "tern_retained_messages") >= 1);
    promtool_check(&body).await;
}

// /healthz says the process is up, /readyz that it serves (storage open, listeners bound);
// other paths are 404, other methods 405.
#[tokio::test]
async fn healthz_and_readyz_answer_200_once_serving() {
    let b = Broker::start_with(OPS);
    let http = http_addr(&b).await;
    assert_eq!(http_get(http, "/healthz", None).await.0, 200);
    let (status, _, body) = http_get(http, "/readyz", None).await;
    assert_eq!((status, body.as_str()), (200, "ready\n"));
    assert_eq!(http_get(http, "/nothing", None).await.0, 404);
    let mut s = tokio::net::TcpStream::connect(http).await.unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 405 "), "{response}");
}

// During shutdown /readyz says 503 until the endpoint closes: a client that keeps its socket
// open holds the shutdown for up to a second (the broker drains its input), which is the
// window observed here.
#[tokio::test]
async fn readyz_is_503_during_shutdown() {
    let b = Broker::start_with(&format!("{OPS}[server]\nshutdown_timeout_secs = 5\n"));
    let http = http_addr(&b).await;
    let _holder = Raw::connected(b.addr(), "holder", true).await;
    assert_eq!(http_get(http, "/readyz", None).await.0, 200);
    b.sigterm();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_503 = false;
    while Instant::now() < deadline && !saw_503 {
        let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(http)).await
        else {
            break; // closed: shutdown is over
        };
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").await;
        let mut response = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_string(&mut response)).await;
        saw_503 = response.starts_with("HTTP/1.1 503 ") && response.ends_with("shutting down\n");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(saw_503, "/readyz never said 503 during shutdown");
}

// With `http.token_file`, /metrics needs `Authorization: Bearer <token>` (401 and
// WWW-Authenticate otherwise, a wrong token included); the probes stay open.
#[tokio::test]
async fn metrics_need_the_configured_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let b = Broker::start_with(&format!("{OPS}token_file = \"{}\"\n", token_file.display()));
    let http = http_addr(&b).await;
    let (status, head, _) = http_get(http, "/metrics", None).await;
    assert_eq!(status, 401);
    assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
    assert_eq!(http_get(http, "/metrics", Some("s3cret")).await.0, 401);
    assert_eq!(http_get(http, "/metrics", Some("s3cret-token-and-more")).await.0, 401);
    let (status, _, body) = http_get(http, "/metrics", Some("s3cret-token")).await;
    assert_eq!(status, 200);
    assert!(body.contains("tern_clients_connected "), "{body}");
    assert_eq!(http_get(http, "/healthz", None).await.0, 200);
    assert_eq!(http_get(http, "/readyz", None).await.0, 200);
}

// An HTTP endpoint off loopback without a token file: tern refuses to start (exit code 2),
// naming the key; with one, it starts.
#[tokio::test]
async fn non_loopback_http_without_token_refuses_to_start() {
    let launch = Launch::config("[http]\nbind = \"0.0.0.0:0\"\n");
    let e = tokio::task::spawn_blocking(move || Broker::run_to_exit(launch, Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(e.status.and_then(|s| s.code()), Some(2), "{}", e.logs);
    assert!(e.logs.contains("http.token_file"), "{}", e.logs);
    assert!(!e.logs.contains("listening on"), "{}", e.logs);

    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "t").unwrap();
    let b = Broker::start_with(&format!(
        "[http]\nbind = \"0.0.0.0:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let port = http_addr(&b).await.port();
    assert_eq!(http_get(SocketAddr::from(([127, 0, 0, 1], port)), "/metrics", Some("t")).await.0, 200);

    // A token file that cannot be read stops the start as well, naming the key.
    let launch = Launch::config("[http]\nbind = \"127.0.0.1:0\"\ntoken_file = \"/nonexistent/token\"\n");
    let e = tokio::task::spawn_blocking(move || Broker::run_to_exit(launch, Duration::from_secs(20)))
        .await
        .unwrap();
    assert_ne!(e.status.and_then(|s| s.code()), Some(0), "{}", e.logs);
    assert!(e.logs.contains("http.token_file"), "{}", e.logs);
}

// Connections, subscriptions and retained messages show in /metrics and $SYS alike.
#[tokio::test]
async fn gauges_follow_clients_subscriptions_and_retained() {
    let b = Broker::start_with(OPS);
    let http = http_addr(&b).await;
    // The first round adds the tree's retained messages; it publishes this topic last, and
    // later rounds add no topics: from here on only our changes move the retained count.
    let mut sys = Mqtt::connect(opts(&b, "gauge-sys")).await;
    sys.subscribe("$SYS/broker/load/connections/15min", 0).await;
    sys.recv().await;
    let mut a = Mqtt::connect(opts(&b, "gauge-a")).await;
    a.subscribe("g/1", 1).await;
    a.subscribe("g/2", 1).await;
    a.publish_wait("g/r", 1, true, "kept").await;
    let (_, _, body) = http_get(http, "/metrics", None).await;
    assert_eq!(sample::<u64>(&body, "tern_clients_connected"), 2);
    assert_eq!(sample::<u64>(&body, "tern_subscriptions"), 3);
    assert!(sample::<u64>(&body, "tern_retained_messages") >= 1);
    a.unsubscribe("g/1").await;
    a.publish_wait("g/r", 1, true, "").await;
    let (_, _, after) = http_get(http, "/metrics", None).await;
    assert_eq!(sample::<u64>(&after, "tern_subscriptions"), 2);
    assert_eq!(
        sample::<u64>(&after, "tern_retained_messages"),
        sample::<u64>(&body, "tern_retained_messages") - 1
    );

    sys.subscribe("$SYS/broker/clients/connected", 0).await;
    sys.subscribe("$SYS/broker/subscriptions/count", 0).await;
    let wanted = ["$SYS/broker/clients/connected".to_string(), "$SYS/broker/subscriptions/count".to_string()];
    // Retained first, then the next round's values: wait for the round after our changes.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = collect_sys(&mut sys, &wanted).await;
    while (seen[&wanted[0]].as_str(), seen[&wanted[1]].as_str()) != ("2", "4") {
        let p = sys.recv_timeout(deadline.saturating_duration_since(Instant::now())).await;
        let p = p.unwrap_or_else(|| panic!("$SYS never showed 2 clients and 4 subscriptions: {seen:?}"));
        seen.insert(p.topic.clone(), String::from_utf8_lossy(&p.payload).into_owned());
    }
}

// ---------------------------------------------------------------------------------------
// Admin API (/api/v1)
// ---------------------------------------------------------------------------------------

/// Every listed `"key":value` fragment is in the JSON body.
fn assert_json_has(body: &str, fragments: &[&str]) {
    for fragment in fragments {
        assert!(body.contains(fragment), "{fragment} not in {body}");
    }
}

// Kick: a connected MQTT 5 client with a persistent session gets DISCONNECT 0x98
// (Administrative action) and is then listed as disconnected, its session kept; a second kick
// finds it not connected (409), an unknown id is 404. A 3.1.1 client is closed (servers send
// 3.1.1 clients no DISCONNECT). Without the configured token the API answers 401.
#[tokio::test]
async fn admin_kick_sends_v5_disconnect_0x98_and_keeps_the_persistent_session() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "adm1n").unwrap();
    let b = Broker::start_with(&format!(
        "[sys]\ninterval = 0\n[http]\nbind = \"127.0.0.1:0\"\ntoken_file = \"{}\"\n",
        token_file.display()
    ));
    let http = http_addr(&b).await;
    let (mut v5c, connack) =
        Raw::connect5(b.addr(), &v5::Connect::new("kick-me").clean(false).session_expiry(600)).await;
    assert_eq!(connack.reason, 0);
    v5c.sub5("kick/t", 1).await;

    assert_eq!(http_request(http, "DELETE", "/api/v1/clients/kick-me", None).await.0, 401);
    v5c.expect_nothing(QUIET).await;
    let (status, _, body) = http_request(http, "DELETE", "/api/v1/clients/kick-me", Some("adm1n")).await;
    assert_eq!(status, 200, "{body}");
    v5c.expect_disconnect_reason(0x98, "kicked through the admin API").await;

    // The session goes offline as the connection closes: wait for the listing to say so.
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (status, head, body) = http_get(http, "/api/v1/clients?connected=false", Some("adm1n")).await;
        assert_eq!(status, 200);
        assert!(head.contains("Content-Type: application/json"), "{head}");
        if body.contains("kick-me") {
            break body;
        }
        assert!(Instant::now() < deadline, "kick-me never listed as disconnected: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_json_has(
        &body,
        &["\"total\":1", "\"client_id\":\"kick-me\"", "\"connected\":false", "\"persistent\":true"],
    );
    let (status, _, body) = http_request(http, "DELETE", "/api/v1/clients/kick-me", Some("adm1n")).await;
    assert_eq!((status, body.contains("not connected")), (409, true), "{body}");
    assert_eq!(http_request(http, "DELETE", "/api/v1/clients/nobody", Some("adm1n")).await.0, 404);

    // The session is still there: a message queued for it is delivered on return.
    let mut p = Raw::connected(b.addr(), "kick-pub", true).await;
    p.publish_flow("kick/t", 1, false, 1, b"while away").await;
    let (mut back, connack) =
        Raw::connect5(b.addr(), &v5::Connect::new("kick-me").clean(false).session_expiry(600)).await;
    assert!(connack.session_present, "session kept after the kick");
    assert_eq!(back.recv_publish5().await.payload, b"while away");

    let mut v3 = Raw::connected(b.addr(), "kick-v3", true).await;
    assert_eq!(http_request(http, "DELETE", "/api/v1/clients/kick-v3", Some("adm1n")).await.0, 200);
    v3.expect_closed(WAIT).await;
}

// Listing: filters by connection state, user name and client id prefix, sorted by id, paged.
#[tokio::test]
async fn admin_lists_clients_by_connected_user_and_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let passwd = dir.path().join("passwd");
    for user in ["alice", "bob"] {
        let out = std::process::Command::new(tern_bin())
            .args(["passwd", passwd.to_str().unwrap(), user, "pw"])
            .output()
            .expect("tern passwd");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let b = Broker::start_with(&format!(
        "[sys]\ninterval = 0\n[http]\nbind = \"127.0.0.1:0\"\n[auth]\npassword_file = \"{}\"\n",
        passwd.display()
    ));
    let http = http_addr(&b).await;
    let with_user = |id: &str, user: &str| {
        let mut o = opts(&b, id);
        o.set_credentials(user, "pw");
        o
    };
    let _a1 = Mqtt::connect(with_user("sensor-1", "alice")).await;
    let _a2 = Mqtt::connect(with_user("sensor-2", "alice")).await;
    let _b1 = Mqtt::connect(with_user("pump-1", "bob")).await;
    let mut gone = with_user("sensor-3", "bob");
    gone.set_clean_session(false);
    Mqtt::connect(gone).await.disconnect().await;

    let ids = |body: &str| -> Vec<String> {
        body.split("\"client_id\":\"").skip(1).map(|s| s.split('"').next().unwrap().to_owned()).collect()
    };
    let list = |query: &'static str| async move {
        let (status, _, body) = http_get(http, &format!("/api/v1/clients{query}"), None).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    // The disconnected persistent session may take a moment to go offline.
    let deadline = Instant::now() + WAIT;
    while !list("?connected=false").await.contains("sensor-3") {
        assert!(Instant::now() < deadline, "sensor-3 never listed as disconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ids(&list("").await), ["pump-1", "sensor-1", "sensor-2", "sensor-3"]);
    assert_eq!(ids(&list("?connected=true").await), ["pump-1", "sensor-1", "sensor-2"]);
    assert_eq!(ids(&list("?connected=false").await), ["sensor-3"]);
    assert_eq!(ids(&list("?user=alice").await), ["sensor-1", "sensor-2"]);
    assert_eq!(ids(&list("?prefix=sensor-&user=bob").await), ["sensor-3"]);
    let page = list("?prefix=sensor&offset=1&limit=1").await;
    assert_eq!(ids(&page), ["sensor-2"]);
    assert_json_has(&page, &["\"total\":3", "\"offset\":1", "\"user\":\"alice\""]);
    assert_eq!(http_get(http, "/api/v1/clients?connected=maybe", None).await.0, 400);

    let (status, _, summary) = http_get(http, "/api/v1/summary", None).await;
    assert_eq!(status, 200);
    assert_json_has(&summary, &["\"clients_connected\":3", "\"sessions_disconnected\":1", "\"version\":\""]);
}

// Deleting retained messages by filter removes exactly the matching ones, from memory and from
// storage (a restart on the same data still lacks them), and the listing agrees with what a
// new subscriber receives. $SYS retained messages are the broker's: never deleted.
#[tokio::test]
async fn admin_deletes_exactly_the_retained_messages_matching_a_filter() {
    let data = tempfile::tempdir().unwrap();
    let config = "[sys]\ninterval = 1\n[http]\nbind = \"127.0.0.1:0\"\n[storage]\ndurability = \"wal\"\n";
    let b = Broker::launch(Launch::config(config).data_dir(data.path()));
    let http = http_addr(&b).await;
    let mut p = Mqtt::connect(opts(&b, "ret-pub")).await;
    for topic in ["a/1", "a/2", "a/b/3", "b/1"] {
        p.publish_wait(topic, 1, true, format!("v-{topic}")).await;
    }
    let (_, _, before) = http_get(http, "/api/v1/retained?filter=%23", None).await;
    assert_json_has(
        &before,
        &["\"total\":4", "{\"topic\":\"a/b/3\",\"qos\":1,\"payload_bytes\":7,\"payload\":\"v-a/b/3\"}"],
    );
    assert_eq!(http_request(http, "DELETE", "/api/v1/retained", None).await.0, 400, "filter required");
    assert_eq!(http_request(http, "DELETE", "/api/v1/retained?filter=a/%23/x", None).await.0, 400);
    let (status, _, body) = http_request(http, "DELETE", "/api/v1/retained?filter=a/+", None).await;
    assert_eq!((status, body.as_str()), (200, "{\"deleted\":2}\n"));
    let (_, _, after) = http_get(http, "/api/v1/retained", None).await;
    assert_json_has(&after, &["\"total\":2", "\"topic\":\"a/b/3\"", "\"topic\":\"b/1\""]);

    let mut s = Mqtt::connect(opts(&b, "ret-sub")).await;
    s.subscribe("#", 1).await;
    let mut got = vec![s.recv().await.topic, s.recv().await.topic];
    got.sort();
    assert_eq!(got, ["a/b/3", "b/1"]);
    s.expect_silence().await;

    let (_, _, body) = http_request(http, "DELETE", "/api/v1/retained?filter=%24SYS/%23", None).await;
    assert_eq!(body, "{\"deleted\":0}\n", "$SYS is the broker's");

    // Restart on the same data: the deleted ones stay deleted.
    drop((p, s));
    let mut b = b;
    b.sigterm();
    b.wait_exit(Duration::from_secs(10)).await.expect("exit after SIGTERM");
    let b = Broker::launch(Launch::config(config).data_dir(data.path()));
    let (_, _, restarted) = http_get(http_addr(&b).await, "/api/v1/retained?filter=%23", None).await;
    assert_json_has(&restarted, &["\"total\":2", "\"topic\":\"a/b/3\"", "\"topic\":\"b/1\""]);
}

// A will under $SYS/ would let a client have the broker publish there for it: its CONNECT is
// refused as not authorized (MQTT 5 CONNACK 0x87, 3.1.1 0x05), as for a will the ACL denies.
#[tokio::test]
async fn will_under_sys_is_refused_at_connect() {
    let b = Broker::start_with("[sys]\ninterval = 0\n");
    let c5 = v5::Connect::new("will5").will("$SYS/broker/uptime", b"0 seconds", 0, true, Props::new());
    let (_, connack) = Raw::connect5(b.addr(), &c5).await;
    assert_eq!(connack.reason, 0x87, "MQTT 5 CONNACK for a $SYS will");
    let c3 = pkt::Connect::new("will3").will("$SYS/x", b"forged", 0, true);
    let mut raw = Raw::connect(b.addr()).await;
    raw.send(&c3.encode()).await;
    let ack = raw.recv().await;
    assert_eq!(
        (ack.header, ack.body.as_slice()),
        (0x20, &[0u8, 0x05][..]),
        "3.1.1 CONNACK 0x05 for a $SYS will"
    );
    raw.expect_closed(WAIT).await;
    // The broker's output reaches the test through a pipe: wait for it rather than race it.
    assert!(b.wait_log("will topic under $SYS", WAIT).await, "{}", b.logs());
    assert_broker_alive(b.addr()).await;
}

// Messages queued for an offline persistent session count in /metrics (and in $SYS
// store/messages/count|bytes, from the same sum): 3 messages of topic "q/t" and payload "abc"
// are 3 messages and 18 bytes; delivered on return, they are gone from the count.
#[tokio::test]
async fn queued_messages_of_offline_sessions_are_counted() {
    let b = Broker::start_with(OPS);
    let http = http_addr(&b).await;
    let mut away = opts(&b, "away");
    away.set_clean_session(false);
    let mut m = Mqtt::connect(away.clone()).await;
    m.subscribe("q/t", 1).await;
    m.disconnect().await;
    // The session goes offline as its connection closes.
    let deadline = Instant::now() + WAIT;
    while sample::<u64>(&http_get(http, "/metrics", None).await.2, "tern_sessions_disconnected") != 1 {
        assert!(Instant::now() < deadline, "the session never went offline");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut p = Mqtt::connect(opts(&b, "q-pub")).await;
    for _ in 0..3 {
        p.publish_wait("q/t", 1, false, "abc").await;
    }
    let (_, _, body) = http_get(http, "/metrics", None).await;
    assert_eq!(sample::<u64>(&body, "tern_queued_messages"), 3);
    assert_eq!(sample::<u64>(&body, "tern_queued_bytes"), 18);

    let mut back = Mqtt::connect(away).await;
    for _ in 0..3 {
        back.recv().await;
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, _, body) = http_get(http, "/metrics", None).await;
        if sample::<u64>(&body, "tern_queued_messages") == 0 {
            assert_eq!(sample::<u64>(&body, "tern_queued_bytes"), 0);
            break;
        }
        assert!(Instant::now() < deadline, "queued count never went back to 0:\n{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ACL denials are counted by action, and QoS 1 messages a subscriber has not acknowledged show
// as in flight: an anonymous client the ACL lets use only ok/# is denied one PUBLISH and one
// SUBSCRIBE filter; a raw subscriber that never sends PUBACK holds 2 messages in flight.
#[tokio::test]
async fn acl_denials_and_inflight_messages_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite ok/#\n").unwrap();
    let b = Broker::start_with(&format!(
        "[sys]\ninterval = 0\n[http]\nbind = \"127.0.0.1:0\"\n[auth]\nacl_file = \"{}\"\n",
        acl.display()
    ));
    let http = http_addr(&b).await;
    let mut c = Raw::connected(b.addr(), "acl-c", true).await;
    assert_eq!(c.subscribe(1, &[("no/#", 1), ("ok/#", 1)]).await, vec![0x80, 1]);
    c.publish_flow("no/x", 1, false, 2, b"denied").await;
    let (_, _, body) = http_get(http, "/metrics", None).await;
    assert_eq!(sample::<u64>(&body, "tern_acl_denied_total{action=\"publish\"}"), 1);
    assert_eq!(sample::<u64>(&body, "tern_acl_denied_total{action=\"subscribe\"}"), 1);
    assert_eq!(sample::<u64>(&body, "tern_inflight_messages"), 0);

    let mut p = Raw::connected(b.addr(), "acl-p", true).await;
    p.publish_flow("ok/1", 1, false, 1, b"a").await;
    p.publish_flow("ok/2", 1, false, 2, b"b").await;
    c.recv_publish().await;
    c.recv_publish().await;
    let (_, _, body) = http_get(http, "/metrics", None).await;
    assert_eq!(sample::<u64>(&body, "tern_inflight_messages"), 2, "sent, never acknowledged");
    assert!(sample::<u64>(&body, "process_resident_memory_bytes") > 0);
    assert!(sample::<u64>(&body, "process_open_fds") > 0);
}
