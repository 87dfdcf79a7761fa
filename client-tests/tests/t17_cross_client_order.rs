//! Area 17: order across clients. A subscription sees the next PUBLISH that reaches the broker
//! after it: client B writes SUBSCRIBE to its socket (and does not wait for SUBACK), then
//! client A publishes to that topic, and B gets the message. The spec does not order packets
//! of different connections, but scripts and test suites everywhere are written this way, and
//! Mosquitto (one thread, sockets served in the order they became readable) always delivers.

use std::time::Duration;

use client_tests::v5::{self, Props};
use client_tests::*;

const TRIALS: usize = 100;

/// Runs the trials; `subscriber` connects a fresh client, `subscribe` and `publish` encode the
/// packets of the protocol version under test. Returns the trials that missed the message.
async fn trials<S, F>(b: &Broker, mut subscriber: S, subscribe: fn(&str) -> Vec<u8>, publish: fn(&str) -> Vec<u8>) -> Vec<usize>
where
    S: FnMut(usize) -> F,
    F: std::future::Future<Output = Raw>,
{
    let mut publisher = Raw::connected(b.addr(), "order-publisher", true).await;
    let mut missed = Vec::new();
    for trial in 0..TRIALS {
        let topic = format!("order/{trial}");
        let mut sub = subscriber(trial).await;
        sub.send(&subscribe(&topic)).await;
        // Strictly after the SUBSCRIBE bytes were written to B's socket.
        publisher.send(&publish(&topic)).await;
        let mut got = false;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while let ReadOutcome::Packet(p) = sub.read(deadline.saturating_duration_since(tokio::time::Instant::now())).await {
            if p.kind() == 3 {
                got = true;
                break;
            }
        }
        if !got {
            missed.push(trial);
        }
        sub.send_lenient(&pkt::packet(0xe0, &[])).await;
    }
    missed
}

#[tokio::test]
async fn subscribe_then_publish_by_another_client_is_delivered_311() {
    let b = Broker::start();
    let missed = trials(
        &b,
        |n| Raw::connected(b.addr(), &format!("order-sub-{n}"), true),
        |topic| pkt::subscribe(1, &[(topic, 0)]),
        |topic| pkt::publish(topic, 0, false, false, 0, b"m"),
    )
    .await;
    assert!(missed.is_empty(), "{} of {TRIALS} trials missed the message: {missed:?}", missed.len());
}

#[tokio::test]
async fn subscribe_then_publish_by_another_client_is_delivered_v5() {
    let b = Broker::start();
    let missed = trials(
        &b,
        |n| async move { Raw::handshake5(b.addr(), &v5::Connect::new(&format!("order-sub5-{n}"))).await.0 },
        |topic| v5::subscribe(1, &Props::new(), &[(topic, 0)]),
        |topic| pkt::publish(topic, 0, false, false, 0, b"m"),
    )
    .await;
    assert!(missed.is_empty(), "{} of {TRIALS} trials missed the message: {missed:?}", missed.len());
}
