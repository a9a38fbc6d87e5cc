//! Several replicas (issue 12): three `kiln serve` processes, the real binary, on one
//! PostgreSQL database and one S3 server (`s3s-fs`), each with a data directory of its
//! own, the same channels and the same sealing key, as docs/deploy.md tells an operator
//! to run them. Each test makes its own database on the server `scripts/with-postgres.sh`
//! starts (`make campaign` runs under it) and its own bucket.
//!
//! - Any replica answers for any task: one submitted on A is followed on B (SSE) and its
//!   result fetched from C; a push worker's callbacks reach a replica that did not
//!   dispatch the task.
//! - A replica killed with SIGKILL while it runs tasks: the others take them over once
//!   their leases lapse (not before), resume the upstream jobs rather than submitting
//!   them again, and every task ends once with its event log whole.
//! - A rolling restart (SIGTERM, wait for the exit, start again, next) under a steady
//!   stream of submissions and followers: nothing lost, nothing done twice, no 5xx but
//!   503 with `Retry-After` to a client that retries elsewhere, and the tasks a stopping
//!   replica could not finish handed back at once rather than after their leases.
//! - Admission holds across replicas: 100 concurrent submissions to a 1 + 5 channel,
//!   spread over the three, are 6 accepted with consistent queue positions, and 94
//!   `queue_full`.
//! - Three replicas (and two `kiln migrate`) started at once on an empty database all
//!   come up, with each migration applied once and exactly one first admin between
//!   them; two `kiln admin create` of one name at once make one user and tell the other
//!   why not.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use eventsource_stream::Eventsource;
use futures::{StreamExt, TryStreamExt};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Row, postgres::PgPoolOptions};

use crate::{
    common::{
        KILN, KilnProcess,
        fakes::{FakeTripo, TRIPO_KEY, TripoOptions},
        fixture, log_tail,
        postgres::fresh_database,
        s3::S3Server,
    },
    support::free_port,
};

/// Shared by every replica, as docs/deploy.md requires (base64 of the bytes 0..32).
const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// The replicas' names, in order.
const NAMES: [&str; 3] = ["A", "B", "C"];

const TERMINAL: [&str; 3] = ["completed", "failed", "canceled"];

/// How long one request may take before it counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A test's own empty database on the campaign's PostgreSQL server.
fn database() -> String {
    assert!(
        std::env::var_os("KILN_TEST_DATABASE_URL").is_some(),
        "the replica tests need a PostgreSQL server: run them under scripts/with-postgres.sh (make campaign does)"
    );
    fresh_database()
}

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new().max_connections(3).connect(url).await.expect("connect to the test database")
}

fn client() -> reqwest::Client {
    // No idle connections kept: each request finds out afresh whether its replica is up.
    reqwest::Client::builder().timeout(REQUEST_TIMEOUT).pool_max_idle_per_host(0).build().expect("HTTP client")
}

/// One replica: a port kept across restarts, a directory with its `kiln.toml`, data
/// directory and log, and its process while it runs.
struct Replica {
    name: &'static str,
    port: u16,
    dir: tempfile::TempDir,
    process: Option<KilnProcess>,
}

impl Replica {
    fn config(&self) -> PathBuf {
        self.dir.path().join("kiln.toml")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("kiln.log")
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().map(KilnProcess::pid).unwrap_or_else(|| panic!("replica {} is not running", self.name))
    }

    fn start(&mut self, env: &[(&str, &str)]) {
        assert!(self.process.is_none(), "replica {} already runs", self.name);
        self.process = Some(KilnProcess::start_with_env(&self.config(), &self.log(), env));
    }
}

/// The three replicas and what they share.
struct Cluster {
    s3: S3Server,
    db: PgPool,
    replicas: Vec<Replica>,
}

/// What a cluster's configuration says beyond the shared parts.
struct Setup<'a> {
    tasks: &'a str,
    grace: &'a str,
    /// `[auth]` and the like, before the channels.
    sections: &'a str,
    /// The `[[channels]]` of replica `i` (they may differ only in where workers call back).
    channels: &'a dyn Fn(usize, &[u16; 3]) -> String,
}

