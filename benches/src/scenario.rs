//! The load generator's scenarios and the tasks that run them.
//!
//! Message scenarios (`fan-in`, `fan-out`, `pairs`, `latency`, `overload`, `durable`) share one
//! engine: subscribers connect and subscribe first, then publishers connect, then the broker's
//! CPU time is read and every publisher starts at once. A publisher sends until its count or
//! the duration runs out, keeping at most `window` messages unacknowledged (QoS 1/2) and, when
//! `e2e_window` is set, at most that many sent but not yet received by every subscriber that
//! should get them (a closed loop end to end, which makes QoS 0 measure a sustainable rate
//! instead of the broker's drop policy). Subscribers check every delivery against the
//! per-publisher sequence numbers in the payload. `idle` only connects and holds clients.
//!
//! Open loop (`--e2e-window 0`): publishers send as fast as TCP (and, at QoS 1/2, their
//! in-flight window) allows, optionally in bursts (`--bursts`, `--burst-pause`) or at a fixed
//! rate, and loss is a measurement rather than a failure. `--stalled K` makes the last K
//! subscribers stop reading their sockets once publishing starts, so the others show whether a
//! client that does not read holds everybody up. Every wait is bounded: a write the broker does
//! not take, acknowledgements that stop coming and the drain after publishing all give up after
//! `--drain` without progress, and the drain also after `--drain-cap` in all.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Buf;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;

use crate::client::{self, frame_at, now_ns, put_ack, Conn, PublishTemplate, Stamp};
use crate::stats::{proc, Histogram, Report, SeqTrack};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    FanIn,
    FanOut,
    Pairs,
    Idle,
    Latency,
    Overload,
    Durable,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "fan-in" => Kind::FanIn,
            "fan-out" => Kind::FanOut,
            "pairs" => Kind::Pairs,
            "idle" => Kind::Idle,
            "latency" => Kind::Latency,
            "overload" => Kind::Overload,
            "durable" => Kind::Durable,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::FanIn => "fan-in",
            Kind::FanOut => "fan-out",
            Kind::Pairs => "pairs",
            Kind::Idle => "idle",
            Kind::Latency => "latency",
            Kind::Overload => "overload",
            Kind::Durable => "durable",
        }
    }
}

