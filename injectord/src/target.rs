//! Resolves fault targets (cgroup paths, pids, container ids, pod uids,
//! libvirt domain names) to cgroup2 directories and their ids, and guards
//! against aiming at the host itself.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::MetadataExt as _,
    path::{Component, Path, PathBuf},
};

use serde_json::json;
use walkdir::WalkDir;

use crate::{
    error::Error,
    spec::target::{ContainerId, PodUid, TargetSpec, VmName},
};

/// A resolved cgroup2 directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cgroup {
    /// Path relative to the cgroup2 mount, starting with `/` (as in
    /// /proc/PID/cgroup); `/` is the root.
    pub path: String,
    /// The cgroup id: the directory's inode number on cgroup2, the value
    /// `bpf_get_current_cgroup_id()` returns.
    pub id: u64,
    /// What a `pod` or `vm` target found there (its layout, and a VM's
    /// qemu process); `None` for the other targets.
    pub workload: Option<Workload>,
}

/// What a pod or vm target resolved to, besides its cgroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A Kubernetes pod's cgroup, as kubelet made it.
    Pod {
        uid: String,
        driver: Driver,
        qos: Qos,
    },
    /// A libvirt QEMU domain's machine cgroup.
    Vm {
        /// The domain name the target gave.
        name: String,
        /// libvirt's machine name, `qemu-<id>-<name, sanitized>`.
        machine: String,
        /// The domain id (`virsh domid`), part of the machine name.
        domain_id: u32,
        /// A systemd `machine.slice` scope, or libvirt's own cgroupfs layout.
        driver: Driver,
        /// The QEMU process in the VM's cgroup when the target was
        /// resolved (its pid stays for the VM's lifetime: a restarted VM
        /// gets a new cgroup), for faults that act on processes.
        qemu_pid: Option<u32>,
    },
}

/// Who laid out a cgroup: kubelet's and libvirt's two ways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// Slices and scopes named as systemd names units (kubelet's `systemd`
    /// cgroup driver; libvirt registering the VM with systemd-machined).
    Systemd,
    /// Plain directories (kubelet's `cgroupfs` driver; libvirt without
    /// systemd).
    Cgroupfs,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Systemd => "systemd",
            Self::Cgroupfs => "cgroupfs",
        }
    }
}

/// A pod's QoS class, which names its parent cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    /// Directly under kubepods.
    Guaranteed,
    Burstable,
    BestEffort,
}

impl Qos {
    /// The class as kubelet writes it in cgroup names (`""` for
    /// Guaranteed, whose pods sit in kubepods itself).
    fn cgroup_name(self) -> &'static str {
        match self {
            Self::Guaranteed => "",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Guaranteed => "guaranteed",
            Self::Burstable => "burstable",
            Self::BestEffort => "besteffort",
        }
    }
}

impl Workload {
    /// The key and the object `get` and `list` show it under.
    pub fn to_json(&self) -> (&'static str, serde_json::Value) {
        match self {
            Self::Pod { uid, driver, qos } => (
                "pod",
                json!({"uid": uid, "driver": driver.as_str(), "qos": qos.as_str()}),
            ),
            Self::Vm {
                name,
                machine,
                domain_id,
                driver,
                qemu_pid,
            } => (
                "vm",
                json!({
                    "name": name,
                    "machine": machine,
                    "domain_id": domain_id,
                    "driver": driver.as_str(),
                    "qemu_pid": qemu_pid,
                }),
            ),
        }
    }
}

impl Cgroup {
    /// The QEMU process of a `vm` target, for faults that act on a process
    /// rather than on a cgroup.
    pub fn qemu_pid(&self) -> Option<u32> {
        match &self.workload {
            Some(Workload::Vm { qemu_pid, .. }) => *qemu_pid,
            _ => None,
        }
    }

    /// Whether `other` is this cgroup or one of its descendants.
    pub fn contains(&self, other: &str) -> bool {
        self.path == "/"
            || other == self.path
            || other
                .strip_prefix(self.path.as_str())
                .is_some_and(|rest| rest.starts_with('/'))
    }
}

/// The cgroup2 hierarchy of this host.
#[derive(Clone, Debug)]
pub struct Cgroups {
    mount: PathBuf,
}

