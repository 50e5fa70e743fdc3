//! Experiments: run an FMEA faultload against a live service through
//! injectord's JSON-RPC API, probe the service meanwhile, and report its
//! KPIs (availability, detection, mitigation and recovery latency, latency
//! ratios) per run and over repetitions, with PreFail-style pruning of
//! fault combinations and stop conditions.
//!
//! - [`plan`]: the plan document (JSON or YAML), parsed into types that
//!   only hold runnable plans;
//! - [`probe`]: HTTP(S), TCP, UDP, DNS, ICMP and command probes, each on
//!   a thread of its own, in a network namespace if asked;
//! - [`run`]: the phases of each run, the daemon calls, the stop
//!   conditions;
//! - [`kpi`]: the KPIs and verdicts, from samples and counters (pure);
//! - [`prune`]: which combinations run (pure);
//! - [`report`] and [`html`]: JSON, a terminal table, a static HTML page.

pub mod html;
pub mod kpi;
pub mod plan;
pub mod probe;
pub mod progress;
pub mod prune;
pub mod report;
pub mod run;

pub use plan::{Plan, PlanError};
pub use report::Report;
pub use run::{Progress, RunError, run};
