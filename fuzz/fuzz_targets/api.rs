//! The control API's request decoder on arbitrary lines: a request or an error message,
//! never a panic; a decoded request survives its own wire encoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    afgate::fuzz::api_request(data);
});
