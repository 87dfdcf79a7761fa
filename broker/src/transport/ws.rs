//! MQTT over WebSocket, server side (MQTT 5 §6).
//!
//! [`accept`] performs the HTTP upgrade and subprotocol negotiation; the resulting [`WsStream`] is a plain
//! `AsyncRead + AsyncWrite` byte stream, so the broker runs the same MQTT codec over it as over TCP or TLS.
//! WebSocket message boundaries carry no meaning for MQTT [MQTT-6.0.0-2]: reads yield the concatenated
//! payloads of Binary messages and the codec does the framing.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, error::ProtocolError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

/// Subprotocols we accept: `mqtt` is the one the MQTT spec names (§6); `mqttv3.1` is still offered by
/// old MQTT 3.1 clients. Matching is exact, as the tokens are echoed back and clients compare them
/// byte for byte.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Why a WebSocket connection could not be established.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// The request was for another path than the configured one; the client got a 404.
    #[error("websocket request for unknown path {requested:?}")]
    WrongPath { requested: String },
    /// The client offered no MQTT subprotocol [MQTT-6.0.0-3]; it got a 400.
    #[error("websocket client offered no MQTT subprotocol (offered: {offered:?})")]
    NoMqttSubprotocol { offered: Vec<String> },
    /// Malformed upgrade request, I/O failure or any other handshake error.
    #[error("websocket handshake failed: {0}")]
    Handshake(#[source] tungstenite::Error),
}

impl WsError {
    fn status(&self) -> StatusCode {
        match self {
            WsError::WrongPath { .. } => StatusCode::NOT_FOUND,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// Server-side WebSocket handshake for MQTT, then a plain byte stream.
///
/// `path` is the configured request path (query strings are ignored). `max_message_size` bounds both
/// WebSocket messages and frames, so a peer cannot make us buffer without limit; it must exceed the
/// broker's maximum MQTT packet size because a packet may arrive in one message.
pub async fn accept<S>(stream: S, path: &str, max_message_size: usize) -> Result<WsStream<S>, WsError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    // tungstenite sends the error response itself and then reports a bare HTTP error; keep our own
    // reason so the caller learns why.
    let mut rejection = None;
    // The large `Err` type is tungstenite's `Callback` contract, not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback = |request: &Request, response: Response| {
        negotiate(request, response, path).map_err(|err| {
            let mut reply = ErrorResponse::new(None);
            *reply.status_mut() = err.status();
            rejection = Some(err);
            reply
        })
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_message_size))
        .max_frame_size(Some(max_message_size));
    match tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await {
        Ok(inner) => Ok(WsStream { inner, unread: Bytes::new(), peer_closed: false }),
        Err(err) => Err(rejection.unwrap_or(WsError::Handshake(err))),
    }
}

/// Checks the upgrade request and echoes the chosen subprotocol in the response [MQTT-6.0.0-3].
fn negotiate(request: &Request, mut response: Response, path: &str) -> Result<Response, WsError> {
    if request.uri().path() != path {
        return Err(WsError::WrongPath { requested: request.uri().path().to_owned() });
    }
    // The header is a comma-separated list and may be repeated; the client lists in order of preference.
    let offered: Vec<&str> = request
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .collect();
    match offered.iter().find_map(|token| SUBPROTOCOLS.into_iter().find(|supported| supported == token)) {
        Some(chosen) => {
            response.headers_mut().insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(chosen));
            Ok(response)
        }
        None => Err(WsError::NoMqttSubprotocol { offered: offered.into_iter().map(str::to_owned).collect() }),
    }
}

/// An established MQTT-over-WebSocket connection as a byte stream.
///
/// Reading must be polled for control frames to be answered: tungstenite queues the Pong for a Ping (and
/// the reply to a Close) and writes it on the next read, so a broker that always has a read pending
/// answers pings even when it never writes. Written bytes are buffered by tungstenite (up to its write
/// buffer size, 128 KiB) until flushed, as with a `BufWriter`.
#[derive(Debug)]
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// The part of the last Binary message not yet handed to the reader.
    unread: Bytes,
    /// The peer sent Close: reads report EOF once our reply is flushed.
    peer_closed: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.peer_closed {
                // The connection is over either way; failing to deliver the Close reply changes nothing.
                if let Err(err) = ready!(Pin::new(&mut this.inner).poll_flush(cx)) {
                    debug!("websocket: could not send close reply: {err}");
                }
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(Message::Binary(payload))) => this.unread = payload,
                Some(Ok(Message::Text(_))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text message on an MQTT websocket [MQTT-6.0.0-1]",
                    )));
                }
                Some(Ok(Message::Close(_))) => this.peer_closed = true,
                // tungstenite has queued the Pong; the next poll_next writes it.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                // A TCP close without a Close frame is an EOF like on a plain TCP transport.
                None
                | Some(Err(tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))) => {
                    return Poll::Ready(Ok(()));
                }
                Some(Err(err)) => return Poll::Ready(Err(io_error(err))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    /// Sends `buf` as one Binary message. `poll_ready` makes tungstenite flush its buffer first whenever an
    /// earlier write could not go out, so at most one message beyond the write buffer size is held.
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut inner = Pin::new(&mut self.get_mut().inner);
        ready!(inner.as_mut().poll_ready(cx)).map_err(io_error)?;
        inner.start_send(Message::Binary(Bytes::copy_from_slice(buf))).map_err(io_error)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx).map_err(io_error)
    }

    /// Sends a Close frame, flushes, then shuts the underlying stream down (TCP FIN, TLS close_notify).
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let inner = &mut self.get_mut().inner;
        ready!(Pin::new(&mut *inner).poll_close(cx)).map_err(io_error)?;
        Pin::new(inner.get_mut()).poll_shutdown(cx)
    }
}

