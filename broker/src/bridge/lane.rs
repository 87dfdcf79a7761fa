//! A bridge's link once connected, whatever its upstream speaks (`link.rs`: an MQTT server,
//! `jetstream.rs`: a NATS JetStream sink): one loop over the socket, the bridge session's
//! pending queue, the keep-alive and protocol timers, the control slot and the bridge's stop
//! token. The protocol is behind `Wire`; the order of a turn, liveness, `max_rate` and how a
//! link ends are the same for both.
//!
//! The rule of docs/decisions/0002-storage.md holds here as in a client connection: each turn
//! commits the storage ops the last event produced, and awaits them before any output that
//! depends on them is written. So an upstream PUBLISH is acknowledged only once its local
//! publish is stored, and a forwarded message goes out only once its packet id and state are.
//!
//! Liveness: a ping goes out when nothing was received, or nothing sent, for half the
//! keep-alive (and none is outstanding); the link is dead when nothing at all was received for
//! 1.5 × the keep-alive, or a write cannot complete by then. Half the keep-alive keeps a
//! healthy link's silences well below 1.5 × keep-alive even with one round trip of delay.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::link::ConnectError;
use super::rate::TokenBucket;
use super::Bridge;
use crate::config::bridge::BridgeConfig;
use crate::packet::Packet;
use crate::session::registry::Control;
use crate::storage::Op;

/// The connection to the upstream: TCP, or TLS over TCP.
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The upstream connection: the stream, and its TCP socket for the options set while linked.
pub(super) struct Socket {
    io: Box<dyn Io>,
    tcp: OwnedFd,
}

/// Read buffer growth step.
pub(super) const READ_SIZE: usize = 16 * 1024;

/// How long a probe of the primary address waits to see the connection stay open: a server
/// that is up waits for the client to speak (or greets it), one that is not refuses or resets.
const PROBE_HOLD: Duration = Duration::from_millis(250);

/// How long a DISCONNECT at shutdown may take to write.
const FAREWELL_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads from `io` into `rbuf` until `decode` finds a whole operation; `None` when the peer
/// closed first. For handshakes, before the connected phase's loop.
pub(super) async fn read_until<T>(
    io: &mut (impl AsyncRead + Unpin + ?Sized),
    rbuf: &mut BytesMut,
    mut decode: impl FnMut(&mut BytesMut) -> Result<Option<T>, ConnectError>,
) -> Result<Option<T>, ConnectError> {
    loop {
        if let Some(item) = decode(rbuf)? {
            return Ok(Some(item));
        }
        rbuf.reserve(READ_SIZE);
        if io.read_buf(rbuf).await? == 0 {
            return Ok(None);
        }
    }
}

/// Why a link ended.
pub(super) enum Ending {
    /// Broker shutdown, or a reload that stops or restarts the bridge.
    Shutdown,
    /// Lost or closed; the bridge reconnects.
    Lost(String),
    /// Linked to a secondary address, the primary answers again: the bridge goes back to it.
    PrimaryBack,
}

/// What differs between the upstream protocols in the connected phase.
pub(super) trait Wire: Send {
    /// Who is at the other end, in log lines ("the upstream").
    const PEER: &'static str;
    /// The normative statement a dead link is judged by, if the protocol has one.
    const SILENCE_RULE: &'static str = "";

    /// Where the session's output goes until `encode_out`.
    fn out(&mut self) -> &mut Vec<Packet>;

    /// Stores what the last event changed; awaited when output depends on it. An error drops
    /// the link (nothing it would have acknowledged is).
    async fn commit(&mut self, bridge: &mut Bridge) -> Result<(), String>;

    /// Encodes the output into `wbuf`.
    fn encode_out(&mut self, bridge: &mut Bridge, wbuf: &mut BytesMut) -> Result<(), String>;

    /// Handles every complete operation in `bufs.rbuf`: answers go to `bufs.wbuf` or the
    /// output, and the answer to a ping clears `bufs.pinging`.
    fn handle_input(&mut self, bridge: &mut Bridge, bufs: &mut Buffers) -> Result<(), String>;

    /// Asks the peer for a sign of life.
    fn ping(&mut self, wbuf: &mut BytesMut);

