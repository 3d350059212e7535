#![no_main]
//! A datagram from anyone on the network reaching a node's mesh port: the size check, sender
//! identification (handshake initiation or receiver index) and WireGuard decapsulation.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    veil_mesh::fuzz_datagram(data);
});
