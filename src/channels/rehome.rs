//! What becomes of the waiting tasks of a channel that left the live set (it was
//! deleted), or that no longer serves their model (it was edited).
//!
//! Each such task moves to another enabled channel that serves its model for its kind,
//! if one has room for it (`max_concurrency + max_queue`, as at admission): the best by
//! priority (then weight) that takes its parameters, and its client's own key if it
//! brought one. It keeps its place by age in the new queue and gets a `queued` event
//! with it. A task no channel can take fails: `channel_deleted` when its channel was
//! deleted, `model_withdrawn` when its channel no longer serves the model. Moving beats
//! failing because the client asked for a model, not a channel; failing beats waiting
//! forever on a queue nobody serves. Running tasks are never moved: they end where they
//! started.
//!
//! It all happens in one transaction ([`crate::db::ChannelRepo::rehome_queued`]); the
//! events are published after the commit.

use crate::{
    channels::{Changes, Router},
    db::{Db, DbResult, Destination, Finish, Rehome, Rehomed},
    metrics::Metrics,
    notify::Notifier,
    tasks::Task,
};

/// The failure code of a waiting task whose channel was deleted and that no other
/// channel could take.
pub const CHANNEL_DELETED: &str = "channel_deleted";
/// The failure code of a waiting task whose channel was edited to no longer serve its
/// model, and that no other channel could take.
pub const MODEL_WITHDRAWN: &str = "model_withdrawn";

/// Where one waiting task of `from` goes, given the channels now.
pub fn route(router: &Router, from: &str, task: &Task, client_key: bool) -> Rehome {
    let still = router.channel(from);
    if still.is_some_and(|c| c.model(&task.model).is_some_and(|m| m.kind == task.kind)) {
        return Rehome::Stay;
    }
    let mut takers: Vec<_> = router
        .channels()
        .iter()
        .filter(|c| c.name != from && c.enabled && !c.is_retired())
        .filter(|c| c.model(&task.model).is_some_and(|m| m.kind == task.kind))
        .filter(|c| !client_key || c.client_keys)
        .filter(|c| {
            c.provider
                .check_params(task.kind, &crate::outputs::provider_params(&task.params, c.provider.as_ref()))
                .is_ok()
        })
        .collect();
    // Stable: among equals, the configuration's order.
    takers.sort_by(|a, b| b.priority.cmp(&a.priority).then(b.weight.cmp(&a.weight)));
    let why = match still {
        None => format!("The channel `{from}` was deleted while this task waited"),
        Some(_) => format!("The channel `{from}` no longer serves `{}`", task.model),
    };
    let message = if takers.is_empty() {
        format!("{why}, and no other enabled channel serves `{}` for {}.", task.model, task.kind.as_str())
    } else {
        format!("{why}, and no other channel serving `{}` had room for it.", task.model)
    };
    let code = if still.is_none() { CHANNEL_DELETED } else { MODEL_WITHDRAWN };
    Rehome::Move {
        to: takers.iter().map(|c| Destination { channel: c.name.clone(), capacity: c.capacity() }).collect(),
        otherwise: Finish::Failed { code: code.to_owned(), message },
    }
}

/// Moves or fails the waiting tasks of `from` that the channels in `router` leave
/// without a home, publishes the events, and wakes the channels that took some.
pub async fn rehome(
    router: &Router,
    db: &Db,
    notifier: &dyn Notifier,
    metrics: &Metrics,
    from: &str,
) -> DbResult<Rehomed> {
    let done = db.rehome_queued(from, &|task, client_key| route(router, from, task, client_key)).await?;
    notifier.events(&done.events);
    for task in &done.failed {
        metrics.task_finished(task);
    }
    for (_, to) in &done.moved {
        notifier.work(to);
    }
    if !done.moved.is_empty() || !done.failed.is_empty() {
        tracing::warn!(
            channel = from,
            moved = done.moved.len(),
            failed = done.failed.len(),
            "waiting tasks of a deleted or edited channel were moved or failed"
        );
    }
    Ok(done)
}

