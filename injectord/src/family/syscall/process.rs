//! Process faults: `process_kill` (a signal that ends the process) and
//! `process_pause` (the process stops, and resumes after `pause`), either
//! at once or when a process of the target makes a chosen syscall.
//!
//! - At once, on a cgroup target, on the whole cgroup: SIGKILL through
//!   `cgroup.kill` where the kernel has it (else, and for other signals,
//!   a signal to each of its processes, descendants included); a pause
//!   freezes it with `cgroup.freeze` and thaws it after the pause. On a
//!   `pid` target, only that process (SIGSTOP, then SIGCONT, for a pause);
//!   a kill on a `vm` target signals its QEMU process.
//! - At a syscall (`syscall`, optionally `path`): a rule in the syscall
//!   family's table with action `ACTION_SIGNAL`, served by `syscall_signal`
//!   on the raw tracepoint sys_enter, which sends the signal to the
//!   calling process with `bpf_send_signal` when the trigger fires. A
//!   pause's rule sends SIGSTOP; the resume thread (`resume.rs`) reads the
//!   rule's ring-buffer record and sends SIGCONT after the pause.
//!
//! Nothing stays stopped or frozen: dropping the fault resumes at once
//! (remove, TTL, clear, shutdown), and before anything is stopped or
//! frozen the keeper (`kernel::reaper`) and the journal get an undo
//! record, run if the daemon dies.

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::RingBuf;
use injector_common::{
    Trigger,
    syscall::{ACTION_SIGNAL, BACKEND_TRACEPOINT, NO_PATH_ARG, SYSCALL_EVENTS, SyscallRule},
};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use serde_json::{Map, Value, json};

use super::{
    filters::{Device, PathPrefix},
    resume::{self, Owner, Resume, Resumer},
    rules::{Place, SyscallRules},
    signal::SignalHook,
    table::Syscall,
};
use crate::{
    capabilities::Capability,
    error::Error,
    family::{Counters, Installed, Params, Request, SpecError, Target, params_as},
    kernel::{
        Kernel, Slot,
        reaper::{Reaper, Undo, cgroup_pids, process_state},
    },
    spec::values::Pause,
    sys,
    target::{Cgroup, Cgroups, Workload, cgroup_of_pid},
};

pub const KILL: &str = "process_kill";
pub const PAUSE: &str = "process_pause";

/// A signal that ends (or interrupts) a process: a name (`"SIGKILL"`,
/// `"SEGV"`, any case) or a number 1 to 64. The stop and continue signals
/// are refused: a pause is a `process_pause`, which also resumes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signal(i32);

impl Signal {
    pub const KILL: Self = Self(libc::SIGKILL);

    pub fn number(self) -> i32 {
        self.0
    }

    /// Its name, for the standard signals.
    pub fn name(self) -> Option<&'static str> {
        nix::sys::signal::Signal::try_from(self.0)
            .ok()
            .map(nix::sys::signal::Signal::as_str)
    }
}

impl Default for Signal {
    fn default() -> Self {
        Self::KILL
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "signal {}", self.0),
        }
    }
}

impl Serialize for Signal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(n) => s.serialize_str(n),
            None => s.serialize_i32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        let number = |n: Option<i64>| {
            n.filter(|n| (1..=64).contains(n))
                .map(|n| n as i32)
                .ok_or_else(|| {
                    de::Error::custom(format_args!(
                        "invalid value: signal {v} is out of range: expected 1 to 64"
                    ))
                })
        };
        let n = match &v {
            Value::Number(n) => number(n.as_i64())?,
            Value::String(s) if s.trim().parse::<i64>().is_ok() => number(s.trim().parse().ok())?,
            Value::String(s) => {
                let up = s.trim().to_ascii_uppercase();
                let full = if up.starts_with("SIG") {
                    up
                } else {
                    format!("SIG{up}")
                };
                full.parse::<nix::sys::signal::Signal>()
                    .map(|sig| sig as i32)
                    .map_err(|_| {
                        de::Error::custom(format_args!(
                            "invalid value: unknown signal {s:?}: expected a name such as \"SIGKILL\", \"SIGSEGV\", \"SIGABRT\", \"SIGBUS\", \"SIGTERM\" or a number 1 to 64"
                        ))
                    })?
            }
            _ => {
                return Err(de::Error::custom(format_args!(
                    "invalid value: signal {v} must be a name such as \"SIGKILL\" or a number 1 to 64"
                )));
            }
        };
        let sig = Self(n);
        match n {
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => {
                Err(de::Error::custom(format_args!(
                    "invalid value: {sig} stops the process rather than ending it: use a process_pause fault, which stops it and resumes it after its \"pause\" (and never leaves it stopped)"
                )))
            }
            libc::SIGCONT => Err(de::Error::custom(
                "invalid value: SIGCONT resumes a stopped process: a process_pause fault resumes what it stops by itself",
            )),
            _ => Ok(sig),
        }
    }
}

