//! Backends: one per hook family. Each owns its programs' attachments and
//! the map entries of the faults it installed.

pub mod cgroup_links;
pub mod cgroup_netns;
pub mod cgroup_skb;
pub mod connect;
pub mod interface;
pub mod packet;

use std::os::fd::AsFd as _;

use aya::maps::MapData;
use injector_common::AttachInfo;

use crate::{
    error::{ErrorCode, RpcError},
    sys,
};

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

/// Tells the programs of one cgroup attachment which target they run for
/// (the value of CGROUP_ATTACH for this cgroup and kernel attach type).
/// aya has no typed API for writing legacy cgroup storage.
pub fn publish_attachment(
    storage: &MapData,
    cgroup_id: u64,
    attach_type: u32,
) -> std::io::Result<()> {
    let key = StorageKey {
        cgroup_inode_id: cgroup_id,
        attach_type,
        _pad: 0,
    };
    let info = AttachInfo { cgroup_id };
    sys::map_update(
        storage.fd().as_fd(),
        sys::bytes_of(&key),
        sys::bytes_of(&info),
    )
}

/// An attach failure as an RPC error. Each attachment is a bpf_link fd, so
/// EMFILE means the daemon's open-file limit, not a bug.
pub fn attach_error(msg: String) -> RpcError {
    let code = if msg.contains("os error 24") {
        ErrorCode::Capacity
    } else {
        ErrorCode::Internal
    };
    RpcError::new(code, msg)
}
