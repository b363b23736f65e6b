//! Helpers for the reliability lab tests (tests/tests/reliability.rs): afgate's control API
//! from a test, the `afgate-stress` load generator, XPS steering of a namespace's veth
//! queues, and stalling one worker thread of a running afgate.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::Netns;
use crate::process::{Proc, afgate_bin, workspace_bin};

/// The afgate-stress binary (`$AFGATE_STRESS_BIN`, else next to the test, else target/).
pub fn stress_bin() -> PathBuf {
    workspace_bin("AFGATE_STRESS_BIN", "afgate-stress")
}

/// Starts `afgate-stress ARGS` in `ns`; the caller bounds it with [`Proc::finish`].
pub fn stress(ns: &Netns, args: &[&str]) -> Result<Proc> {
    let bin = stress_bin();
    let mut argv = vec!["ip", "netns", "exec", ns.name()];
    let b = bin.to_str().context("afgate-stress path is not UTF-8")?;
    argv.push(b);
    argv.extend_from_slice(args);
    Proc::spawn(&argv, false)
}

/// Waits for `p` (at most `timeout`) and parses the JSON line it printed last.
pub fn stress_result(p: Proc, timeout: Duration) -> Result<Value> {
    let label = p.label().to_string();
    let out = p.finish(timeout)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{label}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("{label}: no JSON line in {stdout:?}"))?;
    Ok(serde_json::from_str(line)?)
}

/// `afgate ctl --api SOCK -o json ARGS`, parsed.
pub fn ctl_json(api: &Path, args: &[&str]) -> Result<Value> {
    let bin = afgate_bin();
    let api = api.to_string_lossy();
    let mut argv = vec![
        bin.to_str().context("afgate path is not UTF-8")?,
        "ctl",
        "--api",
        &api,
        "-o",
        "json",
    ];
    argv.extend_from_slice(args);
    let out = Proc::spawn(&argv, false)?.finish(Duration::from_secs(15))?;
    if !out.status.success() {
        bail!(
            "afgate ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// One raw request line on the API socket and the response line, as a client that does not
/// use `afgate ctl` (or a broken one) would send it.
pub fn api_raw(api: &Path, line: &[u8]) -> Result<Value> {
    let mut s = UnixStream::connect(api).with_context(|| format!("connect {}", api.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(line)?;
    if !line.ends_with(b"\n") {
        s.write_all(b"\n")?;
    }
    let mut resp = String::new();
    BufReader::new(&s).read_line(&mut resp)?;
    serde_json::from_str(&resp).with_context(|| format!("response {resp:?}"))
}

/// The `afgate: final-stats {json}` line afgate prints when it stops.
pub fn final_stats(log: &str) -> Result<Value> {
    let line = log
        .lines()
        .find_map(|l| l.strip_prefix("afgate: final-stats "))
        .context("no final-stats line")?;
    Ok(serde_json::from_str(line)?)
}

pub fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

pub fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// XPS in `ns`: tx queue i of `dev` is used by CPU i only, so a socket's datagrams leave by
/// the queue of the CPU that sends them (for unconnected sockets, which cache no queue).
pub fn xps_one_cpu_per_queue(ns: &Netns, dev: &str, queues: usize) -> Result<()> {
    for q in 0..queues {
        let path = format!("/sys/class/net/{dev}/queues/tx-{q}/xps_cpus");
        let mask = format!("{:x}", 1u64 << q);
        ns.exec_ok(&["sh", "-c", &format!("echo {mask} > {path}")])
            .with_context(|| format!("setting {path}"))?;
    }
    Ok(())
}

/// The thread id of afgate's worker `index` (threads are named `afgate-wN`).
pub fn worker_tid(pid: u32, index: usize) -> Result<i32> {
    let want = format!("afgate-w{index}");
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let e = e?;
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim() == want {
            return e
                .file_name()
                .to_str()
                .and_then(|s| s.parse().ok())
                .context("task id");
        }
    }
    bail!("no thread {want} in process {pid}")
}

/// Stops exactly one thread for `dur`, then lets it run on: what a worker descheduled or
/// stuck in a page fault looks like to the rest of the process. SIGSTOP cannot do this (it
/// stops the whole thread group); ptrace's group-stop-free `PTRACE_INTERRUPT` can. The
/// thread is detached on every path, so it always resumes.
pub fn stall_thread(tid: i32, dur: Duration) -> Result<Duration> {
    // SAFETY: ptrace(2) with integer arguments only; PTRACE_SEIZE attaches without stopping.
    if unsafe { libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) } != 0 {
        bail!("PTRACE_SEIZE {tid}: {}", std::io::Error::last_os_error());
    }
    let detach = || {
        // SAFETY: as above; detaching a stopped tracee resumes it.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
    };
    // SAFETY: as above.
    if unsafe { libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) } != 0 {
        let e = std::io::Error::last_os_error();
        detach();
        bail!("PTRACE_INTERRUPT {tid}: {e}");
    }
    let mut status = 0;
    // SAFETY: status outlives the call; __WALL waits for a thread that is not our child.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    if r != tid {
        let e = std::io::Error::last_os_error();
        detach();
        bail!("waitpid {tid}: {e}");
    }
    let start = Instant::now();
    std::thread::sleep(dur);
    detach();
    Ok(start.elapsed())
}
