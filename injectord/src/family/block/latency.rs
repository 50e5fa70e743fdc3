//! `injectord_block_io_latency_seconds{device, op, cgroup}`: the latency
//! of every block I/O request, by device and operation, and for the
//! cgroups block faults target, by issuing cgroup too. Always on while the
//! daemon runs (`--no-block-latency` turns it off): three raw tracepoints
//! (`injector-ebpf/src/block/latency.rs`) with per-CPU histograms.

use std::{
    collections::HashMap as StdHashMap,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use anyhow::Context as _;
use aya::{
    maps::{Array, HashMap, MapData, PerCpuHashMap},
    programs::{RawTracePoint, raw_trace_point::RawTracePointLink},
};
use injector_common::{
    block::{
        BLOCK_BIO_QUEUE, BLOCK_CONFIG, BLOCK_HIST, BLOCK_RQ_COMPLETE, BLOCK_RQ_ISSUE, BLOCK_WATCH,
        CONFIG_STAMP, HIST_BUCKETS, HistKey, Histogram, MAX_BLOCK_WATCHES, OP_DISCARD, OP_FLUSH,
        OP_READ, OP_WRITE,
    },
    syscall::LEVELS_WATCHES,
};

use crate::{
    error::{Error, chain},
    family::syscall::depths::{DepthGuard, Depths},
    kernel::{Kernel, shared::SharedByKey},
    target::Cgroup,
};

struct Inner {
    hist: PerCpuHashMap<MapData, HistKey, Histogram>,
    watch: HashMap<MapData, u64, u32>,
    by_cgroup: SharedByKey<u64, Watch>,
    /// Watch numbers free for reuse (1-based; 0 is "every I/O").
    free: Vec<u16>,
    depths: Depths,
    _links: Vec<RawTracePointLink>,
    _bio_queue: Arc<BioQueueLink>,
}

/// `block_bio_queue` (stamps for the histograms, and the io_delay rules)
/// attached while the histograms are on or a delay rule exists.
#[derive(Clone)]
pub struct BioQueue(Arc<Mutex<SharedByKey<(), BioQueueLink>>>);

pub struct BioQueueLink(#[allow(dead_code)] RawTracePointLink);

impl BioQueue {
    /// Loads the program; `Err` says why the tracepoint is unavailable.
    pub fn load(kernel: &mut Kernel) -> Result<Self, String> {
        program(kernel, BLOCK_BIO_QUEUE)
            .map_err(|e| format!("{e:#}"))?
            .load()
            .map_err(|e| format!("loading {BLOCK_BIO_QUEUE}: {}", chain(&e)))?;
        Ok(Self(Arc::default()))
    }

    /// The attachment, made now if nothing holds it.
    pub fn hold(&self, kernel: &mut Kernel) -> Result<Arc<BioQueueLink>, Error> {
        let mut shared = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        shared.get_or_try_make((), || {
            let prog =
                program(kernel, BLOCK_BIO_QUEUE).map_err(|e| Error::Internal(format!("{e:#}")))?;
            prog.attach("block_bio_queue")
                .and_then(|id| prog.take_link(id))
                .map(BioQueueLink)
                .map_err(|source| Error::Attach {
                    what: format!("{BLOCK_BIO_QUEUE} to raw tracepoint block_bio_queue"),
                    source,
                })
        })
    }
}

fn program<'a>(kernel: &'a mut Kernel, name: &str) -> anyhow::Result<&'a mut RawTracePoint> {
    kernel
        .ebpf
        .program_mut(name)
        .and_then(|p| p.try_into().ok())
        .with_context(|| format!("program {name} is not in the eBPF object"))
}

/// The histograms, shared by the block faults (which watch their target
/// cgroups) and `/metrics`.
#[derive(Clone)]
pub struct BlockLatency(Arc<Mutex<Inner>>);

/// One watched cgroup; the last block fault aimed there drops it.
pub struct Watch {
    owner: BlockLatency,
    cgroup: Cgroup,
    number: u16,
    _depth: DepthGuard,
}

/// One histogram series.
#[derive(Clone, Debug)]
pub struct BlockSeries {
    /// `"major:minor"` of the disk.
    pub device: String,
    pub op: &'static str,
    /// The issuing cgroup (a watched one); `None`: every I/O.
    pub cgroup: Option<String>,
    /// Bucket `k`: I/Os of at most `2^(10+k)` ns; the last every longer.
    pub buckets: [u64; HIST_BUCKETS],
    pub sum_ns: u64,
}

