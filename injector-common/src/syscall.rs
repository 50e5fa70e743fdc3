//! Syscall and process faults: a syscall returns a chosen errno, or the
//! calling task gets a signal, in one cgroup (its descendants included).
//!
//! Three backends reach the syscalls, best first: a kprobe on the
//! syscall's entry with `bpf_override_return`, BPF LSM hooks, and cgroup
//! programs with `bpf_set_retval`. All of them find their rule the same
//! way: by (target cgroup, syscall number, action) in one hash map.

use crate::{MAX_FAULTS, Prefix, Trigger};

/// kprobe on `__x64_sys_*`: returns the errno with `bpf_override_return`.
pub const SYSCALL_KPROBE: &str = "syscall_kprobe";
/// raw tracepoint sys_enter: sends a signal to the caller (process faults
/// at a syscall).
pub const SYSCALL_SIGNAL: &str = "syscall_signal";
/// cgroup programs with `bpf_set_retval`.
pub const SYSCALL_SOCK_CREATE: &str = "syscall_sock_create";
pub const SYSCALL_BIND4: &str = "syscall_bind4";
pub const SYSCALL_BIND6: &str = "syscall_bind6";
pub const SYSCALL_SENDMSG4: &str = "syscall_sendmsg4";
pub const SYSCALL_SENDMSG6: &str = "syscall_sendmsg6";
pub const SYSCALL_GETSOCKOPT: &str = "syscall_getsockopt";
pub const SYSCALL_SETSOCKOPT: &str = "syscall_setsockopt";
pub const SYSCALL_SYSCTL: &str = "syscall_sysctl";

/// A BPF LSM program: its name, the LSM hook it attaches to, and how many
/// arguments that hook takes (the previous program's verdict comes after
/// them; the daemon checks the count against the kernel's BTF before it
/// loads the program, so a hook whose signature changed is refused rather
/// than misread).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LsmHook {
    pub program: &'static str,
    pub hook: &'static str,
    pub arity: u8,
    /// The value of [`SyscallRule::hook`] for rules this hook serves.
    pub id: u8,
    /// What argument `object_arg` is (`OBJ_*`), for the device and socket
    /// filters.
    pub object: u8,
    pub object_arg: u8,
}

/// What an LSM hook's `object_arg` points to: the file, directory or
/// program the call acts on (device filter), or its socket (family and
/// type filters).
pub const OBJ_NONE: u8 = 0;
/// `struct file *`.
pub const OBJ_FILE: u8 = 1;
/// `struct inode *` (the directory of an inode operation).
pub const OBJ_INODE: u8 = 2;
/// `const struct path *`.
pub const OBJ_PATH: u8 = 3;
/// `struct linux_binprm *` (its file).
pub const OBJ_BPRM: u8 = 4;
/// `struct vm_area_struct *` (its file, if any).
pub const OBJ_VMA: u8 = 5;
/// `struct socket *`.
pub const OBJ_SOCKET: u8 = 6;
/// socket_create: the family, then the type, as plain arguments.
pub const OBJ_SOCKET_ARGS: u8 = 7;

macro_rules! lsm_hooks {
    ($($konst:ident = $id:literal, $program:literal, $hook:literal, $arity:literal, $object:ident @ $arg:literal;)*) => {
        $(pub const $konst: LsmHook = LsmHook {
            program: $program, hook: $hook, arity: $arity, id: $id, object: $object, object_arg: $arg,
        };)*
        /// Every LSM hook the syscall family attaches to.
        pub const LSM_HOOKS: &[LsmHook] = &[$($konst),*];
        const LSM_PROGRAMS: &[&str] = &[$($program),*];
    };
}