pub const USAGE: &str = "\
tern-load --scenario fan-in|fan-out|pairs|idle|latency|overload|durable [options]
  --addr HOST:PORT        broker (127.0.0.1:1883)
  --sub-addr HOST:PORT    subscribers connect here instead (a bridge's upstream)
  --qos 0|1|2             publish and subscription QoS (latency, overload, durable: 1)
  --payload BYTES         payload size, at least 16 (16)
  --publishers P          fan-in 4, pairs 10, overload 4, durable 1, others 1
  --subscribers K         fan-out 50, pairs = publishers, fan-in 1 (each on the
                          wildcard), others 1
  --stalled K             the last K subscribers stop reading their sockets when
                          publishing starts (never acknowledge either); they are left
                          out of deliveries and loss (0)
  --messages N            per publisher (10000; with --duration, an upper bound)
  --duration SECS         publish for this long (fractions allowed)
  --window W              at most W unacknowledged QoS 1/2 messages per publisher (16)
  --e2e-window E          at most E sent but not yet received by every subscriber, per
                          publisher; 0 = off (default: W; off for overload and durable)
  --rate R                offered messages/s per publisher, 0 = as fast as allowed
                          (latency: 1000); a publisher that falls behind catches up
  --stamp sent|intended   latency from the actual send (sent) or, with --rate, from
                          the time the schedule meant to send (intended: no
                          coordinated omission when the publisher is held up)
  --bursts B              split each publisher's messages into B bursts (1)
  --burst-pause SECS      pause after each burst once it is written (0.5)
  --sub-rate R            overload: the subscriber acknowledges at most R messages/s while
                          publishers run, then drains at full speed (1000)
  --clients C             idle: connections to open and hold (1000)
  --connect-concurrency N idle: connection attempts in flight (64)
  --hold SECS             idle: seconds to hold the connections after measuring (0)
  --drain SECS            stop waiting for deliveries, acknowledgements or a blocked
                          write after this long without progress (2)
  --drain-cap SECS        stop waiting for deliveries this long after publishing at
                          the latest (30)
  --timeout SECS          bound on the whole run (120)
  --broker-pid PID        read the broker's CPU time and RSS from /proc
  --threads N             generator worker threads (available cores)
  --label TEXT            broker label in the output";

/// Parsed command line, with scenario defaults applied.
#[derive(Clone, Debug)]
pub struct Config {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// Where subscribers connect (`--sub-addr`; default `addr`).
    pub sub_addr: SocketAddr,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub messages: u64,
    pub duration: Option<Duration>,
    pub window: usize,
    pub e2e_window: usize,
    pub rate: f64,
    /// Stamp payloads with the scheduled send time (`--stamp intended`, with `--rate`).
    pub stamp_intended: bool,
    pub bursts: u64,
    pub burst_pause: Duration,
    pub stalled: usize,
    pub sub_rate: f64,
    pub clients: usize,
    pub connect_concurrency: usize,
    pub hold: Duration,
    pub drain: Duration,
    pub drain_cap: Duration,
    pub timeout: Duration,
    pub broker_pid: Option<u32>,
    pub threads: usize,
    pub label: String,
}

impl Config {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Config, String> {
        let mut kind = Kind::FanIn;
        let mut addr: SocketAddr = ([127, 0, 0, 1], 1883).into();
        let mut sub_addr = None;
        let (mut qos, mut payload, mut publishers, mut subscribers) = (None, 16, None, None);
        let (mut messages, mut duration, mut window, mut e2e_window) = (None, None, 16, None);
        let (mut rate, mut sub_rate, mut clients, mut connect_concurrency) = (None, 1000.0, 1000, 64);
        let (mut hold, mut drain, mut drain_cap, mut timeout) = (0.0, 2.0, 30.0, 120.0);
        let (mut stamp_intended, mut bursts, mut burst_pause, mut stalled) = (false, 1, 0.5, 0);
        let (mut broker_pid, mut threads, mut label) = (None, None, String::new());
        let mut it = args.into_iter();
        while let Some(flag) = it.next() {
            if flag == "-h" || flag == "--help" {
                return Err(USAGE.into());
            }
            let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let int = || value.parse::<u64>().map_err(|e| format!("{flag} {value}: {e}"));
            let float = || match value.parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
                _ => Err(format!("{flag} {value}: not a non-negative number")),
            };
            match flag.as_str() {
                "--scenario" => {
                    kind = Kind::parse(&value).ok_or_else(|| format!("unknown scenario {value}"))?
                }
                "--addr" => addr = value.parse().map_err(|e| format!("--addr {value}: {e}"))?,
                "--sub-addr" => {
                    sub_addr = Some(value.parse().map_err(|e| format!("--sub-addr {value}: {e}"))?)
                }
                "--qos" => qos = Some(int()?.min(3) as u8),
                "--payload" => payload = int()? as usize,
                "--publishers" => publishers = Some(int()? as usize),
                "--subscribers" => subscribers = Some(int()? as usize),
                "--messages" => messages = Some(int()?),
                "--duration" => duration = Some(Duration::from_secs_f64(float()?)),
                "--window" => window = int()?.clamp(1, 65_535) as usize,
                "--e2e-window" => e2e_window = Some(int()? as usize),
                "--rate" => rate = Some(float()?),
                "--sub-rate" => sub_rate = float()?,
                "--stamp" => {
                    stamp_intended = match value.as_str() {
                        "sent" => false,
                        "intended" => true,
                        _ => return Err(format!("--stamp {value}: sent or intended")),
                    }
                }
                "--bursts" => bursts = int()?.max(1),
                "--burst-pause" => burst_pause = float()?,
                "--stalled" => stalled = int()? as usize,
                "--clients" => clients = int()? as usize,
                "--connect-concurrency" => connect_concurrency = int()?.max(1) as usize,
                "--hold" => hold = float()?,
                "--drain" => drain = float()?,
                "--drain-cap" => drain_cap = float()?,
                "--timeout" => timeout = float()?,
                "--broker-pid" => broker_pid = Some(int()? as u32),
                "--threads" => threads = Some(int()?.max(1) as usize),
                "--label" => label = value,
                other => return Err(format!("unknown flag {other}\n{USAGE}")),
            }
        }
        let qos = match (kind, qos) {
            (Kind::Latency | Kind::Overload, None) | (Kind::Durable, _) => 1,
            (_, Some(q)) if q <= 2 => q,
            (_, Some(q)) => return Err(format!("--qos {q}: 0, 1 or 2")),
            (_, None) => 0,
        };
        if kind == Kind::Overload && qos == 0 {
            return Err("overload needs QoS 1 or 2 (it counts acknowledged messages)".into());
        }
        let publishers = publishers
            .unwrap_or(match kind {
                Kind::FanIn | Kind::Overload => 4,
                Kind::Pairs => 10,
                _ => 1,
            })
            .max(1);
        let subscribers = match kind {
            Kind::Pairs => publishers,
            Kind::FanOut => subscribers.unwrap_or(50).max(1),
            Kind::FanIn => subscribers.unwrap_or(1).max(1),
            _ => 1,
        };
        if stalled >= subscribers {
            return Err(format!(
                "--stalled {stalled}: at least one of {subscribers} subscriber(s) must read"
            ));
        }
        let rate = rate.unwrap_or(if kind == Kind::Latency { 1000.0 } else { 0.0 });
        if stamp_intended && rate == 0.0 {
            return Err("--stamp intended needs --rate".into());
        }
        if payload < client::PAYLOAD_MIN {
            return Err(format!("--payload {payload}: at least {} bytes", client::PAYLOAD_MIN));
        }
        let e2e_default = if matches!(kind, Kind::Overload | Kind::Durable) { 0 } else { window };
        Ok(Config {
            kind,
            addr,
            sub_addr: sub_addr.unwrap_or(addr),
            qos,
            payload,
            publishers,
            subscribers,
            messages: messages.unwrap_or(if duration.is_some() { u32::MAX as u64 } else { 10_000 }),
            duration,
            window,
            e2e_window: e2e_window.unwrap_or(e2e_default),
            rate,
            stamp_intended,
            bursts,
            burst_pause: Duration::from_secs_f64(burst_pause),
            stalled,
            sub_rate: if kind == Kind::Overload { sub_rate } else { 0.0 },
            clients,
            connect_concurrency,
            hold: Duration::from_secs_f64(hold),
            drain: Duration::from_secs_f64(drain.max(0.1)),
            drain_cap: Duration::from_secs_f64(drain_cap.max(drain.max(0.1))),
            timeout: Duration::from_secs_f64(timeout.max(1.0)),
            broker_pid,
            threads: threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
            label,
        })
    }
}

