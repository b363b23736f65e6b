//! Writes the seed corpora of the libFuzzer targets in `fuzz/` (`fuzz/corpus/<target>/seed-*`):
//! real frames for every path of the lab node (built with etherparse), the documented
//! configuration and its sections, and a request line of every API operation.
//!
//! `cargo run -p afgate --example fuzz_seeds [DIR]` (default: fuzz/corpus next to the
//! workspace root).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let root = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus"));
    let frames = afgate_dataplane::fuzz::seeds();
    let config = afgate::fuzz::SEED_CONFIG;
    let mut configs = vec![config.as_bytes().to_vec()];
    configs.extend(config.split("\n\n").map(|s| s.as_bytes().to_vec()));
    let api: Vec<Vec<u8>> = afgate::fuzz::api_seeds()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    // The wire target reads raw frames: the pipeline seeds without their 2-byte prefix.
    let wire: Vec<Vec<u8>> = frames.iter().map(|f| f[2..].to_vec()).collect();
    for (target, seeds) in [
        ("pipeline", &frames),
        ("wire", &wire),
        ("config", &configs),
        ("api", &api),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir)?;
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:03}")), s)?;
        }
        println!("{}: {} seeds", dir.display(), seeds.len());
    }
    Ok(())
}
