//! Area 11: persistence, "acknowledged means durable". What the broker acknowledged survives
//! `kill -9` and a restart on the same storage directory; a clean shutdown (SIGTERM) keeps
//! everything; a directory in use, damaged or unusable is refused and left as it was.
//!
//! Every broker here gets `TERN__STORAGE__DIR` pointing at a tempdir owned by the test, so a
//! restart (a new process on a new ephemeral port) finds the same data. Payloads are sequence
//! numbers per publisher; QoS 1/2 publishers use packet id = sequence number + 1.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use client_tests::*;
use tokio::time::Instant;

/// Bound for one read while streaming or recovering (generous: the machine may be busy).
const SLOW: Duration = Duration::from_secs(15);
/// How long a subscriber must stay silent, once it has everything, to count as finished.
const SETTLE: Duration = Duration::from_secs(1);

fn start_on(dir: &Path) -> Broker {
    start_on_with(dir, "")
}

/// A broker on `dir` with `toml`, the persistent subscriber `<name>-sub` on `<name>/t` at the
/// highest QoS of `qos_of`, and messages 0.. published to it by `<name>-pub` at the QoS
/// `qos_of` gives each (packet id = index + 1), every flow completed.
async fn persistent_subscriber_fed(dir: &Path, toml: &str, name: &str, qos_of: &[u8]) -> (Broker, Raw) {
    let b = start_on_with(dir, toml);
    let topic = format!("{name}/t");
    let (mut s, _) = Raw::handshake(b.addr(), &persistent(&format!("{name}-sub"))).await;
    let max = *qos_of.iter().max().unwrap();
    assert_eq!(s.subscribe(1, &[(topic.as_str(), max)]).await, vec![max]);
    let mut p = Raw::connected(b.addr(), &format!("{name}-pub"), true).await;
    for (i, &q) in qos_of.iter().enumerate() {
        p.publish_flow(&topic, q, false, i as u16 + 1, &payload(i)).await;
    }
    (b, s)
}

fn start_on_with(dir: &Path, toml: &str) -> Broker {
    Broker::launch(Launch::config(toml).data_dir(dir))
}

fn persistent(id: &str) -> pkt::Connect {
    pkt::Connect::new(id).clean(false)
}

fn payload(seq: usize) -> Vec<u8> {
    seq.to_string().into_bytes()
}

fn seq_of(payload: &[u8]) -> usize {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload is not a sequence number: {payload:02x?}"))
}

