//! The WebSocket transport (`tern::transport::ws`): a tokio-tungstenite client sends
//! input-chosen frames over an in-memory pipe — Binary messages of any size, Binary messages
//! split into several frames with Pings between them, Pings, unsolicited Pongs — then closes
//! (Close handshake) or just goes away. The server side reads through `WsStream` with
//! input-chosen read sizes, optionally echoing what it reads. Checks:
//! - the bytes read are exactly the Binary payloads, concatenated in order, then EOF;
//! - a message or frame (control frames included) above the size limit ends the stream with an
//!   error, after exactly the payloads of the messages before it;
//! - when the client goes away without a Close frame, what was read is a prefix of the payloads
//!   (a Pong it can no longer receive may end the stream early), and all of them at EOF;
//! - what the server writes arrives at the client as Binary messages, in order.
//! Hangs (a stream that stops making progress) show as libFuzzer timeouts.
#![no_main]

use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Capacity of the in-memory pipe in each direction: 8 + this % 4096 bytes.
    capacity: u16,
    /// The server's message and frame size limit: 16 + n % 4096, or 1 MiB when absent.
    limit: Option<u16>,
    /// Sizes of the server's reads (1 + n each, cycled); 4096 when empty.
    read_sizes: Vec<u8>,
    /// The client ends with a Close handshake (else it drops the connection).
    close: bool,
    /// The server writes back whatever it reads.
    echo: bool,
    frames: Vec<Frame>,
}

#[derive(Arbitrary, Debug)]
enum Frame {
    Binary(Vec<u8>),
    /// One Binary message in several frames; `pings[i]` sends a Ping after part `i`.
    Fragmented {
        parts: Vec<Vec<u8>>,
        pings: Vec<bool>,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

/// Control frame payloads are at most 125 bytes (RFC 6455 section 5.5).
fn control(payload: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&payload[..payload.len().min(125)])
}

fuzz_target!(|input: Input| {
    let limit = input.limit.map_or(1 << 20, |n| 16 + usize::from(n) % 4096);
    let read_sizes: Vec<usize> = if input.read_sizes.is_empty() {
        vec![4096]
    } else {
        input.read_sizes.iter().map(|n| 1 + usize::from(*n)).collect()
    };

    // What the client sends, as WebSocket messages, and what the server must read.
    let mut messages = Vec::new();
    let mut payloads = Vec::new();
    // Payload bytes before the first message over the limit, and whether there is one.
    let mut before_oversized = None;
    for frame in input.frames.iter().take(64) {
        match frame {
            Frame::Binary(data) => {
                messages.push(Message::Binary(Bytes::copy_from_slice(data)));
                if data.len() > limit && before_oversized.is_none() {
                    before_oversized = Some(payloads.len());
                }
                payloads.extend_from_slice(data);
            }
            Frame::Fragmented { parts, pings } => {
                let parts: Vec<&Vec<u8>> = parts.iter().take(8).collect();
                let total: usize = parts.iter().map(|p| p.len()).sum();
                let frame_too_large = parts.iter().any(|p| p.len() > limit);
                if (total > limit || frame_too_large) && before_oversized.is_none() {
                    before_oversized = Some(payloads.len());
                }
                let start = payloads.len();
                for (i, part) in parts.iter().enumerate() {
                    let opcode =
                        if i == 0 { OpCode::Data(Data::Binary) } else { OpCode::Data(Data::Continue) };
                    let last = i + 1 == parts.len();
                    messages.push(Message::Frame(WsFrame::message(
                        Bytes::copy_from_slice(part),
                        opcode,
                        last,
                    )));
                    payloads.extend_from_slice(part);
                    if !last && pings.get(i).copied().unwrap_or(false) {
                        let ping = control(part);
                        // Control frames count against the frame size limit too.
                        if ping.len() > limit && before_oversized.is_none() {
                            before_oversized = Some(start);
                        }
                        messages.push(Message::Ping(ping));
                    }
                }
            }
            Frame::Ping(data) | Frame::Pong(data) => {
                let payload = control(data);
                if payload.len() > limit && before_oversized.is_none() {
                    before_oversized = Some(payloads.len());
                }
                messages.push(match frame {
                    Frame::Ping(_) => Message::Ping(payload),
                    _ => Message::Pong(payload),
                });
            }
        }
    }

    runtime().block_on(async {
        let (client_io, server_io) = tokio::io::duplex(8 + usize::from(input.capacity) % 4096);
        let mut request = "ws://localhost/mqtt".into_client_request().expect("request");
        request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
        let (server, client) = tokio::join!(
            tern::transport::ws::accept(server_io, "/mqtt", limit),
            tokio_tungstenite::client_async(request, client_io)
        );
        let mut server = server.expect("server handshake");
        let (client, _) = client.expect("client handshake");

        let serve = async move {
            let mut read = Vec::new();
            let mut written = Vec::new();
            let mut buf = vec![0; 256];
            let mut i = 0;
            let ending = loop {
                let size = read_sizes[i % read_sizes.len()];
                i += 1;
                buf.resize(size, 0);
                match server.read(&mut buf).await {
                    Ok(0) => break Ok(()),
                    Ok(n) => {
                        read.extend_from_slice(&buf[..n]);
                        if input.echo {
                            if let Err(e) = server.write_all(&buf[..n]).await {
                                break Err(e);
                            }
                            if let Err(e) = server.flush().await {
                                break Err(e);
                            }
                            written.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            if ending.is_ok() && input.echo {
                let _ = server.shutdown().await;
            }
            // Dropped here: a client still sending sees the pipe close.
            drop(server);
            (read, written, ending)
        };

        let (mut sink, mut stream) = client.split();
        let send = async move {
            for message in messages {
                if sink.send(message).await.is_err() {
                    return None;
                }
            }
            if input.close {
                let _ = sink.close().await;
                Some(sink)
            } else {
                None
            }
        };
        let receive = async move {
            let mut echoed = Vec::new();
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Binary(data) = message {
                    echoed.extend_from_slice(&data);
                }
            }
            echoed
        };
        // Without a Close frame, the client goes away once it has sent everything: both halves
        // of its stream are dropped, so the server sees the pipe close.
        let client = async move {
            tokio::pin!(receive);
            let sent = tokio::select! {
                sink = send => sink,
                _ = &mut receive => return None,
            };
            match sent {
                Some(_sink) => Some(receive.await),
                None => None,
            }
        };
        let ((read, written, ending), echoed) = tokio::join!(serve, client);

        match (before_oversized, input.close) {
            (Some(at), true) => {
                assert!(ending.is_err(), "a message over the limit of {limit} was accepted");
                assert!(
                    read == payloads[..at],
                    "read {} bytes, expected the {at} before the oversized message",
                    read.len()
                );
            }
            (Some(at), false) => {
                assert!(
                    payloads[..at].starts_with(&read),
                    "read bytes that were not sent before the oversized message"
                );
            }
            (None, true) => {
                if let Err(e) = &ending {
                    panic!("stream failed: {e}");
                }
                assert!(read == payloads, "read {} bytes, sent {}", read.len(), payloads.len());
                if let Some(echoed) = echoed {
                    assert!(
                        echoed == written,
                        "client got {} of the {} bytes written",
                        echoed.len(),
                        written.len()
                    );
                }
            }
            (None, false) => {
                assert!(payloads.starts_with(&read), "read bytes that were not sent");
                if ending.is_ok() {
                    assert!(read == payloads, "EOF after {} of {} bytes", read.len(), payloads.len());
                }
            }
        }
    });
});
