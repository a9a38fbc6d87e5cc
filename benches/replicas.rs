//! Scale-out benchmarks (issue 12): kiln replicas on one PostgreSQL database and a
//! result streamed to S3. Every kiln server runs in a child process (this bench binary
//! run again with `KILN_REPLICA_BENCH_CHILD`), logging as `kiln serve` does (`info`, to
//! its own log file), so replicas, PostgreSQL and the load client are separate processes
//! whose CPU time can be told apart:
//!
//! - `create`: task creations per second by 32 clients (JSON prompts, each client bound
//!   to one replica, round robin) on 1 replica on SQLite, 1 replica on PostgreSQL and 3
//!   replicas on PostgreSQL; the channel's one running job never ends and its queue
//!   takes everything, so creating tasks is all the servers do. POST latency p50/p99, and
//!   where the CPU went (replicas, PostgreSQL, the client, the rest of the machine);
//!   with `pg_stat_statements` loaded, the statements per creation.
//! - `deliver`: a task on replica A reports progress every `KILN_BENCH_TICK_MS`; followers
//!   on B (another replica) and on A itself read the events over SSE; the delay from the
//!   provider's `progress()` call to the follower reading the event.
//! - `s3`: a 100 MiB output stored to `s3s-fs` and streamed back through `/files/`:
//!   the server's peak resident memory above idle (no PostgreSQL needed).
//!
//! Run (a throwaway PostgreSQL for `create` and `deliver`):
//!
//! ```sh
//! scripts/with-postgres.sh cargo bench --bench replicas [-- create deliver s3]
//! ```
//!
//! `sqlite`, `pg1` or `pg3` instead of `create` runs only those creation setups.
//!
//! Knobs: `KILN_BENCH_REPEAT` (3), `KILN_BENCH_TASKS` (6000), `KILN_BENCH_CLIENTS` (32),
//! `KILN_BENCH_EVENTS` (500), `KILN_BENCH_TICK_MS` (10), `KILN_BENCH_FOLLOWERS` (10 per
//! replica), `KILN_BENCH_OUTPUT_MIB` (100), `KILN_BENCH_LOG` (the replicas' log level,
//! `info`), `KILN_BENCH_POOL` (the replicas' `database.max_connections`, kiln's default 8). Results are printed as Markdown rows and JSON, as in the other benches.

#[path = "../tests/common/s3.rs"]
#[allow(dead_code)]
mod s3;

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use eventsource_stream::Eventsource;
use futures::StreamExt;
use kiln::{
    app::Application,
    config::Config,
    providers::{Job, JobContext, Outcome, Output, Provider, ProviderError, Registry},
};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

const CHILD_ENV: &str = "KILN_REPLICA_BENCH_CHILD";
const READY: &str = "KILN_BENCH_READY ";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Holds its job until the server stops: one runs, every other task waits in the queue.
struct Hold;

#[async_trait]
impl Provider for Hold {
    fn describe(&self) -> String {
        "bench: never finishes".into()
    }

    async fn run(&self, _job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        ctx.cancelled().cancelled().await;
        Err(ProviderError::new("canceled", "stopped"))
    }
}

/// Waits `wait_ms` (for the followers to connect), then reports `events` progress steps
/// `interval_ms` apart, each stage named after the wall-clock time it was sent at.
struct Ticker;

#[async_trait]
impl Provider for Ticker {
    fn describe(&self) -> String {
        "bench: timestamped progress".into()
    }

    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        let events = job.params["events"].as_u64().unwrap_or(100);
        let interval = Duration::from_millis(job.params["interval_ms"].as_u64().unwrap_or(10));
        tokio::time::sleep(Duration::from_millis(job.params["wait_ms"].as_u64().unwrap_or(2000))).await;
        let mut next = tokio::time::Instant::now();
        for i in 0..events {
            ctx.progress((i * 100 / events.max(1)) as u8, &format!("t{}", now_micros()))
                .await
                .map_err(ProviderError::internal)?;
            next += interval;
            tokio::time::sleep_until(next).await;
        }
        Err(ProviderError::new("done", "the ticker has no output"))
    }
}

/// Writes a `bytes`-long output through a spool file, 256 KiB at a time, as a provider
/// that downloads a large result does; nothing of it is held in memory.
struct Big;

