//! The bounded fuzz runs of the test suite: each harness of `afgate_dataplane::fuzz` on its
//! seed corpus and then on 20 000 deterministic mutations of it (a few seconds in all). The
//! long, coverage-guided runs are libFuzzer's, in `fuzz/` (docs/reliability.md).

use afgate_dataplane::counters::DropReason;
use afgate_dataplane::fuzz::{Mutator, PipelineHarness, seeds, wire};

const CASES: usize = 20_000;

/// Mutations from the seed corpus plus the frames stored under fuzz/corpus/ (if the
/// generator has been run), so what a long run found is replayed here too.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut c = seeds();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    if let Ok(rd) = std::fs::read_dir(&dir) {
        let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            if let Ok(b) = std::fs::read(&f) {
                c.push(b);
            }
        }
    }
    c
}

#[test]
fn pipeline_survives_mutated_frames() {
    let corpus = corpus("pipeline");
    let mut h = PipelineHarness::new();
    for s in &corpus {
        h.run(s);
    }
    let mut m = Mutator::new(0x5eed_af6a_7e00_0001);
    let mut input = Vec::new();
    for _ in 0..CASES {
        m.mutate(&corpus, &mut input);
        h.run(&input);
    }
    let named: Vec<_> = DropReason::ALL
        .iter()
        .filter(|r| h.drops[**r as usize] > 0)
        .map(|r| format!("{}={}", r.name(), h.drops[*r as usize]))
        .collect();
    eprintln!(
        "pipeline: {} inputs, forwarded {}, drops {}",
        corpus.len() + CASES,
        h.forwarded,
        named.join(" ")
    );
    // The mutations must reach past the first checks, or this run proves little.
    assert!(h.forwarded > 1000, "only {} frames forwarded", h.forwarded);
    assert!(
        named.len() >= 8,
        "only {} drop reasons reached",
        named.len()
    );
}

#[test]
fn wire_parsers_survive_mutated_bytes() {
    let corpus = corpus("wire");
    let mut m = Mutator::new(0x5eed_af6a_7e00_0002);
    let mut input = Vec::new();
    for s in &corpus {
        wire(s);
    }
    for _ in 0..CASES {
        m.mutate(&corpus, &mut input);
        wire(&input);
    }
}
