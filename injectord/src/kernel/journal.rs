//! The journal: every piece of netlink state the daemon creates, and every
//! cgroup it freezes or process it stops, is written to a file under the
//! run directory before it exists, and marked done once undone.
//!
//! The reaper covers a SIGKILL of the daemon alone. When the whole process
//! group or cgroup is killed (systemd, `timeout -s KILL`, a container
//! runtime), the reaper dies too; the lease makes whatever stayed inert,
//! and the next daemon on the same socket reads its predecessor's journal
//! and undoes what it lists, before it takes any request.
//!
//! One JSON object per line, appended with O_APPEND by the daemon (add,
//! done) and by its reaper (done, for what it undid).

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Write as _},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::{netns::in_netns, reaper::Undo};

/// Identity of a network namespace file: device and inode. A path such as
/// /proc/PID/ns/net may name another namespace after a restart (the pid
/// was reused); the identity tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

impl NsId {
    pub fn of(file: &File) -> Option<Self> {
        file.metadata().ok().map(|m| Self {
            dev: m.dev(),
            ino: m.ino(),
        })
    }
}

/// A line of the journal, and of the reaper's pipe.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Entry {
    Add {
        add: u64,
        /// The namespace's path (`None`: the daemon's own).
        netns: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns_id: Option<NsId>,
        undo: Undo,
    },
    Done {
        done: u64,
    },
}

/// The journal file, open for appending.
pub struct Journal {
    file: File,
    path: PathBuf,
}

impl Journal {
    /// Starts an empty journal at `path` (after [`recover`] read the old one).
    pub fn create(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        drop(file);
        Self::append_to(path)
    }

    /// Opens an existing journal for appending (the reaper's side).
    pub fn append_to(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry in one write, so lines from the daemon and its
    /// reaper never interleave.
    pub fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        self.append_line(&line_of(entry)?)
    }

    fn append_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        self.file.write_all(line)
    }

    /// Replaces the journal with just `pending` (its own earlier lines), so
    /// a long-running daemon's journal stays as long as what it holds. The
    /// new file is written beside and renamed over the old one.
    fn compact<'a>(&mut self, pending: impl Iterator<Item = &'a [u8]>) -> std::io::Result<()> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut f = File::create(&tmp)?;
        for line in pending {
            f.write_all(line)?;
        }
        f.sync_data()?;
        std::fs::rename(&tmp, &self.path)?;
        *self = Self::append_to(&self.path)?;
        Ok(())
    }
}

fn line_of(entry: &Entry) -> std::io::Result<Vec<u8>> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    Ok(line)
}

/// The daemon's journal, with what it holds: entries are appended as they
/// come, and the file is compacted to the pending adds once it has grown
/// to many times their number.
pub struct Writer {
    journal: Journal,
    pending: BTreeMap<u64, Vec<u8>>,
    lines: usize,
}

impl Writer {
    /// Lines a journal may hold before it is worth compacting.
    const COMPACT_AFTER: usize = 4096;

    pub fn new(journal: Journal) -> Self {
        Self {
            journal,
            pending: BTreeMap::new(),
            lines: 0,
        }
    }

    pub fn path(&self) -> &Path {
        self.journal.path()
    }

    pub fn append(&mut self, entry: &Entry) -> std::io::Result<()> {
        let line = line_of(entry)?;
        self.journal.append_line(&line)?;
        self.lines += 1;
        match entry {
            Entry::Add { add, .. } => {
                self.pending.insert(*add, line);
            }
            Entry::Done { done } => {
                self.pending.remove(done);
            }
        }
        if self.lines > Self::COMPACT_AFTER && self.lines > 4 * self.pending.len() {
            self.journal
                .compact(self.pending.values().map(Vec::as_slice))?;
            self.lines = self.pending.len();
        }
        Ok(())
    }
}

/// What the start-up recovery did with a predecessor's journal.
#[derive(Clone, Copy, Debug, Default)]
pub struct Recovery {
    /// Undone now.
    pub undone: u64,
    /// Already gone (the device, namespace or state no longer exists).
    pub gone: u64,
    /// Could not be undone; logged with the reason.
    pub failed: u64,
}

