//! Block I/O: a latency histogram per device, operation and (for
//! targeted cgroups) issuing cgroup, always on; and three faults for one
//! cgroup's I/O: `io_error` (at the block layer through `should_fail_bio`
//! where the kernel allows override, else at the LSM file hooks),
//! `io_delay` (the issuing task held while its I/O is delayed) and
//! `io_throttle` (the cgroup I/O controller's limits).
//!
//! Kernel side: `injector-ebpf/src/block/`; shared types:
//! `injector_common::block`.

mod delay;
mod error;
pub mod latency;
mod offsets;
mod rules;
mod spec;
mod throttle;

use std::{any::Any, sync::Arc};

use injector_common::block::{OPS_READ, OPS_WRITE};
use serde_json::{Value, json};

use self::{
    delay::{DelayFault, Delays, Where},
    error::BioErrors,
    latency::{BioQueue, BlockLatency, Watch},
    spec::{IoDelay, IoError, IoThrottle},
    throttle::Throttles,
};
use super::{
    Backend, Counters, Declaration, Installed, Load, Metric, Request, Sample, Target, fields_of,
    params_as,
    syscall::{depths::Depths, file_errors::FileErrors, filters::Device, resume::Resumer},
};
use crate::{
    capabilities::Capability,
    errno::Errno,
    error::Error,
    kernel::{Slot, btf::KernelBtf},
    target::Cgroup,
};

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
    /// The histograms, or why they are off.
    latency: Result<BlockLatency, String>,
    bio: BioErrors,
    files: Option<FileErrors>,
    bio_queue: Result<BioQueue, String>,
    delays: Delays,
    throttle: Throttles,
    _offsets: Option<offsets::OffsetsMap>,
}

fn load(load: &mut Load<'_>) -> Box<dyn Backend> {
    let depths = load.services.get::<Depths>();
    // The syscall family's parse of the kernel's BTF, or our own.
    let btf = match load.services.get::<Arc<KernelBtf>>() {
        Some(b) => Ok(b),
        None => KernelBtf::from_sys_fs()
            .map(Arc::new)
            .map_err(|e| format!("no kernel BTF to find struct fields in: {e}")),
    };
    let offsets = btf.and_then(|btf| offsets::publish(load.kernel, &btf));
    let bio_queue = match &offsets {
        Ok(_) => BioQueue::load(load.kernel),
        Err(e) => Err(e.clone()),
    };
    let latency = match (&bio_queue, &depths) {
        _ if load.options.no_block_latency => Err("turned off (--no-block-latency)".into()),
        (Err(e), _) => Err(e.clone()),
        (_, None) => Err("the cgroup depth table is unavailable".into()),
        (Ok(q), Some(d)) => {
            BlockLatency::load(load.kernel, d.clone(), q).map_err(|e| format!("{e:#}"))
        }
    };
    match &latency {
        Ok(l) => load.services.publish(l.clone()),
        Err(e) => tracing::warn!(error = %e, "block I/O latency histograms unavailable"),
    }
    let bio = match &offsets {
        Ok(_) => BioErrors::load(load.kernel, depths.clone()),
        Err(e) => BioErrors::unavailable(e.clone()),
    };
    let delays = match &bio_queue {
        Ok(_) => Delays::load(
            load.kernel,
            depths,
            load.services.get::<Resumer>(),
            load.reaper,
        ),
        Err(e) => Delays::unavailable(e.clone(), load.reaper),
    };
    Box::new(Block {
        latency,
        bio,
        files: load.services.get::<FileErrors>(),
        bio_queue,
        delays,
        throttle: Throttles::load(load.reaper),
        _offsets: offsets.ok(),
    })
}

/// The kernel `dev_t` of the filesystem holding `path` and its inode
/// number.
fn under(path: &str) -> Result<(u32, u64), Error> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::InvalidValue(format!(
            "path {path}: {e} (io_error selects files under an existing directory)"
        ))
        .at("fault.path")
    })?;
    Ok((Device::from_dev_t(meta.dev()).kernel_dev(), meta.ino()))
}

/// Which layer an io_error acts at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layer {
    Block,
    File,
}

impl Layer {
    fn name(self) -> &'static str {
        match self {
            Self::Block => "block",
            Self::File => "file",
        }
    }
}

