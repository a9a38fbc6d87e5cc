//! Outbound notifications of finished tasks. A task may name a `webhook_url` (or take
//! its API token's); when it ends, kiln POSTs `task.completed`, `task.failed` or
//! `task.canceled` there, signed with its owner's Standard Webhooks secret, and tries
//! again with growing pauses until the receiver answers 2xx, answers 410 Gone, or
//! `webhooks.max_age` has passed. Every attempt is recorded for the user to see.
//!
//! A delivery is written to the database first ([`Deliveries::enqueue`]) and sent by a
//! background loop ([`Deliveries::run`]) that claims due deliveries under a lease, so
//! several kiln processes on one database never send one twice at once, and a process
//! that dies mid-send leaves the delivery to be taken again when its lease lapses. That
//! makes delivery at-least-once: a receiver dedupes by `webhook-id`, the same for every
//! attempt of a delivery.
//!
//! Where a webhook may go is [`destination`]'s concern; when to try again is
//! [`Schedule`]'s; one attempt is `send`'s.

pub mod destination;
mod schedule;
mod send;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

pub use destination::{DestinationError, check_destination, resolve_destination};
pub use schedule::Schedule;
pub use send::message_id;

use self::send::{Outcome, Sender};
use crate::{
    config::{Secret, WebhooksConfig},
    db::{Db, DbResult, NextStep},
    tasks::{TaskId, TaskStatus},
    webhooks::SigningKey,
};

/// The longest error text kept per attempt, in characters.
pub const MAX_ERROR_CHARS: usize = 500;

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

/// A finished task to announce: what the caller of [`Deliveries::enqueue`] knows.
#[derive(Debug, Clone)]
pub struct Finished {
    pub task_id: TaskId,
    /// Whose secret signs it; `None` for a task made anonymously.
    pub owner: Option<Uuid>,
    pub url: String,
    pub event: DeliveryEvent,
    /// The task as the API shows it to its owner: the payload's `data`.
    pub task: serde_json::Value,
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

/// A delivery as its owner sees it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeliveryReport {
    /// Also the `webhook-id` of every attempt, as `msg_` and the id without dashes.
    pub id: Uuid,
    pub event: DeliveryEvent,
    pub url: String,
    pub status: DeliveryStatus,
    /// When the next attempt is due, while pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub attempts: Vec<Attempt>,
}

/// Where the signing secret of a task's owner comes from.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// The owner's `whsec_…` secret; `Ok(None)` when none is set (the attempt then
    /// fails and is retried, so a secret set within `webhooks.max_age` still gets the
    /// delivery through). An error is retried the same way; its text is logged, never
    /// shown to the user.
    async fn secret_for(&self, owner: Option<Uuid>) -> anyhow::Result<Option<Secret>>;
}

/// One secret for every owner (tests, or a server-wide secret).
#[derive(Debug, Clone)]
pub struct FixedSecret(pub Secret);

#[async_trait]
impl SecretSource for FixedSecret {
    async fn secret_for(&self, _owner: Option<Uuid>) -> anyhow::Result<Option<Secret>> {
        Ok(Some(self.0.clone()))
    }
}

/// How the sender behaves.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Whether loopback, private, link-local, CGNAT and unique-local destinations are
    /// allowed (`webhooks.allow_private`).
    pub allow_private: bool,
    /// A whole attempt: connection, request and answer (`webhooks.timeout`).
    pub timeout: Duration,
    pub schedule: Schedule,
    /// How often the loop looks for due deliveries when nothing wakes it: deliveries
    /// made by another process, or retries that fell due.
    pub poll: Duration,
    /// Deliveries one process sends at once.
    pub batch: u32,
}

impl DeliverySettings {
    pub fn from_config(config: &WebhooksConfig) -> Self {
        Self {
            allow_private: config.allow_private,
            timeout: config.timeout,
            schedule: Schedule::standard(config.max_age),
            poll: Duration::from_secs(5),
            batch: 16,
        }
    }

    /// A claim outlives an attempt: the attempt's timeout, plus time to read the secret
    /// and record the result.
    fn lease(&self) -> Duration {
        self.timeout + Duration::from_secs(30)
    }
}

/// Records and sends deliveries. One per process; cheap to share.
pub struct Deliveries {
    db: Db,
    secrets: Arc<dyn SecretSource>,
    sender: Sender,
    settings: DeliverySettings,
    wake: Notify,
    /// This process's name on its leases.
    owner: String,
}

impl Deliveries {
    pub fn new(db: Db, secrets: Arc<dyn SecretSource>, settings: DeliverySettings) -> anyhow::Result<Arc<Self>> {
        let sender = Sender::new(settings.allow_private, settings.timeout)?;
        let owner = format!("deliveries-{}", Uuid::new_v4().simple());
        Ok(Arc::new(Self { db, secrets, sender, settings, wake: Notify::new(), owner }))
    }

