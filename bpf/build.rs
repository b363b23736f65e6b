//! Compiles every `src/bpf/*.bpf.c` into a BPF object and generates its
//! libbpf-rs skeleton as `$OUT_DIR/<name>.skel.rs` (included by `src/lib.rs`).
//!
//! No vmlinux.h: programs use the uapi headers (`<linux/bpf.h>`, ...) from
//! linux-libc-dev plus libbpf's own `<bpf/bpf_helpers.h>` and
//! `<bpf/bpf_endian.h>`, which libbpf-cargo extracts from libbpf-sys and adds
//! to the include path.

use std::env;
use std::fs;
use std::path::PathBuf;

use libbpf_cargo::SkeletonBuilder;

const BPF_DIR: &str = "src/bpf";

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR set by cargo"));
    println!("cargo:rerun-if-changed={BPF_DIR}");

    let mut sources: Vec<PathBuf> = fs::read_dir(BPF_DIR)
        .expect("read src/bpf")
        .map(|e| e.expect("dir entry").path())
        .collect();
    sources.sort();
    for path in &sources {
        // Headers are inputs too: any change rebuilds every object.
        println!("cargo:rerun-if-changed={}", path.display());
    }

    for src in sources
        .iter()
        .filter(|p| p.to_string_lossy().ends_with(".bpf.c"))
    {
        let file = src.file_name().expect("file name").to_string_lossy();
        let stem = file.trim_end_matches(".bpf.c");
        let skel = out.join(format!("{stem}.skel.rs"));
        SkeletonBuilder::new()
            .source(src)
            .obj(out.join(format!("{stem}.bpf.o")))
            .clang_args([
                "-I/usr/include/x86_64-linux-gnu",
                "-Isrc/bpf",
                "-Wall",
                "-Werror",
                // The Katran idiom `if (hdr + 1 > data_end)` compares a typed
                // header pointer with `void *data_end`.
                "-Wno-compare-distinct-pointer-types",
                "-O2",
                "-g",
            ])
            .build_and_generate(&skel)
            .unwrap_or_else(|e| panic!("building {}: {e:#}", src.display()));
    }
}
