//! Spawning the real server (in this process, or as a child process for crash tests)
//! and talking to it.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use eventsource_stream::Eventsource;
use futures::StreamExt;
use kiln::{app::Application, config::Config, gateway::Gateway, providers::Registry};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

pub use crate::common::{FIXTURES, fixture};

pub const TASKS: &str = "lease = \"1s\"\npoll_interval = \"200ms\"";

/// The test configuration: `tasks` settings and `extra` sections (channels).
pub fn config_toml(dir: &Path, extra: &str) -> String {
    config_toml_with(dir, TASKS, extra)
}

pub fn config_toml_with(dir: &Path, tasks: &str, extra: &str) -> String {
    config_toml_full(dir, "", tasks, extra)
}

/// The test configuration with `server` lines added to `[server]`. On SQLite (the
/// default) the database is in `dir`; with `KILN_TEST_DATABASE=postgres`, a PostgreSQL
/// database of this test's own ([`crate::common::postgres`]).
pub fn config_toml_full(dir: &Path, server: &str, tasks: &str, extra: &str) -> String {
    let database = if crate::common::postgres::enabled() && !extra.contains("[database]") {
        format!("[database]\nurl = \"{}\"\n", crate::common::postgres::database_url_for(dir))
    } else {
        String::new()
    };
    format!(
        r#"
{database}
[server]
bind = "127.0.0.1:0"
data_dir = "{data}"
shutdown_grace = "5s"
{server}

[log]
dir = ""
level = "warn"

[tasks]
{tasks}

{extra}
"#,
        data = dir.join("data").display(),
    )
}

/// The database of the test whose folder is `dir`, for a test that opens it itself or
/// runs a command that does: the one [`config_toml_full`] names (a PostgreSQL database
/// of the test's own with `KILN_TEST_DATABASE=postgres`), else the SQLite file kiln
/// makes by default in a data folder `dir`.
pub fn database_url(dir: &Path) -> String {
    if crate::common::postgres::enabled() {
        crate::common::postgres::database_url_for(dir)
    } else {
        format!("sqlite://{}", dir.join("kiln.db").display())
    }
}

pub const ECHO_CHANNEL: &str = r#"
[[channels]]
name = "echo"
type = "echo"
max_concurrency = 2
max_queue = 50
models = [
  { name = "echo", kind = "image_to_3d" },
  { name = "echo-text", kind = "text_to_3d" },
]
"#;