async fn read_within(r: &mut Raw, d: Duration, what: &str) -> RawPacket {
    match r.read(d).await {
        ReadOutcome::Packet(p) => p,
        o => panic!("waiting for {what}: {o:?} after at most {d:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// A persistent subscriber playing the client's half of the protocol
// ---------------------------------------------------------------------------------------

/// One application-level delivery seen by a [`Sub`].
#[derive(Clone, Debug)]
struct Got {
    /// 0 before the crash, 1 after the restart.
    run: u32,
    seq: usize,
    dup: bool,
    pid: u16,
}

/// A raw MQTT 3.1.1 subscriber with a persistent session (clean session 0). QoS 1: PUBACK
/// everything (each PUBLISH counts as a delivery, duplicates included). QoS 2: Method B of
/// §4.3.3: remember the packet id from PUBREC until PUBREL and deliver a PUBLISH carrying a
/// remembered id only once [MQTT-4.3.3-2]; that client state survives the reconnect, as a
/// real client's must.
struct Sub {
    id: String,
    topic: String,
    raw: Option<Raw>,
    run: u32,
    /// Application deliveries, in arrival order.
    got: Vec<Got>,
    /// Every PUBLISH on the wire (QoS 2 duplicates included).
    wire: Vec<Got>,
    /// QoS 2 packet id -> sequence number, PUBREC sent, PUBREL not yet received.
    awaiting_rel: HashMap<u16, usize>,
}

impl Sub {
    async fn connect(addr: std::net::SocketAddr, id: &str, topic: &str, q: u8) -> Sub {
        let (mut raw, _) = Raw::handshake(addr, &persistent(id)).await;
        assert_eq!(raw.subscribe(1, &[(topic, q)]).await, vec![q], "{id}: SUBACK");
        Sub {
            id: id.to_string(),
            topic: topic.to_string(),
            raw: Some(raw),
            run: 0,
            got: Vec::new(),
            wire: Vec::new(),
            awaiting_rel: HashMap::new(),
        }
    }

    /// Subscribe, then go offline (DISCONNECT): the session keeps the subscription.
    async fn offline(addr: std::net::SocketAddr, id: &str, topic: &str, q: u8) -> Sub {
        let mut s = Sub::connect(addr, id, topic, q).await;
        s.raw.take().unwrap().disconnect().await;
        s
    }

    /// Reconnect after the restart: the session is still there [MQTT-3.2.2-2].
    async fn reconnect(&mut self, addr: std::net::SocketAddr) {
        let (raw, sp) = Raw::handshake(addr, &persistent(&self.id)).await;
        assert!(sp, "{}: session present after the restart [MQTT-3.2.2-2]", self.id);
        self.raw = Some(raw);
        self.run += 1;
    }

    async fn handle(&mut self, p: RawPacket) {
        let raw = self.raw.as_mut().unwrap();
        match p.kind() {
            3 => {
                let m = p.publish();
                assert_eq!(m.topic, self.topic, "{}: {m:?}", self.id);
                let pid = m.pid.unwrap_or_else(|| panic!("{}: QoS 0 delivery {m:?}", self.id));
                let g = Got { run: self.run, seq: seq_of(&m.payload), dup: m.dup, pid };
                self.wire.push(g.clone());
                match m.qos {
                    1 => {
                        self.got.push(g);
                        raw.send_lenient(&pkt::puback(pid)).await;
                    }
                    2 => {
                        match self.awaiting_rel.get(&pid) {
                            Some(&seq) => {
                                // The same message again, not a new one [MQTT-4.3.3-2].
                                assert_eq!(
                                    seq, g.seq,
                                    "{}: packet id {pid} reused for message {} while message {seq} \
                                     awaits PUBREL [MQTT-2.3.1-4]",
                                    self.id, g.seq
                                );
                                assert!(g.dup, "{}: re-sent QoS 2 PUBLISH has DUP=1 [MQTT-3.3.1-1]", self.id);
                            }
                            None => {
                                self.awaiting_rel.insert(pid, g.seq);
                                self.got.push(g);
                            }
                        }
                        raw.send_lenient(&pkt::pubrec(pid)).await;
                    }
                    q => panic!("{}: QoS {q} delivery {m:?}", self.id),
                }
            }
            6 => {
                assert_eq!(p.flags(), 0b0010, "{}: PUBREL flags [MQTT-3.6.1-1]", self.id);
                self.awaiting_rel.remove(&p.pid());
                raw.send_lenient(&pkt::pubcomp(p.pid())).await;
            }
            13 => {}
            _ => panic!("{}: unexpected {p:?}", self.id),
        }
    }

    /// Handle everything until the connection drops (the broker was killed).
    async fn pump_until_closed(mut self) -> Sub {
        loop {
            match self.raw.as_mut().unwrap().read(Duration::from_secs(60)).await {
                ReadOutcome::Packet(p) => self.handle(p).await,
                ReadOutcome::Closed(_) => {
                    self.raw = None;
                    return self;
                }
                ReadOutcome::Timeout => panic!("{}: connection neither used nor closed for 60 s", self.id),
            }
        }
    }

    /// Handle everything until `done` holds and then nothing arrives for [`SETTLE`].
    async fn pump_until(&mut self, done: impl Fn(&Sub) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let finished = done(self);
            let wait = if finished { SETTLE } else { deadline.saturating_duration_since(Instant::now()) };
            match self.raw.as_mut().unwrap().read(wait).await {
                ReadOutcome::Packet(p) => self.handle(p).await,
                ReadOutcome::Timeout if finished => return,
                o => panic!(
                    "{}: {o:?} before receiving everything expected; delivered so far {:?}, awaiting PUBREL {:?}",
                    self.id,
                    self.seqs(),
                    self.awaiting_rel
                ),
            }
        }
    }

    fn seqs(&self) -> Vec<usize> {
        self.got.iter().map(|g| g.seq).collect()
    }

    fn seqs_of_run(&self, run: u32) -> Vec<usize> {
        self.got.iter().filter(|g| g.run == run).map(|g| g.seq).collect()
    }

    fn has_all(&self, want: &BTreeSet<usize>) -> bool {
        let have: BTreeSet<usize> = self.got.iter().map(|g| g.seq).collect();
        want.is_subset(&have)
    }

    /// DUP and packet ids across the restart: a message first sent before the crash comes back
    /// with DUP=1 and its original packet id [MQTT-3.3.1-1] [MQTT-4.4.0-1] (Tern stores the
    /// in-flight state before the PUBLISH goes out); nothing is DUP before the crash.
    fn check_redelivery_flags(&self) {
        let mut first_pid: HashMap<usize, u16> = HashMap::new();
        for g in &self.wire {
            match (g.run, first_pid.get(&g.seq)) {
                (0, _) => {
                    assert!(!g.dup, "{}: DUP=1 on a first delivery before the crash: {g:?}", self.id);
                    first_pid.insert(g.seq, g.pid);
                }
                (_, Some(&pid)) => {
                    assert!(
                        g.dup && g.pid == pid,
                        "{}: message {} was sent with packet id {pid} before the crash; re-sent as \
                         {g:?}, wanted DUP=1 and the same id [MQTT-3.3.1-1] [MQTT-4.4.0-1]",
                        self.id,
                        g.seq
                    );
                }
                (_, None) => {}
            }
        }
    }

    /// Every PUBLISH is strictly after the previous one within a connection (ordered topic,
    /// [MQTT-4.6.0-6]; re-sends in the original order [MQTT-4.6.0-1]).
    fn check_order_per_run(&self) {
        for run in 0..=self.run {
            let s = self.seqs_of_run(run);
            assert!(
                s.windows(2).all(|w| w[0] < w[1]),
                "{}: deliveries out of order (connection {run}: {}): {s:?}",
                self.id,
                if run == 0 { "before the crash" } else { "after the restart" }
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A publisher streaming numbered messages until the broker is killed
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Out {
    Unsent,
    /// PUBLISH sent, not acknowledged.
    Sent,
    /// QoS 2: PUBREC received, PUBREL sent.
    Recd,
    /// PUBACK / PUBCOMP received.
    Done,
}

/// Publish `n` numbered messages at QoS `q` with up to `window` flows open, answering PUBREC
/// with PUBREL; SIGKILL the broker once `kill_after` flows are complete, then take what still
/// arrives until the connection drops. Returns each message's state at the publisher.
async fn stream_until_crash(
    p: &mut Raw,
    b: &Broker,
    topic: &str,
    q: u8,
    n: usize,
    window: usize,
    kill_after: usize,
) -> Vec<Out> {
    let mut st = vec![Out::Unsent; n];
    let (mut next, mut open, mut done, mut killed) = (0, 0, 0, false);
    loop {
        while !killed && next < n && open < window {
            p.send(&pkt::publish(topic, q, false, false, next as u16 + 1, &payload(next))).await;
            st[next] = Out::Sent;
            next += 1;
            open += 1;
        }
        if !killed && done >= kill_after {
            b.sigkill();
            killed = true;
        }
        match p.read(SLOW).await {
            ReadOutcome::Packet(a) => {
                let i = a.pid() as usize - 1;
                assert!(i < next, "acknowledgement for a packet id never used: {a:?}");
                match (a.kind(), q) {
                    (4, 1) | (7, 2) => {
                        let want = if q == 1 { Out::Sent } else { Out::Recd };
                        assert_eq!(st[i], want, "message {i}: {a:?}");
                        st[i] = Out::Done;
                        open -= 1;
                        done += 1;
                    }
                    (5, 2) => {
                        assert_eq!(st[i], Out::Sent, "message {i}: {a:?}");
                        st[i] = Out::Recd;
                        p.send_lenient(&pkt::pubrel(a.pid())).await;
                    }
                    _ => panic!("publisher: unexpected {a:?}"),
                }
            }
            ReadOutcome::Closed(e) => {
                assert!(killed, "publisher connection closed ({e}) before the broker was killed");
                return st;
            }
            ReadOutcome::Timeout => {
                panic!("publisher: nothing within {SLOW:?} ({done} complete, killed: {killed})")
            }
        }
    }
}

/// One line for the test output: where the crash left the publisher and a subscriber.
fn summary(st: &[Out], subs: &[&Sub]) {
    let count = |o: Out| st.iter().filter(|&&s| s == o).count();
    eprint!(
        "publisher at the crash: {} unsent, {} sent, {} PUBREC'd, {} complete;",
        count(Out::Unsent),
        count(Out::Sent),
        count(Out::Recd),
        count(Out::Done)
    );
    for s in subs {
        let dups = s.wire.iter().filter(|g| g.dup).count();
        eprint!(
            " {}: {} before, {} after ({} DUP);",
            s.id,
            s.seqs_of_run(0).len(),
            s.seqs_of_run(1).len(),
            dups
        );
    }
    eprintln!();
}

fn with_state(st: &[Out], f: impl Fn(Out) -> bool) -> BTreeSet<usize> {
    (0..st.len()).filter(|&i| f(st[i])).collect()
}

/// After the restart, a QoS 2 publisher with a persistent session finishes what it started
/// [MQTT-4.4.0-1]: in the original order, PUBLISH again (DUP=1, same packet id) what had no
/// PUBREC, PUBREL what had. A stored id is answered with PUBREC again [MQTT-4.3.3-2].
async fn finish_qos2(addr: std::net::SocketAddr, id: &str, topic: &str, st: &mut [Out]) {
    let (mut p, sp) = Raw::handshake(addr, &persistent(id)).await;
    assert!(sp, "{id}: session present after the restart [MQTT-3.2.2-2]");
    for (i, s) in st.iter().enumerate() {
        match s {
            Out::Sent => p.send(&pkt::publish(topic, 2, false, true, i as u16 + 1, &payload(i))).await,
            Out::Recd => p.send(&pkt::pubrel(i as u16 + 1)).await,
            _ => {}
        }
    }
    while st.iter().any(|s| matches!(s, Out::Sent | Out::Recd)) {
        let a = read_within(&mut p, SLOW, "PUBREC/PUBCOMP after the restart").await;
        assert!(a.body.len() == 2, "{id}: {a:?}");
        let i = a.pid() as usize - 1;
        assert!(i < st.len(), "{id}: unknown packet id in {a:?}");
        match a.kind() {
            5 => {
                assert_eq!(st[i], Out::Sent, "{id}: PUBREC for message {i}");
                st[i] = Out::Recd;
                p.send(&pkt::pubrel(a.pid())).await;
            }
            7 => {
                assert_eq!(st[i], Out::Recd, "{id}: PUBCOMP for message {i}");
                st[i] = Out::Done;
            }
            _ => panic!("{id}: unexpected {a:?}"),
        }
    }
    p.disconnect().await;
}

// ---------------------------------------------------------------------------------------
// 1-2. Crash in the middle of a stream
// ---------------------------------------------------------------------------------------

const N: usize = 300;
const WINDOW: usize = 20;
const KILL_AFTER: usize = 150;

// [MQTT-4.3.2-2] PUBACK means the broker owns the message: every message the publisher got a
// PUBACK for reaches both persistent subscribers (the one online at the crash and the one
// offline, [MQTT-3.1.2-5]) at least once after kill -9 and a restart, in order
// [MQTT-4.6.0-6]; duplicates only as DUP=1 re-sends with the original packet id
// [MQTT-4.4.0-1] [MQTT-3.3.1-1].
#[tokio::test]
async fn qos1_stream_crash_acked_messages_delivered_at_least_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_on(dir.path());
    let topic = "crash/q1";
    let mut off = Sub::offline(b.addr(), "q1-offline", topic, 1).await;
    let on = Sub::connect(b.addr(), "q1-online", topic, 1).await;
    let on_task = tokio::spawn(on.pump_until_closed());
    let mut p = Raw::connected(b.addr(), "q1-pub", true).await;
    let st = stream_until_crash(&mut p, &b, topic, 1, N, WINDOW, KILL_AFTER).await;
    let mut b = b;
    assert!(b.wait_exit(WAIT).await.is_some(), "broker survived SIGKILL");
    let mut on = on_task.await.expect("online subscriber");
    let acked = with_state(&st, |s| s == Out::Done);
    let sent = st.iter().filter(|&&s| s != Out::Unsent).count();
    assert!(acked.len() >= KILL_AFTER && sent < N, "the kill landed mid-stream: {sent} sent");

    let b2 = start_on(dir.path());
    for s in [&mut on, &mut off] {
        s.reconnect(b2.addr()).await;
        s.pump_until(|s| s.has_all(&acked)).await;
        let missing: Vec<usize> = acked.iter().copied().filter(|i| !s.seqs().contains(i)).collect();
        assert!(missing.is_empty(), "{}: PUBACK'd but never delivered: {missing:?}", s.id);
        assert!(s.seqs().iter().all(|&i| i < sent), "{}: delivered a message never sent", s.id);
        s.check_order_per_run();
        s.check_redelivery_flags();
    }
    assert!(off.seqs_of_run(0).is_empty());
    summary(&st, &[&on, &off]);
}

// [MQTT-4.3.3-2] QoS 2 across kill -9: every message the publisher got PUBREC for is delivered
// exactly once, in order, to the online and the offline persistent subscriber. After the
// restart the publisher (persistent session) re-sends PUBLISH DUP=1 for what had no PUBREC and
// PUBREL for what had [MQTT-4.4.0-1]; the broker answers an id it already stored with PUBREC
// and does not deliver that message again; in the end every sent message is delivered once.
#[tokio::test]
async fn qos2_stream_crash_exactly_once_in_order_after_publisher_completes() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_on(dir.path());
    let topic = "crash/q2";
    let mut off = Sub::offline(b.addr(), "q2-offline", topic, 2).await;
    let on = Sub::connect(b.addr(), "q2-online", topic, 2).await;
    let on_task = tokio::spawn(on.pump_until_closed());
    let (mut p, _) = Raw::handshake(b.addr(), &persistent("q2-pub")).await;
    let mut st = stream_until_crash(&mut p, &b, topic, 2, N, WINDOW, KILL_AFTER).await;
    drop(p);
    let mut b = b;
    assert!(b.wait_exit(WAIT).await.is_some(), "broker survived SIGKILL");
    let mut on = on_task.await.expect("online subscriber");
    let at_crash = st.clone();
    let recd = with_state(&st, |s| matches!(s, Out::Recd | Out::Done));
    let sent = st.iter().filter(|&&s| s != Out::Unsent).count();
    assert!(recd.len() >= KILL_AFTER && sent < N, "the kill landed mid-stream: {sent} sent");
    // What the broker acknowledged is there before the publisher does anything.
    let b2 = start_on(dir.path());
    off.reconnect(b2.addr()).await;
    off.pump_until(|s| s.has_all(&recd) && s.awaiting_rel.is_empty()).await;

    // The online one reconnects while the publisher finishes.
    let all: BTreeSet<usize> = (0..sent).collect();
    on.reconnect(b2.addr()).await;
    let ((), ()) = tokio::join!(
        finish_qos2(b2.addr(), "q2-pub", topic, &mut st[..sent]),
        on.pump_until(|s| s.has_all(&all) && s.awaiting_rel.is_empty()),
    );
    assert!(st[..sent].iter().all(|&s| s == Out::Done));
    off.pump_until(|s| s.has_all(&all) && s.awaiting_rel.is_empty()).await;

    let want: Vec<usize> = all.iter().copied().collect();
    for s in [&on, &off] {
        assert_eq!(
            s.seqs(),
            want,
            "{}: every message exactly once, in order [MQTT-4.3.3-2] [MQTT-4.6.0-6]",
            s.id
        );
        s.check_redelivery_flags();
    }
    assert!(off.seqs_of_run(0).is_empty());
    summary(&at_crash, &[&on, &off]);
}

// ---------------------------------------------------------------------------------------
// 3. Crash between PUBREC and PUBREL
// ---------------------------------------------------------------------------------------

// [MQTT-4.3.3-2] The broker PUBREC'd a QoS 2 PUBLISH and crashed before the PUBREL. After the
// restart the publisher re-sends the PUBLISH (DUP=1, same id): PUBREC again, then PUBREL ->
// PUBCOMP; neither subscriber gets the message twice. After PUBCOMP the same packet id is a
// new publication again.
#[tokio::test]
async fn crash_between_pubrec_and_pubrel_delivers_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on(dir.path());
    let topic = "crash/rel";
    let mut off = Sub::offline(b.addr(), "rel-off", topic, 2).await;
    let mut on = Sub::connect(b.addr(), "rel-on", topic, 2).await;
    let (mut p, _) = Raw::handshake(b.addr(), &persistent("rel-pub")).await;
    p.send(&pkt::publish(topic, 2, false, false, 7, b"0")).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubrec(7), "PUBREC [MQTT-4.3.3-2]");
    // Tern routes a QoS 2 message when it receives the PUBLISH (the routing is stored before
    // PUBREC): the online subscriber gets it now and completes its own flow.
    on.pump_until(|s| s.seqs() == [0] && s.awaiting_rel.is_empty()).await;
    b.kill9().await;
    drop(p);

    let b2 = start_on(dir.path());
    let (mut p, sp) = Raw::handshake(b2.addr(), &persistent("rel-pub")).await;
    assert!(sp, "publisher session present after the restart [MQTT-3.2.2-2]");
    p.send(&pkt::publish(topic, 2, false, true, 7, b"0")).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubrec(7), "stored id answered with PUBREC again [MQTT-4.3.3-2]");
    p.send(&pkt::pubrel(7)).await;
    assert_eq!(p.recv().await.bytes(), pkt::pubcomp(7), "PUBCOMP [MQTT-4.3.3-2]");
    // After PUBCOMP, the same id starts a new publication [MQTT-4.3.3-2].
    p.publish_flow(topic, 2, false, 7, b"1").await;
    p.disconnect().await;

    for s in [&mut on, &mut off] {
        s.reconnect(b2.addr()).await;
        s.pump_until(|s| s.seqs().contains(&1) && s.awaiting_rel.is_empty()).await;
        assert_eq!(s.seqs(), [0, 1], "{}: the message once, then the new one", s.id);
        s.check_redelivery_flags();
    }
}

// ---------------------------------------------------------------------------------------
// 4. Subscriber side: outbound in-flight state
// ---------------------------------------------------------------------------------------

// [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.6.0-1] [MQTT-4.6.0-3] [MQTT-4.3.3-1]: a persistent
// subscriber holds unacknowledged QoS 1/2 deliveries and PUBREC'd ones when the broker is
// killed. After the restart it gets the unacknowledged PUBLISHes again with DUP=1 and their
// original packet ids in the original order, PUBREL (not the PUBLISH) for the PUBREC'd ones in
// PUBREC order, and only then the messages that were queued behind the in-flight window.
#[tokio::test]
async fn crash_with_outbound_inflight_redelivers_dup_same_ids_then_queue() {
    const CFG: &str = "[mqtt]\nmax_inflight_messages = 6\n";
    let dir = tempfile::tempdir().unwrap();
    // 0..=5 fill the in-flight window; 6 and 7 wait in the queue.
    let qos_of = [1u8, 2, 1, 2, 2, 1, 1, 2];
    let (mut b, mut s) = persistent_subscriber_fed(dir.path(), CFG, "out", &qos_of).await;
    let mut first = Vec::new();
    for (i, &q) in qos_of.iter().enumerate().take(6) {
        let m = s.recv_publish().await;
        assert_eq!((seq_of(&m.payload), m.qos, m.dup), (i, q, false), "{m:?}");
        first.push(m);
    }
    s.expect_nothing(QUIET).await;
    // PUBREC messages 1 and 3; the broker stores that and answers PUBREL.
    for i in [1, 3] {
        let pid = first[i].pid.unwrap();
        s.send(&pkt::pubrec(pid)).await;
        assert_eq!(s.recv().await.bytes(), pkt::pubrel(pid), "PUBREL for message {i} [MQTT-4.3.3-1]");
    }
    b.kill9().await;
    drop(s);

    let b2 = start_on_with(dir.path(), CFG);
    let (mut s, sp) = Raw::handshake(b2.addr(), &persistent("out-sub")).await;
    assert!(sp, "session present after the restart [MQTT-3.2.2-2]");
    let mut publishes = Vec::new();
    let mut pubrels = Vec::new();
    for _ in 0..6 {
        let pk = read_within(&mut s, SLOW, "re-sent in-flight packets").await;
        match pk.kind() {
            3 => publishes.push(pk.publish()),
            6 => {
                assert_eq!(pk.flags(), 0b0010, "PUBREL flags [MQTT-3.6.1-1]");
                pubrels.push(pk.pid());
            }
            _ => panic!("unexpected {pk:?} (so far: PUBLISH {publishes:?}, PUBREL {pubrels:?})"),
        }
    }
    assert_eq!(
        pubrels,
        [first[1].pid.unwrap(), first[3].pid.unwrap()],
        "PUBREL re-sent for the PUBREC'd messages, in PUBREC order, and no PUBLISH for them \
         [MQTT-4.3.3-1] [MQTT-4.6.0-3]; PUBLISHes were {publishes:?}"
    );
    let resent: Vec<usize> = publishes.iter().map(|m| seq_of(&m.payload)).collect();
    assert_eq!(resent, [0, 2, 4, 5], "unacknowledged PUBLISHes re-sent in the original order [MQTT-4.6.0-1]");
    for m in &publishes {
        let orig = &first[seq_of(&m.payload)];
        assert!(m.dup, "re-sent PUBLISH has DUP=1 [MQTT-3.3.1-1]: {m:?}");
        assert_eq!(
            (m.pid, m.qos, &m.topic),
            (orig.pid, orig.qos, &orig.topic),
            "original packet id [MQTT-4.4.0-1]"
        );
    }
    // Complete them all; then the queued ones follow, in order, as first deliveries.
    for pid in &pubrels {
        s.send(&pkt::pubcomp(*pid)).await;
    }
    let mut pending = BTreeSet::new();
    for m in &publishes {
        pending.extend(ack_inbound(&mut s, m).await);
    }
    let queued = recv_completing(&mut s, 2, pending).await;
    for (m, i) in queued.iter().zip(6..) {
        assert_eq!(
            (seq_of(&m.payload), m.qos, m.dup),
            (i, qos_of[i], false),
            "queued after the in-flight ones: {m:?}"
        );
    }
    s.expect_nothing(QUIET).await;
}

// [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-4.6.0-1]: a persistent subscriber leaves with QoS 1
// deliveries unacknowledged, then the broker is killed. Tern stores no in-flight record when
// it sends a stored QoS 1 delivery (its packet id follows from the delivery's sequence number)
// and writes the window's records when the session goes offline: after the restart the
// unacknowledged ones come again with DUP=1 and their original ids, in order, and what was
// queued behind them comes as first deliveries (DUP=0).
#[tokio::test]
async fn offline_session_window_survives_kill9_with_original_ids() {
    const CFG: &str = "[mqtt]\nmax_inflight_messages = 3\n";
    let dir = tempfile::tempdir().unwrap();
    let (mut b, mut s) = persistent_subscriber_fed(dir.path(), CFG, "win", &[1; 5]).await;
    let mut first = Vec::new();
    for i in 0..3 {
        let m = s.recv_publish().await;
        assert_eq!((seq_of(&m.payload), m.dup), (i, false), "{m:?}");
        first.push(m);
    }
    s.expect_nothing(QUIET).await;
    // The client leaves without acknowledging; the broker stores that it is offline.
    s.send(&pkt::disconnect()).await;
    drop(s);
    tokio::time::sleep(QUIET).await;
    b.kill9().await;

    let b2 = start_on_with(dir.path(), CFG);
    let (mut s, sp) = Raw::handshake(b2.addr(), &persistent("win-sub")).await;
    assert!(sp, "session present after the restart [MQTT-3.2.2-2]");
    for orig in &first {
        let m = read_within(&mut s, SLOW, "re-sent in-flight PUBLISH").await.publish();
        assert_eq!(
            (seq_of(&m.payload), m.dup, m.pid),
            (seq_of(&orig.payload), true, orig.pid),
            "re-sent in order, DUP=1, original packet id: {m:?}"
        );
        s.send(&pkt::puback(m.pid.unwrap())).await;
    }
    for i in 3..5 {
        let m = read_within(&mut s, SLOW, "queued PUBLISH").await.publish();
        assert_eq!((seq_of(&m.payload), m.dup), (i, false), "queued behind the window: {m:?}");
        s.send(&pkt::puback(m.pid.unwrap())).await;
    }
    s.expect_nothing(QUIET).await;
}

/// Acknowledge a received QoS 1/2 PUBLISH (PUBACK, or PUBREC); returns the QoS 2 packet id
/// now awaiting PUBREL.
async fn ack_inbound(s: &mut Raw, m: &RawPublish) -> Option<u16> {
    let pid = m.pid.unwrap();
    if m.qos == 2 {
        s.send(&pkt::pubrec(pid)).await;
        Some(pid)
    } else {
        s.send(&pkt::puback(pid)).await;
        None
    }
}

/// Receive `n` PUBLISHes, acknowledging each as it comes, and answer PUBREL with PUBCOMP until
/// every QoS 2 flow (those in `pending` too) is complete. The broker may send the next PUBLISH
/// before the PUBREL of the previous one.
async fn recv_completing(s: &mut Raw, n: usize, mut pending: BTreeSet<u16>) -> Vec<RawPublish> {
    let mut got = Vec::new();
    while got.len() < n || !pending.is_empty() {
        let pk =
            read_within(s, SLOW, &format!("PUBLISH/PUBREL (got {got:?}, awaiting PUBREL {pending:?})")).await;
        match pk.kind() {
            3 => {
                let m = pk.publish();
                assert!(got.len() < n, "unexpected extra PUBLISH {m:?} after {got:?}");
                if let Some(pid) = ack_inbound(s, &m).await {
                    assert!(pending.insert(pid), "packet id {pid} in use twice [MQTT-2.3.1-4]");
                }
                got.push(m);
            }
            6 => {
                assert_eq!(pk.flags(), 0b0010, "PUBREL flags [MQTT-3.6.1-1]");
                assert!(pending.remove(&pk.pid()), "PUBREL for an id not awaiting one: {pk:?}");
                s.send(&pkt::pubcomp(pk.pid())).await;
            }
            _ => panic!("unexpected {pk:?}"),
        }
    }
    got
}

// ---------------------------------------------------------------------------------------
// 5. Queued messages, retained messages and subscriptions; clean restart
// ---------------------------------------------------------------------------------------

/// A fresh clean-session client subscribes to `filter` and must get exactly `want` as
/// retained messages (RETAIN=1) [MQTT-3.3.1-6] [MQTT-3.3.1-8].
async fn assert_retained(addr: std::net::SocketAddr, filter: &str, want: &[(&str, &[u8])]) {
    let mut r = Raw::connected(addr, &unique("ret-check"), true).await;
    assert_eq!(r.subscribe(1, &[(filter, 2)]).await, vec![2]);
    let mut got = Vec::new();
    for m in recv_completing(&mut r, want.len(), BTreeSet::new()).await {
        assert!(m.retain, "retained message has RETAIN=1 [MQTT-3.3.1-8]: {m:?}");
        got.push((m.topic, m.payload));
    }
    got.sort();
    let mut want: Vec<(String, Vec<u8>)> = want.iter().map(|(t, p)| (t.to_string(), p.to_vec())).collect();
    want.sort();
    assert_eq!(got, want, "retained messages [MQTT-3.3.1-5]");
    r.expect_nothing(QUIET).await;
    r.disconnect().await;
}

// [MQTT-3.1.2-4] [MQTT-3.1.2-5] [MQTT-3.3.1-5]: messages queued for an offline persistent
// session, its subscriptions and retained messages survive kill -9; SIGTERM then exits 0 and
// the next start still has all of it (including what was queued after the first restart).
#[tokio::test]
async fn queued_retained_subscriptions_survive_kill9_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on(dir.path());
    let (mut s, _) = Raw::handshake(b.addr(), &persistent("keep-sub")).await;
    assert_eq!(s.subscribe(1, &[("keep/q", 2)]).await, vec![2]);
    s.disconnect().await;
    let mut p = Raw::connected(b.addr(), "keep-pub", true).await;
    p.publish_flow("keep/r1", 1, true, 1, b"retained-1").await;
    p.publish_flow("keep/r2", 2, true, 2, b"retained-2").await;
    let qos_of = |i: usize| if i.is_multiple_of(2) { 1 } else { 2 };
    for i in 0..5 {
        p.publish_flow("keep/q", qos_of(i), false, i as u16 + 10, &payload(i)).await;
    }
    b.kill9().await;

    // After the crash: the subscription still routes, the retained messages are there.
    let mut b = start_on(dir.path());
    let mut p = Raw::connected(b.addr(), "keep-pub", true).await;
    for i in 5..10 {
        p.publish_flow("keep/q", qos_of(i), false, i as u16 + 10, &payload(i)).await;
    }
    p.disconnect().await;
    let retained: [(&str, &[u8]); 2] = [("keep/r1", b"retained-1"), ("keep/r2", b"retained-2")];
    assert_retained(b.addr(), "keep/+", &retained).await;

    // Clean shutdown.
    b.sigterm();
    let status = b.wait_exit(Duration::from_secs(20)).await.expect("tern did not exit after SIGTERM");
    assert!(status.success(), "SIGTERM exits 0, got {status:?}; log:\n{}", b.logs());

    let b = start_on(dir.path());
    assert_retained(b.addr(), "keep/+", &retained).await;
    let (mut s, sp) = Raw::handshake(b.addr(), &persistent("keep-sub")).await;
    assert!(sp, "session present after kill -9 and SIGTERM restarts [MQTT-3.2.2-2]");
    for (i, m) in recv_completing(&mut s, 10, BTreeSet::new()).await.iter().enumerate() {
        assert_eq!(
            (m.topic.as_str(), seq_of(&m.payload), m.qos, m.dup),
            ("keep/q", i, qos_of(i), false),
            "queued messages in order [MQTT-4.6.0-6]: {m:?}"
        );
    }
    s.expect_nothing(QUIET).await;
    // The subscription is still live.
    let mut p = Raw::connected(b.addr(), "keep-pub", true).await;
    p.publish_flow("keep/q", 1, false, 1, b"10").await;
    let m = s.recv_publish().await;
    assert_eq!((seq_of(&m.payload), m.dup), (10, false));
    s.send(&pkt::puback(m.pid.unwrap())).await;
}

