//! The channel routes of the admin face over HTTP, as the console uses them: the forms,
//! a ModelScope channel made, tested, used, edited, disabled and deleted on the fake
//! ModelScope while kiln runs; its key write-only and masked; field problems named;
//! file channels read-only; every change audited without the key; users refused.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::{Value, json};

use crate::{
    common::fakes::{FakeModelScope, MODELSCOPE_TOKEN, ModelScopeOptions, Route},
    helpers::{ECHO_CHANNEL, TestApp},
};

const ADMIN: &str =
    "[auth]\nmode = \"tokens\"\n\n[admin]\nusername = \"root\"\npassword = \"correct horse battery\"\n\n";

struct Console {
    client: reqwest::Client,
    csrf: String,
}

impl Console {
    async fn sign_in(app: &TestApp) -> Console {
        let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
        let response = client
            .post(app.url("/api/v1/session"))
            .json(&json!({ "username": "root", "password": "correct horse battery" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        Console { client, csrf: body["csrf_token"].as_str().unwrap().to_owned() }
    }

    /// Sends a request; returns the status, the body as JSON and the body's text.
    async fn send(
        &self,
        app: &TestApp,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value, String) {
        let mut request = self.client.request(method, app.url(path)).header("x-csrf-token", &self.csrf);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }
}

fn scope(fake: &FakeModelScope, secret: Option<&str>) -> Value {
    let mut channel = json!({
        "name": "scope",
        "type": "modelscope",
        "models": [{ "name": "scope-image", "kind": "text_to_image", "upstream": "Qwen/Qwen-Image" }],
        "max_concurrency": 2,
        "max_queue": 10,
        "options": { "base_url": fake.base_url(), "poll_interval": "50ms", "poll_max_interval": "100ms", "health_interval": "0s" },
    });
    if let Some(secret) = secret {
        channel["secret"] = json!(secret);
    }
    channel
}

fn find<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["items"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap_or_else(|| panic!("{name} in {list}"))
}

async fn wait_end(app: &TestApp, console: &Console, id: &str) -> Value {
    for _ in 0..200 {
        let (_, task, _) = console.send(app, Method::GET, &format!("/api/v1/tasks/{id}"), None).await;
        if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
            return task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("task {id} did not end");
}

#[tokio::test]
async fn the_forms_list_each_provider_type_with_its_key_fields_and_base_urls() {
    let app = TestApp::spawn_with(&format!("{ADMIN}{ECHO_CHANNEL}")).await;
    let console = Console::sign_in(&app).await;
    let (status, types, _) = console.send(&app, Method::GET, "/api/v1/admin/channel-types", None).await;
    assert_eq!(status, 200, "{types}");
    let of = |name: &str| {
        types["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    let modelscope = of("modelscope");
    let fields = modelscope["fields"].as_array().unwrap();
    assert_eq!(fields[0]["name"], "secret");
    assert_eq!(fields[0]["kind"], "secret");
    let base = fields.iter().find(|f| f["name"] == "base_url").expect("a base_url field");
    assert_eq!(base["kind"], "url");
    assert_eq!(modelscope["default_base_url"], "https://api-inference.modelscope.cn");
    assert!(
        modelscope["base_urls"].as_array().unwrap().iter().any(|u| u["url"] == "https://api-inference.modelscope.cn")
    );
    let tripo = of("tripo");
    let urls: Vec<&str> = tripo["base_urls"].as_array().unwrap().iter().filter_map(|u| u["url"].as_str()).collect();
    assert!(urls.contains(&"https://openapi.tripo3d.ai") && urls.contains(&"https://openapi.tripo3d.com"), "{urls:?}");
    for t in types["items"].as_array().unwrap() {
        for f in t["fields"].as_array().unwrap() {
            let kind = f["kind"].as_str().unwrap();
            assert!(
                ["string", "url", "secret", "int", "number", "bool", "json", "enum", "list", "duration"]
                    .contains(&kind),
                "{f}"
            );
            assert_eq!(kind == "enum", f["options"].is_array(), "{f}");
        }
    }
    app.stop().await;
}

#[tokio::test]
async fn a_channel_is_made_tested_used_edited_disabled_and_deleted_over_http_with_its_key_never_shown() {
    let fake = FakeModelScope::start(
        ModelScopeOptions::default().timeline(Duration::from_millis(40), Duration::from_millis(80)),
    );
    let app = TestApp::spawn_with(&format!("{ADMIN}{ECHO_CHANNEL}")).await;
    let console = Console::sign_in(&app).await;

    // Tested before it is saved: a wrong key is said plainly, the right one works.
    let (status, tested, _) =
        console.send(&app, Method::POST, "/api/v1/admin/channel-tests", Some(scope(&fake, Some("ms-wrong")))).await;
    assert_eq!(status, 200, "{tested}");
    assert_eq!(tested["ok"], false, "{tested}");
    let (_, tested, _) = console
        .send(&app, Method::POST, "/api/v1/admin/channel-tests", Some(scope(&fake, Some(MODELSCOPE_TOKEN))))
        .await;
    assert_eq!(tested["ok"], true, "{tested}");

    let (status, made, text) =
        console.send(&app, Method::POST, "/api/v1/admin/channels", Some(scope(&fake, Some(MODELSCOPE_TOKEN)))).await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert!(!text.contains(MODELSCOPE_TOKEN), "the key never comes back: {text}");
    assert_eq!(made["source"], "database");
    assert_eq!(made["type"], "modelscope");
    assert_eq!(
        (made["live"].as_bool(), made["enabled"].as_bool(), made["read_only"].as_bool()),
        (Some(true), Some(true), Some(false))
    );
    assert!(made["config"]["secret"].as_str().is_some_and(|s| s.starts_with("••••")), "{made}");
    assert_eq!(made["stats"]["queued"], 0);

    let (status, list, text) = console.send(&app, Method::GET, "/api/v1/admin/channels", None).await;
    assert_eq!(status, 200);
    assert!(!text.contains(MODELSCOPE_TOKEN));
    assert_eq!(find(&list, "echo")["source"], "file");
    assert_eq!(find(&list, "echo")["read_only"], true);
    assert_eq!(find(&list, "scope")["id"], made["id"]);

    let (status, tested, _) = console.send(&app, Method::POST, "/api/v1/admin/channels/scope/test", None).await;
    assert_eq!((status.as_u16(), tested["ok"].as_bool()), (200, Some(true)), "{tested}");
    assert!(tested["message"].as_str().unwrap().contains("ModelScope"), "{tested}");

    // The channel serves its model at once, and its last hour shows the run.
    let (status, task, _) = console
        .send(&app, Method::POST, "/api/v1/tasks", Some(json!({ "model": "scope-image", "prompt": "a red lamp" })))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{task}");
    let task = wait_end(&app, &console, task["id"].as_str().unwrap()).await;
    assert_eq!(task["status"], "succeeded", "{task}");
    assert_eq!(task["channel"], "scope", "{task}");
    let (_, one, _) = console.send(&app, Method::GET, "/api/v1/admin/channels/scope", None).await;
    assert_eq!(one["stats"]["succeeded"], 1, "{one}");
    assert_eq!(one["stats"]["success_rate"], 1.0);
    assert!(one["stats"]["p50_ms"].as_u64().is_some(), "{one}");

    // An edit sending the mask back keeps the key; the test still passes.
    let mut edited = one["config"].clone();
    edited["max_queue"] = json!(3);
    let (status, after, _) =
        console.send(&app, Method::PUT, "/api/v1/admin/channels/scope", Some(edited.clone())).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["config"]["max_queue"], 3);
    let (_, tested, _) = console.send(&app, Method::POST, "/api/v1/admin/channels/scope/test", None).await;
    assert_eq!(tested["ok"], true, "the mask kept the key: {tested}");
    // So does a form test of the stored channel.
    let (_, tested, _) =
        console.send(&app, Method::POST, "/api/v1/admin/channel-tests?channel=scope", Some(edited.clone())).await;
    assert_eq!(tested["ok"], true, "{tested}");
    // A name cannot change; field problems name their field.
    let mut renamed = edited.clone();
    renamed["name"] = json!("other");
    let (status, refused, _) = console.send(&app, Method::PUT, "/api/v1/admin/channels/scope", Some(renamed)).await;
    assert_eq!((status.as_u16(), refused["error"]["code"].as_str()), (400, Some("invalid_channel")), "{refused}");
    assert_eq!(refused["error"]["details"]["problems"][0]["field"], "name");
    let mut bad = edited.clone();
    bad["models"][0]["kind"] = json!("video");
    let (status, refused, _) = console.send(&app, Method::PUT, "/api/v1/admin/channels/scope", Some(bad)).await;
    assert_eq!(status, 400, "{refused}");
    let problems = refused["error"]["details"]["problems"].as_array().unwrap();
    assert!(problems.iter().any(|p| p["field"].as_str().is_some_and(|f| f.starts_with("models"))), "{refused}");

    // Disabled: it takes no new task; enabled again, it does.
    let (status, off, _) =
        console.send(&app, Method::PATCH, "/api/v1/admin/channels/scope", Some(json!({ "enabled": false }))).await;
    assert_eq!((status.as_u16(), off["enabled"].as_bool()), (200, Some(false)), "{off}");
    let (status, refused, _) = console
        .send(&app, Method::POST, "/api/v1/tasks", Some(json!({ "model": "scope-image", "prompt": "a lamp" })))
        .await;
    assert!(status.is_client_error() || status == StatusCode::SERVICE_UNAVAILABLE, "{status} {refused}");
    let (_, on, _) =
        console.send(&app, Method::PATCH, "/api/v1/admin/channels/scope", Some(json!({ "enabled": true }))).await;
    assert_eq!(on["enabled"], true);

    // File channels are read-only; unknown ones 404.
    let (status, refused, _) =
        console.send(&app, Method::PATCH, "/api/v1/admin/channels/echo", Some(json!({ "enabled": false }))).await;
    assert_eq!((status.as_u16(), refused["error"]["code"].as_str()), (409, Some("channel_read_only")));
    let (status, refused, _) = console.send(&app, Method::DELETE, "/api/v1/admin/channels/echo", None).await;
    assert_eq!((status.as_u16(), refused["error"]["code"].as_str()), (409, Some("channel_read_only")));
    let (status, refused, _) = console.send(&app, Method::DELETE, "/api/v1/admin/channels/nobody", None).await;
    assert_eq!((status.as_u16(), refused["error"]["code"].as_str()), (404, Some("channel_not_found")));

    let (status, deleted, _) = console.send(&app, Method::DELETE, "/api/v1/admin/channels/scope", None).await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted["channel"]["name"], "scope");
    assert_eq!(
        (deleted["moved"].as_array().map(Vec::len), deleted["failed"].as_array().map(Vec::len)),
        (Some(0), Some(0))
    );
    let (_, list, _) = console.send(&app, Method::GET, "/api/v1/admin/channels", None).await;
    assert!(list["items"].as_array().unwrap().iter().all(|c| c["name"] != "scope"));
    assert!(fake.count(Route::Models) >= 4, "each test made a real call");

    // Every change is in the audit log, without the key.
    let (_, audit, text) = console.send(&app, Method::GET, "/api/v1/admin/audit?limit=100", None).await;
    assert!(!text.contains(MODELSCOPE_TOKEN), "{text}");
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
    for action in ["channel.create", "channel.update", "channel.disable", "channel.enable", "channel.delete"] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
    let create = audit["items"].as_array().unwrap().iter().find(|e| e["action"] == "channel.create").unwrap();
    assert_eq!(create["target"], "scope");
    assert_eq!(create["detail"]["secret"], "set", "{create}");
    app.stop().await;
}

#[tokio::test]
async fn users_and_strangers_cannot_touch_channels() {
    let app = TestApp::spawn_with(&format!("{ADMIN}{ECHO_CHANNEL}")).await;
    let console = Console::sign_in(&app).await;
    let (_, user, _) = console
        .send(
            &app,
            Method::POST,
            "/api/v1/admin/users",
            Some(json!({ "username": "ann", "password": "a long password" })),
        )
        .await;
    let (_, issued, _) = console
        .send(
            &app,
            Method::POST,
            &format!("/api/v1/admin/users/{}/tokens", user["id"].as_str().unwrap()),
            Some(json!({ "name": "t" })),
        )
        .await;
    let token = issued["token"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, "/api/v1/admin/channels"),
        (Method::POST, "/api/v1/admin/channels"),
        (Method::POST, "/api/v1/admin/channels/echo/test"),
    ] {
        let as_user =
            app.client.request(method.clone(), app.url(path)).bearer_auth(token).json(&json!({})).send().await.unwrap();
        assert_eq!(as_user.status(), 403, "{method} {path}");
        let anonymous = app.client.request(method.clone(), app.url(path)).json(&json!({})).send().await.unwrap();
        assert_eq!(anonymous.status(), 401, "{method} {path}");
    }
    // A session's write without its CSRF token is refused before anything happens.
    let forged = console
        .client
        .post(app.url("/api/v1/admin/channels"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(json!({ "name": "x", "type": "echo", "models": [] }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    let (_, list, _) = console.send(&app, Method::GET, "/api/v1/admin/channels", None).await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "nothing was made: {list}");
    app.stop().await;
}
