//! `kiln db copy`: moves an installation's data from one database to another — SQLite to
//! PostgreSQL above all, and back, or between two databases of the same kind.
//!
//! The copy is planned from the two schemas themselves, not from a list kept in the
//! code: every table of the source but sqlx's own is copied, parents before the tables
//! whose foreign keys name them, so a table a later migration adds is copied without
//! anyone remembering to list it. The two sides must be at this kiln's migration
//! version (the target is migrated here) and agree on every column, so nothing is lost
//! quietly: a column the other side lacks or stores differently stops the copy.
//!
//! The source is only read, in one snapshot (a read transaction), after checking that
//! no kiln runs on it. The target must hold no kiln data; everything is written in one
//! transaction on it, with its triggers off so that what they maintain (the per-channel
//! queue counts) is copied as stored rather than counted again, and committed only after
//! the row counts of every table matched the source's. Values are copied as stored, so
//! sealed secrets and hashes stay what they were, and none of them is ever printed.

mod endpoint;
mod schema;

use std::time::{Duration, Instant};

use crate::config::Secret;

use endpoint::{Location, Reader, Source, Target, Writer};
use schema::{Plan, TablePlan};

/// Rows written per statement. Each batch is held in memory while it is written, so
/// memory stays flat whatever a table's size; SQLite's limit on bound parameters
/// (32 766) may make a batch of a wide table smaller.
const BATCH_ROWS: usize = 1000;

/// Why a copy did not happen, or failed.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// Refused before anything was written: what to do is in the message.
    #[error("{0}")]
    Refused(String),
    /// Failed; the message says whether the target was left untouched.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// One table's numbers: rows in the source's snapshot, rows read and written, rows in
/// the target before it committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    pub source_rows: u64,
    pub copied_rows: u64,
    pub target_rows: u64,
}

/// What a finished copy did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Printable (passwords masked).
    pub from: String,
    pub to: String,
    /// In the order they were copied.
    pub tables: Vec<TableReport>,
    pub elapsed: Duration,
}

impl Report {
    pub fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.copied_rows).sum()
    }
}

/// Where a copy tells how far it is; the command line draws it.
pub trait Progress {
    /// A step before the tables (opening, checking, migrating).
    fn step(&mut self, what: &str);
    /// A table begins; `rows` is its size in the source.
    fn table_started(&mut self, table: &str, rows: u64);
    /// `done` rows of the current table are written so far.
    fn rows_copied(&mut self, table: &str, done: u64);
    fn table_finished(&mut self, table: &str, rows: u64);
}

/// Copies every kiln table from `from` to `to` (database URLs: `sqlite://FILE`,
/// `postgres://…`). The target is migrated first; the copy is refused unless it is
/// empty of kiln data and no kiln runs on the source.
pub async fn copy(from: &Secret, to: &Secret, progress: &mut dyn Progress) -> Result<Report, CopyError> {
    let started = Instant::now();
    let source_at = Location::parse(from, "--from")?;
    let target_at = Location::parse(to, "--to")?;
    if source_at.same_database(&target_at) {
        return Err(CopyError::Refused(format!(
            "--from and --to name the same database ({}); the copy needs a second, empty one",
            target_at.printable()
        )));
    }

    progress.step(&format!("opening the source {} (read-only)", source_at.printable()));
    let source = Source::open(&source_at).await?;
    source.check_version().await?;
    progress.step("checking that no kiln is using the source");
    source.check_idle().await?;
    let mut reader = source.begin().await?;
    let source_schema = reader.schema().await?;
    let names: Vec<&str> = source_schema.tables.keys().map(String::as_str).collect();

    // A database that holds an installation is refused before the migrations touch it.
    progress.step(&format!("opening the target {}", target_at.printable()));
    let target = Target::open(&target_at).await?;
    refuse_occupied(target.occupied(&names).await?)?;
    progress.step("migrating the target");
    target.migrate().await?;
    let mut writer = target.begin().await?;

    let plan = Plan::new(&source_schema, &writer.schema().await?)?;
    let tables = copy_tables(&plan, &mut reader, &mut writer, progress).await.map_err(|err| match err {
        CopyError::Failed(err) => {
            CopyError::Failed(err.context("nothing was copied: the target's transaction was rolled back"))
        }
        refused => refused,
    })?;
    progress.step("committing");
    writer.commit().await?;
    reader.finish().await;
    Ok(Report { from: source_at.printable(), to: target_at.printable(), tables, elapsed: started.elapsed() })
}

