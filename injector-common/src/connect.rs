//! connect() errors: cgroup sock_addr programs that refuse the call with a
//! chosen errno.

use crate::{MAX_FAULTS, Prefix, Trigger};

/// Program names (the eBPF functions).
pub const CONNECT4: &str = "connect4";
pub const CONNECT6: &str = "connect6";
pub const PROGRAMS: &[&str] = &[CONNECT4, CONNECT6];

/// Map names (the eBPF statics).
pub const CONNECT_RULES: &str = "CONNECT_RULES";
pub const MAPS: &[&str] = &[CONNECT_RULES];

/// Maximum number of `(attached cgroup, port)` rules in the connect map.
pub const MAX_CONNECT_RULES: u32 = MAX_FAULTS;

/// Key of the connect rule map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConnectKey {
    /// cgroup2 id (inode number) of the targeted cgroup.
    pub cgroup_id: u64,
    /// Destination port in host byte order; 0 matches any port.
    pub port: u16,
    pub _pad: [u8; 6],
}

impl ConnectKey {
    pub const fn new(cgroup_id: u64, port: u16) -> Self {
        Self {
            cgroup_id,
            port,
            _pad: [0; 6],
        }
    }
}

/// A connect() fault rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectRule {
    /// Fault slot: index into [`FaultStats`] and [`TriggerState`] maps.
    pub slot: u32,
    /// Positive errno returned by connect().
    pub errno: u32,
    pub dst: Prefix,
    /// Inclusive destination port range (`[0, 65535]`: any).
    pub ports: [u16; 2],
    pub trigger: Trigger,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data with explicit padding and no invalid
    // bit patterns.
    unsafe impl aya::Pod for super::ConnectKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ConnectRule {}
}
