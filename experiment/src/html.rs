//! A static, self-contained HTML report: inline CSS and SVG drawn here, no
//! script, no server, nothing fetched. Per probe: latency and success over
//! time with the fault windows shaded; per fault set: KPI bars.

use std::fmt::Write as _;

use crate::{kpi::Sample, report::Report};

/// Fault windows (inject to removal).
pub const FAULT_FILL: &str = "#f4a6a6";
/// Recover phases.
pub const RECOVER_FILL: &str = "#cfe8cf";
/// Successful samples' latency.
pub const SAMPLE_COLOUR: &str = "#1f77b4";
/// Failed samples.
pub const FAILED_COLOUR: &str = "#d62728";
/// Rolling success ratio.
pub const SUCCESS_COLOUR: &str = "#2ca02c";
/// KPI bars.
pub const BAR_COLOUR: &str = "#4e79a7";

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |x| format!("{x:.digits$}"))
}

const W: f64 = 1100.0;
const LEFT: f64 = 60.0;
const RIGHT: f64 = 20.0;

/// One probe's chart: latency (top) and rolling success (bottom) over the
/// experiment, runs' fault windows shaded and numbered.
fn probe_chart(out: &mut String, report: &Report, probe: usize) {
    let p = &report.probes[probe];
    let (lat_h, succ_h, gap, top) = (220.0, 80.0, 30.0, 20.0);
    let h = top + lat_h + gap + succ_h + 30.0;
    let span = report.duration_s.max(1e-3);
    let x = |t: f64| LEFT + (t / span).clamp(0.0, 1.0) * (W - LEFT - RIGHT);
    let ymax = p.timeout_s.max(
        p.samples
            .iter()
            .filter(|s| s.ok)
            .map(|s| s.latency_s)
            .fold(0.0, f64::max),
    ) * 1.05;
    let y = |l: f64| top + lat_h - (l / ymax).clamp(0.0, 1.0) * lat_h;
    let _ = writeln!(
        out,
        r#"<svg class="chart" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="latency and success of probe {name}">"#,
        name = esc(&p.name)
    );
    for r in &report.runs {
        let (a, b) = (x(r.times.injected), x(r.times.remove_start));
        let (c, d) = (b, x(r.times.end));
        for (y0, hh) in [(top, lat_h), (top + lat_h + gap, succ_h)] {
            let _ = writeln!(
                out,
                r#"<rect x="{a:.1}" y="{y0}" width="{:.1}" height="{hh}" fill="{FAULT_FILL}" fill-opacity="0.8"/><rect x="{c:.1}" y="{y0}" width="{:.1}" height="{hh}" fill="{RECOVER_FILL}" fill-opacity="0.6"/>"#,
                (b - a).max(1.0),
                (d - c).max(0.0),
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            (a + b) / 2.0,
            top - 5.0,
            r.index
        );
    }
    // Axes and gridlines.
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{}" height="{lat_h}" fill="none" stroke="#888"/><rect x="{LEFT}" y="{}" width="{}" height="{succ_h}" fill="none" stroke="#888"/>"##,
        W - LEFT - RIGHT,
        top + lat_h + gap,
        W - LEFT - RIGHT
    );
    for i in 0..=4 {
        let l = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{:.1}" font-size="10" text-anchor="end">{:.0} ms</text><line x1="{LEFT}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#ddd"/>"##,
            LEFT - 4.0,
            y(l) + 3.0,
            l * 1000.0,
            W - RIGHT,
            y(l),
            y(l)
        );
    }
    let ticks = 10;
    for i in 0..=ticks {
        let t = span * f64::from(i) / f64::from(ticks);
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{}" font-size="10" text-anchor="middle">{t:.1}s</text>"#,
            x(t),
            h - 8.0
        );
    }
    // Samples: successes as dots, failures as red ticks at the top.
    let mut dots = String::new();
    let mut fails = String::new();
    for s in &p.samples {
        if s.ok {
            let _ = write!(dots, "M{:.1},{:.1}h0.1", x(s.t), y(s.latency_s));
        } else {
            let _ = write!(fails, "M{:.1},{:.1}v8", x(s.t), top);
        }
    }
    let _ = writeln!(
        out,
        r#"<path d="{dots}" stroke="{SAMPLE_COLOUR}" stroke-width="3" stroke-linecap="round" fill="none"/><path d="{fails}" stroke="{FAILED_COLOUR}" stroke-width="1.5" fill="none"/>"#
    );
    // Rolling success ratio over the last ten samples.
    let base = top + lat_h + gap;
    let window = 10usize;
    let mut line = String::new();
    for (i, s) in p.samples.iter().enumerate() {
        let from = i.saturating_sub(window - 1);
        let w: &[Sample] = &p.samples[from..=i];
        let ratio = w.iter().filter(|s| s.ok).count() as f64 / w.len() as f64;
        let cmd = if i == 0 { 'M' } else { 'L' };
        let _ = write!(
            line,
            "{cmd}{:.1},{:.1}",
            x(s.end()),
            base + succ_h - ratio * succ_h
        );
    }
    let _ = writeln!(
        out,
        r#"<path d="{line}" stroke="{SUCCESS_COLOUR}" stroke-width="2" fill="none"/><text x="{}" y="{}" font-size="10" text-anchor="end">100%</text><text x="{}" y="{}" font-size="10" text-anchor="end">0%</text><text x="{}" y="{}" font-size="11">success (last 10 samples)</text>"#,
        LEFT - 4.0,
        base + 8.0,
        LEFT - 4.0,
        base + succ_h,
        LEFT + 4.0,
        base - 4.0,
    );
    out.push_str("</svg>\n");
}