// `durability = "fsync"` gives the same kill -9 guarantees as `wal`.
#[tokio::test]
async fn fsync_durability_survives_kill9() {
    const CFG: &str = "[storage]\ndurability = \"fsync\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on_with(dir.path(), CFG);
    let (mut s, _) = Raw::handshake(b.addr(), &persistent("fs-sub")).await;
    assert_eq!(s.subscribe(1, &[("fs/t", 2)]).await, vec![2]);
    s.disconnect().await;
    let mut p = Raw::connected(b.addr(), "fs-pub", true).await;
    p.publish_flow("fs/r", 1, true, 1, b"retained").await;
    for i in 0..4 {
        p.publish_flow("fs/t", 1 + (i % 2) as u8, false, i as u16 + 2, &payload(i)).await;
    }
    b.kill9().await;
    let b = start_on_with(dir.path(), CFG);
    assert_retained(b.addr(), "fs/r", &[("fs/r", b"retained")]).await;
    let (mut s, sp) = Raw::handshake(b.addr(), &persistent("fs-sub")).await;
    assert!(sp, "session present [MQTT-3.2.2-2]");
    for (i, m) in recv_completing(&mut s, 4, BTreeSet::new()).await.iter().enumerate() {
        assert_eq!((seq_of(&m.payload), m.dup), (i, false), "{m:?}");
    }
    s.expect_nothing(QUIET).await;
}

