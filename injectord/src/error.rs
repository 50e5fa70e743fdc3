//! Errors returned over the control socket: a stable machine-readable code
//! (in `error.data.code`) and a message a person can act on.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Stable error codes. Never rename one; add new ones instead.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, strum::IntoStaticStr, strum::EnumIter,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not valid JSON.
    ParseError,
    /// Valid JSON, but not a JSON-RPC 2.0 request object.
    InvalidRequest,
    MethodNotFound,
    /// Params of a method other than `inject` are wrong.
    InvalidParams,
    /// The spec is malformed (missing field, wrong type).
    InvalidSpec,
    /// The spec has a field we do not know (a typo would otherwise be
    /// silently ignored).
    UnknownField,
    UnknownFaultType,
    UnknownErrno,
    /// A value is outside its allowed range.
    InvalidValue,
    /// The cgroup or process does not exist.
    TargetNotFound,
    /// No cgroup belongs to that container id.
    ContainerNotFound,
    /// The container id prefix matches several containers.
    AmbiguousTarget,
    /// The target contains PID 1, the daemon or the whole host; needs `force`.
    ForbiddenTarget,
    /// This kernel cannot deliver the fault; the message names what is missing.
    UnsupportedKernel,
    /// The fault cannot be delivered at this kind of target (or the target
    /// lacks something the fault needs); the message says what would work.
    UnsupportedTarget,
    /// No fault with that id or name.
    NotFound,
    /// A fault with that name exists already.
    NameTaken,
    /// Another fault already covers the same target and filter.
    Conflict,
    /// Too many faults.
    Capacity,
    /// The peer is not allowed to use the socket.
    PermissionDenied,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The JSON-RPC 2.0 numeric code: the standard ones where they apply,
    /// otherwise from the implementation-defined server error range.
    pub fn rpc_code(self) -> i64 {
        match self {
            Self::ParseError => -32700,
            Self::InvalidRequest => -32600,
            Self::MethodNotFound => -32601,
            Self::InvalidParams => -32602,
            Self::Internal => -32603,
            Self::InvalidSpec
            | Self::UnknownField
            | Self::UnknownFaultType
            | Self::UnknownErrno
            | Self::InvalidValue => -32001,
            Self::TargetNotFound | Self::ContainerNotFound | Self::AmbiguousTarget => -32002,
            Self::ForbiddenTarget | Self::PermissionDenied => -32003,
            Self::UnsupportedKernel | Self::UnsupportedTarget => -32004,
            Self::NotFound => -32005,
            Self::NameTaken | Self::Conflict | Self::Capacity => -32006,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error for the control socket.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: ErrorCode,
    pub message: String,
    /// Dotted path of the offending spec field, when there is one.
    pub field: Option<String>,
    /// Extra structured detail (e.g. the candidates of an ambiguous id).
    pub details: Option<Value>,
}

impl RpcError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    pub fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Classifies a spec deserialization error. The custom deserializers in
    /// `spec` and `errno` phrase their messages so that this works.
    pub fn from_spec_error(err: serde_path_to_error::Error<serde_json::Error>) -> Self {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        let code = if inner.starts_with("unknown field") {
            ErrorCode::UnknownField
        } else if inner.starts_with("unknown variant") && inner.contains("`connect_error`") {
            // The fault's `type` (serde reports errors inside an internally
            // tagged enum at the enum's own path, so look at what it expected).
            ErrorCode::UnknownFaultType
        } else if inner.starts_with("unknown variant") {
            // A value outside an enumeration ("protocol": "sctp").
            ErrorCode::InvalidValue
        } else if inner.starts_with("unknown errno") {
            ErrorCode::UnknownErrno
        } else if inner.starts_with("invalid value") || inner.contains("out of range") {
            ErrorCode::InvalidValue
        } else {
            ErrorCode::InvalidSpec
        };
        let field = (path != ".").then_some(path);
        let message = match &field {
            Some(f) => format!("{f}: {inner}"),
            None => inner,
        };
        Self {
            code,
            message,
            field,
            details: None,
        }
    }

    /// The JSON-RPC `error` object.
    pub fn to_json(&self) -> Value {
        let mut data = json!({ "code": self.code });
        if let Some(field) = &self.field {
            data["field"] = json!(field);
        }
        if let Some(details) = &self.details {
            data["details"] = details.clone();
        }
        json!({ "code": self.code.rpc_code(), "message": self.message, "data": data })
    }
}

/// An error with its sources, on one line. Verifier logs (which aya puts
/// in load errors) are cut to their last lines, where the kernel says what
/// it rejected.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    shorten_verifier_log(s)
}

fn shorten_verifier_log(s: String) -> String {
    const KEEP: usize = 8;
    let Some(at) = s.find("Verifier output:") else {
        return s;
    };
    let (head, log) = s.split_at(at);
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() <= KEEP + 1 {
        return s;
    }
    format!(
        "{head}verifier output (last {KEEP} of {} lines): {}",
        lines.len(),
        lines[lines.len() - KEEP..].join(" | ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_strings_match_the_wire_format() {
        use strum::IntoEnumIterator as _;
        for code in ErrorCode::iter() {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
