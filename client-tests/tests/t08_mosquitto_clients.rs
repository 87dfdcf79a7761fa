//! Area 08: interoperability with the Mosquitto command-line clients (/usr/bin/mosquitto_pub,
//! /usr/bin/mosquitto_sub).
//!
//! mosquitto_sub block-buffers stdout into a pipe, so tests either run it with `-C N` and read
//! its output after it exits, or run it under `stdbuf -oL` when they need a line as it arrives.

use std::process::Stdio;
use std::time::Duration;

use client_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const PROC_WAIT: Duration = Duration::from_secs(20);

fn mosq(prog: &str, b: &Broker, args: &[&str]) -> Command {
    let mut c = Command::new(prog);
    c.args(["-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    c
}

/// Wait for a child to exit; return (success, stdout, stderr).
async fn finish(mut child: Child, what: &str) -> (bool, String, String) {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let read_out = tokio::spawn(async move {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s).await;
        s
    });
    let read_err = tokio::spawn(async move {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s).await;
        s
    });
    let status = match tokio::time::timeout(PROC_WAIT, child.wait()).await {
        Ok(s) => s.expect("wait"),
        Err(_) => {
            let _ = child.kill().await;
            let o = read_out.await.unwrap();
            let e = read_err.await.unwrap();
            panic!("{what} did not exit within {PROC_WAIT:?}; stdout so far:\n{o}\nstderr:\n{e}");
        }
    };
    (status.success(), read_out.await.unwrap(), read_err.await.unwrap())
}

async fn run(prog: &str, b: &Broker, args: &[&str]) -> (bool, String, String) {
    let child = mosq(prog, b, args).spawn().expect("spawn mosquitto client");
    finish(child, prog).await
}

async fn pub_lines(b: &Broker, args: &[&str], lines: &[String]) {
    let mut cmd = mosq("mosquitto_pub", b, args);
    cmd.arg("-l").stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn mosquitto_pub");
    let mut stdin = child.stdin.take().unwrap();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let (ok, _, err) = finish(child, "mosquitto_pub").await;
    assert!(ok, "mosquitto_pub failed: {err}");
}

// mosquitto_pub -q 2 -> mosquitto_sub -q 2 -C N: every message exactly once, in order
// [MQTT-4.3.3-2] [MQTT-4.6.0-6]. The subscriber uses a persistent session created first
// (-c -E), so whether mosquitto_sub is already connected when publishing starts or not, every
// message must reach it (live, or queued [MQTT-3.1.2-5]): no race, no sleep.
#[tokio::test]
async fn mosquitto_pub_q2_to_mosquitto_sub_q2_exactly_once() {
    const N: usize = 300;
    let b = Broker::start();
    let (ok, _, err) = run("mosquitto_sub", &b, &["-c", "-i", "msub", "-q", "2", "-t", "mq/t", "-E"]).await;
    assert!(ok, "mosquitto_sub -E failed: {err}");
    let sub = mosq("mosquitto_sub", &b, &["-c", "-i", "msub", "-q", "2", "-t", "mq/t", "-C", &N.to_string()])
        .spawn()
        .unwrap();
    let lines: Vec<String> = (0..N).map(|i| i.to_string()).collect();
    pub_lines(&b, &["-q", "2", "-t", "mq/t", "-i", "mpub"], &lines).await;
    let (ok, out, err) = finish(sub, "mosquitto_sub").await;
    assert!(ok, "mosquitto_sub failed: {err}");
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got, lines.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    // Nothing left over for the session: a duplicate would still be queued.
    let (ok, out, _) =
        run("mosquitto_sub", &b, &["-c", "-i", "msub", "-q", "2", "-t", "mq/t", "-W", "1"]).await;
    let _ = ok; // -W timeout exits non-zero
    assert_eq!(out, "", "extra messages after the first {N}");
}

