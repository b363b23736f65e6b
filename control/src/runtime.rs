//! Bringing the fast path up and down: attach the steering program to every port, create
//! each worker's UMEM and sockets, register the sockets in the ports' XSKMAPs, start the
//! pinned workers; on stop, join them and detach every program.

use afgate_bpf::{ModeRequest, PortSteering, SteerConfig, XdpMode};
use afgate_dataplane::counters::WorkerCounters;
use afgate_dataplane::observe::{CaptureCtl, WorkerObs};
use afgate_dataplane::tables::PortId;
use afgate_dataplane::tables::{Shared, Tables};
use afgate_dataplane::worker::{InjectError, Injector, Worker, WorkerConfig};
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
}

impl Runtime {
    pub fn start(
        cfg: RuntimeConfig,
        tables: Tables,
        shared: Shared,
    ) -> Result<Runtime, RuntimeError> {
        if cfg.workers.is_empty() {
            return Err(RuntimeError::NoWorkers);
        }
        let mut steering = Vec::with_capacity(cfg.ports.len());
        let mut attached = Vec::with_capacity(cfg.ports.len());
        for p in &cfg.ports {
            let s = PortSteering::attach(&p.device, &p.steer, p.xdp_mode).map_err(|source| {
                RuntimeError::Attach {
                    port: p.name.clone(),
                    device: p.device.clone(),
                    source,
                }
            })?;
            attached.push(Attached {
                port: p.name.clone(),
                device: p.device.clone(),
                ifindex: s.ifindex(),
                xdp_mode: s.mode(),
                replaced_stale: s.replaced_stale(),
                sockets: Vec::new(),
            });
            steering.push(s);
        }
        let tables = Arc::new(ArcSwap::from_pointee(tables));
        let shared = Arc::new(shared);
        let stop = Arc::new(AtomicBool::new(false));
        let epoch = Instant::now();
        let mut workers = Vec::new();
        let mut counters = Vec::new();
        let capture = Arc::new(CaptureCtl::default());
        let mut obs = Vec::new();
        let mut injectors = Vec::new();
        for (w, wcfg) in cfg.workers.iter().enumerate() {
            let xerr = |source| RuntimeError::Xsk { worker: w, source };
            let (umem, pool) = Umem::new(cfg.layout).map_err(xerr)?;
            let mut sockets = Vec::with_capacity(cfg.ports.len());
            for (i, p) in cfg.ports.iter().enumerate() {
                let xsk =
                    Xsk::new(&umem, &p.device, w as u32, cfg.rings, cfg.bind).map_err(xerr)?;
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
        let threads = workers
            .into_iter()
            .enumerate()
            .map(|(w, worker)| {
                std::thread::Builder::new()
                    .name(format!("afgate-w{w}"))
                    .spawn(move || worker.run())
                    .expect("spawning a worker thread")
            })
            .collect();
        Ok(Runtime {
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