impl Block {
    /// The deepest layer that can serve the fault here, or why none can.
    fn choose(&self, f: &IoError) -> Result<Layer, Error> {
        let mut why = Vec::new();
        if f.path.is_some() {
            why.push(
                "block layer: a bio belongs to no file, so it cannot be filtered by path"
                    .to_string(),
            );
        } else if f.errno != Errno::EIO {
            why.push(format!(
                "block layer: a failed bio always surfaces as EIO, not {}",
                f.errno
            ));
        } else {
            match self.bio.ready() {
                Ok(()) => return Ok(Layer::Block),
                Err(e) => why.push(format!("block layer: {e}")),
            }
        }
        match &self.files {
            None => why.push("file layer: the syscall rule table is unavailable".into()),
            Some(files) => match files.cannot(f.device.is_some() || f.path.is_some()) {
                None => return Ok(Layer::File),
                Some(e) => why.push(format!("file layer: {e}")),
            },
        }
        Err(Error::UnsupportedKernel(format!(
            "no layer of this kernel can fail this I/O: {}. A kernel with CONFIG_BPF_KPROBE_OVERRIDE and CONFIG_FUNCTION_ERROR_INJECTION fails bios; one with BPF LSM active fails reads and writes at the call",
            why.join("; ")
        )))
    }

    fn install_error(
        &self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
    ) -> Result<Box<dyn Installed>, Error> {
        let f = params_as::<IoError>(req.params)?.clone();
        let layer = self.choose(&f)?;
        let mut dev = f.device.as_ref().map(spec::BlockDevice::kernel_dev);
        // A path: the files under it, on its filesystem.
        let under = match &f.path {
            None => None,
            Some(p) => {
                let (path_dev, ino) = under(&p.0)?;
                if dev.is_some_and(|d| d != path_dev) {
                    return Err(Error::InvalidValue(format!(
                        "{} is on device {}:{}, not on {}: no file is under both",
                        p.0,
                        path_dev >> 20,
                        path_dev & 0xf_ffff,
                        f.device
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_default()
                    ))
                    .at("fault.path"));
                }
                dev = Some(path_dev);
                Some(ino)
            }
        };
        let watch = self.watch(cgroup)?;
        let mut describe = serde_json::Map::new();
        describe.insert("layer".into(), json!(layer.name()));
        if let Some(d) = &f.device {
            describe.insert("device_numbers".into(), json!(d.numbers()));
        }
        let (part, slot): (Box<dyn Any + Send>, Slot) = match layer {
            Layer::Block => {
                let slot = req.kernel.slots.alloc()?;
                let ops = if f.op.reads() { OPS_READ } else { 0 }
                    | if f.op.writes() { OPS_WRITE } else { 0 };
                let rule = self.bio.install(
                    req.kernel,
                    req.name,
                    cgroup,
                    dev.unwrap_or(0),
                    (ops, slot.index(), req.trigger),
                )?;
                describe.insert("hook".into(), json!("kprobe should_fail_bio"));
                (Box::new(rule), slot)
            }
            Layer::File => {
                let files = self
                    .files
                    .as_ref()
                    .ok_or_else(|| Error::Internal("file layer gone after the check".into()))?;
                let e = files.install(
                    req,
                    cgroup,
                    (f.op.reads(), f.op.writes()),
                    dev,
                    under,
                    f.errno.get(),
                )?;
                describe.insert("hook".into(), json!("lsm file_permission"));
                describe.insert("syscalls".into(), json!(e.syscalls));
                let (rules, slot) = e.into_parts();
                (rules, slot)
            }
        };
        tracing::info!(fault = req.name, layer = layer.name(), "io_error installed");
        Ok(Box::new(BlockFault {
            _part: part,
            delay: None,
            slot,
            _watch: watch,
            describe,
        }))
    }