lsm_hooks! {
    LSM_FILE_OPEN = 1, "lsm_file_open", "file_open", 1, OBJ_FILE @ 0;
    LSM_FILE_PERMISSION = 2, "lsm_file_permission", "file_permission", 2, OBJ_FILE @ 0;
    LSM_MMAP_FILE = 3, "lsm_mmap_file", "mmap_file", 4, OBJ_FILE @ 0;
    LSM_FILE_MPROTECT = 4, "lsm_file_mprotect", "file_mprotect", 3, OBJ_VMA @ 0;
    LSM_FILE_IOCTL = 5, "lsm_file_ioctl", "file_ioctl", 3, OBJ_FILE @ 0;
    LSM_FILE_LOCK = 6, "lsm_file_lock", "file_lock", 2, OBJ_FILE @ 0;
    LSM_FILE_FCNTL = 7, "lsm_file_fcntl", "file_fcntl", 3, OBJ_FILE @ 0;
    LSM_BPRM_CHECK = 8, "lsm_bprm_check", "bprm_check_security", 1, OBJ_BPRM @ 0;
    LSM_TASK_ALLOC = 9, "lsm_task_alloc", "task_alloc", 2, OBJ_NONE @ 0;
    LSM_TASK_KILL = 10, "lsm_task_kill", "task_kill", 4, OBJ_NONE @ 0;
    LSM_SOCKET_CREATE = 11, "lsm_socket_create", "socket_create", 4, OBJ_SOCKET_ARGS @ 0;
    LSM_SOCKET_BIND = 12, "lsm_socket_bind", "socket_bind", 3, OBJ_SOCKET @ 0;
    LSM_SOCKET_CONNECT = 13, "lsm_socket_connect", "socket_connect", 3, OBJ_SOCKET @ 0;
    LSM_SOCKET_LISTEN = 14, "lsm_socket_listen", "socket_listen", 2, OBJ_SOCKET @ 0;
    LSM_SOCKET_ACCEPT = 15, "lsm_socket_accept", "socket_accept", 2, OBJ_SOCKET @ 0;
    LSM_SOCKET_SENDMSG = 16, "lsm_socket_sendmsg", "socket_sendmsg", 3, OBJ_SOCKET @ 0;
    LSM_SOCKET_RECVMSG = 17, "lsm_socket_recvmsg", "socket_recvmsg", 4, OBJ_SOCKET @ 0;
    LSM_SOCKET_GETSOCKOPT = 18, "lsm_socket_getsockopt", "socket_getsockopt", 3, OBJ_SOCKET @ 0;
    LSM_SOCKET_SETSOCKOPT = 19, "lsm_socket_setsockopt", "socket_setsockopt", 3, OBJ_SOCKET @ 0;
    LSM_SOCKET_SHUTDOWN = 20, "lsm_socket_shutdown", "socket_shutdown", 2, OBJ_SOCKET @ 0;
    LSM_INODE_MKDIR = 21, "lsm_inode_mkdir", "inode_mkdir", 3, OBJ_INODE @ 0;
    LSM_INODE_RMDIR = 22, "lsm_inode_rmdir", "inode_rmdir", 2, OBJ_INODE @ 0;
    LSM_INODE_UNLINK = 23, "lsm_inode_unlink", "inode_unlink", 2, OBJ_INODE @ 0;
    LSM_INODE_RENAME = 24, "lsm_inode_rename", "inode_rename", 4, OBJ_INODE @ 0;
    LSM_INODE_LINK = 25, "lsm_inode_link", "inode_link", 3, OBJ_INODE @ 1;
    LSM_INODE_SYMLINK = 26, "lsm_inode_symlink", "inode_symlink", 3, OBJ_INODE @ 0;
    LSM_INODE_GETATTR = 27, "lsm_inode_getattr", "inode_getattr", 1, OBJ_PATH @ 0;
    LSM_MMAP_ADDR = 28, "lsm_mmap_addr", "mmap_addr", 1, OBJ_NONE @ 0;
}

/// raw tracepoints sys_enter and sys_exit: the latency of every syscall
/// of the watched cgroups (targets of cgroup faults), by syscall group.
pub const SYSCALL_LATENCY_ENTER: &str = "syscall_latency_enter";
pub const SYSCALL_LATENCY_EXIT: &str = "syscall_latency_exit";

/// Program names (the eBPF functions).
pub const PROGRAMS: &[&str] = &[
    SYSCALL_KPROBE,
    SYSCALL_SIGNAL,
    SYSCALL_LATENCY_ENTER,
    SYSCALL_LATENCY_EXIT,
    SYSCALL_SOCK_CREATE,
    SYSCALL_BIND4,
    SYSCALL_BIND6,
    SYSCALL_SENDMSG4,
    SYSCALL_SENDMSG6,
    SYSCALL_GETSOCKOPT,
    SYSCALL_SETSOCKOPT,
    SYSCALL_SYSCTL,
];

/// The LSM programs' names, listed apart (see [`LSM_HOOKS`]).
pub const LSM_PROGRAM_NAMES: &[&str] = LSM_PROGRAMS;

/// Map names (the eBPF statics).
pub const SYSCALL_RULES: &str = "SYSCALL_RULES";
pub const SYSCALL_LEVELS: &str = "SYSCALL_LEVELS";
pub const SYSCALL_EVENTS: &str = "SYSCALL_EVENTS";
pub const LATENCY_WATCH: &str = "LATENCY_WATCH";
pub const LATENCY_START: &str = "LATENCY_START";
pub const LATENCY_HIST: &str = "LATENCY_HIST";
pub const SYSCALL_GROUPS: &str = "SYSCALL_GROUPS";
pub const SYSCALL_OFFSETS: &str = "SYSCALL_OFFSETS";
pub const MAPS: &[&str] = &[
    SYSCALL_OFFSETS,
    SYSCALL_RULES,
    SYSCALL_LEVELS,
    SYSCALL_EVENTS,
    LATENCY_WATCH,
    LATENCY_START,
    LATENCY_HIST,
    SYSCALL_GROUPS,
];