// ---------------------------------------------------------------------------------------
// 6. The directory: lock, damage, unusable; memory mode; session expiry
// ---------------------------------------------------------------------------------------

// Only one tern may use a directory: a second one exits non-zero saying it is locked, and the
// first keeps serving its clients and sessions.
#[tokio::test]
async fn second_broker_on_same_dir_refused_first_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let b = start_on(dir.path());
    let (mut s, _) = Raw::handshake(b.addr(), &persistent("lock-sub")).await;
    assert_eq!(s.subscribe(1, &[("lock/t", 1)]).await, vec![1]);

    let launch = Launch::config("").data_dir(dir.path());
    let second = tokio::task::spawn_blocking(move || Broker::run_to_exit(launch, Duration::from_secs(20)))
        .await
        .unwrap();
    let status =
        second.status.unwrap_or_else(|| panic!("second tern still running; output:\n{}", second.logs));
    assert!(!status.success(), "second tern on the same dir must fail; output:\n{}", second.logs);
    assert!(second.logs.to_lowercase().contains("locked"), "says the dir is locked:\n{}", second.logs);
    assert!(!second.logs.contains("listening on"), "it must not serve:\n{}", second.logs);

    let mut p = Raw::connected(b.addr(), "lock-pub", true).await;
    p.publish_flow("lock/t", 1, false, 1, b"0").await;
    let m = s.recv_publish().await;
    assert_eq!(m.payload, b"0");
    s.send(&pkt::puback(m.pid.unwrap())).await;
    assert_broker_alive(b.addr()).await;
}