/// Runs the configured scenario to its end (or its timeout) and reports.
pub async fn run(cfg: Config) -> Report {
    let cfg = Arc::new(cfg);
    let mut report = Report {
        scenario: cfg.kind.name().into(),
        label: cfg.label.clone(),
        qos: cfg.qos,
        payload: cfg.payload,
        publishers: cfg.publishers,
        subscribers: cfg.subscribers,
        window: cfg.window,
        e2e_window: cfg.e2e_window,
        stalled: cfg.stalled,
        bursts: cfg.bursts,
        burst_pause_s: (cfg.bursts > 1).then(|| cfg.burst_pause.as_secs_f64()),
        offered_rate: (cfg.rate > 0.0).then_some(cfg.rate * cfg.publishers as f64),
        ..Report::default()
    };
    if cfg.kind == Kind::Idle {
        report.publishers = 0;
        report.subscribers = 0;
        run_idle(&cfg, &mut report).await;
    } else if let Err(e) = run_messages(cfg.clone(), &mut report).await {
        report.error = Some(e);
    }
    report
}

/// Phases the main task announces to publishers and subscribers.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Phase {
    Ready,
    Go,
    /// Publishers are done: a rate-limited subscriber now drains at full speed.
    Drain,
    Stop,
}

/// State shared between subscribers (who count) and publishers (who wait for credit).
struct Shared {
    /// Deliveries per publisher and subscriber, duplicates included: the end-to-end credit.
    delivered: Vec<Vec<AtomicU64>>,
    /// Wakes publisher p when one of its messages arrived.
    wake: Vec<Notify>,
    /// All deliveries so far, and the time of the latest (ns on the `now_ns` clock).
    total: AtomicU64,
    last_ns: AtomicU64,
}

/// Who publishes where, and who receives what.
struct Layout {
    pub_topics: Vec<String>,
    pub_ids: Vec<String>,
    sub_filters: Vec<Vec<String>>,
    sub_ids: Vec<String>,
    sub_clean: bool,
    /// For each publisher, the subscribers that should receive its messages.
    audience: Vec<Vec<usize>>,
}

fn layout(cfg: &Config) -> Layout {
    let run = format!("{:x}", now_ns() ^ (u64::from(std::process::id()) << 32));
    let (p, s) = (cfg.publishers, cfg.subscribers);
    let prefix = format!("tl/{run}");
    let ids = |role: &str, n: usize| (0..n).map(|i| format!("tl-{run}-{role}{i}")).collect::<Vec<_>>();
    match cfg.kind {
        Kind::Durable => Layout {
            // The durability benchmark's names: a persistent subscriber on `load/+`.
            pub_topics: (0..p).map(|i| format!("load/{i}")).collect(),
            pub_ids: (0..p).map(|i| format!("load-pub-{i}")).collect(),
            sub_filters: vec![vec!["load/+".into()]],
            sub_ids: vec!["load-sub".into()],
            sub_clean: false,
            audience: vec![vec![0]; p],
        },
        Kind::FanOut => Layout {
            pub_topics: vec![format!("{prefix}/0"); p],
            pub_ids: ids("p", p),
            sub_filters: vec![vec![format!("{prefix}/0")]; s],
            sub_ids: ids("s", s),
            sub_clean: true,
            audience: vec![(0..s).collect(); p],
        },
        Kind::Pairs => Layout {
            pub_topics: (0..p).map(|i| format!("{prefix}/{i}")).collect(),
            pub_ids: ids("p", p),
            sub_filters: (0..s).map(|i| vec![format!("{prefix}/{i}")]).collect(),
            sub_ids: ids("s", s),
            sub_clean: true,
            audience: (0..p).map(|i| vec![i]).collect(),
        },
        // fan-in, latency, overload: P publishers on distinct topics, wildcard subscribers (one
        // but in fan-in with --subscribers).
        _ => Layout {
            pub_topics: (0..p).map(|i| format!("{prefix}/{i}")).collect(),
            pub_ids: ids("p", p),
            sub_filters: vec![vec![format!("{prefix}/+")]; s],
            sub_ids: ids("s", s),
            sub_clean: true,
            audience: vec![(0..s).collect(); p],
        },
    }
}

