//! A warm pool of per-interface copies of the object: loaded, every packet
//! program verified, attached nowhere. A first fault on a device takes one
//! and only attaches (under a millisecond instead of 40 to 110 ms of
//! loading and verifying on the request's path); a background thread
//! loads the next one.
//!
//! The thread starts once the daemon reports ready, so start-up never
//! waits for it (the TCG guests of the test matrix verify slowly), and it
//! runs at the lowest CPU priority, so requests and other work come first.
//! A copy in the pool holds maps and loaded programs and nothing else: no
//! link, no netlink state, so there is nothing for the reaper or the
//! journal to undo, and it goes with the process. Its lease is renewed
//! like any object's, which is harmless while nothing runs its programs.
//!
//! Verification is not the only wait on a first TC fault. The kernel runs
//! tcx programs only while its TC hooks are on (static keys, global), and
//! the first tcx link on a host turns them on after an RCU grace period
//! (10-20 ms on a HZ=250 host): the link's program is in the device's
//! list at once, but the hook that would run it is still off. So the
//! thread first anchors the hooks: a copy's two TC programs, linked to the
//! loopback of a network namespace of its own, where nothing runs them.
//! With the hooks on, a device's first tcx program runs from the moment
//! it is listed, which `Interface::install` uses by publishing the rules
//! before it attaches. The price is the hooks' own, paid by every packet
//! of the host while the daemon runs: a pointer test per direction, as on
//! any host where something uses TC. clsact filters (kernels before 6.6,
//! `--tc-attach clsact`) turn the hooks on as their qdisc is added, with
//! no grace period to wait, so they need no anchor.

use std::{
    fs::File,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak},
    time::{Duration, Instant},
};

use aya::programs::{LinkOrder, TcAttach, TcAttachType, tc::SchedClassifierLink};

use super::{Blank, tc};
use crate::{error::chain, kernel::lease::Lease};

/// The ready copies and the thread that refills them.
pub struct Pool(Arc<Shared>);

/// How full the pool is, for `status` (takes only the pool's own lock,
/// which nothing holds for longer than a push or a pop).
#[derive(Clone)]
pub struct PoolStatus(Arc<Shared>);

impl PoolStatus {
    /// Copies ready, and how many the pool keeps.
    pub fn ready(&self) -> (usize, usize) {
        (self.0.lock().ready.len(), self.0.size)
    }
}

struct Shared {
    /// How many copies to keep ready (0: no pool, copies load on demand).
    size: usize,
    /// Whether to anchor the TC hooks (not with clsact filters).
    anchor: bool,
    lease: Arc<Lease>,
    state: Mutex<State>,
    /// Wakes the filler when a copy was taken.
    taken: Condvar,
}

#[derive(Default)]
struct State {
    ready: Vec<Blank>,
    filling: bool,
    /// When the last fault that took a copy was in place.
    refill_asked: Option<Instant>,
}

/// How long after a first fault is in place the filler waits before it
/// verifies the next copy (200-300 ms of a core): past the moments an
/// experiment measures, the fault's first effect and a quick `remove`.
const REFILL_AFTER: Duration = Duration::from_millis(100);

impl Pool {
    pub fn new(size: usize, anchor: bool, lease: Arc<Lease>) -> Self {
        Self(Arc::new(Shared {
            size,
            anchor,
            lease,
            state: Mutex::default(),
            taken: Condvar::new(),
        }))
    }

    pub fn status(&self) -> PoolStatus {
        PoolStatus(Arc::clone(&self.0))
    }

    /// Starts the filler thread (once; a no-op for a pool of size 0).
    pub fn fill(&self) {
        let mut state = self.0.lock();
        if self.0.size == 0 || state.filling {
            return;
        }
        let weak = Arc::downgrade(&self.0);
        match std::thread::Builder::new()
            .name("interface-pool".into())
            .spawn(move || filler(&weak))
        {
            Ok(_) => state.filling = true,
            Err(e) => {
                tracing::warn!(error = %e, "no interface pool: first faults on a device load their programs on the request's path");
            }
        }
    }

    /// A ready copy, if the pool has one. The filler makes the next when
    /// [`Pool::refill`] says so (or within a second).
    pub(super) fn take(&self) -> Option<Blank> {
        self.0.lock().ready.pop()
    }

