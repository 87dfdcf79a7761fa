//! `tern-load`: a small MQTT 3.1.1 load generator for the durability benchmark.
//!
//! Scenario: P publishers each send N QoS 1 messages to `load/{p}` in a closed loop (at most
//! W unacknowledged per publisher), and one persistent subscriber (clean session 0, QoS 1,
//! acknowledging everything) receives them, so every message takes the broker's durable path:
//! stored, routed to a persistent session, delivered, acknowledged, deleted. Reports publish
//! throughput, publish→PUBACK latency percentiles, and checks delivery per publisher: loss,
//! duplicates and reordering are counted. Loopback only; every loop is bounded by N and by
//! `--timeout`.
//!
//! Usage: tern-load --addr 127.0.0.1:1883 [--publishers 16] [--messages 5000] [--window 16]
//!                  [--payload 16] [--timeout 120] [--label TEXT]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

struct Args {
    addr: SocketAddr,
    publishers: usize,
    messages: usize,
    window: usize,
    payload: usize,
    timeout: Duration,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:1883".parse().unwrap_or_else(|_| unreachable!("valid literal")),
        publishers: 1,
        messages: 5000,
        window: 16,
        payload: 16,
        timeout: Duration::from_secs(120),
        label: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| format!("--addr: {e}"))?,
            "--publishers" => args.publishers = number()?,
            "--messages" => args.messages = number()?,
            "--window" => args.window = number()?.clamp(1, 65_535),
            "--payload" => args.payload = number()?.max(8),
            "--timeout" => args.timeout = Duration::from_secs(number()? as u64),
            "--label" => args.label = value,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// A minimal MQTT 3.1.1 connection: hand-encoded packets, TCP_NODELAY, one read buffer.
struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

fn put_str(buf: &mut BytesMut, s: &[u8]) {
    buf.put_u16(s.len() as u16);
    buf.put_slice(s);
}

