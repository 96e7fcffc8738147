//! What `GET /metrics` reports, in the OpenMetrics text format that Prometheus scrapes: requests by path and
//! status, errors by kind, batch sizes, request latency, forward-pass time and queue depth.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A request's labels: the route it matched (`other` for unknown paths, so that scanners cannot grow the
/// label set) and the status answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `/`, `/healthz`, `/metrics`, `/v1/model`, `/v1/predict` or `other`.
    pub path: &'static str,
    /// The HTTP status code.
    pub status: u16,
}

/// An error's label: its kind (`bad_request`, `too_large`, `overloaded`, `timeout`, …).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The kind of error.
    pub kind: &'static str,
}

/// The server's counters, gauges and histograms, and the registry that prints them.
pub struct Metrics {
    registry: Registry,
    /// Requests answered, by path and status.
    pub requests: Family<RequestLabels, Counter>,
    /// Error answers, by kind; and connections closed for a reason of their own (`header_timeout`,
    /// `too_many_connections`).
    pub errors: Family<ErrorLabels, Counter>,
    /// Connections open.
    pub connections: Gauge,
    /// Seconds from a request's arrival to its answer, by path.
    pub latency: Histogram,
    /// Images per forward pass.
    pub batch_size: Histogram,
    /// Seconds per forward pass.
    pub forward_seconds: Histogram,
    /// Forward passes run.
    pub forward_passes: Counter,
    /// Images classified.
    pub images: Counter,
    /// Images waiting for a forward pass.
    pub queue_depth: Gauge,
}

impl Metrics {
    /// Registers every metric; `max_batch` bounds the batch-size buckets.
    pub fn new(max_batch: usize) -> Metrics {
        let mut registry = Registry::with_prefix("resnet");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "http_errors",
            "Error answers and refused or timed-out connections, by kind",
            errors.clone(),
        );
        let connections = Gauge::default();
        registry.register("http_connections", "Connections open", connections.clone());
        // 0.5 ms to about 16 s.
        let latency = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival to its answer",
            Unit::Seconds,
            latency.clone(),
        );
        let buckets = (0..)
            .map(|i| (1u64 << i) as f64)
            .take_while(|&b| b < max_batch as f64)
            .chain([max_batch as f64]);
        let batch_size = Histogram::new(buckets);
        registry.register("batch_size", "Images per forward pass", batch_size.clone());
        let forward_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register_with_unit(
            "forward_duration",
            "Time of one forward pass",
            Unit::Seconds,
            forward_seconds.clone(),
        );
        let forward_passes = Counter::default();
        registry.register(
            "forward_passes",
            "Forward passes run",
            forward_passes.clone(),
        );
        let images = Counter::default();
        registry.register("images", "Images classified", images.clone());
        let queue_depth = Gauge::default();
        registry.register(
            "queue_depth",
            "Images waiting for a forward pass",
            queue_depth.clone(),
        );
        Metrics {
            registry,
            requests,
            errors,
            connections,
            latency,
            batch_size,
            forward_seconds,
            forward_passes,
            images,
            queue_depth,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
