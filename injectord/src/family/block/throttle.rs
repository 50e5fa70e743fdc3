//! `io_throttle`: bandwidth and IOPS limits for the target on one device,
//! through the cgroup I/O controller the host has, journalled and restored
//! exactly on remove, TTL, SIGTERM, SIGKILL of the daemon and SIGKILL of
//! its process group.
//!
//! **Cgroup v2** (the `io` controller on the unified hierarchy): the limit
//! is a line of the target's own `io.max`, `MAJ:MIN rbps=.. wbps=..
//! riops=.. wiops=..` with the keys `op` selects. v2 throttling is
//! hierarchical, so it holds every process of the target's subtree, and
//! nothing else. Before writing, the device's previous line is read (absent
//! means all `max`) and journalled as the line to write back; restoring
//! writes it with every key, so an absent line comes back absent and the
//! file reads byte-identical. If the target has no `io.max` (the parent
//! does not delegate `io`), `+io` is written to each ancestor's
//! `cgroup.subtree_control` that lacks it, root first, each journalled as
//! its own `-io`; those enables are shared by every throttle below them
//! and undone with the last one, after the limit.
//!
//! **Hybrid hosts** (the `io` controller bound to the v1 `blkio`
//! hierarchy, the 6.18 host): the v2 target has no I/O files, and its
//! processes sit in some v1 blkio cgroup (`/proc/PID/cgroup`), usually one
//! that holds processes outside the target too (the v1 root, a
//! container's). Writing a limit there would throttle those others. So
//! the fault makes a v1 blkio cgroup of its own, `injectord-throttle-<v2
//! cgroup id>`, as a child of the blkio cgroup most of the target's
//! processes sit in (their *home*), writes the limits there
//! (`blkio.throttle.{read,write}_{bps,iops}_device`) and moves the
//! target's processes in. Their children are forked there, so they are
//! held too. v1 throttling is flat (a cgroup's limits do not reach its
//! children and a child is not bound by its parent's), so the new cgroup
//! starts with a copy of the home's throttle lines for the other devices
//! and the target loses nothing it was held to. A sweep every 100 ms moves
//! in processes that joined the v2 target since (e.g. `docker exec`, which
//! places them in the container's own blkio cgroup) and moves back those
//! that left it, so the set held is exactly the target's (a process that
//! joins from outside is held within that period; one forked inside, at
//! once). Removal moves
//! every process back to the blkio cgroup it came from and removes the
//! cgroup; the journal and the keeper hold one record for that (each
//! process goes back to the home there: the per-process origins are kept
//! by the daemon only, so a target spread over several blkio cgroups comes
//! back to the home after a kill of the daemon). Nothing of the v1 home is
//! written. Buffered writes are written back by kernel threads outside
//! any v1 blkio cgroup, so on a hybrid host only direct I/O and reads are
//! throttled (v2 attributes writeback to the writer's cgroup when the
//! memory controller is enabled beside io).
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

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak, mpsc},
    time::Duration,
};

use serde_json::{Map, Value, json};

use super::spec::IoThrottle;
use crate::{
    capabilities::Capability,
    error::Error,
    family::{Counters, Installed, Request},
    kernel::reaper::{Reaper, Record, Undo, cgroup_pids},
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

/// The device's limits in an `io.max` text (`None` when it has no line).
pub fn parse_io_max(text: &str, dev: &str) -> Option<Limits> {
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(dev))?;
    let mut limits = Limits::default();
    for kv in line.split_whitespace().skip(1) {
        if let Some((k, v)) = kv.split_once('=')
            && Limits::KEYS.contains(&k)
        {
            *limits.slot(k) = v.parse().ok();
        }
    }
    Some(limits)
}

/// How often the v1 sweep looks for processes that joined or left the
/// target (one read of `cgroup.procs` per cgroup of the target).
const SWEEP: Duration = Duration::from_millis(100);

/// The v1 file for a key.
fn v1_file(key: &str) -> &'static str {
    match key {
        "rbps" => "blkio.throttle.read_bps_device",
        "wbps" => "blkio.throttle.write_bps_device",
        "riops" => "blkio.throttle.read_iops_device",
        _ => "blkio.throttle.write_iops_device",
    }
}

