//! The quota crash scenario (issue 11: "a SIGKILL mid-way loses no credit and charges
//! none twice"). The real binary runs in `auth.mode = "tokens"` with its first admin
//! from `KILN_ADMIN__USERNAME`/`KILN_ADMIN__PASSWORD`, in front of three fake upstreams
//! (ModelScope, Tripo, an OpenAI image API) that take a second or so per job and fail
//! about a third of them. The admin makes three users over the HTTP API, prices the
//! three models, sets balances (one too small to last, one token with a spending cap)
//! and gives each user an API token. The users then submit on the native API and the
//! OpenAI face, some with an `Idempotency-Key` retried across kills, and cancel some of
//! their tasks; the admin tops one balance up now and then and reprices one model
//! midway; and the server is SIGKILLed and started again while submissions arrive and
//! tasks run. After the drain, against the database (read-only) and the API:
//!
//! - every task of a user has exactly one usage record, settled with the task's outcome;
//!   its reservation was the price at the time (per task + per image × `n`); a succeeded
//!   task was charged exactly that (for the images it made), any other end nothing;
//! - each balance is what the audited balance changes made it, less the sum charged;
//!   the API says the same; each token's `spent` is the sum charged through it, within
//!   its cap; no balance or `spent` was ever seen negative;
//! - a 402 (`insufficient_quota`, `spend_cap_reached`) named the right price and left no
//!   task behind: every task in the database was accepted, or its answer was lost to a
//!   kill; an `Idempotency-Key` made one task, however often it was sent;
//! - `GET /api/v1/usage` agrees with the database, record for record and in its totals.
//!
//! Settings: `KILN_CAMPAIGN_SEED` (printed; replays the choices, not the timing),
//! `KILN_CAMPAIGN_QUOTA_KILLS` (12).

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    common::{
        KilnProcess,
        fakes::{
            FakeModelScope, FakeOpenAi, FakeTripo, Fault, MODELSCOPE_TOKEN, ModelScopeOptions, OPENAI_KEY,
            OpenAiOptions, Outcome, Route, TRIPO_KEY, TripoOptions,
        },
        log_tail,
    },
    support::{Rng, ServerDir, free_port, seed, setting},
};

const TASKS: &str = "lease = \"2s\"\npoll_interval = \"200ms\"";

const ADMIN: &str = "root";
const ADMIN_PASSWORD: &str = "quota campaign admin";

/// The models and their prices: (model, per task, per image).
const PRICES: [(&str, i64, i64); 3] = [("qwen-image", 2, 3), ("tripo-text", 6, 4), ("dall-e-2", 1, 2)];

/// The users: name, the balance set at the start, their token's spending cap. `ann`
/// runs out (402 `insufficient_quota`), `cyd`'s token reaches its cap before the
/// balance runs out (402 `spend_cap_reached`), `bob` has plenty.
const USERS: [(&str, i64, Option<i64>); 3] = [("ann", 40, None), ("bob", 400, None), ("cyd", 150, Some(90))];

/// Clients per user, each with the user's token: two, so that a user's submissions
/// overlap (and race for the last credits) now and then.
const CLIENTS_PER_USER: usize = 2;

/// Credits the admin adds to `ann` now and then, and how many times at most.
const TOP_UP: i64 = 10;
const TOP_UPS: usize = 3;

/// The share of upstream jobs that fail, in percent.
const FAILING: u64 = 30;

/// How long any one request may take before it counts as a hang.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The tasks' end states.
const TERMINAL: [&str; 3] = ["succeeded", "failed", "canceled"];

/// The price the admin gives one model while the campaign runs, so that tasks queued
/// before and after it are charged what they reserved.
const NEW_PRICE: (&str, i64, i64) = ("qwen-image", 2, 4);

/// The watcher's rounds (0.15–0.4 s each) before it changes the price.
const PRICE_CHANGE_ROUND: u32 = 12;

fn price(model: &str) -> (i64, i64) {
    PRICES.iter().find(|(m, _, _)| *m == model).map_or((0, 0), |(_, t, i)| (*t, *i))
}

/// The prices a model may have had: the first one, and the new one for its model.
fn prices(model: &str) -> Vec<(i64, i64)> {
    let mut all = vec![price(model)];
    if model == NEW_PRICE.0 {
        all.push((NEW_PRICE.1, NEW_PRICE.2));
    }
    all
}

/// What queuing a task reserves at a price: per task, and `n` images (0 for a 3D task,
/// which asks for none: its per-image price never counts).
fn reservation((per_task, per_image): (i64, i64), n: i64) -> i64 {
    per_task + per_image * n
}

/// How a kill moment is chosen; each server lives 0.5–2.5 s before it is looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Once a task is running, plus up to 300 ms: kills between claims, polls and ends.
    Running,
    /// The moment a submission is seen in flight: kills around the enqueue
    /// transaction, where credits are reserved.
    Submitting,
    /// Within 150 ms of the start, as interrupted tasks are claimed again.
    Recovery,
    /// At a random time up to a second later.
    Random,
}

struct Kill {
    moment: Moment,
    submitting: usize,
    running: Option<usize>,
}

/// A user as the admin made them.
struct Account {
    name: &'static str,
    id: String,
    token: String,
    token_id: String,
    cap: Option<i64>,
}

#[derive(Debug, Default, Clone)]
struct UserLedger {
    /// Tasks a 202 answered: id → model.
    accepted: BTreeMap<String, &'static str>,
    /// Tasks whose cancel was answered 200.
    canceled: BTreeSet<String>,
    /// Keys answered 202, and every task id given for each.
    keys: BTreeMap<String, BTreeSet<String>>,
    /// Submission tries, the repeats of keyed ones included.
    sent: u32,
    /// Submissions without a key whose answer a kill lost: each may have made a task.
    lost_unkeyed: u32,
    /// Keyed submissions sent again after a lost answer.
    retried: u32,
    busy: u32,
    insufficient: u32,
    capped: u32,
    /// Cancels sent (answered 200 or not).
    cancels: u32,
}

