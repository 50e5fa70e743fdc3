//! The LSM backend: one BPF LSM program per hook (see
//! `injector_common::syscall::LSM_HOOKS`), each loaded at start-up where
//! BPF LSM is active and the hook's arity in this kernel's BTF is the one
//! the program was built for, and attached while a fault uses it.

use std::{collections::HashMap, sync::Arc};

use aya::{
    Btf,
    programs::{Lsm, lsm::LsmLink},
};
use injector_common::syscall::{LSM_HOOKS, LsmHook};

use crate::{
    error::{Error, chain},
    kernel::{Kernel, btf::KernelBtf, shared::SharedByKey},
};

pub struct LsmHooks {
    /// Why BPF LSM is unavailable here, if it is.
    ready: Result<(), String>,
    /// Each hook: loaded (`Some(Ok)`), refused (`Some(Err)`: its arity
    /// differs, or the kernel refused the program), or not tried yet.
    loaded: HashMap<&'static str, Result<(), String>>,
    /// The kernel's BTF, parsed at the first load after start-up.
    btf: Option<Btf>,
    attached: SharedByKey<&'static str, Attachment>,
}

/// A hook's program attached; detached when the last fault drops it.
pub struct Attachment {
    hook: &'static str,
    _link: LsmLink,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        tracing::debug!(hook = self.hook, "LSM program detached");
    }
}

impl LsmHooks {
    /// Checks every hook's arity against the kernel's BTF and loads the
    /// first one (file_open) to learn whether BPF LSM works here. The
    /// others load at their first use: verifying all of them at every
    /// start-up would cost seconds on slow machines.
    pub fn load(kernel: &mut Kernel, kernel_btf: Result<&KernelBtf, &str>) -> Self {
        let mut loaded = HashMap::new();
        let ready = active().and_then(|()| {
            let arities = kernel_btf.map_err(|e| format!("reading kernel BTF: {e}"))?;
            for hook in LSM_HOOKS {
                if let Err(e) = arity(arities, hook) {
                    loaded.insert(hook.program, Err(e));
                }
            }
            let first = LSM_HOOKS.first().ok_or("no LSM hooks")?;
            let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
            let outcome = load_program(kernel, &btf, first);
            loaded.insert(first.program, outcome.clone());
            outcome
        });
        Self {
            ready,
            loaded,
            btf: None,
            attached: SharedByKey::default(),
        }
    }

    pub fn ready(&self) -> Result<(), &str> {
        self.ready.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether `hook`'s program is (or can be) loaded, or why not.
    pub fn hook_ready(&self, hook: &LsmHook) -> Result<(), String> {
        self.ready().map_err(str::to_string)?;
        self.loaded.get(hook.program).cloned().unwrap_or(Ok(()))
    }

    /// The hook's program attached, loaded and attached now if needed.
    pub fn attach(
        &mut self,
        kernel: &mut Kernel,
        hook: &LsmHook,
    ) -> Result<Arc<Attachment>, Error> {
        let Self {
            attached,
            loaded,
            btf,
            ready,
        } = self;
        attached.get_or_try_make(hook.program, || {
            ready.clone().map_err(Error::UnsupportedKernel)?;
            match loaded.get(hook.program) {
                Some(outcome) => outcome.clone().map_err(Error::UnsupportedKernel)?,
                None => {
                    if btf.is_none() {
                        *btf = Some(Btf::from_sys_fs().map_err(|e| {
                            Error::UnsupportedKernel(format!("reading the kernel's BTF: {e}"))
                        })?);
                    }
                    let btf = btf.as_ref().ok_or_else(|| Error::Internal("BTF".into()))?;
                    let outcome = load_program(kernel, btf, hook);
                    loaded.insert(hook.program, outcome.clone());
                    outcome.map_err(Error::UnsupportedKernel)?;
                }
            }
            let prog = program(kernel, hook)?;
            let link = prog
                .attach()
                .and_then(|id| prog.take_link(id))
                .map_err(|source| Error::Attach {
                    what: format!("{} to LSM hook {}", hook.program, hook.hook),
                    source,
                })?;
            tracing::debug!(hook = hook.hook, "LSM program attached");
            Ok(Attachment {
                hook: hook.hook,
                _link: link,
            })
        })
    }
}

/// Whether "bpf" is an active LSM (the list in securityfs).
fn active() -> Result<(), String> {
    match std::fs::read_to_string("/sys/kernel/security/lsm") {
        Ok(list) if list.split(',').any(|l| l.trim() == "bpf") => Ok(()),
        Ok(list) => Err(format!(
            "\"bpf\" is not in the active LSM list ({}); boot with lsm=...,bpf",
            list.trim()
        )),
        // Without securityfs the program loads below decide.
        Err(_) => Ok(()),
    }
}

fn program<'a>(kernel: &'a mut Kernel, hook: &LsmHook) -> Result<&'a mut Lsm, Error> {
    kernel
        .ebpf
        .program_mut(hook.program)
        .and_then(|p| <&mut Lsm>::try_from(p).ok())
        .ok_or_else(|| {
            Error::Internal(format!(
                "program {} is not in the eBPF object",
                hook.program
            ))
        })
}

/// Whether the hook takes as many arguments here as the program expects.
fn arity(arities: &KernelBtf, hook: &LsmHook) -> Result<(), String> {
    match arities.arity(&format!("bpf_lsm_{}", hook.hook)) {
        Some(n) if n == usize::from(hook.arity) => Ok(()),
        Some(n) => Err(format!(
            "LSM hook {} takes {n} arguments on this kernel, the program was built for {}",
            hook.hook, hook.arity
        )),
        None => Err(format!("this kernel has no LSM hook {}", hook.hook)),
    }
}

fn load_program(kernel: &mut Kernel, btf: &Btf, hook: &LsmHook) -> Result<(), String> {
    let prog = program(kernel, hook).map_err(|e| e.to_string())?;
    prog.load(hook.hook, btf).map_err(|e| {
        format!(
            "loading the {} LSM program failed: {}",
            hook.hook,
            chain(&e)
        )
    })
}
