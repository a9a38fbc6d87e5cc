//! The channel repository: channels stored by the admin API (beside the configuration
//! file's), and what becomes of the waiting tasks of a channel that left the live set.

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{
    ChannelLoad, DbResult, Finish,
    rows::{Columns, to_time},
};
use crate::{
    config::ChannelConfig,
    tasks::{Task, TaskEvent, TaskId, TaskStatus},
};

/// A channel as stored.
#[derive(Debug, Clone)]
pub struct StoredChannel {
    pub id: Uuid,
    /// Its configuration, without its secret (`config.secret` is always `None` here).
    pub config: ChannelConfig,
    /// Its secret, sealed with the server's sealing key.
    pub sealed_secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The result of storing a channel.
#[derive(Debug)]
pub enum Stored {
    Done(Box<StoredChannel>),
    /// Another stored channel has this name.
    NameTaken,
    NotFound,
}

/// Where one waiting task of a channel that left (or stopped serving its model) goes.
#[derive(Debug, Clone)]
pub enum Rehome {
    /// Its channel still serves it: it stays where it is.
    Stay,
    /// To the first of these channels that has room, in this order; ended with
    /// `otherwise` when none has.
    Move { to: Vec<Destination>, otherwise: Finish },
}

/// A channel a waiting task may move to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub channel: String,
    /// Tasks it may hold queued and running (`max_concurrency + max_queue`), as when a
    /// task is admitted.
    pub capacity: u32,
}

/// What became of a channel's waiting tasks.
#[derive(Debug, Default)]
pub struct Rehomed {
    /// Each task moved, with the channel it went to, in queue order.
    pub moved: Vec<(TaskId, String)>,
    /// The tasks ended, as they ended.
    pub failed: Vec<Task>,
    /// The events written — each ended task's terminal event, and a `queued` event for
    /// every waiting task whose place changed (each moved task among them) — to publish
    /// after the commit.
    pub events: Vec<TaskEvent>,
}

/// What a channel did over a window: its queue now, and the tasks that ended in the
/// window.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ChannelStats {
    pub channel: String,
    /// Waiting now.
    pub queued: u64,
    /// Running now.
    pub running: u64,
    /// Ended in the window, by outcome.
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
    /// Succeeded ÷ (succeeded + failed): a cancel is the client's choice, not the
    /// channel's failure. `None` when none ended either way.
    pub success_rate: Option<f64>,
    /// Run time (start to end) of the tasks that succeeded, median and 95th
    /// percentile (nearest rank), in seconds.
    pub p50_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
    /// The latest failure in the window.
    pub last_error: Option<LastError>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LastError {
    pub task_id: TaskId,
    pub code: String,
    pub message: String,
    pub at: DateTime<Utc>,
}

