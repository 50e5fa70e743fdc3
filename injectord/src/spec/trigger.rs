//! Triggers: when a matching event becomes an activation.

use injector_common::Trigger;
use serde::{Deserialize, Deserializer, Serialize, de};

use super::values::Ttl;
use crate::sys;

/// When a matching event becomes an activation. All conditions combine:
/// skip the first `after`, then take every `every_nth`, each with
/// `probability`, until `max_activations` have fired.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(
    deny_unknown_fields,
    expecting = "a trigger object with probability, every_nth, after or max_activations"
)]
pub struct TriggerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<Probability>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_nth: Option<Count>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_activations: Option<Count>,
}

impl TriggerSpec {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// The kernel's form, with the expiry of a fault that lives `ttl`.
    pub fn to_kernel(&self, ttl: Option<Ttl>) -> Trigger {
        Trigger {
            threshold: self.probability.map_or(Trigger::ALWAYS, |p| p.threshold()),
            after: self.after.unwrap_or(0),
            every_nth: self.every_nth.map_or(0, |n| n.get()),
            max_activations: self.max_activations.map_or(0, |n| n.get()),
            expires_at_ns: ttl.map_or(0, |d| sys::monotonic_ns() + d.get().as_nanos() as u64),
        }
    }
}

/// A probability in [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Probability(f64);

impl Probability {
    /// round(p * 2^32): the kernel fires when a random u32 is below it.
    pub fn threshold(self) -> u64 {
        (self.0 * 4_294_967_296.0).round() as u64
    }
}

impl<'de> Deserialize<'de> for Probability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let p = f64::deserialize(d)?;
        if (0.0..=1.0).contains(&p) {
            Ok(Self(p))
        } else {
            Err(de::Error::custom(format_args!(
                "invalid value: probability {p} is outside 0 to 1"
            )))
        }
    }
}

/// A count of at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Count(u64);

impl Count {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        u64::try_from(n)
            .ok()
            .filter(|n| *n >= 1)
            .map(Self)
            .ok_or_else(|| de::Error::custom(format_args!("invalid value: {n} must be at least 1")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_threshold() {
        assert_eq!(Probability(1.0).threshold(), 1 << 32);
        assert_eq!(Probability(0.0).threshold(), 0);
        assert_eq!(Probability(0.5).threshold(), 1 << 31);
    }
}
