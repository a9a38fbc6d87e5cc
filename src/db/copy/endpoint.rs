//! The two ends of a copy, on either backend: opening them, the checks made before
//! anything is written, reading the source's schema and rows, and writing batches into
//! the target. All SQL of `kiln db copy` is here.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt, stream::BoxStream};
use sqlx::{
    AssertSqlSafe, PgConnection, Postgres, Row, Sqlite, SqliteConnection, Transaction,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
};

use super::{
    CopyError,
    schema::{Column, Kind, Schema, Shape, TablePlan},
};
use crate::config::Secret;

/// Bound parameters per statement, under SQLite's limit of 32 766 (PostgreSQL's is
/// 65 535, and its batches bind one array per column anyway).
pub(super) const MAX_BOUND_PARAMETERS: usize = 32_000;

/// How long the copy watches the source for a running kiln. Every kiln process tries to
/// renew the deadline sweep's lease at least once a second (`queue.rs`), so a lease
/// that does not change in this time has no kiln behind it, whatever the clocks say.
const WATCH: Duration = Duration::from_millis(2500);

/// How long the target waits for locks held by others before the copy gives up.
const LOCK_TIMEOUT: &str = "10s";

/// What the copy calls itself on PostgreSQL, so that it is not taken for a kiln.
const APPLICATION_NAME: &str = "kiln db copy";

/// sqlx's record of applied migrations: each side has its own.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// A database URL, parsed.
pub(super) enum Location {
    Sqlite { options: SqliteConnectOptions, path: PathBuf, printable: String },
    Postgres { options: PgConnectOptions, printable: String },
}

impl Location {
    pub(super) fn parse(url: &Secret, flag: &str) -> Result<Location, CopyError> {
        let text = url.expose();
        let printable = url.masked();
        let refused = |why: String| CopyError::Refused(format!("{flag} {printable}: {why}"));
        if text.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(text).map_err(|e| refused(e.to_string()))?;
            let path = options.get_filename().to_owned();
            Ok(Location::Sqlite { options, path, printable })
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let options = PgConnectOptions::from_str(text).map_err(|e| refused(e.to_string()))?;
            Ok(Location::Postgres { options: options.application_name(APPLICATION_NAME), printable })
        } else {
            Err(refused("not a database URL kiln knows; use sqlite://FILE or postgres://USER@HOST/DATABASE".into()))
        }
    }

    pub(super) fn printable(&self) -> String {
        match self {
            Location::Sqlite { printable, .. } | Location::Postgres { printable, .. } => printable.clone(),
        }
    }

    /// Whether both name one database: the same file, or the same database on the same
    /// server (as far as the URLs tell).
    pub(super) fn same_database(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::Sqlite { path: a, .. }, Location::Sqlite { path: b, .. }) => canonical(a) == canonical(b),
            (Location::Postgres { options: a, .. }, Location::Postgres { options: b, .. }) => {
                (a.get_host(), a.get_port(), a.get_database()) == (b.get_host(), b.get_port(), b.get_database())
            }
            _ => false,
        }
    }
}

/// A path with its directory resolved, for comparison; the file itself may not exist.
fn canonical(path: &Path) -> PathBuf {
    if let Ok(path) = path.canonicalize() {
        return path;
    }
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            dir.canonicalize().map(|d| d.join(name)).unwrap_or_else(|_| path.to_owned())
        }
        _ => path.to_owned(),
    }
}

/// The database copied from, open only for reading.
pub(super) enum Source {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Source {
    pub(super) async fn open(at: &Location) -> Result<Source, CopyError> {
        match at {
            Location::Sqlite { options, path, printable } => {
                if !path.is_file() {
                    return Err(CopyError::Refused(format!("--from {printable}: there is no database file there")));
                }
                // Read-only: SQLite will not write the file, whatever happens. It may
                // leave empty `-wal` and `-shm` files beside it, which kiln reuses.
                let options = options.clone().read_only(true).create_if_missing(false);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open the source database {printable}"))?;
                Ok(Source::Sqlite(pool))
            }
            Location::Postgres { options, printable } => {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options.clone())
                    .await
                    .with_context(|| format!("cannot connect to the source database {printable}"))?;
                Ok(Source::Postgres(pool))
            }
        }
    }

