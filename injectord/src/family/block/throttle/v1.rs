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

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak, mpsc},
    time::Duration,
};

use serde_json::{Map, json};

use super::{Limits, Part, State, Throttles, lock};
use crate::{
    error::Error,
    kernel::reaper::{Record, Undo, cgroup_pids},
    target::Cgroup,
};

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

impl Throttles {
    pub(super) fn install_v1(
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
            state: State::V1(Lines {
                written,
                dev: dev.to_string(),
                group,
            }),
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

/// The lines one throttle wrote in its target's v1 blkio cgroup.
pub(super) struct Lines {
    /// Files written, with the value each had in our cgroup before
    /// (the home's copy, or none).
    written: Vec<(PathBuf, Option<u64>)>,
    dev: String,
    group: Arc<V1Group>,
}

impl Lines {
    /// How many processes the group holds now.
    pub(super) fn processes_held(&self) -> usize {
        read_procs(&self.group.dir).len()
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let Self {
            written,
            dev,
            group,
        } = self;
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

/// The v1 blkio cgroup made for one target: what it holds, the sweep
/// thread, the journal record.
pub(super) struct V1Group {
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
pub(super) struct Held {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_lines_parse() {
        assert_eq!(parse_v1("7:0 4194304\n8:0 1\n", "8:0"), Some(1));
    }
}
