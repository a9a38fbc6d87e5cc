//! Outbound notifications of finished tasks. A task may name a `webhook_url`; when it
//! ends, kiln POSTs `task.completed`, `task.failed` or `task.canceled` there, and tries
//! again until it is taken. Each delivery and each attempt at it is recorded
//! ([`crate::db::DeliveryRepo`]). Where a message may go is [`destination`]'s concern;
//! when to try again is [`Schedule`]'s.

pub mod destination;
mod schedule;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use destination::{DestinationError, check_destination, resolve_destination};
pub use schedule::Schedule;

use crate::tasks::{TaskId, TaskStatus};

/// What a delivery announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum DeliveryEvent {
    #[serde(rename = "task.completed")]
    TaskCompleted,
    #[serde(rename = "task.failed")]
    TaskFailed,
    #[serde(rename = "task.canceled")]
    TaskCanceled,
}

impl DeliveryEvent {
    pub const ALL: [DeliveryEvent; 3] =
        [DeliveryEvent::TaskCompleted, DeliveryEvent::TaskFailed, DeliveryEvent::TaskCanceled];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryEvent::TaskCompleted => "task.completed",
            DeliveryEvent::TaskFailed => "task.failed",
            DeliveryEvent::TaskCanceled => "task.canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == text)
    }

    /// The event announcing that a task ended in `status`; `None` while it has not.
    pub fn for_status(status: TaskStatus) -> Option<Self> {
        match status {
            TaskStatus::Succeeded => Some(DeliveryEvent::TaskCompleted),
            TaskStatus::Failed => Some(DeliveryEvent::TaskFailed),
            TaskStatus::Canceled => Some(DeliveryEvent::TaskCanceled),
            TaskStatus::Queued | TaskStatus::Running => None,
        }
    }
}

/// `pending → delivered | failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    Pending,
    Delivered,
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [DeliveryStatus::Pending, DeliveryStatus::Delivered, DeliveryStatus::Failed]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// A delivery as it is first recorded.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: Uuid,
    pub task_id: TaskId,
    pub owner_id: Option<Uuid>,
    pub url: String,
    pub event: DeliveryEvent,
    /// The exact JSON body every attempt sends.
    pub payload: String,
    pub created_at: DateTime<Utc>,
}

/// A stored delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: Uuid,
    pub task_id: TaskId,
    pub owner_id: Option<Uuid>,
    pub url: String,
    pub event: DeliveryEvent,
    pub payload: String,
    pub status: DeliveryStatus,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due, while pending.
    pub next_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One attempt to send a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    /// The receiver's HTTP status; absent when no answer came.
    pub status_code: Option<u16>,
    /// What went wrong, at most 500 characters; absent when delivered.
    pub error: Option<String>,
    pub duration_ms: u64,
}
