//! Core benchmarks of kiln, against the real server built in-process on port 0:
//!
//! 1. task creation throughput (JSON prompt tasks, N concurrent clients) and the time
//!    until every one of them has run on an instant provider;
//! 2. SSE fan-out: one task emitting progress on a schedule, many subscribers, delivery
//!    latency per event per subscriber, and resident memory per subscriber (once with
//!    server and subscribers in one process, once with the server in its own);
//! 3. peak memory of concurrent ~10 MiB picture uploads, per upload, as a multiple of the
//!    file size (with a validation-only run and a refused-bytes run as a breakdown).
//!
//! Run: `cargo bench --bench core` (all), or name sections: `cargo bench --bench core --
//! create sse upload`. Each measurement runs in its own child process (this binary re-run
//! with `KILN_BENCH_CHILD`), so memory readings of one do not carry the heap of another.
//! Client and server share that process: their CPU and memory are counted together.
//!
//! Knobs (environment): `KILN_BENCH_TASKS` (5000), `KILN_BENCH_CLIENTS` (32),
//! `KILN_BENCH_SUBSCRIBERS` (1000), `KILN_BENCH_TICKS` (50), `KILN_BENCH_TICK_MS` (20),
//! `KILN_BENCH_POSITION_WINDOW` (kiln's default when unset), `KILN_BENCH_SSE_CLIENT`
//! (`raw`: subscribers on plain sockets), `KILN_BENCH_REPEAT` (3 runs
//! of each upload measurement; the median is reported).

use std::{
    collections::BTreeMap,
    io::Cursor,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use kiln::{
    app::Application,
    config::{Config, UploadConfig},
    providers::{Job, JobContext, Outcome, Provider, ProviderError, Registry},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CHILD_ENV: &str = "KILN_BENCH_CHILD";
const DIR_ENV: &str = "KILN_BENCH_DIR";
const RESULT_PREFIX: &str = "KILN_BENCH_RESULT ";
/// kiln's default upload limit (10 MiB); the test pictures stay under it.
const MAX_UPLOAD: usize = 10 * 1024 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------
// Bench-only providers.

/// Completes every job at once, without outputs. Jobs for the model `hold` wait until
/// `hold` fires: one of them occupies a channel's only slot so nothing else runs.
struct InstantProvider {
    hold: CancellationToken,
}

#[async_trait]
impl Provider for InstantProvider {
    fn describe(&self) -> String {
        "bench: completes at once".into()
    }

    async fn run(&self, job: Job, _ctx: JobContext) -> Result<Outcome, ProviderError> {
        if job.model == "hold" {
            self.hold.cancelled().await;
        }
        Ok(Outcome::Completed { metadata: json!({}) })
    }
}

/// Wall-clock microseconds: comparable between the server and subscriber processes of
/// the split SSE run (same machine, same clock).
fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
}

/// The ticker provider's schedule and what it recorded.
struct TickerShared {
    gate: CancellationToken,
    ticks: usize,
    every: Duration,
    /// Per tick: [`now_us`] just before and just after `ctx.progress`.
    calls: Mutex<Vec<(u64, u64)>>,
}

/// Waits for the gate, then reports `ticks` progress events `every` apart; each stage
/// name carries the time ([`now_us`]) at which it was reported.
struct TickerProvider {
    shared: Arc<TickerShared>,
}

#[async_trait]
impl Provider for TickerProvider {
    fn describe(&self) -> String {
        "bench: progress on a schedule".into()
    }

    async fn run(&self, _job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        let s = &self.shared;
        s.gate.cancelled().await;
        let start = tokio::time::Instant::now();
        for i in 1..=s.ticks {
            tokio::time::sleep_until(start + s.every * i as u32).await;
            let before = now_us();
            let progress = (i * 100 / (s.ticks + 1)) as u8;
            ctx.progress(progress, &format!("tick-{i}-{before}")).await.map_err(ProviderError::internal)?;
            let after = now_us();
            s.calls.lock().expect("calls").push((before, after));
        }
        Ok(Outcome::Completed { metadata: json!({}) })
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A field of /proc/self/status in KiB (`VmRSS`, `VmHWM`).
fn proc_kib(field: &str) -> u64 {
    status_kib("/proc/self/status", field)
}

/// A field of a /proc/…/status file in KiB.
fn status_kib(path: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0).
fn reset_hwm() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Samples VmRSS every millisecond on a thread and keeps the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    handle: std::thread::JoinHandle<()>,
}

impl RssSampler {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(proc_kib("VmRSS")));
        let handle = {
            let (stop, peak) = (Arc::clone(&stop), Arc::clone(&peak));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(proc_kib("VmRSS"), Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Self { stop, peak, handle }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.handle.join();
        self.peak.load(Ordering::Relaxed).max(proc_kib("VmRSS"))
    }
}

/// Percentile of sorted values (nearest rank).
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// A tiny deterministic PRNG (xorshift64*), so no extra dependency is needed.
struct Noise(u64);

impl Noise {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn noise_rgb(width: u32, height: u32, seed: u64) -> image::RgbImage {
    let mut pixels = vec![0u8; width as usize * height as usize * 3];
    Noise(seed | 1).fill(&mut pixels);
    image::RgbImage::from_raw(width, height, pixels).expect("buffer size")
}

fn encode_png(img: &image::RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png).expect("png");
    out
}

fn encode_jpeg(img: &image::RgbImage, quality: u8) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality).encode_image(img).expect("jpeg");
    out
}

// ---------------------------------------------------------------------------------------
// The server under test.

