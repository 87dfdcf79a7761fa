//! Transports: what turns an accepted TCP socket into the byte stream MQTT runs over — nothing
//! (`tcp`), a TLS session (`tls`), a WebSocket (`ws`) or a WebSocket inside TLS (`wss`).
//!
//! `establish` runs in the connection's own task, under the connect timeout, so a slow or
//! hostile handshake never holds up the accept loop. Everything after it — codec, session,
//! broker features — is the same on every transport.

pub mod tls;
pub mod ws;

use std::sync::atomic::{AtomicUsize, Ordering};

use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::{ListenerConfig, Transport};
use tls::{TlsContext, TlsError};
use ws::WsError;

pub type Reader = Box<dyn AsyncRead + Send + Unpin>;
pub type Writer = Box<dyn AsyncWrite + Send + Unpin>;

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
    pub reader: Reader,
    pub writer: Writer,
    /// The user named by a verified client certificate, when the listener takes it from there.
    pub certificate_user: Option<ByteString>,
}

/// A configured listener: its settings, its TLS context and its open connections.
#[derive(Debug)]
pub struct Listener {
    pub config: ListenerConfig,
    tls: Option<TlsContext>,
    open: AtomicUsize,
}

impl Listener {
    /// Loads the listener's certificates, if it uses TLS.
    pub fn new(config: ListenerConfig) -> Result<Listener, TlsError> {
        let tls = config.tls.as_ref().map(TlsContext::load).transpose()?;
        Ok(Listener { config, tls, open: AtomicUsize::new(0) })
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
        let ws_limit = max_packet_size.saturating_add(WS_MESSAGE_HEADROOM);
        let path = &self.config.ws_path;
        let (reader, writer, certificate_user): (Reader, Writer, _) = match (&self.tls, self.config.transport)
        {
            (None, Transport::Ws) => {
                let (r, w) = tokio::io::split(ws::accept(tcp, path, ws_limit).await?);
                (Box::new(r), Box::new(w), None)
            }
            (Some(tls), Transport::Wss) => {
                let stream = tls.accept(tcp).await.map_err(TransportError::Tls)?;
                let user = tls.certificate_user(&stream);
                let (r, w) = tokio::io::split(ws::accept(stream, path, ws_limit).await?);
                (Box::new(r), Box::new(w), user)
            }
            (Some(tls), _) => {
                let stream = tls.accept(tcp).await.map_err(TransportError::Tls)?;
                let user = tls.certificate_user(&stream);
                let (r, w) = tokio::io::split(stream);
                (Box::new(r), Box::new(w), user)
            }
            (None, _) => {
                let (r, w) = tcp.into_split();
                (Box::new(r), Box::new(w), None)
            }
        };
        Ok(Established { reader, writer, certificate_user })
    }
}

/// Increments `counter` unless it already holds `limit` (0 = no limit).
pub fn try_increment(counter: &AtomicUsize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (limit == 0 || n < limit).then_some(n + 1))
        .is_ok()
}
