//! `syscall_error`: a syscall returns a chosen errno in one cgroup (and its
//! descendants), optionally only for a path prefix or the device of the
//! file's filesystem, or, for socket calls, a family, type, address and
//! port.
//!
//! The backend is chosen per fault, best first: a kprobe on the syscall's
//! entry with `bpf_override_return` (any syscall, where the kernel has
//! `CONFIG_BPF_KPROBE_OVERRIDE`), then the BPF LSM hook that runs inside
//! the syscall, then a cgroup program with `bpf_set_retval` (socket,
//! bind, connect, UDP sends, get/setsockopt, /proc/sys reads and writes).
//! A syscall no backend reaches here is refused, naming why for each.
//!
//! Kernel side: `injector-ebpf/src/syscall/`; shared types:
//! `injector_common::syscall`.

mod cgroup;
pub mod depths;
pub mod file_errors;
pub mod filters;
mod kprobe;
pub mod latency;
mod lsm;
mod offsets;
pub mod process;
pub mod resume;
mod rules;
mod signal;
mod table;

use std::{
    any::Any,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use injector_common::syscall::{
    ACTION_ERROR, BACKEND_CGROUP, BACKEND_KPROBE, BACKEND_LSM, LSM_MMAP_ADDR, NO_PATH_ARG,
    OBJ_BPRM, OBJ_FILE, OBJ_INODE, OBJ_PATH, OBJ_SOCKET, OBJ_SOCKET_ARGS, OBJ_VMA, SYSCALL_LEVELS,
    SyscallRule,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use self::{
    cgroup::CgroupHooks,
    depths::Depths,
    file_errors::FileErrors,
    filters::{Device, PathPrefix, SocketFamily, SocketType},
    kprobe::Kprobes,
    latency::Watches,
    lsm::LsmHooks,
    process::{ProcessKill, ProcessPause, Processes},
    rules::{Place, SyscallRules},
    table::{CgroupHook, GROUPS, Syscall},
};
use super::{
    Backend, Counters, Declaration, Installed, Load, Params, Request, SpecError, Target,
    connect::{self, ConnectRules, RuleSpec},
    fields_of, params_as, parse_as,
};
use crate::{
    capabilities::Capability,
    errno::Errno,
    error::Error,
    kernel::{Slot, btf::KernelBtf},
    spec::values::{Cidr, Port},
    target::Cgroup,
};

pub const FAMILY: Declaration = Declaration {
    name: "syscall",
    types: &[
        SyscallError::KIND,
        MemoryError::KIND,
        process::KILL,
        process::PAUSE,
    ],
    parse,
    fields: |kind| match kind {
        MemoryError::KIND => fields_of::<MemoryError>(),
        process::KILL => fields_of::<ProcessKill>(),
        process::PAUSE => fields_of::<ProcessPause>(),
        _ => fields_of::<SyscallError>(),
    },
    load,
};

/// The target's memory growth fails with ENOMEM: mmap, brk and mremap,
/// through the LSM hook that checks every new mapping's address
/// (`mmap_addr`, in `get_unmapped_area`). The `vm_enough_memory` hook
/// cannot deny (its verdict only picks the admin reserve; kernels since
/// 6.8 refuse BPF there), and overriding brk's return would hand the C
/// library an error where it expects an address.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MemoryError {}

impl MemoryError {
    pub const KIND: &str = "memory_error";
    /// The calls that grow a process's memory.
    const SYSCALLS: [&str; 3] = ["mmap", "brk", "mremap"];
}

/// `syscall` returns `errno` in the target.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SyscallError {
    pub syscall: Syscall,
    pub errno: Errno,
    /// Only calls whose path argument starts with this prefix (whole
    /// components), as the caller passes it; for read and write, only
    /// /proc/sys files under it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPrefix>,
    /// Only calls on a file of the filesystem on this device
    /// (`"major:minor"`): syscalls that take a path or a file descriptor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Device>,
    /// Socket calls: only on sockets of this family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<SocketFamily>,
    /// Socket calls: only on sockets of this type (`type` names the fault
    /// itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket_type: Option<SocketType>,
    /// connect, bind and UDP sends: only towards (or on) this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<Port>,
}

impl SyscallError {
    pub const KIND: &str = "syscall_error";
}

/// Where /proc/sys files live; sysctl rules hold the name after it.
const PROC_SYS: &str = "/proc/sys/";

fn parse(kind: &str, value: Value) -> Result<Box<dyn Params>, SpecError> {
    if kind == MemoryError::KIND {
        return parse_as::<MemoryError>(value);
    }
    if kind != SyscallError::KIND {
        return process::parse(kind, value);
    }
    let f: SyscallError = serde_path_to_error::deserialize(value)?;
    let name = f.syscall.name();
    let sysctl = matches!(
        f.syscall.cgroup_hook(),
        Some(CgroupHook::SysctlRead | CgroupHook::SysctlWrite)
    );
    if let Some(path) = &f.path {
        if sysctl && f.syscall.path_arg().is_none() && !path.0.starts_with(PROC_SYS) {
            return Err(SpecError::Never {
                field: "path",
                message: format!(
                    "{name} takes a file descriptor, not a path: a path filter on it works for /proc/sys files only (a path starting with {PROC_SYS})"
                ),
            });
        }
        if !sysctl && f.syscall.path_arg().is_none() {
            return Err(SpecError::Never {
                field: "path",
                message: format!(
                    "{name} takes no path argument; path filters work on syscalls that take one (openat, mkdir, unlink, execve...) and on reads and writes of /proc/sys files"
                ),
            });
        }
    }
    if f.device.is_some() && !on_files(f.syscall) {
        return Err(SpecError::Never {
            field: "device",
            message: format!(
                "{name} acts on no file; device filters work on syscalls that take a path or a file descriptor (openat, read, write, fsync, mkdir, execve...)"
            ),
        });
    }
    if !on_sockets(f.syscall) {
        for (field, given) in [
            ("family", f.family.is_some()),
            ("socket_type", f.socket_type.is_some()),
        ] {
            if given {
                return Err(SpecError::Never {
                    field,
                    message: format!(
                        "{name} is not a socket call; {field} filters work on socket, bind, connect, listen, accept, sends, receives, get/setsockopt and shutdown"
                    ),
                });
            }
        }
    }
    if let (Some(family), Some(address)) = (f.family, f.address) {
        let v6 = address.net().addr().is_ipv6();
        if family
            != if v6 {
                SocketFamily::Inet6
            } else {
                SocketFamily::Inet
            }
        {
            return Err(SpecError::Never {
                field: "family",
                message: format!(
                    "address {} is an IPv{} prefix, so its sockets are never of family {}",
                    address.net(),
                    if v6 { 6 } else { 4 },
                    family.name()
                ),
            });
        }
    }
    let addressed = matches!(
        f.syscall.cgroup_hook(),
        Some(CgroupHook::Connect | CgroupHook::Bind | CgroupHook::UdpSend)
    );
    if !addressed {
        for (field, given) in [("address", f.address.is_some()), ("port", f.port.is_some())] {
            if given {
                return Err(SpecError::Never {
                    field,
                    message: format!(
                        "{field} filters work on connect, bind, sendto, sendmsg and sendmmsg only, not on {name}"
                    ),
                });
            }
        }
    }
    Ok(Box::new(f))
}

/// Whether the syscall acts on a file a hook can see (device filters).
fn on_files(sc: Syscall) -> bool {
    sc.path_arg().is_some()
        || sc.fd_arg().is_some()
        || sc.lsm_hook().is_some_and(|h| {
            matches!(
                h.object,
                OBJ_FILE | OBJ_INODE | OBJ_PATH | OBJ_BPRM | OBJ_VMA
            )
        })
}

/// Whether the syscall acts on a socket (family and type filters).
fn on_sockets(sc: Syscall) -> bool {
    sc.lsm_hook()
        .is_some_and(|h| matches!(h.object, OBJ_SOCKET | OBJ_SOCKET_ARGS))
        || matches!(
            sc.cgroup_hook(),
            Some(
                CgroupHook::SockCreate
                    | CgroupHook::Bind
                    | CgroupHook::Connect
                    | CgroupHook::UdpSend
                    | CgroupHook::Getsockopt
                    | CgroupHook::Setsockopt
            )
        )
}

/// The backend serving a fault.
#[derive(Debug)]
enum Choice {
    /// The kprobe on this entry function.
    Kprobe(String),
    Lsm(injector_common::syscall::LsmHook),
    Cgroup(CgroupHook),
}

struct Syscalls {
    rules: Result<SyscallRules, String>,
    kprobe: Kprobes,
    lsm: Arc<Mutex<LsmHooks>>,
    cgroup: CgroupHooks,
    process: Processes,
    /// Whether the kernel struct offsets the device and socket filters
    /// read are known here, or why not.
    offsets: Result<(), String>,
    _offsets_map: Option<offsets::OffsetsMap>,
}

fn load(load: &mut Load<'_>) -> Box<dyn Backend> {
    let depths = load
        .kernel
        .ebpf
        .take_map(SYSCALL_LEVELS)
        .ok_or_else(|| format!("map {SYSCALL_LEVELS} missing from the object"))
        .and_then(|m| aya::maps::Array::try_from(m).map_err(|e| e.to_string()))
        .map(Depths::new);
    let rules = depths
        .clone()
        .and_then(|d| SyscallRules::take(load.kernel, d).map_err(|e| format!("{e:#}")));
    if load.options.syscall_latency {
        match depths.clone().map(|d| Watches::load(load.kernel, d)) {
            Ok(Ok(watches)) => load.services.publish(watches),
            Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "syscall latency unavailable"),
            Err(e) => tracing::warn!(error = %e, "syscall latency unavailable"),
        }
    }
    let connect = load.services.get::<ConnectRules>();
    // Parsed once, and shared with later families (the block family's
    // offsets).
    let btf = KernelBtf::from_sys_fs()
        .map(Arc::new)
        .map_err(|e| e.to_string());
    if let Ok(b) = &btf {
        load.services.publish(Arc::clone(b));
    }
    let btf = btf.as_deref().map_err(String::as_str);
    let (offsets, offsets_map) = match offsets::publish(load.kernel, btf) {
        Ok(map) => (Ok(()), Some(map)),
        Err(e) => (Err(e), None),
    };
    let kprobe = Kprobes::load(load.kernel);
    let lsm = Arc::new(Mutex::new(LsmHooks::load(load.kernel, btf)));
    let cgroup = CgroupHooks::load(load.kernel, connect);
    let process = Processes::load(load.kernel, load.reaper, offsets.clone());
    if let Ok(rules) = &rules {
        load.services
            .publish(FileErrors::new(rules.clone(), lsm.clone(), offsets.clone()));
    }
    if let Ok(d) = &depths {
        load.services.publish(d.clone());
    }
    if let Some(r) = process.shared_resumer() {
        load.services.publish(r);
    }
    Box::new(Syscalls {
        rules,
        kprobe,
        lsm,
        cgroup,
        process,
        offsets,
        _offsets_map: offsets_map,
    })
}

