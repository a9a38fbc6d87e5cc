//! The suites on PostgreSQL: with `KILN_TEST_DATABASE=postgres`, every test gets a
//! database of its own, `kiln_test_<random>`, on the server named by
//! `KILN_TEST_DATABASE_URL` (which `scripts/with-postgres.sh` starts and sets; `make
//! test` runs the API suite that way). The server is deleted whole at the end, so the
//! databases are not dropped one by one.

use std::path::Path;

use sqlx::{Connection, PgConnection};

/// Whether this run's tests use PostgreSQL.
pub fn enabled() -> bool {
    std::env::var("KILN_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// The database URL of the test whose folder is `dir`: made the first time, then the
/// same one, so a test that restarts kiln in its folder finds its data again.
pub fn database_url_for(dir: &Path) -> String {
    let note = dir.join("postgres-url");
    if let Ok(url) = std::fs::read_to_string(&note) {
        return url;
    }
    let url = fresh_database();
    std::fs::create_dir_all(dir).expect("test folder");
    std::fs::write(&note, &url).expect("note the database URL");
    url
}

/// Makes an empty database on the test server and returns its URL.
pub fn fresh_database() -> String {
    let server = std::env::var("KILN_TEST_DATABASE_URL")
        .expect("KILN_TEST_DATABASE=postgres needs KILN_TEST_DATABASE_URL (scripts/with-postgres.sh sets it)");
    let name = format!("kiln_test_{:016x}", fastrand::u64(..));
    // On a thread of its own: the caller may be inside a runtime, or in none.
    let create = format!("CREATE DATABASE {name}");
    let admin = server.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(async {
            let mut conn = PgConnection::connect(&admin).await.expect("connect to the test server");
            sqlx::raw_sql(sqlx::AssertSqlSafe(create)).execute(&mut conn).await.expect("create the test database");
        })
    })
    .join()
    .expect("create the test database");
    let mut url = url::Url::parse(&server).expect("KILN_TEST_DATABASE_URL is a URL");
    url.set_path(&name);
    url.to_string()
}
