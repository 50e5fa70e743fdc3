//! A blocking client for injectord's control socket: one JSON-RPC 2.0
//! request per line, one response per line.
//!
//! Its own crate, with nothing but std and serde_json, so that `injectctl`,
//! the end-to-end test harness and the benchmarks share one client without
//! depending on the daemon (whose build compiles the eBPF programs).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// How long a call may take before the client gives up. Every method
/// answers in milliseconds; a daemon that does not answer in this time is
/// stuck, and saying so beats blocking forever.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

/// An error response from the daemon.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ErrorResponse {
    /// The stable code from `error.data.code`.
    pub code: String,
    pub message: String,
    pub data: Value,
}

impl Client {
    pub fn connect(socket: &Path) -> anyhow::Result<Self> {
        let stream = UnixStream::connect(socket).with_context(|| {
            format!(
                "connecting to injectord at {} (is it running? start it with `./x run`)",
                socket.display()
            )
        })?;
        stream.set_read_timeout(Some(CALL_TIMEOUT))?;
        stream.set_write_timeout(Some(CALL_TIMEOUT))?;
        Ok(Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            next_id: 1,
        })
    }

    /// Sends one raw line and returns the response line, parsed.
    pub fn raw(&mut self, line: &str) -> anyhow::Result<Value> {
        self.writer.write_all(line.as_bytes())?;
        self.writer.write_all(b"\n")?;
        let mut resp = String::new();
        let n = self.reader.read_line(&mut resp).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                anyhow::anyhow!("injectord did not answer within {CALL_TIMEOUT:?}")
            } else {
                e.into()
            }
        })?;
        if n == 0 {
            bail!("injectord closed the connection");
        }
        Ok(serde_json::from_str(&resp)?)
    }

    /// Calls a method; an error response becomes an [`ErrorResponse`].
    pub fn call(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut resp = self.raw(&req.to_string())?;
        if let Some(err) = resp.get_mut("error") {
            return Err(ErrorResponse {
                code: err["data"]["code"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_string(),
                message: err["message"].as_str().unwrap_or_default().to_string(),
                data: err["data"].take(),
            }
            .into());
        }
        Ok(resp["result"].take())
    }
}
