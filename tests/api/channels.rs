//! Channels managed at runtime through the admin service (`kiln::channels::admin`):
//! stored channels created, edited, enabled, disabled and deleted while kiln runs,
//! without a restart and without disturbing the tasks already running; loaded again at
//! start-up; their secrets sealed at rest and masked on the way out; each one's
//! connection tested against the fake upstreams.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use kiln::{
    channels::{
        Origin,
        admin::{AdminError, ChannelAdmin, ChannelDraft, SecretChange},
    },
    config::{ChannelConfig, Secret},
    gateway::Gateway,
    providers::{ChannelRuntime, Job, JobContext, Outcome, Provider, ProviderError, Registry},
    tasks::TaskId,
};
use serde_json::{Value, json};

use crate::{
    common::fakes::{
        FakeModelScope, FakeOpenAi, FakeTripo, MODELSCOPE_TOKEN, ModelScopeOptions, OPENAI_KEY, OpenAiOptions, Route,
        TRIPO_KEY, TripoOptions,
    },
    helpers::{ECHO_CHANNEL, TASKS, TestApp},
    provider::Echo,
};

fn admin(gateway: &Gateway) -> ChannelAdmin<'_> {
    let sealer = gateway.sealer().expect("the sealing key");
    ChannelAdmin::new(gateway.channels(), gateway.db(), sealer, gateway.notifier().as_ref(), gateway.metrics())
}

/// A draft from a channel's TOML (as the file would say it), without a secret.
fn draft(toml_text: &str) -> ChannelDraft {
    let config: ChannelConfig = toml::from_str(toml_text).expect("channel");
    ChannelDraft { config, secret: SecretChange::Keep }
}

fn with_secret(mut draft: ChannelDraft, secret: &str) -> ChannelDraft {
    draft.secret = SecretChange::Set(Secret::new(secret));
    draft
}

fn problems(err: AdminError) -> Vec<(String, String)> {
    match err {
        AdminError::Invalid(problems) => problems.problems().to_vec(),
        other => panic!("not a validation error: {other:?}"),
    }
}

/// One `lamp` provider built for a channel: whether its background work started, and
/// whether it was told to stop.
#[derive(Default)]
struct Lamp {
    started: AtomicBool,
    stopped: Arc<AtomicBool>,
}

/// Every lamp built, in order.
#[derive(Default, Clone)]
struct Lamps(Arc<Mutex<Vec<Arc<Lamp>>>>);

impl Lamps {
    /// The `i`th lamp that was started (a form's check builds providers it never starts).
    fn started(&self, i: usize) -> Option<Arc<Lamp>> {
        let lamps = self.0.lock().expect("lamps");
        lamps.iter().filter(|l| l.started.load(Ordering::SeqCst)).nth(i).cloned()
    }

    fn count(&self) -> usize {
        self.0.lock().expect("lamps").len()
    }
}

/// `echo` with background work that lights up at start and goes out at shutdown.
struct LampProvider(Arc<Lamp>);

#[async_trait]
impl Provider for LampProvider {
    fn describe(&self) -> String {
        "lamp".into()
    }

    async fn run(&self, job: Job, ctx: JobContext) -> Result<Outcome, ProviderError> {
        Echo.run(job, ctx).await
    }

    fn start(&self, runtime: Arc<dyn ChannelRuntime>) {
        self.0.started.store(true, Ordering::SeqCst);
        let stopped = Arc::clone(&self.0.stopped);
        tokio::spawn(async move {
            runtime.shutdown().cancelled().await;
            stopped.store(true, Ordering::SeqCst);
        });
    }
}

fn registry(lamps: &Lamps) -> Registry {
    let mut registry = crate::provider::registry();
    let lamps = lamps.clone();
    registry.register("lamp", move |_channel| {
        let lamp = Arc::new(Lamp::default());
        lamps.0.lock().expect("lamps").push(Arc::clone(&lamp));
        Ok(Arc::new(LampProvider(lamp)) as Arc<dyn Provider>)
    });
    registry
}

