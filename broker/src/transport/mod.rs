//! Transports: what turns an accepted TCP socket into the byte stream MQTT runs over — nothing
//! (`tcp`), a TLS session (`tls`), a WebSocket (`ws`) or a WebSocket inside TLS (`wss`).
//!
//! `establish` runs in the connection's own task, under the connect timeout, so a slow or
//! hostile handshake never holds up the accept loop. Everything after it — codec, session,
//! broker features — is the same on every transport.

pub mod tls;
pub mod ws;

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::{ListenerConfig, Transport};
use tls::{TlsContext, TlsError};
use ws::WsError;

/// The byte stream of one connection. Plain TCP is held as it is: every idle connection would
/// otherwise carry a shared socket and two boxed halves for nothing (the connection reads and
/// writes from one task, so it never needs split halves).
pub enum Stream {
    Tcp(TcpStream),
    /// TLS, WebSocket or both.
    Wrapped(Box<dyn Duplex>),
}

/// What a wrapped transport provides.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Wrapped(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Wrapped(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Wrapped(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Wrapped(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Room a WebSocket message may take beyond the largest MQTT packet (a message may carry the
/// end of one packet and the start of the next).
const WS_MESSAGE_HEADROOM: usize = 64 * 1024;

/// A transport handshake that failed; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error(transparent)]
    WebSocket(#[from] WsError),
}

/// A connection ready for MQTT.
pub struct Established {
    pub stream: Stream,
    /// The user named by a verified client certificate, when the listener takes it from there.
    pub certificate_user: Option<ByteString>,
}

/// A configured listener: its settings, its TLS context and its open connections.
#[derive(Debug)]
pub struct Listener {
    pub config: ListenerConfig,
    tls: Option<TlsContext>,
    open: AtomicUsize,
    /// MQTT clients connected through it now, by protocol (indexes `metrics::PROTOCOLS`).
    pub clients: [AtomicU64; 3],
}

impl Listener {
    /// Loads the listener's certificates, if it uses TLS.
    pub fn new(config: ListenerConfig) -> Result<Listener, TlsError> {
        let tls = config.tls.as_ref().map(TlsContext::load).transpose()?;
        Ok(Listener { config, tls, open: AtomicUsize::new(0), clients: Default::default() })
    }

    /// Re-reads the certificate files (SIGHUP); open connections are not affected.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.tls.as_ref().map_or(Ok(()), TlsContext::reload)
    }

    /// Counts a new connection; false when the listener's own limit is reached.
    pub fn try_open(&self) -> bool {
        try_increment(&self.open, self.config.max_connections)
    }

    pub fn close(&self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// Runs the transport's handshakes on an accepted socket.
    pub async fn establish(
        &self,
        tcp: TcpStream,
        max_packet_size: usize,
    ) -> Result<Established, TransportError> {
        if self.tls.is_none() && self.config.transport != Transport::Ws {
            return Ok(Established { stream: Stream::Tcp(tcp), certificate_user: None });
        }
        // Boxed: TLS and WebSocket handshakes take several KiB of state, which every plain TCP
        // connection would otherwise reserve while it connects.
        Box::pin(self.establish_wrapped(tcp, max_packet_size)).await
    }

    async fn establish_wrapped(
        &self,
        tcp: TcpStream,
        max_packet_size: usize,
    ) -> Result<Established, TransportError> {
        let ws_limit = max_packet_size.saturating_add(WS_MESSAGE_HEADROOM);
        let path = &self.config.ws_path;
        let (stream, certificate_user) = match &self.tls {
            None => (Stream::Wrapped(Box::new(ws::accept(tcp, path, ws_limit).await?)), None),
            Some(tls) => {
                let stream = tls.accept(tcp).await.map_err(TransportError::Tls)?;
                let user = tls.certificate_user(&stream);
                match self.config.transport {
                    Transport::Wss => {
                        (Stream::Wrapped(Box::new(ws::accept(stream, path, ws_limit).await?)), user)
                    }
                    _ => (Stream::Wrapped(Box::new(stream)), user),
                }
            }
        };
        Ok(Established { stream, certificate_user })
    }
}

/// Increments `counter` unless it already holds `limit` (0 = no limit).
pub fn try_increment(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (limit == 0 || n < limit).then_some(n + 1))
        .is_ok()
}
