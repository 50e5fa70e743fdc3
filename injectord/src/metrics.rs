//! Prometheus endpoint. Counters are read from the per-CPU BPF maps and
//! summed at scrape time, so scraping costs nothing between scrapes and the
//! numbers are never stale.
//!
//! The format is negotiated as Prometheus's own exporters do: OpenMetrics
//! when the `Accept` header asks for it (Prometheus does), else the
//! Prometheus text format 0.0.4 (curl, `promtool check metrics`, older
//! scrapers).
//!
//! The endpoint must never cost the control socket anything: it serves a
//! bounded number of connections at once, each within a deadline, leaves
//! the last file descriptors to the rest of the daemon, and backs off when
//! `accept` fails (EMFILE would otherwise make it spin).

use std::{fmt::Write as _, os::fd::AsRawFd as _, sync::Arc, time::Duration};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{
    family::Metric,
    family::block::latency::BlockSeries,
    family::syscall::latency::LatencySeries,
    faults::{End, FaultCounters},
    rpc::Shared,
};

#[derive(Debug)]
struct FaultCollector {
    state: Shared,
}

impl Collector for FaultCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let faults = &self.state.faults;
        let (active, ended, counters) = (faults.len(), faults.ended(), faults.counters());
        let latency = faults.syscall_latency();
        let block = faults.block_latency();
        encode_faults(encoder, active, &ended, &counters, &latency, &block)
    }
}

/// `injectord_experiment_phase{experiment, run, phase}`: 1 for the phase
/// each running experiment is in (see [`crate::experiment`]). The family
/// is declared even with no experiment running.
#[derive(Debug)]
struct ExperimentCollector {
    state: Shared,
}

