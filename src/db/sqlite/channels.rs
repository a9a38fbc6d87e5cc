//! The SQLite implementation of the channel repository.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{SqliteDatabase, announce_positions, begin, finish_in};
use crate::{
    config::ChannelConfig,
    db::{
        DbResult, TaskRepo,
        channels::{self, ChannelRepo, ChannelStats, Pick, RehomeRoute, Rehomed, Stored, StoredChannel, WHOLE_QUEUE},
        rows::{self, Columns, now_ms},
    },
};

#[async_trait]
impl ChannelRepo for SqliteDatabase {
    async fn list_channels(&self) -> DbResult<Vec<StoredChannel>> {
        let rows = sqlx::query("SELECT * FROM channels ORDER BY id").fetch_all(&self.reader).await?;
        rows.iter().map(rows::channel).collect()
    }

    async fn get_channel(&self, id: Uuid) -> DbResult<Option<StoredChannel>> {
        let row = sqlx::query("SELECT * FROM channels WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(rows::channel).transpose()
    }

    async fn create_channel(&self, config: &ChannelConfig, sealed_secret: Option<&str>) -> DbResult<Stored> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO channels (id, name, config, secret, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?5) \
             ON CONFLICT (name) DO NOTHING RETURNING *",
        )
        .bind(Uuid::now_v7().to_string())
        .bind(&config.name)
        .bind(rows::channel_config_json(config)?)
        .bind(sealed_secret)
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        match row {
            Some(row) => Ok(Stored::Done(Box::new(rows::channel(&row)?))),
            None => Ok(Stored::NameTaken),
        }
    }

    async fn update_channel(&self, id: Uuid, config: &ChannelConfig, sealed_secret: Option<&str>) -> DbResult<Stored> {
        let mut tx = begin(&self.writer).await?;
        let holders: Vec<String> = sqlx::query_scalar("SELECT id FROM channels WHERE id = ?1 OR name = ?2")
            .bind(id.to_string())
            .bind(&config.name)
            .fetch_all(&mut *tx)
            .await?;
        if !holders.contains(&id.to_string()) {
            return Ok(Stored::NotFound);
        }
        if holders.len() > 1 {
            return Ok(Stored::NameTaken);
        }
        let row = sqlx::query(
            "UPDATE channels SET name = ?1, config = ?2, secret = ?3, updated_at = ?4 WHERE id = ?5 RETURNING *",
        )
        .bind(&config.name)
        .bind(rows::channel_config_json(config)?)
        .bind(sealed_secret)
        .bind(now_ms())
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(Stored::NotFound) };
        let stored = rows::channel(&row)?;
        tx.commit().await?;
        Ok(Stored::Done(Box::new(stored)))
    }

    async fn delete_channel(&self, id: Uuid) -> DbResult<Option<StoredChannel>> {
        let row = sqlx::query("DELETE FROM channels WHERE id = ?1 RETURNING *")
            .bind(id.to_string())
            .fetch_optional(&self.writer)
            .await?;
        row.as_ref().map(rows::channel).transpose()
    }

    async fn channel_stats(&self, since: DateTime<Utc>) -> DbResult<Vec<ChannelStats>> {
        let loads = self.channel_loads().await?;
        let rows = sqlx::query(
            "SELECT id, channel, status, started_at, finished_at, error_code, error_message FROM tasks \
             WHERE finished_at >= ?1 ORDER BY finished_at, rowid",
        )
        .bind(since.timestamp_millis())
        .fetch_all(&self.reader)
        .await?;
        channels::stats(loads, &rows)
    }

    async fn rehome_queued(&self, channel: &str, route: &RehomeRoute<'_>) -> DbResult<Rehomed> {
        let mut tx = begin(&self.writer).await?;
        let rows = sqlx::query(
            "SELECT *, client_secret IS NOT NULL AS has_client_key FROM tasks \
             WHERE channel = ?1 AND status = 'queued' ORDER BY rowid",
        )
        .bind(channel)
        .fetch_all(&mut *tx)
        .await?;
        let mut rehoming = channels::Rehoming::new(channel);
        for row in &rows {
            let task = rows::task(row)?;
            let Some((to, otherwise)) = rehoming.route(route(&task, row.flag("has_client_key")?)) else { continue };
            let destination = loop {
                match rehoming.pick(&to) {
                    Pick::Count(candidate) => {
                        let count: Option<i64> =
                            sqlx::query_scalar("SELECT queued + running FROM channel_queues WHERE channel = ?1")
                                .bind(&candidate)
                                .fetch_optional(&mut *tx)
                                .await?;
                        rehoming.learn(candidate, count.unwrap_or(0));
                    }
                    Pick::Chosen(destination) => break destination,
                }
            };
            match destination {
                Some(to) => {
                    // Only the channel changes (the counters follow through a trigger);
                    // the place is announced below, with everyone else's that moved.
                    sqlx::query(
                        "UPDATE tasks SET channel = ?1, last_position = NULL WHERE id = ?2 AND status = 'queued'",
                    )
                    .bind(&to)
                    .bind(task.id.to_string())
                    .execute(&mut *tx)
                    .await?;
                    // The usage record names the channel that runs (and bills) the task.
                    sqlx::query("UPDATE usage SET channel = ?1 WHERE task_id = ?2")
                        .bind(&to)
                        .bind(task.id.to_string())
                        .execute(&mut *tx)
                        .await?;
                    rehoming.moved(task.id, to);
                }
                None => {
                    let (ended, events) = finish_in(&mut tx, &task, &otherwise, 0).await?;
                    rehoming.ended(ended, events);
                }
            }
        }
        for queue in rehoming.changed_queues() {
            let events = announce_positions(&mut tx, &queue, WHOLE_QUEUE).await?;
            rehoming.done.events.extend(events);
        }
        tx.commit().await?;
        Ok(rehoming.done)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        db::{ChannelLoad, Destination, Enqueued, Finish, Rehome, TaskRepo},
        tasks::{EventKind, NewTask, TaskId, TaskKind, TaskStatus},
    };

    async fn db() -> (SqliteDatabase, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        (SqliteDatabase::connect(&url, 2).await.expect("db"), dir)
    }

    async fn enqueue(db: &SqliteDatabase, channel: &str, model: &str, client_secret: Option<&str>) -> TaskId {
        let id = TaskId::new();
        let new = NewTask {
            id,
            kind: TaskKind::ImageTo3d,
            model: model.into(),
            channel: channel.into(),
            prompt: None,
            picture_id: None,
            params: json!({}),
            client_secret: client_secret.map(str::to_owned),
            owner_id: None,
            token_id: None,
            webhook_url: None,
        };
        let Enqueued::Created(..) = db.enqueue(&new, 100, None, &Default::default()).await.expect("enqueue") else {
            panic!("created")
        };
        id
    }

    fn load(loads: &[ChannelLoad], channel: &str) -> (u64, u64) {
        loads.iter().find(|l| l.channel == channel).map_or((0, 0), |l| (l.queued, l.running))
    }

    fn to(channel: &str, capacity: u32) -> Destination {
        Destination { channel: channel.into(), capacity }
    }

    fn failed() -> Finish {
        Finish::Failed { code: "channel_deleted".into(), message: "gone".into() }
    }

    #[tokio::test]
    async fn a_channel_is_stored_as_json_with_its_secret_only_sealed_and_its_name_unique() {
        let (db, _dir) = db().await;
        let text = "name = \"t\"\ntype = \"tripo\"\nsecret = \"tsk_plain_secret\"\ndeadline = \"5m\"\n\
                    models = [{ name = \"m\", kind = \"text_to_3d\" }]\n[options]\nregion = \"cn\"\n";
        let config: ChannelConfig = toml::from_str(text).expect("channel");
        let Stored::Done(created) = db.create_channel(&config, Some("v1:sealed")).await.expect("create") else {
            panic!("created")
        };
        assert_eq!(created.id.get_version_num(), 7);
        assert_eq!(created.config, ChannelConfig { secret: None, ..config.clone() });
        assert_eq!(created.sealed_secret.as_deref(), Some("v1:sealed"));
        let raw: String = sqlx::query_scalar("SELECT config FROM channels").fetch_one(&db.reader).await.expect("raw");
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
    async fn ended(db: &SqliteDatabase, id: TaskId, status: &str, ran: i64, ago: i64, code: Option<&str>) {
        let now = chrono::Utc::now().timestamp_millis();
        sqlx::query(
            "UPDATE tasks SET status = ?1, started_at = ?2, finished_at = ?3, error_code = ?4, error_message = ?5 \
             WHERE id = ?6",
        )
        .bind(status)
        .bind(now - ago - ran)
        .bind(now - ago)
        .bind(code)
        .bind(code.map(|c| format!("failed with {c}")))
        .bind(id.to_string())
        .execute(&db.writer)
        .await
        .expect("ended");
    }

    #[tokio::test]
    async fn a_channels_last_hour_counts_outcomes_run_times_and_its_latest_error() {
        let (db, _dir) = db().await;
        const MIN: i64 = 60_000;
        for seconds in 1..=10 {
            let id = enqueue(&db, "c", "m", None).await;
            ended(&db, id, "succeeded", seconds * 1000, (seconds + 1) * MIN, None).await;
        }
        let older = enqueue(&db, "c", "m", None).await;
        ended(&db, older, "failed", 500, 30 * MIN, Some("upstream_error")).await;
        let latest = enqueue(&db, "c", "m", None).await;
        ended(&db, latest, "failed", 500, 10 * MIN, Some("upstream_auth")).await;
        let canceled = enqueue(&db, "c", "m", None).await;
        ended(&db, canceled, "canceled", 100, 5 * MIN, None).await;
        let outside = enqueue(&db, "c", "m", None).await;
        ended(&db, outside, "succeeded", 3_600_000, 120 * MIN, None).await;
        enqueue(&db, "c", "m", None).await;
        let running = enqueue(&db, "c", "m", None).await;
        sqlx::query("UPDATE tasks SET status = 'running' WHERE id = ?1")
            .bind(running.to_string())
            .execute(&db.writer)
            .await
            .expect("running");
        enqueue(&db, "idle", "m", None).await;

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

    #[tokio::test]
    async fn waiting_tasks_move_in_order_up_to_each_destinations_room_and_the_rest_fail() {
        let (db, _dir) = db().await;
        let early = enqueue(&db, "target", "m", None).await;
        let moved: Vec<TaskId> = [enqueue(&db, "gone", "m", None).await, enqueue(&db, "gone", "m", None).await].into();
        let late = enqueue(&db, "target", "m", None).await;
        let spill = enqueue(&db, "gone", "m", None).await;
        let keyed = enqueue(&db, "gone", "m", Some("v1:sealed")).await;
        let stays = enqueue(&db, "gone", "kept", None).await;
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
}
