//! One frame per input through the fully configured lab node; invariants in
//! `afgate_dataplane::fuzz::PipelineHarness::run`. State (neighbours, conntrack) carries over
//! between inputs, as in a worker.
#![no_main]

use afgate_dataplane::fuzz::PipelineHarness;
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;

thread_local! {
    static HARNESS: RefCell<PipelineHarness> = RefCell::new(PipelineHarness::new());
}

fuzz_target!(|data: &[u8]| {
    HARNESS.with(|h| h.borrow_mut().run(data));
});
