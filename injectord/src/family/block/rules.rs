//! A block rule map as the programs read it: rules by (cgroup, device),
//! and beside them the cgroups that have any, which the programs look a
//! task's ancestors up in before they read the bio (every bio of the
//! machine passes them). Shared by io_error's block layer and io_delay.

use std::collections::HashMap as StdHashMap;

use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use injector_common::block::BlockKey;

use crate::{error::Error, kernel::Kernel};

pub struct RuleMap<V: Pod> {
    rules: HashMap<MapData, BlockKey, V>,
    cgroups: HashMap<MapData, u64, u32>,
    /// The fault that owns each rule.
    owners: StdHashMap<BlockKey, String>,
    name: &'static str,
}

impl<V: Pod> RuleMap<V> {
    /// Takes the maps `rules` and `cgroups` from the object.
    pub fn take(
        kernel: &mut Kernel,
        rules: &'static str,
        cgroups: &'static str,
    ) -> Result<Self, String> {
        let mut take = |name: &str| {
            kernel
                .ebpf
                .take_map(name)
                .ok_or_else(|| format!("map {name} missing from the object"))
        };
        Ok(Self {
            rules: HashMap::try_from(take(rules)?).map_err(|e| e.to_string())?,
            cgroups: HashMap::try_from(take(cgroups)?).map_err(|e| e.to_string())?,
            owners: StdHashMap::new(),
            name: rules,
        })
    }

    /// The fault whose rule `key` is, if any.
    pub fn owner(&self, key: &BlockKey) -> Option<&str> {
        self.owners.get(key).map(String::as_str)
    }

    /// Puts the rule in force: the cgroup first, so that the programs never
    /// see a rule they would skip.
    pub fn insert(&mut self, key: BlockKey, rule: &V, owner: &str) -> Result<(), Error> {
        self.cgroups
            .insert(&key.cgroup_id, &1, 0)
            .map_err(Error::map(self.name))?;
        if let Err(e) = self.rules.insert(&key, rule, 0) {
            self.forget_cgroup_if_unused(key.cgroup_id);
            return Err(Error::map(self.name)(e));
        }
        self.owners.insert(key, owner.to_string());
        Ok(())
    }

    /// Withdraws the rule, then the cgroup once none of its rules is left.
    pub fn remove(&mut self, key: &BlockKey) {
        self.owners.remove(key);
        if let Err(e) = self.rules.remove(key) {
            tracing::error!(error = %e, ?key, map = self.name, "removing block rule");
        }
        self.forget_cgroup_if_unused(key.cgroup_id);
    }

    fn forget_cgroup_if_unused(&mut self, cgroup_id: u64) {
        if self.owners.keys().any(|k| k.cgroup_id == cgroup_id) {
            return;
        }
        if let Err(e) = self.cgroups.remove(&cgroup_id) {
            tracing::error!(error = %e, cgroup_id, map = self.name, "removing block rule cgroup");
        }
    }
}
