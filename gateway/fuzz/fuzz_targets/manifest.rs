//! Manifest text through parsing, validation and translation.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cedille_gateway::fuzzing::manifest(data));
