//! Ending pauses: a thread that thaws the cgroups and continues the
//! processes that process_pause faults stopped, each when its pause is
//! over, and measures how long each pause lasted.
//!
//! It also reads the signal rules' ring buffer (`SYSCALL_EVENTS`): a
//! SIGSTOP sent at a syscall is reported there with the caller's tgid and
//! the time it fired, and the thread sends SIGCONT that long after. It
//! waits in `ppoll` on the ring buffer and an eventfd (new pauses) with
//! the next deadline as timeout, so it never wakes without work and never
//! blocks the async runtime. Every record is read even for slots it does
//! not know: the ring buffer must not fill, or a SIGSTOP rule stops firing
//! (see the eBPF side), and a stop whose fault is already gone is
//! continued shortly after its record.
//!
//! Continues go through a pidfd opened when the stop is seen (the process
//! cannot exit while stopped, except by SIGKILL), so a reused pid is never
//! signalled.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use injector_common::{
    packet::{DELAY_BUCKETS, DelayHistogram},
    syscall::{SIGSTOP, SignalEvent},
};

use crate::{kernel::reaper::Record, sys};

/// How long after its record a stop whose fault has ended is continued
/// (see [`State::on_event`]).
const STRAGGLER_DELAY: Duration = Duration::from_millis(50);

/// The thread's handle: faults get an [`Owner`] from it.
#[derive(Clone)]
pub struct Resumer(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    /// An eventfd that wakes the thread when a pause is scheduled.
    wake: OwnedFd,
    /// Whether the signal rules' records are read (pauses at a syscall
    /// need them).
    events: bool,
}

#[derive(Default)]
struct State {
    next_key: u64,
    /// Slots of pause faults at a syscall: which owner, and how long.
    slots: HashMap<u32, Watch>,
    pending: Vec<Pending>,
}

struct Watch {
    key: u64,
    pause: Duration,
    stats: Arc<PauseStats>,
    done: Option<Done>,
}

/// Told how many counted stops (`SignalEvent::counted`) a continue ended,
/// whatever its outcome (io_delay's limit of tasks held at once).
pub type Done = Arc<dyn Fn(u64) + Send + Sync>;

/// Something stopped, to be resumed at `due_ns`.
struct Pending {
    key: u64,
    started_ns: u64,
    due_ns: u64,
    what: Resume,
    stats: Arc<PauseStats>,
    /// The keeper's record of it, settled once it is resumed.
    _record: Option<Record>,
    /// Counted stops it ends, and whom to tell.
    counted: u64,
    done: Option<Done>,
}

/// What ends a pause.
pub enum Resume {
    /// SIGCONT to a process (through its pidfd when it could be opened).
    Continue { tgid: u32, pidfd: Option<OwnedFd> },
    /// `0` to the cgroup's `cgroup.freeze`.
    Thaw { dir: PathBuf },
}

impl Resume {
    /// A continue of `tgid`, its pidfd opened now.
    pub fn continue_process(tgid: u32) -> Self {
        Self::Continue {
            tgid,
            pidfd: pidfd_open(tgid).ok(),
        }
    }

    /// Ends the pause now; false if there was nothing left to resume (the
    /// process is gone).
    fn run(&self) -> bool {
        match self {
            Self::Continue { tgid, pidfd } => {
                let sent = match pidfd {
                    Some(fd) => pidfd_send_signal(fd, libc::SIGCONT),
                    // SAFETY: kill(2) with a plain pid and signal.
                    None => match unsafe { libc::kill(*tgid as i32, libc::SIGCONT) } {
                        0 => Ok(()),
                        _ => Err(std::io::Error::last_os_error()),
                    },
                };
                match sent {
                    Ok(()) => true,
                    Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
                    Err(e) => {
                        tracing::error!(tgid, error = %e, "could not continue a paused process");
                        false
                    }
                }
            }
            Self::Thaw { dir } => match std::fs::write(dir.join("cgroup.freeze"), "0") {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    tracing::error!(cgroup = %dir.display(), error = %e, "could not thaw a paused cgroup");
                    false
                }
            },
        }
    }
}

