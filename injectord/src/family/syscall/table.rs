//! What the daemon knows about each x86_64 syscall: its number, which
//! argument is a path, and which LSM hook and cgroup hook (if any) see it.

use std::{fmt, str::FromStr};

use common::{
    LSM_BPRM_CHECK, LSM_FILE_FCNTL, LSM_FILE_IOCTL, LSM_FILE_LOCK, LSM_FILE_MPROTECT,
    LSM_FILE_OPEN, LSM_FILE_PERMISSION, LSM_INODE_GETATTR, LSM_INODE_LINK, LSM_INODE_MKDIR,
    LSM_INODE_RENAME, LSM_INODE_RMDIR, LSM_INODE_SYMLINK, LSM_INODE_UNLINK, LSM_MMAP_FILE,
    LSM_SOCKET_ACCEPT, LSM_SOCKET_BIND, LSM_SOCKET_CONNECT, LSM_SOCKET_CREATE,
    LSM_SOCKET_GETSOCKOPT, LSM_SOCKET_LISTEN, LSM_SOCKET_RECVMSG, LSM_SOCKET_SENDMSG,
    LSM_SOCKET_SETSOCKOPT, LSM_SOCKET_SHUTDOWN, LSM_TASK_ALLOC, LSM_TASK_KILL,
};
use injector_common::syscall::{self as common, LsmHook};
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};
use syscalls::Sysno;

/// An x86_64 syscall, by its name in the kernel's syscall table
/// (`openat`, `uname`, `getrandom`...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Syscall(Sysno);

impl Syscall {
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    pub fn nr(self) -> u32 {
        self.0.id() as u32
    }

    /// The argument (0-based) that is a path, for the `path` filter.
    pub fn path_arg(self) -> Option<u8> {
        PATH_ARGS
            .iter()
            .find(|(n, _)| *n == self.name())
            .map(|(_, a)| *a)
    }

    /// The argument (0-based) that is the file descriptor the call acts
    /// on, for the `device` filter at the syscall's entry.
    pub fn fd_arg(self) -> Option<u8> {
        FD_ARGS
            .iter()
            .find(|(names, _)| names.contains(&self.name()))
            .map(|(_, a)| *a)
    }

    /// The LSM hook that runs inside this syscall (and tells which
    /// syscall it is by the caller's registers).
    pub fn lsm_hook(self) -> Option<LsmHook> {
        LSM.iter()
            .find(|(names, _)| names.contains(&self.name()))
            .map(|(_, h)| *h)
    }

    /// The cgroup hook that runs inside this syscall, if any.
    pub fn cgroup_hook(self) -> Option<CgroupHook> {
        Some(match self.name() {
            "socket" => CgroupHook::SockCreate,
            "bind" => CgroupHook::Bind,
            "connect" => CgroupHook::Connect,
            "sendto" | "sendmsg" | "sendmmsg" => CgroupHook::UdpSend,
            "getsockopt" => CgroupHook::Getsockopt,
            "setsockopt" => CgroupHook::Setsockopt,
            "read" | "pread64" | "readv" | "preadv" | "preadv2" => CgroupHook::SysctlRead,
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => CgroupHook::SysctlWrite,
            _ => return None,
        })
    }

    /// The group it is listed under in `capabilities`.
    pub fn group(self) -> &'static str {
        GROUPS
            .iter()
            .find(|(_, names)| names.contains(&self.name()))
            .map_or("syscalls_misc", |(g, _)| g)
    }
}

impl fmt::Display for Syscall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Syscall {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Sysno::iter()
            .find(|n| n.name() == s)
            .map(Self)
            .ok_or_else(|| {
                format!(
                    "unknown syscall {s:?}: expected an x86_64 syscall name as in the kernel's syscall table, e.g. \"openat\", \"read\", \"connect\", \"getrandom\""
                )
            })
    }
}

impl Serialize for Syscall {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Syscall {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(de::Error::custom)
    }
}

/// The cgroup programs that can refuse a syscall, on every kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CgroupHook {
    SockCreate,
    Bind,
    /// The connect family's own programs (shared with `connect_error`).
    Connect,
    /// UDP only: the hook runs for datagram sockets.
    UdpSend,
    Getsockopt,
    Setsockopt,
    /// Reads and writes of /proc/sys files only.
    SysctlRead,
    SysctlWrite,
}

