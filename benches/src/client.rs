//! The load generator's lean MQTT 3.1.1 client path: hand-encoded packets (a PUBLISH is a
//! pre-encoded template patched in place), one read and one write buffer per connection, many
//! packets per write syscall, TCP_NODELAY. Frames are parsed in place from the read buffer.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const CONNACK: u8 = 0x20;
pub const PUBLISH: u8 = 0x30;
pub const PUBACK: u8 = 0x40;
pub const PUBREC: u8 = 0x50;
pub const PUBREL: u8 = 0x62;
pub const PUBCOMP: u8 = 0x70;
pub const SUBACK: u8 = 0x90;

/// Keep-alive asked for in CONNECT. Non-zero (rumqttd refuses 0) and longer than any run, so a
/// QoS 0 subscriber that never writes is not dropped by the broker mid-run.
pub const KEEP_ALIVE_SECS: u16 = 3600;

/// Smallest payload: publisher id (u32), sequence (u32), send time in ns (u64), big-endian.
pub const PAYLOAD_MIN: usize = 16;

/// Nanoseconds since a process-wide origin: publishers stamp it into the payload and
/// subscribers subtract it, so publish→receive latency is measured on one clock.
pub fn now_ns() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Raises the soft open-file limit to the hard limit (idle scenario: thousands of sockets).
pub fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                limit = wanted;
            }
        }
    }
    limit.rlim_cur
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

fn put_len(buf: &mut impl BufMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

/// One complete packet in a read buffer: first byte, and the body's byte range.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub kind: u8,
    pub start: usize,
    pub end: usize,
}

/// The first complete packet at the start of `buf`, if there is one.
pub fn frame_at(buf: &[u8]) -> Option<Frame> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            let start = 2 + i;
            return (buf.len() >= start + len).then_some(Frame { kind: buf[0], start, end: start + len });
        }
    }
    None
}

/// A received PUBLISH, borrowed from the read buffer.
pub struct Publish<'a> {
    pub qos: u8,
    pub packet_id: u16,
    pub payload: &'a [u8],
}

pub fn parse_publish(kind: u8, body: &[u8]) -> Option<Publish<'_>> {
    let qos = (kind >> 1) & 3;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    Some(Publish { qos, packet_id, payload: body.get(at..)? })
}

/// What a generator payload carries.
#[derive(Clone, Copy, Debug)]
pub struct Stamp {
    pub publisher: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

pub fn decode_stamp(payload: &[u8]) -> Option<Stamp> {
    let p = payload.get(..PAYLOAD_MIN)?;
    Some(Stamp {
        publisher: u32::from_be_bytes(p[0..4].try_into().ok()?),
        seq: u32::from_be_bytes(p[4..8].try_into().ok()?),
        sent_ns: u64::from_be_bytes(p[8..16].try_into().ok()?),
    })
}

/// A PUBLISH encoded once; each send copies it and patches packet id and stamp.
pub struct PublishTemplate {
    bytes: Vec<u8>,
    packet_id_at: Option<usize>,
    payload_at: usize,
}

impl PublishTemplate {
    pub fn new(topic: &str, qos: u8, payload_len: usize) -> PublishTemplate {
        let payload_len = payload_len.max(PAYLOAD_MIN);
        let id_len = if qos > 0 { 2 } else { 0 };
        let mut bytes = Vec::with_capacity(8 + topic.len() + payload_len);
        bytes.put_u8(PUBLISH | (qos << 1));
        put_len(&mut bytes, 2 + topic.len() + id_len + payload_len);
        bytes.put_u16(topic.len() as u16);
        bytes.put_slice(topic.as_bytes());
        let packet_id_at = (qos > 0).then(|| {
            bytes.put_u16(0);
            bytes.len() - 2
        });
        let payload_at = bytes.len();
        bytes.resize(payload_at + payload_len, 0);
        PublishTemplate { bytes, packet_id_at, payload_at }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn write(&self, wbuf: &mut BytesMut, packet_id: u16, stamp: Stamp) {
        let base = wbuf.len();
        wbuf.extend_from_slice(&self.bytes);
        let packet = &mut wbuf[base..];
        if let Some(at) = self.packet_id_at {
            packet[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        }
        let p = &mut packet[self.payload_at..self.payload_at + PAYLOAD_MIN];
        p[0..4].copy_from_slice(&stamp.publisher.to_be_bytes());
        p[4..8].copy_from_slice(&stamp.seq.to_be_bytes());
        p[8..16].copy_from_slice(&stamp.sent_ns.to_be_bytes());
    }
}

/// A minimal MQTT 3.1.1 connection.
pub struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed; parse with [`frame_at`] and `advance`.
    pub rbuf: BytesMut,
    /// Packets encoded and not yet written; [`Conn::flush`] writes them in one go.
    pub wbuf: BytesMut,
    read_chunk: usize,
}

impl Conn {
    /// Connects, sends CONNECT and waits for a successful CONNACK. `read_chunk` sizes the read
    /// buffer (small for idle connections, 64 KiB for busy ones).
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        clean: bool,
        read_chunk: usize,
    ) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn {
            stream,
            rbuf: BytesMut::with_capacity(read_chunk),
            wbuf: BytesMut::with_capacity(read_chunk.min(64 * 1024)),
            read_chunk,
        };
        let mut body = BytesMut::new();
        put_str(&mut body, b"MQTT");
        body.put_u8(4);
        body.put_u8(if clean { 0x02 } else { 0x00 });
        body.put_u16(KEEP_ALIVE_SECS);
        put_str(&mut body, client_id.as_bytes());
        conn.frame(0x10, &body);
        conn.flush().await?;
        let (kind, body) = conn.read().await?;
        if kind != CONNACK || body.get(1) != Some(&0) {
            return Err(io::Error::other(format!("{client_id}: CONNACK refused: {kind:#x} {body:?}")));
        }
        Ok(conn)
    }

