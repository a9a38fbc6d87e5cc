//! The event stream: order, replay, late subscribers, many subscribers, positions.

use serde_json::Value;

use crate::helpers::TestApp;

#[tokio::test]
async fn the_stream_carries_every_transition_in_order_and_closes_after_the_end() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"steps": 3, "step_ms": 50}"#)]).await;
    let id = task["id"].as_str().unwrap();
    let events = app.events(id, None, 100).await;
    let kinds: Vec<&str> = events.iter().map(|(_, k, _)| k.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"queued"));
    assert_eq!(kinds.last(), Some(&"completed"));
    assert!(kinds.contains(&"processing"));
    assert!(kinds.contains(&"result"));
    let seqs: Vec<i64> = events.iter().map(|(s, _, _)| *s).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "seq strictly increasing by one: {seqs:?}");
    assert_eq!(seqs[0], 1);
    let stages: Vec<&str> = events.iter().filter_map(|(_, _, d)| d["stage"].as_str()).collect();
    assert!(stages.contains(&"step-2"), "{stages:?}");
    let result = events.iter().find(|(_, k, _)| k == "result").unwrap();
    assert!(result.2["url"].as_str().unwrap().contains("/files/reconstruction/"));
    let completed = &events.last().unwrap().2;
    assert_eq!(completed["task_id"], id);
    assert!(completed["outputs"][0]["url"].is_string());
    app.stop().await;
}

#[tokio::test]
async fn a_late_subscriber_gets_the_whole_history_and_a_replay_matches_it() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"steps": 2}"#)]).await;
    let id = task["id"].as_str().unwrap();
    app.wait_terminal(id).await;
    let all = app.events(id, None, 100).await;
    assert!(all.len() >= 5);
    assert_eq!(all.last().unwrap().1, "completed");
    // Resuming after event 2 yields exactly the rest.
    let rest = app.events(id, Some(2), 100).await;
    assert_eq!(rest, all[2..].to_vec());
    // `?after=` does the same.
    let url = app.url(&format!("/api/v1/tasks/{id}/events?after=2"));
    let by_query = crate::helpers::read_events(&app.client, &url, None, 100).await;
    assert_eq!(by_query, all[2..].to_vec());
    app.stop().await;
}

#[tokio::test]
async fn many_subscribers_all_get_every_event_and_a_replay_equals_the_live_stream() {
    let app = TestApp::spawn().await;
    let task = app.submit_image(&[("params", r#"{"steps": 5, "step_ms": 100}"#)]).await;
    let id = task["id"].as_str().unwrap().to_owned();
    let mut handles = Vec::new();
    for _ in 0..20 {
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/tasks/{id}/events"));
        handles.push(tokio::spawn(async move { crate::helpers::read_events(&client, &url, None, 100).await }));
    }
    let mut streams = Vec::new();
    for h in handles {
        streams.push(h.await.unwrap());
    }
    let replay = app.events(&id, None, 100).await;
    for stream in &streams {
        assert_eq!(stream, &replay);
    }
    app.stop().await;
}

#[tokio::test]
async fn queue_positions_count_down_as_tasks_ahead_start() {
    let channel = r#"
[[channels]]
name = "echo"
type = "echo"
max_concurrency = 1
max_queue = 10
models = [{ name = "echo", kind = "image_to_3d" }]
"#;
    let app = TestApp::spawn_with(channel).await;
    let mut ids = Vec::new();
    for _ in 0..4 {
        let task = app.submit_image(&[("params", r#"{"steps": 2, "step_ms": 100}"#)]).await;
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let last = ids.last().unwrap();
    let events = app.events(last, None, 100).await;
    let positions: Vec<u64> = events
        .iter()
        .filter(|(_, k, _)| k == "queued")
        .map(|(_, _, d): &(i64, String, Value)| d["position"].as_u64().unwrap())
        .collect();
    assert!(positions.len() >= 2, "{positions:?}");
    assert!(positions.windows(2).all(|w| w[1] < w[0]), "positions count down: {positions:?}");
    assert_eq!(*positions.last().unwrap(), 1);
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_task_has_no_stream() {
    let app = TestApp::spawn().await;
    let (status, body) = app.get_json("/api/v1/tasks/0190a0b0-0000-7000-8000-000000000000/events").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "task_not_found");
    let (status, _) = app.get_json("/api/v1/tasks/not-a-uuid").await;
    assert_eq!(status, 404);
    app.stop().await;
}

/// A stopping process's last notifications (the ends of the tasks it drained, the tasks
/// it handed back) reach the other processes on the database before it exits:
/// `Notifier::flushed` resolves once they were sent, so a runtime that ends right after
/// loses none. Only PostgreSQL has other processes to tell; on SQLite this test has
/// nothing to check.
#[test]
fn notifications_flushed_before_a_process_ends_reach_the_other_processes() {
    if !crate::common::postgres::enabled() {
        return;
    }
    let url = crate::common::postgres::fresh_database();
    // Another replica, listening first: its own runtime.
    let other = tokio::runtime::Runtime::new().expect("runtime");
    let mut listener = other.block_on(async {
        let mut listener = sqlx::postgres::PgListener::connect(&url).await.expect("listen");
        listener.listen("kiln").await.expect("listen on kiln");
        listener
    });
    // The stopping process: a runtime of one thread, which ends as soon as the flush
    // has resolved, its sender task with it.
    let stopping = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    stopping.block_on(async {
        let db = kiln::db::connect(&url, 2).await.expect("database");
        for n in 0..5 {
            db.notifier().work(&format!("channel-{n}"));
        }
        db.notifier().flushed().await;
    });
    drop(stopping);
    // The listener goes with this block: it needs its runtime to close.
    let heard = other.block_on(async move {
        let mut heard = Vec::new();
        while heard.len() < 5 {
            match tokio::time::timeout(std::time::Duration::from_secs(10), listener.recv()).await {
                Ok(Ok(notification)) => heard.push(notification.payload().to_owned()),
                _ => break,
            }
        }
        heard
    });
    assert_eq!(heard.len(), 5, "every notification posted before the flush was sent: {heard:?}");
}
