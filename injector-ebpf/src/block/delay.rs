//! io_delay: a bio of the target stops its submitting task with SIGSTOP
//! (delivered on the task's way back to user space, after the call that
//! issued the I/O returns), and the daemon continues it after the delay,
//! from the ring-buffer record written here (the same records and resume
//! thread as process_pause at a syscall). The delay is drawn per I/O.
//! A process already held is not counted again; at most `max_tasks` are
//! held at once per rule, and the I/O of another passes undelayed and is
//! counted.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::bpf_send_signal_thread,
    },
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use injector_common::{
    MAX_FAULTS,
    block::{BlockKey, DelayRule, MAX_BLOCK_RULES},
    syscall::{SIGCONT, SIGSTOP, SignalEvent},
};

use crate::{syscall::SYSCALL_EVENTS, trigger};

/// `BPF_F_NO_PREALLOC`: a replaced rule is RCU-freed, never read torn.
const NO_PREALLOC: u32 = 1;

#[map]
static DELAY_RULES: HashMap<BlockKey, DelayRule> =
    HashMap::with_max_entries(MAX_BLOCK_RULES, NO_PREALLOC);

#[map]
static DELAY_CGROUPS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_BLOCK_RULES, 0);

#[map]
static DELAY_STOPPED: Array<u64> = Array::with_max_entries(MAX_FAULTS, 0);

#[map]
static DELAY_RESUMED: Array<u64> = Array::with_max_entries(MAX_FAULTS, 0);

#[map]
static DELAY_OVER: PerCpuArray<u64> = PerCpuArray::with_max_entries(MAX_FAULTS, 0);

#[map]
static DELAY_UNTIL: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// Applies the io_delay rule (if any) for `bio`, submitted by the current
/// task; the delay injected, in ns (0: none).
#[inline(always)]
pub fn apply(bio: u64) -> u64 {
    let Some((rule, ops)) = super::rule_for_bio(&DELAY_RULES, &DELAY_CGROUPS, bio) else {
        return 0;
    };
    if rule.ops & ops == 0 || !trigger::evaluate(rule.slot, &rule.trigger) {
        return 0;
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut delay = rule.delay_ns;
    if rule.jitter_ns != 0 {
        // SAFETY: helper without arguments or side effects.
        let r = u64::from(unsafe { bpf_get_prandom_u32() });
        // Uniform in [delay - jitter, delay + jitter].
        delay = delay - rule.jitter_ns + ((r * 2 * rule.jitter_ns) >> 32);
    }
    if delay > rule.max_ns {
        delay = rule.max_ns;
    }
    // SAFETY: the value is copied out.
    let held = unsafe { DELAY_UNTIL.get(&tgid) }.is_some_and(|until| *until > now);
    let mut counted = 0u32;
    if !held {
        let (Some(stopped), Some(resumed)) = (
            DELAY_STOPPED.get_ptr_mut(rule.slot),
            DELAY_RESUMED.get(rule.slot),
        ) else {
            return 0;
        };
        // SAFETY: a valid array element; read racily, so the limit may be
        // passed by the number of CPUs submitting at the same instant.
        if unsafe { *stopped }.saturating_sub(*resumed) >= rule.max_tasks {
            if let Some(over) = DELAY_OVER.get_ptr_mut(rule.slot) {
                // SAFETY: per-CPU value, ours while we run.
                unsafe { *over += 1 };
            }
            return 0;
        }
        // SAFETY: a valid array element, shared across CPUs: atomic.
        unsafe { trigger::fetch_inc(stopped) };
        counted = 1;
    }
    let _ = DELAY_UNTIL.insert(&tgid, &(now + delay), 0);
    let event = SignalEvent {
        slot: rule.slot,
        tgid,
        tid: id as u32,
        signal: SIGSTOP,
        at_ns: now,
        delay_ns: delay,
        counted,
        _pad: 0,
    };
    // Stopped before the record is written: the daemon continues the task
    // when the delay has passed, and a SIGSTOP generated after that
    // SIGCONT (this CPU preempted in between, as a TCG guest's vCPU can be
    // for milliseconds) would stop it for good. A stop whose record is lost
    // would never be continued: it is taken back at once with SIGCONT
    // (which discards the pending SIGSTOP), and so is the count (the daemon
    // will not see it end).
    // SAFETY: helper valid in tracing programs; the current task is in the
    // rule's target (never a kernel thread: those sit in the root cgroup).
    unsafe { bpf_send_signal_thread(SIGSTOP) };
    if SYSCALL_EVENTS.output(&event, 0).is_err() {
        // SAFETY: as above.
        unsafe { bpf_send_signal_thread(SIGCONT) };
        if counted != 0
            && let Some(stopped) = DELAY_STOPPED.get_ptr_mut(rule.slot)
        {
            // SAFETY: the array element counted above, shared across
            // CPUs: atomic; undoes our increment.
            unsafe { trigger::fetch_add(stopped, u64::MAX) };
        }
        return 0;
    }
    delay
}
