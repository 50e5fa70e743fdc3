//! Prometheus (OpenMetrics) endpoint. Counters are read from the per-CPU
//! BPF maps and summed at scrape time, so scraping costs nothing between
//! scrapes and the numbers are never stale.

use std::{fmt::Write as _, sync::Arc};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _, text::encode},
    metrics::{counter::ConstCounter, gauge::ConstGauge, info::Info},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::rpc::{Shared, lock};

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
                (|c: &crate::faults::FaultCounters| c.evaluations) as fn(&_) -> u64,
            ),
            (
                "injectord_fault_activations",
                "Faults delivered",
                |c: &crate::faults::FaultCounters| c.activations,
            ),
        ] {
            let mut family = encoder.encode_descriptor(
                metric,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for c in &counters {
                let labels = [("fault", c.name.as_str()), ("type", c.kind)];
                ConstCounter::new(pick(c)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
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