    /// A deadline of the protocol's own (besides keep-alive), and what to do when it passes.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    fn on_deadline(&mut self, _bridge: &mut Bridge, _now: Instant, _wbuf: &mut BytesMut) {}

    /// What to send before closing at shutdown.
    fn farewell(&mut self, _wbuf: &mut BytesMut) {}
}

/// The socket's buffers, and whether a ping awaits its answer.
pub(super) struct Buffers {
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: BytesMut,
    pub(super) pinging: bool,
}

pub(super) struct Lane<W> {
    stream: Box<dyn Io>,
    /// The stream's TCP socket (a duplicate descriptor), for `quick_ack`.
    tcp: OwnedFd,
    /// Something was read since the last turn's write.
    read_unanswered: bool,
    pub(super) bufs: Buffers,
    pub(super) wire: W,
    pub(super) keep_alive: Duration,
    last_received: Instant,
    last_sent: Instant,
    /// While on a secondary address: resolves when the primary is back (`probe`).
    primary_back: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// `max_rate`: forwarded messages leave the queue only with a token.
    rate: Option<TokenBucket>,
}

/// Opens the TCP connection of a link: no Nagle (acknowledgements must not wait), and a write
/// into a dead link fails in the kernel too (`set_user_timeout`).
pub(super) async fn connect_tcp(address: &str, keep_alive: Duration) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    set_user_timeout(&tcp, keep_alive * 3 / 2)?;
    Ok(tcp)
}

/// TLS over `tcp` when the bridge has a `tls` table: the upstream's certificate verified against
/// its CA for the server name (`tls.server_name`, else the address's host), the bridge's own
/// certificate presented when configured. Plain TCP otherwise.
pub(super) async fn secure(bridge: &Bridge, address: &str, tcp: TcpStream) -> Result<Socket, ConnectError> {
    let fd = tcp.as_fd().try_clone_to_owned()?;
    let Some(tls) = &bridge.tls else { return Ok(Socket { io: Box::new(tcp), tcp: fd }) };
    let host = bridge.config.tls.as_ref().and_then(|t| t.server_name.as_deref());
    let host = host.unwrap_or_else(|| crate::config::bridge::address_host(address));
    // Checked when the configuration was loaded.
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .map_err(|e| ConnectError::Protocol(format!("server name {host}: {e}")))?;
    let io = Box::new(tokio_rustls::TlsConnector::from(tls.clone()).connect(name, tcp).await?);
    Ok(Socket { io, tcp: fd })
}

/// Data we sent that stays unacknowledged by the peer's TCP for this long aborts the
/// connection in the kernel (TCP_USER_TIMEOUT, Linux): a write into a dead link fails there
/// too, not only through the keep-alive timer.
pub(super) fn set_user_timeout(tcp: &TcpStream, timeout: Duration) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(timeout))?;
    #[cfg(not(target_os = "linux"))]
    let _ = (tcp, timeout);
    Ok(())
}

/// Asks the kernel to acknowledge what arrived at once instead of delaying the ACK (up to
/// 40 ms); done after a turn that read something and has nothing to write, since a write
/// carries the ACK anyway. An upstream that writes with Nagle's algorithm on (Node.js sockets
/// by default, so Aedes) holds each small reply until its previous one is acknowledged: with
/// delayed ACKs here its PUBRECs and PUBCOMPs trickled in, and a bridge with its QoS 2 flows
/// full forwarded ~330 msg/s instead of thousands. A failure only costs that speed.
fn quick_ack(tcp: &OwnedFd) {
    #[cfg(target_os = "linux")]
    let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
    #[cfg(not(target_os = "linux"))]
    let _ = tcp;
}

/// A handshake within `connect_timeout_secs`, given up when the bridge stops.
pub(super) async fn attempt<T>(
    bridge: &Bridge,
    handshake: impl Future<Output = Result<T, ConnectError>>,
) -> Result<T, ConnectError> {
    tokio::select! {
        () = bridge.stop.cancelled() => Err(ConnectError::Shutdown),
        attempt = tokio::time::timeout(bridge.config.connect_timeout(), handshake) => {
            attempt.map_err(|_| ConnectError::Timeout)?
        }
    }
}

