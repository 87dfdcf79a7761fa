//! Area 22: the JetStream sink (`kind = "jetstream"`) and nats-server as an MQTT upstream.
//! Each test starts its own `nats-server` 2.9 with JetStream (Debian package) on a loopback
//! port and reads the stream back through a push consumer over a raw NATS socket
//! (`client_tests::nats`); payloads are "<publisher>:<sequence>" checked by
//! `client_tests::bridge::check_stream`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use client_tests::bridge::*;
use client_tests::nats::*;
use client_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The stream every test creates, on the subjects under the bridges' prefix.
const STREAM: &str = "TERN";

/// An edge config with one JetStream bridge "cloud" to `nats`, forwarding `js/#` (or the
/// topics in `extra`, which adds keys to the table).
fn js_config(nats: SocketAddr, extra: &str) -> String {
    edge_config(
        nats,
        &format!(
            "kind = \"jetstream\"\njetstream = {{ stream = \"{STREAM}\", subject_prefix = \"edge\", \
             ack_timeout_ms = 1000 }}\n{extra}"
        ),
    )
}

/// Sequence numbers of `publisher` in the messages read from the stream, in stream order.
fn sequences(messages: &[NatsMsg], publisher: &str) -> Vec<usize> {
    messages.iter().map(|m| parse(&m.payload)).filter(|(p, _)| p == publisher).map(|(_, s)| s).collect()
}

/// Publishes `seqs` from "edge-pub" to `topic` at QoS 1, each awaiting its PUBACK.
async fn publish_seqs(publisher: &mut Mqtt, topic: &str, seqs: std::ops::Range<usize>) {
    for seq in seqs {
        publisher.publish_wait(topic, 1, false, payload("edge-pub", seq)).await;
    }
}

/// Reads `n` messages from the stream and asserts that they are "edge-pub"'s 0..n, each once.
async fn assert_stream_holds_each_once(client: &mut NatsClient, n: usize) -> Vec<NatsMsg> {
    let messages = client.read_stream(STREAM, n, ARRIVE).await;
    let report = check_stream(&sequences(&messages, "edge-pub"), &(0..n).collect());
    assert!(report.missing.is_empty() && report.duplicates == 0, "{report:?}");
    messages
}

/// Publishes `seqs` at QoS 1 in one pipelined batch (packet id = seq % 60000 + 1) and reads
/// the PUBACKs; returns those acknowledged (fewer when the broker went away).
async fn publish_batch(p: &mut Raw, seqs: std::ops::Range<usize>) -> Vec<usize> {
    let ids: BTreeMap<u16, usize> = seqs.clone().map(|s| ((s % 60_000) as u16 + 1, s)).collect();
    for (&id, &seq) in &ids {
        p.send_lenient(&pkt::publish("js/t", 1, false, false, id, &payload("p", seq))).await;
    }
    let mut acked = Vec::new();
    while acked.len() < ids.len() {
        match p.read(WAIT).await {
            ReadOutcome::Packet(ack) if ack.kind() == 4 => acked.extend(ids.get(&ack.pid())),
            _ => break,
        }
    }
    acked
}

