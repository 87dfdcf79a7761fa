//! One task per client connection: CONNECT handshake, then one wait over the control slot
//! (takeover, shutdown, keep-alive timeout), the socket and the session's pending queue.
//!
//! The wait is a hand-written poll (`poll_wake`) rather than a `select!` over futures, and the
//! keep-alive deadlines are watched by one task for all connections (`watch_keep_alives`)
//! rather than by a timer in each: those futures and timers would sit in every idle
//! connection's task, and idle connections are most of them.
//! Output is encoded into one write buffer and written from the same wait, so a client that is
//! slow to read never stops the task from answering a takeover or a shutdown. Reading (and
//! taking new deliveries) pauses while that buffer is above `WRITE_HIGH_WATER`: a client that
//! does not read cannot make the broker buffer without bound. The buffer is written once
//! nothing more is ready to read or deliver, so one write syscall carries a whole batch.

mod arrival;
pub mod budget;
mod handshake;
mod inbound;
mod offline;
mod throttle;

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use bytestring::ByteString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::io::{poll_read_buf, poll_write_buf};
use tracing::{debug, info, warn, Instrument};

use crate::auth::AuthExchange;
use crate::codec::{Codec, CodecError, Encoded};
use crate::dead_letter::Reason;
use crate::message::Message;
use crate::metrics::{DropReason, Tally, METRICS};
use crate::packet::{Disconnect, Packet, ProtocolVersion, ReasonCode, Will};
use crate::router::retain::RetainChange;
use crate::router::topic::TopicError;
use crate::router::{RouteOutcome, Routed};
use crate::server::Admission;
use crate::session::queue::Mailbox;
use crate::session::registry::{Control, ControlReceiver, Takeover, KEEP_ALIVE_TICK};
use crate::session::{ClientId, Session};
use crate::storage::{Commit, Op, StoreError};
use crate::transport::{Established, Listener, Stream};
use crate::Broker;
use arrival::Arrival;
use budget::Reservation;
use throttle::Throttle;

pub use offline::restore;

/// Pause reading while this much output is waiting for the socket.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Read size of a client that is not busy.
const READ_SIZE_MIN: usize = 512;
/// What a client without a read buffer is read with (on the stack): a PINGREQ, an
/// acknowledgement or a small PUBLISH fit.
const READ_PROBE: usize = 64;
/// Read size a busy client grows to (doubling while reads fill the buffer).
const READ_SIZE_MAX: usize = 64 * 1024;
/// Best-effort time to flush a final packet (a refusing CONNACK, a DISCONNECT) before closing.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a closing connection keeps reading (and discarding) what the client still sends,
/// after its final packet went out and its write side was shut down.
const CLOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A wait that stops this connection reading: the publish rate limit, or subscribers' full
/// queues (flow control). Boxed: it is rare, and every idle connection would carry it inline.
type Pause = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What woke the connected phase.
enum Wake {
    End(Ending),
    /// Input was read, or a pause of ours ended: handle what the read buffer holds.
    Input,
    /// Deliveries are pending and the in-flight window has room.
    Deliver,
    /// Output was written or flushed.
    Wrote,
}

/// Why a network connection ended; `publishes_will` says what becomes of the will.
#[derive(Debug)]
enum Ending {
    /// The client sent DISCONNECT; `with_will` for reason 0x04 [MQTT-3.14.2].
    ClientDisconnect {
        with_will: bool,
    },
    /// The socket reached end of file without DISCONNECT.
    PeerClosed,
    Io(io::Error),
    /// Nothing received for 1.5 × keep-alive [MQTT-3.1.2-24]: DISCONNECT 0x8D.
    KeepAliveTimeout,
    /// A protocol violation: DISCONNECT with its reason code (MQTT 5), then close.
    Protocol(ProtocolError),
    /// Another connection claimed the client id [MQTT-3.1.4-3]: DISCONNECT 0x8E.
    TakenOver(Takeover),
    /// Broker shutdown: DISCONNECT 0x8B.
    Shutdown,
    /// An operator disconnected the client (admin API): DISCONNECT 0x98; with `discard`
    /// the session ends as well, persistent or not.
    Kicked {
        discard: bool,
    },
}

impl std::fmt::Display for Ending {
    /// What the log says, and the Reason String of the DISCONNECT the broker sends.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ending::ClientDisconnect { .. } => f.write_str("client disconnected"),
            Ending::PeerClosed => f.write_str("connection closed by client without DISCONNECT"),
            Ending::Io(e) => write!(f, "connection lost: {e}"),
            Ending::KeepAliveTimeout => f.write_str(
                "keep-alive timeout: nothing received for 1.5 times the keep-alive [MQTT-3.1.2-24]",
            ),
            Ending::Protocol(e) => write!(f, "{e}"),
            Ending::TakenOver(_) => f.write_str("session taken over by a new connection with this client id"),
            Ending::Shutdown => f.write_str("server shutting down"),
            Ending::Kicked { .. } => f.write_str("disconnected by an administrator"),
        }
    }
}