impl Cgroups {
    /// Finds the cgroup2 mount in /proc/self/mounts (it is /sys/fs/cgroup on
    /// unified hosts, /sys/fs/cgroup/unified on hybrid ones).
    pub fn discover() -> anyhow::Result<Self> {
        let mounts = fs::read_to_string("/proc/self/mounts")?;
        let mount = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let (_, dir, fstype) = (f.next()?, f.next()?, f.next()?);
                (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(dir)))
            })
            .next()
            .ok_or_else(|| {
                anyhow::anyhow!("no cgroup2 filesystem is mounted (see /proc/self/mounts)")
            })?;
        Ok(Self { mount })
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The cgroup a target names. Errors name the target's field
    /// (`target.cgroup`, `target.pid`, `target.container`, `target.pod`,
    /// `target.vm`).
    pub fn resolve(&self, target: &TargetSpec) -> Result<Cgroup, Error> {
        match target {
            TargetSpec::Cgroup(path) => self.by_path(path),
            TargetSpec::Pid(pid) => self.by_pid(pid.get()),
            TargetSpec::Container(id) => self.by_container(id),
            TargetSpec::Pod(uid) => self.by_pod(uid),
            TargetSpec::Vm(name) => self.by_vm(name),
            TargetSpec::Interface { .. } => Err(Error::UnsupportedTarget(
                "an interface is not a cgroup target".into(),
            )),
        }
        .map_err(Error::field(target.field()))
    }

    /// A path inside the cgroup2 mount: either a filesystem path under the
    /// mount, or a path relative to it (a leading `/` is allowed, as in
    /// /proc/PID/cgroup).
    pub fn by_path(&self, path: &str) -> Result<Cgroup, Error> {
        let given = Path::new(path);
        let rel = match given.strip_prefix(&self.mount) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => given.strip_prefix("/").unwrap_or(given).to_path_buf(),
        };
        if rel
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(Error::InvalidValue(format!(
                "cgroup path {path:?} must not contain '..'"
            )));
        }
        let rel_str = format!("/{}", rel.display());
        let full = self.mount.join(&rel);
        self.at(&rel_str).map_err(|e| {
            let (shown, mount) = (full.display(), self.mount.display());
            match e {
                NotCgroup::Missing => Error::TargetNotFound(format!(
                    "cgroup {path:?} does not exist (looked for {shown}; cgroup2 is mounted at {mount})"
                )),
                NotCgroup::File => Error::InvalidValue(format!(
                    "cgroup {path:?} is not a directory: {shown} (or a directory on the way to it) is a file; a cgroup is a directory under {mount}"
                )),
                NotCgroup::Plain => Error::InvalidValue(format!(
                    "cgroup {path:?}: {shown} is a directory without cgroup.procs, so not a cgroup2 directory"
                )),
                NotCgroup::Io(e) => Error::io(format!("reading cgroup {shown}"), e),
            }
        })
    }

    /// The cgroup at a mount-relative path like `/a/b`.
    fn at(&self, rel: &str) -> Result<Cgroup, NotCgroup> {
        let rel = rel.trim_end_matches('/');
        let rel = if rel.is_empty() { "/" } else { rel };
        let dir = self.mount.join(rel.trim_start_matches('/'));
        let meta = fs::metadata(&dir).map_err(NotCgroup::from)?;
        if !meta.is_dir() {
            return Err(NotCgroup::File);
        }
        match fs::metadata(dir.join("cgroup.procs")) {
            Ok(_) => Ok(Cgroup {
                path: rel.to_string(),
                id: meta.ino(),
                workload: None,
            }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(NotCgroup::Plain),
            Err(e) => Err(NotCgroup::Io(e)),
        }
    }

    /// The cgroup of a process. Kernel threads are refused: they all sit
    /// in the root cgroup, and no program of a cgroup target runs for them
    /// (they make no connect() calls and own no sockets of a workload).
    pub fn by_pid(&self, pid: u32) -> Result<Cgroup, Error> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::TargetNotFound(format!("process {pid} does not exist")),
            _ => Error::io(format!("reading /proc/{pid}/stat"), e),
        })?;
        if let Some(comm) = kernel_thread(&stat) {
            return Err(Error::UnsupportedTarget(format!(
                "process {pid} ({comm}) is a kernel thread: kernel threads have no cgroup of their own (they are all in the root cgroup) and make no calls a fault could fail; target a user-space process, a cgroup or a container"
            )));
        }
        let path = cgroup_of_pid(&pid.to_string()).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::TargetNotFound(format!("process {pid} has exited")),
            _ => Error::io(format!("reading /proc/{pid}/cgroup"), e),
        })?;
        self.at(&path).map_err(|e| {
            Error::TargetNotFound(format!(
                "process {pid} is in cgroup {path}, which is not readable: {}",
                e.reason()
            ))
        })
    }

    /// Looks for the container's cgroup under the names docker, containerd
    /// (Kubernetes or not), cri-o and podman give it, with the systemd or the
    /// cgroupfs driver.
    pub fn by_container(&self, id: &ContainerId) -> Result<Cgroup, Error> {
        let mut found: Vec<(String, Cgroup)> = Vec::new();
        for entry in WalkDir::new(&self.mount)
            .min_depth(1)
            .max_depth(16)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_dir())
        {
            let Some(name) = entry.file_name().to_str() else {
                continue;
            };
            let Some(full) = container_id_of(name) else {
                continue;
            };
            if !full.starts_with(id.as_str()) {
                continue;
            }
            // A container's own sub-cgroups (e.g. docker's "init") sit below
            // its directory: keep the shallowest directory per id.
            if found.iter().any(|(f, _)| f == full) {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&self.mount) else {
                continue;
            };
            if let Ok(cg) = self.at(&format!("/{}", rel.display())) {
                found.push((full.to_string(), cg));
            }
        }
        match found.len() {
            0 => Err(Error::ContainerNotFound(format!(
                "no container cgroup matches id {:?} under {} (looked for docker-, cri-containerd-, crio-, libpod- scopes and cgroupfs-driver directories)",
                id.as_str(),
                self.mount.display()
            ))),
            1 => Ok(found.remove(0).1),
            _ => {
                let candidates: Vec<_> = found
                    .iter()
                    .map(|(full, cg)| json!({"id": full, "cgroup": cg.path}))
                    .collect();
                let ids: Vec<_> = found.iter().map(|(f, _)| f.as_str()).collect();
                Err(Error::AmbiguousTarget {
                    message: format!(
                        "container id prefix {:?} matches {} containers: {}; give more digits",
                        id.as_str(),
                        found.len(),
                        ids.join(", ")
                    ),
                    candidates: json!(candidates),
                })
            }
        }
    }

    /// The cgroup kubelet made for pod `uid`, with either cgroup driver
    /// and in any QoS class (see [`pod_layout`]), under any parent
    /// (kubelet's `--cgroup-root`) down to [`SEARCH_DEPTH`].
    pub fn by_pod(&self, uid: &PodUid) -> Result<Cgroup, Error> {
        let mut found: Vec<Cgroup> = Vec::new();
        self.search(|dirs| {
            let name = dirs.last().copied().unwrap_or_default();
            let layout = pod_layout(uid, dirs);
            // Pods never nest: below one are only its containers.
            let descend = !is_pod_dir(name);
            (layout, descend)
        })
        .into_iter()
        .for_each(|(rel, (driver, qos))| {
            if let Ok(mut cg) = self.at(&rel) {
                cg.workload = Some(Workload::Pod {
                    uid: uid.as_str().to_string(),
                    driver,
                    qos,
                });
                found.push(cg);
            }
        });
        let u = uid.as_str();
        let s = uid.systemd_form();
        match found.len() {
            0 => Err(Error::TargetNotFound(format!(
                "no cgroup of pod {u} under {mount}; looked (to depth {SEARCH_DEPTH}, under any --cgroup-root) for kubepods/pod{u}, kubepods/burstable/pod{u} and kubepods/besteffort/pod{u} (kubelet's cgroupfs driver) and kubepods.slice/kubepods-pod{s}.slice, kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{s}.slice and kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{s}.slice (its systemd driver); is the pod running on this node?",
                mount = self.mount.display()
            ))),
            1 => Ok(found.remove(0)),
            n => Err(ambiguous(
                format!("pod {u} has {n} cgroups"),
                "target the one you mean by \"cgroup\"",
                &found,
            )),
        }
    }

    /// The cgroup of the running libvirt QEMU domain `name`: its
    /// systemd-machined scope (`machine-qemu\x2d<id>\x2d<name>.scope`,
    /// in machine.slice unless the domain names another partition) or,
    /// without systemd, libvirt's own `qemu-<id>-<name>.libvirt-qemu`
    /// (in `machine/`). `<name>` is the domain name as libvirt puts it in
    /// a machine name ([`machine_name`]); `<id>` is the running domain's id.
    /// The VM's processes sit below it (`emulator`, `vcpuN`, and `libvirt/`
    /// in between with newer libvirt under systemd); the target is the
    /// whole of it, and its QEMU process is named in the result.
    pub fn by_vm(&self, name: &VmName) -> Result<Cgroup, Error> {
        let mut found: Vec<Cgroup> = Vec::new();
        self.search(|dirs| {
            let dir = dirs.last().copied().unwrap_or_default();
            match vm_dir(dir) {
                // A VM's own cgroups hold no other VM.
                Some((driver, id)) => {
                    let machine = machine_name(id, name.as_str());
                    let hit = vm_dir_name(driver, &machine) == dir;
                    (hit.then_some((driver, id, machine)), false)
                }
                None => (None, true),
            }
        })
        .into_iter()
        .for_each(|(rel, (driver, domain_id, machine))| {
            if let Ok(mut cg) = self.at(&rel) {
                let dir = self.mount.join(rel.trim_start_matches('/'));
                cg.workload = Some(Workload::Vm {
                    name: name.as_str().to_string(),
                    machine,
                    domain_id,
                    driver,
                    qemu_pid: qemu_process(&dir),
                });
                found.push(cg);
            }
        });
        match found.len() {
            0 => {
                let sanitized = machine_name(1, name.as_str());
                let sanitized = sanitized
                    .strip_prefix("qemu-1-")
                    .unwrap_or_default()
                    .to_string();
                Err(Error::TargetNotFound(format!(
                    "no running libvirt domain {name:?} under {mount}; looked (to depth {SEARCH_DEPTH}) for the systemd scope machine-{scope}.scope (libvirt with systemd, in machine.slice) and {cgroupfs}.libvirt-qemu (libvirt without systemd, in machine/), where <id> is the running domain's id; libvirt keeps only the letters, digits, '-' and '.' of a domain name there, and 64 characters of the whole machine name",
                    name = name.as_str(),
                    mount = self.mount.display(),
                    cgroupfs = if sanitized.is_empty() {
                        "qemu-<id>".to_string()
                    } else {
                        format!("qemu-<id>-{sanitized}")
                    },
                    scope = if sanitized.is_empty() {
                        "qemu\\x2d<id>".to_string()
                    } else {
                        format!("qemu\\x2d<id>\\x2d{}", systemd_escape(&sanitized))
                    },
                )))
            }
            1 => Ok(found.remove(0)),
            n => Err(ambiguous(
                format!(
                    "vm {:?} matches {n} running domains (libvirt gives domains whose names differ only in characters it drops, or beyond its 64-character limit, the same machine name)",
                    name.as_str()
                ),
                "target the one you mean by \"cgroup\"",
                &found,
            )),
        }
    }

    /// Walks the hierarchy down to [`SEARCH_DEPTH`]. `visit` gets the
    /// names of a directory and its ancestors below the mount (the
    /// directory's own last), and returns what it found there and whether
    /// to look below it. Returns the mount-relative paths (`/a/b`) of the
    /// finds. Directories that vanish during the walk (cgroups come and go)
    /// are passed over.
    fn search<T>(&self, mut visit: impl FnMut(&[&str]) -> (Option<T>, bool)) -> Vec<(String, T)> {
        let mut found = Vec::new();
        let mut walk = WalkDir::new(&self.mount)
            .min_depth(1)
            .max_depth(SEARCH_DEPTH)
            .into_iter();
        while let Some(entry) = walk.next() {
            let Ok(entry) = entry else { continue };
            if !entry.file_type().is_dir() {
                continue;
            }
            let Ok(rel) = entry.path().strip_prefix(&self.mount) else {
                continue;
            };
            let Some(dirs) = rel
                .components()
                .map(|c| c.as_os_str().to_str())
                .collect::<Option<Vec<&str>>>()
            else {
                continue;
            };
            let (hit, descend) = visit(&dirs);
            if let Some(hit) = hit {
                found.push((format!("/{}", dirs.join("/")), hit));
            }
            if !descend {
                walk.skip_current_dir();
            }
        }
        found
    }
}

