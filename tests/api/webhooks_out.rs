//! Outbound webhooks against a real receiver: an axum server on 127.0.0.1 that checks
//! every message with the Standard Webhooks reference library and answers as each test
//! scripts it. The deliveries go through the real SQLite repositories and the real
//! sending loop, with a schedule of milliseconds.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{body::Bytes, extract::State, http::HeaderMap, http::StatusCode, routing::post};
use kiln::{
    config::Secret,
    db::{self, Db, NextStep},
    deliveries::{
        Attempt, Deliveries, DeliveryEvent, DeliveryReport, DeliverySettings, DeliveryStatus, Finished, FixedSecret,
        Schedule, message_id,
    },
    tasks::TaskId,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// The Standard Webhooks specification's example secret.
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

/// One message as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    /// Whether the reference library accepted the signature with [`SECRET`].
    verified: bool,
    /// Whether it accepted it with another secret (it must not).
    verified_with_other: bool,
    body: Value,
}

#[derive(Default)]
struct Script {
    /// Statuses to answer, in order; 200 once they run out.
    answers: VecDeque<u16>,
    /// How long to wait before answering.
    delay: Duration,
    received: Vec<Received>,
}

#[derive(Clone, Default)]
struct Receiver {
    script: Arc<Mutex<Script>>,
}

impl Receiver {
    async fn start(answers: &[u16], delay: Duration, stop: &CancellationToken) -> (Self, SocketAddr) {
        let receiver = Receiver::default();
        {
            let mut script = receiver.script.lock().expect("script");
            script.answers = answers.iter().copied().collect();
            script.delay = delay;
        }
        let app = axum::Router::new().route("/hook", post(receive)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let until = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { until.cancelled().await }).await;
        });
        (receiver, addr)
    }

    fn received(&self) -> Vec<Received> {
        self.script.lock().expect("script").received.clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let verify = |secret: &str| standardwebhooks::Webhook::new(secret).expect("secret").verify(&body, &headers).is_ok();
    let message = Received {
        id: headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned(),
        verified: verify(SECRET),
        verified_with_other: verify(OTHER_SECRET),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    let delay = {
        let mut script = receiver.script.lock().expect("script");
        script.received.push(message);
        script.delay
    };
    tokio::time::sleep(delay).await;
    let status = receiver.script.lock().expect("script").answers.pop_front().unwrap_or(200);
    StatusCode::from_u16(status).expect("status")
}

async fn database(dir: &TempDir) -> Db {
    db::connect(&crate::helpers::database_url(dir.path()), 2).await.expect("database")
}

fn settings(allow_private: bool, steps_ms: &[u64], max_age: Duration) -> DeliverySettings {
    DeliverySettings {
        allow_private,
        timeout: Duration::from_secs(2),
        schedule: Schedule::new(steps_ms.iter().map(|ms| Duration::from_millis(*ms)).collect(), 0.0, max_age),
        poll: Duration::from_millis(20),
        batch: 4,
    }
}

fn service(db: Db, settings: DeliverySettings) -> Arc<Deliveries> {
    Deliveries::new(db, Arc::new(FixedSecret(Secret::new(SECRET))), settings).expect("deliveries")
}

fn finished(task: TaskId, url: &str) -> Finished {
    Finished {
        task_id: task,
        owner: Some(uuid::Uuid::now_v7()),
        url: url.to_owned(),
        event: DeliveryEvent::TaskCompleted,
        task: json!({ "id": task.to_string(), "status": "succeeded", "outputs": [{ "name": "model.glb" }] }),
    }
}

/// Waits until the task's only delivery satisfies `done`.
async fn wait_for(deliveries: &Deliveries, task: TaskId, done: impl Fn(&DeliveryReport) -> bool) -> DeliveryReport {
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let reports = deliveries.list_for_task(task).await.expect("list");
        if let [report] = reports.as_slice()
            && done(report)
        {
            return report.clone();
        }
        assert!(tokio::time::Instant::now() < until, "timed out waiting; deliveries: {reports:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn codes(attempts: &[Attempt]) -> Vec<Option<u16>> {
    attempts.iter().map(|a| a.status_code).collect()
}

#[tokio::test]
async fn a_finished_task_is_posted_signed_as_standard_webhooks_verify_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let (receiver, addr) = Receiver::start(&[], Duration::ZERO, &stop).await;
    let deliveries = service(database(&dir).await, settings(true, &[50], Duration::from_secs(60)));
    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));

    let task = TaskId::new();
    let url = format!("http://{addr}/hook");
    let sent = finished(task, &url);
    assert!(deliveries.enqueue(sent.clone()).await.expect("enqueue"));
    assert!(!deliveries.enqueue(sent.clone()).await.expect("enqueue again"), "a task's end is recorded once");

    let report = wait_for(&deliveries, task, |r| r.status == DeliveryStatus::Delivered).await;
    assert_eq!(codes(&report.attempts), [Some(200)]);
    assert_eq!(report.attempts[0].error, None);
    assert_eq!((report.event, report.url.as_str()), (DeliveryEvent::TaskCompleted, url.as_str()));
    assert!(report.finished_at.is_some() && report.next_attempt_at.is_none());

    // Give a second send, if there were one, time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let received = receiver.received();
    assert_eq!(received.len(), 1, "{received:?}");
    let message = &received[0];
    assert!(message.verified, "the reference library accepts the signature");
    assert!(!message.verified_with_other, "and would refuse it with another secret");
    assert!(message.id.starts_with("msg_"), "{}", message.id);
    assert_eq!(message.id, format!("msg_{}", report.id.simple()));
    assert_eq!(message.body["type"], "task.completed");
    assert_eq!(message.body["data"], sent.task);
    assert!(message.body["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{}", message.body);
    stop.cancel();
}

