//! The part of the NATS client protocol the JetStream sink speaks, sans-IO: what the server
//! sends (`INFO`, `MSG`, `HMSG`, `PING`, `PONG`, `+OK`, `-ERR`) decoded from a buffer, and what
//! the client sends (`CONNECT`, `SUB`, `PUB`, `HPUB`, `PING`, `PONG`) encoded into one.
//! Reference: <https://docs.nats.io/reference/reference-protocols/nats-protocol>.
//!
//! Hand-written rather than async-nats (docs/decisions/0006-jetstream-sink.md): the sink needs
//! a dozen lines of protocol, and its link state must be the bridge's, not a client's that
//! reconnects and buffers on its own.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// A control line longer than this without CRLF is a protocol error (the server's own limit
/// is 4096 by default; INFO with many cluster URLs can be longer).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Why the server's bytes could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("control line longer than {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
    #[error("malformed {0} line")]
    Malformed(&'static str),
    #[error("unknown operation {0:?}")]
    Unknown(String),
    #[error("payload of {0} bytes exceeds the announced maximum")]
    TooLarge(usize),
}

/// The server's INFO, the fields the sink uses.
#[derive(Debug, Default, Deserialize)]
pub struct Info {
    #[serde(default)]
    pub server_name: String,
    #[serde(default)]
    pub version: String,
    /// Largest payload (headers included) the server takes.
    #[serde(default)]
    pub max_payload: usize,
    /// The server understands HPUB/HMSG (NATS 2.2 and later).
    #[serde(default)]
    pub headers: bool,
    #[serde(default)]
    pub tls_required: bool,
    /// To be signed by an NKEY client (servers with NKEY users send one).
    #[serde(default)]
    pub nonce: Option<String>,
}

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerOp {
    Info(String),
    Ping,
    Pong,
    Ok,
    Err(String),
    /// `MSG` or `HMSG`; `headers` holds the header block (status line first), empty for MSG.
    Msg {
        subject: String,
        headers: Bytes,
        payload: Bytes,
    },
}

/// Decodes one operation from `buf`, consuming it; `None` until a whole one is there.
/// `max_payload` bounds what a MSG may announce (the buffer would otherwise grow to it).
pub fn decode(buf: &mut BytesMut, max_payload: usize) -> Result<Option<ServerOp>, ProtocolError> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        if buf.len() > MAX_CONTROL_LINE {
            return Err(ProtocolError::LineTooLong);
        }
        return Ok(None);
    };
    let line = String::from_utf8_lossy(&buf[..end]).into_owned();
    let (op, rest) = line.split_once([' ', '\t']).unwrap_or((line.as_str(), ""));
    let rest = rest.trim();
    let simple = match op.to_ascii_uppercase().as_str() {
        "PING" => ServerOp::Ping,
        "PONG" => ServerOp::Pong,
        "+OK" => ServerOp::Ok,
        "-ERR" => ServerOp::Err(rest.trim_matches('\'').to_owned()),
        "INFO" => ServerOp::Info(rest.to_owned()),
        "MSG" | "HMSG" => return decode_msg(buf, end, op.eq_ignore_ascii_case("HMSG"), rest, max_payload),
        _ => return Err(ProtocolError::Unknown(op.chars().take(16).collect())),
    };
    buf.advance(end + 2);
    Ok(Some(simple))
}