/// Refuses a target whose kiln tables hold rows; `occupied` names them with their counts.
fn refuse_occupied(occupied: Vec<(String, u64)>) -> Result<(), CopyError> {
    if occupied.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = occupied
        .iter()
        .map(|(table, rows)| format!("{table}: {rows} row{}", if *rows == 1 { "" } else { "s" }))
        .collect();
    Err(CopyError::Refused(format!(
        "the target already holds kiln data ({}), and the copy only writes into an empty database; nothing was \
         written. Point --to at a new database, or drop and re-create this one first",
        listed.join(", ")
    )))
}

/// The whole copy inside the target's transaction; an error leaves it uncommitted, and
/// dropping it rolls it back.
async fn copy_tables(
    plan: &Plan,
    reader: &mut Reader,
    writer: &mut Writer,
    progress: &mut dyn Progress,
) -> Result<Vec<TableReport>, CopyError> {
    let names: Vec<&str> = plan.tables.iter().map(|t| t.name.as_str()).collect();
    // Checked again under the lock: someone may have written since the first look.
    writer.lock(&names).await?;
    let mut occupied = Vec::new();
    for name in &names {
        let rows = writer.count(name).await?;
        if rows > 0 {
            occupied.push((name.to_string(), rows));
        }
    }
    refuse_occupied(occupied)?;

    writer.disable_triggers(&names).await?;
    let mut reports = Vec::with_capacity(plan.tables.len());
    for table in &plan.tables {
        let source_rows = reader.count(&table.name).await?;
        progress.table_started(&table.name, source_rows);
        let copied_rows = copy_table(table, reader, writer, progress).await?;
        progress.table_finished(&table.name, copied_rows);
        writer.advance_identities(table).await?;
        reports.push(TableReport { table: table.name.clone(), source_rows, copied_rows, target_rows: 0 });
    }
    writer.enable_triggers().await?;

    // Counted again in the target, inside the transaction: a row that did not arrive,
    // or one a trigger added, stops the commit.
    let mut mismatched = Vec::new();
    for report in &mut reports {
        report.target_rows = writer.count(&report.table).await?;
        if report.source_rows != report.copied_rows || report.copied_rows != report.target_rows {
            mismatched.push(format!(
                "{}: {} in the source, {} copied, {} in the target",
                report.table, report.source_rows, report.copied_rows, report.target_rows
            ));
        }
    }
    if !mismatched.is_empty() {
        return Err(CopyError::Failed(anyhow::anyhow!("the row counts differ: {}", mismatched.join("; "))));
    }
    Ok(reports)
}