fn lamp(upstream: &str) -> ChannelDraft {
    draft(&format!(
        "name = \"lamp\"\ntype = \"lamp\"\nmax_concurrency = 1\nmax_queue = 10\n\
         models = [{{ name = \"lit\", kind = \"image_to_3d\", upstream = \"{upstream}\" }}]\n"
    ))
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never happened: {what}");
}

async fn stored_task(app: &TestApp, id: &str) -> kiln::tasks::Task {
    let id = TaskId(id.parse().expect("uuid"));
    app.gateway.db().get_task(id).await.expect("read").expect("task")
}

async fn submit(app: &TestApp, model: &str, params: &str) -> (u16, Value) {
    let fields = [("model", model), ("params", params)];
    let response = app.upload("/api/v1/tasks", crate::helpers::fixture("vase.png"), &fields).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn an_edit_leaves_a_running_task_to_finish_on_the_old_provider_and_the_next_runs_on_the_new() {
    let lamps = Lamps::default();
    let app = TestApp::spawn_registry("", TASKS, ECHO_CHANNEL, &registry(&lamps)).await;
    let created = admin(&app.gateway).create(lamp("v1")).await.expect("created");
    let id = created.id.expect("a stored channel has an id");
    wait_for("the first lamp starts", || lamps.started(0).is_some()).await;
    let (status, slow) = submit(&app, "lit", r#"{"steps": 15, "step_ms": 100}"#).await;
    assert_eq!(status, 202, "{slow}");
    let slow = slow["id"].as_str().expect("id").to_owned();
    app.wait_task(&slow, "running", |t| t["status"] == "running").await;

    let edited = admin(&app.gateway).update(id, lamp("v2")).await.expect("updated");
    assert_eq!(edited.config["models"][0]["upstream"], "v2");
    wait_for("the new lamp starts", || lamps.started(1).is_some()).await;
    let old = lamps.started(0).expect("old lamp");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{slow}")).await.1["status"], "running");
    assert!(!old.stopped.load(Ordering::SeqCst), "the old provider works on while its task runs");

    // One place on the channel: the next task waits for the running one, then runs on
    // the edited channel.
    let (_, next) = submit(&app, "lit", "{}").await;
    let next = next["id"].as_str().expect("id").to_owned();
    let done = app.wait_terminal(&slow).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let slow_task = stored_task(&app, &slow).await;
    assert_eq!(slow_task.metadata["model"], "v1", "it ran to the end on the channel it started on");
    assert_eq!(slow_task.attempts, 1, "and was never restarted");
    wait_for("the old provider's background work ends", || old.stopped.load(Ordering::SeqCst)).await;

    assert_eq!(app.wait_terminal(&next).await["status"], "succeeded");
    assert_eq!(stored_task(&app, &next).await.metadata["model"], "v2", "new work runs on the edited channel");
    let built = lamps.count();
    admin(&app.gateway).set_enabled(id, true).await.expect("no change");
    assert_eq!(lamps.count(), built, "a change that changes nothing builds nothing");
    assert!(lamps.started(2).is_none());
    assert!(!lamps.started(1).expect("new lamp").stopped.load(Ordering::SeqCst));
    app.stop().await;
}

#[tokio::test]
async fn a_stored_channel_takes_tasks_without_a_restart_and_takes_none_once_disabled() {
    let app = TestApp::spawn().await;
    let (status, body) = submit(&app, "fresh", "{}").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("unknown_model")));

    let extra = "name = \"extra\"\ntype = \"echo\"\nmax_concurrency = 1\n\
                 models = [{ name = \"fresh\", kind = \"image_to_3d\" }]\n";
    let view = admin(&app.gateway).create(draft(extra)).await.expect("created");
    assert_eq!((view.source, view.live, view.read_only, view.enabled), ("database", true, false, true));
    let (status, task) = submit(&app, "fresh", "{}").await;
    assert_eq!(status, 202, "{task}");
    assert_eq!(task["channel"], "extra");
    let done = app.wait_terminal(task["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "a dispatcher started for it: {done}");

    // A task waiting when the channel is disabled stays queued; new ones are refused.
    let (_, running) = submit(&app, "fresh", r#"{"steps": 10, "step_ms": 100}"#).await;
    let running = running["id"].as_str().expect("id").to_owned();
    app.wait_task(&running, "running", |t| t["status"] == "running").await;
    let (_, waiting) = submit(&app, "fresh", "{}").await;
    let waiting = waiting["id"].as_str().expect("id").to_owned();
    let id = view.id.expect("id");
    let disabled = admin(&app.gateway).set_enabled(id, false).await.expect("disabled");
    assert!(!disabled.enabled && !disabled.available);
    let (status, body) = submit(&app, "fresh", "{}").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("channel_unavailable")), "{body}");
    assert_eq!(app.wait_terminal(&running).await["status"], "succeeded", "the running task finishes");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{waiting}")).await.1["status"], "queued", "nothing claims it");
    let (_, catalog) = app.get_json("/api/v1/catalog").await;
    let fresh = catalog["models"].as_array().expect("models").iter().find(|m| m["name"] == "fresh").cloned();
    assert_eq!(fresh.map(|m| m["available"].clone()), Some(json!(false)));

    admin(&app.gateway).set_enabled(id, true).await.expect("enabled");
    assert_eq!(app.wait_terminal(&waiting).await["status"], "succeeded", "enabled again, its queue runs");
    let (status, _) = submit(&app, "echo", "{}").await;
    assert_eq!(status, 202, "the file's channel was never touched");
    app.stop().await;
}

#[tokio::test]
async fn deleting_a_channel_moves_its_waiting_tasks_to_another_serving_the_model_or_fails_them_channel_deleted() {
    let spare = "[[channels]]\nname = \"spare\"\ntype = \"echo\"\npriority = -1\nmax_concurrency = 1\nmax_queue = 1\n\
                 models = [{ name = \"echo\", kind = \"image_to_3d\" }]\n";
    let app = TestApp::spawn_with(spare).await;
    let busy = "name = \"busy\"\ntype = \"echo\"\nmax_concurrency = 1\nmax_queue = 10\n\
                models = [{ name = \"echo\", kind = \"image_to_3d\" }, { name = \"solo\", kind = \"image_to_3d\" }]\n";
    let id = admin(&app.gateway).create(draft(busy)).await.expect("created").id.expect("id");
    let slow = r#"{"steps": 10, "step_ms": 100}"#;
    let (_, running) = submit(&app, "echo", slow).await;
    assert_eq!(running["channel"], "busy", "the higher priority");
    let running = running["id"].as_str().expect("id").to_owned();
    app.wait_task(&running, "running", |t| t["status"] == "running").await;
    let mut waiting = Vec::new();
    for model in ["echo", "echo", "echo", "solo"] {
        let (_, task) = submit(&app, model, slow).await;
        assert_eq!(task["channel"], "busy");
        waiting.push(task["id"].as_str().expect("id").to_owned());
    }

    let deleted = admin(&app.gateway).delete(id).await.expect("deleted");
    let moved: Vec<String> = deleted.moved.iter().map(|m| m.task.to_string()).collect();
    assert_eq!(moved, waiting[..2], "the oldest, as many as `spare` has room for (1 + 1)");
    assert!(deleted.moved.iter().all(|m| m.to == "spare"));
    let failed: Vec<String> = deleted.failed.iter().map(|t| t.to_string()).collect();
    assert_eq!(failed, waiting[2..]);
    assert!(matches!(admin(&app.gateway).describe("busy").await, Err(AdminError::NotFound)));

    for id in &waiting[..2] {
        let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(task["channel"], "spare", "{task}");
        let events = app.events(id, None, 30).await;
        assert!(
            events.iter().filter(|(_, kind, _)| kind == "queued").count() >= 2,
            "a queued event tells its new place: {events:?}"
        );
        assert_eq!(events.last().map(|e| e.1.as_str()), Some("completed"), "and it runs there: {events:?}");
    }
    let no_room = app.wait_terminal(&waiting[2]).await;
    assert_eq!(
        (no_room["status"].as_str(), no_room["error"]["code"].as_str()),
        (Some("failed"), Some("channel_deleted"))
    );
    assert!(no_room["error"]["message"].as_str().is_some_and(|m| m.contains("had room")), "{no_room}");
    let nobody = app.wait_terminal(&waiting[3]).await;
    assert_eq!(nobody["error"]["code"], "channel_deleted");
    let message = nobody["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("`busy` was deleted") && message.contains("serves `solo`"), "{nobody}");
    let done = app.wait_terminal(&running).await;
    assert_eq!((done["status"].as_str(), done["channel"].as_str()), (Some("succeeded"), Some("busy")), "{done}");
    // The usage records name the channel that ran (and billed) each task.
    let filter = kiln::db::UsageFilter { limit: 100, ..Default::default() };
    let usage = app.gateway.db().list_usage(&filter).await.expect("usage");
    let channel_of = |id: &str| usage.iter().find(|u| u.task_id.to_string() == id).map(|u| u.channel.clone());
    for id in &waiting[..2] {
        assert_eq!(channel_of(id).as_deref(), Some("spare"), "{id}");
    }
    assert_eq!(channel_of(&running).as_deref(), Some("busy"));
    app.stop().await;
}

#[tokio::test]
async fn a_restart_loads_the_stored_channels_with_their_secrets_and_secrets_come_back_masked() {
    let app = TestApp::spawn().await;
    let secret = "sk-only-in-the-sealed-column-7f3a";
    let kept = "name = \"kept\"\ntype = \"echo\"\nmodels = [{ name = \"kept-model\", kind = \"image_to_3d\" }]\n";
    let view = admin(&app.gateway).create(with_secret(draft(kept), secret)).await.expect("created");
    assert_eq!(view.config["secret"], "••••7f3a");
    let short = "name = \"short\"\ntype = \"echo\"\nmodels = [{ name = \"s\", kind = \"image_to_3d\" }]\n";
    let short = admin(&app.gateway).create(with_secret(draft(short), "sk-123")).await.expect("created");
    assert_eq!(short.config["secret"], "••••", "too short to show any of it");
    let listed = serde_json::to_string(&admin(&app.gateway).list().await.expect("list")).expect("json");
    assert!(!listed.contains(secret) && !listed.contains("sk-123"), "{listed}");
    assert!(listed.contains(r#""source":"file""#) && listed.contains(r#""source":"database""#));
    let id = view.id.expect("id");
    let stored = app.gateway.db().get_channel(id).await.expect("read").expect("stored");
    let sealed = stored.sealed_secret.expect("sealed");
    assert!(!sealed.contains(secret) && stored.config.secret.is_none(), "sealed at rest");
    // Editing without a new secret keeps it.
    let mut edited = draft(kept);
    edited.config.max_queue = 7;
    admin(&app.gateway).update(id, edited).await.expect("updated");
    let dir = app.stop_keeping_dir().await;

    let app = TestApp::spawn_in(dir, "", TASKS, ECHO_CHANNEL, &crate::provider::registry()).await;
    let router = app.gateway.channels().current();
    let loaded = router.channel("kept").expect("loaded at start-up");
    assert_eq!(loaded.origin, Origin::Database(id));
    assert_eq!(loaded.max_queue, 7);
    assert_eq!(loaded.config().secret.as_ref().map(|s| s.expose()), Some(secret), "opened with the sealing key");
    let view = admin(&app.gateway).describe("kept").await.expect("described");
    assert_eq!((view.live, view.config["secret"].as_str()), (true, Some("••••7f3a")));
    let (_, task) = submit(&app, "kept-model", "{}").await;
    assert_eq!(task["channel"], "kept");
    assert_eq!(app.wait_terminal(task["id"].as_str().expect("id")).await["status"], "succeeded");
    app.stop().await;
}

#[tokio::test]
async fn a_stored_channel_is_checked_field_by_field_and_file_channels_are_read_only() {
    let app = TestApp::spawn().await;
    let admin = admin(&app.gateway);
    let bad = draft(
        "name = \"\"\ntype = \"echo\"\nmax_concurrency = 0\nmodels = [{ name = \"m\", kind = \"video_to_3d\" }]\n",
    );
    let fields: Vec<String> =
        problems(admin.create(bad).await.expect_err("refused")).into_iter().map(|p| p.0).collect();
    assert_eq!(fields, ["name", "max_concurrency", "models[0].kind"]);

    let named_echo = draft("name = \"echo\"\ntype = \"echo\"\nmodels = [{ name = \"m\", kind = \"image_to_3d\" }]\n");
    let found = problems(admin.create(named_echo).await.expect_err("the file's name"));
    assert_eq!(found[0].0, "name");
    assert!(found[0].1.contains("configuration file"), "{found:?}");
    let unknown = draft("name = \"u\"\ntype = \"nope\"\nmodels = [{ name = \"m\", kind = \"image_to_3d\" }]\n");
    assert_eq!(problems(admin.create(unknown).await.expect_err("unknown type"))[0].0, "type");
    let tripo = "name = \"t\"\ntype = \"tripo\"\nmodels = [{ name = \"m\", kind = \"text_to_3d\" }]\n";
    let found = problems(admin.create(with_secret(draft(tripo), "not-a-tripo-key")).await.expect_err("bad key"));
    assert_eq!(found[0].0, "secret", "{found:?}");
    let found = problems(
        admin
            .create(with_secret(draft(&format!("{tripo}[options]\nregoin = \"cn\"\n")), TRIPO_KEY))
            .await
            .expect_err("typo"),
    );
    assert_eq!(found[0].0, "options", "{found:?}");
    assert!(found[0].1.contains("regoin"), "{found:?}");

    let ok = draft("name = \"mine\"\ntype = \"echo\"\nmodels = [{ name = \"m\", kind = \"image_to_3d\" }]\n");
    let id = admin.create(ok.clone()).await.expect("created").id.expect("id");
    assert_eq!(problems(admin.create(ok.clone()).await.expect_err("twice"))[0].0, "name");
    let mut renamed = ok;
    renamed.config.name = "yours".into();
    let found = problems(admin.update(id, renamed).await.expect_err("renamed"));
    assert!(found[0].0 == "name" && found[0].1.contains("cannot change"), "{found:?}");
    assert!(matches!(admin.id_of("echo").await, Err(AdminError::ReadOnly)));
    assert_eq!(admin.id_of("mine").await.expect("id"), id);
    let echo = admin.describe("echo").await.expect("the file's channel");
    assert!(echo.read_only && echo.id.is_none() && echo.source == "file");
    assert!(app.gateway.db().list_channels().await.expect("list").len() == 1, "nothing refused was stored");
    app.stop().await;
}

#[tokio::test]
async fn the_forms_name_each_providers_fields_and_default_base_urls() {
    let app = TestApp::spawn().await;
    let forms = serde_json::to_value(admin(&app.gateway).forms()).expect("json");
    let form = |kind: &str| {
        forms["providers"].as_array().expect("providers").iter().find(|f| f["type"] == kind).cloned().expect(kind)
    };
    assert_eq!(form("modelscope")["default_base_url"], "https://api-inference.modelscope.cn");
    let tripo = form("tripo");
    assert_eq!(tripo["default_base_url"], "https://openapi.tripo3d.ai");
    let urls: Vec<&str> =
        tripo["base_urls"].as_array().expect("urls").iter().filter_map(|u| u["url"].as_str()).collect();
    assert_eq!(urls, ["https://openapi.tripo3d.ai", "https://openapi.tripo3d.com"]);
    let region = tripo["options"].as_array().expect("options").iter().find(|f| f["key"] == "region").cloned();
    assert_eq!(
        region.map(|r| (r["default"].clone(), r["choices"].clone())),
        Some((json!("global"), json!(["global", "cn"])))
    );
    assert_eq!(form("openai_images")["default_base_url"], "https://api.openai.com");
    assert_eq!(form("worker")["secret"]["required"], true);
    assert!(form("relief")["secret"].is_null());
    let poll = form("modelscope")["options"]
        .as_array()
        .expect("options")
        .iter()
        .find(|f| f["key"] == "poll_interval")
        .cloned();
    assert_eq!(poll.map(|p| p["default"].clone()), Some(json!("2s")), "ModelScope's own default");
    let keys: Vec<&str> =
        forms["channel"].as_array().expect("fields").iter().filter_map(|f| f["key"].as_str()).collect();
    assert!(
        ["name", "models", "priority", "weight", "max_queue", "deadline", "defaults", "overrides"]
            .iter()
            .all(|k| keys.contains(k))
    );
    assert!(
        forms["providers"].as_array().expect("providers").iter().all(|f| f["type"] != "echo"),
        "a test type has none"
    );
    app.stop().await;
}

fn cloud(name: &str, kind: &str, model_kind: &str, base: &str) -> ChannelDraft {
    draft(&format!(
        "name = \"{name}\"\ntype = \"{kind}\"\nmodels = [{{ name = \"{name}-m\", kind = \"{model_kind}\" }}]\n\
         [options]\nbase_url = \"{base}\"\nhealth_interval = \"0s\"\n"
    ))
}

#[tokio::test]
async fn test_connection_makes_one_cheap_real_call_and_says_what_came_back() {
    let tripo = FakeTripo::start(TripoOptions::default());
    let modelscope = FakeModelScope::start(ModelScopeOptions::default());
    let openai = FakeOpenAi::start(OpenAiOptions::default());
    let app = TestApp::spawn().await;
    let admin = admin(&app.gateway);
    let t = cloud("tripo", "tripo", "text_to_3d", &tripo.base_url());
    admin.create(with_secret(t.clone(), TRIPO_KEY)).await.expect("tripo");
    let m = cloud("scope", "modelscope", "text_to_image", &modelscope.base_url());
    admin.create(with_secret(m, MODELSCOPE_TOKEN)).await.expect("modelscope");
    let o = cloud("oai", "openai_images", "text_to_image", &openai.base_url());
    admin.create(with_secret(o, OPENAI_KEY)).await.expect("openai");

    let answer = admin.test_connection("tripo").await.expect("live").expect("connected");
    assert_eq!(answer, "Tripo balance: 10000 credits (0 frozen).");
    assert_eq!(tripo.count(Route::Balance), 1, "one call, to the balance");
    let answer = admin.test_connection("scope").await.expect("live").expect("connected");
    assert!(answer.starts_with("ModelScope took the token and lists"), "{answer}");
    assert_eq!(modelscope.count(Route::Models), 1);
    let answer = admin.test_connection("oai").await.expect("live").expect("connected");
    assert!(answer.starts_with("The image API took the key and lists"), "{answer}");
    assert_eq!(openai.count(Route::Models), 1);
    assert_eq!(tripo.count(Route::Create) + modelscope.count(Route::Create) + openai.count(Route::Create), 0);
    let answer = admin.test_connection("echo").await.expect("live").expect("ready");
    assert_eq!(answer, "The provider is ready.", "the default: the provider's health");

    // A draft is tested before it is saved, with the stored key when it sends none.
    let wrong = admin.test_draft(None, with_secret(t.clone(), "tsk_not_a_key_fake")).await.expect("built");
    assert!(wrong.expect_err("refused").contains("key"), "the upstream's refusal, said plainly");
    assert_eq!(tripo.count(Route::Balance), 2);
    let id = admin.id_of("tripo").await.expect("id");
    let kept = admin.test_draft(Some(id), t).await.expect("built").expect("the stored key");
    assert!(kept.starts_with("Tripo balance"), "{kept}");
    tripo.set_credits(TRIPO_KEY, 0);
    let broke = admin.test_connection("tripo").await.expect("live").expect_err("no credits");
    assert!(broke.contains("out of credits"), "{broke}");
    assert!(matches!(admin.test_connection("nobody").await, Err(AdminError::NotFound)));
    app.stop().await;
}

#[tokio::test]
async fn a_worker_channels_test_asks_every_worker_for_its_health() {
    use axum::{Json, Router, extract::State, routing::get};
    let calls = Arc::new(AtomicUsize::new(0));
    let app_router = Router::new()
        .route(
            "/health",
            get(|State(calls): State<Arc<AtomicUsize>>| async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Json(json!({ "status": "healthy", "protocol": 1, "slots": 2, "running": 1 }))
            }),
        )
        .with_state(Arc::clone(&calls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let up = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app_router).await });
    let down = "http://127.0.0.1:9";
    // A worker that is up but not ready, and says why.
    let sick_router = Router::new().route(
        "/health",
        get(|| async {
            let body = json!({ "status": "unhealthy", "models_loaded": false, "error": "flash_attn does not import" });
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(body))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let sick = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, sick_router).await });

    let app = TestApp::spawn().await;
    let workers = format!(
        "name = \"gpu\"\ntype = \"worker\"\nmodels = [{{ name = \"w\", kind = \"image_to_3d\" }}]\n\
         [options]\nworkers = [\"{up}\", \"{down}\", \"{sick}\"]\nhealth_interval = \"1h\"\n"
    );
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let admin = admin(&app.gateway);
    admin.create(with_secret(draft(&workers), secret)).await.expect("created");
    // The channel's own probe runs once as it starts, then not for an hour.
    wait_for("the first probe", || calls.load(Ordering::SeqCst) == 1).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = calls.load(Ordering::SeqCst);
    let answer = admin.test_connection("gpu").await.expect("live").expect("one is healthy");
    assert!(answer.starts_with("1 of 3 workers healthy"), "{answer}");
    assert!(answer.contains(&format!("{up} (healthy, protocol 1, 1/2 running)")), "{answer}");
    assert!(answer.contains(&format!("{down} (unreachable")), "{answer}");
    assert!(
        answer.contains(&format!("{sick} (answered 503 Service Unavailable: flash_attn does not import)")),
        "{answer}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), before + 1, "one /health per worker");
    app.stop().await;
}

#[tokio::test]
async fn a_channels_last_hour_shows_its_queue_outcomes_run_times_and_last_error() {
    let app = TestApp::spawn().await;
    for params in [r#"{"step_ms": 20}"#, r#"{"step_ms": 20}"#, r#"{"fail": "upstream_auth"}"#] {
        let (_, task) = submit(&app, "echo", params).await;
        app.wait_terminal(task["id"].as_str().expect("id")).await;
    }
    let (_, waiting) = submit(&app, "echo", r#"{"steps": 10, "step_ms": 100}"#).await;
    app.wait_task(waiting["id"].as_str().expect("id"), "running", |t| t["status"] == "running").await;

    let admin = admin(&app.gateway);
    let stats = admin.stats_of("echo").await.expect("stats");
    assert_eq!((stats.succeeded, stats.failed, stats.canceled, stats.running), (2, 1, 0, 1));
    assert_eq!(stats.success_rate, Some(2.0 / 3.0));
    let (p50, p95) = (stats.p50_seconds.expect("p50"), stats.p95_seconds.expect("p95"));
    assert!(p50 >= 0.05 && p95 >= p50, "three steps of 20 ms at least: {p50} {p95}");
    let last = stats.last_error.expect("the failure");
    assert_eq!((last.code.as_str(), last.message.as_str()), ("upstream_auth", "The echo provider was told to fail."));
    let created = admin
        .create(draft("name = \"quiet\"\ntype = \"echo\"\nmodels = [{ name = \"q\", kind = \"image_to_3d\" }]\n"))
        .await
        .expect("created");
    let all = admin.stats().await.expect("stats");
    assert_eq!(all.iter().map(|s| s.channel.as_str()).collect::<Vec<_>>(), ["echo", created.name.as_str()]);
    assert_eq!((all[1].succeeded, all[1].success_rate, all[1].last_error.is_none()), (0, None, true));
    app.stop().await;
}
