//! The authorization matrix: every documented route × {anonymous, user A, user B, admin}
//! × {open, tokens} → allowed, refused (401/403) or not found (another user's object).
//! The routes come from the OpenAPI document the router is built from, so a new route
//! without an entry in [`class`] fails this test until someone decides who may call it.

use reqwest::Method;
use serde_json::{Value, json};

use crate::{
    common::fixture,
    helpers::{ECHO_CHANNEL, TestApp},
};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Anyone, in both modes.
    Public,
    /// Only a signed worker message (no caller here has a signature).
    Signed,
    /// The task faces: anonymous callers in open mode, signed-in users in both.
    Tasks,
    /// A task face on user A's object: user B gets 404.
    Owned,
    /// Like `Owned`, where the object's owner may also get 404 (it has nothing to show).
    Opaque,
    /// Signed-in users only, in both modes.
    User,
    /// Admins only: 401 anonymous, 403 users.
    Admin,
}

fn class(method: &str, path: &str) -> Option<Class> {
    use Class::*;
    Some(match (method, path) {
        ("GET", "/health" | "/ready" | "/metrics" | "/api/v1/catalog" | "/api/v1/limits") => Public,
        ("GET", "/v1/models" | "/v1/models/{model}") => Public,
        ("GET", "/static/{file}" | "/files/{key}") => Public,
        ("GET", "/api/v1/me") | ("POST" | "DELETE", "/api/v1/session") => Public,
        ("POST", p) if p.starts_with("/api/v1/worker-callbacks/") || p.starts_with("/api/reconstruction/callback") => {
            Signed
        }
        (
            "POST",
            "/api/v1/tasks" | "/api/v1/pictures" | "/api/v1/models" | "/api/generate" | "/v1/images/generations",
        ) => Tasks,
        ("POST", "/api/reconstruction/create-from-image" | "/picture/upload") => Tasks,
        ("GET", "/api/v1/tasks" | "/api/v1/pictures" | "/picture/list/page") => Tasks,
        ("GET", "/picture/{id}") => Owned,
        // The owner gets 404 too: the task is not a text-to-image one, or has no picture yet.
        ("GET", "/v1/images/generations/{id}" | "/api/v1/tasks/{id}/thumbnail") => Opaque,
        ("GET" | "DELETE", "/api/v1/tasks/{id}") => Owned,
        ("GET", p) if p.starts_with("/api/v1/tasks/{id}/") => Owned,
        ("GET", "/api/v1/pictures/{id}" | "/api/v1/pictures/{id}/thumbnail") => Owned,
        ("GET", "/api/v1/models/{jobId}/status" | "/api/v1/models/{jobId}/result") => Owned,
        ("GET", "/api/status/{task_id}") => Owned,
        ("GET", p) if p.starts_with("/api/reconstruction/") => Owned,
        // Anonymous callers (open mode) share one secret for what they make.
        ("GET", "/api/v1/me/webhook-secret") => Tasks,
        ("GET" | "POST" | "DELETE" | "PUT", p) if p.starts_with("/api/v1/me/") => User,
        ("GET", "/api/v1/usage") => User,
        (_, p) if p.starts_with("/api/v1/admin/") => Admin,
        _ => return None,
    })
}

struct World {
    task: String,
    picture: String,
    user: String,
    a: String,
    b: String,
    admin: String,
}

impl World {
    fn fill(&self, path: &str) -> String {
        let id = if path.contains("picture") && !path.contains("tasks") { &self.picture } else { &self.task };
        let id = if path.starts_with("/api/v1/admin/users") { &self.user } else { id };
        path.replace("{id}", id)
            .replace("{jobId}", &self.task)
            .replace("{task_id}", &self.task)
            .replace("{taskId}", &self.task)
            .replace("{picture_id}", &self.picture)
            .replace("{model}", "echo")
            .replace("{name}", "echo")
            .replace("{file}", &format!("{}.glb", self.task))
            .replace("{key}", "pictures/none.png")
    }
}

async fn call(app: &TestApp, method: &str, path: &str, token: Option<&str>) -> u16 {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.client.request(method.clone(), app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        request = request.json(&json!({}));
    }
    request.send().await.unwrap().status().as_u16()
}