// Live exchange: mosquitto_sub (under stdbuf -oL) is known to be subscribed once it printed
// a retained marker on one of its filters (both filters are in one SUBSCRIBE); then
// mosquitto_pub publishes QoS 1 and QoS 2 messages, all received once.
#[tokio::test]
async fn mosquitto_live_exchange_q1_q2() {
    const N: usize = 100;
    let b = Broker::start();
    let (ok, _, err) = run("mosquitto_pub", &b, &["-t", "live/ready", "-r", "-m", "ready", "-q", "1"]).await;
    assert!(ok, "{err}");
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(["-q", "2", "-v", "-t", "live/ready", "-t", "live/data", "-C", &(2 * N + 1).to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut sub = cmd.spawn().unwrap();
    let mut out = BufReader::new(sub.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, out.read_line(&mut line)).await.expect("retained marker").unwrap();
    assert_eq!(line, "live/ready ready\n");

    let lines: Vec<String> = (0..N).map(|i| format!("q1-{i}")).collect();
    pub_lines(&b, &["-q", "1", "-t", "live/data"], &lines).await;
    let lines2: Vec<String> = (0..N).map(|i| format!("q2-{i}")).collect();
    pub_lines(&b, &["-q", "2", "-t", "live/data"], &lines2).await;

    let mut rest = String::new();
    tokio::time::timeout(PROC_WAIT, out.read_to_string(&mut rest)).await.expect("sub output").unwrap();
    let status = tokio::time::timeout(PROC_WAIT, sub.wait()).await.expect("sub exit").unwrap();
    assert!(status.success());
    let want: Vec<String> = lines.iter().chain(&lines2).map(|l| format!("live/data {l}")).collect();
    assert_eq!(rest.lines().collect::<Vec<_>>(), want);
}

// Retained message set with mosquitto_pub -r is delivered to a later mosquitto_sub, also over
// MQTT 3.1 (MQIsdp); cleared with -n -r.
#[tokio::test]
async fn mosquitto_retained_and_mqtt31() {
    let b = Broker::start();
    let (ok, _, err) = run("mosquitto_pub", &b, &["-t", "ret/t", "-r", "-q", "1", "-m", "kept"]).await;
    assert!(ok, "{err}");
    for v in ["mqttv311", "mqttv31"] {
        let (ok, out, err) = run("mosquitto_sub", &b, &["-V", v, "-t", "ret/#", "-v", "-C", "1"]).await;
        assert!(ok, "{v}: {err}");
        assert_eq!(out, "ret/t kept\n", "{v}");
    }
    let (ok, _, err) = run("mosquitto_pub", &b, &["-t", "ret/t", "-r", "-n"]).await;
    assert!(ok, "{err}");
    // Cleared: a 1-second wait sees nothing.
    let (_, out, _) = run("mosquitto_sub", &b, &["-t", "ret/#", "-v", "-W", "1"]).await;
    assert_eq!(out, "");
}

// With the default configuration, `mosquitto_pub -f` of a camera snapshot or firmware chunk
// (1 MiB and 4 MiB payloads, QoS 1, retained) is accepted and comes back byte for byte to a later
// mosquitto_sub (the default max_packet_size was 1 MiB, header included, and refused the first).
#[tokio::test]
async fn mosquitto_pub_file_of_several_mebibytes_with_defaults() {
    let b = Broker::start();
    let dir = tempfile::tempdir().unwrap();
    for size in [1usize << 20, 4 << 20] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let file = dir.path().join(format!("blob-{size}"));
        std::fs::write(&file, &payload).unwrap();
        let topic = format!("files/{size}");
        let (ok, _, err) =
            run("mosquitto_pub", &b, &["-t", &topic, "-q", "1", "-r", "-f", file.to_str().unwrap()]).await;
        assert!(ok, "mosquitto_pub -f of {size} bytes: {err}\n{}", b.logs());
        let sub = mosq("mosquitto_sub", &b, &["-t", &topic, "-C", "1", "-N"]).output();
        let out = tokio::time::timeout(PROC_WAIT, sub)
            .await
            .expect("mosquitto_sub timed out")
            .expect("mosquitto_sub");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == payload, "{size} bytes sent, {} received", out.stdout.len());
    }
}