/// The `p`th percentile (0–100) of sorted values, by nearest rank.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Each channel's statistics: its queue now (`loads`), and the tasks that ended in the
/// window (`ended`: rows of `id`, `channel`, `status`, `started_at`, `finished_at`,
/// `error_code` and `error_message`, oldest end first).
pub(super) fn stats(loads: Vec<ChannelLoad>, ended: &[impl Columns]) -> DbResult<Vec<ChannelStats>> {
    /// A channel's statistics, made when first met.
    fn stats_of<'m>(stats: &'m mut BTreeMap<String, ChannelStats>, channel: &str) -> &'m mut ChannelStats {
        stats
            .entry(channel.to_owned())
            .or_insert_with(|| ChannelStats { channel: channel.to_owned(), ..Default::default() })
    }

    let mut stats: BTreeMap<String, ChannelStats> = BTreeMap::new();
    for load in loads {
        let s = stats_of(&mut stats, &load.channel);
        (s.queued, s.running) = (load.queued, load.running);
    }
    let mut runs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for row in ended {
        let channel = row.text("channel")?;
        let s = stats_of(&mut stats, &channel);
        let finished = row.int("finished_at")?;
        match TaskStatus::parse(&row.text("status")?) {
            Some(TaskStatus::Succeeded) => {
                s.succeeded += 1;
                if let Some(started) = row.opt_int("started_at")? {
                    runs.entry(channel).or_default().push((finished - started).max(0) as f64 / 1000.0);
                }
            }
            Some(TaskStatus::Failed) => {
                s.failed += 1;
                // Rows come oldest first: the last one written is the latest.
                s.last_error = Some(LastError {
                    task_id: TaskId(row.uuid("id")?),
                    code: row.opt_text("error_code")?.unwrap_or_default(),
                    message: row.opt_text("error_message")?.unwrap_or_default(),
                    at: to_time(finished),
                });
            }
            Some(TaskStatus::Canceled) => s.canceled += 1,
            _ => {}
        }
    }
    for s in stats.values_mut() {
        let ended = s.succeeded + s.failed;
        s.success_rate = (ended > 0).then(|| s.succeeded as f64 / ended as f64);
        if let Some(runs) = runs.get_mut(&s.channel) {
            runs.sort_by(f64::total_cmp);
            s.p50_seconds = percentile(runs, 50.0);
            s.p95_seconds = percentile(runs, 95.0);
        }
    }
    Ok(stats.into_values().collect())
}

/// Re-announce every changed place: a queue is bounded by its channel's capacity, and a
/// move is rare, so every client whose place changed hears of it.
pub(super) const WHOLE_QUEUE: u32 = u32::MAX;

/// The decisions of [`ChannelRepo::rehome_queued`], task by task, oldest first: where
/// each waiting task goes, counting the tasks moved before it. Each database reads the
/// counters it is asked for (and locks them as it must) and moves the rows.
pub(super) struct Rehoming<'a> {
    channel: &'a str,
    /// Queued and running tasks per destination, as admission counts them.
    held: HashMap<String, i64>,
    /// Whether some task stays, whose place may change as others leave.
    stayed: bool,
    pub done: Rehomed,
}

/// The next step of choosing a waiting task's destination.
pub(super) enum Pick {
    /// Read this channel's queued and running tasks, then [`Rehoming::learn`] them.
    Count(String),
    /// The first destination with room, or `None` when none has.
    Chosen(Option<String>),
}

impl<'a> Rehoming<'a> {
    pub(super) fn new(channel: &'a str) -> Self {
        Self { channel, held: HashMap::new(), stayed: false, done: Rehomed::default() }
    }

    /// What `route` said of a task: where it may go and how it ends otherwise, or
    /// `None` when it stays.
    pub(super) fn route(&mut self, rehome: Rehome) -> Option<(Vec<Destination>, Finish)> {
        match rehome {
            Rehome::Stay => {
                self.stayed = true;
                None
            }
            Rehome::Move { to, otherwise } => Some((to, otherwise)),
        }
    }

    /// The first of `to` (other than the channel itself) with room, counters read only
    /// as far down the list as needed.
    pub(super) fn pick(&self, to: &[Destination]) -> Pick {
        for candidate in to.iter().filter(|d| d.channel != self.channel) {
            match self.held.get(&candidate.channel) {
                None => return Pick::Count(candidate.channel.clone()),
                Some(count) if *count < i64::from(candidate.capacity) => {
                    return Pick::Chosen(Some(candidate.channel.clone()));
                }
                Some(_) => {}
            }
        }
        Pick::Chosen(None)
    }

    /// A channel's queued and running tasks, as read.
    pub(super) fn learn(&mut self, channel: String, count: i64) {
        self.held.insert(channel, count);
    }

    pub(super) fn moved(&mut self, task: TaskId, to: String) {
        *self.held.entry(to.clone()).or_default() += 1;
        self.done.moved.push((task, to));
    }

    pub(super) fn ended(&mut self, task: Task, events: Vec<TaskEvent>) {
        self.done.failed.push(task);
        self.done.events.extend(events);
    }

