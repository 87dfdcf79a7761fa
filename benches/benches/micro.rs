//! Criterion micro-benchmarks of the hot path: topic matching over 100k subscriptions, codec
//! decode/encode of a small PUBLISH, and routing one message to 50 subscribers.
//! Run: `cargo bench -p tern-benches --bench micro`.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tern::auth::Security;
use tern::codec::Codec;
use tern::message::Message;
use tern::packet::{Packet, PacketId, Publish, QoS, SubscriptionOptions};
use tern::router::trie::{for_each_matching_filter, TopicTree};
use tern::router::{Router, Subscriber, Subscription};
use tern::session::queue::{PendingQueue, QueueLimits};
use tern::session::ClientId;

/// 100k filters in the shape of a device fleet: exact, `+` and `#` mixed.
fn fleet_tree() -> TopicTree<HashMap<u32, ()>> {
    let mut tree: TopicTree<HashMap<u32, ()>> = TopicTree::default();
    for i in 0..100_000u32 {
        let filter = match i % 4 {
            0 => format!("site/{}/dev/{i}/temp", i % 100),
            1 => format!("site/{}/dev/{i}/+", i % 100),
            2 => format!("site/+/dev/{i}/#"),
            _ => format!("site/{}/dev/+/alarm", i % 1000),
        };
        tree.entry(&filter).insert(i, ());
    }
    tree
}

fn trie(c: &mut Criterion) {
    let tree = fleet_tree();
    c.bench_function("trie/match 100k filters", |b| {
        b.iter(|| {
            let mut n = 0;
            for_each_matching_filter(&tree, black_box("site/42/dev/4242/temp"), &mut |set| n += set.len());
            n
        })
    });
}

fn codec(c: &mut Criterion) {
    let connect = b"\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03abc";
    let publish = Packet::Publish(Box::new(Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: "site/42/dev/4242/temp".into(),
        packet_id: Some(PacketId(1.try_into().unwrap())),
        payload: vec![7u8; 16].into(),
        properties: Default::default(),
    }));
    let mut encoder = Codec::new(1 << 20, 0);
    let mut one = BytesMut::new();
    encoder.encode(publish.clone(), &mut one).unwrap();
    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode publish 16 B", |b| {
        let mut buf = BytesMut::with_capacity(4096);
        b.iter(|| {
            buf.clear();
            encoder.encode(black_box(publish.clone()), &mut buf).unwrap();
        })
    });
    group.bench_function("decode publish 16 B", |b| {
        let mut decoder = Codec::new(1 << 20, 0);
        decoder.decode(&mut BytesMut::from(&connect[..])).unwrap();
        b.iter(|| {
            let mut buf = BytesMut::from(&one[..]);
            decoder.decode(&mut buf).unwrap().unwrap()
        })
    });
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let router = Router::default();
    let limits = QueueLimits { max_messages: 1_000_000, max_bytes: 1 << 30, stall_after_ms: 2000 };
    let mut queues: Vec<PendingQueue> = (0..50)
        .map(|i| {
            let id = ClientId::from(format!("sub{i}").as_str());
            let queue = PendingQueue::new(id.clone(), limits);
            queue.mailbox().set_online(true);
            router.subscribe(
                "fan/out",
                id,
                Subscriber {
                    mailbox: queue.mailbox().clone(),
                    subscription: Subscription {
                        options: SubscriptionOptions::qos(QoS::AtMostOnce),
                        id: None,
                    },
                },
            );
            queue
        })
        .collect();
    let message = Arc::new(Message::new("fan/out", vec![1u8; 16], QoS::AtMostOnce));
    let ids = std::sync::atomic::AtomicU64::new(1);
    // No ACL configured, as by default.
    let security = Security::open();
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(50));
    group.bench_function("publish to 50 subscribers and drain", |b| {
        b.iter(|| {
            router.route(&message, &ids, &security).deliver();
            for q in &mut queues {
                black_box(q.try_pop());
            }
        })
    });
    group.finish();
}

criterion_group!(benches, trie, codec, fan_out);
criterion_main!(benches);