/// Commits `ops`, awaited when output depends on them; clean-up only (acknowledged
/// deliveries) is not waited for: later batches are applied after it.
pub(super) async fn store(bridge: &Bridge, ops: Vec<Op>) -> Result<(), String> {
    if ops.iter().any(Op::gates_output) {
        bridge.broker.store.commit(ops).await.map_err(|e| format!("storage failed: {e}"))
    } else {
        if !ops.is_empty() {
            drop(bridge.broker.store.commit(ops));
        }
        Ok(())
    }
}

/// Resolves once `address` accepts a TCP connection and keeps it open for `PROBE_HOLD`,
/// trying every `every`.
async fn probe(address: String, every: Duration, timeout: Duration) {
    loop {
        tokio::time::sleep(every).await;
        if let Ok(Ok(mut stream)) = tokio::time::timeout(timeout, TcpStream::connect(&address)).await {
            let mut byte = [0u8; 1];
            if tokio::time::timeout(PROBE_HOLD, stream.read(&mut byte)).await.is_err() {
                return;
            }
        }
    }
}

impl<W: Wire> Lane<W> {
    pub(super) fn new(socket: Socket, wire: W, config: &BridgeConfig) -> Self {
        let now = Instant::now();
        Lane {
            stream: socket.io,
            tcp: socket.tcp,
            bufs: Buffers { rbuf: BytesMut::new(), wbuf: BytesMut::new(), pinging: false },
            wire,
            keep_alive: config.keep_alive(),
            last_received: now,
            read_unanswered: false,
            last_sent: now,
            primary_back: None,
            rate: config.max_rate.map(|r| TokenBucket::new(r, now)),
        }
    }

    /// Writes what `bufs.wbuf` holds (TLS holds records until flushed).
    pub(super) async fn write(&mut self) -> io::Result<()> {
        self.stream.write_all_buf(&mut self.bufs.wbuf).await?;
        self.stream.flush().await
    }

    /// Reads until `decode` finds a whole operation in what the peer sent (handshake); `None`
    /// when the peer closed first.
    pub(super) async fn read_handshake<T>(
        &mut self,
        mut decode: impl FnMut(&mut W, &mut BytesMut) -> Result<Option<T>, ConnectError>,
    ) -> Result<Option<T>, ConnectError> {
        let wire = &mut self.wire;
        let item = read_until(&mut self.stream, &mut self.bufs.rbuf, |rbuf| decode(wire, rbuf)).await;
        self.last_received = Instant::now();
        item
    }

    /// Linked to a secondary address: probes `primary` every `every` (a TCP connect that stays
    /// open), and the link ends with `Ending::PrimaryBack` once it answers.
    pub(super) fn watch_primary(&mut self, primary: String, every: Duration, timeout: Duration) {
        self.primary_back = Some(Box::pin(probe(primary, every, timeout)));
    }

    /// The connected phase, until the link is lost, the bridge stops or the broker shuts down.
    pub(super) async fn serve(&mut self, bridge: &mut Bridge) -> Ending {
        let ending = self.serve_loop(bridge).await;
        bridge.session.pending.mailbox().set_online(false);
        if let Ending::Shutdown = ending {
            self.wire.farewell(&mut self.bufs.wbuf);
            if !self.bufs.wbuf.is_empty() {
                let _ = tokio::time::timeout(FAREWELL_TIMEOUT, self.write()).await;
            }
        }
        ending
    }