    /// The channels whose waiting tasks' places changed, to re-announce: every
    /// destination, and the channel itself when some task stayed behind others that left.
    pub(super) fn changed_queues(&self) -> Vec<String> {
        let mut channels: Vec<String> = self.done.moved.iter().map(|(_, to)| to.clone()).collect();
        channels.sort_unstable();
        channels.dedup();
        if self.stayed && (!self.done.moved.is_empty() || !self.done.failed.is_empty()) {
            channels.push(self.channel.to_owned());
        }
        channels
    }
}

/// How a waiting task is routed when its channel left: it sees the task and whether
/// the task carries a client's own provider key (only a channel that takes client keys
/// may run such a task).
pub type RehomeRoute<'a> = dyn Fn(&Task, bool) -> Rehome + Send + Sync + 'a;

#[async_trait]
pub trait ChannelRepo: Send + Sync {
    /// Every stored channel, oldest first.
    async fn list_channels(&self) -> DbResult<Vec<StoredChannel>>;
    async fn get_channel(&self, id: Uuid) -> DbResult<Option<StoredChannel>>;
    /// Stores a new channel under a new id (UUIDv7); a secret in `config` is never
    /// stored, only `sealed_secret`.
    async fn create_channel(&self, config: &ChannelConfig, sealed_secret: Option<&str>) -> DbResult<Stored>;
    /// Replaces a stored channel's configuration and sealed secret.
    async fn update_channel(&self, id: Uuid, config: &ChannelConfig, sealed_secret: Option<&str>) -> DbResult<Stored>;
    /// Deletes a stored channel, returning it as it was.
    async fn delete_channel(&self, id: Uuid) -> DbResult<Option<StoredChannel>>;

    /// Each channel's queue now and the tasks it ended since `since`, for every channel
    /// with either (by name, in name order).
    async fn channel_stats(&self, since: DateTime<Utc>) -> DbResult<Vec<ChannelStats>>;

    /// Moves or ends the waiting tasks of `channel` as `route` says, in one transaction:
    /// oldest first, each to the first destination with room (counting the tasks moved
    /// before it). A moved task keeps its place by age among the destination's waiting
    /// tasks (queues are ordered by submission).
    async fn rehome_queued(&self, channel: &str, route: &RehomeRoute<'_>) -> DbResult<Rehomed>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        db::scratch::{Scratch, on_every_backend},
        tasks::EventKind,
    };

    on_every_backend!(
        a_channel_is_stored_as_json_with_its_secret_only_sealed_and_its_name_unique,
        a_channels_last_hour_counts_outcomes_run_times_and_its_latest_error,
        waiting_tasks_move_in_order_up_to_each_destinations_room_and_the_rest_fail,
    );

    fn load(loads: &[ChannelLoad], channel: &str) -> (u64, u64) {
        loads.iter().find(|l| l.channel == channel).map_or((0, 0), |l| (l.queued, l.running))
    }

    fn to(channel: &str, capacity: u32) -> Destination {
        Destination { channel: channel.into(), capacity }
    }

    fn failed() -> Finish {
        Finish::Failed { code: "channel_deleted".into(), message: "gone".into() }
    }

