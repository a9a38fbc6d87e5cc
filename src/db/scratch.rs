//! Throwaway databases for the repository tests, so that one test runs on every
//! backend: on SQLite in a temporary folder, and on PostgreSQL in a database of its own
//! on the server `KILN_TEST_DATABASE_URL` names (`scripts/with-postgres.sh` starts one;
//! CI has a service). Without that server the PostgreSQL run is skipped, saying so.

use std::ops::Deref;

use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};

use super::{Database, Db, Enqueued};
use crate::tasks::{NewTask, TaskId, TaskKind};

/// A fresh, migrated database of one backend.
pub(crate) struct Scratch {
    db: Db,
    url: String,
    /// Holds the SQLite file until the test ends.
    _dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub(crate) async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary folder");
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        Self { db: super::connect(&url, 2).await.expect("SQLite database"), url, _dir: Some(dir) }
    }

    /// `None`, with the reason printed, when no PostgreSQL server is named.
    pub(crate) async fn postgres() -> Option<Self> {
        let url = postgres_url().await?;
        Some(Self { db: super::connect(&url, 4).await.expect("PostgreSQL database"), url, _dir: None })
    }

    /// Submits an image-to-3D task to `channel` (room for 100 waiting) and returns its id.
    pub(crate) async fn enqueue_task(&self, channel: &str, model: &str, client_secret: Option<&str>) -> TaskId {
        let id = TaskId::new();
        let new = NewTask {
            id,
            kind: TaskKind::ImageTo3d,
            model: model.into(),
            channel: channel.into(),
            prompt: None,
            picture_id: None,
            params: serde_json::json!({}),
            client_secret: client_secret.map(str::to_owned),
            owner_id: None,
            token_id: None,
            webhook_url: None,
        };
        let Enqueued::Created(..) = self.enqueue(&new, 100, None, &Default::default()).await.expect("enqueue") else {
            panic!("created")
        };
        id
    }

    /// Runs SQL text that both dialects read alike, on a connection of its own: for a
    /// test to set up what the repositories never write.
    pub(crate) async fn execute(&self, sql: String) {
        if self.url.starts_with("sqlite:") {
            let mut conn = SqliteConnection::connect(&self.url).await.expect("connect");
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await.expect("execute");
        } else {
            let mut conn = PgConnection::connect(&self.url).await.expect("connect");
            sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await.expect("execute");
        }
    }

    /// The text in the first column of the first row `sql` returns, read as
    /// [`Scratch::execute`] writes.
    pub(crate) async fn text(&self, sql: String) -> String {
        if self.url.starts_with("sqlite:") {
            let mut conn = SqliteConnection::connect(&self.url).await.expect("connect");
            sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut conn).await.expect("query")
        } else {
            let mut conn = PgConnection::connect(&self.url).await.expect("connect");
            sqlx::query_scalar(AssertSqlSafe(sql)).fetch_one(&mut conn).await.expect("query")
        }
    }
}

impl Deref for Scratch {
    type Target = dyn Database;

    fn deref(&self) -> &Self::Target {
        &*self.db
    }
}

/// A new, empty database on the test server, or `None` (said on stderr) without one.
pub(crate) async fn postgres_url() -> Option<String> {
    let Ok(server) = std::env::var("KILN_TEST_DATABASE_URL") else {
        // `make api-postgres` asks for the PostgreSQL runs: skipping them there would
        // pass without testing anything.
        assert!(
            std::env::var("KILN_TEST_DATABASE").as_deref() != Ok("postgres"),
            "KILN_TEST_DATABASE=postgres, but KILN_TEST_DATABASE_URL names no server"
        );
        eprintln!(
            "skipped on PostgreSQL: KILN_TEST_DATABASE_URL names no server (scripts/with-postgres.sh starts one)"
        );
        return None;
    };
    let name = format!("kiln_unit_{:016x}", fastrand::u64(..));
    let mut conn = PgConnection::connect(&server).await.expect("connect to the test server");
    sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let mut url = url::Url::parse(&server).expect("KILN_TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    Some(url.to_string())
}

/// Runs each named `async fn name(db: &Scratch)` on every backend: as the tests
/// `name::sqlite` and `name::postgres`.
macro_rules! on_every_backend {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn sqlite() {
                    super::$name(&$crate::db::scratch::Scratch::sqlite().await).await;
                }

                #[tokio::test]
                async fn postgres() {
                    if let Some(db) = $crate::db::scratch::Scratch::postgres().await {
                        super::$name(&db).await;
                    }
                }
            }
        )+
    };
}

pub(crate) use on_every_backend;
