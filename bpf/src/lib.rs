//! afgate's BPF side: the XDP port-steering program, the in-kernel redirect
//! ceiling used by benchmarks, the tc 802.1Q access-port shim used by the lab,
//! and their loaders.
//!
//! The C sources live in `src/bpf/` (Katran layout: `consts.h`, `structs.h`,
//! `maps.h`, `parsing.h` plus one entry file per object); `build.rs` compiles
//! each `*.bpf.c` and generates a libbpf-rs skeleton for it.
//!
//! Lifetimes: every loader opens its skeleton, loads it, then keeps only
//! owned duplicates of the program fds ([`std::os::fd::OwnedFd`]) and map fds
//! ([`libbpf_rs::MapHandle`]) and lets the skeleton (and its borrowed
//! `OpenObject` storage) drop. The kernel keeps a program and the maps it
//! uses alive while any fd or attachment refers to them, so nothing is leaked
//! per loaded port and no self-referential struct is needed.
//!
//! `unsafe` in this crate is confined to `xdp.rs`, `prog.rs` and
//! `trafficgen.rs` (libbpf FFI)
//! and to the generated skeletons.

mod error;
mod prog;
pub mod redirect;
pub mod steer;
pub mod trafficgen;
pub mod vlan_shim;
mod xdp;

pub use error::Error;
pub use prog::TestRun;
pub use redirect::{DevmapRedirect, XdpPass};
pub use steer::{PassRule, PortSteering, SteerConfig, SteerProgram, SteerStat, SteerStats};
pub use trafficgen::TrafficGen;
pub use vlan_shim::VlanShim;
pub use xdp::{ModeRequest, XdpMode, detach_any, ifindex, xdp_attached};

/// Generated skeletons (libbpf-cargo); code not ours, lints relaxed.
#[allow(clippy::undocumented_unsafe_blocks, unused_imports, clippy::all)]
mod skel {
    pub mod steer {
        include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
    }
    pub mod redirect {
        include!(concat!(env!("OUT_DIR"), "/redirect.skel.rs"));
    }
    pub mod vlan_shim {
        include!(concat!(env!("OUT_DIR"), "/vlan_shim.skel.rs"));
    }
    pub mod trafficgen {
        include!(concat!(env!("OUT_DIR"), "/trafficgen.skel.rs"));
    }
}
