//! Bringing the fast path up and down: attach the steering program to every port, create
//! each worker's UMEM and sockets, register the sockets in the ports' XSKMAPs, start the
//! pinned workers; on stop, join them and detach every program.

use afgate_bpf::{ModeRequest, PortSteering, SteerConfig, XdpMode};
use afgate_dataplane::counters::WorkerCounters;
use afgate_dataplane::observe::{CaptureCtl, WorkerObs};
use afgate_dataplane::tables::PortId;
use afgate_dataplane::tables::{Shared, Tables};
use afgate_dataplane::worker::{InjectError, Injector, Worker, WorkerConfig, set_realtime};
use afgate_dataplane::xsk::socket::RingSizes;
use afgate_dataplane::xsk::{BindMode, Umem, UmemLayout, Xsk};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct PortSpec {
    pub name: String,
    pub device: String,
    pub xdp_mode: ModeRequest,
    pub steer: SteerConfig,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    pub ports: Vec<PortSpec>,
    /// One worker per entry; worker `i` serves queue `i` of every port.
    pub workers: Vec<WorkerConfig>,
    pub layout: UmemLayout,
    pub rings: RingSizes,
    pub bind: BindMode,
    /// The dataplane clock's zero; `None`: now. A shared conntrack segment has its own
    /// (`conntrack::Segment::epoch`), so that flow timestamps mean the same in every process.
    pub epoch: Option<Instant>,
    /// Taking over from a predecessor (`crate::handover`): bind while its sockets are
    /// still being released (a queue stays busy briefly after they close), and attach the
    /// programs only once the new sockets are registered.
    pub takeover: bool,
}

/// What start-up attached, for the start-up report.
#[derive(Debug, Clone)]
pub struct Attached {
    pub port: String,
    pub device: String,
    pub ifindex: u32,
    pub xdp_mode: XdpMode,
    pub replaced_stale: bool,
    /// (worker, queue, zero-copy) per socket.
    pub sockets: Vec<(usize, u32, bool)>,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("port {port}: attaching XDP to {device}: {source}")]
    Attach {
        port: String,
        device: String,
        source: afgate_bpf::Error,
    },
    #[error("port {port}: registering worker {worker}'s socket: {source}")]
    Register {
        port: String,
        worker: usize,
        source: afgate_bpf::Error,
    },
    #[error("worker {worker}: {source}")]
    Xsk {
        worker: usize,
        source: afgate_dataplane::xsk::XskError,
    },
    #[error("no workers configured")]
    NoWorkers,
    #[error("workers.rt_priority: worker {worker} could not get SCHED_FIFO: {source}")]
    Realtime {
        worker: usize,
        source: std::io::Error,
    },
}

pub struct Runtime {
    steering: Vec<PortSteering>,
    threads: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pub tables: Arc<ArcSwap<Tables>>,
    pub shared: Arc<Shared>,
    pub counters: Vec<Arc<WorkerCounters>>,
    /// Per worker: latency histogram, generation use, capture taps (`control::api`).
    pub obs: Vec<Arc<WorkerObs>>,
    pub capture: Arc<CaptureCtl>,
    pub attached: Vec<Attached>,
    pub epoch: Instant,
    /// Per worker: its queue of frames to send (`crate::neigh_ctl`).
    pub injectors: Vec<Injector>,
    /// When the workers started with their sockets registered (a takeover's gap ends here).
    pub forwarding_since: Instant,
    /// A takeover with a hold ([`Prepared::hold_predecessor`]): frames the predecessor's
    /// programs dropped under it, summed over ports.
    pub held_drops: Option<u64>,
}

impl Runtime {
    pub fn start(
        cfg: RuntimeConfig,
        tables: Tables,
        shared: Shared,
    ) -> Result<Runtime, RuntimeError> {
        Runtime::prepare(cfg, tables, shared)?.start()
    }

