//! Area 23: dead letters (issue 17). What the broker could not deliver to a subscriber is
//! published on `$DLQ/<reason>/<original topic>`, one per lost subscriber copy, with the facts
//! in `dlq-*` user properties: a full offline queue, an expired message, a subscriber's PUBACK
//! 0x87, a packet over the subscriber's Maximum Packet Size, a poison message re-sent up to the
//! delivery limit. And the bounds: a dead letter's own loss is not dead-lettered, `max_rate`
//! caps a mass loss (the rest counted in /metrics), `#` never sees `$DLQ` [MQTT-4.7.2-1], and
//! no client may publish there. Also the opt-in `session_expired`, and the JSON format read by
//! an outside 3.1.1 client (mosquitto_sub).
//!
//! Dead letters are read by a raw MQTT 5 client, so properties are checked on the wire.

use std::time::{Duration, Instant};

use client_tests::http::{http_addr, http_get, sample};
use client_tests::v5::{self, Props};
use client_tests::*;

/// Dead letters on, with the default reasons.
const ON: &str = "[dead_letter]\nenabled = true\n";

/// A raw MQTT 5 client subscribed to `$DLQ/#` at QoS 1, acknowledging what it reads.
struct DlqReader(Raw);

impl DlqReader {
    async fn connect(b: &Broker, client_id: &str) -> DlqReader {
        let mut raw = Raw::connected5(b.addr(), client_id).await;
        assert_eq!(raw.subscribe5(1, &Props::new(), &[("$DLQ/#", 1)]).await, [1]);
        DlqReader(raw)
    }

    /// The next dead letter (acknowledged), or panic after `WAIT`.
    async fn next(&mut self) -> v5::Publish {
        let p = self.0.recv_skip_ping().await.publish5();
        if let Some(pid) = p.pid {
            self.0.send(&v5::puback(pid)).await;
        }
        p
    }

    /// Every dead letter until `QUIET` passes without one.
    async fn drain(&mut self) -> Vec<v5::Publish> {
        let mut got = Vec::new();
        while let ReadOutcome::Packet(p) = self.0.read(QUIET).await {
            let p = p.publish5();
            if let Some(pid) = p.pid {
                self.0.send(&v5::puback(pid)).await;
            }
            got.push(p);
        }
        got
    }
}

/// The value of the user property `key` (exactly one).
fn user(p: &v5::Publish, key: &str) -> String {
    let values: Vec<String> = p.props.users().into_iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect();
    assert_eq!(values.len(), 1, "one {key} in {p:?}");
    values[0].clone()
}

/// An MQTT 5 persistent subscriber (Session Expiry 5 min) to `filter` at QoS 1.
async fn persistent_subscriber(b: &Broker, client_id: &str, filter: &str, props: Props) -> Raw {
    let connect = v5::Connect::new(client_id).clean(false).props(props).session_expiry(300);
    let mut raw = Raw::handshake5(b.addr(), &connect).await.0;
    assert_eq!(raw.subscribe5(1, &Props::new(), &[(filter, 1)]).await, [1]);
    raw
}

/// Reconnects `client_id`'s MQTT 5 persistent session.
async fn resume(b: &Broker, client_id: &str) -> Raw {
    let connect = v5::Connect::new(client_id).clean(false).session_expiry(300);
    let (raw, ack) = Raw::handshake5(b.addr(), &connect).await;
    assert!(ack.session_present, "{client_id}: session kept");
    raw
}

/// /metrics of a broker started with `[http] bind = "127.0.0.1:0"`.
async fn metrics(b: &Broker) -> String {
    let (status, _, body) = http_get(http_addr(b).await, "/metrics", None).await;
    assert_eq!(status, 200);
    body
}