impl Ending {
    /// Whether the will goes, now or after its delay, for a session that is `persistent`: on
    /// every ending without DISCONNECT 0x00 [MQTT-3.1.2-8] [MQTT-3.14.4-3], but one. A takeover
    /// that resumes a persistent session cancels it: the client is back, on a connection made
    /// before this one closed, so before any will delay, 0 included, passed [MQTT-3.1.3-9]; and
    /// the session goes on. A takeover that ends the session publishes it (as Mosquitto does).
    fn publishes_will(&self, persistent: bool) -> bool {
        match self {
            Ending::ClientDisconnect { with_will } => *with_will,
            Ending::TakenOver(takeover) => !(takeover.resumes && persistent),
            _ => true,
        }
    }

    /// The reason code of the DISCONNECT the broker sends (MQTT 5 only), if it sends one.
    fn server_disconnect(&self) -> Option<ReasonCode> {
        match self {
            Ending::KeepAliveTimeout => Some(ReasonCode::KEEP_ALIVE_TIMEOUT),
            Ending::Protocol(e) => Some(e.reason_code()),
            Ending::TakenOver(_) => Some(ReasonCode::SESSION_TAKEN_OVER),
            Ending::Shutdown => Some(ReasonCode::SERVER_SHUTTING_DOWN),
            Ending::Kicked { .. } => Some(ReasonCode::ADMINISTRATIVE_ACTION),
            Ending::ClientDisconnect { .. } | Ending::PeerClosed | Ending::Io(_) => None,
        }
    }
}

/// A client broke the protocol (or a limit); the connection is closed, after a DISCONNECT
/// carrying `reason_code()` for MQTT 5 clients.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// An empty or badly formed filter in SUBSCRIBE or UNSUBSCRIBE: a Malformed Packet.
    #[error("malformed topic filter: {0}")]
    MalformedFilter(TopicError),
    #[error("second CONNECT on one connection [MQTT-3.1.0-2]")]
    SecondConnect,
    #[error("more unacknowledged QoS 2 PUBLISH than receive_maximum [MQTT-3.3.4-7]")]
    ReceiveMaximumExceeded,
    #[error("retained PUBLISH while retain_available is false [MQTT-3.3.1-14]")]
    RetainNotSupported,
    #[error("PUBLISH QoS above maximum_qos [MQTT-3.3.1-13]")]
    QosNotSupported,
    #[error("SUBSCRIBE uses a feature CONNACK said is not available ({0})")]
    Unsupported(ReasonCode),
    #[error("No Local on a shared subscription [MQTT-3.8.3-4]")]
    NoLocalOnSharedSubscription,
    #[error("session expiry set in DISCONNECT after CONNECT set 0 [MQTT-3.14.2-2]")]
    SessionExpiryAfterZero,
    #[error("unexpected AUTH packet [MQTT-4.12.0-1]")]
    UnexpectedAuth,
    /// The method's own code is logged; the client gets DISCONNECT 0x87 (0x86 is not a
    /// DISCONNECT reason code, section 3.14.2.1).
    #[error("re-authentication failed (reason {:#04x})", .0.0)]
    ReauthenticationFailed(ReasonCode),
    /// Not the client's fault: storing failed, so nothing may be acknowledged.
    #[error("cannot store state: {0}")]
    Store(#[from] StoreError),
    /// MQTT 3.1.1 has no way to refuse a PUBLISH: the connection closes unacknowledged.
    #[error("a bridge queue with overflow = \"reject\" is full: publish not acknowledged")]
    BridgeQueueFull,
}

impl ProtocolError {
    /// The MQTT 5 DISCONNECT reason code for this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            ProtocolError::Codec(e) => e.reason_code(),
            ProtocolError::Topic(_) => ReasonCode::TOPIC_NAME_INVALID,
            ProtocolError::MalformedFilter(_) => ReasonCode::MALFORMED_PACKET,
            ProtocolError::ReceiveMaximumExceeded => ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
            ProtocolError::RetainNotSupported => ReasonCode::RETAIN_NOT_SUPPORTED,
            ProtocolError::QosNotSupported => ReasonCode::QOS_NOT_SUPPORTED,
            ProtocolError::ReauthenticationFailed(_) => ReasonCode::NOT_AUTHORIZED,
            ProtocolError::Unsupported(reason) => *reason,
            ProtocolError::Store(_) => ReasonCode::UNSPECIFIED_ERROR,
            ProtocolError::BridgeQueueFull => ReasonCode::QUOTA_EXCEEDED,
            ProtocolError::SecondConnect
            | ProtocolError::NoLocalOnSharedSubscription
            | ProtocolError::SessionExpiryAfterZero
            | ProtocolError::UnexpectedAuth => ReasonCode::PROTOCOL_ERROR,
        }
    }
}

