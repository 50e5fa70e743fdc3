//! Network namespaces: running code inside one (on a scoped thread, so
//! the daemon's own threads never move), and finding a device there.

use std::{
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    sync::Arc,
};

use crate::{
    error::Error,
    spec::target::{IfName, Netns},
};

/// Runs `f` with the calling thread's network namespace set to `netns`
/// (a fresh thread, so the daemon's own threads never change namespace).
/// Netlink sockets, interface lookups, link creation by ifindex, child
/// processes and the drop of netlink-backed values all act in the
/// namespace of the thread that makes them.
pub fn in_netns<R: Send>(netns: Option<&File>, f: impl FnOnce() -> R + Send) -> std::io::Result<R> {
    let Some(ns) = netns else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("netns worker thread panicked")))
    })
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
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> std::io::Result<R> {
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

/// Opens the namespace and finds the device's index there.
pub fn resolve_device(
    name: &IfName,
    netns: Option<&Netns>,
) -> Result<(NsHandle, DeviceKey), Error> {
    let (file, path) = match netns {
        Some(ns) => {
            let path = ns.path();
            let file = File::open(&path).map_err(|e| {
                Error::TargetNotFound(format!(
                    "network namespace {} not found ({}: {e})",
                    ns.as_str(),
                    path.display()
                ))
            })?;
            (Some(file), path)
        }
        None => (None, "/proc/self/ns/net".into()),
    };
    let meta = match &file {
        Some(f) => f.metadata(),
        None => std::fs::metadata(&path),
    }
    .map_err(|e| Error::TargetNotFound(format!("{}: {e}", path.display())))?;
    let where_ = netns.map_or_else(
        || "the daemon's network namespace".to_string(),
        |ns| format!("network namespace {}", ns.as_str()),
    );
    let lookup = in_netns(file.as_ref(), || {
        nix::net::if_::if_nametoindex(name.as_str()).map_err(|_| device_names().join(", "))
    });
    let ifindex = match lookup {
        Ok(Ok(i)) => i,
        Ok(Err(names)) => {
            return Err(Error::TargetNotFound(format!(
                "no interface {:?} in {where_} (it has: {names})",
                name.as_str()
            )));
        }
        Err(e) => return Err(Error::TargetNotFound(format!("entering {where_}: {e}"))),
    };
    let key = DeviceKey {
        netns_dev: meta.dev(),
        netns_ino: meta.ino(),
        ifindex,
    };
    let handle = NsHandle {
        file: file.map(Arc::new),
        path: netns.map(|ns| ns.path().display().to_string()),
    };
    Ok((handle, key))
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
