//! `io_throttle`: bandwidth and IOPS limits for the target on one device,
//! through the cgroup I/O controller the host has, journalled and restored
//! exactly on remove, TTL, SIGTERM, SIGKILL of the daemon and SIGKILL of
//! its process group.
//!
//! There are two ways, by the controller the host has (`Controller`,
//! found at load): on cgroup v2 a line of the target's `io.max`
//! (`v2.rs`); on hybrid hosts, where `io` is bound to the v1 `blkio`
//! hierarchy, a blkio cgroup of the fault's own that holds the target's
//! processes (`v1.rs`). This module has what both share: the limits, the
//! checks every throttle passes, and the bookkeeping that keeps one
//! throttle per (cgroup, device) and shares `+io` delegations and blkio
//! cgroups between throttles.
//!
//! **Composition**: at most one io_throttle per (target cgroup, device),
//! a second is a `conflict` naming the first; on v1 also none on a
//! cgroup above or below a throttled one (v1's flat limits cannot nest).
//! A limit someone else set before is kept if it is tighter: the fault
//! writes the minimum, so a fault never loosens I/O.
//!
//! All of it is file writes, done where the request is served: `inject`,
//! `remove`, TTL expiry and the target watch run on tokio's blocking
//! threads (`rpc.rs`), and the sweep on a thread of its own, so a slow
//! cgroup write never blocks the async runtime.

mod v1;
mod v2;

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use serde_json::{Map, Value, json};

use self::{
    v1::V1Group,
    v2::{Enabled, FileGuard},
};
use super::spec::IoThrottle;
use crate::{
    capabilities::Capability,
    error::Error,
    family::{Counters, Installed, Request},
    kernel::reaper::Reaper,
    target::{Cgroup, cgroup_of_pid},
};

/// The cgroup I/O controller this host has.
#[derive(Clone, Debug)]
enum Controller {
    /// The unified hierarchy's `io` (mounted here).
    V2 { mount: PathBuf },
    /// The v1 `blkio` hierarchy (mounted here).
    V1 { mount: PathBuf },
    /// Neither: why.
    None(String),
}

/// The four limits of one device, `None` = `max` (no limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub rbps: Option<u64>,
    pub wbps: Option<u64>,
    pub riops: Option<u64>,
    pub wiops: Option<u64>,
}

impl Limits {
    const KEYS: [&str; 4] = ["rbps", "wbps", "riops", "wiops"];

    fn get(&self, key: &str) -> Option<u64> {
        match key {
            "rbps" => self.rbps,
            "wbps" => self.wbps,
            "riops" => self.riops,
            _ => self.wiops,
        }
    }

    fn slot(&mut self, key: &str) -> &mut Option<u64> {
        match key {
            "rbps" => &mut self.rbps,
            "wbps" => &mut self.wbps,
            "riops" => &mut self.riops,
            _ => &mut self.wiops,
        }
    }

    /// What the fault asks for.
    fn of(f: &IoThrottle) -> Self {
        let bps = f.bps.map(|l| l.get());
        let iops = f.iops.map(|l| l.get());
        let (r, w) = (f.op.reads(), f.op.writes());
        Self {
            rbps: bps.filter(|_| r),
            wbps: bps.filter(|_| w),
            riops: iops.filter(|_| r),
            wiops: iops.filter(|_| w),
        }
    }

    /// `self` tightened by `other` wherever `self` sets a key.
    fn at_most(self, other: Self) -> Self {
        let mut out = self;
        for k in Self::KEYS {
            if let (Some(a), Some(b)) = (self.get(k), other.get(k)) {
                *out.slot(k) = Some(a.min(b));
            }
        }
        out
    }

    /// The keys set, for `io.max`: `rbps=4194304 riops=100`.
    fn set_keys(&self) -> String {
        Self::KEYS
            .iter()
            .filter_map(|k| self.get(k).map(|v| format!("{k}={v}")))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every key, `max` where unset: the line that puts exactly these
    /// limits back (all `max` removes the device's line).
    fn full_line(&self, dev: &str) -> String {
        let keys: Vec<String> = Self::KEYS
            .iter()
            .map(|k| match self.get(k) {
                Some(v) => format!("{k}={v}"),
                None => format!("{k}=max"),
            })
            .collect();
        format!("{dev} {}", keys.join(" "))
    }

    fn to_json(self) -> Value {
        let mut m = Map::new();
        for k in Self::KEYS {
            if let Some(v) = self.get(k) {
                m.insert(k.into(), json!(v));
            }
        }
        Value::Object(m)
    }
}

/// Shared bookkeeping of every throttle of this daemon.
#[derive(Default)]
struct Shared {
    /// (target cgroup id, device) → the fault's name.
    active: HashMap<(u64, String), String>,
    /// `+io` enables we made, by directory.
    enables: HashMap<PathBuf, Weak<Enabled>>,
    /// v1 blkio cgroups we made, by target cgroup id.
    groups: HashMap<u64, Weak<V1Group>>,
}

/// The cgroup I/O controller this host has.
pub struct Throttles {
    reaper: Reaper,
    controller: Controller,
    shared: Arc<Mutex<Shared>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
/// (mount point, fstype, options) of each mount.
fn mounts() -> Vec<(PathBuf, String, String)> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, fstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((PathBuf::from(dir), fstype.to_string(), opts.to_string()))
        })
        .collect()
}

