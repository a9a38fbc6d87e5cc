//! Accounts through the real server in `auth.mode = "tokens"`: the first admin from the
//! configuration, sign-in with a cookie and CSRF token, users and tokens made by the
//! admin, isolation between users, prices, reservations, refunds, usage, rates and the
//! per-user limit — and, in open mode, anonymous use as before.

use reqwest::{StatusCode, header};
use serde_json::{Value, json};

use crate::{
    common::fixture,
    helpers::{ECHO_CHANNEL, TestApp},
};

const TOKENS: &str = "[auth]\nmode = \"tokens\"\nsignin_attempts = 3\n\n[admin]\nusername = \"root\"\npassword = \"correct horse battery\"\n\n";

struct Console {
    client: reqwest::Client,
    csrf: String,
}

async fn sign_in(app: &TestApp, username: &str, password: &str) -> Console {
    let client = reqwest::Client::builder().cookie_store(true).build().unwrap();
    let response = client
        .post(app.url("/api/v1/session"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "sign-in of {username}");
    let cookie = response.headers().get(header::SET_COOKIE).unwrap().to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"), "{cookie}");
    let body: Value = response.json().await.unwrap();
    Console { client, csrf: body["csrf_token"].as_str().unwrap().to_owned() }
}

impl Console {
    async fn send(&self, app: &TestApp, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
        let response = self
            .client
            .request(method, app.url(path))
            .header("x-csrf-token", &self.csrf)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

async fn submit(app: &TestApp, token: &str, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut form = reqwest::multipart::Form::new()
        .part("image", reqwest::multipart::Part::bytes(fixture("vase.png")).file_name("picture.png"));
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    app.client.post(app.url("/api/v1/tasks")).bearer_auth(token).multipart(form).send().await.unwrap()
}

async fn get(app: &TestApp, token: &str, path: &str) -> (StatusCode, Value) {
    let response = app.client.get(app.url(path)).bearer_auth(token).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn wait_end(app: &TestApp, token: &str, id: &str) -> Value {
    for _ in 0..200 {
        let (_, task) = get(app, token, &format!("/api/v1/tasks/{id}")).await;
        if matches!(task["status"].as_str(), Some("succeeded" | "failed" | "canceled")) {
            return task;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("task {id} did not end");
}

/// Makes a user and a token for them through the admin's console; returns (user id, token).
async fn user_with_token(app: &TestApp, admin: &Console, name: &str, token: Value) -> (String, String) {
    let (status, user) = admin
        .send(
            app,
            reqwest::Method::POST,
            "/api/v1/admin/users",
            json!({ "username": name, "password": "password-of-" }),
        )
        .await;
    assert_eq!(status, 201, "{user}");
    let id = user["id"].as_str().unwrap().to_owned();
    let (status, issued) =
        admin.send(app, reqwest::Method::POST, &format!("/api/v1/admin/users/{id}/tokens"), token).await;
    assert_eq!(status, 201, "{issued}");
    let text = issued["token"].as_str().unwrap().to_owned();
    assert!(text.starts_with("kiln_") && text.ends_with(issued["item"]["hint"].as_str().unwrap()));
    (id, text)
}

#[tokio::test]
async fn tokens_mode_keeps_users_apart_and_charges_what_they_use() {
    let app = TestApp::spawn_with(&format!("{TOKENS}{ECHO_CHANNEL}")).await;

    // Nobody gets in without credentials; a made-up token is refused as such.
    let (status, body) = app.get_json("/api/v1/tasks").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")));
    let (status, body) = get(&app, "kiln_notatokenatallnotatokenatallnotatokenatall", "/api/v1/tasks").await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (401, Some("invalid_token")));

    // The first admin came from the configuration; a wrong password is refused.
    let wrong = app
        .client
        .post(app.url("/api/v1/session"))
        .json(&json!({ "username": "root", "password": "nope nope nope" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let admin = sign_in(&app, "root", "correct horse battery").await;

    // A session's write without the CSRF token is refused.
    let forged = admin
        .client
        .post(app.url("/api/v1/admin/users"))
        .json(&json!({"username": "x", "password": "12345678"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 403);
    assert_eq!(forged.json::<Value>().await.unwrap()["error"]["code"], "csrf_failed");

    let (a_id, a) = user_with_token(&app, &admin, "alice", json!({ "name": "ci" })).await;
    let (_b_id, b) = user_with_token(&app, &admin, "bob", json!({ "name": "laptop" })).await;

    // A user is not an admin.
    let (status, _) = get(&app, &a, "/api/v1/admin/users").await;
    assert_eq!(status, 403);

    // Free until priced: alice's task runs; bob cannot see it, the admin can.
    let response = submit(&app, &a, &[]).await;
    assert_eq!(response.status(), 202);
    let task: Value = response.json().await.unwrap();
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(wait_end(&app, &a, &id).await["status"], "succeeded");
    assert_eq!(get(&app, &b, &format!("/api/v1/tasks/{id}")).await.0, 404, "another user's task is not found");
    let (_, list) = get(&app, &b, "/api/v1/tasks").await;
    assert_eq!(list["items"].as_array().unwrap().len(), 0, "bob lists none of alice's");
    let (status, _) = admin.send(&app, reqwest::Method::GET, &format!("/api/v1/tasks/{id}"), Value::Null).await;
    assert_eq!(status, 200, "the admin sees every task");
    let cancel = app.client.delete(app.url(&format!("/api/v1/tasks/{id}"))).bearer_auth(&b).send().await.unwrap();
    assert_eq!(cancel.status(), 404, "nor cancel it");

    // Priced at 5 a task: alice, at 0 credits, is refused with her balance.
    let (status, _) = admin.send(&app, reqwest::Method::PUT, "/api/v1/admin/prices/echo", json!({"per_task": 5})).await;
    assert_eq!(status, 200);
    let refused = submit(&app, &a, &[]).await;
    assert_eq!(refused.status(), 402);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "insufficient_quota");
    assert_eq!(body["error"]["details"], json!({ "balance": 0, "price": 5 }));

    // Topped up to 12: a success costs 5, a failure is refunded.
    let (status, balance) = admin
        .send(
            &app,
            reqwest::Method::POST,
            &format!("/api/v1/admin/users/{a_id}/balance"),
            json!({"delta": 12, "note": "trial"}),
        )
        .await;
    assert_eq!((status.as_u16(), balance["balance"].as_i64()), (200, Some(12)));
    let ok: Value = submit(&app, &a, &[]).await.json().await.unwrap();
    assert_eq!(wait_end(&app, &a, ok["id"].as_str().unwrap()).await["status"], "succeeded");
    let failed: Value = submit(&app, &a, &[("params", r#"{"fail": "boom"}"#)]).await.json().await.unwrap();
    assert_eq!(wait_end(&app, &a, failed["id"].as_str().unwrap()).await["status"], "failed");
    let (_, me) = get(&app, &a, "/api/v1/me").await;
    assert_eq!(me["user"]["balance"], 7, "12 - 5 charged; the failure refunded");

    // Usage: alice sees her own records, with totals; the admin sees everyone's.
    let (_, usage) = get(&app, &a, "/api/v1/usage").await;
    assert_eq!(usage["totals"]["tasks"], 3);
    assert_eq!(usage["totals"]["charged"], 5);
    let charged: Vec<i64> = usage["items"].as_array().unwrap().iter().map(|r| r["charged"].as_i64().unwrap()).collect();
    assert_eq!(charged, vec![0, 5, 0], "newest first: the failure, the success, the free one");
    let (_, usage_b) = get(&app, &b, "/api/v1/usage").await;
    assert_eq!(usage_b["totals"]["tasks"], 0);
    let csv = app.client.get(app.url("/api/v1/usage?format=csv")).bearer_auth(&a).send().await.unwrap();
    assert_eq!(csv.headers()[header::CONTENT_TYPE], "text/csv; charset=utf-8");
    let text = csv.text().await.unwrap();
    assert_eq!(text.lines().count(), 4, "a header and three rows:\n{text}");
    assert!(text.lines().next().unwrap().starts_with("task_id,created_at"));

    // The audit log has the admin's actions, with where they came from.
    let (_, audit) =
        admin.send(&app, reqwest::Method::GET, "/api/v1/admin/audit?action=balance.add", Value::Null).await;
    let entry = &audit["items"][0];
    assert_eq!((entry["actor"].as_str(), entry["target"].as_str()), (Some("root"), Some(a_id.as_str())));
    assert_eq!(entry["detail"]["after"], 12);
    assert_eq!(entry["ip"], "127.0.0.1");
    app.stop().await;
}

#[tokio::test]
async fn a_token_is_held_to_its_models_rate_and_cap_and_a_user_to_their_limit() {
    let app = TestApp::spawn_with(&format!("{TOKENS}{ECHO_CHANNEL}")).await;
    let admin = sign_in(&app, "root", "correct horse battery").await;
    let (_, narrow) = user_with_token(&app, &admin, "carol", json!({ "name": "narrow", "models": ["other"] })).await;
    let refused = submit(&app, &narrow, &[]).await;
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "model_not_allowed");

    let (_, slow) = user_with_token(&app, &admin, "dave", json!({ "name": "slow", "rate_per_minute": 2 })).await;
    for n in 0..2 {
        let (status, _) = get(&app, &slow, "/api/v1/tasks").await;
        assert_eq!(status, 200, "request {n}");
    }
    let limited = app.client.get(app.url("/api/v1/tasks")).bearer_auth(&slow).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers()[header::RETRY_AFTER].to_str().unwrap().parse::<u64>().unwrap() >= 1);
    assert!(limited.headers()["ratelimit"].to_str().unwrap().starts_with("limit=2, remaining=0"));
    assert_eq!(limited.headers()["ratelimit-policy"], "2;w=60");

    // A cap of 4 at 3 a task: one task, then spend_cap_reached.
    let (status, _) = admin.send(&app, reqwest::Method::PUT, "/api/v1/admin/prices/echo", json!({"per_task": 3})).await;
    assert_eq!(status, 200);
    let (eve_id, capped) = user_with_token(&app, &admin, "eve", json!({ "name": "capped", "spend_cap": 4 })).await;
    admin
        .send(&app, reqwest::Method::POST, &format!("/api/v1/admin/users/{eve_id}/balance"), json!({"set": 100}))
        .await;
    assert_eq!(submit(&app, &capped, &[]).await.status(), 202);
    let over = submit(&app, &capped, &[]).await;
    assert_eq!(over.status(), 402);
    assert_eq!(over.json::<Value>().await.unwrap()["error"]["code"], "spend_cap_reached");

    // Two tasks at once at most for frank.
    let (frank_id, frank) = user_with_token(&app, &admin, "frank", json!({ "name": "t" })).await;
    let (status, _) = admin
        .send(&app, reqwest::Method::PATCH, &format!("/api/v1/admin/users/{frank_id}"), json!({"max_active": 2}))
        .await;
    assert_eq!(status, 200);
    admin
        .send(&app, reqwest::Method::POST, &format!("/api/v1/admin/users/{frank_id}/balance"), json!({"set": 100}))
        .await;
    let slow_task = [("params", r#"{"steps": 50, "step_ms": 100}"#)];
    for n in 0..2 {
        let response = submit(&app, &frank, &slow_task).await;
        let status = response.status();
        let text = response.text().await.unwrap();
        let (_, mine) = get(&app, &frank, "/api/v1/tasks").await;
        assert_eq!(status, 202, "task {n}: {text} {mine}");
    }
    let third = submit(&app, &frank, &slow_task).await;
    assert_eq!(third.status(), 429);
    assert_eq!(third.json::<Value>().await.unwrap()["error"]["code"], "too_many_active_tasks");
    app.stop().await;
}

#[tokio::test]
async fn concurrent_submissions_take_exactly_what_the_balance_covers() {
    let app = TestApp::spawn_with(&format!(
        "{TOKENS}[[channels]]\nname = \"echo\"\ntype = \"echo\"\nmax_concurrency = 4\nmax_queue = 1000\nmodels = [{{ name = \"echo\", kind = \"image_to_3d\" }}]\n"
    ))
    .await;
    let admin = sign_in(&app, "root", "correct horse battery").await;
    admin.send(&app, reqwest::Method::PUT, "/api/v1/admin/prices/echo", json!({"per_task": 2})).await;
    let (id, token) = user_with_token(&app, &admin, "grace", json!({ "name": "burst" })).await;
    admin.send(&app, reqwest::Method::POST, &format!("/api/v1/admin/users/{id}/balance"), json!({"set": 100})).await;

    let submissions = (0..200).map(|_| {
        let app = &app;
        let token = token.clone();
        async move { submit(app, &token, &[("params", r#"{"steps": 1, "step_ms": 1}"#)]).await.status().as_u16() }
    });
    let statuses = futures::future::join_all(submissions).await;
    let accepted = statuses.iter().filter(|&&s| s == 202).count();
    let refused = statuses.iter().filter(|&&s| s == 402).count();
    assert_eq!((accepted, refused), (50, 150), "100 credits at 2 a task: {statuses:?}");
    let (_, me) = get(&app, &token, "/api/v1/me").await;
    assert_eq!(me["user"]["balance"], 0);

    // Every accepted task ends and is charged once: the balance stays 0, usage says 100.
    for _ in 0..400 {
        let (_, usage) = get(&app, &token, "/api/v1/usage?outcome=pending").await;
        if usage["totals"]["tasks"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (_, usage) = get(&app, &token, "/api/v1/usage").await;
    assert_eq!((usage["totals"]["tasks"].as_u64(), usage["totals"]["charged"].as_i64()), (Some(50), Some(100)));
    let (_, me) = get(&app, &token, "/api/v1/me").await;
    assert_eq!(me["user"]["balance"], 0);
    app.stop().await;
}

#[tokio::test]
async fn open_mode_takes_anonymous_callers_and_ignores_an_openai_placeholder_key() {
    let app = TestApp::spawn_with(ECHO_CHANNEL).await;
    let (status, me) = app.get_json("/api/v1/me").await;
    assert_eq!((status, me["auth_mode"].as_str(), me["user"].is_null()), (200, Some("open"), true));
    let response = submit(&app, "sk-placeholder", &[]).await;
    assert_eq!(response.status(), 202, "a non-kiln bearer is not a credential in open mode");
    let (status, _) = get(&app, "kiln_notatokenatallnotatokenatallnotatokenatall", "/api/v1/tasks").await;
    assert_eq!(status, 401, "a kiln token that is wrong is refused even in open mode");
    let (status, body) = app.get_json("/api/v1/admin/users").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "the console needs an admin");
    app.stop().await;
}

#[tokio::test]
async fn a_revoked_token_stops_working_at_once_and_revoking_is_idempotent_for_its_owner_only() {
    let app = TestApp::spawn_with(&format!("{TOKENS}{ECHO_CHANNEL}")).await;
    let admin = sign_in(&app, "root", "correct horse battery").await;
    let (_, ann) = user_with_token(&app, &admin, "ann", json!({ "name": "laptop" })).await;
    let (_, ben) = user_with_token(&app, &admin, "ben", json!({ "name": "phone" })).await;
    let (_, mine) = get(&app, &ann, "/api/v1/me/tokens").await;
    let id = mine["items"][0]["id"].as_str().unwrap().to_owned();
    let delete = |token: &str, path: String| app.client.delete(app.url(&path)).bearer_auth(token).send();

    // Another user's token is not there for ben; an unknown id is not there for anyone.
    let refused = delete(&ben, format!("/api/v1/me/tokens/{id}")).await.unwrap();
    assert_eq!(refused.status(), 404);
    let unknown = delete(&ann, format!("/api/v1/me/tokens/{}", uuid::Uuid::now_v7())).await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(get(&app, &ann, "/api/v1/tasks").await.0, 200, "ann's token still works");

    let revoked = delete(&ann, format!("/api/v1/me/tokens/{id}")).await.unwrap();
    assert_eq!(revoked.status(), 204);
    let (status, body) = get(&app, &ann, "/api/v1/tasks").await;
    assert_eq!((status.as_u16(), body["error"]["code"].as_str()), (401, Some("invalid_token")));
    // The admin sees it revoked; revoking it again is done already, and audited once.
    let (_, all) = admin.send(&app, reqwest::Method::GET, "/api/v1/admin/tokens", Value::Null).await;
    let listed = all["items"].as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).expect("listed");
    assert!(listed["revoked_at"].is_string(), "{listed}");
    let (status, _) =
        admin.send(&app, reqwest::Method::DELETE, &format!("/api/v1/admin/tokens/{id}"), Value::Null).await;
    assert_eq!(status, 204);
    let (_, audit) =
        admin.send(&app, reqwest::Method::GET, "/api/v1/admin/audit?action=token.revoke", Value::Null).await;
    let entries: Vec<&Value> =
        audit["items"].as_array().unwrap().iter().filter(|e| e["target"] == id.as_str()).collect();
    assert_eq!(entries.len(), 1, "{audit}");
    // Ben's token was never touched.
    assert_eq!(get(&app, &ben, "/api/v1/tasks").await.0, 200);
    app.stop().await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_audit_log_and_the_signin_limit_see_the_forwarded_address() {
    use crate::helpers::TASKS;
    for (trusted, expected) in [(true, "198.51.100.7"), (false, "127.0.0.1")] {
        let server = if trusted { "trusted_proxies = [\"127.0.0.0/8\"]" } else { "" };
        let app = TestApp::spawn_full(server, TASKS, &format!("{TOKENS}{ECHO_CHANNEL}")).await;
        let admin = sign_in(&app, "root", "correct horse battery").await;
        let made = admin
            .client
            .post(app.url("/api/v1/admin/users"))
            .header("x-csrf-token", &admin.csrf)
            .header("x-forwarded-for", "10.9.9.9, 198.51.100.7")
            .json(&json!({ "username": "fwd", "password": "a long password" }))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), 201);
        let (_, audit) =
            admin.send(&app, reqwest::Method::GET, "/api/v1/admin/audit?action=user.create", Value::Null).await;
        assert_eq!(audit["items"][0]["ip"], expected, "trusted: {trusted}; {audit}");
        app.stop().await;
    }
}

/// Replicas starting together on an empty database each ask for the first admin (with
/// the same settings or not): one admin is made, and every other asker finds it rather
/// than failing to start. On PostgreSQL (`make api-postgres`) the askers race on one
/// server as separate processes would.
#[tokio::test]
async fn first_admins_asked_for_at_once_make_exactly_one() {
    let app = TestApp::spawn().await;
    let db = app.gateway.db();
    let password = kiln::config::Secret::new("first admin password");
    let names = ["root", "root", "boss", "root", "chief", "boss"];
    let made =
        futures::future::join_all(names.iter().map(|name| kiln::accounts::ensure_first_admin(&**db, name, &password)))
            .await;
    let created: Vec<_> = made
        .iter()
        .filter_map(|m| match m {
            Ok(kiln::accounts::FirstAdmin::Created(user)) => Some(user.username.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(created.len(), 1, "{made:?}");
    assert!(made.iter().all(Result::is_ok), "the others find it without an error: {made:?}");
    assert_eq!(db.count_admins().await.expect("count"), 1);
    app.stop().await;
}