/// How long the pauses of one fault lasted.
#[derive(Default)]
pub struct PauseStats(Mutex<Summary>);

/// A summary of the pauses of one fault.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub count: u64,
    pub last_ns: Option<u64>,
    pub max_ns: u64,
    /// The durations, as the injected-delay histogram of the metrics.
    pub histogram: DelayHistogram,
}

impl PauseStats {
    fn record(&self, ns: u64) {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.count += 1;
        s.last_ns = Some(ns);
        s.max_ns = s.max_ns.max(ns);
        let us = ns / 1000;
        let bucket = if us == 0 {
            0
        } else {
            (63 - us.leading_zeros() as usize).min(DELAY_BUCKETS - 1)
        };
        s.histogram.buckets[bucket] += 1;
        s.histogram.sum_ns += ns;
    }

    pub fn summary(&self) -> Summary {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// One fault's pauses: dropping it resumes at once whatever it still holds
/// stopped or frozen, and forgets its slot.
pub struct Owner {
    key: u64,
    shared: Arc<Shared>,
    pub stats: Arc<PauseStats>,
}

impl Resumer {
    /// Starts the thread; it reads the signal rules' records from `events`
    /// (without it, pauses at a syscall are unavailable).
    pub fn start(events: Option<RingBuf<MapData>>) -> std::io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let wake = unsafe { OwnedFd::from_raw_fd(fd) };
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake,
            events: events.is_some(),
        });
        let thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("resume".into())
            .spawn(move || run(&thread, events))?;
        Ok(Self(shared))
    }

    /// Whether pauses at a syscall can be resumed (the records are read).
    pub fn reads_events(&self) -> bool {
        self.0.events
    }

    pub fn owner(&self) -> Owner {
        let key = {
            let mut st = self.0.lock();
            st.next_key += 1;
            st.next_key
        };
        Owner {
            key,
            shared: Arc::clone(&self.0),
            stats: Arc::default(),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write to our eventfd.
        unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
    }
}

impl Owner {
    /// SIGSTOPs that `slot`'s rule sends are continued after `pause`.
    /// Call before the rule is published.
    pub fn watch_slot(&self, slot: u32, pause: Duration) {
        self.watch_slot_with(slot, pause, None);
    }

    /// As [`Self::watch_slot`]; `done` is told of every continue, with
    /// the counted stops it ended.
    pub fn watch_slot_with(&self, slot: u32, pause: Duration, done: Option<Done>) {
        self.shared.lock().slots.insert(
            slot,
            Watch {
                key: self.key,
                pause,
                stats: Arc::clone(&self.stats),
                done,
            },
        );
    }

    /// `what`, stopped at `started_ns` (CLOCK_MONOTONIC), is resumed
    /// `pause` later; `record` (the keeper's) is settled then.
    pub fn schedule(&self, started_ns: u64, pause: Duration, what: Resume, record: Option<Record>) {
        self.shared.lock().pending.push(Pending {
            key: self.key,
            started_ns,
            due_ns: started_ns + pause.as_nanos() as u64,
            what,
            stats: Arc::clone(&self.stats),
            _record: record,
            counted: 0,
            done: None,
        });
        self.shared.wake();
    }

    /// How many of its pauses are in progress.
    pub fn paused_now(&self) -> usize {
        self.shared
            .lock()
            .pending
            .iter()
            .filter(|p| p.key == self.key)
            .count()
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.slots.retain(|_, w| w.key != self.key);
        let (mine, others): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut st.pending)
            .into_iter()
            .partition(|p| p.key == self.key);
        st.pending = others;
        // Resumed under the lock: the thread never sees a pause half-ended.
        for p in mine {
            resume(p);
        }
    }
}

/// Ends a pause now and measures it; its record settles as it drops.
fn resume(p: Pending) {
    if p.what.run() {
        p.stats
            .record(sys::monotonic_ns().saturating_sub(p.started_ns));
    }
    if let Some(done) = &p.done {
        done(p.counted);
    }
}

