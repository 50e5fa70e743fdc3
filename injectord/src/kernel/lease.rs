//! The dead man's switch: every fault checks a lease in the kernel (the
//! `LEASE` map of its object), and a heartbeat thread moves the lease
//! forward. If the daemon dies, even with its whole process group or
//! cgroup, or freezes, whatever it left behind (a clsact filter with our
//! program, a program someone else still holds) stops firing once the
//! lease runs out.
//!
//! The heartbeat is a plain thread, not a task: a runtime stalled by a slow
//! request must not let the lease lapse, and a frozen process must.

use std::{
    sync::{Arc, Mutex, PoisonError, Weak},
    time::Duration,
};

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use injector_common::{LEASE_SLOT, maps};

use crate::sys;

/// The lease, and the objects that check it.
pub struct Lease {
    duration: Duration,
    maps: Mutex<Vec<Weak<LeaseMap>>>,
}

/// One object's lease map; the object keeps it (and so the heartbeat's
/// interest in it) alive.
pub struct LeaseMap(Mutex<Array<MapData, u64>>);

impl Lease {
    /// A lease of `duration`, renewed every tenth of it (at most every
    /// 100 ms, at least every 10 ms) by a thread that runs as long as the
    /// process.
    pub fn start(duration: Duration) -> Arc<Self> {
        let lease = Arc::new(Self {
            duration,
            maps: Mutex::new(Vec::new()),
        });
        let interval = (duration / 10).clamp(Duration::from_millis(10), Duration::from_millis(100));
        let weak = Arc::downgrade(&lease);
        std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || {
                while let Some(lease) = weak.upgrade() {
                    lease.renew();
                    drop(lease);
                    std::thread::sleep(interval);
                }
            })
            .expect("spawning the lease thread");
        lease
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// Takes the object's `LEASE` map, grants it the lease at once, and
    /// renews it from now on.
    pub fn register(&self, ebpf: &mut Ebpf) -> anyhow::Result<Arc<LeaseMap>> {
        let map = Array::try_from(ebpf.take_map(maps::LEASE).context(maps::LEASE)?)?;
        let map = Arc::new(LeaseMap(Mutex::new(map)));
        map.grant(self.deadline());
        let mut maps = self.maps.lock().unwrap_or_else(PoisonError::into_inner);
        maps.retain(|m| m.strong_count() > 0);
        maps.push(Arc::downgrade(&map));
        Ok(map)
    }

    fn deadline(&self) -> u64 {
        sys::monotonic_ns() + self.duration.as_nanos() as u64
    }

    fn renew(&self) {
        let deadline = self.deadline();
        let maps: Vec<Arc<LeaseMap>> = self
            .maps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for m in maps {
            m.grant(deadline);
        }
    }
}

impl LeaseMap {
    fn grant(&self, deadline: u64) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = map.set(LEASE_SLOT, &deadline, 0) {
            tracing::error!(error = %e, "renewing the lease failed: faults of this object stop firing");
        }
    }
}