/// The device's value in a v1 `blkio.throttle.*_device` text.
fn parse_v1(text: &str, dev: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(dev)).then(|| f.next()?.parse().ok())?
    })
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

/// Whether this kernel has v2 throttling (`io.max`): a cgroup that has
/// one, else the throttle code in /proc/kallsyms.
fn v2_has_io_max(mount: &Path) -> Result<(), String> {
    if let Ok(rd) = fs::read_dir(mount)
        && rd.flatten().any(|e| e.path().join("io.max").exists())
    {
        return Ok(());
    }
    let syms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    if syms.is_empty() || syms.contains("blk_throtl_") || syms.contains("tg_set_limit") {
        Ok(())
    } else {
        Err("the cgroup2 io controller has no io.max here: this kernel lacks CONFIG_BLK_DEV_THROTTLING".into())
    }
}

impl Throttles {
    pub fn load(reaper: &Reaper) -> Self {
        let mut controller = detect();
        if let Controller::V2 { mount } = &controller
            && let Err(e) = v2_has_io_max(mount)
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

    fn install_v2(
        &self,
        mount: &Path,
        dir: &Path,
        cgroup: &Cgroup,
        dev: &str,
        wanted: Limits,
    ) -> Result<Part, Error> {
        let io_max = dir.join("io.max");
        let mut enables = Vec::new();
        if !io_max.exists() {
            enables = self.enable_io(mount, dir, cgroup)?;
            if !io_max.exists() {
                return Err(Error::UnsupportedKernel(format!(
                    "cgroup {} has no io.max although its parent delegates io: this kernel lacks CONFIG_BLK_DEV_THROTTLING",
                    cgroup.path
                )));
            }
        }
        let before = fs::read_to_string(&io_max)
            .map_err(|e| Error::io(format!("reading {}", io_max.display()), e))?;
        let previous = parse_io_max(&before, dev);
        let limits = wanted.at_most(previous.unwrap_or_default());
        let restore = previous.unwrap_or_default().full_line(dev);
        let record = self.reaper.record_process(Undo::IoMax {
            cgroup_dir: dir.display().to_string(),
            cgroup_id: cgroup.id,
            line: restore.clone(),
        });
        let line = format!("{dev} {}", limits.set_keys());
        if let Err(e) = fs::write(&io_max, &line) {
            // Nothing was written: settle the record (dropping it).
            drop(record);
            return Err(io_max_error(&io_max, &line, e));
        }
        let mut describe = Map::new();
        describe.insert("controller".into(), json!("cgroup v2 io.max"));
        // The limit's file, then the delegations it relies on (written by
        // this fault or an earlier one, undone with the last).
        let mut files = vec![io_max.display().to_string()];
        files.extend(
            enables
                .iter()
                .map(|e| e.dir.join("cgroup.subtree_control").display().to_string()),
        );
        describe.insert("files".into(), json!(files));
        describe.insert("written".into(), json!(line));
        describe.insert("limits".into(), limits.to_json());
        describe.insert("previous".into(), json!(previous.map(|p| p.full_line(dev))));
        if !enables.is_empty() {
            describe.insert(
                "subtree_control_enabled".into(),
                json!(
                    enables
                        .iter()
                        .map(|e| e.dir.display().to_string())
                        .collect::<Vec<_>>()
                ),
            );
        }
        Ok(Part {
            state: State::V2 {
                _guard: FileGuard {
                    file: io_max,
                    undo_line: restore,
                    record: Some(record),
                },
            },
            _enables: enables,
            describe,
        })
    }

    /// `+io` in each ancestor's `cgroup.subtree_control` (root first) that
    /// lacks it, each journalled; shared with other throttles below.
    fn enable_io(
        &self,
        mount: &Path,
        dir: &Path,
        cgroup: &Cgroup,
    ) -> Result<Vec<Arc<Enabled>>, Error> {
        let mut chain = Vec::new();
        let mut d = dir.parent();
        while let Some(p) = d {
            chain.push(p.to_path_buf());
            if p == mount {
                break;
            }
            d = p.parent();
        }
        chain.reverse();
        let mut held = Vec::new();
        let mut shared = lock(&self.shared);
        for p in chain {
            if let Some(e) = shared.enables.get(&p).and_then(Weak::upgrade) {
                held.push(e);
                continue;
            }
            let sc = p.join("cgroup.subtree_control");
            let now = fs::read_to_string(&sc)
                .map_err(|e| Error::io(format!("reading {}", sc.display()), e))?;
            if now.split_whitespace().any(|c| c == "io") {
                continue;
            }
            let id = fs::metadata(&p).map(|m| m.ino()).unwrap_or(0);
            let record = self.reaper.record_process(Undo::SubtreeControl {
                cgroup_dir: p.display().to_string(),
                cgroup_id: id,
                controller: "io".into(),
            });
            if let Err(e) = fs::write(&sc, "+io") {
                drop(record);
                let why = if e.raw_os_error() == Some(libc::EBUSY) {
                    " (EBUSY: it holds processes of its own, and cgroup v2 enables controllers for children only in cgroups without processes)"
                } else {
                    ""
                };
                return Err(Error::UnsupportedTarget(format!(
                    "cgroup {} has no io.max and its ancestor {} does not delegate io; writing +io to {} failed: {e}{why}",
                    cgroup.path,
                    p.display(),
                    sc.display()
                )));
            }
            tracing::info!(dir = %p.display(), "enabled the io controller for children (+io)");
            let e = Arc::new(Enabled {
                dir: p.clone(),
                record: Mutex::new(Some(record)),
            });
            shared.enables.insert(p, Arc::downgrade(&e));
            held.push(e);
        }
        // Deepest first: `-io` on a parent fails while a child has it.
        held.reverse();
        Ok(held)
    }

    fn install_v1(
        &self,
        mount: &Path,
        dir: &Path,
        cgroup: &Cgroup,
        dev: &str,
        wanted: Limits,
    ) -> Result<Part, Error> {
        let group = self.v1_group(mount, dir, cgroup, dev)?;
        let mut written = Vec::new();
        let mut files = Vec::new();
        let mut limits = wanted;
        for k in Limits::KEYS {
            let Some(v) = wanted.get(k) else { continue };
            let file = group.dir.join(v1_file(k));
            // The home's own limit, copied in when the group was made, is
            // kept if tighter.
            let have = fs::read_to_string(&file)
                .ok()
                .and_then(|t| parse_v1(&t, dev));
            let v = have.map_or(v, |h| h.min(v));
            *limits.slot(k) = Some(v);
            let line = format!("{dev} {v}");
            fs::write(&file, &line)
                .map_err(|e| Error::io(format!("writing {line:?} to {}", file.display()), e))?;
            written.push((file.clone(), have));
            files.push(file.display().to_string());
        }
        let mut describe = Map::new();
        describe.insert("controller".into(), json!("cgroup v1 blkio"));
        describe.insert("files".into(), json!(files));
        describe.insert("limits".into(), limits.to_json());
        describe.insert(
            "blkio_cgroup".into(),
            json!(group.dir.display().to_string()),
        );
        describe.insert("blkio_home".into(), json!(group.home.display().to_string()));
        Ok(Part {
            state: State::V1 {
                written,
                dev: dev.to_string(),
                group,
            },
            _enables: Vec::new(),
            describe,
        })
    }

    /// The v1 blkio cgroup holding this target's processes: shared by its
    /// throttles, made (and filled) by the first.
    fn v1_group(
        &self,
        mount: &Path,
        v2_dir: &Path,
        cgroup: &Cgroup,
        dev: &str,
    ) -> Result<Arc<V1Group>, Error> {
        let mut shared = lock(&self.shared);
        if let Some(g) = shared.groups.get(&cgroup.id).and_then(Weak::upgrade) {
            return Ok(g);
        }
        // v1 limits are flat: a throttled cgroup above or below another
        // would take its processes out of the other's limit.
        for g in shared.groups.values().filter_map(Weak::upgrade) {
            let (a, b) = (&g.target, &cgroup.path);
            let nested = |x: &str, y: &str| x == "/" || y.starts_with(&format!("{x}/"));
            if nested(a, b) || nested(b, a) {
                return Err(Error::Conflict(format!(
                    "cgroup {b} is nested with {a}, which an io_throttle holds already; on the v1 blkio hierarchy (this host) limits do not nest, so throttle one of them (device {dev})"
                )));
            }
        }
        let pids = cgroup_pids(v2_dir);
        let mut origins: HashMap<u32, PathBuf> = HashMap::new();
        let mut count: BTreeMap<PathBuf, usize> = BTreeMap::new();
        for &pid in &pids {
            if let Some(p) = blkio_of(pid) {
                *count.entry(p.clone()).or_default() += 1;
                origins.insert(pid, p);
            }
        }
        let home_rel = count
            .iter()
            .max_by_key(|(_, n)| **n)
            .map_or_else(|| PathBuf::from("/"), |(p, _)| p.clone());
        let home = match home_rel.strip_prefix("/") {
            Ok(rel) if !rel.as_os_str().is_empty() => mount.join(rel),
            _ => mount.to_path_buf(),
        };
        let dir = home.join(format!("injectord-throttle-{}", cgroup.id));
        if dir.exists() {
            return Err(Error::Conflict(format!(
                "{} exists already (left by another injectord?); remove it or let its daemon end",
                dir.display()
            )));
        }
        // Recorded before it exists; the id is known once it does.
        let record = self.reaper.record_process(Undo::BlkioGroup {
            dir: dir.display().to_string(),
            home: home.display().to_string(),
            cgroup_id: 0,
        });
        fs::create_dir(&dir).map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
        let g = V1Group {
            held: Arc::new(Held {
                dir: dir.clone(),
                home: home.clone(),
                mount: mount.to_path_buf(),
                v2_dir: v2_dir.to_path_buf(),
                origins: Mutex::new(HashMap::new()),
            }),
            target: cgroup.path.clone(),
            record: Mutex::new(Some(record)),
            stop: Mutex::new(None),
        };
        // The home's limits for other devices (flat hierarchy: they would
        // not reach the processes here otherwise).
        for k in Limits::KEYS {
            let f = v1_file(k);
            for line in fs::read_to_string(home.join(f)).unwrap_or_default().lines() {
                if let Err(e) = fs::write(dir.join(f), line) {
                    tracing::warn!(file = %dir.join(f).display(), line, error = %e, "could not copy the home's limit");
                }
            }
        }
        let moved = g.sweep(Some(origins));
        let left: Vec<u32> = cgroup_pids(v2_dir)
            .into_iter()
            .filter(|p| blkio_of(*p).is_some_and(|x| g.abs(&x) != dir))
            .filter(|p| Path::new(&format!("/proc/{p}")).exists())
            .collect();
        if !left.is_empty() {
            // Dropping `g` moves back what moved and removes the cgroup.
            drop(g);
            return Err(Error::Internal(format!(
                "could not move processes {left:?} of cgroup {} into {}",
                cgroup.path,
                dir.display()
            )));
        }
        tracing::info!(dir = %dir.display(), moved, "v1 blkio cgroup made for the target's processes");
        let g = Arc::new(g);
        let (tx, rx) = mpsc::channel::<()>();
        // The thread shares what it sweeps, never the group: the group's
        // drop (on the thread that ends the fault) stops and joins it,
        // then moves the processes back.
        let held = Arc::clone(&g.held);
        let handle = std::thread::Builder::new()
            .name("io-throttle-sweep".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(SWEEP) {
                    held.sweep(None);
                }
            })
            .ok();
        *lock(&g.stop) = handle.map(|h| (tx, h));
        shared.groups.insert(cgroup.id, Arc::downgrade(&g));
        Ok(g)
    }
}