struct PubResult {
    /// Messages written to the socket (encoded ones a blocked write never took are not sent).
    sent: u64,
    acked: u64,
    /// QoS 1/2 messages still unacknowledged when the publisher gave up waiting.
    unacked: u64,
    /// The broker stopped reading this publisher's socket and the write was abandoned.
    write_blocked: bool,
    acked_seqs: SeqTrack,
    ack_latency: Histogram,
    stalls: u64,
}

struct SubResult {
    tracks: Vec<SeqTrack>,
    latency: Histogram,
}

/// A publisher waits this long for end-to-end credit before it assumes the missing messages
/// are lost and goes on (loss is counted at the end either way).
const STALL: Duration = Duration::from_secs(1);
/// Encode at most this much before writing.
const WRITE_BATCH: usize = 64 * 1024;

#[derive(PartialEq)]
enum Blocked {
    Nothing,
    Acks,
    Credit,
    Rate(Instant),
    Batch,
    /// A burst is written: pause before the next one.
    Pause,
}

async fn publisher(
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    index: usize,
    mut conn: Conn,
    topic: String,
    audience: Vec<usize>,
    mut phase: watch::Receiver<Phase>,
) -> std::io::Result<PubResult> {
    while *phase.borrow_and_update() < Phase::Go {
        if phase.changed().await.is_err() {
            break;
        }
    }
    let qos = cfg.qos;
    let template = PublishTemplate::new(&topic, qos, cfg.payload);
    let window = if qos == 0 { usize::MAX } else { cfg.window };
    let limit = cfg.messages.min(u64::from(u32::MAX));
    // Messages per burst; a pause follows every burst but the last.
    let burst = if cfg.bursts > 1 { limit.div_ceil(cfg.bursts).max(1) } else { u64::MAX };
    let start = Instant::now();
    let start_ns = now_ns();
    let deadline = cfg.duration.map(|d| start + d);
    let mut res = PubResult {
        sent: 0,
        acked: 0,
        unacked: 0,
        write_blocked: false,
        acked_seqs: SeqTrack::default(),
        ack_latency: Histogram::default(),
        stalls: 0,
    };
    // Per packet id: send time (0 = free), sequence number, and for QoS 2 whether PUBREC came.
    let (mut sent_at, mut seq_of) = (vec![0u64; 65_536], vec![0u32; 65_536]);
    let mut released = vec![false; if qos == 2 { 65_536 } else { 0 }];
    let (mut next_id, mut outstanding, mut forgiven) = (0u16, 0usize, 0u64);
    // Bursts: where the last pause was taken, and when the current one ends.
    let (mut paused_at, mut pause_until) = (0u64, None::<Instant>);
    // When sending stopped and when the latest acknowledgement came: the wait for the rest is
    // bounded by `drain` from the later of the two.
    let (mut sending_ended, mut last_ack) = (None::<Instant>, start);
    let min_delivered =
        || audience.iter().map(|&s| shared.delivered[index][s].load(Ordering::Acquire)).min().unwrap_or(0);
    loop {
        let mut sending = res.sent < limit && deadline.is_none_or(|d| Instant::now() < d);
        let mut blocked = Blocked::Nothing;
        if sending {
            let mut credit = if cfg.e2e_window > 0 {
                (min_delivered() + forgiven + cfg.e2e_window as u64).saturating_sub(res.sent)
            } else {
                u64::MAX
            };
            while res.sent < limit {
                if let Some(until) = pause_until {
                    if Instant::now() < until {
                        blocked = Blocked::Rate(until);
                        break;
                    }
                    pause_until = None;
                }
                if res.sent > 0 && res.sent.is_multiple_of(burst) && paused_at != res.sent {
                    blocked = Blocked::Pause;
                    break;
                }
                if outstanding >= window {
                    blocked = Blocked::Acks;
                    break;
                }
                if credit == 0 {
                    blocked = Blocked::Credit;
                    break;
                }
                if cfg.rate > 0.0 {
                    let due = start + Duration::from_secs_f64(res.sent as f64 / cfg.rate);
                    if due > Instant::now() {
                        blocked = Blocked::Rate(due);
                        break;
                    }
                }
                if conn.wbuf.len() >= WRITE_BATCH {
                    blocked = Blocked::Batch;
                    break;
                }
                let mut packet_id = 0;
                if qos > 0 {
                    loop {
                        next_id = next_id.wrapping_add(1).max(1);
                        if sent_at[usize::from(next_id)] == 0 {
                            break;
                        }
                    }
                    packet_id = next_id;
                }
                let seq = res.sent as u32;
                let ts = now_ns();
                let stamp_ns = if cfg.stamp_intended {
                    start_ns + (res.sent as f64 * 1e9 / cfg.rate) as u64
                } else {
                    ts
                };
                template.write(
                    &mut conn.wbuf,
                    packet_id,
                    Stamp { publisher: index as u32, seq, sent_ns: stamp_ns },
                );
                res.sent += 1;
                credit -= 1;
                if qos > 0 {
                    sent_at[usize::from(packet_id)] = ts.max(1);
                    seq_of[usize::from(packet_id)] = seq;
                    outstanding += 1;
                }
            }
            sending = res.sent < limit;
        }
        if !conn.wbuf.is_empty() {
            // After the duration, a write that makes no progress for `drain` is abandoned: the
            // broker has stopped reading this socket.
            let written = match deadline {
                Some(d) => conn.flush_until_stalled(d, cfg.drain).await?,
                None => {
                    conn.flush().await?;
                    true
                }
            };
            if !written {
                // What is left in the buffer never reached the broker (a partly written PUBLISH
                // cannot be delivered either); at QoS 0/1 the buffer holds only PUBLISH packets
                // of the template's length.
                let unwritten = conn.wbuf.len().div_ceil(template.len()) as u64;
                res.sent = res.sent.saturating_sub(unwritten);
                res.unacked = (outstanding as u64).saturating_sub(unwritten);
                res.write_blocked = true;
                // Dropped without DISCONNECT: that write would block too.
                return Ok(res);
            }
        }
        if blocked == Blocked::Pause {
            paused_at = res.sent;
            let until = Instant::now() + cfg.burst_pause;
            pause_until = Some(until);
            blocked = Blocked::Rate(until);
        }
        if !sending && outstanding == 0 {
            break;
        }
        let now = Instant::now();
        // Not sending any more: wait for the missing acknowledgements, but not for ever.
        let ack_give_up = (!sending).then(|| last_ack.max(*sending_ended.get_or_insert(now)) + cfg.drain);
        if ack_give_up.is_some_and(|at| now >= at) {
            res.unacked = outstanding as u64;
            break;
        }
        if blocked == Blocked::Batch {
            continue;
        }
        let stall_at = (blocked == Blocked::Credit).then(|| now + STALL);
        let wake_at = match blocked {
            Blocked::Rate(due) => Some(due),
            _ => stall_at,
        };
        // Wake at the end of the duration too, to stop sending then, and to give up on acks.
        let wake_at = [wake_at, deadline.filter(|_| sending), ack_give_up].into_iter().flatten().min();
        tokio::select! {
            r = conn.fill(), if outstanding > 0 => {
                r?;
                while let Some(f) = frame_at(&conn.rbuf) {
                    let body = &conn.rbuf[f.start..f.end];
                    if body.len() >= 2 {
                        let id = u16::from_be_bytes([body[0], body[1]]);
                        let slot = usize::from(id);
                        let done = match f.kind {
                            client::PUBACK => qos == 1,
                            client::PUBREC if qos == 2 && sent_at[slot] != 0 => {
                                released[slot] = true;
                                put_ack(&mut conn.wbuf, client::PUBREL, id);
                                false
                            }
                            client::PUBCOMP => qos == 2 && released[slot],
                            _ => false,
                        };
                        if done && sent_at[slot] != 0 {
                            res.ack_latency.record(now_ns().saturating_sub(sent_at[slot]));
                            res.acked_seqs.record(seq_of[slot]);
                            sent_at[slot] = 0;
                            if qos == 2 {
                                released[slot] = false;
                            }
                            outstanding -= 1;
                            res.acked += 1;
                            last_ack = Instant::now();
                        }
                    }
                    conn.rbuf.advance(f.end);
                }
            }
            _ = shared.wake[index].notified(), if blocked == Blocked::Credit => {}
            _ = sleep_until(wake_at.unwrap_or(now).into()), if wake_at.is_some() => {
                if stall_at.is_some_and(|s| Instant::now() >= s) {
                    forgiven = res.sent.saturating_sub(min_delivered());
                    res.stalls += 1;
                }
            }
            else => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
    Ok(res)
}

async fn subscriber(
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    index: usize,
    mut conn: Conn,
    mut phase: watch::Receiver<Phase>,
) -> std::io::Result<SubResult> {
    let publishers = cfg.publishers;
    let mut res = SubResult { tracks: vec![SeqTrack::default(); publishers], latency: Histogram::default() };
    let mut counts = vec![0u64; publishers];
    let mut touched: Vec<usize> = Vec::new();
    if index >= cfg.subscribers - cfg.stalled {
        // A stalled client: subscribed, then never reads its socket again (nor acknowledges).
        // The connection stays open until the run ends, then is dropped without DISCONNECT.
        while *phase.borrow_and_update() != Phase::Stop {
            if phase.changed().await.is_err() {
                break;
            }
        }
        return Ok(res);
    }
    // Rate limit of a slow subscriber (overload), counted from the first phase it applies in.
    let (mut slow_start, mut slow_done) = (None::<Instant>, 0u64);
    loop {
        let now_phase = *phase.borrow_and_update();
        if now_phase == Phase::Stop {
            break;
        }
        let slow = cfg.sub_rate > 0.0 && now_phase < Phase::Drain;
        let mut budget = u64::MAX;
        let mut next_token = None;
        if slow {
            let started = *slow_start.get_or_insert_with(Instant::now);
            let allowed = (started.elapsed().as_secs_f64() * cfg.sub_rate) as u64 + 1;
            budget = allowed.saturating_sub(slow_done);
            if budget == 0 {
                next_token = Some(started + Duration::from_secs_f64(slow_done as f64 / cfg.sub_rate));
            }
        }
        let mut batch = 0u64;
        let now = now_ns();
        while budget > 0 {
            let Some(f) = frame_at(&conn.rbuf) else { break };
            let body = &conn.rbuf[f.start..f.end];
            if f.kind & 0xF0 == client::PUBLISH {
                if let Some(p) = client::parse_publish(f.kind, body) {
                    match p.qos {
                        1 => put_ack(&mut conn.wbuf, client::PUBACK, p.packet_id),
                        2 => put_ack(&mut conn.wbuf, client::PUBREC, p.packet_id),
                        _ => {}
                    }
                    if let Some(stamp) = client::decode_stamp(p.payload) {
                        let publisher = stamp.publisher as usize;
                        if publisher < publishers {
                            res.tracks[publisher].record(stamp.seq);
                            res.latency.record(now.saturating_sub(stamp.sent_ns));
                            if counts[publisher] == 0 {
                                touched.push(publisher);
                            }
                            counts[publisher] += 1;
                        }
                    }
                    batch += 1;
                    if slow {
                        budget -= 1;
                        slow_done += 1;
                    }
                }
            } else if f.kind == client::PUBREL && body.len() >= 2 {
                put_ack(&mut conn.wbuf, client::PUBCOMP, u16::from_be_bytes([body[0], body[1]]));
            }
            conn.rbuf.advance(f.end);
        }
        if !conn.wbuf.is_empty() {
            conn.flush().await?;
        }
        if batch > 0 {
            for p in touched.drain(..) {
                shared.delivered[p][index].fetch_add(counts[p], Ordering::Release);
                counts[p] = 0;
                shared.wake[p].notify_one();
            }
            shared.total.fetch_add(batch, Ordering::Release);
            shared.last_ns.fetch_max(now_ns(), Ordering::Relaxed);
        }
        if slow && budget == 0 && next_token.is_none() {
            continue; // recompute the budget
        }
        tokio::select! {
            r = conn.fill(), if budget > 0 => r?,
            _ = sleep_until(next_token.unwrap_or_else(Instant::now).into()), if next_token.is_some() => {}
            r = phase.changed() => if r.is_err() { break },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.disconnect()).await;
    Ok(res)
}

/// Samples the broker's VmRSS every 50 ms until stopped; returns the highest reading.
fn rss_sampler(pid: Option<u32>, mut phase: watch::Receiver<Phase>) -> JoinHandle<Option<u64>> {
    tokio::spawn(async move {
        let pid = pid?;
        let mut peak = proc::status_kib(pid, "VmRSS");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                r = phase.changed() => if r.is_err() || *phase.borrow() == Phase::Stop { break },
            }
            peak = peak.max(proc::status_kib(pid, "VmRSS"));
        }
        peak.max(proc::status_kib(pid, "VmRSS"))
    })
}

async fn connect_all(
    cfg: &Config,
    ids: &[String],
    clean: bool,
    filters: Option<&[Vec<String>]>,
) -> Result<Vec<Conn>, String> {
    let handles: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let addr = if filters.is_some() { cfg.sub_addr } else { cfg.addr };
            let (id, qos) = (id.clone(), cfg.qos);
            let filters = filters.map(|f| f[i].clone());
            tokio::spawn(async move {
                let mut conn = Conn::connect(addr, &id, clean, 64 * 1024).await?;
                if let Some(filters) = filters {
                    conn.subscribe(&filters, qos).await?;
                }
                Ok::<_, std::io::Error>(conn)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(handles.len());
    for (h, id) in handles.into_iter().zip(ids) {
        match h.await {
            Ok(Ok(c)) => conns.push(c),
            Ok(Err(e)) => return Err(format!("{id}: {e}")),
            Err(e) => return Err(format!("{id}: {e}")),
        }
    }
    Ok(conns)
}

async fn run_messages(cfg: Arc<Config>, report: &mut Report) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let lay = layout(&cfg);
    let shared = Arc::new(Shared {
        delivered: (0..cfg.publishers)
            .map(|_| (0..cfg.subscribers).map(|_| AtomicU64::new(0)).collect())
            .collect(),
        wake: (0..cfg.publishers).map(|_| Notify::new()).collect(),
        total: AtomicU64::new(0),
        last_ns: AtomicU64::new(0),
    });
    let (phase_tx, phase_rx) = watch::channel(Phase::Ready);
    let phase_tx = Arc::new(phase_tx);
    let setup = async {
        let subs = connect_all(&cfg, &lay.sub_ids, lay.sub_clean, Some(lay.sub_filters.as_slice())).await?;
        let pubs = connect_all(&cfg, &lay.pub_ids, true, None).await?;
        Ok::<_, String>((subs, pubs))
    };
    let (subs, pubs) =
        tokio::time::timeout_at(deadline, setup).await.map_err(|_| "timed out connecting")??;
    let sub_tasks: Vec<_> = subs
        .into_iter()
        .enumerate()
        .map(|(i, conn)| tokio::spawn(subscriber(cfg.clone(), shared.clone(), i, conn, phase_rx.clone())))
        .collect();
    let pub_tasks: Vec<_> = pubs
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let (topic, audience) = (lay.pub_topics[i].clone(), lay.audience[i].clone());
            tokio::spawn(publisher(cfg.clone(), shared.clone(), i, conn, topic, audience, phase_rx.clone()))
        })
        .collect();

    let pid = cfg.broker_pid;
    report.rss_before_kib = pid.and_then(|p| proc::status_kib(p, "VmRSS"));
    let sampler = rss_sampler(pid, phase_rx.clone());
    let cpu_before = pid.and_then(proc::cpu_ticks);
    let started = Instant::now();
    let started_ns = now_ns();
    let _ = phase_tx.send(Phase::Go);
    // A slow subscriber drains at full speed once publishers stop sending (the end of the
    // duration), not only once they have every acknowledgement: a broker that holds PUBACKs back
    // until the subscriber catches up would otherwise wait on it at the slow rate.
    let drain_timer = cfg.duration.map(|d| {
        let phase_tx = phase_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            phase_tx.send_if_modified(|p| (*p < Phase::Drain).then(|| *p = Phase::Drain).is_some());
        })
    });

    let mut sent = vec![0u64; cfg.publishers];
    let mut acked_seqs = vec![SeqTrack::default(); cfg.publishers];
    for (i, task) in pub_tasks.into_iter().enumerate() {
        let abort = task.abort_handle();
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(Ok(r))) => {
                sent[i] = r.sent;
                report.sent += r.sent;
                report.messages += if cfg.qos == 0 { r.sent } else { r.acked };
                report.stalls += r.stalls;
                report.unacked += r.unacked;
                report.write_blocked += u64::from(r.write_blocked);
                report.ack_latency.merge(&r.ack_latency);
                acked_seqs[i] = r.acked_seqs;
            }
            Ok(Ok(Err(e))) => report.error = Some(format!("publisher {i}: {e}")),
            Ok(Err(e)) => report.error = Some(format!("publisher {i}: {e}")),
            Err(_) => {
                abort.abort();
                report.error = Some(format!("publisher {i}: timed out"));
            }
        }
    }
    report.publish_seconds = started.elapsed().as_secs_f64();
    if let Some(timer) = drain_timer {
        timer.abort();
    }
    phase_tx.send_if_modified(|p| (*p < Phase::Drain).then(|| *p = Phase::Drain).is_some());

    // Wait for every expected delivery (each reading subscriber has as many from each of its
    // publishers as were sent; a failed publisher's count is unknown and not waited for), or
    // until none has come for `drain`, or for `drain_cap` in all, or the timeout.
    let reading = |s: usize| s < cfg.subscribers - cfg.stalled;
    report.expected_deliveries = (0..cfg.publishers)
        .map(|p| sent[p] * lay.audience[p].iter().filter(|&&s| reading(s)).count() as u64)
        .sum();
    let all_delivered = || {
        lay.audience.iter().enumerate().all(|(p, subs)| {
            subs.iter().all(|&s| !reading(s) || shared.delivered[p][s].load(Ordering::Acquire) >= sent[p])
        })
    };
    let drain_started = Instant::now();
    let (mut last_total, mut last_change) = (u64::MAX, drain_started);
    loop {
        let total = shared.total.load(Ordering::Acquire);
        if all_delivered() || tokio::time::Instant::now() >= deadline {
            break;
        }
        if drain_started.elapsed() >= cfg.drain_cap {
            report.drain_capped = true;
            break;
        }
        if total != last_total {
            (last_total, last_change) = (total, Instant::now());
        } else if last_change.elapsed() >= cfg.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    report.drain_seconds = drain_started.elapsed().as_secs_f64();
    let cpu_after = pid.and_then(proc::cpu_ticks);
    let last_ns = shared.last_ns.load(Ordering::Relaxed);
    report.seconds = report.publish_seconds.max(last_ns.saturating_sub(started_ns) as f64 / 1e9);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        report.broker_cpu_s = Some(b.saturating_sub(a) as f64 / proc::ticks_per_sec() as f64);
    }
    report.rss_after_kib = pid.and_then(|p| proc::status_kib(p, "VmRSS"));
    report.rss_hwm_kib = pid.and_then(|p| proc::status_kib(p, "VmHWM"));
    let _ = phase_tx.send(Phase::Stop);
    report.rss_peak_kib = sampler.await.ok().flatten();

    let mut acked_not_delivered = 0;
    for (s, task) in sub_tasks.into_iter().enumerate() {
        let stop_by = tokio::time::Instant::now() + Duration::from_secs(5);
        match tokio::time::timeout_at(stop_by, task).await {
            Ok(Ok(Ok(_))) if !reading(s) => {}
            Ok(Ok(Ok(r))) => {
                report.latency.merge(&r.latency);
                for (p, audience) in lay.audience.iter().enumerate() {
                    let track = &r.tracks[p];
                    report.deliveries += track.distinct;
                    report.duplicates += track.duplicates;
                    report.reordered += track.reordered;
                    if audience.contains(&s) {
                        report.lost += sent[p].saturating_sub(track.distinct);
                        acked_not_delivered += acked_seqs[p].missing_from(track);
                    }
                }
            }
            Ok(Ok(Err(e))) => report.error = Some(format!("subscriber {s}: {e}")),
            Ok(Err(e)) => report.error = Some(format!("subscriber {s}: {e}")),
            Err(_) => report.error = Some(format!("subscriber {s}: did not stop")),
        }
    }
    if cfg.qos > 0 {
        report.acked_not_delivered = Some(acked_not_delivered);
    }
    if report.expected_deliveries > 0 {
        report.loss_pct = Some(report.lost as f64 * 100.0 / report.expected_deliveries as f64);
    }
    Ok(())
}