/// Entry point of a connection task: the transport's handshakes (TLS, WebSocket) under the
/// connect timeout, then MQTT. `admission` is held until the connection ends.
///
/// Not an `async fn`: its arguments would stay in the task for the connection's whole life.
/// Establishing is boxed, like the handshake and the closing in `run`: large futures that run
/// once per connection must not sit in every idle connection's task.
///
/// The phases that run once (transport, CONNECT, closing) log inside a `conn` span naming the
/// peer and client id; the connected phase holds none. A span that lives as long as the
/// connection costs each idle one about 400 bytes in the log subscriber, and an enter and exit
/// on every wake-up; the few events of that phase name what they are about themselves.
pub fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    admission: Admission,
) -> impl Future<Output = ()> + Send {
    let establish =
        Box::pin(establish(stream, peer, listener, broker, admission).instrument(conn_span(peer, None)));
    async move {
        // Not awaited in the `if let` itself: its temporaries, the spent boxed future among
        // them, would live as long as the connection.
        let established = establish.await;
        if let Some(mut conn) = established {
            conn.run().await;
        }
    }
}

/// The span of a connection's one-time phases.
fn conn_span(peer: SocketAddr, client_id: Option<&ClientId>) -> tracing::Span {
    match client_id {
        Some(client_id) => tracing::info_span!("conn", %peer, %client_id),
        None => tracing::info_span!("conn", %peer, client_id = tracing::field::Empty),
    }
}

async fn establish(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<Listener>,
    broker: Arc<Broker>,
    admission: Admission,
) -> Option<Box<Connection>> {
    let timeout = broker.config.connect_timeout();
    let max_packet_size = broker.config.mqtt.max_packet_size as usize;
    match tokio::time::timeout(timeout, listener.establish(stream, max_packet_size)).await {
        Ok(Ok(established)) => {
            Some(Box::new(Connection::new(established, peer, listener, broker, admission)))
        }
        Ok(Err(e)) => {
            info!("closing: {e}");
            None
        }
        Err(_) => {
            info!("transport handshake not done within {}s: closing", timeout.as_secs());
            None
        }
    }
}

/// Enhanced authentication state of a connection that used it.
struct AuthState {
    method: ByteString,
    client_id: ClientId,
    /// A re-authentication in progress [MQTT-4.12.1].
    exchange: Option<Box<dyn AuthExchange>>,
}

struct Connection {
    broker: Arc<Broker>,
    peer: SocketAddr,
    listener: Arc<Listener>,
    /// Refused when a connection limit was reached: the CONNECT is answered "server busy".
    admission: Admission,
    stream: Stream,
    /// Bytes were written since the last flush (TLS and WebSocket buffer until flushed).
    unflushed: bool,
    /// The user a verified client certificate names, if the listener takes it from there.
    certificate_user: Option<Box<ByteString>>,
    /// The user this connection authenticated as; ACL checks use it. Boxed: most connections
    /// have none, and every idle one carries the field.
    username: Option<Box<ByteString>>,
    /// Boxed, as are the rarely used fields below: every idle connection carries them.
    throttle: Option<Box<Throttle>>,
    /// Sessions whose full queues this client's messages are waiting on (flow control).
    congested: Vec<Arc<Mailbox>>,
    /// Reading is paused until this completes.
    pause: Option<Pause>,
    /// The pause only waits for input of other connections to be handled first (`arrival`):
    /// reading goes on.
    waiting_turn: bool,
    /// The client closed its side; what it sent before is still being handled.
    peer_closed: bool,
    codec: Codec,
    version: ProtocolVersion,
    rbuf: BytesMut,
    /// When the input being handled arrived, relative to other connections' input.
    arrival: Arrival,
    /// The share of `limits.max_incomplete_packet_bytes` held by a large packet being read.
    large_packet: Option<Box<Reservation>>,
    /// How much to make room for before a read; grows for busy clients.
    read_size: usize,
    /// The last read returned less than a probe: a client that sends that little at a time is
    /// quiet.
    short_read: bool,
    wbuf: BytesMut,
    /// Packets produced by the session, encoded into `wbuf` after each event.
    out: Vec<Packet>,
    /// Storage changes of the packets handled since the last `commit_ops`.
    ops: Vec<Op>,
    /// Messages routed since the last `commit_ops`, handed to their sessions once stored.
    routed: Vec<Routed>,
    auth: Option<Box<AuthState>>,
}

impl Connection {
    fn new(
        established: Established,
        peer: SocketAddr,
        listener: Arc<Listener>,
        broker: Arc<Broker>,
        admission: Admission,
    ) -> Self {
        let mqtt = &broker.config.mqtt;
        let codec = Codec::new(mqtt.max_packet_size, mqtt.topic_alias_maximum);
        let throttle = Throttle::new(broker.config.limits.max_publish_rate, Instant::now()).map(Box::new);
        Connection {
            broker,
            peer,
            listener,
            admission,
            stream: established.stream,
            unflushed: false,
            certificate_user: established.certificate_user.map(Box::new),
            username: None,
            throttle,
            congested: Vec::new(),
            pause: None,
            waiting_turn: false,
            peer_closed: false,
            codec,
            version: ProtocolVersion::V311,
            rbuf: BytesMut::new(),
            arrival: Arrival::default(),
            large_packet: None,
            read_size: READ_SIZE_MIN,
            short_read: true,
            wbuf: BytesMut::new(),
            out: Vec::new(),
            ops: Vec::new(),
            routed: Vec::new(),
            auth: None,
        }
    }

