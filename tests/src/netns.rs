//! One network namespace, deleted when the last handle to it drops.

use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::process::Proc;
use crate::util::{base36, next_id};

/// How long a one-shot command (`ip`, `ethtool`, `sysctl`) may take before it is killed: they
/// take milliseconds, so hitting this means something hangs, and the test should say so.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(30);

/// Prefix of every namespace the lab creates; `scripts/lab-cleanup.sh` and
/// [`Netns::cleanup_stale`] look for it.
pub const PREFIX: &str = "afg";

/// A network namespace. Cloning shares it; the last clone to drop kills whatever still runs
/// in it and deletes it, which destroys its veths (and their peers in other namespaces).
#[derive(Clone)]
pub struct Netns(Arc<Inner>);

struct Inner {
    name: String,
    role: String,
}

impl Netns {
    /// Creates `afg<role><pid>.<n>`: role letters (up to 4 kept), the pid in base 36 (5 digits) and a
    /// per-process counter, so test threads and concurrent test binaries never collide. The
    /// name stays within 15 characters so it can also serve as an interface name.
    ///
    /// The first call in a process also deletes namespaces left by dead test processes (see
    /// [`Netns::cleanup_stale`]), so one SIGKILLed run does not pollute the next.
    pub fn new(role: &str) -> Result<Netns> {
        static STALE: std::sync::Once = std::sync::Once::new();
        STALE.call_once(|| match Netns::cleanup_stale() {
            Ok(v) if !v.is_empty() => eprintln!("afgate-tests: deleted stale namespaces {v:?}"),
            Ok(_) => {}
            Err(e) => eprintln!("afgate-tests: stale namespace cleanup failed: {e:#}"),
        });
        let short: String = role
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(4)
            .collect::<String>()
            .to_ascii_lowercase();
        // Fixed width (pid_max is 2^22 < 36^5) so the pid can be read back from the name.
        let pid = format!("{:0>5}", base36(u64::from(std::process::id())));
        // A name left by a crashed process with a recycled pid would make `add` fail: retry with
        // the next counter value rather than reuse (and later delete) someone else's namespace.
        let mut last_err = String::new();
        for _ in 0..8 {
            let name = format!(
                "{PREFIX}{short}{pid}.{}",
                base36(u64::from(next_id() % 1296))
            );
            debug_assert!(name.len() <= 15, "{name} too long");
            let out = run(&["ip", "netns", "add", &name])?;
            if out.status.success() {
                let ns = Netns(Arc::new(Inner {
                    name,
                    role: role.to_string(),
                }));
                ns.ip(&["link", "set", "lo", "up"])?;
                return Ok(ns);
            }
            last_err = String::from_utf8_lossy(&out.stderr).into_owned();
            if !last_err.contains("exists") {
                break;
            }
        }
        bail!(
            "cannot create a network namespace for role {role:?}: {last_err}\n\
             (the lab needs root and a kernel with CONFIG_NET_NS; tests do not skip without it)"
        )
    }

    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// The role it was created for (`node`, `pod`, ...).
    pub fn role(&self) -> &str {
        &self.0.role
    }

    /// `ip netns exec NAME argv...`, bounded by [`EXEC_TIMEOUT`]. Returns whatever the command
    /// produced, success or not; see [`Netns::exec_ok`] for the checked form.
    pub fn exec(&self, argv: &[&str]) -> Result<Output> {
        let mut full = vec!["ip", "netns", "exec", self.name()];
        full.extend_from_slice(argv);
        run(&full)
    }

    /// [`Netns::exec`] that fails, with the command and its stderr, on a non-zero exit.
    /// Returns stdout.
    pub fn exec_ok(&self, argv: &[&str]) -> Result<String> {
        let out = self.exec(argv)?;
        check(&format!("[{}] {}", self.name(), argv.join(" ")), out)
    }

    /// `ip -n NAME argv...`, checked. Cheaper than `exec` (no mount namespace set-up).
    pub fn ip(&self, argv: &[&str]) -> Result<String> {
        let mut full = vec!["ip", "-n", self.name()];
        full.extend_from_slice(argv);
        let out = run(&full)?;
        check(&full.join(" "), out)
    }

    /// Starts a long-running command in the namespace. The returned [`Proc`] kills it on drop;
    /// the command should bound itself too (a `--max-secs`, `timeout N`, `-c N`).
    pub fn spawn(&self, argv: &[&str]) -> Result<Proc> {
        let mut full = vec!["ip", "netns", "exec", self.name()];
        full.extend_from_slice(argv);
        Proc::spawn(&full, false)
    }

