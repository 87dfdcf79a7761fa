//! What the load generator measures: a log-linear latency histogram, per-publisher delivery
//! tracking (loss, duplicates, reordering), the broker's CPU time and memory from /proc, and
//! the report printed as one human line and one JSON line.

use std::fmt::Write as _;

/// Latency histogram over nanoseconds: exact below 128, then 64 buckets per power of two
/// (≤ 1.6 % relative error), fixed size, cheap to record and merge.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = (2 * SUB) as usize + (63 - SUB_BITS as usize) * SUB as usize;

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram { counts: vec![0; BUCKETS], total: 0 }
    }
}

fn bucket(v: u64) -> usize {
    if v < 2 * SUB {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let shift = exp - SUB_BITS;
    (2 * SUB) as usize + (exp - SUB_BITS - 1) as usize * SUB as usize + ((v >> shift) - SUB) as usize
}

fn bucket_value(i: usize) -> u64 {
    if i < (2 * SUB) as usize {
        return i as u64;
    }
    let k = i - (2 * SUB) as usize;
    let exp = (k / SUB as usize) as u32 + SUB_BITS + 1;
    let shift = exp - SUB_BITS;
    let lower = ((k % SUB as usize) as u64 + SUB) << shift;
    lower + (1u64 << shift) / 2
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.total += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1) in microseconds; None when empty.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(bucket_value(i) as f64 / 1000.0);
            }
        }
        None
    }
}

/// The sequence numbers one subscriber received from one publisher.
#[derive(Default, Clone)]
pub struct SeqTrack {
    seen: Vec<u64>,
    max: Option<u32>,
    pub distinct: u64,
    pub duplicates: u64,
    pub reordered: u64,
}

impl SeqTrack {
    /// Records `seq`; a repeat is a duplicate, one below the highest seen a reordering.
    pub fn record(&mut self, seq: u32) {
        let (word, bit) = (seq as usize / 64, 1u64 << (seq % 64));
        if word >= self.seen.len() {
            self.seen.resize((word + 1).next_power_of_two(), 0);
        }
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.distinct += 1;
        match self.max {
            Some(max) if seq < max => self.reordered += 1,
            _ => self.max = Some(seq),
        }
    }

    /// How many sequence numbers in `self` are missing from `other`.
    pub fn missing_from(&self, other: &SeqTrack) -> u64 {
        self.seen
            .iter()
            .enumerate()
            .map(|(i, w)| (w & !other.seen.get(i).copied().unwrap_or(0)).count_ones() as u64)
            .sum()
    }
}

/// Readings of a broker process from /proc.
pub mod proc {
    /// Clock ticks per second for /proc/PID/stat times (sysconf(_SC_CLK_TCK), usually 100).
    pub fn ticks_per_sec() -> u64 {
        // SAFETY: sysconf has no preconditions.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 {
            t as u64
        } else {
            100
        }
    }

    /// utime + stime of the whole process (fields 14 and 15 of /proc/PID/stat), in ticks.
    pub fn cpu_ticks(pid: u32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name, which is in parentheses and may contain spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `rest` starts at field 3 (state), so field N is at index N - 3.
        Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
    }

    /// A `Vm*:` line of /proc/PID/status in KiB, e.g. `status_kib(pid, "VmRSS")`.
    pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.strip_prefix(key).is_some_and(|r| r.starts_with(':')))?;
        line[key.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
    }
}

/// One run's results. `None` fields were not measured in this scenario.
#[derive(Default)]
pub struct Report {
    pub scenario: String,
    pub label: String,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub window: usize,
    /// 0 = open loop: publishers do not wait for deliveries, so loss is a measurement.
    pub e2e_window: usize,
    /// Subscribers that stopped reading (`--stalled`); deliveries and loss leave them out.
    pub stalled: usize,
    pub bursts: u64,
    pub burst_pause_s: Option<f64>,
    /// Messages the broker accepted: sent at QoS 0, acknowledged (PUBACK/PUBCOMP) at QoS 1/2.
    pub messages: u64,
    pub sent: u64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub seconds: f64,
    pub publish_seconds: f64,
    pub latency: Histogram,
    pub ack_latency: Histogram,
    pub lost: u64,
    /// `lost` as a share of `expected_deliveries`, in percent.
    pub loss_pct: Option<f64>,
    pub duplicates: u64,
    pub reordered: u64,
    /// QoS 1/2 messages whose acknowledgement never came (publishers gave up after `--drain`).
    pub unacked: u64,
    /// Publishers whose socket the broker stopped reading (write abandoned after `--drain`).
    pub write_blocked: u64,
    /// Seconds waited for deliveries after publishing, and whether `--drain-cap` cut it short.
    pub drain_seconds: f64,
    pub drain_capped: bool,
    pub acked_not_delivered: Option<u64>,
    pub stalls: u64,
    pub broker_cpu_s: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_hwm_kib: Option<u64>,
    pub clients: Option<usize>,
    pub connected: Option<usize>,
    pub connects_per_s: Option<f64>,
    pub offered_rate: Option<f64>,
    pub error: Option<String>,
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

impl Report {
    pub fn msgs_per_s(&self) -> f64 {
        rate(self.messages, self.publish_seconds)
    }

