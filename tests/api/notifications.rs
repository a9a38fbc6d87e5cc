//! Notifications between kiln replicas sharing a PostgreSQL database (LISTEN/NOTIFY,
//! `db::PgNotifier`): what one replica commits reaches the event streams and the
//! dispatchers of another without waiting for a poll.
//!
//! Two servers on one database stand for two replicas: B serves HTTP, A is built on the
//! same database (its own pool, its own notifier, its own listener task) and commits
//! through its gateway, as a replica handling a worker's callback or a submission would.
//! B polls only every hour (`tasks.poll_interval` and `tasks.follow_poll_interval`), so
//! within the tests' 30-second waits only a notification can deliver anything: a test
//! that waits out its 30 s has found a notification that did not arrive.
//!
//! They need PostgreSQL (`make api-postgres`); on SQLite one process owns the database,
//! nothing crosses processes, and they print why they skip.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{StreamExt, stream::BoxStream};
use kiln::{
    access::Caller,
    app::Application,
    db::Finish,
    gateway::{Input, Submission},
    tasks::TaskId,
};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;

use crate::helpers::{ECHO_CHANNEL, TestApp, load_config_full};

/// Neither dispatchers nor event streams poll within a test's lifetime.
const HOURLY_POLLS: &str = "poll_interval = \"1h\"\nfollow_poll_interval = \"1h\"";

/// How long a test waits for what a notification should bring; the alternative is an hour.
const WAIT: Duration = Duration::from_secs(30);

fn skipped(test: &str) -> bool {
    if crate::common::postgres::enabled() {
        return false;
    }
    eprintln!(
        "{test}: skipped: it needs PostgreSQL (KILN_TEST_DATABASE=postgres, `make api-postgres`); \
         on SQLite one process owns the database and no notification crosses processes"
    );
    true
}

/// Replica A: built on B's database but not serving, so it runs no dispatcher and no
/// listener of its own; its gateway commits and notifies as any replica does.
struct OtherReplica {
    app: Application,
    _dir: TempDir,
}

impl OtherReplica {
    async fn on_database_of(b: &TestApp) -> Self {
        Self::on_database_of_with(b, ECHO_CHANNEL).await
    }

    /// With these channels (B's own).
    async fn on_database_of_with(b: &TestApp, channels: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        // The test's database is named in its folder (tests/common/postgres.rs).
        std::fs::copy(b.dir.path().join("postgres-url"), dir.path().join("postgres-url")).expect("share B's database");
        let config = load_config_full(dir.path(), "", HOURLY_POLLS, channels);
        let app = Application::build(config, &crate::provider::registry()).await.expect("build replica A");
        Self { app, _dir: dir }
    }

    fn gateway(&self) -> std::sync::Arc<kiln::gateway::Gateway> {
        self.app.gateway()
    }
}

fn database_url(b: &TestApp) -> String {
    std::fs::read_to_string(b.dir.path().join("postgres-url")).expect("B's database URL")
}

/// The connections LISTENing on the test's database (B's listener, once it is up).
async fn listeners(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN %'",
    )
    .fetch_one(&mut conn)
    .await
    .expect("count listeners")
}

