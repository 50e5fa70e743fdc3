//! KPIs of a run, from the probe samples and the daemon's counters, and
//! their aggregates over repetitions. Pure functions of numbers: times are
//! seconds since the experiment started.

use serde::Serialize;

/// One probe sample: when it started, how long it took, whether it
/// succeeded (and why not).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Sample {
    /// Start, seconds since the experiment started.
    pub t: f64,
    pub latency_s: f64,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Sample {
    /// When the prober knew the outcome.
    pub fn end(&self) -> f64 {
        self.t + self.latency_s
    }
}

/// The steady state of one probe, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub min_success: f64,
    pub max_latency: Option<f64>,
    pub window: f64,
    pub failed_below: f64,
    /// A window with fewer samples does not meet the steady state (slow
    /// failures thin the samples out): half the samples the probe's
    /// interval puts in a window.
    pub min_samples: usize,
}

impl Thresholds {
    /// Whether a sample counts for the steady state: it succeeded, in time.
    pub fn good(&self, s: &Sample) -> bool {
        s.ok && self.max_latency.is_none_or(|m| s.latency_s <= m)
    }

    /// Whether these samples (a window's) meet the steady state.
    pub fn steady(&self, samples: &[&Sample]) -> bool {
        !samples.is_empty()
            && samples.len() >= self.min_samples
            && samples.iter().filter(|s| self.good(s)).count() as f64
                >= self.min_success * samples.len() as f64
    }
}

/// A run's timeline.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct RunTimes {
    pub warmup_start: f64,
    /// The first inject call was sent (the warm-up ends here).
    pub inject_start: f64,
    /// The last inject call returned: every fault is in. The fault window,
    /// where availability and the latency ratios are measured, starts
    /// here (installing a fault can take a good part of a second).
    pub injected: f64,
    /// The first activation of any fault: the last read of the counters
    /// that saw none, or the return of the inject calls if the first read
    /// already saw one.
    pub first_activation: Option<f64>,
    /// The first remove call was sent: the fault window ends here.
    pub remove_start: f64,
    /// The last remove call returned: recovery is timed from here.
    pub removed: f64,
    pub end: f64,
}

/// What a run measured on one probe.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Kpis {
    /// Success ratio of the samples that started in the fault window
    /// (from the last inject call's return to the first remove call).
    pub availability: Option<f64>,
    /// From the first activation to the end of the first failed or slow
    /// sample (when the client knew); null when none failed.
    pub detection_latency_s: Option<f64>,
    /// From the first activation to the point, after the first failure,
    /// from which every window up to the removal meets the steady state:
    /// the service masked the fault by itself (failover) and stayed so.
    /// Null when nothing failed or it never did.
    pub mitigation_latency_s: Option<f64>,
    /// From removal to the start of the first window that meets the
    /// steady state; null if none did before the run ended.
    pub recovery_latency_s: Option<f64>,
    /// Median and 99th percentile latency of successful samples in the
    /// fault window over those of the warm-up.
    pub latency_p50_ratio: Option<f64>,
    pub latency_p99_ratio: Option<f64>,
    pub warmup_p50_s: Option<f64>,
    pub fault_p50_s: Option<f64>,
    /// Samples in the fault window, and of them failed.
    pub samples: usize,
    pub failed: usize,
    /// Whether the warm-up met the steady state.
    pub warmup_steady: bool,
}

/// The `q` quantile (nearest rank) of `v`, which it sorts.
pub fn quantile(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

/// The samples that started in `[from, to)` (samples are in time order).
fn in_range(samples: &[Sample], from: f64, to: f64) -> Vec<&Sample> {
    let a = samples.partition_point(|s| s.t < from);
    let b = samples.partition_point(|s| s.t < to);
    samples[a..b.max(a)].iter().collect()
}

/// The earliest sample start in `[from, until)` from which every window
/// that fits before `until` meets the steady state (at least one must).
fn steady_from(samples: &[Sample], th: &Thresholds, from: f64, until: f64) -> Option<f64> {
    let mut earliest = None;
    for s in samples
        .iter()
        .rev()
        .filter(|s| s.t >= from && s.t + th.window <= until)
    {
        if th.steady(&in_range(samples, s.t, s.t + th.window)) {
            earliest = Some(s.t);
        } else {
            break;
        }
    }
    earliest
}

fn ok_latencies(samples: &[&Sample]) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency_s)
        .collect()
}

/// The start of the first window in `[from, until)` whose samples meet the
/// steady state; windows start at samples and must end by `until`.
fn first_steady_window(samples: &[Sample], th: &Thresholds, from: f64, until: f64) -> Option<f64> {
    samples
        .iter()
        .filter(|s| s.t >= from && s.t + th.window <= until)
        .map(|s| s.t)
        .find(|&start| th.steady(&in_range(samples, start, start + th.window)))
}

