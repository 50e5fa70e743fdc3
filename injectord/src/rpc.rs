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

/// Handles one line; returns the response line, or `None` for a
/// notification (a request without an id).
pub fn handle_line(state: &Shared, line: &str) -> Option<String> {
    let (id, result) = match serde_json::from_str::<Value>(line) {
        Err(e) => (
            Value::Null,
            Err(RpcError::new(
                ErrorCode::ParseError,
                format!("the line is not valid JSON: {e}"),
            )),
        ),
        Ok(req) => {
            let id = req.get("id").cloned();
            let result = dispatch(state, req);
            match id {
                None if result.is_ok() => return None,
                id => (id.unwrap_or(Value::Null), result),
            }
        }
    };
    let response = match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(err) => json!({"jsonrpc": "2.0", "id": id, "error": err.to_json()}),
    };
    Some(response.to_string())
}

fn dispatch(state: &Shared, req: Value) -> Result<Value, RpcError> {
    let Value::Object(mut req) = req else {
        return Err(RpcError::new(
            ErrorCode::InvalidRequest,
            "expected a JSON-RPC 2.0 request object (batches are not supported)",
        ));
    };
    if req.get("jsonrpc") != Some(&json!("2.0")) {
        return Err(RpcError::new(
            ErrorCode::InvalidRequest,
            "the request must have \"jsonrpc\": \"2.0\"",
        ));
    }
    let Some(Value::String(method)) = req.remove("method") else {
        return Err(RpcError::new(
            ErrorCode::InvalidRequest,
            "the request must have a string \"method\"",
        ));
    };
    let params = req.remove("params").unwrap_or(Value::Null);
    let _span = tracing::debug_span!("rpc", %method).entered();
    match method.as_str() {
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
