//! Network namespaces: running code inside one (the calling thread moves
//! in and back), and finding a device there.

use std::{
    fs::File,
    os::{
        fd::{AsFd as _, AsRawFd as _},
        unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::Path,
    sync::Arc,
};

use crate::{
    error::Error,
    spec::target::{IfName, Netns},
};

/// Runs `f` with the calling thread's network namespace set to `netns`.
/// Netlink sockets, interface lookups, link creation by ifindex, child
/// processes and the drop of netlink-backed values all act in the
/// namespace of the thread that makes them. See [`visit_netns`].
pub fn in_netns<R>(netns: Option<&File>, f: impl FnOnce() -> R) -> std::io::Result<R> {
    visit_netns(netns, f)
}

/// Runs `f` with the calling thread itself moved into `netns` and back:
/// two setns(2) calls. (A fresh thread per call, as before, cost a quarter
/// of a millisecond of an inject's round trip on this project's VMs.) `f`
/// must not leave anything behind that depends on the thread's namespace
/// (a netlink socket kept open, say), since the thread goes on serving
/// other work afterwards: what it makes there it drops there. If the
/// thread cannot get back into its own namespace the process aborts:
/// every later netlink call on this thread would act on the wrong
/// namespace.
pub fn visit_netns<R>(netns: Option<&File>, f: impl FnOnce() -> R) -> std::io::Result<R> {
    let Some(ns) = netns else {
        return Ok(f());
    };
    let home = File::open("/proc/thread-self/ns/net")?;
    nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(std::io::Error::from)?;
    /// Moves the thread home on every way out of `f`, panics included.
    struct Home(File);
    impl Drop for Home {
        fn drop(&mut self) {
            if let Err(e) = nix::sched::setns(self.0.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
            {
                tracing::error!(error = %e, "a thread could not return to the daemon's network namespace");
                std::process::abort();
            }
        }
    }
    let _home = Home(home);
    Ok(f())
}

/// An opened namespace (`None`: the daemon's own) and the path it was
/// opened from (for the reaper, which opens it again).
#[derive(Clone, Debug, Default)]
pub struct NsHandle {
    pub file: Option<Arc<File>>,
    pub path: Option<String>,
}

impl NsHandle {
    pub fn file(&self) -> Option<&File> {
        self.file.as_deref()
    }

    /// Runs `f` inside the namespace; see [`in_netns`].
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> std::io::Result<R> {
        in_netns(self.file(), f)
    }
}

/// A network device, named by its namespace (device and inode of the
/// namespace file) and its index there: ifindexes repeat across
/// namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DeviceKey {
    pub netns_dev: u64,
    pub netns_ino: u64,
    pub ifindex: u32,
}

/// Why a path is not a network namespace the daemon can enter.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("{path}: {source}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Not a namespace file at all (a FIFO, a directory, a plain file...).
    #[error(
        "{path} is {kind}, not a namespace file (nsfs); expected a name under /run/netns (made by `ip netns add`) or a path such as /proc/PID/ns/net"
    )]
    NotNamespace { path: String, kind: &'static str },
    /// A namespace, of another type.
    #[error("{path} is a {kind} namespace, not a network namespace (use /proc/PID/ns/net)")]
    OtherNamespace { path: String, kind: &'static str },
}

impl NetnsError {
    fn into_error(self) -> Error {
        match &self {
            Self::Open { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::TargetNotFound(format!("network namespace not found: {self}"))
            }
            Self::Open { .. } => Error::TargetNotFound(self.to_string()),
            Self::NotNamespace { .. } | Self::OtherNamespace { .. } => {
                Error::InvalidValue(self.to_string())
            }
        }
    }
}

/// Opens a network namespace file, checking what it is first.
///
/// A path is not opened for reading until it is known to be an nsfs file:
/// opening a FIFO blocks until a writer comes, and opening a device may do
/// anything. So the path is opened with O_PATH (which never blocks and
/// runs no driver code), that descriptor's type and filesystem are
/// checked, and only then the same inode is opened for real through
/// /proc/self/fd, so no rename in between can swap the file.
pub fn open_netns(path: &Path) -> Result<File, NetnsError> {
    let shown = || path.display().to_string();
    let open_err = |source| NetnsError::Open {
        path: shown(),
        source,
    };
    let probe = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)
        .map_err(open_err)?;
    let meta = probe.metadata().map_err(open_err)?;
    let ft = meta.file_type();
    let kind = if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_socket() {
        Some("a socket")
    } else if ft.is_char_device() {
        Some("a character device")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_dir() {
        Some("a directory")
    } else {
        None
    };
    if let Some(kind) = kind {
        return Err(NetnsError::NotNamespace {
            path: shown(),
            kind,
        });
    }
    let fs = nix::sys::statfs::fstatfs(&probe).map_err(|e| open_err(e.into()))?;
    if fs.filesystem_type() != nix::sys::statfs::NSFS_MAGIC {
        return Err(NetnsError::NotNamespace {
            path: shown(),
            kind: "a plain file (for a name under /run/netns: is the namespace still mounted?)",
        });
    }
    let file = File::open(format!("/proc/self/fd/{}", probe.as_raw_fd())).map_err(open_err)?;
    // NS_GET_NSTYPE (Linux 4.11+). setns would refuse another type with a
    // bare EINVAL; this names it.
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    // SAFETY: the ioctl takes no argument and the descriptor is open.
    let nstype = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if nstype >= 0 && nstype != libc::CLONE_NEWNET {
        let kind = match nstype {
            libc::CLONE_NEWNS => "mount",
            libc::CLONE_NEWUTS => "UTS",
            libc::CLONE_NEWIPC => "IPC",
            libc::CLONE_NEWUSER => "user",
            libc::CLONE_NEWPID => "PID",
            libc::CLONE_NEWCGROUP => "cgroup",
            0x80 => "time",
            _ => "non-network",
        };
        return Err(NetnsError::OtherNamespace {
            path: shown(),
            kind,
        });
    }
    Ok(file)
}

/// A device found in a namespace.
#[derive(Debug)]
pub struct Device {
    pub ns: NsHandle,
    pub key: DeviceKey,
    /// Its MTU when it was found: the largest IP packet it sends or
    /// receives (without GSO).
    pub mtu: u32,
    /// A veth device (ethtool's driver name).
    pub veth: bool,
}

/// Opens the namespace and finds the device's index and MTU there. Errors
/// name the field at fault: `target.netns` or `target.interface`.
pub fn resolve_device(name: &IfName, netns: Option<&Netns>) -> Result<Device, Error> {
    const NETNS: &str = "target.netns";
    const INTERFACE: &str = "target.interface";
    let (file, path) = match netns {
        Some(ns) => {
            let path = ns.path();
            let file = open_netns(&path).map_err(|e| e.into_error().at(NETNS))?;
            (Some(file), path)
        }
        None => (None, "/proc/self/ns/net".into()),
    };
    let meta = match &file {
        Some(f) => f.metadata(),
        None => std::fs::metadata(&path),
    }
    .map_err(|e| Error::io(path.display().to_string(), e).at(NETNS))?;
    let where_ = netns.map_or_else(
        || "the daemon's network namespace".to_string(),
        |ns| format!("network namespace {}", ns.as_str()),
    );
    let lookup = in_netns(file.as_ref(), || {
        let Ok(index) = nix::net::if_::if_nametoindex(name.as_str()) else {
            return Err(device_names().join(", "));
        };
        Ok((index, mtu_of(name), driver_of(name)))
    });
    let (ifindex, mtu, driver) = match lookup {
        Ok(Ok(found)) => found,
        Ok(Err(names)) => {
            return Err(Error::TargetNotFound(format!(
                "no interface \"{}\" in {where_} (it has: {names})",
                name.as_str()
            ))
            .at(INTERFACE));
        }
        Err(e) => return Err(Error::io(format!("entering {where_}"), e).at(NETNS)),
    };
    let mtu = mtu.map_err(|e| {
        Error::io(
            format!("reading the MTU of {} in {where_}", name.as_str()),
            e,
        )
        .at(INTERFACE)
    })?;
    let key = DeviceKey {
        netns_dev: meta.dev(),
        netns_ino: meta.ino(),
        ifindex,
    };
    let ns = NsHandle {
        file: file.map(Arc::new),
        path: netns.map(|ns| ns.path().display().to_string()),
    };
    // A device without ethtool support (lo, some virtual ones) is no veth.
    let veth = driver.is_ok_and(|d| d == "veth");
    Ok(Device { ns, key, mtu, veth })
}

/// The driver of a device of the calling thread's namespace, as ethtool
/// names it (ETHTOOL_GDRVINFO).
fn driver_of(name: &IfName) -> std::io::Result<String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    /// `struct ethtool_drvinfo` (linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: both are plain data; all zeroes is a valid value.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    // SAFETY: as above.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // IfName is at most 15 bytes, so the name stays NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL reads the ifreq's name and the command and fills
    // the ethtool_drvinfo it points at; both live across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let len = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// The MTU of a device of the calling thread's namespace (SIOCGIFMTU on a
/// socket made here: a socket belongs to the namespace it was made in).
fn mtu_of(name: &IfName) -> std::io::Result<u32> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // IfName is at most 15 bytes, so the name stays NUL-terminated.
    for (dst, src) in req.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFMTU reads ifr_name and writes ifr_mtu of the ifreq
    // it is given, which lives across the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU as _, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFMTU filled the union's MTU member.
    let mtu = unsafe { req.ifr_ifru.ifru_mtu };
    u32::try_from(mtu).map_err(|_| std::io::Error::other(format!("negative MTU {mtu}")))
}

/// The devices of the calling thread's namespace.
pub fn device_names() -> Vec<String> {
    nix::net::if_::if_nameindex()
        .map(|l| {
            l.iter()
                .map(|i| i.name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_network_namespace_files_are_opened() {
        assert!(open_netns(Path::new("/proc/self/ns/net")).is_ok());
        let dir = std::env::temp_dir().join(format!("injectord-netns-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let plain = dir.join("plain");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        std::fs::write(&plain, "x").unwrap();
        // A FIFO without a writer: opening it for reading would block.
        let kind = |p: &Path| match open_netns(p) {
            Err(NetnsError::NotNamespace { kind, .. }) => kind,
            other => panic!("{}: {other:?}", p.display()),
        };
        assert_eq!(kind(&fifo), "a FIFO");
        assert_eq!(kind(&dir), "a directory");
        assert!(kind(&plain).starts_with("a plain file"));
        assert!(matches!(
            open_netns(Path::new("/proc/self/ns/mnt")),
            Err(NetnsError::OtherNamespace { kind: "mount", .. })
        ));
        assert!(matches!(
            open_netns(&dir.join("missing")),
            Err(NetnsError::Open { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
