//! The bounded fuzz runs of the test suite for the control side: the configuration parser
//! and the API request decoder on their seeds and on 20 000 deterministic mutations each.
//! Long, coverage-guided runs: `fuzz/` (docs/reliability.md).

use afgate::fuzz::{SEED_CONFIG, api_request, api_seeds, config};
use afgate_dataplane::fuzz::Mutator;

const CASES: usize = 20_000;

#[test]
fn config_parser_survives_mutated_text() {
    assert!(
        afgate::config::Config::parse(SEED_CONFIG, std::path::Path::new("seed.yaml")).is_ok(),
        "the seed configuration itself must be valid"
    );
    // The whole document weighs as much as all the sections together.
    let mut corpus = vec![SEED_CONFIG.as_bytes().to_vec(); SEED_CONFIG.split("\n\n").count()];
    // Each top-level section on its own too: small documents reach the validator's
    // "missing" paths, the whole one its cross-references.
    for section in SEED_CONFIG.split("\n\n") {
        corpus.push(section.as_bytes().to_vec());
    }
    let mut m = Mutator::new(0x5eed_c0f1_6000_0001);
    let mut input = Vec::new();
    for s in &corpus {
        config(s);
    }
    let mut valid = 0;
    for _ in 0..CASES {
        m.mutate(&corpus, &mut input);
        valid += usize::from(config(&input));
    }
    eprintln!("config: {CASES} mutated documents, {valid} valid");
    // Both outcomes must be common, or the mutations miss the validator or the parser.
    assert!(valid > 100 && valid < CASES / 2, "{valid} valid");
}

#[test]
fn api_decoder_survives_mutated_requests() {
    let corpus: Vec<Vec<u8>> = api_seeds().into_iter().map(String::into_bytes).collect();
    let mut m = Mutator::new(0x5eed_0a91_0000_0001);
    let mut input = Vec::new();
    for s in &corpus {
        assert!(
            api_request(s),
            "seed {} does not decode",
            String::from_utf8_lossy(s)
        );
    }
    let mut decoded = 0;
    for _ in 0..CASES {
        m.mutate(&corpus, &mut input);
        decoded += usize::from(api_request(&input));
    }
    eprintln!("api: {CASES} mutated requests, {decoded} decoded");
    // Most byte mutations break the JSON; what decodes is what reaches the typed fields.
    assert!(
        decoded > CASES / 100 && decoded < CASES - CASES / 100,
        "{decoded} decoded"
    );
}