/// `process_kill`: the target's processes get `signal`, at once or at the
/// matching call of `syscall`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessKill {
    #[serde(default)]
    pub signal: Signal,
    /// At this syscall (by a process of the target, when the trigger
    /// fires) rather than at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<Syscall>,
    /// Only calls of `syscall` whose path argument starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPrefix>,
    /// Only calls of `syscall` on a file descriptor of a file on this
    /// device (`"major:minor"`): "the 10th write to the data disk".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
}

/// `process_pause`: the target stops for `pause`, at once or at the
/// matching call of `syscall` (then the calling process).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProcessPause {
    pub pause: Pause,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syscall: Option<Syscall>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPrefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
}

/// Which calls of the syscall a process fault acts at.
#[derive(Clone, Debug, Default)]
struct CallFilter {
    path: Option<PathPrefix>,
    device: Option<Device>,
}

pub fn parse(kind: &str, value: Value) -> Result<Box<dyn Params>, SpecError> {
    if kind == KILL {
        let f: ProcessKill = serde_path_to_error::deserialize(value)?;
        check_path(f.syscall, f.path.as_ref())?;
        check_device(f.syscall, f.device)?;
        Ok(Box::new(f))
    } else {
        let f: ProcessPause = serde_path_to_error::deserialize(value)?;
        check_path(f.syscall, f.path.as_ref())?;
        check_device(f.syscall, f.device)?;
        Ok(Box::new(f))
    }
}

fn check_path(syscall: Option<Syscall>, path: Option<&PathPrefix>) -> Result<(), SpecError> {
    match (syscall, path) {
        (None, Some(_)) => Err(SpecError::Never {
            field: "path",
            message: "a path filter picks the calls of \"syscall\" the fault acts at; without a syscall the fault acts at once".into(),
        }),
        (Some(sc), Some(_)) if sc.path_arg().is_none() => Err(SpecError::Never {
            field: "path",
            message: format!(
                "{} takes no path argument; path filters work on syscalls that take one (openat, mkdir, unlink, execve...)",
                sc.name()
            ),
        }),
        _ => Ok(()),
    }
}

/// A device filter needs a syscall whose file the tracepoint can find:
/// one that takes a file descriptor (at the entry, a path is not looked
/// up yet).
fn check_device(syscall: Option<Syscall>, device: Option<Device>) -> Result<(), SpecError> {
    match (syscall, device) {
        (None, Some(_)) => Err(SpecError::Never {
            field: "device",
            message: "a device filter picks the calls of \"syscall\" the fault acts at; without a syscall the fault acts at once".into(),
        }),
        (Some(sc), Some(_)) if sc.fd_arg().is_none() => Err(SpecError::Never {
            field: "device",
            message: format!(
                "{sc} takes no file descriptor; a process fault's device filter works on calls on an open file (read, write, fsync, ioctl...), since at a call's entry a path is not looked up yet"
            ),
        }),
        _ => Ok(()),
    }
}

/// What a process fault does.
#[derive(Clone, Copy, Debug)]
enum Action {
    Kill(Signal),
    Pause(Duration),
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Kill(_) => "kill",
            Self::Pause(_) => "stop",
        }
    }
}

