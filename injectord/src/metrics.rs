//! Prometheus (OpenMetrics) endpoint. Counters are read from the per-CPU
//! BPF maps and summed at scrape time, so scraping costs nothing between
//! scrapes and the numbers are never stale.

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{
    family::Metric,
    faults::FaultCounters,
    rpc::{Shared, lock},
};

#[derive(Debug)]
struct FaultCollector {
    state: Shared,
}

impl Collector for FaultCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (active, counters) = {
            let faults = lock(&self.state);
            (faults.len(), faults.counters())
        };
        let gauge = ConstGauge::new(active as i64);
        gauge.encode(encoder.encode_descriptor(
            "injectord_faults_active",
            "Faults currently installed",
            None,
            gauge.metric_type(),
        )?)?;
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
            for c in &counters {
                let labels = [("fault", c.name.as_str()), ("type", c.kind)];
                ConstCounter::new(pick(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        encode_family_samples(&mut encoder, &counters)?;
        encode_delay(&mut encoder, &counters)
    }
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

/// `injectord_injected_delay_seconds{fault, type}`: the delay each delayed
/// packet was given (log2 buckets kept per CPU in the kernel).
fn encode_delay(
    encoder: &mut DescriptorEncoder,
    counters: &[FaultCounters],
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "injectord_injected_delay_seconds",
        "Delay injected into each delayed packet",
        None,
        MetricType::Histogram,
    )?;
    for c in counters {
        let Some(h) = &c.counters.injected_delay else {
            continue;
        };
        // Kernel bucket k holds [2^k, 2^(k+1)) microseconds.
        let buckets: Vec<(f64, u64)> = h
            .buckets
            .iter()
            .enumerate()
            .map(|(k, n)| ((1u64 << (k + 1)) as f64 * 1e-6, *n))
            .collect();
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
    registry.register_collector(Box::new(FaultCollector { state }));
    registry
}

pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &registry).await {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

/// A minimal HTTP/1.x responder: GET /metrics and GET /healthz, one
/// request per connection. Prometheus needs nothing more.
async fn respond(mut stream: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut buf = vec![0u8; 8192];
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
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            stream.read(&mut buf[len..]),
        )
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let mut body = String::new();
            if encode(&mut body, registry).is_err() {
                return write(&mut stream, "500 Internal Server Error", "text/plain", "").await;
            }
            write(
                &mut stream,
                "200 OK",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                &body,
            )
            .await
        }
        ("GET", "/healthz") => write(&mut stream, "200 OK", "text/plain", "ok\n").await,
        ("GET", _) => write(&mut stream, "404 Not Found", "text/plain", "try /metrics\n").await,
        _ => write(&mut stream, "405 Method Not Allowed", "text/plain", "").await,
    }
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