    /// Refuses a source that is not at this kiln's migration version: the two schemas
    /// would differ, and the source is not to be migrated by a copy.
    pub(super) async fn check_version(&self) -> Result<(), CopyError> {
        const APPLIED: &str = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
        let (exists, applied, known): (bool, Vec<i64>, BTreeSet<i64>) = match self {
            Source::Sqlite(pool) => {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                )
                .bind(MIGRATIONS_TABLE)
                .fetch_one(pool)
                .await
                .context("cannot read the source's schema")?;
                let applied = if exists { sqlx::query_scalar(APPLIED).fetch_all(pool).await } else { Ok(Vec::new()) };
                (
                    exists,
                    applied.context("cannot read the source's migrations")?,
                    versions(&crate::db::sqlite::MIGRATOR),
                )
            }
            Source::Postgres(pool) => {
                let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                    .bind(MIGRATIONS_TABLE)
                    .fetch_one(pool)
                    .await
                    .context("cannot read the source's schema")?;
                let applied = if exists { sqlx::query_scalar(APPLIED).fetch_all(pool).await } else { Ok(Vec::new()) };
                (
                    exists,
                    applied.context("cannot read the source's migrations")?,
                    versions(&crate::db::postgres::MIGRATOR),
                )
            }
        };
        if !exists {
            return Err(CopyError::Refused(
                "the source is not a kiln database (it has no record of kiln's migrations)".into(),
            ));
        }
        let applied: BTreeSet<i64> = applied.into_iter().collect();
        if let Some(unknown) = applied.difference(&known).next() {
            return Err(CopyError::Refused(format!(
                "the source was migrated by a newer kiln (migration {unknown:04} is unknown to this one); copy \
                 with that kiln version"
            )));
        }
        if let Some(missing) = known.difference(&applied).next() {
            return Err(CopyError::Refused(format!(
                "the source is at an older schema (migration {missing:04} is not applied to it), and a copy does \
                 not change its source: run `kiln migrate` on it with this kiln version first (starting this \
                 kiln on it once does the same), then copy"
            )));
        }
        Ok(())
    }

    /// Refuses a source a kiln is running on: what it writes during or after the copy
    /// would be missing from the target. Kiln renews its deadline sweep's lease about
    /// once a second, so a lease that changes while the copy watches is a live kiln; on
    /// PostgreSQL, a session that calls itself `kiln` is one too.
    pub(super) async fn check_idle(&self) -> Result<(), CopyError> {
        let running = || {
            CopyError::Refused(
                "a kiln is running on the source database; stop every kiln process that uses it (a copy taken \
                 while kiln runs misses whatever it writes next), then run the copy again"
                    .into(),
            )
        };
        let sweep = crate::queue::DEADLINE_SWEEP;
        let first = self.lease(sweep).await?;
        if first.is_some() {
            tokio::time::sleep(WATCH).await;
            if self.lease(sweep).await? != first {
                return Err(running());
            }
        }
        if let Source::Postgres(pool) = self {
            let sessions: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND pid <> pg_backend_pid() AND application_name = 'kiln'",
            )
            .fetch_one(pool)
            .await
            .context("cannot list the source's sessions")?;
            if sessions > 0 {
                return Err(running());
            }
        }
        Ok(())
    }

    async fn lease(&self, name: &str) -> anyhow::Result<Option<(String, i64)>> {
        let read = "SELECT holder, until FROM singletons WHERE name = ";
        let row = match self {
            Source::Sqlite(pool) => {
                sqlx::query_as(AssertSqlSafe(format!("{read}?1"))).bind(name).fetch_optional(pool).await
            }
            Source::Postgres(pool) => {
                sqlx::query_as(AssertSqlSafe(format!("{read}$1"))).bind(name).fetch_optional(pool).await
            }
        };
        row.context("cannot read the source's leases")
    }

    /// Opens the snapshot every read of the copy is made in.
    pub(super) async fn begin(&self) -> Result<Reader, CopyError> {
        let reader = match self {
            Source::Sqlite(pool) => Reader::Sqlite(pool.begin().await.context("cannot begin reading the source")?),
            Source::Postgres(pool) => Reader::Postgres(
                pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .await
                    .context("cannot begin reading the source")?,
            ),
        };
        Ok(reader)
    }
}

