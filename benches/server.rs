//! The HTTP server under crowds, with the server in a child process (this bench binary
//! run again with `KILN_SERVER_BENCH_CHILD`) so that what the server spends is measured
//! apart from the clients:
//!
//! - `burst`: 1,500 clients connect at the same moment and ask `/health`, with a listen
//!   backlog of 128 (what tokio and most servers ask for) and of kiln's 1,024;
//! - `crowd`: 2,000 connections open and idle or stalled in their headers, and `/health`
//!   asked 300 times meanwhile;
//! - `create`: tasks created by 32 clients, with a JSON prompt and with a picture upload,
//!   and where the server's CPU time went, thread by thread, to find what serialises
//!   creation.
//!
//! Run: `cargo bench --bench server [-- burst crowd create]`. Results are printed as
//! Markdown rows and JSON, as in `benches/core.rs`.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use kiln::{
    app::Application,
    config::Config,
    providers::{Job, JobContext, Outcome, Provider, ProviderError, Registry},
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CHILD_ENV: &str = "KILN_SERVER_BENCH_CHILD";
const READY: &str = "KILN_BENCH_READY ";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures/images/vase.png");

/// Holds every job until the server stops: one runs, the rest wait in the queue, so
/// creating tasks is all the server does.
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

/// Child mode: a kiln server with the `hold` channel and the given `[server]` lines.
fn serve(server_lines: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        r#"
[server]
bind = "127.0.0.1:0"
data_dir = "{data}"
shutdown_grace = "2s"
{server_lines}

[log]
dir = ""
level = "warn"

[[channels]]
name = "hold"
type = "hold"
max_concurrency = 1
max_queue = 10000000
models = [{{ name = "hold", kind = "image_to_3d" }}, {{ name = "hold-text", kind = "text_to_3d" }}]
"#,
        data = dir.path().join("data").display()
    );
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, toml).expect("config");
    let config = Config::load_from(Some(&path), Vec::new(), &Default::default()).expect("valid config");
    let mut registry = Registry::builtin();
    registry.register("hold", |_| Ok(Arc::new(Hold) as Arc<dyn Provider>));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let app = Application::build(config, &registry).await.expect("build");
        println!("{READY}{}", app.local_addr());
        let _ = std::io::stdout().flush();
        let stop = app.shutdown_token();
        // The parent closes stdin to stop the server.
        tokio::task::spawn_blocking(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            stop.cancel();
        });
        app.run_until_stopped(false).await.expect("serve");
    });
}

/// A server in a child process.
struct ChildServer {
    child: Child,
    addr: String,
}

impl ChildServer {
    fn start(server_lines: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("bench binary"))
            .env(CHILD_ENV, server_lines)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("the server ended before it was ready").expect("read");
            if let Some(addr) = line.strip_prefix(READY) {
                break addr.to_owned();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Self { child, addr }
    }

    /// User + system CPU seconds of each of the server's threads, by thread name.
    fn thread_cpu(&self) -> BTreeMap<String, f64> {
        let ticks = 100.0; // USER_HZ on Linux
        let mut out = BTreeMap::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) else { return out };
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let cpu = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
                + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_owned();
            *out.entry(name).or_insert(0.0) += cpu / ticks;
        }
        out
    }

    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

fn summary(mut micros: Vec<u64>) -> Value {
    micros.sort_unstable();
    json!({
        "count": micros.len(),
        "p50_ms": pct(&micros, 50.0),
        "p99_ms": pct(&micros, 99.0),
        "max_ms": pct(&micros, 100.0),
        "over_900ms": micros.iter().filter(|&&m| m > 900_000).count(),
    })
}

/// One request on a new connection; the time from `connect` to the whole answer.
async fn health_on_new_connection(addr: &str) -> std::io::Result<u64> {
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\nConnection: close\r\n\r\n").await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other(String::from_utf8_lossy(&answer).into_owned()));
    }
    Ok(started.elapsed().as_micros() as u64)
}

async fn burst(backlog: u32, clients: usize) -> Value {
    let server = ChildServer::start(&format!("listen_backlog = {backlog}\nmax_connections = 100000"));
    let addr = Arc::new(server.addr.clone());
    // Every client waits at the same barrier, so the SYNs leave together.
    let barrier = Arc::new(tokio::sync::Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, barrier) = (Arc::clone(&addr), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                health_on_new_connection(&addr).await
            })
        })
        .collect();
    let mut times = Vec::new();
    let mut failed = 0;
    for handle in handles {
        match handle.await.expect("client") {
            Ok(micros) => times.push(micros),
            Err(_) => failed += 1,
        }
    }
    server.stop();
    json!({ "backlog": backlog, "clients": clients, "failed": failed, "answer": summary(times) })
}

