//! Where a cgroup's packets leave: the network namespace its processes
//! live in, and that namespace's one device.
//!
//! cgroup_skb programs can drop a cgroup's packets but cannot rewrite, copy
//! or hold them. A container (Docker, Kubernetes, any CNI) has a network
//! namespace of its own with one veth, so corrupt, duplicate, delay and
//! rate faults aimed at its cgroup go on that device, through the
//! interface backend. A cgroup that shares the daemon's namespace (a
//! systemd service, a bare process) has no device of its own, and such a
//! fault is refused rather than spread over shared devices.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use walkdir::WalkDir;

use crate::{
    error::Error,
    kernel::netns::in_netns,
    spec::target::{IfName, Netns},
};

/// At most this many cgroups of a subtree are read for processes.
const MAX_CGROUPS: usize = 4096;

/// The device a cgroup's traffic crosses.
#[derive(Debug)]
pub struct Device {
    pub netns: Netns,
    pub name: IfName,
}

/// Finds the one non-loopback device of the one network namespace that
/// the processes of the cgroup at `dir` (and its descendants) live in.
/// `label` names the cgroup in errors; `kind` the fault.
pub fn device_of(dir: &Path, label: &str, kind: &str) -> Result<Device, Error> {
    let refuse = |why: String| {
        Error::UnsupportedTarget(format!(
            "{kind} on cgroup {label}: {why}. Aim it at an interface instead: {{\"interface\": \"eth0\", \"netns\": \"<name or /proc/PID/ns/net>\"}}"
        ))
        .at("target")
    };
    let mut namespaces: BTreeMap<(u64, u64), u32> = BTreeMap::new();
    for pid in pids(dir) {
        if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/net")) {
            namespaces.entry((meta.dev(), meta.ino())).or_insert(pid);
        }
    }
    let own = fs::metadata("/proc/self/ns/net")
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| Error::io("/proc/self/ns/net", e))?;
    let pid = match namespaces.len() {
        0 => {
            return Err(refuse(
                "it has no processes, so no network namespace".into(),
            ));
        }
        1 => *namespaces.values().next().expect("one entry"),
        n => {
            return Err(refuse(format!(
                "its processes live in {n} network namespaces (e.g. pids {})",
                namespaces
                    .values()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    if namespaces.contains_key(&own) {
        return Err(refuse(
            "its processes share the daemon's network namespace, so its packets cross shared devices (cgroup targets take packet_drop and partition there)"
                .into(),
        ));
    }
    let netns = Netns::of_pid(pid);
    let file = File::open(netns.path()).map_err(|e| {
        Error::TargetNotFound(format!("{}: {e} (did the process exit?)", netns.as_str()))
    })?;
    let names = in_netns(Some(&file), || {
        nix::net::if_::if_nameindex().map(|list| {
            list.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .collect::<Vec<_>>()
        })
    })
    .map_err(|e| Error::io(format!("entering {}", netns.as_str()), e))?
    .map_err(|e| Error::io(format!("listing devices in {}", netns.as_str()), e.into()))?;
    let name = match names.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(refuse(format!(
                "its network namespace ({}) has no device besides lo",
                netns.as_str()
            )));
        }
        many => {
            return Err(refuse(format!(
                "its network namespace ({}) has several devices ({}), so which one is meant is not clear",
                netns.as_str(),
                many.join(", ")
            )));
        }
    };
    let name = IfName::try_from(name).map_err(Error::Internal)?;
    Ok(Device { netns, name })
}

/// Pids in the cgroup at `dir` and below it (a bounded walk).
fn pids(dir: &Path) -> Vec<u32> {
    WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .take(MAX_CGROUPS)
        .filter_map(|e| fs::read_to_string(e.path().join("cgroup.procs")).ok())
        .flat_map(|text| {
            text.lines()
                .filter_map(|l| l.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}