impl Cluster {
    /// Writes three configurations on one new database and one bucket; starts nothing.
    /// `None` when there is no S3 server (the test is then skipped, as `s3` says why).
    async fn new(setup: Setup<'_>) -> Option<Self> {
        let s3 = S3Server::start()?;
        let url = database();
        let db = pool(&url).await;
        let mut ports = [free_port(), free_port(), free_port()];
        while ports[1] == ports[0] || ports[2] == ports[0] || ports[2] == ports[1] {
            ports = [free_port(), free_port(), free_port()];
        }
        let replicas = NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let dir = tempfile::tempdir().expect("tempdir");
                let config = format!(
                    "[database]\nurl = \"{url}\"\nmax_connections = 8\n\n\
                     [server]\nbind = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\nshutdown_grace = \"{grace}\"\n\
                     sealing_key = \"{SEALING_KEY}\"\n\n\
                     [log]\ndir = \"\"\nlevel = \"warn\"\n\n[tasks]\n{tasks}\n\n{storage}\n{sections}\n\n{channels}\n",
                    port = ports[i],
                    data = dir.path().join("data").display(),
                    grace = setup.grace,
                    tasks = setup.tasks,
                    storage = s3.storage_toml("serve = \"proxy\""),
                    sections = setup.sections,
                    channels = (setup.channels)(i, &ports),
                );
                std::fs::write(dir.path().join("kiln.toml"), config).expect("write kiln.toml");
                Replica { name, port: ports[i], dir, process: None }
            })
            .collect();
        Some(Self { s3, db, replicas })
    }

    /// Starts every replica at the same moment, with `env(i)` added to replica `i`'s
    /// environment, and waits until each has said where it listens.
    fn start_all(&mut self, env: impl Fn(usize) -> Vec<(&'static str, &'static str)> + Sync) {
        std::thread::scope(|scope| {
            for (i, replica) in self.replicas.iter_mut().enumerate() {
                let vars = env(i);
                scope.spawn(move || replica.start(&vars));
            }
        });
    }

    fn base(&self, i: usize) -> String {
        self.replicas[i].base()
    }

    /// The logs' tails, for a failure message.
    fn logs(&self) -> String {
        self.replicas.iter().map(|r| format!("--- replica {} ---\n{}\n", r.name, log_tail(&r.log(), 25))).collect()
    }

    /// Waits until `GET /ready` answers 200 on replica `i`.
    async fn ready(&self, i: usize, within: Duration) {
        let deadline = Instant::now() + within;
        let http = client();
        while Instant::now() < deadline {
            if let Ok(response) = http.get(format!("{}/ready", self.base(i))).send().await
                && response.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("replica {} was not ready within {within:?}:\n{}", self.replicas[i].name, self.logs());
    }

    /// A task's status, attempts, lease owner and last sequence number, from the database.
    async fn tasks(&self) -> BTreeMap<String, StoredTask> {
        sqlx::query(
            "SELECT id, status, error_code, attempts, lease_owner, last_seq, provider_job_id, prompt, channel \
             FROM tasks",
        )
        .fetch_all(&self.db)
        .await
        .expect("read tasks")
        .iter()
        .map(|row| {
            let task = StoredTask {
                status: row.get("status"),
                error_code: row.get("error_code"),
                attempts: row.get("attempts"),
                lease_owner: row.get("lease_owner"),
                last_seq: row.get("last_seq"),
                provider_job_id: row.get("provider_job_id"),
                prompt: row.get("prompt"),
                channel: row.get("channel"),
            };
            (row.get("id"), task)
        })
        .collect()
    }

    /// Every task's event log from the database: (seq, kind, data, created_at in ms).
    async fn logs_of(&self) -> BTreeMap<String, Vec<StoredEvent>> {
        let rows = sqlx::query("SELECT task_id, seq, kind, data, created_at FROM task_events ORDER BY task_id, seq")
            .fetch_all(&self.db)
            .await
            .expect("read events");
        let mut logs: BTreeMap<String, Vec<StoredEvent>> = BTreeMap::new();
        for row in rows {
            let data: String = row.get("data");
            logs.entry(row.get("task_id")).or_default().push(StoredEvent {
                seq: row.get("seq"),
                kind: row.get("kind"),
                data: serde_json::from_str(&data).unwrap_or(Value::Null),
                at: row.get("created_at"),
            });
        }
        logs
    }

    /// Waits until no task is queued or running; false when `within` passed first.
    async fn drained(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let busy: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')")
                .fetch_one(&self.db)
                .await
                .expect("count");
            if busy == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
}

#[derive(Debug, Clone)]
struct StoredTask {
    status: String,
    error_code: Option<String>,
    attempts: i64,
    lease_owner: Option<String>,
    last_seq: i64,
    provider_job_id: Option<String>,
    prompt: Option<String>,
    channel: String,
}

#[derive(Debug, Clone)]
struct StoredEvent {
    seq: i64,
    kind: String,
    data: Value,
    at: i64,
}

/// The lease owner prefix of the process with this pid (`queue::Scheduler`).
fn owner_of(pid: u32) -> String {
    format!("kiln-{pid}-")
}

/// Sequence numbers 1..n, `queued` first, exactly one terminal event, last, matching the
/// task's status, and `last_seq` = n.
fn log_is_whole(log: &[StoredEvent], task: &StoredTask) -> Result<(), String> {
    if log.iter().enumerate().any(|(i, e)| e.seq != i as i64 + 1) {
        return Err("sequence numbers are not 1..n".into());
    }
    if log.len() as i64 != task.last_seq {
        return Err(format!("{} events but last_seq {}", log.len(), task.last_seq));
    }
    if log.first().map(|e| e.kind.as_str()) != Some("queued") {
        return Err("the first event is not `queued`".into());
    }
    if log.iter().filter(|e| TERMINAL.contains(&e.kind.as_str())).count() != 1 {
        return Err("not exactly one terminal event".into());
    }
    let expected = match task.status.as_str() {
        "succeeded" => "completed",
        "failed" => "failed",
        "canceled" => "canceled",
        _ => "(none)",
    };
    let last = log.last().map(|e| e.kind.as_str()).unwrap_or_default();
    if last != expected {
        return Err(format!("the last event is `{last}`, the status {}", task.status));
    }
    Ok(())
}

/// A task's event stream on `base`, after `last_event_id`, read to its end: (id, event).
async fn stream(
    http: &reqwest::Client,
    base: &str,
    id: &str,
    last_event_id: Option<i64>,
) -> Result<Vec<(i64, String)>, String> {
    let mut request = http.get(format!("{base}/api/v1/tasks/{id}/events"));
    if let Some(last) = last_event_id {
        request = request.header("Last-Event-ID", last.to_string());
    }
    let response = request.send().await.map_err(|e| format!("{base}: {e}"))?;
    if response.status() != 200 {
        return Err(format!("{base}: events answered {}", response.status()));
    }
    response
        .bytes_stream()
        .eventsource()
        .map_ok(|event| (event.id.parse().unwrap_or(-1), event.event))
        .try_collect()
        .await
        .map_err(|e| format!("{base}: the stream broke: {e}"))
}

/// SSE from `replay_on` replays exactly the stored log, and a `Last-Event-ID` resume on
/// `resume_on` from its middle exactly its tail.
async fn replays(
    http: &reqwest::Client,
    replay_on: &str,
    resume_on: &str,
    id: &str,
    log: &[StoredEvent],
) -> Result<(), String> {
    let stored: Vec<(i64, String)> = log.iter().map(|e| (e.seq, e.kind.clone())).collect();
    let whole = stream(http, replay_on, id, None).await?;
    if whole != stored {
        return Err(format!("task {id}: {replay_on} replayed {whole:?}, the database holds {stored:?}"));
    }
    let middle = stored.len() as i64 / 2;
    let tail = stream(http, resume_on, id, Some(middle)).await?;
    if tail != stored[middle as usize..] {
        return Err(format!(
            "task {id}: resumed after {middle} on {resume_on}: {tail:?}, not {:?}",
            &stored[middle as usize..]
        ));
    }
    Ok(())
}

/// Fetches a finished task's main output through `base` (kiln streams it from the
/// bucket) and checks it against its record.
async fn fetch_result(http: &reqwest::Client, base: &str, id: &str) -> Result<Vec<u8>, String> {
    let result: Value = http
        .get(format!("{base}/api/v1/tasks/{id}/result"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let output = result["outputs"].as_array().and_then(|o| o.iter().find(|o| o["role"] == "model"));
    let output = output.ok_or_else(|| format!("task {id}: no model in {result}"))?;
    let url = output["url"].as_str().ok_or_else(|| format!("task {id}: no output in {result}"))?;
    if !url.starts_with(base) {
        return Err(format!("task {id}: the output's URL {url} is not {base}'s own"));
    }
    let bytes = http.get(url).send().await.map_err(|e| e.to_string())?.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() as u64 != output["size"].as_u64().unwrap_or(0)
        || Some(hex::encode(Sha256::digest(&bytes)).as_str()) != output["sha256"].as_str()
    {
        return Err(format!("task {id}: {url} gave {} bytes that do not match the record {output}", bytes.len()));
    }
    if !bytes.starts_with(b"glTF") {
        return Err(format!("task {id}: the output is not a GLB"));
    }
    Ok(bytes.to_vec())
}

/// The vase for the relief channel, sent in 20 pieces over about 1.5 s.
fn slow_picture() -> Form {
    let bytes = bytes::Bytes::from(fixture("vase.png"));
    let total = bytes.len() as u64;
    let pieces: Vec<bytes::Bytes> = bytes.chunks(bytes.len().div_ceil(20)).map(bytes::Bytes::copy_from_slice).collect();
    let body = futures::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(75)).await;
        Ok::<_, std::io::Error>(piece)
    });
    Form::new()
        .part("image", Part::stream_with_length(reqwest::Body::wrap_stream(body), total).file_name("vase.png"))
        .text("model", "relief")
}