struct Server {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(registry: &Registry, tasks: &str, channels: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let toml = format!(
            r#"
[server]
bind = "127.0.0.1:0"
data_dir = "{data}"
shutdown_grace = "5s"
# Above the default cap, so that 10,000 subscribers plus the bench's own client fit (the open-file
# limit lowers it to what the machine allows).
max_connections = 100000

[log]
dir = ""
level = "warn"

[tasks]
{tasks}

{channels}
"#,
            data = dir.path().join("data").display(),
        );
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, toml).expect("write config");
        let config = Config::load_from(Some(&path), Vec::new(), &Default::default()).unwrap_or_else(|e| panic!("{e}"));
        let app = Application::build(config, registry).await.expect("build app");
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_token();
        let handle = tokio::spawn(app.run_until_stopped(false));
        Self { base, client: reqwest::Client::new(), shutdown, handle, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get_json(&self, path: &str) -> Value {
        let response = self.client.get(self.url(path)).send().await.expect("GET");
        response.json().await.unwrap_or(Value::Null)
    }

    async fn is_empty(&self, status: &str) -> bool {
        let page = self.get_json(&format!("/api/v1/tasks?status={status}&limit=1")).await;
        page["items"].as_array().is_some_and(|items| items.is_empty())
    }

    /// Waits until no task is queued or running.
    async fn drained(&self, poll: Duration) {
        loop {
            if self.is_empty("queued").await && self.is_empty("running").await {
                return;
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// `kiln_tasks{status="…"}` from /metrics.
    async fn tasks_with_status(&self, status: &str) -> u64 {
        let text =
            self.client.get(self.url("/metrics")).send().await.expect("metrics").text().await.unwrap_or_default();
        let key = format!("kiln_tasks{{status=\"{status}\"}}");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or(0)
    }

    async fn wait_status(&self, id: &str, status: &str) {
        for _ in 0..2000 {
            if self.get_json(&format!("/api/v1/tasks/{id}")).await["status"] == status {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("task {id} never became {status}");
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

fn instant_registry(hold: CancellationToken) -> Registry {
    let mut registry = Registry::builtin();
    registry.register("instant", move |_| Ok(Arc::new(InstantProvider { hold: hold.clone() }) as Arc<dyn Provider>));
    registry
}

/// `[tasks]` settings: `position_window` from the argument, else from
/// `KILN_BENCH_POSITION_WINDOW`, else kiln's default.
fn tasks_toml(window: Option<u32>) -> String {
    let from_env = std::env::var("KILN_BENCH_POSITION_WINDOW").ok().map(|w| w.parse::<u32>().expect("window"));
    match window.or(from_env) {
        Some(window) => format!("position_window = {window}"),
        None => String::new(),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Task creation throughput.

async fn bench_create(window: Option<u32>) -> Value {
    let tasks = env_usize("KILN_BENCH_TASKS", 5000);
    let clients = env_usize("KILN_BENCH_CLIENTS", 32);
    let channels = r#"
[[channels]]
name = "bench"
type = "instant"
max_concurrency = 2
max_queue = 1000000
models = [{ name = "instant", kind = "text_to_3d" }]
"#;
    let registry = instant_registry(CancellationToken::new());
    let server = Arc::new(Server::start(&registry, &tasks_toml(window), channels).await);

    // Warm-up: open the client connections and touch every code path once.
    let warmup = clients * 2;
    run_creations(&server, warmup, clients).await;
    server.drained(Duration::from_millis(20)).await;
    let before = server.tasks_with_status("succeeded").await;

    let started = Instant::now();
    let (mut latencies, statuses) = run_creations(&server, tasks, clients).await;
    let created_in = started.elapsed();
    let succeeded_at_creation_end = server.tasks_with_status("succeeded").await.saturating_sub(before);
    server.drained(Duration::from_millis(50)).await;
    let completed_in = started.elapsed();
    let succeeded = server.tasks_with_status("succeeded").await.saturating_sub(before);
    latencies.sort_unstable();
    let accepted = statuses.get(&202).copied().unwrap_or(0);
    let Ok(server) = Arc::try_unwrap(server) else { panic!("server still shared") };
    server.stop().await;
    json!({
        "tasks": tasks,
        "clients": clients,
        "position_window": window,
        "accepted": accepted,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "create_secs": created_in.as_secs_f64(),
        "creations_per_s": accepted as f64 / created_in.as_secs_f64(),
        "post_p50_ms": pct(&latencies, 50.0) as f64 / 1000.0,
        "post_p99_ms": pct(&latencies, 99.0) as f64 / 1000.0,
        "post_max_ms": pct(&latencies, 100.0) as f64 / 1000.0,
        "succeeded_at_creation_end": succeeded_at_creation_end,
        "complete_secs": completed_in.as_secs_f64(),
        "succeeded": succeeded,
        "completed_per_s": succeeded as f64 / completed_in.as_secs_f64(),
        "drain_per_s": succeeded.saturating_sub(succeeded_at_creation_end) as f64
            / (completed_in - created_in).as_secs_f64().max(1e-9),
    })
}

/// `count` POSTs of `{"prompt": "x"}` from `clients` concurrent loops; per-request
/// latencies in µs and the count of each status code.
async fn run_creations(server: &Arc<Server>, count: usize, clients: usize) -> (Vec<u64>, BTreeMap<u16, usize>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for _ in 0..clients {
        let (server, next) = (Arc::clone(server), Arc::clone(&next));
        handles.push(tokio::spawn(async move {
            let url = server.url("/api/v1/tasks");
            let mut latencies = Vec::new();
            let mut statuses = BTreeMap::<u16, usize>::new();
            while next.fetch_add(1, Ordering::Relaxed) < count {
                let sent = Instant::now();
                let response = server.client.post(&url).json(&json!({ "prompt": "x" })).send().await.expect("POST");
                let status = response.status().as_u16();
                let _ = response.bytes().await;
                latencies.push(sent.elapsed().as_micros() as u64);
                *statuses.entry(status).or_default() += 1;
            }
            (latencies, statuses)
        }));
    }
    let mut latencies = Vec::with_capacity(count);
    let mut statuses = BTreeMap::new();
    for handle in handles {
        let (l, s) = handle.await.expect("client");
        latencies.extend(l);
        for (k, v) in s {
            *statuses.entry(k).or_default() += v;
        }
    }
    (latencies, statuses)
}

// ---------------------------------------------------------------------------------------
// 2. SSE fan-out.

struct Received {
    latencies_us: Vec<u64>,
    ended: bool,
}

/// Starts a server whose only channel runs the ticker provider, submits one task and
/// waits until it runs (the provider then waits for the gate).
async fn start_ticker() -> (Server, Arc<TickerShared>, String) {
    let shared = Arc::new(TickerShared {
        gate: CancellationToken::new(),
        ticks: env_usize("KILN_BENCH_TICKS", 50),
        every: Duration::from_millis(env_usize("KILN_BENCH_TICK_MS", 20) as u64),
        calls: Mutex::new(Vec::new()),
    });
    let mut registry = Registry::builtin();
    let provider_shared = Arc::clone(&shared);
    registry.register("ticker", move |_| {
        Ok(Arc::new(TickerProvider { shared: Arc::clone(&provider_shared) }) as Arc<dyn Provider>)
    });
    let channels = r#"
[[channels]]
name = "ticker"
type = "ticker"
max_concurrency = 1
max_queue = 10
models = [{ name = "ticker", kind = "text_to_3d" }]
"#;
    let server = Server::start(&registry, &tasks_toml(None), channels).await;
    let response =
        server.client.post(server.url("/api/v1/tasks")).json(&json!({ "prompt": "x" })).send().await.expect("POST");
    assert_eq!(response.status().as_u16(), 202, "submit");
    let task: Value = response.json().await.expect("task");
    let id = task["id"].as_str().expect("id").to_owned();
    server.wait_status(&id, "running").await;
    (server, shared, id)
}

/// Durations (ms) of the provider's `ctx.progress` calls: the database write and publish.
fn progress_calls(shared: &TickerShared) -> Value {
    let mut calls: Vec<u64> = shared.calls.lock().expect("calls").iter().map(|(b, a)| a - b).collect();
    calls.sort_unstable();
    json!({ "p50_ms": pct(&calls, 50.0) as f64 / 1000.0, "max_ms": pct(&calls, 100.0) as f64 / 1000.0 })
}

type Subscriber = tokio::task::JoinHandle<anyhow::Result<Received>>;

/// Opens `n` event streams and waits until each has had its first event (the replayed
/// log, which comes after its live subscription exists). Returns them and the time taken.
async fn connect_subscribers(client: &reqwest::Client, url: &str, n: usize, ticks: usize) -> (Vec<Subscriber>, f64) {
    let connected = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, url, connected) = (client.clone(), url.to_owned(), Arc::clone(&connected));
        handles.push(tokio::spawn(async move {
            if raw_client() {
                subscribe_raw(url, ticks, connected).await
            } else {
                subscribe(client, url, ticks, connected).await
            }
        }));
    }
    while connected.load(Ordering::Relaxed) < n {
        assert!(started.elapsed() < Duration::from_secs(120), "subscribers did not all connect");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (handles, started.elapsed().as_secs_f64())
}

/// Waits for every subscriber; latency percentiles over every event of every one.
async fn collect_subscribers(handles: Vec<Subscriber>, expected: usize) -> Value {
    let mut latencies = Vec::with_capacity(expected);
    let (mut ended, mut failed) = (0, 0);
    for handle in handles {
        match handle.await.expect("subscriber") {
            Ok(received) => {
                ended += usize::from(received.ended);
                latencies.extend(received.latencies_us);
            }
            Err(err) => {
                failed += 1;
                eprintln!("subscriber failed: {err:#}");
            }
        }
    }
    latencies.sort_unstable();
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "expected": expected,
        "received": latencies.len(),
        "ended": ended,
        "failed": failed,
        "p50_ms": ms(pct(&latencies, 50.0)),
        "p90_ms": ms(pct(&latencies, 90.0)),
        "p99_ms": ms(pct(&latencies, 99.0)),
        "max_ms": ms(pct(&latencies, 100.0)),
    })
}

/// Server and subscribers in this one process.
async fn bench_sse() -> Value {
    let subscribers = env_usize("KILN_BENCH_SUBSCRIBERS", 1000);
    let (server, shared, id) = start_ticker().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = proc_kib("VmRSS");
    let url = server.url(&format!("/api/v1/tasks/{id}/events"));
    let (handles, connect_secs) = connect_subscribers(&server.client, &url, subscribers, shared.ticks).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = proc_kib("VmRSS");

    let sampler = RssSampler::start();
    shared.gate.cancel();
    let delivery = collect_subscribers(handles, subscribers * shared.ticks).await;
    let rss_peak = sampler.finish();
    server.stop().await;
    json!({
        "subscribers": subscribers,
        "ticks": shared.ticks,
        "tick_ms": shared.every.as_millis() as u64,
        "connect_secs": connect_secs,
        "delivery": delivery,
        "progress_call": progress_calls(&shared),
        "rss_before_kib": rss_before,
        "rss_connected_kib": rss_connected,
        "rss_peak_kib": rss_peak,
        "per_subscriber_kib": rss_connected.saturating_sub(rss_before) as f64 / subscribers as f64,
    })
}

const READY_PREFIX: &str = "KILN_BENCH_READY ";

/// The server half of the split SSE run: prints the events URL, opens the gate at a
/// line on stdin, and reports when the task has ended.
async fn sse_server() -> Value {
    // Logging as `kiln serve` does it (info, a span per request): its cost per open
    // stream belongs in the figure. The parent sends this process's stderr to a file.
    let log = kiln::config::LogConfig { dir: std::path::PathBuf::new(), ..Default::default() };
    let _log = kiln::telemetry::init(&log).expect("logging");
    let (server, shared, id) = start_ticker().await;
    println!("{READY_PREFIX}{}", server.url(&format!("/api/v1/tasks/{id}/events")));
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tokio::task::spawn_blocking(|| std::io::stdin().read_line(&mut String::new())).await.expect("stdin").ok();
    shared.gate.cancel();
    server.wait_status(&id, "succeeded").await;
    server.stop().await;
    json!({ "progress_call": progress_calls(&shared) })
}

/// Server in a child process, subscribers here: memory of each side on its own.
async fn bench_sse_split() -> Value {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let subscribers = env_usize("KILN_BENCH_SUBSCRIBERS", 1000);
    let ticks = env_usize("KILN_BENCH_TICKS", 50);
    // `KILN_BENCH_SERVER_WRAP=heaptrack` (or another command taking a program and its
    // arguments) runs the server under it, for a heap profile of the open streams.
    let exe = std::env::current_exe().expect("bench binary");
    let mut command = match std::env::var("KILN_BENCH_SERVER_WRAP") {
        Ok(wrap) if !wrap.is_empty() => {
            let mut command = tokio::process::Command::new(wrap);
            command.arg(exe);
            command
        }
        _ => tokio::process::Command::new(exe),
    };
    let mut child = command
        .env(CHILD_ENV, "sse-server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(std::env::temp_dir().join("kiln-bench-sse-server.log")).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn server");
    let status_path = format!("/proc/{}/status", child.id().expect("pid"));
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let url = loop {
        let line = lines.next_line().await.expect("read").expect("server ended before it was ready");
        if let Some(url) = line.strip_prefix(READY_PREFIX) {
            break url.to_owned();
        }
    };
    let client = reqwest::Client::new();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (server_before, client_before) = (status_kib(&status_path, "VmRSS"), proc_kib("VmRSS"));
    let (handles, connect_secs) = connect_subscribers(&client, &url, subscribers, ticks).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (server_connected, client_connected) = (status_kib(&status_path, "VmRSS"), proc_kib("VmRSS"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").await.expect("open the gate");
    stdin.flush().await.expect("flush");
    let delivery = collect_subscribers(handles, subscribers * ticks).await;
    let mut server_result = Value::Null;
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(result) = line.strip_prefix(RESULT_PREFIX) {
            server_result = serde_json::from_str(result).unwrap_or(Value::Null);
        }
    }
    let _ = child.wait().await;
    let per = |before: u64, after: u64| after.saturating_sub(before) as f64 / subscribers as f64;
    json!({
        "subscribers": subscribers,
        "ticks": ticks,
        "connect_secs": connect_secs,
        "delivery": delivery,
        "server": server_result,
        "server_rss_before_kib": server_before,
        "server_rss_connected_kib": server_connected,
        "client_rss_before_kib": client_before,
        "client_rss_connected_kib": client_connected,
        "server_per_subscriber_kib": per(server_before, server_connected),
        "client_per_subscriber_kib": per(client_before, client_connected),
    })
}

/// `KILN_BENCH_SSE_CLIENT=raw`: subscribers read the stream's bytes off a plain socket
/// and look only for the send time in each event, instead of parsing HTTP, SSE and JSON
/// with reqwest and eventsource-stream. The client then costs the shared cores far less,
/// which shows the server's own fan-out better (on a real network the clients are on
/// other machines).
fn raw_client() -> bool {
    std::env::var("KILN_BENCH_SSE_CLIENT").is_ok_and(|v| v == "raw")
}

async fn subscribe_raw(url: String, ticks: usize, connected: Arc<AtomicUsize>) -> anyhow::Result<Received> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").ok_or_else(|| anyhow::anyhow!("not http: {url}"))?;
    let (addr, path) = rest.split_once('/').ok_or_else(|| anyhow::anyhow!("no path: {url}"))?;
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /{path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n").as_bytes())
        .await?;
    let mut received = Received { latencies_us: Vec::with_capacity(ticks), ended: false };
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        let now = now_us();
        if first {
            first = false;
            connected.fetch_add(1, Ordering::Relaxed);
        }
        pending.extend_from_slice(&buf[..n]);
        // Whole events only; a chunk may end inside one.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            const MARK: &str = "\"stage\":\"tick-";
            if let Some(at) = text.find(MARK) {
                let sent = text[at + MARK.len()..]
                    .split('"')
                    .next()
                    .and_then(|s| s.rsplit_once('-'))
                    .and_then(|(_, t)| t.parse::<u64>().ok());
                if let Some(sent) = sent {
                    received.latencies_us.push(now.saturating_sub(sent));
                }
            }
            if text.contains("event: completed") || text.contains("event: failed") {
                received.ended = true;
                return Ok(received);
            }
        }
    }
    Ok(received)
}

async fn subscribe(
    client: reqwest::Client,
    url: String,
    ticks: usize,
    connected: Arc<AtomicUsize>,
) -> anyhow::Result<Received> {
    let response = client.get(&url).send().await?;
    anyhow::ensure!(response.status().as_u16() == 200, "status {}", response.status());
    let mut stream = response.bytes_stream().eventsource();
    let mut received = Received { latencies_us: Vec::with_capacity(ticks), ended: false };
    let mut first = true;
    while let Some(event) = stream.next().await {
        let now = now_us();
        let event = event?;
        if first {
            first = false;
            connected.fetch_add(1, Ordering::Relaxed);
        }
        match event.event.as_str() {
            "processing" => {
                let data: Value = serde_json::from_str(&event.data)?;
                let sent = data["stage"]
                    .as_str()
                    .and_then(|s| s.strip_prefix("tick-"))
                    .and_then(|s| s.rsplit_once('-'))
                    .and_then(|(_, t)| t.parse::<u64>().ok());
                if let Some(sent) = sent {
                    received.latencies_us.push(now.saturating_sub(sent));
                }
            }
            "completed" | "failed" | "canceled" => {
                received.ended = true;
                break;
            }
            _ => {}
        }
    }
    Ok(received)
}

// ---------------------------------------------------------------------------------------
// 3. Upload memory.

/// `uploads` concurrent multipart uploads of one file; peak RSS growth while they run.
async fn bench_upload(file: &Path, uploads: usize) -> Value {
    bench_uploads(&[file.to_owned()], uploads).await
}

/// `uploads` concurrent multipart uploads taking the files in turn; peak RSS growth while
/// they run.
async fn bench_uploads(files: &[PathBuf], uploads: usize) -> Value {
    let all: Vec<Bytes> = files.iter().map(|f| Bytes::from(std::fs::read(f).expect("read picture"))).collect();
    let bytes = all[0].clone();
    let hold = CancellationToken::new();
    let channels = r#"
[[channels]]
name = "bench"
type = "instant"
max_concurrency = 1
max_queue = 1000
models = [{ name = "instant-image", kind = "image_to_3d" }, { name = "hold", kind = "text_to_3d" }]
"#;
    let server = Server::start(&instant_registry(hold.clone()), &tasks_toml(None), channels).await;
    let url = server.url("/api/v1/tasks");

    // Warm-up with a small picture, then take the channel's only slot with a `hold` job so
    // no job runs (and reads a picture back from storage) while uploads are measured.
    let small = Bytes::from(encode_png(&noise_rgb(64, 64, 7)));
    for _ in 0..2 {
        assert_eq!(upload(&server.client, &url, small.clone()).await, 202, "warm-up upload");
    }
    server.drained(Duration::from_millis(10)).await;
    let response =
        server.client.post(&url).json(&json!({ "prompt": "hold", "model": "hold" })).send().await.expect("POST hold");
    let held: Value = response.json().await.expect("hold task");
    server.wait_status(held["id"].as_str().expect("id"), "running").await;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let baseline = proc_kib("VmRSS");
    let hwm_reset = reset_hwm();
    let sampler = RssSampler::start();
    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..uploads {
        let (client, url, bytes) = (server.client.clone(), url.clone(), all[i % all.len()].clone());
        handles.push(tokio::spawn(async move { upload(&client, &url, bytes).await }));
    }
    let mut statuses = BTreeMap::<u16, usize>::new();
    for handle in handles {
        *statuses.entry(handle.await.expect("upload")).or_default() += 1;
    }
    let elapsed = started.elapsed();
    let sampled = sampler.finish();
    let hwm = if hwm_reset { proc_kib("VmHWM") } else { 0 };
    let peak = sampled.max(hwm);
    hold.cancel();
    server.stop().await;
    let growth = peak.saturating_sub(baseline) as f64 * 1024.0;
    let names: Vec<String> =
        files.iter().filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
    json!({
        "file": names.join("+"),
        "file_bytes": bytes.len(),
        "uploads": uploads,
        "statuses": statuses.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "secs": elapsed.as_secs_f64(),
        "baseline_kib": baseline,
        "peak_kib": peak,
        "hwm_reset": hwm_reset,
        "per_upload_mib": growth / uploads as f64 / MIB,
        "ratio": growth / uploads as f64 / bytes.len() as f64,
    })
}

async fn upload(client: &reqwest::Client, url: &str, bytes: Bytes) -> u16 {
    let length = bytes.len() as u64;
    // A streamed part over shared `Bytes`: the client adds no copy of the file.
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::from(bytes), length).file_name("picture");
    let form = reqwest::multipart::Form::new().part("image", part);
    let response = client.post(url).multipart(form).send().await.expect("upload");
    let status = response.status().as_u16();
    let _ = response.bytes().await;
    status
}

/// `kiln::input::validate_image` alone (what the server does to a spooled picture),
/// reading from the file, no HTTP.
fn bench_validate(file: &Path) -> Value {
    let len = std::fs::metadata(file).expect("picture size").len();
    let config = UploadConfig::default();
    // Warm-up on a small picture.
    kiln::input::validate_bytes(&encode_png(&noise_rgb(64, 64, 7)), &config).expect("warm-up");
    std::thread::sleep(Duration::from_millis(100));
    let baseline = proc_kib("VmRSS");
    let hwm_reset = reset_hwm();
    let sampler = RssSampler::start();
    let started = Instant::now();
    let mut reader = std::io::BufReader::new(std::fs::File::open(file).expect("open picture"));
    let estimate = kiln::input::inspect(&mut reader, len, &config).map(|i| (i.memory, i.kind));
    let valid = kiln::input::validate_image(reader, len, &config)
        .map(|v| (v.width, v.height, v.scaled.as_ref().map_or(len as usize, |b| b.len())));
    let elapsed = started.elapsed();
    let sampled = sampler.finish();
    let hwm = if hwm_reset { proc_kib("VmHWM") } else { 0 };
    let peak = sampled.max(hwm);
    let growth = peak.saturating_sub(baseline) as f64 * 1024.0;
    json!({
        "file": file.file_name().map(|n| n.to_string_lossy().into_owned()),
        "file_bytes": len,
        "valid": valid.as_ref().map(|(w, h, n)| json!({ "width": w, "height": h, "stored_bytes": n })).unwrap_or(Value::Null),
        "error": valid.err().map(|e| format!("{e:?}")),
        "estimate_mib": estimate.as_ref().map(|(m, _)| *m as f64 / MIB).ok(),
        "kind": estimate.map(|(_, k)| k).ok(),
        "secs": elapsed.as_secs_f64(),
        "hwm_reset": hwm_reset,
        "per_upload_mib": growth / MIB,
        "ratio": growth / len as f64,
    })
}

/// The path pictures took before decode budgets (kept here to measure it): `image`
/// decodes PNG and WebP whole at their own bit depth within an allocation limit of 16
/// bytes a pixel, then `thumbnail_exact` scales them down. JPEGs took the path they
/// still take.
fn bench_validate_old(file: &Path) -> Value {
    let bytes = std::fs::read(file).expect("read picture");
    let config = UploadConfig::default();
    kiln::input::validate_bytes(&encode_png(&noise_rgb(64, 64, 7)), &config).expect("warm-up");
    std::thread::sleep(Duration::from_millis(100));
    let baseline = proc_kib("VmRSS");
    let hwm_reset = reset_hwm();
    let sampler = RssSampler::start();
    let result = (|| -> anyhow::Result<(u32, u32)> {
        if file.extension().is_some_and(|e| e == "jpg") {
            anyhow::bail!("unchanged: JPEGs took the same decoder before");
        }
        let (w, h) = image::ImageReader::new(Cursor::new(&bytes)).with_guessed_format()?.into_dimensions()?;
        let mut reader = image::ImageReader::new(Cursor::new(&bytes)).with_guessed_format()?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some((u64::from(w) * u64::from(h)).saturating_mul(16).max(1 << 20));
        reader.limits(limits);
        let decoded = reader.decode()?;
        if w.max(h) <= config.max_side {
            return Ok((w, h));
        }
        let scale = f64::from(config.max_side) / f64::from(w.max(h));
        let (tw, th) = (((f64::from(w) * scale).round() as u32).max(1), ((f64::from(h) * scale).round() as u32).max(1));
        let small = decoded.thumbnail_exact(tw, th);
        drop(decoded);
        let mut out = Vec::new();
        small.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Png)?;
        Ok((tw, th))
    })();
    let sampled = sampler.finish();
    let hwm = if hwm_reset { proc_kib("VmHWM") } else { 0 };
    let growth = sampled.max(hwm).saturating_sub(baseline) as f64 * 1024.0;
    json!({
        "file": file.file_name().map(|n| n.to_string_lossy().into_owned()),
        "result": result.map(|(w, h)| format!("{w}×{h}")).unwrap_or_else(|e| format!("error: {e}")),
        "per_upload_mib": growth / MIB,
    })
}

// ---------------------------------------------------------------------------------------
// Child and parent.

fn run_child(spec: &str) -> Value {
    let dir = PathBuf::from(std::env::var(DIR_ENV).unwrap_or_default());
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    let parts: Vec<&str> = spec.split(':').collect();
    match parts.as_slice() {
        ["create"] => runtime.block_on(bench_create(None)),
        ["create", window] => runtime.block_on(bench_create(Some(window.parse().expect("window")))),
        ["sse"] => runtime.block_on(bench_sse()),
        ["sse-split"] => runtime.block_on(bench_sse_split()),
        ["sse-server"] => runtime.block_on(sse_server()),
        ["upload", file, k] => runtime.block_on(bench_upload(&dir.join(file), k.parse().expect("uploads"))),
        ["validate", file] => bench_validate(&dir.join(file)),
        ["validate-old", file] => bench_validate_old(&dir.join(file)),
        ["uploads", files, k] => {
            let files: Vec<PathBuf> = files.split(',').map(|f| dir.join(f)).collect();
            runtime.block_on(bench_uploads(&files, k.parse().expect("uploads")))
        }
        _ => panic!("unknown child spec `{spec}`"),
    }
}

/// Runs one measurement in a fresh process and returns its result.
fn child(spec: &str, dir: &Path) -> Value {
    eprintln!("… {spec}");
    let exe = std::env::current_exe().expect("bench binary");
    let output = Command::new(exe)
        .env(CHILD_ENV, spec)
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let result = stdout.lines().find_map(|l| l.strip_prefix(RESULT_PREFIX)).map(serde_json::from_str::<Value>);
    match result {
        Some(Ok(value)) => value,
        _ => panic!("child `{spec}` failed ({}):\n{stdout}", output.status),
    }
}

/// Writes the test pictures: a noise PNG and a noise JPEG just under 10 MiB (JPEG
/// sides capped at kiln's `max_side`, 2048, so it is not rescaled), and random bytes of
/// the PNG's length.
fn write_pictures(dir: &Path) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    // Noise PNG: ~3 bytes per pixel, so ~1870² pixels.
    let mut side = 1880;
    let png = loop {
        let bytes = encode_png(&noise_rgb(side, side, 42));
        if bytes.len() <= MAX_UPLOAD {
            break bytes;
        }
        side -= 10;
    };
    std::fs::write(dir.join("noise.png"), &png).expect("write png");
    out.push(("noise.png".to_owned(), png.len(), format!("PNG {side}×{side} RGB noise")));

    // Noise JPEG at q100: estimate the side from a small one, then step down to fit.
    let quality = 100;
    let per_pixel = encode_jpeg(&noise_rgb(512, 512, 43), quality).len() as f64 / (512.0 * 512.0);
    let mut side = ((MAX_UPLOAD as f64 / per_pixel).sqrt() as u32 + 32).min(2048);
    let jpeg = loop {
        let bytes = encode_jpeg(&noise_rgb(side, side, 43), quality);
        if bytes.len() <= MAX_UPLOAD {
            break bytes;
        }
        side -= 8;
    };
    std::fs::write(dir.join("noise.jpg"), &jpeg).expect("write jpeg");
    out.push(("noise.jpg".to_owned(), jpeg.len(), format!("JPEG {side}×{side} RGB noise, q{quality}")));

    let mut raw = vec![0u8; png.len()];
    Noise(44).fill(&mut raw);
    raw[..4].copy_from_slice(b"RAW!");
    std::fs::write(dir.join("noise.bin"), &raw).expect("write bytes");
    out.push(("noise.bin".to_owned(), raw.len(), "random bytes (refused as unsupported format)".to_owned()));

    // A smooth 36-megapixel PNG: small file, many pixels (under kiln's 40 MP limit), and
    // over `max_side`, so kiln also scales it down and re-encodes it.
    let (width, height) = (6000, 6000);
    let mut pixels = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            pixels.extend_from_slice(&[(x * 255 / width) as u8, (y * 255 / height) as u8, 128]);
        }
    }
    let smooth = encode_png(&image::RgbImage::from_raw(width, height, pixels).expect("buffer size"));
    std::fs::write(dir.join("smooth.png"), &smooth).expect("write smooth png");
    out.push(("smooth.png".to_owned(), smooth.len(), format!("PNG {width}×{height} RGB gradient (36 MP)")));
    out
}

/// The largest side in `low..high` for which `ok` holds (it holds at `low`, and once it
/// fails it fails for every larger side).
fn largest(mut low: u32, mut high: u32, ok: impl Fn(u32) -> bool) -> u32 {
    while high - low > 1 {
        let mid = low + (high - low) / 2;
        if ok(mid) { low = mid } else { high = mid }
    }
    low
}

/// The pictures that cost the most memory to decode by default, each still accepted:
/// the 16-bit RGBA PNG of 6000 × 6000 from issue 9, the largest baseline JPEG decoded at
/// full scale (4094 px a side: at half scale it would fall a pixel short of 2048), the
/// largest progressive JPEG and the largest lossless WebP under `max_decode_memory`
/// (4:4:4, since the estimate cannot see the subsampling). `image-webp` writes only
/// lossless WebP, and lossless costs more memory a pixel than lossy.
fn write_worst_pictures(dir: &Path) -> Vec<(String, usize, String)> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("worst.json")) {
        return serde_json::from_str(&text).expect("worst.json");
    }
    let config = UploadConfig::default();
    let accepted = |bytes: &[u8]| {
        kiln::input::inspect(&mut Cursor::new(bytes), bytes.len() as u64, &config).map(|i| i.memory).is_ok()
    };

    let (width, height) = (6000u32, 6000u32);
    let mut png16 = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut png16, width, height);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Sixteen);
        let mut writer = encoder.write_header().expect("png header");
        let mut stream = writer.stream_writer().expect("png stream");
        let mut row = vec![0u8; width as usize * 8];
        for y in 0..height {
            for (x, px) in row.chunks_exact_mut(8).enumerate() {
                let (r, g) = ((x as u32 * 65535 / width) as u16, (y * 65535 / height) as u16);
                px.copy_from_slice(&[r.to_be_bytes(), g.to_be_bytes(), [128, 0], [255, 255]].concat());
            }
            std::io::Write::write_all(&mut stream, &row).expect("png row");
        }
        stream.finish().expect("png end");
    }
    std::fs::write(dir.join("png16.png"), &png16).expect("write png16");
    out.push(("png16.png".to_owned(), png16.len(), format!("PNG {width}×{height} 16-bit RGBA gradient")));

    // Texture that compresses to a few MB whatever the codec (noise would pass 10 MiB).
    let pattern = |side: u32| {
        image::RgbImage::from_fn(side, side, |x, y| {
            image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x ^ y) % 239) as u8])
        })
    };
    let side = 4094;
    let baseline = encode_jpeg(&pattern(side), 90);
    std::fs::write(dir.join("baseline-full.jpg"), &baseline).expect("write jpeg");
    out.push(("baseline-full.jpg".to_owned(), baseline.len(), format!("baseline JPEG {side}×{side} RGB, q90")));

    let progressive = |side: u32, img: &image::RgbImage| {
        let mut bytes = Vec::new();
        let mut encoder = jpeg_encoder::Encoder::new(&mut bytes, 90);
        encoder.set_progressive(true);
        encoder.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_4_4);
        encoder.encode(img.as_raw(), side as u16, side as u16, jpeg_encoder::ColorType::Rgb).expect("jpeg");
        bytes
    };
    // The estimate depends on the header only: probe with flat pictures, which encode fast.
    let side = largest(2048, 8192, |side| accepted(&progressive(side, &image::RgbImage::new(side, side))));
    let jpeg = progressive(side, &pattern(side));
    assert!(accepted(&jpeg), "the JPEG has the probe's header");
    std::fs::write(dir.join("progressive.jpg"), &jpeg).expect("write jpeg");
    out.push((
        "progressive.jpg".to_owned(),
        jpeg.len(),
        format!("progressive JPEG {side}×{side} RGB 4:4:4, q90 (largest accepted)"),
    ));

    let webp = |img: &image::RgbImage| {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::WebP).expect("webp");
        bytes
    };
    let mut side = largest(2048, 8192, |side| accepted(&webp(&image::RgbImage::new(side, side))));
    // The compressed data counts in the estimate too: step down until the real one fits.
    let webp = loop {
        let bytes = webp(&pattern(side));
        if accepted(&bytes) {
            break bytes;
        }
        side -= 16;
    };
    std::fs::write(dir.join("lossless.webp"), &webp).expect("write webp");
    out.push(("lossless.webp".to_owned(), webp.len(), format!("lossless WebP {side}×{side} RGB (largest accepted)")));
    std::fs::write(dir.join("worst.json"), serde_json::to_string(&out).expect("json")).expect("write worst.json");
    out
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or(f64::NAN)
}