impl CgroupHook {
    /// The syscall number (or pseudo number) rules are keyed by.
    pub fn key_nr(self, syscall: Syscall) -> u32 {
        match self {
            Self::UdpSend => common::NR_UDP_SEND,
            Self::SysctlRead => common::NR_SYSCTL_READ,
            Self::SysctlWrite => common::NR_SYSCTL_WRITE,
            _ => syscall.nr(),
        }
    }

    /// The other syscalls the same rule reaches, since the hook cannot
    /// tell them apart.
    pub fn also_hits(self, syscall: Syscall) -> Vec<&'static str> {
        let all: &[&str] = match self {
            Self::UdpSend => &["sendto", "sendmsg", "sendmmsg"],
            Self::SysctlRead => &["read", "pread64", "readv", "preadv", "preadv2"],
            Self::SysctlWrite => &["write", "pwrite64", "writev", "pwritev", "pwritev2"],
            _ => &[],
        };
        all.iter()
            .copied()
            .filter(|n| *n != syscall.name())
            .collect()
    }

    pub fn describe(self) -> &'static str {
        match self {
            Self::SockCreate => "cgroup/sock_create",
            Self::Bind => "cgroup/bind4+bind6",
            Self::Connect => "cgroup/connect4+connect6",
            Self::UdpSend => "cgroup/sendmsg4+sendmsg6 (UDP)",
            Self::Getsockopt => "cgroup/getsockopt",
            Self::Setsockopt => "cgroup/setsockopt",
            Self::SysctlRead | Self::SysctlWrite => "cgroup/sysctl",
        }
    }
}

/// Syscalls whose argument names a path (0-based index).
const PATH_ARGS: &[(&str, u8)] = &[
    ("open", 0),
    ("creat", 0),
    ("openat", 1),
    ("openat2", 1),
    ("execve", 0),
    ("execveat", 1),
    ("mkdir", 0),
    ("mkdirat", 1),
    ("rmdir", 0),
    ("unlink", 0),
    ("unlinkat", 1),
    ("rename", 0),
    ("renameat", 1),
    ("renameat2", 1),
    ("link", 0),
    ("linkat", 1),
    ("symlink", 1),
    ("symlinkat", 2),
    ("stat", 0),
    ("lstat", 0),
    ("newfstatat", 1),
    ("statx", 1),
    ("access", 0),
    ("faccessat", 1),
    ("faccessat2", 1),
    ("chdir", 0),
    ("chmod", 0),
    ("fchmodat", 1),
    ("chown", 0),
    ("lchown", 0),
    ("fchownat", 1),
    ("truncate", 0),
    ("readlink", 0),
    ("readlinkat", 1),
    ("mknod", 0),
    ("mknodat", 1),
    ("utimensat", 1),
    ("getxattr", 0),
    ("lgetxattr", 0),
    ("setxattr", 0),
    ("lsetxattr", 0),
    ("listxattr", 0),
    ("removexattr", 0),
    ("statfs", 0),
    ("mount", 1),
    ("umount2", 0),
    ("chroot", 0),
    ("inotify_add_watch", 1),
];

/// Syscalls that act on the file behind a descriptor argument (0-based).
const FD_ARGS: &[(&[&str], u8)] = &[
    (
        &[
            "read",
            "write",
            "pread64",
            "pwrite64",
            "readv",
            "writev",
            "preadv",
            "pwritev",
            "preadv2",
            "pwritev2",
            "fsync",
            "fdatasync",
            "sync_file_range",
            "syncfs",
            "ftruncate",
            "fallocate",
            "fadvise64",
            "readahead",
            "lseek",
            "getdents64",
            "fstat",
            "fstatfs",
            "fchmod",
            "fchown",
            "fgetxattr",
            "fsetxattr",
            "ioctl",
            "fcntl",
            "flock",
            "close",
        ],
        0,
    ),
    (&["mmap"], 4),
];