    async fn run(&mut self) {
        // Boxed, see `serve`.
        let span = conn_span(self.peer, None);
        let Some(mut accepted) = Box::pin(self.handshake()).instrument(span).await else { return };
        accepted.session.pending.mailbox().set_online(true);
        accepted.session.resume(accepted.receive_maximum, &mut self.out, Instant::now());
        METRICS.client_connected(self.version as usize);
        self.listener.clients[(self.version as usize).min(2)].fetch_add(1, Ordering::Relaxed);
        let ending = self.serve_session(&mut accepted).await;
        METRICS.client_disconnected();
        self.listener.clients[(self.version as usize).min(2)].fetch_sub(1, Ordering::Relaxed);
        self.arrival.close();
        // The control slot goes on with the session (offline, or handed over): no deadline.
        accepted.control.set_deadline(None);
        accepted.session.pending.mailbox().set_online(false);
        let span = conn_span(self.peer, Some(&accepted.session.client_id));
        // `accepted` goes in whole: fields taken out here would each keep a place in every
        // connection's task (the session alone took it from 384 to 512 bytes).
        Box::pin(self.finish(accepted, ending)).instrument(span).await;
    }

    /// The connected phase. Takes the whole `Accepted` by one reference (rather than its
    /// fields): each argument of an async fn is stored twice in its state.
    async fn serve_session(&mut self, accepted: &mut handshake::Accepted) -> Ending {
        // The registry tells its owners about a shutdown; one registered after it was told
        // finds the token cancelled.
        if self.broker.shutdown.is_cancelled() {
            return Ending::Shutdown;
        }
        // Packets that arrived in the same read as CONNECT are handled before waiting for more.
        let mut wake = Wake::Input;
        loop {
            let ending = self.on_wake(wake, accepted);
            // Nothing is acknowledged, forwarded or sent before it is stored ("acknowledge only
            // what can be kept"); what the last packets routed or changed is stored and handed
            // over even when the connection ends with them (e.g. PUBLISH then DISCONNECT).
            if let Err(e) = self.commit_ops(&mut accepted.session).await {
                return Ending::Protocol(self.abandon_output(e));
            }
            if let Err(e) = self.deliver_routed(&mut accepted.session) {
                return Ending::Protocol(e);
            }
            if !accepted.session.lost.is_empty() {
                self.broker.dead_letters.publish_lost(&self.broker, &mut accepted.session.lost);
            }
            if let Some(ending) = ending {
                return ending;
            }
            if self.peer_closed && !self.codec.holds_complete_packet(&self.rbuf) {
                return Ending::PeerClosed;
            }
            self.release_idle_buffers();
            self.start_pause(&accepted.control);
            wake = poll_fn(|cx| self.poll_wake(cx, accepted)).await;
        }
    }

    /// Handles what woke the connected phase; `Some` when the connection ends.
    fn on_wake(&mut self, wake: Wake, accepted: &mut handshake::Accepted) -> Option<Ending> {
        match wake {
            Wake::End(ending) => Some(ending),
            Wake::Input => {
                // The client was not silent, or we were not listening.
                let now = Instant::now();
                accepted.control.set_deadline(accepted.keep_alive.map(|secs| now + grace(secs)));
                self.handle_input(&mut accepted.session)
            }
            Wake::Deliver => {
                accepted.session.pump(&mut self.out, Instant::now());
                None
            }
            Wake::Wrote => None,
        }
    }