/// How long a freeze or a stop may take to show before the install goes
/// on without the figure (a task in uninterruptible sleep freezes late).
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// The process-fault half of the syscall family's backend.
pub struct Processes {
    hook: SignalHook,
    resumer: Result<Resumer, String>,
    reaper: Reaper,
    /// Whether cgroups here have `cgroup.freeze` and `cgroup.kill`
    /// (`None`: no cgroup below the root to look at).
    freeze: Option<bool>,
    kill: Option<bool>,
    /// Whether the device filter's kernel struct offsets are known.
    offsets: Result<(), String>,
}

impl Processes {
    pub fn load(kernel: &mut Kernel, reaper: &Reaper, offsets: Result<(), String>) -> Self {
        let events = kernel
            .ebpf
            .take_map(SYSCALL_EVENTS)
            .ok_or_else(|| format!("map {SYSCALL_EVENTS} is not in the eBPF object"))
            .and_then(|m| RingBuf::try_from(m).map_err(|e| format!("{SYSCALL_EVENTS}: {e}")));
        if let Err(e) = &events {
            tracing::warn!(error = %e, "pauses at a syscall are unavailable");
        }
        let resumer =
            Resumer::start(events.ok()).map_err(|e| format!("starting the resume thread: {e}"));
        let (freeze, kill) = cgroup_files();
        Self {
            hook: SignalHook::probe(),
            resumer,
            reaper: reaper.clone(),
            freeze,
            kill,
            offsets,
        }
    }

    /// The resume thread, for later families (io_delay).
    pub fn shared_resumer(&self) -> Option<Resumer> {
        self.resumer.as_ref().ok().cloned()
    }

    pub fn capabilities(&self) -> Vec<Capability> {
        let at_syscall = self.hook.ready();
        let kill_now = match self.kill {
            Some(true) => {
                "now: a cgroup's SIGKILL through cgroup.kill, other signals to each of its processes"
            }
            Some(false) => {
                "now: signals to each process of a cgroup (this kernel has no cgroup.kill, Linux 5.14+)"
            }
            None => {
                "now: SIGKILL through cgroup.kill where the cgroup has it, else signals to each process"
            }
        };
        let kill_syscall = match &at_syscall {
            Ok(()) => "at a syscall: bpf_send_signal from the raw tracepoint sys_enter".to_string(),
            Err(e) => format!("at a syscall: unavailable ({e})"),
        };
        let freeze_now = match self.freeze {
            Some(false) => {
                "now: SIGSTOP and SIGCONT of a pid target only (this kernel has no cgroup.freeze, Linux 5.2+: cgroup targets are refused)"
            }
            _ => {
                "now: a cgroup frozen with cgroup.freeze and thawed after the pause; a pid target stopped with SIGSTOP and continued with SIGCONT"
            }
        };
        let pause_syscall = match (&at_syscall, &self.resumer) {
            (Ok(()), Ok(r)) if r.reads_events() => {
                "at a syscall: SIGSTOP through bpf_send_signal from sys_enter, SIGCONT from the daemon after the pause".to_string()
            }
            (Err(e), _) => format!("at a syscall: unavailable ({e})"),
            (_, Err(e)) => format!("at a syscall: unavailable ({e})"),
            (_, Ok(_)) => format!("at a syscall: unavailable (the {SYSCALL_EVENTS} ring buffer could not be read)"),
        };
        vec![
            Capability::probe(
                KILL,
                Ok(format!(
                    "{kill_now}; a pid target: that process alone, a vm target: its QEMU process; {kill_syscall}"
                )),
            ),
            Capability::probe(PAUSE, Ok(format!("{freeze_now}; {pause_syscall}"))),
        ]
    }

