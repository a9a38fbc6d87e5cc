//! The channel repository: channels stored by the admin API (beside the configuration
//! file's), and what becomes of the waiting tasks of a channel that left the live set.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{DbResult, Finish};
use crate::{
    config::ChannelConfig,
    tasks::{Task, TaskEvent, TaskId},
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
