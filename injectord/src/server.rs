//! The control socket: a Unix stream socket (mode 0600), root peers only.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    error::{ErrorCode, RpcError},
    rpc::{Shared, error_line, serve_line},
};

/// Longest request line accepted (a spec is a few hundred bytes).
const MAX_LINE: usize = 1 << 20;

pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // The single-instance lock is held, so a socket file here is stale.
    let _ = fs::remove_file(path);
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: UnixListener, state: Shared) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = state.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, state).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn connection(stream: UnixStream, state: Shared) -> anyhow::Result<()> {
    let cred = stream.peer_cred()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if cred.uid() != 0 && cred.uid() != me {
        let (_, mut w) = stream.into_split();
        let line = error_line(RpcError::new(
            ErrorCode::PermissionDenied,
            format!("uid {} may not control injectord (root only)", cred.uid()),
        ));
        w.write_all(format!("{line}\n").as_bytes()).await?;
        return Ok(());
    }
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let too_long = n > MAX_LINE && !buf.ends_with(b"\n");
        // JSON text is UTF-8 (RFC 8259); a line that is not cannot be
        // parsed, and is not repaired into something it did not say.
        let response = match std::str::from_utf8(&buf).map(str::trim) {
            Ok("") => continue,
            _ if too_long => Some(error_line(RpcError::new(
                ErrorCode::InvalidRequest,
                format!("request line longer than {MAX_LINE} bytes"),
            ))),
            Ok(line) => serve_line(&state, line).await,
            Err(e) => Some(error_line(RpcError::new(
                ErrorCode::ParseError,
                format!("the line is not valid UTF-8 ({e}), so not JSON"),
            ))),
        };
        if let Some(mut response) = response {
            response.push('\n');
            w.write_all(response.as_bytes()).await?;
        }
        if too_long {
            return Ok(());
        }
    }
}

/// Default control socket path.
pub fn default_socket() -> PathBuf {
    PathBuf::from("/run/injectord/injectord.sock")
}
