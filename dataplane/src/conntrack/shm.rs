//! The conntrack table in a named shared-memory segment, so that a restarted (upgraded)
//! afgate continues with the flows and NAT translations of the process it replaces.
//!
//! The segment is one file (normally on tmpfs, `/dev/shm/afgate/conntrack`): a 4 KiB header
//! then the table's arrays, exactly as [`Conntrack::new`] lays them out on the heap. Every
//! field of the table is an atomic, so two processes may map it at once: the table's own
//! lock-free protocol (seqlocks, CASed `meta` words, CASed index entries) works across
//! processes as it does across threads; it takes no locks, so a process that dies holds
//! none, but it may leave a half-done insert or kill behind (see
//! [`Conntrack::recover_abandoned`]). A takeover therefore needs no copy; the new process
//! maps the segment while the old one still forwards.
//!
//! A segment is adopted only if its header matches what this build and configuration would
//! create: magic, layout version, boot (timestamps are CLOCK_MONOTONIC seconds, meaningless
//! after a reboot), the sizes of the table's structs, capacity and bucket count. Otherwise
//! [`Conntrack::open_shared`] says which field differs and starts a fresh segment (flows are
//! lost, never misread). A fresh segment is built under a temporary name and renamed into
//! place, so no process ever maps a half-initialised one.
//!
//! Timestamps: conntrack stamps flows with seconds since an epoch. The segment records its
//! epoch as CLOCK_MONOTONIC nanoseconds ([`Segment::epoch`]), and every process using the
//! segment measures its dataplane clock from that instant, so their seconds agree.

use super::{
    Bucket, CachePadded, Config, Conntrack, DIR_BIT, LIFE_FREE, LIFE_LIVE, Meta, NIL, OVERFLOW_ONE,
    SLOT_MASK, SharedStats, Slot, SlotCounters, TimeoutTable, Tuple,
};
use crate::mem::{Mapping, Place, Region};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MAGIC: u64 = u64::from_le_bytes(*b"AFGCTSHM");
/// Bump when the meaning of any array element or header field changes.
/// 2: lock-free inserts: `meta` has 3 life bits (PENDING, ABORTED), a 20-bit reuse
/// generation; the bucket control word has no insert lock; `SharedStats.insert_lost`.
const LAYOUT_VERSION: u64 = 2;
const HEADER_LEN: usize = 4096;

/// Header fields, one little-endian u64 each, in this order. The names are what a mismatch
/// reports.
const FIELDS: [&str; 12] = [
    "magic",
    "layout_version",
    "boot_id_hi",
    "boot_id_lo",
    "slot_size",
    "counters_size",
    "bucket_size",
    "stats_size",
    "capacity",
    "buckets",
    "epoch_mono_ns",
    "total_len",
];
const F_EPOCH: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    #[error("conntrack state {path}: {op}: {source}")]
    Io {
        path: PathBuf,
        op: &'static str,
        source: std::io::Error,
    },
    #[error(
        "conntrack state {path}: {field} is {found} in the segment but {want} here; not adopting it"
    )]
    Mismatch {
        path: PathBuf,
        field: &'static str,
        found: u64,
        want: u64,
    },
}

impl ShmError {
    /// The header field that differed, for a mismatch.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ShmError::Mismatch { field, .. } => Some(field),
            ShmError::Io { .. } => None,
        }
    }
}

/// What [`Conntrack::open_shared`] found.
#[derive(Debug)]
pub enum Opened {
    /// No segment: a fresh one was created.
    Created,
    /// The segment matched and its flows are this table's now.
    Adopted,
    /// A segment was there but could not be adopted (the error says why); a fresh one
    /// replaced it.
    Replaced(ShmError),
}

/// The segment behind a shared table.
#[derive(Debug, Clone)]
pub struct Segment {
    pub path: PathBuf,
    /// CLOCK_MONOTONIC nanoseconds at which the segment's seconds count from.
    pub epoch_mono_ns: u64,
    pub len: usize,
}

impl Segment {
    /// The segment's epoch as an `Instant` (std's `Instant` is CLOCK_MONOTONIC on Linux), so
    /// `epoch().elapsed()` gives the same seconds in every process using the segment.
    pub fn epoch(&self) -> Instant {
        let now_ns = monotonic_ns();
        let back = Duration::from_nanos(now_ns.saturating_sub(self.epoch_mono_ns));
        let now = Instant::now();
        now.checked_sub(back).unwrap_or(now)
    }
}