// (a) Issue test 9: a 20,000-message QoS 1 stream to a JetStream stream, the edge killed with
// SIGKILL twice. Before each kill the NATS server is paused (SIGSTOP), so the bridge's window
// is full of publishes the server has received but not acknowledged; two more batches are
// acknowledged locally (queued durably), one more is sent and the edge killed before its
// PUBACKs. The server resumes, processes what it had received (the messages are stored), and
// the restarted edge re-sends its window with the same Nats-Msg-Id: the stream's duplicate
// window drops the copies. The consumer finds every acknowledged sequence exactly once, the
// in-doubt ones (sent, never acknowledged) at most once, and no Msg-Id twice.
#[tokio::test]
async fn two_kill9_of_the_edge_leave_each_message_once_in_the_stream() {
    const N: usize = 20_000;
    const BATCH: usize = 100;
    let nats = NatsServer::start(free_port()).await;
    let mut client = NatsClient::connect(nats.addr).await;
    client.create_stream(STREAM, &["edge.>"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = js_config(nats.addr, "max_inflight = 100\ntopics = [{ pattern = \"js/#\" }]");
    let launch = || Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut edge = launch();
    assert!(edge.wait_log("bridge connected", WAIT).await, "bridge linked: {}", edge.logs());

    let started = Instant::now();
    let mut acked = BTreeSet::new();
    let mut in_doubt = BTreeSet::new();
    let mut seq = 0;
    for round in 0..3 {
        let target = (round + 1) * N / 3;
        let mut p = Raw::connected(edge.addr(), &format!("pub-{round}"), true).await;
        let last = if round < 2 { target - 3 * BATCH } else { N };
        while seq < last {
            let end = (seq + BATCH).min(last);
            let got = publish_batch(&mut p, seq..end).await;
            assert_eq!(got.len(), end - seq, "the edge acknowledges every publish");
            acked.extend(got);
            seq = end;
        }
        if round == 2 {
            break;
        }
        nats.pause(true);
        for _ in 0..2 {
            acked.extend(publish_batch(&mut p, seq..seq + BATCH).await);
            seq += BATCH;
        }
        for s in seq..seq + BATCH {
            p.send_lenient(&pkt::publish("js/t", 1, false, false, (s % 60_000) as u16 + 1, &payload("p", s)))
                .await;
            in_doubt.insert(s);
        }
        seq += BATCH;
        edge.kill9().await;
        nats.pause(false);
        edge = launch();
        let resent =
            |l: &str| l.contains("bridge linked") && l.contains("resent=") && !l.contains("resent=0");
        assert!(
            edge.wait_log_line(resent, WAIT).await,
            "the restarted bridge re-sends its window: {}",
            edge.logs()
        );
    }
    let publish_time = started.elapsed();

    let messages = client.read_stream(STREAM, acked.len(), Duration::from_secs(60)).await;
    let got = sequences(&messages, "p");
    let report = check_stream(&got, &acked);
    let in_doubt_arrived = in_doubt.iter().filter(|s| got.contains(s)).count();
    let ids: BTreeSet<&str> = messages.iter().filter_map(|m| m.header("Nats-Msg-Id")).collect();
    eprintln!(
        "jetstream kill -9 x2: {} acknowledged in {publish_time:?}, {} in doubt ({in_doubt_arrived} arrived), \
         {} in the stream, {} duplicates, {} reordered, {} missing",
        acked.len(),
        in_doubt.len(),
        got.len(),
        report.duplicates,
        report.reordered.len(),
        report.missing.len()
    );
    assert!(report.missing.is_empty(), "acknowledged but not in the stream: {:?}", report.missing);
    assert_eq!(report.duplicates, 0, "a sequence twice in the stream");
    assert!(got.iter().all(|s| acked.contains(s) || in_doubt.contains(s)), "unknown sequence");
    assert_eq!(ids.len(), messages.len(), "every message has its own Nats-Msg-Id");
    assert_eq!(client.stream_messages(STREAM).await, messages.len() as u64);
}

// (b) NATS down when the edge starts: the state topic says 0, publishes are acknowledged
// (queued durably); once nats-server is up (the stream created after it), the bridge links and
// every queued message reaches the stream once. Early publishes may meet "no responders"
// (503, no stream yet): they stay queued and go again after the ack timeout.
#[tokio::test]
async fn messages_queued_while_nats_is_down_arrive_once_it_is_up() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let edge = Broker::start_with(&js_config(addr, "topics = [{ pattern = \"js/#\" }]"));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "0", WAIT).await;
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publish_seqs(&mut publisher, "js/down", 0..100).await;
    let nats = NatsServer::start(port).await;
    let mut client = NatsClient::connect(nats.addr).await;
    client.create_stream(STREAM, &["edge.>"]).await;
    wait_state(&mut state, "1", ARRIVE).await;
    let messages = assert_stream_holds_each_once(&mut client, 100).await;
    assert!(messages.iter().all(|m| m.subject == "edge.js.down"), "{:?}", messages.first());
}