    async fn serve_loop(&mut self, bridge: &mut Bridge) -> Ending {
        loop {
            if let Err(e) = self.wire.commit(bridge).await {
                return Ending::Lost(e);
            }
            if let Err(e) = self.wire.encode_out(bridge, &mut self.bufs.wbuf) {
                return Ending::Lost(e);
            }
            // What we read is acknowledged by what we write now; when we write nothing although
            // messages wait for room in the window, at once (their room depends on the replies).
            if std::mem::take(&mut self.read_unanswered)
                && self.bufs.wbuf.is_empty()
                && bridge.session.pending.mailbox().pending() > 0
            {
                quick_ack(&self.tcp);
            }
            if !self.bufs.wbuf.is_empty() {
                match tokio::time::timeout_at(self.dead_at(), self.write()).await {
                    Ok(Ok(())) => self.last_sent = Instant::now(),
                    Ok(Err(e)) => return Ending::Lost(format!("write failed: {e}")),
                    Err(_) => return Ending::Lost("write stalled for 1.5 × keep-alive".into()),
                }
            }
            let mut timer =
                if self.bufs.pinging { self.dead_at() } else { self.dead_at().min(self.ping_at()) };
            if let Some(at) = self.wire.deadline() {
                timer = timer.min(at);
            }
            let now = Instant::now();
            bridge.note_held();
            let session = &mut bridge.session;
            if let Some(rate) = &mut self.rate {
                session.send_allowance = rate.available(now);
                if session.send_allowance == 0 {
                    timer = timer.min(rate.next_at(now));
                }
            }
            let allowance = session.send_allowance;
            let can_deliver = session.can_deliver() && allowance > 0;
            let rbuf = &mut self.bufs.rbuf;
            if rbuf.capacity() - rbuf.len() < READ_SIZE / 2 {
                rbuf.reserve(READ_SIZE);
            }
            // In this order: the queue is bounded by the in-flight window, so reading always
            // gets its turn, while a peer that floods us cannot starve the queue.
            tokio::select! {
                biased;
                () = bridge.stop.cancelled() => return Ending::Shutdown,
                request = bridge.control.recv() => match request {
                    Control::Shutdown => return Ending::Shutdown,
                    // The admin API's kick: the link goes, the bridge reconnects.
                    Control::Kick { .. } => return Ending::Lost("disconnected by an operator".into()),
                    other => Bridge::refuse(other),
                },
                () = std::future::poll_fn(|cx| session.pending.poll_pending(cx)), if can_deliver => {
                    bridge.trim();
                    bridge.session.pump(self.wire.out(), Instant::now());
                }
                read = self.stream.read_buf(&mut self.bufs.rbuf) => match read {
                    Ok(0) => return Ending::Lost(format!("closed by {}", W::PEER)),
                    Ok(_) => {
                        self.last_received = Instant::now();
                        self.read_unanswered = true;
                        if let Err(e) = self.wire.handle_input(bridge, &mut self.bufs) {
                            return Ending::Lost(e);
                        }
                    }
                    Err(e) => return Ending::Lost(format!("read failed: {e}")),
                },
                () = async {
                    match self.primary_back.as_mut() {
                        Some(back) => back.as_mut().await,
                        None => std::future::pending().await,
                    }
                } => return Ending::PrimaryBack,
                () = tokio::time::sleep_until(timer) => {
                    let now = Instant::now();
                    if now >= self.dead_at() {
                        return Ending::Lost(format!(
                            "nothing received for 1.5 × keep-alive ({} s){}",
                            self.keep_alive.as_secs(),
                            W::SILENCE_RULE
                        ));
                    }
                    // Also woken for `max_rate`'s next token: the next turn pumps.
                    if !self.bufs.pinging && now >= self.ping_at() {
                        self.bufs.pinging = true;
                        self.wire.ping(&mut self.bufs.wbuf);
                    }
                    self.wire.on_deadline(bridge, now, &mut self.bufs.wbuf);
                }
            }
            if let Some(rate) = &mut self.rate {
                rate.take(allowance - bridge.session.send_allowance);
            }
        }
    }

    /// Silence beyond this means the link is dead.
    fn dead_at(&self) -> Instant {
        self.last_received + self.keep_alive * 3 / 2
    }

    /// When a ping is due: half the keep-alive after the last packet either way.
    fn ping_at(&self) -> Instant {
        self.last_received.min(self.last_sent) + self.keep_alive / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn the_user_timeout_is_set_on_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tcp =
            connect_tcp(&listener.local_addr().unwrap().to_string(), Duration::from_secs(3)).await.unwrap();
        let set = socket2::SockRef::from(&tcp).tcp_user_timeout().unwrap();
        assert_eq!(set, Some(Duration::from_millis(4500)));
    }
}