fn picture_form(model: &str) -> Form {
    Form::new().part("image", Part::bytes(fixture("vase.png")).file_name("vase.png")).text("model", model.to_owned())
}

/// A relief channel, as every replica has it.
const RELIEF: &str = "[[channels]]\nname = \"relief\"\ntype = \"relief\"\nmax_concurrency = 2\nmax_queue = 200\n\
                      models = [{ name = \"relief\", kind = \"image_to_3d\" }]\n\
                      [channels.options]\nresolution = 64\ntexture_size = 256\n";

/// A Tripo channel on the fake (polled every 100 ms, no health probes).
fn tripo_channel(name: &str, tripo: &FakeTripo, max_concurrency: u32, max_queue: u32) -> String {
    format!(
        "[[channels]]\nname = \"{name}\"\ntype = \"tripo\"\nsecret = \"{TRIPO_KEY}\"\nmax_concurrency = {max_concurrency}\n\
         max_queue = {max_queue}\ndeadline = \"120s\"\n\
         models = [{{ name = \"{name}-text\", kind = \"text_to_3d\", upstream = \"v3.1-20260211\" }}]\n\
         [channels.options]\nbase_url = \"{base}\"\npoll_interval = \"100ms\"\npoll_max_interval = \"200ms\"\n\
         requests_per_minute = 60000\nhealth_interval = \"0s\"\n",
        base = tripo.base_url()
    )
}

fn worker_secret() -> String {
    use base64::Engine;
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode([7u8; 32]))
}

/// `kiln worker` (relief over the worker protocol) on a free port; killed on drop.
struct Worker {
    child: std::process::Child,
    url: String,
}