fn file_names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

// A damaged database (garbage in CURRENT) stops tern with a message naming the directory;
// nothing is deleted or rewritten, and once CURRENT is repaired the data is all there.
#[tokio::test]
async fn damaged_database_refused_and_files_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = start_on(&dir);
    let mut p = Raw::connected(b.addr(), "dmg-pub", true).await;
    p.publish_flow("dmg/r", 1, true, 1, b"kept").await;
    p.disconnect().await;
    b.sigterm();
    assert!(b.wait_exit(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "SIGTERM exit 0");

    let current = dir.join("CURRENT");
    let good = std::fs::read(&current).expect("RocksDB CURRENT file");
    let before = file_names(&dir);
    let garbage = b"\x00\xffthis is not a manifest name\x00".to_vec();
    std::fs::write(&current, &garbage).unwrap();

    let e = Broker::run_to_exit(Launch::config("").data_dir(&dir), Duration::from_secs(20));
    let status =
        e.status.unwrap_or_else(|| panic!("tern still running on a damaged db; output:\n{}", e.logs));
    assert!(!status.success(), "a damaged database is refused; output:\n{}", e.logs);
    assert!(!e.logs.contains("listening on"), "must not serve:\n{}", e.logs);
    assert!(e.logs.contains(dir.to_str().unwrap()), "the message names the directory:\n{}", e.logs);
    let after = file_names(&dir);
    assert!(before.is_subset(&after), "files deleted: before {before:?}, after {after:?}");
    assert_eq!(std::fs::read(&current).unwrap(), garbage, "CURRENT left as it was");

    std::fs::write(&current, &good).unwrap();
    let b = start_on(&dir);
    assert_retained(b.addr(), "dmg/r", &[("dmg/r", b"kept")]).await;
}

