//! Area 09: process behaviour: graceful shutdown on SIGTERM/SIGINT, configuration file,
//! environment overrides and configuration errors.

use std::time::Duration;

use client_tests::*;

const EXIT_WAIT: Duration = Duration::from_secs(10);

// SIGTERM on an idle broker: exit code 0 within a few seconds.
#[tokio::test]
async fn sigterm_idle_exits_zero() {
    let mut b = Broker::start();
    b.sigterm();
    let st = b.wait_exit(EXIT_WAIT).await.expect("still running 10 s after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
}

// SIGINT behaves the same.
#[tokio::test]
async fn sigint_idle_exits_zero() {
    let mut b = Broker::start();
    b.sigint();
    let st = b.wait_exit(EXIT_WAIT).await.expect("still running 10 s after SIGINT");
    assert!(st.success(), "exit status {st:?}");
}

// SIGTERM with connected clients (mid-flight QoS 2, a silent raw socket, a client that has not
// sent CONNECT): all connections are closed and the process exits 0 within the shutdown timeout.
#[tokio::test]
async fn sigterm_with_clients_closes_them_and_exits_zero() {
    let mut b = Broker::start_with("[server]\nshutdown_timeout_secs = 2\n");
    let mut sub = Raw::connected(b.addr(), "s", true).await;
    sub.subscribe(1, &[("sd/t", 2)]).await;
    let mut p = Raw::connected(b.addr(), "p", true).await;
    p.publish_flow("sd/t", 2, false, 1, b"x").await;
    let m = sub.recv_publish().await; // never acknowledged
    assert_eq!(m.qos, 2);
    let mut idle = Raw::connect(b.addr()).await; // no CONNECT yet
    let mut m = Mqtt::connect(opts(&b, "r")).await;

    b.sigterm();
    sub.expect_closed_after(EXIT_WAIT).await;
    p.expect_closed_after(EXIT_WAIT).await;
    idle.expect_closed_after(EXIT_WAIT).await;
    assert!(m.wait_ended(EXIT_WAIT).await.is_some(), "rumqttc connection not closed");
    let st = b.wait_exit(EXIT_WAIT).await.expect("still running after SIGTERM");
    assert!(st.success(), "exit status {st:?}");
}

// After SIGTERM no new connection is accepted (the listener is closed first).
#[tokio::test]
async fn sigterm_stops_accepting() {
    let mut b = Broker::start();
    let addr = b.addr();
    b.sigterm();
    b.wait_exit(EXIT_WAIT).await.expect("exit");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still accepting after exit");
}

// The configured listener address is used (config [[listener]] with port 0, no CLI flags).
#[tokio::test]
async fn listener_from_config_file() {
    let b = Broker::launch(Launch::config("[[listener]]\nbind = \"127.0.0.1:0\"\n").args(&[]));
    assert!(b.addr().ip().is_loopback());
    assert_broker_alive(b.addr()).await;
}

// The full example configuration is accepted.
#[tokio::test]
async fn full_config_accepted() {
    let b = Broker::start_with(
        r#"
[log]
level = "info"
[mqtt]
connect_timeout_secs = 10
max_packet_size = 1048576
max_inflight_messages = 20
max_queued_messages = 1000
max_queued_bytes = 16777216
[server]
shutdown_timeout_secs = 5
"#,
    );
    assert_broker_alive(b.addr()).await;
}

fn assert_config_error(launch: Launch, key: &str) {
    let e = Broker::run_to_exit(launch, EXIT_WAIT);
    let st = e.status.unwrap_or_else(|| panic!("broker did not exit on a bad config; output:\n{}", e.logs));
    assert!(!st.success(), "bad config must exit non-zero; output:\n{}", e.logs);
    assert!(e.logs.contains(key), "the error must name {key:?}; output:\n{}", e.logs);
    assert!(!e.logs.contains("listening on"), "must not start listening; output:\n{}", e.logs);
}

#[tokio::test]
async fn config_unknown_key_rejected() {
    assert_config_error(Launch::config("[mqtt]\nmax_pakcet_size = 10\n"), "max_pakcet_size");
}

#[tokio::test]
async fn config_unknown_section_rejected() {
    assert_config_error(Launch::config("[nonsense]\nx = 1\n"), "nonsense");
}

#[tokio::test]
async fn config_bad_value_type_rejected() {
    assert_config_error(Launch::config("[mqtt]\nmax_packet_size = \"large\"\n"), "max_packet_size");
}

#[tokio::test]
async fn config_negative_value_rejected() {
    assert_config_error(Launch::config("[mqtt]\nconnect_timeout_secs = -5\n"), "connect_timeout_secs");
}

#[tokio::test]
async fn config_bad_listener_address_rejected() {
    assert_config_error(Launch::config("[[listener]]\nbind = \"not an address\"\n").args(&[]), "bind");
}

#[tokio::test]
async fn config_unknown_key_in_server_section_rejected() {
    assert_config_error(Launch::config("[server]\nshutdown_timeout = 5\n"), "shutdown_timeout");
}

#[tokio::test]
async fn config_bad_env_value_rejected() {
    assert_config_error(Launch::config("").env("TERN__MQTT__MAX_PACKET_SIZE", "lots"), "max_packet_size");
}

#[tokio::test]
async fn config_file_missing_rejected() {
    let e = Broker::run_to_exit(Launch::default().args(&["-c", "/nonexistent/tern.toml"]), EXIT_WAIT);
    let st = e.status.expect("did not exit");
    assert!(!st.success());
    assert!(e.logs.contains("/nonexistent/tern.toml"), "names the file; output:\n{}", e.logs);
}

#[tokio::test]
async fn bad_command_line_rejected() {
    let e = Broker::run_to_exit(Launch::default().args(&["--no-such-flag"]), EXIT_WAIT);
    let st = e.status.expect("did not exit");
    assert!(!st.success());
    assert!(e.logs.contains("--no-such-flag"), "output:\n{}", e.logs);
}

// TERN__MQTT__MAX_PACKET_SIZE overrides the (absent) file setting: a packet over the limit
// closes the connection, one under it passes.
#[tokio::test]
async fn env_override_max_packet_size() {
    let b = Broker::launch(Launch::config("").env("TERN__MQTT__MAX_PACKET_SIZE", "200"));
    let mut sub = Raw::connected(b.addr(), "es", true).await;
    sub.subscribe(1, &[("e", 0)]).await;
    let mut r = Raw::connected(b.addr(), "ep", true).await;
    r.send(&pkt::publish("e", 0, false, false, 0, &[b'a'; 100])).await;
    assert_eq!(sub.recv_publish().await.payload.len(), 100);
    r.send_lenient(&pkt::publish("e", 0, false, false, 0, &[b'b'; 300])).await;
    r.expect_closed(WAIT).await;
    sub.expect_nothing(QUIET).await;
}

// The env var wins over the file.
#[tokio::test]
async fn env_overrides_file() {
    let b = Broker::launch(
        Launch::config("[mqtt]\nmax_packet_size = 100000\n").env("TERN__MQTT__MAX_PACKET_SIZE", "200"),
    );
    let mut r = Raw::connected(b.addr(), "ep", true).await;
    r.send_lenient(&pkt::publish("e", 0, false, false, 0, &[b'b'; 300])).await;
    r.expect_closed(WAIT).await;
}

// The -p flag picks the port (0 = ephemeral) and --bind the address.
#[tokio::test]
async fn cli_bind_and_port() {
    let b = Broker::launch(Launch::default().args(&["--bind", "127.0.0.1", "--port", "0"]));
    assert_eq!(b.addr().ip().to_string(), "127.0.0.1");
    assert_ne!(b.port(), 0);
    assert_broker_alive(b.addr()).await;
}

#[tokio::test]
async fn config_bad_log_level_rejected() {
    assert_config_error(Launch::config("[log]\nlevel = \"loudest\"\n"), "level");
}

#[tokio::test]
async fn config_not_toml_rejected() {
    let e = Broker::run_to_exit(Launch::config("this is = = not toml ["), EXIT_WAIT);
    let st = e.status.unwrap_or_else(|| panic!("did not exit; output:\n{}", e.logs));
    assert!(!st.success(), "output:\n{}", e.logs);
    assert!(!e.logs.contains("listening on"));
}

/// The next sd_notify datagram other than WATCHDOG=1, and whether a WATCHDOG=1 came first.
async fn next_notification(socket: &tokio::net::UnixDatagram, watchdog_seen: &mut bool) -> String {
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(EXIT_WAIT, socket.recv(&mut buf))
            .await
            .expect("no sd_notify message within 10 s")
            .unwrap();
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        if message == "WATCHDOG=1" {
            *watchdog_seen = true;
        } else {
            return message;
        }
    }
}