    async fn a_channel_is_stored_as_json_with_its_secret_only_sealed_and_its_name_unique(db: &Scratch) {
        let text = "name = \"t\"\ntype = \"tripo\"\nsecret = \"tsk_plain_secret\"\ndeadline = \"5m\"\n\
                    models = [{ name = \"m\", kind = \"text_to_3d\" }]\n[options]\nregion = \"cn\"\n";
        let config: ChannelConfig = toml::from_str(text).expect("channel");
        let Stored::Done(created) = db.create_channel(&config, Some("v1:sealed")).await.expect("create") else {
            panic!("created")
        };
        assert_eq!(created.id.get_version_num(), 7);
        assert_eq!(created.config, ChannelConfig { secret: None, ..config.clone() });
        assert_eq!(created.sealed_secret.as_deref(), Some("v1:sealed"));
        let raw = db.text("SELECT config FROM channels".to_owned()).await;
        assert!(!raw.contains("tsk_plain_secret") && !raw.contains("****"), "no secret, not even masked: {raw}");
        assert!(matches!(db.create_channel(&config, None).await.expect("again"), Stored::NameTaken));

        let other = ChannelConfig { name: "u".into(), ..config.clone() };
        let Stored::Done(second) = db.create_channel(&other, None).await.expect("create") else { panic!("created") };
        let listed: Vec<String> = db.list_channels().await.expect("list").into_iter().map(|c| c.config.name).collect();
        assert_eq!(listed, ["t", "u"], "oldest first");
        let renamed = ChannelConfig { name: "t".into(), ..other.clone() };
        assert!(matches!(db.update_channel(second.id, &renamed, None).await.expect("update"), Stored::NameTaken));
        let edited = ChannelConfig { max_queue: 42, ..other };
        let Stored::Done(updated) = db.update_channel(second.id, &edited, Some("v1:new")).await.expect("update") else {
            panic!("updated")
        };
        assert_eq!((updated.config.max_queue, updated.sealed_secret.as_deref()), (42, Some("v1:new")));
        assert!(updated.updated_at >= updated.created_at);
        assert!(matches!(db.update_channel(Uuid::now_v7(), &edited, None).await.expect("update"), Stored::NotFound));
        assert_eq!(db.get_channel(second.id).await.expect("get").map(|c| c.config.max_queue), Some(42));
        assert_eq!(db.delete_channel(second.id).await.expect("delete").map(|c| c.id), Some(second.id));
        assert!(db.get_channel(second.id).await.expect("get").is_none());
        assert!(db.delete_channel(second.id).await.expect("delete").is_none());
    }

    /// Ends a task as `status`, having started `ran` ms before it ended `ago` ms ago.
    async fn ended(db: &Scratch, id: TaskId, status: &str, ran: i64, ago: i64, code: Option<&str>) {
        let now = chrono::Utc::now().timestamp_millis();
        let (code, message) = match code {
            Some(code) => (format!("'{code}'"), format!("'failed with {code}'")),
            None => ("NULL".to_owned(), "NULL".to_owned()),
        };
        db.execute(format!(
            "UPDATE tasks SET status = '{status}', started_at = {}, finished_at = {}, error_code = {code}, \
             error_message = {message} WHERE id = '{id}'",
            now - ago - ran,
            now - ago,
        ))
        .await;
    }

    async fn a_channels_last_hour_counts_outcomes_run_times_and_its_latest_error(db: &Scratch) {
        const MIN: i64 = 60_000;
        for seconds in 1..=10 {
            let id = db.enqueue_task("c", "m", None).await;
            ended(db, id, "succeeded", seconds * 1000, (seconds + 1) * MIN, None).await;
        }
        let older = db.enqueue_task("c", "m", None).await;
        ended(db, older, "failed", 500, 30 * MIN, Some("upstream_error")).await;
        let latest = db.enqueue_task("c", "m", None).await;
        ended(db, latest, "failed", 500, 10 * MIN, Some("upstream_auth")).await;
        let canceled = db.enqueue_task("c", "m", None).await;
        ended(db, canceled, "canceled", 100, 5 * MIN, None).await;
        let outside = db.enqueue_task("c", "m", None).await;
        ended(db, outside, "succeeded", 3_600_000, 120 * MIN, None).await;
        db.enqueue_task("c", "m", None).await;
        let running = db.enqueue_task("c", "m", None).await;
        db.execute(format!("UPDATE tasks SET status = 'running' WHERE id = '{running}'")).await;
        db.enqueue_task("idle", "m", None).await;

        let since = chrono::Utc::now() - chrono::Duration::hours(1);
        let stats = db.channel_stats(since).await.expect("stats");
        let names: Vec<&str> = stats.iter().map(|s| s.channel.as_str()).collect();
        assert_eq!(names, ["c", "idle"]);
        let c = &stats[0];
        assert_eq!((c.queued, c.running), (1, 1));
        assert_eq!((c.succeeded, c.failed, c.canceled), (10, 2, 1), "the one two hours ago is not counted");
        assert_eq!(c.success_rate, Some(10.0 / 12.0), "cancels are not the channel's failures");
        assert_eq!((c.p50_seconds, c.p95_seconds), (Some(5.0), Some(10.0)));
        let last = c.last_error.as_ref().expect("an error");
        assert_eq!((last.task_id, last.code.as_str()), (latest, "upstream_auth"));
        assert_eq!(last.message, "failed with upstream_auth");
        let idle = &stats[1];
        assert_eq!((idle.queued, idle.succeeded, idle.success_rate, idle.p50_seconds), (1, 0, None, None));
        assert!(idle.last_error.is_none());
    }