/// Entries of [`SYSCALL_LEVELS`]: the depths of rule targets, and of
/// watched cgroups.
pub const LEVELS_RULES: u32 = 0;
pub const LEVELS_WATCHES: u32 = 1;

/// Cgroups whose syscall latency is measured at once.
pub const MAX_WATCHES: u32 = 256;
/// Syscall groups of the histogram (0: every syscall no group lists).
pub const LATENCY_GROUPS: u32 = 8;
/// Histogram buckets: bucket `k` counts calls of at most `2^(10+k)` ns
/// (1.024 µs, 2.048 µs ... 2.1 s); the last one every longer call.
pub const LATENCY_BUCKETS: u32 = 23;
/// Per (watch, group): the buckets, then the sum of latencies in ns.
pub const LATENCY_SLOTS: u32 = LATENCY_BUCKETS + 1;
/// Syscall numbers [`SYSCALL_GROUPS`] maps (x86_64 has fewer).
pub const MAX_SYSCALL_NR: u32 = 512;

/// A call in flight in a watched cgroup (value of [`LATENCY_START`], by
/// thread).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatencyStart {
    pub at_ns: u64,
    pub watch: u32,
    pub group: u32,
}

/// Maximum number of rules.
pub const MAX_SYSCALL_RULES: u32 = MAX_FAULTS;

/// Longest `path` prefix a rule can hold.
pub const PATH_PREFIX_MAX: usize = 128;

/// Distinct cgroup depths that targets may sit at, at once.
pub const MAX_LEVELS: usize = 15;

/// The rule's action: the call fails with `errno`.
pub const ACTION_ERROR: u32 = 0;
/// The rule's action: the calling task gets `signal` (the call runs).
pub const ACTION_SIGNAL: u32 = 1;

/// SIGSTOP (x86_64): a rule sending it stops the caller, and the daemon
/// resumes it from the rule's ring-buffer record.
pub const SIGSTOP: u32 = 19;
/// What a program sends to take back a SIGSTOP it could not record.
pub const SIGCONT: u32 = 18;

/// Which program family serves a rule (a syscall reachable by several
/// programs is served by one, so it never fires twice).
pub const BACKEND_KPROBE: u8 = 1;
pub const BACKEND_LSM: u8 = 2;
pub const BACKEND_CGROUP: u8 = 3;
pub const BACKEND_TRACEPOINT: u8 = 4;

/// `path_arg` of a rule without a path filter.
pub const NO_PATH_ARG: u8 = u8::MAX;

/// Pseudo syscall numbers for cgroup hooks that cannot tell which syscall
/// they run in: sysctl reads (read, pread64, readv...) and writes.
pub const NR_SYSCTL_READ: u32 = 0x1000_0000;
pub const NR_SYSCTL_WRITE: u32 = 0x1000_0001;
/// UDP sendmsg hooks, whichever of sendto, sendmsg and sendmmsg called.
pub const NR_UDP_SEND: u32 = 0x1000_0002;

/// Key of [`SYSCALL_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SyscallKey {
    /// cgroup2 id of the target (its descendants match too).
    pub cgroup_id: u64,
    /// x86_64 syscall number, or one of the `NR_*` pseudo numbers.
    pub nr: u32,
    /// `ACTION_ERROR` or `ACTION_SIGNAL`.
    pub action: u32,
}

