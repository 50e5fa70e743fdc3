//! Errno values as users write them: a name (`"ECONNREFUSED"`) or a number.

use std::fmt;

use nix::errno::Errno as NixErrno;
use serde::{Deserialize, Deserializer, Serialize, Serializer, de};

/// Largest errno the kernel lets a BPF program return (`MAX_ERRNO`).
const MAX_ERRNO: i32 = 4095;

/// A positive errno that a fault makes a syscall return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Errno(i32);

impl Errno {
    pub fn from_name(name: &str) -> Option<Self> {
        // nix knows every name the C library does; its Debug output is the name.
        (1..=MAX_ERRNO)
            .map(NixErrno::from_raw)
            .find(|e| *e != NixErrno::UnknownErrno && format!("{e:?}") == name)
            .map(|e| Self(e as i32))
    }

    pub fn from_number(n: i64) -> Option<Self> {
        (1..=i64::from(MAX_ERRNO))
            .contains(&n)
            .then_some(Self(n as i32))
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
                Errno::from_name(v).ok_or_else(|| {
                    E::custom(format_args!(
                        "unknown errno name {v:?}: expected a name such as \"ECONNREFUSED\" or a number from 1 to {MAX_ERRNO}"
                    ))
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Errno, E> {
                Errno::from_number(v).ok_or_else(|| {
                    E::custom(format_args!(
                        "errno {v} is out of range: expected 1 to {MAX_ERRNO}"
                    ))
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Errno, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
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
        assert!(Errno::from_name("ENOTANERRNO").is_none());
        assert!(Errno::from_number(0).is_none());
        assert!(Errno::from_number(4096).is_none());
        let e: Errno = serde_json::from_str("110").unwrap();
        assert_eq!(e.to_string(), "ETIMEDOUT");
    }
}
