//! The cgroup depths at which targets sit (`SYSCALL_LEVELS`), one set for
//! rule targets and one for watched cgroups: programs that run for every
//! task look up the caller's ancestor at each depth of a set, so a target
//! matches its descendants. Held as RAII guards.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use aya::maps::{Array, MapData};
use injector_common::syscall::{Levels, MAX_LEVELS, SYSCALL_LEVELS};

use crate::error::Error;

struct Inner {
    map: Array<MapData, Levels>,
    /// Per set: how many guards hold each depth.
    sets: [BTreeMap<u32, usize>; 2],
}

#[derive(Clone)]
pub struct Depths(Arc<Mutex<Inner>>);

/// One holder of a depth in a set; dropping it releases the depth.
pub struct DepthGuard {
    depths: Depths,
    set: u32,
    depth: u32,
}

impl Depths {
    pub fn new(map: Array<MapData, Levels>) -> Self {
        Self(Arc::new(Mutex::new(Inner {
            map,
            sets: [BTreeMap::new(), BTreeMap::new()],
        })))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers the depth of cgroup `path` in `set`.
    pub fn acquire(&self, set: u32, path: &str) -> Result<DepthGuard, Error> {
        let depth = depth_of(path);
        let mut inner = self.lock();
        let mut depths = inner.sets[set as usize].clone();
        *depths.entry(depth).or_default() += 1;
        if depths.len() > MAX_LEVELS {
            return Err(Error::Capacity(format!(
                "targets already sit at {MAX_LEVELS} different cgroup depths; cgroup {path} would add another"
            )));
        }
        inner.publish(set, depths)?;
        Ok(DepthGuard {
            depths: self.clone(),
            set,
            depth,
        })
    }
}

impl Inner {
    fn publish(&mut self, set: u32, depths: BTreeMap<u32, usize>) -> Result<(), Error> {
        let mut levels = Levels::default();
        // Deepest first: the innermost target wins when targets nest.
        for (slot, depth) in levels.levels.iter_mut().zip(depths.keys().rev()) {
            *slot = *depth;
        }
        levels.count = depths.len().min(MAX_LEVELS) as u32;
        self.map
            .set(set, &levels, 0)
            .map_err(Error::map(SYSCALL_LEVELS))?;
        self.sets[set as usize] = depths;
        Ok(())
    }
}

impl Drop for DepthGuard {
    fn drop(&mut self) {
        let mut inner = self.depths.lock();
        let mut depths = inner.sets[self.set as usize].clone();
        if let Some(n) = depths.get_mut(&self.depth) {
            *n -= 1;
            if *n == 0 {
                depths.remove(&self.depth);
            }
        }
        if let Err(e) = inner.publish(self.set, depths) {
            tracing::error!(error = %e, "publishing cgroup depths");
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
