//! MQTT 5: arbitrary bytes after a valid CONNECT (or as the whole stream) through
//! `Codec::decode`, whole and in pieces, then every decoded packet re-encoded (see
//! `tern_fuzz::fuzz_codec` for the input layout and the checks).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tern_fuzz::fuzz_codec(true, data));