    pub fn install(
        &mut self,
        req: &mut Request<'_>,
        rules: Result<&SyscallRules, &String>,
    ) -> Result<Box<dyn Installed>, Error> {
        let kind = req.params.kind();
        let (action, syscall, filter) = if kind == KILL {
            let f = params_as::<ProcessKill>(req.params)?;
            let filter = CallFilter {
                path: f.path.clone(),
                device: f.device,
            };
            (Action::Kill(f.signal), f.syscall, filter)
        } else {
            let f = params_as::<ProcessPause>(req.params)?;
            let filter = CallFilter {
                path: f.path.clone(),
                device: f.device,
            };
            (Action::Pause(f.pause.get()), f.syscall, filter)
        };
        let Target::Cgroup(cgroup) = req.target else {
            return Err(Error::UnsupportedTarget(format!(
                "{kind} needs a process target (cgroup, pid, container, pod or vm), not a network device"
            ))
            .at("target"));
        };
        let cgroup = cgroup.clone();
        let dir = req.cgroup_dir(&cgroup);
        match syscall {
            Some(sc) => self.at_syscall(req, &cgroup, dir, sc, filter, action, rules),
            None => {
                let t = &req.trigger;
                if t.threshold < Trigger::ALWAYS || t.is_counted() {
                    return Err(Error::InvalidValue(format!(
                        "a trigger counts the calls of fault.syscall; without a syscall {kind} acts once, at inject (give \"syscall\", or leave the trigger out)"
                    ))
                    .at("trigger"));
                }
                match action {
                    Action::Kill(signal) => self.kill_now(req, &cgroup, &dir, signal),
                    Action::Pause(pause) => self.pause_now(req, &cgroup, dir, pause),
                }
            }
        }
    }

    fn resumer(&self) -> Result<&Resumer, Error> {
        self.resumer
            .as_ref()
            .map_err(|e| Error::Internal(format!("pauses are unavailable: {e}")))
    }

    /// The process a kill at once aims at instead of the whole cgroup: a
    /// pid target's, or a vm target's QEMU process.
    fn single_process(
        req: &Request<'_>,
        cgroup: &Cgroup,
    ) -> Result<Option<(u32, &'static str)>, Error> {
        if let Some(pid) = req.pid {
            return Ok(Some((pid, "target.pid")));
        }
        match &cgroup.workload {
            Some(Workload::Vm { qemu_pid: Some(pid), .. }) => Ok(Some((*pid, "target.vm"))),
            Some(Workload::Vm { qemu_pid: None, .. }) => Err(Error::TargetNotFound(format!(
                "no QEMU process was found in the VM's cgroup {}, so there is none to signal; target the cgroup to signal all of its processes",
                cgroup.path
            ))
            .at("target.vm")),
            _ => Ok(None),
        }
    }

    fn kill_now(
        &self,
        req: &Request<'_>,
        cgroup: &Cgroup,
        dir: &Path,
        signal: Signal,
    ) -> Result<Box<dyn Installed>, Error> {
        let mut describe = Map::new();
        let (found, delivered) = match Self::single_process(req, cgroup)? {
            Some((pid, field)) => {
                guard_pid(pid).map_err(Error::field(field))?;
                let fd = resume::pidfd_open(pid)
                    .map_err(|e| Error::TargetNotFound(format!("process {pid}: {e}")).at(field))?;
                resume::pidfd_send_signal(&fd, signal.number())
                    .map_err(|e| Error::io(format!("sending {signal} to process {pid}"), e))?;
                describe.insert("method".into(), json!("signal"));
                describe.insert("pid".into(), json!(pid));
                (1, 1)
            }
            None => {
                guard_daemon(cgroup, Action::Kill(signal))?;
                let (method, found, delivered) = kill_cgroup(dir, signal)?;
                describe.insert("method".into(), json!(method));
                (found, delivered)
            }
        };
        describe.insert("processes".into(), json!(found));
        tracing::info!(fault = req.name, cgroup = %cgroup.path, %signal, found, delivered, "processes signalled");
        Ok(Box::new(Signalled {
            found,
            delivered,
            describe,
        }))
    }

