//! The reaper: a child process that puts back the kernel state a SIGKILLed
//! daemon cannot.
//!
//! bpf_links (cgroup programs, XDP, tcx) die with the daemon's file
//! descriptors. Netlink state does not: a clsact qdisc with our cls_bpf
//! filter (kernels without tcx) or an sch_fq we installed would stay, and
//! the filter would keep injecting. So before creating such state the
//! daemon tells the reaper how to undo it, over a pipe; when the pipe closes
//! with undo records still pending (the daemon died without cleaning up),
//! the reaper undoes them, newest first, and exits. A clean shutdown leaves
//! nothing pending, and the reaper just exits.
//!
//! Protocol, one JSON object per line ([`Entry`]): `{"add": id, "netns":
//! path|null, "netns_id": ..., "undo": Undo}` and `{"done": id}`. The same
//! lines go to the journal (see `journal.rs`), which covers a kill of the
//! reaper too; the reaper appends a `done` there for what it undid.
//!
//! Process state (a cgroup frozen or a process stopped by a process fault)
//! goes to a second child instead, the *keeper*: the same binary and
//! protocol (`__injectord_keeper`), started at the first such record in a
//! process group of its own. The reaper shares the daemon's process group,
//! so a kill of the group (`kill -9 -PGID`, `timeout -s KILL`) takes it too
//! and the netlink state waits, inert under the lease, for the next start;
//! a frozen cgroup cannot wait like that (its processes do nothing until
//! thawed), so the keeper outlives a group kill and thaws it at once. A
//! kill of the daemon's whole cgroup (systemd's final SIGKILL) takes the
//! keeper too: the journal covers that, and the next start thaws and
//! continues what it lists before it takes a request.

use std::{
    collections::{BTreeMap, HashSet},
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    os::fd::AsFd as _,
    path::Path,
    process::{Child, ChildStdin, Command, Stdio},
    sync::{Arc, Mutex},
};

use serde::{Deserialize, Serialize};

use super::{
    journal::{self, Entry, Journal, NsId},
    netns::NsHandle,
    qdisc::{self, NetlinkError, Rtnl},
};

/// The first argument that makes the injectord binary run as the reaper.
pub const REAPER_ARG: &str = "__injectord_reaper";
/// The first argument that makes the injectord binary run as the keeper
/// (process state; its own process group).
pub const KEEPER_ARG: &str = "__injectord_keeper";

/// How to undo one piece of state: netlink state (undone over rtnetlink in
/// its namespace) or process and cgroup state.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Undo {
    /// Our cls_bpf filter: its own priority on the clsact parent.
    Filter {
        dev: String,
        ingress: bool,
        priority: u16,
    },
    /// The clsact qdisc we added, if no filter is left on it.
    Clsact { dev: String },
    /// The fq root qdisc we installed (the kernel restores the default).
    Fq { dev: String },
    /// A cgroup a pause froze: `0` goes to its `cgroup.freeze`.
    Thaw {
        cgroup_dir: String,
        /// The cgroup's id (its directory's inode), so that another cgroup
        /// made at the same path since is left alone (0: not checked).
        #[serde(default)]
        cgroup_id: u64,
    },
    /// Processes a pause stopped (SIGSTOP) in a cgroup: every process of it
    /// and its descendants that is stopped (state `T`) gets SIGCONT.
    Continue {
        cgroup_dir: String,
        #[serde(default)]
        cgroup_id: u64,
    },
    /// A limit an io_throttle wrote to a cgroup v2 `io.max`: `line` (the
    /// device's previous limits, every key, `max` where there was none)
    /// goes back, which removes the device's line if it had none.
    IoMax {
        cgroup_dir: String,
        #[serde(default)]
        cgroup_id: u64,
        line: String,
    },
    /// `+controller` an io_throttle wrote to a cgroup's
    /// `cgroup.subtree_control`: `-controller` undoes it.
    SubtreeControl {
        cgroup_dir: String,
        #[serde(default)]
        cgroup_id: u64,
        controller: String,
    },
    /// A v1 blkio cgroup an io_throttle made on a hybrid host (the target's
    /// processes moved in): every process there goes back to `home`, then
    /// the cgroup is removed.
    BlkioGroup {
        dir: String,
        home: String,
        #[serde(default)]
        cgroup_id: u64,
    },
}

