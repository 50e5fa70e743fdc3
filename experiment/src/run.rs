//! The runner: starts the probes, then for each run of the schedule goes
//! through warm-up, inject and recover, talking to the daemon over the
//! same JSON-RPC API as any client, and watching the stop conditions.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::{Receiver, RecvTimeoutError, channel},
    },
    time::{Duration, Instant, SystemTime},
};

use injectord_client::{Client, ErrorResponse};
use serde_json::{Value, json};

use crate::{
    kpi::{self, RunTimes, Sample, Thresholds, Verdict},
    plan::{FaultId, Plan, ProbeId, Schedule},
    probe,
    prune::{self, Alone},
    report::{Aggregate, ProbeReport, ProbeRun, PrunedReport, Report, RunReport, StopReport},
};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{what}: {message}")]
    Daemon { what: String, message: String },
    #[error(transparent)]
    Probe(#[from] probe::ProbeError),
}

/// How often the activation counters are read while faults are in: the
/// resolution of the first activation's time.
pub const ACTIVATION_POLL: Duration = Duration::from_millis(10);

/// How long the daemon keeps a fault beyond its inject phase if the runner
/// dies (its TTL; the lease stands behind it too).
pub const TTL_MARGIN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Inject,
    Recover,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warmup => "warmup",
            Self::Inject => "inject",
            Self::Recover => "recover",
        }
    }
}

/// Which run is going on, for a progress display.
#[derive(Debug, Clone)]
pub struct RunLabel {
    /// 1-based.
    pub index: usize,
    /// The number of runs planned so far (combinations are added once the
    /// single runs are done).
    pub planned: usize,
    pub faults: Vec<String>,
    pub repetition: u32,
    pub repeat: u32,
}

/// What a progress display is told while the experiment runs.
pub trait Progress {
    fn phase(&mut self, _run: &RunLabel, _phase: Phase, _length: Duration) {}
    fn sample(&mut self, _probe: &str, _sample: &Sample) {}
    fn finished(&mut self, _run: &RunReport) {}
}

/// No display.
pub struct Quiet;
impl Progress for Quiet {}

struct Active {
    names: Vec<String>,
    /// When the last inject call returned (stop conditions judge windows
    /// after it).
    injected: f64,
    first_activation: Option<f64>,
    first_each: Vec<Option<f64>>,
    activations: Vec<u64>,
    /// When the first remove call was sent.
    remove_start: Option<f64>,
    last_poll: f64,
    next_poll: Instant,
}

struct Runner<'a> {
    plan: &'a Plan,
    client: Client,
    epoch: Instant,
    rx: Receiver<(ProbeId, Sample)>,
    samples: Vec<Vec<Sample>>,
    export_phases: bool,
    progress: &'a mut dyn Progress,
}

fn daemon_err(what: impl Into<String>) -> impl FnOnce(anyhow::Error) -> RunError {
    let what = what.into();
    move |e| RunError::Daemon {
        what,
        message: format!("{e:#}"),
    }
}

