//! The signal backend of process faults at a syscall: `syscall_signal` on
//! the raw tracepoint `sys_enter`, sending the rule's signal with
//! `bpf_send_signal`. Loaded at the first such fault (verifying it at every
//! start-up would cost time for a fault few use) and attached while any
//! signal rule exists, shared by the faults that use it.

use std::sync::{Arc, Weak};

use aya::{
    programs::{ProgramType, RawTracePoint, raw_trace_point::RawTracePointLink},
    sys::{BpfHelper, is_helper_supported, is_program_supported},
};
use injector_common::syscall::SYSCALL_SIGNAL;

use crate::{
    error::{Error, chain},
    kernel::Kernel,
};

/// The tracepoint the program attaches to.
const TRACEPOINT: &str = "sys_enter";

pub struct SignalHook {
    /// Why the backend is unavailable here, if it is (the kernel's raw
    /// tracepoint and `bpf_send_signal` probes).
    ready: Result<(), String>,
    /// The program's load, once tried.
    loaded: Option<Result<(), String>>,
    attached: Weak<Attachment>,
}

/// `syscall_signal` attached to `sys_enter`; detached when the last fault
/// using it drops it.
pub struct Attachment {
    _link: RawTracePointLink,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        tracing::debug!("syscall_signal detached from sys_enter");
    }
}

impl SignalHook {
    pub fn probe() -> Self {
        let ready = match is_program_supported(ProgramType::RawTracePoint) {
            Ok(true) => match is_helper_supported(
                ProgramType::RawTracePoint,
                BpfHelper::BPF_FUNC_send_signal,
            ) {
                Ok(true) => Ok(()),
                Ok(false) => Err(
                    "the kernel does not offer bpf_send_signal to raw tracepoint programs (Linux 5.3+)"
                        .to_string(),
                ),
                Err(e) => Err(format!("probing bpf_send_signal failed: {e}")),
            },
            Ok(false) => Err("the kernel does not support raw tracepoint programs".into()),
            Err(e) => Err(format!("probing raw tracepoint programs failed: {e}")),
        };
        Self {
            ready,
            loaded: None,
            attached: Weak::new(),
        }
    }

    /// Why not, if signals at a syscall are unavailable here.
    pub fn ready(&self) -> Result<(), String> {
        self.ready.clone()?;
        match &self.loaded {
            Some(Err(e)) => Err(e.clone()),
            _ => Ok(()),
        }
    }

    /// The program attached, loaded and attached now if needed.
    pub fn attach(&mut self, kernel: &mut Kernel) -> Result<Arc<Attachment>, Error> {
        if let Some(a) = self.attached.upgrade() {
            return Ok(a);
        }
        self.ready().map_err(Error::UnsupportedKernel)?;
        if self.loaded.is_none() {
            let outcome = program(kernel).and_then(|p| {
                p.load().map_err(|e| {
                    format!(
                        "the kernel refused the sys_enter signal program: {}",
                        chain(&e)
                    )
                })
            });
            self.loaded = Some(outcome.clone());
            outcome.map_err(Error::UnsupportedKernel)?;
        }
        let prog = program(kernel).map_err(Error::Internal)?;
        let link = prog
            .attach(TRACEPOINT)
            .and_then(|id| prog.take_link(id))
            .map_err(|source| Error::Attach {
                what: format!("{SYSCALL_SIGNAL} to the raw tracepoint {TRACEPOINT}"),
                source,
            })?;
        let a = Arc::new(Attachment { _link: link });
        self.attached = Arc::downgrade(&a);
        tracing::debug!("syscall_signal attached to sys_enter");
        Ok(a)
    }
}

fn program(kernel: &mut Kernel) -> Result<&mut RawTracePoint, String> {
    kernel
        .ebpf
        .program_mut(SYSCALL_SIGNAL)
        .and_then(|p| <&mut RawTracePoint>::try_from(p).ok())
        .ok_or_else(|| format!("program {SYSCALL_SIGNAL} is not in the eBPF object"))
}