#[async_trait]
impl Provider for Big {
    fn describe(&self) -> String {
        "bench: a large output".into()
    }

    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        let total = job.params["bytes"].as_u64().unwrap_or(1 << 20);
        let mut spool = ctx.spooler(total).await.map_err(ProviderError::internal)?;
        let mut chunk = vec![0u8; 256 * 1024];
        let mut written = 0u64;
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        while written < total {
            // Bytes that do not repeat from one chunk to the next.
            for word in chunk.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                word.copy_from_slice(&state.to_le_bytes()[..word.len()]);
            }
            let n = (total - written).min(chunk.len() as u64) as usize;
            spool.write(&chunk[..n]).await.map_err(ProviderError::internal)?;
            written += n as u64;
        }
        let file = spool.finish().await.map_err(ProviderError::internal)?;
        ctx.output(Output {
            name: "model.glb".into(),
            role: "model".into(),
            content_type: "model/gltf-binary".into(),
            file,
            metadata: json!({}),
        })
        .await
        .map_err(ProviderError::internal)?;
        Ok(Outcome::Completed { metadata: json!({}) })
    }
}

/// Child mode: a kiln server from the configuration file `path`, logging like `kiln
/// serve` to stderr, until its stdin closes.
fn serve(path: &str) {
    let config = Config::load_from(Some(Path::new(path)), Vec::new(), &Default::default()).expect("valid config");
    let _log = kiln::telemetry::init(&config.log).expect("logging");
    let mut registry = Registry::builtin();
    registry.register("hold", |_| Ok(Arc::new(Hold) as Arc<dyn Provider>));
    registry.register("ticker", |_| Ok(Arc::new(Ticker) as Arc<dyn Provider>));
    registry.register("big", |_| Ok(Arc::new(Big) as Arc<dyn Provider>));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let app = Application::build(config, &registry).await.expect("build");
        println!("{READY}{}", app.local_addr());
        let _ = std::io::stdout().flush();
        let stop = app.shutdown_token();
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stop.cancel();
        });
        app.run_until_stopped(false).await.expect("serve");
    });
}

const HOLD_CHANNEL: &str = r#"
[[channels]]
name = "hold"
type = "hold"
max_concurrency = 1
max_queue = 100000000
models = [{ name = "hold-text", kind = "text_to_3d" }]
"#;

const TICKER_CHANNEL: &str = r#"
[[channels]]
name = "ticker"
type = "ticker"
max_concurrency = 4
max_queue = 100
models = [{ name = "ticker-text", kind = "text_to_3d" }]
"#;

const BIG_CHANNEL: &str = r#"
[[channels]]
name = "big"
type = "big"
max_concurrency = 1
max_queue = 100
models = [{ name = "big-text", kind = "text_to_3d" }]
"#;

/// A kiln server in a child process, configured by `toml` in a folder of its own.
struct Replica {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Replica {
    fn start(sections: &str, log: &Path) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let level = std::env::var("KILN_BENCH_LOG").unwrap_or_else(|_| "info".into());
        let toml = format!(
            "[server]\nbind = \"127.0.0.1:0\"\ndata_dir = \"{}\"\nshutdown_grace = \"2s\"\n\n\
             [log]\ndir = \"\"\nlevel = \"{level}\"\n\n{sections}",
            dir.path().join("data").display()
        );
        let path = dir.path().join("kiln.toml");
        std::fs::write(&path, toml).expect("config");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut child = Command::new(std::env::current_exe().expect("bench binary"))
            .env(CHILD_ENV, &path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn a replica");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix(READY) {
                        break addr.to_owned();
                    }
                }
                _ => panic!("a replica ended before it was ready; see {}", log.display()),
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr, _dir: dir }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The PostgreSQL server `scripts/with-postgres.sh` started (or `KILN_TEST_DATABASE_URL`).
fn pg_server() -> Option<String> {
    std::env::var("KILN_TEST_DATABASE_URL").ok()
}

/// A new empty database on the server; its URL.
async fn fresh_database(server: &str) -> String {
    let name = format!("kiln_bench_{:016x}", fastrand::u64(..));
    let mut conn = PgConnection::connect(server).await.expect("connect to PostgreSQL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut conn).await.expect("create");
    let mut url = url::Url::parse(server).expect("a URL");
    url.set_path(&name);
    url.to_string()
}

/// User + system CPU seconds of a process, all its threads.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0.0 };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0 // USER_HZ
}