/// How deep below the cgroup2 mount pods and VMs are looked for: kubelet's
/// deepest default is 3 (kubepods.slice/kubepods-burstable.slice/<pod>),
/// and its `--cgroup-root` adds its own depth; libvirt's machine cgroup is
/// 2 deep (machine.slice/<scope>), more in a partition of its own.
pub const SEARCH_DEPTH: usize = 8;

/// An [`Error::AmbiguousTarget`] listing the cgroups.
fn ambiguous(what: String, hint: &str, found: &[Cgroup]) -> Error {
    let paths: Vec<&str> = found.iter().map(|c| c.path.as_str()).collect();
    let candidates: Vec<_> = found
        .iter()
        .map(|c| {
            let mut v = json!({"cgroup": c.path});
            if let Some(w) = &c.workload {
                let (key, detail) = w.to_json();
                v[key] = detail;
            }
            v
        })
        .collect();
    Error::AmbiguousTarget {
        message: format!("{what}: {}; {hint}", paths.join(", ")),
        candidates: json!(candidates),
    }
}

/// Whether the directory at the end of `dirs` (mount-relative names, the
/// directory's own last) is the cgroup kubelet makes for pod `uid`, and
/// with which driver and QoS class. kubelet (pkg/kubelet/cm) names a pod's
/// cgroup `pod<uid>` and puts it in its QoS class's cgroup: `kubepods`
/// itself for Guaranteed pods, `kubepods/burstable` or
/// `kubepods/besteffort` otherwise. The cgroupfs driver uses these names
/// as they are; the systemd driver turns each path into a slice whose name
/// joins its components with `-` (after replacing the `-` within each by
/// `_`): `kubepods.slice/kubepods-burstable.slice/
/// kubepods-burstable-pod<uid_>.slice`. A `--cgroup-root` puts the tree
/// under other directories, which with the systemd driver also prefix
/// every slice name (`foo.slice/foo-kubepods.slice/...`).
pub fn pod_layout(uid: &PodUid, dirs: &[&str]) -> Option<(Driver, Qos)> {
    let (name, up) = dirs.split_last()?;
    let parent = up.last().copied();
    let grandparent = up.len().checked_sub(2).map(|i| up[i]);
    if name.strip_prefix("pod") == Some(uid.as_str()) {
        return match (parent?, grandparent) {
            ("kubepods", _) => Some((Driver::Cgroupfs, Qos::Guaranteed)),
            ("burstable", Some("kubepods")) => Some((Driver::Cgroupfs, Qos::Burstable)),
            ("besteffort", Some("kubepods")) => Some((Driver::Cgroupfs, Qos::BestEffort)),
            _ => None,
        };
    }
    let stem = name.strip_suffix(".slice")?;
    let u = uid.systemd_form();
    for qos in [Qos::Guaranteed, Qos::Burstable, Qos::BestEffort] {
        let class = match qos {
            Qos::Guaranteed => String::new(),
            _ => format!("{}-", qos.cgroup_name()),
        };
        let Some(root) = stem.strip_suffix(&format!("kubepods-{class}pod{u}")) else {
            continue;
        };
        // The --cgroup-root's own slice name, joined with `-`.
        if !(root.is_empty() || root.ends_with('-')) {
            return None;
        }
        let kubepods = format!("{root}kubepods.slice");
        let laid_out = match qos {
            Qos::Guaranteed => parent == Some(kubepods.as_str()),
            _ => {
                parent == Some(format!("{root}kubepods-{}.slice", qos.cgroup_name()).as_str())
                    && grandparent == Some(kubepods.as_str())
            }
        };
        return laid_out.then_some((Driver::Systemd, qos));
    }
    None
}

