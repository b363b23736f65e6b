//! Bounded child processes ([`Proc`]) and the afgate process under test ([`Afgate`]).
//!
//! Output goes to files, not pipes: a pipe nobody drains blocks the child, and a reader thread
//! per pipe is more machinery than polling a file for a readiness line. Every child is put in
//! its own process group so that one signal reaches it and anything it forked (`timeout`
//! forks tcpdump, for instance) without touching any other process.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::util::TempDir;

const POLL: Duration = Duration::from_millis(20);

/// The afgate binary: `$AFGATE_BIN`, else `afgate` next to the running test's profile
/// directory (so `cargo test --release` finds the release build), else
/// `<workspace>/target/debug/afgate`. Panics with a hint when none exists, because a missing
/// binary is a setup mistake, not a test failure worth diagnosing.
pub fn afgate_bin() -> PathBuf {
    workspace_bin("AFGATE_BIN", "afgate")
}

/// Finds a binary built by this workspace; see [`afgate_bin`].
pub(crate) fn workspace_bin(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "${env} points to {} which does not exist",
            p.display()
        );
        return p;
    }
    let mut candidates = Vec::new();
    // Test executables live in <target>/<profile>/deps/; binaries in <target>/<profile>/.
    if let Ok(exe) = std::env::current_exe()
        && let Some(profile_dir) = exe.parent().and_then(Path::parent)
    {
        candidates.push(profile_dir.join(name));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(t).join("debug").join(name));
    }
    candidates.push(workspace.join("target").join("debug").join(name));
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "{name} binary not found (looked in {candidates:?}); run `cargo build --workspace` first \
         or set ${env}"
    );
}

/// A child process that is killed (with its whole process group) and reaped on drop.
///
/// stdout and stderr go to files in a scratch directory (or to one merged file), read back with
/// [`Proc::stdout`] / [`Proc::stderr`] at any time, also while the process runs.
pub struct Proc {
    child: Child,
    label: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
    // Keeps the log directory alive as long as the process; shared so a caller may also
    // put other files (configs) in it.
    _dir: Arc<TempDir>,
}

impl Proc {
    /// Spawns `argv` (no shell). `merge` sends stderr into the stdout file so a log keeps its
    /// interleaving.
    pub fn spawn(argv: &[&str], merge: bool) -> Result<Proc> {
        let dir = Arc::new(TempDir::new("proc")?);
        Proc::spawn_in(argv, merge, dir)
    }

