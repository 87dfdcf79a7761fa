//! HTTP/1.1 as curl speaks it, over a raw TCP stream (one request per connection), for the
//! broker's `[http]` endpoint (`/metrics`, `/readyz`, the admin API): status lines, headers and
//! bodies are checked on the wire; `promtool_check` lints a /metrics body.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use crate::{Broker, WAIT};

/// The HTTP endpoint's address, from the "http endpoint on http://ADDR" log line.
pub async fn http_addr(b: &Broker) -> SocketAddr {
    assert!(b.wait_log("http endpoint on http://", WAIT).await, "no http endpoint: {}", b.logs());
    let logs = b.logs();
    let i = logs.find("http endpoint on http://").unwrap() + "http endpoint on http://".len();
    let addr: String = logs[i..].chars().take_while(|c| !c.is_whitespace()).collect();
    addr.parse().expect("http address")
}

/// One HTTP/1.1 GET; returns (status, headers, body).
pub async fn http_get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String, String) {
    http_send(addr, "GET", path, token, None).await
}

/// One HTTP/1.1 request without a body; returns (status, headers, body).
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    http_send(addr, method, path, token, None).await
}

/// One HTTP/1.1 request, with a JSON body if given; returns (status, headers, body). The body
/// must be exactly as long as Content-Length says.
pub async fn http_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to http endpoint");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let content = body
        .map(|b| format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: client-tests\r\n{auth}{content}Accept: */*\r\nConnection: close\r\n\r\n{}",
        body.unwrap_or_default()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut response))
        .await
        .expect("http response within 5 s")
        .expect("read http response");
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header/body separator");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.parse().ok())
        .expect("Content-Length");
    assert_eq!(body.len(), length, "body length matches Content-Length");
    (status, head.to_owned(), body.to_owned())
}

/// The value of the sample line `series` (name and labels exactly) of a /metrics body, as a
/// counter (`u64`) or a gauge (`f64`).
pub fn sample<T: std::str::FromStr>(metrics: &str, series: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{metrics}"))
        .parse()
        .expect("numeric sample")
}

/// Asserts that `promtool check metrics` accepts a /metrics body without a remark.
pub async fn promtool_check(body: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/prepare installs it)");
    promtool.stdin.take().unwrap().write_all(body.as_bytes()).await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), promtool.wait_with_output())
        .await
        .expect("promtool within 20 s")
        .unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && report.trim().is_empty(), "promtool check metrics:\n{report}\n{body}");
}
