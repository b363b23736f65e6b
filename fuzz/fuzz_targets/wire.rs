//! Every wire view's `new_checked` and getters at every offset of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| afgate_dataplane::fuzz::wire(data));
