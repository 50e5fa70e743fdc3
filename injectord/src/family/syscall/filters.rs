//! The values of syscall_error's filters, parsed so that an impossible
//! one never reaches a rule: a path prefix, a device (`"major:minor"`),
//! a socket family and a socket type.

use std::{fmt, str::FromStr};

use injector_common::syscall::PATH_PREFIX_MAX;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// A path prefix: non-empty, at most [`PATH_PREFIX_MAX`] bytes, no NUL.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct PathPrefix(pub(crate) String);

impl<'de> Deserialize<'de> for PathPrefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("a path prefix must not be empty"));
        }
        if s.len() > PATH_PREFIX_MAX {
            return Err(de::Error::custom(format!(
                "a path prefix is at most {PATH_PREFIX_MAX} bytes; this one has {}",
                s.len()
            )));
        }
        if s.contains('\0') {
            return Err(de::Error::custom("a path prefix must not contain NUL"));
        }
        Ok(Self(s))
    }
}

/// A filesystem's device, `"major:minor"` as `stat -c %Hd:%Ld` or
/// /proc/self/mountinfo show it (`"7:0"` a loop device, `"0:52"` a tmpfs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    major: u32,
    minor: u32,
}

impl Device {
    /// A device from `stat`'s numbers (`st_rdev`, `st_dev`).
    pub fn from_dev_t(dev: libc::dev_t) -> Self {
        Self {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }

    /// The kernel's internal encoding, which `super_block.s_dev` holds
    /// (`MKDEV`: 12 bits of major above 20 of minor).
    pub fn kernel_dev(self) -> u32 {
        (self.major << 20) | self.minor
    }
}

impl FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not a device: expected \"major:minor\", e.g. \"7:0\" (see stat -c %Hd:%Ld FILE)"
            )
        };
        let (major, minor) = s.split_once(':').ok_or_else(bad)?;
        let major: u32 = major.parse().map_err(|_| bad())?;
        let minor: u32 = minor.parse().map_err(|_| bad())?;
        if major >= 1 << 12 || minor >= 1 << 20 {
            return Err(format!(
                "{s:?} is not a device: majors are below 4096 and minors below 1048576"
            ));
        }
        Ok(Self { major, minor })
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

impl Serialize for Device {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Device {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// Declares a closed set of names for kernel constants, with serde.
macro_rules! named_constants {
    ($(#[$doc:meta])* $ty:ident, $what:literal { $($variant:ident = $name:literal => $value:expr,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $ty {
            $(#[serde(rename = $name)] $variant,)*
        }

        impl $ty {
            /// The kernel's number for it.
            pub fn value(self) -> u16 {
                match self {
                    $(Self::$variant => $value as u16,)*
                }
            }

            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

named_constants! {
    /// A socket family (`AF_*`).
    SocketFamily, "family" {
        Unix = "unix" => libc::AF_UNIX,
        Inet = "inet" => libc::AF_INET,
        Inet6 = "inet6" => libc::AF_INET6,
        Netlink = "netlink" => libc::AF_NETLINK,
        Packet = "packet" => libc::AF_PACKET,
        Vsock = "vsock" => libc::AF_VSOCK,
    }
}

named_constants! {
    /// A socket type (`SOCK_*`).
    SocketType, "socket type" {
        Stream = "stream" => libc::SOCK_STREAM,
        Dgram = "dgram" => libc::SOCK_DGRAM,
        Raw = "raw" => libc::SOCK_RAW,
        Seqpacket = "seqpacket" => libc::SOCK_SEQPACKET,
    }
}

impl SocketFamily {
    /// The IP family, for the hooks that only run for one.
    pub fn is_ip(self) -> bool {
        matches!(self, Self::Inet | Self::Inet6)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_stat_prints_them() {
        let d: Device = "7:0".parse().unwrap();
        assert_eq!(d.kernel_dev(), 7 << 20);
        assert_eq!(
            "259:3".parse::<Device>().unwrap().kernel_dev(),
            (259 << 20) | 3
        );
        assert_eq!(d.to_string(), "7:0");
        for bad in [
            "7",
            "7:",
            ":0",
            "a:b",
            "-1:0",
            "4096:0",
            "0:1048576",
            "7:0:1",
        ] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn families_and_types_by_name() {
        let f: SocketFamily = serde_json::from_str("\"inet6\"").unwrap();
        assert_eq!(f.value(), libc::AF_INET6 as u16);
        let t: SocketType = serde_json::from_str("\"dgram\"").unwrap();
        assert_eq!(t.value(), libc::SOCK_DGRAM as u16);
        let e = serde_json::from_str::<SocketType>("\"udp\"").unwrap_err();
        assert!(e.to_string().contains("stream"), "{e}");
    }
}