impl Syscalls {
    fn lsm(&self) -> MutexGuard<'_, LsmHooks> {
        self.lsm.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The best backend for this fault here, or why none serves it.
    fn choose(&self, f: &SyscallError) -> Result<Choice, Error> {
        let sc = f.syscall;
        let name = sc.name();
        let mut why = Vec::new();
        match self
            .kprobe_cannot(f)
            .map_or_else(|| self.kprobe.ready().map_err(str::to_string), Err)
        {
            Err(e) => why.push(format!("kprobe override: {e}")),
            Ok(()) => match self.kprobe.entry(sc) {
                Some(function) => return Ok(Choice::Kprobe(function)),
                None => why.push(format!(
                    "kprobe override: no entry point __x64_sys_{name} in /proc/kallsyms"
                )),
            },
        }
        match sc.lsm_hook() {
            None => why.push(format!("BPF LSM: no LSM hook runs inside {name}")),
            Some(h) => match self
                .lsm_cannot(f, &h)
                .map_or_else(|| self.lsm().hook_ready(&h), Err)
            {
                Ok(()) => return Ok(Choice::Lsm(h)),
                Err(e) => why.push(format!("BPF LSM: {e}")),
            },
        }
        match sc.cgroup_hook() {
            None => why.push(format!("cgroup programs: none runs inside {name}")),
            Some(h) => match cgroup_cannot(f, h).map_or_else(|| self.cgroup.ready(h), Err) {
                Ok(()) => return Ok(Choice::Cgroup(h)),
                Err(e) => why.push(format!("cgroup programs: {e}")),
            },
        }
        let filtered = f.path.is_some()
            || f.device.is_some()
            || f.family.is_some()
            || f.socket_type.is_some()
            || f.address.is_some()
            || f.port.is_some();
        Err(Error::UnsupportedKernel(format!(
            "no backend of this kernel can make {name} fail{}: {}. A kernel with CONFIG_BPF_KPROBE_OVERRIDE reaches every syscall",
            if filtered { " with these filters" } else { "" },
            why.join("; ")
        )))
    }

