//! `kiln db copy` with the real binary: an installation built on SQLite through the API
//! (users, a token with a balance, priced tasks with events, pictures and outputs, an
//! Idempotency-Key, a stored channel with a sealed key on a fake ModelScope, a webhook
//! delivered to a local receiver, page sessions, the audit log) is copied into a fresh
//! PostgreSQL database; kiln is started there on the same files folder, and everything
//! is checked through the API. Then back into SQLite; then the refusals: a copy while
//! kiln runs, into a target holding data, and a copy that fails half-way.
//!
//! It needs a PostgreSQL server: `KILN_TEST_DATABASE_URL`, which `make api-postgres`
//! (scripts/with-postgres.sh) sets. Without it the test is skipped, saying why.

use std::{
    path::Path,
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, routing::post};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection, SqliteConnection};

use crate::{
    common::{
        KILN, KilnProcess,
        fakes::{FakeModelScope, MODELSCOPE_TOKEN, ModelScopeOptions},
        fixture,
    },
    helpers::{TASKS, config_toml_full},
};

const ADMIN_PASSWORD: &str = "correct horse battery";
const ACCOUNTS: &str = "[auth]\nmode = \"tokens\"\n\n[admin]\nusername = \"root\"\npassword = \"correct horse battery\"\n\n[webhooks]\nallow_private = true\n\n";

/// A signed-in console (cookie and CSRF token) of one kiln.
struct Console {
    client: reqwest::Client,
    csrf: String,
}