/// Undoes what a predecessor's journal at `path` lists as still pending,
/// newest first, each in its namespace. A missing journal is an empty one.
pub fn recover(path: &Path) -> Recovery {
    let mut recovery = Recovery::default();
    for (netns, id, undo) in pending(path).into_iter().rev() {
        let _span = tracing::info_span!("recover", ?undo, netns = netns.as_deref()).entered();
        let ns = match &netns {
            None => None,
            // Checked to be a network namespace before it is opened: the
            // path may name anything by now (a FIFO would block us).
            Some(p) => match super::netns::open_netns(Path::new(p)) {
                Ok(f) if id.is_none() || NsId::of(&f) == id => Some(f),
                Ok(_) => {
                    tracing::info!(path = %p, "the namespace is gone (its path names another one now)");
                    recovery.gone += 1;
                    continue;
                }
                Err(e) => {
                    tracing::info!(path = %p, error = %e, "the namespace is gone");
                    recovery.gone += 1;
                    continue;
                }
            },
        };
        match in_netns(ns.as_ref(), || undo.run()) {
            Ok(Ok(())) => {
                tracing::warn!("undid what a previous injectord left behind");
                recovery.undone += 1;
            }
            Ok(Err(e)) if is_gone(&e) => {
                tracing::info!(error = %e, "already gone");
                recovery.gone += 1;
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "could not undo what a previous injectord left behind");
                recovery.failed += 1;
            }
            Err(e) => {
                tracing::error!(error = %e, "could not enter the namespace");
                recovery.failed += 1;
            }
        }
    }
    recovery
}

/// What a journal lists as created and not undone, oldest first.
fn pending(path: &Path) -> Vec<(Option<String>, Option<NsId>, Undo)> {
    let Ok(file) = File::open(path) else {
        return Vec::new();
    };
    let mut pending: BTreeMap<u64, (Option<String>, Option<NsId>, Undo)> = BTreeMap::new();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        match serde_json::from_str::<Entry>(&line) {
            Ok(Entry::Add {
                add,
                netns,
                netns_id,
                undo,
            }) => {
                pending.insert(add, (netns, netns_id, undo));
            }
            Ok(Entry::Done { done }) => {
                pending.remove(&done);
            }
            // A line cut short by the kill: the state it announced was
            // never created.
            Err(e) => tracing::debug!(line, error = %e, "skipping a journal line"),
        }
    }
    pending.into_values().collect()
}

/// Whether the undo found its state, device or cgroup gone (its error
/// says "not found" then).
fn is_gone(err: &str) -> bool {
    err.contains("not found")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: u64, dev: &str) -> Entry {
        Entry::Add {
            add: id,
            netns: Some("/run/netns/x".into()),
            netns_id: Some(NsId { dev: 4, ino: id }),
            undo: Undo::Fq { dev: dev.into() },
        }
    }

    #[test]
    fn pending_is_what_was_added_and_not_done_and_survives_compaction() {
        let path = std::env::temp_dir().join(format!("journal-test-{}", std::process::id()));
        let mut w = Writer::new(Journal::create(&path).unwrap());
        w.append(&add(1, "a")).unwrap();
        w.append(&add(2, "b")).unwrap();
        w.append(&Entry::Done { done: 1 }).unwrap();
        // Enough churn to compact several times.
        for id in 10..(10 + Writer::COMPACT_AFTER as u64) {
            w.append(&add(id, "c")).unwrap();
            w.append(&Entry::Done { done: id }).unwrap();
        }
        w.append(&add(3, "d")).unwrap();
        // A line cut short by a kill is skipped.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"add\": 4, \"net")
            .unwrap();
        let left: Vec<Undo> = pending(&path).into_iter().map(|(_, _, u)| u).collect();
        assert_eq!(
            left,
            [Undo::Fq { dev: "b".into() }, Undo::Fq { dev: "d".into() }]
        );
        let lines = std::fs::read_to_string(&path).unwrap().lines().count();
        assert!(lines < 100, "not compacted: {lines} lines");
        let _ = std::fs::remove_file(&path);
    }
}