    /// Why the kprobe on the syscall's entry cannot apply the fault's
    /// filters: it sees only the caller's registers, before the kernel
    /// looked at them.
    fn kprobe_cannot(&self, f: &SyscallError) -> Option<String> {
        let sc = f.syscall;
        if sysctl_path(f) {
            return Some("cannot filter by a /proc/sys path".into());
        }
        if f.address.is_some() || f.port.is_some() {
            return Some("cannot filter by address or port".into());
        }
        if f.device.is_some() {
            if sc.fd_arg().is_none() {
                return Some(format!(
                    "cannot filter by device: at {sc}'s entry the kernel has not looked up the file yet"
                ));
            }
            if let Err(e) = &self.offsets {
                return Some(format!("cannot filter by device: {e}"));
            }
        }
        let socket = f.family.is_some() || f.socket_type.is_some();
        if socket && !matches!(sc.name(), "socket" | "socketpair") {
            return Some(format!(
                "cannot filter by socket family or type: at {sc}'s entry the socket is only a descriptor"
            ));
        }
        None
    }

    /// Why LSM hook `h` cannot apply the fault's filters.
    fn lsm_cannot(
        &self,
        f: &SyscallError,
        h: &injector_common::syscall::LsmHook,
    ) -> Option<String> {
        if sysctl_path(f) {
            return Some("cannot filter by a /proc/sys path".into());
        }
        if f.address.is_some() || f.port.is_some() {
            return Some("cannot filter by address or port".into());
        }
        let file = matches!(
            h.object,
            OBJ_FILE | OBJ_INODE | OBJ_PATH | OBJ_BPRM | OBJ_VMA
        );
        let socket = f.family.is_some() || f.socket_type.is_some();
        if f.device.is_some() && !file {
            return Some(format!(
                "cannot filter by device: the {} hook sees no file",
                h.hook
            ));
        }
        if socket && !matches!(h.object, OBJ_SOCKET | OBJ_SOCKET_ARGS) {
            return Some(format!(
                "cannot filter by socket family or type: the {} hook sees no socket",
                h.hook
            ));
        }
        let reads_structs = f.device.is_some() || (socket && h.object == OBJ_SOCKET);
        if reads_structs && let Err(e) = &self.offsets {
            return Some(format!("cannot filter by device or socket: {e}"));
        }
        None
    }

