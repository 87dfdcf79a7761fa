//! Tern's benchmark tooling: the `tern-load` load generator (its MQTT client path, its
//! measurements and its scenarios live in these modules) and, in `benches/`, the criterion
//! micro-benchmarks.

pub mod client;
pub mod scenario;
pub mod stats;
