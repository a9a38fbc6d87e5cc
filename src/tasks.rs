//! The task: kiln's one resource. Its kinds, its state machine, and the records the
//! database keeps for it (events, artifacts, pictures).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// A task id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct TaskId(pub Uuid);

impl TaskId {
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for TaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// What a task produces from what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    #[serde(rename = "image_to_3d")]
    ImageTo3d,
    #[serde(rename = "text_to_3d")]
    TextTo3d,
    TextToImage,
}

impl TaskKind {
    pub const ALL: [TaskKind; 3] = [TaskKind::ImageTo3d, TaskKind::TextTo3d, TaskKind::TextToImage];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::ImageTo3d => "image_to_3d",
            TaskKind::TextTo3d => "text_to_3d",
            TaskKind::TextToImage => "text_to_image",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// The role of the output without which a task of this kind has not succeeded.
    pub fn main_role(self) -> &'static str {
        match self {
            TaskKind::ImageTo3d | TaskKind::TextTo3d => "model",
            TaskKind::TextToImage => "image",
        }
    }

    /// Whether this kind takes a picture as its input (otherwise a prompt).
    pub fn takes_image(self) -> bool {
        matches!(self, TaskKind::ImageTo3d)
    }
}

/// `queued → running → succeeded | failed | canceled`; `queued → canceled` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] =
        [TaskStatus::Queued, TaskStatus::Running, TaskStatus::Succeeded, TaskStatus::Failed, TaskStatus::Canceled];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Succeeded => "succeeded",
            TaskStatus::Failed => "failed",
            TaskStatus::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Succeeded | TaskStatus::Failed | TaskStatus::Canceled)
    }

    /// The state machine. A queued task may also fail without running (its input
    /// expired, or its channel was removed) or be canceled.
    pub fn can_become(self, next: TaskStatus) -> bool {
        use TaskStatus::*;
        matches!(
            (self, next),
            (Queued, Running)
                | (Queued, Canceled)
                | (Queued, Failed)
                | (Running, Succeeded)
                | (Running, Failed)
                | (Running, Canceled)
        )
    }

    /// The statuses from which `next` can be reached.
    pub fn sources_of(next: TaskStatus) -> Vec<TaskStatus> {
        Self::ALL.into_iter().filter(|s| s.can_become(next)).collect()
    }
}

/// The stored task.
#[derive(Debug, Clone)]
pub struct Task {
    pub id: TaskId,
    pub kind: TaskKind,
    pub model: String,
    pub channel: String,
    pub status: TaskStatus,
    pub prompt: Option<String>,
    pub picture_id: Option<Uuid>,
    pub params: serde_json::Value,
    pub progress: u8,
    pub stage: Option<String>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    /// Provider-defined metadata of the finished result.
    pub metadata: serde_json::Value,
    /// The upstream's own id for the job, once a remote provider submitted it.
    pub provider_job_id: Option<String>,
    /// Where the running job was placed: a push worker's base URL, or the fingerprint
    /// of the API key that created a cloud job.
    pub placement: Option<String>,
    /// Set while a submission to an upstream is in flight (see [`crate::providers::Upstream`]).
    pub submitting_at: Option<DateTime<Utc>>,
    /// Set when the provider finished and kiln began making the task's own outputs
    /// (`outputs::finishing`); a run claiming the task then does only that.
    pub finishing_at: Option<DateTime<Utc>>,
    pub attempts: u32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub deadline_at: Option<DateTime<Utc>>,
    /// The user the task belongs to; `None` when an anonymous caller made it.
    pub owner_id: Option<Uuid>,
    /// The API token it was submitted with.
    pub token_id: Option<Uuid>,
    /// Where the task's end is announced.
    pub webhook_url: Option<String>,
}

impl Task {
    /// Seconds from start of running to the end, when both are known.
    pub fn generation_seconds(&self) -> Option<f64> {
        let (start, end) = (self.started_at?, self.finished_at?);
        Some((end - start).num_milliseconds().max(0) as f64 / 1000.0)
    }
}

/// What a new task is made of, after validation.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: TaskId,
    pub kind: TaskKind,
    pub model: String,
    pub channel: String,
    pub prompt: Option<String>,
    pub picture_id: Option<Uuid>,
    pub params: serde_json::Value,
    /// A client's own provider key for this task, sealed ([`crate::providers::byok`]).
    pub client_secret: Option<String>,
    pub owner_id: Option<Uuid>,
    pub token_id: Option<Uuid>,
    pub webhook_url: Option<String>,
}