fn versions(migrator: &sqlx::migrate::Migrator) -> BTreeSet<i64> {
    migrator.iter().map(|m| m.version).collect()
}

/// The source's snapshot: a read transaction, so that every table is read as of one
/// moment.
pub(super) enum Reader {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

/// One row of the source, decoded into a [`Batch`].
pub(super) enum SourceRow {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Reader {
    pub(super) async fn schema(&mut self) -> anyhow::Result<Schema> {
        match self {
            Reader::Sqlite(tx) => sqlite_schema(tx).await,
            Reader::Postgres(tx) => postgres_schema(tx).await,
        }
        .context("cannot read the source's schema")
    }

    pub(super) async fn count(&mut self, table: &str) -> anyhow::Result<u64> {
        match self {
            Reader::Sqlite(tx) => count_sqlite(tx, table).await,
            Reader::Postgres(tx) => count_postgres(tx, table).await,
        }
        .with_context(|| format!("cannot count the source's `{table}`"))
    }

    /// The table's planned columns, row by row as the database sends them.
    pub(super) fn rows<'a>(&'a mut self, table: &'a TablePlan) -> BoxStream<'a, anyhow::Result<SourceRow>> {
        let columns: Vec<String> = table.columns.iter().map(|(name, _)| quote(name)).collect();
        let sql = AssertSqlSafe(format!("SELECT {} FROM {}", columns.join(", "), quote(&table.name)));
        let name = &table.name;
        let rows = match self {
            Reader::Sqlite(tx) => sqlx::query(sql).fetch(&mut **tx).map_ok(SourceRow::Sqlite).boxed(),
            Reader::Postgres(tx) => sqlx::query(sql).fetch(&mut **tx).map_ok(SourceRow::Postgres).boxed(),
        };
        rows.map(move |row| row.with_context(|| format!("cannot read the source's `{name}`"))).boxed()
    }

    /// Ends the snapshot; it changed nothing, so there is nothing to commit.
    pub(super) async fn finish(self) {
        let _ = match self {
            Reader::Sqlite(tx) => tx.rollback().await,
            Reader::Postgres(tx) => tx.rollback().await,
        };
    }
}

/// The database copied into.
pub(super) enum Target {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Target {
    /// Opens the target; a SQLite file is made if missing.
    pub(super) async fn open(at: &Location) -> Result<Target, CopyError> {
        match at {
            Location::Sqlite { options, path, printable } => {
                if let Some(parent) = path.parent()
                    && !parent.as_os_str().is_empty()
                {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot make the folder of the target database {printable}"))?;
                }
                // As kiln opens it (src/db/sqlite.rs).
                let options = options
                    .clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(10))
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open the target database {printable}"))?;
                Ok(Target::Sqlite(pool))
            }
            Location::Postgres { options, printable } => {
                let pool = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options.clone())
                    .await
                    .with_context(|| format!("cannot connect to the target database {printable}"))?;
                Ok(Target::Postgres(pool))
            }
        }
    }

