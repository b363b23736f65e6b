//! The control thread's neighbour work, through worker 0's injection queue
//! (`afgate_dataplane::worker::Injector`):
//!
//! - **Gratuitous ARP** (RFC 5227 §3 announcement: a broadcast request with sender = target
//!   = the address) for every address of every port at start and, after a new snapshot, for
//!   every address of a port whose address set changed, so gateways and pods update their
//!   caches without having to ask. Logical ports are injected as such: the worker's egress
//!   tags them and picks the bond member.
//! - **Aging** of learned entries, once a second over `NeighCache::entries()`: an entry older
//!   than `refresh_s` that the packet path used since it went stale (`NeighEntry::used`) gets
//!   a unicast ARP request, whose reply refreshes it (`pipeline::arp` learns from every ARP
//!   frame); frames keep using it meanwhile. Older than `expire_s`, it is removed. Like
//!   Linux's STALE → PROBE, neighbours no one sends to are not probed: they just expire.

use crate::config::neigh::NeighAgingCfg;
use crate::runtime::Runtime;
use afgate_dataplane::pipeline::neigh::{ARP_FRAME_LEN, arp_request_bytes};
use afgate_dataplane::tables::neigh::NeighEntry;
use afgate_dataplane::tables::ports::POD_GATEWAY;
use afgate_dataplane::tables::{Port, PortId, PortKind, PortRole, Tables};
use afgate_dataplane::wire::{EthernetAddress, EthernetFrame};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// What aging does with one entry now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aging {
    Keep,
    /// Send it a unicast ARP request.
    Refresh,
    Remove,
}

/// The aging decision for `e` at second `now` of the dataplane clock.
pub fn decide(e: &NeighEntry, now: u32, cfg: &NeighAgingCfg) -> Aging {
    if e.permanent {
        return Aging::Keep;
    }
    let age = now.saturating_sub(e.updated);
    if age >= cfg.expire_s {
        return Aging::Remove;
    }
    // Used at or after the moment it went stale: the frame that used it was forwarded with
    // the old MAC, and this confirms it (Linux: DELAY/PROBE after a use in STALE).
    let stale_at = e.updated.saturating_add(cfg.refresh_s);
    if age >= cfg.refresh_s && e.used != 0 && e.used >= stale_at {
        return Aging::Refresh;
    }
    Aging::Keep
}

/// The address afgate's own ARP frames on `port` come from (as `pipeline::route::
/// source_addr`): its first address, the pod gateway on pod ports, else any node address.
fn source_addr(port: &Port, tables: &Tables) -> Option<Ipv4Addr> {
    port.primary_addr()
        .or((port.role == PortRole::Pod).then_some(POD_GATEWAY))
        .or_else(|| tables.ports.iter().find_map(|p| p.primary_addr()))
}

/// Whether afgate can originate frames on `port` through injection (a tunnel needs a
/// next hop, and a bond member is reached through its bond).
fn injectable(port: &Port) -> bool {
    !matches!(
        port.kind,
        PortKind::Vxlan { .. } | PortKind::BondMember { .. }
    )
}

/// One gratuitous ARP per address of each port in `ports` (all ports if `None`).
pub fn garp_frames(
    tables: &Tables,
    ports: Option<&[PortId]>,
) -> Vec<(PortId, Ipv4Addr, [u8; ARP_FRAME_LEN])> {
    tables
        .ports
        .iter()
        .filter(|p| injectable(p) && ports.is_none_or(|s| s.contains(&p.id)))
        .flat_map(|p| {
            p.addrs
                .iter()
                .map(move |&(a, _)| (p.id, a, arp_request_bytes(p, a, a)))
        })
        .collect()
}

/// The unicast ARP request that refreshes `e`, or `None` if it cannot be sent.
pub fn refresh_frame(tables: &Tables, e: &NeighEntry) -> Option<[u8; ARP_FRAME_LEN]> {
    let port = tables.ports.get(e.port).filter(|p| injectable(p))?;
    let mut b = arp_request_bytes(port, source_addr(port, tables)?, e.ip);
    EthernetFrame::new_unchecked(&mut b[..]).set_dst_addr(EthernetAddress(e.mac));
    Some(b)
}

/// Ports (by id in `new`) whose address set differs from `old`'s port of the same name, or
/// that `old` does not have.
pub fn ports_with_new_addrs(old: &AddrSets, new: &Tables) -> Vec<PortId> {
    new.ports
        .iter()
        .filter(|p| old.get(&p.name) != Some(&sorted(&p.addrs)))
        .map(|p| p.id)
        .collect()
}

/// Each port's addresses by port name (ids may change across reloads).
pub type AddrSets = HashMap<String, Vec<(Ipv4Addr, u8)>>;