// A storage dir that cannot be created (its parent is a regular file) stops tern with a
// message naming it; the file is untouched.
#[tokio::test]
async fn unusable_storage_dir_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("data");
    let e = Broker::run_to_exit(Launch::config("").data_dir(&dir), Duration::from_secs(20));
    let status = e.status.unwrap_or_else(|| panic!("tern still running; output:\n{}", e.logs));
    assert!(!status.success(), "an unusable dir is refused; output:\n{}", e.logs);
    assert!(!e.logs.contains("listening on"), "must not serve:\n{}", e.logs);
    assert!(e.logs.contains(dir.to_str().unwrap()), "the message names the directory:\n{}", e.logs);
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

// `durability = "memory"` (documented in config/tern.toml): nothing is written to disk, so a
// restart starts empty: no session (session present 0 [MQTT-3.2.2-3]), no queued messages, no
// retained messages.
#[tokio::test]
async fn memory_durability_loses_state_on_restart() {
    const CFG: &str = "[storage]\ndurability = \"memory\"\n";
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut b = start_on_with(&dir, CFG);
    let (mut s, _) = Raw::handshake(b.addr(), &persistent("mem-sub")).await;
    assert_eq!(s.subscribe(1, &[("mem/t", 1)]).await, vec![1]);
    s.disconnect().await;
    let mut p = Raw::connected(b.addr(), "mem-pub", true).await;
    p.publish_flow("mem/r", 1, true, 1, b"retained").await;
    p.publish_flow("mem/t", 1, false, 2, b"0").await;
    p.disconnect().await;
    assert_retained(b.addr(), "mem/r", &[("mem/r", b"retained")]).await;
    b.sigterm();
    assert!(b.wait_exit(Duration::from_secs(20)).await.is_some_and(|s| s.success()), "SIGTERM exit 0");

    let b = start_on_with(&dir, CFG);
    let (mut s, sp) = Raw::handshake(b.addr(), &persistent("mem-sub")).await;
    assert!(!sp, "memory mode: no session after a restart [MQTT-3.2.2-3]");
    s.expect_nothing(QUIET).await;
    assert_retained(b.addr(), "mem/r", &[]).await;
    assert!(
        !dir.exists() || file_names(&dir).is_empty(),
        "memory mode writes nothing to disk: {:?}",
        file_names(&dir)
    );
}

