//! Block I/O: a latency histogram per device, operation and (for
//! targeted cgroups) issuing cgroup, always on; and three faults for one
//! cgroup's I/O: `io_error` (at the block layer through `should_fail_bio`
//! where the kernel allows override, else at the LSM file hooks),
//! `io_delay` (the issuing task held while its I/O is delayed) and
//! `io_throttle` (the cgroup I/O controller's limits).
//!
//! Kernel side: `injector-ebpf/src/block/`; shared types:
//! `injector_common::block`.

mod spec;
mod throttle;

use self::{
    spec::{IoDelay, IoError, IoThrottle},
    throttle::Throttles,
};
use super::{Backend, Declaration, Installed, Load, Request, Target, fields_of, params_as};
use crate::{capabilities::Capability, error::Error};

pub const FAMILY: Declaration = Declaration {
    name: "block",
    types: &[IoError::KIND, IoDelay::KIND, IoThrottle::KIND],
    parse: spec::parse,
    fields: |kind| match kind {
        IoError::KIND => fields_of::<IoError>(),
        IoDelay::KIND => fields_of::<IoDelay>(),
        _ => fields_of::<IoThrottle>(),
    },
    load,
};

struct Block {
    throttle: Throttles,
}

fn load(load: &mut Load<'_>) -> Box<dyn Backend> {
    Box::new(Block {
        throttle: Throttles::load(load.reaper),
    })
}

impl Backend for Block {
    fn capabilities(&self) -> Vec<Capability> {
        vec![self.throttle.capability()]
    }

    fn install(&mut self, req: &mut Request<'_>) -> Result<Box<dyn Installed>, Error> {
        let Target::Cgroup(cgroup) = req.target else {
            return Err(Error::UnsupportedTarget(format!(
                "{} needs a cgroup target (cgroup, pid, container, pod or vm): it acts on the I/O of processes",
                req.params.kind()
            ))
            .at("target"));
        };
        let cgroup = cgroup.clone();
        match req.params.kind() {
            IoThrottle::KIND => {
                let f = params_as::<IoThrottle>(req.params)?.clone();
                self.throttle.install(req, &cgroup, &f)
            }
            kind => Err(Error::UnsupportedKernel(format!("{kind} is not built yet"))),
        }
    }
}
