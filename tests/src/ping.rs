//! `ping` from a lab namespace, parsed.

use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;
use crate::process::Proc;

/// What iputils ping reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    /// TTL of the first reply, if any: tells how many routers the reply crossed.
    pub ttl: Option<u8>,
}

/// Pings `dst` from `ns`: `count` echo requests 0.2 s apart, each waiting up to `timeout` for
/// its reply. Loss is not an error; a ping that could not run is.
///
/// Not `ping -w`: with a deadline, iputils keeps sending until it has `count` *replies*, so
/// `sent` would depend on timing (a slow first reply gave "4 transmitted" for `-c 1`).
pub fn ping(ns: &Netns, dst: &str, count: u32, timeout: Duration) -> Result<PingResult> {
    let count_s = count.to_string();
    let wait = timeout.as_secs().max(1).to_string();
    let argv = [
        "ip",
        "netns",
        "exec",
        ns.name(),
        "ping",
        "-n",
        "-c",
        &count_s,
        "-i",
        "0.2",
        "-W",
        &wait,
        dst,
    ];
    // ping bounds itself (count * interval + wait); the Proc bound is the backstop.
    let bound = Duration::from_millis(200) * count + timeout + Duration::from_secs(5);
    let out = Proc::spawn(&argv, false)?.finish(bound)?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ping(&text).with_context(|| {
        format!(
            "unparseable ping output from [{}] ping {dst}:\n{text}{}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Parses `N packets transmitted, M received` and the first `ttl=T`.
pub fn parse_ping(text: &str) -> Option<PingResult> {
    let ttl = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("ttl="))
        .and_then(|t| t.parse().ok());
    let stats = text.lines().find(|l| l.contains("packets transmitted"))?;
    let mut nums = stats
        .split(',')
        .map(|part| part.split_whitespace().next().and_then(|n| n.parse().ok()));
    let sent = nums.next()??;
    let received = nums.next()??;
    Some(PingResult {
        sent,
        received,
        ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_iputils_output() {
        let ok = "PING 10.186.200.10 (10.186.200.10) 56(84) bytes of data.\n\
                  64 bytes from 10.186.200.10: icmp_seq=1 ttl=62 time=0.1 ms\n\
                  64 bytes from 10.186.200.10: icmp_seq=2 ttl=62 time=0.1 ms\n\n\
                  --- 10.186.200.10 ping statistics ---\n\
                  2 packets transmitted, 2 received, 0% packet loss, time 201ms\n";
        assert_eq!(
            parse_ping(ok),
            Some(PingResult {
                sent: 2,
                received: 2,
                ttl: Some(62)
            })
        );
        let lost = "--- x ping statistics ---\n\
                    3 packets transmitted, 0 received, +3 errors, 100% packet loss, time 2ms\n";
        assert_eq!(
            parse_ping(lost),
            Some(PingResult {
                sent: 3,
                received: 0,
                ttl: None
            })
        );
        assert_eq!(parse_ping("ping: connect: Network is unreachable\n"), None);
    }
}