impl Runner<'_> {
    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    fn at(&self, t: f64) -> Instant {
        self.epoch + Duration::from_secs_f64(t.max(0.0))
    }

    /// Tells the daemon (and so Prometheus) the phase; a daemon without
    /// the method is told once, then left alone.
    fn export_phase(&mut self, run: usize, phase: Option<Phase>, length: Duration) {
        if !self.export_phases {
            return;
        }
        let params = json!({
            "experiment": self.plan.name.as_str(),
            "run": run.to_string(),
            "phase": phase.map_or("done", Phase::as_str),
            "ttl": format!("{}ms", (length + TTL_MARGIN).as_millis()),
        });
        if let Err(e) = self.client.call("experiment_phase", params) {
            tracing::warn!(error = %format!("{e:#}"), "the daemon does not export experiment phases; carrying on without");
            self.export_phases = false;
        }
    }

    /// Takes samples until `until`; while faults are `active`, polls their
    /// counters and checks the stop conditions, returning the breach.
    fn wait_until(
        &mut self,
        until: Instant,
        mut active: Option<&mut Active>,
    ) -> Option<StopReport> {
        loop {
            let now = Instant::now();
            if now >= until {
                return None;
            }
            let mut wait = until - now;
            if let Some(a) = active.as_deref() {
                wait = wait.min(a.next_poll.saturating_duration_since(now));
            }
            match self.rx.recv_timeout(wait) {
                Ok((id, s)) => {
                    self.progress
                        .sample(self.plan.probes[id.0].name.as_str(), &s);
                    self.samples[id.0].push(s);
                    if let Some(a) = active.as_deref_mut()
                        && let Some(stop) = self.check_stops(id, a)
                    {
                        return Some(stop);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    return None;
                }
            }
            if let Some(a) = active.as_deref_mut()
                && Instant::now() >= a.next_poll
            {
                self.poll_activations(a);
            }
        }
    }

    fn poll_activations(&mut self, a: &mut Active) {
        let polled = self.now();
        for (i, name) in a.names.iter().enumerate() {
            if let Ok(v) = self.client.call("get", json!({ "name": name })) {
                let n = v["activations"].as_u64().unwrap_or(0);
                a.activations[i] = a.activations[i].max(n);
                if n > 0 && a.first_each[i].is_none() {
                    a.first_each[i] = Some(polled);
                    if a.first_activation.is_none() {
                        // It happened after the last poll that saw none.
                        a.first_activation = Some(a.last_poll);
                    }
                }
            }
        }
        a.last_poll = polled;
        a.next_poll = Instant::now() + ACTIVATION_POLL;
    }

    fn check_stops(&mut self, id: ProbeId, a: &mut Active) -> Option<StopReport> {
        let now = self.now();
        for stop in self.plan.stop_if.iter().filter(|s| s.probe == id) {
            let over = stop.over.as_secs_f64();
            if now - a.injected < over {
                continue;
            }
            let window: Vec<&Sample> = self.samples[id.0]
                .iter()
                .filter(|s| s.end() >= now - over && s.end() <= now)
                .collect();
            if window.is_empty() {
                continue;
            }
            let ratio = window.iter().filter(|s| s.ok).count() as f64 / window.len() as f64;
            if ratio < stop.success_below {
                tracing::warn!(probe = %self.plan.probes[id.0].name, ratio, "stop condition: removing the experiment's faults");
                self.remove_all(a);
                return Some(StopReport {
                    run: 0,
                    probe: self.plan.probes[id.0].name.to_string(),
                    success_ratio: ratio,
                    success_below: stop.success_below,
                    over_s: over,
                    breached_at_s: now,
                    removal_sent_at_s: a.remove_start.unwrap_or(now),
                    faults_removed_at_s: self.now(),
                });
            }
        }
        None
    }

    /// Removes the faults of `a` (each at most once), keeping their final
    /// activation counts.
    fn remove_all(&mut self, a: &mut Active) {
        if !a.names.is_empty() && a.remove_start.is_none() {
            a.remove_start = Some(self.now());
        }
        for (i, name) in std::mem::take(&mut a.names).into_iter().enumerate() {
            match self.client.call("remove", json!({ "name": name })) {
                Ok(v) => {
                    let n = v["removed"]["activations"].as_u64().unwrap_or(0);
                    a.activations[i] = a.activations[i].max(n);
                }
                Err(e) => {
                    tracing::warn!(fault = %name, error = %format!("{e:#}"), "remove failed (expired?)")
                }
            }
        }
    }

    fn run_one(&mut self, index: usize, set: &[FaultId], label: &RunLabel) -> RunReport {
        let phases = self.plan.phases;
        let fault_names = self.plan.fault_names(set);
        let mut report = RunReport {
            index,
            faults: fault_names.clone(),
            repetition: label.repetition,
            verdict: Verdict::Aborted,
            reason: None,
            activations: BTreeMap::new(),
            first_activation_s: BTreeMap::new(),
            kpis: kpi::Kpis::default(),
            probes: BTreeMap::new(),
            times: RunTimes {
                warmup_start: self.now(),
                inject_start: 0.0,
                injected: 0.0,
                first_activation: None,
                remove_start: 0.0,
                removed: 0.0,
                end: 0.0,
            },
            stop: None,
        };
        self.progress.phase(label, Phase::Warmup, phases.warmup.0);
        self.export_phase(index, Some(Phase::Warmup), phases.warmup.0);
        let warm_end = self.at(report.times.warmup_start) + phases.warmup.0;
        self.wait_until(warm_end, None);

        let inject_start = self.now();
        report.times.inject_start = inject_start;
        let unsteady: Vec<String> = self
            .plan
            .steady_state
            .iter()
            .filter_map(|st| {
                let th = thresholds(self.plan, st);
                let warm: Vec<&Sample> = self.samples[st.probe.0]
                    .iter()
                    .filter(|s| s.t >= report.times.warmup_start && s.t < inject_start)
                    .collect();
                (!th.steady(&warm)).then(|| {
                    let ok = warm.iter().filter(|s| th.good(s)).count();
                    format!(
                        "{} ({ok} of {} samples good, {} needed)",
                        self.plan.probes[st.probe.0].name,
                        warm.len(),
                        st.min_success
                    )
                })
            })
            .collect();
        let mut active = Active {
            names: Vec::new(),
            injected: inject_start,
            first_activation: None,
            first_each: vec![None; set.len()],
            activations: vec![0; set.len()],
            remove_start: None,
            last_poll: inject_start,
            next_poll: Instant::now(),
        };
        if !unsteady.is_empty() {
            report.reason = Some(format!(
                "the warm-up did not meet the steady state: {}; nothing injected",
                unsteady.join(", ")
            ));
        } else {
            self.progress.phase(label, Phase::Inject, phases.inject.0);
            self.export_phase(index, Some(Phase::Inject), phases.inject.0);
            for (&f, name) in set.iter().zip(&fault_names) {
                let mut spec = self.plan.faults[f.0].spec.clone();
                let daemon_name = format!("{}.{name}", self.plan.name);
                spec.insert("name".into(), json!(daemon_name));
                spec.insert(
                    "duration".into(),
                    json!(format!("{}ms", (phases.inject.0 + TTL_MARGIN).as_millis())),
                );
                match self.client.call("inject", Value::Object(spec)) {
                    Ok(_) => active.names.push(daemon_name),
                    Err(e) => {
                        let why = match e.downcast_ref::<ErrorResponse>() {
                            Some(r) => format!("{}: {}", r.code, r.message),
                            None => format!("{e:#}"),
                        };
                        report.reason = Some(format!("inject {name} failed: {why}"));
                        break;
                    }
                }
            }
            report.times.injected = self.now();
            active.injected = report.times.injected;
            // A fault can fire only once its inject call installed it,
            // which is somewhere in the call: an activation seen by the
            // first read is taken at the call's return (not at its start:
            // attaching can take a quarter of a second).
            active.last_poll = report.times.injected;
            if report.reason.is_none() {
                self.poll_activations(&mut active);
                let end = self.at(report.times.injected) + phases.inject.0;
                report.stop = self.wait_until(end, Some(&mut active));
            }
            self.remove_all(&mut active);
        }
        report.times.removed = self.now();
        if report.times.injected == 0.0 {
            report.times.injected = report.times.removed;
        }
        report.times.remove_start = active.remove_start.unwrap_or(report.times.removed);
        report.times.first_activation = active.first_activation;
        self.progress.phase(label, Phase::Recover, phases.recover.0);
        self.export_phase(index, Some(Phase::Recover), phases.recover.0);
        let rec_end = self.at(report.times.removed) + phases.recover.0;
        self.wait_until(rec_end, None);
        report.times.end = self.now();

        for (i, name) in fault_names.iter().enumerate() {
            report
                .activations
                .insert(name.clone(), active.activations[i]);
            if let Some(t) = active.first_each[i] {
                report.first_activation_s.insert(name.clone(), t);
            }
        }
        let mut worst = Verdict::Tolerated;
        for (k, st) in self.plan.steady_state.iter().enumerate() {
            let th = thresholds(self.plan, st);
            let kpis = kpi::compute(&self.samples[st.probe.0], &report.times, &th);
            let v = kpi::verdict(&kpis, &th, &active.activations);
            worst = worst.max(v);
            if k == 0 {
                report.kpis = kpis.clone();
            }
            report.probes.insert(
                self.plan.probes[st.probe.0].name.to_string(),
                ProbeRun { verdict: v, kpis },
            );
        }
        report.verdict = if report.reason.is_some() || report.stop.is_some() {
            Verdict::Aborted
        } else if active.activations.contains(&0) {
            Verdict::NotExercised
        } else {
            worst
        };
        if let Some(stop) = &mut report.stop {
            stop.run = index;
            report.reason = Some(format!(
                "stop condition: {} succeeded {:.2} of the last {:.3}s, below {}",
                stop.probe, stop.success_ratio, stop.over_s, stop.success_below
            ));
        }
        self.progress.finished(&report);
        report
    }
}

