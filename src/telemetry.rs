//! Prometheus metrics, one registry per process.
//!
//! The collectors are global because the layers that observe them (engine batches,
//! pipeline stages, HTTP middleware) should not need a handle threaded through them.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub queue_depth: IntGauge,
    pub jobs_running: IntGauge,
    pub jobs_finished: IntCounterVec,
    pub stage_seconds: HistogramVec,
    pub tiles_inferred: IntCounter,
    pub batch_size: Histogram,
    pub ort_batch_seconds: Histogram,
    pub execution_provider: IntGaugeVec,
    /// Delivery attempts of finished jobs' messages, by channel (`webhook`, `hl7_result`).
    pub deliveries: IntCounterVec,
}

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new_custom(Some("slidegrade".into()), None)?;
    let latency_buckets = vec![
        0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ];
    let m = Metrics {
        http_requests: IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?,
        http_latency: HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route and status",
            )
            .buckets(latency_buckets.clone()),
            &["route", "method", "status"],
        )?,
        queue_depth: IntGauge::new("queue_depth", "Jobs waiting in the queue")?,
        jobs_running: IntGauge::new("jobs_running", "Jobs being graded now")?,
        jobs_finished: IntCounterVec::new(
            Opts::new("jobs_finished_total", "Finished jobs by final state"),
            &["state"],
        )?,
        stage_seconds: HistogramVec::new(
            HistogramOpts::new("job_stage_duration_seconds", "Time per grading stage")
                .buckets(latency_buckets.clone()),
            &["stage"],
        )?,
        tiles_inferred: IntCounter::new("tiles_inferred_total", "Tiles run through a model")?,
        batch_size: Histogram::with_opts(
            HistogramOpts::new("inference_batch_size", "Tiles per inference batch")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )?,
        ort_batch_seconds: Histogram::with_opts(
            HistogramOpts::new(
                "onnxruntime_batch_seconds",
                "ONNX Runtime latency per batch",
            )
            .buckets(latency_buckets),
        )?,
        execution_provider: IntGaugeVec::new(
            Opts::new(
                "execution_provider",
                "1 for the execution provider each model runs on",
            ),
            &["model", "provider"],
        )?,
        deliveries: IntCounterVec::new(
            Opts::new(
                "deliveries_total",
                "Delivery attempts of finished jobs' webhooks and HL7 results, by channel and outcome",
            ),
            &["channel", "outcome"],
        )?,
        registry,
    };
    m.registry.register(Box::new(m.http_requests.clone()))?;
    m.registry.register(Box::new(m.http_latency.clone()))?;
    m.registry.register(Box::new(m.queue_depth.clone()))?;
    m.registry.register(Box::new(m.jobs_running.clone()))?;
    m.registry.register(Box::new(m.jobs_finished.clone()))?;
    m.registry.register(Box::new(m.stage_seconds.clone()))?;
    m.registry.register(Box::new(m.tiles_inferred.clone()))?;
    m.registry.register(Box::new(m.batch_size.clone()))?;
    m.registry.register(Box::new(m.ort_batch_seconds.clone()))?;
    m.registry
        .register(Box::new(m.execution_provider.clone()))?;
    m.registry.register(Box::new(m.deliveries.clone()))?;
    Ok(m)
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    // Building fails only on duplicate or malformed metric names: a programming error
    // caught by any test that touches metrics.
    METRICS.get_or_init(|| build().expect("metric definitions are valid"))
}

/// The text exposition format for `/metrics`.
pub fn render() -> String {
    let mut out = Vec::new();
    let encoder = TextEncoder::new();
    // Encoding into a Vec cannot fail on I/O; a failure would be a malformed metric.
    if encoder
        .encode(&global().registry.gather(), &mut out)
        .is_err()
    {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}