impl Collector for ExperimentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "injectord_experiment_phase",
            "1 for the phase (warmup, inject, recover) that each running experiment's current run is in, as its runner reports it",
            None,
            MetricType::Gauge,
        )?;
        for (experiment, run, phase) in self.state.experiments.current() {
            let labels = [
                ("experiment", experiment.as_str()),
                ("run", run.as_str()),
                ("phase", phase),
            ];
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Every metric family about faults. Each family is written (HELP and
/// TYPE) even with no fault installed, so a dashboard's queries name
/// metrics the daemon exports whatever runs.
fn encode_faults(
    mut encoder: DescriptorEncoder,
    active: usize,
    ended: &[(End, u64)],
    counters: &[FaultCounters],
    latency: &[LatencySeries],
    block: &[BlockSeries],
) -> Result<(), std::fmt::Error> {
    let gauge = ConstGauge::new(active as i64);
    gauge.encode(encoder.encode_descriptor(
        "injectord_faults_active",
        "Faults currently installed",
        None,
        gauge.metric_type(),
    )?)?;
    let mut family = encoder.encode_descriptor(
        "injectord_faults_ended",
        "Faults that ended, by reason: removed (remove), cleared (clear), ttl (their duration ran out), target_gone (their target cgroup was removed: the pod, VM or container ended)",
        None,
        MetricType::Counter,
    )?;
    for (end, n) in ended {
        ConstCounter::new(*n).encode(family.encode_family(&[("reason", end.as_str())])?)?;
    }
    for (metric, help, pick) in [
        (
            "injectord_fault_evaluations",
            "Events that matched a fault's target and filter",
            (|c: &FaultCounters| c.counters.evaluations) as fn(&_) -> u64,
        ),
        (
            "injectord_fault_activations",
            "Faults delivered",
            |c: &FaultCounters| c.counters.activations,
        ),
    ] {
        let mut family = encoder.encode_descriptor(metric, help, None, MetricType::Counter)?;
        for c in counters {
            let labels = [("fault", c.name.as_str()), ("type", c.kind)];
            ConstCounter::new(pick(c)).encode(family.encode_family(&labels)?)?;
        }
    }
    encode_family_samples(&mut encoder, counters)?;
    encode_delay(&mut encoder, counters)?;
    encode_syscall_latency(&mut encoder, latency)?;
    encode_block_latency(&mut encoder, block)
}

/// `injectord_block_io_latency_seconds{device, op[, cgroup]}`: block I/O
/// latency from the request's start to its completion (iostat's await
/// span; a cgroup's series include io_delay holds); the series without
/// `cgroup`
/// count every I/O of the device, those with one the I/O a targeted
/// cgroup issued (a subset).
fn encode_block_latency(
    encoder: &mut DescriptorEncoder,
    block: &[BlockSeries],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "injectord_block_io_latency_seconds",
        "Block I/O latency from the request's start to its completion (iostat's await), by device and operation; with a cgroup label, the I/O that a cgroup a block fault targets issued, io_delay holds included",
        None,
        MetricType::Histogram,
    )?;
    for s in block {
        let buckets = log2_buckets(&s.buckets, 1024e-9);
        let mut labels = vec![("device", s.device.as_str()), ("op", s.op)];
        if let Some(c) = &s.cgroup {
            labels.push(("cgroup", c.as_str()));
        }
        family
            .encode_family(&labels)?
            .encode_histogram::<Vec<(String, String)>>(
                s.sum_ns as f64 * 1e-9,
                s.buckets.iter().sum(),
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// The families' own counters (e.g. `injectord_packets_total{outcome}`),
/// one metric family each, in order of first appearance.
fn encode_family_samples(
    encoder: &mut DescriptorEncoder,
    counters: &[FaultCounters],
) -> Result<(), std::fmt::Error> {
    let mut metrics: Vec<&'static Metric> = Vec::new();
    for s in counters.iter().flat_map(|c| &c.counters.samples) {
        if !metrics.iter().any(|m| std::ptr::eq(*m, s.metric)) {
            metrics.push(s.metric);
        }
    }
    for metric in metrics {
        let mut family =
            encoder.encode_descriptor(metric.name, metric.help, None, MetricType::Counter)?;
        for c in counters {
            for s in c
                .counters
                .samples
                .iter()
                .filter(|s| std::ptr::eq(s.metric, metric))
            {
                let labels = [("fault", c.name.as_str()), ("type", c.kind), s.label];
                ConstCounter::new(s.value).encode(family.encode_family(&labels)?)?;
            }
        }
    }
    Ok(())
}

/// `injectord_syscall_latency_seconds{cgroup, syscalls}`: how long the
/// calls of each targeted cgroup took, by syscall group.
fn encode_syscall_latency(
    encoder: &mut DescriptorEncoder,
    latency: &[LatencySeries],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "injectord_syscall_latency_seconds",
        "Latency of the syscalls of each cgroup a fault targets, by syscall group",
        None,
        MetricType::Histogram,
    )?;
    for s in latency {
        // Kernel bucket k: calls of at most 2^(10+k) ns.
        let buckets = log2_buckets(&s.buckets, 1024e-9);
        let labels = [("cgroup", s.cgroup.as_str()), ("syscalls", s.syscalls)];
        family
            .encode_family(&labels)?
            .encode_histogram::<Vec<(String, String)>>(
                s.sum_ns as f64 * 1e-9,
                s.buckets.iter().sum(),
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// `injectord_injected_delay_seconds{fault, type}`: the delay each delayed
/// packet was given (log2 buckets kept per CPU in the kernel), and how long
/// each pause of a process_pause fault lasted (measured by the daemon).
fn encode_delay(
    encoder: &mut DescriptorEncoder,
    counters: &[FaultCounters],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "injectord_injected_delay_seconds",
        "Delay injected: into each delayed packet, or each pause of a process",
        None,
        MetricType::Histogram,
    )?;
    for c in counters {
        let Some(h) = &c.counters.injected_delay else {
            continue;
        };
        let buckets = delay_buckets(&h.buckets);
        let count = h.buckets.iter().sum();
        let labels = [("fault", c.name.as_str()), ("type", c.kind)];
        family
            .encode_family(&labels)?
            .encode_histogram::<Vec<(String, String)>>(
                h.sum_ns as f64 * 1e-9,
                count,
                &buckets,
                None,
            )?;
    }
    Ok(())
}

/// Upper bounds (seconds) and counts of the delay histogram's buckets:
/// kernel bucket `k` holds `[2^k, 2^(k+1))` µs.
fn delay_buckets(counts: &[u64]) -> Vec<(f64, u64)> {
    log2_buckets(counts, 2e-6)
}

/// Upper bounds (seconds) and counts of a log2 histogram whose first
/// bucket ends at `first` seconds, each next one at twice the last, except
/// the last, which also takes everything longer: its bound is `+Inf`
/// (prometheus-client writes `le="+Inf"` for `f64::MAX` only). Without a
/// `+Inf` bucket a strict OpenMetrics parser rejects the scrape and
/// `histogram_quantile` returns NaN.
fn log2_buckets(counts: &[u64], first: f64) -> Vec<(f64, u64)> {
    let last = counts.len().saturating_sub(1);
    counts
        .iter()
        .enumerate()
        .map(|(k, n)| {
            let bound = if k == last {
                f64::MAX
            } else {
                first * (1u64 << k) as f64
            };
            (bound, *n)
        })
        .collect()
}

pub fn registry(state: Shared) -> Registry {
    let mut registry = Registry::default();
    registry.register(
        "injectord_build",
        "injectord build information",
        Info::new(vec![
            ("version", env!("CARGO_PKG_VERSION").to_string()),
            ("kernel", state.capabilities.kernel.clone()),
        ]),
    );
    let recovered = prometheus_client::metrics::family::Family::<
        Vec<(String, String)>,
        prometheus_client::metrics::counter::Counter,
    >::default();
    for (outcome, n) in [
        ("undone", state.recovery.undone),
        ("gone", state.recovery.gone),
        ("failed", state.recovery.failed),
    ] {
        recovered
            .get_or_create(&vec![("outcome".to_string(), outcome.to_string())])
            .inc_by(n);
    }
    registry.register(
        "injectord_recovered",
        "Netlink state a previous injectord left behind (killed with its reaper), by what start-up recovery did with it",
        recovered,
    );
    let lease =
        prometheus_client::metrics::gauge::Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    lease.set(state.lease.as_secs_f64());
    registry.register(
        "injectord_lease_seconds",
        "How long faults keep firing after the daemon last renewed its lease",
        lease,
    );
    registry.register_collector(Box::new(ExperimentCollector {
        state: state.clone(),
    }));
    registry.register_collector(Box::new(FaultCollector { state }));
    registry
}

/// Metrics connections served at once. Prometheus opens one per scrape
/// (two for an HA pair), a person with curl one more; further clients wait
/// in the listen backlog, where they hold no file descriptor of ours.
const MAX_CONNECTIONS: usize = 16;

/// The whole exchange (request head in, response out) must fit in this, so
/// a slow or silent client gives its connection back. Prometheus's own
/// scrape timeout defaults to the same.
const EXCHANGE_LIMIT: Duration = Duration::from_secs(10);

/// A metrics connection may not take any of the last this many file
/// descriptors under RLIMIT_NOFILE: they stay for the control socket and
/// the faults it installs.
const FD_RESERVE: u64 = 64;

/// Longest request head accepted (Prometheus sends a few hundred bytes).
const MAX_HEAD: usize = 8192;

pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut backoff = Backoff::default();
    loop {
        // Taken before accepting: at the bound, connections wait in the
        // kernel's backlog instead of being accepted and starved.
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) if fd_headroom(stream.as_raw_fd()) => stream,
            Ok((stream, peer)) => {
                drop(stream);
                let first = !backoff.active();
                let delay = backoff.next();
                if first {
                    tracing::warn!(%peer, ?delay, "metrics connection refused: the daemon is near its open-file limit");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            Err(e) => {
                // EMFILE and ENFILE leave the pending connection in the
                // backlog, so an immediate retry fails the same way: spin.
                let first = !backoff.active();
                let delay = backoff.next();
                if first {
                    tracing::warn!(error = %e, "metrics accept failed; backing off");
                } else {
                    tracing::debug!(error = %e, ?delay, "metrics accept failed again");
                }
                tokio::time::sleep(delay).await;
                continue;
            }
        };
        if backoff.reset() {
            tracing::info!("metrics endpoint accepting again");
        }
        let registry = registry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match tokio::time::timeout(EXCHANGE_LIMIT, respond(stream, registry)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection"),
                Err(_) => tracing::debug!("metrics connection closed after {EXCHANGE_LIMIT:?}"),
            }
        });
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Delay before the next `accept` after a failure: 5 ms, doubling up to
/// 1 s, as Go's net/http server does.
#[derive(Debug, Default)]
struct Backoff {
    delay: Option<Duration>,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let delay = self.delay.map_or(BACKOFF_MIN, |d| (d * 2).min(BACKOFF_MAX));
        self.delay = Some(delay);
        delay
    }

    fn active(&self) -> bool {
        self.delay.is_some()
    }

    /// Back to no delay; whether there was one.
    fn reset(&mut self) -> bool {
        self.delay.take().is_some()
    }
}

/// Whether an accepted descriptor stays below the last [`FD_RESERVE`]
/// under the open-file limit. Descriptors are allocated lowest first, so
/// every one below `fd` is in use: past the line, the daemon is close to
/// EMFILE and the control socket comes first. The limit is read each time,
/// as an operator may lower it on the running daemon (prlimit).
fn fd_headroom(fd: i32) -> bool {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return true;
    }
    u64::try_from(fd).map_or(true, |fd| fd.saturating_add(FD_RESERVE) < limit.rlim_cur)
}

/// A minimal HTTP/1.x responder: GET /metrics and GET /healthz, one
/// request per connection. Prometheus needs nothing more.
async fn respond(mut stream: TcpStream, registry: Arc<Registry>) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    // Read up to the end of the request head.
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return write(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "",
            )
            .await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = Head::parse(&String::from_utf8_lossy(&buf[..len]));
    match (head.method.as_str(), head.path.as_str()) {
        ("GET", "/metrics") => {
            let format = Format::negotiate(&head.accept);
            // Reading the counters takes the fault table's lock and the
            // maps' (briefly, but an install may hold an interface's): off
            // the runtime, so a scrape never stalls the control socket.
            let rendered = tokio::task::spawn_blocking(move || format.render(&registry)).await;
            let Ok(Ok(body)) = rendered else {
                return write(&mut stream, "500 Internal Server Error", "text/plain", "").await;
            };
            write(&mut stream, "200 OK", format.content_type(), &body).await
        }
        ("GET", "/healthz") => write(&mut stream, "200 OK", "text/plain", "ok\n").await,
        ("GET", _) => write(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await,
        _ => write(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
}

/// What the responder needs of a request head.
#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    method: String,
    /// Without the query string.
    path: String,
    /// Every `Accept` header's value, joined by commas (RFC 9110 allows
    /// the header to be repeated).
    accept: String,
}

impl Head {
    fn parse(head: &str) -> Self {
        let mut lines = head.split("\r\n");
        let mut parts = lines.next().unwrap_or("").split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("");
        let path = target.split('?').next().unwrap_or("").to_string();
        let accept = lines
            .filter_map(|l| l.split_once(':'))
            .filter(|(name, _)| name.trim().eq_ignore_ascii_case("accept"))
            .map(|(_, value)| value.trim())
            .collect::<Vec<_>>()
            .join(",");
        Self {
            method,
            path,
            accept,
        }
    }
}

/// The exposition formats served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    Text,
}

impl Format {
    /// As client_golang's `expfmt.NegotiateIncludingOpenMetrics`: the
    /// acceptable media ranges by falling quality (`q=0` is "not
    /// acceptable"); the first that is OpenMetrics (version 0.0.1, 1.0.0 or
    /// none) or text/plain (version 0.0.4 or none) wins; text otherwise.
    fn negotiate(accept: &str) -> Self {
        let mut ranges: Vec<(f64, &str, Option<&str>)> = accept
            .split(',')
            .filter_map(|range| {
                let mut params = range.split(';');
                let media = params.next()?.trim();
                let (mut q, mut version) = (1.0, None);
                for p in params {
                    let Some((k, v)) = p.split_once('=') else {
                        continue;
                    };
                    match k.trim().to_ascii_lowercase().as_str() {
                        "q" => q = v.trim().parse().unwrap_or(0.0),
                        "version" => version = Some(v.trim().trim_matches('"')),
                        _ => {}
                    }
                }
                (q > 0.0).then_some((q, media, version))
            })
            .collect();
        // Stable: equal qualities keep the client's order.
        ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, media, version) in ranges {
            if media.eq_ignore_ascii_case("application/openmetrics-text")
                && matches!(version, None | Some("0.0.1" | "1.0.0"))
            {
                return Self::OpenMetrics;
            }
            if media.eq_ignore_ascii_case("text/plain") && matches!(version, None | Some("0.0.4")) {
                return Self::Text;
            }
        }
        Self::Text
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Text => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    fn render(self, registry: &Registry) -> Result<String, std::fmt::Error> {
        let mut openmetrics = String::new();
        encode(&mut openmetrics, registry)?;
        Ok(match self {
            Self::OpenMetrics => openmetrics,
            Self::Text => openmetrics_to_text(&openmetrics),
        })
    }
}

/// The Prometheus text format 0.0.4 of an OpenMetrics exposition as
/// prometheus-client writes it (no exemplars, no `_created` samples, no
/// escapes in HELP). The two formats differ in the family name HELP and
/// TYPE give: OpenMetrics names the family (`x` for samples `x_total`),
/// 0.0.4 the samples. So a counter's HELP and TYPE name `x_total`, an info
/// family becomes the gauge `x_info`, and `# UNIT` and `# EOF` go.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let types: std::collections::HashMap<&str, &str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.split_once(' '))
        .collect();
    let text_name = |name: &str| -> (String, &'static str) {
        match types.get(name).copied().unwrap_or("unknown") {
            "counter" => (format!("{name}_total"), "counter"),
            "info" => (format!("{name}_info"), "gauge"),
            "gauge" | "stateset" => (name.to_string(), "gauge"),
            "histogram" => (name.to_string(), "histogram"),
            "summary" => (name.to_string(), "summary"),
            _ => (name.to_string(), "untyped"),
        }
    };
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some((name, help)) = line.strip_prefix("# HELP ").and_then(|r| r.split_once(' ')) {
            let _ = writeln!(out, "# HELP {} {help}", text_name(name).0);
        } else if let Some((name, _)) = line.strip_prefix("# TYPE ").and_then(|r| r.split_once(' '))
        {
            let (name, kind) = text_name(name);
            let _ = writeln!(out, "# TYPE {name} {kind}");
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

async fn write(
    stream: &mut TcpStream,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let mut resp = String::with_capacity(body.len() + 128);
    let _ = write!(
        resp,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use injector_common::packet::{DELAY_BUCKETS, DelayHistogram};

    use super::*;
    use crate::family::{Counters, Sample};

    static PACKETS: Metric = Metric {
        name: "injectord_packets",
        help: "Packets",
    };

    /// The fault families of a scrape with one delay fault, without a
    /// kernel behind them.
    #[derive(Debug)]
    struct Fixed(Vec<FaultCounters>);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            let ended: Vec<_> = End::ALL.iter().map(|e| (*e, 2)).collect();
            encode_faults(encoder, self.0.len(), &ended, &self.0, &[], &[])
        }
    }

    fn registry_with_delay() -> Registry {
        let mut buckets = [0; DELAY_BUCKETS];
        buckets[1] = 3; // [2, 4) µs
        buckets[DELAY_BUCKETS - 1] = 1; // clamped: anything longer
        let fault = FaultCounters {
            name: "slow".into(),
            kind: "packet_delay",
            counters: Counters {
                evaluations: 5,
                activations: 4,
                samples: vec![Sample {
                    metric: &PACKETS,
                    label: ("outcome", "delayed"),
                    value: 4,
                }],
                injected_delay: Some(DelayHistogram {
                    buckets,
                    sum_ns: 9_000,
                }),
            },
        };
        let mut registry = Registry::default();
        registry.register(
            "injectord_build",
            "injectord build information",
            Info::new(vec![("version", "0".to_string())]),
        );
        registry.register_collector(Box::new(Fixed(vec![fault])));
        registry
    }

    #[test]
    fn delay_histogram_ends_in_inf_holding_every_sample() {
        let body = Format::OpenMetrics
            .render(&registry_with_delay())
            .expect("encodes");
        let bucket = |le: &str| -> Option<u64> {
            body.lines()
                .filter(|l| l.starts_with("injectord_injected_delay_seconds_bucket{"))
                .filter(|l| l.contains(r#"fault="slow",type="packet_delay""#))
                .find(|l| l.contains(&format!("le=\"{le}\"")))?
                .rsplit_once(' ')?
                .1
                .parse()
                .ok()
        };
        assert_eq!(bucket("+Inf"), Some(4), "{body}");
        assert!(
            body.contains(
                "injectord_injected_delay_seconds_count{fault=\"slow\",type=\"packet_delay\"} 4\n"
            ),
            "{body}"
        );
        // Bucket k is [2^k, 2^(k+1)) µs: the three 2-4 µs delays are under
        // 4 µs and not under 2 µs.
        assert_eq!(bucket("0.000004"), Some(3), "{body}");
        assert_eq!(bucket("0.000002"), Some(0), "{body}");
        assert!(body.ends_with("# EOF\n"));
    }

    #[test]
    fn delay_buckets_double_from_2us_and_end_at_inf() {
        let b = delay_buckets(&[0; DELAY_BUCKETS]);
        assert_eq!(b.len(), DELAY_BUCKETS);
        assert_eq!(b[0].0, 2e-6);
        assert_eq!(b[1].0, 4e-6);
        assert_eq!(b[DELAY_BUCKETS - 2].0, (1u64 << 31) as f64 * 1e-6);
        assert_eq!(b[DELAY_BUCKETS - 1].0, f64::MAX);
    }

    /// Sample name without labels or value.
    fn sample_name(line: &str) -> &str {
        line.split(['{', ' ']).next().unwrap_or(line)
    }

    #[test]
    fn text_format_names_every_sample_in_help_and_type() {
        let body = Format::Text
            .render(&registry_with_delay())
            .expect("encodes");
        let declared = |prefix: &str| -> Vec<String> {
            body.lines()
                .filter_map(|l| l.strip_prefix(prefix))
                .map(|r| sample_name(r).to_string())
                .collect()
        };
        let (help, typed) = (declared("# HELP "), declared("# TYPE "));
        assert_eq!(help, typed, "{body}");
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            let name = sample_name(line);
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|f| body.contains(&format!("# TYPE {f} histogram\n")))
                .unwrap_or(name);
            assert!(
                help.iter().any(|h| h == family),
                "{name} has no HELP: {body}"
            );
        }
        for expected in [
            "# TYPE injectord_build_info gauge\n",
            "# TYPE injectord_fault_activations_total counter\n",
            "# HELP injectord_packets_total Packets\n",
            "# TYPE injectord_injected_delay_seconds histogram\n",
            "injectord_packets_total{fault=\"slow\",type=\"packet_delay\",outcome=\"delayed\"} 4\n",
            "# TYPE injectord_faults_ended_total counter\n",
            "injectord_faults_ended_total{reason=\"target_gone\"} 2\n",
            "injectord_faults_ended_total{reason=\"ttl\"} 2\n",
        ] {
            assert!(body.contains(expected), "{expected:?} missing: {body}");
        }
        assert!(
            !body.contains("# EOF") && !body.contains("# UNIT"),
            "{body}"
        );
    }

    #[test]
    fn negotiates_as_prometheus_exporters_do() {
        use Format::{OpenMetrics, Text};
        for (accept, format) in [
            // Prometheus 2.42's scrape.
            (
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                OpenMetrics,
            ),
            ("application/openmetrics-text", OpenMetrics),
            (
                "Application/OpenMetrics-Text; version=\"0.0.1\"",
                OpenMetrics,
            ),
            ("", Text),
            ("*/*", Text),
            ("text/plain", Text),
            ("text/plain;version=0.0.4", Text),
            // Quality decides, not order.
            (
                "text/plain;q=0.5, application/openmetrics-text;q=0.9",
                OpenMetrics,
            ),
            ("application/openmetrics-text;q=0.5, text/plain;q=0.9", Text),
            // Not acceptable, or a version we do not write.
            ("application/openmetrics-text;q=0", Text),
            ("application/openmetrics-text;version=2.0.0", Text),
            (
                "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
                Text,
            ),
        ] {
            assert_eq!(Format::negotiate(accept), format, "Accept: {accept}");
        }
    }

    #[test]
    fn head_joins_accept_headers_of_any_case() {
        let head = Head::parse(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\naccept: text/plain;q=0.1\r\nACCEPT: application/openmetrics-text\r\n\r\n",
        );
        assert_eq!(
            head,
            Head {
                method: "GET".into(),
                path: "/metrics".into(),
                accept: "text/plain;q=0.1,application/openmetrics-text".into(),
            }
        );
        assert_eq!(Format::negotiate(&head.accept), Format::OpenMetrics);
    }

    #[test]
    fn backoff_doubles_to_a_second_and_resets() {
        let mut b = Backoff::default();
        assert!(!b.active());
        let delays: Vec<_> = (0..10).map(|_| b.next()).collect();
        assert_eq!(delays[0], BACKOFF_MIN);
        assert_eq!(delays[1], BACKOFF_MIN * 2);
        assert_eq!(delays[9], BACKOFF_MAX);
        assert!(b.reset());
        assert!(!b.reset());
        assert_eq!(b.next(), BACKOFF_MIN);
    }
}
