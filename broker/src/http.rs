//! The operator's HTTP endpoint (`[http]`): `GET /metrics` (Prometheus text format 0.0.4),
//! `GET /healthz`, `GET /readyz`, and the admin API under `/api/v1` (`admin.rs`). A small HTTP/1.1 responder on tokio, written here rather
//! than taken from a crate (see docs/decisions/0003-http-endpoint.md): one request per
//! connection, answered and closed.
//!
//! Bounds: at most `MAX_CONNECTIONS` requests at once (more wait in the listen backlog), a
//! request head of at most `MAX_HEAD` bytes and a body (`Content-Length` only, no chunked
//! encoding) of at most `MAX_BODY`, both read within `READ_TIMEOUT`.
//! The bearer token, when configured, is compared in constant time. `/healthz` and `/readyz`
//! need no token: probes rarely carry one, and they tell nothing but up or down. `/metrics`
//! and `/api/` do.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::HttpConfig;
use crate::dead_letter::{Reason, Suppressed};
use crate::metrics::{get, DropReason, Metrics, METRICS, PROTOCOLS};
use crate::packet::ReasonCode;
use crate::{admin, Broker, Error, Result};

/// Requests served at once.
const MAX_CONNECTIONS: usize = 32;
/// Largest request head (request line and headers) read.
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body read (`POST /api/v1/publish` carries a message in it).
const MAX_BODY: usize = 1024 * 1024;
/// Time a client has to send its request, and then to take the response.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound HTTP listener, not yet serving.
pub struct HttpServer {
    listener: TcpListener,
    token: Option<Arc<[u8]>>,
}

