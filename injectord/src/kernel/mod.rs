//! What every fault family shares on the kernel side: the loaded eBPF
//! object and its fault slots, cgroup attachments, network namespaces,
//! qdiscs and tc filters over rtnetlink, the reaper that undoes netlink
//! state after a crash, and the eBPF log.

pub mod btf;
pub mod cgroup_links;
pub mod grace;
pub mod journal;
pub mod lease;
pub mod logs;
pub mod netns;
pub mod qdisc;
pub mod reaper;
pub mod shared;
pub mod slots;

use std::{
    os::fd::AsFd as _,
    sync::{Arc, OnceLock},
};

use anyhow::Context as _;
use aya::{Ebpf, EbpfLoader, maps::MapData};
use injector_common::{AttachInfo, MAX_FAULTS, maps};

use self::lease::{Lease, LeaseMap};
pub use self::slots::{Slot, SlotPool};
use crate::sys;

/// The eBPF object built by build.rs (public for the benchmark example,
/// which loads its own copy, and for the object-contract test).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/injector"));

/// The main eBPF object: every family's programs that serve cgroup targets
/// (keyed by cgroup id in shared maps), the fault slots and the cgroup
/// attachment identities.
pub struct Kernel {
    pub ebpf: Ebpf,
    pub slots: Arc<SlotPool>,
    /// CGROUP_ATTACH: which target each cgroup attachment serves.
    pub cgroup_storage: MapData,
    /// The daemon's lease, which every object's programs check.
    pub lease: Arc<Lease>,
    _lease_map: Arc<LeaseMap>,
}

impl Kernel {
    pub fn load(lease: Arc<Lease>) -> anyhow::Result<Self> {
        raise_memlock_limit();
        raise_open_files_limit();
        let mut ebpf = loader().load(OBJECT).context("loading the eBPF object")?;
        let slots = Arc::new(SlotPool::take(&mut ebpf, MAX_FAULTS)?);
        // Parsed now, so the first interface fault does not wait for it.
        shrinkable_maps()?;
        let cgroup_storage = match ebpf
            .take_map(maps::CGROUP_ATTACH)
            .context(maps::CGROUP_ATTACH)?
        {
            aya::maps::Map::CgroupStorage(m) => m,
            other => anyhow::bail!("{} has unexpected type {other:?}", maps::CGROUP_ATTACH),
        };
        let lease_map = lease.register(&mut ebpf)?;
        Ok(Self {
            ebpf,
            slots,
            cgroup_storage,
            lease,
            _lease_map: lease_map,
        })
    }

    /// Tells the programs of one cgroup attachment which target they run
    /// for (the value of CGROUP_ATTACH for this cgroup and kernel attach
    /// type). aya has no typed API for writing legacy cgroup storage.
    pub fn publish_attachment(&self, cgroup_id: u64, attach_type: u32) -> std::io::Result<()> {
        let key = StorageKey {
            cgroup_inode_id: cgroup_id,
            attach_type,
            _pad: 0,
        };
        let info = AttachInfo { cgroup_id };
        sys::map_update(
            self.cgroup_storage.fd().as_fd(),
            sys::bytes_of(&key),
            sys::bytes_of(&info),
        )
    }
}

/// `struct bpf_cgroup_storage_key`.
#[repr(C)]
#[derive(Clone, Copy)]
struct StorageKey {
    cgroup_inode_id: u64,
    attach_type: u32,
    _pad: u32,
}

// SAFETY: plain data, padding spelled out.
unsafe impl aya::Pod for StorageKey {}

/// A loader with the eBPF log level set to what the daemon's tracing
/// subscriber will show, so disabled records cost the programs a branch.
pub fn loader<'a>() -> EbpfLoader<'a> {
    let mut loader = EbpfLoader::new();
    loader.override_global(aya_log::LEVEL, logs::ebpf_level(), false);
    loader
}

/// A private copy of the object.
pub struct Instance {
    pub ebpf: Ebpf,
    pub slots: SlotPool,
    /// Keeps the copy's lease renewed; drop it with the copy.
    pub lease: Arc<LeaseMap>,
}

/// Loads a private copy of the object for one network interface (or any
/// other per-device use): the maps named in `sizes` get those sizes, and
/// every other map that can be shrunk holds a single entry, so a copy costs
/// what its own programs need and nothing for other families' maps.
pub fn load_instance(
    sizes: &[(&str, u32)],
    capacity: u32,
    lease: &Lease,
) -> anyhow::Result<Instance> {
    let mut loader = loader();
    let sized: Vec<(String, u32)> = shrinkable_maps()?
        .into_iter()
        .map(|name| {
            let size = sizes
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(1, |(_, s)| *s);
            (name, size)
        })
        .collect();
    for (name, size) in &sized {
        loader.map_max_entries(name, *size);
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("loading a private copy of the eBPF object")?;
    let slots = SlotPool::take(&mut ebpf, capacity)?;
    let lease = lease.register(&mut ebpf)?;
    Ok(Instance { ebpf, slots, lease })
}

/// The object's maps whose size is a plain entry count (not cgroup
/// storage, ring buffers or data sections). LRU hashes count: they are
/// always preallocated, so left at their size (the block and latency
/// families' 65,536 entries) each copy would hold megabytes of kernel
/// memory for programs it never loads. Parsed once: the object is
/// large (BTF, debug info) and interface copies load on the request path.
fn shrinkable_maps() -> anyhow::Result<Vec<String>> {
    static MAPS: OnceLock<Result<Vec<String>, String>> = OnceLock::new();
    MAPS.get_or_init(|| parse_shrinkable_maps().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn parse_shrinkable_maps() -> anyhow::Result<Vec<String>> {
    use aya_obj::generated::bpf_map_type::*;
    let obj = aya_obj::Object::parse(OBJECT).context("parsing the eBPF object")?;
    Ok(obj
        .maps
        .iter()
        .filter(|(_, m)| {
            matches!(
                m.map_type(),
                x if x == BPF_MAP_TYPE_HASH as u32
                    || x == BPF_MAP_TYPE_ARRAY as u32
                    || x == BPF_MAP_TYPE_PERCPU_HASH as u32
                    || x == BPF_MAP_TYPE_PERCPU_ARRAY as u32
                    || x == BPF_MAP_TYPE_LRU_HASH as u32
                    || x == BPF_MAP_TYPE_LRU_PERCPU_HASH as u32
                    || x == BPF_MAP_TYPE_LPM_TRIE as u32
            )
        })
        .map(|(name, _)| name.clone())
        .collect())
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The names in injector-common and the identifiers on the eBPF side
    /// are two spellings of one contract: every name we use exists in the
    /// built object, and every program and map in it is declared.
    #[test]
    fn object_names() {
        let obj = aya_obj::Object::parse(OBJECT).unwrap();
        let programs: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        let declared: BTreeSet<&str> = injector_common::PROGRAMS.concat().into_iter().collect();
        assert_eq!(programs, declared);
        let maps: BTreeSet<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|m| !m.starts_with('.'))
            .collect();
        let declared: BTreeSet<&str> = injector_common::MAPS.concat().into_iter().collect();
        assert_eq!(maps, declared);
    }
}