fn sorted(a: &[(Ipv4Addr, u8)]) -> Vec<(Ipv4Addr, u8)> {
    let mut v = a.to_vec();
    v.sort();
    v
}

pub fn addr_sets(t: &Tables) -> AddrSets {
    t.ports
        .iter()
        .map(|p| (p.name.clone(), sorted(&p.addrs)))
        .collect()
}

/// How often aging looks at the cache.
const AGING_EVERY: Duration = Duration::from_secs(1);

/// The state the run loop keeps between calls.
#[derive(Debug)]
pub struct NeighCtl {
    cfg: NeighAgingCfg,
    generation: u64,
    addrs: AddrSets,
    last_aging: Instant,
}

impl NeighCtl {
    /// Announces every address now (call once the workers run).
    pub fn start(cfg: NeighAgingCfg, rt: &Runtime) -> NeighCtl {
        let t = rt.tables.load();
        announce(rt, &t, None);
        NeighCtl {
            cfg,
            generation: t.generation,
            addrs: addr_sets(&t),
            last_aging: Instant::now(),
        }
    }

    /// Called from the run loop: announces changed addresses of a new snapshot, and ages
    /// the cache once a second.
    pub fn poll(&mut self, rt: &Runtime) {
        let t = rt.tables.load();
        if t.generation != self.generation {
            self.generation = t.generation;
            let changed = ports_with_new_addrs(&self.addrs, &t);
            if !changed.is_empty() {
                announce(rt, &t, Some(&changed));
            }
            self.addrs = addr_sets(&t);
        }
        if self.last_aging.elapsed() >= AGING_EVERY {
            self.last_aging = Instant::now();
            self.age(rt, &t);
        }
    }

    fn age(&self, rt: &Runtime, t: &Tables) {
        let now = rt.now_s();
        let (mut refreshed, mut full) = (0, 0);
        let mut removed = Vec::new();
        for e in rt.shared.neigh.entries() {
            match decide(&e, now, &self.cfg) {
                Aging::Keep => {}
                Aging::Refresh => {
                    if let Some(f) = refresh_frame(t, &e) {
                        match rt.inject(e.port, &f) {
                            Ok(()) => refreshed += 1,
                            Err(_) => full += 1,
                        }
                    }
                }
                Aging::Remove => {
                    if rt.shared.neigh.remove_if_unchanged(e.ip, e.updated) {
                        removed.push(e.ip.to_string());
                    }
                }
            }
        }
        if !removed.is_empty() {
            println!("afgate: neighbours expired: {}", removed.join(", "));
        }
        if refreshed > 0 {
            println!("afgate: neighbours refreshing: {refreshed} ARP request(s) sent");
        }
        if full > 0 {
            eprintln!("afgate: {full} neighbour refresh request(s) not sent: injection queue full");
        }
    }
}