/// Waits until B listens, so that what A notifies next is heard (and not merely found
/// by the re-read that follows every LISTEN).
async fn wait_listening(url: &str) {
    let started = std::time::Instant::now();
    while listeners(url).await == 0 {
        assert!(started.elapsed() < WAIT, "replica B never LISTENed on its database");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A task running on B with nothing more to say: the echo provider detaches it (as a
/// push worker's job is), so every later event comes from whoever commits it.
async fn detached_task(b: &TestApp) -> TaskId {
    let response =
        b.submit_prompt(json!({"prompt": "x", "model": "echo-text", "params": {"steps": 0, "detach": true}})).await;
    assert_eq!(response.status().as_u16(), 202);
    let task: Value = response.json().await.expect("task");
    let id = task["id"].as_str().expect("task id").to_owned();
    b.wait_task(&id, "running", |t| t["status"] == "running").await;
    id.parse().expect("a task id")
}

/// One client following a task's event stream on a replica.
struct Follower {
    events: BoxStream<'static, Result<eventsource_stream::Event, eventsource_stream::EventStreamError<reqwest::Error>>>,
}

impl Follower {
    /// Follows `id` on `app` from after event `after`.
    async fn open(app: &TestApp, id: TaskId, after: i64) -> Self {
        let response = app
            .client
            .get(app.url(&format!("/api/v1/tasks/{id}/events")))
            .header("Last-Event-ID", after.to_string())
            .send()
            .await
            .expect("events");
        assert_eq!(response.status().as_u16(), 200);
        Self { events: response.bytes_stream().eventsource().boxed() }
    }

    /// The next event: `(seq, kind, data)`.
    async fn next(&mut self, what: &str) -> (i64, String, Value) {
        match tokio::time::timeout(WAIT, self.events.next()).await {
            Ok(Some(Ok(event))) => {
                (event.id.parse().unwrap_or(-1), event.event, serde_json::from_str(&event.data).unwrap_or(Value::Null))
            }
            Ok(other) => panic!("the stream ended before {what}: {other:?}"),
            Err(_) => {
                panic!("{what} did not reach replica B's follower within {WAIT:?} (its poll fallback is an hour)")
            }
        }
    }
}

/// The last event in the task's log.
async fn last_seq(a: &OtherReplica, id: TaskId) -> i64 {
    a.gateway().db().list_events(id, 0).await.expect("events").last().map(|e| e.seq).expect("a first event")
}

/// The task's log as the stream renders it, from after `after`.
async fn replay(b: &TestApp, id: TaskId, after: i64) -> Vec<(i64, String, Value)> {
    b.events(&id.to_string(), Some(after), usize::MAX).await
}

#[tokio::test]
async fn an_event_committed_on_one_replica_reaches_a_follower_on_another_at_once() {
    if skipped("an_event_committed_on_one_replica_reaches_a_follower_on_another_at_once") {
        return;
    }
    let b = TestApp::spawn_configured(HOURLY_POLLS, ECHO_CHANNEL).await;
    let a = OtherReplica::on_database_of(&b).await;
    wait_listening(&database_url(&b)).await;
    let id = detached_task(&b).await;
    let after = last_seq(&a, id).await;
    let mut follower = Follower::open(&b, id, after).await;

    a.gateway().record_progress(id, 50, "written-on-a").await.expect("progress on A");
    let (seq, kind, data) = follower.next("A's progress event").await;
    assert_eq!((seq, kind.as_str(), data["stage"].as_str()), (after + 1, "processing", Some("written-on-a")));

    a.gateway().finish(id, Finish::Canceled).await.expect("cancel on A");
    let (seq, kind, _) = follower.next("A's terminal event").await;
    assert_eq!((seq, kind.as_str()), (after + 2, "canceled"));

    // What arrived live is what a replay from the log gives (`Last-Event-ID` unchanged).
    let replayed = replay(&b, id, after).await;
    assert_eq!(
        replayed.iter().map(|(s, k, _)| (*s, k.as_str())).collect::<Vec<_>>(),
        [(after + 1, "processing"), (after + 2, "canceled")]
    );
    b.stop().await;
}

#[tokio::test]
async fn an_event_too_large_for_a_notification_still_reaches_a_follower_on_another_replica() {
    if skipped("an_event_too_large_for_a_notification_still_reaches_a_follower_on_another_replica") {
        return;
    }
    let b = TestApp::spawn_configured(HOURLY_POLLS, ECHO_CHANNEL).await;
    let a = OtherReplica::on_database_of(&b).await;
    wait_listening(&database_url(&b)).await;
    let id = detached_task(&b).await;
    let after = last_seq(&a, id).await;
    let mut follower = Follower::open(&b, id, after).await;

    // PostgreSQL refuses a NOTIFY payload of 8000 bytes or more: this event travels as a
    // pointer into the log, between two that travel whole. Each is awaited before the
    // next is written, so that no later event reveals a gap the follower would fill
    // from the log by itself.
    let large = "s".repeat(9000);
    let gateway = a.gateway();
    for (n, stage) in ["small-before", large.as_str(), "small-after"].into_iter().enumerate() {
        gateway.record_progress(id, 10 * (n as u8 + 1), stage).await.expect("progress on A");
        let (seq, kind, data) = follower.next(&format!("A's progress event of {} bytes", stage.len())).await;
        assert_eq!((seq, kind.as_str()), (after + 1 + n as i64, "processing"));
        assert_eq!(data["stage"].as_str(), Some(stage));
    }

    gateway.finish(id, Finish::Canceled).await.expect("cancel on A");
    assert_eq!(follower.next("A's terminal event").await.1, "canceled");
    b.stop().await;
}

#[tokio::test]
async fn after_its_listening_connection_is_killed_a_replica_hears_again_and_loses_nothing() {
    if skipped("after_its_listening_connection_is_killed_a_replica_hears_again_and_loses_nothing") {
        return;
    }
    let b = TestApp::spawn_configured(HOURLY_POLLS, ECHO_CHANNEL).await;
    let a = OtherReplica::on_database_of(&b).await;
    let url = database_url(&b);
    wait_listening(&url).await;
    let id = detached_task(&b).await;
    let after = last_seq(&a, id).await;
    let mut follower = Follower::open(&b, id, after).await;

    // An event committed with no notification at all: what a replica misses while it
    // is not listening. Only the log has it.
    a.gateway().db().record_progress(id, 20, "never-notified").await.expect("progress").expect("an event");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN %' AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut conn)
    .await
    .expect("terminate the listener");
    assert!(killed >= 1, "no LISTEN connection to terminate");
    // Committed while B is most likely still reconnecting: its notification is lost or
    // not, either way the follower must get it, and in order.
    a.gateway().record_progress(id, 40, "during-the-gap").await.expect("progress on A");

    let (seq, _, data) = follower.next("the event committed without a notification").await;
    assert_eq!((seq, data["stage"].as_str()), (after + 1, Some("never-notified")), "B re-read the log");
    let (seq, _, data) = follower.next("the event committed during the gap").await;
    assert_eq!((seq, data["stage"].as_str()), (after + 2, Some("during-the-gap")));

    // And the new connection carries what comes next.
    wait_listening(&url).await;
    a.gateway().record_progress(id, 60, "after-the-gap").await.expect("progress on A");
    let (seq, _, data) = follower.next("the event committed after the reconnection").await;
    assert_eq!((seq, data["stage"].as_str()), (after + 3, Some("after-the-gap")));

    a.gateway().finish(id, Finish::Canceled).await.expect("cancel on A");
    assert_eq!(follower.next("A's terminal event").await, replay(&b, id, after + 3).await[0]);
    b.stop().await;
}

/// A second channel, whose dispatcher nothing but A's submission wakes once B is up.
const LATER_CHANNEL: &str = r#"
[[channels]]
name = "later"
type = "echo"
models = [{ name = "later-text", kind = "text_to_3d" }]
"#;

/// Submits a prompt task for `model` through A's gateway and waits until B has run it.
async fn submit_on_a_and_wait_on_b(a: &OtherReplica, b: &TestApp, model: &str) {
    let submission = Submission {
        prompt: Some("x".into()),
        model: Some(model.into()),
        params: json!({"steps": 1}),
        ..Submission::new(Input::Prompt)
    };
    let submitted = a.gateway().submit(&Caller::Anonymous, submission).await.expect("submit on A");
    let id = submitted.task.id.to_string();
    let started = std::time::Instant::now();
    loop {
        let (_, task) = b.get_json(&format!("/api/v1/tasks/{id}")).await;
        if task["status"] == "succeeded" {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "B's dispatcher was not woken by A's submission within {WAIT:?} (its poll is hourly): {task}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_submission_on_one_replica_wakes_the_dispatcher_of_another() {
    if skipped("a_submission_on_one_replica_wakes_the_dispatcher_of_another") {
        return;
    }
    // B's dispatchers look for work at start and whenever B (re)starts listening, then
    // only when woken (or hourly). A has no dispatcher running: only B's can run a task.
    let channels = format!("{ECHO_CHANNEL}{LATER_CHANNEL}");
    let b = TestApp::spawn_configured(HOURLY_POLLS, &channels).await;
    let a = OtherReplica::on_database_of_with(&b, &channels).await;
    wait_listening(&database_url(&b)).await;

    // The first task may be found by the look B's dispatchers take once B listens; once
    // it has run, that look is over, and the `later` channel's dispatcher has nothing
    // left to wake it but a notification.
    submit_on_a_and_wait_on_b(&a, &b, "echo-text").await;
    submit_on_a_and_wait_on_b(&a, &b, "later-text").await;
    b.stop().await;
}