// (c) Topic -> subject mapping: levels become tokens under the prefix; what NATS refuses in a
// subject token (empty level, '.', space, '*', '>') and '%', '$' are percent-escaped, as the
// README documents.
#[tokio::test]
async fn odd_topics_map_to_escaped_subjects() {
    let nats = NatsServer::start(free_port()).await;
    let mut client = NatsClient::connect(nats.addr).await;
    client.create_stream(STREAM, &["edge.>"]).await;
    let edge = Broker::start_with(&js_config(nats.addr, "topics = [{ pattern = \"odd/#\" }]"));
    assert!(edge.wait_log("bridge connected", WAIT).await);
    let cases = [
        ("odd/plain", "edge.odd.plain"),
        ("odd/a.b/c d", "edge.odd.a%2Eb.c%20d"),
        ("odd//x/", "edge.odd.%.x.%"),
        ("odd/*/>", "edge.odd.%2A.%3E"),
        ("odd/$x/50%", "edge.odd.%24x.50%25"),
    ];
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for (seq, (topic, _)) in cases.iter().enumerate() {
        publisher.publish_wait(topic, 1, false, payload("edge-pub", seq)).await;
    }
    let messages = client.read_stream(STREAM, cases.len(), ARRIVE).await;
    assert_eq!(messages.len(), cases.len(), "{messages:?}");
    for m in &messages {
        let (_, seq) = parse(&m.payload);
        assert_eq!(m.subject, cases[seq].1, "topic {}", cases[seq].0);
    }
}

/// The test's half of a NATS server, line by line (`connect` sends INFO and answers the
/// client's PING).
struct ScriptedNats {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// One HPUB as received.
#[derive(Debug, PartialEq, Eq)]
struct Hpub {
    subject: String,
    reply: String,
    headers: String,
    payload: Vec<u8>,
}

impl ScriptedNats {
    async fn accept(listener: &TcpListener) -> ScriptedNats {
        let (stream, _) =
            tokio::time::timeout(WAIT, listener.accept()).await.expect("bridge connects").unwrap();
        let mut s = ScriptedNats { stream, buf: Vec::new() };
        s.send("INFO {\"server_id\":\"scripted\",\"headers\":true,\"max_payload\":1048576,\"proto\":1}\r\n")
            .await;
        let connect = s.line(WAIT).await.expect("CONNECT");
        assert!(connect.starts_with("CONNECT {") && connect.contains("\"headers\":true"), "{connect}");
        assert_eq!(s.line(WAIT).await.as_deref(), Some("PING"));
        s.send("PONG\r\n").await;
        let sub = s.line(WAIT).await.expect("SUB");
        assert!(sub.starts_with("SUB _INBOX."), "{sub}");
        s
    }

    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
    }

    async fn line(&mut self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 2);
                return Some(line);
            }
            let mut chunk = [0u8; 4096];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// The next HPUB within `within` (PINGs answered), `None` if none came.
    async fn hpub(&mut self, within: Duration) -> Option<Hpub> {
        let deadline = Instant::now() + within;
        loop {
            let line = self.line(deadline.saturating_duration_since(Instant::now())).await?;
            if line == "PING" {
                self.send("PONG\r\n").await;
                continue;
            }
            let f: Vec<&str> = line.split(' ').collect();
            assert_eq!((f[0], f.len()), ("HPUB", 5), "{line}");
            let (header_len, total): (usize, usize) = (f[3].parse().unwrap(), f[4].parse().unwrap());
            while self.buf.len() < total + 2 {
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.unwrap();
                self.buf.extend_from_slice(&chunk[..n]);
            }
            let body: Vec<u8> = self.buf.drain(..total + 2).take(total).collect();
            return Some(Hpub {
                subject: f[1].into(),
                reply: f[2].into(),
                headers: String::from_utf8_lossy(&body[..header_len]).into_owned(),
                payload: body[header_len..].to_vec(),
            });
        }
    }
}

fn msg_id(h: &Hpub) -> &str {
    h.headers.lines().find_map(|l| l.strip_prefix("Nats-Msg-Id: ")).expect("Nats-Msg-Id header")
}

