//! Shared pieces of Tern's benchmarks live in `benches/benches/`.