#[derive(Default)]
struct Ledger {
    users: Vec<UserLedger>,
    /// Answers that broke the API's contract.
    broken: Vec<String>,
    /// Balances or `spent` seen below zero (or over a cap) while the campaign ran.
    sightings: Vec<String>,
    samples: u32,
    price_changed: bool,
    top_ups_sent: u32,
    top_ups_answered: u32,
}

struct Shared {
    base: String,
    client: reqwest::Client,
    /// The admin's `kiln_session=…` cookie and the session's CSRF token.
    cookie: String,
    csrf: String,
    accounts: Vec<Account>,
    stop: AtomicBool,
    submitting: AtomicUsize,
    next_key: AtomicUsize,
    seed: u64,
    ledger: Mutex<Ledger>,
}

/// What a try got.
enum Sent {
    /// Status, whether `X-Kiln-Task-Id` was set, and the JSON body (or null).
    Answer(u16, bool, Value),
    /// No answer: refused connection, or reset by a kill.
    Lost,
}

/// Counts a submission as in flight while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn user(&self, who: usize, f: impl FnOnce(&mut UserLedger)) {
        f(&mut self.ledger().users[who]);
    }

    fn broke(&self, what: String) {
        self.ledger().broken.push(what);
    }

    /// An admin request: the session cookie, and the CSRF token on writes.
    fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let write = method != reqwest::Method::GET;
        let request = self.client.request(method, self.url(path)).header("Cookie", &self.cookie);
        if write { request.header("X-CSRF-Token", &self.csrf) } else { request }
    }

    async fn send(&self, request: reqwest::RequestBuilder, submission: bool) -> Sent {
        let _in_flight = submission.then(|| InFlight::new(&self.submitting));
        let response = match request.send().await {
            Ok(response) => response,
            Err(err) => return self.lost(err),
        };
        let status = response.status().as_u16();
        let task_header = response.headers().contains_key("x-kiln-task-id");
        match response.bytes().await {
            Ok(body) => Sent::Answer(status, task_header, serde_json::from_slice(&body).unwrap_or(Value::Null)),
            Err(err) => self.lost(err),
        }
    }

    fn lost(&self, err: reqwest::Error) -> Sent {
        if err.is_timeout() {
            self.broke(format!("no answer within {REQUEST_TIMEOUT:?} (a hang, not a kill): {err}"));
        }
        Sent::Lost
    }

    /// An admin GET whose answer is needed; None while the server is down.
    async fn admin_get(&self, path: &str) -> Option<Value> {
        let response = self.admin(reqwest::Method::GET, path).timeout(Duration::from_secs(5)).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }
}

fn channels(modelscope: &FakeModelScope, tripo: &FakeTripo, openai: &FakeOpenAi) -> String {
    format!(
        r#"[auth]
mode = "tokens"

[[channels]]
name = "modelscope"
type = "modelscope"
secret = "{MODELSCOPE_TOKEN}"
max_concurrency = 4
max_queue = 40
deadline = "20s"
models = [{{ name = "qwen-image", kind = "text_to_image", upstream = "Qwen/Qwen-Image" }}]
[channels.options]
base_url = "{modelscope}"
poll_interval = "100ms"
poll_max_interval = "200ms"
health_interval = "0s"

[[channels]]
name = "tripo"
type = "tripo"
secret = "{TRIPO_KEY}"
max_concurrency = 4
max_queue = 40
deadline = "20s"
models = [{{ name = "tripo-text", kind = "text_to_3d", upstream = "v3.1-20260211" }}]
[channels.options]
base_url = "{tripo}"
poll_interval = "100ms"
poll_max_interval = "200ms"
requests_per_minute = 6000
health_interval = "0s"

[[channels]]
name = "openai"
type = "openai_images"
secret = "{OPENAI_KEY}"
max_concurrency = 3
max_queue = 40
deadline = "20s"
models = [{{ name = "dall-e-2", kind = "text_to_image" }}]
[channels.options]
base_url = "{openai}/v1"
"#,
        modelscope = modelscope.base_url(),
        tripo = tripo.base_url(),
        openai = openai.base_url(),
    )
}

/// Fakes that take a second or so per job and fail about `FAILING` % of them, in an
/// order the seed decides (one outcome per job created upstream).
fn fakes(rng: &mut Rng) -> (FakeModelScope, FakeTripo, FakeOpenAi) {
    let modelscope = FakeModelScope::start(
        ModelScopeOptions::default().timeline(Duration::from_millis(200), Duration::from_secs(1)),
    );
    let tripo = FakeTripo::start(
        TripoOptions::default()
            .key(TRIPO_KEY, 1_000_000)
            .timeline(Duration::from_millis(200), Duration::from_millis(1200)),
    );
    let openai = FakeOpenAi::start(OpenAiOptions::default().latency(Duration::from_millis(700)));
    for _ in 0..3000 {
        modelscope.push_outcome(if rng.chance(FAILING) {
            Outcome::failed(0, "the prompt was refused")
        } else {
            Outcome::Success
        });
        tripo.push_outcome(if rng.chance(FAILING) {
            Outcome::failed(2008, "content policy")
        } else {
            Outcome::Success
        });
        // A zero delay is no fault at all: it keeps the queue's order for the failures.
        openai.push_fault(
            Route::Create,
            if rng.chance(FAILING) {
                Fault::status(400, 0, "Your request was rejected as a result of our safety system.")
            } else {
                Fault::Delay(Duration::ZERO)
            },
        );
    }
    (modelscope, tripo, openai)
}