/// `MSG <subject> <sid> [reply-to] <#bytes>` or `HMSG <subject> <sid> [reply-to] <#header
/// bytes> <#total bytes>`, then the bytes and CRLF.
fn decode_msg(
    buf: &mut BytesMut,
    line_end: usize,
    with_headers: bool,
    args: &str,
    max_payload: usize,
) -> Result<Option<ServerOp>, ProtocolError> {
    let name = if with_headers { "HMSG" } else { "MSG" };
    let fields: Vec<&str> = args.split_ascii_whitespace().collect();
    let sizes = if with_headers { 2 } else { 1 };
    if !(2 + sizes..=3 + sizes).contains(&fields.len()) {
        return Err(ProtocolError::Malformed(name));
    }
    let number = |s: &str| s.parse::<usize>().map_err(|_| ProtocolError::Malformed(name));
    let total = number(fields[fields.len() - 1])?;
    let header_len = if with_headers { number(fields[fields.len() - 2])? } else { 0 };
    if header_len > total {
        return Err(ProtocolError::Malformed(name));
    }
    if total > max_payload {
        return Err(ProtocolError::TooLarge(total));
    }
    let start = line_end + 2;
    if buf.len() < start + total + 2 {
        return Ok(None);
    }
    let subject = fields[0].to_owned();
    buf.advance(start);
    let mut body = buf.split_to(total).freeze();
    if &buf[..2] != b"\r\n" {
        return Err(ProtocolError::Malformed(name));
    }
    buf.advance(2);
    let headers = body.split_to(header_len);
    Ok(Some(ServerOp::Msg { subject, headers, payload: body }))
}

/// The status code of a header block's first line (`NATS/1.0 503`), if any.
pub fn status(headers: &[u8]) -> Option<u16> {
    let line = headers.split(|b| *b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.strip_prefix("NATS/1.0")?.split_ascii_whitespace().next()?.parse().ok()
}

/// The client's CONNECT options.
#[derive(Debug, Serialize)]
pub struct Connect<'a> {
    pub verbose: bool,
    pub pedantic: bool,
    pub tls_required: bool,
    pub name: &'a str,
    pub lang: &'static str,
    pub version: &'static str,
    /// 1: the server may send async INFO updates.
    pub protocol: u8,
    pub headers: bool,
    /// A request nobody subscribes to is answered with status 503 at once.
    pub no_responders: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pass: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_token: Option<&'a str>,
    /// NKEY authentication: the user's public key and its signature of the INFO nonce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sig: Option<&'a str>,
}

