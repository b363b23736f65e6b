#![allow(unsafe_code)]
//! The request/response scenarios' server side: an AF_XDP socket that answers every IPv4
//! UDP/TCP frame by sending it back where it came from — MACs, addresses and ports swapped,
//! payload (and so the generator's stamp) untouched. Swapping keeps both checksums valid
//! (the one's-complement sums are order-independent), so nothing else is rewritten. It
//! stands for a DNS server that answers with a datagram of the query's size; the generator
//! (`gen --responses`) times the round trip.

use crate::xskio::{Port, pin};
use afgate_dataplane::xsk::XdpDesc;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct ReflectConfig {
    pub dev: String,
    pub duration: f64,
    pub core: Option<usize>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReflectReport {
    pub rx: u64,
    pub tx: u64,
    /// Not IPv4 UDP/TCP, or too short: dropped, not answered.
    pub ignored: u64,
    /// The tx ring was full.
    pub dropped: u64,
}

const FRAMES: u32 = 16384;
const RING: u32 = 4096;

/// Turns a request into its reply in place; false for frames that are not IPv4 UDP/TCP.
fn swap(f: &mut [u8]) -> bool {
    if f.len() < 14 + 20 + 4 || f[12..14] != [0x08, 0x00] {
        return false;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let l4 = 14 + ihl;
    if ihl < 20 || !matches!(f[23], 6 | 17) || f.len() < l4 + 4 {
        return false;
    }
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    for i in 0..4 {
        f.swap(26 + i, 30 + i);
    }
    for i in 0..2 {
        f.swap(l4 + i, l4 + 2 + i);
    }
    true
}

pub fn run(cfg: &ReflectConfig, stop: &AtomicBool, ready: impl FnOnce()) -> Result<ReflectReport> {
    pin(cfg.core);
    let mut port = Port::open(&cfg.dev, true, FRAMES, RING)?;
    let mut rx = vec![XdpDesc::default(); 64];
    let mut comp = vec![0u64; 256];
    let mut scratch = vec![0u64; 1024];
    let mut rep = ReflectReport::default();
    port.refill(&mut scratch);
    ready();
    let deadline = Instant::now() + Duration::from_secs_f64(cfg.duration);
    let mut idle = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let c = port.xsk.comp.consume(&mut comp);
        for &a in &comp[..c] {
            port.pool.free(a);
        }
        let n = port.xsk.rx.consume(&mut rx);
        if n == 0 {
            idle += 1;
            if idle & 63 == 0 && Instant::now() >= deadline {
                break;
            }
            if idle > 64 {
                port.refill(&mut scratch);
                port.kick_tx();
                port.wait_rx(10);
            }
            continue;
        }
        idle = 0;
        rep.rx += n as u64;
        let mut out = 0;
        for i in 0..n {
            let d = rx[i];
            // SAFETY: fresh off our rx ring: ours until it goes on the tx ring or back to
            // the pool.
            let ok = unsafe { port.frame(d.addr, d.len as usize) }.is_some_and(swap);
            if ok {
                rx[out] = d;
                out += 1;
            } else {
                rep.ignored += 1;
                port.pool.free(d.addr);
            }
        }
        let put = port.xsk.tx.produce(&rx[..out]);
        rep.tx += put as u64;
        for d in &rx[put..out] {
            rep.dropped += 1;
            port.pool.free(d.addr);
        }
        port.kick_tx();
        port.refill(&mut scratch);
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::swap;

    #[test]
    fn swap_reverses_the_path_and_keeps_checksums() {
        let spec = crate::packet::TrafficSpec {
            proto: crate::packet::Proto::Udp,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_ip: "10.0.1.2".parse().unwrap(),
            dst_ip: "10.96.0.10".parse().unwrap(),
            sport_base: 1024,
            sports: 100,
            dport: 53,
            flows: 1,
            frame_len: 64,
            vlan: None,
            vxlan: None,
        };
        let t = crate::packet::build(&spec);
        let mut f = t.bytes.clone();
        assert!(swap(&mut f));
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[26..30], &[10, 96, 0, 10]);
        assert_eq!(&f[30..34], &[10, 0, 1, 2]);
        assert_eq!(u16::from_be_bytes([f[34], f[35]]), 53);
        afgate_dataplane::pipeline::testing::assert_valid_l4(&f);
        let mut arp = t.bytes.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!swap(&mut arp));
    }
}
