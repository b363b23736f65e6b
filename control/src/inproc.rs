//! Starting the fast path inside the calling process, without `afgate run`'s API socket,
//! signal handling, handover or control loop: for tests that must see the real worker
//! loop from inside its own process (a counting global allocator in
//! `tests/tests/memory.rs`). The caller is the control thread: it runs conntrack gc and
//! neighbour aging itself if it needs them, and stops everything by dropping the
//! [`Runtime`] (workers joined, XDP detached).

use crate::config::Config;
use crate::run::{NEIGH_CAPACITY, runtime_config};
use crate::runtime::Runtime;
use afgate_dataplane::conntrack::Conntrack;
use afgate_dataplane::sys;
use afgate_dataplane::tables::Shared;
use anyhow::Context;

/// Builds the tables, conntrack (preallocated, on the heap: no restart segment) and
/// neighbour cache from `cfg`, attaches every port and starts the workers, in the calling
/// thread's network namespace (worker threads inherit it). The devices' MACs and MTUs are
/// read from `/sys/class/net`, so the caller's mount namespace must show that network
/// namespace's sysfs, as `ip netns exec` arranges.
pub fn start(cfg: &Config) -> anyhow::Result<Runtime> {
    let mut tables = cfg
        .tables(&|dev| Ok((sys::device_mac(dev)?, sys::device_mtu(dev)?)))
        .context("reading the ports' devices")?;
    // Carrier once, at start: nothing here follows later changes (`afgate run` polls).
    for (id, dev) in cfg.bond_members() {
        tables.bonds.set_member_up(id, sys::device_carrier(&dev));
    }
    let shared =
        Shared::with_conntrack_table(NEIGH_CAPACITY, Conntrack::new(cfg.conntrack.config()));
    for (ip, mac, port) in cfg.static_neighbours() {
        shared.neigh.set_static(ip, mac, port);
    }
    let mut rcfg = runtime_config(cfg);
    for (spec, port) in rcfg.ports.iter_mut().zip(tables.ports.iter()) {
        spec.steer.own_mac = port.mac;
    }
    Ok(Runtime::start(rcfg, tables, shared)?)
}
