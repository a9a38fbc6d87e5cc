//! The OpenAPI 3.1 document, generated from the handlers' annotations, finished here
//! with what holds for many operations at once, served at `/openapi.json`, with an API
//! browser at `/docs` that works offline (its assets are compiled into the binary).
//!
//! Finishing ([`finish`]) does three things the annotations cannot:
//! - **common responses**, documented once instead of in every annotation: 500
//!   `internal_error` on every operation, and on every operation that takes a body 408
//!   `request_timeout` (the body stalled) and 503 `shutting_down` with `Retry-After`;
//!   each in the face's error shape (seed 002's face has its own);
//! - **`contentSchema`**, which utoipa cannot write: the event streams' `data` schemas
//!   (`stream_docs`) carry it as `x-content-schema`, renamed here;
//! - **links** from the operations that create things to those that read them, for
//!   clients and for stateful testing.
//!
//! A wrong method is answered 405 with an `Allow` header on every path; it is not an
//! answer of any operation, so it is not listed per operation.

use axum::Router;
use serde_json::{Map, Value, json};
use utoipa::{
    OpenApi,
    openapi::{
        KnownFormat, ObjectBuilder, RefOr, Schema, SchemaFormat, Type,
        schema::SchemaType,
        security::{ApiKey, ApiKeyValue, SecurityScheme},
    },
};
use utoipa_swagger_ui::SwaggerUi;

use crate::api::{AppState, stream_docs::CONTENT_SCHEMA};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln",
        description = "A self-hostable gateway for generative jobs. Errors use one envelope: \
            `{\"error\": {\"code\", \"message\"}, \"request_id\"}` with a stable `code` \
            (seed 002's face answers in its own shape, the OpenAI-compatible face in OpenAI's). Any operation may answer 500 \
            `internal_error`; one that takes a body may answer 408 `request_timeout` and 503 \
            `shutting_down` (with `Retry-After`); a path asked with a method it does not have \
            answers 405 `method_not_allowed` with `Allow`.",
    ),
    paths(crate::api::files::serve_file),
    components(schemas(crate::error::ErrorBody)),
    tags(
        (name = "tasks", description = "The native API: create, follow and fetch tasks"),
        (name = "pictures", description = "The native picture library: upload once, make tasks from it"),
        (name = "models (seed 000)", description = "Seed 000/001's model-generation face"),
        (name = "reconstruction (seed 004)", description = "Seed 004's picture library, reconstructions, events and worker callbacks"),
        (name = "generate (seed 002)", description = "Seed 002's one-GPU face: generate, follow, fetch the GLB"),
        (name = "openai (seed 003)", description = "OpenAI's image API, for OpenAI's own clients: errors in OpenAI's envelope \
            `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; `Authorization` is accepted and ignored"),
        (name = "catalog", description = "Models and their availability"),
        (name = "worker callbacks", description = "Signed reports from push workers (docs/worker-protocol.md)"),
        (name = "files", description = "Stored inputs and outputs"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
struct ApiDoc;

pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    let signature = ApiKeyValue::with_description(
        "webhook-signature",
        "Worker callbacks are signed as Standard Webhooks with their channel's secret: \
         `webhook-id`, `webhook-timestamp` (Unix seconds, within 5 minutes) and \
         `webhook-signature` (`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}`). \
         See docs/worker-protocol.md.",
    );
    doc.components
        .get_or_insert_with(Default::default)
        .add_security_scheme("worker_signature", SecurityScheme::ApiKey(ApiKey::Header(signature)));
    doc
}

/// Serves the finished document and the API browser.
pub fn routes(spec: Value) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", spec))
}

/// The served document: utoipa's, with the common responses, `contentSchema` and links.
pub fn finish(doc: utoipa::openapi::OpenApi) -> Value {
    // Serialising the document's own types cannot fail; `Null` would show at once in tests.
    let mut doc = serde_json::to_value(&doc).unwrap_or_default();
    rename_key(&mut doc, CONTENT_SCHEMA, "contentSchema");
    name_form_fields(&mut doc);
    if let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) {
        for (path, item) in paths.iter_mut() {
            for (method, operation) in item.as_object_mut().into_iter().flatten() {
                if METHODS.contains(&method.as_str()) {
                    add_common_responses(operation);
                    add_access_responses(path, method, operation);
                }
            }
        }
        add_links(paths);
    }
    doc
}

