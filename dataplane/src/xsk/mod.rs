//! AF_XDP I/O. Sockets and UMEM are created and bound through xsk-rs (which drives libxdp:
//! UMEM registration, XDP_SHARED_UMEM across devices, per-socket fill/completion rings).
//! The rings themselves are mapped a second time from the socket descriptor and driven by
//! [`ring`]'s cursors, because the fast path needs what xsk-rs's `FrameDesc` keeps private:
//! the descriptor address moves when encapsulation grows a frame into its headroom, and
//! batches are peeked and released with one atomic each (STYLE §5).
//!
//! This module and the BPF map FFI are the only places with `unsafe`.
#![allow(unsafe_code)]

pub mod ring;
pub mod socket;
pub mod umem;

pub use ring::{ConsRing, ProdRing, XdpDesc};
pub use socket::{BindMode, Xsk, XskError};
pub use umem::{FramePool, Umem, UmemLayout};