impl Undo {
    /// Whether this is process or cgroup state (the keeper's: it must not
    /// wait for the next start, as a frozen cgroup or a throttled target
    /// would suffer meanwhile), not netlink state (the reaper's).
    pub fn is_process(&self) -> bool {
        matches!(
            self,
            Self::Thaw { .. }
                | Self::Continue { .. }
                | Self::IoMax { .. }
                | Self::SubtreeControl { .. }
                | Self::BlkioGroup { .. }
        )
    }

    /// Runs the undo in the calling thread's network namespace (process
    /// state does not depend on it).
    pub fn run(&self) -> Result<(), String> {
        match self {
            Self::Thaw {
                cgroup_dir,
                cgroup_id,
            } => {
                let dir = same_cgroup(cgroup_dir, *cgroup_id)?;
                std::fs::write(dir.join("cgroup.freeze"), "0")
                    .map_err(|e| format!("thawing cgroup {cgroup_dir}: {e}"))
            }
            Self::Continue {
                cgroup_dir,
                cgroup_id,
            } => {
                let dir = same_cgroup(cgroup_dir, *cgroup_id)?;
                continue_stopped(dir);
                Ok(())
            }
            Self::IoMax {
                cgroup_dir,
                cgroup_id,
                line,
            } => {
                let dir = same_cgroup(cgroup_dir, *cgroup_id)?;
                std::fs::write(dir.join("io.max"), line)
                    .map_err(|e| format!("writing {line:?} to {cgroup_dir}/io.max: {e}"))
            }
            Self::SubtreeControl {
                cgroup_dir,
                cgroup_id,
                controller,
            } => {
                let dir = same_cgroup(cgroup_dir, *cgroup_id)?;
                std::fs::write(dir.join("cgroup.subtree_control"), format!("-{controller}"))
                    .map_err(|e| {
                        format!("writing -{controller} to {cgroup_dir}/cgroup.subtree_control: {e}")
                    })
            }
            Self::BlkioGroup {
                dir,
                home,
                cgroup_id,
            } => {
                let dir = same_cgroup(dir, *cgroup_id)?;
                undo_blkio_group(dir, Path::new(home))
            }
            Self::Filter {
                dev,
                ingress,
                priority,
            } => netlink_undo(&format!("our filter on {dev}"), |nl| {
                let ifindex = qdisc::ifindex(dev)?;
                // No clsact, no filter: someone removed the qdisc, and our
                // filter went with it.
                if nl.clsact(ifindex)?.is_none() {
                    return Err(NetlinkError::NotFound(format!("a clsact qdisc on {dev}")));
                }
                nl.delete_clsact_filter(ifindex, *ingress, *priority)
            }),
            Self::Clsact { dev } => netlink_undo(&format!("clsact on {dev}"), |nl| {
                // Gone already (the device, or the qdisc) is as good as
                // undone; a filter of anyone's still there keeps it.
                let Ok(ifindex) = qdisc::ifindex(dev) else {
                    return Ok(());
                };
                if nl.clsact(ifindex)?.is_some()
                    && nl.clsact_filters(ifindex, true)? == 0
                    && nl.clsact_filters(ifindex, false)? == 0
                {
                    nl.delete_clsact(ifindex)?;
                }
                Ok(())
            }),
            Self::Fq { dev } => netlink_undo(&format!("fq on {dev}"), |nl| {
                let ifindex = qdisc::ifindex(dev)?;
                let root = nl.root_qdisc(ifindex)?;
                if root.kind == "fq" {
                    nl.delete_root(ifindex, root.handle)?;
                }
                Ok(())
            }),
        }
    }
}

/// The cgroup directory, if it is still the cgroup recorded (`id`, its
/// inode, when not 0). The error says "not found" (so recovery counts it
/// as gone) when it is not.
fn same_cgroup(dir: &str, id: u64) -> Result<&Path, String> {
    use std::os::unix::fs::MetadataExt as _;
    let path = Path::new(dir);
    match std::fs::metadata(path) {
        Ok(m) if id == 0 || m.ino() == id => Ok(path),
        Ok(_) => Err(format!(
            "cgroup {dir} not found (another cgroup is at its path now)"
        )),
        Err(e) => Err(format!("cgroup {dir} not found: {e}")),
    }
}