fn io_max_error(file: &Path, line: &str, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENODEV) || e.raw_os_error() == Some(libc::EINVAL) {
        Error::InvalidValue(format!(
            "the kernel refused {line:?} in {}: {e} (not a disk the io controller can limit?)",
            file.display()
        ))
        .at("fault.device")
    } else {
        Error::io(format!("writing {line:?} to {}", file.display()), e)
    }
}

/// A process's v1 blkio cgroup path (`/` for the root).
fn blkio_of(pid: u32) -> Option<PathBuf> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, ctl, path) = (f.next()?, f.next()?, f.next()?);
        ctl.split(',')
            .any(|c| c == "blkio")
            .then(|| PathBuf::from(path))
    })
}

/// `+io` we wrote to a cgroup's `cgroup.subtree_control`: `-io` when the
/// last throttle below it ends.
struct Enabled {
    dir: PathBuf,
    record: Mutex<Option<Record>>,
}

impl Drop for Enabled {
    fn drop(&mut self) {
        let sc = self.dir.join("cgroup.subtree_control");
        match fs::write(&sc, "-io") {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "io controller delegation undone (-io)")
            }
            Err(e) => {
                tracing::error!(file = %sc.display(), error = %e, "could not write -io; the keeper will retry when injectord exits");
                if let Some(r) = lock(&self.record).take() {
                    r.keep();
                }
            }
        }
    }
}