/// Maps a tungstenite error to `io::Error`, keeping it as the source (or unwrapping an I/O error).
fn io_error(err: tungstenite::Error) -> io::Error {
    use tungstenite::Error as E;
    let kind = match err {
        E::Io(err) => return err,
        E::ConnectionClosed | E::AlreadyClosed => io::ErrorKind::BrokenPipe,
        E::Capacity(_) | E::Protocol(_) | E::Utf8(_) | E::AttackAttempt => io::ErrorKind::InvalidData,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use std::future::Future;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    type Client = WebSocketStream<DuplexStream>;
    type ClientResult = Result<(Client, tungstenite::handshake::client::Response), tungstenite::Error>;

    const MAX: usize = 2 << 20;

    async fn within<F: Future>(fut: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), fut).await.expect("test timed out")
    }

    /// Runs both handshake sides over an in-memory pipe; `protocols` holds one header value per entry.
    async fn handshake(
        uri: &str,
        protocols: &[&str],
        max: usize,
    ) -> (Result<WsStream<DuplexStream>, WsError>, ClientResult) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let mut request = uri.into_client_request().unwrap();
        for value in protocols {
            request.headers_mut().append(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_str(value).unwrap());
        }
        let server = accept(server_io, "/mqtt", max);
        within(async { tokio::join!(server, tokio_tungstenite::client_async(request, client_io)) }).await
    }

    async fn connected() -> (WsStream<DuplexStream>, Client) {
        let (server, client) = handshake("ws://localhost/mqtt", &["mqtt"], MAX).await;
        (server.unwrap(), client.unwrap().0)
    }

    fn echoed(client: &ClientResult) -> &str {
        client.as_ref().unwrap().1.headers()[SEC_WEBSOCKET_PROTOCOL].to_str().unwrap()
    }

    fn rejected_status(client: ClientResult) -> StatusCode {
        match client {
            Err(tungstenite::Error::Http(response)) => response.status(),
            other => panic!("expected an HTTP rejection, got {other:?}"),
        }
    }

    #[test]
    fn accept_future_is_send() {
        fn assert_send<T: Send>(_: T) {}
        assert_send(accept(tokio::io::duplex(1).0, "/mqtt", MAX));
    }

    #[tokio::test]
    async fn handshake_echoes_mqtt() {
        let (server, client) = handshake("ws://localhost/mqtt?client=1", &["mqtt"], MAX).await;
        assert!(server.is_ok());
        assert_eq!(echoed(&client), "mqtt");
    }

    /// tungstenite's client only reads the first `Sec-WebSocket-Protocol` header, so repeated headers are
    /// checked on `negotiate` directly.
    #[test]
    fn negotiate_picks_first_supported_from_lists_and_repeated_headers() {
        let request = Request::builder()
            .uri("/mqtt")
            .header(SEC_WEBSOCKET_PROTOCOL, "chat, foo")
            .header(SEC_WEBSOCKET_PROTOCOL, "mqttv3.1 , mqtt")
            .body(())
            .unwrap();
        let response = negotiate(&request, Response::default(), "/mqtt").unwrap();
        assert_eq!(response.headers()[SEC_WEBSOCKET_PROTOCOL], "mqttv3.1");
    }

    #[tokio::test]
    async fn handshake_accepts_legacy_mqttv31() {
        let (server, client) = handshake("ws://localhost/mqtt", &["mqttv3.1"], MAX).await;
        assert!(server.is_ok());
        assert_eq!(echoed(&client), "mqttv3.1");
    }

    #[tokio::test]
    async fn wrong_path_gets_404() {
        let (server, client) = handshake("ws://localhost/other", &["mqtt"], MAX).await;
        assert!(matches!(server, Err(WsError::WrongPath { requested }) if requested == "/other"));
        assert_eq!(rejected_status(client), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn missing_or_wrong_subprotocol_gets_400() {
        for protocols in [&[][..], &["chat", "MQTT"][..]] {
            let (server, client) = handshake("ws://localhost/mqtt", protocols, MAX).await;
            assert!(matches!(server, Err(WsError::NoMqttSubprotocol { .. })), "{protocols:?}");
            assert_eq!(rejected_status(client), StatusCode::BAD_REQUEST);
        }
    }

    #[tokio::test]
    async fn garbage_request_is_handshake_error() {
        let (mut client_io, server_io) = tokio::io::duplex(1024);
        let server = tokio::spawn(accept(server_io, "/mqtt", MAX));
        client_io.write_all(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\r\n\r\n").await.unwrap();
        assert!(matches!(within(server).await.unwrap(), Err(WsError::Handshake(_))));
    }

    #[tokio::test]
    async fn packet_split_across_messages_is_concatenated() {
        let (mut server, mut client) = connected().await;
        for part in [&b"\x30\x0a\x00"[..], b"\x03a/b", b"hello"] {
            client.send(Message::binary(part.to_vec())).await.unwrap();
        }
        let mut packet = [0; 12];
        within(server.read_exact(&mut packet)).await.unwrap();
        assert_eq!(&packet, b"\x30\x0a\x00\x03a/bhello");
    }

    #[tokio::test]
    async fn two_packets_in_one_message_arrive_intact() {
        let (mut server, mut client) = connected().await;
        client.send(Message::binary(&b"\xc0\x00\xe0\x00"[..])).await.unwrap();
        let (mut first, mut second) = ([0; 2], [0; 2]);
        within(server.read_exact(&mut first)).await.unwrap();
        within(server.read_exact(&mut second)).await.unwrap();
        assert_eq!((&first, &second), (b"\xc0\x00", b"\xe0\x00"));
    }

    #[tokio::test]
    async fn large_message_within_limit() {
        let (mut server, mut client) = connected().await;
        let payload: Vec<u8> = (0..1 << 20).map(|i| i as u8).collect();
        let sent = payload.clone();
        tokio::spawn(async move { client.send(Message::binary(sent)).await.map(|()| client) });
        let mut received = vec![0; payload.len()];
        within(server.read_exact(&mut received)).await.unwrap();
        assert!(received == payload);
    }

    #[tokio::test]
    async fn message_above_limit_is_error() {
        let (server, client) = handshake("ws://localhost/mqtt", &["mqtt"], 1024).await;
        let (mut server, mut client) = (server.unwrap(), client.unwrap().0);
        tokio::spawn(async move { client.send(Message::binary(vec![0; 1025])).await.map(|()| client) });
        let err = within(server.read(&mut [0; 64])).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn text_message_is_invalid_data() {
        let (mut server, mut client) = connected().await;
        client.send(Message::text("\x10\x00")).await.unwrap();
        let err = within(server.read(&mut [0; 64])).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn ping_is_answered_while_server_only_reads() {
        let (mut server, mut client) = connected().await;
        let reader = tokio::spawn(async move { server.read(&mut [0; 64]).await });
        client.send(Message::Ping(Bytes::from_static(b"hb"))).await.unwrap();
        let reply = within(client.next()).await.unwrap().unwrap();
        assert_eq!(reply, Message::Pong(Bytes::from_static(b"hb")));
        assert!(!reader.is_finished());
        reader.abort();
    }

    #[tokio::test]
    async fn writes_arrive_as_binary_and_shutdown_sends_close() {
        let (mut server, mut client) = connected().await;
        within(async {
            server.write_all(b"\x20\x02\x00\x00").await.unwrap();
            server.write_all(b"\xd0\x00").await.unwrap();
            server.flush().await.unwrap();
        })
        .await;
        assert_eq!(within(client.next()).await.unwrap().unwrap(), Message::binary(&b"\x20\x02\x00\x00"[..]));
        assert_eq!(within(client.next()).await.unwrap().unwrap(), Message::binary(&b"\xd0\x00"[..]));
        within(server.shutdown()).await.unwrap();
        assert!(matches!(within(client.next()).await, Some(Ok(Message::Close(_)))));
        assert!(within(client.next()).await.is_none());
    }

    #[tokio::test]
    async fn client_close_gives_eof_after_reply() {
        let (mut server, mut client) = connected().await;
        client.send(Message::binary(&b"\xe0\x00"[..])).await.unwrap();
        client.close(Some(CloseFrame { code: 1000.into(), reason: "bye".into() })).await.unwrap();
        let mut received = Vec::new();
        within(server.read_to_end(&mut received)).await.unwrap();
        assert_eq!(received, b"\xe0\x00");
        assert!(matches!(within(client.next()).await, Some(Ok(Message::Close(Some(_))))));
    }

    #[tokio::test]
    async fn tcp_close_without_close_frame_is_eof() {
        let (mut server, client) = connected().await;
        drop(client);
        assert_eq!(within(server.read(&mut [0; 64])).await.unwrap(), 0);
    }
}
