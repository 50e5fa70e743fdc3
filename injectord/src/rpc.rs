//! JSON-RPC 2.0 dispatch: one request object per line in, one response
//! object per line out.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use serde_json::{Value, json};

use crate::{
    capabilities::Capabilities,
    error::{ErrorCode, RpcError},
    faults::{Faults, Selector},
    kernel::journal::Recovery,
    spec::FaultSpec,
};

/// Everything a request handler may touch.
pub struct State {
    pub faults: Mutex<Faults>,
    pub capabilities: Capabilities,
    pub started: Instant,
    /// What the start-up recovery undid of a predecessor's journal.
    pub recovery: Recovery,
    pub lease: std::time::Duration,
    pub socket: String,
    pub metrics_addr: String,
}

pub type Shared = Arc<State>;

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("socket", &self.socket)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

/// Handles one line: a request, or a batch of them (an array). Returns
/// the response line, or `None` when nothing is to be answered: a
/// notification (a request without an `id`), even one that fails, or a
/// batch of notifications only (JSON-RPC 2.0, sections 4.1 and 6).
pub fn handle_line(state: &Shared, line: &str) -> Option<String> {
    let response = match serde_json::from_str::<Value>(line) {
        Err(e) => Some(error_response(
            Value::Null,
            RpcError::new(
                ErrorCode::ParseError,
                format!("the line is not valid JSON: {e}"),
            ),
        )),
        Ok(Value::Array(batch)) if batch.is_empty() => Some(error_response(
            Value::Null,
            RpcError::new(
                ErrorCode::InvalidRequest,
                "an empty batch: a batch is an array of one or more request objects",
            ),
        )),
        // Handled in order, one after the other; the responses come in one
        // array (without the notifications'), and none at all if every
        // request was a notification.
        Ok(Value::Array(batch)) => {
            let responses: Vec<Value> = batch
                .into_iter()
                .filter_map(|req| handle_request(state, req))
                .collect();
            (!responses.is_empty()).then_some(Value::Array(responses))
        }
        Ok(req) => handle_request(state, req),
    };
    response.map(|r| r.to_string())
}

/// A response line for an error that belongs to no request (a line too
/// long to read, a peer that may not ask): its `id` is null.
pub fn error_line(err: RpcError) -> String {
    error_response(Value::Null, err).to_string()
}

/// A request id: a string, a number or null (JSON-RPC 2.0, section 4).
#[derive(Clone, Debug, PartialEq)]
struct Id(Value);

impl Id {
    fn parse(v: Value) -> Result<Self, Value> {
        match v {
            Value::String(_) | Value::Number(_) | Value::Null => Ok(Self(v)),
            other => Err(other),
        }
    }
}

/// A request object, checked against JSON-RPC 2.0.
#[derive(Debug)]
struct Request {
    /// `None`: a notification, which gets no response.
    id: Option<Id>,
    method: String,
    /// An object or an array; `Null` when absent.
    params: Value,
}