impl Console {
    async fn sign_in(base: &str) -> Console {
        let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let response = client
            .post(format!("{base}/api/v1/session"))
            .json(&json!({ "username": "root", "password": ADMIN_PASSWORD }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "the admin signs in");
        let body: Value = response.json().await.unwrap();
        Console { client, csrf: body["csrf_token"].as_str().unwrap().to_owned() }
    }

    async fn send(&self, base: &str, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.client.request(method, format!("{base}{path}")).header("x-csrf-token", &self.csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// A user's API token, against one kiln.
struct User {
    client: reqwest::Client,
    token: String,
}

impl User {
    async fn get(&self, base: &str, path: &str) -> (StatusCode, Value) {
        let response = self.client.get(format!("{base}{path}")).bearer_auth(&self.token).send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Submits the vase to relief; with an Idempotency-Key and a webhook when given.
    async fn submit_picture(&self, base: &str, key: Option<&str>, webhook: Option<&str>) -> reqwest::Response {
        let mut form = reqwest::multipart::Form::new()
            .part("image", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("vase.png"));
        if let Some(url) = webhook {
            form = form.text("webhook_url", url.to_owned());
        }
        let mut request = self.client.post(format!("{base}/api/v1/tasks")).bearer_auth(&self.token).multipart(form);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        request.send().await.unwrap()
    }

    async fn submit_prompt(&self, base: &str) -> Value {
        let response = self
            .client
            .post(format!("{base}/api/v1/tasks"))
            .bearer_auth(&self.token)
            .json(&json!({ "model": "scope-image", "prompt": "a red lamp" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        response.json().await.unwrap()
    }

    async fn wait_end(&self, base: &str, id: &str) -> Value {
        for _ in 0..600 {
            let (_, task) = self.get(base, &format!("/api/v1/tasks/{id}")).await;
            if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
                assert_eq!(task["status"], "succeeded", "{task}");
                return task;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("task {id} did not end");
    }

    /// Every event of a task, or those after `last_event_id`.
    async fn events(&self, base: &str, id: &str, last_event_id: Option<i64>) -> Vec<(i64, String, Value)> {
        use eventsource_stream::Eventsource;
        use futures::StreamExt;

        let mut request = self.client.get(format!("{base}/api/v1/tasks/{id}/events")).bearer_auth(&self.token);
        if let Some(seq) = last_event_id {
            request = request.header("Last-Event-ID", seq.to_string());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200);
        let mut stream = response.bytes_stream().eventsource();
        let mut events = Vec::new();
        let read = async {
            while let Some(Ok(event)) = stream.next().await {
                let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
                events.push((event.id.parse().unwrap_or(-1), event.event, data));
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read).await.expect("the event stream of a finished task ends");
        events
    }

    async fn download(&self, url: &str) -> Vec<u8> {
        let response = self.client.get(url).bearer_auth(&self.token).send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        response.bytes().await.unwrap().to_vec()
    }
}

/// A receiver of webhooks on 127.0.0.1 that answers 200; returns its URL and a count.
async fn receiver() -> (String, Arc<Mutex<usize>>) {
    let received = Arc::new(Mutex::new(0));
    let count = Arc::clone(&received);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let app = Router::new().route(
        "/hook",
        post(move || {
            *count.lock().unwrap() += 1;
            async { "ok" }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

fn write_config(dir: &Path, name: &str, database_url: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let extra = format!("[database]\nurl = \"{database_url}\"\n\n{ACCOUNTS}");
    std::fs::write(&path, config_toml_full(dir, "", TASKS, &extra)).unwrap();
    path
}

fn db_copy(from: &str, to: &str) -> Output {
    Command::new(KILN).args(["db", "copy", "--from", from, "--to", to]).env_remove("KILN_CONFIG").output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Rows per kiln table of a PostgreSQL database (sqlx's own table left out).
async fn pg_counts(url: &str) -> Vec<(String, i64)> {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let mut counts = Vec::new();
    for table in tables {
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\"")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        counts.push((table, rows));
    }
    counts
}

/// The same values with one kiln's address put in place of another's.
fn moved(value: &Value, from: &str, to: &str) -> Value {
    serde_json::from_str(&value.to_string().replace(from, to)).unwrap()
}

#[tokio::test]
async fn an_installation_copied_from_sqlite_to_postgresql_works_there_as_it_did() {
    if std::env::var_os("KILN_TEST_DATABASE_URL").is_none() {
        eprintln!(
            "SKIPPED: no PostgreSQL server (KILN_TEST_DATABASE_URL is unset); `make api-postgres` runs this test \
             under scripts/with-postgres.sh"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sqlite_file = dir.path().join("data/kiln.db");
    let sqlite_url = format!("sqlite://{}", sqlite_file.display());
    let fake = FakeModelScope::start(
        ModelScopeOptions::default().timeline(Duration::from_millis(40), Duration::from_millis(80)),
    );
    let (hook, received) = receiver().await;

    // The installation, on SQLite.
    let on_sqlite =
        KilnProcess::start(&write_config(dir.path(), "sqlite.toml", &sqlite_url), &dir.path().join("a.log"));
    let a = on_sqlite.base.clone();
    let admin = Console::sign_in(&a).await;
    let (status, made) = admin
        .send(
            &a,
            Method::POST,
            "/api/v1/admin/users",
            Some(json!({"username": "alice", "password": "password-of-alice"})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let alice_id = made["id"].as_str().unwrap().to_owned();
    let (status, issued) = admin
        .send(&a, Method::POST, &format!("/api/v1/admin/users/{alice_id}/tokens"), Some(json!({"name": "ci"})))
        .await;
    assert_eq!(status, 201, "{issued}");
    let alice = User { client: reqwest::Client::new(), token: issued["token"].as_str().unwrap().to_owned() };
    let (status, _) = admin.send(&a, Method::PUT, "/api/v1/admin/prices/relief", Some(json!({"per_task": 2}))).await;
    assert_eq!(status, 200);
    let (status, _) = admin
        .send(
            &a,
            Method::POST,
            &format!("/api/v1/admin/users/{alice_id}/balance"),
            Some(json!({"delta": 50, "note": "trial"})),
        )
        .await;
    assert_eq!(status, 200);
    let channel = json!({
        "name": "scope",
        "type": "modelscope",
        "secret": MODELSCOPE_TOKEN,
        "models": [{ "name": "scope-image", "kind": "text_to_image", "upstream": "Qwen/Qwen-Image" }],
        "max_concurrency": 2,
        "max_queue": 10,
        "options": { "base_url": fake.base_url(), "poll_interval": "50ms", "poll_max_interval": "100ms", "health_interval": "0s" },
    });
    let (status, made) = admin.send(&a, Method::POST, "/api/v1/admin/channels", Some(channel)).await;
    assert_eq!(status, 201, "{made}");

    let response = alice.submit_picture(&a, Some("copy-1"), Some(&hook)).await;
    assert_eq!(response.status(), 202);
    let relief: Value = response.json().await.unwrap();
    let relief_id = relief["id"].as_str().unwrap().to_owned();
    let image = alice.submit_prompt(&a).await;
    let image_id = image["id"].as_str().unwrap().to_owned();
    let relief_done = alice.wait_end(&a, &relief_id).await;
    let image_done = alice.wait_end(&a, &image_id).await;
    let mut deliveries = Value::Null;
    for _ in 0..200 {
        let (_, listed) = alice.get(&a, &format!("/api/v1/tasks/{relief_id}/webhooks")).await;
        if listed["items"][0]["status"] == "delivered" {
            deliveries = listed;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries["items"][0]["attempts"][0]["status_code"], 200, "the webhook was delivered: {deliveries}");

    let (_, me) = alice.get(&a, "/api/v1/me").await;
    assert_eq!(me["user"]["balance"], 48, "50, less 2 for the relief task");
    let (_, list) = alice.get(&a, "/api/v1/tasks").await;
    let (_, usage) = alice.get(&a, "/api/v1/usage").await;
    let events = alice.events(&a, &relief_id, None).await;
    assert!(events.len() >= 3, "{events:?}");
    let (_, relief_result) = alice.get(&a, &format!("/api/v1/tasks/{relief_id}/result")).await;
    let (_, image_result) = alice.get(&a, &format!("/api/v1/tasks/{image_id}/result")).await;
    let outputs: Vec<String> = [&relief_result, &image_result]
        .iter()
        .flat_map(|r| r["outputs"].as_array().unwrap().iter().map(|o| o["url"].as_str().unwrap().to_owned()))
        .collect();
    assert!(outputs.len() >= 2, "{relief_result} {image_result}");
    let mut files = Vec::new();
    for url in &outputs {
        files.push(alice.download(url).await);
    }
    let (_, scope_before) = admin.send(&a, Method::GET, "/api/v1/admin/channels/scope", None).await;
    let (_, audit_before) = admin.send(&a, Method::GET, "/api/v1/admin/audit?limit=100", None).await;

    // While kiln runs on it, the source is refused, and the target not even opened.
    let target = crate::common::postgres::fresh_database();
    let busy = db_copy(&sqlite_url, &target);
    assert_eq!(busy.status.code(), Some(1), "{}", text(&busy));
    assert!(text(&busy).contains("a kiln is running on the source database"), "{}", text(&busy));
    assert!(pg_counts(&target).await.is_empty(), "the target has no tables yet");

    on_sqlite.stop();
    let secrets: Vec<String> = {
        let mut conn = SqliteConnection::connect(&format!("{sqlite_url}?mode=ro")).await.unwrap();
        let mut stored: Vec<String> = sqlx::query_scalar(
            "SELECT password_hash FROM users UNION ALL SELECT hash FROM api_tokens \
             UNION ALL SELECT secret FROM channels WHERE secret IS NOT NULL UNION ALL SELECT id_hash FROM sessions",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
        stored.extend([alice.token.clone(), MODELSCOPE_TOKEN.to_owned(), ADMIN_PASSWORD.to_owned()]);
        stored
    };
    assert!(secrets.len() >= 7, "{}", secrets.len());
    let source_sum = sha256(&sqlite_file);

    let copied = db_copy(&sqlite_url, &target);
    let output = text(&copied);
    assert_eq!(copied.status.code(), Some(0), "{output}");
    let stdout = String::from_utf8_lossy(&copied.stdout);
    assert!(stdout.contains("every table's row count matches"), "{stdout}");
    for table in ["tasks", "task_events", "artifacts", "pictures", "users", "api_tokens", "channels", "usage"] {
        assert!(stdout.lines().any(|l| l.starts_with(table)), "{table} in the summary:\n{stdout}");
    }
    for secret in &secrets {
        assert!(!output.contains(secret.as_str()), "a secret was printed:\n{output}");
    }
    assert_eq!(sha256(&sqlite_file), source_sum, "the source file is unchanged");

    // kiln on PostgreSQL, with the same files (and sealing key).
    let on_postgres =
        KilnProcess::start(&write_config(dir.path(), "postgres.toml", &target), &dir.path().join("b.log"));
    let b = on_postgres.base.clone();

    let (_, me) = alice.get(&b, "/api/v1/me").await;
    assert_eq!(me["user"]["balance"], 48, "the token works and the balance came along: {me}");
    assert_eq!(alice.get(&b, "/api/v1/tasks").await.1, moved(&list, &a, &b), "the task list");
    assert_eq!(alice.get(&b, &format!("/api/v1/tasks/{relief_id}")).await.1, moved(&relief_done, &a, &b));
    assert_eq!(alice.get(&b, &format!("/api/v1/tasks/{image_id}")).await.1, moved(&image_done, &a, &b));
    assert_eq!(alice.get(&b, &format!("/api/v1/tasks/{relief_id}/result")).await.1, moved(&relief_result, &a, &b));
    assert_eq!(alice.get(&b, &format!("/api/v1/tasks/{image_id}/result")).await.1, moved(&image_result, &a, &b));
    assert_eq!(alice.get(&b, "/api/v1/usage").await.1, usage, "the usage records");
    assert_eq!(
        alice.get(&b, &format!("/api/v1/tasks/{relief_id}/webhooks")).await.1,
        deliveries,
        "the webhook delivery and its attempt"
    );
    let replayed = alice.events(&b, &relief_id, Some(1)).await;
    let expected: Vec<(i64, String, Value)> =
        events[1..].iter().map(|(seq, kind, data)| (*seq, kind.clone(), moved(data, &a, &b))).collect();
    assert_eq!(replayed, expected, "Last-Event-ID: 1 replays the rest of the log");
    for (url, bytes) in outputs.iter().zip(&files) {
        assert_eq!(&alice.download(&url.replace(&a, &b)).await, bytes, "{url}");
    }

    // The admin's page session came along, and the password still signs in.
    let (status, _) = admin.send(&b, Method::GET, "/api/v1/admin/users", None).await;
    assert_eq!(status, 200, "the page session is valid on the copy");
    let admin_b = Console::sign_in(&b).await;
    let (_, scope) = admin_b.send(&b, Method::GET, "/api/v1/admin/channels/scope", None).await;
    assert_eq!(scope["config"]["secret"], scope_before["config"]["secret"], "{scope}");
    assert!(scope["config"]["secret"].as_str().unwrap().starts_with("••••"), "the key is masked: {scope}");
    let (_, tested) = admin_b.send(&b, Method::POST, "/api/v1/admin/channels/scope/test", None).await;
    assert_eq!(tested["ok"], true, "the sealed key opens with the same sealing key: {tested}");

    // The same Idempotency-Key finds the copied task; new tasks, audit entries and
    // webhook attempts get numbers of their own.
    let again = alice.submit_picture(&b, Some("copy-1"), Some(&hook)).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], relief_id.as_str());
    let fresh = alice.submit_picture(&b, None, Some(&hook)).await;
    assert_eq!(fresh.status(), 202, "a new task takes the next queue number (the sequences were moved past the copy)");
    let fresh: Value = fresh.json().await.unwrap();
    let fresh_id = fresh["id"].as_str().unwrap().to_owned();
    assert!(fresh_id != relief_id && fresh_id != image_id);
    alice.wait_end(&b, &fresh_id).await;
    let fresh_image = alice.submit_prompt(&b).await;
    alice.wait_end(&b, fresh_image["id"].as_str().unwrap()).await;
    let (_, me) = alice.get(&b, "/api/v1/me").await;
    assert_eq!(me["user"]["balance"], 46);
    let (_, list) = alice.get(&b, "/api/v1/tasks").await;
    let ids: Vec<&str> = list["items"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 4, "{ids:?}");
    assert_eq!(ids[1], fresh_id, "newest first");
    let (status, _) = admin_b
        .send(&b, Method::POST, &format!("/api/v1/admin/users/{alice_id}/balance"), Some(json!({"delta": 1})))
        .await;
    assert_eq!(status, 200);
    let (_, audit) = admin_b.send(&b, Method::GET, "/api/v1/admin/audit?limit=100", None).await;
    let before = audit_before["items"].as_array().unwrap().len();
    assert!(audit["items"].as_array().unwrap().len() > before, "{audit}");
    assert_eq!(audit["items"][0]["action"], "balance.add");
    for _ in 0..200 {
        if *received.lock().unwrap() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(*received.lock().unwrap(), 2, "the new task's webhook went out too");
    on_postgres.stop();

    // And back: PostgreSQL to a new SQLite file, row for row.
    let back = dir.path().join("back/kiln.db");
    let copied_back = db_copy(&target, &format!("sqlite://{}", back.display()));
    assert_eq!(copied_back.status.code(), Some(0), "{}", text(&copied_back));
    let mut conn = SqliteConnection::connect(&format!("sqlite://{}", back.display())).await.unwrap();
    for (table, rows) in pg_counts(&target).await {
        let there: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\"")))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(there, rows, "{table}");
    }
    conn.close().await.unwrap();

    // A target holding kiln data is refused, and left as it was.
    let counts = pg_counts(&target).await;
    let refused = db_copy(&sqlite_url, &target);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(text(&refused).contains("the target already holds kiln data"), "{}", text(&refused));
    assert_eq!(pg_counts(&target).await, counts);

    // A value the target cannot take, in a table copied late: the copy fails, and the
    // new target is left without data.
    let mut conn = SqliteConnection::connect(&sqlite_url).await.unwrap();
    sqlx::query("UPDATE usage SET reserved = 'a lot'").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let broken = crate::common::postgres::fresh_database();
    let failed = db_copy(&sqlite_url, &broken);
    let output = text(&failed);
    assert_eq!(failed.status.code(), Some(1), "{output}");
    assert!(output.contains("failed") && output.contains("`usage.reserved`"), "{output}");
    assert!(output.contains("nothing was copied"), "{output}");
    let counts = pg_counts(&broken).await;
    assert!(counts.iter().any(|(t, _)| t == "tasks"), "the target was migrated: {counts:?}");
    assert!(counts.iter().all(|(_, rows)| *rows == 0), "and holds no data: {counts:?}");
}
