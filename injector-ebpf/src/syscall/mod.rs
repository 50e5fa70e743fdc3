//! Syscall and process faults: a syscall fails with a chosen errno, or its
//! caller gets a signal, in one target cgroup and its descendants.
//!
//! Every backend finds its rule the same way, by (target cgroup, syscall
//! number, action) in [`SYSCALL_RULES`]: hooks that run for every task
//! (kprobes, LSM hooks, the sys_enter tracepoint) look up the caller's
//! ancestor at each depth a target sits at ([`SYSCALL_LEVELS`], deepest
//! first, usually one or two lookups); cgroup programs already know their
//! target from their attachment.

mod cgroup;
mod kprobe;
mod latency;
mod lsm;
mod signal;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_task, bpf_probe_read_kernel,
        bpf_probe_read_user_str_bytes,
    },
    macros::map,
    maps::{Array, HashMap, RingBuf},
};
use injector_common::syscall::{
    KernelOffsets, LEVELS_RULES, Levels, MAX_LEVELS, MAX_SYSCALL_RULES, NO_PATH_ARG,
    PATH_PREFIX_MAX, SyscallKey, SyscallRule,
};

use crate::trigger;

/// `BPF_F_NO_PREALLOC`: values are freed after an RCU grace period, so a
/// rule the daemon replaces or removes is never read half-rewritten.
const NO_PREALLOC: u32 = 1;

#[map]
static SYSCALL_RULES: HashMap<SyscallKey, SyscallRule> =
    HashMap::with_max_entries(MAX_SYSCALL_RULES, NO_PREALLOC);

/// The cgroup depths targets sit at: of rule targets and of watched
/// cgroups (`LEVELS_RULES`, `LEVELS_WATCHES`; written by the daemon).
#[map]
static SYSCALL_LEVELS: Array<Levels> = Array::with_max_entries(2, 0);

/// Offsets of the kernel struct fields the device and socket filters
/// read (written by the daemon from the kernel's BTF).
#[map]
static SYSCALL_OFFSETS: Array<KernelOffsets> = Array::with_max_entries(1, 0);

/// Signal rules report here when they fire, so the daemon can resume the
/// tasks a pause stopped.
#[map]
pub(crate) static SYSCALL_EVENTS: RingBuf = RingBuf::with_byte_size(64 * 1024, 0);

/// The rule of `action` for syscall `nr` whose target contains the calling
/// task, deepest target first.
#[inline(always)]
fn rule_for_caller(nr: u32, action: u32) -> Option<&'static SyscallRule> {
    for_caller(LEVELS_RULES, |id| rule_of(id, nr, action))
}

/// Whether level set `set` has a target at any depth: without one,
/// [`for_caller`] finds nothing, and what a hot path would read to look
/// can be skipped.
#[inline(always)]
pub(crate) fn any_target(set: u32) -> bool {
    SYSCALL_LEVELS.get(set).is_some_and(|l| l.count != 0)
}

/// The first `find(ancestor)` that answers, over the calling task's
/// ancestors at the depths of level set `set`, deepest first.
#[inline(always)]
pub(crate) fn for_caller<T>(set: u32, mut find: impl FnMut(u64) -> Option<T>) -> Option<T> {
    let levels = SYSCALL_LEVELS.get(set)?;
    let count = levels.count as usize;
    for i in 0..MAX_LEVELS {
        if i >= count {
            break;
        }
        let Some(&level) = levels.levels.get(i) else {
            break;
        };
        // SAFETY: helper without side effects; 0 when the caller's cgroup
        // is shallower than `level`.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if id == 0 {
            continue;
        }
        if let Some(found) = find(id) {
            return Some(found);
        }
    }
    None
}

/// The rule of `action` for syscall `nr` in target `cgroup_id`.
#[inline(always)]
fn rule_of(cgroup_id: u64, nr: u32, action: u32) -> Option<&'static SyscallRule> {
    let key = SyscallKey {
        cgroup_id,
        nr,
        action,
    };
    // SAFETY: the map is BPF_F_NO_PREALLOC, so the value stays valid and
    // unmodified for this RCU read section (the program's run).
    unsafe { SYSCALL_RULES.get(&key) }
}

/// Argument `n` (0-based) of the syscall whose user registers are `regs`
/// (x86_64: rdi, rsi, rdx, r10, r8, r9).
#[inline(always)]
fn syscall_arg(regs: *const pt_regs, n: u8) -> Option<u64> {
    // SAFETY: only the address is computed here; the read below checks it.
    let field = unsafe {
        match n {
            0 => &raw const (*regs).rdi,
            1 => &raw const (*regs).rsi,
            2 => &raw const (*regs).rdx,
            3 => &raw const (*regs).r10,
            4 => &raw const (*regs).r8,
            5 => &raw const (*regs).r9,
            _ => return None,
        }
    };
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(field) }.ok()
}