async fn world(app: &TestApp, open: bool) -> World {
    let admin = app
        .client
        .post(app.url("/api/v1/session"))
        .json(&json!({ "username": "root", "password": "correct horse battery" }))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    let cookie = admin.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let csrf = admin.json::<Value>().await.unwrap()["csrf_token"].as_str().unwrap().to_owned();
    let console = |method: Method, path: &str, body: Value| {
        app.client.request(method, app.url(path)).header("cookie", &cookie).header("x-csrf-token", &csrf).json(&body)
    };
    let issued: Value = console(Method::POST, "/api/v1/me/tokens", json!({"name": "admin"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin_token = issued["token"].as_str().unwrap().to_owned();
    let mut tokens = Vec::new();
    let mut user = String::new();
    for name in ["usera", "userb"] {
        let made: Value =
            console(Method::POST, "/api/v1/admin/users", json!({"username": name, "password": "12345678"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
        let id = made["id"].as_str().unwrap().to_owned();
        let issued: Value = console(Method::POST, &format!("/api/v1/admin/users/{id}/tokens"), json!({"name": "t"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tokens.push(issued["token"].as_str().unwrap().to_owned());
        if user.is_empty() {
            user = id;
        }
    }
    let form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("p.png"));
    let task: Value = app
        .client
        .post(app.url("/api/v1/tasks"))
        .bearer_auth(&tokens[0])
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = open;
    World {
        task: task["id"].as_str().unwrap().to_owned(),
        picture: task["picture"]["id"].as_str().unwrap_or_default().to_owned(),
        user,
        a: tokens[0].clone(),
        b: tokens[1].clone(),
        admin: admin_token,
    }
}

async fn matrix(mode: &str) {
    let config = format!(
        "[auth]\nmode = \"{mode}\"\n\n[admin]\nusername = \"root\"\npassword = \"correct horse battery\"\n\n{ECHO_CHANNEL}"
    );
    let app = TestApp::spawn_with(&config).await;
    let open = mode == "open";
    let world = world(&app, open).await;
    let doc = kiln::api::openapi_document();
    let mut unclassified = Vec::new();
    let mut wrong = Vec::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_ascii_uppercase();
            if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                continue;
            }
            let Some(class) = class(&method, path) else {
                unclassified.push(format!("{method} {path}"));
                continue;
            };
            let url = world.fill(path);
            // User B first, then the admin, then user A: A's own call may cancel A's task.
            let anonymous = call(&app, &method, &url, None).await;
            let b = call(&app, &method, &url, Some(&world.b)).await;
            let admin = call(&app, &method, &url, Some(&world.admin)).await;
            let a = call(&app, &method, &url, Some(&world.a)).await;
            checked += 1;
            let refused = |s: u16| s == 401 || s == 403;
            let expect = |ok: bool, what: &str, s: u16, wrong: &mut Vec<String>| {
                if !ok {
                    wrong.push(format!("{mode}: {method} {path} as {what} → {s} ({class:?})"));
                }
            };
            match class {
                Class::Public => {
                    for (who, s) in [("anonymous", anonymous), ("A", a), ("B", b), ("admin", admin)] {
                        expect(!refused(s), who, s, &mut wrong);
                    }
                }
                Class::Signed => {
                    for (who, s) in [("anonymous", anonymous), ("A", a), ("B", b), ("admin", admin)] {
                        expect(s == 401, who, s, &mut wrong);
                    }
                }
                Class::Tasks | Class::Owned | Class::Opaque => {
                    expect(
                        if open { !refused(anonymous) } else { anonymous == 401 },
                        "anonymous",
                        anonymous,
                        &mut wrong,
                    );
                    let found = |s: u16| !refused(s) && (s != 404 || class == Class::Opaque);
                    expect(found(a), "A", a, &mut wrong);
                    expect(found(admin), "admin", admin, &mut wrong);
                    if class != Class::Tasks {
                        expect(b == 404, "B", b, &mut wrong);
                        if open {
                            expect(anonymous == 404, "anonymous (not the owner)", anonymous, &mut wrong);
                        }
                    } else {
                        expect(!refused(b), "B", b, &mut wrong);
                    }
                }
                Class::User => {
                    expect(anonymous == 401, "anonymous", anonymous, &mut wrong);
                    for (who, s) in [("A", a), ("B", b), ("admin", admin)] {
                        expect(!refused(s), who, s, &mut wrong);
                    }
                }
                Class::Admin => {
                    expect(anonymous == 401, "anonymous", anonymous, &mut wrong);
                    expect(a == 403 && b == 403, "a user", a.max(b), &mut wrong);
                    expect(!refused(admin), "admin", admin, &mut wrong);
                }
            }
        }
    }
    assert!(unclassified.is_empty(), "routes without an entry in the matrix:\n{}", unclassified.join("\n"));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(checked > 40, "the matrix covered {checked} routes");
    app.stop().await;
}

#[tokio::test]
async fn every_route_answers_each_caller_as_the_matrix_says_in_open_mode() {
    matrix("open").await;
}

#[tokio::test]
async fn every_route_answers_each_caller_as_the_matrix_says_in_tokens_mode() {
    matrix("tokens").await;
}
