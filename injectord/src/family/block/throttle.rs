//! `io_throttle`: bandwidth and IOPS limits for the target on one device,
//! through the cgroup I/O controller (v2 `io.max`, or v1
//! `blkio.throttle.*` where `io` is bound to the v1 hierarchy), journalled
//! and restored exactly on remove, TTL, SIGTERM and SIGKILL.

use super::spec::IoThrottle;
use crate::{
    capabilities::Capability,
    error::Error,
    family::{Installed, Request},
    kernel::reaper::Reaper,
    target::Cgroup,
};

/// The cgroup I/O controller this host has.
pub struct Throttles {
    _reaper: Reaper,
}

impl Throttles {
    pub fn load(reaper: &Reaper) -> Self {
        Self {
            _reaper: reaper.clone(),
        }
    }

    pub fn capability(&self) -> Capability {
        Capability::probe("io_throttle", Err("not built yet".into()))
    }

    pub fn install(
        &self,
        _req: &mut Request<'_>,
        _cgroup: &Cgroup,
        _fault: &IoThrottle,
    ) -> Result<Box<dyn Installed>, Error> {
        Err(Error::UnsupportedKernel(
            "io_throttle is not built yet".into(),
        ))
    }
}