fn met(ok: bool) -> &'static str {
    if ok { "**met**" } else { "**missed**" }
}

fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let result = run_child(&spec);
        println!("{RESULT_PREFIX}{result}");
        return;
    }
    let sections: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    let subscribers = env_usize("KILN_BENCH_SUBSCRIBERS", 1000) as u64;
    if wanted("sse")
        && let Some(limit) = open_files_limit()
        && limit < 2 * subscribers + 256
    {
        eprintln!(
            "warning: the open-files limit is {limit}; {subscribers} subscribers need about {} (client and server \
             ends in one process). Raise it first: `ulimit -n 4096`.",
            2 * subscribers + 256
        );
    }

    let dir = tempfile::tempdir().expect("tempdir");
    // `KILN_BENCH_PICTURES=DIR` keeps the decode section's pictures there between runs.
    let kept = std::env::var_os("KILN_BENCH_PICTURES").map(PathBuf::from);
    let pictures_dir = kept.as_deref().unwrap_or(dir.path()).to_owned();
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut details = Vec::new();

    if wanted("create") {
        let r = child("create", dir.path());
        let window = |r: &Value| match r["position_window"].as_u64() {
            Some(w) => format!("position_window = {w}"),
            None => "default config".to_owned(),
        };
        let rate = f(&r["creations_per_s"]);
        rows.push([
            format!("Task creation, {} clients × {} tasks, {} (202/s)", r["clients"], r["tasks"], window(&r)),
            format!(
                "{rate:.0} /s (POST p50 {:.1} ms, p99 {:.1} ms; statuses {})",
                f(&r["post_p50_ms"]),
                f(&r["post_p99_ms"]),
                r["statuses"]
            ),
            "≥ 2,000 /s".into(),
            met(rate >= 2000.0).into(),
        ]);
        rows.push([
            format!("Submit → all succeeded (same tasks, {})", window(&r)),
            format!(
                "{:.0} tasks/s ({} in {:.2} s; {} done when creation ended, then {:.0} /s)",
                f(&r["completed_per_s"]),
                r["succeeded"],
                f(&r["complete_secs"]),
                r["succeeded_at_creation_end"],
                f(&r["drain_per_s"])
            ),
            "—".into(),
            "—".into(),
        ]);
        details.push(("create", r));
        // Diagnostic: the same run without queue-position announcements.
        let r = child("create:0", dir.path());
        rows.push([
            format!("  diagnostic: same, {}", window(&r)),
            format!(
                "{:.0} creations/s (POST p50 {:.1} ms); {:.0} tasks/s submit → succeeded; then {:.0} /s",
                f(&r["creations_per_s"]),
                f(&r["post_p50_ms"]),
                f(&r["completed_per_s"]),
                f(&r["drain_per_s"])
            ),
            "(breakdown)".into(),
            "—".into(),
        ]);
        details.push(("create:0", r));
    }

    if wanted("sse") {
        let r = child("sse", dir.path());
        let d = &r["delivery"];
        let p99 = f(&d["p99_ms"]);
        let complete = d["received"] == d["expected"] && d["failed"] == 0;
        rows.push([
            format!("SSE delivery latency, {} subscribers × {} events, one process", r["subscribers"], r["ticks"]),
            format!(
                "p50 {:.2} ms, p99 {p99:.2} ms, max {:.2} ms ({}/{} delivered; progress() p50 {:.2} ms)",
                f(&d["p50_ms"]),
                f(&d["max_ms"]),
                d["received"],
                d["expected"],
                f(&r["progress_call"]["p50_ms"])
            ),
            "p99 < 20 ms".into(),
            met(p99 < 20.0 && complete).into(),
        ]);
        rows.push([
            "Memory per SSE subscriber, client + server in one process".into(),
            format!(
                "{:.1} KiB (RSS {:.1} → {:.1} MiB)",
                f(&r["per_subscriber_kib"]),
                f(&r["rss_before_kib"]) / 1024.0,
                f(&r["rss_connected_kib"]) / 1024.0
            ),
            "—".into(),
            "—".into(),
        ]);
        details.push(("sse", r));
    }
    if wanted("sse") || wanted("sse-split") {
        let r = child("sse-split", dir.path());
        let d = &r["delivery"];
        let subscribers = r["subscribers"].as_u64().unwrap_or(0);
        let p99 = f(&d["p99_ms"]);
        let complete = d["received"] == d["expected"] && d["failed"] == 0;
        let (latency_target, latency_limit) =
            if subscribers <= 1000 { ("p99 ≤ 10 ms", 10.0) } else { ("p99 ≤ 60 ms", 60.0) };
        rows.push([
            format!("SSE split run: {subscribers} subscribers × {} events, server in its own process", r["ticks"]),
            format!(
                "latency p50 {:.2} / p99 {p99:.2} / max {:.2} ms ({}/{}); progress() p50 {:.2} ms",
                f(&d["p50_ms"]),
                f(&d["max_ms"]),
                d["received"],
                d["expected"],
                f(&r["server"]["progress_call"]["p50_ms"])
            ),
            latency_target.into(),
            met(p99 <= latency_limit && complete).into(),
        ]);
        let per = f(&r["server_per_subscriber_kib"]);
        rows.push([
            "  memory per open stream, server only (kiln's logging on)".into(),
            format!(
                "server {per:.1} KiB (RSS {:.1} → {:.1} MiB); the client {:.1} KiB",
                f(&r["server_rss_before_kib"]) / 1024.0,
                f(&r["server_rss_connected_kib"]) / 1024.0,
                f(&r["client_per_subscriber_kib"]),
            ),
            "≤ 16 KiB at 10,000".into(),
            if subscribers >= 10_000 { met(per <= 16.0).into() } else { "—".into() },
        ]);
        details.push(("sse-split", r));
    }

    if wanted("upload") {
        let repeat = env_usize("KILN_BENCH_REPEAT", 3).max(1);
        let pictures = write_pictures(dir.path());
        for (file, size, what) in &pictures {
            eprintln!("picture {file}: {size} bytes, {what}");
        }
        for (file, size, what) in &pictures {
            if file.ends_with(".bin") {
                continue;
            }
            let r = child(&format!("validate:{file}"), dir.path());
            rows.push([
                format!("Validation only, no HTTP: {what}, {:.2} MiB", *size as f64 / MIB),
                format!("{:.2}× file size ({:.1} MiB)", f(&r["ratio"]), f(&r["per_upload_mib"])),
                "(breakdown)".into(),
                "—".into(),
            ]);
            details.push(("validate", r));
        }
        for (file, size, what) in &pictures {
            let (counts, target): (&[usize], bool) = match file.as_str() {
                "noise.bin" => (&[1, 8], false),
                "smooth.png" => (&[1], false),
                _ => (&[1, 4, 8], true),
            };
            for &k in counts {
                // Peaks depend on how the uploads overlap: repeat, report the median.
                let mut runs: Vec<Value> =
                    (0..repeat).map(|_| child(&format!("upload:{file}:{k}"), dir.path())).collect();
                runs.sort_by(|a, b| f(&a["ratio"]).total_cmp(&f(&b["ratio"])));
                let all: Vec<String> = runs.iter().map(|r| format!("{:.2}", f(&r["ratio"]))).collect();
                let r = runs.swap_remove(runs.len() / 2);
                let ratio = f(&r["ratio"]);
                rows.push([
                    format!("Upload peak memory per upload, K={k}: {what}, {:.2} MiB", *size as f64 / MIB),
                    format!(
                        "{ratio:.2}× file size, median of {repeat} runs ({}); {:.1} MiB per upload; statuses {}",
                        all.join(" / "),
                        f(&r["per_upload_mib"]),
                        r["statuses"]
                    ),
                    if target { "< 2×".into() } else { "(breakdown)".into() },
                    if target { met(ratio < 2.0).into() } else { "—".into() },
                ]);
                details.push(("upload", r));
            }
        }
    }

    if wanted("decode") {
        let repeat = env_usize("KILN_BENCH_REPEAT", 3).max(1);
        std::fs::create_dir_all(&pictures_dir).expect("pictures dir");
        let pictures = write_worst_pictures(&pictures_dir);
        for (file, size, what) in &pictures {
            eprintln!("picture {file}: {size} bytes, {what}");
            let old = child(&format!("validate-old:{file}"), &pictures_dir);
            let new = child(&format!("validate:{file}"), &pictures_dir);
            rows.push([
                format!("Single decode, no HTTP: {what}, {:.2} MiB", *size as f64 / MIB),
                format!(
                    "before {:.1} MiB ({}); after {:.1} MiB, estimated {:.1} MiB ({})",
                    f(&old["per_upload_mib"]),
                    old["result"].as_str().unwrap_or("?"),
                    f(&new["per_upload_mib"]),
                    f(&new["estimate_mib"]),
                    new["valid"]
                        .as_object()
                        .map(|v| format!("{}×{}", v["width"], v["height"]))
                        .unwrap_or_else(|| new["error"].to_string()),
                ),
                "(breakdown)".into(),
                "—".into(),
            ]);
            details.push(("validate-old", old));
            details.push(("validate", new));
        }
        let k = env_usize("KILN_BENCH_DECODE_UPLOADS", 16);
        let mixes: Vec<(String, String)> = vec![
            ("png16.png,progressive.jpg,lossless.webp".into(), "the PNG, progressive JPEG and WebP in turn".into()),
            ("png16.png".into(), "the 16-bit PNG".into()),
            ("progressive.jpg".into(), "the progressive JPEG".into()),
            ("lossless.webp".into(), "the lossless WebP".into()),
            ("baseline-full.jpg".into(), "the full-scale baseline JPEG".into()),
        ];
        for (files, what) in mixes {
            let mut runs: Vec<Value> =
                (0..repeat).map(|_| child(&format!("uploads:{files}:{k}"), &pictures_dir)).collect();
            runs.sort_by(|a, b| f(&a["peak_kib"]).total_cmp(&f(&b["peak_kib"])));
            let all: Vec<String> = runs.iter().map(|r| format!("{:.0}", f(&r["peak_kib"]) / 1024.0)).collect();
            let worst = f(&runs[runs.len() - 1]["peak_kib"]) / 1024.0;
            let r = runs.swap_remove(runs.len() / 2);
            rows.push([
                format!("{k} concurrent uploads of {what}: peak RSS of the process"),
                format!(
                    "{:.0} MiB median, runs {} MiB (baseline {:.0} MiB); {:.1} s; statuses {}",
                    f(&r["peak_kib"]) / 1024.0,
                    all.join(" / "),
                    f(&r["baseline_kib"]) / 1024.0,
                    f(&r["secs"]),
                    r["statuses"]
                ),
                "< 256 MiB".into(),
                met(worst < 256.0).into(),
            ]);
            details.push(("uploads", r));
        }
    }

    println!("\n| Benchmark | Result | Target | |");
    println!("|---|---|---|---|");
    for [name, result, target, verdict] in &rows {
        println!("| {name} | {result} | {target} | {verdict} |");
    }
    println!("\nRaw results:");
    for (name, r) in &details {
        println!("- {name}: {r}");
    }
}