/// Whether a directory is any pod's cgroup (not descended into when
/// looking for pods: what is below is its containers).
fn is_pod_dir(name: &str) -> bool {
    name.strip_prefix("pod")
        .is_some_and(|u| PodUid::try_from(u.to_string()).is_ok())
        || (name.ends_with(".slice") && name.contains("kubepods") && name.contains("-pod"))
}

/// The machine name libvirt gives the QEMU domain `name` running with
/// `id`, as virDomainDriverGenerateMachineName (src/hypervisor/
/// domain_driver.c) makes it for the privileged driver: `qemu-<id>-`, then
/// the name's ASCII letters, digits, `-` and `.`, without a leading `-` or
/// `.` or a run of them (the first of a run stays), cut when the whole
/// reaches 64 characters, and without trailing `-` and `.` (which takes
/// the `-` after the id when nothing of the name is left).
pub fn machine_name(id: u32, name: &str) -> String {
    let mut out = format!("qemu-{id}-");
    let mut skip = true;
    for b in name.bytes() {
        if out.len() >= 64 {
            break;
        }
        if b == b'.' || b == b'-' {
            if !skip {
                out.push(b as char);
                skip = true;
            }
            continue;
        }
        if !b.is_ascii_alphanumeric() {
            continue;
        }
        out.push(b as char);
        skip = false;
    }
    while out.ends_with(['-', '.']) {
        out.pop();
    }
    out
}