/// Moves every process of the v1 cgroup `dir` to `home` (a few passes:
/// forks race the moves), then removes `dir`.
pub fn undo_blkio_group(dir: &Path, home: &Path) -> Result<(), String> {
    let procs = |d: &Path| -> Vec<u32> {
        std::fs::read_to_string(d.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    };
    for _ in 0..8 {
        let here = procs(dir);
        if here.is_empty() {
            break;
        }
        for pid in here {
            match std::fs::write(home.join("cgroup.procs"), pid.to_string()) {
                Err(e) if e.raw_os_error() != Some(libc::ESRCH) => {
                    return Err(format!("moving process {pid} to {}: {e}", home.display()));
                }
                _ => {}
            }
        }
    }
    let mut last = None;
    for _ in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(format!("blkio cgroup {} not found", dir.display()));
            }
            // A process exiting there may hold it a moment.
            Err(e) => last = Some(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!(
        "removing {}: {}",
        dir.display(),
        last.map_or_else(String::new, |e| e.to_string())
    ))
}

/// Sends SIGCONT to every stopped process (state `T` in /proc/PID/stat)
/// of the cgroup at `dir` and its descendants; returns how many.
pub fn continue_stopped(dir: &Path) -> usize {
    let mut n = 0;
    for pid in cgroup_pids(dir) {
        if process_state(pid) == Some('T') {
            // SAFETY: kill(2) with a plain pid and signal.
            if unsafe { libc::kill(pid as i32, libc::SIGCONT) } == 0 {
                n += 1;
            }
        }
    }
    n
}

/// Every process of the cgroup at `dir` and its descendants.
pub fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        if let Ok(procs) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = std::fs::read_dir(&d) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// The state letter of a process (`R`, `S`, `D`, `T`, `t`, `Z`...), from
/// /proc/PID/stat (after the command name, which may hold anything).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Runs `f` on a fresh rtnetlink socket in the calling thread's network
/// namespace. The error names `what`, and says "not found" when the
/// device or the state is gone (recovery counts those as gone).
fn netlink_undo(
    what: &str,
    f: impl FnOnce(&mut Rtnl) -> Result<(), NetlinkError>,
) -> Result<(), String> {
    Rtnl::open().and_then(|mut nl| f(&mut nl)).map_err(|e| {
        if e.is_gone() && !matches!(e, NetlinkError::NotFound(_)) {
            format!("undoing {what}: not found ({e})")
        } else {
            format!("undoing {what}: {e}")
        }
    })
}

/// The daemon's end of the pipes, and the journal.
struct Pipe {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    journal: Option<journal::Writer>,
    next: u64,
    /// The keeper, once a record of process state started it.
    keeper: Keeper,
    /// Records that went to the keeper (their `done` goes there too).
    keeper_ids: HashSet<u64>,
}

enum Keeper {
    NotStarted,
    Running {
        child: Child,
        stdin: ChildStdin,
    },
    /// It could not be started (said once); records go to the journal only.
    Failed,
}

impl Pipe {
    fn send(&mut self, m: &Entry) {
        if let Some(j) = &mut self.journal
            && let Err(e) = j.append(m)
        {
            tracing::error!(error = %e, journal = %j.path().display(), "writing the journal: a kill of the whole process group would leave netlink state behind");
        }
        let to_keeper = match m {
            Entry::Add { add, undo, .. } if undo.is_process() => {
                self.keeper_ids.insert(*add);
                true
            }
            Entry::Done { done } => self.keeper_ids.remove(done),
            Entry::Add { .. } => false,
        };
        let mut line = serde_json::to_string(m).expect("plain data serializes");
        line.push('\n');
        if to_keeper {
            self.send_to_keeper(&line);
            return;
        }
        let Some(stdin) = &mut self.stdin else {
            return;
        };
        if let Err(e) = stdin.write_all(line.as_bytes()) {
            tracing::error!(error = %e, "the reaper is gone: SIGKILL would leave netlink state behind");
        }
    }

    fn send_to_keeper(&mut self, line: &str) {
        if matches!(self.keeper, Keeper::NotStarted) {
            self.keeper = self.start_keeper();
        }
        if let Keeper::Running { stdin, .. } = &mut self.keeper
            && let Err(e) = stdin.write_all(line.as_bytes())
        {
            tracing::error!(error = %e, "the keeper is gone: a SIGKILL would leave frozen cgroups or stopped processes until the next start");
        }
    }