pub fn load_config_full(dir: &Path, server: &str, tasks: &str, extra: &str) -> Config {
    let path = dir.join("kiln.toml");
    std::fs::write(&path, config_toml_full(dir, server, tasks, extra)).expect("write config");
    Config::load_from(Some(&path), Vec::new(), &Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// An `echo` channel serving the model `echo` for `image_to_3d`, with these limits.
pub fn echo_channel(name: &str, max_concurrency: u32, max_queue: u32) -> String {
    format!(
        "[[channels]]\nname = \"{name}\"\ntype = \"echo\"\nmax_concurrency = {max_concurrency}\n\
         max_queue = {max_queue}\nmodels = [{{ name = \"echo\", kind = \"image_to_3d\" }}]\n"
    )
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub gateway: std::sync::Arc<Gateway>,
    pub server: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub dir: TempDir,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(ECHO_CHANNEL).await
    }

    pub async fn spawn_with(extra: &str) -> Self {
        Self::spawn_configured(TASKS, extra).await
    }

    pub async fn spawn_configured(tasks: &str, extra: &str) -> Self {
        Self::spawn_full("", tasks, extra).await
    }

    /// With `server` lines added to `[server]` (timeouts, limits).
    pub async fn spawn_with_server(server: &str) -> Self {
        Self::spawn_full(server, TASKS, ECHO_CHANNEL).await
    }

    pub async fn spawn_full(server: &str, tasks: &str, extra: &str) -> Self {
        Self::spawn_registry(server, tasks, extra, &crate::provider::registry()).await
    }

    /// With provider types of the test's own.
    pub async fn spawn_registry(server: &str, tasks: &str, extra: &str, registry: &Registry) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_in(dir, server, tasks, extra, registry).await
    }

    /// In `dir`, which may hold a database from an earlier run.
    pub async fn spawn_in(dir: TempDir, server: &str, tasks: &str, extra: &str, registry: &Registry) -> Self {
        let config = load_config_full(dir.path(), server, tasks, extra);
        let app = Application::build(config, registry).await.expect("build app");
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_token();
        let gateway = app.gateway();
        let server = tokio::spawn(app.run_until_stopped(false));
        let client = reqwest::Client::new();
        Self { base, client, shutdown, gateway, server, dir }
    }

    /// With `tasks` settings, `extra` sections and the HTTP client object storage is
    /// reached through (a DNS override that sends a COS bucket's host name to a local
    /// fake).
    pub async fn spawn_with_storage_client(tasks: &str, extra: &str, http: reqwest::Client) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = load_config_full(dir.path(), "", tasks, extra);
        let app = Application::build_with_storage_client(config, &crate::provider::registry(), http)
            .await
            .expect("build app");
        let base = format!("http://{}", app.local_addr());
        let shutdown = app.shutdown_token();
        let gateway = app.gateway();
        let server = tokio::spawn(app.run_until_stopped(false));
        let client = reqwest::Client::new();
        Self { base, client, shutdown, gateway, server, dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.expect("GET")
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.get(path).await;
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a picture with optional text fields.
    pub async fn upload(&self, path: &str, bytes: Vec<u8>, fields: &[(&str, &str)]) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(bytes).file_name("picture.png"));
        for (k, v) in fields {
            form = form.text(k.to_string(), v.to_string());
        }
        self.client.post(self.url(path)).multipart(form).send().await.expect("POST")
    }

    pub async fn submit_image(&self, fields: &[(&str, &str)]) -> Value {
        let response = self.upload("/api/v1/tasks", fixture("vase.png"), fields).await;
        assert_eq!(response.status().as_u16(), 202, "submit failed");
        response.json().await.expect("task json")
    }

    pub async fn submit_prompt(&self, body: Value) -> reqwest::Response {
        self.client.post(self.url("/api/v1/tasks")).json(&body).send().await.expect("POST")
    }

    /// Reads the task's SSE stream to its end (or `limit` events).
    pub async fn events(&self, id: &str, last_event_id: Option<i64>, limit: usize) -> Vec<(i64, String, Value)> {
        read_events(&self.client, &self.url(&format!("/api/v1/tasks/{id}/events")), last_event_id, limit).await
    }

    /// Submits a picture, waits for the task to end, and returns its id and the URL of
    /// its first output.
    pub async fn finished_output(&self) -> (String, String) {
        let task = self.submit_image(&[]).await;
        let id = task["id"].as_str().expect("task id").to_owned();
        self.wait_terminal(&id).await;
        let (_, result) = self.get_json(&format!("/api/v1/tasks/{id}/result")).await;
        let url = result["outputs"][0]["url"].as_str().expect("an output").to_owned();
        (id, url)
    }

    /// Waits until the task's record satisfies `done` (a stage recorded just after an
    /// upstream saw the job, say).
    pub async fn wait_task(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        for _ in 0..400 {
            let (_, task) = self.get_json(&format!("/api/v1/tasks/{id}")).await;
            if done(&task) {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("task {id} never became {what}");
    }

    pub async fn wait_terminal(&self, id: &str) -> Value {
        for _ in 0..400 {
            let (_, task) = self.get_json(&format!("/api/v1/tasks/{id}")).await;
            if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                return task;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("task {id} did not end");
    }

    pub async fn stop(self) {
        self.stop_keeping_dir().await;
    }

    /// Stops the server and hands back its directory, to start another on it.
    pub async fn stop_keeping_dir(self) -> TempDir {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(15), self.server).await;
        assert!(matches!(result, Ok(Ok(Ok(())))), "server did not stop cleanly: {result:?}");
        self.dir
    }
}

pub async fn read_events(
    client: &reqwest::Client,
    url: &str,
    last_event_id: Option<i64>,
    limit: usize,
) -> Vec<(i64, String, Value)> {
    let mut request = client.get(url);
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    let response = request.send().await.expect("events");
    assert_eq!(response.status().as_u16(), 200);
    let mut stream = response.bytes_stream().eventsource();
    let mut out = Vec::new();
    let read = async {
        while let Some(Ok(event)) = stream.next().await {
            let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
            out.push((event.id.parse().unwrap_or(-1), event.event, data));
            if out.len() >= limit {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("event stream timed out");
    out
}

/// A kiln server in a child process (this test binary re-run in server mode), so it
/// can be killed with SIGKILL.
pub struct ChildServer {
    pub child: Child,
    pub base: String,
}

pub const CHILD_ENV: &str = "KILN_TEST_CHILD_CONFIG";

impl ChildServer {
    pub fn start(config: &Path) -> Self {
        let exe = std::env::current_exe().expect("test binary");
        let mut child = Command::new(exe)
            .args(["--exact", "helpers::child_server", "--include-ignored", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child server");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next().expect("child ended before listening").expect("read line");
            if let Some(rest) = line.split("kiln is running at ").nth(1) {
                break rest.trim().trim_end_matches('/').to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self { child, base }
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Server mode of this test binary: runs kiln with the echo provider.
#[test]
#[ignore = "entry point for ChildServer, not a test"]
fn child_server() {
    let Some(path) = std::env::var_os(CHILD_ENV) else { return };
    let path = PathBuf::from(path);
    let config = Config::load_from(Some(&path), Vec::new(), &Default::default()).expect("config");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let _exit = runtime.block_on(kiln::cli::serve(config, crate::provider::registry()));
}