/// Bars per fault set: mean availability, detection and recovery latency.
fn kpi_bars(out: &mut String, report: &Report) {
    let rows = &report.aggregates;
    if rows.is_empty() {
        return;
    }
    let row_h = 22.0;
    let label_w = 260.0;
    let col_w = (W - label_w - 20.0) / 3.0;
    let h = 40.0 + row_h * rows.len() as f64;
    let max_of = |f: fn(&crate::report::Aggregate) -> Option<f64>| {
        rows.iter().filter_map(f).fold(0.0, f64::max).max(1e-3)
    };
    let det_max = max_of(|a| a.detection_latency_s.map(|s| s.mean));
    let rec_max = max_of(|a| a.recovery_latency_s.map(|s| s.mean));
    let _ = writeln!(
        out,
        r#"<svg class="bars" width="{W}" height="{h}" viewBox="0 0 {W} {h}" role="img" aria-label="KPIs per fault set">"#
    );
    for (i, title) in [
        "availability (0–1)",
        "detection latency (s)",
        "recovery latency (s)",
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="16" font-size="12" font-weight="bold">{title}</text>"#,
            label_w + col_w * i as f64
        );
    }
    for (r, a) in rows.iter().enumerate() {
        let yy = 28.0 + row_h * r as f64;
        let _ = writeln!(
            out,
            r#"<text x="4" y="{:.1}" font-size="11">{}</text>"#,
            yy + 14.0,
            esc(&a.faults.join(" + "))
        );
        for (i, (v, max, digits)) in [
            (a.availability.map(|s| s.mean), 1.0, 3),
            (a.detection_latency_s.map(|s| s.mean), det_max, 3),
            (a.recovery_latency_s.map(|s| s.mean), rec_max, 3),
        ]
        .into_iter()
        .enumerate()
        {
            let x0 = label_w + col_w * i as f64;
            let len = v.map_or(0.0, |v| (v / max).clamp(0.0, 1.0) * (col_w - 70.0));
            let _ = writeln!(
                out,
                r#"<rect x="{x0:.1}" y="{:.1}" width="{len:.1}" height="16" fill="{BAR_COLOUR}"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
                yy + 2.0,
                x0 + len + 4.0,
                yy + 14.0,
                num(v, digits)
            );
        }
    }
    out.push_str("</svg>\n");
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Experiment {name}</title>
<style>
body {{ font-family: sans-serif; margin: 20px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin-bottom: 16px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 7px; text-align: right; }}
th {{ background: #f0f0f0; }} td.l {{ text-align: left; }}
.tolerated {{ background: #d4edda; }} .degraded {{ background: #fff3cd; }}
.failed {{ background: #f8d7da; }} .not_exercised {{ background: #e2e3e5; }} .aborted {{ background: #f5c6cb; }}
.legend span {{ display: inline-block; width: 14px; height: 10px; margin: 0 4px 0 12px; }}
</style></head><body>
<h1>Experiment {name}</h1>
<p>{runs} run(s) in {dur:.1} s; phases warm-up {w} s, inject {i} s, recover {r} s; {repeat} repetition(s).{aborted}</p>"#,
        name = esc(&report.experiment),
        runs = report.runs.len(),
        dur = report.duration_s,
        w = report.phases_s[0],
        i = report.phases_s[1],
        r = report.phases_s[2],
        repeat = report.repeat,
        aborted = report.aborted.as_ref().map_or(String::new(), |s| format!(
            " <b>Aborted</b>: stop condition on {} at {:.3} s (success {:.2} &lt; {}), faults removed at {:.3} s.",
            esc(&s.probe),
            s.breached_at_s,
            s.success_ratio,
            s.success_below,
            s.faults_removed_at_s
        )),
    );
    out.push_str("<h2>Runs</h2>\n<table><tr><th>run</th><th>faults</th><th>verdict</th><th>availability</th><th>detection s</th><th>mitigation s</th><th>recovery s</th><th>p50 ratio</th><th>p99 ratio</th><th>activations</th><th>note</th></tr>\n");
    for r in &report.runs {
        let k = &r.kpis;
        let _ = writeln!(
            out,
            r#"<tr><td>{}</td><td class="l">{}</td><td class="{v}">{v}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="l">{}</td><td class="l">{}</td></tr>"#,
            r.index,
            esc(&r.faults.join(" + ")),
            num(k.availability, 3),
            num(k.detection_latency_s, 3),
            num(k.mitigation_latency_s, 3),
            num(k.recovery_latency_s, 3),
            num(k.latency_p50_ratio, 2),
            num(k.latency_p99_ratio, 2),
            esc(&r
                .activations
                .iter()
                .map(|(f, n)| format!("{f}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")),
            esc(r.reason.as_deref().unwrap_or("")),
            v = r.verdict.as_str(),
        );
    }
    out.push_str("</table>\n");
    let _ = writeln!(
        out,
        r#"<h2>Probes</h2><p class="legend"><span style="background:{FAULT_FILL}"></span>fault in (numbered by run)<span style="background:{RECOVER_FILL}"></span>recover<span style="background:{SAMPLE_COLOUR}"></span>latency of a successful sample<span style="background:{FAILED_COLOUR}"></span>failed sample<span style="background:{SUCCESS_COLOUR}"></span>success ratio</p>"#
    );
    for (i, p) in report.probes.iter().enumerate() {
        let failed = p.samples.iter().filter(|s| !s.ok).count();
        let _ = writeln!(
            out,
            "<h3>{} ({}, every {:.0} ms, timeout {:.0} ms): {} samples, {} failed</h3>",
            esc(&p.name),
            esc(&p.kind),
            p.interval_s * 1000.0,
            p.timeout_s * 1000.0,
            p.samples.len(),
            failed
        );
        probe_chart(&mut out, report, i);
    }
    out.push_str("<h2>KPIs per fault set (mean over repetitions)</h2>\n");
    kpi_bars(&mut out, report);
    if !report.pruned.is_empty() {
        out.push_str(
            "<h2>Pruned</h2>\n<table><tr><th>faults</th><th>policy</th><th>reason</th></tr>\n",
        );
        for p in &report.pruned {
            let policy = serde_json::to_value(p.policy).unwrap_or_default();
            let _ = writeln!(
                out,
                r#"<tr><td class="l">{}</td><td class="l">{}</td><td class="l">{}</td></tr>"#,
                esc(&p.faults.join(" + ")),
                policy.as_str().unwrap_or_default(),
                esc(&p.reason)
            );
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        kpi::{self, Kpis, RunTimes, Verdict},
        prune::Policy,
        report::{Aggregate, ProbeReport, PrunedReport, RunReport},
    };

    /// A report of two runs of one fault, with a pruned pair.
    pub(crate) fn sample_report() -> Report {
        let samples: Vec<Sample> = (0..200)
            .map(|i| {
                let t = f64::from(i) * 0.05;
                let ok = !(2.0..2.5).contains(&t);
                Sample {
                    t,
                    latency_s: if ok { 0.01 } else { 0.2 },
                    ok,
                    error: (!ok).then(|| "timeout".into()),
                }
            })
            .collect();
        let times = RunTimes {
            warmup_start: 0.0,
            inject_start: 2.0,
            injected: 2.0,
            first_activation: Some(2.0),
            remove_start: 6.0,
            removed: 6.0,
            end: 10.0,
        };
        let th = kpi::Thresholds {
            min_success: 0.95,
            max_latency: None,
            window: 0.5,
            failed_below: 0.5,
            min_samples: 5,
        };
        let k = kpi::compute(&samples, &times, &th);
        let run = RunReport {
            index: 1,
            faults: vec!["cut<b1>".into()],
            repetition: 1,
            verdict: Verdict::Tolerated,
            reason: None,
            activations: BTreeMap::from([("cut<b1>".to_string(), 12)]),
            first_activation_s: BTreeMap::new(),
            kpis: k,
            probes: BTreeMap::new(),
            times,
            stop: None,
        };
        let runs = vec![run.clone(), RunReport { index: 2, ..run }];
        Report {
            experiment: "demo".into(),
            started_unix_s: 0.0,
            monotonic_start_ns: 0,
            duration_s: 10.0,
            phases_s: [2.0, 4.0, 4.0],
            repeat: 2,
            aborted: None,
            aggregates: Aggregate::of(&runs),
            pruned: vec![PrunedReport {
                faults: vec!["a".into(), "b".into()],
                policy: Policy::Budget,
                reason: "over the budget".into(),
            }],
            skipped: Vec::new(),
            probes: vec![ProbeReport {
                name: "web".into(),
                kind: "http".into(),
                interval_s: 0.05,
                timeout_s: 0.2,
                samples,
            }],
            runs,
        }
    }

    #[test]
    fn the_page_is_self_contained_and_has_every_plot() {
        let page = render(&sample_report());
        assert!(page.starts_with("<!DOCTYPE html>"));
        assert!(
            !page.contains("<script") && !page.contains("http://") && !page.contains("https://")
        );
        assert_eq!(page.matches("<svg").count(), 2, "a chart and the bars");
        assert!(
            page.contains(FAULT_FILL) && page.contains(SUCCESS_COLOUR) && page.contains(BAR_COLOUR)
        );
        assert!(
            page.contains("cut&lt;b1&gt;") && !page.contains("cut<b1>"),
            "names are escaped"
        );
        assert!(page.contains("over the budget"));
    }

    #[test]
    fn the_table_has_runs_aggregates_and_pruned_sets() {
        let r = sample_report();
        let t = r.table();
        assert!(t.contains("tolerated"), "{t}");
        assert!(t.contains("mean ± sd"), "{t}");
        assert!(t.contains("budget"), "{t}");
        let k: &Kpis = &r.runs[0].kpis;
        assert!(k.detection_latency_s.is_some());
        let json = serde_json::to_value(&r).unwrap();
        for key in [
            "availability",
            "detection_latency_s",
            "recovery_latency_s",
            "latency_p50_ratio",
            "latency_p99_ratio",
        ] {
            assert!(json["runs"][0]["kpis"].get(key).is_some(), "{key}");
        }
        assert_eq!(json["runs"][0]["verdict"], "tolerated");
        assert_eq!(json["runs"][0]["activations"]["cut<b1>"], 12);
        assert_eq!(json["aggregates"][0]["availability"]["n"], 2);
        assert_eq!(json["pruned"][0]["policy"], "budget");
    }
}