#[tokio::test]
async fn a_failing_receiver_is_retried_on_schedule_until_it_answers_200() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let (receiver, addr) = Receiver::start(&[500, 500], Duration::ZERO, &stop).await;
    let deliveries = service(database(&dir).await, settings(true, &[100, 200], Duration::from_secs(60)));
    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));

    let task = TaskId::new();
    deliveries.enqueue(finished(task, &format!("http://{addr}/hook"))).await.expect("enqueue");
    let report = wait_for(&deliveries, task, |r| r.status == DeliveryStatus::Delivered).await;
    assert_eq!(codes(&report.attempts), [Some(500), Some(500), Some(200)]);
    for attempt in &report.attempts[..2] {
        let error = attempt.error.as_deref().expect("error");
        assert!(error.contains("500 Internal Server Error"), "{error}");
    }
    // The pauses follow the schedule: 100 ms, then 200 ms.
    let gaps: Vec<i64> = report.attempts.windows(2).map(|w| (w[1].at - w[0].at).num_milliseconds()).collect();
    assert!(gaps[0] >= 100 && gaps[1] >= 200, "{gaps:?}");

    let received = receiver.received();
    assert_eq!(received.len(), 3);
    assert!(received.iter().all(|m| m.verified), "every attempt is signed");
    assert!(received.iter().all(|m| m.id == received[0].id), "one webhook-id for every attempt");
    stop.cancel();
}

#[tokio::test]
async fn gone_stops_the_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let (receiver, addr) = Receiver::start(&[410, 500, 500], Duration::ZERO, &stop).await;
    let deliveries = service(database(&dir).await, settings(true, &[20], Duration::from_secs(60)));
    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));

    let task = TaskId::new();
    deliveries.enqueue(finished(task, &format!("http://{addr}/hook"))).await.expect("enqueue");
    let report = wait_for(&deliveries, task, |r| r.status != DeliveryStatus::Pending).await;
    assert_eq!(report.status, DeliveryStatus::Failed);
    assert_eq!(codes(&report.attempts), [Some(410)]);
    assert!(report.attempts[0].error.as_deref().is_some_and(|e| e.contains("410")), "{report:?}");
    // Ten schedule steps later, still one request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(deliveries.list_for_task(task).await.expect("list")[0].attempts.len(), 1);
    stop.cancel();
}

