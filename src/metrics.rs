//! Prometheus metrics. Counters and histograms are updated as things happen; the task
//! and queue gauges are read from the database at scrape time, so they are right across
//! replicas and restarts.

use std::sync::Mutex;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::{
    db::ChannelLoad,
    tasks::{Task, TaskStatus},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    channel: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConversionLabels {
    format: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FormatLabels {
    format: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TimeoutLabels {
    timeout: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Family<RequestLabels, Histogram>,
    created: Family<ChannelLabels, Counter>,
    refused_full: Family<ChannelLabels, Counter>,
    finished: Family<FinishLabels, Counter>,
    task_seconds: Family<FinishLabels, Histogram>,
    tasks: Family<StatusLabels, Gauge>,
    queued: Family<ChannelLabels, Gauge>,
    running: Family<ChannelLabels, Gauge>,
    connections: Gauge,
    connections_refused: Counter,
    connections_timed_out: Family<TimeoutLabels, Counter>,
    conversions: Family<ConversionLabels, Counter>,
    conversion_seconds: Family<FormatLabels, Histogram>,
    conversions_active: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kiln");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.5, 12))
        });
        let created = Family::<ChannelLabels, Counter>::default();
        let refused_full = Family::<ChannelLabels, Counter>::default();
        let finished = Family::<FinishLabels, Counter>::default();
        let task_seconds = Family::<FinishLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.05, 2.0, 14))
        });
        let tasks = Family::<StatusLabels, Gauge>::default();
        let queued = Family::<ChannelLabels, Gauge>::default();
        let running = Family::<ChannelLabels, Gauge>::default();
        registry.register("http_requests", "HTTP requests by route, method and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request duration", request_seconds.clone());
        registry.register("tasks_created", "Tasks accepted, by channel", created.clone());
        registry.register("tasks_refused_queue_full", "Tasks refused because the queue was full", refused_full.clone());
        registry.register("tasks_finished", "Tasks ended, by channel and status", finished.clone());
        registry.register("task_duration_seconds", "Time from start of running to the end", task_seconds.clone());
        registry.register("tasks", "Tasks by status", tasks.clone());
        registry.register("queue_depth", "Tasks waiting, by channel", queued.clone());
        registry.register("tasks_running", "Tasks running, by channel", running.clone());
        let connections = Gauge::default();
        let connections_refused = Counter::default();
        let connections_timed_out = Family::<TimeoutLabels, Counter>::default();
        registry.register("http_connections", "Open client connections", connections.clone());
        registry.register(
            "http_connections_refused",
            "Connections answered 503 because the connection cap was reached",
            connections_refused.clone(),
        );
        registry.register(
            "http_connections_timed_out",
            "Connections closed for sending no request in time (headers, silent, idle)",
            connections_timed_out.clone(),
        );
        let conversions = Family::<ConversionLabels, Counter>::default();
        let conversion_seconds = Family::<FormatLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.01, 2.5, 12))
        });
        let conversions_active = Gauge::default();
        registry.register(
            "conversions",
            "Conversions of 3D results into other formats, by format and outcome (ok, failed, too_large, busy)",
            conversions.clone(),
        );
        registry.register(
            "conversion_duration_seconds",
            "Time one conversion took, by format",
            conversion_seconds.clone(),
        );
        registry.register(
            "conversions_active",
            "Conversions admitted in this process: running or waiting for a place",
            conversions_active.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            request_seconds,
            created,
            refused_full,
            finished,
            task_seconds,
            tasks,
            queued,
            running,
            connections,
            connections_refused,
            connections_timed_out,
            conversions,
            conversion_seconds,
            conversions_active,
        }
    }

    /// Counts a conversion's outcome, with its duration when it ran.
    pub fn conversion(&self, format: &str, outcome: &'static str, seconds: Option<f64>) {
        self.conversions.get_or_create(&ConversionLabels { format: format.to_owned(), outcome }).inc();
        if let Some(seconds) = seconds {
            self.conversion_seconds.get_or_create(&FormatLabels { format: format.to_owned() }).observe(seconds);
        }
    }

    /// Moves the count of admitted conversions by `delta`.
    pub fn conversions_active(&self, delta: i64) {
        self.conversions_active.inc_by(delta);
    }

    /// Counts an open connection until the guard is dropped.
    pub fn connection_opened(&self) -> OpenConnection {
        self.connections.inc();
        OpenConnection(self.connections.clone())
    }

    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    pub fn connection_timed_out(&self, timeout: &'static str) {
        self.connections_timed_out.get_or_create(&TimeoutLabels { timeout }).inc();
    }

    pub fn request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let labels = RequestLabels { route: route.to_owned(), method: method.to_owned(), status };
        self.requests.get_or_create(&labels).inc();
        self.request_seconds.get_or_create(&labels).observe(seconds);
    }

    pub fn task_created(&self, channel: &str) {
        self.created.get_or_create(&ChannelLabels { channel: channel.to_owned() }).inc();
    }

    pub fn queue_full(&self, channel: &str) {
        self.refused_full.get_or_create(&ChannelLabels { channel: channel.to_owned() }).inc();
    }

    pub fn task_finished(&self, task: &Task) {
        let labels = FinishLabels { channel: task.channel.clone(), status: task.status.as_str().to_owned() };
        self.finished.get_or_create(&labels).inc();
        if let Some(seconds) = task.generation_seconds() {
            self.task_seconds.get_or_create(&labels).observe(seconds);
        }
    }

    /// Renders the text exposition, after setting the gauges from fresh counts.
    pub fn render(&self, counts: &[(TaskStatus, u64)], loads: &[ChannelLoad], channels: &[String]) -> String {
        for status in TaskStatus::ALL {
            let n = counts.iter().find(|(s, _)| *s == status).map(|(_, n)| *n).unwrap_or(0);
            self.tasks.get_or_create(&StatusLabels { status: status.as_str().to_owned() }).set(n as i64);
        }
        for channel in channels {
            let load = loads.iter().find(|l| &l.channel == channel);
            let labels = ChannelLabels { channel: channel.clone() };
            self.queued.get_or_create(&labels).set(load.map(|l| l.queued).unwrap_or(0) as i64);
            self.running.get_or_create(&labels).set(load.map(|l| l.running).unwrap_or(0) as i64);
        }
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock()
            && encode(&mut out, &registry).is_err()
        {
            out.clear();
        }
        out
    }
}

/// An open connection, counted in `kiln_http_connections` while it lives.
pub struct OpenConnection(Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}