/// The KPIs of one run on one probe (its samples in time order).
pub fn compute(samples: &[Sample], times: &RunTimes, th: &Thresholds) -> Kpis {
    let warm = in_range(samples, times.warmup_start, times.inject_start);
    let fault = in_range(samples, times.injected, times.remove_start);
    let availability = (!fault.is_empty())
        .then(|| fault.iter().filter(|s| s.ok).count() as f64 / fault.len() as f64);
    let activation = times.first_activation;
    // The first sample the fault can have hit: one that ended after the
    // activation (it may have started before).
    let first_bad = activation.and_then(|a| {
        samples
            .iter()
            .filter(|s| s.end() >= a && s.t < times.remove_start)
            .find(|s| !th.good(s))
    });
    let detection_latency_s = match (activation, first_bad) {
        (Some(a), Some(s)) => Some((s.end() - a).max(0.0)),
        _ => None,
    };
    let mitigation_latency_s = match (activation, first_bad) {
        (Some(a), Some(s)) => {
            steady_from(samples, th, s.end(), times.remove_start).map(|t| (t - a).max(0.0))
        }
        _ => None,
    };
    let recovery_latency_s =
        first_steady_window(samples, th, times.removed, times.end).map(|t| t - times.removed);
    let mut wl = ok_latencies(&warm);
    let mut fl = ok_latencies(&fault);
    let (w50, w99) = (quantile(&mut wl, 0.5), quantile(&mut wl, 0.99));
    let (f50, f99) = (quantile(&mut fl, 0.5), quantile(&mut fl, 0.99));
    let ratio = |f: Option<f64>, w: Option<f64>| match (f, w) {
        (Some(f), Some(w)) if w > 0.0 => Some(f / w),
        _ => None,
    };
    Kpis {
        availability,
        detection_latency_s,
        mitigation_latency_s,
        recovery_latency_s,
        latency_p50_ratio: ratio(f50, w50),
        latency_p99_ratio: ratio(f99, w99),
        warmup_p50_s: w50,
        fault_p50_s: f50,
        samples: fault.len(),
        failed: fault.iter().filter(|s| !s.ok).count(),
        warmup_steady: th.steady(&warm),
    }
}

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The service stayed in its steady state, or returned to it while the
    /// fault was still in (it masked the fault), and after removal.
    Tolerated,
    /// Availability dropped but stayed at or above `failed_below`, and the
    /// service recovered after removal.
    Degraded,
    /// Availability below `failed_below`, or no recovery after removal.
    Failed,
    /// A fault never fired: nothing was tested.
    NotExercised,
    /// A stop condition fired, the warm-up was not steady, or an inject
    /// failed.
    Aborted,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tolerated => "tolerated",
            Self::Degraded => "degraded",
            Self::Failed => "failed",
            Self::NotExercised => "not_exercised",
            Self::Aborted => "aborted",
        }
    }
}

/// The verdict of a run on one probe, once it was not aborted.
pub fn verdict(k: &Kpis, th: &Thresholds, activations: &[u64]) -> Verdict {
    if activations.contains(&0) {
        return Verdict::NotExercised;
    }
    if k.recovery_latency_s.is_none() || k.availability.unwrap_or(0.0) < th.failed_below {
        return Verdict::Failed;
    }
    if k.detection_latency_s.is_none() || k.mitigation_latency_s.is_some() {
        return Verdict::Tolerated;
    }
    Verdict::Degraded
}

/// Mean, sample standard deviation, and how many values (of the runs that
/// had one).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

