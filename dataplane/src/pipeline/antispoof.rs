//! Source address validation on pod ports (issue #7.9): a pod may only send with its own
//! addresses, so it cannot impersonate another pod towards a service, a peer, or afgate's
//! own neighbour cache. Calico and Cilium do the same per workload interface (Calico's
//! `cali-from-wl-dispatch` RPF check, Cilium's source identity check).
//!
//! Off unless configured, per port: each validated port has a short list of allowed source
//! prefixes (by default the pod's own routes, i.e. its /32s). IPv4 packets whose source is
//! outside the list are dropped as [`DropReason::Spoofed`]. ARP is checked too, by its sender
//! protocol address, because afgate learns neighbours from every ARP it sees: a spoofed ARP
//! would redirect another pod's traffic. The unspecified sender (`0.0.0.0`, an RFC 5227
//! probe) is allowed; it claims nothing.
//!
//! Per packet this is one indexed load and a scan of a few prefixes: no hashing, no
//! allocation.

use super::{Ctx, RxMeta};
use crate::counters::DropReason;
use crate::frame::Frame;
use crate::tables::PortId;
use crate::wire::{ArpPacket, Ipv4Cidr, ethernet};
use core::net::Ipv4Addr;
use std::sync::Arc;

/// One allowed prefix as (network bits, mask): the check is one AND and one compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Prefix {
    net: u32,
    mask: u32,
}

/// Allowed source prefixes per port, indexed by [`PortId`]. Ports without an entry (or with
/// `None`) are not validated. Shared by every snapshot clone: the table is immutable once
/// built, and rebuilt by the control side on reload.
#[derive(Debug, Clone, Default)]
pub struct AntiSpoof {
    ports: Arc<[Option<Box<[Prefix]>>]>,
}

impl AntiSpoof {
    /// Validation for the listed ports. A port listed with no prefixes allows nothing (every
    /// frame from it is dropped); the control side fills in the port's routes by default.
    pub fn new(ports: &[(PortId, Vec<Ipv4Cidr>)]) -> AntiSpoof {
        let len = ports
            .iter()
            .map(|(p, _)| p.0 as usize + 1)
            .max()
            .unwrap_or(0);
        let mut table: Vec<Option<Box<[Prefix]>>> = vec![None; len];
        for (port, cidrs) in ports {
            let list = cidrs.iter().map(|c| Prefix {
                net: c.network().address().to_bits(),
                mask: c.mask(),
            });
            // A port listed twice accumulates both lists.
            let slot = &mut table[port.0 as usize];
            let mut all: Vec<Prefix> = slot.take().map(|b| b.into_vec()).unwrap_or_default();
            all.extend(list);
            *slot = Some(all.into_boxed_slice());
        }
        AntiSpoof {
            ports: table.into(),
        }
    }

    /// Whether any port is validated.
    pub fn is_enabled(&self) -> bool {
        self.ports.iter().any(Option::is_some)
    }

    /// The validated ports and their prefixes, for `ctl` and tests.
    pub fn ports(&self) -> Vec<(PortId, Vec<Ipv4Cidr>)> {
        self.ports
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let list = p.as_ref()?;
                Some((
                    PortId(i as u16),
                    list.iter()
                        .filter_map(|p| {
                            Ipv4Cidr::new(Ipv4Addr::from_bits(p.net), p.mask.count_ones() as u8)
                                .ok()
                        })
                        .collect(),
                ))
            })
            .collect()
    }

    /// May a frame arriving on `port` carry source address `src`?
    #[inline]
    pub fn allows(&self, port: PortId, src: Ipv4Addr) -> bool {
        match self.ports.get(port.0 as usize) {
            Some(Some(list)) => {
                let s = src.to_bits();
                list.iter().any(|p| s & p.mask == p.net)
            }
            _ => true,
        }
    }
}

/// The IPv4 check, for a packet whose header classification has already validated.
#[inline]
pub fn check_ipv4(src: Ipv4Addr, meta: &RxMeta, ctx: &Ctx) -> Result<(), DropReason> {
    if ctx.tables.antispoof.allows(meta.port, src) {
        return Ok(());
    }
    crate::trace_step!(ctx, "antispoof", "source {src} is not allowed on this port");
    Err(DropReason::Spoofed)
}

