//! The live channel set: channels added, edited, disabled and removed while kiln runs,
//! without a restart and without disturbing the tasks already running.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use kiln::{
    channels::{ChannelSpec, Origin},
    config::ChannelConfig,
    providers::{ChannelRuntime, Job, JobContext, Outcome, Provider, ProviderError, Registry},
    tasks::TaskId,
};
use serde_json::{Value, json};

use crate::{
    helpers::{TASKS, TestApp},
    provider::Echo,
};

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
    fn get(&self, i: usize) -> Option<Arc<Lamp>> {
        self.0.lock().expect("lamps").get(i).cloned()
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

fn lamp_channel(upstream: &str) -> String {
    format!(
        "[[channels]]\nname = \"lamp\"\ntype = \"lamp\"\nmax_concurrency = 1\nmax_queue = 10\n\
         models = [{{ name = \"echo\", kind = \"image_to_3d\", upstream = \"{upstream}\" }}]\n"
    )
}

fn spec(toml_text: &str) -> ChannelSpec {
    let config: ChannelConfig = toml::from_str(toml_text).expect("channel");
    ChannelSpec { origin: Origin::File, config }
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

#[tokio::test]
async fn an_edit_leaves_a_running_task_to_finish_on_the_old_provider_and_the_next_runs_on_the_new() {
    let lamps = Lamps::default();
    let app = TestApp::spawn_registry("", TASKS, &lamp_channel("v1"), &registry(&lamps)).await;
    wait_for("the first lamp starts", || lamps.get(0).is_some_and(|l| l.started.load(Ordering::SeqCst))).await;
    let slow = app.submit_image(&[("params", r#"{"steps": 15, "step_ms": 100}"#)]).await;
    let slow = slow["id"].as_str().expect("id").to_owned();
    app.wait_task(&slow, "running", |t| t["status"] == "running").await;

    let mut edited = app.gateway.channels().file_specs();
    edited[0] = spec(&lamp_channel("v2").replace("[[channels]]\n", ""));
    let changes = app.gateway.channels().apply(edited).expect("applied");
    assert_eq!(changes.replaced, ["lamp"]);
    wait_for("the new lamp starts", || lamps.get(1).is_some_and(|l| l.started.load(Ordering::SeqCst))).await;
    let old = lamps.get(0).expect("old lamp");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.get_json(&format!("/api/v1/tasks/{slow}")).await.1["status"], "running");
    assert!(!old.stopped.load(Ordering::SeqCst), "the old provider works on while its task runs");

    // One place on the channel: the next task waits for the running one, then runs on
    // the edited channel.
    let next = app.submit_image(&[]).await;
    let next = next["id"].as_str().expect("id").to_owned();
    let done = app.wait_terminal(&slow).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let slow_task = stored_task(&app, &slow).await;
    assert_eq!(slow_task.metadata["model"], "v1", "it ran to the end on the channel it started on");
    assert_eq!(slow_task.attempts, 1, "and was never restarted");
    wait_for("the old provider's background work ends", || old.stopped.load(Ordering::SeqCst)).await;

    assert_eq!(app.wait_terminal(&next).await["status"], "succeeded");
    assert_eq!(stored_task(&app, &next).await.metadata["model"], "v2", "new work runs on the edited channel");
    assert_eq!(lamps.count(), 2, "one provider per build, none for unchanged channels");
    assert!(!lamps.get(1).expect("new lamp").stopped.load(Ordering::SeqCst));
    app.stop().await;
}

#[tokio::test]
async fn a_channel_added_while_running_takes_tasks_and_a_disabled_one_takes_none() {
    let app = TestApp::spawn().await;
    let submit = |model: &'static str| {
        let app = &app;
        async move {
            let response = app.upload("/api/v1/tasks", crate::helpers::fixture("vase.png"), &[("model", model)]).await;
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = submit("fresh").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("unknown_model")));

    let extra = "name = \"extra\"\ntype = \"echo\"\nmodels = [{ name = \"fresh\", kind = \"image_to_3d\" }]\n";
    let file = app.gateway.channels().file_specs();
    let mut specs = file.clone();
    specs.push(spec(extra));
    assert_eq!(app.gateway.channels().apply(specs).expect("applied").added, ["extra"]);
    let (status, task) = submit("fresh").await;
    assert_eq!(status, 202, "{task}");
    assert_eq!(task["channel"], "extra");
    let done = app.wait_terminal(task["id"].as_str().expect("id")).await;
    assert_eq!(done["status"], "succeeded", "a dispatcher started for it: {done}");

    let mut specs = file;
    specs.push(spec(&format!("{extra}enabled = false\n")));
    assert_eq!(app.gateway.channels().apply(specs).expect("applied").replaced, ["extra"]);
    let (status, body) = submit("fresh").await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("channel_unavailable")), "{body}");
    let (_, catalog) = app.get_json("/api/v1/catalog").await;
    let fresh = catalog["models"].as_array().expect("models").iter().find(|m| m["name"] == "fresh").cloned();
    assert_eq!(fresh.map(|m| m["available"].clone()), Some(json!(false)));
    // The file's channel was never touched.
    let (status, _) = submit("echo").await;
    assert_eq!(status, 202);
    app.stop().await;
}

#[tokio::test]
async fn a_deleted_channels_waiting_tasks_move_to_another_serving_their_model_or_fail_channel_deleted() {
    let busy = "[[channels]]\nname = \"busy\"\ntype = \"echo\"\nmax_concurrency = 1\nmax_queue = 10\n\
                models = [{ name = \"echo\", kind = \"image_to_3d\" }, { name = \"solo\", kind = \"image_to_3d\" }]\n";
    let spare = "[[channels]]\nname = \"spare\"\ntype = \"echo\"\npriority = -1\nmax_concurrency = 1\nmax_queue = 1\n\
                 models = [{ name = \"echo\", kind = \"image_to_3d\" }]\n";
    let app = TestApp::spawn_with(&format!("{busy}{spare}")).await;
    let slow = r#"{"steps": 10, "step_ms": 100}"#;
    let running = app.submit_image(&[("params", slow)]).await;
    let running = running["id"].as_str().expect("id").to_owned();
    app.wait_task(&running, "running", |t| t["status"] == "running").await;
    let mut waiting = Vec::new();
    for model in ["echo", "echo", "echo", "solo"] {
        let task = app.submit_image(&[("model", model), ("params", slow)]).await;
        assert_eq!(task["channel"], "busy");
        waiting.push(task["id"].as_str().expect("id").to_owned());
    }

    let keep: Vec<ChannelSpec> =
        app.gateway.channels().file_specs().into_iter().filter(|s| s.config.name != "busy").collect();
    let changes = app.gateway.channels().apply(keep).expect("applied");
    assert_eq!(changes.removed, ["busy"]);
    let now = app.gateway.channels().current();
    let gw = &app.gateway;
    let settled =
        kiln::channels::rehome::settle(&now, gw.db(), gw.bus(), gw.metrics(), &changes).await.expect("settled");
    assert_eq!(settled.len(), 1);
    assert_eq!(settled[0].1.moved.len(), 2, "as many as `spare` has room for (1 + 1)");

    for id in &waiting[..2] {
        let (_, task) = app.get_json(&format!("/api/v1/tasks/{id}")).await;
        assert_eq!(task["channel"], "spare", "{task}");
        let events = app.events(id, None, 20).await;
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
    assert!(
        nobody["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("`busy` was deleted") && m.contains("no other enabled channel serves `solo`")),
        "{nobody}"
    );
    let done = app.wait_terminal(&running).await;
    assert_eq!(done["status"], "succeeded", "the running task ends where it started: {done}");
    assert_eq!(done["channel"], "busy");
    app.stop().await;
}

#[tokio::test]
async fn a_restart_loads_the_stored_channels_with_their_secrets_and_the_file_keeps_its_names() {
    let app = TestApp::spawn().await;
    let stored: ChannelConfig = toml::from_str(
        "name = \"kept\"\ntype = \"echo\"\nsecret = \"only-in-the-sealed-column\"\n\
         models = [{ name = \"kept-model\", kind = \"image_to_3d\" }]\n",
    )
    .expect("channel");
    let sealed = app.gateway.sealer().expect("sealer").seal(stored.secret.as_ref().expect("secret")).expect("sealed");
    let created = app.gateway.db().create_channel(&stored, Some(&sealed)).await.expect("stored");
    let kiln::db::Stored::Done(created) = created else { panic!("created") };
    let shadowed = ChannelConfig { name: "echo".into(), ..stored.clone() };
    assert!(matches!(
        app.gateway.db().create_channel(&shadowed, None).await.expect("stored"),
        kiln::db::Stored::Done(_)
    ));
    assert!(app.gateway.channels().current().channel("kept").is_none(), "stored, not yet loaded");
    let dir = app.stop_keeping_dir().await;

    let app = TestApp::spawn_in(dir, "", TASKS, crate::helpers::ECHO_CHANNEL, &crate::provider::registry()).await;
    let router = app.gateway.channels().current();
    let kept = router.channel("kept").expect("loaded at start-up");
    assert_eq!(kept.origin, Origin::Database(created.id));
    assert_eq!(kept.config().secret.as_ref().map(|s| s.expose()), Some("only-in-the-sealed-column"));
    assert_eq!(router.channel("echo").expect("echo").origin, Origin::File, "the file's channel keeps its name");
    let task = app.submit_image(&[("model", "kept-model")]).await;
    assert_eq!(task["channel"], "kept");
    assert_eq!(app.wait_terminal(task["id"].as_str().expect("id")).await["status"], "succeeded");
    app.stop().await;
}
