//! Area 18: what an offline persistent session holds. It owns no socket: a client that leaves
//! (DISCONNECT, a dropped connection, or a takeover) gives its file descriptor back, so
//! persistent clients coming and going cannot exhaust the broker's descriptors. And the number
//! of offline sessions is bounded (`limits.max_offline_sessions`): 3.1.1 sessions never expire.

use std::time::Duration;

use client_tests::pkt::Connect;
use client_tests::*;

fn open_fds(b: &Broker) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", b.pid())).expect("read /proc/PID/fd").count()
}

/// Waits until the broker holds at most `want` descriptors; returns what it holds.
async fn settle_fds(b: &Broker, want: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let n = open_fds(b);
        if n <= want || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// 500 persistent clients, four ways of leaving: 3.1.1 DISCONNECT, 3.1.1 socket closed without
/// DISCONNECT, MQTT 5 (Session Expiry 1 h) DISCONNECT, and a takeover by a second connection
/// with the same client id [MQTT-3.1.4-3]. Afterwards the broker holds the descriptors it held
/// before, and every session is still there.
#[tokio::test]
async fn offline_sessions_hold_no_socket() {
    let b = Broker::start();
    // One connection opened and closed first, so lazily opened descriptors count in the baseline.
    Raw::connected(b.addr(), "warm-up", true).await.disconnect().await;
    let before = settle_fds(&b, 0).await;
    for n in 0..125 {
        Raw::connected(b.addr(), &format!("v3-disconnect-{n}"), false).await.disconnect().await;
        drop(Raw::connected(b.addr(), &format!("v3-dropped-{n}"), false).await);
        let c = v5::Connect::new(&format!("v5-{n}")).clean(false).session_expiry(3600);
        Raw::handshake5(b.addr(), &c).await.0.disconnect5().await;
        let id = format!("taken-over-{n}");
        let mut first = Raw::connected(b.addr(), &id, false).await;
        let second = Raw::connected(b.addr(), &id, false).await;
        first.expect_closed(WAIT).await;
        second.disconnect().await;
    }
    let after = settle_fds(&b, before).await;
    assert_eq!(after, before, "descriptors held after 500 persistent clients left (before: {before})");
    for id in ["v3-disconnect-124", "v3-dropped-124", "taken-over-124"] {
        let (r, present) = Raw::handshake(b.addr(), &Connect::new(id).clean(false)).await;
        assert!(present, "{id}: the session outlived its connection [MQTT-3.2.2-2]");
        r.disconnect().await;
    }
}

/// With a descriptor limit of 64, far more persistent clients than that come and go, and a new
/// client still connects (before the fix the 53rd was refused: `Too many open files`).
#[tokio::test]
async fn clients_still_connect_under_a_low_descriptor_limit() {
    let b = Broker::start();
    let status = std::process::Command::new("prlimit")
        .args([format!("--pid={}", b.pid()), "--nofile=64:64".to_string()])
        .status()
        .expect("run prlimit");
    assert!(status.success(), "prlimit failed");
    for n in 0..200 {
        Raw::connected(b.addr(), &format!("low-limit-{n}"), false).await.disconnect().await;
    }
    let (r, present) = Raw::handshake(b.addr(), &Connect::new("low-limit-0").clean(false)).await;
    assert!(present);
    r.disconnect().await;
    Raw::connected(b.addr(), "newcomer", true).await.disconnect().await;
}

/// `limits.max_offline_sessions = 2`: when a third session goes offline, the one offline
/// longest ends (its queued message with it); the two newer ones are kept.
#[tokio::test]
async fn beyond_max_offline_sessions_the_one_offline_longest_ends() {
    let b = Broker::start_with("[limits]\nmax_offline_sessions = 2\n");
    for id in ["oldest", "middle", "newest"] {
        let (mut r, _) = Raw::handshake(b.addr(), &Connect::new(id).clean(false)).await;
        r.subscribe(1, &[("offline/t", 1)]).await;
        r.disconnect().await;
        // The order they went offline in is the order the broker saw the DISCONNECTs.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.wait_log("too many offline sessions", WAIT).await, "eviction is logged");
    let mut p = Raw::connected(b.addr(), "offline-pub", true).await;
    p.publish_flow("offline/t", 1, false, 1, b"m").await;
    p.disconnect().await;
    // The kept ones first: a session resumed and left again goes to the back of the line.
    for id in ["middle", "newest"] {
        let (mut r, present) = Raw::handshake(b.addr(), &Connect::new(id).clean(false)).await;
        assert!(present, "{id} kept");
        assert_eq!(r.recv_publish().await.payload, b"m", "{id} got its queued message");
        r.disconnect().await;
    }
    let (mut r, present) = Raw::handshake(b.addr(), &Connect::new("oldest").clean(false)).await;
    assert!(!present, "the session offline longest was ended");
    r.expect_nothing(QUIET).await;
    r.disconnect().await;
}
