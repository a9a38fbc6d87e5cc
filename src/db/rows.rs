//! How stored rows read back as kiln's records, for every database backend.
//!
//! Both backends store the same columns in the same forms — times as Unix milliseconds,
//! ids as UUID text, JSON as text, flags as integers — so one reading of a row serves
//! both; each backend keeps only its SQL. [`Columns`] is the little a mapping needs from
//! a row, implemented once for any sqlx row that decodes text and 64-bit integers.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use super::{
    ApiToken, AuditEntry, AuditRecord, ChannelLoad, DbError, DbResult, HourlyCredits, HourlyTasks, Price, Session,
    StoredChannel, StoredFile, UsageRecord, UsageTotals, User, usage::Reservation,
};
use crate::{
    access::Role,
    config::ChannelConfig,
    deliveries::{Attempt, Delivery, DeliveryEvent, DeliveryStatus},
    tasks::{Artifact, EventKind, Picture, Task, TaskEvent, TaskId, TaskKind, TaskStatus},
};

/// The columns of a row, in the types kiln stores.
pub(super) trait Columns {
    fn text(&self, column: &str) -> DbResult<String>;
    fn opt_text(&self, column: &str) -> DbResult<Option<String>>;
    fn int(&self, column: &str) -> DbResult<i64>;
    fn opt_int(&self, column: &str) -> DbResult<Option<i64>>;
    /// A computed truth value (`x IS NOT NULL AS …`): an integer on SQLite, a boolean on
    /// PostgreSQL.
    fn flag(&self, column: &str) -> DbResult<bool>;

    fn time(&self, column: &str) -> DbResult<DateTime<Utc>> {
        Ok(to_time(self.int(column)?))
    }

    fn opt_time(&self, column: &str) -> DbResult<Option<DateTime<Utc>>> {
        Ok(self.opt_int(column)?.map(to_time))
    }

    fn uuid(&self, column: &str) -> DbResult<Uuid> {
        parse_uuid(&self.text(column)?)
    }

    fn opt_uuid(&self, column: &str) -> DbResult<Option<Uuid>> {
        self.opt_text(column)?.as_deref().map(parse_uuid).transpose()
    }

    /// JSON stored as text; unreadable JSON reads as `null` rather than failing the row.
    fn json(&self, column: &str) -> DbResult<Value> {
        Ok(parse_json(&self.text(column)?))
    }
}

impl<R> Columns for R
where
    R: Row,
    for<'c> &'c str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database>,
    String: Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database>,
    i64: Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database>,
    bool: Type<R::Database>,
{
    fn text(&self, column: &str) -> DbResult<String> {
        Ok(self.try_get(column)?)
    }

    fn opt_text(&self, column: &str) -> DbResult<Option<String>> {
        Ok(self.try_get(column)?)
    }

    fn int(&self, column: &str) -> DbResult<i64> {
        Ok(self.try_get(column)?)
    }

    fn opt_int(&self, column: &str) -> DbResult<Option<i64>> {
        Ok(self.try_get(column)?)
    }

    fn flag(&self, column: &str) -> DbResult<bool> {
        Ok(self.try_get(column)?)
    }
}

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

pub(super) fn to_time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

pub(super) fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

pub(super) fn parse_uuid(text: &str) -> DbResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| DbError::Corrupt(format!("bad uuid `{text}`")))
}

/// A duration as stored milliseconds, saturating rather than wrapping.
pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// A stored count, never negative.
fn count(row: &impl Columns, column: &str) -> DbResult<u64> {
    Ok(row.int(column)?.max(0) as u64)
}

pub(super) fn task(row: &impl Columns) -> DbResult<Task> {
    let kind = row.text("kind")?;
    let status = row.text("status")?;
    Ok(Task {
        id: TaskId(row.uuid("id")?),
        kind: TaskKind::parse(&kind).ok_or_else(|| DbError::Corrupt(format!("bad kind `{kind}`")))?,
        model: row.text("model")?,
        channel: row.text("channel")?,
        status: TaskStatus::parse(&status).ok_or_else(|| DbError::Corrupt(format!("bad status `{status}`")))?,
        prompt: row.opt_text("prompt")?,
        picture_id: row.opt_uuid("picture_id")?,
        params: row.json("params")?,
        progress: row.int("progress")?.clamp(0, 100) as u8,
        stage: row.opt_text("stage")?,
        error_code: row.opt_text("error_code")?,
        error_message: row.opt_text("error_message")?,
        metadata: row.json("metadata")?,
        provider_job_id: row.opt_text("provider_job_id")?,
        placement: row.opt_text("placement")?,
        submitting_at: row.opt_time("submitting_at")?,
        finishing_at: row.opt_time("finishing_at")?,
        attempts: row.int("attempts")?.max(0) as u32,
        created_at: row.time("created_at")?,
        started_at: row.opt_time("started_at")?,
        finished_at: row.opt_time("finished_at")?,
        deadline_at: row.opt_time("deadline_at")?,
        owner_id: row.opt_uuid("owner_id")?,
        token_id: row.opt_uuid("token_id")?,
        webhook_url: row.opt_text("webhook_url")?,
    })
}

