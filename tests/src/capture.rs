//! tcpdump on a lab device: what the far side actually received.
//!
//! The capture is written to a pcap and re-read with `tcpdump -e -n -v -r` when stopped, so
//! the lines carry the Ethernet header (MACs, 802.1Q tags) and the IP header (TTL, length) and
//! do not depend on how tcpdump buffers live text output.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::{Netns, check, run};
use crate::process::Proc;
use crate::util::{Mac, TempDir};

/// How long to wait for tcpdump to attach to the device.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long tcpdump gets to flush and exit after SIGINT.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Capture {
    proc: Proc,
    pcap: PathBuf,
    dev: String,
    _dir: Arc<TempDir>,
}

impl Capture {
    /// Starts `tcpdump -i dev` in `ns` with a pcap-filter expression (`""` for everything).
    /// Bounded: it stops by itself after `max_packets` packets or `max_secs` seconds. Returns
    /// once tcpdump is attached, so traffic sent afterwards is seen.
    pub fn start(
        ns: &Netns,
        dev: &str,
        filter: &str,
        max_packets: u32,
        max_secs: u32,
    ) -> Result<Capture> {
        let dir = Arc::new(TempDir::new("pcap")?);
        let pcap = dir.path().join(format!("{dev}.pcap"));
        let pcap_s = pcap.to_str().context("pcap path is not UTF-8")?.to_string();
        let count = max_packets.max(1).to_string();
        let secs = max_secs.max(1).to_string();
        let mut argv = vec![
            "ip",
            "netns",
            "exec",
            ns.name(),
            // `timeout` bounds the capture even if this process dies without running Drop.
            // SIGINT is what makes tcpdump flush its buffer and close the file cleanly.
            "timeout",
            "--signal=INT",
            &secs,
            "tcpdump",
            "-e",
            "-n",
            "-l",
            // Write each packet as it arrives (-U), and take it from the kernel as it arrives
            // (--immediate-mode): without the latter, packets wait in a TPACKET_V3 block
            // until it times out, and the SIGINT of stop() discards them (seen here: "4
            // received by filter", 2 written).
            "-U",
            "--immediate-mode",
            // Stay root: Debian's tcpdump otherwise switches to user `tcpdump`, which cannot
            // create files in our root-owned scratch directory.
            "-Z",
            "root",
            "-i",
            dev,
            "-c",
            &count,
            "-w",
            &pcap_s,
        ];
        if !filter.trim().is_empty() {
            argv.push(filter);
        }
        let mut proc = Proc::spawn_in(&argv, false, dir.clone())?;
        wait_listening(&mut proc)?;
        Ok(Capture {
            proc,
            pcap,
            dev: dev.to_string(),
            _dir: dir,
        })
    }

    /// Stops the capture (if it has not stopped by itself) and returns one line per packet,
    /// oldest first, as printed by `tcpdump -e -n -v -r`: `-v` puts the IP header on a
    /// continuation line, which is joined onto the packet's first line.
    pub fn stop(mut self) -> Result<Vec<String>> {
        if self.proc.try_wait()?.is_none() {
            self.proc.signal(libc::SIGINT);
            if self.proc.wait_timeout(STOP_TIMEOUT)?.is_none() {
                self.proc.kill()?;
            }
        }
        if !self.pcap.exists() {
            anyhow::bail!(
                "capture on {} wrote no pcap\n{}",
                self.dev,
                self.proc.output_tail()
            );
        }
        let pcap = self.pcap.to_str().context("pcap path")?;
        let out = run(&["tcpdump", "-e", "-n", "-v", "-r", pcap])?;
        let text = check(&format!("tcpdump -r {pcap}"), out)?;
        Ok(join_continuations(&text))
    }
}

fn wait_listening(proc: &mut Proc) -> Result<()> {
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        if proc.stderr().contains("listening on") {
            return Ok(());
        }
        if proc.try_wait()?.is_some() || std::time::Instant::now() >= deadline {
            anyhow::bail!("tcpdump did not start capturing\n{}", proc.output_tail());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Packet lines start at column 0 with a timestamp; `-v` continuation lines are indented.
pub fn join_continuations(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with(char::is_whitespace)
            && let Some(last) = out.last_mut()
        {
            last.push(' ');
            last.push_str(line.trim());
            continue;
        }
        if !line.trim().is_empty() {
            out.push(line.to_string());
        }
    }
    out
}

/// The IPv4 TTL of a `-v` packet line (`ttl 62,`).
pub fn ttl(line: &str) -> Option<u8> {
    let rest = &line[line.find("ttl ")? + 4..];
    rest.split([',', ')']).next()?.trim().parse().ok()
}

/// Source and destination MAC of a `-e` packet line (`12:00:00.1 SRC > DST, ...`).
pub fn macs(line: &str) -> Option<(Mac, Mac)> {
    let mut w = line.split_whitespace().skip(1);
    let src = w.next()?.parse().ok()?;
    if w.next()? != ">" {
        return None;
    }
    let dst = w.next()?.trim_end_matches(',').parse().ok()?;
    Some((src, dst))
}

/// 802.1Q VLAN ids in a `-e` packet line (`vlan 1155, p 0`), outermost first.
pub fn vlans(line: &str) -> Vec<u16> {
    line.match_indices("vlan ")
        .filter_map(|(i, _)| {
            line[i + 5..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
20:42:54.894834 02:af:04:00:00:01 > 02:af:04:00:00:02, ethertype IPv4 (0x0800), length 74: (tos 0x0, ttl 62, id 1, offset 0, flags [DF], proto TCP (6), length 60)
    10.20.9.60.49010 > 10.186.200.10.9: Flags [S], cksum 0x6a26 (correct), length 0
20:42:54.894900 02:af:03:00:00:02 > 02:af:03:00:00:01, ethertype 802.1Q (0x8100), length 78: vlan 1155, p 0, ethertype IPv4 (0x0800), (tos 0x0, ttl 64, id 2, offset 0, flags [DF], proto ICMP (1), length 84)
    10.186.155.6 > 10.20.9.60: ICMP echo request, id 1, seq 1, length 64
";

    #[test]
    fn parses_tcpdump_lines() {
        let lines = join_continuations(SAMPLE);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("10.20.9.60.49010 > 10.186.200.10.9"));
        assert_eq!(ttl(&lines[0]), Some(62));
        assert_eq!(macs(&lines[0]), Some((Mac::lab(4, 1), Mac::lab(4, 2))));
        assert_eq!(vlans(&lines[0]), Vec::<u16>::new());
        assert_eq!(vlans(&lines[1]), vec![1155]);
        assert_eq!(ttl(&lines[1]), Some(64));
    }
}