impl State {
    fn on_event(&mut self, ev: &SignalEvent) {
        if ev.signal != SIGSTOP {
            return;
        }
        let Some(watch) = self.slots.get(&ev.slot) else {
            // The fault is gone (its rule fired just before it was
            // withdrawn): nobody else would continue this process. Not at
            // once: the program writes the record just before it sends the
            // signal, and a SIGCONT that overtook the SIGSTOP would leave
            // the process stopped.
            tracing::info!(
                tgid = ev.tgid,
                slot = ev.slot,
                "continuing a process stopped by a pause that has ended"
            );
            self.pending.push(Pending {
                key: 0,
                started_ns: ev.at_ns,
                due_ns: sys::monotonic_ns() + STRAGGLER_DELAY.as_nanos() as u64,
                what: Resume::continue_process(ev.tgid),
                stats: Arc::default(),
                _record: None,
                counted: 0,
                done: None,
            });
            return;
        };
        let pause = if ev.delay_ns != 0 {
            ev.delay_ns
        } else {
            watch.pause.as_nanos() as u64
        };
        let due_ns = ev.at_ns + pause;
        // Another thread of the process may hit the rule before the stop
        // takes effect: one pause, to the later deadline.
        if let Some(p) = self.pending.iter_mut().find(|p| {
            p.key == watch.key && matches!(p.what, Resume::Continue { tgid, .. } if tgid == ev.tgid)
        }) {
            p.due_ns = p.due_ns.max(due_ns);
            p.counted += u64::from(ev.counted);
            return;
        }
        self.pending.push(Pending {
            key: watch.key,
            started_ns: ev.at_ns,
            due_ns,
            what: Resume::continue_process(ev.tgid),
            stats: Arc::clone(&watch.stats),
            _record: None,
            counted: u64::from(ev.counted),
            done: watch.done.clone(),
        });
    }

    fn run_due(&mut self, now: u64) {
        if !self.pending.iter().any(|p| p.due_ns <= now) {
            return;
        }
        let (due, later): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.due_ns <= now);
        self.pending = later;
        for p in due {
            resume(p);
        }
    }

    fn next_due(&self) -> Option<u64> {
        self.pending.iter().map(|p| p.due_ns).min()
    }
}

fn run(shared: &Shared, mut events: Option<RingBuf<MapData>>) {
    loop {
        let timeout = shared
            .lock()
            .next_due()
            .map(|due| due.saturating_sub(sys::monotonic_ns()));
        wait(shared, events.as_ref(), timeout);
        let mut drained = 0u64;
        // SAFETY: an 8-byte read from our non-blocking eventfd.
        unsafe { libc::read(shared.wake.as_raw_fd(), (&raw mut drained).cast(), 8) };
        let mut seen = Vec::new();
        if let Some(rb) = &mut events {
            while let Some(item) = rb.next() {
                if item.len() >= size_of::<SignalEvent>() {
                    // SAFETY: the record holds a SignalEvent (plain data),
                    // written by the eBPF side; read unaligned.
                    seen.push(unsafe { item.as_ptr().cast::<SignalEvent>().read_unaligned() });
                }
            }
        }
        let mut st = shared.lock();
        for ev in &seen {
            st.on_event(ev);
        }
        st.run_due(sys::monotonic_ns());
    }
}

/// Waits for a record, a wake-up or `timeout_ns`.
fn wait(shared: &Shared, events: Option<&RingBuf<MapData>>, timeout_ns: Option<u64>) {
    let mut fds = vec![libc::pollfd {
        fd: shared.wake.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    if let Some(rb) = events {
        fds.push(libc::pollfd {
            fd: rb.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
    }
    let ts = timeout_ns.map(|ns| libc::timespec {
        tv_sec: (ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (ns % 1_000_000_000) as libc::c_long,
    });
    // SAFETY: `fds` and `ts` outlive the call; a null timeout waits.
    unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts.as_ref().map_or(std::ptr::null(), |t| t as *const _),
            std::ptr::null(),
        )
    };
}

/// `pidfd_open(2)`.
pub fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `pidfd_send_signal(2)`.
pub fn pidfd_send_signal(fd: &OwnedFd, signal: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on a pidfd we own; no siginfo.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