/// Which LSM hook runs inside which syscalls.
const LSM: &[(&[&str], LsmHook)] = &[
    (&["open", "openat", "openat2", "creat"], LSM_FILE_OPEN),
    (
        &[
            "read",
            "pread64",
            "readv",
            "preadv",
            "preadv2",
            "write",
            "pwrite64",
            "writev",
            "pwritev",
            "pwritev2",
            "sendfile",
            "copy_file_range",
            "splice",
        ],
        LSM_FILE_PERMISSION,
    ),
    (&["mmap"], LSM_MMAP_FILE),
    (&["mprotect", "pkey_mprotect"], LSM_FILE_MPROTECT),
    (&["ioctl"], LSM_FILE_IOCTL),
    (&["flock"], LSM_FILE_LOCK),
    (&["fcntl"], LSM_FILE_FCNTL),
    (&["execve", "execveat"], LSM_BPRM_CHECK),
    (&["clone", "clone3", "fork", "vfork"], LSM_TASK_ALLOC),
    (
        &[
            "kill",
            "tkill",
            "tgkill",
            "rt_sigqueueinfo",
            "rt_tgsigqueueinfo",
        ],
        LSM_TASK_KILL,
    ),
    (&["socket", "socketpair"], LSM_SOCKET_CREATE),
    (&["bind"], LSM_SOCKET_BIND),
    (&["connect"], LSM_SOCKET_CONNECT),
    (&["listen"], LSM_SOCKET_LISTEN),
    (&["accept", "accept4"], LSM_SOCKET_ACCEPT),
    (&["sendto", "sendmsg", "sendmmsg"], LSM_SOCKET_SENDMSG),
    (&["recvfrom", "recvmsg", "recvmmsg"], LSM_SOCKET_RECVMSG),
    (&["getsockopt"], LSM_SOCKET_GETSOCKOPT),
    (&["setsockopt"], LSM_SOCKET_SETSOCKOPT),
    (&["shutdown"], LSM_SOCKET_SHUTDOWN),
    (&["mkdir", "mkdirat"], LSM_INODE_MKDIR),
    (&["rmdir"], LSM_INODE_RMDIR),
    (&["unlink", "unlinkat"], LSM_INODE_UNLINK),
    (&["rename", "renameat", "renameat2"], LSM_INODE_RENAME),
    (&["link", "linkat"], LSM_INODE_LINK),
    (&["symlink", "symlinkat"], LSM_INODE_SYMLINK),
    (
        &["stat", "lstat", "fstat", "newfstatat", "statx"],
        LSM_INODE_GETATTR,
    ),
];

/// The groups `capabilities` lists, with a few members each: the backend
/// of a group is the one its first member gets.
pub const GROUPS: &[(&str, &[&str])] = &[
    ("syscalls_file", &["openat", "open", "creat", "openat2"]),
    (
        "syscalls_io",
        &[
            "read", "write", "pread64", "pwrite64", "readv", "writev", "sendfile",
        ],
    ),
    (
        "syscalls_memory",
        &["mmap", "mprotect", "brk", "munmap", "mremap"],
    ),
    (
        "syscalls_process",
        &[
            "execve",
            "clone",
            "clone3",
            "fork",
            "vfork",
            "kill",
            "wait4",
            "exit_group",
        ],
    ),
    (
        "syscalls_socket",
        &[
            "socket",
            "bind",
            "connect",
            "listen",
            "accept",
            "accept4",
            "sendto",
            "sendmsg",
            "recvfrom",
            "recvmsg",
            "getsockopt",
            "setsockopt",
            "shutdown",
        ],
    ),
    (
        "syscalls_filesystem",
        &[
            "mkdir",
            "mkdirat",
            "unlink",
            "unlinkat",
            "rmdir",
            "rename",
            "renameat2",
            "link",
            "symlink",
            "stat",
            "newfstatat",
            "statx",
        ],
    ),
    (
        "syscalls_misc",
        &["getrandom", "uname", "ioctl", "fcntl", "flock"],
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let openat: Syscall = "openat".parse().unwrap();
        assert_eq!(openat.nr(), 257);
        assert_eq!(openat.path_arg(), Some(1));
        assert_eq!(openat.lsm_hook(), Some(LSM_FILE_OPEN));
        assert!(
            "opnat"
                .parse::<Syscall>()
                .unwrap_err()
                .contains("unknown syscall")
        );
        let uname: Syscall = "uname".parse().unwrap();
        assert_eq!((uname.lsm_hook(), uname.cgroup_hook()), (None, None));
    }

    #[test]
    fn every_table_name_is_a_syscall() {
        let names = PATH_ARGS
            .iter()
            .map(|(n, _)| *n)
            .chain(LSM.iter().flat_map(|(n, _)| n.iter().copied()))
            .chain(FD_ARGS.iter().flat_map(|(n, _)| n.iter().copied()))
            .chain(GROUPS.iter().flat_map(|(_, n)| n.iter().copied()));
        for n in names {
            assert!(n.parse::<Syscall>().is_ok(), "{n}");
        }
    }
}