    /// The first thing ready, in order: a control request, the end of a pause, input, pending
    /// deliveries, writing. Output is written only when nothing more
    /// can be read or delivered right now (or the buffer is full): one write carries everything
    /// that is ready, and each write to a loopback peer costs a wake-up on its side as well as
    /// ours. While the buffer is full, neither reading nor deliveries go on.
    fn poll_wake(&mut self, cx: &mut Context<'_>, accepted: &mut handshake::Accepted) -> Poll<Wake> {
        if let Poll::Ready(request) = accepted.control.poll_recv(cx) {
            return Poll::Ready(Wake::End(match request {
                Control::Shutdown => Ending::Shutdown,
                Control::Takeover(takeover) => Ending::TakenOver(takeover),
                Control::KeepAliveTimeout => Ending::KeepAliveTimeout,
                Control::Kick { discard } => Ending::Kicked { discard },
            }));
        }
        if let Some(pause) = &mut self.pause {
            if pause.as_mut().poll(cx).is_ready() {
                self.pause = None;
                self.waiting_turn = false;
                return Poll::Ready(Wake::Input);
            }
        }
        let writable = self.wbuf.len() < WRITE_HIGH_WATER;
        if !writable || (self.pause.is_some() && !self.waiting_turn) || self.peer_closed {
            self.arrival.not_reading();
        } else {
            match self.poll_read_some(cx) {
                // Packets read before the end of input are handled first (the loop ends the
                // connection once none is left).
                Poll::Ready(Ok(0)) if self.codec.holds_complete_packet(&self.rbuf) => {
                    self.peer_closed = true;
                    return Poll::Ready(Wake::Input);
                }
                Poll::Ready(Ok(0)) => return Poll::Ready(Wake::End(Ending::PeerClosed)),
                Poll::Ready(Ok(n)) => {
                    self.short_read = n < READ_PROBE;
                    return Poll::Ready(Wake::Input);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::End(Ending::Io(e))),
                Poll::Pending => {}
            }
        }
        let session = &mut accepted.session;
        if writable && session.can_deliver() && session.pending.poll_pending(cx).is_ready() {
            return Poll::Ready(Wake::Deliver);
        }
        if !self.wbuf.is_empty() || self.unflushed {
            match self.poll_write_or_flush(cx) {
                Poll::Ready(Ok(wrote)) => {
                    self.unflushed = wrote;
                    return Poll::Ready(Wake::Wrote);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Wake::End(Ending::Io(e))),
                // The client's socket is full: what waits in our queue now waits on the client.
                Poll::Pending => session.pending.note_blocked(),
            }
        }
        Poll::Pending
    }

    /// The user this connection authenticated as.
    fn user(&self) -> Option<&str> {
        self.username.as_deref().map(|name| &**name)
    }

    /// Stops reading when the publish rate limit says to wait (packets already read wait in
    /// the buffer until the rate allows them) or a subscriber's queue is full (flow control:
    /// reading resumes once every such queue has room, or went offline, or stalled). While we
    /// do not read, the client's silence says nothing about it: no keep-alive deadline.
    fn start_pause(&mut self, control: &ControlReceiver) {
        if self.pause.is_some() {
            return;
        }
        if let Some(until) = self.throttle.as_mut().and_then(|t| t.resume_at(Instant::now())) {
            self.pause = Some(Box::pin(tokio::time::sleep_until(until)));
        } else if let Some(wait) = self.reserve_large_packet() {
            self.pause = Some(wait);
        } else if !self.congested.is_empty() {
            let congested = std::mem::take(&mut self.congested);
            self.pause = Some(Box::pin(async move {
                for mailbox in congested {
                    mailbox.wait_for_room().await;
                }
            }));
        }
        if self.pause.is_some() {
            control.set_deadline(None);
        }
    }

    /// Holds a share of the budget for partly read packets while the read buffer starts with a
    /// packet larger than one read (see `budget`), and gives it back, with the large buffer,
    /// once that packet is decoded. `Some` is a wait: the budget is spent, reading pauses.
    fn reserve_large_packet(&mut self) -> Option<Pause> {
        let wanted = self.codec.incomplete_frame(&self.rbuf).filter(|&size| size > READ_SIZE_MAX);
        match (wanted, &self.large_packet) {
            (Some(size), Some(held)) if held.bytes == size => None,
            (None, None) => None,
            (None, Some(_)) => {
                self.large_packet = None;
                if self.rbuf.capacity() > 2 * READ_SIZE_MAX {
                    self.rbuf = BytesMut::from(&self.rbuf[..]);
                }
                None
            }
            (Some(size), _) => {
                self.large_packet = None;
                match self.broker.packet_budget.try_reserve(size) {
                    Some(reservation) => {
                        self.rbuf.reserve(size - self.rbuf.len());
                        self.large_packet = Some(Box::new(reservation));
                        None
                    }
                    None => {
                        debug!(size, "budget for partly read packets spent: reading pauses");
                        Some(Box::pin(self.broker.packet_budget.clone().wait_for(size)))
                    }
                }
            }
        }
    }

    /// A quiet client (it sends less than a probe at a time) keeps no buffers between packets:
    /// an idle connection then costs its task and session only. Busier clients keep theirs,
    /// so they do not pay for an allocation and a short probe read per packet.
    fn release_idle_buffers(&mut self) {
        if self.short_read
            && self.read_size == READ_SIZE_MIN
            && self.rbuf.is_empty()
            && self.rbuf.capacity() > 0
            && self.out.is_empty()
        {
            self.rbuf = BytesMut::new();
            self.out = Vec::new();
        }
    }

    /// Decodes and handles the complete packets in the read buffer, stopping early when the
    /// publish rate limit or a full subscriber queue says to wait, or waiting while input of
    /// other connections that arrived earlier is not handled yet.
    fn handle_input(&mut self, session: &mut Session) -> Option<Ending> {
        self.arrival.note_wake(None);
        if arrival::is_ordered(&self.rbuf) && self.arrival.must_wait() {
            // Input of another connection that arrived first may still subscribe: let it go
            // first (see `arrival`). Reading goes on meanwhile, so later input is still stamped.
            self.pause = Some(Box::pin(tokio::task::yield_now()));
            self.waiting_turn = true;
            return None;
        }
        let ending = self.handle_packets(session);
        self.arrival.release();
        ending
    }