/// A unit name component escaped as systemd does (`unit_name_escape`,
/// libvirt's virSystemdEscapeName): `/` becomes `-`; `-`, `\`, a leading
/// `.` and every byte but ASCII letters, digits, `:`, `_` and `.` become
/// `\xNN`.
pub fn systemd_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for (i, b) in s.bytes().enumerate() {
        let plain = b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.');
        if b == b'/' {
            out.push('-');
        } else if !plain || (i == 0 && b == b'.') {
            out.push_str(&format!("\\x{b:02x}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

/// The name of a QEMU machine's cgroup directory: systemd-machined's scope
/// `machine-<machine name, escaped>.scope`, or libvirt's own
/// `<machine name>.libvirt-qemu` without systemd.
pub fn vm_dir_name(driver: Driver, machine: &str) -> String {
    match driver {
        Driver::Systemd => format!("machine-{}.scope", systemd_escape(machine)),
        Driver::Cgroupfs => format!("{machine}.libvirt-qemu"),
    }
}

/// Whether a directory name is a QEMU machine's cgroup, and the domain id
/// in it.
fn vm_dir(dir: &str) -> Option<(Driver, u32)> {
    let (driver, rest) = if let Some(rest) = dir.strip_prefix("machine-qemu\\x2d") {
        (Driver::Systemd, rest.strip_suffix(".scope")?)
    } else {
        let rest = dir.strip_prefix("qemu-")?;
        (Driver::Cgroupfs, rest.strip_suffix(".libvirt-qemu")?)
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = rest[..digits].parse().ok()?;
    Some((driver, id))
}

/// The QEMU process in a VM's cgroup tree: a process whose name or
/// executable starts with `qemu` (`qemu-system-x86_64`, `qemu-kvm`), the
/// one in an `emulator` cgroup first (libvirt moves QEMU's main thread
/// there), the lowest pid first otherwise.
fn qemu_process(dir: &Path) -> Option<u32> {
    let mut best: Option<(bool, u32)> = None;
    for entry in WalkDir::new(dir)
        .max_depth(3)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
    {
        let elsewhere = entry.file_name() != "emulator";
        let Ok(procs) = fs::read_to_string(entry.path().join("cgroup.procs")) else {
            continue;
        };
        for pid in procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()) {
            if is_qemu(pid) && best.is_none_or(|b| (elsewhere, pid) < b) {
                best = Some((elsewhere, pid));
            }
        }
    }
    best.map(|(_, pid)| pid)
}

/// Whether process `pid` is a QEMU: its name (`comm`, at most 15
/// characters: `qemu-system-x86`) or its executable's file name starts
/// with `qemu`.
fn is_qemu(pid: u32) -> bool {
    let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    comm.starts_with("qemu")
        || fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| {
            exe.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("qemu"))
        })
}

/// Why a path is not a cgroup.
#[derive(Debug)]
enum NotCgroup {
    Missing,
    /// A file, or a path through a file.
    File,
    /// A directory, but not of cgroup2.
    Plain,
    Io(std::io::Error),
}

impl From<std::io::Error> for NotCgroup {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::NotFound => Self::Missing,
            ErrorKind::NotADirectory => Self::File,
            _ => Self::Io(e),
        }
    }
}

impl NotCgroup {
    fn reason(&self) -> String {
        match self {
            Self::Missing => "it does not exist".into(),
            Self::File => "it is a file".into(),
            Self::Plain => "it has no cgroup.procs".into(),
            Self::Io(e) => e.to_string(),
        }
    }
}

/// PF_KTHREAD in the flags of /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// The name of the process whose /proc/PID/stat this is, if it is a
/// kernel thread. The name (in parentheses) may hold spaces and
/// parentheses itself, so fields are counted from the last ')'.
fn kernel_thread(stat: &str) -> Option<&str> {
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or(head, |(_, c)| c);
    // After the name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags: u64 = rest.split_whitespace().nth(6)?.parse().ok()?;
    (flags & PF_KTHREAD != 0).then_some(comm)
}