    /// Lets the filler replace what was taken, [`REFILL_AFTER`] from now.
    /// Called once the fault that took a copy is in place, not at the
    /// take: verifying the next copy keeps a core busy for 200-300 ms,
    /// and started at the take it competed with the attach and with the
    /// traffic the fault was about to hit (first faults took effect
    /// 1.6-2.5 ms after the request at p50, against 0.5 ms on a device
    /// that had a fault already), and right after it, with a `remove`.
    pub(super) fn refill(&self) {
        self.0.lock().refill_asked = Some(Instant::now());
        self.0.taken.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps the pool full until the pool is dropped (never, in the daemon).
fn filler(pool: &Weak<Shared>) {
    lowest_priority();
    // Held as long as this thread runs: the daemon's lifetime.
    let _anchor = pool
        .upgrade()
        .filter(|shared| shared.anchor)
        .and_then(|shared| match Anchor::new(&shared.lease) {
            Ok(anchor) => Some(anchor),
            Err(e) => {
                tracing::info!(error = %e, "TC hooks not anchored: a device's first tcx fault acts after an RCU grace period");
                None
            }
        });
    loop {
        let Some(shared) = pool.upgrade() else { return };
        {
            let state = shared.lock();
            if state.ready.len() >= shared.size {
                // Woken after a take (`refill`); the timeout also notices a
                // dropped pool, and a take whose refill never came.
                drop(
                    shared
                        .taken
                        .wait_timeout(state, Duration::from_secs(1))
                        .unwrap_or_else(PoisonError::into_inner),
                );
                continue;
            }
        }
        let pause = shared
            .lock()
            .refill_asked
            .map_or(Duration::ZERO, |t| REFILL_AFTER.saturating_sub(t.elapsed()));
        if !pause.is_zero() {
            drop(shared);
            std::thread::sleep(pause);
            continue;
        }
        let started = Instant::now();
        // Loaded outside the lock: takes must not wait for a load.
        match Blank::load(&shared.lease) {
            Ok(mut blank) => {
                blank.verify_all();
                let mut state = shared.lock();
                state.ready.push(blank);
                tracing::debug!(
                    ready = state.ready.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "interface copy loaded ahead"
                );
            }
            Err(e) => {
                // Whatever refused it would refuse the next one too: stop,
                // and let faults load on demand (and report the error).
                tracing::warn!(error = %e, "interface pool stopped: first faults on a device load their programs on the request's path");
                shared.lock().filling = false;
                return;
            }
        }
    }
}

/// The kernel's TC hooks, held on by a copy's programs linked at both
/// directions of the loopback of a namespace nobody else uses; dropping it
/// closes the links (they die with the daemon too).
struct Anchor {
    _links: Vec<SchedClassifierLink>,
    /// Keeps the namespace, and so its loopback and the links, alive.
    _netns: File,
    _blank: Blank,
}

impl Anchor {
    fn new(lease: &Lease) -> Result<Self, String> {
        let mut blank = Blank::load(lease).map_err(|e| e.to_string())?;
        let (netns, links) = std::thread::scope(|s| {
            s.spawn(|| -> Result<_, String> {
                // Only this thread moves; the file keeps the namespace.
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("creating a network namespace: {e}"))?;
                let netns = File::open("/proc/thread-self/ns/net")
                    .map_err(|e| format!("opening the new network namespace: {e}"))?;
                let mut links = Vec::new();
                for attach_type in [TcAttachType::Ingress, TcAttachType::Egress] {
                    let prog = tc::load(&mut blank.ebpf, attach_type).map_err(|e| e.to_string())?;
                    let tcx = TcAttach::Tcx {
                        attach_type,
                        order: LinkOrder::default(),
                    };
                    let id = prog
                        .attach(c"lo", tcx)
                        .map_err(|e| format!("tcx on a private loopback: {}", chain(&e)))?;
                    links.push(prog.take_link(id).map_err(|e| chain(&e))?);
                }
                Ok((netns, links))
            })
            .join()
            .unwrap_or_else(|_| Err("the anchoring thread panicked".into()))
        })?;
        tracing::debug!("TC hooks anchored");
        Ok(Self {
            _links: links,
            _netns: netns,
            _blank: blank,
        })
    }
}

/// Nice 19 for this thread only (setpriority on a thread id acts on that
/// thread), so the verifier's work for the pool yields to everything else.
/// Not SCHED_IDLE: the thread takes the lease's lock to register a copy,
/// and must not sit on it, starved, while the heartbeat waits.
fn lowest_priority() {
    // SAFETY: gettid and setpriority take plain integers.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "interface pool at normal priority");
    }
}
