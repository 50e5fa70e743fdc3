//! Errno values as users write them: a name (`"ECONNREFUSED"`) or a number.

use std::fmt;

use nix::errno::Errno as NixErrno;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Largest errno the kernel lets a BPF program return (`MAX_ERRNO`).
const MAX_ERRNO: i32 = 4095;

/// Other names the C library gives an errno, and the errno they name.
/// nix (and so [`Errno::name`]) knows each number by one name only.
const ALIASES: &[(&str, i32)] = &[
    ("EWOULDBLOCK", libc::EWOULDBLOCK),
    ("ENOTSUP", libc::ENOTSUP),
    ("EDEADLOCK", libc::EDEADLOCK),
];

/// The kernel's own codes (include/linux/errno.h, not uapi): they exist
/// inside the kernel only. The syscall exit path turns the ERESTART* ones
/// into a restart when a signal is pending, so a fault returning one could
/// restart the call forever; without a signal they reach the process as a
/// number no C library has a name for. Either way no program is written
/// to handle them, so a fault could never imitate a real failure with one.
const KERNEL_INTERNAL: &[(&str, i32)] = &[
    ("ERESTARTSYS", 512),
    ("ERESTARTNOINTR", 513),
    ("ERESTARTNOHAND", 514),
    ("ENOIOCTLCMD", 515),
    ("ERESTART_RESTARTBLOCK", 516),
    ("EPROBE_DEFER", 517),
    ("EOPENSTALE", 518),
    ("ENOPARAM", 519),
    ("EBADHANDLE", 521),
    ("ENOTSYNC", 522),
    ("EBADCOOKIE", 523),
    ("ENOTSUPP", 524),
    ("ETOOSMALL", 525),
    ("ESERVERFAULT", 526),
    ("EBADTYPE", 527),
    ("EJUKEBOX", 528),
    ("EIOCBQUEUED", 529),
    ("ERECALLCONFLICT", 530),
    ("ENOGRACE", 531),
];

/// The kernel-internal block: 512 (ERESTARTSYS) to 531 (ENOGRACE), 520
/// included (unused, but inside the block).
const KERNEL_INTERNAL_RANGE: std::ops::RangeInclusive<i64> = 512..=531;

/// A positive errno that a fault makes a syscall return: 1 to 4095,
/// outside the kernel-internal block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(i32);

/// Why a name or number is not an [`Errno`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ErrnoError {
    #[error(
        "unknown errno name {0:?}: expected a name such as \"ECONNREFUSED\" or a number from 1 to {MAX_ERRNO}"
    )]
    UnknownName(String),
    #[error("invalid value: errno {0} is out of range: expected 1 to {MAX_ERRNO}")]
    OutOfRange(i128),
    #[error(
        "invalid value: errno {} is kernel-internal (512 to 531, include/linux/errno.h): no process ever receives it from a real failure, and the ERESTART codes make the kernel restart the call when a signal is pending; pick one a program can get, such as EINTR or EAGAIN",
        describe(*.name, *.number)
    )]
    KernelInternal {
        name: Option<&'static str>,
        number: i64,
    },
}

fn describe(name: Option<&'static str>, number: i64) -> String {
    match name {
        Some(name) => format!("{name} ({number})"),
        None => number.to_string(),
    }
}

impl Errno {
    pub const EIO: Self = Self(libc::EIO);

    /// An errno by its C name, aliases included (`EWOULDBLOCK` is EAGAIN).
    pub fn from_name(name: &str) -> Result<Self, ErrnoError> {
        if let Some(&(name, n)) = KERNEL_INTERNAL.iter().find(|(k, _)| *k == name) {
            return Err(ErrnoError::KernelInternal {
                name: Some(name),
                number: n.into(),
            });
        }
        if let Some(&(_, n)) = ALIASES.iter().find(|(a, _)| *a == name) {
            return Ok(Self(n));
        }
        // nix knows every name the C library does; its Debug output is the name.
        (1..=MAX_ERRNO)
            .map(NixErrno::from_raw)
            .find(|e| *e != NixErrno::UnknownErrno && format!("{e:?}") == name)
            .map(|e| Self(e as i32))
            .ok_or_else(|| ErrnoError::UnknownName(name.to_string()))
    }

    pub fn from_number(n: i64) -> Result<Self, ErrnoError> {
        if KERNEL_INTERNAL_RANGE.contains(&n) {
            let name = KERNEL_INTERNAL
                .iter()
                .find(|(_, k)| i64::from(*k) == n)
                .map(|(name, _)| *name);
            return Err(ErrnoError::KernelInternal { name, number: n });
        }
        match i32::try_from(n) {
            Ok(n) if (1..=MAX_ERRNO).contains(&n) => Ok(Self(n)),
            _ => Err(ErrnoError::OutOfRange(n.into())),
        }
    }

    pub fn get(self) -> u32 {
        self.0 as u32
    }

    /// The symbolic name, if the C library has one.
    pub fn name(self) -> Option<String> {
        let e = NixErrno::from_raw(self.0);
        (e != NixErrno::UnknownErrno).then(|| format!("{e:?}"))
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(&name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Errno {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.name() {
            Some(name) => s.serialize_str(&name),
            None => s.serialize_i32(self.0),
        }
    }
}

impl<'de> Deserialize<'de> for Errno {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Errno;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an errno name such as \"ECONNREFUSED\" or a number from 1 to 4095")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Errno, E> {
                Errno::from_name(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Errno, E> {
                Errno::from_number(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Errno, E> {
                match i64::try_from(v) {
                    Ok(v) => self.visit_i64(v),
                    Err(_) => Err(E::custom(ErrnoError::OutOfRange(v.into()))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(Errno::from_name("ECONNREFUSED").unwrap().get(), 111);
        assert_eq!(Errno::from_name("EPERM").unwrap().get(), 1);
        assert!(matches!(
            Errno::from_name("ENOTANERRNO"),
            Err(ErrnoError::UnknownName(_))
        ));
        assert!(Errno::from_number(0).is_err());
        assert!(Errno::from_number(4096).is_err());
        assert_eq!(Errno::from_number(4095).unwrap().get(), 4095);
        let e: Errno = serde_json::from_str("110").unwrap();
        assert_eq!(e.to_string(), "ETIMEDOUT");
    }

    #[test]
    fn aliases_name_the_same_errno() {
        for (alias, canonical) in [
            ("EWOULDBLOCK", "EAGAIN"),
            ("ENOTSUP", "EOPNOTSUPP"),
            ("EDEADLOCK", "EDEADLK"),
        ] {
            let e = Errno::from_name(alias).unwrap();
            assert_eq!(e, Errno::from_name(canonical).unwrap(), "{alias}");
            assert_eq!(e.to_string(), canonical);
        }
    }

    #[test]
    fn the_kernel_internal_block_is_refused_by_name_and_number() {
        for n in 512..=531 {
            let err = Errno::from_number(n).unwrap_err();
            assert!(matches!(err, ErrnoError::KernelInternal { .. }), "{n}");
            assert!(err.to_string().starts_with("invalid value"), "{err}");
        }
        assert!(Errno::from_number(511).is_ok());
        assert!(Errno::from_number(532).is_ok());
        for (name, n) in KERNEL_INTERNAL {
            let err = Errno::from_name(name).unwrap_err();
            assert!(err.to_string().contains(&format!("{name} ({n})")), "{err}");
        }
        let err = serde_json::from_str::<Errno>("\"ERESTARTSYS\"").unwrap_err();
        assert!(err.to_string().contains("kernel-internal"), "{err}");
    }
}