/// Busy CPU seconds of the whole machine (every core), from /proc/stat.
fn machine_busy() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else { return 0.0 };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    let busy = v.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, x)| x).sum::<f64>();
    busy / 100.0
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The PostgreSQL server's processes (backends and background processes) and their CPU.
async fn pg_cpu(conn: &mut PgConnection) -> BTreeMap<u32, f64> {
    let pids: Vec<i32> =
        sqlx::query_scalar("SELECT pid FROM pg_stat_activity").fetch_all(conn).await.unwrap_or_default();
    pids.into_iter().map(|pid| (pid as u32, process_cpu(pid as u32))).collect()
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn latency_summary(mut micros: Vec<u64>) -> Value {
    micros.sort_unstable();
    json!({
        "count": micros.len(),
        "p50_ms": pct(&micros, 50.0),
        "p99_ms": pct(&micros, 99.0),
        "max_ms": pct(&micros, 100.0),
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

#[derive(Clone, Copy, PartialEq)]
enum Store {
    Sqlite,
    Postgres,
}

/// Whether `pg_stat_statements` is loaded; then it is reset, to count this run's statements.
async fn statements_reset(conn: &mut PgConnection) -> bool {
    let loaded: String = sqlx::query_scalar("SELECT current_setting('shared_preload_libraries')")
        .fetch_one(&mut *conn)
        .await
        .unwrap_or_default();
    if !loaded.contains("pg_stat_statements") {
        return false;
    }
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements").execute(&mut *conn).await.is_ok()
        && sqlx::raw_sql("SELECT pg_stat_statements_reset()").execute(&mut *conn).await.is_ok()
}

/// The statements run on `database` since the reset: calls and time per creation.
async fn statements(conn: &mut PgConnection, database: &str, creations: f64) -> Value {
    let rows: Vec<(String, i64, f64)> = sqlx::query_as(
        "SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 110), calls, total_exec_time \
         FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = $1 \
         ORDER BY total_exec_time DESC",
    )
    .bind(database)
    .fetch_all(conn)
    .await
    .unwrap_or_default();
    let calls: i64 = rows.iter().map(|r| r.1).sum();
    let ms: f64 = rows.iter().map(|r| r.2).sum();
    json!({
        "statements_per_creation": calls as f64 / creations,
        "exec_ms_per_creation": ms / creations,
        "top": rows.iter().take(14).map(|(q, c, t)| json!({
            "query": q, "per_creation": *c as f64 / creations, "ms_per_creation": t / creations,
        })).collect::<Vec<_>>(),
    })
}

/// `count` creations by `clients` loops spread over `replicas` servers.
async fn create(store: Store, replicas: usize, count: usize, clients: usize, logs: &Path) -> Value {
    let pg = pg_server();
    let (sections, database) = match store {
        Store::Sqlite => (HOLD_CHANNEL.to_owned(), None),
        Store::Postgres => {
            let url = fresh_database(pg.as_deref().expect("PostgreSQL")).await;
            let name = url::Url::parse(&url).expect("url").path().trim_start_matches('/').to_owned();
            // KILN_BENCH_POOL: the replicas' `database.max_connections` (kiln's default: 8).
            let pool = std::env::var("KILN_BENCH_POOL").map(|n| format!("max_connections = {n}\n")).unwrap_or_default();
            (format!("[database]\nurl = \"{url}\"\n{pool}{HOLD_CHANNEL}"), Some(name))
        }
    };
    let servers: Vec<Replica> =
        (0..replicas).map(|i| Replica::start(&sections, &logs.join(format!("create-{i}.log")))).collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url("/api/v1/tasks")).collect();
    let client = reqwest::Client::new();
    let body = json!({ "prompt": "x", "model": "hold-text" });
    // Warm-up: every connection open, every path taken once, on every replica.
    for i in 0..clients * 4 {
        let response = client.post(&urls[i % replicas]).json(&body).send().await.expect("warm-up");
        assert_eq!(response.status().as_u16(), 202, "warm-up");
    }
    let mut pg_conn = match &pg {
        Some(server) if store == Store::Postgres => Some(PgConnection::connect(server).await.expect("connect")),
        _ => None,
    };
    let counting = match pg_conn.as_mut() {
        Some(conn) => statements_reset(conn).await,
        None => false,
    };
    let pg_before = match pg_conn.as_mut() {
        Some(conn) => pg_cpu(conn).await,
        None => BTreeMap::new(),
    };
    let load = load_average();
    let kiln_before: Vec<f64> = servers.iter().map(|s| process_cpu(s.pid())).collect();
    let me_before = process_cpu(std::process::id());
    let machine_before = machine_busy();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (next, client, url, body) =
                (Arc::clone(&next), client.clone(), urls[i % replicas].clone(), body.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                let mut refused = 0usize;
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let sent = Instant::now();
                    let response = client.post(&url).json(&body).send().await.expect("POST");
                    let status = response.status().as_u16();
                    let _ = response.bytes().await;
                    if status == 202 {
                        times.push(sent.elapsed().as_micros() as u64);
                    } else {
                        refused += 1;
                    }
                }
                (times, refused)
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut refused = 0;
    for handle in handles {
        let (t, r) = handle.await.expect("client");
        times.extend(t);
        refused += r;
    }
    let secs = started.elapsed().as_secs_f64();
    let machine = machine_busy() - machine_before;
    let me = process_cpu(std::process::id()) - me_before;
    let kiln: f64 = servers.iter().zip(&kiln_before).map(|(s, before)| process_cpu(s.pid()) - before).sum();
    let postgres: f64 = match pg_conn.as_mut() {
        Some(conn) => {
            let after = pg_cpu(conn).await;
            after.iter().map(|(pid, cpu)| cpu - pg_before.get(pid).copied().unwrap_or(0.0)).sum()
        }
        None => 0.0,
    };
    let accepted = times.len();
    let statements = match (pg_conn.as_mut(), &database) {
        (Some(conn), Some(name)) if counting => statements(conn, name, accepted as f64).await,
        _ => Value::Null,
    };
    for server in servers {
        server.stop();
    }
    json!({
        "store": if store == Store::Sqlite { "sqlite" } else { "postgres" },
        "replicas": replicas,
        "clients": clients,
        "accepted": accepted,
        "refused": refused,
        "secs": secs,
        "creations_per_s": accepted as f64 / secs,
        "post": latency_summary(times),
        "load_average_before": load,
        "cores_busy": {
            "kiln": kiln / secs,
            "postgres": postgres / secs,
            "client": me / secs,
            "rest_of_machine": (machine - kiln - postgres - me).max(0.0) / secs,
        },
        "statements": statements,
    })
}

/// Reads a task's events on `url` and records, for every progress event, the delay since
/// the ticker stamped it. Returns (delays in µs, events read).
async fn follow(
    client: reqwest::Client,
    url: String,
    expected: usize,
    connected: Arc<AtomicUsize>,
) -> (Vec<u64>, usize) {
    let response = client.get(&url).send().await.expect("follow");
    assert_eq!(response.status().as_u16(), 200, "follow");
    connected.fetch_add(1, Ordering::SeqCst);
    let mut events = response.bytes_stream().eventsource();
    let mut delays = Vec::with_capacity(expected);
    let mut seen = 0;
    while let Some(Ok(event)) = events.next().await {
        if event.event != "processing" {
            if matches!(event.event.as_str(), "failed" | "completed" | "canceled") {
                break;
            }
            continue;
        }
        let received = now_micros();
        let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
        if let Some(sent) = data["stage"].as_str().and_then(|s| s.strip_prefix('t')).and_then(|s| s.parse::<u64>().ok())
        {
            delays.push(received.saturating_sub(sent));
            seen += 1;
        }
        if seen >= expected {
            break;
        }
    }
    (delays, seen)
}

/// One ticker task on replica A, `followers` SSE clients on B and as many on A.
async fn deliver(events: usize, tick_ms: u64, followers: usize, logs: &Path) -> Value {
    let url = fresh_database(&pg_server().expect("PostgreSQL")).await;
    let database = format!("[database]\nurl = \"{url}\"\n");
    // Only A serves the ticker's model, so only A's dispatcher runs it.
    let a = Replica::start(&format!("{database}{HOLD_CHANNEL}{TICKER_CHANNEL}"), &logs.join("deliver-a.log"));
    let b = Replica::start(&format!("{database}{HOLD_CHANNEL}"), &logs.join("deliver-b.log"));
    let client = reqwest::Client::new();
    let wait_ms = 2000 + 20 * followers as u64;
    let response = client
        .post(a.url("/api/v1/tasks"))
        .json(&json!({
            "prompt": "x", "model": "ticker-text",
            "params": { "events": events, "interval_ms": tick_ms, "wait_ms": wait_ms }
        }))
        .send()
        .await
        .expect("submit");
    assert_eq!(response.status().as_u16(), 202, "submit");
    let submitted = Instant::now();
    let task: Value = response.json().await.expect("task");
    let id = task["id"].as_str().expect("id").to_owned();
    let load = load_average();
    let connected = Arc::new(AtomicUsize::new(0));
    let mut remote = Vec::new();
    let mut local = Vec::new();
    for _ in 0..followers {
        let path = format!("/api/v1/tasks/{id}/events");
        remote.push(tokio::spawn(follow(client.clone(), b.url(&path), events, Arc::clone(&connected))));
        local.push(tokio::spawn(follow(client.clone(), a.url(&path), events, Arc::clone(&connected))));
    }
    while connected.load(Ordering::SeqCst) < 2 * followers {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let connected_after = submitted.elapsed();
    assert!(connected_after < Duration::from_millis(wait_ms), "the followers connected after the first tick");
    let (remote_delays, remote_seen) = gather(remote).await;
    let (local_delays, local_seen) = gather(local).await;
    a.stop();
    b.stop();
    json!({
        "events": events,
        "tick_ms": tick_ms,
        "followers_per_replica": followers,
        "load_average_before": load,
        "followers_connected_ms": connected_after.as_millis() as u64,
        "cross_replica": { "delivered": remote_seen, "expected": events * followers, "delay": latency_summary(remote_delays) },
        "same_replica": { "delivered": local_seen, "expected": events * followers, "delay": latency_summary(local_delays) },
    })
}

async fn gather(handles: Vec<tokio::task::JoinHandle<(Vec<u64>, usize)>>) -> (Vec<u64>, usize) {
    let mut delays = Vec::new();
    let mut seen = 0;
    for handle in handles {
        let (d, s) = handle.await.expect("follower");
        delays.extend(d);
        seen += s;
    }
    (delays, seen)
}

/// A process's resident memory now and its peak (`VmRSS`, `VmHWM`), in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Samples `pid`'s VmRSS every millisecond until told to stop; returns the largest.
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(Ordering::Relaxed) {
            peak = peak.max(memory_kib(pid).0);
            std::thread::sleep(Duration::from_millis(1));
        }
        peak
    })
}

/// Measures the peak resident memory of `pid` above its idle level while `work` runs.
async fn peak_above_idle<F: std::future::Future<Output = T>, T>(pid: u32, work: F) -> (T, Value) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = memory_kib(pid).0;
    // Resets VmHWM to the current RSS (Linux ≥ 4.0).
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(pid, Arc::clone(&stop));
    let started = Instant::now();
    let out = work.await;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let sampled = sampler.join().unwrap_or(0);
    let hwm = if reset { memory_kib(pid).1 } else { 0 };
    let peak = sampled.max(hwm);
    (
        out,
        json!({
            "idle_mib": idle as f64 / 1024.0,
            "peak_mib": peak as f64 / 1024.0,
            "above_idle_mib": peak.saturating_sub(idle) as f64 / 1024.0,
            "hwm_reset": reset,
            "secs": secs,
        }),
    )
}