    fn install_delay(
        &self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
    ) -> Result<Box<dyn Installed>, Error> {
        let f = params_as::<IoDelay>(req.params)?.clone();
        self.delays
            .ready()
            .map_err(|e| Error::UnsupportedKernel(format!("io_delay: {e}")))?;
        let queue = self
            .bio_queue
            .as_ref()
            .map_err(|e| Error::UnsupportedKernel(format!("io_delay: {e}")))?
            .hold(req.kernel)?;
        let watch = self.watch(cgroup)?;
        let slot = req.kernel.slots.alloc()?;
        let dev = f.device.as_ref().map_or(0, spec::BlockDevice::kernel_dev);
        let dir = req.cgroup_dir(cgroup);
        let at = Where {
            cgroup,
            dir: &dir,
            dev,
        };
        let delay = self.delays.install(req.name, at, &f, &slot, req.trigger)?;
        let mut describe = serde_json::Map::new();
        describe.insert("layer".into(), json!("block"));
        if let Some(d) = &f.device {
            describe.insert("device_numbers".into(), json!(d.numbers()));
        }
        describe.insert(
            "hook".into(),
            json!("raw_tracepoint block_bio_queue: SIGSTOP, SIGCONT after the delay"),
        );
        tracing::info!(fault = req.name, cgroup = %cgroup.path, "io_delay installed");
        Ok(Box::new(BlockFault {
            _part: Box::new(queue),
            delay: Some(delay),
            slot,
            _watch: watch,
            describe,
        }))
    }

    /// The target's latency watch (none when the histograms are off).
    fn watch(&self, cgroup: &Cgroup) -> Result<Option<Arc<Watch>>, Error> {
        match &self.latency {
            Ok(l) => l.watch(cgroup).map(Some),
            Err(_) => Ok(None),
        }
    }
}

impl Backend for Block {
    fn capabilities(&self) -> Vec<Capability> {
        let files = self
            .files
            .as_ref()
            .map_or(Some("the syscall rule table is unavailable".into()), |f| {
                f.cannot(true)
            });
        vec![
            Capability::probe(
                "block_io_latency",
                self.latency
                    .as_ref()
                    .map(|_| {
                        "block I/O latency histograms by device, operation and targeted cgroup"
                            .into()
                    })
                    .map_err(Clone::clone),
            ),
            Capability::probe(
                "io_error_block",
                self.bio
                    .ready()
                    .map(|()| {
                        "bios fail with EIO at the block layer (should_fail_bio override)".into()
                    })
                    .map_err(str::to_string),
            ),
            Capability::probe(
                "io_error_file",
                files.map_or_else(
                    || Ok("reads and writes fail at the call (BPF LSM file_permission)".into()),
                    Err,
                ),
            ),
            Capability::probe(
                "io_delay",
                self.delays
                    .ready()
                    .map(|()| "the submitting task held: SIGSTOP at block_bio_queue, SIGCONT after the delay".into())
                    .map_err(str::to_string),
            ),
            self.throttle.capability(),
        ]
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
            IoError::KIND => self.install_error(req, &cgroup),
            IoDelay::KIND => self.install_delay(req, &cgroup),
            IoThrottle::KIND => {
                let f = params_as::<IoThrottle>(req.params)?.clone();
                self.throttle.install(req, &cgroup, &f)
            }
            kind => Err(Error::UnsupportedKernel(format!(
                "{kind} is not available yet on any kernel"
            ))),
        }
    }
}

/// An installed io_error or io_delay: its delay rule (which continues
/// what it holds), then its other parts (rules, attachments), then its
/// slot, then the target's latency watch.
struct BlockFault {
    delay: Option<DelayFault>,
    _part: Box<dyn Any + Send>,
    slot: Slot,
    _watch: Option<Arc<Watch>>,
    describe: serde_json::Map<String, Value>,
}

/// `injectord_block_io_total{outcome}`: what io_delay did with the I/O
/// that matched.
static BLOCK_IO: Metric = Metric {
    name: "injectord_block_io",
    help: "I/O an io_delay fault matched, by outcome: delayed (its task held), over_limit (passed undelayed: the fault held its max_concurrent tasks)",
};

impl Installed for BlockFault {
    fn counters(&self) -> Counters {
        let s = self.slot.stats();
        let mut c = Counters {
            evaluations: s.evaluations,
            activations: s.activations,
            ..Counters::default()
        };
        if let Some(d) = &self.delay {
            let held = d.owner.stats.summary();
            let sample = |label, value| Sample {
                metric: &BLOCK_IO,
                label: ("outcome", label),
                value,
            };
            c.samples = vec![
                sample("delayed", s.activations.saturating_sub(d.over_limit())),
                sample("over_limit", d.over_limit()),
            ];
            c.injected_delay = Some(held.histogram);
        }
        c
    }

    fn describe(&self) -> serde_json::Map<String, Value> {
        self.describe.clone()
    }
}