    /// Records the delivery of a finished task, to be sent by [`Deliveries::run`] at once;
    /// false when this task's event was already recorded for this URL (a repeated call
    /// sends nothing twice). Call it after the task's terminal transition committed.
    ///
    /// The URL is not checked here: a URL refused by now is recorded and fails at its
    /// first attempt, where its owner can see why.
    pub async fn enqueue(&self, finished: Finished) -> DbResult<bool> {
        let now = Utc::now();
        let body = serde_json::json!({
            "type": finished.event.as_str(),
            "timestamp": now.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": finished.task,
        });
        let delivery = NewDelivery {
            id: Uuid::now_v7(),
            task_id: finished.task_id,
            owner_id: finished.owner,
            url: finished.url,
            event: finished.event,
            payload: body.to_string(),
            created_at: now,
        };
        let recorded = self.db.insert_delivery(&delivery).await?;
        if recorded {
            self.wake.notify_one();
        }
        Ok(recorded)
    }

    /// A task's deliveries with their attempts, oldest first. The caller checks that
    /// the asker may see the task.
    pub async fn list_for_task(&self, task: TaskId) -> DbResult<Vec<DeliveryReport>> {
        let deliveries = self.db.deliveries_for_task(task).await?;
        Ok(deliveries
            .into_iter()
            .map(|(delivery, attempts)| DeliveryReport {
                id: delivery.id,
                event: delivery.event,
                url: delivery.url,
                status: delivery.status,
                next_attempt_at: delivery.next_at,
                created_at: delivery.created_at,
                finished_at: delivery.finished_at,
                attempts,
            })
            .collect())
    }

    /// Sends due deliveries until `stop` fires: at once when one is enqueued in this
    /// process, when a retry falls due, and at least every `poll` otherwise. Attempts
    /// under way when `stop` fires are finished (each is bounded by the timeout).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        while !stop.is_cancelled() {
            let sent = match self.run_once().await {
                Ok(sent) => sent,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim webhook deliveries");
                    0
                }
            };
            if sent > 0 {
                // More may be due; look again before sleeping.
                continue;
            }
            let pause = self.until_due().await;
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// Claims the due deliveries (up to a batch) and makes one attempt at each, all at
    /// once; returns how many.
    pub async fn run_once(&self) -> DbResult<usize> {
        let claimed = self.db.claim_deliveries(&self.owner, self.settings.lease(), self.settings.batch).await?;
        let count = claimed.len();
        futures::future::join_all(claimed.into_iter().map(|delivery| self.attempt(delivery))).await;
        Ok(count)
    }

    /// How long to sleep: until the earliest pending delivery may be claimed, at most
    /// `poll`.
    async fn until_due(&self) -> Duration {
        match self.db.next_delivery_due().await {
            Ok(Some(due)) => (due - Utc::now()).to_std().unwrap_or(Duration::ZERO).min(self.settings.poll),
            Ok(None) => self.settings.poll,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read when the next webhook delivery is due");
                self.settings.poll
            }
        }
        // A delivery leased by another process may be due now and stay so until its
        // lease ends; never spin on it.
        .max(Duration::from_millis(10))
    }

    /// One attempt at a claimed delivery, recorded with what comes next.
    async fn attempt(&self, delivery: Delivery) {
        let at = Utc::now();
        let started = Instant::now();
        // The secret lookup and the request are bounded together, well inside the lease.
        let bound = self.settings.timeout + Duration::from_secs(10);
        let outcome = tokio::time::timeout(bound, self.sign_and_send(&delivery))
            .await
            .unwrap_or_else(|_| Outcome::Failed(format!("no answer within {}", humantime::format_duration(bound))));
        let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let attempts = delivery.attempts.saturating_add(1);
        let (next, note) = next_step(&outcome, &self.settings.schedule, delivery.created_at, attempts, Utc::now());
        let error = outcome.error().map(|text| match note {
            Some(note) => format!("{text}; {note}"),
            None => text,
        });
        let record = Attempt { at, status_code: outcome.status_code(), error: error.map(cut), duration_ms };
        let host = url::Url::parse(&delivery.url).ok().and_then(|u| u.host_str().map(str::to_owned));
        match &next {
            NextStep::Delivered => tracing::debug!(delivery = %delivery.id, ?host, attempts, "webhook delivered"),
            NextStep::RetryAt(when) => tracing::info!(
                delivery = %delivery.id, ?host, attempts, error = record.error.as_deref(), retry_at = %when,
                "webhook not delivered; will retry"
            ),
            NextStep::Failed => tracing::warn!(
                delivery = %delivery.id, ?host, attempts, error = record.error.as_deref(),
                "webhook delivery failed for good"
            ),
        }
        match self.db.record_attempt(delivery.id, &self.owner, &record, next).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(delivery = %delivery.id, "a webhook delivery's lease lapsed during its attempt")
            }
            // The lease lapses and the delivery is attempted again.
            Err(err) => tracing::error!(delivery = %delivery.id, error = %err, "cannot record a webhook attempt"),
        }
    }

    async fn sign_and_send(&self, delivery: &Delivery) -> Outcome {
        let secret = match self.secrets.secret_for(delivery.owner_id).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return Outcome::Failed("no webhook signing secret is set for the task's owner".to_owned()),
            Err(err) => {
                tracing::error!(delivery = %delivery.id, error = format!("{err:#}"), "cannot read a webhook secret");
                return Outcome::Failed("the webhook signing secret could not be read".to_owned());
            }
        };
        match SigningKey::parse(secret.expose()) {
            Ok(key) => self.sender.send(delivery, &key).await,
            Err(why) => Outcome::Failed(format!("the owner's webhook signing secret {why}")),
        }
    }
}