/// Byte offsets of the arrays after the header.
struct Layout {
    free_head: usize,
    gc_cursor: usize,
    stats: usize,
    slots: usize,
    counters: usize,
    buckets: usize,
    free_next: usize,
    total: usize,
}

fn align_up(x: usize, a: usize) -> usize {
    x.next_multiple_of(a)
}

impl Layout {
    fn new(cap: u32, nb: usize) -> Layout {
        let cap = cap as usize;
        let mut at = HEADER_LEN;
        let mut take = |size: usize, align: usize| {
            let off = align_up(at, align.max(64));
            at = off + size;
            off
        };
        let free_head = take(
            size_of::<CachePadded<AtomicU64>>(),
            align_of::<CachePadded<AtomicU64>>(),
        );
        let gc_cursor = take(
            size_of::<CachePadded<AtomicU32>>(),
            align_of::<CachePadded<AtomicU32>>(),
        );
        let stats = take(
            size_of::<CachePadded<SharedStats>>(),
            align_of::<CachePadded<SharedStats>>(),
        );
        // Big arrays on page boundaries: huge pages, when the segment gets them, then cover
        // whole arrays.
        let slots = take(cap * size_of::<Slot>(), 4096);
        let counters = take(cap * size_of::<SlotCounters>(), 4096);
        let buckets = take(nb * size_of::<Bucket>(), 4096);
        let free_next = take(cap * size_of::<AtomicU32>(), 4096);
        let total = align_up(at, 4096);
        Layout {
            free_head,
            gc_cursor,
            stats,
            slots,
            counters,
            buckets,
            free_next,
            total,
        }
    }
}

fn expected_header(cap: u32, nb: usize, layout: &Layout, boot: u128, epoch: u64) -> [u64; 12] {
    [
        MAGIC,
        LAYOUT_VERSION,
        (boot >> 64) as u64,
        boot as u64,
        size_of::<Slot>() as u64,
        size_of::<SlotCounters>() as u64,
        size_of::<Bucket>() as u64,
        size_of::<CachePadded<SharedStats>>() as u64,
        u64::from(cap),
        nb as u64,
        epoch,
        layout.total as u64,
    ]
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    #[allow(unsafe_code)]
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts)
    };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), 0 if unreadable.
fn boot_id() -> u128 {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .and_then(|s| u128::from_str_radix(&s.trim().replace('-', ""), 16).ok())
        .unwrap_or(0)
}

fn io<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(std::io::Error) -> ShmError + 'a {
    move |source| ShmError::Io {
        path: path.to_owned(),
        op,
        source,
    }
}

fn read_header(map: &Mapping) -> [u64; 12] {
    #[allow(unsafe_code)]
    // SAFETY: the header is written once, before the segment is renamed into place, and
    // never again; nothing holds `&mut` to it.
    let b = unsafe { map.bytes(0, FIELDS.len() * 8) };
    core::array::from_fn(|i| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])))
}

impl Conntrack {
    /// The table in the segment at `path`: adopted if its header matches this build and
    /// `cfg` (see the module docs), else a fresh segment replaces it. Timeouts come from
    /// `cfg` and may differ from the previous process's.
    pub fn open_shared(cfg: Config, path: &Path) -> Result<(Conntrack, Segment, Opened), ShmError> {
        match Self::attach_shared(cfg.clone(), path) {
            Ok((ct, seg)) => Ok((ct, seg, Opened::Adopted)),
            Err(ShmError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let (ct, seg) = Self::create_shared(cfg, path)?;
                Ok((ct, seg, Opened::Created))
            }
            Err(e) => {
                let (ct, seg) = Self::create_shared(cfg, path)?;
                Ok((ct, seg, Opened::Replaced(e)))
            }
        }
    }