/// Streams one table from the source's snapshot into the target, a batch at a time.
async fn copy_table(
    table: &TablePlan,
    reader: &mut Reader,
    writer: &mut Writer,
    progress: &mut dyn Progress,
) -> Result<u64, CopyError> {
    use futures::TryStreamExt;

    let batch_rows = BATCH_ROWS.min(endpoint::MAX_BOUND_PARAMETERS / table.columns.len().max(1)).max(1);
    let mut batch = endpoint::Batch::new(table);
    let mut done = 0u64;
    let mut rows = reader.rows(table);
    while let Some(row) = rows.try_next().await? {
        batch.push(row)?;
        if batch.len() >= batch_rows {
            done += batch.len() as u64;
            writer.insert(table, &mut batch).await?;
            progress.rows_copied(&table.name, done);
        }
    }
    drop(rows);
    if batch.len() > 0 {
        done += batch.len() as u64;
        writer.insert(table, &mut batch).await?;
        progress.rows_copied(&table.name, done);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use sqlx::{Connection, SqliteConnection};

    use super::*;

    /// Counts what the copy reports, and nothing else.
    struct Quiet;

    impl Progress for Quiet {
        fn step(&mut self, _: &str) {}
        fn table_started(&mut self, _: &str, _: u64) {}
        fn rows_copied(&mut self, _: &str, _: u64) {}
        fn table_finished(&mut self, _: &str, _: u64) {}
    }

    fn url(dir: &tempfile::TempDir, name: &str) -> Secret {
        Secret::new(format!("sqlite://{}", dir.path().join(name).display()))
    }

    /// A migrated SQLite database with a row in most tables, written as kiln writes
    /// them: a picture, a task waiting and one done (the triggers count the waiting one),
    /// events, an artifact, a user with a token and a session, an audit entry, a stored
    /// channel and a webhook delivery with an attempt.
    async fn populated(dir: &tempfile::TempDir) -> Secret {
        let source = url(dir, "source.db");
        drop(crate::db::connect(source.expose(), 1).await.expect("migrate the source"));
        let mut conn = SqliteConnection::connect(source.expose()).await.expect("open the source");
        sqlx::raw_sql(
            "INSERT INTO pictures (id, key, content_type, format, width, height, size, sha256, created_at) \
                 VALUES ('p1', 'pictures/p1.png', 'image/png', 'png', 4, 3, 99, 'ab', 1000);
             INSERT INTO tasks (id, kind, model, channel, status, picture_id, created_at) \
                 VALUES ('t1', 'image_to_3d', 'relief', 'relief', 'succeeded', 'p1', 1001);
             INSERT INTO tasks (id, kind, model, channel, status, prompt, created_at, client_secret) \
                 VALUES ('t2', 'text_to_3d', 'relief', 'relief', 'queued', 'a ''quoted'' vase', 1002, 'sealed:x');
             INSERT INTO tasks (id, kind, model, channel, status, prompt, created_at, client_secret) \
                 VALUES ('t3', 'text_to_3d', 'relief', 'relief', 'queued', 'ünïcödé', 1003, 'sealed:y');
             DELETE FROM tasks WHERE id = 't2';
             INSERT INTO task_events (task_id, seq, kind, data, created_at) VALUES \
                 ('t1', 1, 'queued', '{\"position\":1}', 1001), ('t1', 2, 'completed', '{}', 1005);
             INSERT INTO artifacts (id, task_id, name, role, key, content_type, size, sha256, created_at) \
                 VALUES ('a1', 't1', 'model.glb', 'model', 'tasks/t1/model.glb', 'model/gltf-binary', 5, 'cd', 1005);
             INSERT INTO users (id, username, password_hash, role, balance, created_at, updated_at) \
                 VALUES ('u1', 'Root', '$argon2id$v=19$secret', 'admin', 42, 1, 1);
             INSERT INTO api_tokens (id, user_id, name, hash, hint, created_at) VALUES ('k1', 'u1', 'ci', 'h', 'abcd', 1);
             INSERT INTO sessions (id_hash, user_id, csrf, created_at, last_seen_at, expires_at) \
                 VALUES ('s1', 'u1', 'c', 1, 1, 99999999999999);
             INSERT INTO audit_log (at, actor, action, detail) VALUES (1, 'cli', 'user.create', '{}');
             INSERT INTO audit_log (at, actor, action, detail) VALUES (2, 'cli', 'balance.add', '{}');
             INSERT INTO channels (id, name, config, secret, created_at, updated_at) \
                 VALUES ('c1', 'scope', '{}', 'sealed-secret', 1, 1);
             INSERT INTO webhook_deliveries (id, task_id, url, event, payload, status, created_at) \
                 VALUES ('d1', 't1', 'https://example.com/hook', 'task.completed', '{}', 'delivered', 1);
             INSERT INTO webhook_attempts (delivery_id, at, status_code, duration_ms) VALUES ('d1', 2, 200, 7);",
        )
        .execute(&mut conn)
        .await
        .expect("fill the source");
        conn.close().await.expect("close the source");
        source
    }

    /// Rows of `table` in `main` that `other` lacks, or the other way round, rowids
    /// included (they carry the FIFO order of tasks).
    async fn differences(conn: &mut SqliteConnection, table: &str) -> i64 {
        let sql = format!(
            "SELECT (SELECT COUNT(*) FROM (SELECT rowid, * FROM main.\"{table}\" EXCEPT SELECT rowid, * FROM other.\"{table}\")) \
                  + (SELECT COUNT(*) FROM (SELECT rowid, * FROM other.\"{table}\" EXCEPT SELECT rowid, * FROM main.\"{table}\"))"
        );
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(conn).await.expect("compare")
    }

    async fn tables(conn: &mut SqliteConnection) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
             AND name <> '_sqlx_migrations' ORDER BY name",
        )
        .fetch_all(conn)
        .await
        .expect("tables")
    }

    async fn row_counts(url: &str) -> Vec<(String, i64)> {
        let mut conn = SqliteConnection::connect(url).await.expect("open");
        let mut counts = Vec::new();
        for table in tables(&mut conn).await {
            let rows = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\"")))
                .fetch_one(&mut conn)
                .await
                .expect("count");
            counts.push((table, rows));
        }
        counts
    }

    #[tokio::test]
    async fn every_table_is_copied_as_stored_rowids_and_trigger_counts_included() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        let target = url(&dir, "nested/target.db");
        let report = copy(&source, &target, &mut Quiet).await.expect("the copy");

        let mut conn = SqliteConnection::connect(target.expose()).await.unwrap();
        let path = dir.path().join("source.db");
        sqlx::query("ATTACH DATABASE ?1 AS other").bind(path.to_str().unwrap()).execute(&mut conn).await.unwrap();
        let all = tables(&mut conn).await;
        let copied: Vec<&str> = report.tables.iter().map(|t| t.table.as_str()).collect();
        let mut sorted = copied.clone();
        sorted.sort();
        assert_eq!(sorted, all, "every table of the schema is in the copy");
        for table in &all {
            assert_eq!(differences(&mut conn, table).await, 0, "`{table}` differs");
        }
        let position = |t: &str| copied.iter().position(|c| *c == t).unwrap();
        for (child, parent) in [
            ("tasks", "pictures"),
            ("task_events", "tasks"),
            ("artifacts", "tasks"),
            ("usage", "tasks"),
            ("api_tokens", "users"),
            ("sessions", "users"),
            ("webhook_attempts", "webhook_deliveries"),
        ] {
            assert!(position(parent) < position(child), "{parent} before {child}: {copied:?}");
        }
        let task = report.tables.iter().find(|t| t.table == "tasks").unwrap();
        assert_eq!((task.source_rows, task.copied_rows, task.target_rows), (2, 2, 2));

        // The triggers are back: the waiting count follows a new task, and the rowid
        // goes on after the copied ones.
        let (queued,): (i64,) = sqlx::query_as("SELECT queued FROM main.channel_queues WHERE channel = 'relief'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        // t2 was counted when it was queued and not uncounted when it was deleted (kiln
        // never deletes tasks): the copy keeps the count as stored, it does not recount.
        assert_eq!(queued, 2);
        sqlx::query("INSERT INTO main.tasks (id, kind, model, channel, status, created_at) VALUES ('t4', 'text_to_3d', 'relief', 'relief', 'queued', 9)")
            .execute(&mut conn)
            .await
            .unwrap();
        let (queued,): (i64,) = sqlx::query_as("SELECT queued FROM main.channel_queues WHERE channel = 'relief'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(queued, 3, "the count trigger works again");
        let rowids: Vec<i64> =
            sqlx::query_scalar("SELECT rowid FROM main.tasks ORDER BY rowid").fetch_all(&mut conn).await.unwrap();
        assert_eq!(rowids, [1, 3, 4], "t1 and t3 kept their rowids (t2's gap too), t4 came after");
    }

    #[tokio::test]
    async fn a_target_holding_kiln_data_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        let target = url(&dir, "target.db");
        copy(&source, &target, &mut Quiet).await.expect("the first copy");
        let before = row_counts(target.expose()).await;
        let err = copy(&source, &target, &mut Quiet).await.expect_err("a second copy into it");
        let CopyError::Refused(message) = err else { panic!("not refused: {err:?}") };
        assert!(message.contains("tasks: 2 rows") && message.contains("users: 1 row,"), "{message}");
        assert_eq!(row_counts(target.expose()).await, before, "the target is unchanged");

        // One of an older kiln, say: refused before any migration touches it.
        let older = url(&dir, "older.db");
        let mut conn = SqliteConnection::connect(&format!("{}?mode=rwc", older.expose())).await.unwrap();
        sqlx::raw_sql("CREATE TABLE tasks (id TEXT PRIMARY KEY); INSERT INTO tasks VALUES ('t0');")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        let err = copy(&source, &older, &mut Quiet).await.expect_err("a copy into it");
        assert!(matches!(&err, CopyError::Refused(m) if m.contains("(tasks: 1 row)")), "{err:?}");
        let mut conn = SqliteConnection::connect(older.expose()).await.unwrap();
        let tables: Vec<String> = sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut conn)
            .await
            .unwrap();
        assert_eq!(tables, ["tasks"], "not migrated");
    }

    #[tokio::test]
    async fn a_failure_mid_copy_leaves_the_target_without_data_and_the_source_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        // SQLite keeps text in an INTEGER column: a value the target cannot take. The
        // table comes late in the copy, after tasks and their events were written.
        let mut conn = SqliteConnection::connect(source.expose()).await.unwrap();
        sqlx::query("UPDATE webhook_attempts SET duration_ms = 'seven'").execute(&mut conn).await.unwrap();
        conn.close().await.unwrap();
        let before = std::fs::read(dir.path().join("source.db")).unwrap();
        let unchanged = |after: Vec<u8>| after == before;

        let target = url(&dir, "target.db");
        let err = copy(&source, &target, &mut Quiet).await.expect_err("a copy of a broken value");
        let CopyError::Failed(err) = err else { panic!("not a failure: {err:?}") };
        let message = format!("{err:#}");
        assert!(message.contains("nothing was copied"), "{message}");
        assert!(message.contains("`webhook_attempts.duration_ms`"), "{message}");
        assert!(!message.contains("seven"), "no value is shown: {message}");

        for (table, rows) in row_counts(target.expose()).await {
            assert_eq!(rows, 0, "`{table}` is empty");
        }
        let mut conn = SqliteConnection::connect(target.expose()).await.unwrap();
        let triggers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert_eq!(triggers, 3, "the rollback kept the triggers");
        assert!(unchanged(std::fs::read(dir.path().join("source.db")).unwrap()), "the source file is unchanged");
    }

    #[tokio::test]
    async fn the_same_database_twice_an_unknown_scheme_and_a_missing_source_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let source = populated(&dir).await;
        let same = Secret::new(format!("sqlite:{}/./source.db", dir.path().display()));
        let refused = |result: Result<Report, CopyError>| match result {
            Err(CopyError::Refused(message)) => message,
            other => panic!("not refused: {other:?}"),
        };
        assert!(refused(copy(&source, &same, &mut Quiet).await).contains("the same database"));
        let mysql = Secret::new("mysql://kiln:hunter2@db/kiln");
        let message = refused(copy(&source, &mysql, &mut Quiet).await);
        assert!(message.contains("--to mysql://kiln:********@db/kiln: not a database URL"), "{message}");
        let missing = url(&dir, "missing.db");
        assert!(refused(copy(&missing, &url(&dir, "t.db"), &mut Quiet).await).contains("no database file"));
        assert!(!dir.path().join("missing.db").exists(), "the source is not made");
    }
}