    fn handle_packets(&mut self, session: &mut Session) -> Option<Ending> {
        let mut received = Tally::default();
        let ending = self.handle_counted_packets(session, &mut received);
        METRICS.received(&received);
        ending
    }

    fn handle_counted_packets(&mut self, session: &mut Session, received: &mut Tally) -> Option<Ending> {
        loop {
            if !self.congested.is_empty()
                || self.throttle.as_mut().is_some_and(|t| t.resume_at(Instant::now()).is_some())
            {
                break;
            }
            let packet = match self.codec.decode(&mut self.rbuf) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => return Some(Ending::Protocol(e.into())),
            };
            received.packet();
            if let Packet::Publish(publish) = &packet {
                received.publish(publish.qos, publish.payload.len());
            }
            match self.handle_packet(session, packet) {
                Ok(None) => {}
                Ok(Some(ending)) => return Some(ending),
                Err(e) => return Some(Ending::Protocol(e)),
            }
        }
        None
    }

    /// Queues the storage changes of the packets handled since the last call; the commit
    /// resolves once they are stored when output depends on them. Clean-up alone (acknowledged
    /// deliveries) is queued, not waited for: any later batch of this connection is applied
    /// after it anyway.
    fn commit_ops(&mut self, session: &mut Session) -> Commit {
        let mut ops = std::mem::take(&mut self.ops);
        ops.append(&mut session.journal);
        if ops.iter().any(Op::gates_output) {
            return self.broker.store.commit(ops);
        }
        if !ops.is_empty() {
            drop(self.broker.store.commit(ops));
        }
        Commit::done(Ok(()))
    }

    /// Not stored: not acknowledged, not forwarded. The client re-sends.
    fn abandon_output(&mut self, e: StoreError) -> ProtocolError {
        self.routed.drain(..).for_each(Routed::abandon);
        self.out.clear();
        e.into()
    }

    /// After the commit: hands the routed messages to their sessions and encodes the output.
    fn deliver_routed(&mut self, session: &mut Session) -> Result<(), ProtocolError> {
        for routed in self.routed.drain(..) {
            routed.deliver();
        }
        self.encode_out(session)
    }

    /// Encodes the packets the session produced. A PUBLISH larger than the client's Maximum
    /// Packet Size is not sent and counts as delivered [MQTT-3.1.2-25].
    fn encode_out(&mut self, session: &mut Session) -> Result<(), ProtocolError> {
        let mut sent = Tally::default();
        let encoded = self.encode_packets(session, &mut sent);
        METRICS.sent(&sent);
        encoded
    }

    fn encode_packets(&mut self, session: &mut Session, sent: &mut Tally) -> Result<(), ProtocolError> {
        for packet in self.out.drain(..) {
            let packet_id = match &packet {
                Packet::Forward(p) => Some(p.packet_id),
                _ => None,
            };
            let publish = match &packet {
                Packet::Forward(p) => Some((p.qos, p.message.payload.len())),
                _ => None,
            };
            // A QoS 0 PUBLISH leaves no trace in the session: keep its message in case it is
            // lost (only when that gets a dead letter).
            let qos0_message = match &packet {
                Packet::Forward(p)
                    if p.packet_id.is_none() && session.dead_letter.wants(Reason::TooLarge) =>
                {
                    Some(p.message.clone())
                }
                _ => None,
            };
            if self.codec.encode(packet, &mut self.wbuf)? == Encoded::TooLargeForClient {
                debug!("message larger than the client's maximum packet size: not sent");
                METRICS.dropped(DropReason::TooLarge, 1);
                if let Some(Some(id)) = packet_id {
                    session.forget(id);
                } else if let Some(message) = qos0_message {
                    session.lose(&message, Reason::TooLarge, None);
                }
                continue;
            }
            sent.packet();
            if let Some((qos, len)) = publish {
                sent.publish(qos, len);
            }
        }
        Ok(())
    }

    /// Reads what the client sent into `rbuf`, making room for `read_size` bytes first; the
    /// size doubles (up to `READ_SIZE_MAX`) while reads fill it and halves again when they come
    /// back small. A quiet client's buffer is released between packets (`release_idle_buffers`):
    /// it then reads into a small probe on the stack, so an idle connection holds no buffer.
    fn poll_read_some(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let read_waker = self.arrival.read_waker(cx);
        let mut read_cx = Context::from_waker(&read_waker);
        let read = self.poll_read_into_buffer(&mut read_cx);
        if let Poll::Ready(Ok(n)) = read {
            METRICS.bytes_received(n);
        }
        let read_something = matches!(read, Poll::Ready(Ok(n)) if n > 0);
        self.arrival.note_wake(read_something.then_some(&self.rbuf[..]));
        if read_something {
            // Watch for the next input at once, so that it is stamped when it arrives even if
            // this task is busy then; input already there is stamped now. (Plain TCP only: the
            // wrapped transports have no readiness of their own to watch.)
            if let Stream::Tcp(tcp) = &self.stream {
                if tcp.poll_read_ready(&mut read_cx).is_ready() {
                    read_waker.wake_by_ref();
                }
            }
        }
        read
    }

    fn poll_read_into_buffer(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let stream = Pin::new(&mut self.stream);
        if self.rbuf.capacity() == 0 {
            let mut probe = [0u8; READ_PROBE];
            let mut probe = ReadBuf::new(&mut probe);
            ready!(stream.poll_read(cx, &mut probe))?;
            let n = probe.filled().len();
            self.rbuf.extend_from_slice(probe.filled());
            if n == READ_PROBE {
                // More is probably waiting: read into a real buffer from now on.
                self.read_size = READ_SIZE_MIN * 2;
            }
            return Poll::Ready(Ok(n));
        }
        if self.rbuf.capacity() - self.rbuf.len() < self.read_size / 2 {
            self.rbuf.reserve(self.read_size);
        }
        let room = self.rbuf.capacity() - self.rbuf.len();
        let n = ready!(poll_read_buf(stream, cx, &mut self.rbuf))?;
        if n == room && self.read_size < READ_SIZE_MAX {
            self.read_size *= 2;
        } else if n < self.read_size / 4 && self.read_size > READ_SIZE_MIN {
            self.read_size /= 2;
        }
        Poll::Ready(Ok(n))
    }

    /// Waits for input (during the handshake, outside the connected phase's wait).
    async fn read_some(&mut self) -> io::Result<usize> {
        poll_fn(|cx| self.poll_read_some(cx)).await
    }

    /// Writes some of `wbuf`, or flushes once it is empty; true when it wrote (a flush is due).
    fn poll_write_or_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let stream = Pin::new(&mut self.stream);
        if self.wbuf.is_empty() {
            ready!(stream.poll_flush(cx))?;
            return Poll::Ready(Ok(false));
        }
        match ready!(poll_write_buf(stream, cx, &mut self.wbuf))? {
            0 => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            n => {
                METRICS.bytes_sent(n);
                Poll::Ready(Ok(true))
            }
        }
    }

    /// Writes the output now (used during the handshake, outside the connected phase's wait).
    async fn write_out(&mut self) -> io::Result<()> {
        for packet in self.out.drain(..) {
            self.codec.encode(packet, &mut self.wbuf).map_err(io::Error::other)?;
            METRICS.packet_sent();
        }
        let len = self.wbuf.len();
        self.stream.write_all_buf(&mut self.wbuf).await?;
        METRICS.bytes_sent(len);
        self.stream.flush().await
    }

    /// Writes what is left, briefly, then shuts the write side down; used when closing.
    async fn flush_final(&mut self) {
        let write = async {
            self.write_out().await?;
            self.stream.shutdown().await
        };
        if let Ok(Err(e)) = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, write).await {
            debug!("final flush failed: {e}");
        }
    }

    /// The last step of closing: reads and discards what the client still sends, until it
    /// closes or `CLOSE_DRAIN_TIMEOUT`. Closing a socket with unread input makes the kernel
    /// send a reset, and a client still writing would then lose the DISCONNECT (or refusing
    /// CONNACK) with its reason code before reading it.
    async fn drain_input(&mut self) {
        let drain = async {
            let mut scratch = [0u8; 1024];
            while matches!(self.stream.read(&mut scratch).await, Ok(n) if n > 0) {}
        };
        let _ = tokio::time::timeout(CLOSE_DRAIN_TIMEOUT, drain).await;
    }

    /// Closes the connection: DISCONNECT (MQTT 5), will, then hand-off, offline life or end
    /// of the session.
    async fn finish(&mut self, accepted: Box<handshake::Accepted>, ending: Ending) {
        let handshake::Accepted { mut session, will, owner, control, .. } = *accepted;
        self.broker.dead_letters.publish_lost(&self.broker, &mut session.lost);
        let will = will.map(|w| *w);
        match &ending {
            Ending::ClientDisconnect { .. } | Ending::Shutdown => debug!("{ending}"),
            Ending::Protocol(_) => warn!("closing connection: {ending}"),
            _ => info!("{ending}"),
        }
        let will = will.filter(|_| ending.publishes_will(session.is_persistent()));
        let goes_offline = session.is_persistent()
            && !matches!(ending, Ending::TakenOver(_) | Ending::Kicked { discard: true });
        // A delayed will waits in the offline session, and a reconnect within the delay
        // cancels it [MQTT-3.1.3-9]; otherwise (no delay, or the session ends) it goes now.
        let (delayed_will, will) = match will {
            Some(will) if will.delay > 0 && goes_offline => (Some(will), None),
            will => (None, will),
        };
        let offline = if goes_offline {
            Some(offline::store_offline(&self.broker, &mut session, delayed_will).await)
        } else {
            None
        };
        if let Some(reason) = ending.server_disconnect() {
            // The codec writes nothing for 3.1.1, where servers never send DISCONNECT.
            let reason_string =
                self.broker.config.mqtt.reason_strings.then(|| ByteString::from(ending.to_string()));
            self.out.push(Packet::Disconnect(Disconnect { reason, reason_string, ..Disconnect::default() }));
        }
        self.flush_final().await;
        if let Some(will) = will {
            publish_will(&self.broker, &will, &session.client_id).await;
        }
        match (ending, offline) {
            (Ending::TakenOver(takeover), _) => {
                let handed = if session.is_persistent() {
                    Some(session)
                } else {
                    offline::end_session(&self.broker, session, owner).await;
                    None
                };
                // The new owner may have given up waiting; the session then ends with us.
                let _ = takeover.reply.send(handed);
            }
            (_, Some(offline)) => {
                // Unacknowledged shared-subscription messages go to other members [MQTT-4.8.2-6].
                offline::redistribute_shared(&self.broker, &mut session).await;
                // The session lives on in a task of its own, so this one ends and drops the
                // connection: an offline session owns no socket and no buffers.
                offline::OfflineTask { broker: self.broker.clone(), session, owner, control, offline }
                    .spawn();
            }
            (_, None) => {
                offline::end_session(&self.broker, session, owner).await;
                // Dropped only now: a concurrent claim waits for this cleanup to finish.
                drop(control);
            }
        }
        self.drain_input().await;
    }
}

