//! The "minimal AF_XDP forwarder" reference (issue 2): frames from one port's rx ring go to
//! the other port's tx ring with the MACs rewritten, and nothing else — no parsing, no
//! tables, no TTL. It uses the same `xsk` layer, UMEM sharing and steering program as afgate,
//! so afgate's rate over this one's is what the pipeline costs.
#![allow(unsafe_code)]

use afgate_bpf::{ModeRequest, PortSteering, SteerConfig};
use afgate_dataplane::xsk::socket::RingSizes;
use afgate_dataplane::xsk::{BindMode, Umem, UmemLayout, XdpDesc, Xsk};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct FwdConfig {
    pub in_dev: String,
    pub out_dev: String,
    /// Destination MAC written into every frame (the sink's).
    pub dst_mac: [u8; 6],
    pub duration: f64,
    pub busy: bool,
    pub core: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FwdReport {
    pub rx: u64,
    pub tx: u64,
    pub dropped: u64,
}

pub fn run(cfg: &FwdConfig, stop: &AtomicBool, ready: impl FnOnce()) -> Result<FwdReport> {
    crate::xskio::pin(cfg.core);
    let src_mac = afgate_dataplane::sys::device_mac(&cfg.out_dev)
        .with_context(|| format!("MAC of {}", cfg.out_dev))?;
    let layout = UmemLayout::default();
    let (umem, mut pool) = Umem::new(layout)?;
    let steer = PortSteering::attach(
        &cfg.in_dev,
        &SteerConfig {
            own_mac: [0; 6],
            only_own_mac: false,
            passthru: vec![],
        },
        ModeRequest::Auto,
    )?;
    let rings = RingSizes { rx: 2048, tx: 2048 };
    let mut rx_sock = Xsk::new(&umem, &cfg.in_dev, 0, rings, BindMode::Auto)?;
    let mut tx_sock = Xsk::new(&umem, &cfg.out_dev, 0, rings, BindMode::Auto)?;
    steer.register_xsk(0, rx_sock.fd())?;

    let mut descs = [XdpDesc::default(); 64];
    let mut addrs = [0u64; 256];
    let mut rep = FwdReport::default();
    let refill = |sock: &mut Xsk, pool: &mut afgate_dataplane::xsk::FramePool, buf: &mut [u64]| {
        let want = (sock.fill.free(buf.len() as u32) as usize).min(buf.len());
        let got = pool.alloc_into(&mut buf[..want]);
        let put = sock.fill.produce(&buf[..got]);
        for &a in &buf[put..got] {
            pool.free(a);
        }
        if sock.fill.needs_wakeup() {
            sock.kick_rx();
        }
    };
    refill(&mut rx_sock, &mut pool, &mut addrs);
    ready();
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.duration);
    let mut idle = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let n = rx_sock.rx.consume(&mut descs);
        let c = tx_sock.comp.consume(&mut addrs);
        for &a in &addrs[..c] {
            pool.free(a);
        }
        if n == 0 && c == 0 {
            idle += 1;
            if idle & 1023 == 0 && Instant::now() >= deadline {
                break;
            }
            if !cfg.busy && idle > 256 {
                refill(&mut rx_sock, &mut pool, &mut addrs);
                let mut fd = libc::pollfd {
                    fd: rx_sock.fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one initialised pollfd on our stack.
                unsafe { libc::poll(&mut fd, 1, 10) };
            }
            continue;
        }
        idle = 0;
        rep.rx += n as u64;
        for d in &descs[..n] {
            let chunk = umem.chunk_of(d.addr);
            // SAFETY: fresh off our rx ring: ours until it goes on the tx ring.
            if let Some(buf) = unsafe { umem.chunk_mut(d.addr) } {
                let off = (d.addr - chunk) as usize;
                if let Some(eth) = buf.get_mut(off..off + 12) {
                    eth[..6].copy_from_slice(&cfg.dst_mac);
                    eth[6..12].copy_from_slice(&src_mac);
                }
            }
        }
        let put = tx_sock.tx.produce(&descs[..n]);
        rep.tx += put as u64;
        for d in &descs[put..n] {
            rep.dropped += 1;
            pool.free(d.addr);
        }
        for _ in 0..8 {
            if !tx_sock.tx.needs_wakeup() || tx_sock.tx.outstanding() == 0 {
                break;
            }
            tx_sock.kick_tx();
        }
        refill(&mut rx_sock, &mut pool, &mut addrs);
    }
    drop(rx_sock);
    drop(tx_sock);
    drop(steer);
    Ok(rep)
}