async fn crowd(crowd: usize, probes: usize) -> Value {
    let server = ChildServer::start("max_connections = 100000");
    let mut held = Vec::with_capacity(crowd);
    for i in 0..crowd {
        let mut stream = tokio::net::TcpStream::connect(&server.addr).await.expect("connect");
        if i % 2 == 1 {
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: kiln\r\n").await.expect("stall");
        }
        held.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut times = Vec::with_capacity(probes);
    for _ in 0..probes {
        times.push(health_on_new_connection(&server.addr).await.expect("health"));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let open_at_end = held.len();
    drop(held);
    server.stop();
    json!({ "crowd": crowd, "open": open_at_end, "health": summary(times) })
}

/// `count` task creations from `clients` concurrent loops, as JSON prompts or picture
/// uploads; creations per second and where the server's CPU went.
async fn create(count: usize, clients: usize, upload: bool) -> Value {
    let server = ChildServer::start("");
    let url = format!("http://{}/api/v1/tasks", server.addr);
    let picture = bytes::Bytes::from(std::fs::read(FIXTURE).expect("fixture"));
    let client = reqwest::Client::new();
    let send = {
        let (client, url, picture) = (client.clone(), url.clone(), picture.clone());
        move || {
            let request = client.post(&url);
            if upload {
                let part = reqwest::multipart::Part::stream(picture.clone()).file_name("vase.png");
                request.multipart(reqwest::multipart::Form::new().part("image", part))
            } else {
                request.json(&json!({ "prompt": "x", "model": "hold-text" }))
            }
        }
    };
    // Warm-up: connections open, every path taken once.
    for _ in 0..clients {
        let response = send().send().await.expect("warm-up");
        assert_eq!(response.status().as_u16(), 202, "warm-up");
    }
    let cpu_before = server.thread_cpu();
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (next, send) = (Arc::clone(&next), send.clone());
            tokio::spawn(async move {
                let mut accepted = 0usize;
                while next.fetch_add(1, Ordering::Relaxed) < count {
                    let response = send().send().await.expect("POST");
                    accepted += usize::from(response.status().as_u16() == 202);
                    let _ = response.bytes().await;
                }
                accepted
            })
        })
        .collect();
    let mut accepted = 0;
    for handle in handles {
        accepted += handle.await.expect("client");
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu_after = server.thread_cpu();
    server.stop();
    let mut threads: Vec<(String, f64)> = cpu_after
        .iter()
        .map(|(name, after)| (name.clone(), after - cpu_before.get(name).copied().unwrap_or(0.0)))
        .filter(|(_, spent)| *spent > 0.0)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    let busy: f64 = threads.iter().map(|(_, s)| s).sum();
    json!({
        "upload": upload,
        "count": count,
        "clients": clients,
        "accepted": accepted,
        "creations_per_s": accepted as f64 / secs,
        "secs": secs,
        "server_cpu_secs": busy,
        "server_cores_busy": busy / secs,
        "threads": threads.iter().map(|(n, s)| json!({"thread": n, "cpu_secs": s, "share_of_wall": s / secs})).collect::<Vec<_>>(),
    })
}

fn main() {
    if let Ok(lines) = std::env::var(CHILD_ENV) {
        serve(&lines);
        return;
    }
    let sections: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wanted = |name: &str| sections.is_empty() || sections.iter().any(|s| s == name);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut rows: Vec<String> = Vec::new();
    let mut raw: Vec<(&str, Value)> = Vec::new();
    if wanted("burst") {
        for backlog in [128, 1024] {
            let r = runtime.block_on(burst(backlog, 1500));
            let a = &r["answer"];
            rows.push(format!(
                "| burst: 1,500 connections at once, backlog {backlog} | p50 {:.1} / p99 {:.1} / max {:.1} ms; {} over 0.9 s; {} failed |",
                a["p50_ms"].as_f64().unwrap_or(0.0),
                a["p99_ms"].as_f64().unwrap_or(0.0),
                a["max_ms"].as_f64().unwrap_or(0.0),
                a["over_900ms"],
                r["failed"]
            ));
            raw.push(("burst", r));
        }
    }
    if wanted("crowd") {
        let r = runtime.block_on(crowd(2000, 300));
        let h = &r["health"];
        rows.push(format!(
            "| /health with 2,000 idle and stalled connections open | p50 {:.2} / p99 {:.2} / max {:.2} ms over {} requests |",
            h["p50_ms"].as_f64().unwrap_or(0.0),
            h["p99_ms"].as_f64().unwrap_or(0.0),
            h["max_ms"].as_f64().unwrap_or(0.0),
            h["count"]
        ));
        raw.push(("crowd", r));
    }
    if wanted("create") {
        for upload in [false, true] {
            let r = runtime.block_on(create(4000, 32, upload));
            let top: Vec<String> = r["threads"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .take(4)
                        .map(|t| {
                            format!(
                                "{} {:.0} %",
                                t["thread"].as_str().unwrap_or("?"),
                                t["share_of_wall"].as_f64().unwrap_or(0.0) * 100.0
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            rows.push(format!(
                "| create, 32 clients, {} | {:.0} /s; server {:.2} cores busy: {} |",
                if upload { "picture upload (vase.png)" } else { "JSON prompt" },
                r["creations_per_s"].as_f64().unwrap_or(0.0),
                r["server_cores_busy"].as_f64().unwrap_or(0.0),
                top.join(", ")
            ));
            raw.push(("create", r));
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
