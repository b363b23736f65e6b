//! The API client: connect to the control socket, send one request, read one response.

use crate::api::{Request, Response};
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Connects to the control socket, explaining the usual failures.
pub fn connect(path: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => anyhow::anyhow!(
            "{}: {e}; is `afgate run` running (and with this --api path)?",
            path.display()
        ),
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("{}: {e}; the afgate API accepts only root", path.display())
        }
        _ => anyhow::anyhow!("{}: {e}", path.display()),
    })
}

/// Sends `req` and returns the raw response.
pub fn call(path: &Path, req: &Request) -> anyhow::Result<Response> {
    let mut s = connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut line = req.to_line();
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut rd = BufReader::new(s);
    let mut resp = String::new();
    rd.read_line(&mut resp).context("reading the response")?;
    if resp.is_empty() {
        bail!("afgate closed the connection without answering");
    }
    serde_json::from_str(&resp).with_context(|| format!("unparseable response: {resp}"))
}

/// Sends `req`; the result on success, the server's error message otherwise.
pub fn request(path: &Path, req: &Request) -> anyhow::Result<serde_json::Value> {
    let r = call(path, req)?;
    if r.ok {
        Ok(r.result.unwrap_or_default())
    } else {
        bail!("{}", r.error.unwrap_or_else(|| "request failed".into()))
    }
}
