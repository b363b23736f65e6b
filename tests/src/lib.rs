//! afgate's lab: network namespaces and veth pairs with real kernel peers on the far side.
//!
//! Tests, benches and the demo build their topology here instead of touching the host:
//! every namespace is created with a unique name and deleted by its `Drop` (which also
//! destroys its veths and kills whatever still runs inside it), so parallel test threads and
//! panicking tests leave nothing behind. Every process started here is bounded in time: the
//! long-running ones (tcpdump, peers, afgate) by a deadline of their own *and* by the guard that
//! owns them.
//!
//! ```text
//!   Lab::node_lab():
//!
//!   pod  [eth0 10.20.9.60/32, mtu 1450] ──── [pod60] ┐
//!   pod2 [eth0 10.20.9.41/32, mtu 1450] ──── [pod41] ├ node (afgate runs here; the kernel
//!                                                     │       forwards the same traffic when
//!   ext  [eth0 10.186.200.10/24] ─┐                   │       it does not: fail-open)
//!                                 └ [eth1 .200.254] gw [eth0 .153.254] ──── [biz .153.103/24] ┘
//! ```
//!
//! The module split: [`netns`] (one namespace), [`lab`] (topology builder and `node_lab`),
//! [`capture`] (tcpdump on a far-side device), [`process`] (bounded child processes, the afgate
//! process), [`peer`] (kernel TCP/UDP peers via the `afgate-peer` binary), [`ping`].

pub mod args;
pub mod capture;
pub mod lab;
pub mod mem_lab;
pub mod netns;
pub mod overlay_lab;
pub mod peer;
pub mod ping;
pub mod process;
pub mod rel_lab;
pub mod seeds_lab;
pub mod svc_lab;
mod util;

pub use capture::Capture;
pub use lab::{End, Endpoint, Lab, LabBuilder, NodeAddrs, NodeLab, NodePort, VethSpec};
pub use netns::Netns;
pub use peer::{ConnsResult, TcpClientResult, UdpClientResult, peer_bin};
pub use ping::{PingResult, ping};
pub use process::{Afgate, Proc, afgate_bin};
pub use util::{Mac, TempDir};
