//! RCU grace periods on demand, waited for off the request path.
//!
//! XDP and TC programs run inside RCU read-side sections, and
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` is `synchronize_rcu()`: once it
//! returns, every program that was running when it was called has
//! finished. A writer that took data out of the programs' sight asks for a
//! [`Ticket`] and, before it reuses that data, waits for the ticket. One
//! thread runs grace periods back to back while tickets are pending, so a
//! writer never waits on the request path unless it reuses data within one
//! grace period (milliseconds) of retiring it, and one grace period serves
//! every ticket taken before it started.

use std::{
    sync::{Arc, Condvar, LazyLock, Mutex, PoisonError},
    time::Duration,
};

/// A retirement: satisfied by the first grace period that starts after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

#[derive(Default)]
struct State {
    /// The last ticket handed out.
    requested: u64,
    /// Every ticket up to this one is satisfied.
    completed: u64,
}

struct Grace {
    state: Mutex<State>,
    changed: Condvar,
}

static GRACE: LazyLock<Arc<Grace>> = LazyLock::new(|| {
    let grace = Arc::new(Grace {
        state: Mutex::new(State::default()),
        changed: Condvar::new(),
    });
    let worker = grace.clone();
    // Without the thread, tickets are satisfied on the spot (see `wait`).
    let _ = std::thread::Builder::new()
        .name("rcu-grace".into())
        .spawn(move || worker.run());
    grace
});

/// Takes a ticket for data just taken out of the programs' sight.
pub fn retire() -> Ticket {
    let grace = &*GRACE;
    let mut s = grace.lock();
    s.requested += 1;
    let ticket = Ticket(s.requested);
    grace.changed.notify_all();
    ticket
}

/// Returns once a grace period has passed since `ticket` was taken.
pub fn wait(ticket: Ticket) {
    let grace = &*GRACE;
    let s = grace.lock();
    if s.completed >= ticket.0 {
        return;
    }
    // Bounded, so a grace thread that could not start or died cannot hang
    // the daemon: past the bound, one grace period on this thread.
    let (s, timeout) = grace
        .changed
        .wait_timeout_while(s, Duration::from_secs(1), |s| s.completed < ticket.0)
        .unwrap_or_else(PoisonError::into_inner);
    drop(s);
    if timeout.timed_out() {
        synchronize_rcu();
    }
}

impl Grace {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn run(&self) {
        loop {
            let target = {
                let s = self
                    .changed
                    .wait_while(self.lock(), |s| s.completed == s.requested)
                    .unwrap_or_else(PoisonError::into_inner);
                s.requested
            };
            // Every ticket up to `target` was taken before this starts.
            synchronize_rcu();
            self.lock().completed = target;
            self.changed.notify_all();
        }
    }
}

/// `synchronize_rcu()` from user space. Where the kernel refuses it (CPUs
/// in nohz_full mode), 100 ms: a program runs for microseconds.
fn synchronize_rcu() {
    const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;
    // SAFETY: a syscall without pointers.
    let r = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if r != 0 {
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_satisfied_by_a_later_grace_period() {
        let first = retire();
        let second = retire();
        assert!(second > first);
        wait(second);
        wait(first);
        // The thread served both (the fallback in `wait` moves nothing).
        assert!(GRACE.lock().completed >= second.0);
    }
}