    pub fn deliveries_per_s(&self) -> f64 {
        rate(self.deliveries, self.seconds)
    }

    pub fn cpu_us_per_delivery(&self) -> Option<f64> {
        let cpu = self.broker_cpu_s?;
        (self.deliveries > 0).then(|| cpu * 1e6 / self.deliveries as f64)
    }

    /// Broker RSS growth per held connection, in bytes (idle scenario).
    pub fn rss_per_conn_bytes(&self) -> Option<f64> {
        let (before, after, n) = (self.rss_before_kib?, self.rss_after_kib?, self.connected?);
        (n > 0).then(|| (after as f64 - before as f64) * 1024.0 / n as f64)
    }

    /// Whether the delivery check failed: loss at QoS 1/2 in a closed loop (in an open loop loss
    /// is what is measured), or duplicates or reordering anywhere, or an error.
    /// Publishers did not wait for deliveries (`--e2e-window 0`).
    pub fn open_loop(&self) -> bool {
        self.e2e_window == 0 && self.scenario != "idle"
    }

    /// The broker's peak RSS: the larger of the sampled VmRSS peak and VmHWM.
    pub fn rss_max_kib(&self) -> Option<u64> {
        self.rss_peak_kib.max(self.rss_hwm_kib)
    }

    pub fn failed(&self) -> bool {
        let loss_counts = self.qos > 0 && !self.open_loop() && self.scenario != "idle";
        self.error.is_some() || self.duplicates > 0 || self.reordered > 0 || (loss_counts && self.lost > 0)
    }

    pub fn human(&self) -> String {
        let us = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        let mut s = format!(
            "{:<9} {:<12} q{} {:>4}B {:>3}→{:<3} msgs={:<8} {:>6.2}s {:>9.0} msg/s {:>9.0} del/s  p50/p99/p999 {}/{}/{} µs  lost={}{} dup={} reord={}",
            self.scenario,
            self.label,
            self.qos,
            self.payload,
            self.publishers,
            self.subscribers,
            self.messages,
            self.seconds,
            self.msgs_per_s(),
            self.deliveries_per_s(),
            us(self.latency.quantile_us(0.5)),
            us(self.latency.quantile_us(0.99)),
            us(self.latency.quantile_us(0.999)),
            self.lost,
            self.loss_pct.map_or(String::new(), |p| format!(" ({p:.2}%)")),
            self.duplicates,
            self.reordered,
        );
        if self.open_loop() {
            s.push_str("  open-loop");
        }
        if self.stalled > 0 {
            let _ = write!(s, "  stalled-subs={}", self.stalled);
        }
        if self.unacked > 0 {
            let _ = write!(s, "  unacked={}", self.unacked);
        }
        if self.write_blocked > 0 {
            let _ = write!(s, "  write-blocked-pubs={}", self.write_blocked);
        }
        if self.drain_capped {
            s.push_str("  drain-capped");
        }
        if let Some(c) = self.cpu_us_per_delivery() {
            let _ = write!(s, "  cpu={c:.2}µs/del");
        }
        if let Some(n) = self.acked_not_delivered {
            let _ = write!(s, "  acked-not-delivered={n}");
        }
        if let (Some(c), Some(r)) = (self.connected, self.connects_per_s) {
            let _ = write!(s, "  connected={c} ({r:.0}/s)");
        }
        if let Some(b) = self.rss_per_conn_bytes() {
            let _ = write!(s, "  rss/conn={b:.0}B");
        }
        if let Some(k) = self.rss_before_kib {
            let _ = write!(s, "  rss={k}");
            if let Some(a) = self.rss_after_kib {
                let _ = write!(s, "→{a}");
            }
            if let Some(p) = self.rss_max_kib() {
                let _ = write!(s, " peak={p}");
            }
            s.push_str(" KiB");
        }
        if let Some(e) = &self.error {
            let _ = write!(s, "  ERROR: {e}");
        }
        s
    }