pub fn encode_connect(connect: &Connect<'_>, out: &mut BytesMut) {
    // Serializing a struct of strings and numbers cannot fail.
    let json = serde_json::to_string(connect).unwrap_or_default();
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn encode_sub(subject: &str, sid: u64, out: &mut BytesMut) {
    out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
}

pub fn encode_ping(out: &mut BytesMut) {
    out.extend_from_slice(b"PING\r\n");
}

pub fn encode_pong(out: &mut BytesMut) {
    out.extend_from_slice(b"PONG\r\n");
}

/// `HPUB <subject> [reply] <#header bytes> <#total bytes>` with `headers` as `Name: value`
/// lines under `NATS/1.0`, or `PUB` when there are none.
pub fn encode_publish(
    subject: &str,
    reply: Option<&str>,
    headers: &[(&str, &str)],
    payload: &[u8],
    out: &mut BytesMut,
) {
    let reply = reply.map(|r| format!(" {r}")).unwrap_or_default();
    if headers.is_empty() {
        out.extend_from_slice(format!("PUB {subject}{reply} {}\r\n", payload.len()).as_bytes());
    } else {
        let mut block = String::from("NATS/1.0\r\n");
        for (name, value) in headers {
            block.push_str(&format!("{name}: {value}\r\n"));
        }
        block.push_str("\r\n");
        let total = block.len() + payload.len();
        out.extend_from_slice(format!("HPUB {subject}{reply} {} {total}\r\n", block.len()).as_bytes());
        out.extend_from_slice(block.as_bytes());
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

/// The size on the wire of a publish's headers and payload, to compare with `max_payload`.
pub fn publish_size(headers: &[(&str, &str)], payload: usize) -> usize {
    let block: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    payload + if headers.is_empty() { 0 } else { block + "NATS/1.0\r\n\r\n".len() }
}

/// JetStream's answer to a publish: the PubAck, or an API error.
#[derive(Debug, Deserialize)]
pub struct PubAck {
    #[serde(default)]
    pub stream: String,
    #[serde(default)]
    pub seq: u64,
    /// The stream already had this `Nats-Msg-Id` within its duplicate window.
    #[serde(default)]
    pub duplicate: bool,
    #[serde(default)]
    pub error: Option<ApiError>,
}

#[derive(Debug, Deserialize)]
pub struct ApiError {
    pub code: u16,
    #[serde(default)]
    pub err_code: u32,
    #[serde(default)]
    pub description: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Vec<ServerOp> {
        let mut buf = BytesMut::from(bytes);
        let mut ops = Vec::new();
        while let Some(op) = decode(&mut buf, 1 << 20).unwrap() {
            ops.push(op);
        }
        assert!(buf.is_empty(), "left: {buf:?}");
        ops
    }

    #[test]
    fn server_operations_decode() {
        let ops = all(b"INFO {\"max_payload\":1048576}\r\nPING\r\n+OK\r\n-ERR 'Authorization Violation'\r\n\
                        MSG _INBOX.a.1 1 5\r\nhello\r\nHMSG _INBOX.a.2 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n\
                        MSG s 1 r 0\r\n\r\n");
        assert_eq!(ops[0], ServerOp::Info("{\"max_payload\":1048576}".into()));
        assert_eq!(ops[1], ServerOp::Ping);
        assert_eq!(ops[2], ServerOp::Ok);
        assert_eq!(ops[3], ServerOp::Err("Authorization Violation".into()));
        assert_eq!(
            ops[4],
            ServerOp::Msg {
                subject: "_INBOX.a.1".into(),
                headers: Bytes::new(),
                payload: Bytes::from_static(b"hello")
            }
        );
        let ServerOp::Msg { headers, payload, .. } = &ops[5] else { panic!("{:?}", ops[5]) };
        assert_eq!(status(headers), Some(503));
        assert!(payload.is_empty());
        assert!(matches!(&ops[6], ServerOp::Msg { subject, .. } if subject == "s"));
    }

    #[test]
    fn partial_input_waits_and_bad_input_is_an_error() {
        let mut buf = BytesMut::from(&b"MSG a 1 5\r\nhel"[..]);
        assert_eq!(decode(&mut buf, 100), Ok(None));
        buf.extend_from_slice(b"lo\r\n");
        assert!(matches!(decode(&mut buf, 100), Ok(Some(ServerOp::Msg { .. }))));
        for bad in
            [&b"MSG a 1 x\r\n"[..], b"MSG a\r\n", b"HMSG a 1 9 5\r\n", b"MSG a 1 2\r\nabcd", b"FOO\r\n"]
        {
            assert!(decode(&mut BytesMut::from(bad), 100).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            decode(&mut BytesMut::from(&b"MSG a 1 101\r\n"[..]), 100),
            Err(ProtocolError::TooLarge(101))
        );
        assert_eq!(
            decode(&mut BytesMut::from(&vec![b'x'; MAX_CONTROL_LINE + 1][..]), 100),
            Err(ProtocolError::LineTooLong)
        );
    }

    #[test]
    fn publish_encodes_with_and_without_headers() {
        let mut out = BytesMut::new();
        encode_publish("a.b", Some("_INBOX.x.1"), &[("Nats-Msg-Id", "c:7")], b"hi", &mut out);
        let block = "NATS/1.0\r\nNats-Msg-Id: c:7\r\n\r\n";
        let want = format!("HPUB a.b _INBOX.x.1 {} {}\r\n{block}hi\r\n", block.len(), block.len() + 2);
        assert_eq!(&out[..], want.as_bytes());
        assert_eq!(publish_size(&[("Nats-Msg-Id", "c:7")], 2), block.len() + 2);
        out.clear();
        encode_publish("a", None, &[], b"x", &mut out);
        assert_eq!(&out[..], b"PUB a 1\r\nx\r\n");
    }

    #[test]
    fn pub_acks_and_errors_parse() {
        let ok: PubAck = serde_json::from_str(r#"{"stream":"S","seq":7,"duplicate":true}"#).unwrap();
        assert!(ok.error.is_none() && ok.duplicate && ok.seq == 7 && ok.stream == "S");
        let err: PubAck = serde_json::from_str(
            r#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#,
        )
        .unwrap();
        assert_eq!(err.error.map(|e| (e.code, e.err_code)), Some((400, 10060)));
    }
}