#[tokio::test]
async fn a_private_destination_is_refused_once_with_a_clear_error_and_not_retried() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let (receiver, addr) = Receiver::start(&[], Duration::ZERO, &stop).await;
    // A receiver that is up and would answer 200: only the rule stops the delivery.
    let deliveries = service(database(&dir).await, settings(false, &[20], Duration::from_secs(60)));
    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));

    for (url, says) in [
        (format!("http://{addr}/hook"), "a loopback address"),
        (format!("http://localhost:{}/hook", addr.port()), "names this machine"),
    ] {
        let task = TaskId::new();
        deliveries.enqueue(finished(task, &url)).await.expect("enqueue");
        let report = wait_for(&deliveries, task, |r| r.status != DeliveryStatus::Pending).await;
        assert_eq!(report.status, DeliveryStatus::Failed, "{url}");
        assert_eq!(codes(&report.attempts), [None], "{url}: never sent");
        let error = report.attempts[0].error.as_deref().expect("error");
        assert!(error.contains(says), "{url}: {error}");
        assert!(error.contains("webhooks.allow_private"), "{url}: {error}");
        assert!(error.ends_with("not retried"), "{url}: {error}");
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(deliveries.list_for_task(task).await.expect("list")[0].attempts.len(), 1, "{url}");
    }
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
    stop.cancel();
}

#[tokio::test]
async fn retries_end_at_max_age_and_a_slow_receiver_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let (receiver, addr) = Receiver::start(&[503; 100], Duration::ZERO, &stop).await;
    let deliveries = service(database(&dir).await, settings(true, &[50], Duration::from_millis(400)));
    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));
    let task = TaskId::new();
    deliveries.enqueue(finished(task, &format!("http://{addr}/hook"))).await.expect("enqueue");
    let report = wait_for(&deliveries, task, |r| r.status != DeliveryStatus::Pending).await;
    assert_eq!(report.status, DeliveryStatus::Failed);
    assert!(report.attempts.len() >= 3, "retried meanwhile: {report:?}");
    assert!(report.attempts.iter().all(|a| a.status_code == Some(503)));
    let last = report.attempts.last().and_then(|a| a.error.as_deref()).expect("error");
    assert!(last.contains("giving up"), "{last}");
    // Given up only once an attempt failed at or after the limit (a few ms of clock
    // difference between the two measures allowed).
    let last = report.attempts.last().expect("last");
    let ended = last.at + chrono::Duration::milliseconds(last.duration_ms as i64 + 5);
    assert!(ended >= report.created_at + chrono::Duration::milliseconds(400), "{report:?}");
    assert_eq!(receiver.received().len(), report.attempts.len());

    let (_slow, slow_addr) = Receiver::start(&[], Duration::from_secs(5), &stop).await;
    let mut quick = settings(true, &[10_000], Duration::from_secs(60));
    quick.timeout = Duration::from_millis(300);
    // A database of its own: the first service, still running, must not take this one.
    let other = tempfile::tempdir().expect("tempdir");
    let deliveries = service(database(&other).await, quick);
    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));
    let task = TaskId::new();
    deliveries.enqueue(finished(task, &format!("http://{slow_addr}/hook"))).await.expect("enqueue");
    let report = wait_for(&deliveries, task, |r| !r.attempts.is_empty()).await;
    assert_eq!(report.status, DeliveryStatus::Pending, "a timeout is retried");
    let attempt = &report.attempts[0];
    assert_eq!(attempt.status_code, None);
    assert!(attempt.error.as_deref().is_some_and(|e| e.contains("timed out")), "{attempt:?}");
    assert!((250..2000).contains(&attempt.duration_ms), "{attempt:?}");
    stop.cancel();
}