pub(super) fn event(row: &impl Columns) -> DbResult<TaskEvent> {
    let kind = row.text("kind")?;
    Ok(TaskEvent {
        task_id: TaskId(row.uuid("task_id")?),
        seq: row.int("seq")?,
        kind: EventKind::parse(&kind).ok_or_else(|| DbError::Corrupt(format!("bad event kind `{kind}`")))?,
        data: row.json("data")?,
        created_at: row.time("created_at")?,
    })
}

/// The `queued` events of the tasks whose place changed, from rows of `id`, `seq` (the
/// event's number) and `pos` (the new place), all made at `now`.
pub(super) fn queued_events(rows: &[impl Columns], now: i64) -> DbResult<Vec<TaskEvent>> {
    rows.iter()
        .map(|row| {
            Ok(TaskEvent {
                task_id: TaskId(row.uuid("id")?),
                seq: row.int("seq")?,
                kind: EventKind::Queued,
                data: super::payload::queued(row.int("pos")?.clamp(1, i64::from(u32::MAX)) as u32),
                created_at: to_time(now),
            })
        })
        .collect()
}

pub(super) fn artifact(row: &impl Columns) -> DbResult<Artifact> {
    Ok(Artifact {
        id: row.uuid("id")?,
        task_id: TaskId(row.uuid("task_id")?),
        name: row.text("name")?,
        role: row.text("role")?,
        key: row.text("key")?,
        content_type: row.text("content_type")?,
        size: count(row, "size")?,
        sha256: row.text("sha256")?,
        metadata: row.json("metadata")?,
        created_at: row.time("created_at")?,
        expired_at: row.opt_time("expired_at")?,
    })
}

pub(super) fn picture(row: &impl Columns) -> DbResult<Picture> {
    Ok(Picture {
        id: row.uuid("id")?,
        key: row.text("key")?,
        content_type: row.text("content_type")?,
        format: row.text("format")?,
        width: row.int("width")?.max(0) as u32,
        height: row.int("height")?.max(0) as u32,
        size: count(row, "size")?,
        sha256: row.text("sha256")?,
        original_name: row.opt_text("original_name")?,
        created_at: row.time("created_at")?,
        expired_at: row.opt_time("expired_at")?,
        owner_id: row.opt_uuid("owner_id")?,
    })
}

pub(super) fn stored_file(row: &impl Columns) -> DbResult<StoredFile> {
    Ok(StoredFile {
        key: row.text("key")?,
        content_type: row.text("content_type")?,
        size: count(row, "size")?,
        sha256: row.text("sha256")?,
        created_at: row.time("created_at")?,
        expired: row.opt_int("expired_at")?.is_some(),
    })
}

/// A task's id and channel (the overdue sweep's rows).
pub(super) fn task_and_channel(row: &impl Columns) -> DbResult<(TaskId, String)> {
    Ok((TaskId(row.uuid("id")?), row.text("channel")?))
}

pub(super) fn channel_load(row: &impl Columns) -> DbResult<ChannelLoad> {
    Ok(ChannelLoad { channel: row.text("channel")?, queued: count(row, "queued")?, running: count(row, "running")? })
}

/// Running tasks per placement, from rows of `placement` and `n`.
pub(super) fn placement_load(row: &impl Columns) -> DbResult<(String, u32)> {
    Ok((row.text("placement")?, row.int("n")?.clamp(0, i64::from(u32::MAX)) as u32))
}

/// Tasks per status, from rows of `status` and `n`; a status this version does not
/// know is left out.
pub(super) fn status_counts(rows: &[impl Columns]) -> DbResult<Vec<(TaskStatus, u64)>> {
    let mut counts = Vec::new();
    for row in rows {
        if let Some(status) = TaskStatus::parse(&row.text("status")?) {
            counts.push((status, count(row, "n")?));
        }
    }
    Ok(counts)
}

// Macros rather than consts: sqlx takes only `'static` SQL, which `concat!` builds from
// literals at compile time, where `format!` would build it at run time.

/// The columns of a user that [`user`] reads, never the hash or the webhook secret.
macro_rules! user_columns {
    () => {
        "id, username, role, balance, max_active, disabled, created_at, updated_at"
    };
}

