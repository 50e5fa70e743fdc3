//! JSON-RPC 2.0 dispatch: one request object per line in, one response
//! object per line out.

use std::{
    sync::Arc,
    time::{Duration, Instant},
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
    /// The fault table. Its methods take locks that an install may hold
    /// for a while (program loads, netlink), so they run off the async
    /// runtime (see [`serve_line`]); `status` and `capabilities` take none.
    pub faults: Faults,
    pub capabilities: Capabilities,
    pub started: Instant,
    /// What the start-up recovery undid of a predecessor's journal.
    pub recovery: Recovery,
    pub lease: std::time::Duration,
    pub socket: String,
    pub metrics_addr: String,
    /// Phases of running experiments, for Prometheus (`experiment_phase`).
    pub experiments: crate::experiment::Phases,
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

/// Serves one line without blocking the async runtime: `status`,
/// `capabilities` and `experiment_phase` (which take no lock of the fault
/// table) are answered at once; anything that
/// takes the fault table's lock, which an install holds while it loads
/// programs or talks netlink, runs on a blocking thread. Requests of one
/// connection are served in order (the caller awaits each), and the lock
/// orders operations on the table.
pub async fn serve_line(state: &Shared, line: &str) -> Option<String> {
    if is_lock_free(line) {
        return handle_line(state, line);
    }
    let (state, line) = (Arc::clone(state), line.to_string());
    match tokio::task::spawn_blocking(move || handle_line(&state, &line)).await {
        Ok(response) => response,
        Err(e) => Some(error_line(RpcError::new(
            ErrorCode::Internal,
            format!("the request's handler failed: {e}"),
        ))),
    }
}

/// Whether `line` is a single request for a method that takes no lock.
fn is_lock_free(line: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Method<'a> {
        #[serde(borrow)]
        method: Option<&'a str>,
    }
    serde_json::from_str::<Method<'_>>(line).is_ok_and(|m| {
        matches!(
            m.method,
            Some("status" | "capabilities" | "experiment_phase")
        )
    })
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
        "list" => Ok(json!({ "faults": state.faults.list() })),
        "get" => state.faults.get(&selector(params)?),
        "remove" => {
            let view = state.faults.remove(&selector(params)?)?;
            Ok(json!({ "removed": view }))
        }
        "clear" => Ok(json!({ "removed": state.faults.clear() })),
        "experiment_phase" => state.experiments.set(params),
        "status" => Ok(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "uptime_seconds": state.started.elapsed().as_secs_f64(),
            "kernel": state.capabilities.kernel,
            "cgroup2_mount": state.faults.cgroup2_mount(),
            "socket": state.socket,
            "metrics_addr": state.metrics_addr,
            "faults_active": state.faults.len(),
            "faults_ended": state
                .faults
                .ended()
                .into_iter()
                .map(|(end, n)| (end.as_str().to_string(), json!(n)))
                .collect::<serde_json::Map<_, _>>(),
            "lease_seconds": state.lease.as_secs_f64(),
            "interface_pool": state.faults.interface_pool().map(|(ready, size)| json!({
                "ready": ready,
                "size": size,
            })),
            "recovered": {
                "undone": state.recovery.undone,
                "gone": state.recovery.gone,
                "failed": state.recovery.failed,
            },
        })),
        other => Err(RpcError::new(
            ErrorCode::MethodNotFound,
            format!(
                "unknown method {other:?}; methods: capabilities, inject, list, get, remove, clear, status, experiment_phase"
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
    let (id, name, expires) = state.faults.inject(spec)?;
    if let Some(deadline) = expires {
        // The kernel also stops firing at the deadline (expires_at_ns), in
        // case this task runs late. The timer runs on the runtime (this
        // handler runs where it is entered); the removal, which takes the
        // lock, on a blocking thread.
        let state = Arc::clone(state);
        tokio::spawn(async move {
            tokio::time::sleep_until(deadline.into()).await;
            let expired = tokio::task::spawn_blocking(move || state.faults.expire(id));
            if expired.await.unwrap_or(false) {
                tracing::info!(id, "fault expired");
            }
        });
    }
    let mut reply = json!({ "id": id, "name": name });
    // Where it landed, when its family says (a syscall fault's backend,
    // an io_error's layer: their semantics differ).
    if let Ok(view) = state.faults.get(&crate::faults::Selector::Id(id)) {
        for key in ["backend", "layer"] {
            if let Some(v) = view.get(key) {
                reply[key] = v.clone();
            }
        }
    }
    Ok(reply)
}

/// How often the cgroups faults are aimed at are checked for having gone
/// (see [`crate::faults::Faults::end_gone_targets`]): a fault on a pod
/// that ended, or a VM that stopped, ends within this (plus its removal).
pub const TARGET_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Ends the faults whose target cgroup is gone, checking every
/// [`TARGET_CHECK_INTERVAL`]. The check (a `stat` per targeted cgroup, a
/// few microseconds each) runs on a blocking thread, since ending a fault
/// takes the installer's lock. With thousands of targeted cgroups a pass
/// takes milliseconds; the pause after it is then 50 times its length
/// (at most 5 s), so the checks never take more than 2% of a CPU.
pub async fn watch_targets(state: Shared) {
    loop {
        let started = Instant::now();
        let pass = Arc::clone(&state);
        if let Err(e) = tokio::task::spawn_blocking(move || pass.faults.end_gone_targets()).await {
            tracing::warn!(error = %e, "checking the target cgroups failed");
        }
        let pause = (started.elapsed() * 50).clamp(TARGET_CHECK_INTERVAL, Duration::from_secs(5));
        tokio::time::sleep(pause).await;
    }
}

fn selector(params: Value) -> Result<Selector, RpcError> {
    serde_json::from_value(params).map_err(|e| {
        RpcError::new(
            ErrorCode::InvalidParams,
            format!("expected {{\"id\": N}} or {{\"name\": \"...\"}}: {e}"),
        )
    })
}
