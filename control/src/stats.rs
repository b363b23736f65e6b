//! Summing the workers' counters into one view: per port, per drop reason, per event.

use afgate_dataplane::counters::{DropReason, Event, WorkerCounters};
use afgate_dataplane::tables::Tables;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PortStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_drops: u64,
    /// The kernel's AF_XDP socket statistics summed over workers: frames it dropped
    /// because a worker's rx ring was full or its fill ring empty.
    pub xsk_rx_ring_full: u64,
    pub xsk_fill_empty: u64,
    pub xsk_rx_dropped: u64,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Stats {
    pub ports: BTreeMap<String, PortStats>,
    /// Non-zero drop counters by reason name.
    pub drops: BTreeMap<&'static str, u64>,
    pub events: BTreeMap<&'static str, u64>,
    /// Per worker: fraction of poll passes that moved frames.
    pub busy_ratio: Vec<f64>,
    /// Per worker: frames received over all its queues.
    pub worker_rx_packets: Vec<u64>,
    /// Per worker: frames in its free stack after its last pass. Idle, this is the same
    /// number before and after traffic unless frames leaked.
    pub worker_free_frames: Vec<u64>,
    /// The conntrack table's counters (filled by `afgate run` from the shared table).
    pub conntrack: ConntrackStats,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ConntrackStats {
    pub entries: u64,
    pub capacity: u64,
    pub inserts: u64,
    pub insert_races: u64,
    pub early_drops: u64,
    pub expired: u64,
    pub full_drops: u64,
}

impl From<afgate_dataplane::conntrack::Stats> for ConntrackStats {
    fn from(s: afgate_dataplane::conntrack::Stats) -> Self {
        ConntrackStats {
            entries: s.entries,
            capacity: s.capacity,
            inserts: s.inserts,
            insert_races: s.insert_races,
            early_drops: s.early_drops,
            expired: s.expired,
            full_drops: s.full_drops,
        }
    }
}

pub fn collect(workers: &[Arc<WorkerCounters>], tables: &Tables) -> Stats {
    let mut s = Stats::default();
    for p in tables.ports.iter() {
        let mut ps = PortStats::default();
        for w in workers {
            if let Some(c) = w.ports.get(p.id.index()) {
                ps.rx_packets += c.rx_packets.get();
                ps.rx_bytes += c.rx_bytes.get();
                ps.tx_packets += c.tx_packets.get();
                ps.tx_bytes += c.tx_bytes.get();
                ps.tx_drops += c.drops.get();
                ps.xsk_rx_ring_full += c.xsk_rx_ring_full.get();
                ps.xsk_fill_empty += c.xsk_fill_empty.get();
                ps.xsk_rx_dropped += c.xsk_rx_dropped.get();
            }
        }
        s.ports.insert(p.name.clone(), ps);
    }
    for r in DropReason::ALL {
        let n: u64 = workers.iter().map(|w| w.drop_count(*r)).sum();
        if n > 0 {
            s.drops.insert(r.name(), n);
        }
    }
    for e in Event::ALL {
        let n: u64 = workers.iter().map(|w| w.event_count(*e)).sum();
        if n > 0 {
            s.events.insert(e.name(), n);
        }
    }
    s.worker_rx_packets = workers
        .iter()
        .map(|w| w.ports.iter().map(|p| p.rx_packets.get()).sum())
        .collect();
    s.worker_free_frames = workers
        .iter()
        .map(|w| w.free_frames.load(std::sync::atomic::Ordering::Relaxed))
        .collect();
    s.busy_ratio = workers
        .iter()
        .map(|w| {
            let polls = w.polls.get();
            if polls == 0 {
                0.0
            } else {
                w.busy_polls.get() as f64 / polls as f64
            }
        })
        .collect();
    s
}