/// The user's columns under `u_` names, for joins whose other table has its own `id`
/// and `created_at`: [`user`] reads them with the prefix `u_`.
macro_rules! user_as_u {
    () => {
        "u.id AS u_id, u.username AS u_username, u.role AS u_role, u.balance AS u_balance, \
         u.max_active AS u_max_active, u.disabled AS u_disabled, u.created_at AS u_created_at, \
         u.updated_at AS u_updated_at"
    };
}

pub(super) use {user_as_u, user_columns};

/// A user, from [`user_columns`] named with `prefix`.
pub(super) fn user(row: &impl Columns, prefix: &str) -> DbResult<User> {
    let col = |name: &str| format!("{prefix}{name}");
    let role = row.text(&col("role"))?;
    Ok(User {
        id: row.uuid(&col("id"))?,
        username: row.text(&col("username"))?,
        role: Role::parse(&role).ok_or_else(|| DbError::Corrupt(format!("bad role `{role}`")))?,
        balance: row.int(&col("balance"))?,
        max_active: row.opt_int(&col("max_active"))?.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
        disabled: row.int(&col("disabled"))? != 0,
        created_at: row.time(&col("created_at"))?,
        updated_at: row.time(&col("updated_at"))?,
    })
}

pub(super) fn session(row: &impl Columns) -> DbResult<Session> {
    Ok(Session {
        id_hash: row.text("id_hash")?,
        user_id: row.uuid("user_id")?,
        csrf: row.text("csrf")?,
        created_at: row.time("created_at")?,
        last_seen_at: row.time("last_seen_at")?,
        expires_at: row.time("expires_at")?,
        ip: row.opt_text("ip")?,
        user_agent: row.opt_text("user_agent")?,
        revoked_at: row.opt_time("revoked_at")?,
    })
}

/// A token's model list as stored: a JSON array of names.
pub(super) fn models_json(models: Option<&Vec<String>>) -> Option<String> {
    models.map(|m| Value::from(m.clone()).to_string())
}

pub(super) fn token(row: &impl Columns) -> DbResult<ApiToken> {
    let id = row.text("id")?;
    let models = row
        .opt_text("models")?
        .map(|text| serde_json::from_str::<Vec<String>>(&text))
        .transpose()
        .map_err(|_| DbError::Corrupt(format!("bad model list of token {id}")))?;
    Ok(ApiToken {
        id: parse_uuid(&id)?,
        user_id: row.uuid("user_id")?,
        name: row.text("name")?,
        hint: row.text("hint")?,
        models,
        spend_cap: row.opt_int("spend_cap")?,
        spent: row.int("spent")?,
        rate_per_minute: row.opt_int("rate_per_minute")?.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
        webhook_url: row.opt_text("webhook_url")?,
        expires_at: row.opt_time("expires_at")?,
        last_used_at: row.opt_time("last_used_at")?,
        revoked_at: row.opt_time("revoked_at")?,
        created_at: row.time("created_at")?,
    })
}

pub(super) fn audit(row: &impl Columns) -> DbResult<AuditRecord> {
    Ok(AuditRecord {
        id: row.int("id")?,
        at: row.time("at")?,
        entry: AuditEntry {
            actor_id: row.opt_uuid("actor_id")?,
            actor: row.opt_text("actor")?,
            action: row.text("action")?,
            target: row.opt_text("target")?,
            detail: row.json("detail")?,
            ip: row.opt_text("ip")?,
        },
    })
}

pub(super) fn usage_record(row: &impl Columns) -> DbResult<UsageRecord> {
    Ok(UsageRecord {
        task_id: TaskId(row.uuid("task_id")?),
        user_id: row.opt_uuid("user_id")?,
        username: row.opt_text("username")?,
        token_id: row.opt_uuid("token_id")?,
        token_name: row.opt_text("token_name")?,
        channel: row.text("channel")?,
        model: row.text("model")?,
        kind: row.text("kind")?,
        reserved: row.int("reserved")?,
        charged: row.opt_int("charged")?,
        outcome: row.opt_text("outcome")?,
        error_code: row.opt_text("error_code")?,
        queue_ms: row.opt_int("queue_ms")?,
        run_ms: row.opt_int("run_ms")?,
        upstream_id: row.opt_text("upstream_id")?,
        created_at: row.time("created_at")?,
        finished_at: row.opt_time("finished_at")?,
    })
}

/// A task's reservation, from its usage record's `user_id`, `token_id`, `per_task`,
/// `per_image` and `reserved`.
pub(super) fn reservation(row: &impl Columns) -> DbResult<Reservation> {
    Ok(Reservation {
        user_id: row.opt_text("user_id")?,
        token_id: row.opt_text("token_id")?,
        per_task: row.int("per_task")?,
        per_image: row.int("per_image")?,
        reserved: row.int("reserved")?,
    })
}