impl Worker {
    fn start(secret: &str) -> Self {
        let mut child = Command::new(KILN)
            .args(["worker", "--bind", "127.0.0.1:0"])
            .env("KILN_WORKER_SECRET", secret)
            .env("KILN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kiln worker");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read the address");
        let url = line
            .trim()
            .strip_prefix("kiln worker is running at ")
            .unwrap_or_else(|| panic!("unexpected first line from kiln worker: {line:?}"))
            .trim_end_matches('/')
            .to_owned();
        Self { child, url }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the fault campaign: `make campaign` runs it"]
async fn a_task_submitted_on_one_replica_is_followed_on_another_and_fetched_from_a_third() {
    let secret = worker_secret();
    let worker = Worker::start(&secret);
    // Each replica's workers call back the next replica: a callback never reaches the
    // replica that dispatched its task.
    let channels = |i: usize, ports: &[u16; 3]| {
        format!(
            "{RELIEF}\n[[channels]]\nname = \"gpu\"\ntype = \"worker\"\nsecret = \"{secret}\"\nmax_concurrency = 1\n\
             max_queue = 10\nmodels = [{{ name = \"gpu-relief\", kind = \"image_to_3d\" }}]\n\
             options = {{ workers = [\"{worker}\"], callback_url = \"http://127.0.0.1:{next}/api/v1/worker-callbacks\", \
             health_interval = \"200ms\", health_failures = 2 }}\n",
            worker = worker.url,
            next = ports[(i + 1) % 3],
        )
    };
    let setup =
        Setup { tasks: "lease = \"2s\"\npoll_interval = \"200ms\"", grace: "2s", sections: "", channels: &channels };
    let Some(mut cluster) = Cluster::new(setup).await else { return };
    cluster.start_all(|_| Vec::new());
    for i in 0..3 {
        cluster.ready(i, Duration::from_secs(30)).await;
    }
    let http = client();
    let (a, b, c) = (cluster.base(0), cluster.base(1), cluster.base(2));
    for model in ["relief", "gpu-relief"] {
        let response =
            http.post(format!("{a}/api/v1/tasks")).multipart(picture_form(model)).send().await.expect("submit");
        assert_eq!(response.status(), 202, "{model} on A");
        let id = response.json::<Value>().await.expect("task")["id"].as_str().expect("id").to_owned();
        // Followed on B from the moment it is queued: whatever runs it, B streams it.
        let followed =
            stream(&http, &b, &id, None).await.unwrap_or_else(|e| panic!("{model}: {e}\n{}", cluster.logs()));
        let tasks = cluster.tasks().await;
        let logs = cluster.logs_of().await;
        let task = &tasks[&id];
        assert_eq!(task.status, "succeeded", "{model}: {task:?}\n{}", cluster.logs());
        let log = &logs[&id];
        log_is_whole(log, task).unwrap_or_else(|e| panic!("{model}: {e}: {log:?}"));
        let stored: Vec<(i64, String)> = log.iter().map(|e| (e.seq, e.kind.clone())).collect();
        assert_eq!(followed, stored, "{model}: B streamed the whole log, live");
        let bytes = fetch_result(&http, &c, &id).await.unwrap_or_else(|e| panic!("{model}: {e}"));
        replays(&http, &c, &a, &id, log).await.unwrap_or_else(|e| panic!("{model}: {e}"));
        let in_bucket = cluster.s3.keys();
        assert!(
            in_bucket.iter().any(|k| k == &format!("reconstruction/{id}/model.glb")),
            "{model}: the result is in the shared bucket: {in_bucket:?}"
        );
        println!(
            "{model}: submitted on A, {} events followed on B, {} bytes fetched from C",
            followed.len(),
            bytes.len()
        );
    }
}

/// A short lease, so the take-over comes soon; the fake's jobs run longer than it.
const TAKEOVER_TASKS: &str = "lease = \"2s\"\npoll_interval = \"200ms\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the fault campaign: `make campaign` runs it"]
async fn a_killed_replicas_tasks_are_taken_over_after_their_leases_and_end_whole() {
    let tripo = FakeTripo::start(TripoOptions::default().timeline(Duration::from_millis(200), Duration::from_secs(3)));
    let channels = |_: usize, _: &[u16; 3]| tripo_channel("tripo", &tripo, 9, 40);
    let setup = Setup { tasks: TAKEOVER_TASKS, grace: "2s", sections: "", channels: &channels };
    let Some(mut cluster) = Cluster::new(setup).await else { return };
    cluster.start_all(|_| Vec::new());
    for i in 0..3 {
        cluster.ready(i, Duration::from_secs(30)).await;
    }
    let http = client();
    let mut ids = Vec::new();
    for n in 0..12 {
        let base = cluster.base(n % 3);
        let body = json!({ "model": "tripo-text", "prompt": format!("take-over {n}") });
        let response = http.post(format!("{base}/api/v1/tasks")).json(&body).send().await.expect("submit");
        assert_eq!(response.status(), 202);
        ids.push(response.json::<Value>().await.expect("task")["id"].as_str().expect("id").to_owned());
    }
    // The victim: the replica running the most tasks whose upstream jobs exist (any
    // replica may claim any task), as soon as one runs such a task.
    let owners: Vec<String> = cluster.replicas.iter().map(|r| owner_of(r.pid())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let victim = loop {
        let tasks = cluster.tasks().await;
        let held = |owner: &str| {
            tasks
                .values()
                .filter(|t| t.status == "running" && t.provider_job_id.is_some())
                .filter(|t| t.lease_owner.as_deref().is_some_and(|o| o.starts_with(owner)))
                .count()
        };
        let (most, victim) = (0..3).map(|i| (held(&owners[i]), i)).max().unwrap_or_default();
        if most > 0 {
            break victim;
        }
        assert!(Instant::now() < deadline, "no replica ran a task:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (name, a_owner) = (NAMES[victim], owners[victim].clone());
    let (first, second) = (cluster.base((victim + 1) % 3), cluster.base((victim + 2) % 3));
    cluster.replicas[victim].process.take().expect("the victim").sigkill();
    // What it held when it died: its last leases stand in the database.
    let at_death: BTreeMap<String, (Option<String>, i64)> = sqlx::query(
        "SELECT id, provider_job_id, lease_expires_at FROM tasks WHERE status = 'running' AND lease_owner LIKE $1",
    )
    .bind(format!("{a_owner}%"))
    .fetch_all(&cluster.db)
    .await
    .expect("the victim's tasks")
    .iter()
    .map(|row| (row.get("id"), (row.get("provider_job_id"), row.get("lease_expires_at"))))
    .collect();
    assert!(!at_death.is_empty(), "{name} ran tasks when it was killed");
    assert!(
        cluster.drained(Duration::from_secs(60)).await,
        "tasks still open 60 s after the kill:\n{}",
        cluster.logs()
    );

    let tasks = cluster.tasks().await;
    let logs = cluster.logs_of().await;
    let mut problems = Vec::new();
    for id in &ids {
        let task = &tasks[id];
        let log = &logs[id];
        // `upstream_outcome_unknown`: killed while submitting, so nobody can tell whether
        // the upstream took the job (docs/providers/cloud.md); refunded, never resubmitted.
        let ended_well = task.status == "succeeded"
            || (task.status == "failed" && task.error_code.as_deref() == Some("upstream_outcome_unknown"));
        if !ended_well {
            problems.push(format!("task {id} ended {} {:?}", task.status, task.error_code));
        }
        if let Err(why) = log_is_whole(log, task) {
            problems.push(format!("task {id}: {why}: {log:?}"));
        }
        let prompt = task.prompt.clone().unwrap_or_default();
        let creates = tripo.creates_for_prompt(&prompt);
        if creates > 1 {
            problems.push(format!("task {id} was submitted upstream {creates} times"));
        }
        if task.status == "succeeded"
            && let Err(why) = fetch_result(&http, &second, id).await
        {
            problems.push(why);
        }
        if let Err(why) = replays(&http, &second, &first, id, log).await {
            problems.push(why);
        }
    }
    for (id, (job, lease_until)) in &at_death {
        let task = &tasks[id];
        if task.lease_owner.as_deref().is_some_and(|o| o.starts_with(&a_owner)) || task.attempts < 2 {
            problems.push(format!("task {id} of {name} was not claimed again: {task:?}"));
        }
        match logs[id].iter().find(|e| e.data["stage"] == "restarting") {
            None => problems.push(format!("task {id} of {name} has no `restarting` event")),
            Some(restart) if restart.at < *lease_until => problems.push(format!(
                "task {id} of {name} was taken over at {}, before its lease ran out at {lease_until}",
                restart.at
            )),
            Some(_) => {}
        }
        if job.is_some()
            && (task.status != "succeeded" || tripo.creates_for_prompt(task.prompt.as_deref().unwrap_or_default()) != 1)
        {
            problems.push(format!("task {id} of {name} had its upstream job; it should have been resumed: {task:?}"));
        }
    }
    println!(
        "SIGKILL of {name}: {} tasks, {} of them held by it at its death ({} with an upstream job); all ended: {:?}",
        ids.len(),
        at_death.len(),
        at_death.values().filter(|(job, _)| job.is_some()).count(),
        tasks.values().fold(BTreeMap::<String, usize>::new(), |mut m, t| {
            *m.entry(format!("{} {}", t.status, t.error_code.clone().unwrap_or_default())).or_default() += 1;
            m
        }),
    );
    assert!(problems.is_empty(), "{} problem(s):\n  {}\n{}", problems.len(), problems.join("\n  "), cluster.logs());
}

/// What the rolling restart's clients saw.
#[derive(Default)]
struct Ledger {
    /// Idempotency-Key → every task id a 2xx answer gave for it.
    keys: BTreeMap<String, BTreeSet<String>>,
    /// Accepted task ids, in the order their first answers came.
    order: Vec<String>,
    /// Keys whose submission never got a 2xx.
    unanswered: Vec<String>,
    /// Answers outside the contract (any 5xx but 503, a 503 without `Retry-After`, 4xx).
    broken: Vec<String>,
    /// 503s seen (each with `Retry-After`), refused or reset connections, tries.
    busy: usize,
    refused: usize,
    tries: usize,
    /// Followed streams: completed, and reconnections they needed.
    followed: usize,
    resumed: usize,
}

struct Traffic {
    bases: Vec<String>,
    http: reqwest::Client,
    stop: AtomicBool,
    next: AtomicUsize,
    ledger: Mutex<Ledger>,
}

impl Traffic {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one keyed submission until a 2xx, moving to the next replica after a
    /// refused connection or a 503, as a client behind no load balancer would.
    async fn submit(&self, key: String, build: impl Fn(&str) -> reqwest::RequestBuilder) {
        let mut replica = self.next.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let base = &self.bases[replica % self.bases.len()];
            self.ledger().tries += 1;
            match build(base).header("Idempotency-Key", &key).send().await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = response.headers().contains_key("retry-after");
                    let body: Value = response.json().await.unwrap_or(Value::Null);
                    match status {
                        200..=299 => {
                            let id = body["id"].as_str().unwrap_or_default().to_owned();
                            let mut ledger = self.ledger();
                            if ledger.keys.entry(key).or_default().insert(id.clone()) {
                                ledger.order.push(id);
                            }
                            return;
                        }
                        503 if retry_after => self.ledger().busy += 1,
                        _ => self.ledger().broken.push(format!("{base}: {status} {body}")),
                    }
                }
                // Refused (the replica is down), or cut as it stopped.
                Err(_) => self.ledger().refused += 1,
            }
            replica += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ledger().unanswered.push(key);
    }

    /// Follows a task to its end, from one replica to the next whenever a stream ends
    /// early (its replica stopped), resuming with `Last-Event-ID`; the ids received must
    /// be 1..n with the terminal event last.
    async fn follow(&self, id: String) {
        let mut replica = self.next.fetch_add(1, Ordering::SeqCst);
        let mut seen: Vec<(i64, String)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            let base = &self.bases[replica % self.bases.len()];
            let last = seen.last().map(|(seq, _)| *seq);
            let mut request =
                self.http.get(format!("{base}/api/v1/tasks/{id}/events")).timeout(Duration::from_secs(90));
            if let Some(last) = last {
                request = request.header("Last-Event-ID", last.to_string());
            }
            if let Ok(response) = request.send().await {
                let status = response.status().as_u16();
                if status == 503 && response.headers().contains_key("retry-after") {
                    // A stopping replica: the next one.
                } else if status != 200 {
                    self.ledger().broken.push(format!("{base}: events of {id}: {status}"));
                } else {
                    let mut events = response.bytes_stream().eventsource();
                    while let Some(Ok(event)) = events.next().await {
                        seen.push((event.id.parse().unwrap_or(-1), event.event));
                    }
                }
            }
            if seen.last().is_some_and(|(_, kind)| TERMINAL.contains(&kind.as_str())) {
                let whole = seen.iter().enumerate().all(|(i, (seq, _))| *seq == i as i64 + 1);
                let mut ledger = self.ledger();
                if !whole {
                    ledger.broken.push(format!("task {id} was followed as {seen:?}"));
                }
                ledger.followed += 1;
                return;
            }
            self.ledger().resumed += 1;
            replica += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.ledger().broken.push(format!("task {id}: no terminal event followed within 90 s: {seen:?}"));
    }
}

async fn submitter(traffic: Arc<Traffic>, client: usize) {
    let mut n = 0;
    while !traffic.stop.load(Ordering::SeqCst) {
        n += 1;
        let key = format!("rolling-{client}-{n}");
        if n % 6 == 0 {
            // An upload that takes about 1.5 s: one under way when its replica stops is
            // cut at four fifths of the grace period and answered 503 with Retry-After.
            traffic
                .submit(key, |base| traffic.http.post(format!("{base}/api/v1/tasks")).multipart(slow_picture()))
                .await;
        } else if n % 3 == 0 {
            traffic
                .submit(key, |base| traffic.http.post(format!("{base}/api/v1/tasks")).multipart(picture_form("relief")))
                .await;
        } else {
            let body = json!({ "model": "tripo-text", "prompt": key.clone() });
            traffic.submit(key, |base| traffic.http.post(format!("{base}/api/v1/tasks")).json(&body)).await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// Follows the newest accepted task to its end, then the next newest, and so on.
async fn follower(traffic: Arc<Traffic>) {
    let mut last = None;
    while !traffic.stop.load(Ordering::SeqCst) {
        let newest = traffic.ledger().order.last().cloned();
        if newest.is_some() && newest != last {
            last.clone_from(&newest);
            traffic.follow(newest.unwrap_or_default()).await;
        } else {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the fault campaign: `make campaign` runs it"]
async fn a_rolling_restart_under_steady_submissions_loses_nothing_and_answers_no_5xx() {
    // Cloud jobs of 3 s against 1 s of grace: those a stopping replica started in its
    // last two seconds are still running when its grace period ends.
    let tripo = FakeTripo::start(TripoOptions::default().timeline(Duration::from_millis(100), Duration::from_secs(3)));
    let channels = |_: usize, _: &[u16; 3]| format!("{RELIEF}\n{}", tripo_channel("tripo", &tripo, 16, 200));
    // A lease far longer than the test waits for a take-over: a task a stopping replica
    // could not finish is taken over at once only if it was handed back.
    let setup =
        Setup { tasks: "lease = \"30s\"\npoll_interval = \"200ms\"", grace: "1s", sections: "", channels: &channels };
    let Some(mut cluster) = Cluster::new(setup).await else { return };
    cluster.start_all(|_| Vec::new());
    for i in 0..3 {
        cluster.ready(i, Duration::from_secs(30)).await;
    }
    let traffic = Arc::new(Traffic {
        bases: (0..3).map(|i| cluster.base(i)).collect(),
        http: client(),
        stop: AtomicBool::new(false),
        next: AtomicUsize::new(0),
        ledger: Mutex::new(Ledger::default()),
    });
    let mut clients: Vec<_> = (0..3).map(|i| tokio::spawn(submitter(Arc::clone(&traffic), i))).collect();
    clients.extend((0..2).map(|_| tokio::spawn(follower(Arc::clone(&traffic)))));
    tokio::time::sleep(Duration::from_secs(3)).await;

    // (replica, the SIGTERM's time in ms, the tasks it ran then with their leases)
    let mut stops: Vec<(usize, i64, BTreeMap<String, i64>)> = Vec::new();
    for (i, name) in NAMES.iter().enumerate() {
        let owner = owner_of(cluster.replicas[i].pid());
        let running: BTreeMap<String, i64> =
            sqlx::query("SELECT id, lease_expires_at FROM tasks WHERE status = 'running' AND lease_owner LIKE $1")
                .bind(format!("{owner}%"))
                .fetch_all(&cluster.db)
                .await
                .expect("running tasks")
                .iter()
                .map(|row| (row.get("id"), row.get("lease_expires_at")))
                .collect();
        let at = chrono::Utc::now().timestamp_millis();
        let mut process = cluster.replicas[i].process.take().expect("running");
        let status = process.sigterm(Duration::from_secs(20));
        assert!(
            status.is_some_and(|s| s.success()),
            "replica {} did not exit cleanly after SIGTERM: {status:?}\n{}",
            name,
            cluster.logs()
        );
        stops.push((i, at, running));
        cluster.replicas[i].start(&[]);
        cluster.ready(i, Duration::from_secs(30)).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    traffic.stop.store(true, Ordering::SeqCst);
    for client in clients {
        tokio::time::timeout(Duration::from_secs(120), client).await.expect("clients stop").expect("client panicked");
    }
    let drained = cluster.drained(Duration::from_secs(60)).await;

    let tasks = cluster.tasks().await;
    let logs = cluster.logs_of().await;
    let ledger = traffic.ledger();
    let mut problems: Vec<String> = ledger.broken.clone();
    if !drained {
        problems.push("tasks were still open 60 s after the last restart".into());
    }
    for key in &ledger.unanswered {
        problems.push(format!("key {key} got no 2xx in 60 s"));
    }
    let accepted: BTreeSet<&String> = ledger.keys.values().flatten().collect();
    for (key, ids) in &ledger.keys {
        if ids.len() != 1 {
            problems.push(format!("key {key} answered {ids:?}"));
        }
    }
    if tasks.len() != accepted.len() {
        problems.push(format!("{} tasks in the database, {} accepted (one key each)", tasks.len(), accepted.len()));
    }
    for id in &accepted {
        let Some(task) = tasks.get(*id) else {
            problems.push(format!("accepted task {id} is not in the database"));
            continue;
        };
        let ended_well = task.status == "succeeded"
            || (task.status == "failed" && task.error_code.as_deref() == Some("upstream_outcome_unknown"));
        if !ended_well {
            problems.push(format!("task {id} ended {} {:?}", task.status, task.error_code));
        }
        if let Err(why) = log_is_whole(logs.get(*id).map(Vec::as_slice).unwrap_or_default(), task) {
            problems.push(format!("task {id}: {why}"));
        }
        if task.channel == "tripo" && tripo.creates_for_prompt(task.prompt.as_deref().unwrap_or_default()) > 1 {
            problems.push(format!("task {id} was submitted upstream more than once"));
        }
    }
    // The tasks a stopping replica ran past its grace period: handed back, so taken over
    // before the leases they held could have lapsed.
    let mut handed_back = 0;
    for (i, at, running) in &stops {
        for (id, lease_until) in running {
            let restart = logs[id].iter().find(|e| e.data["stage"] == "restarting" && e.at >= *at);
            match restart {
                Some(restart) if restart.at < *lease_until => handed_back += 1,
                Some(restart) => problems.push(format!(
                    "task {id}, running on {} at its SIGTERM, was taken over at {} after its lease ({lease_until}) \
                     rather than handed back",
                    NAMES[*i], restart.at
                )),
                None => {}
            }
        }
    }
    let outcomes = tasks.values().fold(BTreeMap::<String, usize>::new(), |mut m, t| {
        *m.entry(format!("{} {}", t.status, t.error_code.clone().unwrap_or_default())).or_default() += 1;
        m
    });
    println!(
        "rolling restart: {} tasks {outcomes:?}; {} tries, {} answered 503 (with Retry-After), {} refused or cut; \
         {handed_back} handed back at a stop; {} followed to their end ({} resumed on another replica)",
        tasks.len(),
        ledger.tries,
        ledger.busy,
        ledger.refused,
        ledger.followed,
        ledger.resumed,
    );
    if handed_back == 0 {
        problems.push("no task was running past a stop's grace period: the hand-back went untested".into());
    }
    assert!(problems.is_empty(), "{} problem(s):\n  {}\n{}", problems.len(), problems.join("\n  "), cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the fault campaign: `make campaign` runs it"]
async fn three_replicas_admit_exactly_six_of_a_hundred_submissions_to_a_one_plus_five_channel() {
    // Jobs that outlast the test: the one that starts keeps its place.
    let tripo = FakeTripo::start(TripoOptions::default().timeline(Duration::ZERO, Duration::from_secs(600)));
    let channels = |_: usize, _: &[u16; 3]| tripo_channel("one", &tripo, 1, 5);
    let setup =
        Setup { tasks: "lease = \"5s\"\npoll_interval = \"200ms\"", grace: "1s", sections: "", channels: &channels };
    let Some(mut cluster) = Cluster::new(setup).await else { return };
    cluster.start_all(|_| Vec::new());
    for i in 0..3 {
        cluster.ready(i, Duration::from_secs(30)).await;
    }
    let http = client();
    let answers: Vec<(u16, Option<String>, Value)> = futures::future::join_all((0..100).map(|n| {
        let (http, base) = (http.clone(), cluster.base(n % 3));
        async move {
            let body = json!({ "model": "one-text", "prompt": format!("admission {n}") });
            let response = http.post(format!("{base}/api/v1/tasks")).json(&body).send().await.expect("answered");
            let retry = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
            (response.status().as_u16(), retry, response.json().await.unwrap_or(Value::Null))
        }
    }))
    .await;
    let accepted: BTreeMap<String, u64> = answers
        .iter()
        .filter(|(status, _, _)| *status == 202)
        .map(|(_, _, body)| {
            (body["id"].as_str().unwrap_or_default().to_owned(), body["queue_position"].as_u64().unwrap_or(0))
        })
        .collect();
    let refused: Vec<_> = answers.iter().filter(|(status, _, _)| *status != 202).collect();
    assert_eq!(accepted.len(), 6, "exactly max_concurrency + max_queue accepted: {accepted:?}");
    for (status, retry, body) in &refused {
        assert!(
            *status == 503 && body["error"]["code"] == "queue_full" && retry.is_some(),
            "the documented refusal (503 queue_full with Retry-After), not {status} {retry:?} {body}"
        );
    }

    // Positions at admission, in the order the tasks were admitted: 1, 2, 3 … with at
    // most one step missing where the first task started between two admissions.
    let order: Vec<String> = sqlx::query_scalar("SELECT id FROM tasks ORDER BY rowid")
        .fetch_all(&cluster.db)
        .await
        .expect("admission order");
    assert_eq!(order.iter().collect::<BTreeSet<_>>(), accepted.keys().collect::<BTreeSet<_>>());
    let positions: Vec<u64> = order.iter().map(|id| accepted[id]).collect();
    let steps: Vec<i64> = positions.windows(2).map(|w| w[1] as i64 - w[0] as i64).collect();
    assert!(
        positions[0] == 1 && steps.iter().all(|s| *s == 0 || *s == 1) && steps.iter().filter(|s| **s == 0).count() <= 1,
        "positions at admission, in admission order: {positions:?}"
    );

    // Once the first has started: it runs, and the five others wait in admission order,
    // at 1..5 on every replica, as their last `queued` events announced.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut seen = Vec::new();
        for (n, id) in order.iter().enumerate() {
            let task: Value = http
                .get(format!("{}/api/v1/tasks/{id}", cluster.base(n % 3)))
                .send()
                .await
                .expect("get")
                .json()
                .await
                .expect("task");
            seen.push((task["status"].as_str().unwrap_or_default().to_owned(), task["queue_position"].as_u64()));
        }
        let logs = cluster.logs_of().await;
        let announced: Vec<Option<u64>> = order
            .iter()
            .map(|id| logs[id].iter().rev().find(|e| e.kind == "queued").and_then(|e| e.data["position"].as_u64()))
            .collect();
        let expected: Vec<(String, Option<u64>)> = std::iter::once(("running".to_owned(), None))
            .chain((1..=5).map(|p| ("queued".to_owned(), Some(p))))
            .collect();
        let announced_ok = announced[1..].iter().zip(1..=5).all(|(a, p)| *a == Some(p));
        if seen == expected && announced_ok {
            println!(
                "admission: 6 of 100 accepted, positions at admission {positions:?}, then 1 running and 1..5 waiting"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after the first started: {seen:?} (announced {announced:?}), not one running and 1..5 waiting\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the fault campaign: `make campaign` runs it"]
async fn replicas_started_at_once_on_an_empty_database_come_up_with_one_first_admin() {
    let channels = |_: usize, _: &[u16; 3]| RELIEF.to_owned();
    let setup = Setup {
        tasks: "lease = \"5s\"\npoll_interval = \"200ms\"",
        grace: "1s",
        sections: "[auth]\nmode = \"tokens\"\n",
        channels: &channels,
    };
    let Some(mut cluster) = Cluster::new(setup).await else { return };
    // Two asked for `root` with one password, the third for `boss` with another, as
    // replicas given different settings by mistake would be.
    let admin = |i: usize| -> (&'static str, &'static str) {
        if i < 2 { ("root", "first admin password") } else { ("boss", "another admin password") }
    };
    // `kiln migrate` twice beside them, on the same empty database.
    let migrations: Vec<_> = (0..2)
        .map(|_| {
            Command::new(KILN)
                .args(["migrate", "--config"])
                .arg(cluster.replicas[0].config())
                .env_remove("KILN_CONFIG")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kiln migrate")
        })
        .collect();
    cluster.start_all(|i| {
        let (username, password) = admin(i);
        vec![("KILN_ADMIN__USERNAME", username), ("KILN_ADMIN__PASSWORD", password)]
    });
    for migration in migrations {
        let output = migration.wait_with_output().expect("kiln migrate ran");
        assert!(
            output.status.success() && String::from_utf8_lossy(&output.stdout).contains("database is up to date"),
            "kiln migrate beside starting replicas: {:?} {} {}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for i in 0..3 {
        cluster.ready(i, Duration::from_secs(30)).await;
    }

    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .expect("migrations")
        .filter(|e| e.as_ref().is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".sql")))
        .count();
    let applied: Vec<(i64, bool)> = sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&cluster.db)
        .await
        .expect("migrations table");
    assert_eq!(applied.len(), files, "each migration applied once: {applied:?}");
    assert!(applied.iter().all(|(_, success)| *success), "{applied:?}");

    let admins: Vec<String> = sqlx::query_scalar("SELECT username FROM users WHERE role = 'admin'")
        .fetch_all(&cluster.db)
        .await
        .expect("admins");
    assert_eq!(admins.len(), 1, "exactly one first admin: {admins:?}\n{}", cluster.logs());
    let made = &admins[0];
    let password = if made == "root" { admin(0).1 } else { admin(2).1 };
    let http = client();
    for (i, name) in NAMES.iter().enumerate() {
        let response = http
            .post(format!("{}/api/v1/session", cluster.base(i)))
            .json(&json!({ "username": made, "password": password }))
            .send()
            .await
            .expect("sign in");
        assert_eq!(response.status(), 200, "the admin `{made}` signs in on replica {}", name);
    }
    let bootstrap_audits: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_log WHERE action = 'user.create' AND actor = 'bootstrap'")
            .fetch_one(&cluster.db)
            .await
            .expect("audit");
    assert_eq!(bootstrap_audits, 1, "one creation audited");

    // Two people making the same user at once with `kiln admin create`: one is made, the
    // other told plainly why not.
    let creates: Vec<_> = (0..2)
        .map(|_| {
            let mut child = Command::new(KILN)
                .args(["admin", "create", "--username", "carol", "--password-stdin", "--config"])
                .arg(cluster.replicas[1].config())
                .env_remove("KILN_CONFIG")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("kiln admin create");
            std::io::Write::write_all(child.stdin.as_mut().expect("stdin"), b"carol's own password\n")
                .expect("password");
            child
        })
        .collect();
    let outputs: Vec<_> = creates.into_iter().map(|c| c.wait_with_output().expect("ran")).collect();
    let made_carol = outputs.iter().filter(|o| o.status.success()).count();
    let told = outputs
        .iter()
        .filter(|o| {
            !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("The username `carol` is taken.")
        })
        .count();
    assert!(
        made_carol == 1 && told == 1,
        "one made, one told the name is taken: {:?}",
        outputs.iter().map(|o| (o.status, String::from_utf8_lossy(&o.stderr).into_owned())).collect::<Vec<_>>()
    );
    println!(
        "start-up: 3 replicas and 2 `kiln migrate` at once; {applied_count} migrations once each; first admin `{made}`",
        applied_count = applied.len()
    );
}
