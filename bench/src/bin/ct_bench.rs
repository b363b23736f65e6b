//! `ct_bench`: the shared conntrack table (`afgate_dataplane::conntrack`) against the obvious
//! alternative, a `Mutex<hashbrown::HashMap>` holding the same two keys per flow, measured in
//! the same run on the same keys: inserts/s (filling the table to `--entries`) and
//! lookups/s and lookup+update/s (random existing tuples, both directions), with 1..=`--threads`
//! threads. Prints a markdown table with the ratio afgate / mutex.
//!
//! Bounded: each timed phase stops after `--secs` seconds or when its operation budget is
//! spent, whichever comes first.

use afgate_dataplane::conntrack::{ACK, Config, Conntrack, Dir, Flow, Timeouts, Tuple};
use clap::Parser;
use hashbrown::HashMap;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "ct_bench",
    about = "Conntrack table vs Mutex<HashMap>, same run"
)]
struct Cli {
    /// Flows in the table (the issue asks for 1M).
    #[arg(long, default_value_t = 1_000_000)]
    entries: u32,
    /// Measure with 1, 2, ... up to this many threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Seconds per lookup measurement (inserts stop when the table is full).
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
}

/// A client `10.x.y.z:port` to a ClusterIP, DNATed to a backend and SNATed: the shape the
/// service stage inserts.
fn flow(i: u32) -> Flow {
    let client = Ipv4Addr::from(0x0a00_0000 | (i >> 4));
    let sport = 1024 + (i & 0xf) as u16;
    let orig = Tuple {
        src: client,
        dst: Ipv4Addr::new(10, 96, 10, (i % 200) as u8 + 1),
        sport,
        dport: 80,
        proto: if i.is_multiple_of(4) { 17 } else { 6 },
    };
    let reply = Tuple {
        src: Ipv4Addr::new(10, 20, 4, (i % 100) as u8 + 1),
        dst: Ipv4Addr::from(0x0b00_0000 | (i >> 4)),
        sport: 8080,
        dport: sport,
        proto: orig.proto,
    };
    Flow {
        orig,
        reply,
        service: i % 200,
        backend: i % 100,
        generation: 1,
        mark: 0,
    }
}

/// The baseline: the same two-keys-per-flow index, flows and their state in a Vec, all
/// behind one lock.
struct MutexTable {
    inner: Mutex<Inner>,
}

struct Inner {
    index: HashMap<Tuple, (u32, Dir)>,
    flows: Vec<(Flow, u32, u64, u64)>,
}

impl MutexTable {
    fn new(cap: u32) -> Self {
        MutexTable {
            inner: Mutex::new(Inner {
                index: HashMap::with_capacity(cap as usize * 2),
                flows: Vec::with_capacity(cap as usize),
            }),
        }
    }
    fn insert(&self, f: Flow, now: u32) -> bool {
        let mut g = self.inner.lock().unwrap();
        if g.index.contains_key(&f.orig) || g.index.contains_key(&f.reply) {
            return false;
        }
        let slot = g.flows.len() as u32;
        g.flows.push((f, now, 0, 0));
        g.index.insert(f.orig, (slot, Dir::Original));
        g.index.insert(f.reply, (slot, Dir::Reply));
        true
    }
    fn lookup(&self, t: &Tuple) -> Option<Flow> {
        let g = self.inner.lock().unwrap();
        let &(slot, _) = g.index.get(t)?;
        Some(g.flows[slot as usize].0)
    }
    fn lookup_update(&self, t: &Tuple, now: u32) -> bool {
        let mut g = self.inner.lock().unwrap();
        let Some(&(slot, _)) = g.index.get(t) else {
            return false;
        };
        let e = &mut g.flows[slot as usize];
        e.1 = now;
        e.2 += 1;
        e.3 += 64;
        true
    }
}

#[derive(Clone, Copy)]
enum Op {
    Insert,
    Lookup,
    LookupUpdate,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Lookup => "lookup",
            Op::LookupUpdate => "lookup+update",
        }
    }
}

trait Table: Sync {
    fn insert(&self, f: Flow) -> bool;
    fn lookup(&self, t: &Tuple) -> bool;
    fn lookup_update(&self, t: &Tuple) -> bool;
}

