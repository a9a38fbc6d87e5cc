//! Server-Sent Events over a task's event log: `id:` is the event's sequence number, a
//! reconnecting client's `Last-Event-ID` (or `?after=N`) resumes after it, a comment
//! goes out every 15 s, and the stream ends after the terminal event or at shutdown.

use std::{convert::Infallible, time::Duration};

use axum::{
    http::HeaderMap,
    response::sse::{Event, KeepAlive, Sse},
};
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::{
    api::AppState,
    events::follow,
    gateway::Gateway,
    tasks::{TaskEvent, TaskId},
};

pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Where to resume: `Last-Event-ID` wins over `?after=`.
pub fn resume_point(headers: &HeaderMap, after: Option<i64>) -> i64 {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok())
        .or(after)
        .unwrap_or(0)
        .max(0)
}

/// Adds absolute `url`s next to storage keys in an event's payload.
pub fn with_urls(gateway: &Gateway, data: &Value) -> Value {
    let mut data = data.clone();
    add_urls(gateway, &mut data);
    data
}

fn add_urls(gateway: &Gateway, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(key)) = map.get("key") {
                let url = gateway.file_url(key);
                map.insert("url".into(), Value::String(url));
            }
            for (_, v) in map.iter_mut() {
                add_urls(gateway, v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| add_urls(gateway, v)),
        _ => {}
    }
}

/// The native rendering of an event: its payload with `task_id`, `seq` and URLs.
pub fn native_data(gateway: &Gateway, event: &TaskEvent) -> Value {
    let mut data = with_urls(gateway, &event.data);
    if let Value::Object(map) = &mut data {
        map.insert("task_id".into(), Value::String(event.task_id.to_string()));
        map.insert("seq".into(), Value::from(event.seq));
        map.insert("created_at".into(), Value::String(event.created_at.to_rfc3339()));
    }
    data
}

/// A task's events as an SSE response, each rendered by `render` (face-specific).
pub fn stream<F>(
    state: &AppState,
    id: TaskId,
    after: i64,
    render: F,
) -> Sse<impl Stream<Item = Result<Event, Infallible>> + use<F>>
where
    F: Fn(&Gateway, &TaskEvent) -> Option<Event> + Send + 'static,
{
    let gateway = state.gateway.clone();
    let events = follow(gateway.db.clone(), gateway.bus.clone(), id, after, state.shutdown.clone());
    let stream = events.filter_map(move |event| {
        let rendered = render(&gateway, &event);
        async move { rendered.map(Ok) }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
}

/// The native face's rendering.
pub fn native_event(gateway: &Gateway, event: &TaskEvent) -> Option<Event> {
    Event::default().id(event.seq.to_string()).event(event.kind.as_str()).json_data(native_data(gateway, event)).ok()
}