fn thresholds(plan: &Plan, st: &crate::plan::SteadyState) -> Thresholds {
    let interval = plan.probes[st.probe.0].interval.as_secs_f64();
    let window = st.window.as_secs_f64();
    Thresholds {
        min_success: st.min_success,
        max_latency: st.max_latency.map(|d| d.as_secs_f64()),
        window,
        failed_below: st.failed_below,
        min_samples: ((window / interval / 2.0).floor() as usize).max(1),
    }
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The cgroup2 mount, from /proc/mounts.
fn cgroup2_mount() -> Option<std::path::PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "cgroup2").then(|| dir.into())
        })
}

/// Runs the plan against the daemon at `socket`.
pub fn run(plan: &Plan, socket: &Path, progress: &mut dyn Progress) -> Result<Report, RunError> {
    let client = Client::connect(socket).map_err(daemon_err("connecting to injectord"))?;
    let (tx, rx) = channel();
    let stop = Arc::new(AtomicBool::new(false));
    let started_unix_s = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let epoch = Instant::now();
    let monotonic_start_ns = monotonic_ns();
    let cgroup2 = cgroup2_mount();
    let mut threads = Vec::new();
    for (i, p) in plan.probes.iter().enumerate() {
        match probe::start(
            ProbeId(i),
            p,
            cgroup2.as_deref(),
            epoch,
            Arc::clone(&stop),
            tx.clone(),
        ) {
            Ok(t) => threads.push(t),
            Err(e) => {
                stop.store(true, Ordering::Relaxed);
                threads.into_iter().for_each(probe::Running::join);
                return Err(e.into());
            }
        }
    }
    drop(tx);
    let mut r = Runner {
        plan,
        client,
        epoch,
        rx,
        samples: vec![Vec::new(); plan.probes.len()],
        export_phases: true,
        progress,
    };
    let repeat = plan.repeat.get();
    let mut runs: Vec<RunReport> = Vec::new();
    let mut pruned = Vec::new();
    let mut skipped = Vec::new();
    let mut queue: Vec<Vec<FaultId>> = match &plan.schedule {
        Schedule::Singles => (0..plan.faults.len()).map(|i| vec![FaultId(i)]).collect(),
        Schedule::Explicit(sets) => sets.clone(),
        Schedule::Combinations { pruning, .. } => {
            let (run, _, p) = prune::singles(&plan.faults, pruning);
            pruned.extend(p);
            run.into_iter().map(|f| vec![f]).collect()
        }
    };
    let mut combos_added = !matches!(plan.schedule, Schedule::Combinations { .. });
    let mut aborted = None;
    let mut next = 0;
    loop {
        if next == queue.len() && !combos_added && aborted.is_none() {
            combos_added = true;
            if let Schedule::Combinations { size, pruning } = &plan.schedule {
                let (_, stands_for, _) = prune::singles(&plan.faults, pruning);
                let alone = |f: FaultId| alone(&runs, &plan.fault_names(&[f]));
                let (kept, p) =
                    prune::combinations(&plan.faults, *size, pruning, &stands_for, &alone);
                pruned.extend(p);
                queue.extend(kept.into_iter().map(|(set, _)| set));
            }
        }
        let Some(set) = queue.get(next).cloned() else {
            break;
        };
        next += 1;
        if aborted.is_some() {
            skipped.push(plan.fault_names(&set));
            continue;
        }
        for rep in 1..=repeat {
            let label = RunLabel {
                index: runs.len() + 1,
                planned: queue.len() * repeat as usize,
                faults: plan.fault_names(&set),
                repetition: rep,
                repeat,
            };
            let report = r.run_one(runs.len() + 1, &set, &label);
            let stop = report.stop.clone();
            runs.push(report);
            if stop.is_some() {
                aborted = stop;
                break;
            }
        }
    }
    r.export_phase(runs.len(), None, Duration::ZERO);
    stop.store(true, Ordering::Relaxed);
    // Samples still on their way.
    while let Ok((id, s)) = r.rx.recv_timeout(Duration::from_millis(1)) {
        r.samples[id.0].push(s);
    }
    threads.into_iter().for_each(probe::Running::join);
    while let Ok((id, s)) = r.rx.try_recv() {
        r.samples[id.0].push(s);
    }
    let duration_s = r.now();
    let probes = plan
        .probes
        .iter()
        .zip(std::mem::take(&mut r.samples))
        .map(|(p, samples)| ProbeReport {
            name: p.name.to_string(),
            kind: p.kind.label().to_string(),
            interval_s: p.interval.as_secs_f64(),
            timeout_s: p.timeout.as_secs_f64(),
            samples,
        })
        .collect();
    Ok(Report {
        experiment: plan.name.to_string(),
        started_unix_s,
        monotonic_start_ns,
        duration_s,
        phases_s: [
            plan.phases.warmup.0.as_secs_f64(),
            plan.phases.inject.0.as_secs_f64(),
            plan.phases.recover.0.as_secs_f64(),
        ],
        repeat,
        aborted,
        aggregates: Aggregate::of(&runs),
        pruned: pruned
            .into_iter()
            .map(|p| PrunedReport {
                faults: plan.fault_names(&p.faults),
                policy: p.policy,
                reason: p.reason,
            })
            .collect(),
        skipped,
        probes,
        runs,
    })
}

/// What the runs of `faults` alone showed.
fn alone(runs: &[RunReport], faults: &[String]) -> Option<Alone> {
    let mine: Vec<&RunReport> = runs.iter().filter(|r| r.faults == faults).collect();
    if mine.is_empty() {
        return None;
    }
    let mut verdicts: Vec<&str> = mine.iter().map(|r| r.verdict.as_str()).collect();
    verdicts.dedup();
    Some(Alone {
        tolerated: mine.iter().all(|r| r.verdict == Verdict::Tolerated),
        verdicts: verdicts.join("/"),
        availability: kpi::spread(mine.iter().map(|r| r.kpis.availability)).map(|s| s.mean),
    })
}
