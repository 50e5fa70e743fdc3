//! Experiment phases, as an experiment runner (`injectctl experiment run`)
//! reports them through the `experiment_phase` method, exported as
//! `injectord_experiment_phase{experiment, run, phase} 1` so that a
//! dashboard can shade warm-up, inject and recover. The daemon only keeps
//! the label set: it neither checks nor drives the experiment.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{ErrorCode, RpcError};

/// The phases a runner goes through; `done` ends the experiment's series.
const PHASES: &[&str] = &["warmup", "inject", "recover", "done"];

/// How long a phase stays exported when the runner gives no `ttl` (and at
/// most): a runner that dies leaves no phase behind for longer.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// At most this many experiments at once (each has one series).
const MAX_EXPERIMENTS: usize = 64;

#[derive(Debug)]
struct Entry {
    run: String,
    phase: &'static str,
    until: Instant,
}

/// The current phase of each running experiment.
#[derive(Debug, Default)]
pub struct Phases {
    current: Mutex<BTreeMap<String, Entry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    experiment: String,
    run: String,
    phase: String,
    ttl: Option<String>,
}

fn label_ok(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
}

impl Phases {
    /// `experiment_phase`: `{"experiment", "run", "phase", "ttl"?}`.
    pub fn set(&self, params: Value) -> Result<Value, RpcError> {
        let p: Params = serde_json::from_value(params).map_err(|e| {
            RpcError::new(
                ErrorCode::InvalidParams,
                format!(
                    "expected {{\"experiment\": NAME, \"run\": \"3\", \"phase\": \"warmup|inject|recover|done\", \"ttl\": \"30s\"}}: {e}"
                ),
            )
        })?;
        for (field, v) in [("experiment", &p.experiment), ("run", &p.run)] {
            if !label_ok(v) {
                return Err(RpcError::new(
                    ErrorCode::InvalidParams,
                    format!("{field} {v:?}: 1 to 128 letters, digits, '_', '.', ':' or '-'"),
                ));
            }
        }
        let Some(phase) = PHASES.iter().copied().find(|ph| *ph == p.phase) else {
            return Err(RpcError::new(
                ErrorCode::InvalidParams,
                format!("phase {:?}: one of {}", p.phase, PHASES.join(", ")),
            ));
        };
        let ttl = match &p.ttl {
            None => DEFAULT_TTL,
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| RpcError::new(ErrorCode::InvalidParams, format!("ttl {t:?}: {e}")))?
                .min(DEFAULT_TTL),
        };
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        cur.retain(|_, e| e.until > now);
        if phase == "done" {
            cur.remove(&p.experiment);
        } else {
            if !cur.contains_key(&p.experiment) && cur.len() >= MAX_EXPERIMENTS {
                return Err(RpcError::new(
                    ErrorCode::InvalidParams,
                    format!("{MAX_EXPERIMENTS} experiments are running already"),
                ));
            }
            cur.insert(
                p.experiment.clone(),
                Entry {
                    run: p.run.clone(),
                    phase,
                    until: now + ttl,
                },
            );
        }
        Ok(json!({"experiment": p.experiment, "run": p.run, "phase": phase}))
    }

    /// (experiment, run, phase) of each experiment whose phase has not
    /// expired.
    pub fn current(&self) -> Vec<(String, String, &'static str)> {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        cur.iter()
            .filter(|(_, e)| e.until > now)
            .map(|(x, e)| (x.clone(), e.run.clone(), e.phase))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_set_replaced_ended_and_checked() {
        let p = Phases::default();
        p.set(json!({"experiment": "web", "run": "1", "phase": "warmup"}))
            .unwrap();
        p.set(json!({"experiment": "web", "run": "1", "phase": "inject", "ttl": "5s"}))
            .unwrap();
        assert_eq!(p.current(), vec![("web".into(), "1".into(), "inject")]);
        p.set(json!({"experiment": "web", "run": "1", "phase": "done"}))
            .unwrap();
        assert!(p.current().is_empty());
        for bad in [
            json!({"experiment": "web", "run": "1", "phase": "lunch"}),
            json!({"experiment": "a b", "run": "1", "phase": "inject"}),
            json!({"experiment": "web", "run": "1", "phase": "inject", "ttl": "soon"}),
            json!({"experiment": "web", "phase": "inject"}),
        ] {
            assert!(p.set(bad.clone()).is_err(), "{bad}");
        }
        p.set(json!({"experiment": "web", "run": "2", "phase": "inject", "ttl": "1ms"}))
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(p.current().is_empty(), "an expired phase is not exported");
    }
}
