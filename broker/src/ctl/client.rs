//! The admin API's client for `tern ctl`: one blocking HTTP/1.1 request per connection, the
//! counterpart of the responder in `http.rs` (which closes after each answer), so std's
//! `TcpStream` is all it takes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use super::CtlError;

/// How long to wait for the connection, and then for the whole answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the API is and the token it wants.
#[derive(Debug)]
pub struct ApiClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

/// A status and a body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl ApiClient {
    /// Sends one request (`path` includes the query) and reads the whole answer.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> Result<Answer, CtlError> {
        let unreachable = |source: std::io::Error| CtlError::Unreachable { addr: self.addr, source };
        let mut stream = TcpStream::connect_timeout(&self.addr, CONNECT_TIMEOUT).map_err(unreachable)?;
        stream.set_read_timeout(Some(ANSWER_TIMEOUT)).map_err(unreachable)?;
        stream.set_write_timeout(Some(ANSWER_TIMEOUT)).map_err(unreachable)?;
        let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n", self.addr);
        if let Some(token) = &self.token {
            request.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
        stream.write_all(request.as_bytes()).map_err(unreachable)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(|source| CtlError::BadAnswer(source.to_string()))?;
        parse_answer(&raw)
    }
}

/// Status and body of a complete HTTP/1.1 response.
fn parse_answer(raw: &[u8]) -> Result<Answer, CtlError> {
    let bad = |why: &str| CtlError::BadAnswer(why.into());
    let text = std::str::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| head.starts_with("HTTP/1."))
        .ok_or_else(|| bad("no HTTP status line"))?;
    Ok(Answer { status, body: body.to_owned() })
}

/// Percent-encodes a path segment or query value: everything but RFC 3986's unreserved
/// characters, so '#', '+', '/' and '&' in filters and client ids arrive as they were.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_wildcards_separators_and_utf8() {
        assert_eq!(percent_encode("a/+/#"), "a%2F%2B%2F%23");
        assert_eq!(percent_encode("id-1_x.y~"), "id-1_x.y~");
        assert_eq!(percent_encode("é &"), "%C3%A9%20%26");
    }

    #[test]
    fn answers_parse_and_garbage_is_refused() {
        let answer = parse_answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((answer.status, answer.body.as_str()), (404, "{}"));
        assert!(parse_answer(b"SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse_answer(b"HTTP/1.1 abc\r\n\r\n").is_err());
    }
}
