//! A pinned, poll-mode, run-to-completion worker: it owns one UMEM and one queue of every
//! port, takes batches off each rx ring, runs every frame through the pipeline, and hands
//! the descriptor to the egress port's tx ring — the frame itself never moves.

use crate::counters::{DropReason, Event, WorkerCounters};
use crate::frame::Frame;
use crate::observe::{CaptureSession, Direction, WorkerObs};
use crate::pipeline::{self, Action, Ctx, RxMeta};
use crate::tables::{PortId, Shared, Tables};
use crate::xsk::{FramePool, Umem, XdpDesc, Xsk};
use arc_swap::ArcSwap;
use crossbeam::queue::ArrayQueue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a worker waits when there is nothing to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PollMode {
    /// Never sleep: for cores dedicated to a NIC queue whose interrupts run elsewhere.
    Busy,
    /// Sleep in poll(2) as soon as one pass over the rings finds nothing.
    Wakeup,
    /// Spin while traffic flows, sleep in poll(2) after `idle_spins` empty passes. On veth
    /// the kernel copies frames in softirq on the same cores the workers run on, so a
    /// worker that never yields starves the very work it waits for.
    #[default]
    Adaptive,
}

impl PollMode {
    pub fn name(self) -> &'static str {
        match self {
            PollMode::Busy => "busy",
            PollMode::Wakeup => "wakeup",
            PollMode::Adaptive => "adaptive",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WorkerConfig {
    pub index: usize,
    /// The core to pin to; `None` leaves placement to the scheduler.
    pub core: Option<usize>,
    pub poll: PollMode,
    /// Frames taken off one rx ring per pass (≥ 32).
    pub batch: usize,
    /// Empty passes before an adaptive worker sleeps.
    pub idle_spins: u32,
    /// SCHED_FIFO priority for the worker's thread (`None`: the normal scheduler). Applied
    /// by whoever spawns the thread, with [`set_realtime`].
    pub rt_priority: Option<u8>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            index: 0,
            core: None,
            poll: PollMode::Adaptive,
            batch: 64,
            idle_spins: 256,
            rt_priority: None,
        }
    }
}

/// Passes between copies of the sockets' kernel statistics (a syscall each).
const KERNEL_STATS_EVERY: u64 = 1 << 14;

/// The longest a sleeping worker waits before looking at its stop flag again.
const MAX_SLEEP_MS: i32 = 50;

/// Largest frame the control thread can inject (ARP is 60 bytes; room for a small ICMP or
/// an announcement with a tag pushed later by egress).
pub const INJECT_FRAME_LEN: usize = 128;
/// Frames waiting per worker: a gratuitous ARP per address per port and a refresh per
/// neighbour in use fit, and a control thread that outruns the worker gets `Full` instead
/// of memory growth.
pub const INJECT_CAPACITY: usize = 256;
/// Injected frames taken per pass, so a full queue cannot delay the rx rings by more than
/// about one batch.
const INJECT_PER_PASS: usize = 64;

/// A frame the control thread wants sent from this worker: copied into a UMEM frame and
/// put through [`pipeline::egress::output`] (VLAN tag, bond member) on `port`.
#[derive(Clone, Copy)]
struct InjectFrame {
    port: PortId,
    len: u16,
    bytes: [u8; INJECT_FRAME_LEN],
}

/// Why [`Injector::inject`] refused a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error("frame of {0} bytes; at most {INJECT_FRAME_LEN} (and at least 14) can be injected")]
    BadLength(usize),
    #[error("the worker's injection queue is full")]
    Full,
}

/// The control side's handle on one worker's injection queue: a bounded lock-free queue,
/// preallocated, that the worker drains once per pass. Cloneable; any thread may inject.
#[derive(Clone)]
pub struct Injector {
    queue: Arc<ArrayQueue<InjectFrame>>,
}

impl core::fmt::Debug for Injector {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Injector")
            .field("queued", &self.queue.len())
            .finish()
    }
}