    /// Subscribes to `filters` at `qos` and waits for a SUBACK granting every one.
    pub async fn subscribe(&mut self, filters: &[String], qos: u8) -> io::Result<()> {
        let mut body = BytesMut::new();
        body.put_u16(1);
        for filter in filters {
            put_str(&mut body, filter.as_bytes());
            body.put_u8(qos);
        }
        self.frame(0x82, &body);
        self.flush().await?;
        loop {
            let (kind, body) = self.read().await?;
            if kind == SUBACK {
                if body.len() < 2 + filters.len() || body[2..].iter().any(|&code| code > 2) {
                    return Err(io::Error::other(format!("SUBACK refused: {body:?}")));
                }
                return Ok(());
            }
        }
    }

    pub fn frame(&mut self, header: u8, body: &[u8]) {
        self.wbuf.put_u8(header);
        put_len(&mut self.wbuf, body.len());
        self.wbuf.put_slice(body);
    }

    /// Writes everything encoded so far.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.stream.write_all_buf(&mut self.wbuf).await
    }

    /// Writes everything encoded so far, like [`Conn::flush`], but gives up (`Ok(false)`, the
    /// unwritten rest left in `wbuf`) once no byte has gone out for `stall` after `from`.
    pub async fn flush_until_stalled(&mut self, from: Instant, stall: Duration) -> io::Result<bool> {
        while !self.wbuf.is_empty() {
            let give_up = from.max(Instant::now()) + stall;
            // write_buf is cancel-safe: a write that times out has written nothing.
            match tokio::time::timeout_at(give_up.into(), self.stream.write_buf(&mut self.wbuf)).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Reads more bytes into the read buffer (cancel-safe); end of stream is an error.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.rbuf.capacity() - self.rbuf.len() < self.read_chunk / 4 + 16 {
            self.rbuf.reserve(self.read_chunk);
        }
        if self.stream.read_buf(&mut self.rbuf).await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "broker closed the connection"));
        }
        Ok(())
    }

    /// The next packet, owned: for handshakes, not for the hot path.
    pub async fn read(&mut self) -> io::Result<(u8, BytesMut)> {
        loop {
            if let Some(frame) = frame_at(&self.rbuf) {
                self.rbuf.advance(frame.start);
                return Ok((frame.kind, self.rbuf.split_to(frame.end - frame.start)));
            }
            self.fill().await?;
        }
    }

    /// Sends DISCONNECT and closes the write side.
    pub async fn disconnect(mut self) {
        self.wbuf.put_slice(&[0xE0, 0x00]);
        let _ = self.flush().await;
        let _ = self.stream.shutdown().await;
    }
}

/// Appends a two-byte acknowledgement (PUBACK, PUBREC, PUBREL or PUBCOMP).
pub fn put_ack(wbuf: &mut BytesMut, kind: u8, packet_id: u16) {
    wbuf.put_u8(kind);
    wbuf.put_u8(2);
    wbuf.put_u16(packet_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_round_trips() {
        for qos in 0..=2 {
            let t = PublishTemplate::new("a/b", qos, 20);
            let mut buf = BytesMut::new();
            t.write(&mut buf, 7, Stamp { publisher: 3, seq: 9, sent_ns: 42 });
            t.write(&mut buf, 8, Stamp { publisher: 3, seq: 10, sent_ns: 43 });
            let f = frame_at(&buf).unwrap();
            assert_eq!(f.end, t.len());
            let p = parse_publish(f.kind, &buf[f.start..f.end]).unwrap();
            assert_eq!(p.qos, qos);
            assert_eq!(p.packet_id, if qos > 0 { 7 } else { 0 });
            assert_eq!(p.payload.len(), 20);
            let s = decode_stamp(p.payload).unwrap();
            assert_eq!((s.publisher, s.seq, s.sent_ns), (3, 9, 42));
        }
    }

    #[test]
    fn frame_needs_whole_packet() {
        assert!(frame_at(&[0x40, 0x02, 0x00]).is_none());
        let f = frame_at(&[0x40, 0x02, 0x00, 0x01, 0xFF]).unwrap();
        assert_eq!((f.kind, f.start, f.end), (0x40, 2, 4));
        let mut long = vec![0x30, 0x80, 0x01];
        long.resize(3 + 128, 0);
        assert_eq!(frame_at(&long).unwrap().end, 131);
    }
}