// systemd Type=notify (sd_notify(3)) on a test-owned NOTIFY_SOCKET: READY=1 with a STATUS once
// listening, STATUS= with the connection count when it changes, RELOADING=1 (with MONOTONIC_USEC) then READY=1 around SIGHUP, STOPPING=1 on
// SIGTERM, in that order; WATCHDOG=1 at half of WATCHDOG_USEC meanwhile.
#[tokio::test]
async fn systemd_notifications_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let mut b = Broker::launch(
        Launch::config("").env("NOTIFY_SOCKET", path.to_str().unwrap()).env("WATCHDOG_USEC", "200000"),
    );
    let mut watchdog = false;
    let ready = next_notification(&socket, &mut watchdog).await;
    assert!(
        ready.starts_with(&format!("READY=1\nSTATUS=accepting connections on {}", b.addr())),
        "{ready:?}"
    );
    // STATUS= follows the connection count.
    let client = Mqtt::connect(opts(&b, "status-check")).await;
    let status = next_notification(&socket, &mut watchdog).await;
    assert!(status.starts_with("STATUS=1 client(s) connected; accepting connections on"), "{status:?}");
    drop(client);
    b.sighup();
    let reloading = next_notification(&socket, &mut watchdog).await;
    assert!(reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{reloading:?}");
    assert_eq!(next_notification(&socket, &mut watchdog).await, "READY=1");
    assert!(watchdog, "WATCHDOG=1 every 100 ms");
    b.sigterm();
    assert_eq!(next_notification(&socket, &mut watchdog).await, "STOPPING=1");
    assert!(b.wait_exit(EXIT_WAIT).await.expect("exits after SIGTERM").success());
}

