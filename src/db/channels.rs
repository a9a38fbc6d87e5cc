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