    /// `sysctl -w key=val` inside the namespace (the `net.*` tree is per namespace).
    pub fn sysctl(&self, key: &str, val: &str) -> Result<()> {
        self.exec_ok(&["sysctl", "-q", "-w", &format!("{key}={val}")])
            .map(drop)
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.exec_ok(&["sysctl", "-n", key])?.trim().to_string())
    }

    /// Names of all namespaces that currently exist.
    pub fn list_all() -> Result<Vec<String>> {
        let out = run(&["ip", "netns", "list"])?;
        let text = check("ip netns list", out)?;
        // Lines look like `name` or `name (id: 3)`.
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    /// Deletes lab namespaces left behind by test processes that no longer exist (a SIGKILLed
    /// `cargo test` never runs its Drops). Namespaces of live processes are left alone, so this
    /// is safe to call while other test binaries run. Also removes such processes' scratch
    /// directories. Returns the namespace names it deleted.
    pub fn cleanup_stale() -> Result<Vec<String>> {
        let mut deleted = Vec::new();
        for name in Netns::list_all()? {
            let Some(pid) = owner_pid(&name) else {
                continue;
            };
            if process_alive(pid) {
                continue;
            }
            kill_all_in(&name);
            let _ = run(&["ip", "netns", "del", &name]);
            deleted.push(name);
        }
        // Scratch directories (`afgate-<label>-<pid>-<n>`, see TempDir) of dead processes too.
        if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let mut parts = name.rsplitn(3, '-');
                let (_n, pid) = (parts.next(), parts.next());
                if !name.starts_with("afgate-") {
                    continue;
                }
                if let Some(pid) = pid.and_then(|p| p.parse::<u32>().ok())
                    && !process_alive(pid)
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Ok(deleted)
    }
}

/// Whether `pid` runs. A zombie counts as dead: a SIGKILLed test binary whose parent has not
/// reaped it yet still has a /proc entry, but will never clean up.
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `pid (comm) S ...`: the state follows the last ')' (comm may contain spaces).
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The creating pid encoded in a lab namespace name `afg<role><pid:5 base36>.<n>`, or None for
/// names that are not ours.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (head, ctr) = rest.split_once('.')?;
    if ctr.is_empty() || !ctr.chars().all(|c| c.is_ascii_alphanumeric()) || head.len() < 6 {
        return None;
    }
    u32::from_str_radix(head.get(head.len() - 5..)?, 36).ok()
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Processes still inside (a forgotten server, tcpdump) would keep the namespace and its
        // veths alive after `del`: end them first. They were all started by this lab.
        kill_all_in(&self.name);
        match run(&["ip", "netns", "del", &self.name]) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "afgate-tests: `ip netns del {}` failed: {}; clean up with: ip netns del {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.name
            ),
            Err(e) => eprintln!(
                "afgate-tests: `ip netns del {}` failed: {e}; clean up with: ip netns del {}",
                self.name, self.name
            ),
        }
    }
}

/// SIGKILLs every process whose network namespace is `name` (all started by the lab).
fn kill_all_in(name: &str) {
    let Ok(out) = run(&["ip", "netns", "pids", name]) else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<libc::pid_t>().ok())
    {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid was just listed as a
        // member of this lab namespace, which only lab-started processes join.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// Runs a one-shot command (no namespace), bounded by [`EXEC_TIMEOUT`].
pub(crate) fn run(argv: &[&str]) -> Result<Output> {
    let p = Proc::spawn(argv, false)?;
    let label = p.label().to_string();
    let out = p.finish(EXEC_TIMEOUT)?;
    if out.status.code().is_none() {
        bail!("`{label}` did not finish within {EXEC_TIMEOUT:?} and was killed");
    }
    Ok(out)
}

/// Turns a non-zero exit into an error naming the command and its stderr; returns stdout.
pub(crate) fn check(what: &str, out: Output) -> Result<String> {
    if !out.status.success() {
        bail!(
            "`{what}` failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    String::from_utf8(out.stdout).context("command output is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_parses_our_names_only() {
        let me = std::process::id();
        let name = format!("afgnode{:0>5}.3", base36(u64::from(me)));
        assert_eq!(owner_pid(&name), Some(me));
        assert!(process_alive(me));
        assert_eq!(owner_pid("afgpod2000zz.1j"), Some(36 * 35 + 35));
        assert_eq!(owner_pid("foo"), None);
        assert_eq!(owner_pid("afgnode"), None);
        assert_eq!(owner_pid("afg1.2"), None);
    }
}
