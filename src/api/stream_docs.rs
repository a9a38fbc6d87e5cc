//! The OpenAPI description of the three event streams (SSE): documentation only.
//!
//! OpenAPI 3.1 has no schema for the items of a `text/event-stream` (3.2 adds
//! `itemSchema`), so, as tools for 3.1 read it, the stream's `schema` describes **one
//! event**: an object with the SSE fields `event`, `id` and `data`, a `oneOf` over the
//! face's event kinds. `event` is a constant per kind, `id` the sequence number, and
//! `data` a string holding JSON (`contentMediaType: application/json`) whose
//! `contentSchema` is that kind's payload schema, one per kind and face.
//!
//! utoipa has no `contentSchema`, so it is written as the extension `x-content-schema`
//! and renamed when the document is finished (`openapi::finish`).

use std::borrow::Cow;

use serde_json::{Value, json};
use utoipa::{
    PartialSchema, ToSchema,
    openapi::{
        ObjectBuilder, OneOfBuilder, RefOr, Schema, Type,
        extensions::ExtensionsBuilder,
        schema::{Object, SchemaType},
    },
};

use crate::api::tasks::TaskError;

/// The extension that becomes `contentSchema` in the finished document.
pub const CONTENT_SCHEMA: &str = "x-content-schema";

/// One event of a stream: `event:` = `name`, `id:` = a sequence number, `data:` = JSON
/// matching the schema `payload`.
fn event(name: &str, payload: &str, what: &str) -> Object {
    let string = || ObjectBuilder::new().schema_type(SchemaType::new(Type::String));
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Object))
        .title(Some(name))
        .description(Some(what))
        .property("event", string().enum_values(Some([name])))
        .property(
            "id",
            string().pattern(Some("^[0-9]+$")).description(Some("The event's sequence number: 1, 2, 3 … per task")),
        )
        .property(
            "data",
            string().content_media_type("application/json").description(Some(format!("JSON: `{payload}`"))).extensions(
                Some(
                    ExtensionsBuilder::new()
                        .add(CONTENT_SCHEMA, json!({ "$ref": format!("#/components/schemas/{payload}") }))
                        .build(),
                ),
            ),
        )
        .required("event")
        .required("id")
        .required("data")
        .build()
}

fn one_of(description: &str, events: &[(&str, &str, &str)]) -> RefOr<Schema> {
    let mut alternatives = OneOfBuilder::new().description(Some(description));
    for (name, payload, what) in events {
        alternatives = alternatives.item(event(name, payload, what));
    }
    alternatives.into()
}

/// A string schema that holds one value.
fn word(value: &str) -> Object {
    ObjectBuilder::new().schema_type(SchemaType::new(Type::String)).enum_values(Some([value])).build()
}

fn percent() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::Integer))
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Int32)))
        .minimum(Some(0))
        .maximum(Some(100))
        .build()
}

macro_rules! stream {
    ($name:ident, $description:expr, [$(($event:expr, $payload:ty, $what:expr)),+ $(,)?]) => {
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                one_of($description, &[$(($event, &<$payload as ToSchema>::name(), $what)),+])
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }

            fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
                $(
                    schemas.push((<$payload as ToSchema>::name().into_owned(), <$payload as PartialSchema>::schema()));
                    <$payload as ToSchema>::schemas(schemas);
                )+
            }
        }
    };
}

// The native face: `GET /api/v1/tasks/{id}/events`.

stream!(
    TaskEventStream,
    "One event of a task's stream (native face); `event:` names its kind.",
    [
        ("queued", TaskQueuedEvent, "Queued (`seq` 1), then again when the position changes"),
        ("processing", TaskProcessingEvent, "Claimed (progress 0), then each progress report"),
        ("result", TaskResultEvent, "An output was stored"),
        ("completed", TaskCompletedEvent, "Succeeded (terminal)"),
        ("failed", TaskFailedEvent, "Failed (terminal)"),
        ("canceled", TaskCanceledEvent, "Canceled (terminal)"),
    ]
);

/// `queued`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskQueuedEvent {
    #[schema(schema_with = queued)]
    status: String,
    /// 1-based position in the channel's queue.
    position: u32,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    /// The event's sequence number (its `id:`).
    seq: u64,
    created_at: String,
}

fn queued() -> Object {
    word("queued")
}

