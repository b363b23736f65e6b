//! ARP: answers requests for the ingress port's own addresses and, on pod ports, for the
//! pod gateway 169.254.1.1 (proxy ARP, seeds/001: pods route everything via that onlink
//! gateway); learns every sender into the neighbour cache. The reply is written over the
//! request and goes back out of the port it came in on.

use super::{Action, Ctx, RxMeta};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::tables::ports::{POD_GATEWAY, PortRole};
use crate::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, ethernet};

pub fn run(frame: &mut Frame, meta: &RxMeta, ctx: &Ctx) -> Action {
    let Some(port) = ctx.tables.ports.get(meta.port) else {
        return Action::Drop(DropReason::PortDown);
    };
    let Ok(pkt) = ArpPacket::new_checked(&frame.data()[ethernet::HEADER_LEN..]) else {
        return Action::Drop(DropReason::Malformed);
    };
    let Ok(req) = ArpRepr::parse(&pkt) else {
        return Action::Drop(DropReason::Malformed);
    };
    let sender = req.source_protocol_addr;
    // Gratuitous ARP and probes carry 0.0.0.0 or our own address: never learn those.
    if ctx.may_mutate()
        && !sender.is_unspecified()
        && !ctx.tables.is_local(sender)
        && req.source_hardware_addr.is_unicast()
        && ctx
            .shared
            .neigh
            .learn(sender, req.source_hardware_addr.0, meta.port, ctx.now_s)
    {
        ctx.counters.event(crate::counters::Event::ArpLearned);
    }
    if req.operation != ArpOperation::Request {
        return Action::Drop(DropReason::Consumed);
    }
    let target = req.target_protocol_addr;
    let event = if port.has_addr(target) {
        Event::ArpReply
    } else if port.role == PortRole::Pod && target == POD_GATEWAY {
        Event::ProxyArpReply
    } else {
        crate::trace_step!(ctx, "arp", "request for {target} from {sender}: not ours");
        return Action::Drop(DropReason::ArpNotForUs);
    };
    crate::trace_step!(ctx, "arp", "{} for {target} to {sender}", event.name());
    let reply = ArpRepr {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(port.mac),
        source_protocol_addr: target,
        target_hardware_addr: req.source_hardware_addr,
        target_protocol_addr: sender,
    };
    let mut eth = EthernetFrame::new_unchecked(frame.data_mut());
    eth.set_dst_addr(req.source_hardware_addr);
    eth.set_src_addr(EthernetAddress(port.mac));
    reply.emit(&mut ArpPacket::new_unchecked(
        &mut frame.data_mut()[ethernet::HEADER_LEN..],
    ));
    ctx.counters.event(event);
    Action::Tx(meta.port)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::wire::arp;
    use core::net::Ipv4Addr;

    fn request(src_mac: [u8; 6], spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut f = vec![0u8; 60];
        let mut eth = EthernetFrame::new_unchecked(&mut f[..]);
        eth.set_dst_addr(EthernetAddress::BROADCAST);
        eth.set_src_addr(EthernetAddress(src_mac));
        eth.set_ethertype(crate::wire::EtherType::Arp);
        ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: EthernetAddress(src_mac),
            source_protocol_addr: spa,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: tpa,
        }
        .emit(&mut arp::Packet::new_unchecked(&mut f[14..]));
        f
    }

    #[test]
    fn proxy_arp_for_pod_gateway_on_pod_port() {
        let lab = Lab::new();
        let out = lab.run(POD60, request(POD60_MAC, POD60_IP, POD_GATEWAY));
        assert_eq!(out.action, Action::Tx(POD60));
        let eth = EthernetFrame::new_checked(&out.frame[..]).unwrap();
        assert_eq!(eth.dst_addr().0, POD60_MAC);
        assert_eq!(eth.src_addr().0, lab.mac(POD60));
        let rep = ArpRepr::parse(&arp::Packet::new_checked(&out.frame[14..]).unwrap()).unwrap();
        assert_eq!(rep.operation, ArpOperation::Reply);
        assert_eq!(rep.source_protocol_addr, POD_GATEWAY);
        assert_eq!(rep.source_hardware_addr.0, lab.mac(POD60));
        assert_eq!(rep.target_protocol_addr, POD60_IP);
        assert_eq!(lab.event(Event::ProxyArpReply), 1);
        // and the pod was learned
        let n = lab.shared.neigh.lookup(POD60_IP).unwrap();
        assert_eq!((n.mac, n.port), (POD60_MAC, POD60));
    }

    #[test]
    fn no_proxy_for_pod_gateway_on_uplink() {
        let lab = Lab::new();
        let out = lab.run(BIZ, request(GW_MAC, GW_IP, POD_GATEWAY));
        assert_eq!(out.action, Action::Drop(DropReason::ArpNotForUs));
    }

    #[test]
    fn answers_for_own_address_only_on_its_port() {
        let lab = Lab::new();
        let out = lab.run(BIZ, request(GW_MAC, GW_IP, BIZ_IP));
        assert_eq!(out.action, Action::Tx(BIZ));
        assert_eq!(lab.event(Event::ArpReply), 1);
        let out = lab.run(POD60, request(POD60_MAC, POD60_IP, BIZ_IP));
        assert_eq!(out.action, Action::Drop(DropReason::ArpNotForUs));
    }

    #[test]
    fn truncated_arp_is_malformed() {
        let lab = Lab::new();
        let mut f = request(POD60_MAC, POD60_IP, POD_GATEWAY);
        f.truncate(30);
        assert_eq!(
            lab.run(POD60, f).action,
            Action::Drop(DropReason::Malformed)
        );
    }
}