fn announce(rt: &Runtime, t: &Tables, ports: Option<&[PortId]>) {
    let frames = garp_frames(t, ports);
    let mut sent = Vec::new();
    for (port, addr, f) in &frames {
        match rt.inject(*port, f) {
            Ok(()) => sent.push(addr.to_string()),
            Err(e) => eprintln!("afgate: gratuitous ARP for {addr}: {e}"),
        }
    }
    if !sent.is_empty() {
        println!("afgate: gratuitous ARP sent for {}", sent.join(", "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use afgate_dataplane::wire::{ArpOperation, ArpPacket, ArpRepr};

    const CFG: NeighAgingCfg = NeighAgingCfg {
        refresh_s: 10,
        expire_s: 15,
    };

    fn entry(updated: u32, used: u32, permanent: bool) -> NeighEntry {
        NeighEntry {
            ip: Ipv4Addr::new(10, 20, 9, 60),
            mac: [2, 0, 0, 0, 0, 0x60],
            port: PortId(1),
            updated,
            permanent,
            used,
        }
    }

    #[test]
    fn fresh_entries_are_kept_used_or_not() {
        assert_eq!(decide(&entry(100, 0, false), 105, &CFG), Aging::Keep);
        assert_eq!(decide(&entry(100, 105, false), 109, &CFG), Aging::Keep);
    }

    #[test]
    fn stale_entries_are_refreshed_only_when_used_since_they_went_stale() {
        // Stale from 110.
        assert_eq!(decide(&entry(100, 0, false), 112, &CFG), Aging::Keep);
        assert_eq!(decide(&entry(100, 105, false), 112, &CFG), Aging::Keep);
        assert_eq!(decide(&entry(100, 110, false), 112, &CFG), Aging::Refresh);
        assert_eq!(decide(&entry(100, 114, false), 114, &CFG), Aging::Refresh);
    }

    #[test]
    fn old_entries_are_removed_used_or_not_static_never() {
        assert_eq!(decide(&entry(100, 0, false), 115, &CFG), Aging::Remove);
        assert_eq!(decide(&entry(100, 114, false), 120, &CFG), Aging::Remove);
        assert_eq!(decide(&entry(0, 0, true), 1_000_000, &CFG), Aging::Keep);
        // A clock behind the entry (learned after `now` was read) is age 0.
        assert_eq!(decide(&entry(200, 0, false), 100, &CFG), Aging::Keep);
    }

    fn tables() -> Tables {
        let port = |id: u16, name: &str, role, addrs: Vec<(Ipv4Addr, u8)>, kind| Port {
            id: PortId(id),
            name: name.into(),
            device: name.into(),
            role,
            mac: [2, 0xaf, 0, 0, 0, id as u8],
            addrs,
            mtu: 1500,
            kind,
            ..Default::default()
        };
        let biz_ip = Ipv4Addr::new(10, 186, 153, 103);
        Tables {
            ports: afgate_dataplane::tables::Ports::new(vec![
                port(
                    0,
                    "biz",
                    PortRole::Uplink,
                    vec![(biz_ip, 24)],
                    PortKind::Phys,
                ),
                port(1, "pod60", PortRole::Pod, vec![], PortKind::Phys),
                port(
                    2,
                    "biz.1155",
                    PortRole::Uplink,
                    vec![
                        (Ipv4Addr::new(10, 186, 155, 30), 27),
                        (Ipv4Addr::new(10, 186, 155, 31), 27),
                    ],
                    PortKind::Vlan {
                        parent: PortId(0),
                        vid: 1155,
                    },
                ),
                port(
                    3,
                    "vxlan.2",
                    PortRole::Ctl,
                    vec![(Ipv4Addr::new(10, 20, 9, 1), 25)],
                    PortKind::Vxlan { index: 0 },
                ),
            ]),
            ..Default::default()
        }
    }

    fn arp(b: &[u8]) -> (EthernetAddress, ArpRepr) {
        let eth = EthernetFrame::new_checked(b).unwrap();
        let r = ArpRepr::parse(&ArpPacket::new_checked(&b[14..]).unwrap()).unwrap();
        (eth.dst_addr(), r)
    }

    #[test]
    fn one_announcement_per_address_of_every_injectable_port() {
        let t = tables();
        let g = garp_frames(&t, None);
        let got: Vec<_> = g.iter().map(|(p, a, _)| (p.0, a.to_string())).collect();
        assert_eq!(
            got,
            [
                (0, "10.186.153.103".into()),
                (2, "10.186.155.30".into()),
                (2, "10.186.155.31".into())
            ]
        );
        for (p, a, f) in &g {
            let (dst, r) = arp(f);
            assert!(dst.is_broadcast());
            assert_eq!(r.operation, ArpOperation::Request);
            assert_eq!((r.source_protocol_addr, r.target_protocol_addr), (*a, *a));
            assert_eq!(r.source_hardware_addr.0, t.ports.get(*p).unwrap().mac);
        }
        assert_eq!(garp_frames(&t, Some(&[PortId(2)])).len(), 2);
    }

    #[test]
    fn address_changes_are_found_by_port_name() {
        let t = tables();
        let old = addr_sets(&t);
        assert!(ports_with_new_addrs(&old, &t).is_empty());
        let mut ports: Vec<Port> = t.ports.iter().cloned().collect();
        ports[0].addrs.push((Ipv4Addr::new(10, 186, 153, 104), 24));
        // Same set in another order is no change.
        ports[2].addrs.reverse();
        let t2 = Tables {
            ports: afgate_dataplane::tables::Ports::new(ports),
            ..Default::default()
        };
        assert_eq!(ports_with_new_addrs(&old, &t2), [PortId(0)]);
    }

    #[test]
    fn refresh_is_a_unicast_request_from_the_ports_address() {
        let t = tables();
        let e = entry(0, 0, false); // on pod60, which has no address: the pod gateway
        let (dst, r) = arp(&refresh_frame(&t, &e).unwrap());
        assert_eq!(dst.0, e.mac);
        assert_eq!(r.operation, ArpOperation::Request);
        assert_eq!(r.source_protocol_addr, POD_GATEWAY);
        assert_eq!(r.target_protocol_addr, e.ip);
        assert_eq!(
            r.source_hardware_addr.0,
            t.ports.get(PortId(1)).unwrap().mac
        );
        let on_biz = NeighEntry {
            port: PortId(0),
            ..e
        };
        let (_, r) = arp(&refresh_frame(&t, &on_biz).unwrap());
        assert_eq!(r.source_protocol_addr, Ipv4Addr::new(10, 186, 153, 103));
        let on_vxlan = NeighEntry {
            port: PortId(3),
            ..e
        };
        assert!(refresh_frame(&t, &on_vxlan).is_none());
    }
}