/// Signs the admin in; returns the session cookie (`kiln_session=…`) and CSRF token.
async fn sign_in(client: &reqwest::Client, base: &str) -> (String, String) {
    let response = client
        .post(format!("{base}/api/v1/session"))
        .json(&json!({"username": ADMIN, "password": ADMIN_PASSWORD}))
        .send()
        .await
        .expect("POST /api/v1/session");
    let status = response.status();
    let cookie = response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("kiln_session="))
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let (Some(cookie), Some(csrf)) = (cookie, body["csrf_token"].as_str()) else {
        panic!("the first admin from KILN_ADMIN__* could not sign in: {status} {body}");
    };
    (cookie, csrf.to_owned())
}

/// An admin write during set-up, which must succeed.
async fn setup_call(shared: &Shared, method: reqwest::Method, path: &str, body: Value) -> Value {
    let response = shared.admin(method.clone(), path).json(&body).send().await.expect("set-up request");
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{method} {path} {body}: {status} {answer}");
    answer
}

/// Users, prices, balances and tokens, through the admin's API.
async fn set_up(shared: &mut Shared) {
    for (model, per_task, per_image) in PRICES {
        let path = format!("/api/v1/admin/prices/{model}");
        setup_call(shared, reqwest::Method::PUT, &path, json!({"per_task": per_task, "per_image": per_image})).await;
    }
    for (name, balance, cap) in USERS {
        let user = setup_call(
            shared,
            reqwest::Method::POST,
            "/api/v1/admin/users",
            json!({"username": name, "password": format!("{name} quota password"), "role": "user"}),
        )
        .await;
        let id = user["id"].as_str().expect("user id").to_owned();
        let path = format!("/api/v1/admin/users/{id}/balance");
        let set =
            setup_call(shared, reqwest::Method::POST, &path, json!({"set": balance, "note": "quota campaign"})).await;
        assert_eq!(set["balance"], balance, "{set}");
        let path = format!("/api/v1/admin/users/{id}/tokens");
        let issued =
            setup_call(shared, reqwest::Method::POST, &path, json!({"name": "campaign", "spend_cap": cap})).await;
        let token = issued["token"].as_str().filter(|t| t.starts_with("kiln_")).expect("a kiln_ token").to_owned();
        let token_id = issued["item"]["id"].as_str().expect("token id").to_owned();
        shared.accounts.push(Account { name, id, token, token_id, cap });
    }
}

/// What one submission was: its model and `n`, and how it is sent.
struct Submission {
    op: &'static str,
    model: &'static str,
    n: i64,
    openai: bool,
    key: Option<String>,
}

/// One user's client: submits, sometimes cancels, pauses, until told to stop.
async fn user_client(shared: Arc<Shared>, who: usize, mut rng: Rng) {
    let mut number = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        number += 1;
        let sub = match rng.below(100) {
            0..=44 => Submission { op: "native qwen-image", model: "qwen-image", n: 1, openai: false, key: None },
            45..=69 => Submission { op: "native tripo-text", model: "tripo-text", n: 0, openai: false, key: None },
            _ => Submission {
                op: "openai dall-e-2",
                model: "dall-e-2",
                n: 1 + rng.below(3) as i64,
                openai: true,
                key: None,
            },
        };
        // A third of the native submissions carry a key and are sent until answered.
        let sub = if !sub.openai && rng.chance(33) {
            Submission {
                key: Some(format!("quota-{}-{}", shared.seed, shared.next_key.fetch_add(1, Ordering::SeqCst))),
                ..sub
            }
        } else {
            sub
        };
        let prompt = format!("{} quota prompt {number}", shared.accounts[who].name);
        match submit(&shared, who, &sub, &prompt).await {
            Some(Answered::Accepted(id)) if rng.chance(20) => {
                tokio::time::sleep(rng.millis(0, 1500)).await;
                cancel(&shared, who, &id).await;
            }
            Some(Answered::Refused) => tokio::time::sleep(rng.millis(200, 500)).await,
            _ => {}
        }
        tokio::time::sleep(rng.millis(40, 200)).await;
    }
}

enum Answered {
    Accepted(String),
    Refused,
    Other,
}

