//! Helpers that run `afgate-peer` (see `src/bin/afgate-peer.rs`) inside lab namespaces and
//! parse what it prints.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::netns::Netns;
use crate::process::{Proc, workspace_bin};

/// How long a server gets to bind and print `listening`.
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Grace on top of a client's own `--timeout` before the library kills it.
const CLIENT_GRACE: Duration = Duration::from_secs(5);

/// The afgate-peer binary: `$AFGATE_PEER_BIN`, else next to the running test (cargo builds a
/// package's binaries before its integration tests), else `<workspace>/target/debug/`.
pub fn peer_bin() -> PathBuf {
    workspace_bin("AFGATE_PEER_BIN", "afgate-peer")
}

fn peer_argv(ns: &Netns, args: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["ip", "netns", "exec", ns.name()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.push(peer_bin().to_string_lossy().into_owned());
    v.extend(args.iter().map(|s| s.to_string()));
    v
}

fn spawn_server(ns: &Netns, args: &[&str]) -> Result<Proc> {
    let argv = peer_argv(ns, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let mut p = Proc::spawn(&argv, false)?;
    p.wait_for_stdout("listening ", SERVER_START_TIMEOUT)?;
    Ok(p)
}

/// Starts `afgate-peer tcp-server` in `ns` and returns once it listens. It answers each
/// connection with `id=ID client=.. local=..` and echoes; it exits after `max_secs` (and is
/// killed when the returned [`Proc`] drops). Its stdout has one `accepted client=IP:PORT ..`
/// line per connection, see [`accepted_clients`].
pub fn tcp_server(ns: &Netns, listen: &str, id: &str, max_secs: u32) -> Result<Proc> {
    let secs = max_secs.to_string();
    spawn_server(
        ns,
        &[
            "tcp-server",
            "--listen",
            listen,
            "--id",
            id,
            "--max-secs",
            &secs,
        ],
    )
}

/// Starts `afgate-peer udp-server`; like [`tcp_server`], with `recv client=..` lines.
pub fn udp_server(ns: &Netns, listen: &str, id: &str, max_secs: u32) -> Result<Proc> {
    let secs = max_secs.to_string();
    spawn_server(
        ns,
        &[
            "udp-server",
            "--listen",
            listen,
            "--id",
            id,
            "--max-secs",
            &secs,
        ],
    )
}

/// Client addresses (`IP:PORT`) a server's output reports, in order.
pub fn accepted_clients(server: &Proc) -> Vec<String> {
    server
        .stdout()
        .lines()
        .filter(|l| l.starts_with("accepted ") || l.starts_with("recv "))
        .filter_map(|l| field(l, "client"))
        .collect()
}

/// The value of `key=` in a whitespace-separated line.
pub fn field(line: &str, key: &str) -> Option<String> {
    let prefix = format!("{key}=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(prefix.as_str()))
        .map(str::to_string)
}

/// A server's reply line, split up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub id: String,
    /// The client address as the server saw it (after any NAT).
    pub client: String,
    /// The server's local address.
    pub local: String,
}

impl Reply {
    pub fn parse(line: &str) -> Option<Reply> {
        Some(Reply {
            id: field(line, "id")?,
            client: field(line, "client")?,
            local: field(line, "local")?,
        })
    }

    /// The IP part of `client`.
    pub fn client_ip(&self) -> &str {
        self.client
            .rsplit_once(':')
            .map_or(&self.client, |(ip, _)| ip)
    }
}

/// What `tcp-client` did.
#[derive(Clone, Debug)]
pub struct TcpClientResult {
    pub reply: Reply,
    /// The client's own address (before any NAT).
    pub local: String,
    /// `send` bytes came back unchanged (true when nothing was sent).
    pub echoed: bool,
    pub stdout: String,
}

/// Runs `afgate-peer tcp-client` in `ns`: connect, read the server's line, send `send` bytes
/// and check the echo. Fails (with the client's output) if any step fails.
pub fn tcp_client(
    ns: &Netns,
    connect: &str,
    send: usize,
    timeout_secs: u32,
) -> Result<TcpClientResult> {
    let send_s = send.to_string();
    let t = timeout_secs.max(1).to_string();
    let out = run_client(
        ns,
        &[
            "tcp-client",
            "--connect",
            connect,
            "--send",
            &send_s,
            "--timeout",
            &t,
        ],
        timeout_secs,
    )?;
    if !out.status.success() {
        bail!(
            "tcp-client [{}] -> {connect} failed ({}): {}{}",
            ns.name(),
            out.status,
            out.stderr,
            out.stdout
        );
    }
    let reply = out
        .stdout
        .lines()
        .find_map(Reply::parse)
        .with_context(|| format!("no reply line in {:?}", out.stdout))?;
    let local = out
        .stdout
        .lines()
        .find(|l| l.starts_with("connected "))
        .and_then(|l| field(l, "local"))
        .unwrap_or_default();
    Ok(TcpClientResult {
        reply,
        local,
        echoed: send == 0 || out.stdout.contains(&format!("echo ok {send}")),
        stdout: out.stdout,
    })
}

/// What `udp-client` did. Loss is reported, not an error.
#[derive(Clone, Debug)]
pub struct UdpClientResult {
    pub sent: u32,
    pub received: u32,
    pub replies: Vec<Reply>,
}

/// Runs `afgate-peer udp-client` in `ns`: `count` datagrams, one at a time.
pub fn udp_client(
    ns: &Netns,
    connect: &str,
    count: u32,
    timeout_secs: u32,
) -> Result<UdpClientResult> {
    let c = count.to_string();
    let t = timeout_secs.max(1).to_string();
    let out = run_client(
        ns,
        &[
            "udp-client",
            "--connect",
            connect,
            "--count",
            &c,
            "--timeout",
            &t,
        ],
        timeout_secs,
    )?;
    let summary = out
        .stdout
        .lines()
        .find(|l| l.starts_with("sent="))
        .with_context(|| {
            format!(
                "udp-client printed no summary: {}{}",
                out.stderr, out.stdout
            )
        })?;
    let num = |k| field(summary, k).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(UdpClientResult {
        sent: num("sent"),
        received: num("received"),
        replies: out.stdout.lines().filter_map(Reply::parse).collect(),
    })
}

/// What `tcp-conns` saw: how many connections each server id answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnsResult {
    pub ids: BTreeMap<String, u64>,
    pub failed: u64,
}

/// Runs `afgate-peer tcp-conns`: `count` sequential connections, histogram of server ids.
pub fn tcp_conns(ns: &Netns, connect: &str, count: u32, timeout_secs: u32) -> Result<ConnsResult> {
    let c = count.to_string();
    let t = timeout_secs.max(1).to_string();
    let out = run_client(
        ns,
        &[
            "tcp-conns",
            "--connect",
            connect,
            "--count",
            &c,
            "--timeout",
            &t,
        ],
        timeout_secs,
    )?;
    let json = out
        .stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("tcp-conns printed no histogram: {}", out.stderr))?;
    parse_conns(json)
}

