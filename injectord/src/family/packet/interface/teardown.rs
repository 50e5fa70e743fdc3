//! Detaching an interface's programs and undoing its netlink state after
//! its last fault, off the request's path.
//!
//! The fault's effect ends when its rules leave the maps, before any of
//! this; what follows is slow and changes nothing for the traffic: a tcx
//! link's release waits for an RCU grace period, an XDP detach on veth
//! for another, clsact and fq checks run tc(8). So `remove` answers once
//! the rules are gone, and a thread of its own does the rest, in the same
//! order, each guard inside its namespace and settling its reaper record
//! as before (a crash meanwhile leaves the records pending for the
//! reaper and the journal).
//!
//! A device being torn down is not attached to again until that is done:
//! a new XDP link would be refused while the old one is there, and the
//! old fq or clsact undo would pull state from under the new faults. Its
//! next first fault waits ([`Teardown::wait_for`]); the daemon's exit
//! waits for all of them ([`Teardown::settle`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use crate::kernel::netns::DeviceKey;

/// How long a first fault waits for its device's teardown (each netlink
/// or tc(8) step in it is bounded; this is a backstop).
const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// The queue of what is left to undo, shared with its thread.
#[derive(Clone, Default)]
pub struct Teardown(Arc<Shared>);

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when work arrives and when a device's teardown is done.
    changed: Condvar,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(DeviceKey, Box<dyn Send>)>,
    /// Devices with a teardown queued or running, and how many.
    pending: HashMap<DeviceKey, usize>,
    thread: bool,
}

impl Teardown {
    /// Drops `what` (whose drop undoes the device's state) on the teardown
    /// thread, started at the first use; inline if it cannot be started.
    pub fn retire(&self, key: DeviceKey, what: Box<dyn Send>) {
        let mut state = self.lock();
        if !state.thread {
            let shared = Arc::clone(&self.0);
            match std::thread::Builder::new()
                .name("interface-teardown".into())
                .spawn(move || run(&shared))
            {
                Ok(_) => state.thread = true,
                Err(e) => {
                    drop(state);
                    tracing::warn!(error = %e, "no teardown thread: undoing on the request's path");
                    drop(what);
                    return;
                }
            }
        }
        *state.pending.entry(key).or_default() += 1;
        state.queue.push_back((key, what));
        self.0.changed.notify_all();
    }

    /// Waits until nothing of `key` is left to undo.
    pub fn wait_for(&self, key: &DeviceKey) {
        let state = self.lock();
        let (state, timeout) = self
            .0
            .changed
            .wait_timeout_while(state, WAIT_LIMIT, |s| s.pending.contains_key(key))
            .unwrap_or_else(PoisonError::into_inner);
        if timeout.timed_out() && state.pending.contains_key(key) {
            tracing::warn!(
                ?key,
                "the device's previous teardown is still running after {WAIT_LIMIT:?}; attaching anyway"
            );
        }
    }

    /// Waits until everything queued is undone (the daemon's exit).
    pub fn settle(&self) {
        let state = self.lock();
        drop(
            self.0
                .changed
                .wait_timeout_while(state, WAIT_LIMIT, |s| !s.pending.is_empty())
                .unwrap_or_else(PoisonError::into_inner),
        );
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The teardown thread: undoes what is queued, oldest first, for the
/// process's lifetime.
fn run(shared: &Shared) {
    loop {
        let (key, what) = {
            let mut state = shared.lock();
            loop {
                if let Some(next) = state.queue.pop_front() {
                    break next;
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        drop(what);
        let mut state = shared.lock();
        if let Some(n) = state.pending.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                state.pending.remove(&key);
            }
        }
        shared.changed.notify_all();
    }
}