/// The 64-hex-digit container id a cgroup directory is named after, if any.
/// Conmon's and other helper scopes are not containers.
fn container_id_of(name: &str) -> Option<&str> {
    let stem = name.strip_suffix(".scope").unwrap_or(name);
    if stem.contains("conmon") {
        return None;
    }
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| stem.strip_prefix(p))
    .unwrap_or(stem);
    (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(id)
}

/// The cgroup2 path of a process ("0::/path" in /proc/PID/cgroup).
pub fn cgroup_of_pid(pid: &str) -> std::io::Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .ok_or_else(|| std::io::Error::other("no cgroup2 entry in /proc/PID/cgroup"))
}

/// Mount paths in /proc/self/mounts escape spaces and such as octal.
fn unescape_mount(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let oct: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&oct, 8) {
                Ok(b) => out.push(b as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&oct);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Refuses targets whose subtree holds PID 1, this daemon, or everything.
pub fn check_guard(cg: &Cgroup, force: bool) -> Result<(), Error> {
    if force {
        return Ok(());
    }
    let mut hits = Vec::new();
    if cg.path == "/" {
        hits.push("it is the root cgroup (every process on the host)".to_string());
    }
    if let Ok(p) = cgroup_of_pid("1")
        && cg.contains(&p)
        && cg.path != "/"
    {
        hits.push(format!("it contains PID 1 (in {p})"));
    }
    if let Ok(p) = cgroup_of_pid("self")
        && cg.contains(&p)
        && cg.path != "/"
    {
        hits.push(format!("it contains injectord itself (in {p})"));
    }
    if hits.is_empty() {
        Ok(())
    } else {
        Err(Error::ForbiddenTarget(format!(
            "refusing to target cgroup {}: {}; set \"force\": true if you mean it",
            cg.path,
            hits.join(" and ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn container_names() {
        for name in [
            format!("docker-{ID}.scope"),
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("libpod-{ID}.scope"),
            ID.to_string(),
        ] {
            assert_eq!(container_id_of(&name), Some(ID), "{name}");
        }
        assert_eq!(container_id_of(&format!("crio-conmon-{ID}.scope")), None);
        assert_eq!(container_id_of("system.slice"), None);
    }

    #[test]
    fn containment() {
        let cg = |p: &str| Cgroup {
            path: p.into(),
            id: 1,
            workload: None,
        };
        assert!(cg("/").contains("/a"));
        assert!(cg("/a").contains("/a/b"));
        assert!(cg("/a").contains("/a"));
        assert!(!cg("/a").contains("/ab"));
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
    }

    /// A directory tree shaped like a cgroup2 hierarchy (every directory
    /// holds a `cgroup.procs`), removed on drop.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!(
                "injectord-cgtree-{name}-{}-{n}",
                std::process::id()
            ));
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn cgroups(&self) -> Cgroups {
            Cgroups {
                mount: self.0.clone(),
            }
        }

        /// Makes `rel` and its parents, each a "cgroup".
        fn mk(&self, rel: &str) -> u64 {
            let mut dir = self.0.clone();
            for part in rel.split('/') {
                dir.push(part);
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join("cgroup.procs"), "").unwrap();
            }
            fs::metadata(&dir).unwrap().ino()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    const UID: &str = "1b2c3d4e-5f60-4182-93a4-b5c6d7e8f901";
    const UID_: &str = "1b2c3d4e_5f60_4182_93a4_b5c6d7e8f901";

    fn uid(s: &str) -> PodUid {
        PodUid::try_from(s.to_string()).unwrap()
    }

    /// Every layout kubelet makes, under the mount and under a
    /// --cgroup-root, with a container cgroup inside the pod's.
    #[test]
    fn pods_resolve_under_both_drivers_every_qos_class_and_any_root() {
        use Driver::*;
        use Qos::*;
        let layouts = [
            ("kubepods/podU", Cgroupfs, Guaranteed),
            ("kubepods/burstable/podU", Cgroupfs, Burstable),
            ("kubepods/besteffort/podU", Cgroupfs, BestEffort),
            ("kubepods.slice/kubepods-podS.slice", Systemd, Guaranteed),
            (
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podS.slice",
                Systemd,
                Burstable,
            ),
            (
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-podS.slice",
                Systemd,
                BestEffort,
            ),
            ("custom/root/kubepods/burstable/podU", Cgroupfs, Burstable),
            (
                "k8s.slice/k8s-kubepods.slice/k8s-kubepods-besteffort.slice/k8s-kubepods-besteffort-podS.slice",
                Systemd,
                BestEffort,
            ),
            (
                "k8s.slice/k8s-kubepods.slice/k8s-kubepods-podS.slice",
                Systemd,
                Guaranteed,
            ),
        ];
        for (layout, driver, qos) in layouts {
            let tree = Tree::new("pods");
            let rel = layout.replace('U', UID).replace('S', UID_);
            let id = tree.mk(&rel);
            let container = if driver == Systemd {
                "cri-containerd-0123.scope"
            } else {
                "0123"
            };
            tree.mk(&format!("{rel}/{container}"));
            let cg = tree
                .cgroups()
                .by_pod(&uid(UID))
                .unwrap_or_else(|e| panic!("{layout}: {e}"));
            assert_eq!(cg.path, format!("/{rel}"), "{layout}");
            assert_eq!(cg.id, id);
            assert_eq!(
                cg.workload,
                Some(Workload::Pod {
                    uid: UID.into(),
                    driver,
                    qos
                }),
                "{layout}"
            );
            assert_eq!(cg.qemu_pid(), None);
        }
    }

    #[test]
    fn pod_names_out_of_place_are_not_pods() {
        for layout in [
            // Not under a QoS class's cgroup.
            "podU",
            "other/podU",
            "burstable/podU",
            "kubepods/guaranteed/podU",
            // Dashes in a slice name, underscores in a directory name.
            "kubepods.slice/kubepods-podU.slice",
            "kubepods/podS",
            // A slice outside its parent slice.
            "kubepods-burstable-podS.slice",
            "kubepods.slice/kubepods-burstable-podS.slice",
            "kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-podS.slice",
            "x.slice/xkubepods.slice/xkubepods-podS.slice",
            "k8s.slice/kubepods.slice/k8s-kubepods-podS.slice",
        ] {
            let tree = Tree::new("notpods");
            tree.mk(&layout.replace('U', UID).replace('S', UID_));
            let e = tree.cgroups().by_pod(&uid(UID)).unwrap_err();
            assert_eq!(
                e.code(),
                crate::error::ErrorCode::TargetNotFound,
                "{layout}"
            );
            let m = e.to_string();
            for place in [
                format!("kubepods/besteffort/pod{UID}"),
                format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
                ),
            ] {
                assert!(m.contains(&place), "{m}");
            }
        }
    }

    #[test]
    fn a_pod_with_two_cgroups_is_ambiguous_and_other_pods_do_not_count() {
        let tree = Tree::new("twopods");
        tree.mk(&format!("kubepods/burstable/pod{UID}"));
        tree.mk(&format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
        ));
        let other = "9b2c3d4e-5f60-4182-93a4-b5c6d7e8f901";
        tree.mk(&format!("kubepods/pod{other}"));
        let e = tree.cgroups().by_pod(&uid(UID)).unwrap_err();
        let Error::AmbiguousTarget {
            message,
            candidates,
        } = &e
        else {
            panic!("{e:?}")
        };
        assert!(
            message.contains(&format!("/kubepods/burstable/pod{UID}")),
            "{message}"
        );
        assert_eq!(candidates.as_array().unwrap().len(), 2);
        assert_eq!(candidates[0]["pod"]["uid"], UID);
        let cg = tree.cgroups().by_pod(&uid(other)).unwrap();
        assert_eq!(cg.path, format!("/kubepods/pod{other}"));
    }

    /// libvirt's own test vectors (tests/virsystemdtest.c) and a few more.
    #[test]
    fn machine_names_as_libvirt_makes_them() {
        for (name, id, machine) in [
            ("demo", 1, "qemu-1-demo"),
            ("demo-name", 2, "qemu-2-demo-name"),
            ("demo!name", 3, "qemu-3-demoname"),
            (".demo", 4, "qemu-4-demo"),
            ("bull\u{1f4a9}", 5, "qemu-5-bull"),
            ("demo..name", 6, "qemu-6-demo.name"),
            (
                "12345678901234567890123456789012345678901234567890123456789",
                7,
                "qemu-7-123456789012345678901234567890123456789012345678901234567",
            ),
            (
                "123456789012345678901234567890123456789012345678901234567890",
                8,
                "qemu-8-123456789012345678901234567890123456789012345678901234567",
            ),
            (
                "kstest-network-device-default-httpks_(c9eed63e-981e-48ec-acdc-56b3f8c5f678)",
                100,
                "qemu-100-kstest-network-device-default-httpksc9eed63e-981e-48ec",
            ),
            (
                "kstest-network-device-default-httpks_(c9eed63e-981e-48ec--cdc-56b3f8c5f678)",
                10,
                "qemu-10-kstest-network-device-default-httpksc9eed63e-981e-48ec-c",
            ),
            ("demo.-.test.", 11, "qemu-11-demo.test"),
            ("|.-m", 1, "qemu-1-m"),
            (
                "Auto-esx7.0-rhel7.9-special-characters~!@#$%^&*_=+,?><:;|.\"[]()`\\-m",
                1,
                "qemu-1-Auto-esx7.0-rhel7.9-special-characters.m",
            ),
            // Nothing of the name left: the dash after the id goes too.
            ("\u{3a9}__", 12, "qemu-12"),
            ("vnf_edge 01", 13, "qemu-13-vnfedge01"),
        ] {
            assert_eq!(machine_name(id, name), machine, "{name:?}");
            assert!(machine.len() <= 64);
        }
    }

    #[test]
    fn systemd_escapes_unit_names_as_systemd_does() {
        // systemd-escape's and libvirt's own examples.
        assert_eq!(systemd_escape("qemu-3-demo"), "qemu\\x2d3\\x2ddemo");
        assert_eq!(systemd_escape("demo!name"), "demo\\x21name");
        assert_eq!(systemd_escape(".demo"), "\\x2edemo");
        assert_eq!(systemd_escape("a.b:c_d"), "a.b:c_d");
        assert_eq!(systemd_escape("a/b"), "a-b");
        assert_eq!(systemd_escape("bull\u{1f4a9}"), "bull\\xf0\\x9f\\x92\\xa9");
        assert_eq!(
            vm_dir_name(Driver::Systemd, "qemu-3-demo.x"),
            "machine-qemu\\x2d3\\x2ddemo.x.scope"
        );
        assert_eq!(
            vm_dir_name(Driver::Cgroupfs, "qemu-3-demo.x"),
            "qemu-3-demo.x.libvirt-qemu"
        );
        assert_eq!(
            vm_dir("machine-qemu\\x2d17\\x2dx.scope"),
            Some((Driver::Systemd, 17))
        );
        assert_eq!(
            vm_dir("machine-qemu\\x2d17.scope"),
            Some((Driver::Systemd, 17))
        );
        assert_eq!(vm_dir("qemu-4-x.libvirt-qemu"), Some((Driver::Cgroupfs, 4)));
        assert_eq!(vm_dir("machine-lxc\\x2d4\\x2dx.scope"), None);
        assert_eq!(vm_dir("qemu-x.libvirt-qemu"), None);
        assert_eq!(vm_dir("machine.slice"), None);
    }

    #[test]
    fn vms_resolve_in_both_libvirt_layouts() {
        let name = "vnf_edge..01-";
        for (layout, driver, inner) in [
            (
                "machine.slice/machine-qemu\\x2d7\\x2dvnfedge.01.scope",
                Driver::Systemd,
                &["libvirt/emulator", "libvirt/vcpu0", "libvirt/vcpu1"][..],
            ),
            (
                "machine.slice/machine-qemu\\x2d7\\x2dvnfedge.01.scope",
                Driver::Systemd,
                &["emulator", "vcpu0"][..],
            ),
            (
                "machine/qemu-7-vnfedge.01.libvirt-qemu",
                Driver::Cgroupfs,
                &["emulator", "vcpu0"][..],
            ),
            (
                "machine/production.partition/qemu-7-vnfedge.01.libvirt-qemu",
                Driver::Cgroupfs,
                &["emulator"][..],
            ),
        ] {
            let tree = Tree::new("vms");
            let id = tree.mk(layout);
            for dir in inner {
                tree.mk(&format!("{layout}/{dir}"));
            }
            // Another domain next to it.
            tree.mk(&layout.replace("vnfedge.01", "vnfedge.02").replace('7', "8"));
            let vm = VmName::try_from(name.to_string()).unwrap();
            let cg = tree
                .cgroups()
                .by_vm(&vm)
                .unwrap_or_else(|e| panic!("{layout}: {e}"));
            assert_eq!(cg.path, format!("/{layout}"));
            assert_eq!(cg.id, id);
            assert_eq!(
                cg.workload,
                Some(Workload::Vm {
                    name: name.into(),
                    machine: "qemu-7-vnfedge.01".into(),
                    domain_id: 7,
                    driver,
                    qemu_pid: None,
                })
            );
        }
    }

    #[test]
    fn vm_names_that_libvirt_makes_alike_are_ambiguous() {
        let tree = Tree::new("vmclash");
        tree.mk("machine.slice/machine-qemu\\x2d3\\x2dweb1.scope");
        tree.mk("machine/qemu-4-web1.libvirt-qemu");
        let vm = |n: &str| VmName::try_from(n.to_string()).unwrap();
        for name in ["web1", "web_1", "web-1"] {
            let e = tree.cgroups().by_vm(&vm(name)).unwrap_err();
            if name == "web-1" {
                // "web-1" keeps its dash: a machine name of its own.
                assert_eq!(e.code(), crate::error::ErrorCode::TargetNotFound, "{e}");
                assert!(
                    e.to_string()
                        .contains("machine-qemu\\x2d<id>\\x2dweb\\x2d1.scope"),
                    "{e}"
                );
                assert!(
                    e.to_string().contains("qemu-<id>-web-1.libvirt-qemu"),
                    "{e}"
                );
                continue;
            }
            let Error::AmbiguousTarget {
                message,
                candidates,
            } = &e
            else {
                panic!("{name}: {e:?}")
            };
            assert!(message.contains("matches 2 running domains"), "{message}");
            let machines: Vec<_> = candidates
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["vm"]["machine"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(machines.len(), 2);
            assert!(
                machines.contains(&"qemu-3-web1".to_string()),
                "{machines:?}"
            );
            assert!(
                machines.contains(&"qemu-4-web1".to_string()),
                "{machines:?}"
            );
        }
    }

    #[test]
    fn qemu_is_known_by_its_name() {
        assert!(!is_qemu(std::process::id()));
        assert!(!is_qemu(u32::MAX));
    }

    #[test]
    fn kernel_threads_by_their_flags() {
        let kthreadd = "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 11 0 0";
        assert_eq!(kernel_thread(kthreadd), Some("kthreadd"));
        let odd = "77 (a) b (c)) S 1 77 77 0 -1 4194560 0 0";
        assert_eq!(kernel_thread(odd), None);
        let own = fs::read_to_string("/proc/self/stat").unwrap();
        assert_eq!(kernel_thread(&own), None);
    }
}