/// Opens `clients` connections (CONNECT/CONNACK each), measures the connect rate and the
/// broker's RSS growth per connection, holds them, then closes them.
async fn run_idle(cfg: &Config, report: &mut Report) {
    let pid = cfg.broker_pid;
    report.clients = Some(cfg.clients);
    report.rss_before_kib = pid.and_then(|p| proc::status_kib(p, "VmRSS"));
    let cpu_before = pid.and_then(proc::cpu_ticks);
    let deadline = tokio::time::Instant::now() + cfg.timeout;
    let started = Instant::now();
    let run = format!("{:x}", now_ns() ^ (u64::from(std::process::id()) << 32));
    let workers = cfg.connect_concurrency.min(cfg.clients.max(1));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (addr, clients, run) = (cfg.addr, cfg.clients, run.clone());
            tokio::spawn(async move {
                let (mut conns, mut first_error) = (Vec::new(), None);
                for i in (w..clients).step_by(workers) {
                    match Conn::connect(addr, &format!("tl-{run}-i{i}"), true, 64).await {
                        Ok(c) => conns.push(c),
                        Err(e) => {
                            first_error.get_or_insert(e.to_string());
                        }
                    }
                }
                (conns, first_error)
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(cfg.clients);
    for h in handles {
        let abort = h.abort_handle();
        match tokio::time::timeout_at(deadline, h).await {
            Ok(Ok((c, e))) => {
                conns.extend(c);
                if let Some(e) = e {
                    report.error.get_or_insert(format!("connect: {e}"));
                }
            }
            Ok(Err(e)) => {
                report.error.get_or_insert(format!("connect task: {e}"));
            }
            Err(_) => {
                abort.abort();
                report.error.get_or_insert("timed out connecting".into());
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    report.connected = Some(conns.len());
    report.connects_per_s = Some(if secs > 0.0 { conns.len() as f64 / secs } else { 0.0 });
    report.seconds = secs;
    report.publish_seconds = secs;
    // Let the broker finish its per-connection setup before reading its memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    report.rss_after_kib = pid.and_then(|p| proc::status_kib(p, "VmRSS"));
    report.rss_hwm_kib = pid.and_then(|p| proc::status_kib(p, "VmHWM"));
    if let (Some(a), Some(b)) = (cpu_before, pid.and_then(proc::cpu_ticks)) {
        report.broker_cpu_s = Some(b.saturating_sub(a) as f64 / proc::ticks_per_sec() as f64);
    }
    tokio::time::sleep(cfg.hold).await;
    drop(conns);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Config, String> {
        Config::parse(args.split_whitespace().map(String::from))
    }

    #[test]
    fn scenario_defaults() {
        let c = parse("--scenario fan-out").unwrap();
        assert_eq!((c.publishers, c.subscribers, c.qos, c.e2e_window), (1, 50, 0, 16));
        let c = parse("--scenario durable --publishers 16 --qos 0").unwrap();
        assert_eq!((c.publishers, c.subscribers, c.qos, c.e2e_window), (16, 1, 1, 0));
        let c = parse("--scenario latency").unwrap();
        assert_eq!((c.qos, c.rate), (1, 1000.0));
        let c = parse("--scenario pairs --publishers 3").unwrap();
        assert_eq!(c.subscribers, 3);
        assert!(parse("--scenario overload --qos 0").is_err());
        let c = parse("--scenario fan-in --subscribers 2 --stalled 1 --e2e-window 0").unwrap();
        assert_eq!((c.publishers, c.subscribers, c.stalled, c.e2e_window), (4, 2, 1, 0));
        assert!(parse("--scenario fan-in --subscribers 2 --stalled 2").is_err());
        assert!(parse("--scenario fan-out --stalled 50").is_err());
        assert!(parse("--scenario fan-in --stamp intended").is_err());
        let c = parse("--scenario latency --rate 20000 --stamp intended --bursts 0").unwrap();
        assert!(c.stamp_intended && c.rate == 20000.0 && c.bursts == 1);
        assert!(parse("--payload 8").is_err());
        assert!(parse("--bogus 1").is_err());
    }
}
