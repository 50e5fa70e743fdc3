//! Fault specs: the JSON users send, parsed into types that cannot hold an
//! invalid value (parse, don't validate).
//!
//! This module holds the envelope every fault shares (name, target,
//! trigger, duration, force) and the value types; the `fault` object is
//! parsed by the family that serves its `type` (see [`crate::family`]).

pub mod target;
pub mod trigger;
pub mod values;

use std::{fmt, sync::Arc};

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

pub use self::{
    target::TargetSpec,
    trigger::TriggerSpec,
    values::{Name, Ttl},
};
use crate::{
    error::{ErrorCode, RpcError},
    family::{self, Params, SpecError},
};

/// A complete fault request, as accepted by `inject`.
#[derive(Clone, Debug, Serialize)]
pub struct FaultSpec {
    /// Unique name; generated from the fault type and id when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<Name>,
    pub target: TargetSpec,
    pub fault: Fault,
    #[serde(skip_serializing_if = "TriggerSpec::is_default")]
    pub trigger: TriggerSpec,
    /// Time to live; the fault is removed when it runs out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<Ttl>,
    /// Allows targets that contain PID 1, the daemon itself or the whole host.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

/// The envelope as it arrives, with the fault still raw: its family is
/// known only once its `type` is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a fault spec object")]
struct RawSpec {
    #[serde(default)]
    name: Option<Name>,
    /// Parsed in a second step too, so a field that does not fit the
    /// others is named exactly (see [`TargetSpec::parse`]).
    target: Value,
    fault: serde_json::Map<String, Value>,
    #[serde(default)]
    trigger: TriggerSpec,
    #[serde(default)]
    duration: Option<Ttl>,
    #[serde(default)]
    force: bool,
}

impl FaultSpec {
    /// Parses `inject` params: either the spec itself or `{"spec": {...}}`.
    pub fn from_params(params: Value) -> Result<Self, RpcError> {
        let spec = match params {
            Value::Object(mut map) if map.len() == 1 && map.contains_key("spec") => {
                map.remove("spec").unwrap_or(Value::Null)
            }
            other => other,
        };
        let raw: RawSpec = serde_path_to_error::deserialize(spec)
            .map_err(|e| RpcError::from_spec_error(e, None))?;
        Ok(Self {
            name: raw.name,
            target: TargetSpec::parse(raw.target)?,
            fault: Fault::parse(raw.fault)?,
            trigger: raw.trigger,
            duration: raw.duration,
            force: raw.force,
        })
    }
}

/// The fault to inject, parsed by the family that serves its `type`.
#[derive(Clone)]
pub struct Fault {
    family: usize,
    params: Arc<dyn Params>,
}

impl Fault {
    fn parse(mut object: serde_json::Map<String, Value>) -> Result<Self, RpcError> {
        let field = |e: RpcError| e.at("fault.type");
        let kind = match object.remove("type") {
            Some(Value::String(kind)) => kind,
            Some(other) => {
                return Err(field(RpcError::new(
                    ErrorCode::InvalidSpec,
                    format!("fault.type: expected a string, got {other}"),
                )));
            }
            None => {
                return Err(field(RpcError::new(
                    ErrorCode::InvalidSpec,
                    "fault.type: missing; one of: ".to_string() + &family::fault_types().join(", "),
                )));
            }
        };
        let Some((index, decl)) = family::by_type(&kind) else {
            return Err(field(RpcError::new(
                ErrorCode::UnknownFaultType,
                format!(
                    "fault.type: unknown fault type {kind:?}; known types: {}",
                    family::fault_types().join(", ")
                ),
            )));
        };
        // The family parses the rest, so field paths stay exact.
        let params = (decl.parse)(&kind, Value::Object(object)).map_err(|e| match e {
            SpecError::Field(e) => RpcError::from_spec_error(e, Some("fault")),
            SpecError::Never { field, message } => RpcError::for_field(
                ErrorCode::InvalidValue,
                &format!("fault.{field}"),
                format!("{message}; this fault could never fire"),
            ),
        })?;
        Ok(Self {
            family: index,
            params: Arc::from(params),
        })
    }

    /// The fault type, e.g. `"packet_drop"`.
    pub fn kind(&self) -> &'static str {
        self.params.kind()
    }

    /// Index of the serving family in [`family::FAMILIES`].
    pub fn family(&self) -> usize {
        self.family
    }

    pub fn params(&self) -> &dyn Params {
        &*self.params
    }
}

impl Serialize for Fault {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.params.to_json().serialize(s)
    }
}

