//! The configuration parser and validator on arbitrary text: `Ok` or errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    afgate::fuzz::config(data);
});