/// The ARP check: the sender protocol address must be allowed (or unspecified). A frame too
/// short to hold one passes here; the ARP stage counts it as malformed.
#[inline]
pub fn check_arp(frame: &Frame, meta: &RxMeta, ctx: &Ctx) -> Result<(), DropReason> {
    let Some(l3) = frame.data().get(ethernet::HEADER_LEN..) else {
        return Ok(());
    };
    let Ok(arp) = ArpPacket::new_checked(l3) else {
        return Ok(());
    };
    let spa = arp.source_protocol_addr();
    if spa.is_unspecified() || ctx.tables.antispoof.allows(meta.port, spa) {
        return Ok(());
    }
    crate::trace_step!(
        ctx,
        "antispoof",
        "ARP sender {spa} is not allowed on this port"
    );
    Err(DropReason::Spoofed)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::pipeline::Action;

    fn cidr(a: [u8; 4], len: u8) -> Ipv4Cidr {
        Ipv4Cidr::new(Ipv4Addr::from(a), len).unwrap()
    }

    fn lab() -> Lab {
        let mut lab = Lab::new();
        lab.shared.neigh.set_static(POD41_IP, POD41_MAC, POD41);
        // pod60 may use its own /32 and a /28 of extra addresses; pod41 its /32.
        lab.tables.antispoof = AntiSpoof::new(&[
            (
                POD60,
                vec![cidr([10, 20, 9, 60], 32), cidr([10, 20, 9, 96], 28)],
            ),
            (POD41, vec![cidr([10, 20, 9, 41], 32)]),
        ]);
        lab
    }

    fn from_pod60(lab: &Lab, src: Ipv4Addr) -> Out {
        let f = udp_frame(
            POD60_MAC,
            lab.mac(POD60),
            src,
            EXT_IP,
            64,
            4000,
            53,
            b"hello",
        );
        lab.run(POD60, f)
    }

    #[test]
    fn own_addresses_pass_others_are_dropped_and_counted() {
        let lab = lab();
        assert_eq!(
            from_pod60(&lab, POD60_IP).action,
            Action::Tx(BIZ),
            "own /32"
        );
        assert_eq!(
            from_pod60(&lab, Ipv4Addr::new(10, 20, 9, 100)).action,
            Action::Tx(BIZ),
            "inside the extra /28"
        );
        for spoof in [POD41_IP, Ipv4Addr::new(10, 20, 9, 112), EXT_IP] {
            assert_eq!(
                from_pod60(&lab, spoof).action,
                Action::Drop(DropReason::Spoofed),
                "{spoof}"
            );
        }
    }

    #[test]
    fn ports_without_validation_are_untouched() {
        let lab = lab();
        // biz is not validated: anything from the gateway side is routed as before.
        let f = udp_frame(GW_MAC, lab.mac(BIZ), EXT_IP, POD41_IP, 64, 53, 4000, b"x");
        assert_eq!(lab.run(BIZ, f).action, Action::Tx(POD41));
        // And with no configuration at all, a pod may send from any address.
        let open = Lab::new();
        assert!(!open.tables.antispoof.is_enabled());
        let f = udp_frame(POD60_MAC, open.mac(POD60), POD41_IP, EXT_IP, 64, 1, 2, b"x");
        assert_eq!(open.run(POD60, f).action, Action::Tx(BIZ));
    }

    #[test]
    fn spoofed_arp_is_not_learned() {
        let lab = lab();
        // pod60 claims pod41's address in an ARP request for the pod gateway.
        let f = arp_request_frame(POD60_MAC, POD41_IP, crate::tables::ports::POD_GATEWAY);
        assert_eq!(lab.run(POD60, f).action, Action::Drop(DropReason::Spoofed));
        let n = lab.shared.neigh.lookup(POD41_IP).expect("static entry");
        assert_eq!(n.mac, POD41_MAC, "pod41's entry still points at pod41");
        // Its own address gets the proxy ARP reply as before, and a probe passes.
        let f = arp_request_frame(POD60_MAC, POD60_IP, crate::tables::ports::POD_GATEWAY);
        assert_eq!(lab.run(POD60, f).action, Action::Tx(POD60));
        let f = arp_request_frame(
            POD60_MAC,
            Ipv4Addr::UNSPECIFIED,
            crate::tables::ports::POD_GATEWAY,
        );
        assert_ne!(lab.run(POD60, f).action, Action::Drop(DropReason::Spoofed));
    }

    #[test]
    fn listed_ports_round_trip_and_a_trace_changes_nothing() {
        let lab = lab();
        let ports = lab.tables.antispoof.ports();
        assert_eq!(ports.len(), 2);
        assert_eq!(
            ports[0],
            (
                POD60,
                vec![cidr([10, 20, 9, 60], 32), cidr([10, 20, 9, 96], 28)]
            )
        );
        let trace = crate::pipeline::Trace::default();
        let mut ctx = lab.ctx();
        ctx.trace = Some(&trace);
        let meta = RxMeta {
            port: POD60,
            vlan: None,
        };
        assert_eq!(check_ipv4(POD41_IP, &meta, &ctx), Err(DropReason::Spoofed));
        assert!(trace.steps().iter().any(|(s, _)| *s == "antispoof"));
    }
}