impl HttpServer {
    /// Reads the token file and binds `http.bind`; `None` when no endpoint is configured.
    pub async fn bind(config: &HttpConfig) -> Result<Option<HttpServer>> {
        let Some(bind) = config.bind else { return Ok(None) };
        let token = config.token_file.as_deref().map(read_token).transpose()?;
        let listener = TcpListener::bind(bind).await.map_err(|source| Error::Bind { addr: bind, source })?;
        let addr = listener.local_addr().map_err(|source| Error::Bind { addr: bind, source })?;
        info!(token = token.is_some(), "http endpoint on http://{addr}");
        Ok(Some(HttpServer { listener, token }))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Answers requests until `stop` is cancelled.
    pub async fn serve(self, broker: Arc<Broker>, stop: CancellationToken) {
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (stream, peer) = tokio::select! {
                _ = stop.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        warn!("http accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let (broker, token) = (broker.clone(), self.token.clone());
            tokio::spawn(async move {
                if let Err(e) = handle(stream, &broker, token.as_deref()).await {
                    debug!(%peer, "http request failed: {e}");
                }
                drop(permit);
            });
        }
    }
}

/// The token: the file's content without surrounding whitespace, not empty.
fn read_token(path: &Path) -> Result<Arc<[u8]>> {
    let invalid = |reason: String| Error::HttpToken { path: path.to_owned(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(invalid("the file is empty".into()));
    }
    Ok(token.as_bytes().into())
}

/// Reads one request head, answers it, closes.
async fn handle(mut stream: TcpStream, broker: &Broker, token: Option<&[u8]>) -> std::io::Result<()> {
    let response = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Ok(Ok(Some(request))) => respond(&request, broker, token).await,
        Ok(Ok(None)) => Response::text(400, "bad request\n"),
        Ok(Err(RequestError::BodyTooLarge)) => Response::text(413, "request body too large\n"),
        Ok(Err(RequestError::Io(e))) => return Err(e),
        Err(_) => return Ok(()),
    };
    let bytes = response.to_bytes();
    tokio::time::timeout(READ_TIMEOUT, async {
        stream.write_all(&bytes).await?;
        stream.shutdown().await
    })
    .await
    .unwrap_or(Ok(()))
}

#[derive(Debug)]
enum RequestError {
    BodyTooLarge,
    Io(std::io::Error),
}

/// Reads a request head and its body; `None` when the request is not well-formed HTTP/1.x.
async fn read_request(stream: &mut TcpStream) -> Result<Option<Request>, RequestError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if buf.len() >= MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await.map_err(RequestError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let Some(mut request) = Request::parse(&buf[..head_end]) else { return Ok(None) };
    if request.content_length > MAX_BODY {
        return Err(RequestError::BodyTooLarge);
    }
    let mut body = buf.split_off(head_end);
    while body.len() < request.content_length {
        let n = stream.read(&mut chunk).await.map_err(RequestError::Io)?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(request.content_length);
    request.body = body;
    Ok(Some(request))
}

/// What a request asks: method, path (without query) and the credentials it carries.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    /// What follows '?', undecoded.
    pub query: String,
    pub authorization: Option<String>,
    /// `Content-Length`, 0 when absent.
    pub content_length: usize,
    pub body: Vec<u8>,
}

impl Request {
    /// Parses a request head; `None` when it is not HTTP/1.x.
    pub fn parse(head: &[u8]) -> Option<Request> {
        let head = std::str::from_utf8(head).ok()?;
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split(' ');
        let (method, target, version) = (request_line.next()?, request_line.next()?, request_line.next()?);
        if !version.starts_with("HTTP/1.") {
            return None;
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let headers: Vec<(&str, &str)> = lines
            .take_while(|line| !line.is_empty())
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim(), value.trim()))
            .collect();
        let header = |wanted: &str| headers.iter().find(|(name, _)| name.eq_ignore_ascii_case(wanted));
        let content_length = match header("content-length") {
            Some((_, value)) => value.parse().ok()?,
            None => 0,
        };
        if header("transfer-encoding").is_some() {
            // Chunked bodies are not read; refusing them beats misreading the next bytes.
            return None;
        }
        Some(Request {
            method: method.to_owned(),
            path: path.to_owned(),
            query: query.to_owned(),
            authorization: header("authorization").map(|(_, value)| (*value).to_owned()),
            content_length,
            body: Vec::new(),
        })
    }
}

/// A complete response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
    /// HEAD: headers only.
    pub head_only: bool,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response { status, content_type: "text/plain; charset=utf-8", body: body.into(), head_only: false }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            404 => "Not Found",
            405 => "Method Not Allowed",
            403 => "Forbidden",
            409 => "Conflict",
            413 => "Content Too Large",
            500 => "Internal Server Error",
            503 => "Service Unavailable",
            _ => "",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 401 {
            out.push_str("WWW-Authenticate: Bearer\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// The answer to a request.
pub async fn respond(request: &Request, broker: &Broker, token: Option<&[u8]>) -> Response {
    if request.path.starts_with("/api/") {
        if !authorized(request, token) {
            let body = "{\"error\":\"bearer token required\"}\n".into();
            return Response { status: 401, content_type: "application/json", body, head_only: false };
        }
        return admin::respond(request, broker).await;
    }
    let head_only = request.method == "HEAD";
    if request.method != "GET" && !head_only {
        return Response::text(405, "only GET and HEAD\n");
    }
    let mut response = match request.path.as_str() {
        "/healthz" => Response::text(200, "ok\n"),
        "/readyz" if broker.ready.load(Ordering::Acquire) => Response::text(200, "ready\n"),
        "/readyz" if broker.shutdown.is_cancelled() => Response::text(503, "shutting down\n"),
        "/readyz" => Response::text(503, "starting\n"),
        "/metrics" if !authorized(request, token) => Response::text(401, "bearer token required\n"),
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: render_metrics(&METRICS, broker),
            head_only: false,
        },
        _ => Response::text(404, "not found\n"),
    };
    response.head_only = head_only;
    response
}

/// No token configured, or `Authorization: Bearer <token>` with exactly it.
fn authorized(request: &Request, token: Option<&[u8]>) -> bool {
    let Some(token) = token else { return true };
    let presented = request
        .authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim);
    presented.is_some_and(|p| bool::from(p.as_bytes().ct_eq(token)))
}

/// Names of the CONNACK reason codes a refusal can carry, as metric label values.
fn refusal_label(code: u8) -> String {
    let name = match ReasonCode(code) {
        ReasonCode::UNSPECIFIED_ERROR => "unspecified_error",
        ReasonCode::MALFORMED_PACKET => "malformed_packet",
        ReasonCode::PROTOCOL_ERROR => "protocol_error",
        ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR => "implementation_specific_error",
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION => "unsupported_protocol_version",
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID => "client_identifier_not_valid",
        ReasonCode::BAD_USER_NAME_OR_PASSWORD => "bad_user_name_or_password",
        ReasonCode::NOT_AUTHORIZED => "not_authorized",
        ReasonCode::SERVER_UNAVAILABLE => "server_unavailable",
        ReasonCode::SERVER_BUSY => "server_busy",
        ReasonCode::BAD_AUTHENTICATION_METHOD => "bad_authentication_method",
        ReasonCode::PACKET_TOO_LARGE => "packet_too_large",
        ReasonCode::QOS_NOT_SUPPORTED => "qos_not_supported",
        ReasonCode::RETAIN_NOT_SUPPORTED => "retain_not_supported",
        _ => return format!("0x{code:02x}"),
    };
    name.into()
}

/// The Prometheus text exposition (format 0.0.4) of every counter and gauge.
pub fn render_metrics(m: &Metrics, broker: &Broker) -> String {
    let mut out = String::with_capacity(8 * 1024);
    let queued = broker.router.registry.queue_totals();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: u64| [(String::new(), v)];
    let by_qos = |counters: &[std::sync::atomic::AtomicU64; 3]| -> Vec<(String, u64)> {
        counters.iter().enumerate().map(|(qos, c)| (format!("{{qos=\"{qos}\"}}"), get(c))).collect()
    };
    family(
        "tern_build_info",
        "gauge",
        "Always 1; the version label says which Tern this is.",
        &[(format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")), 1)],
    );
    family(
        "tern_uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        &one(broker.started.elapsed().as_secs()),
    );
    family("tern_clients_connected", "gauge", "Clients connected now.", &one(get(&m.clients_connected)));
    family(
        "tern_clients_connected_maximum",
        "gauge",
        "Most clients connected at once since start.",
        &one(get(&m.clients_maximum)),
    );
    family(
        "tern_sessions_disconnected",
        "gauge",
        "Persistent sessions whose clients are away.",
        &one(broker.router.registry.offline_len() as u64),
    );
    family(
        "tern_sessions_expired_total",
        "counter",
        "Persistent sessions ended by expiry or eviction while offline.",
        &one(get(&m.sessions_expired)),
    );
    family(
        "tern_sockets_accepted_total",
        "counter",
        "TCP connections accepted, before any handshake.",
        &one(get(&m.sockets_accepted)),
    );
    let accepted: Vec<(String, u64)> = PROTOCOLS
        .iter()
        .zip(&m.connects_accepted)
        .map(|(protocol, c)| (format!("{{protocol=\"{protocol}\"}}"), get(c)))
        .collect();
    family("tern_connects_accepted_total", "counter", "CONNECTs accepted, by protocol version.", &accepted);
    let refused: Vec<(String, u64)> = m
        .connects_refused
        .iter()
        .enumerate()
        .filter(|(_, c)| get(c) > 0)
        .map(|(code, c)| (format!("{{reason=\"{}\"}}", refusal_label(code as u8)), get(c)))
        .collect();
    family("tern_connects_refused_total", "counter", "CONNECTs refused with a CONNACK, by reason.", &refused);
    family(
        "tern_packets_received_total",
        "counter",
        "MQTT control packets received, of every type.",
        &one(get(&m.packets_received)),
    );
    family(
        "tern_packets_sent_total",
        "counter",
        "MQTT control packets sent, of every type.",
        &one(get(&m.packets_sent)),
    );
    family(
        "tern_publish_received_total",
        "counter",
        "PUBLISH packets received from clients, by QoS.",
        &by_qos(&m.publish_received),
    );
    family(
        "tern_publish_sent_total",
        "counter",
        "PUBLISH packets sent to clients, by QoS.",
        &by_qos(&m.publish_sent),
    );
    family(
        "tern_publish_received_payload_bytes_total",
        "counter",
        "Payload bytes of the PUBLISH packets received.",
        &one(get(&m.publish_bytes_received)),
    );
    family(
        "tern_publish_sent_payload_bytes_total",
        "counter",
        "Payload bytes of the PUBLISH packets sent.",
        &one(get(&m.publish_bytes_sent)),
    );
    family(
        "tern_received_bytes_total",
        "counter",
        "MQTT bytes received from clients (inside TLS and WebSocket).",
        &one(get(&m.bytes_received)),
    );
    family(
        "tern_sent_bytes_total",
        "counter",
        "MQTT bytes sent to clients (inside TLS and WebSocket).",
        &one(get(&m.bytes_sent)),
    );
    let dropped: Vec<(String, u64)> = DropReason::ALL
        .iter()
        .map(|&r| (format!("{{reason=\"{}\"}}", r.label()), get(&m.dropped[r as usize])))
        .collect();
    family(
        "tern_messages_dropped_total",
        "counter",
        "Messages not delivered or not routed, by reason.",
        &dropped,
    );
    let dead_letters: Vec<(String, u64)> = Reason::ALL
        .iter()
        .map(|&r| (format!("{{reason=\"{}\"}}", r.label()), get(&m.dead_letters[r as usize])))
        .collect();
    family(
        "tern_dead_letters_total",
        "counter",
        "Dead letters published on $DLQ/, by reason.",
        &dead_letters,
    );
    let suppressed: Vec<(String, u64)> = Suppressed::ALL
        .iter()
        .map(|&c| (format!("{{cause=\"{}\"}}", c.label()), get(&m.dead_letters_suppressed[c as usize])))
        .collect();
    family(
        "tern_dead_letters_suppressed_total",
        "counter",
        "Lost messages that got no dead letter (loop, no reader, rate limit), by cause.",
        &suppressed,
    );
    family(
        "tern_subscriptions",
        "gauge",
        "Subscriptions held by all sessions.",
        &one(get(&m.subscriptions_current)),
    );
    family("tern_retained_messages", "gauge", "Retained messages.", &one(get(&m.retained_current)));
    family(
        "tern_retained_bytes",
        "gauge",
        "Topic and payload bytes of the retained messages.",
        &one(get(&m.retained_bytes_current)),
    );
    family(
        "tern_queued_messages",
        "gauge",
        "Messages waiting in sessions' pending queues.",
        &one(queued.messages),
    );
    family(
        "tern_queued_bytes",
        "gauge",
        "Topic and payload bytes of the queued messages.",
        &one(queued.bytes),
    );
    family(
        "tern_inflight_messages",
        "gauge",
        "QoS 1/2 messages sent to clients and not yet acknowledged.",
        &one(queued.inflight),
    );
    let denied = [("publish", &m.acl_denied[0]), ("subscribe", &m.acl_denied[1])]
        .map(|(action, c)| (format!("{{action=\"{action}\"}}"), get(c)));
    family(
        "tern_acl_denied_total",
        "counter",
        "PUBLISH packets and SUBSCRIBE filters the ACL denied.",
        &denied,
    );
    let by_listener: Vec<(String, u64)> = broker
        .listeners
        .get()
        .into_iter()
        .flatten()
        .flat_map(|listener| {
            PROTOCOLS.iter().zip(&listener.clients).map(move |(protocol, c)| {
                (format!("{{listener=\"{}\",protocol=\"{protocol}\"}}", listener.config.bind), get(c))
            })
        })
        .collect();
    family(
        "tern_connections",
        "gauge",
        "MQTT clients connected now, by listener (its configured address) and protocol version.",
        &by_listener,
    );
    m.storage_commits.render(
        &mut out,
        "tern_storage_commit_duration_seconds",
        "RocksDB write batches (group commits) by how long the write took, in seconds.",
    );
    let started = std::time::SystemTime::now() - broker.started.elapsed();
    if let Ok(since_epoch) = started.duration_since(std::time::UNIX_EPOCH) {
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since the Unix epoch, in seconds.\n\
             # TYPE process_start_time_seconds gauge\nprocess_start_time_seconds {:.3}",
            since_epoch.as_secs_f64()
        );
    }
    crate::bridge::stats::render_metrics(&mut out, tokio::time::Instant::now());
    let process = ProcessStats::read();
    if let Some(cpu) = process.cpu_seconds {
        // A float: the one sample not counted in whole units.
        let _ = writeln!(
            out,
            "# HELP process_cpu_seconds_total User and system CPU time spent, in seconds.\n\
             # TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total {cpu:.2}"
        );
    }
    let mut family = |name: &str, help: &str, value: Option<u64>| {
        if let Some(value) = value {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
        }
    };
    family("process_resident_memory_bytes", "Resident memory size in bytes.", process.resident_bytes);
    family("process_open_fds", "Open file descriptors.", process.open_fds);
    family("process_max_fds", "Limit on open file descriptors.", process.max_fds);
    out
}

/// The process's own figures, from Linux's /proc (absent elsewhere, or when unreadable).
#[derive(Debug, Default)]
struct ProcessStats {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<u64>,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

impl ProcessStats {
    fn read() -> ProcessStats {
        let status = std::fs::read_to_string("/proc/self/status").ok();
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        let limits = std::fs::read_to_string("/proc/self/limits").ok();
        ProcessStats {
            cpu_seconds: stat.as_deref().and_then(cpu_seconds),
            resident_bytes: status.as_deref().and_then(resident_bytes),
            open_fds: std::fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as u64),
            max_fds: limits.as_deref().and_then(max_open_files),
        }
    }
}

/// utime + stime of /proc/self/stat (fields 14 and 15, counted after the parenthesised command
/// name, which may contain spaces), in clock ticks of 1/100 s: USER_HZ is 100 on every Linux
/// architecture.
fn cpu_seconds(stat: &str) -> Option<f64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// `VmRSS:  1234 kB` of /proc/self/status, in bytes.
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The soft limit of `Max open files` in /proc/self/limits.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_method_path_and_authorization() {
        let head = b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nauthorization:  Bearer s3cret \r\n\r\n";
        let request = Request::parse(head).unwrap();
        assert_eq!(request.method, "GET");
        assert_eq!(request.path, "/metrics");
        assert_eq!(request.query, "x=1");
        assert_eq!(request.authorization.as_deref(), Some("Bearer s3cret"));
        assert_eq!(request.content_length, 0);
        let post = Request::parse(b"POST /api/v1/publish HTTP/1.1\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(post.content_length, 12);
        assert!(Request::parse(b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_none());
        assert!(Request::parse(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_none());
        assert!(Request::parse(b"GET / SPDY/3\r\n\r\n").is_none());
        assert!(Request::parse(b"GET\r\n\r\n").is_none());
    }

    #[test]
    fn bearer_token_must_match_exactly() {
        let request = |auth: Option<&str>| Request {
            method: "GET".into(),
            path: "/metrics".into(),
            query: String::new(),
            authorization: auth.map(str::to_owned),
            content_length: 0,
            body: Vec::new(),
        };
        assert!(authorized(&request(None), None));
        assert!(!authorized(&request(None), Some(b"t0k")));
        assert!(!authorized(&request(Some("Bearer t0")), Some(b"t0k")));
        assert!(!authorized(&request(Some("Basic t0k")), Some(b"t0k")));
        assert!(authorized(&request(Some("Bearer t0k")), Some(b"t0k")));
    }

    #[test]
    fn token_file_is_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc\n").unwrap();
        assert_eq!(&*read_token(&path).unwrap(), b"abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(read_token(&path).unwrap_err().to_string().contains("http.token_file"));
        assert!(read_token(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn process_figures_parse_from_proc_formats() {
        let stat = "4242 (tern (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        assert_eq!(resident_bytes("Name:\ttern\nVmRSS:\t   2048 kB\n"), Some(2 * 1024 * 1024));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        let now = ProcessStats::read();
        assert!(now.resident_bytes.is_some_and(|b| b > 0) && now.open_fds.is_some_and(|n| n > 0));
    }

    #[test]
    fn refusal_labels_name_the_reason() {
        assert_eq!(refusal_label(0x87), "not_authorized");
        assert_eq!(refusal_label(0x03), "0x03");
    }
}
