//! The benchmark lab, built with `afgate_tests::lab`:
//!
//! ```text
//!   gen ns                     dut ns                               sink ns
//!   g0 10.0.1.2/24 ──veth── d0 10.0.1.1/24 │ d1 10.0.2.1/24 ──veth── s0 10.0.2.2/24
//!                              (afgate | kernel ip_forward | XDP devmap redirect
//!                               | minimal AF_XDP forwarder)
//!   g1 ─────────────────────────── veth ───────────────────────────── s1     ("wire")
//! ```
//!
//! Every device is a dataplane end (GRO/TSO/GSO and TX checksum offload off). The DUT knows
//! the sink's MAC statically (kernel neighbour entry, afgate config), so no ARP happens
//! during a run. Dropping the [`BenchLab`] deletes the namespaces and everything in them.

use afgate_tests::{End, Lab, Mac, Netns, VethSpec};
use anyhow::{Context, Result, bail};
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub const GEN_MAC: Mac = Mac::lab(0xb1, 2);
pub const DUT_IN_MAC: Mac = Mac::lab(0xb1, 1);
pub const DUT_OUT_MAC: Mac = Mac::lab(0xb2, 1);
pub const SINK_MAC: Mac = Mac::lab(0xb2, 2);
pub const WIRE_GEN_MAC: Mac = Mac::lab(0xb3, 2);
pub const WIRE_SINK_MAC: Mac = Mac::lab(0xb3, 1);

pub const GEN_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const SINK_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);

pub struct BenchLab {
    pub lab: Lab,
    pub generator: Netns,
    pub dut: Netns,
    pub sink: Netns,
}

impl BenchLab {
    pub fn build() -> Result<BenchLab> {
        let lab = Lab::builder()
            .netns("gen")
            .netns("dut")
            .netns("sink")
            .veth(VethSpec::new(
                End::new("gen", "g0")
                    .mac(GEN_MAC)
                    .addr("10.0.1.2/24")
                    .dataplane(),
                End::new("dut", "d0")
                    .mac(DUT_IN_MAC)
                    .addr("10.0.1.1/24")
                    .dataplane(),
            ))
            .veth(VethSpec::new(
                End::new("dut", "d1")
                    .mac(DUT_OUT_MAC)
                    .addr("10.0.2.1/24")
                    .dataplane(),
                End::new("sink", "s0")
                    .mac(SINK_MAC)
                    .addr("10.0.2.2/24")
                    .dataplane(),
            ))
            .veth(VethSpec::new(
                End::new("gen", "g1").mac(WIRE_GEN_MAC).dataplane(),
                End::new("sink", "s1").mac(WIRE_SINK_MAC).dataplane(),
            ))
            .neigh("dut", "d1", SINK_IP, SINK_MAC)
            .neigh("gen", "g0", Ipv4Addr::new(10, 0, 1, 1), DUT_IN_MAC)
            .build()
            .context("building the benchmark lab (needs root)")?;
        Ok(BenchLab {
            generator: lab.ns("gen").clone(),
            dut: lab.ns("dut").clone(),
            sink: lab.ns("sink").clone(),
            lab,
        })
    }

    /// Kernel forwarding on or off in the DUT.
    pub fn ip_forward(&self, on: bool) -> Result<()> {
        self.dut
            .sysctl("net.ipv4.ip_forward", if on { "1" } else { "0" })
    }

    /// Receive packet steering of `dev`'s rx queue 0 to the CPUs in `mask` (hex), so the
    /// kernel's forwarding runs on the DUT's core rather than the generator's.
    pub fn rps(&self, ns: &Netns, dev: &str, mask: &str) -> Result<()> {
        ns.exec_ok(&[
            "sh",
            "-c",
            &format!("echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"),
        ])
        .map(drop)
    }

