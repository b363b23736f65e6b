//! Egress: from "send to this next hop on this interface" to a descriptor on a physical
//! port's tx ring. Called by `route::forward` once routing (after NAT, SPEC B8) has chosen
//! the next hop, and by [`super::process`] for every `Action::Tx`:
//!
//! - [`to_nexthop`]: a VXLAN interface encapsulates towards the next hop's VTEP
//!   (`pipeline::vxlan`); any other interface resolves the next hop's MAC
//!   (`pipeline::neigh`).
//! - [`output`]: a logical interface becomes a physical port: a VLAN subinterface pushes
//!   its tag (`pipeline::vlan`) and continues on its parent, a bond picks a member
//!   (`pipeline::bond`). Physical ports pass through unchanged, so applying it twice is
//!   harmless.

use super::{Action, Ctx, RxMeta, bond, neigh, vlan, vxlan};
use crate::counters::{DropReason, Event};
use crate::frame::Frame;
use crate::tables::overlay::PortKind;
use crate::tables::{NextHop, PortId};
use core::net::Ipv4Addr;

/// Sends the routed frame (TTL already decremented) to `nh` for destination `dst`.
#[inline]
pub fn to_nexthop(
    frame: &mut Frame,
    meta: &RxMeta,
    ctx: &Ctx,
    nh: &NextHop,
    dst: Ipv4Addr,
) -> Action {
    let Some(out) = ctx.tables.ports.get(nh.port) else {
        return Action::Drop(DropReason::PortDown);
    };
    let neighbour = nh.neighbour(dst);
    crate::trace_step!(ctx, "route", "{dst} → {} via {}", out.name, neighbour);
    if let PortKind::Vxlan { index } = out.kind {
        return vxlan::encap(frame, meta, ctx, index, out, neighbour);
    }
    neigh::resolve(frame, ctx, out, nh.port, neighbour)
}

/// Turns `Tx(port)` on a logical interface into `Tx(physical port)`.
#[inline]
pub fn output(frame: &mut Frame, port: PortId, ctx: &Ctx) -> Action {
    let mut p = port;
    // A subinterface of a bond is the deepest nesting: VLAN → bond → member.
    for _ in 0..3 {
        let Some(out) = ctx.tables.ports.get(p) else {
            return Action::Drop(DropReason::PortDown);
        };
        match out.kind {
            PortKind::Phys | PortKind::BondMember { .. } => return Action::Tx(p),
            PortKind::Vlan { parent, vid } => {
                if !vlan::push(frame, vid) {
                    return Action::Drop(DropReason::NoHeadroom);
                }
                ctx.counters.event(Event::VlanPush);
                crate::trace_step!(ctx, "egress", "tagged VLAN {vid}");
                p = parent;
            }
            PortKind::Bond { index } => match bond::member(frame.data(), index, ctx) {
                Ok(m) => return Action::Tx(m),
                Err(r) => return Action::Drop(r),
            },
            // Only routed traffic can enter a tunnel (it needs a next hop); replies to a
            // frame that arrived through one (ARP, ICMP errors) are not sent back into it.
            PortKind::Vxlan { .. } => return Action::Drop(DropReason::VxlanNoVtep),
        }
    }
    Action::Drop(DropReason::PortDown)
}