fn detect() -> Controller {
    let all = mounts();
    let v2 = all
        .iter()
        .find(|(_, t, _)| t == "cgroup2")
        .map(|m| m.0.clone());
    if let Some(mount) = &v2 {
        let controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
        if controllers.split_whitespace().any(|c| c == "io") {
            return Controller::V2 {
                mount: mount.clone(),
            };
        }
    }
    let v1 = all
        .iter()
        .find(|(_, t, o)| t == "cgroup" && o.split(',').any(|x| x == "blkio"))
        .map(|m| m.0.clone());
    match (v2, v1) {
        (_, Some(mount)) if mount.join("blkio.throttle.read_bps_device").exists() => {
            Controller::V1 { mount }
        }
        (_, Some(mount)) => Controller::None(format!(
            "the io controller is the v1 blkio hierarchy at {}, which has no blkio.throttle.* files: this kernel lacks CONFIG_BLK_DEV_THROTTLING",
            mount.display()
        )),
        (Some(m), None) => Controller::None(format!(
            "no cgroup I/O controller: cgroup2 at {} lists no io in cgroup.controllers and no v1 blkio hierarchy is mounted",
            m.display()
        )),
        (None, None) => Controller::None(
            "no cgroup I/O controller: neither cgroup2 with io nor a v1 blkio hierarchy is mounted"
                .into(),
        ),
    }
}

impl Throttles {
    pub fn load(reaper: &Reaper) -> Self {
        let mut controller = detect();
        if let Controller::V2 { mount } = &controller
            && let Err(e) = v2::has_io_max(mount)
        {
            controller = Controller::None(e);
        }
        Self {
            reaper: reaper.clone(),
            controller,
            shared: Arc::default(),
        }
    }

    pub fn capability(&self) -> Capability {
        Capability::probe(
            "io_throttle",
            match &self.controller {
                Controller::V2 { mount } => Ok(format!(
                    "cgroup v2 io.max (io controller on the unified hierarchy at {})",
                    mount.display()
                )),
                Controller::V1 { mount } => Ok(format!(
                    "cgroup v1 blkio.throttle.* (the io controller is bound to the v1 blkio hierarchy at {}): a blkio cgroup per fault holds the target's processes",
                    mount.display()
                )),
                Controller::None(why) => Err(why.clone()),
            },
        )
    }

    pub fn install(
        &self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
        fault: &IoThrottle,
    ) -> Result<Box<dyn Installed>, Error> {
        let dev = fault.device.numbers();
        let controller = match &self.controller {
            Controller::None(why) => {
                return Err(Error::UnsupportedKernel(format!("io_throttle: {why}")));
            }
            c => c.clone(),
        };
        if cgroup.path == "/" {
            return Err(Error::UnsupportedTarget(
                "io_throttle on the root cgroup would throttle every process of the host (and cgroup v2 has no io.max there); target a cgroup below it".into(),
            )
            .at("target"));
        }
        if let Ok(own) = cgroup_of_pid("self")
            && cgroup.contains(&own)
        {
            return Err(Error::ForbiddenTarget(format!(
                "cgroup {} contains injectord itself (in {own}): throttling it would slow the journal and the helpers that undo faults, even with force",
                cgroup.path
            ))
            .at("target"));
        }
        if Path::new(&format!("/sys/dev/block/{dev}/partition")).exists() {
            return Err(Error::InvalidValue(format!(
                "{} ({dev}) is a partition: the cgroup I/O controller limits whole disks; name the disk it is on",
                fault.device
            ))
            .at("fault.device"));
        }
        let key = (cgroup.id, dev.clone());
        if let Some(other) = lock(&self.shared).active.get(&key) {
            return Err(Error::Conflict(format!(
                "io_throttle {other:?} already limits device {dev} for cgroup {}: remove it first (two throttles on one cgroup and device do not compose)",
                cgroup.path
            )));
        }
        let wanted = Limits::of(fault);
        let dir = req.cgroup_dir(cgroup);
        let mut part = match controller {
            Controller::V2 { mount } => self.install_v2(&mount, &dir, cgroup, &dev, wanted)?,
            Controller::V1 { mount } => self.install_v1(&mount, &dir, cgroup, &dev, wanted)?,
            Controller::None(_) => unreachable!(),
        };
        part.describe.insert("device".into(), json!(dev));
        lock(&self.shared)
            .active
            .insert(key.clone(), req.name.to_string());
        tracing::info!(fault = req.name, cgroup = %cgroup.path, device = %dev, limits = %part.describe["limits"], controller = %part.describe["controller"], "io_throttle in force");
        Ok(Box::new(Throttled {
            part: Some(part),
            shared: Arc::clone(&self.shared),
            key,
        }))
    }
}

/// What one throttle holds.
enum State {
    V2 { _guard: FileGuard },
    V1(v1::Lines),
}

/// The limit, then the enables it needed (fields drop in order).
struct Part {
    state: State,
    _enables: Vec<Arc<Enabled>>,
    describe: Map<String, Value>,
}

/// An io_throttle in force.
struct Throttled {
    part: Option<Part>,
    shared: Arc<Mutex<Shared>>,
    key: (u64, String),
}

impl Drop for Throttled {
    fn drop(&mut self) {
        // Undone under the lock: an install meanwhile must not see a `+io`
        // or a blkio cgroup that is about to go.
        let mut s = lock(&self.shared);
        drop(self.part.take());
        s.active.remove(&self.key);
        s.enables.retain(|_, w| w.strong_count() > 0);
        s.groups.retain(|_, w| w.strong_count() > 0);
    }
}

impl Installed for Throttled {
    fn counters(&self) -> Counters {
        Counters::default()
    }

    fn describe(&self) -> Map<String, Value> {
        let Some(p) = &self.part else {
            return Map::new();
        };
        let mut d = p.describe.clone();
        if let State::V1(lines) = &p.state {
            d.insert("processes_held".into(), json!(lines.processes_held()));
        }
        d
    }
}
