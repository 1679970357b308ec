//! Fuzz the proxy's decoders of untrusted bytes: startup packets, client frames and the bodies the
//! proxy reads, server frames. Any panic is a bug; errors are the expected answer to garbage.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dmf_proxy_protocol::decode_untrusted(data);
});
