//! In-process: a broker restarted on the same store brings back retained messages and
//! persistent sessions (with their subscriptions), so messages published while the client is
//! away are queued for it [MQTT-3.1.2-4], [MQTT-3.1.2-5].

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tern::storage::{MemoryStore, Store};
use tern::{Config, Server};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

async fn start(
    store: Arc<dyn Store>,
) -> (u16, tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let config = Config::from_toml("[[listener]]\nbind = \"127.0.0.1:0\"").unwrap();
    let server = Server::bind_with_store(config, store).await.unwrap();
    let port = server.local_addrs()[0].port();
    let token = server.shutdown_token();
    (port, token, tokio::spawn(server.run()))
}

fn client(id: &str, port: u16, clean: bool) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_clean_session(clean);
    options.set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(options, 16)
}

/// Polls until `want` accepts an incoming packet.
async fn until<T>(events: &mut EventLoop, mut want: impl FnMut(&Packet) -> Option<T>) -> T {
    timeout(WAIT, async {
        loop {
            if let Event::Incoming(packet) = events.poll().await.expect("connection failed") {
                if let Some(found) = want(&packet) {
                    return found;
                }
            }
        }
    })
    .await
    .expect("expected packet did not arrive")
}

#[tokio::test]
async fn restart_on_the_same_store_restores_sessions_and_retained() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());

    let (port, stop, running) = start(store.clone()).await;
    let (sub, mut sub_events) = client("keeper", port, false);
    sub.subscribe("t/#", QoS::AtLeastOnce).await.unwrap();
    until(&mut sub_events, |p| matches!(p, Packet::SubAck(_)).then_some(())).await;
    let (publisher, mut pub_events) = client("pub", port, true);
    publisher.publish("t/r", QoS::AtLeastOnce, true, "kept").await.unwrap();
    until(&mut pub_events, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;
    sub.disconnect().await.unwrap();
    drop(sub_events);
    stop.cancel();
    timeout(WAIT, running).await.expect("shutdown in time").unwrap();

    let (port, stop, running) = start(store).await;
    // Published while "keeper" is offline: queued by the restored session.
    let (publisher, mut pub_events) = client("pub", port, true);
    publisher.publish("t/x", QoS::AtLeastOnce, false, "while away").await.unwrap();
    until(&mut pub_events, |p| matches!(p, Packet::PubAck(_)).then_some(())).await;

    let (_sub, mut sub_events) = client("keeper", port, false);
    let present = until(&mut sub_events, |p| match p {
        Packet::ConnAck(ack) => Some(ack.session_present),
        _ => None,
    })
    .await;
    assert!(present, "restored session must be reported present [MQTT-3.2.2-2]");
    // "t/r" may come first: if its PUBACK had not arrived before the disconnect, it is
    // redelivered (at least once), which is correct.
    let queued = until(&mut sub_events, |p| match p {
        Packet::Publish(p) if p.topic != "t/r" => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!((&queued.topic[..], &queued.payload[..]), ("t/x", &b"while away"[..]));

    let (fresh, mut fresh_events) = client("fresh", port, true);
    fresh.subscribe("t/#", QoS::AtMostOnce).await.unwrap();
    let retained = until(&mut fresh_events, |p| match p {
        Packet::Publish(p) => Some(p.clone()),
        _ => None,
    })
    .await;
    assert!(retained.retain, "retained delivery on subscribe carries retain=1 [MQTT-3.3.1-8]");
    assert_eq!(&retained.payload[..], b"kept");
    stop.cancel();
    timeout(WAIT, running).await.expect("shutdown in time").unwrap();
}