    fn pause_now(
        &self,
        req: &Request<'_>,
        cgroup: &Cgroup,
        dir: PathBuf,
        pause: Duration,
    ) -> Result<Box<dyn Installed>, Error> {
        let owner = self.resumer()?.owner();
        let mut describe = Map::new();
        let cgroup_dir = dir.display().to_string();
        if let Some(pid) = req.pid {
            guard_pid(pid).map_err(Error::field("target.pid"))?;
            let fd = resume::pidfd_open(pid).map_err(|e| {
                Error::TargetNotFound(format!("process {pid}: {e}")).at("target.pid")
            })?;
            // The keeper continues every stopped process of the pid's
            // cgroup if the daemon dies.
            let record = self.reaper.record_process(Undo::Continue {
                cgroup_dir,
                cgroup_id: cgroup.id,
            });
            let started = sys::monotonic_ns();
            resume::pidfd_send_signal(&fd, libc::SIGSTOP)
                .map_err(|e| Error::io(format!("stopping process {pid}"), e))?;
            let settled = wait_until(|| process_state(pid) == Some('T'));
            owner.schedule(
                started,
                pause,
                Resume::Continue {
                    tgid: pid,
                    pidfd: Some(fd),
                },
                Some(record),
            );
            describe.insert("method".into(), json!("SIGSTOP"));
            describe.insert("pid".into(), json!(pid));
            describe.insert("stopped_after_ms".into(), json!(settled.map(ms)));
        } else {
            guard_daemon(cgroup, Action::Pause(pause))?;
            let freeze = dir.join("cgroup.freeze");
            match std::fs::read_to_string(&freeze) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Err(Error::UnsupportedKernel(format!(
                        "cgroup {} has no cgroup.freeze: this kernel lacks the cgroup v2 freezer (Linux 5.2+); a pid target is stopped with SIGSTOP instead",
                        cgroup.path
                    )));
                }
                Err(e) => return Err(Error::io(format!("reading {}", freeze.display()), e)),
                Ok(s) if s.trim() == "1" => {
                    return Err(Error::Conflict(format!(
                        "cgroup {} is frozen already (its cgroup.freeze is 1: another pause, or someone else's freeze); injectord thaws only what it froze",
                        cgroup.path
                    )));
                }
                Ok(_) => {}
            }
            let record = self.reaper.record_process(Undo::Thaw {
                cgroup_dir,
                cgroup_id: cgroup.id,
            });
            let started = sys::monotonic_ns();
            std::fs::write(&freeze, "1")
                .map_err(|e| Error::io(format!("writing 1 to {}", freeze.display()), e))?;
            let settled = wait_until(|| frozen(&dir));
            owner.schedule(started, pause, Resume::Thaw { dir }, Some(record));
            describe.insert("method".into(), json!("cgroup.freeze"));
            describe.insert("frozen_after_ms".into(), json!(settled.map(ms)));
        }
        tracing::info!(fault = req.name, cgroup = %cgroup.path, pause_ms = pause.as_millis() as u64, "paused");
        Ok(Box::new(Paused { owner, describe }))
    }

    #[allow(clippy::too_many_arguments)]
    fn at_syscall(
        &mut self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
        dir: PathBuf,
        sc: Syscall,
        filter: CallFilter,
        action: Action,
        rules: Result<&SyscallRules, &String>,
    ) -> Result<Box<dyn Installed>, Error> {
        let kind = req.params.kind();
        if req.pid.is_some() {
            return Err(Error::UnsupportedTarget(format!(
                "{kind} at a syscall acts on every process of a cgroup that makes the call, and the pid's cgroup {} may hold others; target {{\"cgroup\": \"{}\"}} to mean all of them",
                cgroup.path, cgroup.path
            ))
            .at("target.pid"));
        }
        guard_daemon(cgroup, action)?;
        if filter.device.is_some()
            && let Err(e) = &self.offsets
        {
            return Err(Error::UnsupportedKernel(format!(
                "{kind} with a device filter reads the file behind the call's descriptor: {e}"
            )));
        }
        let rules = rules.map_err(|why| {
            Error::UnsupportedKernel(format!("the syscall rule table is unavailable: {why}"))
        })?;
        self.hook.ready().map_err(|e| {
            Error::UnsupportedKernel(format!(
                "{kind} at a syscall needs a raw tracepoint program with bpf_send_signal: {e}"
            ))
        })?;
        let owner = match action {
            Action::Kill(_) => None,
            Action::Pause(pause) => {
                let r = self.resumer()?;
                if !r.reads_events() {
                    return Err(Error::UnsupportedKernel(format!(
                        "pauses at a syscall need the {SYSCALL_EVENTS} ring buffer, which could not be read"
                    )));
                }
                Some((r.owner(), pause))
            }
        };
        let slot = req.kernel.slots.alloc()?;
        let signal = match action {
            Action::Kill(s) => s.number(),
            Action::Pause(_) => libc::SIGSTOP,
        };
        let mut rule = SyscallRule {
            slot: slot.index(),
            signal: signal as u8,
            backend: BACKEND_TRACEPOINT,
            whole_process: 1,
            trigger: req.trigger,
            ..SyscallRule::default()
        };
        if let Some(p) = &filter.path {
            let bytes = p.0.as_bytes();
            rule.path[..bytes.len()].copy_from_slice(bytes);
            rule.path_len = bytes.len() as u8;
            rule.path_arg = sc.path_arg().unwrap_or(NO_PATH_ARG);
        }
        if let Some(device) = filter.device {
            rule.device = device.kernel_dev();
            rule.has_device = 1;
            rule.fd_arg = sc.fd_arg().unwrap_or(NO_PATH_ARG);
        }
        // Recorded before the rule can stop anything.
        let record = owner.as_ref().map(|_| {
            self.reaper.record_process(Undo::Continue {
                cgroup_dir: dir.display().to_string(),
                cgroup_id: cgroup.id,
            })
        });
        if let Some((o, pause)) = &owner {
            o.watch_slot(slot.index(), *pause);
        }
        let attachment = self.hook.attach(req.kernel)?;
        let what = format!("{} calls", sc.name());
        let installed = rules.install(
            req.name,
            Place {
                cgroup,
                nr: sc.nr(),
                action: ACTION_SIGNAL,
                by_depth: true,
            },
            rule,
            &what,
        )?;
        let mut describe = Map::new();
        describe.insert("hook".into(), json!("raw_tracepoint sys_enter"));
        describe.insert("backend".into(), json!("tracepoint"));
        describe.insert(
            "signal".into(),
            json!(Signal(signal).name().unwrap_or_default()),
        );
        tracing::info!(fault = req.name, syscall = sc.name(), cgroup = %cgroup.path, signal, "process fault armed at a syscall");
        Ok(Box::new(AtSyscall {
            _rule: Box::new(installed),
            _attachment: Box::new(attachment),
            owner: owner.map(|(o, _)| o),
            _record: record,
            slot,
            describe,
        }))
    }
}

