//! Area 10 (MQTT 5): interoperability with `mosquitto_pub -V mqttv5` / `mosquitto_sub -V mqttv5`
//! (Debian mosquitto-clients 2.0): properties set with `-D` and printed with `-F`.
//!
//! mosquitto_sub block-buffers stdout into a pipe, so every run here uses `-C N` (or `-E`) and
//! its output is read after it exits.

use std::process::Stdio;
use std::time::Duration;

use client_tests::v5::{self, Props};
use client_tests::*;
use tokio::io::AsyncReadExt;
use tokio::process::Command;

const PROC_WAIT: Duration = Duration::from_secs(20);

/// Run a mosquitto client against `b` (MQTT v5) to completion; (success, stdout, stderr).
async fn run(prog: &str, b: &Broker, args: &[&str]) -> (bool, String, String) {
    let mut c = Command::new(prog);
    c.args(["-h", "127.0.0.1", "-p", &b.port().to_string(), "-V", "mqttv5"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().expect("spawn mosquitto client");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let ro = tokio::spawn(async move {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s).await;
        s
    });
    let re = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    let status = match tokio::time::timeout(PROC_WAIT, child.wait()).await {
        Ok(s) => s.expect("wait"),
        Err(_) => {
            let _ = child.kill().await;
            panic!("{prog} {args:?} did not exit within {PROC_WAIT:?}: {}", ro.await.unwrap());
        }
    };
    (status.success(), ro.await.unwrap(), re.await.unwrap())
}

// [MQTT-3.3.2-17] [MQTT-3.3.2-18] [MQTT-3.3.2-20]: mosquitto_pub -V mqttv5 with two user properties
// (repeated key) and a content type sets a retained message; mosquitto_sub -V mqttv5 with a
// Subscription Identifier prints them with -F: user properties in order, content type,
// subscription identifier, topic, payload, retain flag.
#[tokio::test]
async fn mosquitto_v5_user_properties_round_trip() {
    let b = Broker::start();
    let (ok, _, err) = run(
        "mosquitto_pub",
        &b,
        &[
            "-t",
            "m5/t",
            "-r",
            "-q",
            "1",
            "-m",
            "hello",
            "-D",
            "publish",
            "user-property",
            "k",
            "first",
            "-D",
            "publish",
            "user-property",
            "k",
            "second",
            "-D",
            "publish",
            "content-type",
            "text/x-test",
        ],
    )
    .await;
    assert!(ok, "mosquitto_pub failed: {err}");
    let (ok, out, err) = run(
        "mosquitto_sub",
        &b,
        &[
            "-t",
            "m5/#",
            "-C",
            "1",
            "-D",
            "subscribe",
            "subscription-identifier",
            "7",
            "-F",
            "%P|%C|%S|%t|%p|%r",
        ],
    )
    .await;
    assert!(ok, "mosquitto_sub failed: {err}");
    assert_eq!(out.trim_end(), "k:first k:second|text/x-test|7|m5/t|hello|1");
}

// A persistent mosquitto_sub v5 session (-c -x 60) gets, on its next connection, a QoS 1 message
// published by a raw v5 client while it was offline, with the user property and a Message
// Expiry Interval reduced by the time queued [MQTT-3.3.2-6].
#[tokio::test]
async fn mosquitto_v5_persistent_session_gets_queued_message() {
    let b = Broker::start();
    let sub = ["-c", "-i", "m5sub", "-x", "60", "-q", "1", "-t", "m5/q"];
    let (ok, _, err) = run("mosquitto_sub", &b, &[&sub[..], &["-E"]].concat()).await;
    assert!(ok, "mosquitto_sub -E failed: {err}");
    let mut p = Raw::connected5(b.addr(), "m5-pub").await;
    let props = Props::new().user("origin", "raw v5").with(v5::MESSAGE_EXPIRY, 100);
    assert_eq!(p.publish5_flow("m5/q", 1, false, 1, &props, b"queued").await, 0x00, "queued for m5sub");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (ok, out, err) =
        run("mosquitto_sub", &b, &[&sub[..], &["-C", "1", "-F", "%P|%t|%p|%q|%E"]].concat()).await;
    assert!(ok, "mosquitto_sub failed: {err}");
    let fields: Vec<&str> = out.trim_end().split('|').collect();
    assert_eq!(&fields[..4], &["origin:raw v5", "m5/q", "queued", "1"], "{out:?}");
    let e: u32 = fields[4].parse().unwrap_or_else(|_| panic!("expiry in {out:?}"));
    assert!((90..=99).contains(&e), "message expiry {e} after ≥ 1.1 s queued");
}

// mosquitto_pub -V mqttv5 → raw v5 subscriber sees the properties on the wire; and a 3.1.1
// mosquitto_sub (-V mqttv311) receives the same message, without properties.
#[tokio::test]
async fn mosquitto_v5_publisher_to_raw_v5_and_v311() {
    let b = Broker::start();
    let mut s = Raw::connected5(b.addr(), "m5-raw").await;
    s.sub5("m5/raw", 1).await;
    let (ok, _, err) = run(
        "mosquitto_pub",
        &b,
        &[
            "-t",
            "m5/raw",
            "-q",
            "1",
            "-m",
            "wire",
            "-D",
            "publish",
            "user-property",
            "a",
            "b",
            "-D",
            "publish",
            "response-topic",
            "m5/reply",
        ],
    )
    .await;
    assert!(ok, "mosquitto_pub failed: {err}");
    let m = s.recv_publish5().await;
    assert_eq!(m.payload, b"wire");
    assert_eq!(m.props.users(), vec![("a".to_string(), "b".to_string())]);
    assert_eq!(m.props.str(v5::RESPONSE_TOPIC), Some("m5/reply"));
    s.send(&v5::puback(m.pid.unwrap())).await;

    let (ok, _, err) = run(
        "mosquitto_pub",
        &b,
        &["-t", "m5/old", "-r", "-q", "1", "-m", "r", "-D", "publish", "user-property", "x", "y"],
    )
    .await;
    assert!(ok, "{err}");
    let mut c = Command::new("mosquitto_sub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &b.port().to_string(),
        "-V",
        "mqttv311",
        "-t",
        "m5/old",
        "-C",
        "1",
        "-v",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let o =
        tokio::time::timeout(PROC_WAIT, c.output()).await.expect("mosquitto_sub -V mqttv311 exits").unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "m5/old r\n");
}
