//! The SQLite implementation of the channel repository.

use std::collections::HashMap;

use async_trait::async_trait;
use sqlx::Row;

use super::{SqliteDatabase, announce_positions, begin, finish_in, task_from_row};
use crate::db::{
    DbResult,
    channels::{ChannelRepo, Rehome, RehomeRoute, Rehomed},
};

/// Re-announce every changed place: a queue is bounded by its channel's capacity, and a
/// move is rare, so every client whose place changed hears of it.
const WHOLE_QUEUE: u32 = u32::MAX;

#[async_trait]
impl ChannelRepo for SqliteDatabase {
    async fn rehome_queued(&self, channel: &str, route: &RehomeRoute<'_>) -> DbResult<Rehomed> {
        let mut tx = begin(&self.writer).await?;
        let rows = sqlx::query(
            "SELECT *, client_secret IS NOT NULL AS has_client_key FROM tasks \
             WHERE channel = ?1 AND status = 'queued' ORDER BY rowid",
        )
        .bind(channel)
        .fetch_all(&mut *tx)
        .await?;
        let mut done = Rehomed::default();
        // Queued and running tasks per destination, as admission counts them.
        let mut held: HashMap<String, i64> = HashMap::new();
        let mut stayed = false;
        for row in &rows {
            let task = task_from_row(row)?;
            let has_client_key: bool = row.try_get("has_client_key")?;
            let (to, otherwise) = match route(&task, has_client_key) {
                Rehome::Stay => {
                    stayed = true;
                    continue;
                }
                Rehome::Move { to, otherwise } => (to, otherwise),
            };
            let mut destination = None;
            for candidate in to.iter().filter(|d| d.channel != channel) {
                let count = match held.get(&candidate.channel) {
                    Some(count) => *count,
                    None => {
                        let row = sqlx::query("SELECT queued + running FROM channel_queues WHERE channel = ?1")
                            .bind(&candidate.channel)
                            .fetch_optional(&mut *tx)
                            .await?;
                        let count = row.map(|r| r.try_get::<i64, _>(0)).transpose()?.unwrap_or(0);
                        held.insert(candidate.channel.clone(), count);
                        count
                    }
                };
                if count < i64::from(candidate.capacity) {
                    destination = Some(candidate.channel.clone());
                    break;
                }
            }
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
                    *held.entry(to.clone()).or_default() += 1;
                    done.moved.push((task.id, to));
                }
                None => {
                    let (ended, events) = finish_in(&mut tx, &task, &otherwise, 0).await?;
                    done.failed.push(ended);
                    done.events.extend(events);
                }
            }
        }
        let mut destinations: Vec<&str> = done.moved.iter().map(|(_, to)| to.as_str()).collect();
        destinations.sort_unstable();
        destinations.dedup();
        for to in destinations {
            done.events.extend(announce_positions(&mut tx, to, WHOLE_QUEUE).await?);
        }
        if stayed && (!done.moved.is_empty() || !done.failed.is_empty()) {
            done.events.extend(announce_positions(&mut tx, channel, WHOLE_QUEUE).await?);
        }
        tx.commit().await?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        db::{ChannelLoad, Destination, Enqueued, Finish, TaskRepo},
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
        };
        let Enqueued::Created(..) = db.enqueue(&new, 100, None).await.expect("enqueue") else { panic!("created") };
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