/// The kinds of entries in a task's event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Queued,
    Processing,
    Result,
    Completed,
    Failed,
    Canceled,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        EventKind::Queued,
        EventKind::Processing,
        EventKind::Result,
        EventKind::Completed,
        EventKind::Failed,
        EventKind::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Queued => "queued",
            EventKind::Processing => "processing",
            EventKind::Result => "result",
            EventKind::Completed => "completed",
            EventKind::Failed => "failed",
            EventKind::Canceled => "canceled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Completed | EventKind::Failed | EventKind::Canceled)
    }

    /// The event that announces a move into `status`.
    pub fn for_status(status: TaskStatus) -> Self {
        match status {
            TaskStatus::Queued => EventKind::Queued,
            TaskStatus::Running => EventKind::Processing,
            TaskStatus::Succeeded => EventKind::Completed,
            TaskStatus::Failed => EventKind::Failed,
            TaskStatus::Canceled => EventKind::Canceled,
        }
    }
}

/// One entry of a task's append-only event log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TaskEvent {
    #[schema(value_type = String, format = Uuid)]
    pub task_id: TaskId,
    /// 1, 2, 3 … per task; the SSE `id:`.
    pub seq: i64,
    pub kind: EventKind,
    /// The event's payload; its fields depend on `kind`.
    pub data: serde_json::Value,
    pub created_at: DateTime<Utc>,
}

/// A stored output of a task.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub id: Uuid,
    pub task_id: TaskId,
    /// The provider's file name, e.g. `model.glb`.
    pub name: String,
    /// `model`, `preview`, `archive`, `image` …
    pub role: String,
    pub key: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub expired_at: Option<DateTime<Utc>>,
}

impl Artifact {
    /// Where a task's output named `name` is stored, whoever made it: 3D outputs under
    /// `reconstruction/{task}/` (seed 004's layout for its bucket), images under
    /// `images/{task}/`. The name was checked with [`Artifact::valid_name`].
    pub fn key_for(task: TaskId, kind: TaskKind, name: &str) -> String {
        let area = match kind {
            TaskKind::ImageTo3d | TaskKind::TextTo3d => "reconstruction",
            TaskKind::TextToImage => "images",
        };
        format!("{area}/{task}/{name}")
    }

    /// The file format a name says, lower case and without the dot (`glb`, `zip`); empty
    /// without an extension.
    pub fn extension(name: &str) -> String {
        name.rsplit_once('.').map(|(_, ext)| ext.to_ascii_lowercase()).unwrap_or_default()
    }

    /// How events and result lists show an output (without its URL, which each face
    /// adds from the key).
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name, "role": self.role, "key": self.key, "content_type": self.content_type,
            "size": self.size, "sha256": self.sha256, "metadata": self.metadata,
        })
    }

    /// Whether a provider's or a worker's file name may be used as an artifact's name:
    /// it becomes the last part of a storage key, so nothing that could climb out of it.
    pub fn valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 128
            && !name.starts_with('.')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    }
}

/// A stored, validated input picture.
#[derive(Debug, Clone)]
pub struct Picture {
    pub id: Uuid,
    pub key: String,
    pub content_type: String,
    pub format: String,
    pub width: u32,
    pub height: u32,
    pub size: u64,
    pub sha256: String,
    /// The client's file name, kept for display only.
    pub original_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expired_at: Option<DateTime<Utc>>,
    /// The user the picture belongs to; `None` when an anonymous caller sent it.
    pub owner_id: Option<Uuid>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn status() -> impl Strategy<Value = TaskStatus> {
        proptest::sample::select(TaskStatus::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn terminal_states_never_change(from in status(), to in status()) {
            if from.is_terminal() {
                prop_assert!(!from.can_become(to));
            }
        }

        #[test]
        fn nothing_returns_to_queued_or_repeats(from in status()) {
            prop_assert!(!from.can_become(TaskStatus::Queued));
            prop_assert!(!from.can_become(from));
        }
    }

    #[test]
    fn names_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
        for k in TaskKind::ALL {
            assert_eq!(TaskKind::parse(k.as_str()), Some(k));
        }
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