    /// Moves `dev`'s receive NAPI into its own kthread (`napi/<dev>-<id>`) pinned to `core`,
    /// SCHED_FIFO if `fifo`.
    /// On veth the receive work (XDP, devmap redirect, the copy into an AF_XDP socket, the
    /// stack) otherwise runs in softirq on the core that *sent* the frame, i.e. the
    /// generator's, so the forwarder under test would be measured on the load core. veth has
    /// a NAPI only while an XDP program is attached (or GRO is on), and drops it, with its
    /// kthread, when the program goes: call this after every attach. Returns the kthread's
    /// pid.
    ///
    /// `fifo` makes it preempt the processes on its core as a NIC's softirq would. Under
    /// overload a FIFO kthread starves them (receive livelock, no ksoftirqd-style back-off):
    /// right for the load side, whose spinning generator would otherwise share the core with
    /// it and let the veth ring overflow; wrong for the DUT, where the forwarder must get its
    /// share of the core to drain what the kthread copies into its socket.
    pub fn pin_napi(&self, ns: &Netns, dev: &str, core: usize, fifo: bool) -> Result<i32> {
        let prefix = format!("napi/{dev}-");
        let path = format!("/sys/class/net/{dev}/threaded");
        // Restart the kthread so the new pid tells ours from another namespace's `dev`.
        ns.exec_ok(&["sh", "-c", &format!("echo 0 > {path}")])
            .with_context(|| format!("{}: {dev}: threaded NAPI off", ns.name()))?;
        let before = napi_kthreads(&prefix)?;
        ns.exec_ok(&["sh", "-c", &format!("echo 1 > {path}")])
            .with_context(|| {
                format!(
                    "{}: {dev}: threaded NAPI (needs an XDP program on it)",
                    ns.name()
                )
            })?;
        let new: Vec<i32> = napi_kthreads(&prefix)?
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        let [pid] = new[..] else {
            bail!(
                "{}: {dev}: expected one new {prefix}* kthread, found {new:?}",
                ns.name()
            );
        };
        let (core_s, pid_s) = (core.to_string(), pid.to_string());
        let taskset = ["taskset", "-pc", &core_s, &pid_s];
        let chrt = ["chrt", "-f", "-p", "50", &pid_s];
        let cmds: &[&[&str]] = if fifo {
            &[&taskset, &chrt]
        } else {
            &[&taskset]
        };
        for argv in cmds {
            let out = std::process::Command::new(argv[0])
                .args(&argv[1..])
                .output()
                .with_context(|| format!("running {}", argv[0]))?;
            if !out.status.success() {
                bail!(
                    "{argv:?} ({prefix}* on core {core}): {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        Ok(pid)
    }

    /// afgate's configuration for the DUT: `workers` (its `workers:` section), ports d0 and
    /// d1, the sink as a static neighbour.
    pub fn afgate_config(&self, name: &str, workers: &str) -> Result<PathBuf> {
        let y = format!(
            "# afgate-bench l3fwd DUT\n\
             {workers}\
             ports:\n\
             \x20 - name: d0\n    device: d0\n    role: uplink\n    addresses: [10.0.1.1/24]\n\
             \x20 - name: d1\n    device: d1\n    role: uplink\n    addresses: [10.0.2.1/24]\n\
             neighbors:\n\
             \x20 - {{ ip: {SINK_IP}, mac: \"{SINK_MAC}\", dev: d1 }}\n"
        );
        let path = self.lab.tmp().join(format!("afgate-{name}.yaml"));
        std::fs::write(&path, y)?;
        Ok(path)
    }
}

/// Pids of the kernel threads whose name starts with `prefix`.
fn napi_kthreads(prefix: &str) -> Result<Vec<i32>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        let e = e?;
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // A process may exit between readdir and read.
        if let Ok(comm) = std::fs::read_to_string(e.path().join("comm"))
            && comm.trim_end().starts_with(prefix)
        {
            out.push(pid);
        }
    }
    Ok(out)
}
