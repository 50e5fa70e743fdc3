//! The override backend: `syscall_kprobe` attached to a syscall's entry
//! (`__x64_sys_*`), returning the errno through `bpf_override_return`.
//! Needs `CONFIG_BPF_KPROBE_OVERRIDE` and a kprobe PMU; reaches any
//! syscall on the kernel's error-injection list (all of them). One
//! attachment per syscall, shared by the faults that use it.

use std::{collections::HashSet, sync::Arc};

use aya::programs::{KProbe, kprobe::KProbeLink};
use injector_common::syscall::SYSCALL_KPROBE;

use super::table::Syscall;
use crate::{
    error::{Error, chain},
    kernel::{Kernel, shared::SharedByKey},
};

pub struct Kprobes {
    /// Why the override backend is unavailable here, if it is.
    ready: Result<(), String>,
    /// This kernel's syscall entry points (`__x64_sys_*`).
    entries: HashSet<String>,
    attached: SharedByKey<String, Attachment>,
}

/// `syscall_kprobe` on one syscall's entry; detached when the last fault
/// using it drops it.
pub struct Attachment {
    function: String,
    _link: KProbeLink,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        tracing::debug!(function = %self.function, "kprobe detached");
    }
}

impl Kprobes {
    pub fn load(kernel: &mut Kernel) -> Self {
        let ready = load_program(kernel);
        let entries = if ready.is_ok() {
            syscall_entries()
        } else {
            HashSet::new()
        };
        Self {
            ready,
            entries,
            attached: SharedByKey::default(),
        }
    }

    /// Why not, if the backend is unavailable on this kernel.
    pub fn ready(&self) -> Result<(), &str> {
        self.ready.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// The entry point of `syscall` on this kernel, if it has one. Where
    /// x86_64's table names a `new` entry (uname is `sys_newuname`, stat
    /// `sys_newstat`), the plain one also exists but serves the old ABI of
    /// other architectures, so the `new` one comes first.
    pub fn entry(&self, syscall: Syscall) -> Option<String> {
        let name = syscall.name();
        [format!("__x64_sys_new{name}"), format!("__x64_sys_{name}")]
            .into_iter()
            .find(|f| self.entries.contains(f))
    }

    /// The program attached to `function`, attached now if needed.
    pub fn attach(
        &mut self,
        kernel: &mut Kernel,
        function: &str,
    ) -> Result<Arc<Attachment>, Error> {
        self.attached.get_or_try_make(function.to_string(), || {
            let prog: &mut KProbe = program(kernel)?;
            let link = prog
                .attach(function, 0)
                .and_then(|id| prog.take_link(id))
                .map_err(|e| {
                    Error::UnsupportedKernel(format!(
                        "attaching the override kprobe to {function} failed ({}); \
                         the function must be on /sys/kernel/debug/error_injection/list",
                        chain(&e)
                    ))
                })?;
            tracing::debug!(function, "kprobe attached");
            Ok(Attachment {
                function: function.to_string(),
                _link: link,
            })
        })
    }
}

fn program(kernel: &mut Kernel) -> Result<&mut KProbe, Error> {
    kernel
        .ebpf
        .program_mut(SYSCALL_KPROBE)
        .and_then(|p| <&mut KProbe>::try_from(p).ok())
        .ok_or_else(|| {
            Error::Internal(format!(
                "program {SYSCALL_KPROBE} is not in the eBPF object"
            ))
        })
}

fn load_program(kernel: &mut Kernel) -> Result<(), String> {
    if std::fs::metadata("/sys/bus/event_source/devices/kprobe/type").is_err() {
        return Err("no kprobe perf PMU (needs CONFIG_KPROBES and CONFIG_KPROBE_EVENTS)".into());
    }
    let prog = program(kernel).map_err(|e| e.to_string())?;
    prog.load().map_err(|e| {
        format!(
            "the kernel refused a kprobe program that calls bpf_override_return ({}); \
             needs CONFIG_BPF_KPROBE_OVERRIDE",
            chain(&e)
        )
    })
}

/// `__x64_sys_*` symbols in /proc/kallsyms.
fn syscall_entries() -> HashSet<String> {
    std::fs::read_to_string("/proc/kallsyms")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .filter(|s| s.starts_with("__x64_sys_"))
        .map(str::to_string)
        .collect()
}
