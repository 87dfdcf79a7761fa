//! Area 17: order across clients. A subscription sees the next PUBLISH that reaches the broker
//! after it: client B writes SUBSCRIBE to its socket (and does not wait for SUBACK), then
//! client A publishes to that topic, and B gets the message. The spec does not order packets
//! of different connections, but scripts and test suites everywhere are written this way, and
//! Mosquitto (one thread, sockets served in the order they became readable) always delivers.

use std::time::Duration;

use client_tests::v5::{self, Props};
use client_tests::*;

const TRIALS: usize = 100;

/// Runs the trials with a publisher and fresh subscribers of MQTT 5 (`v5`) or 3.1.1; returns
/// the trials that missed the message.
async fn trials(b: &Broker, v5: bool) -> Vec<usize> {
    let mut publisher = if v5 {
        Raw::handshake5(b.addr(), &v5::Connect::new("order-publisher")).await.0
    } else {
        Raw::connected(b.addr(), "order-publisher", true).await
    };
    let mut missed = Vec::new();
    for trial in 0..TRIALS {
        let topic = format!("order/{trial}");
        let id = format!("order-sub-{trial}");
        let (mut sub, subscribe) = if v5 {
            let sub = Raw::handshake5(b.addr(), &v5::Connect::new(&id)).await.0;
            (sub, v5::subscribe(1, &Props::new(), &[(&topic, 0)]))
        } else {
            (Raw::connected(b.addr(), &id, true).await, pkt::subscribe(1, &[(&topic, 0)]))
        };
        sub.send(&subscribe).await;
        // Strictly after the SUBSCRIBE bytes were written to B's socket.
        let publish = if v5 {
            v5::publish(&topic, 0, false, 0, &Props::new(), b"m")
        } else {
            pkt::publish(&topic, 0, false, false, 0, b"m")
        };
        publisher.send(&publish).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        let mut got = false;
        while let ReadOutcome::Packet(p) =
            sub.read(deadline.saturating_duration_since(tokio::time::Instant::now())).await
        {
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
    let missed = trials(&b, false).await;
    assert!(missed.is_empty(), "{} of {TRIALS} trials missed the message: {missed:?}", missed.len());
}

#[tokio::test]
async fn subscribe_then_publish_by_another_client_is_delivered_v5() {
    let b = Broker::start();
    let missed = trials(&b, true).await;
    assert!(missed.is_empty(), "{} of {TRIALS} trials missed the message: {missed:?}", missed.len());
}

// The other direction: A writes a retained PUBLISH, then (strictly after) B subscribes: B gets
// the retained message A set, never the one before it [MQTT-3.3.1-9].
#[tokio::test]
async fn retained_publish_then_subscribe_by_another_client_sees_it() {
    let b = Broker::start();
    let mut publisher = Raw::connected(b.addr(), "order-retainer", true).await;
    let mut stale = Vec::new();
    for trial in 0..TRIALS {
        publisher
            .send(&pkt::publish("order/retained", 0, true, false, 0, trial.to_string().as_bytes()))
            .await;
        let mut sub = Raw::connected(b.addr(), &format!("order-reader-{trial}"), true).await;
        assert_eq!(sub.subscribe(1, &[("order/retained", 0)]).await, vec![0]);
        let got = sub.recv_publish().await;
        if got.payload != trial.to_string().as_bytes() {
            stale.push((trial, String::from_utf8_lossy(&got.payload).into_owned()));
        }
        sub.disconnect().await;
    }
    assert!(
        stale.is_empty(),
        "{} of {TRIALS} subscribers saw an older retained message: {stale:?}",
        stale.len()
    );
}