async fn submit(shared: &Shared, who: usize, sub: &Submission, prompt: &str) -> Option<Answered> {
    let account = &shared.accounts[who];
    let build = || {
        let request = if sub.openai {
            let mut body = json!({"model": sub.model, "prompt": prompt, "size": "256x256"});
            if sub.n > 1 {
                body["n"] = json!(sub.n);
            }
            shared.client.post(shared.url("/v1/images/generations")).header("Prefer", "respond-async").json(&body)
        } else {
            shared
                .client
                .post(shared.url("/api/v1/tasks"))
                .json(&json!({"model": sub.model, "prompt": prompt, "params": {}}))
        };
        let request = request.bearer_auth(&account.token);
        match &sub.key {
            Some(key) => request.header("Idempotency-Key", key),
            None => request,
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let (status, task_header, body) = loop {
        shared.user(who, |u| u.sent += 1);
        match shared.send(build(), true).await {
            Sent::Answer(status, _, body) if is_busy(status, &body) && sub.key.is_some() => {
                shared.user(who, |u| u.busy += 1);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Sent::Answer(status, header, body) => break (status, header, body),
            Sent::Lost if sub.key.is_some() => {
                shared.user(who, |u| u.retried += 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Sent::Lost => {
                shared.user(who, |u| u.lost_unkeyed += 1);
                return None;
            }
        }
        if Instant::now() > deadline {
            shared.broke(format!("{}: {}: a keyed submission got no answer in 120 s", account.name, sub.op));
            return None;
        }
    };
    let what = format!("{}: {}", account.name, sub.op);
    match status {
        202 => {
            let Some(id) = body["id"].as_str().map(str::to_owned) else {
                shared.broke(format!("{what}: 202 without an id: {body}"));
                return Some(Answered::Other);
            };
            shared.user(who, |u| {
                u.accepted.insert(id.clone(), sub.model);
                if let Some(key) = &sub.key {
                    u.keys.entry(key.clone()).or_default().insert(id.clone());
                }
            });
            Some(Answered::Accepted(id))
        }
        402 => {
            check_refusal(shared, who, &what, sub, task_header, &body);
            Some(Answered::Refused)
        }
        _ if is_busy(status, &body) => {
            shared.user(who, |u| u.busy += 1);
            Some(Answered::Other)
        }
        _ => {
            shared.broke(format!("{what}: {status} {body}"));
            Some(Answered::Other)
        }
    }
}

fn is_busy(status: u16, body: &Value) -> bool {
    matches!(status, 503 | 429) && body["error"]["code"] == "queue_full"
}

/// A 402 names the price the task would have reserved and the balance or cap that
/// stopped it (native face), and makes no task (no id, no `X-Kiln-Task-Id`).
fn check_refusal(shared: &Shared, who: usize, what: &str, sub: &Submission, task_header: bool, body: &Value) {
    let account = &shared.accounts[who];
    let code = body["error"]["code"].as_str().unwrap_or_default();
    match code {
        "insufficient_quota" => shared.user(who, |u| u.insufficient += 1),
        "spend_cap_reached" if account.cap.is_some() => shared.user(who, |u| u.capped += 1),
        _ => return shared.broke(format!("{what}: 402 {body}")),
    }
    if task_header || body.get("id").is_some() {
        shared.broke(format!("{what}: a 402 named a task: {body}"));
    }
    if sub.openai {
        return;
    }
    let details = &body["error"]["details"];
    let expected: Vec<i64> = prices(sub.model).into_iter().map(|p| reservation(p, sub.n)).collect();
    let Some(price) = details["price"].as_i64() else {
        return shared.broke(format!("{what}: a 402 without details.price: {body}"));
    };
    if !expected.contains(&price) {
        shared.broke(format!("{what}: a 402 named the price {price}, not one of {expected:?}: {body}"));
    }
    let short = match code {
        "insufficient_quota" => details["balance"].as_i64().is_some_and(|b| (0..price).contains(&b)),
        _ => match (details["spent"].as_i64(), details["cap"].as_i64()) {
            (Some(spent), Some(cap)) => Some(cap) == account.cap && spent >= 0 && spent + price > cap,
            _ => false,
        },
    };
    if !short {
        shared.broke(format!("{what}: a 402 whose details do not show a shortfall: {body}"));
    }
}

async fn cancel(shared: &Shared, who: usize, id: &str) {
    let account = &shared.accounts[who];
    let request = shared.client.delete(shared.url(&format!("/api/v1/tasks/{id}"))).bearer_auth(&account.token);
    shared.user(who, |u| u.cancels += 1);
    match shared.send(request, false).await {
        Sent::Answer(200, _, body) if body["status"] == "canceled" => {
            shared.user(who, |u| {
                u.canceled.insert(id.to_owned());
            });
        }
        Sent::Answer(409, _, body) if body["error"]["code"] == "task_already_finished" => {}
        Sent::Answer(status, _, body) => shared.broke(format!("{}: cancel {id}: {status} {body}", account.name)),
        Sent::Lost => {}
    }
}

/// The admin while the campaign runs: reads every balance and token, and tops `ann`
/// up now and then (answers lost to kills included; the audit log tells what happened).
async fn watcher(shared: Arc<Shared>, mut rng: Rng) {
    let mut round = 0;
    while !shared.stop.load(Ordering::SeqCst) {
        round += 1;
        sample(&shared).await;
        if round == PRICE_CHANGE_ROUND {
            change_price(&shared).await;
        }
        if shared.ledger().top_ups_sent < TOP_UPS as u32 && rng.chance(15) {
            let path = format!("/api/v1/admin/users/{}/balance", shared.accounts[0].id);
            let request = shared.admin(reqwest::Method::POST, &path).json(&json!({"delta": TOP_UP, "note": "top-up"}));
            shared.ledger().top_ups_sent += 1;
            match shared.send(request, false).await {
                Sent::Answer(200, _, _) => shared.ledger().top_ups_answered += 1,
                Sent::Answer(status, _, body) => shared.broke(format!("top-up: {status} {body}")),
                Sent::Lost => {}
            }
        }
        tokio::time::sleep(rng.millis(150, 400)).await;
    }
}

/// Gives `NEW_PRICE`, sending it again until it is answered (a PUT may be repeated).
async fn change_price(shared: &Shared) {
    let (model, per_task, per_image) = NEW_PRICE;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let request = shared
            .admin(reqwest::Method::PUT, &format!("/api/v1/admin/prices/{model}"))
            .json(&json!({"per_task": per_task, "per_image": per_image}));
        match shared.send(request, false).await {
            Sent::Answer(200, _, _) => {
                shared.ledger().price_changed = true;
                return;
            }
            Sent::Answer(status, _, body) => return shared.broke(format!("price change: {status} {body}")),
            Sent::Lost => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    shared.broke("the price change got no answer in 60 s".into());
}

/// Every balance and every token's `spent`, as the API says them now.
async fn sample(shared: &Shared) {
    let (Some(users), Some(tokens)) =
        (shared.admin_get("/api/v1/admin/users?limit=200").await, shared.admin_get("/api/v1/admin/tokens").await)
    else {
        return;
    };
    let mut ledger = shared.ledger();
    ledger.samples += 1;
    for user in users["items"].as_array().into_iter().flatten() {
        if user["balance"].as_i64().is_none_or(|b| b < 0) {
            ledger.sightings.push(format!("user {}: balance {}", user["username"], user["balance"]));
        }
    }
    for token in tokens["items"].as_array().into_iter().flatten() {
        let spent = token["spent"].as_i64();
        let cap = token["spend_cap"].as_i64();
        if spent.is_none_or(|s| s < 0 || cap.is_some_and(|c| s > c)) {
            ledger.sightings.push(format!("token {}: spent {} of cap {:?}", token["id"], token["spent"], cap));
        }
    }
}

/// Waits until `ready` holds or `within` passes.
async fn wait_for(within: Duration, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && !ready().await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Tasks running now, as the API says (None when it does not answer).
async fn running(shared: &Shared) -> Option<usize> {
    let page = shared.admin_get("/api/v1/tasks?status=running&limit=100").await?;
    page["items"].as_array().map(Vec::len)
}

/// Waits until nothing is queued or running.
async fn drain(shared: &Shared, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut busy = 0;
        for status in ["queued", "running"] {
            let page = shared.admin_get(&format!("/api/v1/tasks?status={status}&limit=1")).await;
            busy += page.and_then(|p| p["items"].as_array().map(Vec::len)).unwrap_or(1);
        }
        if busy == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the fault campaign: `make campaign` runs it"]
async fn quota_survives_sigkill_losing_no_credit_and_charging_none_twice() {
    let seed = seed();
    let kills = setting("KILN_CAMPAIGN_QUOTA_KILLS", 12) as usize;
    println!("quota SIGKILL loop: seed {seed} (replay with KILN_CAMPAIGN_SEED={seed}), {kills} kills");
    let began = Instant::now();
    let mut rng = Rng::new(seed);
    let (modelscope, tripo, openai) = fakes(&mut rng);
    let dir = ServerDir::with_sections(free_port(), TASKS, &channels(&modelscope, &tripo, &openai));
    let env = [("KILN_ADMIN__USERNAME", ADMIN), ("KILN_ADMIN__PASSWORD", ADMIN_PASSWORD)];
    let mut server = KilnProcess::start_with_env(&dir.config(), &dir.log(), &env);
    let client =
        reqwest::Client::builder().timeout(REQUEST_TIMEOUT).pool_max_idle_per_host(0).build().expect("HTTP client");
    let (cookie, csrf) = sign_in(&client, &server.base).await;
    let mut shared = Shared {
        base: server.base.clone(),
        client,
        cookie,
        csrf,
        accounts: Vec::new(),
        stop: AtomicBool::new(false),
        submitting: AtomicUsize::new(0),
        next_key: AtomicUsize::new(0),
        seed,
        ledger: Mutex::new(Ledger {
            users: USERS.iter().map(|_| UserLedger::default()).collect(),
            ..Default::default()
        }),
    };
    set_up(&mut shared).await;
    let shared = Arc::new(shared);
    let clients: Vec<_> = (0..USERS.len() * CLIENTS_PER_USER)
        .map(|i| {
            let rng = Rng::new(seed ^ (0x0C7A_u64 << 20) ^ i as u64);
            tokio::spawn(user_client(Arc::clone(&shared), i % USERS.len(), rng))
        })
        .collect();
    let watching = tokio::spawn(watcher(Arc::clone(&shared), Rng::new(seed ^ 0xAD31)));

    // Every kind of moment comes up, in an order the seed picks.
    let mut moments: Vec<Moment> =
        (0..kills).map(|i| [Moment::Running, Moment::Submitting, Moment::Recovery, Moment::Random][i % 4]).collect();
    for i in (1..moments.len()).rev() {
        moments.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut log = Vec::new();
    for (n, moment) in moments.into_iter().enumerate() {
        if moment != Moment::Recovery {
            tokio::time::sleep(rng.millis(500, 2500)).await;
        }
        match moment {
            Moment::Running => {
                wait_for(Duration::from_secs(5), async || running(&shared).await.unwrap_or(0) > 0).await;
                tokio::time::sleep(rng.millis(0, 300)).await;
            }
            Moment::Submitting => {
                // Polled tightly and killed at once: a submission lasts milliseconds.
                let deadline = Instant::now() + Duration::from_secs(5);
                while shared.submitting.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            Moment::Recovery => tokio::time::sleep(rng.millis(0, 150)).await,
            Moment::Random => tokio::time::sleep(rng.millis(0, 1000)).await,
        }
        let submitting = shared.submitting.load(Ordering::SeqCst);
        let running = if moment == Moment::Recovery { None } else { running(&shared).await };
        assert!(server.is_running(), "the server died on its own before kill {}:\n{}", n + 1, log_tail(&dir.log(), 40));
        server.sigkill();
        println!(
            "kill {:>2}/{kills} {:<10} {} submission(s) in flight, {} running",
            n + 1,
            format!("{moment:?}"),
            submitting,
            running.map_or("?".to_owned(), |r| r.to_string()),
        );
        log.push(Kill { moment, submitting, running });
        server = KilnProcess::start_with_env(&dir.config(), &dir.log(), &env);
    }

    // The last life: clients finish what they were doing (keyed submissions get their
    // answers), then everything drains.
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.stop.store(true, Ordering::SeqCst);
    for worker in clients {
        tokio::time::timeout(Duration::from_secs(180), worker).await.expect("clients stop").expect("client panicked");
    }
    watching.await.expect("the watcher panicked");
    let drained = drain(&shared, Duration::from_secs(120)).await;
    let checked = Instant::now();
    let (problems, summary) = check(&shared, &dir).await;
    let ledger = shared.ledger();
    println!("{}", report(seed, &log, &ledger, &summary, began.elapsed(), checked.elapsed()));
    assert!(drained, "tasks were still queued or running 120 s after the last kill (seed {seed})");
    assert!(server.is_running(), "the server died during the drain:\n{}", log_tail(&dir.log(), 40));
    let failures: Vec<&str> =
        problems.iter().chain(&ledger.broken).chain(&ledger.sightings).map(String::as_str).collect();
    assert!(
        failures.is_empty(),
        "the quota loop broke {} invariant(s), had {} unexpected answer(s) and {} bad sighting(s) (seed {seed}):\n  {}\nserver log (tail):\n{}",
        problems.len(),
        ledger.broken.len(),
        ledger.sightings.len(),
        failures.join("\n  "),
        log_tail(&dir.log(), 40)
    );
    // The campaign must have done what it claims, or its passing means nothing.
    let with_running = log.iter().filter(|k| k.running.is_some_and(|r| r > 0)).count();
    let lost: u32 = ledger.users.iter().map(|u| u.lost_unkeyed + u.retried).sum();
    assert!(summary.tasks >= 4 * kills, "only {} tasks in {kills} lives (seed {seed})", summary.tasks);
    assert!(with_running >= kills / 4, "only {with_running} kills landed while tasks ran (seed {seed})");
    assert!(lost >= 1, "no submission was cut off by a kill (seed {seed})");
    assert!(ledger.users[0].insufficient >= 1, "ann never ran out of credits (seed {seed})");
    assert!(ledger.users[2].capped >= 1, "cyd's token never reached its cap (seed {seed})");
    assert!(
        summary.succeeded > 0 && summary.failed > 0 && summary.canceled > 0,
        "not every end came up: {summary:?} (seed {seed})"
    );
    assert!(
        summary.repriced.0 > 0 && summary.repriced.1 > 0,
        "{} was not used at both prices: {:?} (seed {seed})",
        NEW_PRICE.0,
        summary.repriced
    );
    assert!(ledger.samples >= kills as u32, "balances were sampled only {} times (seed {seed})", ledger.samples);
    drop(ledger);
    server.sigkill();
}

#[derive(Debug, Default)]
struct Summary {
    tasks: usize,
    succeeded: usize,
    failed: usize,
    canceled: usize,
    charged: i64,
    /// Per user: tasks, charged, final balance, `spent`.
    users: Vec<(usize, i64, i64, i64)>,
    /// Failure codes and how often.
    codes: BTreeMap<String, usize>,
    price_changed: bool,
    /// Tasks of the repriced model reserved at its first price, and at the new one.
    repriced: (usize, usize),
}

/// A task, with the images it made.
#[derive(Debug, sqlx::FromRow)]
struct TaskRow {
    id: String,
    owner_id: Option<String>,
    token_id: Option<String>,
    status: String,
    error_code: Option<String>,
    model: String,
    params: String,
    images: i64,
}

/// A usage record.
#[derive(Debug, sqlx::FromRow)]
struct UsageRow {
    task_id: String,
    user_id: Option<String>,
    token_id: Option<String>,
    model: String,
    per_task: i64,
    per_image: i64,
    reserved: i64,
    charged: Option<i64>,
    outcome: Option<String>,
    created_at: i64,
}

/// The prices a task reserved at `created_at` may have been at: the first price before
/// the change committed at `changed_at`, the new one after it, either in the same
/// millisecond. Writes go through one connection, so the two transactions are ordered.
fn price_at(model: &str, created_at: i64, changed_at: Option<i64>) -> Vec<(i64, i64)> {
    let all = prices(model);
    match changed_at {
        Some(at) if all.len() > 1 && created_at > at => all[1..].to_vec(),
        Some(at) if all.len() > 1 && created_at == at => all,
        _ => all[..1].to_vec(),
    }
}

/// Every invariant, against the database (read-only) and the API.
async fn check(shared: &Shared, dir: &ServerDir) -> (Vec<String>, Summary) {
    let mut problems = Vec::new();
    let mut summary = Summary::default();
    let db = dir.database().await;
    let tasks: Vec<TaskRow> = sqlx::query_as(
        "SELECT t.id, t.owner_id, t.token_id, t.status, t.error_code, t.model, t.params, \
             (SELECT COUNT(*) FROM artifacts a WHERE a.task_id = t.id AND a.role = 'image') AS images FROM tasks t",
    )
    .fetch_all(&db)
    .await
    .expect("tasks");
    let usage: BTreeMap<String, UsageRow> = sqlx::query_as::<_, UsageRow>(
        "SELECT task_id, user_id, token_id, model, per_task, per_image, reserved, charged, outcome, created_at \
         FROM usage",
    )
    .fetch_all(&db)
    .await
    .expect("usage")
    .into_iter()
    .map(|row| (row.task_id.clone(), row))
    .collect();
    let balances: BTreeMap<String, i64> =
        sqlx::query_as("SELECT id, balance FROM users").fetch_all(&db).await.expect("users").into_iter().collect();
    let spent: BTreeMap<String, i64> =
        sqlx::query_as("SELECT id, spent FROM api_tokens").fetch_all(&db).await.expect("tokens").into_iter().collect();
    let audit: Vec<(String, String)> =
        sqlx::query_as("SELECT target, detail FROM audit_log WHERE action IN ('balance.add', 'balance.set')")
            .fetch_all(&db)
            .await
            .expect("audit");
    let bindings: BTreeMap<String, String> = sqlx::query_as("SELECT key, task_id FROM idempotency_keys")
        .fetch_all(&db)
        .await
        .expect("keys")
        .into_iter()
        .collect();
    let (model, per_task, per_image) = NEW_PRICE;
    let changed_at: Option<i64> =
        sqlx::query_scalar("SELECT updated_at FROM prices WHERE model = ?1 AND per_task = ?2 AND per_image = ?3")
            .bind(model)
            .bind(per_task)
            .bind(per_image)
            .fetch_optional(&db)
            .await
            .expect("prices");
    summary.price_changed = changed_at.is_some();
    if shared.ledger().price_changed && changed_at.is_none() {
        problems.push(format!("the price change of {model} was answered but is not stored"));
    }

    let task_ids: BTreeSet<&str> = tasks.iter().map(|t| t.id.as_str()).collect();
    for id in usage.keys().filter(|id| !task_ids.contains(id.as_str())) {
        problems.push(format!("usage record {id} has no task"));
    }
    // A copy, so that no lock is held across the API calls below.
    let users = shared.ledger().users.clone();
    for (who, account) in shared.accounts.iter().enumerate() {
        let mine: Vec<&TaskRow> = tasks.iter().filter(|t| t.owner_id.as_deref() == Some(account.id.as_str())).collect();
        let mut charged = 0;
        for task in &mine {
            let what = format!("{}: task {} ({}, {})", account.name, task.id, task.model, task.status);
            summary.tasks += 1;
            match task.status.as_str() {
                "succeeded" => summary.succeeded += 1,
                "failed" => summary.failed += 1,
                "canceled" => summary.canceled += 1,
                _ => {}
            }
            if let Some(code) = &task.error_code {
                *summary.codes.entry(code.clone()).or_default() += 1;
            }
            if !TERMINAL.contains(&task.status.as_str()) {
                problems.push(format!("{what} did not end"));
            }
            if task.token_id.as_deref() != Some(account.token_id.as_str()) {
                problems.push(format!("{what} was made with token {:?}, not the user's", task.token_id));
            }
            let Some(record) = usage.get(&task.id) else {
                problems.push(format!("{what} has no usage record"));
                continue;
            };
            if record.user_id != task.owner_id || record.token_id != task.token_id || record.model != task.model {
                problems.push(format!("{what}: its usage record names someone else: {record:?}"));
            }
            // A 3D task asks for no images: its per-image price never counts.
            let n = if task.model == "tripo-text" {
                0
            } else {
                serde_json::from_str::<Value>(&task.params).ok().and_then(|p| p["n"].as_i64()).unwrap_or(1)
            };
            let at = (record.per_task, record.per_image);
            let allowed = price_at(&task.model, record.created_at, changed_at);
            if task.model == NEW_PRICE.0 {
                if at == price(&task.model) {
                    summary.repriced.0 += 1;
                } else {
                    summary.repriced.1 += 1;
                }
            }
            if !allowed.contains(&at) || record.reserved != reservation(at, n) {
                problems.push(format!(
                    "{what}: reserved {} at {at:?}; the price then was one of {allowed:?} (n = {n})",
                    record.reserved
                ));
            }
            if record.outcome.as_deref() != Some(task.status.as_str()) {
                problems.push(format!("{what}: its usage record's outcome is {:?}", record.outcome));
            }
            let due = match task.status.as_str() {
                "succeeded" => {
                    if task.model != "tripo-text" && task.images != n {
                        problems.push(format!("{what}: {} images recorded, {n} asked for", task.images));
                    }
                    record.per_task + record.per_image * if task.model == "tripo-text" { 0 } else { task.images }
                }
                _ => 0,
            };
            match record.charged {
                Some(paid) if paid == due && paid <= record.reserved => charged += paid,
                paid => problems.push(format!("{what}: charged {paid:?}, not {due} (reserved {})", record.reserved)),
            }
        }
        summary.charged += charged;

        // The balance: what the audited changes made it, less what was charged.
        let credited: i64 = audit
            .iter()
            .filter(|(target, _)| *target == account.id)
            .filter_map(|(_, detail)| serde_json::from_str::<Value>(detail).ok())
            .map(|d| d["after"].as_i64().unwrap_or(0) - d["before"].as_i64().unwrap_or(0))
            .sum();
        let balance = balances.get(&account.id).copied().unwrap_or(i64::MIN);
        if balance != credited - charged {
            problems.push(format!(
                "{}: balance {balance}, but the audited changes credited {credited} and {charged} was charged \
                 ({} credits {})",
                account.name,
                (balance - (credited - charged)).abs(),
                if balance > credited - charged { "made up" } else { "lost" }
            ));
        }
        if balance < 0 {
            problems.push(format!("{}: balance {balance} is negative", account.name));
        }
        let token_spent = spent.get(&account.token_id).copied().unwrap_or(i64::MIN);
        if token_spent != charged || account.cap.is_some_and(|cap| token_spent > cap) {
            problems.push(format!(
                "{}: the token's spent is {token_spent}, {charged} was charged through it (cap {:?})",
                account.name, account.cap
            ));
        }
        summary.users.push((mine.len(), charged, balance, token_spent));

        // What the client was told, against the database.
        let user = &users[who];
        let ids: BTreeSet<&str> = mine.iter().map(|t| t.id.as_str()).collect();
        for (id, model) in &user.accepted {
            if !ids.contains(id.as_str()) {
                problems.push(format!(
                    "{}: task {id} ({model}) was accepted but is not theirs in the database",
                    account.name
                ));
            }
        }
        let unanswered = ids.iter().filter(|id| !user.accepted.contains_key(**id)).count();
        if unanswered > user.lost_unkeyed as usize {
            problems.push(format!(
                "{}: {unanswered} tasks were never answered as accepted, but only {} answers were lost: a 402 or a \
                 retried key left a task behind",
                account.name, user.lost_unkeyed
            ));
        }
        for id in &user.canceled {
            if mine.iter().any(|t| t.id == *id && t.status != "canceled") {
                problems.push(format!("{}: task {id} was answered canceled but did not end so", account.name));
            }
        }
        for (key, returned) in &user.keys {
            let bound = bindings.get(&format!("{}:{key}", account.id));
            if returned.len() > 1 || returned.iter().next() != bound {
                problems.push(format!("{}: key {key} returned {returned:?}, is bound to {bound:?}", account.name));
            }
        }
        problems.extend(api_agrees(shared, account, &mine, &usage, balance, charged).await);
    }
    let theirs: BTreeSet<&str> = shared.accounts.iter().map(|a| a.id.as_str()).collect();
    for task in tasks.iter().filter(|t| t.owner_id.as_deref().is_none_or(|o| !theirs.contains(o))) {
        problems.push(format!("task {} belongs to {:?}, none of the users", task.id, task.owner_id));
    }
    (problems, summary)
}

/// The admin's view through the API: the user's balance, and every usage record with
/// the totals.
async fn api_agrees(
    shared: &Shared,
    account: &Account,
    mine: &[&TaskRow],
    usage: &BTreeMap<String, UsageRow>,
    balance: i64,
    charged: i64,
) -> Vec<String> {
    let mut problems = Vec::new();
    let name = account.name;
    match shared.admin_get(&format!("/api/v1/admin/users/{}", account.id)).await {
        Some(user) if user["balance"] == balance => {}
        user => problems.push(format!("{name}: the API says {user:?}, the database balance {balance}")),
    }
    let mut listed: BTreeMap<String, Value> = BTreeMap::new();
    let mut cursor: Option<String> = None;
    let totals = loop {
        let mut path = format!("/api/v1/usage?user={}&limit=500", account.id);
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let Some(page) = shared.admin_get(&path).await else {
            problems.push(format!("{name}: GET {path} failed"));
            return problems;
        };
        for item in page["items"].as_array().into_iter().flatten() {
            listed.insert(item["task_id"].as_str().unwrap_or_default().to_owned(), item.clone());
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break page["totals"].clone(),
        }
    };
    let count = |status: &str| mine.iter().filter(|t| t.status == status).count();
    let expected = json!({
        "tasks": mine.len(), "succeeded": count("succeeded"), "failed": count("failed"),
        "canceled": count("canceled"), "charged": charged,
    });
    if totals != expected {
        problems.push(format!("{name}: GET /api/v1/usage totals {totals}, the database {expected}"));
    }
    if listed.len() != mine.len() {
        problems.push(format!("{name}: GET /api/v1/usage lists {} records for {} tasks", listed.len(), mine.len()));
    }
    for task in mine {
        let stored = usage.get(&task.id);
        match (listed.get(&task.id), stored) {
            (Some(item), Some(row))
                if item["charged"] == json!(row.charged)
                    && item["reserved"] == row.reserved
                    && item["outcome"] == json!(row.outcome) => {}
            (item, _) => {
                problems.push(format!("{name}: task {}: the API lists {item:?}, the database {stored:?}", task.id))
            }
        }
    }
    problems
}

fn report(
    seed: u64,
    kills: &[Kill],
    ledger: &Ledger,
    summary: &Summary,
    total: Duration,
    checking: Duration,
) -> String {
    let mut out = String::new();
    let by = |m: Moment| kills.iter().filter(|k| k.moment == m).count();
    let _ = writeln!(
        out,
        "seed {seed}; {} kills (running {}, submitting {}, recovery {}, random {}); {} with tasks running, {} with a submission in flight",
        kills.len(),
        by(Moment::Running),
        by(Moment::Submitting),
        by(Moment::Recovery),
        by(Moment::Random),
        kills.iter().filter(|k| k.running.is_some_and(|r| r > 0)).count(),
        kills.iter().filter(|k| k.submitting > 0).count(),
    );
    let _ = writeln!(
        out,
        "{:<5} {:>5} {:>8} {:>5} {:>4} {:>7} {:>5} {:>4} {:>6} {:>8} {:>6} {:>7} {:>7} {:>5}",
        "user",
        "sent",
        "accepted",
        "lost",
        "keys",
        "retried",
        "busy",
        "402",
        "capped",
        "canceled",
        "tasks",
        "charged",
        "balance",
        "spent"
    );
    for ((u, (tasks, charged, balance, spent)), (name, _, _)) in ledger.users.iter().zip(&summary.users).zip(USERS) {
        let _ = writeln!(
            out,
            "{name:<5} {:>5} {:>8} {:>5} {:>4} {:>7} {:>5} {:>4} {:>6} {:>8} {tasks:>6} {charged:>7} {balance:>7} {spent:>5}",
            u.sent,
            u.accepted.len(),
            u.lost_unkeyed,
            u.keys.len(),
            u.retried,
            u.busy,
            u.insufficient,
            u.capped,
            format!("{}/{}", u.canceled.len(), u.cancels),
        );
    }
    let _ = writeln!(
        out,
        "{} repriced {}: {} tasks reserved at the first price, {} at the new one",
        NEW_PRICE.0,
        if summary.price_changed { "during the run" } else { "never" },
        summary.repriced.0,
        summary.repriced.1,
    );
    let _ = writeln!(
        out,
        "{} tasks: {} succeeded, {} failed {:?}, {} canceled; {} credits charged; {} top-ups sent ({} answered); {} samples; {:.0} s in all, checks {:.1} s",
        summary.tasks,
        summary.succeeded,
        summary.failed,
        summary.codes,
        summary.canceled,
        summary.charged,
        ledger.top_ups_sent,
        ledger.top_ups_answered,
        ledger.samples,
        total.as_secs_f64(),
        checking.as_secs_f64(),
    );
    out
}
