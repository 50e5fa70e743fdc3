//! Resolves fault targets (cgroup paths, pids, container ids) to cgroup2
//! directories and their ids, and guards against aiming at the host itself.

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
    spec::target::{ContainerId, TargetSpec},
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
}

impl Cgroup {
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
    /// (`target.cgroup`, `target.pid`, `target.container`).
    pub fn resolve(&self, target: &TargetSpec) -> Result<Cgroup, Error> {
        match target {
            TargetSpec::Cgroup(path) => self.by_path(path),
            TargetSpec::Pid(pid) => self.by_pid(pid.get()),
            TargetSpec::Container(id) => self.by_container(id),
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
        };
        assert!(cg("/").contains("/a"));
        assert!(cg("/a").contains("/a/b"));
        assert!(cg("/a").contains("/a"));
        assert!(!cg("/a").contains("/ab"));
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
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