impl BlockLatency {
    /// Loads and attaches the request tracepoints, holds `block_bio_queue`
    /// and switches the stamps on.
    pub fn load(kernel: &mut Kernel, depths: Depths, bio_queue: &BioQueue) -> anyhow::Result<Self> {
        let mut links = Vec::new();
        for (name, tp) in [
            (BLOCK_RQ_ISSUE, "block_rq_issue"),
            (BLOCK_RQ_COMPLETE, "block_rq_complete"),
        ] {
            let prog = program(kernel, name)?;
            prog.load()
                .map_err(|e| anyhow::anyhow!("loading {name}: {}", chain(&e)))?;
            let link = prog
                .attach(tp)
                .and_then(|id| prog.take_link(id))
                .map_err(|e| anyhow::anyhow!("attaching {name} to {tp}: {}", chain(&e)))?;
            links.push(link);
        }
        let hist = PerCpuHashMap::try_from(kernel.ebpf.take_map(BLOCK_HIST).context(BLOCK_HIST)?)?;
        let watch = HashMap::try_from(kernel.ebpf.take_map(BLOCK_WATCH).context(BLOCK_WATCH)?)?;
        let held = bio_queue.hold(kernel)?;
        let mut config: Array<MapData, u32> =
            Array::try_from(kernel.ebpf.take_map(BLOCK_CONFIG).context(BLOCK_CONFIG)?)?;
        config.set(CONFIG_STAMP, &1, 0)?;
        Ok(Self(Arc::new(Mutex::new(Inner {
            hist,
            watch,
            by_cgroup: SharedByKey::default(),
            free: (1..=MAX_BLOCK_WATCHES as u16).rev().collect(),
            depths,
            _links: links,
            _bio_queue: held,
        }))))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cgroup's watch, started now if none holds one.
    pub fn watch(&self, cgroup: &Cgroup) -> Result<Arc<Watch>, Error> {
        let mut inner = self.lock();
        let Inner {
            watch,
            by_cgroup,
            free,
            depths,
            ..
        } = &mut *inner;
        by_cgroup.get_or_try_make(cgroup.id, || {
            let number = free.pop().ok_or_else(|| {
                Error::Capacity(format!(
                    "block latency is split by cgroup for at most {MAX_BLOCK_WATCHES} cgroups at once"
                ))
            })?;
            let depth = match depths.acquire(LEVELS_WATCHES, &cgroup.path) {
                Ok(d) => d,
                Err(e) => {
                    free.push(number);
                    return Err(e);
                }
            };
            if let Err(e) = watch.insert(&cgroup.id, &u32::from(number), 0) {
                free.push(number);
                return Err(Error::map(BLOCK_WATCH)(e));
            }
            Ok(Watch {
                owner: self.clone(),
                cgroup: cgroup.clone(),
                number,
                _depth: depth,
            })
        })
    }

    /// Every series with an I/O, summed over CPUs.
    pub fn series(&self) -> Vec<BlockSeries> {
        let inner = self.lock();
        let names: StdHashMap<u16, String> = inner
            .by_cgroup
            .held()
            .map(|w| (w.number, w.cgroup.path.clone()))
            .collect();
        let mut out = Vec::new();
        for entry in inner.hist.iter() {
            let Ok((key, per_cpu)) = entry else { continue };
            let cgroup = match key.watch {
                0 => None,
                n => match names.get(&n) {
                    Some(path) => Some(path.clone()),
                    // A watch that just ended: its series is going.
                    None => continue,
                },
            };
            let mut buckets = [0u64; HIST_BUCKETS];
            let mut sum_ns = 0;
            for h in per_cpu.iter() {
                for (b, n) in buckets.iter_mut().zip(h.buckets) {
                    *b += n;
                }
                sum_ns += h.sum_ns;
            }
            out.push(BlockSeries {
                device: format!("{}:{}", key.dev >> 20, key.dev & 0xf_ffff),
                op: op_label(key.op),
                cgroup,
                buckets,
                sum_ns,
            });
        }
        out.sort_by(|a, b| (&a.device, a.op, &a.cgroup).cmp(&(&b.device, b.op, &b.cgroup)));
        out
    }
}

fn op_label(op: u8) -> &'static str {
    match op {
        OP_READ => "read",
        OP_WRITE => "write",
        OP_FLUSH => "flush",
        OP_DISCARD => "discard",
        _ => "other",
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut inner = self.owner.lock();
        if !inner.by_cgroup.is_held(&self.cgroup.id)
            && let Err(e) = inner.watch.remove(&self.cgroup.id)
        {
            tracing::error!(error = %e, cgroup = %self.cgroup.path, "unwatching block I/O");
        }
        // A later watch reuses the number: its series start from zero.
        let keys: Vec<HistKey> = inner
            .hist
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.watch == self.number)
            .collect();
        for k in keys {
            let _ = inner.hist.remove(&k);
        }
        inner.free.push(self.number);
    }
}