/// Whether this kernel's cgroups have `cgroup.freeze` and `cgroup.kill`,
/// looked up in the daemon's own cgroup or the first one below the root
/// (the root has neither).
fn cgroup_files() -> (Option<bool>, Option<bool>) {
    let Ok(cgroups) = Cgroups::discover() else {
        return (None, None);
    };
    let mount = cgroups.mount();
    let own = cgroup_of_pid("self")
        .ok()
        .filter(|p| p != "/")
        .map(|p| mount.join(p.trim_start_matches('/')));
    let dir = own.or_else(|| {
        std::fs::read_dir(mount)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.join("cgroup.procs").exists())
    });
    match dir {
        Some(d) => (
            Some(d.join("cgroup.freeze").exists()),
            Some(d.join("cgroup.kill").exists()),
        ),
        None => (None, None),
    }
}

/// Refuses, for a fault acting on a whole cgroup, the root cgroup and a
/// cgroup that holds injectord: a freeze, a stop or a kill there would
/// take the daemon and its helpers with it, `force` or not.
fn guard_daemon(cgroup: &Cgroup, action: Action) -> Result<(), Error> {
    if cgroup.path == "/" {
        return Err(Error::UnsupportedTarget(format!(
            "a process fault on the root cgroup would {} every process of the host, injectord's own included; target a cgroup below it",
            action.verb()
        ))
        .at("target"));
    }
    match cgroup_of_pid("self") {
        Ok(own) if cgroup.contains(&own) => Err(Error::ForbiddenTarget(format!(
            "cgroup {} contains injectord itself (in {own}): a process fault there would {} the daemon and the helpers that undo its faults, even with force",
            cgroup.path,
            action.verb()
        ))
        .at("target")),
        _ => Ok(()),
    }
}