    async fn waiting_tasks_move_in_order_up_to_each_destinations_room_and_the_rest_fail(db: &Scratch) {
        let early = db.enqueue_task("target", "m", None).await;
        let moved: Vec<TaskId> =
            [db.enqueue_task("gone", "m", None).await, db.enqueue_task("gone", "m", None).await].into();
        let late = db.enqueue_task("target", "m", None).await;
        let spill = db.enqueue_task("gone", "m", None).await;
        let keyed = db.enqueue_task("gone", "m", Some("v1:sealed")).await;
        let stays = db.enqueue_task("gone", "kept", None).await;
        // Room for two more on `target` (it holds two), one on `spare`.
        let route = |task: &crate::tasks::Task, client_key: bool| match task.model.as_str() {
            "kept" => Rehome::Stay,
            _ if client_key => Rehome::Move { to: vec![], otherwise: failed() },
            _ => Rehome::Move { to: vec![to("target", 4), to("spare", 1)], otherwise: failed() },
        };
        let done = db.rehome_queued("gone", &route).await.expect("rehomed");
        assert_eq!(
            done.moved,
            [(moved[0], "target".to_owned()), (moved[1], "target".to_owned()), (spill, "spare".to_owned())]
        );
        assert_eq!(done.failed.iter().map(|t| t.id).collect::<Vec<_>>(), [keyed]);
        assert_eq!(done.failed[0].status, TaskStatus::Failed);
        assert_eq!(done.failed[0].error_code.as_deref(), Some("channel_deleted"));

        let loads = db.channel_loads().await.expect("loads");
        assert_eq!(load(&loads, "target"), (4, 0), "the counters follow the moved tasks");
        assert_eq!(load(&loads, "spare"), (1, 0));
        assert_eq!(load(&loads, "gone"), (1, 0), "only the task that stays");
        // Queues are ordered by submission: the moved tasks come before the later one.
        let mut positions = Vec::new();
        for id in [early, moved[0], moved[1], late, stays] {
            positions.push(db.queue_position(id).await.expect("position"));
        }
        assert_eq!(positions, [Some(1), Some(2), Some(3), Some(4), Some(1)]);
        let queued = |id| done.events.iter().find(|e| e.task_id == id && e.kind == EventKind::Queued).cloned();
        assert_eq!(queued(moved[1]).expect("an event for each moved task").data["position"], 3);
        assert_eq!(queued(late).expect("and for those pushed back").data["position"], 4);
        assert_eq!(queued(stays).expect("and for those moved up").data["position"], 1);
        assert!(queued(early).is_none(), "not for those whose place did not change");
        assert!(done.events.iter().any(|e| e.task_id == keyed && e.kind == EventKind::Failed));
        let moved_task = db.get_task(moved[0]).await.expect("read").expect("task");
        assert_eq!((moved_task.channel.as_str(), moved_task.status), ("target", TaskStatus::Queued));
    }

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let values: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&values, 50.0), Some(10.0));
        assert_eq!(percentile(&values, 95.0), Some(19.0));
        assert_eq!(percentile(&values[..1], 95.0), Some(1.0));
        assert_eq!(percentile(&values, 0.0), Some(1.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
