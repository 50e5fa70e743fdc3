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

    /// Names the offending spec field.
    pub fn at(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    /// Classifies a spec deserialization error; `prefix` is the path of
    /// the object that was deserialized (`fault` for a family's part).
    ///
    /// serde's errors carry no code, only messages of fixed forms: serde
    /// derive writes "unknown field" and "unknown variant" (an enumerated
    /// value, as `"direction": "up"`), and our value types write "invalid
    /// value" (through [`crate::spec::invalid`]) or "unknown errno".
    pub fn from_spec_error(
        err: serde_path_to_error::Error<serde_json::Error>,
        prefix: Option<&str>,
    ) -> Self {
        let path = err.path().to_string();
        let inner = err.into_inner().to_string();
        let code = if inner.starts_with("unknown field") {
            ErrorCode::UnknownField
        } else if inner.starts_with("unknown variant") {
            ErrorCode::InvalidValue
        } else if inner.starts_with("unknown errno") {
            ErrorCode::UnknownErrno
        } else if inner.starts_with("invalid value") || inner.contains("out of range") {
            ErrorCode::InvalidValue
        } else {
            ErrorCode::InvalidSpec
        };
        // A missing or repeated field is reported at the object that lacks
        // it; the field itself is the one to name.
        let path = match (path.as_str(), named_field(&inner)) {
            (".", Some(f)) => Some(f.to_string()),
            (".", None) => None,
            (p, Some(f)) => Some(format!("{p}.{f}")),
            (_, None) => Some(path),
        };
        let field = match (prefix, path) {
            (Some(p), Some(f)) => Some(format!("{p}.{f}")),
            (Some(p), None) => Some(p.to_string()),
            (None, f) => f,
        };
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

    /// An error naming `field`, its message starting with the field.
    pub fn for_field(code: ErrorCode, field: &str, message: impl fmt::Display) -> Self {
        Self::new(code, format!("{field}: {message}")).at(field)
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

/// The field serde names in "missing field `x`" and "duplicate field
/// `x`": those errors carry the path of the enclosing object only.
fn named_field(message: &str) -> Option<&str> {
    let rest = message
        .strip_prefix("missing field `")
        .or_else(|| message.strip_prefix("duplicate field `"))?;
    rest.split_once('`').map(|(f, _)| f)
}

/// What went wrong inside the daemon, typed; turned into an [`RpcError`]
/// (the wire form) at the control socket only.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error caused by one field of the spec (`target.netns`,
    /// `fault.offset`): made by [`Error::at`].
    #[error("{field}: {error}")]
    At {
        field: &'static str,
        error: Box<Error>,
    },
    /// The target (cgroup, process, namespace, interface) is not there.
    #[error("{0}")]
    TargetNotFound(String),
    #[error("{0}")]
    ContainerNotFound(String),
    /// A container id prefix matches several containers.
    #[error("{message}")]
    AmbiguousTarget { message: String, candidates: Value },
    /// The target holds PID 1, the daemon or the whole host.
    #[error("{0}")]
    ForbiddenTarget(String),
    /// A value the spec's types accept but this host cannot use.
    #[error("{0}")]
    InvalidValue(String),
    /// The kernel lacks what the fault needs; the message names it.
    #[error("{0}")]
    UnsupportedKernel(String),
    /// The fault cannot act on this kind of target, or the target lacks
    /// something the fault needs; the message says what would work.
    #[error("{0}")]
    UnsupportedTarget(String),
    #[error("{0}")]
    NameTaken(String),
    /// Another fault holds what this one needs.
    #[error("{0}")]
    Conflict(String),
    /// A table or a limit is full.
    #[error("{0}")]
    Capacity(String),
    /// Attaching a program failed. Each attachment is a bpf_link fd, so
    /// EMFILE means the daemon's open-file limit (capacity), not a bug.
    #[error("attaching {what}: {}", chain(.source))]
    Attach {
        what: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A BPF map operation failed.
    #[error("BPF map {map}: {}", chain(.source))]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }

    /// Names the spec field that caused the error, unless a more precise
    /// one is named already (the innermost caller knows best).
    pub fn at(self, field: &'static str) -> Self {
        match self {
            Self::At { .. } => self,
            error => Self::At {
                field,
                error: Box::new(error),
            },
        }
    }

    /// For [`Result::map_err`]: `.map_err(Error::field("target.pid"))`.
    pub fn field(field: &'static str) -> impl FnOnce(Self) -> Self {
        move |e| e.at(field)
    }

    /// The spec field named by [`Error::at`], if any.
    pub fn spec_field(&self) -> Option<&'static str> {
        match self {
            Self::At { field, .. } => Some(field),
            _ => None,
        }
    }

    /// A map operation's error, for [`Result::map_err`].
    pub fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Self {
        move |source| Self::Map { map, source }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Self::At { error, .. } => error.code(),
            Self::TargetNotFound(_) => ErrorCode::TargetNotFound,
            Self::ContainerNotFound(_) => ErrorCode::ContainerNotFound,
            Self::AmbiguousTarget { .. } => ErrorCode::AmbiguousTarget,
            Self::ForbiddenTarget(_) => ErrorCode::ForbiddenTarget,
            Self::InvalidValue(_) => ErrorCode::InvalidValue,
            Self::UnsupportedKernel(_) => ErrorCode::UnsupportedKernel,
            Self::UnsupportedTarget(_) => ErrorCode::UnsupportedTarget,
            Self::NameTaken(_) => ErrorCode::NameTaken,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Capacity(_) => ErrorCode::Capacity,
            Self::Attach { source, .. } if is_emfile(source) => ErrorCode::Capacity,
            Self::Attach { .. } | Self::Map { .. } | Self::Io { .. } | Self::Internal(_) => {
                ErrorCode::Internal
            }
        }
    }
}

/// Whether an error's chain holds EMFILE (too many open files).
fn is_emfile(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.raw_os_error() == Some(libc::EMFILE)
        {
            return true;
        }
        cur = e.source();
    }
    false
}

impl From<Error> for RpcError {
    fn from(e: Error) -> Self {
        // The message is the whole Display form, so it starts with the
        // field when there is one.
        let mut rpc = RpcError::new(e.code(), e.to_string());
        rpc.field = e.spec_field().map(str::to_string);
        let inner = match e {
            Error::At { error, .. } => *error,
            other => other,
        };
        if let Error::AmbiguousTarget { candidates, .. } = inner {
            rpc.details = Some(json!({ "candidates": candidates }));
        }
        rpc
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
