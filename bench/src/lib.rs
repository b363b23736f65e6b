//! afgate's benchmarks: an AF_XDP traffic generator and sink built on afgate's own `xsk`
//! layer, the minimal AF_XDP forwarder reference, the scenario runner that compares afgate
//! with the kernel and the XDP ceiling in the same run, and the report writer.
//!
//! - [`packet`]: frame templates and the per-packet stamp (flow, sequence, timestamp).
//! - [`generator`], [`sink`]: the two ends of every measurement (`afgate-bench gen|sink`);
//!   [`xdpgen`]: the faster in-kernel generator engine (`gen --engine xdp`).
//! - [`reflect`]: the server side of request/response trials (`afgate-bench reflect`).
//! - [`fwd`]: `afgate-xskfwd`, rx→tx with a MAC rewrite and nothing else.
//! - [`topo`]: the gen — DUT — sink lab; [`scenarios`]: what is measured; [`report`].
//! - [`micro`]: per-stage ns/packet and (under callgrind) instructions/packet.
#![deny(unsafe_code)]

pub mod fwd;
pub mod generator;
pub mod micro;
pub mod packet;
pub mod reflect;
pub mod report;
pub mod runner;
pub mod scenarios;
pub mod sink;
pub mod topo;
pub mod xdpgen;
pub mod xskio;