/// `processing`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskProcessingEvent {
    #[schema(schema_with = running)]
    status: String,
    #[schema(schema_with = percent)]
    progress: u8,
    /// `starting`, `restarting`, then what the provider reports.
    stage: String,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    seq: u64,
    created_at: String,
}

fn running() -> Object {
    word("running")
}

/// `result`: one stored output.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskResultEvent {
    name: String,
    role: String,
    /// The storage key; `url` serves it.
    key: String,
    url: String,
    content_type: String,
    size: u64,
    sha256: String,
    /// What the provider reported about this output.
    metadata: Value,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    seq: u64,
    created_at: String,
}

/// An output listed in `completed`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskEventOutput {
    name: String,
    role: String,
    key: String,
    url: String,
    content_type: String,
    size: u64,
    sha256: String,
}

/// `completed`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskCompletedEvent {
    #[schema(schema_with = succeeded)]
    status: String,
    outputs: Vec<TaskEventOutput>,
    /// What the provider reported.
    metadata: Value,
    /// Seconds from the first start of running to the end.
    generation_time: Option<f64>,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    seq: u64,
    created_at: String,
}

fn succeeded() -> Object {
    word("succeeded")
}

/// `failed`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskFailedEvent {
    #[schema(schema_with = failed)]
    status: String,
    error: TaskError,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    seq: u64,
    created_at: String,
}

fn failed() -> Object {
    word("failed")
}

/// `canceled`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TaskCanceledEvent {
    #[schema(schema_with = canceled)]
    status: String,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    seq: u64,
    created_at: String,
}

fn canceled() -> Object {
    word("canceled")
}

// Seed 002's face: `GET /api/status/{task_id}`.

stream!(
    GenerateEventStream,
    "One event of a generation's stream (seed 002); `event:` names its kind.",
    [
        ("queued", GenerateQueuedEvent, "Queued, then again when the position changes"),
        ("processing", GenerateProcessingEvent, "Claimed, then each progress report"),
        ("completed", GenerateCompletedEvent, "The model is ready (terminal)"),
        ("failed", GenerateFailedEvent, "Failed or canceled (terminal)"),
    ]
);

/// `queued` (seed 002).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GenerateQueuedEvent {
    #[schema(schema_with = queued)]
    status: String,
    position: u32,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
}

/// `processing` (seed 002).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GenerateProcessingEvent {
    #[schema(schema_with = processing)]
    status: String,
    #[schema(schema_with = percent)]
    progress: u8,
    stage: String,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
}

fn processing() -> Object {
    word("processing")
}

/// `completed` (seed 002).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GenerateCompletedEvent {
    #[schema(schema_with = completed)]
    status: String,
    /// `{public_url}/static/{task_id}.glb`.
    model_url: String,
    /// Seconds the generation took.
    generation_time: Option<f64>,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
}

fn completed() -> Object {
    word("completed")
}

/// `failed` (seed 002): its §6 message and kiln's code (`canceled` for a canceled task).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct GenerateFailedEvent {
    #[schema(schema_with = failed)]
    status: String,
    error: String,
    code: String,
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
}

// Seed 004's face: `GET /api/reconstruction/events/{taskId}`.

stream!(
    ReconstructionEventStream,
    "One event of a reconstruction's stream (seed 004): `result` or `status`.",
    [
        ("result", ReconstructionResultEvent, "A result file was stored"),
        ("status", ReconstructionStatusEvent, "The task's status changed or progressed"),
    ]
);

/// `result` (seed 004).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
pub struct ReconstructionResultEvent {
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    file_name: String,
    url: String,
}

/// `status` (seed 004): `position` while `PENDING`, `progress` and `stage` while
/// `PROCESSING`, `errorMessage` and `errorCode` when `FAILED` (a canceled task is
/// `FAILED` with `errorCode` `canceled`).
#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "camelCase")]
pub struct ReconstructionStatusEvent {
    #[schema(value_type = String, format = Uuid)]
    task_id: String,
    #[schema(schema_with = status_word)]
    status: String,
    #[schema(nullable = false)]
    position: Option<u32>,
    #[schema(schema_with = percent)]
    progress: Option<u8>,
    #[schema(nullable = false)]
    stage: Option<String>,
    error_message: Option<String>,
    error_code: Option<String>,
}

fn status_word() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::new(Type::String))
        .enum_values(Some(["PENDING", "PROCESSING", "COMPLETED", "FAILED"]))
        .build()
}