pub const METHODS: [&str; 8] = ["get", "put", "post", "delete", "options", "head", "patch", "trace"];

fn rename_key(value: &mut Value, from: &str, to: &str) {
    match value {
        Value::Object(map) => {
            if let Some(moved) = map.remove(from) {
                map.insert(to.to_owned(), moved);
            }
            map.values_mut().for_each(|v| rename_key(v, from, to));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_key(v, from, to)),
        _ => {}
    }
}

/// A form's field names are read from its parts' `Content-Disposition` headers, which
/// cannot hold control characters (tab aside): the forms' schemas say so, since they
/// take fields they do not list (and ignore them).
fn name_form_fields(doc: &mut Value) {
    let mut forms = Vec::new();
    for item in doc["paths"].as_object().into_iter().flatten().map(|(_, item)| item) {
        for operation in item.as_object().into_iter().flatten().map(|(_, op)| op) {
            let schema = &operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"];
            if let Some(name) = schema.as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
                forms.push(name.to_owned());
            }
        }
    }
    for name in forms {
        if let Some(schema) = doc["components"]["schemas"].get_mut(&name).and_then(Value::as_object_mut) {
            schema.insert("propertyNames".into(), json!({ "pattern": "^[^\\u0000-\\u0008\\u000A-\\u001F\\u007F]*$" }));
        }
    }
}

const ERROR_BODY: &str = "#/components/schemas/ErrorBody";

/// The schema an operation's errors have: the one its own error answers use (seed 002's
/// answer, OpenAI's envelope), else the native envelope.
fn error_schema(operation: &Value) -> String {
    operation["responses"]
        .as_object()
        .and_then(|responses| {
            responses
                .iter()
                .filter(|(status, _)| status.starts_with('4') || status.starts_with('5'))
                .find_map(|(_, response)| response["content"]["application/json"]["schema"]["$ref"].as_str())
        })
        .unwrap_or(ERROR_BODY)
        .to_owned()
}

fn add_common_responses(operation: &mut Value) {
    let schema = error_schema(operation);
    let schema = schema.as_str();
    let takes_body = operation.get("requestBody").is_some();
    let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { return };
    common(responses, "500", "Internal error (`internal_error`); the cause is only in the server's log", schema, false);
    if takes_body {
        common(
            responses,
            "400",
            "The body cannot be read: bad JSON, a missing or unknown field (`malformed_json`)",
            schema,
            false,
        );
        common(responses, "415", "Not the documented content type (`unsupported_media_type`)", schema, false);
        common(responses, "408", "The request body stalled (`request_timeout`)", schema, false);
        common(responses, "503", "The server is shutting down (`shutting_down`); see Retry-After", schema, true);
    }
}

/// The answers of the caller layer (`api/caller.rs`): a bad or missing credential (401),
/// a session's write without its CSRF token or a user on an admin route (403), and a
/// token over its rate (429), which any route can give a rate-limited token.
fn add_access_responses(path: &str, method: &str, operation: &mut Value) {
    if matches!(path, "/health" | "/ready" | "/metrics") {
        return;
    }
    let schema = error_schema(operation);
    let schema = schema.as_str();
    let Some(responses) = operation.get_mut("responses").and_then(Value::as_object_mut) else { return };
    common(
        responses,
        "401",
        "No credentials where they are needed (`unauthorized`), or an API token that is unknown, revoked or expired \
         (`invalid_token`)",
        schema,
        false,
    );
    if path.starts_with("/api/v1/admin/") {
        common(responses, "403", "Not an admin (`forbidden`)", schema, false);
    } else if method != "get" {
        common(responses, "403", "A session's write without its X-CSRF-Token (`csrf_failed`)", schema, false);
    }
    common(responses, "429", "The API token is over its request rate (`rate_limited`); see Retry-After", schema, true);
}