pub(super) fn usage_totals(row: &impl Columns) -> DbResult<UsageTotals> {
    Ok(UsageTotals {
        tasks: count(row, "tasks")?,
        succeeded: count(row, "succeeded")?,
        failed: count(row, "failed")?,
        canceled: count(row, "canceled")?,
        charged: row.int("charged")?,
    })
}

pub(super) fn price(row: &impl Columns) -> DbResult<Price> {
    Ok(Price { model: row.text("model")?, per_task: row.int("per_task")?, per_image: row.int("per_image")? })
}

pub(super) fn hourly_tasks(row: &impl Columns) -> DbResult<HourlyTasks> {
    Ok(HourlyTasks {
        hour: row.time("hour")?,
        model: row.text("model")?,
        outcome: row.text("outcome")?,
        count: count(row, "n")?,
    })
}

pub(super) fn hourly_credits(row: &impl Columns) -> DbResult<HourlyCredits> {
    Ok(HourlyCredits { hour: row.time("hour")?, credits: row.int("credits")? })
}

/// Run times per channel, from rows of `channel` and `run_ms` ordered by channel.
pub(super) fn run_times(rows: &[impl Columns]) -> DbResult<Vec<(String, Vec<i64>)>> {
    let mut run_times: Vec<(String, Vec<i64>)> = Vec::new();
    for row in rows {
        let channel = row.text("channel")?;
        let ms = row.int("run_ms")?;
        match run_times.last_mut() {
            Some((last, times)) if *last == channel => times.push(ms),
            _ => run_times.push((channel, vec![ms])),
        }
    }
    Ok(run_times)
}

pub(super) fn channel(row: &impl Columns) -> DbResult<StoredChannel> {
    let id = row.text("id")?;
    let config: ChannelConfig = serde_json::from_str(&row.text("config")?)
        .map_err(|e| DbError::Corrupt(format!("channel {id}: unreadable configuration ({e})")))?;
    Ok(StoredChannel {
        id: parse_uuid(&id)?,
        config: ChannelConfig { secret: None, ..config },
        sealed_secret: row.opt_text("secret")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// The configuration as stored: JSON, without the secret (which only goes sealed into
/// its own column), whatever the caller left in it.
pub(super) fn channel_config_json(config: &ChannelConfig) -> DbResult<String> {
    serde_json::to_string(&ChannelConfig { secret: None, ..config.clone() })
        .map_err(|e| DbError::Corrupt(format!("channel `{}`: configuration not storable ({e})", config.name)))
}

pub(super) fn delivery(row: &impl Columns) -> DbResult<Delivery> {
    let event = row.text("event")?;
    let status = row.text("status")?;
    Ok(Delivery {
        id: row.uuid("id")?,
        task_id: TaskId(row.uuid("task_id")?),
        owner_id: row.opt_uuid("owner_id")?,
        url: row.text("url")?,
        event: DeliveryEvent::parse(&event).ok_or_else(|| DbError::Corrupt(format!("bad webhook event `{event}`")))?,
        payload: row.text("payload")?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| DbError::Corrupt(format!("bad delivery status `{status}`")))?,
        attempts: row.int("attempts")?.clamp(0, i64::from(u32::MAX)) as u32,
        next_at: row.opt_time("next_at")?,
        created_at: row.time("created_at")?,
        finished_at: row.opt_time("finished_at")?,
    })
}

pub(super) fn attempt(row: &impl Columns) -> DbResult<Attempt> {
    Ok(Attempt {
        at: row.time("at")?,
        status_code: row.opt_int("status_code")?.and_then(|s| u16::try_from(s).ok()),
        error: row.opt_text("error")?,
        duration_ms: count(row, "duration_ms")?,
    })
}

/// Deliveries each with their attempts in order, from the deliveries' rows and the
/// attempts' (with `delivery_id`), both in order.
pub(super) fn deliveries_with_attempts(
    deliveries: &[impl Columns],
    attempts: &[impl Columns],
) -> DbResult<Vec<(Delivery, Vec<Attempt>)>> {
    let mut all: Vec<(Delivery, Vec<Attempt>)> =
        deliveries.iter().map(|row| Ok((delivery(row)?, Vec::new()))).collect::<DbResult<_>>()?;
    for row in attempts {
        let id = row.uuid("delivery_id")?;
        if let Some((_, list)) = all.iter_mut().find(|(d, _)| d.id == id) {
            list.push(attempt(row)?);
        }
    }
    Ok(all)
}