impl Table for Conntrack {
    fn insert(&self, f: Flow) -> bool {
        Conntrack::insert(self, f, 1).is_ok()
    }
    fn lookup(&self, t: &Tuple) -> bool {
        black_box(Conntrack::lookup(self, t, 1)).is_some()
    }
    fn lookup_update(&self, t: &Tuple) -> bool {
        match Conntrack::lookup(self, t, 1) {
            Some(h) => {
                self.update(&h, h.dir, ACK, 64, 1);
                true
            }
            None => false,
        }
    }
}

impl Table for MutexTable {
    fn insert(&self, f: Flow) -> bool {
        MutexTable::insert(self, f, 1)
    }
    fn lookup(&self, t: &Tuple) -> bool {
        black_box(MutexTable::lookup(self, t)).is_some()
    }
    fn lookup_update(&self, t: &Tuple) -> bool {
        MutexTable::lookup_update(self, t, 1)
    }
}

/// Runs `op` on `threads` threads; returns operations per second, operations, successes.
fn measure(
    table: &dyn Table,
    flows: &[Flow],
    op: Op,
    threads: usize,
    secs: f64,
) -> (f64, u64, u64) {
    let deadline = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let per_thread: Vec<(u64, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let (mut ops, mut ok) = (0u64, 0u64);
                    match op {
                        Op::Insert => {
                            // Each thread fills its own share of the table.
                            for f in flows.iter().skip(t).step_by(threads) {
                                ok += u64::from(table.insert(*f));
                                ops += 1;
                            }
                        }
                        Op::Lookup | Op::LookupUpdate => {
                            let mut x = 0x2545_F491u32.wrapping_mul(t as u32 + 1) | 1;
                            let budget = 200_000_000u64;
                            while ops < budget {
                                for _ in 0..1024 {
                                    x ^= x << 13;
                                    x ^= x >> 17;
                                    x ^= x << 5;
                                    let f = &flows[x as usize % flows.len()];
                                    let t = if x & 1 == 0 { &f.orig } else { &f.reply };
                                    let hit = match op {
                                        Op::Lookup => table.lookup(t),
                                        _ => table.lookup_update(t),
                                    };
                                    ok += u64::from(hit);
                                }
                                ops += 1024;
                                if start.elapsed() >= deadline {
                                    break;
                                }
                            }
                        }
                    }
                    (ops, ok)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let ops: u64 = per_thread.iter().map(|p| p.0).sum();
    let ok: u64 = per_thread.iter().map(|p| p.1).sum();
    (ops as f64 / elapsed, ops, ok)
}

fn main() {
    let cli = Cli::parse();
    let entries = cli.entries.clamp(1, 16_000_000);
    let threads = cli.threads.clamp(1, 16);
    let secs = cli.secs.clamp(0.1, 60.0);
    let flows: Vec<Flow> = (0..entries).map(flow).collect();
    println!(
        "ct_bench: {entries} entries, 1..={threads} threads, {secs} s per lookup measurement, {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();
    println!("| op | threads | afgate conntrack (Mops/s) | Mutex<HashMap> (Mops/s) | ratio |");
    println!("|---|---|---|---|---|");
    for t in 1..=threads {
        // Fresh tables per thread count, filled by the insert measurement itself.
        let ct = Conntrack::new(Config {
            capacity: entries,
            timeouts: Timeouts::default(),
        });
        let mx = MutexTable::new(entries);
        for op in [Op::Insert, Op::Lookup, Op::LookupUpdate] {
            let (a, a_ops, a_ok) = measure(&ct, &flows, op, t, secs);
            let (b, b_ops, b_ok) = measure(&mx, &flows, op, t, secs);
            if matches!(op, Op::Insert) {
                // Both tables must hold every flow, or the lookups below measure misses.
                assert_eq!(a_ok, u64::from(entries), "conntrack refused inserts");
                assert_eq!(b_ok, u64::from(entries), "baseline refused inserts");
            } else {
                // Every looked-up tuple is in both tables: a miss would mean a broken table.
                assert_eq!(a_ok, a_ops, "conntrack missed");
                assert_eq!(b_ok, b_ops, "baseline missed");
            }
            println!(
                "| {} | {t} | {:.2} | {:.2} | {:.2} |",
                op.name(),
                a / 1e6,
                b / 1e6,
                a / b
            );
        }
        drop(ct);
        drop(mx);
    }
}
