//! A service for later families: reads and/or writes of one cgroup fail
//! with an errno at the BPF LSM `file_permission` hook, optionally only
//! for the files of one device (the block family's `io_error` where the
//! block layer cannot be reached). The rules are ordinary syscall rules
//! for each read and write syscall, so they share the table, the conflict
//! checks and the hook's attachment with `syscall_error`.

use std::sync::{Arc, Mutex, PoisonError};

use injector_common::syscall::{ACTION_ERROR, BACKEND_LSM, LSM_FILE_PERMISSION, SyscallRule};

use super::{
    lsm::{Attachment, LsmHooks},
    rules::{InstalledRule, Place, SyscallRules},
    table::Syscall,
};
use crate::{error::Error, family::Request, kernel::Slot, target::Cgroup};

/// The calls that read a file's data through `file_permission`.
pub const READS: [&str; 5] = ["read", "pread64", "readv", "preadv", "preadv2"];
/// The calls that write it.
pub const WRITES: [&str; 5] = ["write", "pwrite64", "writev", "pwritev", "pwritev2"];

#[derive(Clone)]
pub struct FileErrors {
    rules: SyscallRules,
    lsm: Arc<Mutex<LsmHooks>>,
    offsets: Result<(), String>,
}

/// Installed file errors: the rules, then the hook's attachment, then the
/// slot (field order is the order of undoing).
pub struct FileError {
    rules: Vec<InstalledRule>,
    attachment: Arc<Attachment>,
    slot: Slot,
    /// The syscalls that fail.
    pub syscalls: Vec<&'static str>,
}

impl FileError {
    /// What to keep (the rules, then the attachment: dropped in that
    /// order), and the slot with the counters.
    pub fn into_parts(self) -> (Box<dyn std::any::Any + Send>, Slot) {
        (Box::new((self.rules, self.attachment)), self.slot)
    }
}

impl FileErrors {
    pub fn new(
        rules: SyscallRules,
        lsm: Arc<Mutex<LsmHooks>>,
        offsets: Result<(), String>,
    ) -> Self {
        Self {
            rules,
            lsm,
            offsets,
        }
    }

    /// Why the hook cannot serve file errors here (with a device filter,
    /// if `device`), if it cannot.
    pub fn cannot(&self, device: bool) -> Option<String> {
        let lsm = self.lsm.lock().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = lsm.hook_ready(&LSM_FILE_PERMISSION) {
            return Some(format!("BPF LSM file_permission hook: {e}"));
        }
        if device && let Err(e) = &self.offsets {
            return Some(format!("cannot tell a file's device: {e}"));
        }
        None
    }

    /// Reads (`reads`) and/or writes (`writes`) by `cgroup` fail with
    /// `errno`, on the files of `device` (a kernel `dev_t`) if given, and
    /// under the directory (or the file) with inode number `under` there.
    pub fn install(
        &self,
        req: &mut Request<'_>,
        cgroup: &Cgroup,
        (reads, writes): (bool, bool),
        device: Option<u32>,
        under: Option<u64>,
        errno: u32,
    ) -> Result<FileError, Error> {
        if let Some(why) = self.cannot(device.is_some()) {
            return Err(Error::UnsupportedKernel(why));
        }
        let attachment = self
            .lsm
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .attach(req.kernel, &LSM_FILE_PERMISSION)?;
        let slot = req.kernel.slots.alloc()?;
        let rule = SyscallRule {
            slot: slot.index(),
            errno,
            backend: BACKEND_LSM,
            hook: LSM_FILE_PERMISSION.id,
            trigger: req.trigger,
            device: device.unwrap_or(0),
            has_device: u8::from(device.is_some()),
            under_ino: under.unwrap_or(0),
            // Block I/O faults: pipes, sockets, ttys and memory-backed
            // files are not I/O of a disk.
            disk_only: 1,
            ..SyscallRule::default()
        };
        let mut syscalls = Vec::new();
        if reads {
            syscalls.extend(READS);
        }
        if writes {
            syscalls.extend(WRITES);
        }
        let mut installed = Vec::new();
        for name in &syscalls {
            let sc: Syscall = name.parse().map_err(Error::Internal)?;
            installed.push(self.rules.install(
                req.name,
                Place {
                    cgroup,
                    nr: sc.nr(),
                    action: ACTION_ERROR,
                    by_depth: true,
                },
                rule,
                &format!("{name} fail"),
            )?);
        }
        Ok(FileError {
            rules: installed,
            attachment,
            slot,
            syscalls,
        })
    }
}
