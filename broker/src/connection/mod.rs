//! One task per client connection: CONNECT handshake, then a single `select!` over the socket,
//! the session's pending queue, the keep-alive deadline, takeover requests and shutdown.
//!
//! Output is encoded into one write buffer and written from the same `select!`, so a client
//! that is slow to read never stops the task from answering a takeover or a shutdown. Reading
//! (and taking new deliveries) pauses while that buffer is above `WRITE_HIGH_WATER`: a client
//! that does not read cannot make the broker buffer without bound.

mod handshake;
mod offline;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn, Instrument};

use crate::codec::{Codec, CodecError};
use crate::message::{Delivery, Message};
use crate::packet::{Packet, Publish, QoS, SubscribeReturnCode, Will};
use crate::router::retain::RetainChange;
use crate::router::topic::{self, TopicError};
use crate::router::Subscriber;
use crate::session::registry::{Control, OwnerId};
use crate::session::Session;
use crate::storage::{Op, SessionRecord, StoreError};
use crate::Broker;

pub use offline::restore;

/// Pause reading while this much output is waiting for the socket.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Initial read buffer; grows to the largest packet in flight.
const READ_BUFFER: usize = 4096;
/// Best-effort time to flush a final packet (e.g. a refusing CONNACK) before closing.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a network connection ended. Everything but `ClientDisconnect` publishes the will
/// [MQTT-3.1.2-8], [MQTT-3.14.4-3].
#[derive(Debug)]
enum Ending {
    /// The client sent DISCONNECT.
    ClientDisconnect,
    /// The socket reached end of file without DISCONNECT.
    PeerClosed,
    Io(io::Error),
    /// Nothing received for 1.5 × keep-alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    Protocol(ProtocolError),
    /// Another connection claimed the client id [MQTT-3.1.4-2].
    TakenOver(oneshot::Sender<Option<Session>>),
    Shutdown,
}

/// A client broke the protocol; the connection is closed (3.1.1 has no reason codes).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    #[error("second CONNECT on one connection [MQTT-3.1.0-2]")]
    SecondConnect,
    /// Not the client's fault: storing failed, so nothing may be acknowledged.
    #[error("cannot store state: {0}")]
    Store(#[from] StoreError),
}

/// Entry point of a connection task.
pub async fn serve(stream: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
    let span = tracing::info_span!("conn", %peer, client_id = tracing::field::Empty);
    async move {
        let (reader, writer) = stream.into_split();
        let mut conn = Connection::new(reader, writer, broker);
        conn.run().await;
    }
    .instrument(span)
    .await
}

struct Connection {
    broker: Arc<Broker>,
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    codec: Codec,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// Packets produced by the session, encoded into `wbuf` after each event.
    out: Vec<Packet>,
}

impl Connection {
    fn new(reader: OwnedReadHalf, writer: OwnedWriteHalf, broker: Arc<Broker>) -> Self {
        let codec = Codec::new(broker.config.mqtt.max_packet_size);
        Connection {
            broker,
            reader,
            writer,
            codec,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::new(),
            out: Vec::new(),
        }
    }

    async fn run(&mut self) {
        let Some(accepted) = self.handshake().await else { return };
        let handshake::Accepted { mut session, will, keep_alive, owner, mut control } = accepted;
        session.pending.mailbox().set_online(true);
        session.resume(&mut self.out);
        // Packets that arrived in the same read as CONNECT are handled before waiting for more.
        let ending = match self.handle_input(&mut session) {
            Some(ending) => ending,
            None => self.serve_session(&mut session, keep_alive, &mut control).await,
        };
        session.pending.mailbox().set_online(false);
        self.finish(session, will, ending, owner, control).await;
    }

