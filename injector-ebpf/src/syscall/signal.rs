//! Process faults at a syscall: on sys_enter, a task in the target whose
//! call matches gets the rule's signal (SIGKILL, SIGSEGV, SIGSTOP...),
//! delivered on its way back to user space. Each firing is reported on a
//! ring buffer, so the daemon can resume a task a pause stopped.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        generated::{bpf_send_signal, bpf_send_signal_thread},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use injector_common::syscall::{ACTION_SIGNAL, SIGCONT, SIGSTOP, SignalEvent};

use super::{Registers, SYSCALL_EVENTS, object_matches, path_matches, rule_for_caller};
use crate::trigger;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn syscall_signal(ctx: RawTracePointContext) -> i32 {
    // sys_enter(struct pt_regs *regs, long id)
    let regs: *const pt_regs = ctx.arg(0);
    let nr: u64 = ctx.arg(1);
    let Some(rule) = rule_for_caller(nr as u32, ACTION_SIGNAL) else {
        return 0;
    };
    if !path_matches(rule, regs) || !object_matches(rule, &Registers(regs)) {
        return 0;
    }
    if !trigger::evaluate(rule.slot, &rule.trigger) {
        return 0;
    }
    let signal = u32::from(rule.signal);
    let id = bpf_get_current_pid_tgid();
    let event = SignalEvent {
        slot: rule.slot,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        signal,
        // SAFETY: helper without arguments or side effects.
        at_ns: unsafe { bpf_ktime_get_ns() },
        ..SignalEvent::default()
    };
    // Sent before the record is written: the daemon continues a stopped
    // task when the record's delay has passed, and a SIGSTOP generated
    // after that SIGCONT (this CPU preempted in between, as a TCG guest's
    // vCPU can be for milliseconds) would stop the task for good. A stop
    // whose record is lost (ring buffer full) is taken back with SIGCONT
    // at once, which discards the pending SIGSTOP; its activation is still
    // counted. The record is copied, not reserved: the 6.1 verifier cannot
    // follow a reservation across the trigger.
    let send = |signal: u32| {
        // SAFETY: helpers valid in tracing programs; the signal goes to
        // the current task (or its process), which is in the rule's
        // target.
        unsafe {
            if rule.whole_process != 0 {
                bpf_send_signal(signal);
            } else {
                bpf_send_signal_thread(signal);
            }
        }
    };
    send(signal);
    if SYSCALL_EVENTS.output(&event, 0).is_err() && signal == SIGSTOP {
        send(SIGCONT);
    }
    0
}