/// The syscall number in the user registers `regs`.
#[inline(always)]
fn syscall_nr(regs: *const pt_regs) -> Option<u32> {
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel(&raw const (*regs).orig_rax) }
        .ok()
        .map(|nr| nr as u32)
}

/// Whether the rule's path filter (if any) matches the path argument of
/// the call. A prefix matches whole components.
#[inline(always)]
fn path_matches(rule: &SyscallRule, regs: *const pt_regs) -> bool {
    if rule.path_len == 0 || rule.path_arg == NO_PATH_ARG {
        return true;
    }
    let Some(ptr) = syscall_arg(regs, rule.path_arg) else {
        return false;
    };
    let mut buf = [0u8; PATH_PREFIX_MAX + 1];
    // SAFETY: reads at most buf.len() bytes of user memory, checked by the
    // helper; a path the kernel just copied in is resident.
    if unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut buf) }.is_err() {
        return false;
    }
    prefix_matches(&rule.path, rule.path_len as usize, &buf)
}

/// Whether `seen` (NUL-terminated) starts with the first `len` bytes of
/// `prefix`, ending at a component boundary. Every access is at the loop
/// index, a constant in each iteration the verifier walks: reads at a
/// variable offset from the stack are refused.
#[inline(always)]
fn prefix_matches(
    prefix: &[u8; PATH_PREFIX_MAX],
    len: usize,
    seen: &[u8; PATH_PREFIX_MAX + 1],
) -> bool {
    let mut last = 0u8;
    for (i, &c) in seen.iter().enumerate() {
        if i == len {
            return last == b'/' || c == 0 || c == b'/';
        }
        let Some(&p) = prefix.get(i) else {
            return false;
        };
        if p != c {
            return false;
        }
        last = p;
    }
    false
}

/// The field offsets, once the daemon has written them.
#[inline(always)]
fn offsets() -> Option<&'static KernelOffsets> {
    SYSCALL_OFFSETS.get(0).filter(|o| o.ready != 0)
}

/// A `T` read from kernel memory at `base + offset`; `None` for a null
/// `base` or a failed read.
#[inline(always)]
pub(crate) fn read_at<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel checks the address.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset)) as *const T) }.ok()
}

/// The `dev_t` of the filesystem holding `file` (`struct file *`).
#[inline(always)]
fn device_of_file(o: &KernelOffsets, file: u64) -> Option<u32> {
    let inode = read_at::<u64>(file, o.file_inode)?;
    device_of_inode(o, inode)
}

/// The `dev_t` of the filesystem holding `inode` (`struct inode *`), or
/// for a block device node, of the device it names (where its I/O goes).
#[inline(always)]
fn device_of_inode(o: &KernelOffsets, inode: u64) -> Option<u32> {
    let mode = read_at::<u16>(inode, o.inode_mode)?;
    if u32::from(mode) & S_IFMT == S_IFBLK {
        return read_at::<u32>(inode, o.inode_rdev);
    }
    let sb = read_at::<u64>(inode, o.inode_sb)?;
    read_at::<u32>(sb, o.sb_dev)
}

const S_IFMT: u32 = 0o170000;
const S_IFBLK: u32 = 0o060000;
const S_IFREG: u32 = 0o100000;

/// The file open at descriptor `fd` of the calling task
/// (`current->files->fdt->fd[fd]`).
#[inline(always)]
fn file_of_fd(o: &KernelOffsets, fd: u64) -> Option<u64> {
    // SAFETY: helper without side effects.
    let task = unsafe { bpf_get_current_task() };
    let files = read_at::<u64>(task, o.task_files)?;
    let fdt = read_at::<u64>(files, o.files_fdt)?;
    let max = read_at::<u32>(fdt, o.fdt_max_fds)?;
    if fd >= u64::from(max) {
        return None;
    }
    let fds = read_at::<u64>(fdt, o.fdt_fd)?;
    read_at::<u64>(fds + fd * 8, 0)
}

/// What a hook can tell about the call's object, for the device and
/// socket filters (asked only when the rule has one).
trait Subject {
    /// The `dev_t` of the filesystem holding the file the call acts on.
    fn device(&self, rule: &SyscallRule) -> Option<u32>;
    /// The socket's family and type.
    fn socket(&self, rule: &SyscallRule) -> Option<(u16, u8)>;
    /// Whether the file the call acts on is under the directory with
    /// inode number `ino` (hooks that see a `struct file`).
    fn under(&self, _ino: u64) -> bool {
        false
    }
    /// Whether the call's file can reach a disk (hooks that see a
    /// `struct file`).
    fn on_disk(&self) -> bool {
        false
    }
}