/// Parses `{"ids":{"b1":34,...},"failed":0}`.
pub fn parse_conns(json: &str) -> Result<ConnsResult> {
    let v: serde_json::Value =
        serde_json::from_str(json).with_context(|| format!("bad JSON {json:?}"))?;
    let mut r = ConnsResult {
        failed: v["failed"].as_u64().context("no failed count")?,
        ..ConnsResult::default()
    };
    for (k, n) in v["ids"].as_object().context("no ids")? {
        r.ids.insert(k.clone(), n.as_u64().context("id count")?);
    }
    Ok(r)
}

struct ClientOutput {
    status: std::process::ExitStatus,
    stdout: String,
    stderr: String,
}

fn run_client(ns: &Netns, args: &[&str], timeout_secs: u32) -> Result<ClientOutput> {
    let argv = peer_argv(ns, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let p = Proc::spawn(&argv, false)?;
    let out = p.finish(Duration::from_secs(u64::from(timeout_secs)) + CLIENT_GRACE)?;
    Ok(ClientOutput {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_and_histograms() {
        let r = Reply::parse("id=b1 client=10.20.9.60:40000 local=10.186.200.10:8080").unwrap();
        assert_eq!(r.id, "b1");
        assert_eq!(r.client_ip(), "10.20.9.60");
        assert_eq!(r.local, "10.186.200.10:8080");
        assert_eq!(Reply::parse("listening 0.0.0.0:80"), None);
        let c = parse_conns(r#"{"ids":{"b1":34,"b2":30},"failed":1}"#).unwrap();
        assert_eq!(c.ids["b1"], 34);
        assert_eq!(c.failed, 1);
        assert!(
            parse_conns(r#"{"ids":{},"failed":0}"#)
                .unwrap()
                .ids
                .is_empty()
        );
    }
}