    fn start_keeper(&self) -> Keeper {
        use std::os::unix::process::CommandExt as _;
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(KEEPER_ARG);
        if let Some(j) = &self.journal {
            cmd.arg(j.path());
        }
        // Its own process group: a kill of the daemon's group spares it.
        match cmd.stdin(Stdio::piped()).process_group(0).spawn() {
            Ok(mut child) => match child.stdin.take() {
                Some(stdin) => {
                    tracing::debug!(pid = child.id(), "keeper started");
                    Keeper::Running { child, stdin }
                }
                None => Keeper::Failed,
            },
            Err(e) => {
                tracing::warn!(error = %e, "could not start the keeper: after a SIGKILL, frozen cgroups and stopped processes would stay so until the next start");
                Keeper::Failed
            }
        }
    }
}

/// The daemon's handle on the reaper, shared by everything that creates
/// netlink state. Without a reaper (it could not be started) records are
/// no-ops and the daemon says so at start-up.
#[derive(Clone, Default)]
pub struct Reaper(Option<Arc<Mutex<Pipe>>>);

impl Reaper {
    /// Starts the reaper process; records also go to `journal`. If the
    /// process cannot be started, records still go to the journal.
    pub fn spawn(journal: Option<Journal>) -> (Self, Option<std::io::Error>) {
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(REAPER_ARG);
        if let Some(j) = &journal {
            cmd.arg(j.path());
        }
        let (child, stdin, err) = match cmd.stdin(Stdio::piped()).spawn() {
            Ok(mut child) => {
                let stdin = child.stdin.take();
                (Some(child), stdin, None)
            }
            Err(e) => (None, None, Some(e)),
        };
        let pipe = Pipe {
            child,
            stdin,
            journal: journal.map(journal::Writer::new),
            next: 1,
            keeper: Keeper::NotStarted,
            keeper_ids: HashSet::new(),
        };
        (Self(Some(Arc::new(Mutex::new(pipe)))), err)
    }

    /// A reaper that records nothing (tools and tests without a daemon).
    pub fn none() -> Self {
        Self(None)
    }

    pub fn pid(&self) -> Option<u32> {
        self.0
            .as_ref()
            .and_then(|p| lock(p).child.as_ref().map(Child::id))
    }

    /// The keeper's pid, once it runs.
    pub fn keeper_pid(&self) -> Option<u32> {
        self.0.as_ref().and_then(|p| match &lock(p).keeper {
            Keeper::Running { child, .. } => Some(child.id()),
            _ => None,
        })
    }

    /// Records how to undo process state (a frozen cgroup, stopped
    /// processes) about to be created; it goes to the keeper, which
    /// outlives a kill of the daemon's process group. See [`Self::record`].
    pub fn record_process(&self, undo: Undo) -> Record {
        debug_assert!(undo.is_process());
        self.add(None, None, undo)
    }

    /// Records how to undo state about to be created in `ns`. The
    /// returned record stays pending until it is dropped, which tells the
    /// reaper and the journal the state is gone (undone by us, or never
    /// created); [`Record::keep`] leaves it pending.
    pub fn record(&self, ns: &NsHandle, undo: Undo) -> Record {
        if self.0.is_none() {
            return Record(None);
        }
        self.add(ns.path.clone(), ns.file().and_then(NsId::of), undo)
    }

    /// Sends an `Add` entry under the next id; its pending record.
    fn add(&self, netns: Option<String>, netns_id: Option<NsId>, undo: Undo) -> Record {
        let Some(pipe) = &self.0 else {
            return Record(None);
        };
        let mut p = lock(pipe);
        let id = p.next;
        p.next += 1;
        p.send(&Entry::Add {
            add: id,
            netns,
            netns_id,
            undo,
        });
        Record(Some((Arc::clone(pipe), id)))
    }
}

fn lock(p: &Mutex<Pipe>) -> std::sync::MutexGuard<'_, Pipe> {
    p.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pending undo record: the reaper undoes the state it names if the
/// daemon dies while the record is alive. Own it next to the state, after
/// it in field order, so the state is undone before the record settles.
#[must_use = "dropping a record at once tells the reaper the state is gone"]
pub struct Record(Option<(Arc<Mutex<Pipe>>, u64)>);

