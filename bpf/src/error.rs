//! The crate's error type: every variant names the device (or the object,
//! before a device is involved) and the operation that failed.

use std::io;

/// Label used for `dev` when an operation is not tied to a device yet
/// (loading a program before attaching it).
pub(crate) const NO_DEV: &str = "(no device)";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `if_nametoindex` found no such interface in this network namespace.
    #[error("{dev}: no such network device")]
    NoSuchDevice { dev: String },
    /// A libbpf-rs call failed (open/load/map update/tc attach ...).
    #[error("{dev}: {op}: {source}")]
    Bpf {
        dev: String,
        op: &'static str,
        #[source]
        source: libbpf_rs::Error,
    },
    /// A raw libbpf or libc call failed with an errno.
    #[error("{dev}: {op}: {source}")]
    Os {
        dev: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    /// A caller-supplied value is out of range.
    #[error("{dev}: {op}: {reason}")]
    Invalid {
        dev: String,
        op: &'static str,
        reason: String,
    },
}

impl Error {
    pub(crate) fn bpf(dev: &str, op: &'static str) -> impl FnOnce(libbpf_rs::Error) -> Self {
        let dev = dev.to_owned();
        move |source| Error::Bpf { dev, op, source }
    }

    /// From a libbpf return value `-errno`.
    pub(crate) fn os(dev: &str, op: &'static str, ret: i32) -> Self {
        Error::Os {
            dev: dev.to_owned(),
            op,
            source: io::Error::from_raw_os_error(ret.saturating_neg()),
        }
    }

    /// The errno behind an [`Error::Os`].
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}
