//! Syscall and process faults: a syscall fails with a chosen errno, or its
//! caller gets a signal, in one target cgroup and its descendants.
//!
//! Every backend finds its rule the same way, by (target cgroup, syscall
//! number, action) in [`SYSCALL_RULES`]: hooks that run for every task
//! (kprobes, LSM hooks, the sys_enter tracepoint) look up the caller's
//! ancestor at each depth a target sits at ([`SYSCALL_LEVELS`], deepest
//! first, usually one or two lookups); cgroup programs already know their
//! target from their attachment.

mod cgroup;
mod kprobe;
mod latency;
mod lsm;
mod signal;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_probe_read_kernel, bpf_probe_read_user_str_bytes,
    },
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use injector_common::syscall::{
    LEVELS_RULES, Levels, MAX_LEVELS, MAX_SYSCALL_RULES, NO_PATH_ARG, PATH_PREFIX_MAX, SyscallKey,
    SyscallRule,
};

use crate::trigger;

/// `BPF_F_NO_PREALLOC`: values are freed after an RCU grace period, so a
/// rule the daemon replaces or removes is never read half-rewritten.
const NO_PREALLOC: u32 = 1;

#[map]
static SYSCALL_RULES: HashMap<SyscallKey, SyscallRule> =
    HashMap::with_max_entries(MAX_SYSCALL_RULES, NO_PREALLOC);

/// The cgroup depths targets sit at: of rule targets and of watched
/// cgroups (`LEVELS_RULES`, `LEVELS_WATCHES`; written by the daemon).
#[map]
static SYSCALL_LEVELS: Array<Levels> = Array::with_max_entries(2, 0);

/// Signal rules report here when they fire, so the daemon can resume the
/// tasks a pause stopped.
#[map]
static SYSCALL_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// The rule of `action` for syscall `nr` whose target contains the calling
/// task, deepest target first.
#[inline(always)]
fn rule_for_caller(nr: u32, action: u32) -> Option<&'static SyscallRule> {
    for_caller(LEVELS_RULES, |id| rule_of(id, nr, action))
}

/// The first `find(ancestor)` that answers, over the calling task's
/// ancestors at the depths of level set `set`, deepest first.
#[inline(always)]
fn for_caller<T>(set: u32, mut find: impl FnMut(u64) -> Option<T>) -> Option<T> {
    let levels = SYSCALL_LEVELS.get(set)?;
    let count = levels.count as usize;
    for i in 0..MAX_LEVELS {
        if i >= count {
            break;
        }
        let Some(&level) = levels.levels.get(i) else {
            break;
        };
        // SAFETY: helper without side effects; 0 when the caller's cgroup
        // is shallower than `level`.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            continue;
        }
        if let Some(found) = find(id) {
            return Some(found);
        }
    }
    None
}

/// The rule of `action` for syscall `nr` in target `cgroup_id`.
#[inline(always)]
fn rule_of(cgroup_id: u64, nr: u32, action: u32) -> Option<&'static SyscallRule> {
    let key = SyscallKey {
        cgroup_id,
        nr,
        action,
    };
    // SAFETY: the map is BPF_F_NO_PREALLOC, so the value stays valid and
    // unmodified for this RCU read section (the program's run).
    unsafe { SYSCALL_RULES.get(&key) }
}

/// Argument `n` (0-based) of the syscall whose user registers are `regs`
/// (x86_64: rdi, rsi, rdx, r10, r8, r9).
#[inline(always)]
fn syscall_arg(regs: *const pt_regs, n: u8) -> Option<u64> {
    // SAFETY: only the address is computed here; the read below checks it.
    let field = unsafe {
        match n {
            0 => &raw const (*regs).rdi,
            1 => &raw const (*regs).rsi,
            2 => &raw const (*regs).rdx,
            3 => &raw const (*regs).r10,
            4 => &raw const (*regs).r8,
            5 => &raw const (*regs).r9,
            _ => return None,
        }
    };
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(field) }.ok()
}

/// The syscall number in the user registers `regs`.
#[inline(always)]
fn syscall_nr(regs: *const pt_regs) -> Option<u32> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(&raw const (*regs).orig_rax) }
        .ok()
        .map(|nr| nr as u32)
}

/// Whether the rule's path filter (if any) matches the path argument of
/// the call. A prefix matches whole components.
#[inline(always)]
fn path_matches(rule: &SyscallRule, regs: *const pt_regs) -> bool {
    if rule.path_len == 0 || rule.path_arg == NO_PATH_ARG {
        return true;
    }
    let Some(ptr) = syscall_arg(regs, rule.path_arg) else {
        return false;
    };
    let mut buf = [0u8; PATH_PREFIX_MAX + 1];
    // SAFETY: reads at most buf.len() bytes of user memory, checked by the
    // helper; a path the kernel just copied in is resident.
    if unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut buf) }.is_err() {
        return false;
    }
    prefix_matches(&rule.path, rule.path_len as usize, &buf)
}

/// Whether `seen` (NUL-terminated) starts with the first `len` bytes of
/// `prefix`, ending at a component boundary. Every access is at the loop
/// index, a constant in each iteration the verifier walks: reads at a
/// variable offset from the stack are refused.
#[inline(always)]
fn prefix_matches(
    prefix: &[u8; PATH_PREFIX_MAX],
    len: usize,
    seen: &[u8; PATH_PREFIX_MAX + 1],
) -> bool {
    let mut last = 0u8;
    for (i, &c) in seen.iter().enumerate() {
        if i == len {
            return last == b'/' || c == 0 || c == b'/';
        }
        let Some(&p) = prefix.get(i) else {
            return false;
        };
        if p != c {
            return false;
        }
        last = p;
    }
    false
}

/// The errno a rule served by `backend` (and LSM `hook`, 0 elsewhere)
/// makes syscall `nr` fail with, if the calling task is in its target and
/// its filter and trigger agree.
#[inline(always)]
fn error_for(nr: u32, backend: u8, hook: u8, regs: *const pt_regs) -> Option<u32> {
    let rule = rule_for_caller(nr, injector_common::syscall::ACTION_ERROR)?;
    if rule.backend != backend || (rule.hook != 0 && rule.hook != hook) || !path_matches(rule, regs)
    {
        return None;
    }
    trigger::evaluate(rule.slot, &rule.trigger).then_some(rule.errno)
}
