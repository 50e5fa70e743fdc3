//! The block family's fault objects, parsed so that an impossible one
//! never reaches the kernel: a block device that exists (`"major:minor"`
//! or a `/dev` path), an operation, limits above zero.

use std::{fmt, os::unix::fs::FileTypeExt as _, path::Path, time::Duration};

use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

use crate::{
    errno::Errno,
    family::{
        SpecError,
        syscall::filters::{Device, PathPrefix},
    },
    spec::values::Latency,
};

/// A block device that exists here, as the user named it (`"7:0"` or
/// `"/dev/loop3"`), with its numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDevice {
    given: String,
    device: Device,
}

impl BlockDevice {
    /// The kernel's internal `dev_t` (`MKDEV`: 12 bits of major above 20
    /// of minor), as `bio->bi_bdev->bd_dev` and `super_block.s_dev` hold it.
    pub fn kernel_dev(&self) -> u32 {
        self.device.kernel_dev()
    }

    /// `"major:minor"`, as cgroup files and metrics name it.
    pub fn numbers(&self) -> String {
        self.device.to_string()
    }

    fn parse(s: &str) -> Result<Self, String> {
        let device = if s.starts_with('/') {
            let meta = std::fs::metadata(s).map_err(|e| format!("device {s}: {e}"))?;
            if !meta.file_type().is_block_device() {
                return Err(format!("{s} is not a block device"));
            }
            Device::from_dev_t(std::os::unix::fs::MetadataExt::rdev(&meta))
        } else {
            s.parse::<Device>().map_err(|e| {
                format!("{e}, or a block device's path such as \"/dev/loop0\" (see lsblk)")
            })?
        };
        // sysfs lists every block device of this kernel, partitions too.
        if !Path::new(&format!("/sys/dev/block/{device}")).exists() {
            return Err(format!(
                "no block device {device} on this host (not in /sys/dev/block)"
            ));
        }
        Ok(Self {
            given: s.to_string(),
            device,
        })
    }
}

impl fmt::Display for BlockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.given)
    }
}

impl Serialize for BlockDevice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BlockDevice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::parse(&String::deserialize(d)?)
            .map_err(|e| de::Error::custom(format_args!("invalid value: {e}")))
    }
}

/// Which I/O a fault selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Read,
    Write,
    #[default]
    Both,
}

impl Op {
    pub fn reads(self) -> bool {
        self != Self::Write
    }

    pub fn writes(self) -> bool {
        self != Self::Read
    }

    fn is_both(&self) -> bool {
        *self == Self::Both
    }
}

fn eio() -> Errno {
    Errno::EIO
}

/// The target's selected I/O fails with `errno`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IoError {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<BlockDevice>,
    /// Only files under this prefix (whole components).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPrefix>,
    #[serde(default, skip_serializing_if = "Op::is_both")]
    pub op: Op,
    #[serde(default = "eio")]
    pub errno: Errno,
}

impl IoError {
    pub const KIND: &str = "io_error";
}

/// Each selected I/O of the target takes `delay` (± `jitter`) longer.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IoDelay {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<BlockDevice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathPrefix>,
    #[serde(default, skip_serializing_if = "Op::is_both")]
    pub op: Op,
    pub delay: Latency,
    /// Uniform in `delay ± jitter` (at most `delay`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jitter: Option<Latency>,
    /// At most this long per delayed I/O, whatever delay and jitter say
    /// (default: `delay + jitter`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_delay: Option<Latency>,
    /// At most this many tasks held at once; the I/O of another passes
    /// undelayed and is counted (`injectord_block_io_total{outcome=
    /// "over_limit"}`).
    #[serde(default = "IoDelay::default_max_concurrent")]
    pub max_concurrent: MaxConcurrent,
}

impl IoDelay {
    pub const KIND: &str = "io_delay";

    fn default_max_concurrent() -> MaxConcurrent {
        MaxConcurrent(64)
    }

    /// The longest delay one I/O may get.
    pub fn bound(&self) -> Duration {
        let most = self.delay.get() + self.jitter.map_or(Duration::ZERO, Latency::get);
        self.max_delay.map_or(most, |m| m.get().min(most))
    }
}

/// A count of tasks: 1 to 4096.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct MaxConcurrent(u32);

impl MaxConcurrent {
    pub const MAX: u32 = 4096;

    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for MaxConcurrent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u32::deserialize(d)? {
            n @ 1..=Self::MAX => Ok(Self(n)),
            n => Err(de::Error::custom(format_args!(
                "invalid value: {n} tasks; give 1 to {}",
                Self::MAX
            ))),
        }
    }
}

/// The target's I/O on `device` is held to `bps` bytes and/or `iops`
/// operations per second, per selected operation, by the cgroup I/O
/// controller.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IoThrottle {
    pub device: BlockDevice,
    #[serde(default, skip_serializing_if = "Op::is_both")]
    pub op: Op,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bps: Option<Limit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iops: Option<Limit>,
}

impl IoThrottle {
    pub const KIND: &str = "io_throttle";
}

/// A positive limit (bytes or operations per second).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Limit(u64);

impl Limit {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            0 => Err(de::Error::custom(
                "invalid value: 0 would stop all I/O; give a limit above zero (an io_error fails I/O)",
            )),
            n => Ok(Self(n)),
        }
    }
}

/// Parses one of the family's fault objects.
pub fn parse(
    kind: &str,
    value: serde_json::Value,
) -> Result<Box<dyn crate::family::Params>, SpecError> {
    match kind {
        IoError::KIND => {
            let f: IoError = serde_path_to_error::deserialize(value)?;
            Ok(Box::new(f))
        }
        IoDelay::KIND => {
            let f: IoDelay = serde_path_to_error::deserialize(value)?;
            if f.path.is_some() {
                return Err(SpecError::Never {
                    field: "path",
                    message: "io_delay holds the task that submits a bio, and a bio belongs to no file: select by device (path filters work on io_error)".into(),
                });
            }
            if let Some(j) = f.jitter
                && j.get() > f.delay.get()
            {
                return Err(SpecError::Never {
                    field: "jitter",
                    message: format!(
                        "jitter {} is larger than the delay {}: a delay cannot be negative",
                        humantime::format_duration(j.get()),
                        humantime::format_duration(f.delay.get())
                    ),
                });
            }
            Ok(Box::new(f))
        }
        _ => {
            let f: IoThrottle = serde_path_to_error::deserialize(value)?;
            if f.bps.is_none() && f.iops.is_none() {
                return Err(SpecError::Never {
                    field: "bps",
                    message: "io_throttle needs bps, iops or both".into(),
                });
            }
            Ok(Box::new(f))
        }
    }
}

crate::params!(IoError => IoError::KIND, IoDelay => IoDelay::KIND, IoThrottle => IoThrottle::KIND);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_by_numbers_must_exist() {
        let e = BlockDevice::parse("4095:1048575").unwrap_err();
        assert!(e.contains("no block device"), "{e}");
        for bad in ["7", "a:b", "4096:0", "/dev/null", "/nonexistent"] {
            assert!(BlockDevice::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn io_fault_objects_parse() {
        let p = parse(
            IoDelay::KIND,
            serde_json::json!({"delay": "20ms", "jitter": "30ms"}),
        );
        assert!(matches!(
            p,
            Err(SpecError::Never {
                field: "jitter",
                ..
            })
        ));
        let p = parse(IoError::KIND, serde_json::json!({"op": "read"})).unwrap();
        assert_eq!(p.to_json()["errno"], "EIO");
        let p = parse(IoThrottle::KIND, serde_json::json!({"device": "x"}));
        assert!(p.is_err());
    }
}