    /// Those of `tables` that exist in the target and hold rows, with their counts.
    pub(super) async fn occupied(&self, tables: &[&str]) -> Result<Vec<(String, u64)>, CopyError> {
        let mut found = Vec::new();
        let present = match self {
            Target::Sqlite(pool) => {
                let mut conn = pool.acquire().await.context("cannot read the target")?;
                sqlite_schema(&mut conn).await
            }
            Target::Postgres(pool) => {
                let mut conn = pool.acquire().await.context("cannot read the target")?;
                postgres_schema(&mut conn).await
            }
        }
        .context("cannot read the target's schema")?;
        for table in tables.iter().filter(|t| present.tables.contains_key(**t)) {
            let rows = match self {
                Target::Sqlite(pool) => match pool.acquire().await {
                    Ok(mut conn) => count_sqlite(&mut conn, table).await,
                    Err(err) => Err(err.into()),
                },
                Target::Postgres(pool) => match pool.acquire().await {
                    Ok(mut conn) => count_postgres(&mut conn, table).await,
                    Err(err) => Err(err.into()),
                },
            }
            .with_context(|| format!("cannot count the target's `{table}`"))?;
            if rows > 0 {
                found.push((table.to_string(), rows));
            }
        }
        Ok(found)
    }

    /// Applies the migrations `kiln migrate` applies.
    pub(super) async fn migrate(&self) -> Result<(), CopyError> {
        match self {
            Target::Sqlite(pool) => crate::db::sqlite::MIGRATOR.run(pool).await,
            Target::Postgres(pool) => crate::db::postgres::MIGRATOR.run(pool).await,
        }
        .context("cannot migrate the target database")?;
        Ok(())
    }