    /// What serves each syscall of a capability group here.
    fn group_capability(&self, cap: &'static str, members: &[&str]) -> Capability {
        let mut by_backend: Vec<(&str, Vec<&str>)> = Vec::new();
        for name in members {
            let Ok(sc) = name.parse::<Syscall>() else {
                continue;
            };
            // With a /proc/sys path, reads and writes reach the cgroup hook.
            let path = matches!(
                sc.cgroup_hook(),
                Some(CgroupHook::SysctlRead | CgroupHook::SysctlWrite)
            )
            .then(|| PathPrefix(format!("{PROC_SYS}kernel")));
            let probe = SyscallError {
                syscall: sc,
                errno: Errno::EIO,
                path: None,
                device: None,
                family: None,
                socket_type: None,
                address: None,
                port: None,
            };
            let backend = match self.choose(&probe) {
                Ok(c) => backend_name(&c),
                Err(_) if path.is_some() => match self.choose(&SyscallError { path, ..probe }) {
                    Ok(_) => "cgroup (/proc/sys only)",
                    Err(_) => "none",
                },
                Err(_) => "none",
            };
            match by_backend.iter_mut().find(|(b, _)| *b == backend) {
                Some((_, names)) => names.push(name),
                None => by_backend.push((backend, vec![name])),
            }
        }
        let detail = by_backend
            .iter()
            .map(|(b, names)| format!("{b}: {}", names.join(" ")))
            .collect::<Vec<_>>()
            .join("; ");
        let any = by_backend.iter().any(|(b, _)| *b != "none");
        Capability::probe(cap, if any { Ok(detail) } else { Err(detail) })
    }
}