/// [`rehome`] for every channel an apply removed or replaced.
pub async fn settle(
    router: &Router,
    db: &Db,
    notifier: &dyn Notifier,
    metrics: &Metrics,
    changes: &Changes,
) -> DbResult<Vec<(String, Rehomed)>> {
    let mut all = Vec::new();
    for name in changes.removed.iter().chain(&changes.replaced) {
        all.push((name.clone(), rehome(router, db, notifier, metrics, name).await?));
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use serde_json::{Value, json};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::{
        channels::{Channel, Origin},
        config::ChannelConfig,
        providers::{Job, JobContext, Outcome, Provider, ProviderError},
        tasks::{TaskId, TaskKind, TaskStatus},
    };

    /// Refuses a task whose params hold `refuse`.
    struct Picky;

    #[async_trait]
    impl Provider for Picky {
        fn describe(&self) -> String {
            "picky".into()
        }
        fn check_params(&self, _kind: TaskKind, params: &Value) -> Result<(), String> {
            if params.get("refuse").is_some() { Err("no".into()) } else { Ok(()) }
        }
        async fn run(&self, _job: Job, _ctx: JobContext) -> Result<Outcome, ProviderError> {
            Ok(Outcome::Detached)
        }
    }

    fn channel(text: &str) -> Arc<Channel> {
        let config: ChannelConfig = toml::from_str(text).expect("channel");
        let stop = CancellationToken::new();
        Arc::new(Channel::new(&config, Origin::File, Arc::new(Picky), std::time::Duration::from_secs(60), &stop))
    }

    fn task(model: &str, kind: TaskKind, params: Value) -> Task {
        Task {
            id: TaskId::new(),
            kind,
            model: model.into(),
            channel: "gone".into(),
            status: TaskStatus::Queued,
            prompt: None,
            picture_id: None,
            params,
            progress: 0,
            stage: None,
            error_code: None,
            error_message: None,
            metadata: json!({}),
            provider_job_id: None,
            placement: None,
            submitting_at: None,
            finishing_at: None,
            attempts: 0,
            created_at: chrono::Utc::now(),
            started_at: None,
            finished_at: None,
            deadline_at: None,
            owner_id: None,
            token_id: None,
            webhook_url: None,
        }
    }

    fn names(rehome: &Rehome) -> Vec<&str> {
        match rehome {
            Rehome::Stay => vec!["(stay)"],
            Rehome::Move { to, .. } => to.iter().map(|d| d.channel.as_str()).collect(),
        }
    }

    fn failure(rehome: &Rehome) -> (String, String) {
        match rehome {
            Rehome::Move { otherwise: Finish::Failed { code, message }, .. } => (code.clone(), message.clone()),
            other => panic!("no failure in {other:?}"),
        }
    }

    #[test]
    fn a_task_goes_to_enabled_channels_serving_its_model_and_kind_best_first() {
        let serving = |name: &str, extra: &str| {
            channel(&format!(
                "name = \"{name}\"\ntype = \"t\"\nmax_queue = 3\n{extra}\n\
                 models = [{{ name = \"m\", kind = \"image_to_3d\" }}, {{ name = \"t\", kind = \"text_to_3d\" }}]\n"
            ))
        };
        let router = Router::new(
            vec![
                serving("low", "priority = -1"),
                serving("off", "enabled = false"),
                serving("high", "priority = 5"),
                serving("keys", "client_keys = true"),
                channel("name = \"other\"\ntype = \"t\"\nmodels = [{ name = \"x\", kind = \"image_to_3d\" }]\n"),
            ],
            &Default::default(),
        );
        let plain = route(&router, "gone", &task("m", TaskKind::ImageTo3d, json!({})), false);
        assert_eq!(names(&plain), ["high", "keys", "low"], "enabled, serving, by priority");
        let Rehome::Move { to, .. } = &plain else { panic!("move") };
        assert_eq!(to[0].capacity, 1 + 3, "max_concurrency + max_queue");
        let keyed = route(&router, "gone", &task("m", TaskKind::ImageTo3d, json!({})), true);
        assert_eq!(names(&keyed), ["keys"], "a client's key only where client keys are taken");
        let refused = route(&router, "gone", &task("m", TaskKind::ImageTo3d, json!({ "refuse": 1 })), false);
        assert!(names(&refused).is_empty(), "nor where the provider refuses its parameters");
        assert_eq!(failure(&refused).0, CHANNEL_DELETED);
        assert!(failure(&refused).1.contains("`gone` was deleted"), "{}", failure(&refused).1);
        let wrong_kind = route(&router, "gone", &task("x", TaskKind::TextTo3d, json!({})), false);
        assert!(names(&wrong_kind).is_empty(), "the model for its kind");
    }

    #[test]
    fn a_task_its_edited_channel_still_serves_stays_and_one_it_dropped_is_withdrawn() {
        let router = Router::new(
            vec![channel("name = \"edited\"\ntype = \"t\"\nmodels = [{ name = \"kept\", kind = \"image_to_3d\" }]\n")],
            &Default::default(),
        );
        assert!(matches!(route(&router, "edited", &task("kept", TaskKind::ImageTo3d, json!({})), false), Rehome::Stay));
        let dropped = route(&router, "edited", &task("dropped", TaskKind::ImageTo3d, json!({})), false);
        assert!(names(&dropped).is_empty());
        let (code, message) = failure(&dropped);
        assert_eq!(code, MODEL_WITHDRAWN);
        assert!(message.contains("no longer serves `dropped`"), "{message}");
    }
}