/// A line written to a cgroup file, with the line that undoes it and its
/// journal record; dropping it writes the undo line, then settles the
/// record (kept pending if the write fails).
struct FileGuard {
    file: PathBuf,
    undo_line: String,
    record: Option<Record>,
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        match fs::write(&self.file, &self.undo_line) {
            Ok(()) => {
                tracing::debug!(file = %self.file.display(), line = %self.undo_line, "restored")
            }
            // The target cgroup was removed (its fault ends as target_gone):
            // nothing is left to restore.
            Err(_) if self.file.parent().is_some_and(|d| !d.exists()) => {
                tracing::debug!(file = %self.file.display(), "the cgroup is gone");
            }
            Err(e) => {
                tracing::error!(file = %self.file.display(), line = %self.undo_line, error = %e, "could not restore; the keeper will retry when injectord exits");
                if let Some(r) = self.record.take() {
                    r.keep();
                }
            }
        }
    }
}

/// The v1 blkio cgroup made for one target: what it holds, the sweep
/// thread, the journal record.
struct V1Group {
    held: Arc<Held>,
    /// The v2 target's path (for the nesting check).
    target: String,
    record: Mutex<Option<Record>>,
    stop: Mutex<Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
}

impl std::ops::Deref for V1Group {
    type Target = Held;

