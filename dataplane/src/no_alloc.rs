//! Proof that the pipeline allocates nothing per packet: a counting global allocator for the
//! unit-test binary, counting per thread so parallel tests don't disturb each other, and a
//! test that pushes every kind of frame the pipeline handles through it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; the thread-local counter is
// const-initialised, so touching it never allocates (no recursion).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by the current thread so far.
pub fn allocations() -> u64 {
    ALLOCS.with(|c| c.get())
}

#[cfg(test)]
mod tests {
    use super::allocations;
    use crate::frame::Frame;
    use crate::pipeline::testing::*;
    use crate::pipeline::{Ctx, RxMeta, process};

    #[test]
    fn pipeline_allocates_nothing_per_packet() {
        let lab = Lab::new();
        lab.shared.neigh.learn(POD41_IP, POD41_MAC, POD41, 0);
        let frames: Vec<(crate::tables::PortId, Vec<u8>)> = vec![
            (
                POD60,
                udp_frame(
                    POD60_MAC,
                    lab.mac(POD60),
                    POD60_IP,
                    EXT_IP,
                    64,
                    1000,
                    53,
                    b"query",
                ),
            ),
            (
                BIZ,
                udp_frame(
                    GW_MAC,
                    lab.mac(BIZ),
                    EXT_IP,
                    POD41_IP,
                    30,
                    53,
                    1000,
                    b"answer",
                ),
            ),
            (
                BIZ,
                udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 1, 53, 1000, b"ttl"),
            ),
            (
                BIZ,
                icmp_echo_frame(GW_MAC, lab.mac(BIZ), GW_IP, BIZ_IP, 64, 1, 1, b"ping"),
            ),
            (BIZ, vec![0u8; 10]),
        ];
        let mut buf = vec![0u8; 4096];
        let ctx = Ctx {
            tables: &lab.tables,
            shared: &lab.shared,
            counters: &lab.counters,
            now_s: 1,
            now_ns: 1,
            trace: None,
            local: &lab.local,
        };
        // Warm up once (lazy statics, first-touch paths), then count.
        let run = |buf: &mut Vec<u8>| {
            for (port, f) in &frames {
                buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
                let mut frame = Frame::new(buf, HEADROOM, f.len());
                std::hint::black_box(process(
                    &mut frame,
                    &RxMeta {
                        port: *port,
                        vlan: None,
                    },
                    &ctx,
                ));
            }
        };
        run(&mut buf);
        let before = allocations();
        for _ in 0..10_000 {
            run(&mut buf);
        }
        assert_eq!(
            allocations() - before,
            0,
            "the pipeline allocated on the packet path"
        );
    }

    /// Every stage that exists: VLAN pop and push, VXLAN decap and encap, bond ingress and
    /// member choice, service DNAT (new flows and tracked ones), un-DNAT of replies,
    /// MASQUERADE, session affinity, ICMP errors, ARP. New flows get distinct source ports
    /// (prebuilt), so the conntrack insert path runs on every one of them.
    #[test]
    fn every_stage_allocates_nothing_per_packet() {
        use crate::fuzz::{DNS_VIP, NODE_PORT, VIP, full_lab, seed_frames, tagged};
        let lab = full_lab();
        let m = |p| lab.mac(p);
        let mut frames = seed_frames();
        // New flows: TCP to the VIP and UDP to the DNS VIP (affinity), from a pod and from
        // the underlay pod on VLAN 1155 (masquerade), and NodePort from outside.
        for i in 0..40u16 {
            let sport = 20000 + i;
            frames.push((
                POD60,
                udp_frame(POD60_MAC, m(POD60), POD60_IP, DNS_VIP, 64, sport, 53, b"q"),
            ));
            let upod = udp_frame(
                UPOD_MAC,
                m(TRUNK_1155),
                UPOD_IP,
                DNS_VIP,
                64,
                sport,
                53,
                b"q",
            );
            frames.push((TRUNK, tagged(&upod, 0x8100, 1155)));
            let b = etherparse::PacketBuilder::ethernet2(POD60_MAC, m(POD60))
                .ipv4(POD60_IP.octets(), VIP.octets(), 64)
                .tcp(sport, 80, 1, 64240)
                .syn();
            let mut syn = Vec::new();
            b.write(&mut syn, b"").unwrap();
            frames.push((POD60, syn));
            let b = etherparse::PacketBuilder::ethernet2(GW_MAC, m(BIZ))
                .ipv4(EXT_IP.octets(), BIZ_IP.octets(), 64)
                .tcp(sport, NODE_PORT, 1, 64240)
                .syn();
            let mut syn = Vec::new();
            b.write(&mut syn, b"").unwrap();
            frames.push((BIZ, syn));
        }
        let mut buf = vec![0u8; 4096];
        let mut now = 1_000_000_000u64;
        let mut run = |buf: &mut Vec<u8>, frames: &[(crate::tables::PortId, Vec<u8>)]| {
            for (port, f) in frames {
                now += 1000;
                let ctx = lab.ctx_at(now);
                buf[HEADROOM..HEADROOM + f.len()].copy_from_slice(f);
                let mut frame = Frame::new(buf, HEADROOM, f.len());
                std::hint::black_box(process(
                    &mut frame,
                    &RxMeta {
                        port: *port,
                        vlan: None,
                    },
                    &ctx,
                ));
            }
        };
        // Warm-up: the seeds only (first-touch paths); the new flows are counted.
        let seeds = seed_frames();
        run(&mut buf, &seeds);
        let before = allocations();
        run(&mut buf, &frames);
        for _ in 0..200 {
            run(&mut buf, &seeds);
        }
        let allocated = allocations() - before;
        for e in [
            crate::counters::Event::VlanPop,
            crate::counters::Event::VlanPush,
            crate::counters::Event::VxlanDecap,
            crate::counters::Event::VxlanEncap,
            crate::counters::Event::ServiceNewFlow,
            crate::counters::Event::SnatNewFlow,
        ] {
            assert!(
                lab.event(e) > 0,
                "{e} never ran: the test does not cover it"
            );
        }
        assert_eq!(allocated, 0, "a stage allocated on the packet path");
    }
}