impl fmt::Debug for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.params.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn parse(v: Value) -> Result<FaultSpec, RpcError> {
        FaultSpec::from_params(v)
    }

    #[test]
    fn accepts_a_full_spec_directly_or_wrapped() {
        let spec = json!({
            "name": "db-down",
            "target": {"cgroup": "test/a"},
            "fault": {"type": "connect_error", "errno": "ECONNREFUSED", "address": "10.1.2.3/24", "port": 5432},
            "trigger": {"probability": 0.5, "every_nth": 2, "after": 3, "max_activations": 4},
            "duration": "30s",
        });
        let a = parse(spec.clone()).unwrap();
        let b = parse(json!({ "spec": spec })).unwrap();
        assert_eq!(a.target, b.target);
        assert_eq!(a.fault.kind(), "connect_error");
        let back = serde_json::to_value(&a.fault).unwrap();
        assert_eq!(back["address"], "10.1.2.0/24");
        assert_eq!(back["port"], 5432);
        assert_eq!(a.duration.unwrap().get(), Duration::from_secs(30));
    }

    #[test]
    fn errors_are_classified() {
        let base = |fault: Value, trigger: Value| json!({"target": {"pid": 1}, "fault": fault, "trigger": trigger});
        let code = |v: Value| parse(v).unwrap_err().code;
        let ok_fault = json!({"type": "connect_error", "errno": 111});
        assert_eq!(
            code(json!({"target": {"pid": 1}, "fault": ok_fault, "bogus": 1})),
            ErrorCode::UnknownField
        );
        let err = parse(base(
            json!({"type": "connect_error", "errno": 111, "prot": 1}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownField);
        assert_eq!(err.field.as_deref(), Some("fault.prot"));
        let err = parse(base(
            json!({"type": "connect_error", "errno": "EBOGUS"}),
            json!({}),
        ))
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownErrno);
        assert_eq!(err.field.as_deref(), Some("fault.errno"));
        assert_eq!(
            code(base(ok_fault.clone(), json!({"probability": 1.5}))),
            ErrorCode::InvalidValue
        );
        let err = parse(base(json!({"type": "disk_full"}), json!({}))).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownFaultType);
        assert_eq!(err.field.as_deref(), Some("fault.type"));
        assert_eq!(
            code(base(
                json!({"type": "packet_drop", "protocol": "carrier-pigeon"}),
                json!({})
            )),
            ErrorCode::InvalidValue
        );
        assert_eq!(code(json!({"fault": ok_fault})), ErrorCode::InvalidSpec);
        let err = parse(base(ok_fault, json!({"every_nth": 0}))).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("trigger.every_nth"));
    }

    #[test]
    fn every_fault_field_is_named_exactly() {
        // A map is the wrong type for every field, and serde reads the
        // only (bad) field before it checks for missing ones.
        for (field, kinds) in family::fault_fields() {
            for kind in kinds {
                let err = parse(json!({"target": {"pid": 1},
                    "fault": {"type": kind, field: {"bogus": {}}}}))
                .unwrap_err();
                let want = format!("fault.{field}");
                assert_eq!(err.field.as_deref(), Some(want.as_str()), "{kind}: {err}");
                assert!(err.message.starts_with(&want), "{kind}: {err}");
            }
        }
        let err =
            parse(json!({"target": {"pid": 1}, "fault": {"type": "packet_delay"}})).unwrap_err();
        assert_eq!(err.field.as_deref(), Some("fault.delay"));
        assert_eq!(err.code, ErrorCode::InvalidSpec);
    }

    #[test]
    fn target_errors_name_the_target_field() {
        let field = |target: Value| {
            let err =
                parse(json!({"target": target, "fault": {"type": "connect_error", "errno": 1}}))
                    .unwrap_err();
            (err.code, err.field.unwrap_or_default())
        };
        let invalid = |f: &str| (ErrorCode::InvalidValue, f.to_string());
        assert_eq!(field(json!({"pid": 0})), invalid("target.pid"));
        assert_eq!(
            field(json!({"cgroup": "a", "netns": "b"})),
            invalid("target.netns")
        );
        assert_eq!(field(json!({})), invalid("target"));
        assert_eq!(
            field(json!({"container": "xyz"})),
            invalid("target.container")
        );
        assert_eq!(
            field(json!({"interface": "a/b"})),
            invalid("target.interface")
        );
        assert_eq!(
            field(json!({"interface": "eth0", "netns": "/a/../b"})),
            invalid("target.netns")
        );
        assert_eq!(
            field(json!({"pid": 1, "extra": 1})),
            (ErrorCode::UnknownField, "target.extra".to_string())
        );
    }

    #[test]
    fn filters_that_could_never_match_are_refused() {
        let err = |fault: Value| parse(json!({"target": {"pid": 1}, "fault": fault})).unwrap_err();
        let e = err(json!({"type": "packet_drop", "src": "10.0.0.1", "dst": "::1"}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidValue, Some("fault.dst"))
        );
        assert!(e.message.contains("could never fire"), "{e}");
        let e = err(json!({"type": "partition", "protocol": "icmp", "dst_port": 53}));
        assert_eq!(e.field.as_deref(), Some("fault.dst_port"));
        let e = err(json!({"type": "connect_error", "errno": "ERESTARTNOINTR"}));
        assert_eq!(
            (e.code, e.field.as_deref()),
            (ErrorCode::InvalidValue, Some("fault.errno"))
        );
        // Each alone, and of one family, is fine.
        for ok in [
            json!({"type": "packet_drop", "src": "10.0.0.1", "dst": "10.0.0.0/8"}),
            json!({"type": "packet_drop", "src": "fd00::1", "dst": "::/0"}),
            json!({"type": "packet_drop", "protocol": "udp", "dst_port": 53}),
            json!({"type": "packet_drop", "protocol": "icmp"}),
            json!({"type": "connect_error", "errno": "EWOULDBLOCK"}),
        ] {
            parse(json!({"target": {"pid": 1}, "fault": ok})).unwrap();
        }
    }

    #[test]
    fn the_faultspec_library_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../faultspecs");
        let mut seen = 0;
        for area in std::fs::read_dir(&dir).unwrap().flatten() {
            if !area.path().is_dir() {
                continue;
            }
            for file in std::fs::read_dir(area.path()).unwrap().flatten() {
                let text = std::fs::read_to_string(file.path()).unwrap();
                let v: Value = serde_json::from_str(&text).unwrap();
                if let Err(e) = parse(v) {
                    panic!("{}: {e}", file.path().display());
                }
                seen += 1;
            }
        }
        assert!(seen >= 5, "only {seen} specs found in {}", dir.display());
    }
}