    /// The slow half of start-up, which touches no port's traffic: load the steering
    /// programs (not attached) and create the UMEMs. A takeover does this before asking its
    /// predecessor to let go of the queues.
    pub fn prepare(
        cfg: RuntimeConfig,
        tables: Tables,
        shared: Shared,
    ) -> Result<Prepared, RuntimeError> {
        if cfg.workers.is_empty() {
            return Err(RuntimeError::NoWorkers);
        }
        let mut steering = Vec::with_capacity(cfg.ports.len());
        for p in &cfg.ports {
            let s =
                PortSteering::load(&p.device, &p.steer).map_err(|source| RuntimeError::Attach {
                    port: p.name.clone(),
                    device: p.device.clone(),
                    source,
                })?;
            steering.push(s);
        }
        if cfg.takeover {
            for (s, p) in steering.iter_mut().zip(&cfg.ports) {
                match s.adopt_attached_xsks() {
                    Ok(true) => {}
                    Ok(false) => eprintln!(
                        "afgate: port {}: no predecessor program on {}; frames reach the kernel until ours is attached",
                        p.name, p.device
                    ),
                    Err(e) => eprintln!("afgate: port {}: {e}", p.name),
                }
            }
        }
        let umems = (0..cfg.workers.len())
            .map(|w| {
                Umem::new(cfg.layout).map_err(|source| RuntimeError::Xsk { worker: w, source })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Prepared {
            cfg,
            tables,
            shared,
            steering,
            umems,
            holding: false,
        })
    }

    /// Publishes a new snapshot; workers pick it up at their next batch.
    pub fn publish(&self, tables: Tables) {
        self.tables.store(Arc::new(tables));
    }

    /// Queues `frame` for transmission on `port` (logical ports allowed) by worker 0.
    pub fn inject(&self, port: PortId, frame: &[u8]) -> Result<(), InjectError> {
        self.injectors[0].inject(port, frame)
    }

    /// Seconds on the dataplane clock (what neighbour and conntrack timestamps use).
    pub fn now_s(&self) -> u32 {
        self.epoch.elapsed().as_secs() as u32
    }

    /// Stops and joins the workers, closing their sockets, and leaves the XDP programs
    /// attached: frames fall back to the kernel until a successor registers its own
    /// sockets (`crate::handover`).
    pub fn stop_workers(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// Stops the workers, then detaches every XDP program. Sockets close with their
    /// workers, so frames arriving in between fall back to the kernel (XDP_PASS).
    pub fn stop(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let mut errors = Vec::new();
        for s in self.steering.drain(..) {
            let idx = s.ifindex();
            if let Err(e) = s.detach() {
                errors.push(format!("detaching XDP from ifindex {idx}: {e}"));
            }
        }
        errors
    }
}

/// A runtime whose programs are loaded and UMEMs created ([`Runtime::prepare`]), not yet
/// bound to any queue.
pub struct Prepared {
    cfg: RuntimeConfig,
    tables: Tables,
    shared: Shared,
    steering: Vec<PortSteering>,
    umems: Vec<(Umem, afgate_dataplane::xsk::FramePool)>,
    /// A hold runs in at least one predecessor program.
    holding: bool,
}

impl Prepared {
    /// Before a takeover's predecessor lets go of the queues: its programs drop frames for
    /// queues without a socket for at most `hold` (instead of passing them to a kernel that
    /// may forward them un-NATed or reset NATed flows); [`Self::start`] ends the hold once
    /// our program is installed. Returns on how many ports a hold runs; a port whose
    /// predecessor cannot hold is reported and falls back to the kernel in the gap.
    pub fn hold_predecessor(&mut self, hold: std::time::Duration) -> usize {
        if !self.cfg.takeover || hold.is_zero() {
            return 0;
        }
        let mut n = 0;
        for (s, p) in self.steering.iter_mut().zip(&self.cfg.ports) {
            match s.hold_predecessor(hold) {
                Ok(true) => n += 1,
                Ok(false) => eprintln!(
                    "afgate: port {}: the predecessor's program cannot hold; frames reach the kernel in the gap",
                    p.name
                ),
                Err(e) => eprintln!("afgate: port {}: {e}", p.name),
            }
        }
        self.holding = n > 0;
        n
    }

    /// Binds the sockets, registers them, attaches the programs and starts the workers.
    /// A fresh start attaches first (as drivers expect: program, then sockets); a takeover
    /// attaches last, replacing its predecessor's program with one whose XSKMAP is already
    /// full, so frames fall back to the kernel only while the queues change hands.
    pub fn start(self) -> Result<Runtime, RuntimeError> {
        let Prepared {
            cfg,
            tables,
            shared,
            mut steering,
            umems,
            holding,
        } = self;
        // One thread per port: each attach is a netlink round trip with driver work behind
        // it, and during a takeover they are all part of the forwarding gap.
        let install = |steering: &mut [PortSteering]| {
            std::thread::scope(|scope| {
                let jobs: Vec<_> = steering
                    .iter_mut()
                    .zip(&cfg.ports)
                    .map(|(s, p)| scope.spawn(move || s.install(p.xdp_mode).map_err(|e| (p, e))))
                    .collect();
                for j in jobs {
                    if let Ok(Err((p, source))) = j.join() {
                        return Err(RuntimeError::Attach {
                            port: p.name.clone(),
                            device: p.device.clone(),
                            source,
                        });
                    }
                }
                Ok::<(), RuntimeError>(())
            })
        };
        if !cfg.takeover {
            install(&mut steering)?;
        }
        let mut attached: Vec<Attached> = steering
            .iter()
            .zip(&cfg.ports)
            .map(|(s, p)| Attached {
                port: p.name.clone(),
                device: p.device.clone(),
                ifindex: s.ifindex(),
                xdp_mode: s.mode(),
                replaced_stale: s.replaced_stale(),
                sockets: Vec::new(),
            })
            .collect();
        let tables = Arc::new(ArcSwap::from_pointee(tables));
        let shared = Arc::new(shared);
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = cfg.epoch.unwrap_or_else(Instant::now);
        let mut workers = Vec::new();
        let mut counters = Vec::new();
        let capture = Arc::new(CaptureCtl::default());
        let mut obs = Vec::new();
        let mut injectors = Vec::new();
        for ((w, wcfg), (umem, pool)) in cfg.workers.iter().enumerate().zip(umems) {
            let xerr = |source| RuntimeError::Xsk { worker: w, source };
            let mut sockets = Vec::with_capacity(cfg.ports.len());
            for (i, p) in cfg.ports.iter().enumerate() {
                let xsk = bind_retrying(&umem, &p.device, w as u32, &cfg).map_err(xerr)?;
                // A full tx ring's worth per sendto(2) where the kernel allows it (6.17+);
                // older kernels keep their 32 and the worker kicks again.
                let _ = xsk.set_tx_budget(cfg.rings.tx);
                attached[i].sockets.push((w, w as u32, xsk.is_zerocopy()));
                sockets.push(Some(xsk));
            }
            let c = Arc::new(WorkerCounters::new(cfg.ports.len()));
            let worker = Worker::new(
                WorkerConfig { index: w, ..*wcfg },
                umem,
                pool,
                sockets,
                tables.clone(),
                shared.clone(),
                c.clone(),
                stop.clone(),
                epoch,
            );
            let o = Arc::new(WorkerObs::new(capture.clone()));
            let worker = worker.with_observer(o.clone());
            obs.push(o);
            // Register only once the worker's fill rings are stocked, so the first
            // redirected frames have somewhere to land.
            for (i, p) in cfg.ports.iter().enumerate() {
                let fd = worker.socket_fd(i).expect("socket created above");
                steering[i].register_xsk(w as u32, fd).map_err(|source| {
                    RuntimeError::Register {
                        port: p.name.clone(),
                        worker: w,
                        source,
                    }
                })?;
            }
            counters.push(c);
            injectors.push(worker.injector());
            workers.push(worker);
        }
        // Each thread reports whether it got its scheduling class before it forwards
        // anything; a refusal stops them all (dropping `rt` below) instead of running
        // differently from what was configured.
        let (sched_tx, sched_rx) = std::sync::mpsc::channel();
        let threads = workers
            .into_iter()
            .enumerate()
            .map(|(w, worker)| {
                let prio = cfg.workers[w].rt_priority;
                let report = sched_tx.clone();
                std::thread::Builder::new()
                    .name(format!("afgate-w{w}"))
                    .spawn(move || {
                        let got = prio.map_or(Ok(()), set_realtime);
                        let ok = got.is_ok();
                        let _ = report.send((w, got));
                        drop(report);
                        if ok {
                            worker.run();
                        }
                    })
                    .expect("spawning a worker thread")
            })
            .collect::<Vec<_>>();
        drop(sched_tx);
        let mut refused = None;
        for (w, got) in sched_rx.iter() {
            if let Err(e) = got {
                refused.get_or_insert(RuntimeError::Realtime {
                    worker: w,
                    source: e,
                });
            }
        }
        let forwarding_since = Instant::now();
        let mut rt = Runtime {
            forwarding_since,
            steering,
            threads,
            stop,
            tables,
            shared,
            counters,
            obs,
            capture,
            attached,
            epoch,
            injectors,
            held_drops: None,
        };
        if let Some(e) = refused {
            return Err(e);
        }
        if cfg.takeover {
            // The sockets already receive through the predecessor's XSKMAPs; ours hold the
            // same sockets, so swapping the programs now moves no frame to the kernel. An
            // error drops `rt`: workers stopped, programs detached (fail-open).
            install(&mut rt.steering)?;
            for (a, s) in rt.attached.iter_mut().zip(&rt.steering) {
                a.xdp_mode = s.mode();
                a.replaced_stale = s.replaced_stale();
            }
            // Our program runs with every socket registered: the fail-open fallback must be
            // back for when we stop or die. A failure here only leaves the deadline to end it.
            let mut held = 0;
            for (s, p) in rt.steering.iter_mut().zip(&cfg.ports) {
                match s.end_hold() {
                    Ok(n) => held += n,
                    Err(e) => eprintln!("afgate: port {}: ending the handover hold: {e}", p.name),
                }
            }
            rt.held_drops = holding.then_some(held);
        }
        Ok(rt)
    }
}

/// Binds an AF_XDP socket, retrying for up to `cfg.busy_wait` while the queue is busy: the
/// kernel releases a closed socket's hold on its queue asynchronously.
fn bind_retrying(
    umem: &Umem,
    dev: &str,
    queue: u32,
    cfg: &RuntimeConfig,
) -> Result<Xsk, afgate_dataplane::xsk::XskError> {
    let wait = if cfg.takeover {
        std::time::Duration::from_secs(2)
    } else {
        std::time::Duration::ZERO
    };
    let deadline = Instant::now() + wait;
    loop {
        match Xsk::new(umem, dev, queue, cfg.rings, cfg.bind) {
            Err(afgate_dataplane::xsk::XskError::Socket { ref reason, .. })
                if reason.contains("busy") && Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_micros(200));
            }
            r => return r,
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for s in self.steering.drain(..) {
            let _ = s.detach();
        }
    }
}