/// A `mib` MiB output stored to s3s-fs and read back through `/files/` (proxy mode).
async fn s3_output(mib: u64, logs: &Path) -> Option<Value> {
    let server = s3::S3Server::start()?;
    let sections = format!("{}{BIG_CHANNEL}", server.storage_toml("serve = \"proxy\""));
    let kiln = Replica::start(&sections, &logs.join("s3.log"));
    let client = reqwest::Client::new();
    // One small task first, so that every path (and the bucket's client) is warm.
    let run = |bytes: u64| {
        let client = client.clone();
        let url = kiln.url("/api/v1/tasks");
        let base = kiln.url("");
        async move {
            let response = client
                .post(&url)
                .json(&json!({ "prompt": "x", "model": "big-text", "params": { "bytes": bytes } }))
                .send()
                .await
                .expect("submit");
            assert_eq!(response.status().as_u16(), 202, "submit");
            let task: Value = response.json().await.expect("task");
            let id = task["id"].as_str().expect("id").to_owned();
            loop {
                let task: Value = client
                    .get(format!("{base}/api/v1/tasks/{id}"))
                    .send()
                    .await
                    .expect("task")
                    .json()
                    .await
                    .expect("json");
                match task["status"].as_str() {
                    Some("succeeded") => break,
                    Some("failed" | "canceled") => panic!("the large output failed: {task}"),
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            let result: Value = client
                .get(format!("{base}/api/v1/tasks/{id}/result"))
                .send()
                .await
                .expect("result")
                .json()
                .await
                .expect("json");
            result["outputs"][0]["url"].as_str().expect("an output URL").to_owned()
        }
    };
    run(1 << 20).await;
    let bytes = mib << 20;
    let (url, store) = peak_above_idle(kiln.pid(), run(bytes)).await;
    let read = async {
        let response = client.get(&url).send().await.expect("GET the output");
        assert_eq!(response.status().as_u16(), 200, "GET the output");
        let mut body = response.bytes_stream();
        let mut got = 0u64;
        while let Some(chunk) = body.next().await {
            got += chunk.expect("body").len() as u64;
        }
        got
    };
    let (got, fetch) = peak_above_idle(kiln.pid(), read).await;
    assert_eq!(got, bytes, "the whole output came back");
    let parts = server.open_parts().len();
    kiln.stop();
    Some(json!({ "mib": mib, "store": store, "fetch": fetch, "open_multipart_uploads_left": parts }))
}

fn spread(values: &[f64], digits: usize) -> String {
    values.iter().map(|v| format!("{v:.digits$}")).collect::<Vec<_>>().join(" / ")
}

fn main() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        serve(&path);
        return;
    }
    let sections: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let setup_named = ["sqlite", "pg1", "pg3"].iter().any(|n| sections.iter().any(|s| s == n));
    let wanted =
        |name: &str| sections.is_empty() || sections.iter().any(|s| s == name) || (name == "create" && setup_named);
    let repeat = knob("KILN_BENCH_REPEAT", 3).max(1) as usize;
    let logs = tempfile::Builder::new().prefix("kiln-bench-replicas-").tempdir().expect("tempdir").keep();
    eprintln!("replica logs in {}", logs.display());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows: Vec<String> = Vec::new();
    let mut raw: Vec<(String, Value)> = Vec::new();
    let have_pg = pg_server().is_some();
    if !have_pg && (wanted("create") || wanted("deliver")) {
        eprintln!("no PostgreSQL: run under scripts/with-postgres.sh for `create` on PostgreSQL and `deliver`");
    }

    if wanted("create") {
        let count = knob("KILN_BENCH_TASKS", 6000) as usize;
        let clients = knob("KILN_BENCH_CLIENTS", 32) as usize;
        let mut setups = vec![(Store::Sqlite, 1)];
        if have_pg {
            setups.extend([(Store::Postgres, 1), (Store::Postgres, 3)]);
        }
        // `sqlite`, `pg1`, `pg3` among the arguments keep only those setups.
        let named = |store: Store, replicas: usize| match store {
            Store::Sqlite => "sqlite".to_owned(),
            Store::Postgres => format!("pg{replicas}"),
        };
        if setups.iter().any(|&(store, n)| sections.contains(&named(store, n))) {
            setups.retain(|&(store, n)| sections.contains(&named(store, n)));
        }
        for (store, replicas) in setups {
            let mut rates = Vec::new();
            let mut p50 = Vec::new();
            let mut p99 = Vec::new();
            for _ in 0..repeat {
                let r = runtime.block_on(create(store, replicas, count, clients, &logs));
                eprintln!("create: {r}");
                rates.push(r["creations_per_s"].as_f64().unwrap_or(0.0));
                p50.push(r["post"]["p50_ms"].as_f64().unwrap_or(0.0));
                p99.push(r["post"]["p99_ms"].as_f64().unwrap_or(0.0));
                raw.push(("create".into(), r));
            }
            let name = match store {
                Store::Sqlite => "1 replica, SQLite".to_owned(),
                Store::Postgres => format!("{replicas} replica{}, PostgreSQL", if replicas > 1 { "s" } else { "" }),
            };
            let runs = spread(&rates, 0);
            rows.push(format!(
                "| create, {clients} clients, {name} | **{:.0} /s** (runs {runs}); POST p50 {:.1} ms ({}), p99 {:.1} ms ({}) |",
                median(&mut rates.clone()),
                median(&mut p50.clone()),
                spread(&p50, 1),
                median(&mut p99.clone()),
                spread(&p99, 1),
            ));
        }
    }

    if wanted("deliver") && have_pg {
        let events = knob("KILN_BENCH_EVENTS", 500) as usize;
        let tick = knob("KILN_BENCH_TICK_MS", 10);
        let followers = knob("KILN_BENCH_FOLLOWERS", 10) as usize;
        let mut cross = Vec::new();
        let mut same = Vec::new();
        for _ in 0..repeat {
            let r = runtime.block_on(deliver(events, tick, followers, &logs));
            eprintln!("deliver: {r}");
            cross.push((
                r["cross_replica"]["delay"]["p50_ms"].as_f64().unwrap_or(0.0),
                r["cross_replica"]["delay"]["p99_ms"].as_f64().unwrap_or(0.0),
                r["cross_replica"]["delay"]["max_ms"].as_f64().unwrap_or(0.0),
                format!("{}/{}", r["cross_replica"]["delivered"], r["cross_replica"]["expected"]),
            ));
            same.push((
                r["same_replica"]["delay"]["p50_ms"].as_f64().unwrap_or(0.0),
                r["same_replica"]["delay"]["p99_ms"].as_f64().unwrap_or(0.0),
            ));
            raw.push(("deliver".into(), r));
        }
        let p99: Vec<f64> = cross.iter().map(|c| c.1).collect();
        let p50: Vec<f64> = cross.iter().map(|c| c.0).collect();
        let max: Vec<f64> = cross.iter().map(|c| c.2).collect();
        rows.push(format!(
            "| deliver: {events} events {tick} ms apart on A, {followers} followers on B | p99 **{:.2} ms** ({}); p50 {:.2} ms ({}); max {}; delivered {} |",
            median(&mut p99.clone()),
            spread(&p99, 2),
            median(&mut p50.clone()),
            spread(&p50, 2),
            spread(&max, 1),
            cross.iter().map(|c| c.3.clone()).collect::<Vec<_>>().join(", "),
        ));
        let sp99: Vec<f64> = same.iter().map(|c| c.1).collect();
        let sp50: Vec<f64> = same.iter().map(|c| c.0).collect();
        rows.push(format!(
            "| same run, {followers} followers on A itself | p99 {:.2} ms ({}); p50 {:.2} ms ({}) |",
            median(&mut sp99.clone()),
            spread(&sp99, 2),
            median(&mut sp50.clone()),
            spread(&sp50, 2),
        ));
    }

    if wanted("s3") {
        let mib = knob("KILN_BENCH_OUTPUT_MIB", 100);
        let mut store = Vec::new();
        let mut fetch = Vec::new();
        for _ in 0..repeat {
            let Some(r) = runtime.block_on(s3_output(mib, &logs)) else { break };
            eprintln!("s3: {r}");
            store.push(r["store"]["above_idle_mib"].as_f64().unwrap_or(0.0));
            fetch.push(r["fetch"]["above_idle_mib"].as_f64().unwrap_or(0.0));
            raw.push(("s3".into(), r));
        }
        if !store.is_empty() {
            rows.push(format!(
                "| {mib} MiB output stored to S3 (s3s-fs), peak RSS above idle | **{:.1} MiB** ({}) |",
                median(&mut store.clone()),
                spread(&store, 1)
            ));
            rows.push(format!(
                "| same output streamed back through `/files/` (proxy) | {:.1} MiB ({}) |",
                median(&mut fetch.clone()),
                spread(&fetch, 1)
            ));
        }
    }

    println!("\n| Benchmark | Result |\n|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!("\nRaw results:");
    for (name, value) in raw {
        println!("- {name}: {value}");
    }
}