/// How long a client may be silent: 1.5 × its keep-alive [MQTT-3.1.2-24].
fn grace(keep_alive_secs: NonZeroU16) -> Duration {
    Duration::from_millis(u64::from(keep_alive_secs.get()) * 1500)
}

/// Times out the connections whose clients went silent for 1.5 × their keep-alive
/// [MQTT-3.1.2-24]: one task checks every deadline each `KEEP_ALIVE_TICK`, where a timer in
/// each connection would cost every idle one a timer entry. Ends at shutdown.
pub async fn watch_keep_alives(broker: Arc<Broker>) {
    let mut tick = tokio::time::interval(KEEP_ALIVE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = broker.shutdown.cancelled() => return,
            _ = tick.tick() => broker.router.registry.expire_keep_alives(Instant::now()),
        }
    }
}

/// Matches an inbound message and prepares its storage (retained store, stored copies for
/// persistent sessions). The caller commits `ops`, then `deliver`s.
pub(crate) fn route(broker: &Broker, message: &Arc<Message>) -> Routed {
    let routed = broker.router.route(message, &broker.message_ids, broker.security.as_ref());
    with_retained(broker, message, routed)
}

/// As `route`, for a client's PUBLISH, which a full bridge queue with `overflow = "reject"`
/// refuses: then nothing is routed, the retained store is unchanged, and `Err` says what
/// matched.
pub(crate) fn route_or_refuse(broker: &Broker, message: &Arc<Message>) -> Result<Routed, RouteOutcome> {
    let routed = broker.router.route(message, &broker.message_ids, broker.security.as_ref());
    if routed.outcome.rejected > 0 {
        let outcome = routed.outcome;
        routed.abandon();
        return Err(outcome);
    }
    Ok(with_retained(broker, message, routed))
}

