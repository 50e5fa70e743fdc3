//! The experiment's report: JSON (every field documented in the README),
//! and a table for the terminal.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::Serialize;

use crate::{
    kpi::{Kpis, RunTimes, Sample, Spread, Verdict, spread},
    prune::Policy,
};

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub experiment: String,
    pub started_unix_s: f64,
    /// CLOCK_MONOTONIC at time 0 of every `*_s` time in the report, so a
    /// measurement made elsewhere on the host can be set against them.
    pub monotonic_start_ns: u64,
    pub duration_s: f64,
    /// Warm-up, inject and recover, as planned.
    pub phases_s: [f64; 3],
    pub repeat: u32,
    /// The stop condition that ended the experiment, if one did.
    pub aborted: Option<StopReport>,
    pub runs: Vec<RunReport>,
    /// Per fault set: verdict counts and mean/spread of each KPI over its
    /// repetitions.
    pub aggregates: Vec<Aggregate>,
    /// Fault sets pruning left out, and why.
    pub pruned: Vec<PrunedReport>,
    /// Fault sets not run because a stop condition ended the experiment.
    pub skipped: Vec<Vec<String>>,
    pub probes: Vec<ProbeReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub name: String,
    pub kind: String,
    pub interval_s: f64,
    pub timeout_s: f64,
    /// Every sample, in time order.
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// 1-based, in the order run.
    pub index: usize,
    pub faults: Vec<String>,
    /// Which repetition of this fault set (1-based).
    pub repetition: u32,
    pub verdict: Verdict,
    /// Why a run was aborted.
    pub reason: Option<String>,
    /// Per fault, from the daemon's counters at removal.
    pub activations: BTreeMap<String, u64>,
    /// Per fault, the poll of the counters that first saw an activation.
    pub first_activation_s: BTreeMap<String, f64>,
    /// The KPIs on the first steady-state probe.
    pub kpis: Kpis,
    /// KPIs and verdict on every steady-state probe.
    pub probes: BTreeMap<String, ProbeRun>,
    pub times: RunTimes,
    pub stop: Option<StopReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeRun {
    pub verdict: Verdict,
    pub kpis: Kpis,
}

