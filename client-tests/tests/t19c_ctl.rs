//! Area 19c: `tern ctl`, the admin API from the command line, run as an operator would: the
//! built binary with `-c` naming the broker's own configuration file (where it finds `[http]
//! bind` and the token), against a running broker. Issue 16's test 5: after `retained rm
//! FILTER`, `retained ls` agrees with the API. Tables are read as text; `--json` must parse.

use std::path::{Path, PathBuf};
use std::process::Command;

use client_tests::http::http_get;
use client_tests::*;
use serde_json::Value;

/// A broker and the configuration file it runs with, HTTP on a fixed free loopback port (ctl
/// reads the port from the file, so it cannot be 0), a bearer token in a file beside it.
struct Setup {
    broker: Broker,
    config: PathBuf,
    http: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "ctl-t0ken";

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let http = free_port();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let config = dir.path().join("tern.toml");
    let toml =
        format!("[sys]\ninterval = 0\n[http]\nbind = \"{http}\"\ntoken_file = \"{}\"\n", token.display());
    std::fs::write(&config, toml).unwrap();
    let path = config.to_str().unwrap();
    let broker = Broker::launch(Launch::default().args(&["-c", path, "--bind", "127.0.0.1", "-p", "0"]));
    Setup { broker, config, http, _dir: dir }
}

/// A loopback address nothing listens on now.
fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// Runs `tern ctl -c CONFIG ARGS...`; returns (success, stdout, stderr).
fn ctl(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(tern_bin())
        .args(["ctl", "-c", config.to_str().unwrap()])
        .args(args)
        .output()
        .expect("run tern ctl");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// `tern ctl ... --json`, which must succeed and print JSON.
fn ctl_json(config: &Path, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let (ok, out, err) = ctl(config, &args);
    assert!(ok, "tern ctl {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tern ctl {args:?} printed no JSON ({e}): {out}"))
}

fn topics(listing: &Value) -> Vec<String> {
    listing["messages"].as_array().unwrap().iter().map(|m| m["topic"].as_str().unwrap().to_owned()).collect()
}

