//! Small shared pieces: MAC addresses, unique names, scratch directories.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};

/// An Ethernet address. The lab sets every MAC explicitly so that configs (afgate's static
/// neighbours) and capture assertions can name them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A locally administered unicast address (`02:..`) built from two small numbers, so lab
    /// MACs read as `02:af:<link>:00:00:<side>` in tcpdump output.
    pub const fn lab(link: u8, side: u8) -> Mac {
        Mac([0x02, 0xaf, link, 0x00, 0x00, side])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Mac> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.trim().split(':').collect();
        if parts.len() != 6 {
            bail!("not a MAC address: {s:?}");
        }
        for (o, p) in out.iter_mut().zip(parts) {
            *o = u8::from_str_radix(p, 16).with_context(|| format!("not a MAC address: {s:?}"))?;
        }
        Ok(Mac(out))
    }
}

/// A process-wide counter; combined with the pid it makes names unique across the threads of
/// one test binary and across test binaries running at the same time.
pub(crate) fn next_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// `n` in base 36, lowercase: short enough that `afg` + role + pid + counter fits the 15
/// characters of an interface name even for 7-digit pids.
pub(crate) fn base36(mut n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut s = Vec::new();
    while n > 0 {
        s.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).expect("ascii")
}

/// A scratch directory removed on drop (logs, pcaps, configs). Set `AFGATE_KEEP_TMP=1` to keep
/// it for a post-mortem; its path is printed then.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "afgate-{label}-{}-{}",
            std::process::id(),
            next_id()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("AFGATE_KEEP_TMP").is_some() {
            eprintln!("afgate-tests: keeping {}", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = Mac::lab(3, 1);
        assert_eq!(m.to_string(), "02:af:03:00:00:01");
        assert_eq!("02:AF:03:00:00:01".parse::<Mac>().unwrap(), m);
        assert!("02:af".parse::<Mac>().is_err());
    }

    #[test]
    fn base36_is_short() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        // pid_max is 2^22: five characters.
        assert_eq!(base36(4_194_304).len(), 5);
    }
}