impl Injector {
    /// Queues `bytes` (a whole Ethernet frame) for transmission on `port`, which may be a
    /// logical interface: the worker applies egress (VLAN push, bond member) itself.
    pub fn inject(&self, port: PortId, bytes: &[u8]) -> Result<(), InjectError> {
        if bytes.len() > INJECT_FRAME_LEN || bytes.len() < crate::wire::ethernet::HEADER_LEN {
            return Err(InjectError::BadLength(bytes.len()));
        }
        let mut f = InjectFrame {
            port,
            len: bytes.len() as u16,
            bytes: [0; INJECT_FRAME_LEN],
        };
        f.bytes[..bytes.len()].copy_from_slice(bytes);
        self.queue.push(f).map_err(|_| InjectError::Full)
    }

    /// Frames queued and not yet taken by the worker.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// Where injected frames start in their UMEM chunk: the same headroom the kernel leaves in
/// front of received frames, so egress can push a VLAN tag in place.
const INJECT_HEADROOM: usize = 256;

/// The worker's side of one port: its socket and the frames staged for its tx ring.
struct PortIo {
    xsk: Xsk,
    /// Descriptors produced by this pass for this port's tx ring; capacity fixed at start.
    stage: Vec<XdpDesc>,
}

// Hot fields first (STYLE §6): everything the loop touches per pass, then the cold handles.
pub struct Worker {
    ports: Vec<Option<PortIo>>,
    pool: FramePool,
    rx_buf: Vec<XdpDesc>,
    addr_buf: Vec<u64>,
    umem: Umem,
    counters: Arc<WorkerCounters>,
    obs: Arc<WorkerObs>,
    tables: Arc<ArcSwap<Tables>>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    config: WorkerConfig,
    /// Scheduler state only this worker touches (`service::WorkerLocal`).
    local: crate::service::WorkerLocal,
    /// Frames from the control thread ([`Injector`]).
    inject: Arc<ArrayQueue<InjectFrame>>,
}

impl core::fmt::Debug for Worker {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Worker")
            .field("config", &self.config)
            .finish()
    }
}