/// Whether `file`'s I/O can reach a disk: a block device node, or a
/// regular file of a filesystem on a block device.
#[inline(always)]
pub(crate) fn file_on_disk(o: &KernelOffsets, file: u64) -> bool {
    let Some(inode) = read_at::<u64>(file, o.file_inode) else {
        return false;
    };
    let Some(mode) = read_at::<u16>(inode, o.inode_mode) else {
        return false;
    };
    match u32::from(mode) & S_IFMT {
        S_IFBLK => true,
        S_IFREG => read_at::<u64>(inode, o.inode_sb)
            .and_then(|sb| read_at::<u64>(sb, o.sb_bdev))
            .is_some_and(|bdev| bdev != 0),
        _ => false,
    }
}

/// How many directory levels [`file_under`] climbs (deeper files never
/// match).
const MAX_WALK: usize = 32;

/// Whether `file` (`struct file *`) sits under the directory whose inode
/// number is `ino` on the same filesystem: its dentry or an ancestor's
/// inode is `ino` (the filesystem's root is its own parent).
#[inline(always)]
pub(crate) fn file_under(o: &KernelOffsets, file: u64, ino: u64) -> bool {
    let Some(mut dentry) = read_at::<u64>(file, o.file_path + o.path_dentry) else {
        return false;
    };
    for _ in 0..MAX_WALK {
        let Some(inode) = read_at::<u64>(dentry, o.dentry_inode) else {
            return false;
        };
        if read_at::<u64>(inode, o.inode_ino) == Some(ino) {
            return true;
        }
        let Some(parent) = read_at::<u64>(dentry, o.dentry_parent) else {
            return false;
        };
        if parent == dentry {
            return false;
        }
        dentry = parent;
    }
    false
}

/// A syscall's own registers as the subject (kprobe and tracepoint
/// hooks, which run before the kernel looks at the arguments): the file
/// behind a descriptor argument, the family and type arguments of
/// socket() and socketpair().
struct Registers(*const pt_regs);

impl Subject for Registers {
    #[inline(always)]
    fn device(&self, rule: &SyscallRule) -> Option<u32> {
        if rule.fd_arg == NO_PATH_ARG {
            return None;
        }
        let o = offsets()?;
        // An int argument: the upper half of the register is not its own.
        let fd = syscall_arg(self.0, rule.fd_arg)? as u32;
        let file = file_of_fd(o, u64::from(fd))?;
        device_of_file(o, file)
    }

    #[inline(always)]
    fn socket(&self, rule: &SyscallRule) -> Option<(u16, u8)> {
        if rule.sock_args == 0 {
            return None;
        }
        let family = syscall_arg(self.0, 0)? as u16;
        let sock_type = syscall_arg(self.0, 1)? as u8 & SOCK_TYPE_MASK;
        Some((family, sock_type))
    }
}

/// The socket type without SOCK_NONBLOCK and SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u8 = 0xf;

/// Whether the rule's device and socket filters (if any) agree with what
/// `subject` sees. A filter the hook cannot answer does not match: the
/// daemon only installs filters the chosen hook can see.
#[inline(always)]
fn object_matches(rule: &SyscallRule, subject: &impl Subject) -> bool {
    if rule.has_device != 0 && subject.device(rule) != Some(rule.device) {
        return false;
    }
    if rule.under_ino != 0 && !subject.under(rule.under_ino) {
        return false;
    }
    if rule.disk_only != 0 && !subject.on_disk() {
        return false;
    }
    if rule.family != 0 || rule.sock_type != 0 {
        let Some((family, sock_type)) = subject.socket(rule) else {
            return false;
        };
        if (rule.family != 0 && rule.family != family)
            || (rule.sock_type != 0 && rule.sock_type != sock_type)
        {
            return false;
        }
    }
    true
}

/// The errno a rule served by `backend` (and LSM `hook`, 0 elsewhere)
/// makes syscall `nr` fail with, if the calling task is in its target and
/// its filters and trigger agree.
#[inline(always)]
fn error_for(
    nr: u32,
    backend: u8,
    hook: u8,
    regs: *const pt_regs,
    subject: &impl Subject,
) -> Option<u32> {
    let rule = rule_for_caller(nr, injector_common::syscall::ACTION_ERROR)?;
    if rule.backend != backend
        || (rule.hook != 0 && rule.hook != hook)
        || !path_matches(rule, regs)
        || !object_matches(rule, subject)
    {
        return None;
    }
    trigger::evaluate(rule.slot, &rule.trigger).then_some(rule.errno)
}