/// The retained store's change for a routed message, and its drop counts.
fn with_retained(broker: &Broker, message: &Arc<Message>, mut routed: Routed) -> Routed {
    if message.retain {
        let op = match broker.router.retained.apply(message) {
            RetainChange::Stored => Op::PutRetained(message.clone()),
            RetainChange::Cleared => Op::DeleteRetained(message.topic.clone()),
        };
        routed.ops.push(op);
    }
    if routed.outcome.matched == 0 {
        METRICS.dropped(DropReason::NoSubscribers, 1);
    }
    if routed.outcome.dropped > 0 {
        debug!(topic = %message.topic, dropped = routed.outcome.dropped, "message dropped for sessions with full queues");
        let dropped_for = std::mem::take(&mut routed.dropped_for);
        broker.dead_letters.queue_full(broker, message, &dropped_for);
    }
    routed
}

/// Routes, stores and hands over a message the broker itself publishes (wills, shared
/// redistribution) outside a connection's packet handling.
pub(crate) async fn route_now(broker: &Broker, mut routed: Routed) -> Result<RouteOutcome, StoreError> {
    let ops = std::mem::take(&mut routed.ops);
    if !ops.is_empty() {
        broker.store.commit(ops).await?;
    }
    Ok(routed.deliver())
}

async fn publish_will(broker: &Broker, will: &Will, client_id: &ClientId) {
    debug!(topic = %will.topic, "publishing will");
    let routed = route(broker, &Arc::new(Message::from_will(will, client_id)));
    if let Err(e) = route_now(broker, routed).await {
        warn!("will not published: {e}");
    }
}