    fn deref(&self) -> &Held {
        &self.held
    }
}

/// The v1 blkio cgroup, its home, the v2 target, and where each process
/// moved in came from: what the sweep works on.
struct Held {
    dir: PathBuf,
    home: PathBuf,
    mount: PathBuf,
    v2_dir: PathBuf,
    /// Where each process moved in came from (v1 paths).
    origins: Mutex<HashMap<u32, PathBuf>>,
}

impl Held {
    /// Moves the target's processes that are not here in, and processes
    /// here that left the target back; `first` gives the origins read at
    /// install. Returns how many moved in.
    fn sweep(&self, first: Option<HashMap<u32, PathBuf>>) -> usize {
        let target: HashSet<u32> = cgroup_pids(&self.v2_dir).into_iter().collect();
        let here: HashSet<u32> = read_procs(&self.dir).into_iter().collect();
        let mut origins = lock(&self.origins);
        for pid in here.difference(&target) {
            let to = origins.remove(pid).unwrap_or_else(|| self.home.clone());
            let _ = move_pid(*pid, &self.abs(&to));
        }
        let mut moved = 0;
        for &pid in target.difference(&here) {
            let from = first
                .as_ref()
                .and_then(|f| f.get(&pid).cloned())
                .or_else(|| blkio_of(pid));
            let Some(from) = from else { continue };
            if move_pid(pid, &self.dir).is_ok() {
                origins.insert(pid, from);
                moved += 1;
            }
        }
        origins.retain(|p, _| target.contains(p) || here.contains(p));
        moved
    }