// Without NOTIFY_SOCKET nothing is attempted (the other tests), and an unusable one is
// reported without stopping the broker.
#[tokio::test]
async fn an_unusable_notify_socket_is_reported_not_fatal() {
    let b = Broker::launch(Launch::config("").env("NOTIFY_SOCKET", "relative/not/a/socket"));
    let mut c = Mqtt::connect(opts(&b, "notify-check")).await;
    c.publish_wait("t", 1, false, "x").await;
    // READY=1 goes once the listeners are bound, so a client may be served before its failure
    // is logged: wait for the line rather than read the log at once.
    assert!(b.wait_log("sd_notify", WAIT).await, "{}", b.logs());
}

// Its log output going away (stderr a pipe whose reader closed, as with `tern | head`) costs
// the log lines, not the clients: connecting and publishing still work.
#[tokio::test]
async fn a_closed_log_pipe_does_not_break_connections() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut tern = std::process::Command::new(tern_bin())
        .args(["--bind", "127.0.0.1", "-p", "0"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let port = {
        let log = std::io::BufReader::new(tern.stderr.take().unwrap());
        let port = log.lines().map_while(Result::ok).find_map(|line| {
            let addr = line.split("listening on ").nth(1)?.split_whitespace().next()?.to_string();
            addr.rsplit(':').next()?.parse::<u16>().ok()
        });
        port.expect("no 'listening on' line")
        // The reader is dropped here: every later log line meets a closed pipe.
    };
    for n in 0..3 {
        let mut o = rumqttc::MqttOptions::new(format!("after-close-{n}"), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let mut c = Mqtt::connect(o).await;
        c.publish_wait("t", 1, false, "x").await;
    }
    tern.kill().unwrap();
    tern.wait().unwrap();
}

// --log-format json (or log.format = "json"): every line on stderr is one JSON object with the
// level and the message, for log shippers.
#[tokio::test]
async fn log_format_json_writes_one_object_per_line() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut tern = std::process::Command::new(tern_bin())
        .args(["--bind", "127.0.0.1", "-p", "0", "--log-format", "json"])
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(tern.stderr.take().unwrap()).lines().map_while(Result::ok);
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let object: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let message = object["fields"]["message"].as_str().unwrap_or_default().to_string();
        assert!(object["level"].is_string() && object["timestamp"].is_string(), "{line}");
        let done = message.starts_with("accepting connections");
        seen.push(message);
        if done {
            break;
        }
    }
    assert!(seen.iter().any(|m| m.starts_with("listening on 127.0.0.1:")), "{seen:?}");
    tern.kill().unwrap();
    tern.wait().unwrap();
}

// A log format that does not exist is refused at start, naming the key.
#[tokio::test]
async fn unknown_log_format_is_refused() {
    let out = std::process::Command::new(tern_bin()).args(["--log-format", "xml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-format"), "{out:?}");
    let launch = Launch::config("[log]\nformat = \"xml\"");
    assert_config_error(launch, "log.format");
}
