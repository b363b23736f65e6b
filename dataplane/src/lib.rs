//! afgate's fast path.
//!
//! - [`wire`]: typed views over frame bytes (Ethernet, 802.1Q, ARP, IPv4, IPv6, ICMP, UDP,
//!   TCP, VXLAN) and checksums.
//! - [`frame`]: a frame buffer with headroom, so encapsulation grows in place.
//! - [`pipeline`]: the pure function `(frame, tables) -> Action`, one stage per file.
//! - [`tables`]: what the control thread publishes (ports, FIB, neighbours, ...).
//! - [`xsk`], [`worker`]: AF_XDP rings and the pinned poll-mode loops that drive the pipeline.
#![deny(unsafe_code)]

pub mod conntrack;
pub mod counters;
pub mod frame;
pub mod mem;
pub mod observe;
pub mod pipeline;
pub mod service;
pub mod sys;
pub mod tables;
pub mod wire;
pub mod worker;

pub mod xsk;

#[cfg(test)]
#[allow(unsafe_code)]
mod no_alloc;

#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod fuzz;