/// 1. `max_queued_messages = 5`, an offline persistent QoS 1 session, 8 publishes: the 3 it
/// cannot queue reach a `$DLQ/#` reader, naming the session and the publisher, with the
/// original payloads; the session still gets the 5 it queued.
#[tokio::test]
async fn queue_full_gives_one_dead_letter_per_dropped_message() {
    let b = Broker::start_with(&format!("[mqtt]\nmax_queued_messages = 5\n{ON}"));
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let mut victim = Raw::connected(b.addr(), "victim", false).await;
    assert_eq!(victim.subscribe(1, &[("q/#", 1)]).await, [1]);
    victim.disconnect().await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    for n in 0..8 {
        publisher.publish_wait(&format!("q/{n}"), 1, false, format!("payload-{n}")).await;
    }
    let letters = reader.drain().await;
    assert_eq!(letters.len(), 3, "{letters:?}");
    for (letter, n) in letters.iter().zip(5..) {
        assert_eq!(letter.topic, format!("$DLQ/queue_full/q/{n}"));
        assert_eq!(letter.payload, format!("payload-{n}").as_bytes(), "identical payload");
        assert_eq!(letter.qos, 1, "min(original QoS 1, 1)");
        assert!(!letter.retain);
        assert_eq!(user(letter, "dlq-reason"), "queue_full");
        assert_eq!(user(letter, "dlq-reason-code"), "0x97");
        assert_eq!(user(letter, "dlq-client-id"), "victim");
        assert_eq!(user(letter, "dlq-publisher"), "producer");
        assert_eq!(user(letter, "dlq-original-topic"), format!("q/{n}"));
        assert_eq!(user(letter, "dlq-original-qos"), "1");
        let time = user(letter, "dlq-time");
        assert!(
            time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
            "RFC 3339 UTC ms: {time}"
        );
    }
    let (mut victim, present) = Raw::handshake(b.addr(), &pkt::Connect::new("victim").clean(false)).await;
    assert!(present);
    for n in 0..5 {
        let p = victim.recv_publish().await;
        assert_eq!(p.payload, format!("payload-{n}").as_bytes());
        victim.send(&pkt::puback(p.pid.unwrap())).await;
    }
    victim.expect_nothing(QUIET).await;
}

