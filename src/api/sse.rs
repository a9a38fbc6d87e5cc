//! Server-Sent Events over a task's event log, for every face that streams events: `id:`
//! is the event's sequence number, a reconnecting client's `Last-Event-ID` (or `?after=N`)
//! resumes after it, a comment goes out every 15 s, and the stream ends after the
//! terminal event or at shutdown.
//!
//! Each face renders an event its own way (a name and a JSON payload). The encoded bytes
//! of a live event are kept with it ([`Published::rendered`]), one slot per face, so a
//! task followed by many clients is encoded once per face, not once per client.

use std::time::Duration;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, header},
    response::Response,
};
use bytes::{BufMut, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde_json::Value;

use crate::{
    access::Caller,
    api::{AppState, tasks::parse_id},
    error::ApiResult,
    events::{Published, RENDERINGS},
    gateway::{FileUrls, Gateway},
    tasks::{Task, TaskEvent},
};

pub const HEARTBEAT: Duration = Duration::from_secs(15);
const HEARTBEAT_BYTES: &[u8] = b":heartbeat\n\n";

/// The faces that stream events, each with its own rendering slot.
#[derive(Debug, Clone, Copy)]
pub enum Face {
    Native,
    Seed002,
    Seed004,
}

impl Face {
    fn slot(self) -> usize {
        const _: () = assert!(3 <= RENDERINGS, "one rendering slot per face");
        match self {
            Face::Native => 0,
            Face::Seed002 => 1,
            Face::Seed004 => 2,
        }
    }
}

/// How a face shows an event: its SSE `event:` name and `data:` payload, or nothing for
/// an event that face does not show. The URLs of the files the event names are made
/// beforehand ([`Gateway::file_urls`]): a presigned one takes an await.
pub type Render = fn(&Gateway, &FileUrls, &TaskEvent) -> Option<(&'static str, Value)>;

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
pub fn with_urls(urls: &FileUrls, data: &Value) -> Value {
    let mut data = data.clone();
    add_urls(urls, &mut data);
    data
}

fn add_urls(urls: &FileUrls, value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(key)) = map.get("key")
                && let Some(url) = urls.get(key)
            {
                let url = url.to_owned();
                map.insert("url".into(), Value::String(url));
            }
            for (_, v) in map.iter_mut() {
                add_urls(urls, v);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| add_urls(urls, v)),
        _ => {}
    }
}

/// The native rendering of an event: its payload with `task_id`, `seq` and URLs.
pub fn native_data(urls: &FileUrls, event: &TaskEvent) -> Value {
    let mut data = with_urls(urls, &event.data);
    if let Value::Object(map) = &mut data {
        map.insert("task_id".into(), Value::String(event.task_id.to_string()));
        map.insert("seq".into(), Value::from(event.seq));
        map.insert("created_at".into(), Value::String(event.created_at.to_rfc3339()));
    }
    data
}

/// The native face's rendering.
pub fn native_event(_gateway: &Gateway, urls: &FileUrls, event: &TaskEvent) -> Option<(&'static str, Value)> {
    Some((event.kind.as_str(), native_data(urls, event)))
}

/// One event on the wire. The payload is compact JSON, which never holds a raw line
/// break, so it is always a single `data:` line.
fn encode(seq: i64, name: &str, data: &Value) -> Option<Bytes> {
    let json = serde_json::to_vec(data).ok()?;
    let mut out = BytesMut::with_capacity(json.len() + name.len() + 32);
    out.put_slice(b"id: ");
    out.put_slice(seq.to_string().as_bytes());
    out.put_slice(b"\nevent: ");
    out.put_slice(name.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(&json);
    out.put_slice(b"\n\n");
    Some(out.freeze())
}

/// The SSE answer for a task named in a path: 404 when there is no such task, else its
/// events after the resume point, as `face` renders them.
pub async fn task_stream(
    state: &AppState,
    caller: &Caller,
    task_id: &str,
    after: Option<i64>,
    headers: &HeaderMap,
    face: Face,
    render: Render,
) -> ApiResult<Response> {
    let task = state.gateway.task(caller, parse_id(task_id)?).await?;
    Ok(stream(state, &task, resume_point(headers, after), face, render))
}

/// A task's events as an SSE answer.
pub fn stream(state: &AppState, task: &Task, after: i64, face: Face, render: Render) -> Response {
    let gateway = state.gateway.clone();
    let events = gateway
        .follow(task, after, state.shutdown.clone())
        .then(move |published: std::sync::Arc<Published>| {
            let gateway = gateway.clone();
            async move {
                let urls = gateway.file_urls(&published.event.data).await;
                published.rendered(face.slot(), |event| {
                    let (name, data) = render(&gateway, &urls, event)?;
                    encode(event.seq, name, &data)
                })
            }
        })
        .filter_map(std::future::ready);
    let mut response = Response::new(Body::from_stream(with_heartbeats(events)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx would otherwise hold events back to fill their buffers.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The events, with a comment every [`HEARTBEAT`] so that proxies and clients see the
/// stream alive; it ends with the events.
fn with_heartbeats(
    events: impl Stream<Item = Bytes> + Send + 'static,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static {
    async_stream::stream! {
        tokio::pin!(events);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                item = events.next() => match item {
                    Some(bytes) => yield Ok(bytes),
                    None => return,
                },
                _ = beat.tick() => yield Ok(Bytes::from_static(HEARTBEAT_BYTES)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::{IntoResponse, sse};

    #[tokio::test]
    async fn events_are_encoded_as_axum_encodes_them() {
        let data = serde_json::json!({"status": "running", "progress": 40, "stage": "a \"quoted\"\nline", "n": [1, 2]});
        let ours = encode(7, "processing", &data).expect("encodes");
        let event = sse::Event::default().id("7").event("processing").json_data(&data).expect("json");
        let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(event)]);
        let body = sse::Sse::new(stream).into_response().into_body();
        let theirs = axum::body::to_bytes(body, 1 << 16).await.expect("body");
        assert_eq!(ours, theirs);
    }
}