    /// Opens the one transaction everything is written in. On SQLite it takes the write
    /// lock at once.
    pub(super) async fn begin(&self) -> Result<Writer, CopyError> {
        let writer = match self {
            Target::Sqlite(pool) => Writer::Sqlite {
                tx: pool.begin_with("BEGIN IMMEDIATE").await.context("cannot begin writing the target")?,
                triggers: Vec::new(),
            },
            Target::Postgres(pool) => {
                let mut tx = pool.begin().await.context("cannot begin writing the target")?;
                sqlx::raw_sql(AssertSqlSafe(format!("SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")))
                    .execute(&mut *tx)
                    .await
                    .context("cannot set the target's lock timeout")?;
                Writer::Postgres { tx, triggers: Vec::new() }
            }
        };
        Ok(writer)
    }
}

/// The target's transaction, and the triggers turned off in it.
pub(super) enum Writer {
    /// SQLite cannot disable a trigger: they are dropped in the transaction and made
    /// again from their own SQL before it commits.
    Sqlite { tx: Transaction<'static, Sqlite>, triggers: Vec<String> },
    /// The tables whose triggers are disabled.
    Postgres { tx: Transaction<'static, Postgres>, triggers: Vec<String> },
}

impl Writer {
    pub(super) async fn schema(&mut self) -> anyhow::Result<Schema> {
        match self {
            Writer::Sqlite { tx, .. } => sqlite_schema(tx).await,
            Writer::Postgres { tx, .. } => postgres_schema(tx).await,
        }
        .context("cannot read the target's schema")
    }

    /// Keeps everyone else from writing the tables until the commit, so the emptiness
    /// checked next still holds when it commits.
    pub(super) async fn lock(&mut self, tables: &[&str]) -> anyhow::Result<()> {
        if let Writer::Postgres { tx, .. } = self
            && !tables.is_empty()
        {
            let names: Vec<String> = tables.iter().map(|t| quote(t)).collect();
            sqlx::raw_sql(AssertSqlSafe(format!("LOCK TABLE {} IN EXCLUSIVE MODE", names.join(", "))))
                .execute(&mut **tx)
                .await
                .context("cannot lock the target's tables (is a kiln running on the target?)")?;
        }
        Ok(())
    }

    pub(super) async fn count(&mut self, table: &str) -> anyhow::Result<u64> {
        match self {
            Writer::Sqlite { tx, .. } => count_sqlite(tx, table).await,
            Writer::Postgres { tx, .. } => count_postgres(tx, table).await,
        }
        .with_context(|| format!("cannot count the target's `{table}`"))
    }

    /// Turns the triggers of `tables` off, so that rows are written as stored: a
    /// trigger that keeps a count (channel_queues) would count the copied rows again.
    pub(super) async fn disable_triggers(&mut self, tables: &[&str]) -> anyhow::Result<()> {
        match self {
            Writer::Sqlite { tx, triggers } => {
                let all: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY name",
                )
                .fetch_all(&mut **tx)
                .await
                .context("cannot list the target's triggers")?;
                for (name, table, sql) in all {
                    if tables.contains(&table.as_str()) {
                        sqlx::raw_sql(AssertSqlSafe(format!("DROP TRIGGER {}", quote(&name))))
                            .execute(&mut **tx)
                            .await
                            .with_context(|| format!("cannot set the target's trigger `{name}` aside"))?;
                        triggers.push(sql);
                    }
                }
            }
            Writer::Postgres { tx, triggers } => {
                let with_triggers: Vec<String> = sqlx::query_scalar(
                    "SELECT DISTINCT c.relname::text FROM pg_trigger t \
                     JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE NOT t.tgisinternal AND n.nspname = current_schema() ORDER BY 1",
                )
                .fetch_all(&mut **tx)
                .await
                .context("cannot list the target's triggers")?;
                for table in with_triggers.into_iter().filter(|t| tables.contains(&t.as_str())) {
                    sqlx::raw_sql(AssertSqlSafe(format!("ALTER TABLE {} DISABLE TRIGGER USER", quote(&table))))
                        .execute(&mut **tx)
                        .await
                        .with_context(|| {
                            format!(
                                "cannot disable the triggers of the target's `{table}` (the copy must run as the \
                                 role that owns kiln's tables)"
                            )
                        })?;
                    triggers.push(table);
                }
            }
        }
        Ok(())
    }

    /// Turns back on what [`Writer::disable_triggers`] turned off.
    pub(super) async fn enable_triggers(&mut self) -> anyhow::Result<()> {
        match self {
            Writer::Sqlite { tx, triggers } => {
                for sql in triggers.drain(..) {
                    sqlx::raw_sql(AssertSqlSafe(sql))
                        .execute(&mut **tx)
                        .await
                        .context("cannot make the target's triggers again")?;
                }
            }
            Writer::Postgres { tx, triggers } => {
                for table in triggers.drain(..) {
                    sqlx::raw_sql(AssertSqlSafe(format!("ALTER TABLE {} ENABLE TRIGGER USER", quote(&table))))
                        .execute(&mut **tx)
                        .await
                        .with_context(|| format!("cannot enable the triggers of the target's `{table}` again"))?;
                }
            }
        }
        Ok(())
    }

    /// Writes a batch in one statement and empties it.
    pub(super) async fn insert(&mut self, table: &TablePlan, batch: &mut Batch<'_>) -> anyhow::Result<()> {
        let names: Vec<String> = table.columns.iter().map(|(name, _)| quote(name)).collect();
        let head = format!("INSERT INTO {} ({}) ", quote(&table.name), names.join(", "));
        let rows = batch.len;
        let written = match self {
            Writer::Sqlite { tx, .. } => {
                let mut query = sqlx::QueryBuilder::<Sqlite>::new(head);
                let columns = &mut batch.columns;
                query.push_values(0..rows, |mut row, i| {
                    for column in columns.iter_mut() {
                        match column {
                            Values::Int(values) => row.push_bind(values[i]),
                            Values::Text(values) => row.push_bind(values[i].take()),
                        };
                    }
                });
                query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
            }
            Writer::Postgres { tx, .. } => {
                // One array per column, unnested into rows: a statement whose text is
                // the same for every batch, with as many parameters as columns.
                let mut query = sqlx::QueryBuilder::<Postgres>::new(head);
                if !table.identities.is_empty() {
                    query.push("OVERRIDING SYSTEM VALUE ");
                }
                query.push("SELECT * FROM UNNEST(");
                let mut arrays = query.separated(", ");
                for column in batch.columns.iter_mut() {
                    match column {
                        Values::Int(values) => {
                            arrays.push_bind(std::mem::take(values));
                            arrays.push_unseparated("::int8[]");
                        }
                        Values::Text(values) => {
                            arrays.push_bind(std::mem::take(values));
                            arrays.push_unseparated("::text[]");
                        }
                    }
                }
                query.push(")");
                query.build().execute(&mut **tx).await.map(|done| done.rows_affected())
            }
        };
        batch.clear();
        let written =
            written.with_context(|| format!("cannot write {rows} rows into the target's `{}`", table.name))?;
        anyhow::ensure!(written == rows as u64, "the target's `{}` took {written} of {rows} rows", table.name);
        Ok(())
    }

    /// Moves the sequences of the table's identity columns past the copied values, so
    /// that the next row kiln adds does not take a number already used.
    pub(super) async fn advance_identities(&mut self, table: &TablePlan) -> anyhow::Result<()> {
        if let Writer::Postgres { tx, .. } = self {
            for column in &table.identities {
                let sql = format!(
                    "SELECT setval(pg_get_serial_sequence($1, $2), m) FROM (SELECT MAX({}) AS m FROM {}) s \
                     WHERE m IS NOT NULL",
                    quote(column),
                    quote(&table.name)
                );
                sqlx::query(AssertSqlSafe(sql))
                    .bind(quote(&table.name))
                    .bind(column)
                    .fetch_optional(&mut **tx)
                    .await
                    .with_context(|| format!("cannot move the sequence of `{}.{column}`", table.name))?;
            }
        }
        Ok(())
    }

    pub(super) async fn commit(self) -> Result<(), CopyError> {
        match self {
            Writer::Sqlite { tx, .. } => tx.commit().await,
            Writer::Postgres { tx, .. } => tx.commit().await,
        }
        .context(
            "cannot commit the copy to the target (whether it took effect is unknown only if the connection \
                  broke; otherwise nothing was written)",
        )?;
        Ok(())
    }
}

/// A column of a batch.
enum Values {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
}

/// Rows on their way to the target, held column by column.
pub(super) struct Batch<'a> {
    table: &'a TablePlan,
    columns: Vec<Values>,
    len: usize,
}

impl<'a> Batch<'a> {
    pub(super) fn new(table: &'a TablePlan) -> Self {
        let columns = table
            .columns
            .iter()
            .map(|(_, kind)| match kind {
                Kind::Int => Values::Int(Vec::new()),
                Kind::Text => Values::Text(Vec::new()),
            })
            .collect();
        Batch { table, columns, len: 0 }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        for column in &mut self.columns {
            match column {
                Values::Int(values) => values.clear(),
                Values::Text(values) => values.clear(),
            }
        }
        self.len = 0;
    }