/// Whether the fault's path names /proc/sys files of a read or write.
fn sysctl_path(f: &SyscallError) -> bool {
    f.path.is_some()
        && f.syscall.path_arg().is_none()
        && matches!(
            f.syscall.cgroup_hook(),
            Some(CgroupHook::SysctlRead | CgroupHook::SysctlWrite)
        )
}

/// Why cgroup hook `h` cannot apply the fault's filters.
fn cgroup_cannot(f: &SyscallError, h: CgroupHook) -> Option<String> {
    let name = f.syscall.name();
    if f.device.is_some() {
        return Some("cannot filter by device".into());
    }
    if matches!(h, CgroupHook::SysctlRead | CgroupHook::SysctlWrite) && !sysctl_path(f) {
        return Some(format!(
            "{name} is reachable for /proc/sys files only (give a path starting with {PROC_SYS})"
        ));
    }
    if f.path.is_some() && !sysctl_path(f) {
        return Some("cannot filter by path".into());
    }
    if let Some(family) = f.family
        && !family.is_ip()
        && matches!(
            h,
            CgroupHook::SockCreate | CgroupHook::Bind | CgroupHook::Connect | CgroupHook::UdpSend
        )
    {
        return Some(format!(
            "{} runs for IPv4 and IPv6 sockets only, not family {}",
            h.describe(),
            family.name()
        ));
    }
    match (h, f.socket_type) {
        (CgroupHook::Connect, Some(_)) => Some(
            "cannot filter connect by socket type (its rules are connect_error's, which match by address and port)".into(),
        ),
        (CgroupHook::UdpSend, Some(t)) if t != SocketType::Dgram => Some(format!(
            "{} runs for datagram sockets only, not {}",
            h.describe(),
            t.name()
        )),
        _ => None,
    }
}

fn backend_name(c: &Choice) -> &'static str {
    match c {
        Choice::Kprobe(_) => "kprobe",
        Choice::Lsm(_) => "lsm",
        Choice::Cgroup(_) => "cgroup",
    }
}

impl Backend for Syscalls {
    fn capabilities(&self) -> Vec<Capability> {
        let mut caps = vec![
            Capability::probe(
                "syscall_kprobe_override",
                self.kprobe
                    .ready()
                    .map(|()| "any syscall fails through bpf_override_return on its entry".into())
                    .map_err(str::to_string),
            ),
            Capability::probe(
                "syscall_lsm",
                self.lsm()
                    .ready()
                    .map(|()| "syscalls fail through the BPF LSM hook inside them".into())
                    .map_err(str::to_string),
            ),
            Capability::probe(
                "syscall_cgroup",
                self.cgroup
                    .ready(CgroupHook::SockCreate)
                    .map(|()| {
                        "socket, bind, connect, UDP sends, get/setsockopt and /proc/sys reads and writes fail through cgroup programs".into()
                    }),
            ),
        ];
        caps.push(Capability::probe(
            "memory_error",
            self.lsm()
                .hook_ready(&LSM_MMAP_ADDR)
                .map(|()| {
                    "mmap, brk and mremap fail with ENOMEM through the mmap_addr LSM hook".into()
                })
                .map_err(|e| format!("needs BPF LSM's mmap_addr hook: {e}")),
        ));
        caps.extend(
            GROUPS
                .iter()
                .map(|(cap, members)| self.group_capability(cap, members)),
        );
        caps.extend(self.process.capabilities());
        caps
    }