fn put_len(buf: &mut BytesMut, mut len: usize) {
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

impl Conn {
    async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Conn { stream, rbuf: BytesMut::with_capacity(64 * 1024), wbuf: BytesMut::new() };
        let mut body = BytesMut::new();
        put_str(&mut body, b"MQTT");
        body.put_u8(4);
        body.put_u8(if clean { 0x02 } else { 0x00 });
        body.put_u16(60);
        put_str(&mut body, client_id.as_bytes());
        conn.frame(0x10, &body);
        conn.flush().await?;
        let (kind, body) = conn.read().await?;
        if kind != 0x20 || body.get(1) != Some(&0) {
            return Err(std::io::Error::other(format!("CONNACK refused: {kind:#x} {body:?}")));
        }
        Ok(conn)
    }

    fn frame(&mut self, header: u8, body: &[u8]) {
        self.wbuf.put_u8(header);
        put_len(&mut self.wbuf, body.len());
        self.wbuf.put_slice(body);
    }

    fn publish_qos1(&mut self, topic: &[u8], packet_id: u16, payload: &[u8]) {
        self.wbuf.put_u8(0x32);
        put_len(&mut self.wbuf, 2 + topic.len() + 2 + payload.len());
        put_str(&mut self.wbuf, topic);
        self.wbuf.put_u16(packet_id);
        self.wbuf.put_slice(payload);
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        self.stream.write_all_buf(&mut self.wbuf).await
    }

    /// The next packet: first byte and body.
    async fn read(&mut self) -> std::io::Result<(u8, BytesMut)> {
        loop {
            if let Some((header_len, len)) = frame_len(&self.rbuf) {
                if self.rbuf.len() >= header_len + len {
                    let kind = self.rbuf[0];
                    self.rbuf.advance(header_len);
                    return Ok((kind, self.rbuf.split_to(len)));
                }
            }
            if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// Fixed-header length and remaining length, once both are complete.
fn frame_len(buf: &[u8]) -> Option<(usize, usize)> {
    let mut len = 0usize;
    for i in 0..4 {
        let byte = *buf.get(1 + i)?;
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((2 + i, len));
        }
    }
    None
}

/// Runs one publisher: `messages` QoS 1 PUBLISHes, at most `window` unacknowledged.
async fn publish(args: &Args, index: usize) -> std::io::Result<Vec<Duration>> {
    let mut conn = Conn::connect(args.addr, &format!("load-pub-{index}"), true).await?;
    let topic = format!("load/{index}");
    let mut sent_at: HashMap<u16, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(args.messages);
    let mut next = 0usize;
    while latencies.len() < args.messages {
        while sent_at.len() < args.window && next < args.messages {
            let packet_id = (next % 65_535) as u16 + 1;
            let mut payload = vec![0u8; args.payload];
            payload[..8].copy_from_slice(&(next as u64).to_be_bytes());
            conn.publish_qos1(topic.as_bytes(), packet_id, &payload);
            sent_at.insert(packet_id, Instant::now());
            next += 1;
        }
        conn.flush().await?;
        let (kind, body) = conn.read().await?;
        if kind == 0x40 && body.len() >= 2 {
            let packet_id = u16::from_be_bytes([body[0], body[1]]);
            if let Some(at) = sent_at.remove(&packet_id) {
                latencies.push(at.elapsed());
            }
        }
    }
    Ok(latencies)
}

/// The persistent subscriber: counts what it receives per publisher and acknowledges it.
async fn subscribe(
    addr: SocketAddr,
    ready: mpsc::Sender<()>,
    expected: usize,
    report: mpsc::Sender<Delivery>,
) -> std::io::Result<()> {
    let mut conn = Conn::connect(addr, "load-sub", false).await?;
    let mut body = BytesMut::new();
    body.put_u16(1);
    put_str(&mut body, b"load/+");
    body.put_u8(1);
    conn.frame(0x82, &body);
    conn.flush().await?;
    loop {
        let (kind, _) = conn.read().await?;
        if kind == 0x90 {
            break;
        }
    }
    let _ = ready.send(()).await;
    let mut received = 0;
    while received < expected {
        let (kind, mut body) = conn.read().await?;
        if kind & 0xF0 != 0x30 {
            continue;
        }
        let topic_len = usize::from(body.get_u16());
        let topic = body.split_to(topic_len);
        let publisher =
            std::str::from_utf8(&topic[5..]).ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(usize::MAX);
        let packet_id = body.get_u16();
        let seq = body.get_u64();
        conn.wbuf.put_slice(&[0x40, 0x02]);
        conn.wbuf.put_u16(packet_id);
        conn.flush().await?;
        received += 1;
        let _ = report.send(Delivery { publisher, seq }).await;
    }
    Ok(())
}

struct Delivery {
    publisher: usize,
    seq: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("tern-load: {e}");
            std::process::exit(2);
        }
    };
    let expected = args.publishers * args.messages;
    let (ready_tx, mut ready) = mpsc::channel(1);
    let (report_tx, mut reports) = mpsc::channel(4096);
    let subscriber = tokio::spawn(subscribe(args.addr, ready_tx, expected, report_tx));
    if ready.recv().await.is_none() {
        eprintln!("tern-load: subscriber failed: {:?}", subscriber.await);
        std::process::exit(1);
    }
    let args = std::sync::Arc::new(args);
    let started = Instant::now();
    let publishers: Vec<_> = (0..args.publishers)
        .map(|i| {
            let args = args.clone();
            tokio::spawn(async move { publish(&args, i).await })
        })
        .collect();
    let mut latencies = Vec::with_capacity(expected);
    let deadline = tokio::time::sleep(args.timeout);
    tokio::pin!(deadline);
    for handle in publishers {
        tokio::select! {
            result = handle => match result {
                Ok(Ok(l)) => latencies.extend(l),
                other => { eprintln!("tern-load: publisher failed: {other:?}"); std::process::exit(1); }
            },
            _ = &mut deadline => { eprintln!("tern-load: timed out"); std::process::exit(1); }
        }
    }
    let publish_time = started.elapsed();
    // Delivery check: every message once, in order per publisher.
    let (mut received, mut duplicates, mut reordered) = (0usize, 0usize, 0usize);
    let mut last: HashMap<usize, u64> = HashMap::new();
    let drain_deadline = Instant::now() + Duration::from_secs(30).min(args.timeout);
    while received < expected && Instant::now() < drain_deadline {
        match tokio::time::timeout(Duration::from_secs(5), reports.recv()).await {
            Ok(Some(d)) => {
                received += 1;
                match last.get(&d.publisher) {
                    Some(prev) if d.seq == *prev => duplicates += 1,
                    Some(prev) if d.seq < *prev => reordered += 1,
                    _ => {}
                }
                last.insert(d.publisher, d.seq.max(*last.get(&d.publisher).unwrap_or(&0)));
            }
            _ => break,
        }
    }
    latencies.sort_unstable();
    let rate = latencies.len() as f64 / publish_time.as_secs_f64();
    let (p50, p99) = (percentile(&latencies, 0.50), percentile(&latencies, 0.99));
    let lost = expected.saturating_sub(received);
    println!(
        "{:<24} publishers={:<3} msgs={:<7} rate={:>9.0} msg/s  p50={:>7.0}µs  p99={:>7.0}µs  lost={} dup={} reordered={}",
        args.label,
        args.publishers,
        latencies.len(),
        rate,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        lost,
        duplicates,
        reordered
    );
    println!(
        "{{\"label\":\"{}\",\"publishers\":{},\"messages\":{},\"rate\":{:.0},\"p50_us\":{:.0},\"p99_us\":{:.0},\"lost\":{},\"duplicates\":{},\"reordered\":{}}}",
        args.label,
        args.publishers,
        latencies.len(),
        rate,
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        lost,
        duplicates,
        reordered
    );
    if lost > 0 || duplicates > 0 || reordered > 0 {
        std::process::exit(1);
    }
}