#[tokio::test]
async fn two_processes_on_one_database_deliver_each_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    // A short delay keeps both senders busy at once.
    let (receiver, addr) = Receiver::start(&[], Duration::from_millis(15), &stop).await;
    let first = service(database(&dir).await, settings(true, &[20], Duration::from_secs(60)));
    let second = service(database(&dir).await, settings(true, &[20], Duration::from_secs(60)));
    let url = format!("http://{addr}/hook");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let task = TaskId::new();
        let by = if i % 2 == 0 { &first } else { &second };
        assert!(by.enqueue(finished(task, &url)).await.expect("enqueue"));
        tasks.push(task);
    }
    tokio::spawn(Arc::clone(&first).run(stop.clone()));
    tokio::spawn(Arc::clone(&second).run(stop.clone()));
    for task in &tasks {
        let report = wait_for(&first, *task, |r| r.status == DeliveryStatus::Delivered).await;
        assert_eq!(report.attempts.len(), 1, "{report:?}");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for message in receiver.received() {
        assert!(message.verified);
        *seen.entry(message.id).or_default() += 1;
    }
    assert_eq!(seen.len(), tasks.len(), "every delivery arrived");
    assert!(seen.values().all(|n| *n == 1), "none twice: {seen:?}");
    stop.cancel();
}

#[tokio::test]
async fn a_delivery_whose_sender_died_is_sent_when_its_lease_lapses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let (receiver, addr) = Receiver::start(&[], Duration::ZERO, &stop).await;
    let db = database(&dir).await;
    let deliveries = service(Arc::clone(&db), settings(true, &[20], Duration::from_secs(60)));
    let task = TaskId::new();
    deliveries.enqueue(finished(task, &format!("http://{addr}/hook"))).await.expect("enqueue");

    // A sender claims it and dies before recording anything.
    let claimed = db.claim_deliveries("crashed", Duration::from_millis(300), 10).await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(message_id(&claimed[0]), format!("msg_{}", claimed[0].id.simple()));
    assert!(db.claim_deliveries("other", Duration::from_secs(30), 10).await.expect("claim").is_empty(), "leased");
    assert_eq!(deliveries.run_once().await.expect("round"), 0, "not while the lease holds");

    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));
    let report = wait_for(&deliveries, task, |r| r.status == DeliveryStatus::Delivered).await;
    assert_eq!(codes(&report.attempts), [Some(200)]);
    assert_eq!(receiver.received().len(), 1);

    // The dead sender's late word changes nothing but the count of attempts.
    let late = Attempt { at: chrono::Utc::now(), status_code: Some(500), error: None, duration_ms: 1 };
    assert!(!db.record_attempt(claimed[0].id, "crashed", &late, NextStep::Failed).await.expect("record"));
    let report = &deliveries.list_for_task(task).await.expect("list")[0];
    assert_eq!(report.status, DeliveryStatus::Delivered);
    assert_eq!(report.attempts.len(), 2);
    stop.cancel();
}

#[tokio::test]
async fn finished_deliveries_are_pruned_after_they_are_kept_and_pending_ones_never() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = CancellationToken::new();
    let (_ok, ok_addr) = Receiver::start(&[], Duration::ZERO, &stop).await;
    let (_failing, failing_addr) = Receiver::start(&[500; 50], Duration::ZERO, &stop).await;
    let db = database(&dir).await;
    let deliveries = service(db.clone(), settings(true, &[60_000], Duration::from_secs(600)));
    tokio::spawn(Arc::clone(&deliveries).run(stop.clone()));

    let (done, waiting) = (TaskId::new(), TaskId::new());
    deliveries.enqueue(finished(done, &format!("http://{ok_addr}/hook"))).await.expect("enqueue");
    deliveries.enqueue(finished(waiting, &format!("http://{failing_addr}/hook"))).await.expect("enqueue");
    wait_for(&deliveries, done, |r| r.status == DeliveryStatus::Delivered).await;
    wait_for(&deliveries, waiting, |r| r.attempts.len() == 1).await;

    let an_hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(db.prune_deliveries(an_hour_ago).await.expect("prune"), 0, "nothing finished that long ago");
    assert_eq!(deliveries.list_for_task(done).await.expect("list").len(), 1);
    let later = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(db.prune_deliveries(later).await.expect("prune"), 1, "only the finished one");
    assert!(deliveries.list_for_task(done).await.expect("list").is_empty());
    let kept = deliveries.list_for_task(waiting).await.expect("list");
    assert_eq!((kept.len(), kept[0].status), (1, DeliveryStatus::Pending), "still being retried");
    stop.cancel();
}
