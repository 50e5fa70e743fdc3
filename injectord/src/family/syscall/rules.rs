//! The syscall rule table (`SYSCALL_RULES`), with the cgroup depths its
//! targets sit at (`SYSCALL_LEVELS`), shared by every backend of the
//! family and by the process faults at a syscall.

use std::{
    collections::HashMap as StdHashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use anyhow::Context as _;
use aya::maps::{HashMap, MapData};
use injector_common::syscall::{
    ACTION_ERROR, LEVELS_RULES, SYSCALL_RULES, SyscallKey, SyscallRule,
};

use super::depths::{DepthGuard, Depths};
use crate::{error::Error, kernel::Kernel, target::Cgroup};

struct Table {
    rules: HashMap<MapData, SyscallKey, SyscallRule>,
    depths: Depths,
    /// The fault holding each key, for conflict messages.
    owners: StdHashMap<SyscallKey, String>,
}

/// The rule table, shared by the faults that use it.
#[derive(Clone)]
pub struct SyscallRules(Arc<Mutex<Table>>);

/// Where a rule goes: its target, syscall number (or pseudo number) and
/// action, and whether its hook runs for every task (then the target's
/// depth is registered, so the programs look there).
#[derive(Clone, Copy)]
pub struct Place<'a> {
    pub cgroup: &'a Cgroup,
    pub nr: u32,
    pub action: u32,
    pub by_depth: bool,
}

/// A rule in the kernel; dropping it withdraws the rule (effective at once
/// for new calls).
pub struct InstalledRule {
    table: SyscallRules,
    key: SyscallKey,
    /// Released after the rule is gone (field order).
    _depth: Option<DepthGuard>,
}

impl SyscallRules {
    pub fn take(kernel: &mut Kernel, depths: Depths) -> anyhow::Result<Self> {
        let rules = HashMap::try_from(kernel.ebpf.take_map(SYSCALL_RULES).context(SYSCALL_RULES)?)?;
        Ok(Self(Arc::new(Mutex::new(Table {
            rules,
            depths,
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
    pub fn install(
        &self,
        owner: &str,
        at: Place<'_>,
        rule: SyscallRule,
        what: &str,
    ) -> Result<InstalledRule, Error> {
        let Place {
            cgroup,
            nr,
            action,
            by_depth,
        } = at;
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
        let depth = by_depth
            .then(|| t.depths.acquire(LEVELS_RULES, &cgroup.path))
            .transpose()?;
        t.rules
            .insert(&key, &rule, 0)
            .map_err(Error::map(SYSCALL_RULES))?;
        t.owners.insert(key, owner.to_string());
        Ok(InstalledRule {
            table: self.clone(),
            key,
            _depth: depth,
        })
    }
}

impl Drop for InstalledRule {
    fn drop(&mut self) {
        let mut t = self.table.lock();
        t.owners.remove(&self.key);
        if let Err(e) = t.rules.remove(&self.key) {
            tracing::error!(error = %e, key = ?self.key, "removing syscall rule");
        }
    }
}
