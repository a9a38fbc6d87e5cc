//! Prices and usage records: what a model costs, and what each task reserved, was
//! charged and took. Credits are reserved in the transaction that queues a task and
//! settled in the one that ends it (see [`super::TaskRepo::enqueue`] and
//! [`super::TaskRepo::finish`]); this trait reads the records and sets prices.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::DbResult;
use crate::tasks::{Artifact, Task, TaskId, TaskKind, TaskStatus};

/// What one model costs, in whole credits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Price {
    pub model: String,
    /// Charged for every task that succeeds.
    pub per_task: i64,
    /// Charged for every image a succeeded task produced (text-to-image).
    pub per_image: i64,
}

/// Who pays for a task being queued, and the limits checked in the same transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Billing {
    /// The user whose balance is charged; `None` runs free (anonymous callers in open
    /// mode, admins).
    pub payer: Option<Uuid>,
    /// The token whose spending cap also applies.
    pub token: Option<Uuid>,
    /// Images the task asks for (`n`), reserved at the per-image price.
    pub images: u32,
    /// The owner's limit of queued and running tasks at once.
    pub max_active: Option<u32>,
}

/// One task's usage record.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct UsageRecord {
    #[schema(value_type = String, format = Uuid)]
    pub task_id: TaskId,
    pub user_id: Option<Uuid>,
    pub username: Option<String>,
    pub token_id: Option<Uuid>,
    pub token_name: Option<String>,
    pub channel: String,
    pub model: String,
    pub kind: String,
    /// Credits held while the task was queued or running.
    pub reserved: i64,
    /// Credits charged when it ended; `None` while it has not.
    pub charged: Option<i64>,
    /// `succeeded`, `failed`, `canceled`; `None` while it has not ended.
    pub outcome: Option<String>,
    /// The error code of a failed task.
    pub error_code: Option<String>,
    pub queue_ms: Option<i64>,
    pub run_ms: Option<i64>,
    /// The provider's own id for the job.
    pub upstream_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Which usage records to read, newest first.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub user: Option<Uuid>,
    pub token: Option<Uuid>,
    pub model: Option<String>,
    pub channel: Option<String>,
    pub outcome: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Records older than this task (the cursor).
    pub before: Option<TaskId>,
    pub limit: u32,
}

/// Totals over the records a filter selects.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct UsageTotals {
    pub tasks: u64,
    pub succeeded: u64,
    pub failed: u64,
    pub canceled: u64,
    pub charged: i64,
}

/// Tasks of one model and outcome made within one hour.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HourlyTasks {
    pub hour: DateTime<Utc>,
    pub model: String,
    /// `succeeded`, `failed`, `canceled`, or `pending`.
    pub outcome: String,
    pub count: u64,
}

/// Credits charged for tasks that ended within one hour.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct HourlyCredits {
    pub hour: DateTime<Utc>,
    pub credits: i64,
}

/// What the console's dashboard draws, since a moment.
#[derive(Debug, Clone, Default)]
pub struct Activity {
    pub tasks: Vec<HourlyTasks>,
    pub credits: Vec<HourlyCredits>,
    /// Run times (ms) of tasks that ended, per channel.
    pub run_times: Vec<(String, Vec<i64>)>,
}

#[async_trait]
pub trait UsageRepo: Send + Sync {
    /// Tasks per hour by model and outcome, credits per hour, and run times per channel,
    /// from `since`.
    async fn activity(&self, since: DateTime<Utc>) -> DbResult<Activity>;
    async fn list_prices(&self) -> DbResult<Vec<Price>>;
    /// Sets a model's price; zero for both removes it.
    async fn set_price(&self, price: &Price) -> DbResult<()>;
    async fn list_usage(&self, filter: &UsageFilter) -> DbResult<Vec<UsageRecord>>;
    async fn usage_totals(&self, filter: &UsageFilter) -> DbResult<UsageTotals>;
}

/// What a task costs at a model's prices: per task, plus per image at the per-image
/// price, saturating rather than overflowing.
pub(super) fn task_price(per_task: i64, per_image: i64, images: u32) -> i64 {
    per_task.saturating_add(per_image.saturating_mul(i64::from(images)))
}

/// Images among a task's outputs, for the per-image price.
pub(super) fn images_of(artifacts: &[Artifact]) -> u32 {
    artifacts.iter().filter(|a| a.role == "image").count().try_into().unwrap_or(u32::MAX)
}

/// A task's reservation, as its usage record holds it until the task ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Reservation {
    /// The payer, whose balance gets back what is not charged.
    pub user_id: Option<String>,
    /// The token whose spending gets back what is not charged.
    pub token_id: Option<String>,
    pub per_task: i64,
    pub per_image: i64,
    pub reserved: i64,
}

/// How a task's usage settles when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settlement {
    /// A succeeded task's price (per task, plus per image made, never more than was
    /// reserved); nothing for any other end.
    pub charged: i64,
    /// The rest of the reservation, back to the payer and the token.
    pub refund: i64,
    pub queue_ms: i64,
    pub run_ms: Option<i64>,
    pub finished_at: i64,
}

impl Settlement {
    /// The settlement of `task`, just ended, having made `images` images.
    pub(super) fn of(task: &Task, reservation: &Reservation, images: u32) -> Self {
        let charged = if task.status == TaskStatus::Succeeded {
            // The per-image price is for the images a text-to-image task was asked for,
            // not for a 3D task's preview pictures.
            let images = if task.kind == TaskKind::TextToImage { images } else { 0 };
            task_price(reservation.per_task, reservation.per_image, images).min(reservation.reserved)
        } else {
            0
        };
        let created = task.created_at.timestamp_millis();
        let finished = task.finished_at.map(|t| t.timestamp_millis()).unwrap_or_else(super::rows::now_ms);
        let started = task.started_at.map(|t| t.timestamp_millis());
        Self {
            charged,
            refund: reservation.reserved - charged,
            queue_ms: (started.unwrap_or(finished) - created).max(0),
            run_ms: started.map(|s| (finished - s).max(0)),
            finished_at: finished,
        }
    }
}