/// Refuses injectord's own process and its helpers (reaper, keeper).
fn guard_pid(pid: u32) -> Result<(), Error> {
    let me = std::process::id();
    let parent = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    if pid == me || parent == Some(me) {
        return Err(Error::ForbiddenTarget(format!(
            "process {pid} is injectord itself or one of its helpers"
        )));
    }
    Ok(())
}

/// Signals every process of the cgroup at `dir` and its descendants:
/// SIGKILL through `cgroup.kill` where it exists (no process escapes by
/// forking), anything else one process at a time, looking again for
/// processes forked meanwhile. Returns the method, the processes found and
/// the signals delivered.
fn kill_cgroup(dir: &Path, signal: Signal) -> Result<(&'static str, u64, u64), Error> {
    let kill = dir.join("cgroup.kill");
    if signal == Signal::KILL && kill.exists() {
        let n = cgroup_pids(dir).len() as u64;
        std::fs::write(&kill, "1")
            .map_err(|e| Error::io(format!("writing 1 to {}", kill.display()), e))?;
        return Ok(("cgroup.kill", n, n));
    }
    let mut seen = HashSet::new();
    let mut delivered = 0;
    for _ in 0..4 {
        let new: Vec<u32> = cgroup_pids(dir)
            .into_iter()
            .filter(|p| seen.insert(*p))
            .collect();
        if new.is_empty() {
            break;
        }
        for pid in new {
            // SAFETY: kill(2) with a plain pid and signal.
            if unsafe { libc::kill(pid as i32, signal.number()) } == 0 {
                delivered += 1;
            }
        }
    }
    Ok(("signals", seen.len() as u64, delivered))
}

/// Whether the cgroup at `dir` is frozen (`frozen 1` in cgroup.events).
fn frozen(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.events"))
        .unwrap_or_default()
        .lines()
        .any(|l| l.trim() == "frozen 1")
}