// Issue 16 test 5: `retained rm 'a/+'` deletes exactly the retained messages that match, and
// `retained ls` (table and JSON) then agrees with `GET /api/v1/retained`.
#[tokio::test]
async fn retained_ls_agrees_with_the_api_after_retained_rm() {
    let s = start();
    let mut p = Mqtt::connect(opts(&s.broker, "ctl-pub")).await;
    for topic in ["a/1", "a/2", "a/b/3", "b/1"] {
        p.publish_wait(topic, 1, true, format!("v-{topic}")).await;
    }
    let (ok, out, err) = ctl(&s.config, &["retained", "rm", "a/+"]);
    assert!(ok, "{err}");
    assert_eq!(out, "deleted 2 retained message(s)\n");

    let from_ctl = ctl_json(&s.config, &["retained", "ls"]);
    let (status, _, body) = http_get(s.http, "/api/v1/retained?filter=%23", Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let from_api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(topics(&from_ctl), ["a/b/3", "b/1"]);
    assert_eq!(topics(&from_ctl), topics(&from_api));

    let (ok, table, err) = ctl(&s.config, &["retained", "ls"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("TOPIC") && lines[0].contains("PAYLOAD"), "{table}");
    assert_eq!(lines.len(), 3, "header and two rows: {table}");
    assert!(lines[1].starts_with("a/b/3") && lines[1].ends_with("v-a/b/3"), "{table}");
    assert!(lines[2].starts_with("b/1"), "{table}");
}

// Clients, subscriptions, stats, publish, kick and reload through ctl: tables with a header,
// and `--json` that parses to what the API says.
#[tokio::test]
async fn clients_subs_stats_publish_kick_and_reload() {
    let s = start();
    let mut a = Mqtt::connect(opts(&s.broker, "ctl-a")).await;
    a.subscribe("ctl/#", 1).await;
    let _b = Mqtt::connect(opts(&s.broker, "ctl-b")).await;

    let (ok, table, err) = ctl(&s.config, &["clients", "ls"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("CLIENT ID") && lines[0].contains("CONNECTED"), "{table}");
    assert!(lines[1].starts_with("ctl-a") && lines[1].contains("yes"), "{table}");
    assert!(lines[2].starts_with("ctl-b"), "{table}");
    let listed = ctl_json(&s.config, &["clients", "ls", "--prefix", "ctl-"]);
    assert_eq!(listed["total"], 2, "{listed}");

    let stats = ctl_json(&s.config, &["stats"]);
    assert_eq!(stats["clients_connected"], 2, "{stats}");
    let (ok, out, _) = ctl(&s.config, &["stats"]);
    assert!(ok && out.lines().any(|l| l.starts_with("clients_connected:") && l.ends_with(" 2")), "{out}");

    let shown = ctl_json(&s.config, &["clients", "show", "ctl-a"]);
    assert_eq!(shown["subscriptions"][0]["filter"], "ctl/#", "{shown}");
    // The table shows when the client connected as a UTC time, the JSON as Unix seconds.
    assert!(shown["connection"]["connected_since"].is_u64(), "{shown}");
    let (ok, out, _) = ctl(&s.config, &["clients", "show", "ctl-a"]);
    let line = out.lines().find(|l| l.contains("connected_since:")).unwrap_or_default();
    let time = line.split_whitespace().last().unwrap_or_default();
    // e.g. 2026-12-04T20:51:07.000Z
    assert!(ok && time.len() == 24 && time.as_bytes()[10] == b'T' && time.ends_with('Z'), "{out}");
    let (ok, out, _) = ctl(&s.config, &["subs", "ls", "ctl/#"]);
    assert!(ok && out.lines().nth(1).is_some_and(|l| l.starts_with("ctl/#") && l.contains("ctl-a")), "{out}");

    let (ok, out, err) = ctl(&s.config, &["publish", "ctl/x", "from ctl", "-q", "1"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("published to ctl/x: matched 1 session(s)"), "{out}");
    let got = a.recv().await;
    assert_eq!((got.topic.as_str(), &got.payload[..]), ("ctl/x", &b"from ctl"[..]));
    let (ok, _, err) = ctl(&s.config, &["publish", "$SYS/x", "no"]);
    assert!(!ok && err.contains("403") && err.contains("$SYS"), "{err}");

    let (ok, out, err) = ctl(&s.config, &["reload"]);
    assert!(ok && out.starts_with("reloaded"), "{out}{err}");

    let (ok, out, err) = ctl(&s.config, &["clients", "kick", "ctl-b"]);
    assert!(ok && out == "disconnected ctl-b\n", "{out}{err}");
    let (ok, _, err) = ctl(&s.config, &["clients", "show", "nobody"]);
    assert!(!ok && err.starts_with("tern ctl: 404") && err.contains("no session"), "{err}");
}

// Readable failures: nothing listening at the configured address, the API turned off, a
// wrong token.
#[test]
fn failures_say_what_to_check() {
    let dir = tempfile::tempdir().unwrap();
    let nobody = free_port();
    let config = dir.path().join("tern.toml");
    std::fs::write(&config, format!("[http]\nbind = \"{nobody}\"\n")).unwrap();
    let (ok, _, err) = ctl(&config, &["stats"]);
    assert!(!ok, "nothing listens there");
    assert!(err.contains(&format!("cannot reach http://{nobody}")) && err.contains("[http] bind"), "{err}");

    std::fs::write(&config, "[sys]\ninterval = 0\n").unwrap();
    let (ok, _, err) = ctl(&config, &["stats"]);
    assert!(!ok && err.contains("the admin API is off: set [http] bind"), "{err}");

    let s = start();
    std::fs::write(dir.path().join("token"), "wrong").unwrap();
    let wrong = dir.path().join("wrong.toml");
    let toml =
        format!("[http]\nbind = \"{}\"\ntoken_file = \"{}\"\n", s.http, dir.path().join("token").display());
    std::fs::write(&wrong, toml).unwrap();
    let (ok, _, err) = ctl(&wrong, &["stats"]);
    assert!(!ok && err.contains("401") && err.contains("token_file"), "{err}");
}