/// 2. A v5 message with Message Expiry 1 s for an offline session that returns after 2 s: not
/// delivered [MQTT-3.3.2-5]; one dead letter without Message Expiry, `dlq-original-expiry=1`.
#[tokio::test]
async fn an_expired_message_is_a_dead_letter_without_expiry() {
    let b = Broker::start_with(ON);
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    persistent_subscriber(&b, "late", "e/#", Props::new()).await.disconnect5().await;
    let mut publisher = Raw::connected5(b.addr(), "producer").await;
    let props = Props::new().with(v5::MESSAGE_EXPIRY, 1).user("trace", "42");
    publisher.send(&v5::publish("e/1", 1, false, 1, &props, b"stale")).await;
    assert_eq!(publisher.recv().await.ack5().reason, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut late = resume(&b, "late").await;
    late.expect_nothing(QUIET).await;
    let letter = reader.next().await;
    assert_eq!(letter.topic, "$DLQ/expired/e/1");
    assert_eq!(letter.payload, b"stale");
    assert!(!letter.props.has(v5::MESSAGE_EXPIRY), "the dead letter does not expire: {letter:?}");
    assert_eq!(user(&letter, "dlq-original-expiry"), "1");
    assert_eq!(user(&letter, "dlq-reason"), "expired");
    assert_eq!(user(&letter, "dlq-client-id"), "late");
    assert_eq!(user(&letter, "trace"), "42", "the original's user properties are kept");
    assert!(reader.drain().await.is_empty());
}

/// 3. A v5 subscriber answers PUBACK 0x87 (Not authorized): a dead letter with that code; the
/// delivery is complete, so the message is not re-sent after a reconnect.
#[tokio::test]
async fn a_rejecting_puback_is_a_dead_letter_and_not_sent_again() {
    let b = Broker::start_with(ON);
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let mut picky = persistent_subscriber(&b, "picky", "r/#", Props::new()).await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    publisher.publish_wait("r/1", 1, false, "unwanted").await;
    let p = picky.recv_skip_ping().await.publish5();
    picky.send(&v5::ack(0x40, p.pid.unwrap(), 0x87)).await;
    let letter = reader.next().await;
    assert_eq!(letter.topic, "$DLQ/rejected/r/1");
    assert_eq!(letter.payload, b"unwanted");
    assert_eq!(user(&letter, "dlq-reason-code"), "0x87");
    assert_eq!(user(&letter, "dlq-client-id"), "picky");
    drop(picky);
    let mut picky = resume(&b, "picky").await;
    picky.expect_nothing(QUIET).await;
    assert!(reader.drain().await.is_empty());
}

/// 4. A subscriber with Maximum Packet Size 128 and a 1 KiB message: it gets nothing and stays
/// connected [MQTT-3.1.2-25]; one dead letter (0x95) carries the whole payload.
#[tokio::test]
async fn a_message_too_large_for_the_subscriber_is_a_dead_letter() {
    let b = Broker::start_with(ON);
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let mut small =
        persistent_subscriber(&b, "small", "big/#", Props::new().with(v5::MAXIMUM_PACKET_SIZE, 128)).await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    let payload: Vec<u8> = (0..1024).map(|i| i as u8).collect();
    publisher.publish_wait("big/1", 1, false, payload.clone()).await;
    let letter = reader.next().await;
    assert_eq!(letter.topic, "$DLQ/too_large/big/1");
    assert_eq!(letter.payload, payload);
    assert_eq!(user(&letter, "dlq-reason-code"), "0x95");
    assert_eq!(user(&letter, "dlq-client-id"), "small");
    small.expect_nothing(QUIET).await;
    small.send(&pkt::pingreq()).await;
    assert_eq!(small.recv().await.header, 0xd0, "still connected: PINGRESP");
    assert!(reader.drain().await.is_empty());
}

/// 5. `delivery_limit = 3`: a subscriber that takes the same QoS 1 message on three
/// connections and never acknowledges it does not get it a fourth time; one dead letter.
#[tokio::test]
async fn a_poison_message_stops_at_the_delivery_limit() {
    let b = Broker::start_with(&format!("{ON}reasons = [\"delivery_limit\"]\ndelivery_limit = 3\n"));
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let mut poison = persistent_subscriber(&b, "crashy", "p/#", Props::new()).await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    publisher.publish_wait("p/1", 1, false, "poison").await;
    for delivery in 1..=3 {
        let p = poison.recv_skip_ping().await.publish5();
        assert_eq!(p.payload, b"poison", "delivery {delivery}");
        assert_eq!(p.dup, delivery > 1, "re-sent with DUP [MQTT-3.3.1-1]");
        drop(poison); // crashes before PUBACK
        poison = resume(&b, "crashy").await;
    }
    poison.expect_nothing(QUIET).await;
    let letter = reader.next().await;
    assert_eq!(letter.topic, "$DLQ/delivery_limit/p/1");
    assert_eq!(user(&letter, "dlq-client-id"), "crashy");
    assert!(reader.drain().await.is_empty());
    drop(poison);
    resume(&b, "crashy").await.expect_nothing(QUIET).await;
}

/// 6a. A dead letter lost for a `$DLQ` reader's full queue is not dead-lettered again (counted
/// as suppressed, cause "loop"): another reader sees only the first-order dead letters.
#[tokio::test]
async fn a_dead_letter_readers_own_overflow_makes_no_dead_letter() {
    let config = format!("[mqtt]\nmax_queued_messages = 5\n{ON}[http]\nbind = \"127.0.0.1:0\"\n");
    let b = Broker::start_with(&config);
    // An offline reader whose queue takes 5 dead letters.
    let mut offline = Raw::connected(b.addr(), "dlq-offline", false).await;
    assert_eq!(offline.subscribe(1, &[("$DLQ/#", 1)]).await, [1]);
    offline.disconnect().await;
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let mut victim = Raw::connected(b.addr(), "victim", false).await;
    assert_eq!(victim.subscribe(1, &[("q/#", 1)]).await, [1]);
    victim.disconnect().await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    for n in 0..20 {
        publisher.publish_wait(&format!("q/{n}"), 1, false, format!("{n}")).await;
        // One at a time: the live reader keeps up, so only the offline reader overflows.
        if n >= 5 {
            assert_eq!(reader.next().await.topic, format!("$DLQ/queue_full/q/{n}"));
        }
    }
    assert!(reader.drain().await.is_empty(), "no dead letter of a dead letter");
    let m = metrics(&b).await;
    assert_eq!(sample::<u64>(&m, "tern_dead_letters_total{reason=\"queue_full\"}"), 15);
    assert_eq!(sample::<u64>(&m, "tern_dead_letters_suppressed_total{cause=\"loop\"}"), 10, "{m}");
}

/// 6b. 10,000 losses at once (QoS 0 messages over a subscriber's Maximum Packet Size) with
/// `max_rate = 100`: at most one burst of 100 plus 100 per second of dead letters; every loss
/// is either a dead letter or counted as rate-limited.
#[tokio::test]
async fn max_rate_bounds_a_mass_loss_and_counts_the_rest() {
    let b = Broker::start_with(&format!("{ON}max_rate = 100\n[http]\nbind = \"127.0.0.1:0\"\n"));
    let http = http_addr(&b).await;
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let connect = v5::Connect::new("small").props(Props::new().with(v5::MAXIMUM_PACKET_SIZE, 128));
    let mut small = Raw::handshake5(b.addr(), &connect).await.0;
    assert_eq!(small.subscribe5(1, &Props::new(), &[("flood/#", 0)]).await, [0]);
    let mut publisher = Raw::connected(b.addr(), "flooder", true).await;
    let flood: Vec<u8> =
        (0..10_000).flat_map(|_| pkt::publish("flood/x", 0, false, false, 0, &[7; 200])).collect();
    let started = Instant::now();
    publisher.send(&flood).await;
    let counted = |m: &str| {
        sample::<u64>(m, "tern_dead_letters_total{reason=\"too_large\"}")
            + sample::<u64>(m, "tern_dead_letters_suppressed_total{cause=\"rate_limited\"}")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut m = http_get(http, "/metrics", None).await.2;
    while counted(&m) < 10_000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = http_get(http, "/metrics", None).await.2;
    }
    let elapsed = started.elapsed();
    assert_eq!(counted(&m), 10_000, "every loss is a dead letter or counted: {m}");
    assert_eq!(sample::<u64>(&m, "tern_messages_dropped_total{reason=\"too_large\"}"), 10_000);
    let letters = reader.drain().await;
    let published = sample::<u64>(&m, "tern_dead_letters_total{reason=\"too_large\"}");
    assert_eq!(letters.len() as u64, published, "the reader got each one published");
    let bound = 100 + (100.0 * elapsed.as_secs_f64()).ceil() as usize;
    assert!(letters.len() <= bound, "{} dead letters in {elapsed:?} (bound {bound})", letters.len());
    println!("10,000 losses counted within {elapsed:?}: {} dead letters", letters.len());
    if elapsed <= Duration::from_secs(1) {
        assert!(letters.len() <= 200);
    }
    assert!(letters.iter().all(|l| l.topic == "$DLQ/too_large/flood/x"));
    small.expect_nothing(QUIET).await;
}

/// 6c. A `#` subscriber never receives a dead letter [MQTT-4.7.2-1], while a `$DLQ/#` reader
/// does; with nobody reading `$DLQ`, nothing is built (counted as "no_reader").
#[tokio::test]
async fn hash_subscribers_never_see_dead_letters() {
    let b =
        Broker::start_with(&format!("[mqtt]\nmax_queued_messages = 1\n{ON}[http]\nbind = \"127.0.0.1:0\"\n"));
    let mut everything = Mqtt::connect(opts(&b, "everything")).await;
    everything.subscribe("#", 1).await;
    everything.subscribe("+/queue_full/#", 1).await;
    let mut victim = Raw::connected(b.addr(), "victim", false).await;
    assert_eq!(victim.subscribe(1, &[("h/#", 1)]).await, [1]);
    victim.disconnect().await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    publisher.publish_wait("h/1", 1, false, "kept").await;
    publisher.publish_wait("h/2", 1, false, "nobody reads $DLQ").await;
    let m = metrics(&b).await;
    assert_eq!(sample::<u64>(&m, "tern_dead_letters_suppressed_total{cause=\"no_reader\"}"), 1);
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    publisher.publish_wait("h/3", 1, false, "lost").await;
    assert_eq!(reader.next().await.topic, "$DLQ/queue_full/h/3");
    for n in 1..=3 {
        assert_eq!(everything.recv().await.topic, format!("h/{n}"));
    }
    everything.expect_silence().await;
}

/// 6d. `$DLQ/` is the broker's: an MQTT 5 PUBLISH there is refused with PUBACK 0x87, a 3.1.1
/// one is acknowledged and dropped (3.1.1 has no refusal), a will there refuses the CONNECT;
/// a `$DLQ/#` reader sees none of them.
#[tokio::test]
async fn clients_cannot_publish_to_dlq() {
    let b = Broker::start_with(ON);
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let mut v5_client = Raw::connected5(b.addr(), "forger5").await;
    v5_client.send(&v5::publish("$DLQ/x", 1, false, 1, &Props::new(), b"fake")).await;
    let ack = v5_client.recv().await.ack5();
    assert_eq!((ack.pid, ack.reason), (1, 0x87), "Not authorized");
    let mut v3_client = Raw::connected(b.addr(), "forger3", true).await;
    v3_client.publish_flow("$DLQ/queue_full/x", 1, false, 1, b"fake").await;
    let will = v5::Connect::new("forger-will").will("$DLQ/x", b"fake", 0, false, Props::new());
    let (_, connack) = Raw::connect5(b.addr(), &will).await;
    assert_eq!(connack.reason, 0x87, "will topic under $DLQ");
    assert!(reader.drain().await.is_empty());
}

/// Runs `mosquitto_sub` against `b` until it exits (bounded); returns its stdout.
async fn mosquitto_sub(b: &Broker, args: &[&str]) -> String {
    let run = tokio::process::Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(args)
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(20), run).await.expect("mosquitto_sub exits").expect("run");
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// `format = "json"` read by an outside MQTT 3.1.1 client (mosquitto_sub, persistent session):
/// the facts as JSON fields and the payload in base64.
#[tokio::test]
async fn json_dead_letters_reach_a_3_1_1_mosquitto_sub() {
    let b = Broker::start_with(&format!("[mqtt]\nmax_queued_messages = 1\n{ON}format = \"json\"\n"));
    let reader = ["-c", "-i", "dlq-json", "-q", "1", "-t", "$DLQ/#"];
    mosquitto_sub(&b, &[&reader[..], &["-E"]].concat()).await;
    let mut victim = Raw::connected(b.addr(), "victim", false).await;
    assert_eq!(victim.subscribe(1, &[("j/#", 1)]).await, [1]);
    victim.disconnect().await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    publisher.publish_wait("j/1", 1, false, "kept").await;
    publisher.publish_wait("j/2", 1, false, "lost in the queue").await;
    let out = mosquitto_sub(&b, &[&reader[..], &["-v", "-C", "1", "-W", "5"]].concat()).await;
    let (topic, json) = out.trim_end().split_once(' ').unwrap_or_else(|| panic!("no dead letter: {out:?}"));
    assert_eq!(topic, "$DLQ/queue_full/j/2");
    let doc: serde_json::Value = serde_json::from_str(json).expect("a JSON document");
    assert_eq!(doc["reason"], "queue_full");
    assert_eq!(doc["reason_code"], "0x97");
    assert_eq!(doc["original_topic"], "j/2");
    assert_eq!(doc["client_id"], "victim");
    assert_eq!(doc["publisher"], "producer");
    assert_eq!(doc["original_qos"], "1");
    assert_eq!(doc["payload"], "bG9zdCBpbiB0aGUgcXVldWU=", "base64 of the original payload");
    assert_eq!(doc["payload_size"], 17);
}

/// Opt-in `session_expired`: an MQTT 5 session with Session Expiry 1 s leaves with a message
/// queued; when it expires [MQTT-3.1.2-23] the message becomes a dead letter.
#[tokio::test]
async fn an_expired_session_leaves_its_queued_messages_as_dead_letters() {
    let b = Broker::start_with(&format!("{ON}reasons = [\"session_expired\"]\n"));
    let mut reader = DlqReader::connect(&b, "dlq-reader").await;
    let connect = v5::Connect::new("brief").clean(false).session_expiry(1);
    let mut brief = Raw::handshake5(b.addr(), &connect).await.0;
    assert_eq!(brief.subscribe5(1, &Props::new(), &[("s/#", 1)]).await, [1]);
    brief.disconnect5().await;
    let mut publisher = Mqtt::connect(opts(&b, "producer")).await;
    publisher.publish_wait("s/1", 1, false, "never fetched").await;
    let letter = reader.next().await;
    assert_eq!(letter.topic, "$DLQ/session_expired/s/1");
    assert_eq!(letter.payload, b"never fetched");
    assert_eq!(user(&letter, "dlq-client-id"), "brief");
    assert!(reader.drain().await.is_empty());
}
