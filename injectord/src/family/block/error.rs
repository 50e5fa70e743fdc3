//! `io_error` at the block layer: `block_fail_bio`, a kprobe on
//! `should_fail_bio` (on the kernel's error-injection list) whose
//! `bpf_override_return` ends a bio of the target with `BLK_STS_IOERR`
//! before the driver sees it, as Chaos Mesh's kernel fault injector does.
//! Needs `CONFIG_BPF_KPROBE_OVERRIDE` and `CONFIG_FUNCTION_ERROR_INJECTION`.
//! The kprobe is attached while a rule needs it.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use aya::programs::{KProbe, kprobe::KProbeLink};
use injector_common::{
    Trigger,
    block::{BLOCK_CGROUPS, BLOCK_FAIL_BIO, BLOCK_RULES, BlockKey, BlockRule},
    syscall::LEVELS_RULES,
};

use super::rules::RuleMap;
use crate::{
    error::{Error, chain},
    family::syscall::depths::{DepthGuard, Depths},
    kernel::{Kernel, shared::SharedByKey},
    target::Cgroup,
};

/// The function the kprobe overrides.
const FUNCTION: &str = "should_fail_bio";

struct Table {
    rules: RuleMap<BlockRule>,
    depths: Depths,
    attached: SharedByKey<(), Attachment>,
}

/// The block-layer backend, or why this kernel has none.
#[derive(Clone)]
pub struct BioErrors {
    table: Result<Arc<Mutex<Table>>, String>,
}

struct Attachment {
    _link: KProbeLink,
}

/// A rule in the kernel; dropping it withdraws the rule, then releases
/// the kprobe (detached with the last rule) and the target's depth.
pub struct BioRule {
    table: Arc<Mutex<Table>>,
    key: BlockKey,
    _attachment: Arc<Attachment>,
    _depth: DepthGuard,
}

impl BioErrors {
    pub fn load(kernel: &mut Kernel, depths: Option<Depths>) -> Self {
        let table = (|| {
            let depths = depths.ok_or("the cgroup depth table is unavailable")?;
            if std::fs::metadata("/sys/bus/event_source/devices/kprobe/type").is_err() {
                return Err(
                    "no kprobe perf PMU (needs CONFIG_KPROBES and CONFIG_KPROBE_EVENTS)".into(),
                );
            }
            program(kernel)?.load().map_err(|e| {
                format!(
                    "the kernel refused a kprobe program that calls bpf_override_return ({}); needs CONFIG_BPF_KPROBE_OVERRIDE",
                    chain(&e)
                )
            })?;
            Ok(Arc::new(Mutex::new(Table {
                rules: RuleMap::take(kernel, BLOCK_RULES, BLOCK_CGROUPS)?,
                depths,
                attached: SharedByKey::default(),
            })))
        })();
        Self { table }
    }

    pub fn unavailable(why: String) -> Self {
        Self { table: Err(why) }
    }

    /// Why the block layer cannot be reached here, if it cannot.
    pub fn ready(&self) -> Result<(), &str> {
        self.table.as_ref().map(|_| ()).map_err(String::as_str)
    }

    /// Bios of `cgroup` (on `dev`, 0: any device) whose operation is in
    /// `ops` fail.
    pub fn install(
        &self,
        kernel: &mut Kernel,
        owner: &str,
        cgroup: &Cgroup,
        dev: u32,
        rule: (u8, u32, Trigger),
    ) -> Result<BioRule, Error> {
        let table = self
            .table
            .as_ref()
            .map_err(|e| Error::UnsupportedKernel(e.clone()))?;
        let mut t = lock(table);
        let key = BlockKey {
            cgroup_id: cgroup.id,
            dev,
            _pad: 0,
        };
        if let Some(other) = t.rules.owner(&key) {
            return Err(Error::Conflict(format!(
                "fault {other:?} already fails the block I/O of cgroup {} on this device; remove it first",
                cgroup.path
            )));
        }
        let attachment = t.attached.get_or_try_make((), || {
            let prog = program(kernel).map_err(Error::Internal)?;
            prog.attach(FUNCTION, 0)
                .and_then(|id| prog.take_link(id))
                .map(|link| Attachment { _link: link })
                .map_err(|e| {
                    Error::UnsupportedKernel(format!(
                        "attaching the override kprobe to {FUNCTION} failed ({}); needs CONFIG_FUNCTION_ERROR_INJECTION",
                        chain(&e)
                    ))
                })
        })?;
        let depth = t.depths.acquire(LEVELS_RULES, &cgroup.path)?;
        let (ops, slot, trigger) = rule;
        let value = BlockRule {
            slot,
            ops,
            _pad: [0; 3],
            trigger,
        };
        t.rules.insert(key, &value, owner)?;
        Ok(BioRule {
            table: table.clone(),
            key,
            _attachment: attachment,
            _depth: depth,
        })
    }
}

fn lock(t: &Arc<Mutex<Table>>) -> MutexGuard<'_, Table> {
    t.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Drop for BioRule {
    fn drop(&mut self) {
        lock(&self.table).rules.remove(&self.key);
    }
}

fn program(kernel: &mut Kernel) -> Result<&mut KProbe, String> {
    kernel
        .ebpf
        .program_mut(BLOCK_FAIL_BIO)
        .and_then(|p| <&mut KProbe>::try_from(p).ok())
        .ok_or_else(|| format!("program {BLOCK_FAIL_BIO} is not in the eBPF object"))
}
