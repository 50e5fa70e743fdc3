//! Decides whether a matching event becomes an activation, and counts both.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_get_prandom_u32;
use injector_common::Trigger;

use crate::maps::{FAULT_STATS, TRIGGER_STATE, coarse_clock, lease_checked};

/// Evaluates `trigger` for one event that matched the fault in `slot`.
/// Returns whether the fault fires; updates the slot's counters either way.
/// Expired rules, and every rule once the daemon's lease has run out,
/// return `false` without counting an evaluation: every fault of every
/// family goes through here, so none outlives its daemon by more than the
/// lease (plus one clock tick: see [`crate::maps::CoarseClock`]).
#[inline(always)]
pub fn evaluate(slot: u32, trigger: &Trigger) -> bool {
    if lease_checked() || trigger.expires_at_ns != 0 {
        let clock = coarse_clock();
        if !clock.leased() || (trigger.expires_at_ns != 0 && clock.now >= trigger.expires_at_ns) {
            return false;
        }
    }
    let Some(stats) = FAULT_STATS.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: per-CPU value: nothing else on this CPU runs concurrently with
    // us (programs run with migration disabled), so plain writes are fine.
    unsafe { (*stats).evaluations += 1 };

    // SAFETY: as above.
    if !fires(slot, trigger, unsafe { &mut (*stats).rng }) {
        return false;
    }
    // SAFETY: as above.
    unsafe { (*stats).activations += 1 };
    true
}

#[inline(always)]
fn fires(slot: u32, trigger: &Trigger, rng: &mut u64) -> bool {
    if trigger.is_counted() {
        let Some(state) = TRIGGER_STATE.get_ptr_mut(slot) else {
            return false;
        };
        // SAFETY: `state` points into an array map value that lives as long as
        // the map; the kernel aligns values to 8 bytes. Shared across CPUs, so
        // only atomic operations touch it.
        let n = unsafe { fetch_inc(&raw mut (*state).seen) };
        if n < trigger.after {
            return false;
        }
        if trigger.every_nth > 1 && !(n - trigger.after + 1).is_multiple_of(trigger.every_nth) {
            return false;
        }
        if !chance(trigger.threshold, rng) {
            return false;
        }
        if trigger.max_activations != 0 {
            // SAFETY: as above.
            if unsafe { fetch_inc(&raw mut (*state).granted) } >= trigger.max_activations {
                return false;
            }
        }
        true
    } else {
        chance(trigger.threshold, rng)
    }
}

#[inline(always)]
fn chance(threshold: u64, rng: &mut u64) -> bool {
    if threshold >= Trigger::ALWAYS {
        return true;
    }
    u64::from(next_random(rng)) < threshold
}

/// The next 32 random bits of a per-CPU xorshift64* generator (Vigna,
/// 2016; what passes BigCrush in its upper bits, which are the ones used).
/// A few ALU instructions where `bpf_get_prandom_u32` is a helper call
/// (what it saves per matching packet was within `./x bench`'s noise on
/// the 2-core host). The
/// state is seeded from the kernel's generator the first time a CPU uses
/// a slot (the daemon zeroes it with the slot), so no two CPUs or slots
/// share a sequence.
#[inline(always)]
fn next_random(state: &mut u64) -> u32 {
    let mut x = *state;
    if x == 0 {
        // SAFETY: helper without arguments.
        let (high, low) = unsafe { (bpf_get_prandom_u32(), bpf_get_prandom_u32()) };
        // `| 1`: xorshift's one fixed point is 0.
        x = (u64::from(high) << 32 | u64::from(low)) | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
}

/// Atomically increments `*counter` and returns its previous value
/// (`BPF_ATOMIC | BPF_FETCH`, ISA v3). `core::sync::atomic` offers no
/// read-modify-write on the BPF target, hence the intrinsic.
///
/// SeqCst, not Relaxed, on purpose: LLVM 23's BPF backend lowers a relaxed
/// `atomicrmw add` to a plain `lock +=` (no BPF_FETCH) even when the result
/// is used, which silently returns the addend. SeqCst emits
/// `atomic_fetch_add`, whose cost on the kernel's JIT is the same `lock xadd`.
///
/// # Safety
///
/// `counter` must be valid, 8-byte aligned and only accessed atomically.
#[inline(always)]
pub(crate) unsafe fn fetch_inc(counter: *mut u64) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe { fetch_add(counter, 1) }
}

/// Atomically adds `n` (wrapping: `u64::MAX` subtracts one) and returns
/// the previous value.
///
/// # Safety
///
/// As [`fetch_inc`].
#[inline(always)]
pub(crate) unsafe fn fetch_add(counter: *mut u64, n: u64) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, n) }
}
