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

use std::{
    fs,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use serde_json::{Map, json};

use super::{Limits, Part, State, Throttles, lock};
use crate::{
    error::Error,
    kernel::reaper::{Record, Undo},
    target::Cgroup,
};

/// Whether this kernel has v2 throttling (`io.max`): a cgroup that has
/// one, else the throttle code in /proc/kallsyms.
pub(super) fn has_io_max(mount: &Path) -> Result<(), String> {
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

impl Throttles {
    pub(super) fn install_v2(
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

/// `+io` we wrote to a cgroup's `cgroup.subtree_control`: `-io` when the
/// last throttle below it ends.
pub(super) struct Enabled {
    pub(super) dir: PathBuf,
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
pub(super) struct FileGuard {
    pub(super) file: PathBuf,
    pub(super) undo_line: String,
    pub(super) record: Option<Record>,
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
    }
}