impl Request {
    /// On failure, the `id` to answer with (the request's own when it is
    /// a valid id, null otherwise) and the error. An invalid request is
    /// answered even without an id: only a valid request is a
    /// notification.
    fn parse(req: Value) -> Result<Self, (Value, RpcError)> {
        let invalid = |id: Option<&Id>, message: String| {
            let id = id.map_or(Value::Null, |id| id.0.clone());
            (id, RpcError::new(ErrorCode::InvalidRequest, message))
        };
        let Value::Object(mut req) = req else {
            return Err(invalid(
                None,
                format!("expected a JSON-RPC 2.0 request object, not {}", kind(&req)),
            ));
        };
        let id = match req.remove("id").map(Id::parse) {
            None => None,
            Some(Ok(id)) => Some(id),
            Some(Err(bad)) => {
                return Err(invalid(
                    None,
                    format!(
                        "\"id\" must be a string, a number or null, not {}",
                        kind(&bad)
                    ),
                ));
            }
        };
        if req.get("jsonrpc") != Some(&json!("2.0")) {
            return Err(invalid(
                id.as_ref(),
                "the request must have \"jsonrpc\": \"2.0\"".into(),
            ));
        }
        let method = match req.remove("method") {
            Some(Value::String(method)) => method,
            Some(other) => {
                return Err(invalid(
                    id.as_ref(),
                    format!("\"method\" must be a string, not {}", kind(&other)),
                ));
            }
            None => {
                return Err(invalid(
                    id.as_ref(),
                    "the request must have a \"method\"".into(),
                ));
            }
        };
        // `"params": null` is taken as no params: JSON-RPC wants them left
        // out, but clients that always send the member are common.
        let params = req.remove("params").unwrap_or(Value::Null);
        if !matches!(params, Value::Object(_) | Value::Array(_) | Value::Null) {
            return Err(invalid(
                id.as_ref(),
                format!(
                    "\"params\" must be an object or an array, not {}",
                    kind(&params)
                ),
            ));
        }
        Ok(Self { id, method, params })
    }
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Handles one request of a line; `None` for a notification.
fn handle_request(state: &Shared, req: Value) -> Option<Value> {
    let req = match Request::parse(req) {
        Ok(req) => req,
        Err((id, err)) => return Some(error_response(id, err)),
    };
    let result = dispatch(state, &req.method, req.params);
    match (req.id, result) {
        (Some(Id(id)), Ok(result)) => Some(json!({"jsonrpc": "2.0", "id": id, "result": result})),
        (Some(Id(id)), Err(err)) => Some(error_response(id, err)),
        (None, Ok(_)) => None,
        (None, Err(err)) => {
            // JSON-RPC forbids answering a notification, even to report an
            // error; the log is the only place it shows.
            tracing::debug!(method = %req.method, error = %err, "notification failed");
            None
        }
    }
}

fn error_response(id: Value, err: RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": err.to_json()})
}

fn dispatch(state: &Shared, method: &str, params: Value) -> Result<Value, RpcError> {
    let _span = tracing::debug_span!("rpc", %method).entered();
    match method {
        "capabilities" => Ok(serde_json::to_value(&state.capabilities).unwrap_or_default()),
        "inject" => inject(state, params),
        "list" => {
            let faults = lock(state);
            Ok(json!({ "faults": faults.list() }))
        }
        "get" => {
            let sel = selector(params)?;
            let faults = lock(state);
            let f = faults.find(&sel)?;
            Ok(faults.view(f))
        }
        "remove" => {
            let sel = selector(params)?;
            let mut faults = lock(state);
            let f = faults.find(&sel)?;
            let (id, view) = (f.id, faults.view(f));
            faults.remove(id);
            Ok(json!({ "removed": view }))
        }
        "clear" => {
            let n = lock(state).clear();
            Ok(json!({ "removed": n }))
        }
        "status" => {
            let faults = lock(state);
            Ok(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "pid": std::process::id(),
                "uptime_seconds": state.started.elapsed().as_secs_f64(),
                "kernel": state.capabilities.kernel,
                "cgroup2_mount": faults.cgroups().mount(),
                "socket": state.socket,
                "metrics_addr": state.metrics_addr,
                "faults_active": faults.len(),
                "lease_seconds": state.lease.as_secs_f64(),
                "recovered": {
                    "undone": state.recovery.undone,
                    "gone": state.recovery.gone,
                    "failed": state.recovery.failed,
                },
            }))
        }
        other => Err(RpcError::new(
            ErrorCode::MethodNotFound,
            format!(
                "unknown method {other:?}; methods: capabilities, inject, list, get, remove, clear, status"
            ),
        )),
    }
}

fn inject(state: &Shared, params: Value) -> Result<Value, RpcError> {
    if params.is_array() {
        return Err(RpcError::new(
            ErrorCode::InvalidParams,
            "inject takes the spec as named params (an object), or as {\"spec\": {...}}",
        ));
    }
    let spec = FaultSpec::from_params(params)?;
    let mut faults = lock(state);
    let (fault, expires) = faults.inject(spec)?;
    let (id, name) = (fault.id, fault.name.clone());
    drop(faults);
    if let Some(deadline) = expires {
        // The kernel also stops firing at the deadline (expires_at_ns), in
        // case this task runs late.
        let state = Arc::clone(state);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            if lock(&state).expire(id) {
                tracing::info!(id, "fault expired");
            }
        });
    }
    Ok(json!({ "id": id, "name": name }))
}

fn selector(params: Value) -> Result<Selector, RpcError> {
    serde_json::from_value(params).map_err(|e| {
        RpcError::new(
            ErrorCode::InvalidParams,
            format!("expected {{\"id\": N}} or {{\"name\": \"...\"}}: {e}"),
        )
    })
}

/// The fault table lock. A panic while holding it would leave the kernel
/// state as it was, so poisoning is not a reason to stop serving.
pub fn lock(state: &State) -> std::sync::MutexGuard<'_, Faults> {
    state
        .faults
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(v: Value) -> (Value, String) {
        let (id, err) = Request::parse(v).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        (id, err.message)
    }

    #[test]
    fn requests_as_json_rpc_2_0_defines_them() {
        let r = Request::parse(json!({"jsonrpc": "2.0", "method": "list"})).unwrap();
        assert!(r.id.is_none(), "no id: a notification");
        for id in [json!(1), json!("x"), json!(null), json!(2.5)] {
            let r =
                Request::parse(json!({"jsonrpc": "2.0", "id": id, "method": "m", "params": []}))
                    .unwrap();
            assert_eq!(r.id, Some(Id(id)));
        }
        for id in [json!({}), json!([]), json!(true)] {
            let (got, msg) = invalid(json!({"jsonrpc": "2.0", "id": id, "method": "m"}));
            assert_eq!(got, Value::Null, "{msg}");
        }
        // A valid id is kept for the answer even when the rest is wrong.
        assert_eq!(invalid(json!({"id": 4, "method": "m"})).0, json!(4));
        assert_eq!(
            invalid(json!({"jsonrpc": "2.0", "id": 4, "method": 1})).0,
            json!(4)
        );
        let (_, msg) = invalid(json!({"jsonrpc": "2.0", "id": 4, "method": "m", "params": 3}));
        assert!(msg.contains("params"), "{msg}");
        assert_eq!(invalid(json!("status")).0, Value::Null);
    }
}
