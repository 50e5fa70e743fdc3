//! The syscall rule table (`SYSCALL_RULES`) and the cgroup depths its
//! targets sit at (`SYSCALL_LEVELS`), shared by every backend of the
//! family and by the process faults at a syscall.

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, MapData};
use injector_common::syscall::{
    ACTION_ERROR, Levels, MAX_LEVELS, SYSCALL_LEVELS, SYSCALL_RULES, SyscallKey, SyscallRule,
};

use crate::{error::Error, kernel::Kernel, target::Cgroup};

struct Table {
    rules: HashMap<MapData, SyscallKey, SyscallRule>,
    levels: Array<MapData, Levels>,
    /// How many rules sit at each cgroup depth.
    depths: BTreeMap<u32, usize>,
    /// The fault holding each key, for conflict messages.
    owners: StdHashMap<SyscallKey, String>,
}

/// The rule table, shared by the faults that use it.
#[derive(Clone)]
pub struct SyscallRules(Arc<Mutex<Table>>);

/// A rule in the kernel; dropping it withdraws the rule (effective at once
/// for new calls).
pub struct InstalledRule {
    table: SyscallRules,
    key: SyscallKey,
    depth: Option<u32>,
}

impl SyscallRules {
    pub fn take(kernel: &mut Kernel) -> anyhow::Result<Self> {
        let rules = HashMap::try_from(
            kernel
                .ebpf
                .take_map(SYSCALL_RULES)
                .context(SYSCALL_RULES)?,
        )?;
        let levels = Array::try_from(
            kernel
                .ebpf
                .take_map(SYSCALL_LEVELS)
                .context(SYSCALL_LEVELS)?,
        )?;
        Ok(Self(Arc::new(Mutex::new(Table {
            rules,
            levels,
            depths: BTreeMap::new(),
            owners: StdHashMap::new(),
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Publishes `rule` for (`cgroup`, `nr`, `action`). Rules of hooks that
    /// run for every task (`by_depth`) also register the target's depth,
    /// so the programs look there. One rule per key: another is a
    /// conflict naming its owner.
    #[allow(clippy::too_many_arguments)]
    pub fn install(
        &self,
        owner: &str,
        cgroup: &Cgroup,
        nr: u32,
        action: u32,
        rule: SyscallRule,
        by_depth: bool,
        what: &str,
    ) -> Result<InstalledRule, Error> {
        let key = SyscallKey {
            cgroup_id: cgroup.id,
            nr,
            action,
        };
        let mut t = self.lock();
        if let Some(other) = t.owners.get(&key) {
            let verb = if action == ACTION_ERROR {
                "makes"
            } else {
                "signals at"
            };
            return Err(Error::Conflict(format!(
                "fault {other:?} already {verb} {what} in cgroup {}; remove it first",
                cgroup.path
            )));
        }
        let depth = by_depth.then(|| depth_of(&cgroup.path));
        if let Some(d) = depth {
            let mut depths = t.depths.clone();
            *depths.entry(d).or_default() += 1;
            if depths.len() > MAX_LEVELS {
                return Err(Error::Capacity(format!(
                    "syscall faults already target cgroups at {MAX_LEVELS} different depths; \
                     cgroup {} would add another",
                    cgroup.path
                )));
            }
            t.publish_levels(&depths)?;
            t.depths = depths;
        }
        if let Err(e) = t.rules.insert(&key, &rule, 0) {
            if let Some(d) = depth {
                t.release_depth(d);
            }
            return Err(Error::map(SYSCALL_RULES)(e));
        }
        t.owners.insert(key, owner.to_string());
        Ok(InstalledRule {
            table: self.clone(),
            key,
            depth,
        })
    }
}

impl Table {
    fn publish_levels(&mut self, depths: &BTreeMap<u32, usize>) -> Result<(), Error> {
        let mut levels = Levels::default();
        // Deepest first: the innermost target wins when targets nest.
        for (slot, depth) in levels.levels.iter_mut().zip(depths.keys().rev()) {
            *slot = *depth;
        }
        levels.count = depths.len().min(MAX_LEVELS) as u32;
        self.levels
            .set(0, &levels, 0)
            .map_err(Error::map(SYSCALL_LEVELS))
    }

    fn release_depth(&mut self, depth: u32) {
        let mut depths = self.depths.clone();
        if let Some(n) = depths.get_mut(&depth) {
            *n -= 1;
            if *n == 0 {
                depths.remove(&depth);
            }
        }
        if let Err(e) = self.publish_levels(&depths) {
            tracing::error!(error = %e, "publishing syscall target depths");
        }
        self.depths = depths;
    }
}

impl Drop for InstalledRule {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        t.owners.remove(&self.key);
        if let Err(e) = t.rules.remove(&self.key) {
            tracing::error!(error = %e, key = ?self.key, "removing syscall rule");
        }
        if let Some(d) = self.depth {
            t.release_depth(d);
        }
    }
}

/// The depth of a cgroup path (`/` is 0, `/a/b` is 2): the level
/// `bpf_get_current_ancestor_cgroup_id` takes.
fn depth_of(path: &str) -> u32 {
    path.split('/').filter(|c| !c.is_empty()).count() as u32
}

#[cfg(test)]
mod tests {
    #[test]
    fn depths() {
        assert_eq!(super::depth_of("/"), 0);
        assert_eq!(super::depth_of("/a"), 1);
        assert_eq!(super::depth_of("/kubepods.slice/x.slice/"), 2);
    }
}