/// How long `done` took to hold, checked every millisecond, up to
/// [`SETTLE_LIMIT`].
fn wait_until(mut done: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if done() {
            return Some(start.elapsed());
        }
        if start.elapsed() > SETTLE_LIMIT {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

fn ns_ms(ns: u64) -> f64 {
    ms(Duration::from_nanos(ns))
}

/// The `pauses` object of `get`: how many, how long the last and the
/// longest lasted, how many are in progress.
fn describe_pauses(owner: &Owner, describe: &mut Map<String, Value>) {
    // In progress first: that takes the resumer's lock, under which a
    // pause is ended and then recorded, so a pause whose end a client has
    // already seen (its request answered after the thaw) is in the
    // summary read next. The other order once showed a thawed pause as
    // neither in progress nor counted.
    let paused_now = owner.paused_now();
    let s = owner.stats.summary();
    describe.insert(
        "pauses".into(),
        json!({
            "count": s.count,
            "last_ms": s.last_ns.map(ns_ms),
            "max_ms": if s.count > 0 { Some(ns_ms(s.max_ns)) } else { None },
            "paused_now": paused_now,
        }),
    );
}

/// A kill at once: done at inject; kept (listed) until removed or its
/// duration ends, so `get` shows what it did.
struct Signalled {
    found: u64,
    delivered: u64,
    describe: Map<String, Value>,
}

impl Installed for Signalled {
    fn counters(&self) -> Counters {
        Counters {
            evaluations: self.found,
            activations: self.delivered,
            ..Counters::default()
        }
    }

    fn describe(&self) -> Map<String, Value> {
        self.describe.clone()
    }
}

/// A pause at once: the freeze or stop it made, resumed by the resume
/// thread after the pause, or at once when this is dropped.
struct Paused {
    owner: Owner,
    describe: Map<String, Value>,
}

impl Installed for Paused {
    fn counters(&self) -> Counters {
        Counters {
            evaluations: 1,
            activations: 1,
            injected_delay: Some(self.owner.stats.summary().histogram),
            ..Counters::default()
        }
    }

    fn describe(&self) -> Map<String, Value> {
        let mut d = self.describe.clone();
        describe_pauses(&self.owner, &mut d);
        d
    }
}

/// A process fault at a syscall: its rule, the tracepoint attachment, the
/// pauses it holds (resumed when dropped), the keeper's record, then its
/// slot (fields drop in this order).
struct AtSyscall {
    _rule: Box<dyn std::any::Any + Send>,
    _attachment: Box<dyn std::any::Any + Send>,
    owner: Option<Owner>,
    _record: Option<crate::kernel::reaper::Record>,
    slot: Slot,
    describe: Map<String, Value>,
}

impl Installed for AtSyscall {
    fn counters(&self) -> Counters {
        let s = self.slot.stats();
        Counters {
            evaluations: s.evaluations,
            activations: s.activations,
            injected_delay: self.owner.as_ref().map(|o| o.stats.summary().histogram),
            ..Counters::default()
        }
    }

    fn describe(&self) -> Map<String, Value> {
        let mut d = self.describe.clone();
        if let Some(o) = &self.owner {
            describe_pauses(o, &mut d);
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(v: Value) -> Result<Signal, String> {
        serde_json::from_value::<Signal>(v).map_err(|e| e.to_string())
    }

    #[test]
    fn signals_parse_by_name_or_number() {
        assert_eq!(sig(json!("SIGKILL")), Ok(Signal(9)));
        assert_eq!(sig(json!("segv")), Ok(Signal(11)));
        assert_eq!(sig(json!("SIGABRT")), Ok(Signal(6)));
        assert_eq!(sig(json!(15)), Ok(Signal(15)));
        assert_eq!(sig(json!("10")), Ok(Signal(10)));
        assert_eq!(sig(json!(40)), Ok(Signal(40)));
        assert_eq!(serde_json::to_value(Signal(11)).unwrap(), json!("SIGSEGV"));
        assert_eq!(serde_json::to_value(Signal(40)).unwrap(), json!(40));
        for bad in [json!("SIGSTOP"), json!(19), json!("TSTP")] {
            let e = sig(bad).unwrap_err();
            assert!(e.contains("process_pause"), "{e}");
        }
        assert!(sig(json!("SIGCONT")).unwrap_err().contains("process_pause"));
        assert!(sig(json!("SIGFOO")).unwrap_err().contains("unknown signal"));
        assert!(sig(json!(0)).unwrap_err().contains("out of range"));
        assert!(sig(json!(65)).unwrap_err().contains("out of range"));
        assert!(sig(json!({})).unwrap_err().starts_with("invalid value"));
    }

    #[test]
    fn paths_need_a_syscall_that_takes_one() {
        let p = |v: Value| parse(KILL, v).map(drop).map_err(|e| e.to_string());
        assert!(p(json!({"syscall": "openat", "path": "/data"})).is_ok());
        assert!(
            p(json!({"path": "/data"}))
                .unwrap_err()
                .contains("without a syscall")
        );
        assert!(
            p(json!({"syscall": "write", "path": "/data"}))
                .unwrap_err()
                .contains("takes no path argument")
        );
        let pause = |v: Value| parse(PAUSE, v).map(drop).map_err(|e| e.to_string());
        assert!(
            pause(json!({"pause": "0s"}))
                .unwrap_err()
                .contains("above zero")
        );
        assert!(
            pause(json!({"pause": "2h"}))
                .unwrap_err()
                .contains("at most 1h")
        );
        assert!(pause(json!({})).unwrap_err().contains("pause"));
        assert!(pause(json!({"pause": "2s"})).is_ok());
    }
}

crate::params!(ProcessKill => KILL, ProcessPause => PAUSE);