// mosquitto_pub over MQTT 3.1 reaches a rumqttc subscriber.
#[tokio::test]
async fn mosquitto_pub_mqtt31_to_rumqttc() {
    let b = Broker::start();
    let mut s = Mqtt::connect(opts(&b, "rs")).await;
    s.subscribe("v31/#", 2).await;
    let (ok, _, err) =
        run("mosquitto_pub", &b, &["-V", "mqttv31", "-t", "v31/x", "-q", "2", "-m", "old"]).await;
    assert!(ok, "{err}");
    let m = s.recv().await;
    assert_eq!((m.topic.as_str(), &m.payload[..], qos_num(m.qos)), ("v31/x", &b"old"[..], 2));
    s.expect_silence().await;
}

// rumqttc publisher -> mosquitto_sub with a persistent session, QoS 1.
#[tokio::test]
async fn rumqttc_to_mosquitto_sub() {
    const N: usize = 50;
    let b = Broker::start();
    let (ok, _, err) = run("mosquitto_sub", &b, &["-c", "-i", "ms", "-q", "1", "-t", "rm/t", "-E"]).await;
    assert!(ok, "{err}");
    let mut p = Mqtt::connect(opts(&b, "rp")).await;
    for i in 0..N {
        p.publish("rm/t", 1, false, i.to_string()).await;
    }
    p.wait_acks(N).await;
    let (ok, out, err) =
        run("mosquitto_sub", &b, &["-c", "-i", "ms", "-q", "1", "-t", "rm/t", "-C", &N.to_string()]).await;
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), (0..N).map(|i| i.to_string()).collect::<Vec<_>>());
}

// MQTT 5 and 3.1.1 clients share the listener: mosquitto_pub -V mqttv5 publishes QoS 1 to a
// 3.1.1 subscriber.
#[tokio::test]
async fn mosquitto_v5_publisher_reaches_v311_subscriber() {
    let b = Broker::start();
    let mut s = Mqtt::connect(opts(&b, "v311-sub")).await;
    s.subscribe("v5/t", 1).await;
    let (ok, _, err) = run("mosquitto_pub", &b, &["-V", "mqttv5", "-t", "v5/t", "-m", "x", "-q", "1"]).await;
    assert!(ok, "{err}");
    assert_eq!(&s.recv().await.payload[..], b"x");
}

// mosquitto_sub's will (--will-*) is published when it is killed.
#[tokio::test]
async fn mosquitto_sub_will_on_kill() {
    let b = Broker::start();
    let mut w = Mqtt::connect(opts(&b, "w")).await;
    w.subscribe("mw/#", 1).await;
    w.subscribe("mw-ready", 1).await;
    // The subscriber announces itself through a retained message it receives; we only need it
    // connected, which the CONNACK-before-SUBACK order guarantees once it prints the marker.
    let (ok, _, err) = run("mosquitto_pub", &b, &["-t", "mw-ready", "-r", "-m", "r", "-q", "1"]).await;
    assert!(ok, "{err}");
    assert_eq!(&w.recv().await.payload[..], b"r");
    let mut cmd = Command::new("stdbuf");
    cmd.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &b.port().to_string()])
        .args(["-t", "mw-ready", "--will-topic", "mw/gone", "--will-payload", "killed", "--will-qos", "1"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let mut sub = cmd.spawn().unwrap();
    let mut out = BufReader::new(sub.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(WAIT, out.read_line(&mut line)).await.expect("marker").unwrap();
    assert_eq!(line, "r\n");
    sub.kill().await.unwrap(); // SIGKILL: no DISCONNECT
    let m = w.recv().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("mw/gone", &b"killed"[..]));
}