    /// Adds a source row, decoding each column as the plan says it is stored. A value
    /// stored otherwise (SQLite does not enforce declared types) stops the copy; the
    /// error names the column, never the value.
    pub(super) fn push(&mut self, row: SourceRow) -> anyhow::Result<()> {
        for (i, column) in self.columns.iter_mut().enumerate() {
            let decoded = match (&row, column) {
                (SourceRow::Sqlite(row), Values::Int(values)) => row.try_get(i).map(|v| values.push(v)),
                (SourceRow::Sqlite(row), Values::Text(values)) => row.try_get(i).map(|v| values.push(v)),
                // An INTEGER column (int4) is read as such and widened.
                (SourceRow::Postgres(row), Values::Int(values)) => row
                    .try_get(i)
                    .or_else(|_| row.try_get::<Option<i32>, _>(i).map(|v| v.map(i64::from)))
                    .map(|v| values.push(v)),
                (SourceRow::Postgres(row), Values::Text(values)) => row.try_get(i).map(|v| values.push(v)),
            };
            decoded.with_context(|| {
                format!(
                    "cannot read `{}.{}` in the source as {}",
                    self.table.name,
                    self.table.columns[i].0,
                    match self.table.columns[i].1 {
                        Kind::Int => "an integer",
                        Kind::Text => "text",
                    }
                )
            })?;
        }
        self.len += 1;
        Ok(())
    }
}

/// An identifier, quoted for either database.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn count_sql(table: &str) -> AssertSqlSafe<String> {
    AssertSqlSafe(format!("SELECT COUNT(*) FROM {}", quote(table)))
}