    fn abs(&self, v1: &Path) -> PathBuf {
        if v1.is_absolute() && v1.starts_with(&self.mount) {
            v1.to_path_buf()
        } else {
            match v1.strip_prefix("/") {
                Ok(rel) if !rel.as_os_str().is_empty() => self.mount.join(rel),
                _ => self.mount.clone(),
            }
        }
    }
}

impl Drop for V1Group {
    fn drop(&mut self) {
        if let Some((tx, h)) = lock(&self.stop).take() {
            drop(tx);
            let _ = h.join();
        }
        let origins = std::mem::take(&mut *lock(&self.origins));
        // Forks race the moves: a few passes.
        for _ in 0..8 {
            let here = read_procs(&self.dir);
            if here.is_empty() {
                break;
            }
            for pid in here {
                let to = origins
                    .get(&pid)
                    .map_or_else(|| self.home.clone(), |p| self.abs(p));
                if move_pid(pid, &to).is_err() {
                    let _ = move_pid(pid, &self.home);
                }
            }
        }
        let mut result = Err(String::new());
        for _ in 0..50 {
            result = fs::remove_dir(&self.dir).map_err(|e| e.to_string());
            if result.is_ok() || !self.dir.exists() {
                result = Ok(());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match result {
            Ok(()) => {
                tracing::info!(dir = %self.dir.display(), "processes moved back, v1 blkio cgroup removed")
            }
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "could not remove the v1 blkio cgroup; the keeper will retry when injectord exits");
                if let Some(r) = lock(&self.record).take() {
                    r.keep();
                }
            }
        }
    }
}

fn read_procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Moves a process (all its threads) into the v1 cgroup at `dir`; a
/// process that exited meanwhile counts as moved.
fn move_pid(pid: u32, dir: &Path) -> std::io::Result<()> {
    match fs::write(dir.join("cgroup.procs"), pid.to_string()) {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        r => r,
    }
}

/// What one throttle holds.
enum State {
    V2 {
        _guard: FileGuard,
    },
    V1 {
        /// Files written, with the value each had in our cgroup before
        /// (the home's copy, or none).
        written: Vec<(PathBuf, Option<u64>)>,
        dev: String,
        group: Arc<V1Group>,
    },
}

/// The limit, then the enables it needed (fields drop in order).
struct Part {
    state: State,
    _enables: Vec<Arc<Enabled>>,
    describe: Map<String, Value>,
}

impl Drop for State {
    fn drop(&mut self) {
        if let Self::V1 {
            written,
            dev,
            group,
        } = self
        {
            // The group's other throttles stay: put back what this one
            // changed in the shared cgroup (0 clears a v1 limit).
            if Arc::strong_count(group) > 1 {
                for (file, before) in written.iter() {
                    let line = format!("{dev} {}", before.unwrap_or(0));
                    if let Err(e) = fs::write(file, &line) {
                        tracing::warn!(file = %file.display(), line, error = %e, "could not clear a v1 limit");
                    }
                }
            }
        }
    }
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
        if let State::V1 { group, .. } = &p.state {
            d.insert("processes_held".into(), json!(read_procs(&group.dir).len()));
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_max_lines_parse_and_restore_exactly() {
        let text =
            "8:0 rbps=1000 wbps=max riops=max wiops=20\n7:0 rbps=max wbps=max riops=5 wiops=max\n";
        let l = parse_io_max(text, "8:0").unwrap();
        assert_eq!(l.rbps, Some(1000));
        assert_eq!(l.wbps, None);
        assert_eq!(l.wiops, Some(20));
        assert_eq!(
            l.full_line("8:0"),
            "8:0 rbps=1000 wbps=max riops=max wiops=20"
        );
        assert!(parse_io_max(text, "7:1").is_none());
        assert_eq!(
            Limits::default().full_line("7:1"),
            "7:1 rbps=max wbps=max riops=max wiops=max"
        );
        let want = Limits {
            rbps: Some(4096),
            riops: Some(50),
            ..Limits::default()
        };
        let got = want.at_most(parse_io_max(text, "7:0").unwrap());
        assert_eq!(got.set_keys(), "rbps=4096 riops=5");
        assert_eq!(parse_v1("7:0 4194304\n8:0 1\n", "8:0"), Some(1));
    }
}