/// MQTT 5 persistent sessions (clean start 0) with these expiry intervals, subscribed to
/// `topic` at QoS 1 and disconnected normally; then one QoS 1 message is queued for each.
async fn v5_offline_sessions(addr: std::net::SocketAddr, topic: &str, sessions: &[(&str, u32)]) {
    for (id, expiry) in sessions {
        let c = v5::Connect::new(id).clean(false).session_expiry(*expiry);
        let (mut r, _) = Raw::handshake5(addr, &c).await;
        r.sub5(topic, 1).await;
        r.disconnect5().await;
    }
    let mut p = Raw::connected(addr, &unique("exp-pub"), true).await;
    p.publish_flow(topic, 1, false, 1, b"0").await;
    p.disconnect().await;
}

/// Reconnect a v5 session (clean start 0); if it is present, it gets the queued message.
async fn v5_resume(addr: std::net::SocketAddr, topic: &str, id: &str, want_present: bool) {
    let c = v5::Connect::new(id).clean(false).session_expiry(300);
    let (mut r, ack) = Raw::handshake5(addr, &c).await;
    assert_eq!(
        ack.session_present, want_present,
        "{id}: session present {want_present} expected [MQTT-3.2.2-2] [MQTT-3.2.2-3] [MQTT-3.1.2-23]"
    );
    if want_present {
        let m = r.recv_publish5().await;
        assert_eq!((m.topic.as_str(), m.payload.as_slice(), m.dup), (topic, &b"0"[..], false));
        r.send(&v5::puback(m.pid.unwrap())).await;
    }
    r.expect_nothing(QUIET).await;
    r.disconnect5().await;
}