    fn install(&mut self, req: &mut Request<'_>) -> Result<Box<dyn Installed>, Error> {
        let kind = req.params.kind();
        if kind != SyscallError::KIND && kind != MemoryError::KIND {
            return self.process.install(req, self.rules.as_ref());
        }
        let Target::Cgroup(cgroup) = req.target else {
            return Err(Error::UnsupportedTarget(format!(
                "{} needs a cgroup target (cgroup, pid, container, pod or vm): it acts on processes, not on a device",
                req.params.kind()
            ))
            .at("target"));
        };
        let cgroup = cgroup.clone();
        let rules = self.rules.clone().map_err(|why| {
            Error::UnsupportedKernel(format!("the syscall rule table is unavailable: {why}"))
        })?;
        if req.params.kind() == MemoryError::KIND {
            return self.install_memory_error(req, &cgroup, &rules);
        }
        let fault = params_as::<SyscallError>(req.params)?.clone();
        let choice = self.choose(&fault)?;
        let slot = req.kernel.slots.alloc()?;
        let sc = fault.syscall;
        let mut rule = SyscallRule {
            slot: slot.index(),
            errno: fault.errno.get(),
            trigger: req.trigger,
            ..SyscallRule::default()
        };
        if let Some(path) = &fault.path {
            let bytes = path
                .0
                .strip_prefix(PROC_SYS)
                .filter(|_| sc.path_arg().is_none());
            let bytes = bytes.unwrap_or(&path.0).as_bytes();
            rule.path[..bytes.len()].copy_from_slice(bytes);
            rule.path_len = bytes.len() as u8;
            rule.path_arg = sc.path_arg().unwrap_or(NO_PATH_ARG);
        }
        if let Some(device) = fault.device {
            rule.device = device.kernel_dev();
            rule.has_device = 1;
            rule.fd_arg = sc.fd_arg().unwrap_or(NO_PATH_ARG);
        }
        rule.family = fault.family.map_or(0, SocketFamily::value);
        rule.sock_type = fault.socket_type.map_or(0, |t| t.value() as u8);
        rule.sock_args = u8::from(matches!(sc.name(), "socket" | "socketpair"));
        let what = format!("{} fail", sc.name());
        // kprobe and LSM programs run for every task: their rules are
        // found through the caller's ancestors at the targets' depths.
        let for_every_task = Place {
            cgroup: &cgroup,
            nr: sc.nr(),
            action: ACTION_ERROR,
            by_depth: true,
        };
        let mut describe = serde_json::Map::new();
        let (installed, attachment): (Box<dyn Any + Send>, Option<Box<dyn Any + Send>>) =
            match &choice {
                Choice::Kprobe(function) => {
                    rule.backend = BACKEND_KPROBE;
                    let a = self.kprobe.attach(req.kernel, function)?;
                    describe.insert("hook".into(), json!(format!("kprobe {function}")));
                    let r = rules.install(req.name, for_every_task, rule, &what)?;
                    (Box::new(r), Some(Box::new(a)))
                }
                Choice::Lsm(hook) => {
                    rule.backend = BACKEND_LSM;
                    rule.hook = hook.id;
                    let a = self.lsm().attach(req.kernel, hook)?;
                    describe.insert("hook".into(), json!(format!("lsm {}", hook.hook)));
                    let r = rules.install(req.name, for_every_task, rule, &what)?;
                    (Box::new(r), Some(Box::new(a)))
                }
                Choice::Cgroup(CgroupHook::Connect) => {
                    let connect = self.cgroup.connect().ok_or_else(|| {
                        Error::Internal("connect rules unavailable after the check".into())
                    })?;
                    describe.insert("hook".into(), json!(CgroupHook::Connect.describe()));
                    // A family alone is every address of it.
                    let family = fault
                        .family
                        .map(|f| Cidr::everything(f == SocketFamily::Inet6));
                    let spec = RuleSpec {
                        errno: fault.errno.get(),
                        address: fault.address.or(family),
                        ports: fault.port.map(|p| (p.get(), p.get())),
                    };
                    let r = connect.install(req, &cgroup, spec, slot.index())?;
                    (Box::new(r), None)
                }
                Choice::Cgroup(hook) => {
                    rule.backend = BACKEND_CGROUP;
                    if let Some(a) = fault.address {
                        rule.addr = connect::prefix_of(a);
                    }
                    if let Some(p) = fault.port {
                        rule.ports = [p.get(), p.get()];
                    }
                    let a = self.cgroup.attach(req, &cgroup, *hook)?;
                    describe.insert("hook".into(), json!(hook.describe()));
                    let also = hook.also_hits(sc);
                    if !also.is_empty() {
                        describe.insert("also_hits".into(), json!(also));
                    }
                    let r = rules.install(
                        req.name,
                        Place {
                            cgroup: &cgroup,
                            nr: hook.key_nr(sc),
                            action: ACTION_ERROR,
                            by_depth: false,
                        },
                        rule,
                        &what,
                    )?;
                    (Box::new(r), Some(Box::new(a)))
                }
            };
        describe.insert("backend".into(), json!(backend_name(&choice)));
        tracing::info!(
            fault = req.name,
            syscall = sc.name(),
            backend = backend_name(&choice),
            "syscall fault installed"
        );
        Ok(Box::new(SyscallFault {
            _rule: installed,
            _attachment: attachment,
            slot,
            describe,
        }))
    }
}