    /// Maps the existing segment at `path`, refusing one whose header differs (the error
    /// names the first differing field).
    pub fn attach_shared(cfg: Config, path: &Path) -> Result<(Conntrack, Segment), ShmError> {
        let (cap, nb) = Self::geometry(&cfg);
        let layout = Layout::new(cap, nb);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path, "open"))?;
        let len = file.metadata().map_err(io(path, "stat"))?.len() as usize;
        if len < HEADER_LEN {
            return Err(ShmError::Mismatch {
                path: path.to_owned(),
                field: "total_len",
                found: len as u64,
                want: layout.total as u64,
            });
        }
        let map = Arc::new(Mapping::map(&file, len).map_err(io(path, "mmap"))?);
        let found = read_header(&map);
        let want = expected_header(cap, nb, &layout, boot_id(), found[F_EPOCH]);
        for (i, field) in FIELDS.iter().enumerate() {
            if found[i] != want[i] {
                return Err(ShmError::Mismatch {
                    path: path.to_owned(),
                    field,
                    found: found[i],
                    want: want[i],
                });
            }
        }
        if len != layout.total {
            return Err(ShmError::Mismatch {
                path: path.to_owned(),
                field: "file_len",
                found: len as u64,
                want: layout.total as u64,
            });
        }
        let seg = Segment {
            path: path.to_owned(),
            epoch_mono_ns: found[F_EPOCH],
            len,
        };
        Ok((Self::over(&map, &layout, &cfg, cap, nb), seg))
    }

    /// Creates a fresh, empty segment at `path` (replacing any file there; processes that
    /// still map the old one keep it, unnamed).
    pub fn create_shared(cfg: Config, path: &Path) -> Result<(Conntrack, Segment), ShmError> {
        let (cap, nb) = Self::geometry(&cfg);
        let layout = Layout::new(cap, nb);
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(io(path, "create its directory"))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}.tmp", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = std::fs::remove_file(&tmp);
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io(path, "create"))?;
        let built = (|| {
            file.set_len(layout.total as u64)
                .map_err(io(path, "size"))?;
            let map = Arc::new(Mapping::map(&file, layout.total).map_err(io(path, "mmap"))?);
            let epoch = monotonic_ns();
            let header = expected_header(cap, nb, &layout, boot_id(), epoch);
            let bytes: Vec<u8> = header.iter().flat_map(|v| v.to_le_bytes()).collect();
            #[allow(unsafe_code)]
            // SAFETY: the file has a temporary name only this process knows, and the header
            // is outside every Region `over` makes.
            unsafe {
                map.write(0, &bytes)
            };
            // A zero-filled file is an empty table (every slot FREE, every bucket empty,
            // free-stack head at slot 0) except for the free-stack links.
            let ct = Self::over(&map, &layout, &cfg, cap, nb);
            for (i, next) in ct.free_next.iter().enumerate() {
                let i = i as u32;
                next.store(if i + 1 < cap { i + 1 } else { NIL }, Ordering::Relaxed);
            }
            std::fs::rename(&tmp, path).map_err(io(path, "rename into place"))?;
            Ok((
                ct,
                Segment {
                    path: path.to_owned(),
                    epoch_mono_ns: epoch,
                    len: layout.total,
                },
            ))
        })();
        if built.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        built
    }

    fn over(map: &Arc<Mapping>, l: &Layout, cfg: &Config, cap: u32, nb: usize) -> Conntrack {
        let n = cap as usize;
        #[allow(unsafe_code)]
        // SAFETY: `Layout` places each array inside the mapping (`total` is its length,
        // checked by the callers), aligned for its type; every element type is made of
        // atomics only, so any bytes another process leaves there are a valid value; and
        // the table hands out shared references only.
        unsafe {
            Conntrack {
                slots: Region::mapped(map, l.slots, n),
                counters: Region::mapped(map, l.counters, n),
                buckets: Region::mapped(map, l.buckets, nb),
                free_head: Place::mapped(map, l.free_head),
                free_next: Region::mapped(map, l.free_next, n),
                gc_cursor: Place::mapped(map, l.gc_cursor),
                stats: Place::mapped(map, l.stats),
                timeouts: TimeoutTable::new(&cfg.timeouts),
                capacity: cap,
                epochs: Default::default(),
            }
        }
    }

    /// Whether the table lives in a shared segment.
    pub fn is_shared(&self) -> bool {
        self.slots.is_mapped()
    }

    /// Makes the table whole after the process that used it died, perhaps in the middle of
    /// an insert or a kill: a slot left INIT, PENDING, ABORTED or DEAD (or popped while
    /// FREE) belongs to nobody now. Keeps the LIVE flows; frees every other slot (a new
    /// free stack), clears the index entries that do not name a LIVE slot holding their
    /// tuple, recounts the overflow counts and `entries`. Only when no other process uses
    /// the segment (a start after a crash, not a takeover). Returns how many slots were
    /// abandoned mid-insert or mid-kill.
    pub fn recover_abandoned(&self) -> u32 {
        let mut abandoned = 0;
        let mut live = 0u64;
        let mut head = NIL;
        for slot in (0..self.capacity).rev() {
            let s = &self.slots[slot as usize];
            let m = Meta(s.meta.load(Ordering::Relaxed));
            if m.life() == LIFE_LIVE {
                live += 1;
                continue;
            }
            if m.life() != LIFE_FREE {
                abandoned += 1;
            }
            // A death inside `write_slot` leaves `seq` odd; readers would skip the slot forever.
            let seq = s.seq.load(Ordering::Relaxed);
            s.seq.store(seq.wrapping_add(seq & 1), Ordering::Relaxed);
            s.meta
                .store(m.with_life(LIFE_FREE).bump_gen().0, Ordering::Relaxed);
            self.free_next[slot as usize].store(head, Ordering::Relaxed);
            head = slot;
        }
        let tag = (self.free_head.load(Ordering::Relaxed) >> 32).wrapping_add(1);
        self.free_head
            .store((tag << 32) | u64::from(head), Ordering::Release);
        for b in self.buckets.iter() {
            for e in &b.e {
                let v = e.load(Ordering::Relaxed);
                if v != 0 && !self.names_live_holder(v) {
                    e.store(0, Ordering::Relaxed);
                }
            }
        }
        let mut overflow = vec![0u64; self.buckets.len()];
        for (bi, b) in self.buckets.iter().enumerate() {
            for e in &b.e {
                let v = e.load(Ordering::Relaxed);
                let home = self.bucket_of((v >> 32) as u32);
                if v != 0 && home != bi {
                    overflow[home] += OVERFLOW_ONE;
                }
            }
        }
        for (b, n) in self.buckets.iter().zip(overflow) {
            b.ctl.store(n, Ordering::Relaxed);
        }
        self.stats.entries.store(live, Ordering::Release);
        abandoned
    }

    /// Whether index entry `v` names a LIVE slot whose tuple in the entry's direction has
    /// the entry's hash.
    fn names_live_holder(&self, v: u64) -> bool {
        let Some(slot) = (v & SLOT_MASK).checked_sub(1) else {
            return false;
        };
        let Some((w, m)) = self
            .slots
            .get(slot as usize)
            .and(self.read_words(slot as u32))
        else {
            return false;
        };
        let at = if v & DIR_BIT != 0 { 2 } else { 0 };
        m.life() == LIFE_LIVE && Tuple::from_words(w[at], w[at + 1]).hash() == (v >> 32) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Dir, Flow, Tuple};
    use super::*;
    use core::net::Ipv4Addr;

    /// A segment path in a directory of the test's own, removed with the directory when
    /// dropped, a failing test's included.
    struct TmpPath(PathBuf);

    impl core::ops::Deref for TmpPath {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl AsRef<Path> for TmpPath {
        fn as_ref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpPath {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn tmp_path(name: &str) -> TmpPath {
        let dir = std::env::temp_dir().join(format!("afgate-shm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TmpPath(dir.join(name))
    }

    fn cfg(capacity: u32) -> Config {
        Config {
            capacity,
            ..Default::default()
        }
    }

    fn flow(i: u16) -> Flow {
        let orig = Tuple {
            src: Ipv4Addr::new(10, 20, 9, 60),
            dst: Ipv4Addr::new(10, 96, 10, 1),
            sport: 40_000 + i,
            dport: 80,
            proto: 6,
        };
        let reply = Tuple {
            src: Ipv4Addr::new(10, 186, 200, 10),
            dst: Ipv4Addr::new(10, 186, 153, 103),
            sport: 8080,
            dport: 20_000 + i,
            proto: 6,
        };
        Flow {
            orig,
            reply,
            service: 1,
            backend: 2,
            generation: 3,
            mark: 0x4000,
        }
    }

    #[test]
    fn flows_survive_a_remap() {
        let p = tmp_path("remap");
        let (a, seg_a, opened) = Conntrack::open_shared(cfg(1024), &p).unwrap();
        assert!(matches!(opened, Opened::Created), "{opened:?}");
        assert!(a.is_shared());
        for i in 0..100 {
            let hit = a.insert(flow(i), 5).unwrap();
            a.update(&hit, Dir::Original, super::super::SYN, 60, 5);
        }
        let gone = a.lookup(&flow(7).orig, 5).unwrap();
        assert!(a.remove(gone.slot));
        // A second mapping, as a new process would make, while the first is still in use.
        let (b, seg_b, opened) = Conntrack::open_shared(cfg(1024), &p).unwrap();
        assert!(matches!(opened, Opened::Adopted), "{opened:?}");
        assert_eq!(seg_a.epoch_mono_ns, seg_b.epoch_mono_ns);
        assert_eq!(b.count(), 99);
        for i in 0..100 {
            let hit = b.lookup(&flow(i).reply, 6);
            if i == 7 {
                assert!(hit.is_none());
                continue;
            }
            let hit = hit.unwrap();
            assert_eq!(hit.dir, Dir::Reply);
            assert_eq!(hit.flow, flow(i));
            assert_eq!(hit.state, super::super::TcpState::SynSent);
        }
        // Both mappings are one table: an insert through one is seen through the other,
        // and the free stack is shared (capacity is not exceeded across the two).
        b.insert(flow(500), 6).unwrap();
        assert!(a.lookup(&flow(500).orig, 6).is_some());
        assert_eq!(a.stats().entries, 100);
        drop(a);
        drop(b);
        let (c, _) = Conntrack::attach_shared(cfg(1024), &p).unwrap();
        assert_eq!(c.count(), 100);
        assert!(c.lookup(&flow(500).reply, 7).is_some());
    }

    #[test]
    fn fills_to_capacity_across_mappings() {
        let p = tmp_path("full");
        let (a, _, _) = Conntrack::open_shared(cfg(64), &p).unwrap();
        let (b, _, _) = Conntrack::open_shared(cfg(64), &p).unwrap();
        let mut ok = 0;
        for i in 0..200u16 {
            let t = if i % 2 == 0 { &a } else { &b };
            if let Ok(hit) = t.insert(flow(i), 1) {
                // Replied flows are never early-dropped, so the table really fills.
                t.update(&hit, Dir::Reply, super::super::ACK, 60, 1);
                ok += 1;
            }
        }
        assert_eq!(ok, 64);
        assert_eq!(a.count(), 64);
    }

    #[test]
    fn capacity_change_is_refused_by_name_and_replaced() {
        let p = tmp_path("mismatch");
        let (a, _, _) = Conntrack::open_shared(cfg(1024), &p).unwrap();
        a.insert(flow(1), 1).unwrap();
        let err = Conntrack::attach_shared(cfg(2048), &p).unwrap_err();
        assert_eq!(err.field(), Some("capacity"));
        let msg = err.to_string();
        assert!(
            msg.contains("capacity is 1024 in the segment but 2048 here"),
            "{msg}"
        );
        let (b, _, opened) = Conntrack::open_shared(cfg(2048), &p).unwrap();
        match opened {
            Opened::Replaced(e) => assert_eq!(e.field(), Some("capacity")),
            other => panic!("{other:?}"),
        }
        assert_eq!(b.count(), 0);
        assert_eq!(b.capacity(), 2048);
        // The old mapping still works on its own (now unnamed) segment.
        assert!(a.lookup(&flow(1).orig, 1).is_some());
    }

    #[test]
    fn garbage_and_truncated_files_are_refused() {
        let p = tmp_path("garbage");
        std::fs::write(&p, vec![0xabu8; 8192]).unwrap();
        let err = Conntrack::attach_shared(cfg(64), &p).unwrap_err();
        assert_eq!(err.field(), Some("magic"));
        std::fs::write(&p, b"short").unwrap();
        let err = Conntrack::attach_shared(cfg(64), &p).unwrap_err();
        assert_eq!(err.field(), Some("total_len"));
        let (_, _, opened) = Conntrack::open_shared(cfg(64), &p).unwrap();
        assert!(matches!(opened, Opened::Replaced(_)));
        let err = Conntrack::attach_shared(cfg(64), &p.with_extension("none")).unwrap_err();
        assert!(matches!(err, ShmError::Io { .. }), "{err}");
    }

    /// A process that died mid-insert (INIT, PENDING and ABORTED slots with their entries)
    /// and mid-kill (a DEAD slot) leaves slots nobody owns: the next process alone frees
    /// them and cleans the index.
    #[test]
    fn abandoned_inserts_and_kills_are_recovered() {
        use super::super::{Dir, LIFE_ABORTED, LIFE_DEAD, LIFE_PENDING, entry};
        let p = tmp_path("abandoned");
        let (a, _, _) = Conntrack::open_shared(cfg(64), &p).unwrap();
        for i in 0..10 {
            a.insert(flow(i), 1).unwrap();
        }
        // Staged and never settled: PENDING, and one aborted by a rival.
        let pending = a
            .stage(&flow(20), flow(20).orig.hash(), flow(20).reply.hash(), 1)
            .unwrap();
        let aborted = a
            .stage(&flow(21), flow(21).orig.hash(), flow(21).reply.hash(), 1)
            .unwrap();
        assert!(a.abort(aborted.slot, aborted.meta).is_none());
        // Written, one entry published, then death: INIT.
        let init = a.pop_free().unwrap();
        a.write_slot(init, &flow(22), 1);
        let h = flow(22).orig.hash();
        a.publish(h, entry(h, Dir::Original, init)).unwrap();
        // Popped and never written: FREE but out of the stack.
        let leaked = a.pop_free().unwrap();
        // Killed (LIVE → DEAD) but its entries never cleared.
        let dead = a.lookup(&flow(3).orig, 1).unwrap().slot;
        let s = &a.slots[dead as usize];
        let m = Meta(s.meta.load(Ordering::Relaxed));
        s.meta
            .store(m.with_life(LIFE_DEAD).bump_gen().0, Ordering::Relaxed);
        for (slot, life) in [
            (pending.slot, LIFE_PENDING),
            (aborted.slot, LIFE_ABORTED),
            (dead, LIFE_DEAD),
        ] {
            assert_eq!(
                Meta(a.slots[slot as usize].meta.load(Ordering::Relaxed)).life(),
                life
            );
        }
        drop(a);
        let (b, _, opened) = Conntrack::open_shared(cfg(64), &p).unwrap();
        assert!(matches!(opened, Opened::Adopted), "{opened:?}");
        assert_eq!(b.recover_abandoned(), 4);
        assert_eq!(b.count(), 9);
        for i in 0..10 {
            assert_eq!(b.lookup(&flow(i).reply, 1).is_some(), i != 3, "flow {i}");
        }
        // Only the 9 live flows' 18 entries are left, and the overflow counts agree.
        let entries: usize = b
            .buckets
            .iter()
            .map(|k| {
                k.e.iter()
                    .filter(|e| e.load(Ordering::Relaxed) != 0)
                    .count()
            })
            .sum();
        assert_eq!(entries, 18);
        assert!(
            b.buckets
                .iter()
                .all(|k| k.ctl.load(Ordering::Relaxed) >> 32 <= 18)
        );
        let mut free = Vec::new();
        while let Some(s) = b.pop_free() {
            free.push(s);
        }
        assert_eq!(free.len(), 55);
        assert!(free.contains(&leaked) && free.contains(&init) && free.contains(&dead));
        for s in free {
            b.push_free(s);
        }
        // The recovered slots are usable, the abandoned flows insertable again.
        for i in 20..23 {
            assert!(b.insert(flow(i), 2).unwrap().slot < 64);
        }
        assert_eq!(b.recover_abandoned(), 0);
        assert_eq!(b.count(), 12);
    }

    #[test]
    fn epoch_is_shared() {
        let p = tmp_path("epoch");
        let (_, seg, _) = Conntrack::open_shared(cfg(64), &p).unwrap();
        let e = seg.epoch();
        assert!(e.elapsed() < Duration::from_secs(5));
    }
}