impl Worker {
    /// `sockets[p]` is this worker's socket on port `p` (None for a port it does not serve).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: WorkerConfig,
        umem: Umem,
        pool: FramePool,
        sockets: Vec<Option<Xsk>>,
        tables: Arc<ArcSwap<Tables>>,
        shared: Arc<Shared>,
        counters: Arc<WorkerCounters>,
        stop: Arc<AtomicBool>,
        epoch: Instant,
    ) -> Self {
        let batch = config.batch.max(32);
        let nports = sockets.len().max(1);
        let ports = sockets
            .into_iter()
            .map(|s| {
                s.map(|xsk| PortIo {
                    xsk,
                    stage: Vec::with_capacity(batch * nports),
                })
            })
            .collect();
        let mut w = Worker {
            ports,
            pool,
            rx_buf: vec![XdpDesc::default(); batch],
            addr_buf: vec![0; batch * 2],
            umem,
            counters,
            obs: Arc::new(WorkerObs::default()),
            tables,
            shared,
            stop,
            epoch,
            config: WorkerConfig { batch, ..config },
            local: crate::service::WorkerLocal::new(config.index),
            inject: Arc::new(ArrayQueue::new(INJECT_CAPACITY)),
        };
        for p in 0..w.ports.len() {
            w.refill(p);
        }
        w
    }

    /// Reports latency, generation use and capture copies into `obs` (shared with the
    /// control thread) instead of a private default.
    pub fn with_observer(mut self, obs: Arc<WorkerObs>) -> Self {
        self.obs = obs;
        self
    }

    /// A handle for queueing frames this worker sends (gratuitous ARP, neighbour refresh).
    pub fn injector(&self) -> Injector {
        Injector {
            queue: self.inject.clone(),
        }
    }

    /// Runs until the stop flag is set. Pins the calling thread first.
    pub fn run(mut self) {
        if let Some(core) = self.config.core {
            core_affinity::set_for_current(core_affinity::CoreId { id: core });
        }
        let mut idle: u32 = 0;
        while !self.stop.load(Ordering::Relaxed) {
            let moved = self.pass();
            self.counters.polls.inc();
            if self.counters.polls.get().is_multiple_of(KERNEL_STATS_EVERY) {
                self.copy_kernel_stats();
            }
            if moved > 0 {
                self.counters.busy_polls.inc();
                idle = 0;
                continue;
            }
            idle = idle.saturating_add(1);
            match self.config.poll {
                PollMode::Busy => core::hint::spin_loop(),
                PollMode::Wakeup => self.sleep(),
                PollMode::Adaptive if idle >= self.config.idle_spins => self.sleep(),
                PollMode::Adaptive => core::hint::spin_loop(),
            }
        }
        self.copy_kernel_stats();
    }

    /// Copies each socket's kernel-side drop counters into the port counters (one
    /// getsockopt per socket: done every [`KERNEL_STATS_EVERY`] passes and at exit).
    fn copy_kernel_stats(&self) {
        for (io, pc) in self.ports.iter().zip(self.counters.ports.iter()) {
            if let Some(st) = io.as_ref().and_then(|io| io.xsk.kernel_stats()) {
                pc.xsk_rx_ring_full.set(st.rx_ring_full());
                pc.xsk_fill_empty.set(st.rx_fill_ring_empty_descs());
                pc.xsk_rx_dropped.set(st.rx_dropped());
            }
        }
    }

    /// One pass over every port: rx + pipeline, tx, completions, refill. Returns the number
    /// of frames received or completed.
    pub fn pass(&mut self) -> usize {
        let tables = self.tables.load();
        let elapsed = self.epoch.elapsed();
        let ctx = Ctx {
            tables: &tables,
            shared: &self.shared,
            counters: &self.counters,
            now_s: elapsed.as_secs() as u32,
            now_ns: elapsed.as_nanos() as u64,
            trace: None,
            local: &self.local,
        };
        // Looked at once per pass: a capture is the exception, and its session stays
        // alive (Arc) until this pass is done with it.
        let capture = self.obs.capture.current();
        let mut received = 0;
        for p in 0..self.ports.len() {
            received += Self::rx(
                p,
                &mut self.ports,
                &mut self.rx_buf,
                &self.umem,
                &mut self.pool,
                &ctx,
                &self.counters,
                &self.obs,
                capture.as_deref(),
                self.config.index as u16,
            );
        }
        if received > 0 {
            self.obs.note_generation(tables.generation, ctx.now_ns);
        }
        // Frames that waited for ARP (`pipeline::neigh`): one relaxed load when none do.
        if !self.shared.arp_pending.is_empty() {
            received += Self::drain_held(
                &mut self.ports,
                &self.umem,
                &mut self.pool,
                &ctx,
                capture.as_deref(),
                self.config.index as u16,
            );
        }
        if !self.inject.is_empty() {
            received += Self::drain_injected(
                &self.inject,
                &mut self.ports,
                &self.umem,
                &mut self.pool,
                &ctx,
                capture.as_deref(),
                self.config.index as u16,
            );
        }
        let mut moved = received;
        for p in 0..self.ports.len() {
            self.flush(p);
            moved += self.reap(p);
            self.refill(p);
        }
        // Once per pass, for the leak check (`free_frames`).
        self.counters
            .free_frames
            .store(self.pool.len() as u64, Ordering::Relaxed);
        moved
    }

    #[allow(unsafe_code, clippy::too_many_arguments)]
    fn rx(
        p: usize,
        ports: &mut [Option<PortIo>],
        rx_buf: &mut [XdpDesc],
        umem: &Umem,
        pool: &mut FramePool,
        ctx: &Ctx,
        counters: &WorkerCounters,
        obs: &WorkerObs,
        capture: Option<&CaptureSession>,
        worker: u16,
    ) -> usize {
        let Some(io) = ports[p].as_mut() else {
            return 0;
        };
        let n = io.xsk.rx.consume(rx_buf);
        if n == 0 {
            return 0;
        }
        // One clock read per batch, not per frame: the batch's time divided by its frames.
        let started = Instant::now();
        let pc = &counters.ports[p];
        pc.rx_packets.add(n as u64);
        counters.rx_batches.inc();
        let meta = RxMeta {
            port: PortId(p as u16),
            vlan: None,
        };
        let cap_rx = capture.filter(|c| p < 64 && c.rx_ports & (1 << p) != 0);
        let cap_tx = capture.filter(|c| c.tx_ports != 0);
        for d in &rx_buf[..n] {
            pc.rx_bytes.add(d.len as u64);
            let chunk_base = umem.chunk_of(d.addr);
            // SAFETY: the descriptor just came off our rx ring, so this worker owns the
            // frame until it puts it on a tx or fill ring; no other reference to it exists.
            let Some(chunk) = (unsafe { umem.chunk_mut(d.addr) }) else {
                counters.dropped(DropReason::Malformed);
                continue;
            };
            let mut frame = Frame::new(chunk, (d.addr - chunk_base) as usize, d.len as usize);
            if let Some(c) = cap_rx {
                c.offer(frame.data(), p as u16, Direction::In, worker, ctx.now_ns);
            }
            match pipeline::process(&mut frame, &meta, ctx) {
                Action::Tx(out) => {
                    let tap = cap_tx.map(|c| (c, worker, ctx.now_ns));
                    Self::stage_tx(ports, pool, counters, tap, out, &frame, d.addr, chunk_base);
                }
                Action::Drop(reason) => {
                    counters.dropped(reason);
                    pool.free(d.addr);
                }
            }
        }
        let ns = started.elapsed().as_nanos() as u64;
        obs.latency.record_n(ns / n as u64, n as u64);
        n
    }

    /// Copies up to [`INJECT_PER_PASS`] queued frames into free UMEM frames and stages them
    /// on their ports' tx rings. Returns how many were taken off the queue.
    fn drain_injected(
        queue: &ArrayQueue<InjectFrame>,
        ports: &mut [Option<PortIo>],
        umem: &Umem,
        pool: &mut FramePool,
        ctx: &Ctx,
        capture: Option<&CaptureSession>,
        worker: u16,
    ) -> usize {
        let mut taken = 0;
        while taken < INJECT_PER_PASS {
            let Some(f) = queue.pop() else {
                break;
            };
            taken += 1;
            let len = f.len as usize;
            let staged = Self::send_copy(
                ports,
                umem,
                pool,
                ctx,
                capture,
                worker,
                |buf| {
                    buf[..len].copy_from_slice(&f.bytes[..len]);
                    len
                },
                |frame| pipeline::egress::output(frame, f.port, ctx),
            );
            if staged {
                ctx.counters.event(Event::FramesInjected);
            }
        }
        taken
    }

    /// Sends the frames held for ARP whose next hop has resolved (copied into free UMEM
    /// frames; any worker may send them) and drops the expired ones. Returns how many went
    /// out or were dropped for lack of a frame.
    fn drain_held(
        ports: &mut [Option<PortIo>],
        umem: &Umem,
        pool: &mut FramePool,
        ctx: &Ctx,
        capture: Option<&CaptureSession>,
        worker: u16,
    ) -> usize {
        let mut taken = 0;
        pipeline::neigh::release_held(ctx, |held| {
            taken += 1;
            Self::send_copy(
                ports,
                umem,
                pool,
                ctx,
                capture,
                worker,
                |buf| held.copy_to(buf),
                |frame| pipeline::neigh::send_held(frame, ctx, held.port, held.neighbour),
            );
        });
        taken
    }

    /// Takes a free UMEM frame, lets `fill` write a frame into it after the headroom (returns
    /// its length), runs `decide` on it and stages it on the chosen port's tx ring. Frames that
    /// do not start in the worker's own rx path (injected by the control side, held for ARP)
    /// all go out this way. Returns whether the frame was staged; every other outcome is
    /// counted and the UMEM frame goes back to the pool.
    #[allow(unsafe_code, clippy::too_many_arguments)]
    fn send_copy(
        ports: &mut [Option<PortIo>],
        umem: &Umem,
        pool: &mut FramePool,
        ctx: &Ctx,
        capture: Option<&CaptureSession>,
        worker: u16,
        fill: impl FnOnce(&mut [u8]) -> usize,
        decide: impl FnOnce(&mut Frame) -> Action,
    ) -> bool {
        // Injected and held frames meet the same shortage, counted under one name.
        let Some(addr) = pool.alloc() else {
            ctx.counters.dropped(DropReason::InjectNoFrame);
            return false;
        };
        let chunk_base = umem.chunk_of(addr);
        // SAFETY: the address just came out of this worker's free pool, so the worker owns
        // the frame and nothing else references it until it goes on a tx ring.
        let Some(chunk) = (unsafe { umem.chunk_mut(addr) }) else {
            ctx.counters.dropped(DropReason::Malformed);
            return false;
        };
        let len = fill(&mut chunk[INJECT_HEADROOM..]);
        let mut frame = Frame::new(chunk, INJECT_HEADROOM, len);
        let out = match decide(&mut frame) {
            Action::Tx(out) => out,
            Action::Drop(reason) => {
                ctx.counters.dropped(reason);
                pool.free(addr);
                return false;
            }
        };
        let tap = capture.map(|c| (c, worker, ctx.now_ns));
        Self::stage_tx(
            ports,
            pool,
            ctx.counters,
            tap,
            out,
            &frame,
            addr,
            chunk_base,
        )
    }

    /// Offers a frame leaving on `out` to the capture tap (when its tx side covers `out`) and
    /// stages it on `out`'s tx ring. A full ring or a port without a socket drops it, counted,
    /// and its UMEM frame (`addr`) goes back to the pool. Returns whether it was staged.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn stage_tx(
        ports: &mut [Option<PortIo>],
        pool: &mut FramePool,
        counters: &WorkerCounters,
        tap: Option<(&CaptureSession, u16, u64)>,
        out: PortId,
        frame: &Frame,
        addr: u64,
        chunk_base: u64,
    ) -> bool {
        if let Some((c, worker, now_ns)) = tap
            && out.index() < 64
            && c.tx_ports & (1 << out.index()) != 0
        {
            c.offer(frame.data(), out.0, Direction::Out, worker, now_ns);
        }
        let desc = XdpDesc {
            addr: chunk_base + frame.start() as u64,
            len: frame.len() as u32,
            options: 0,
        };
        match ports.get_mut(out.index()).and_then(|o| o.as_mut()) {
            Some(o) if o.stage.len() < o.stage.capacity() => {
                o.stage.push(desc);
                true
            }
            Some(_) => {
                counters.dropped(DropReason::TxRingFull);
                pool.free(addr);
                false
            }
            None => {
                counters.dropped(DropReason::PortDown);
                pool.free(addr);
                false
            }
        }
    }

    fn flush(&mut self, p: usize) {
        let Some(io) = self.ports[p].as_mut() else {
            return;
        };
        if io.stage.is_empty() {
            return;
        }
        let sent = io.xsk.tx.produce(&io.stage);
        let pc = &self.counters.ports[p];
        pc.tx_packets.add(sent as u64);
        for d in &io.stage[..sent] {
            pc.tx_bytes.add(d.len as u64);
        }
        for d in &io.stage[sent..] {
            self.counters.dropped(DropReason::TxRingFull);
            pc.drops.inc();
            self.pool.free(d.addr);
        }
        io.stage.clear();
        // Copy mode transmits inside sendto(2), a bounded number of frames per call; kick
        // until the kernel has taken everything (a few calls per batch, never per frame).
        for _ in 0..8 {
            if !io.xsk.tx.needs_wakeup() || io.xsk.tx.outstanding() == 0 {
                break;
            }
            io.xsk.kick_tx();
            self.counters.tx_kicks.inc();
        }
    }

    fn reap(&mut self, p: usize) -> usize {
        let Some(io) = self.ports[p].as_mut() else {
            return 0;
        };
        let n = io.xsk.comp.consume(&mut self.addr_buf);
        for &a in &self.addr_buf[..n] {
            self.pool.free(a);
        }
        n
    }

    fn refill(&mut self, p: usize) {
        let Some(io) = self.ports[p].as_mut() else {
            return;
        };
        let want = (io.xsk.fill.free(self.addr_buf.len() as u32) as usize).min(self.addr_buf.len());
        if want == 0 {
            return;
        }
        let got = self.pool.alloc_into(&mut self.addr_buf[..want]);
        let put = io.xsk.fill.produce(&self.addr_buf[..got]);
        for &a in &self.addr_buf[put..got] {
            self.pool.free(a);
        }
        if io.xsk.fill.needs_wakeup() {
            io.xsk.kick_rx();
            self.counters.rx_kicks.inc();
        }
    }

    #[allow(unsafe_code)]
    fn sleep(&mut self) {
        const MAX_FDS: usize = 64;
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; MAX_FDS];
        let mut n = 0;
        for io in self.ports.iter().flatten().take(MAX_FDS) {
            fds[n] = libc::pollfd {
                fd: io.xsk.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            n += 1;
        }
        self.counters.sleeps.inc();
        // SAFETY: fds[..n] are initialised pollfd structs on our stack.
        unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, MAX_SLEEP_MS) };
    }
}