    pub fn json(&self) -> String {
        let mut j = Json::default();
        j.str("scenario", &self.scenario);
        j.str("label", &self.label);
        j.int("qos", self.qos as u64);
        j.int("payload", self.payload as u64);
        j.int("publishers", self.publishers as u64);
        j.int("subscribers", self.subscribers as u64);
        j.int("window", self.window as u64);
        j.int("e2e_window", self.e2e_window as u64);
        j.raw("open_loop", if self.open_loop() { "true" } else { "false" });
        j.int("stalled", self.stalled as u64);
        j.int("bursts", self.bursts);
        j.num("burst_pause_s", self.burst_pause_s, 3);
        j.int("messages", self.messages);
        j.int("sent", self.sent);
        j.int("deliveries", self.deliveries);
        j.int("expected_deliveries", self.expected_deliveries);
        j.num("seconds", Some(self.seconds), 3);
        j.num("publish_seconds", Some(self.publish_seconds), 3);
        j.num("msgs_per_s", Some(self.msgs_per_s()), 0);
        j.num("deliveries_per_s", Some(self.deliveries_per_s()), 0);
        j.num("offered_rate", self.offered_rate, 0);
        for (key, q) in [("p50_us", 0.5), ("p99_us", 0.99), ("p999_us", 0.999)] {
            j.num(key, self.latency.quantile_us(q), 1);
        }
        for (key, q) in [("ack_p50_us", 0.5), ("ack_p99_us", 0.99), ("ack_p999_us", 0.999)] {
            j.num(key, self.ack_latency.quantile_us(q), 1);
        }
        j.int("lost", self.lost);
        j.num("loss_pct", self.loss_pct, 3);
        j.int("duplicates", self.duplicates);
        j.int("reordered", self.reordered);
        j.opt_int("acked_not_delivered", self.acked_not_delivered);
        j.int("stalls", self.stalls);
        j.int("unacked", self.unacked);
        j.int("write_blocked", self.write_blocked);
        j.num("drain_seconds", Some(self.drain_seconds), 3);
        j.raw("drain_capped", if self.drain_capped { "true" } else { "false" });
        j.num("broker_cpu_s", self.broker_cpu_s, 3);
        j.num("broker_cpu_us_per_delivery", self.cpu_us_per_delivery(), 3);
        j.opt_int("rss_before_kib", self.rss_before_kib);
        j.opt_int("rss_after_kib", self.rss_after_kib);
        j.opt_int("rss_peak_kib", self.rss_peak_kib);
        j.opt_int("rss_hwm_kib", self.rss_hwm_kib);
        j.opt_int("rss_max_kib", self.rss_max_kib());
        j.num("rss_per_conn_bytes", self.rss_per_conn_bytes(), 0);
        j.opt_int("clients", self.clients.map(|c| c as u64));
        j.opt_int("connected", self.connected.map(|c| c as u64));
        j.num("connects_per_s", self.connects_per_s, 0);
        match &self.error {
            Some(e) => j.str("error", e),
            None => j.raw("error", "null"),
        }
        j.finish()
    }
}

/// A flat JSON object writer (no dependency needed for one line of numbers and strings).
#[derive(Default)]
struct Json(String);

impl Json {
    fn raw(&mut self, key: &str, value: &str) {
        self.0.push(if self.0.is_empty() { '{' } else { ',' });
        let _ = write!(self.0, "\"{key}\":{value}");
    }

    fn str(&mut self, key: &str, value: &str) {
        let mut quoted = String::with_capacity(value.len() + 2);
        quoted.push('"');
        for c in value.chars() {
            match c {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(quoted, "\\u{:04x}", c as u32);
                }
                c => quoted.push(c),
            }
        }
        quoted.push('"');
        self.raw(key, &quoted);
    }

    fn int(&mut self, key: &str, value: u64) {
        self.raw(key, &value.to_string());
    }

    fn opt_int(&mut self, key: &str, value: Option<u64>) {
        self.raw(key, &value.map_or("null".into(), |v| v.to_string()));
    }

    fn num(&mut self, key: &str, value: Option<f64>, decimals: usize) {
        match value {
            Some(v) if v.is_finite() => self.raw(key, &format!("{v:.decimals$}")),
            _ => self.raw(key, "null"),
        }
    }

    fn finish(mut self) -> String {
        self.0.push('}');
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=100_000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile_us(0.5).unwrap();
        let p99 = h.quantile_us(0.99).unwrap();
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.02, "{p50}");
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.02, "{p99}");
        for v in [0u64, 1, 127, 128, 129, 255, 256, 1 << 40, u64::MAX] {
            let b = bucket(v);
            assert!(b < BUCKETS);
            let back = bucket_value(b);
            assert!(back.abs_diff(v) as f64 <= v as f64 / 60.0 + 1.0, "{v} {back}");
        }
    }

    #[test]
    fn seq_track_counts() {
        let mut t = SeqTrack::default();
        for s in [0, 1, 3, 2, 3, 4, 200] {
            t.record(s);
        }
        assert_eq!((t.distinct, t.duplicates, t.reordered), (6, 1, 1));
        let mut acked = SeqTrack::default();
        for s in 0..6 {
            acked.record(s);
        }
        assert_eq!(acked.missing_from(&t), 1); // 5 was acknowledged but never delivered
    }

    #[test]
    fn proc_readings_of_self() {
        let pid = std::process::id();
        assert!(proc::cpu_ticks(pid).is_some());
        assert!(proc::status_kib(pid, "VmRSS").unwrap() > 0);
        assert!(proc::ticks_per_sec() > 0);
    }
}