    pub(crate) fn spawn_in(argv: &[&str], merge: bool, dir: Arc<TempDir>) -> Result<Proc> {
        use std::os::unix::process::CommandExt;
        let (prog, args) = argv.split_first().context("empty command")?;
        let n = crate::util::next_id();
        let stdout_path = dir.path().join(format!("{n}.out"));
        let stderr_path = if merge {
            stdout_path.clone()
        } else {
            dir.path().join(format!("{n}.err"))
        };
        let out = std::fs::File::create(&stdout_path)?;
        let err = if merge {
            out.try_clone()?
        } else {
            std::fs::File::create(&stderr_path)?
        };
        let child = Command::new(prog)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Own process group: signals reach the child's own children too, and nothing else.
            .process_group(0)
            .spawn()
            .with_context(|| format!("spawn {}", argv.join(" ")))?;
        Ok(Proc {
            child,
            label: argv.join(" "),
            stdout_path,
            stderr_path,
            status: None,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The command line, for error messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The exit status if the process has exited (reaps it).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait()? {
                return Ok(Some(s));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits up to `timeout` for `needle` to appear in stdout (merged output included). Fails,
    /// with the output so far, if the process exits first or the time runs out.
    pub fn wait_for_stdout(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stdout().contains(needle) {
                return Ok(());
            }
            if let Some(s) = self.try_wait()? {
                // It may have printed the line just before exiting.
                if self.stdout().contains(needle) {
                    return Ok(());
                }
                bail!(
                    "`{}` exited ({s}) before printing {needle:?}\n{}",
                    self.label,
                    self.output_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "`{}` did not print {needle:?} within {timeout:?}\n{}",
                    self.label,
                    self.output_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends `sig` to the process group.
    pub fn signal(&self, sig: libc::c_int) {
        if self.status.is_some() {
            return; // reaped: the pid may belong to someone else now
        }
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory-safety preconditions. The negative pid addresses the
        // process group this child leads (spawned with process_group(0)) and it has not been
        // reaped yet, so the id cannot have been recycled for an unrelated group.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_timeout(grace)? {
            return Ok(s);
        }
        self.kill()
    }

    /// SIGKILL to the group and reap.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.try_wait()? {
            return Ok(s);
        }
        self.signal(libc::SIGKILL);
        let s = self.child.wait()?;
        self.status = Some(s);
        Ok(s)
    }

    /// Waits up to `timeout` for a natural exit (killing it after that) and returns everything
    /// it printed. A kill shows up as a signal in `status`.
    pub fn finish(mut self, timeout: Duration) -> Result<Output> {
        if self.wait_timeout(timeout)?.is_none() {
            self.kill()?;
        }
        Ok(Output {
            status: self.status.expect("reaped"),
            stdout: self.stdout().into_bytes(),
            stderr: if self.stdout_path == self.stderr_path {
                Vec::new()
            } else {
                self.stderr().into_bytes()
            },
        })
    }

    /// The last lines of its output, for error messages.
    pub fn output_tail(&self) -> String {
        let mut s = format!(
            "--- stdout of `{}` (tail) ---\n{}",
            self.label,
            tail(&self.stdout(), 40)
        );
        if self.stdout_path != self.stderr_path {
            s += &format!("--- stderr (tail) ---\n{}", tail(&self.stderr(), 40));
        }
        s
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            eprintln!("afgate-tests: could not reap `{}`: {e}", self.label);
        }
    }
}

pub(crate) fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    let start = v.len().saturating_sub(lines);
    let mut out = v[start..].join("\n");
    out.push('\n');
    out
}

/// How long afgate gets to print its readiness line.
pub const AFGATE_READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long afgate gets to exit after SIGTERM before it is killed.
pub const AFGATE_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// The afgate dataplane running in a lab namespace: `ip netns exec NS afgate run -c CONFIG`.
///
/// Contract with the binary: it prints a line containing `afgate: ready` on stdout once its
/// ports are up and it forwards; it exits on SIGTERM. Drop stops it (SIGTERM, then SIGKILL).
pub struct Afgate {
    proc: Proc,
}

impl Afgate {
    pub fn start(ns: &Netns, config: &Path) -> Result<Afgate> {
        Afgate::start_with(ns, config, &[])
    }

    /// Like [`Afgate::start`] with extra arguments after `run -c CONFIG`.
    pub fn start_with(ns: &Netns, config: &Path, extra: &[&str]) -> Result<Afgate> {
        Afgate::start_bin(&afgate_bin(), ns, config, extra)
    }

    /// Like [`Afgate::start_with`] with an explicit binary (a stand-in in the lab's own tests,
    /// or another build).
    pub fn start_bin(bin: &Path, ns: &Netns, config: &Path, extra: &[&str]) -> Result<Afgate> {
        let bin = bin.to_str().context("afgate path is not UTF-8")?;
        let config = config.to_str().context("config path is not UTF-8")?;
        let mut argv = vec!["ip", "netns", "exec", ns.name(), bin, "run", "-c", config];
        argv.extend_from_slice(extra);
        let mut proc = Proc::spawn_in(&argv, true, Arc::new(TempDir::new("afgate")?))?;
        proc.wait_for_stdout("afgate: ready", AFGATE_READY_TIMEOUT)
            .context("afgate did not become ready")?;
        Ok(Afgate { proc })
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Everything afgate printed so far (stdout and stderr, interleaved).
    pub fn log(&self) -> String {
        self.proc.stdout()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.proc.try_wait(), Ok(None))
    }

    /// SIGTERM and wait up to 10 s; SIGKILL after that. Returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.proc.terminate(AFGATE_STOP_TIMEOUT)
    }

    /// SIGKILL at once: what the fail-open tests use to prove the kernel takes over.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.proc.kill()
    }
}

impl Drop for Afgate {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("afgate-tests: stopping afgate failed: {e}");
        }
        // Proc's own Drop SIGKILLs if stop() could not reap it.
    }
}
