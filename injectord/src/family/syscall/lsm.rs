//! The LSM backend: one BPF LSM program per hook (see
//! `injector_common::syscall::LSM_HOOKS`), each loaded at start-up where
//! BPF LSM is active and the hook's arity in this kernel's BTF is the one
//! the program was built for, and attached while a fault uses it.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
};

use aya::{
    Btf,
    programs::{Lsm, lsm::LsmLink},
};
use injector_common::syscall::{LSM_HOOKS, LsmHook};

use crate::{
    error::{Error, chain},
    kernel::{Kernel, btf::Arities},
};

pub struct LsmHooks {
    /// Why BPF LSM is unavailable here, if it is.
    ready: Result<(), String>,
    /// Each hook's program, loaded, or why not.
    loaded: HashMap<&'static str, Result<(), String>>,
    attached: HashMap<&'static str, Weak<Attachment>>,
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
    pub fn load(kernel: &mut Kernel) -> Self {
        let mut loaded = HashMap::new();
        let ready = active().and_then(|()| {
            let btf = Btf::from_sys_fs().map_err(|e| format!("no kernel BTF: {e}"))?;
            let arities = Arities::from_sys_fs().map_err(|e| format!("reading kernel BTF: {e}"))?;
            for hook in LSM_HOOKS {
                loaded.insert(hook.program, load_hook(kernel, &btf, &arities, hook));
            }
            // Where no hook loads, BPF LSM itself is missing: say why once.
            let first = LSM_HOOKS.first().and_then(|h| loaded.get(h.program));
            match first {
                Some(Err(e)) if loaded.values().all(Result::is_err) => Err(e.clone()),
                _ => Ok(()),
            }
        });
        Self {
            ready,
            loaded,
            attached: HashMap::new(),
        }
    }

    pub fn ready(&self) -> Result<(), &str> {
        self.ready.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Whether `hook`'s program is loaded, or why not.
    pub fn hook_ready(&self, hook: &LsmHook) -> Result<(), String> {
        self.ready().map_err(str::to_string)?;
        match self.loaded.get(hook.program) {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(format!("the {} hook's program was not loaded", hook.hook)),
        }
    }

    /// The hook's program attached, now if needed.
    pub fn attach(&mut self, kernel: &mut Kernel, hook: &LsmHook) -> Result<Arc<Attachment>, Error> {
        self.attached.retain(|_, a| a.strong_count() > 0);
        if let Some(a) = self.attached.get(hook.program).and_then(Weak::upgrade) {
            return Ok(a);
        }
        let prog = program(kernel, hook)?;
        let link = prog
            .attach()
            .and_then(|id| prog.take_link(id))
            .map_err(|source| Error::Attach {
                what: format!("{} to LSM hook {}", hook.program, hook.hook),
                source,
            })?;
        let a = Arc::new(Attachment {
            hook: hook.hook,
            _link: link,
        });
        self.attached.insert(hook.program, Arc::downgrade(&a));
        tracing::debug!(hook = hook.hook, "LSM program attached");
        Ok(a)
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
        .ok_or_else(|| Error::Internal(format!("program {} is not in the eBPF object", hook.program)))
}

fn load_hook(kernel: &mut Kernel, btf: &Btf, arities: &Arities, hook: &LsmHook) -> Result<(), String> {
    let function = format!("bpf_lsm_{}", hook.hook);
    match arities.of(&function) {
        Some(n) if n == usize::from(hook.arity) => {}
        Some(n) => {
            return Err(format!(
                "LSM hook {} takes {n} arguments on this kernel, the program was built for {}",
                hook.hook, hook.arity
            ));
        }
        None => return Err(format!("this kernel has no LSM hook {}", hook.hook)),
    }
    let prog = program(kernel, hook).map_err(|e| e.to_string())?;
    prog.load(hook.hook, btf)
        .map_err(|e| format!("loading the {} LSM program failed: {}", hook.hook, chain(&e)))
}