    /// The connected phase.
    async fn serve_session(
        &mut self,
        session: &mut Session,
        keep_alive: Option<Duration>,
        control: &mut mpsc::Receiver<Control>,
    ) -> Ending {
        let grace = keep_alive.unwrap_or(Duration::MAX);
        let deadline = tokio::time::sleep(grace.min(Duration::from_secs(86_400 * 365)));
        tokio::pin!(deadline);
        let shutdown = self.broker.shutdown.clone();
        loop {
            let writable = self.wbuf.len() < WRITE_HIGH_WATER;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ending::Shutdown,
                Some(Control::Takeover(reply)) = control.recv() => return Ending::TakenOver(reply),
                written = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => match written {
                    Ok(0) => return Ending::Io(io::ErrorKind::WriteZero.into()),
                    Ok(_) => {}
                    Err(e) => return Ending::Io(e),
                },
                read = self.reader.read_buf(&mut self.rbuf), if writable => match read {
                    Ok(0) => return Ending::PeerClosed,
                    Ok(_) => {
                        if let Some(grace) = keep_alive {
                            deadline.as_mut().reset(Instant::now() + grace);
                        }
                        if let Some(ending) = self.handle_input(session) {
                            return ending;
                        }
                    }
                    Err(e) => return Ending::Io(e),
                },
                delivery = session.pending.pop(), if writable && session.can_deliver() => {
                    if let Some(delivery) = delivery {
                        session.handle_deliver(delivery, &mut self.out);
                        session.pump(&mut self.out);
                    }
                    if let Err(e) = self.encode_out() {
                        return Ending::Protocol(e);
                    }
                }
                _ = &mut deadline, if keep_alive.is_some() => return Ending::KeepAliveTimeout,
            }
        }
    }

    /// Decodes and handles every complete packet in the read buffer.
    fn handle_input(&mut self, session: &mut Session) -> Option<Ending> {
        loop {
            let packet = match self.codec.decode(&mut self.rbuf) {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(e) => return Some(Ending::Protocol(e.into())),
            };
            match self.handle_packet(session, packet) {
                Ok(None) => {}
                Ok(Some(ending)) => return Some(ending),
                Err(e) => return Some(Ending::Protocol(e)),
            }
        }
        self.encode_out().err().map(Ending::Protocol)
    }

    fn handle_packet(
        &mut self,
        session: &mut Session,
        packet: Packet,
    ) -> Result<Option<Ending>, ProtocolError> {
        match packet {
            Packet::Publish(publish) => self.handle_publish(session, publish)?,
            ack @ (Packet::PubAck(_) | Packet::PubRec(_) | Packet::PubComp(_)) => {
                if let Err(unexpected) = session.handle_ack(&ack, &mut self.out) {
                    debug!("{unexpected}");
                }
            }
            Packet::PubRel(id) => self.out.push(session.handle_pubrel(id)),
            Packet::Subscribe { packet_id, filters } => {
                let mut codes = Vec::with_capacity(filters.len());
                for (filter, qos) in filters {
                    topic::validate_topic_filter(&filter)?;
                    codes.push(self.subscribe(session, filter, qos));
                }
                // SUBACK first, then the retained messages the new subscriptions selected.
                self.out.push(Packet::SubAck { packet_id, codes });
                self.persist_subscriptions(session)?;
                session.pump(&mut self.out);
            }
            Packet::Unsubscribe { packet_id, filters } => {
                for filter in &filters {
                    topic::validate_topic_filter(filter)?;
                    self.broker.router.unsubscribe(filter, &session.client_id);
                    session.subscriptions.remove(filter);
                }
                self.persist_subscriptions(session)?;
                self.out.push(Packet::UnsubAck(packet_id));
            }
            Packet::PingReq => self.out.push(Packet::PingResp),
            Packet::Disconnect => return Ok(Some(Ending::ClientDisconnect)),
            Packet::Connect(_) => return Err(ProtocolError::SecondConnect),
            // The codec refuses server-only packets from a client.
            other => unreachable!("codec returned server-only packet {}", other.name()),
        }
        Ok(None)
    }

    fn handle_publish(&mut self, session: &mut Session, publish: Publish) -> Result<(), ProtocolError> {
        topic::validate_topic_name(&publish.topic)?;
        let message = Arc::new(Message::from_publish(&publish));
        match (publish.qos, publish.packet_id) {
            (QoS::AtMostOnce, _) => route(&self.broker, &message)?,
            (QoS::AtLeastOnce, Some(id)) => {
                route(&self.broker, &message)?;
                self.out.push(Packet::PubAck(id));
            }
            (QoS::ExactlyOnce, Some(id)) => {
                // Routed on first receipt; a re-send before PUBREL only gets PUBREC again.
                if session.handle_inbound_qos2(id) {
                    route(&self.broker, &message)?;
                }
                self.out.push(Packet::PubRec(id));
            }
            (_, None) => unreachable!("the decoder requires a packet id for QoS 1 and 2"),
        }
        Ok(())
    }

    /// Adds or replaces one subscription and queues the retained messages it selects
    /// [MQTT-3.8.4-3].
    fn subscribe(
        &mut self,
        session: &mut Session,
        filter: bytestring::ByteString,
        qos: QoS,
    ) -> SubscribeReturnCode {
        let subscriber = Subscriber { mailbox: session.pending.mailbox().clone(), qos };
        self.broker.router.subscribe(&filter, session.client_id.clone(), subscriber);
        for message in self.broker.router.retained.matching(&filter) {
            let qos = qos.min(message.qos);
            session.pending.push(Delivery { message, qos, retain: true });
        }
        session.subscriptions.insert(filter, qos);
        SubscribeReturnCode::Granted(qos)
    }

    fn persist_subscriptions(&self, session: &Session) -> Result<(), StoreError> {
        if !session.persistent {
            return Ok(());
        }
        let record = SessionRecord {
            client_id: session.client_id.clone(),
            subscriptions: session.subscriptions.iter().map(|(f, q)| (f.clone(), *q)).collect(),
        };
        self.broker.store.apply(vec![Op::PutSession(record)])
    }

    /// Encodes the packets the session produced.
    fn encode_out(&mut self) -> Result<(), ProtocolError> {
        for packet in self.out.drain(..) {
            self.codec.encode(packet, &mut self.wbuf)?;
        }
        Ok(())
    }

    /// Writes what is left in the buffer, briefly; used when closing.
    async fn flush_final(&mut self) {
        if self.encode_out().is_err() || self.wbuf.is_empty() {
            return;
        }
        let write = async {
            self.writer.write_all_buf(&mut self.wbuf).await?;
            self.writer.shutdown().await
        };
        if let Ok(Err(e)) = tokio::time::timeout(FINAL_FLUSH_TIMEOUT, write).await {
            debug!("final flush failed: {e}");
        }
    }

    /// Closes the connection: will, then hand-off, offline life or end of the session.
    async fn finish(
        &mut self,
        session: Session,
        will: Option<Will>,
        ending: Ending,
        owner: OwnerId,
        control: mpsc::Receiver<Control>,
    ) {
        match &ending {
            Ending::ClientDisconnect => debug!("client disconnected"),
            Ending::PeerClosed => info!("connection closed by client without DISCONNECT"),
            Ending::Io(e) => info!("connection lost: {e}"),
            Ending::KeepAliveTimeout => info!("keep-alive timeout: closing"),
            Ending::Protocol(e) => warn!("closing connection: {e}"),
            Ending::TakenOver(_) => info!("session taken over by a new connection"),
            Ending::Shutdown => debug!("closing for shutdown"),
        }
        if !matches!(ending, Ending::ClientDisconnect | Ending::Protocol(_) | Ending::Io(_)) {
            self.flush_final().await;
        }
        drop(self.writer.shutdown().await);
        if let Some(will) = will.filter(|_| !matches!(ending, Ending::ClientDisconnect)) {
            publish_will(&self.broker, &will);
        }
        match ending {
            Ending::TakenOver(reply) => {
                let handed = if session.persistent {
                    Some(session)
                } else {
                    offline::end_session(&self.broker, session, owner);
                    None
                };
                // The new owner may have given up waiting; the session then ends with us.
                drop(reply.send(handed));
            }
            _ if session.persistent => offline::run(self.broker.clone(), session, owner, control).await,
            _ => {
                offline::end_session(&self.broker, session, owner);
                // Dropped only now: a concurrent claim waits for this cleanup to finish.
                drop(control);
            }
        }
    }
}

/// Routes an inbound message: retained store first, then every matching session.
fn route(broker: &Broker, message: &Arc<Message>) -> Result<(), StoreError> {
    if message.retain {
        let op = match broker.router.retained.apply(message) {
            RetainChange::Stored => Op::PutRetained(message.clone()),
            RetainChange::Cleared => Op::DeleteRetained(message.topic.clone()),
        };
        broker.store.apply(vec![op])?;
    }
    let outcome = broker.router.publish(message);
    if outcome.dropped > 0 {
        debug!(topic = %message.topic, dropped = outcome.dropped, "message dropped for sessions with full queues");
    }
    Ok(())
}

fn publish_will(broker: &Broker, will: &Will) {
    debug!(topic = %will.topic, "publishing will");
    if let Err(e) = route(broker, &Arc::new(Message::from_will(will))) {
        warn!("will not published: {e}");
    }
}
