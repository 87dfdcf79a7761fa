//! `tern-load`: Tern's MQTT 3.1.1 load generator.
//!
//! Scenarios: `fan-in` (P publishers → 1 wildcard subscriber), `fan-out` (1 → K), `pairs` (N
//! publisher/subscriber pairs on distinct topics), `idle` (C clients held open: connect rate,
//! broker RSS per connection), `latency` (a fixed offered rate, publish→receive percentiles),
//! `overload` (open-loop QoS 1 publishers outrun a slow subscriber: acknowledged but never
//! delivered, peak broker RSS) and `durable` (the durability benchmark: QoS 1 into one
//! persistent subscriber). Every delivery is checked against per-publisher sequence numbers in
//! the payload: loss, duplicates and reordering are counted. With `--broker-pid`, the broker's
//! CPU time per delivered message and its RSS are read from /proc.
//!
//! `--e2e-window 0` runs any message scenario open loop (publishers do not wait for
//! deliveries), with `--bursts`/`--burst-pause` for bursts, `--rate` with `--stamp intended`
//! for a fixed offered rate, and `--stalled K` for subscribers that stop reading.
//!
//! Prints one human line and one JSON line per run; exits 1 when the delivery check fails
//! (except loss in an open loop, which is what it measures) or the run errs or times out.
//! Loopback only; every loop is bounded by its count, `--duration` and `--timeout`.
//! `tern-load --help` lists the options.

use tern_benches::client::raise_fd_limit;
use tern_benches::scenario::{run, Config};

fn main() {
    let cfg = match Config::parse(std::env::args().skip(1)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("tern-load: {e}");
            std::process::exit(2);
        }
    };
    let fds = raise_fd_limit();
    if cfg.kind == tern_benches::scenario::Kind::Idle && (fds as usize) < cfg.clients + 64 {
        eprintln!("tern-load: warning: open-file limit {fds} is below --clients {}", cfg.clients);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.threads)
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("tern-load: runtime: {e}");
            std::process::exit(2);
        });
    let report = runtime.block_on(run(cfg));
    println!("{}", report.human());
    println!("{}", report.json());
    // Idle connections and stuck tasks are not waited for.
    runtime.shutdown_background();
    if report.failed() {
        std::process::exit(1);
    }
}
