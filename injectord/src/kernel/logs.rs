//! The eBPF side's log records (aya-log), surfaced through the daemon's
//! tracing subscriber. The programs log only rare events (see the eBPF
//! crate's `log` module); each loaded object has its own ring buffer, read
//! by a task that lives as long as the object.

use std::sync::OnceLock;

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    task::AbortHandle,
};

static LEVEL: OnceLock<u8> = OnceLock::new();

/// The log target of the eBPF side's records: the eBPF crate's module
/// paths (`injector::packet`, ...). `--log info,injector=debug` shows its
/// debug records.
pub const TARGET: &str = "injector";

/// The most verbose level the programs should record, as aya-log numbers
/// them (0 off, 1 error ... 5 trace): what the tracing subscriber shows
/// for [`TARGET`]. The verifier prunes the paths of disabled levels (the
/// level is a read-only global), and enabled ones cost load time, so
/// `injectord=debug` alone does not turn them on. Read once, after the
/// subscriber is installed.
pub fn ebpf_level() -> &'static u8 {
    use tracing::Level;
    LEVEL.get_or_init(|| {
        if tracing::enabled!(target: "injector", Level::TRACE) {
            5
        } else if tracing::enabled!(target: "injector", Level::DEBUG) {
            4
        } else if tracing::enabled!(target: "injector", Level::INFO) {
            3
        } else if tracing::enabled!(target: "injector", Level::WARN) {
            2
        } else if tracing::enabled!(target: "injector", Level::ERROR) {
            1
        } else {
            0
        }
    })
}

/// Reads the object's log records until the returned reader is dropped.
/// aya-log hands records to the `log` facade, which tracing-subscriber
/// forwards to our subscriber. Without a runtime (tools, tests) nothing is
/// read.
pub fn forward(ebpf: &mut Ebpf, object: &str) -> Option<LogReader> {
    let handle = tokio::runtime::Handle::try_current().ok()?;
    let logger = match EbpfLogger::init(ebpf) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(object, error = %e, "eBPF log records will not be shown");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's fd, and flushing neither
    // closes nor replaces it, so the registered fd stays valid.
    let fd = match unsafe { AsyncFd::register_with_interest(logger, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            tracing::warn!(object, error = %e, "eBPF log records will not be shown");
            return None;
        }
    };
    let task = handle.spawn(async move {
        let mut fd = fd;
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Some(LogReader(task.abort_handle()))
}

/// Stops reading an object's log records when dropped.
pub struct LogReader(AbortHandle);

impl Drop for LogReader {
    fn drop(&mut self) {
        self.0.abort();
    }
}