pub fn spread(values: impl IntoIterator<Item = Option<f64>>) -> Option<Spread> {
    let v: Vec<f64> = values.into_iter().flatten().collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let sd = if n > 1 {
        (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt()
    } else {
        0.0
    };
    Some(Spread {
        mean,
        sd,
        min: v.iter().copied().fold(f64::INFINITY, f64::min),
        max: v.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TH: Thresholds = Thresholds {
        min_success: 0.95,
        max_latency: None,
        window: 0.5,
        failed_below: 0.5,
        min_samples: 5,
    };

    /// Samples every 50 ms over [0, 10): latency 10 ms, failing where `bad`.
    fn series(bad: impl Fn(f64) -> bool) -> Vec<Sample> {
        (0..200)
            .map(|i| {
                let t = i as f64 * 0.05;
                let ok = !bad(t);
                Sample {
                    t,
                    latency_s: if ok { 0.01 } else { 0.2 },
                    ok,
                    error: None,
                }
            })
            .collect()
    }

    const TIMES: RunTimes = RunTimes {
        warmup_start: 0.0,
        inject_start: 2.0,
        injected: 2.0,
        first_activation: Some(2.0),
        remove_start: 6.0,
        removed: 6.0,
        end: 10.0,
    };

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-6)
    }

    #[test]
    fn a_fault_the_service_never_notices_is_tolerated() {
        let s = series(|_| false);
        let k = compute(&s, &TIMES, &TH);
        assert_eq!(k.availability, Some(1.0));
        assert_eq!(k.detection_latency_s, None);
        assert!(close(k.recovery_latency_s, 0.0));
        assert!(close(k.latency_p50_ratio, 1.0));
        assert!(k.warmup_steady);
        assert_eq!(verdict(&k, &TH, &[5]), Verdict::Tolerated);
        assert_eq!(verdict(&k, &TH, &[5, 0]), Verdict::NotExercised);
    }

    #[test]
    fn failover_is_detected_mitigated_and_tolerated() {
        // Failures from 2.0 to 2.5 (failover after half a second).
        let s = series(|t| (2.0..2.5).contains(&t));
        let k = compute(&s, &TIMES, &TH);
        // The first failed sample started at 2.0 and took 0.2 s.
        assert!(close(k.detection_latency_s, 0.2));
        // The first steady window starts at the first success, 2.5.
        assert!(close(k.mitigation_latency_s, 0.5));
        assert!(close(k.availability, 70.0 / 80.0));
        assert_eq!(k.failed, 10);
        assert!(close(k.recovery_latency_s, 0.0));
        assert_eq!(verdict(&k, &TH, &[1]), Verdict::Tolerated);
    }

    #[test]
    fn a_relapse_is_not_mitigation_and_thin_windows_are_not_steady() {
        // Back at 2.5, down again 4.0..4.5: steady only from 4.5 on.
        let s = series(|t| (2.0..2.5).contains(&t) || (4.0..4.5).contains(&t));
        let k = compute(&s, &TIMES, &TH);
        assert!(close(k.mitigation_latency_s, 2.5), "{k:?}");
        // Three good samples in a window of ten expected: not steady.
        let sparse: Vec<Sample> = s.iter().step_by(4).cloned().collect();
        let th = Thresholds {
            min_samples: 5,
            ..TH
        };
        assert!(!th.steady(&in_range(&sparse, 0.0, 0.5)));
        assert!(th.steady(&in_range(&s, 0.0, 0.5)));
    }

    #[test]
    fn an_outage_for_the_whole_window_fails_and_recovery_is_timed() {
        // Down from 2.0 until 7.0, one second after the removal at 6.0.
        let s = series(|t| (2.0..7.0).contains(&t));
        let k = compute(&s, &TIMES, &TH);
        assert_eq!(k.availability, Some(0.0));
        assert_eq!(k.mitigation_latency_s, None);
        assert!(close(k.recovery_latency_s, 1.0), "{k:?}");
        assert_eq!(k.latency_p50_ratio, None);
        assert_eq!(verdict(&k, &TH, &[1]), Verdict::Failed);
        // Never back: no recovery, failed even with good availability.
        let s = series(|t| t >= 5.9);
        let k = compute(&s, &TIMES, &TH);
        assert_eq!(k.recovery_latency_s, None);
        assert_eq!(verdict(&k, &TH, &[1]), Verdict::Failed);
    }

    #[test]
    fn partial_loss_without_self_recovery_is_degraded() {
        // Every third sample fails during the fault.
        let s: Vec<Sample> = series(|_| false)
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                if (2.0..6.0).contains(&s.t) && i % 3 == 0 {
                    s.ok = false;
                }
                s
            })
            .collect();
        let k = compute(&s, &TIMES, &TH);
        let a = k.availability.unwrap();
        assert!((0.6..0.7).contains(&a), "{a}");
        assert!(k.detection_latency_s.is_some());
        assert_eq!(k.mitigation_latency_s, None);
        assert_eq!(verdict(&k, &TH, &[9]), Verdict::Degraded);
    }

    #[test]
    fn slow_samples_count_as_detected_and_ratios_compare_with_the_warmup() {
        let s: Vec<Sample> = series(|_| false)
            .into_iter()
            .map(|mut s| {
                if (2.0..6.0).contains(&s.t) {
                    s.latency_s = 0.05;
                }
                s
            })
            .collect();
        let th = Thresholds {
            max_latency: Some(0.03),
            ..TH
        };
        let k = compute(&s, &TIMES, &th);
        assert_eq!(k.availability, Some(1.0));
        assert!(close(k.detection_latency_s, 0.05));
        assert!(close(k.latency_p50_ratio, 5.0));
        assert!(close(k.latency_p99_ratio, 5.0));
        assert_eq!(verdict(&k, &th, &[1]), Verdict::Degraded);
        // Without a latency bound nothing failed.
        let k = compute(&s, &TIMES, &TH);
        assert_eq!(k.detection_latency_s, None);
    }

    #[test]
    fn no_activation_means_no_detection() {
        let s = series(|t| (2.0..2.5).contains(&t));
        let times = RunTimes {
            first_activation: None,
            ..TIMES
        };
        let k = compute(&s, &times, &TH);
        assert_eq!(k.detection_latency_s, None);
        assert_eq!(verdict(&k, &TH, &[0]), Verdict::NotExercised);
    }

    #[test]
    fn quantiles_and_spread() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), Some(3.0));
        assert_eq!(quantile(&mut v, 0.99), Some(5.0));
        assert_eq!(quantile(&mut [], 0.5), None);
        let s = spread([Some(1.0), None, Some(3.0)]).unwrap();
        assert_eq!((s.mean, s.n, s.min, s.max), (2.0, 2, 1.0, 3.0));
        assert!((s.sd - 2f64.sqrt()).abs() < 1e-9);
        assert_eq!(spread([None]), None);
    }
}
