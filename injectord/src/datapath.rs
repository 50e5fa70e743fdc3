//! The loaded eBPF object: maps shared by all backends (per-slot statistics
//! and trigger state), the slot allocator, and the backends themselves.

use std::collections::VecDeque;

use anyhow::Context as _;
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, MapData, PerCpuArray, PerCpuValues},
    util::nr_cpus,
};
use injector_common::{FaultStats, MAX_FAULTS, MAX_PACKET_RULES, TriggerState};

use crate::{
    backend::{cgroup_skb::CgroupPackets, connect::ConnectBackend},
    error::{ErrorCode, RpcError},
};

/// The eBPF object built by build.rs.
/// (Public for the packet benchmark example, which loads its own copy.)
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/injector"));

pub struct Datapath {
    pub ebpf: Ebpf,
    pub slots: Slots,
    /// CGROUP_ATTACH: which target each cgroup attachment serves.
    pub cgroup_storage: MapData,
    pub connect: Result<ConnectBackend, String>,
    /// Packet faults on cgroup targets (cgroup_skb).
    pub cgroup_packets: Result<CgroupPackets, String>,
}

impl Datapath {
    pub fn load() -> anyhow::Result<Self> {
        raise_memlock_limit();
        raise_open_files_limit();
        let mut ebpf = Ebpf::load(OBJECT).context("loading the eBPF object")?;
        let slots = Slots::take(&mut ebpf, MAX_FAULTS)?;
        let cgroup_storage = match ebpf.take_map("CGROUP_ATTACH").context("CGROUP_ATTACH")? {
            aya::maps::Map::CgroupStorage(m) => m,
            other => anyhow::bail!("CGROUP_ATTACH has unexpected type {other:?}"),
        };
        let connect = ConnectBackend::load(&mut ebpf).map_err(|e| format!("{e:#}"));
        if let Err(e) = &connect {
            tracing::warn!(error = %e, "connect backend unavailable");
        }
        let cgroup_packets = CgroupPackets::load(&mut ebpf).map_err(|e| format!("{e:#}"));
        if let Err(e) = &cgroup_packets {
            tracing::warn!(error = %e, "cgroup packet backend unavailable");
        }
        Ok(Self {
            ebpf,
            slots,
            cgroup_storage,
            connect,
            cgroup_packets,
        })
    }

    /// Loads a private copy of the object for the packet programs of one
    /// network interface, with maps sized for one target.
    pub fn load_instance() -> anyhow::Result<(Ebpf, Slots)> {
        let per_target = MAX_PACKET_RULES;
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("FAULT_STATS", per_target)
            .map_max_entries("TRIGGER_STATE", per_target)
            .map_max_entries("RATE_STATE", per_target)
            .map_max_entries("DELAY_HIST", per_target)
            .map_max_entries("PACKET_TARGETS", 1)
            .map_max_entries("PACKET_RULES", per_target)
            .map_max_entries("PACKET_SRC", per_target * 2 + 1)
            .map_max_entries("PACKET_DST", per_target * 2 + 1)
            .map_max_entries("PACKET_PORTS", per_target)
            .map_max_entries("CONNECT_RULES", 1)
            .load(OBJECT)
            .context("loading the eBPF object for an interface")?;
        let slots = Slots::take(&mut ebpf, per_target)?;
        Ok((ebpf, slots))
    }
}

/// Fault slots of one loaded object: per-CPU statistics and shared trigger
/// state, and the free list.
pub struct Slots {
    stats: PerCpuArray<MapData, FaultStats>,
    trigger_state: Array<MapData, TriggerState>,
    /// Free slots, oldest-freed first, so a slot is reused as late as
    /// possible (a program that looked a rule up just before its removal may
    /// still count once into the old slot).
    free: VecDeque<u32>,
    capacity: u32,
    nr_cpus: usize,
}

impl Slots {
    fn take(ebpf: &mut Ebpf, capacity: u32) -> anyhow::Result<Self> {
        let stats = PerCpuArray::try_from(ebpf.take_map("FAULT_STATS").context("FAULT_STATS")?)?;
        let trigger_state =
            Array::try_from(ebpf.take_map("TRIGGER_STATE").context("TRIGGER_STATE")?)?;
        let nr_cpus = nr_cpus()
            .map_err(|(what, e)| anyhow::anyhow!("{what}: {e}"))?
            .get() as usize;
        Ok(Self {
            stats,
            trigger_state,
            free: (0..capacity).collect(),
            capacity,
            nr_cpus,
        })
    }

    /// Takes a free slot and zeroes its counters.
    pub fn alloc(&mut self) -> Result<u32, RpcError> {
        let slot = self.free.pop_front().ok_or_else(|| {
            RpcError::new(
                ErrorCode::Capacity,
                format!(
                    "all {} fault slots of this target are in use; remove faults first",
                    self.capacity
                ),
            )
        })?;
        let zeroed =
            PerCpuValues::try_from(vec![FaultStats::default(); self.nr_cpus]).map_err(internal)?;
        self.stats.set(slot, zeroed, 0).map_err(internal)?;
        self.trigger_state
            .set(slot, &TriggerState::default(), 0)
            .map_err(internal)?;
        Ok(slot)
    }

    pub fn free(&mut self, slot: u32) {
        self.free.push_back(slot);
    }

    pub fn nr_cpus(&self) -> usize {
        self.nr_cpus
    }

    /// Sums a slot's per-CPU counters.
    pub fn stats(&self, slot: u32) -> FaultStats {
        self.stats
            .get(&slot, 0)
            .map(|per_cpu| {
                per_cpu
                    .iter()
                    .fold(FaultStats::default(), |acc, s| FaultStats {
                        evaluations: acc.evaluations + s.evaluations,
                        activations: acc.activations + s.activations,
                        overflows: acc.overflows + s.overflows,
                    })
            })
            .unwrap_or_default()
    }
}

pub fn internal(e: impl std::fmt::Display) -> RpcError {
    RpcError::new(ErrorCode::Internal, format!("BPF map update failed: {e}"))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; lift it so maps
/// of MAX_FAULTS entries load there too. Harmless on newer kernels.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer to an initialised struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK");
    }
}

/// Each targeted cgroup holds two bpf_link fds; 10,000 targets need more
/// than the usual limits (1024 soft, often 20,000 hard). As root we may
/// raise both, up to the kernel's `fs.nr_open`.
fn raise_open_files_limit() {
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(1 << 20);
    let want = libc::rlimit {
        rlim_cur: nr_open,
        rlim_max: nr_open,
    };
    let mut hard = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers to initialised structs.
    unsafe {
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return;
        }
        // Without CAP_SYS_RESOURCE (e.g. in a container): the hard limit.
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) == 0 {
            hard.rlim_cur = hard.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &hard);
        }
    }
    tracing::warn!(
        limit = hard.rlim_max,
        "could not raise RLIMIT_NOFILE to {nr_open}: at most about {} cgroups can be targeted",
        hard.rlim_max / 2
    );
}
