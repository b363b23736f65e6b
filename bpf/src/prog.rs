//! Program-fd helpers: `BPF_PROG_TEST_RUN` and program ids, on owned fds
//! (the skeletons are gone by the time these run; see `lib.rs`).

use std::os::fd::{AsRawFd, BorrowedFd};

use libbpf_rs::libbpf_sys;

use crate::Error;

/// Result of one `BPF_PROG_TEST_RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRun {
    /// The program's return value (`XDP_PASS` = 2, `XDP_REDIRECT` = 4, ...).
    pub retval: u32,
    /// The frame as the program left it.
    pub data_out: Vec<u8>,
    /// Mean run time per repetition, as measured by the kernel.
    pub duration_ns: u32,
}

/// Room for the output frame: the input plus what a program may push.
const OUT_SLACK: usize = 256;

pub(crate) fn test_run(
    what: &str,
    prog: BorrowedFd<'_>,
    frame: &[u8],
    repeat: u32,
) -> Result<TestRun, Error> {
    let invalid = |reason: String| Error::Invalid {
        dev: what.to_owned(),
        op: "BPF_PROG_TEST_RUN",
        reason,
    };
    let size_in =
        u32::try_from(frame.len()).map_err(|_| invalid(format!("frame of {}", frame.len())))?;
    let repeat = i32::try_from(repeat).map_err(|_| invalid(format!("repeat {repeat}")))?;
    let mut out = vec![0u8; frame.len() + OUT_SLACK];
    let mut opts = libbpf_sys::bpf_test_run_opts {
        sz: size_of::<libbpf_sys::bpf_test_run_opts>() as libbpf_sys::size_t,
        data_in: frame.as_ptr().cast(),
        data_size_in: size_in,
        data_out: out.as_mut_ptr().cast(),
        // `out` is at most a frame (< 4 GiB, checked above) plus OUT_SLACK.
        data_size_out: u32::try_from(out.len()).unwrap_or(u32::MAX),
        repeat,
        ..Default::default()
    };
    // SAFETY: `opts` is a properly sized bpf_test_run_opts; `data_in` points
    // to `size_in` readable bytes of `frame` and `data_out` to
    // `data_size_out` writable bytes of `out`, both alive across the call;
    // the kernel writes at most `data_size_out` bytes and updates the sizes.
    let ret = unsafe { libbpf_sys::bpf_prog_test_run_opts(prog.as_raw_fd(), &mut opts) };
    if ret < 0 {
        return Err(Error::os(what, "BPF_PROG_TEST_RUN", ret));
    }
    out.truncate(opts.data_size_out as usize);
    Ok(TestRun {
        retval: opts.retval,
        data_out: out,
        duration_ns: opts.duration,
    })
}

/// The kernel's id for the program behind `prog` (what `bpftool prog` and
/// `ip link` show, and what [`crate::xdp_attached`] returns).
pub(crate) fn prog_id(what: &str, prog: BorrowedFd<'_>) -> Result<u32, Error> {
    let mut info = libbpf_sys::bpf_prog_info::default();
    let mut len = size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: `info` is a zeroed bpf_prog_info of `len` bytes, writable and
    // alive across the call; the kernel writes at most `len` bytes into it.
    let ret = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(prog.as_raw_fd(), &mut info, &mut len) };
    if ret < 0 {
        return Err(Error::os(what, "BPF_OBJ_GET_INFO_BY_FD", ret));
    }
    Ok(info.id)
}