// [MQTT-3.1.2-23] A v5 session with Session Expiry Interval 1 s is gone 1 s after the
// disconnect, stored data included: after 2.5 s and a restart it is not present (a 300 s
// session, the control, is).
#[tokio::test]
async fn v5_session_expiry_removes_stored_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on(dir.path());
    v5_offline_sessions(b.addr(), "exp/t", &[("exp-short", 1), ("exp-long", 300)]).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    b.kill9().await;
    let b = start_on(dir.path());
    v5_resume(b.addr(), "exp/t", "exp-short", false).await;
    v5_resume(b.addr(), "exp/t", "exp-long", true).await;
}

// [MQTT-3.1.2-23] Expiry counts the time the broker was down: a 3 s session that went offline
// just before kill -9 is gone when the broker comes back 4 s later; a 300 s one is still there.
#[tokio::test]
async fn v5_session_expiry_counts_time_while_broker_down() {
    // The debug line "session offline" is logged once the broker has stored when the session
    // went offline. Tern closes the connection (FIN) before it stores that, so a kill within
    // a few ms of the close could lose the disconnect time; that window is not what this test
    // is about, so it waits for the line. The client reconnects as soon as the broker listens:
    // a session whose expiry passed while the broker was down must not be resumed.
    const CFG: &str = "[log]\nlevel = \"info,tern::connection::offline=debug\"\n";
    let dir = tempfile::tempdir().unwrap();
    let mut b = start_on_with(dir.path(), CFG);
    v5_offline_sessions(b.addr(), "down/t", &[("down-short", 3), ("down-long", 300)]).await;
    for id in ["down-short", "down-long"] {
        let needle = format!("client_id={id}");
        let stored = b.wait_log_line(|l| l.contains(&needle) && l.contains("session offline"), WAIT).await;
        assert!(stored, "no 'session offline' log line for {id}; log:\n{}", b.logs());
    }
    b.kill9().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let b = start_on_with(dir.path(), CFG);
    v5_resume(b.addr(), "down/t", "down-short", false).await;
    v5_resume(b.addr(), "down/t", "down-long", true).await;
}

// ---------------------------------------------------------------------------------------
// Disk full: a write that fails is never acknowledged
// ---------------------------------------------------------------------------------------

/// A size-limited tmpfs, unmounted on drop. Mounting needs root (as CI runs).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot mount a tmpfs (this test needs root, as CI has)");
        SmallDisk { dir }
    }

    fn grow(&self, size: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot grow the tmpfs");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A 64 KiB payload whose first 8 bytes are its sequence number.
fn big_payload(seq: usize) -> Vec<u8> {
    let mut p = format!("{seq:08}").into_bytes();
    p.resize(64 * 1024, b'x');
    p
}

// Issue 4 "a disk-full write error stops acknowledging": with the data directory on a 12 MiB
// tmpfs and an offline persistent subscriber, QoS 1 messages of 64 KiB are stored until the
// disk is full; the PUBLISH whose write fails gets no PUBACK (the connection is closed), so
// the publisher knows it was not taken. After the disk grows and the broker restarts, every
// acknowledged message is delivered, in order.
#[tokio::test]
async fn disk_full_stops_acknowledging_and_loses_nothing_acknowledged() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    const CFG: &str = "[mqtt]\nmax_queued_messages = 100000\nmax_queued_bytes = 1073741824\n";
    const SENT_AT_MOST: usize = 400; // 25 MiB: twice the disk.
    let disk = SmallDisk::mount("12m");
    let mut b = start_on_with(disk.dir.path(), CFG);
    Sub::offline(b.addr(), "df-sub", "df/t", 1).await;

    let (mut p, _) = Raw::handshake(b.addr(), &pkt::Connect::new("df-pub")).await;
    let mut acked = 0;
    let refused = loop {
        assert!(acked < SENT_AT_MOST, "{SENT_AT_MOST} messages of 64 KiB acknowledged on a 12 MiB disk");
        let pid = acked as u16 + 1;
        p.send_lenient(&pkt::publish("df/t", 1, false, false, pid, &big_payload(acked))).await;
        match p.read(SLOW).await {
            ReadOutcome::Packet(ack) if ack.kind() == 4 && ack.pid() == pid => acked += 1,
            ReadOutcome::Closed(_) => break acked,
            o => panic!("message {acked}: expected PUBACK or a closed connection, got {o:?}"),
        }
    };
    assert!(refused > 0, "nothing could be stored at all; log:\n{}", b.logs());
    assert!(b.wait_log("storage write failed", WAIT).await, "the failure is logged; log:\n{}", b.logs());

    b.kill9().await;
    disk.grow("64m");
    let b = start_on_with(disk.dir.path(), CFG);
    let (mut s, present) = Raw::handshake(b.addr(), &persistent("df-sub")).await;
    assert!(present, "session present after the restart [MQTT-3.2.2-2]");
    let mut seqs = Vec::new();
    while seqs.len() < refused {
        let m = s.recv_publish().await;
        let seq: usize = std::str::from_utf8(&m.payload[..8]).unwrap().parse().unwrap();
        seqs.push(seq);
        s.send_lenient(&pkt::puback(m.pid.unwrap())).await;
    }
    assert_eq!(seqs, (0..refused).collect::<Vec<_>>(), "every acknowledged message, in order");
}