// (d) Ack timeout, against a scripted server: no PubAck for the first publish, so after
// `ack_timeout_ms` it comes again with the same subject, reply subject and Nats-Msg-Id; once
// acknowledged nothing more comes. After a kill -9 and a restart with an empty queue, the next
// message gets a Msg-Id never used before (queue keys do not repeat across restarts, else the
// stream's duplicate window would drop it).
#[tokio::test]
async fn without_a_puback_the_same_msg_id_is_sent_again_and_ids_never_repeat() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[[bridge]]\nname = \"cloud\"\nkind = \"jetstream\"\naddresses = [\"{addr}\"]\nkeep_alive_secs = 60\n\
         reconnect_delay_min_ms = 50\nreconnect_delay_max_ms = 200\ntopics = [{{ pattern = \"js/#\" }}]\n\
         jetstream = {{ stream = \"S\", ack_timeout_ms = 400 }}\n"
    );
    let mut edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut nats = ScriptedNats::accept(&listener).await;
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publisher.publish_wait("js/a", 1, false, payload("edge-pub", 1)).await;
    let first = nats.hpub(WAIT).await.expect("the message is published");
    let sent = Instant::now();
    assert_eq!(first.subject, "js.a");
    assert!(first.headers.contains("Nats-Expected-Stream: S\r\n"), "{first:?}");
    let again = nats.hpub(WAIT).await.expect("sent again without a PubAck");
    let waited = sent.elapsed();
    assert!(waited >= Duration::from_millis(350), "re-sent after {waited:?}, before the ack timeout");
    assert_eq!(again, first, "same subject, reply, Msg-Id and payload");
    let puback = r#"{"stream":"S","seq":1}"#;
    nats.send(&format!("MSG {} 1 {}\r\n{puback}\r\n", first.reply, puback.len())).await;
    assert_eq!(nats.hpub(Duration::from_secs(1)).await, None, "acknowledged: not sent again");

    drop(publisher);
    edge.kill9().await;
    let edge = Broker::launch(Launch::config(&config).data_dir(dir.path()));
    let mut nats = ScriptedNats::accept(&listener).await;
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publisher.publish_wait("js/b", 1, false, payload("edge-pub", 2)).await;
    let second = nats.hpub(WAIT).await.expect("the message after the restart");
    assert_eq!(parse(&second.payload), ("edge-pub".to_string(), 2), "the acknowledged one is not re-sent");
    assert_ne!(msg_id(&second), msg_id(&first), "a queue key used before the restart");
    assert!(msg_id(&first).starts_with("tern-bridge-cloud:"), "{}", msg_id(&first));
}

// (e) Issue test 7: nats-server's MQTT port (3.1.1, QoS 0/1 only: a QoS 2 PUBLISH closes the
// connection) as an ordinary MQTT bridge upstream with `max_qos = 1`. A local QoS 2 publish on
// a QoS 2 topic entry goes upstream at QoS 1 and reaches an MQTT subscriber of nats-server;
// the bridge connects once and stays connected (no reconnect loop) over several keep-alives.
#[tokio::test]
async fn nats_mqtt_upstream_gets_qos2_forwards_at_qos1_without_a_reconnect_loop() {
    let nats = NatsServer::start_with_mqtt().await;
    let mqtt = nats.mqtt.unwrap();
    let mut up_opts = rumqttc::MqttOptions::new("up-sub", "127.0.0.1", mqtt.port());
    up_opts.set_keep_alive(Duration::from_secs(30));
    let mut sub = Mqtt::connect(up_opts).await;
    sub.subscribe("q/#", 1).await;
    let edge =
        Broker::start_with(&edge_config(mqtt, "max_qos = 1\ntopics = [{ pattern = \"q/#\", qos = 2 }]"));
    let mut state = state_watcher(&edge).await;
    wait_state(&mut state, "1", WAIT).await;
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    for seq in 0..10 {
        publisher.publish_wait("q/t", 2, false, payload("edge-pub", seq)).await;
    }
    let got = collect(&mut sub, "edge-pub", &(0..10).collect()).await;
    let report = check_stream(&got, &(0..10).collect());
    assert!(report.missing.is_empty() && report.reordered.is_empty(), "{report:?}");
    // Two keep-alive periods (2 s) of PINGREQ/PINGRESP with nats-server.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let logs = edge.logs();
    assert_eq!(logs.matches("bridge connected").count(), 1, "one connection, kept: {logs}");
    // The one "disconnected" is the state published at start, before the first link.
    assert_eq!(logs.matches("bridge disconnected").count(), 1, "{logs}");
    assert!(!logs.contains("link lost"), "{logs}");
}