async fn count_sqlite(conn: &mut SqliteConnection, table: &str) -> anyhow::Result<u64> {
    let rows: i64 = sqlx::query_scalar(count_sql(table)).fetch_one(conn).await?;
    Ok(rows.max(0) as u64)
}

async fn count_postgres(conn: &mut PgConnection, table: &str) -> anyhow::Result<u64> {
    let rows: i64 = sqlx::query_scalar(count_sql(table)).fetch_one(conn).await?;
    Ok(rows.max(0) as u64)
}

async fn sqlite_schema(conn: &mut SqliteConnection) -> anyhow::Result<Schema> {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' \
         AND name <> ?1 ORDER BY name",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await?;
    let mut schema = Schema::default();
    for (table, sql) in tables {
        let declared: Vec<(String, String, i64)> =
            sqlx::query_as("SELECT name, type, pk FROM pragma_table_info(?1) ORDER BY cid")
                .bind(&table)
                .fetch_all(&mut *conn)
                .await?;
        let keys: Vec<&(String, String, i64)> = declared.iter().filter(|(_, _, pk)| *pk > 0).collect();
        // An INTEGER PRIMARY KEY is the rowid under another name (audit_log.id).
        let aliased = matches!(keys.as_slice(), [(_, kind, _)] if kind.eq_ignore_ascii_case("INTEGER"));
        let without_rowid = sql.to_ascii_uppercase().contains("WITHOUT ROWID");
        let named_rowid = declared.iter().any(|(name, _, _)| name.eq_ignore_ascii_case("rowid"));
        let columns = declared
            .iter()
            .map(|(name, kind, _)| Column {
                name: name.clone(),
                kind: Kind::parse(kind),
                declared: kind.clone(),
                identity: false,
            })
            .collect();
        let parents: Vec<(String,)> = sqlx::query_as("SELECT \"table\" FROM pragma_foreign_key_list(?1)")
            .bind(&table)
            .fetch_all(&mut *conn)
            .await?;
        schema.references.extend(parents.into_iter().map(|(parent,)| (table.clone(), parent)));
        schema.tables.insert(table, Shape { columns, implicit_rowid: !aliased && !without_rowid && !named_rowid });
    }
    Ok(schema)
}

async fn postgres_schema(conn: &mut PgConnection) -> anyhow::Result<Schema> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables \
         WHERE table_schema = current_schema() AND table_type = 'BASE TABLE' AND table_name <> $1",
    )
    .bind(MIGRATIONS_TABLE)
    .fetch_all(&mut *conn)
    .await?;
    let mut schema = Schema::default();
    for table in tables {
        schema.tables.insert(table, Shape::default());
    }
    let columns: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT table_name::text, column_name::text, data_type::text, is_identity::text \
         FROM information_schema.columns WHERE table_schema = current_schema() \
         ORDER BY table_name, ordinal_position",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (table, name, kind, identity) in columns {
        if let Some(shape) = schema.tables.get_mut(&table) {
            shape.columns.push(Column { name, kind: Kind::parse(&kind), declared: kind, identity: identity == "YES" });
        }
    }
    schema.references = sqlx::query_as(
        "SELECT child.relname::text, parent.relname::text FROM pg_constraint c \
         JOIN pg_class child ON child.oid = c.conrelid JOIN pg_class parent ON parent.oid = c.confrelid \
         JOIN pg_namespace n ON n.oid = child.relnamespace \
         WHERE c.contype = 'f' AND n.nspname = current_schema()",
    )
    .fetch_all(&mut *conn)
    .await?;
    Ok(schema)
}