impl Worker {
    /// The descriptor of this worker's socket on port `p`, for XSKMAP registration.
    pub fn socket_fd(&self, p: usize) -> Option<std::os::fd::RawFd> {
        self.ports.get(p)?.as_ref().map(|io| io.xsk.fd())
    }
}

/// Puts the calling thread under SCHED_FIFO at `priority` (1-99).
///
/// Why a worker wants it: on veth (copy mode) the kernel copies frames into the worker's
/// rx ring from the device's NAPI thread or softirq on the *same* core. At equal priority
/// the scheduler lets that NAPI run for a whole time slice — it fills the rx ring, empties
/// the fill ring and then spends the rest of its slice dropping frames it already paid to
/// receive — before the worker drains anything. Above it, the worker is run the moment a
/// NAPI poll wakes it, so the two take turns a batch at a time; for that the worker must
/// sleep whenever it is idle (`PollMode::Wakeup`), or it would starve the NAPI it waits
/// for (configuration rejects `busy` with a priority).
#[allow(unsafe_code)]
pub fn set_realtime(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority),
    };
    // SAFETY: pid 0 is the calling thread; param is a valid sched_param on our stack.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injector_bounds_length_and_queue() {
        let inj = Injector {
            queue: Arc::new(ArrayQueue::new(2)),
        };
        assert_eq!(
            inj.inject(PortId(0), &[0; INJECT_FRAME_LEN + 1]),
            Err(InjectError::BadLength(INJECT_FRAME_LEN + 1))
        );
        assert_eq!(
            inj.inject(PortId(0), &[0; 10]),
            Err(InjectError::BadLength(10))
        );
        assert_eq!(inj.inject(PortId(1), &[7; 60]), Ok(()));
        assert_eq!(inj.inject(PortId(2), &[8; INJECT_FRAME_LEN]), Ok(()));
        assert_eq!(inj.inject(PortId(3), &[9; 60]), Err(InjectError::Full));
        assert_eq!(inj.queued(), 2);
        let f = inj.queue.pop().unwrap();
        assert_eq!((f.port, f.len), (PortId(1), 60));
        assert!(f.bytes[..60].iter().all(|&b| b == 7));
    }
}