/// A syscall fault rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallRule {
    /// Fault slot: index into the stats and trigger maps.
    pub slot: u32,
    /// Positive errno (`ACTION_ERROR`).
    pub errno: u32,
    /// `BACKEND_*`: the program family that serves this rule.
    pub backend: u8,
    /// Signal number (`ACTION_SIGNAL`).
    pub signal: u8,
    /// Which syscall argument is the path (`NO_PATH_ARG`: no path filter).
    pub path_arg: u8,
    /// Length of `path` (0: any path).
    pub path_len: u8,
    /// Inclusive port range for socket hooks that see an address
    /// (`[0, 65535]`: any).
    pub ports: [u16; 2],
    /// 1: deliver the signal to the whole process, 0: the calling thread.
    pub whole_process: u8,
    /// LSM rules: the one hook that serves it ([`LsmHook::id`]), so a
    /// syscall that runs several hooks fires once; 0: any.
    pub hook: u8,
    /// Socket family filter (`AF_*`; 0: any).
    pub family: u16,
    /// Address filter for socket hooks that see an address.
    pub addr: Prefix,
    /// Path prefix, matched against the path the call passes (or the
    /// sysctl name, for sysctl rules). A prefix matches whole components:
    /// `/data` matches `/data` and `/data/x`, not `/database`.
    pub path: [u8; PATH_PREFIX_MAX],
    /// Device filter: the kernel's `dev_t` of the filesystem holding the
    /// file the call acts on (`major << 20 | minor`), if `has_device`.
    pub device: u32,
    pub has_device: u8,
    /// Socket type filter (`SOCK_*`, flags masked off; 0: any).
    pub sock_type: u8,
    /// kprobe rules with a device filter: which syscall argument is the
    /// file descriptor (`NO_PATH_ARG`: none).
    pub fd_arg: u8,
    /// kprobe rules with a socket filter: 1 when the family and type are
    /// the call's first two arguments (socket, socketpair).
    pub sock_args: u8,
    /// LSM rules on a file: 1 to match only I/O that can reach a disk:
    /// block device nodes, and regular files of a block-backed filesystem
    /// (`s_bdev` set; not pipes, sockets, ttys, tmpfs or /proc).
    pub disk_only: u8,
    pub _pad: [u8; 7],
    /// LSM rules on a file: only files under the directory with this
    /// inode number (on the filesystem `device` names; 0: anywhere), found
    /// by walking the file's dentry up to its filesystem's root.
    pub under_ino: u64,
    pub trigger: Trigger,
}

impl Default for SyscallRule {
    fn default() -> Self {
        Self {
            slot: 0,
            errno: 0,
            backend: 0,
            signal: 0,
            path_arg: NO_PATH_ARG,
            path_len: 0,
            ports: [0, u16::MAX],
            whole_process: 0,
            hook: 0,
            family: 0,
            addr: Prefix::ANY,
            path: [0; PATH_PREFIX_MAX],
            device: 0,
            has_device: 0,
            sock_type: 0,
            fd_arg: NO_PATH_ARG,
            sock_args: 0,
            disk_only: 0,
            _pad: [0; 7],
            under_ino: 0,
            trigger: Trigger::default(),
        }
    }
}

/// Where the fields the device and socket filters read sit in this
/// kernel's structs (byte offsets, from its BTF; value of
/// [`SYSCALL_OFFSETS`]). Rust eBPF has no CO-RE relocations, so the
/// daemon computes them and the programs read at these offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 once the daemon has written them.
    pub ready: u32,
    pub file_inode: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `inode.i_mode` (u16) and `inode.i_rdev` (u32): a block device
    /// node's I/O goes to the device it names, not to its filesystem.
    pub inode_mode: u32,
    pub inode_rdev: u32,
    /// For the `under_ino` walk: `file.f_path`, `dentry.d_parent`,
    /// `dentry.d_inode`, `inode.i_ino`.
    pub file_path: u32,
    pub dentry_parent: u32,
    pub dentry_inode: u32,
    pub inode_ino: u32,
    /// `super_block.s_bdev`: set on block-backed filesystems.
    pub sb_bdev: u32,
    pub _pad: u32,
    pub path_dentry: u32,
    pub dentry_sb: u32,
    pub bprm_file: u32,
    pub vma_file: u32,
    pub socket_type: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
}

/// The cgroup depths targets sit at, deepest first (value of
/// [`SYSCALL_LEVELS`]); programs look up the caller's ancestor at each.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Levels {
    pub count: u32,
    pub levels: [u32; MAX_LEVELS],
}

/// What a signal rule reports when it fires (ring buffer record), so the
/// daemon can resume a task it stopped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalEvent {
    pub slot: u32,
    /// Thread group id (the process) and thread id of the caller.
    pub tgid: u32,
    pub tid: u32,
    pub signal: u32,
    /// `bpf_ktime_get_ns()` when it fired.
    pub at_ns: u64,
    /// How long this stop lasts (0: the pause of the rule's fault); the
    /// block family's io_delay draws one per I/O.
    pub delay_ns: u64,
    /// 1 when the stop was counted against its rule's limit of tasks held
    /// at once (io_delay), so the daemon counts it as ended when it
    /// continues the task.
    pub counted: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data with explicit padding and no invalid
    // bit patterns.
    unsafe impl aya::Pod for super::SyscallKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SyscallRule {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Levels {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SignalEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LatencyStart {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelOffsets {}
}

// The rule is shared with the eBPF programs byte for byte: no implicit
// padding anywhere (Trigger starts 8-aligned).
const _: () = assert!(core::mem::size_of::<SyscallRule>() == 192 + 40);