// (d) SIGHUP with a JetStream bridge linked: a changed bridge restarts with its queue (the
// reload does not wait for the link to drop), and a removed one stops. 10 messages go through
// before the reload and 10 after it, each once in the stream; after the bridge is removed,
// what is published on its topics goes nowhere.
#[tokio::test]
async fn sighup_restarts_a_linked_jetstream_bridge_and_removes_it() {
    let nats = NatsServer::start(free_port()).await;
    let mut client = NatsClient::connect(nats.addr).await;
    client.create_stream(STREAM, &["edge.>"]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tern.toml");
    let bridge = |ack_timeout_ms: u32| {
        js_config(nats.addr, "topics = [{ pattern = \"js/#\" }]")
            .replace("ack_timeout_ms = 1000", &format!("ack_timeout_ms = {ack_timeout_ms}"))
    };
    std::fs::write(&file, bridge(1000)).unwrap();
    let path = file.to_str().unwrap();
    let edge = Broker::launch(Launch::default().args(&["-c", path, "--bind", "127.0.0.1", "-p", "0"]));
    assert!(edge.wait_log("bridge connected", WAIT).await, "{}", edge.logs());
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publish_seqs(&mut publisher, "js/r", 0..10).await;

    std::fs::write(&file, bridge(2000)).unwrap();
    edge.sighup();
    assert!(
        edge.wait_log("bridge settings changed: restarting it with its queue", WAIT).await,
        "the reload stops the linked bridge: {}",
        edge.logs()
    );
    publish_seqs(&mut publisher, "js/r", 10..20).await;
    assert_stream_holds_each_once(&mut client, 20).await;

    std::fs::write(&file, "").unwrap();
    edge.sighup();
    assert!(edge.wait_log("bridge removed from the configuration", WAIT).await, "{}", edge.logs());
    publisher.publish_wait("js/r", 1, false, payload("edge-pub", 20)).await;
    tokio::time::sleep(QUIET).await;
    assert_eq!(client.stream_messages(STREAM).await, 20, "a removed bridge forwards nothing");
}

// (e) `max_rate = 20` holds for a JetStream sink as for an MQTT upstream: 60 messages
// published at once reach the subject at one second's burst (20) and then 20 per second, so
// the last arrives after about 2 s (not before 1.5 s), all in order.
#[tokio::test]
async fn max_rate_caps_the_rate_into_jetstream() {
    let nats = NatsServer::start(free_port()).await;
    let mut client = NatsClient::connect(nats.addr).await;
    client.create_stream(STREAM, &["edge.>"]).await;
    let sid = client.subscribe("edge.>").await;
    let edge = Broker::start_with(&js_config(nats.addr, "max_rate = 20\ntopics = [{ pattern = \"js/#\" }]"));
    assert!(edge.wait_log("bridge connected", WAIT).await, "{}", edge.logs());
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    let start = Instant::now();
    for seq in 0..60 {
        publisher.publish("js/m", 1, false, payload("edge-pub", seq)).await;
    }
    publisher.wait_acks(60).await;
    let mut got = Vec::new();
    while got.len() < 60 {
        match client.next_msg(ARRIVE).await {
            Some(m) if m.sid == sid => got.push(parse(&m.payload).1),
            Some(_) => {}
            None => panic!("only {} of 60 arrived: {got:?}", got.len()),
        }
    }
    let took = start.elapsed();
    assert_eq!(got, (0..60).collect::<Vec<_>>(), "in order, each once");
    assert!(took >= Duration::from_millis(1500), "60 messages at 20/s took only {took:?}");
}

// (f) TLS to NATS: the bridge upgrades after the server's INFO, verifies the server's
// certificate against its CA for the address's IP, and forwards; the server's /connz lists the
// bridge's connection with a TLS version. A bridge trusting another CA never links (logged).
// A server that requires TLS refuses a bridge without a tls table, which says so in its log.
#[tokio::test]
async fn tls_to_nats_is_verified_and_a_wrong_ca_never_links() {
    use client_tests::pki::Pki;
    let pki = Pki::new("nats");
    let server = pki.server("nats");
    let nats = NatsServer::start_with_tls(&server.cert, &server.key, false).await;
    let mut client = NatsClient::connect(nats.addr).await;
    client.create_stream(STREAM, &["edge.>"]).await;
    let tls = |ca: &std::path::Path| format!("tls = {{ ca = {ca:?} }}\ntopics = [{{ pattern = \"js/#\" }}]");
    let edge = Broker::start_with(&js_config(nats.addr, &tls(&pki.ca_file)));
    assert!(edge.wait_log("bridge connected", WAIT).await, "linked over TLS: {}", edge.logs());
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publish_seqs(&mut publisher, "js/s", 0..10).await;
    assert_stream_holds_each_once(&mut client, 10).await;
    let (status, _, body) = client_tests::http::http_get(nats.monitor.unwrap(), "/connz", None).await;
    assert_eq!(status, 200, "{body}");
    let connz: serde_json::Value = serde_json::from_str(&body).unwrap();
    let bridge = connz["connections"].as_array().unwrap().iter().find(|c| c["name"] == "tern-bridge-cloud");
    let bridge = bridge.unwrap_or_else(|| panic!("no bridge connection in {connz}"));
    assert!(bridge["tls_version"].as_str().is_some_and(|v| v.starts_with("1.")), "not TLS: {bridge}");

    let other = Pki::new("other");
    let stranger = Broker::start_with(&js_config(nats.addr, &tls(&other.ca_file)));
    assert!(stranger.wait_log("cannot connect", WAIT).await, "the failed verification is logged");
    assert!(!stranger.wait_log("bridge connected", QUIET).await, "never linked with an unverified server");

    let strict = NatsServer::start_with_tls(&server.cert, &server.key, true).await;
    let plain = Broker::start_with(&js_config(strict.addr, "topics = [{ pattern = \"js/#\" }]"));
    assert!(
        plain.wait_log("the NATS server requires TLS: give the bridge a tls table", WAIT).await,
        "{}",
        plain.logs()
    );
    let secured = Broker::start_with(&js_config(strict.addr, &tls(&pki.ca_file)));
    assert!(secured.wait_log("bridge connected", WAIT).await, "{}", secured.logs());
}

// (g) NKEY authentication: the bridge signs the server's nonce with the user seed from
// `nkey_seed_file` and forwards; a bridge with another user's seed is refused by the server
// (Authorization Violation, logged) and never links. A seed file that holds no user seed stops
// the broker at start, naming the key.
#[tokio::test]
async fn an_nkey_seed_authenticates_the_bridge_and_a_wrong_one_never_links() {
    let (seed, public) = nkey_user();
    let nats = NatsServer::start_with_nkey(&public).await;
    let mut client = NatsClient::connect(nats.addr).await;
    client.create_stream(STREAM, &["edge.>"]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = |seed_text: &str, file: &str| {
        let path = dir.path().join(file);
        std::fs::write(&path, format!("{seed_text}\n")).unwrap();
        js_config(nats.addr, "topics = [{ pattern = \"js/#\" }]").replace(
            "ack_timeout_ms = 1000 }",
            &format!("ack_timeout_ms = 1000, nkey_seed_file = {:?} }}", path.to_str().unwrap()),
        )
    };
    let edge = Broker::start_with(&config(&seed, "user.nk"));
    assert!(edge.wait_log("bridge connected", WAIT).await, "{}", edge.logs());
    let mut publisher = Mqtt::connect(opts(&edge, "edge-pub")).await;
    publish_seqs(&mut publisher, "js/n", 0..10).await;
    assert_stream_holds_each_once(&mut client, 10).await;

    let (other_seed, _) = nkey_user();
    let stranger = Broker::start_with(&config(&other_seed, "other.nk"));
    assert!(stranger.wait_log("Authorization Violation", WAIT).await, "{}", stranger.logs());
    assert!(!stranger.wait_log("bridge connected", QUIET).await, "never linked with an unknown key");

    let exited = Broker::run_to_exit(Launch::config(&config(&public, "public.nk")), WAIT);
    assert_eq!(exited.status.and_then(|s| s.code()), Some(1), "exits with an error: {}", exited.logs);
    assert!(
        exited.logs.contains("bridge.jetstream.nkey_seed_file") && exited.logs.contains("public key"),
        "{}",
        exited.logs
    );
}