#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    pub run: usize,
    pub probe: String,
    pub success_ratio: f64,
    pub success_below: f64,
    pub over_s: f64,
    /// The sample that breached the bound arrived.
    pub breached_at_s: f64,
    /// The first remove call was sent.
    pub removal_sent_at_s: f64,
    /// The last remove call returned: the daemon had detached everything.
    pub faults_removed_at_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrunedReport {
    pub faults: Vec<String>,
    pub policy: Policy,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Aggregate {
    pub faults: Vec<String>,
    pub runs: usize,
    pub verdicts: BTreeMap<&'static str, usize>,
    pub activations: Option<Spread>,
    pub availability: Option<Spread>,
    pub detection_latency_s: Option<Spread>,
    pub mitigation_latency_s: Option<Spread>,
    pub recovery_latency_s: Option<Spread>,
    pub latency_p50_ratio: Option<Spread>,
    pub latency_p99_ratio: Option<Spread>,
}

impl Aggregate {
    /// One per fault set, in the order first run.
    pub fn of(runs: &[RunReport]) -> Vec<Self> {
        let mut sets: Vec<&Vec<String>> = Vec::new();
        for r in runs {
            if !sets.contains(&&r.faults) {
                sets.push(&r.faults);
            }
        }
        sets.into_iter()
            .map(|set| {
                let mine: Vec<&RunReport> = runs.iter().filter(|r| &r.faults == set).collect();
                let mut verdicts = BTreeMap::new();
                for r in &mine {
                    *verdicts.entry(r.verdict.as_str()).or_insert(0) += 1;
                }
                let kpi = |f: fn(&Kpis) -> Option<f64>| spread(mine.iter().map(|r| f(&r.kpis)));
                Self {
                    faults: set.clone(),
                    runs: mine.len(),
                    verdicts,
                    activations: spread(
                        mine.iter()
                            .map(|r| Some(r.activations.values().sum::<u64>() as f64)),
                    ),
                    availability: kpi(|k| k.availability),
                    detection_latency_s: kpi(|k| k.detection_latency_s),
                    mitigation_latency_s: kpi(|k| k.mitigation_latency_s),
                    recovery_latency_s: kpi(|k| k.recovery_latency_s),
                    latency_p50_ratio: kpi(|k| k.latency_p50_ratio),
                    latency_p99_ratio: kpi(|k| k.latency_p99_ratio),
                }
            })
            .collect()
    }
}

fn opt(v: Option<f64>, unit: &str) -> String {
    match v {
        Some(x) if unit == "s" => format!("{:.3}s", x),
        Some(x) if unit == "x" => format!("{x:.2}x"),
        Some(x) => format!("{x:.3}"),
        None => "-".into(),
    }
}

fn ms(v: Option<Spread>, unit: &str) -> String {
    match v {
        Some(s) if s.n > 1 => format!("{}±{}", opt(Some(s.mean), unit), opt(Some(s.sd), unit)),
        Some(s) => opt(Some(s.mean), unit),
        None => "-".into(),
    }
}

impl Report {
    /// The runs, the aggregates and what was pruned, as a text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "experiment {}: {} run(s) in {:.1}s{}",
            self.experiment,
            self.runs.len(),
            self.duration_s,
            if self.aborted.is_some() {
                " (ABORTED by a stop condition)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "{:<4} {:<32} {:<14} {:>7} {:>9} {:>9} {:>9} {:>7} {:>7} {:>11}",
            "RUN",
            "FAULTS",
            "VERDICT",
            "AVAIL",
            "DETECT",
            "MITIGATE",
            "RECOVER",
            "P50",
            "P99",
            "ACTIVATIONS"
        );
        for r in &self.runs {
            let k = &r.kpis;
            let _ = writeln!(
                out,
                "{:<4} {:<32} {:<14} {:>7} {:>9} {:>9} {:>9} {:>7} {:>7} {:>11}",
                r.index,
                truncate(&r.faults.join("+"), 32),
                r.verdict.as_str(),
                opt(k.availability, ""),
                opt(k.detection_latency_s, "s"),
                opt(k.mitigation_latency_s, "s"),
                opt(k.recovery_latency_s, "s"),
                opt(k.latency_p50_ratio, "x"),
                opt(k.latency_p99_ratio, "x"),
                r.activations
                    .values()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join("/"),
            );
            if let Some(reason) = &r.reason {
                let _ = writeln!(out, "     {reason}");
            }
        }
        if self.repeat > 1 {
            let _ = writeln!(out, "\nmean ± sd over repetitions:");
            let _ = writeln!(
                out,
                "{:<32} {:<22} {:>13} {:>15} {:>15} {:>13}",
                "FAULTS", "VERDICTS", "AVAIL", "DETECT", "RECOVER", "P99"
            );
            for a in &self.aggregates {
                let verdicts: Vec<String> =
                    a.verdicts.iter().map(|(v, n)| format!("{v}:{n}")).collect();
                let _ = writeln!(
                    out,
                    "{:<32} {:<22} {:>13} {:>15} {:>15} {:>13}",
                    truncate(&a.faults.join("+"), 32),
                    verdicts.join(","),
                    ms(a.availability, ""),
                    ms(a.detection_latency_s, "s"),
                    ms(a.recovery_latency_s, "s"),
                    ms(a.latency_p99_ratio, "x"),
                );
            }
        }
        if !self.pruned.is_empty() {
            let _ = writeln!(out, "\npruned:");
            for p in &self.pruned {
                let policy = serde_json::to_value(p.policy).unwrap_or_default();
                let _ = writeln!(
                    out,
                    "  {:<32} {:<16} {}",
                    p.faults.join("+"),
                    policy.as_str().unwrap_or_default(),
                    p.reason
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\nnot run (stopped):");
            for s in &self.skipped {
                let _ = writeln!(out, "  {}", s.join("+"));
            }
        }
        out
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}
