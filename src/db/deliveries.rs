//! Outbound webhook deliveries and their attempts ([`crate::deliveries`]). A delivery is
//! claimed under a lease before it is sent, so that several kiln processes sharing a
//! database never send one at the same time, and one whose sender died mid-send is
//! taken again when the lease lapses.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::DbResult;
use crate::{
    deliveries::{Attempt, Delivery, DeliveryStatus, NewDelivery},
    tasks::TaskId,
};

/// What becomes of a delivery after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    Delivered,
    /// Pending, tried again at that time.
    RetryAt(DateTime<Utc>),
    Failed,
}

impl NextStep {
    /// What the delivery's row records after this step: its status, when it is tried
    /// next, and when it finished (milliseconds).
    pub(super) fn recorded(self) -> (DeliveryStatus, Option<i64>, Option<i64>) {
        match self {
            NextStep::Delivered => (DeliveryStatus::Delivered, None, Some(super::rows::now_ms())),
            NextStep::Failed => (DeliveryStatus::Failed, None, Some(super::rows::now_ms())),
            NextStep::RetryAt(at) => (DeliveryStatus::Pending, Some(at.timestamp_millis()), None),
        }
    }
}

#[async_trait]
pub trait DeliveryRepo: Send + Sync {
    /// Records a pending delivery, due at once; false when the task's event was already
    /// recorded for that URL.
    async fn insert_delivery(&self, delivery: &NewDelivery) -> DbResult<bool>;

    /// Takes up to `limit` due pending deliveries that nobody holds, oldest due first,
    /// and leases them to `owner` for `lease`.
    async fn claim_deliveries(&self, owner: &str, lease: Duration, limit: u32) -> DbResult<Vec<Delivery>>;

    /// Records an attempt and, when `owner` still holds the delivery's lease, its next
    /// step, releasing the lease; returns whether the lease was still held. (An attempt
    /// whose lease lapsed is still recorded: it was made.)
    async fn record_attempt(&self, id: Uuid, owner: &str, attempt: &Attempt, next: NextStep) -> DbResult<bool>;

    /// A task's deliveries, oldest first, each with its attempts in order.
    async fn deliveries_for_task(&self, task: TaskId) -> DbResult<Vec<(Delivery, Vec<Attempt>)>>;

    /// Tasks that ended since `since` with a `webhook_url` and no delivery recorded:
    /// ends a crash (or a channel's deletion) left unannounced.
    async fn finished_without_delivery(&self, since: DateTime<Utc>) -> DbResult<Vec<TaskId>>;

    /// The earliest time a pending delivery may be claimed (its due time, or the end of
    /// the lease on it); `None` when nothing is pending.
    async fn next_delivery_due(&self) -> DbResult<Option<DateTime<Utc>>>;

    /// Deletes the deliveries that finished (delivered or given up) before `before`,
    /// with their attempts; returns how many.
    async fn prune_deliveries(&self, before: DateTime<Utc>) -> DbResult<u64>;
}
