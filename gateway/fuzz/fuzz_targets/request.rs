//! A client connection's bytes through the gateway's HTTP/1.1 or HTTP/2 server and handler.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cedille_gateway::fuzzing::request(data);
});