/// Documents `status` unless the operation already does; a 503 gets `Retry-After`
/// either way, and an operation's own 503 gets the shutdown case added to its words.
fn common(responses: &mut Map<String, Value>, status: &str, description: &str, schema: &str, retry_after: bool) {
    let response = responses.entry(status.to_owned()).or_insert_with(|| {
        json!({
            "description": description,
            "content": { "application/json": { "schema": { "$ref": schema } } },
        })
    });
    let Some(response) = response.as_object_mut() else { return };
    if let Some(Value::String(words)) = response.get_mut("description")
        && words != description
        && status == "503"
        && !words.contains("shutting_down")
    {
        words.push_str("; also while the server is shutting down (`shutting_down`)");
    }
    if retry_after {
        let headers = response.entry("headers").or_insert_with(|| json!({}));
        if let Some(headers) = headers.as_object_mut() {
            headers.entry("Retry-After").or_insert_with(|| {
                json!({
                    "description": "Seconds to wait before trying again",
                    "schema": { "type": "integer", "minimum": 0 },
                })
            });
        }
    }
}

/// (path, method, status, link name, target operationId, parameters, request body)
type LinkSpec = (&'static str, &'static str, &'static str, &'static str, &'static str, Value, Option<Value>);

/// What an operation's answer lets a client do next.
fn links() -> Vec<LinkSpec> {
    let task = || json!({ "id": "$response.body#/id" });
    let job = || json!({ "jobId": "$response.body#/jobId" });
    let picture = || json!({ "id": "$response.body#/id" });
    let reconstruction = || json!({ "taskId": "$response.body#/taskId" });
    let generation = || json!({ "task_id": "$response.body#/task_id" });
    let item = || json!({ "id": "$response.body#/item/id" });
    let channel = || json!({ "name": "$response.body#/name" });
    let t = "/api/v1/tasks";
    let m = "/api/v1/models";
    let p = "/api/v1/pictures";
    let r = "/api/reconstruction/create-from-image";
    vec![
        (t, "post", "202", "GetTask", "get_task", task(), None),
        (t, "post", "202", "GetTaskStatus", "task_status", task(), None),
        (t, "post", "202", "GetTaskResult", "task_result", task(), None),
        (t, "post", "202", "FollowTask", "task_events", task(), None),
        (t, "post", "202", "CancelTask", "cancel_task", task(), None),
        (t, "post", "202", "GetTaskThumbnail", "task_thumbnail", task(), None),
        (m, "post", "202", "GetJobStatus", "model_status", job(), None),
        (m, "post", "202", "GetJobResult", "model_result", job(), None),
        (p, "post", "201", "GetPicture", "get_picture", picture(), None),
        (p, "post", "201", "GetThumbnail", "thumbnail", picture(), None),
        (p, "post", "201", "ListTasksOfPicture", "list_tasks", json!({ "picture_id": "$response.body#/id" }), None),
        ("/picture/upload", "post", "200", "GetPictureInfo", "get_picture_info", picture(), None),
        (
            "/picture/upload",
            "post",
            "200",
            "CreateFromImage",
            "create_from_image",
            json!({}),
            Some(json!({ "pictureId": "$response.body#/id" })),
        ),
        (r, "post", "200", "FollowReconstruction", "events", reconstruction(), None),
        (r, "post", "200", "GetReconstructionStatus", "status", reconstruction(), None),
        ("/api/generate", "post", "200", "FollowGeneration", "status_stream", generation(), None),
        ("/api/generate", "post", "202", "FollowGeneration", "status_stream", generation(), None),
        ("/v1/images/generations", "post", "202", "GetImageGeneration", "get_image_generation", task(), None),
        ("/v1/images/generations", "post", "202", "FollowImageTask", "task_events", task(), None),
        ("/v1/images/generations", "post", "202", "GetImageTask", "get_task", task(), None),
        ("/api/v1/me/tokens", "post", "201", "RevokeToken", "revoke_my_token", item(), None),
        ("/api/v1/admin/users", "post", "201", "GetUser", "get_user", task(), None),
        ("/api/v1/admin/users", "post", "201", "UserTokens", "user_tokens", task(), None),
        ("/api/v1/admin/users/{id}/tokens", "post", "201", "RevokeUserToken", "revoke_token", item(), None),
        ("/api/v1/admin/channels", "post", "201", "GetChannel", "get_channel", channel(), None),
        ("/api/v1/admin/channels", "post", "201", "TestChannel", "test_channel", channel(), None),
    ]
}

fn add_links(paths: &mut Map<String, Value>) {
    for (path, method, status, name, target, parameters, body) in links() {
        let Some(response) = paths
            .get_mut(path)
            .and_then(|item| item.get_mut(method))
            .and_then(|operation| operation.get_mut("responses"))
            .and_then(|responses| responses.get_mut(status))
            .and_then(Value::as_object_mut)
        else {
            continue;
        };
        let mut link = json!({ "operationId": target });
        if parameters.as_object().is_some_and(|p| !p.is_empty()) {
            link["parameters"] = parameters;
        }
        if let Some(body) = body {
            link["requestBody"] = body;
        }
        if let Some(links) = response.entry("links").or_insert_with(|| json!({})).as_object_mut() {
            links.insert(name.to_owned(), link);
        }
    }
}

/// A response body of raw bytes (a file, a thumbnail, a model), documented as a binary
/// string rather than the array of integers utoipa makes of `Vec<u8>`.
pub struct Binary;

impl utoipa::PartialSchema for Binary {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(SchemaType::new(Type::String))
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Binary {}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::Value;

    use super::*;

    const SEED_002_ANSWER: &str = "#/components/schemas/GenerateAnswer";
    const OPENAI_ERROR: &str = "#/components/schemas/OpenAiErrorBody";

    fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().into_iter().flatten() {
            for (method, operation) in item.as_object().into_iter().flatten() {
                if METHODS.contains(&method.as_str()) {
                    out.push((path.clone(), method.clone(), operation));
                }
            }
        }
        out
    }

    /// utoipa's merge keeps one of two schemas with the same name and drops the other
    /// without a word, so each face is documented on its own and compared here.
    #[test]
    fn no_two_schemas_share_a_name() {
        let mut parts = vec![("base", base())];
        parts.extend(crate::api::faces().into_iter().map(|(face, router)| (face, router.into_openapi())));
        let mut seen: BTreeMap<String, (&str, Value)> = BTreeMap::new();
        let mut clashes = Vec::new();
        for (face, doc) in &parts {
            for (name, schema) in doc.components.iter().flat_map(|c| c.schemas.iter()) {
                let schema = serde_json::to_value(schema).unwrap_or_default();
                match seen.get(name) {
                    Some((other, known)) if *known != schema => {
                        clashes.push(format!("{name}: defined by `{other}` and, differently, by `{face}`"))
                    }
                    Some(_) => {}
                    None => {
                        seen.insert(name.clone(), (face, schema));
                    }
                }
            }
        }
        assert!(clashes.is_empty(), "schemas sharing a name:\n{}", clashes.join("\n"));
        let merged = crate::api::openapi_document();
        let names: BTreeSet<&String> =
            merged["components"]["schemas"].as_object().into_iter().flatten().map(|(k, _)| k).collect();
        assert_eq!(names, seen.keys().collect(), "the merged document lost or gained schemas");
    }

    #[test]
    fn operation_ids_are_unique_and_links_point_at_real_operations() {
        let doc = crate::api::openapi_document();
        let mut ids = BTreeMap::new();
        for (path, method, operation) in operations(&doc) {
            let id = operation["operationId"].as_str().unwrap_or_default().to_owned();
            assert!(!id.is_empty(), "{method} {path} has no operationId");
            if let Some(other) = ids.insert(id.clone(), format!("{method} {path}")) {
                panic!("operationId {id} is used by {other} and {method} {path}");
            }
        }
        for (path, method, operation) in operations(&doc) {
            for (status, response) in operation["responses"].as_object().into_iter().flatten() {
                for (name, link) in response["links"].as_object().into_iter().flatten() {
                    let target = link["operationId"].as_str().unwrap_or_default();
                    assert!(ids.contains_key(target), "{method} {path} {status}: link {name} targets {target}");
                }
            }
        }
        // Every link of the table was placed.
        let placed: usize = operations(&doc)
            .iter()
            .flat_map(|(_, _, op)| op["responses"].as_object().into_iter().flatten())
            .map(|(_, r)| r["links"].as_object().map_or(0, |l| l.len()))
            .sum();
        assert_eq!(placed, links().len());
    }

    #[test]
    fn every_reference_resolves() {
        fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
            match value {
                Value::Object(map) => {
                    if let Some(Value::String(target)) = map.get("$ref") {
                        out.push(target);
                    }
                    map.values().for_each(|v| refs(v, out));
                }
                Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let doc = crate::api::openapi_document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.len() > 50);
        for target in found {
            let pointer = target.trim_start_matches('#');
            assert!(doc.pointer(pointer).is_some(), "{target} does not resolve");
        }
        assert!(!doc.to_string().contains(CONTENT_SCHEMA), "an x-content-schema was left");
    }

    #[test]
    fn common_responses_are_on_every_operation_they_apply_to() {
        let doc = crate::api::openapi_document();
        for (path, method, operation) in operations(&doc) {
            let responses = &operation["responses"];
            assert!(responses["500"].is_object(), "{method} {path}: no 500");
            if operation.get("requestBody").is_some() {
                assert!(responses["408"].is_object(), "{method} {path}: no 408");
                assert!(responses["503"]["headers"]["Retry-After"].is_object(), "{method} {path}: no 503 Retry-After");
            }
        }
        let generate = &doc["paths"]["/api/generate"]["post"]["responses"];
        assert_eq!(generate["408"]["content"]["application/json"]["schema"]["$ref"], SEED_002_ANSWER);
        let openai = &doc["paths"]["/v1/images/generations"]["post"]["responses"];
        assert_eq!(openai["408"]["content"]["application/json"]["schema"]["$ref"], OPENAI_ERROR);
        assert_eq!(openai["500"]["content"]["application/json"]["schema"]["$ref"], OPENAI_ERROR);
        let models = &doc["paths"]["/v1/models"]["get"]["responses"];
        assert_eq!(models["500"]["content"]["application/json"]["schema"]["$ref"], OPENAI_ERROR);
        let tasks = &doc["paths"]["/api/v1/tasks"]["post"]["responses"];
        assert_eq!(tasks["408"]["content"]["application/json"]["schema"]["$ref"], ERROR_BODY);
        assert!(tasks["503"]["description"].as_str().is_some_and(|d| d.contains("shutting_down")));
    }

    #[test]
    fn event_streams_document_each_event_with_its_payload_schema() {
        let doc = crate::api::openapi_document();
        for (path, kinds) in
            [("/api/v1/tasks/{id}/events", 6), ("/api/status/{task_id}", 4), ("/api/reconstruction/events/{taskId}", 2)]
        {
            let stream = &doc["paths"][path]["get"]["responses"]["200"]["content"]["text/event-stream"]["schema"];
            let target = stream["$ref"].as_str().unwrap_or_default().trim_start_matches('#');
            let events = doc.pointer(target).and_then(|s| s["oneOf"].as_array()).cloned().unwrap_or_default();
            assert_eq!(events.len(), kinds, "{path}");
            for event in events {
                let data = &event["properties"]["data"];
                assert_eq!(data["contentMediaType"], "application/json", "{path}");
                assert!(data["contentSchema"]["$ref"].is_string(), "{path}");
                assert!(event["properties"]["event"]["enum"][0].is_string(), "{path}");
            }
        }
    }
}