/// What follows an attempt, and a note for its error text when it is the last.
fn next_step(
    outcome: &Outcome,
    schedule: &Schedule,
    created: DateTime<Utc>,
    attempts: u32,
    now: DateTime<Utc>,
) -> (NextStep, Option<String>) {
    match outcome {
        Outcome::Delivered(_) => (NextStep::Delivered, None),
        Outcome::Gone => (NextStep::Failed, None),
        Outcome::Refused(_) => (NextStep::Failed, Some("not retried".to_owned())),
        Outcome::Answered(_) | Outcome::Failed(_) => match schedule.next(created, attempts, now) {
            Some(at) => (NextStep::RetryAt(at), None),
            None => (
                NextStep::Failed,
                Some(format!(
                    "giving up: the task ended more than {} ago",
                    humantime::format_duration(schedule.max_age())
                )),
            ),
        },
    }
}

/// Cuts an error text to [`MAX_ERROR_CHARS`] characters.
fn cut(text: String) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use reqwest::StatusCode;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).expect("time")
    }

    #[test]
    fn events_follow_the_terminal_status() {
        assert_eq!(DeliveryEvent::for_status(TaskStatus::Succeeded), Some(DeliveryEvent::TaskCompleted));
        assert_eq!(DeliveryEvent::for_status(TaskStatus::Failed), Some(DeliveryEvent::TaskFailed));
        assert_eq!(DeliveryEvent::for_status(TaskStatus::Canceled), Some(DeliveryEvent::TaskCanceled));
        assert_eq!(DeliveryEvent::for_status(TaskStatus::Running), None);
        for event in DeliveryEvent::ALL {
            assert_eq!(DeliveryEvent::parse(event.as_str()), Some(event));
            assert_eq!(serde_json::to_value(event).expect("json"), serde_json::json!(event.as_str()));
        }
    }

    #[test]
    fn success_gone_and_refusals_end_a_delivery_and_the_rest_retry_until_max_age() {
        let schedule = Schedule::new(vec![Duration::from_secs(60)], 0.0, Duration::from_secs(3600));
        let step = |outcome: Outcome, now| next_step(&outcome, &schedule, at(0), 1, now);
        assert_eq!(step(Outcome::Delivered(StatusCode::NO_CONTENT), at(1)).0, NextStep::Delivered);
        assert_eq!(step(Outcome::Gone, at(1)).0, NextStep::Failed);
        assert_eq!(step(Outcome::Refused("private".into()), at(1)).0, NextStep::Failed);
        assert_eq!(step(Outcome::Answered(StatusCode::INTERNAL_SERVER_ERROR), at(1)).0, NextStep::RetryAt(at(61)));
        assert_eq!(step(Outcome::Answered(StatusCode::BAD_REQUEST), at(1)).0, NextStep::RetryAt(at(61)));
        assert_eq!(step(Outcome::Failed("reset".into()), at(1)).0, NextStep::RetryAt(at(61)));
        let (last, note) = step(Outcome::Failed("reset".into()), at(3600));
        assert_eq!(last, NextStep::Failed);
        assert_eq!(note.as_deref(), Some("giving up: the task ended more than 1h ago"));
    }

    #[test]
    fn error_texts_are_cut_on_a_character_boundary() {
        assert_eq!(cut("short".into()), "short");
        let long = "é".repeat(MAX_ERROR_CHARS + 20);
        let cut = cut(long);
        assert_eq!(cut.chars().count(), MAX_ERROR_CHARS);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn answers_are_described_without_their_bodies() {
        assert_eq!(Outcome::Delivered(StatusCode::OK).error(), None);
        assert_eq!(Outcome::Gone.status_code(), Some(410));
        let moved = Outcome::Answered(StatusCode::MOVED_PERMANENTLY).error().expect("error");
        assert!(moved.contains("301") && moved.contains("redirects are not followed"), "{moved}");
        assert_eq!(Outcome::Refused("x".into()).status_code(), None);
    }
}