impl Syscalls {
    fn install_memory_error(
        &mut self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
        rules: &SyscallRules,
    ) -> Result<Box<dyn Installed>, Error> {
        let hook = LSM_MMAP_ADDR;
        self.lsm().hook_ready(&hook).map_err(|why| {
            Error::UnsupportedKernel(format!(
                "memory_error needs BPF LSM (its mmap_addr hook runs whenever mmap, brk or mremap maps memory): {why}"
            ))
        })?;
        let attachment = self.lsm().attach(req.kernel, &hook)?;
        let slot = req.kernel.slots.alloc()?;
        let rule = SyscallRule {
            slot: slot.index(),
            errno: libc::ENOMEM as u32,
            backend: BACKEND_LSM,
            hook: hook.id,
            trigger: req.trigger,
            ..SyscallRule::default()
        };
        let mut installed = Vec::new();
        for name in MemoryError::SYSCALLS {
            let sc: Syscall = name.parse().map_err(Error::Internal)?;
            installed.push(rules.install(
                req.name,
                Place {
                    cgroup,
                    nr: sc.nr(),
                    action: ACTION_ERROR,
                    by_depth: true,
                },
                rule,
                &format!("{name} fail"),
            )?);
        }
        let mut describe = serde_json::Map::new();
        describe.insert("backend".into(), json!("lsm"));
        describe.insert("hook".into(), json!("lsm mmap_addr"));
        describe.insert("syscalls".into(), json!(MemoryError::SYSCALLS));
        Ok(Box::new(SyscallFault {
            _rule: Box::new(installed),
            _attachment: Some(Box::new(attachment)),
            slot,
            describe,
        }))
    }
}

/// An installed syscall fault: its rule, then the attachment it uses
/// (detached once no rule needs it), then its slot.
struct SyscallFault {
    _rule: Box<dyn Any + Send>,
    _attachment: Option<Box<dyn Any + Send>>,
    slot: Slot,
    describe: serde_json::Map<String, Value>,
}

impl Installed for SyscallFault {
    fn counters(&self) -> Counters {
        let s = self.slot.stats();
        Counters {
            evaluations: s.evaluations,
            activations: s.activations,
            ..Counters::default()
        }
    }

    fn describe(&self) -> serde_json::Map<String, Value> {
        self.describe.clone()
    }
}

crate::params!(SyscallError => SyscallError::KIND, MemoryError => MemoryError::KIND);
