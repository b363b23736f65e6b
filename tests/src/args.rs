//! The `--key value` command lines of the lab's peer binaries (`afgate-peer`,
//! `afgate-stress`): every value is named, so a test's argv reads as what it asks for, and a
//! bad one is refused naming its key.

use anyhow::{Context, Result, bail};
use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::str::FromStr;

pub struct Args {
    map: HashMap<String, String>,
    usage: &'static str,
}

impl Args {
    /// Parses `--key value` pairs; `usage` is appended to errors about the command line.
    pub fn parse(rest: &[String], usage: &'static str) -> Result<Args> {
        let mut map = HashMap::new();
        let mut it = rest.iter();
        while let Some(k) = it.next() {
            let key = k
                .strip_prefix("--")
                .with_context(|| format!("unexpected argument {k:?}\n{usage}"))?;
            let v = it
                .next()
                .with_context(|| format!("--{key} needs a value\n{usage}"))?;
            map.insert(key.to_string(), v.clone());
        }
        Ok(Args { map, usage })
    }

    /// A value that must be given.
    pub fn req(&self, k: &str) -> Result<&str> {
        self.map
            .get(k)
            .map(String::as_str)
            .with_context(|| format!("missing --{k}\n{}", self.usage))
    }

    /// A number, `default` when absent.
    pub fn num(&self, k: &str, default: u64) -> Result<u64> {
        match self.map.get(k) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .with_context(|| format!("--{k} {v:?} is not a number")),
        }
    }

    /// A number in `1..=max` (so a typo cannot turn a test into a runaway load); required
    /// when `default` is `None`.
    pub fn bounded(&self, k: &str, default: Option<u64>, max: u64) -> Result<u64> {
        let v = match (self.map.contains_key(k), default) {
            (true, _) | (false, None) => {
                let v = self.req(k)?;
                v.parse()
                    .with_context(|| format!("--{k} {v:?} is not a number"))?
            }
            (false, Some(d)) => d,
        };
        if v == 0 || v > max {
            bail!("--{k} {v}: allowed 1..={max}");
        }
        Ok(v)
    }

    /// A required `ADDR:PORT`.
    pub fn addr(&self, k: &str) -> Result<SocketAddr> {
        self.parsed(k)
    }

    /// A required IPv4 `IP:PORT`.
    pub fn addr_v4(&self, k: &str) -> Result<SocketAddrV4> {
        self.parsed(k)
    }

    fn parsed<T: FromStr>(&self, k: &str) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        let v = self.req(k)?;
        v.parse()
            .with_context(|| format!("--{k} {v:?} is not ADDR:PORT"))
    }
}