impl Record {
    /// Leaves the record pending for good: the state could not be undone,
    /// so the reaper should try when the daemon exits.
    pub fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if let Some((pipe, id)) = self.0.take() {
            lock(&pipe).send(&Entry::Done { done: id });
        }
    }
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Record")
            .field(&self.0.as_ref().map(|(_, id)| id))
            .finish()
    }
}

/// The reaper (or keeper) process: reads records until the pipe closes,
/// then undoes what is still pending.
pub fn run(role: &str, journal: Option<&Path>) -> ! {
    // Signals sent to the daemon's process group (Ctrl-C, a service
    // manager's SIGTERM) must not stop us before the daemon's own cleanup;
    // we exit when the pipe closes.
    // SAFETY: setting signal dispositions to "ignore" is async-signal safe
    // and done before any other thread exists.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let own = File::open("/proc/self/ns/net").ok();
    let mut pending: BTreeMap<u64, (Option<File>, Undo)> = BTreeMap::new();
    for line in BufReader::new(std::io::stdin().lock()).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Entry>(&line) {
            Ok(Entry::Add {
                add, netns, undo, ..
            }) => {
                // Opened now, while the namespace surely exists; holding it
                // keeps it alive until we are done with it.
                let ns = netns.and_then(|p| super::netns::open_netns(Path::new(&p)).ok());
                pending.insert(add, (ns, undo));
            }
            Ok(Entry::Done { done }) => {
                pending.remove(&done);
            }
            Err(e) => eprintln!("injectord {role}: bad record {line:?}: {e}"),
        }
    }
    // Opened only now: the daemon may have compacted (replaced) the file.
    let mut journal = journal.and_then(|p| Journal::append_to(p).ok());
    for (id, (ns, undo)) in pending.into_iter().rev() {
        if let Some(ns) = &ns
            && let Err(e) = nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        {
            eprintln!("injectord {role}: entering a namespace for {undo:?}: {e}");
            continue;
        }
        match undo.run() {
            Ok(()) => {
                eprintln!("injectord {role}: undid {undo:?}");
                if let Some(j) = &mut journal {
                    let _ = j.append(&Entry::Done { done: id });
                }
            }
            Err(e) => eprintln!("injectord {role}: {undo:?}: {e}"),
        }
        if ns.is_some()
            && let Some(own) = &own
        {
            let _ = nix::sched::setns(own.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
        }
    }
    std::process::exit(0)
}

/// Netlink (or link) state that must be undone in its network namespace.
pub trait Undoable: Send {
    /// Undoes the state in the calling thread's namespace.
    fn undo(self) -> Result<(), String>;
}

impl Undoable for Undo {
    fn undo(self) -> Result<(), String> {
        self.run()
    }
}

/// A piece of state created in a network namespace, held with its undo
/// record. Dropping it undoes the state inside that namespace, then
/// settles the record; if the undo fails, the record stays pending and the
/// reaper tries again when the daemon exits.
pub struct NetlinkGuard<S: Undoable> {
    state: Option<S>,
    ns: NsHandle,
    what: String,
    record: Option<Record>,
}

impl<S: Undoable> NetlinkGuard<S> {
    /// `record` is the reaper's record for the state, taken before it was
    /// created (`None` for state the kernel removes with the daemon's file
    /// descriptors, such as a tcx or XDP link).
    pub fn new(state: S, ns: NsHandle, what: impl Into<String>, record: Option<Record>) -> Self {
        Self {
            state: Some(state),
            ns,
            what: what.into(),
            record,
        }
    }

    pub fn get(&self) -> Option<&S> {
        self.state.as_ref()
    }
}

impl<S: Undoable> Drop for NetlinkGuard<S> {
    fn drop(&mut self) {
        let Some(state) = self.state.take() else {
            return;
        };
        let result = self
            .ns
            .run(|| state.undo())
            .map_err(|e| format!("entering the namespace: {e}"))
            .and_then(|r| r);
        match result {
            Ok(()) => tracing::debug!(what = %self.what, "undone"),
            Err(e) => {
                tracing::error!(what = %self.what, error = %e, "could not undo; the reaper will retry when injectord exits");
                if let Some(r) = self.record.take() {
                    r.keep();
                }
            }
        }
    }
}
