//! The SQLite implementation of [`AccountRepo`]: users, sessions, API tokens and the
//! audit log (tables of migration 0007).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Sqlite, SqliteConnection};
use uuid::Uuid;

use super::{SqliteDatabase, begin};
use crate::db::{
    AccountRepo, ApiToken, AuditEntry, AuditFilter, AuditRecord, BalanceUpdate, DbResult, FoundToken, NewSession,
    NewToken, NewUser, Session, User, UserChanges, UserCredentials, UserUpdate, listing,
    rows::{self, Columns, now_ms},
};

async fn insert_audit(conn: &mut SqliteConnection, entry: &AuditEntry) -> DbResult<AuditRecord> {
    let row = sqlx::query(
        "INSERT INTO audit_log (at, actor_id, actor, action, target, detail, ip) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING *",
    )
    .bind(now_ms())
    .bind(entry.actor_id.map(|id| id.to_string()))
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(entry.detail.to_string())
    .bind(&entry.ip)
    .fetch_one(&mut *conn)
    .await?;
    rows::audit(&row)
}

impl SqliteDatabase {
    /// Sets a balance to what `next` makes of the current one, with its audit entry,
    /// in one transaction.
    async fn change_balance(
        &self,
        id: Uuid,
        audit: &AuditEntry,
        next: impl FnOnce(i64) -> Option<i64> + Send,
    ) -> DbResult<BalanceUpdate> {
        let mut tx = begin(&self.writer).await?;
        let before: Option<i64> = sqlx::query_scalar("SELECT balance FROM users WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(before) = before else {
            return Ok(BalanceUpdate::NotFound);
        };
        // Checked here rather than in SQL: SQLite turns an overflowing sum into a REAL.
        let Some(after) = next(before) else {
            return Ok(BalanceUpdate::OutOfRange);
        };
        sqlx::query("UPDATE users SET balance = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(id.to_string())
            .bind(after)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        insert_audit(&mut tx, &audit.with_balances(before, after)).await?;
        tx.commit().await?;
        Ok(BalanceUpdate::Updated(after))
    }
}

#[async_trait]
impl AccountRepo for SqliteDatabase {
    async fn create_user(&self, user: &NewUser, audit: &AuditEntry) -> DbResult<Option<User>> {
        let now = now_ms();
        let mut tx = begin(&self.writer).await?;
        let row = sqlx::query(concat!(
            "INSERT INTO users (id, username, password_hash, role, max_active, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) ON CONFLICT DO NOTHING RETURNING ",
            rows::user_columns!()
        ))
        .bind(user.id.to_string())
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.role.as_str())
        .bind(user.max_active.map(i64::from))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let created = rows::user(&row, "")?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(created))
    }

    async fn get_user(&self, id: Uuid) -> DbResult<Option<User>> {
        let row = sqlx::query(concat!("SELECT ", rows::user_columns!(), " FROM users WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        row.map(|row| rows::user(&row, "")).transpose()
    }

    async fn find_user_by_name(&self, username: &str) -> DbResult<Option<UserCredentials>> {
        let row =
            sqlx::query(concat!("SELECT ", rows::user_columns!(), ", password_hash FROM users WHERE username = ?1"))
                .bind(username)
                .fetch_optional(&self.reader)
                .await?;
        row.map(|row| Ok(UserCredentials { user: rows::user(&row, "")?, password_hash: row.text("password_hash")? }))
            .transpose()
    }

    async fn list_users(&self, offset: u64, limit: u32) -> DbResult<(Vec<User>, u64)> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            rows::user_columns!(),
            " FROM users ORDER BY created_at, id LIMIT ?1 OFFSET ?2"
        ))
        .bind(i64::from(limit))
        .bind(listing::offset(offset))
        .fetch_all(&self.reader)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.reader).await?;
        Ok((rows.iter().map(|row| rows::user(row, "")).collect::<DbResult<_>>()?, total.max(0) as u64))
    }

    async fn update_user(&self, id: Uuid, changes: &UserChanges, audit: &AuditEntry) -> DbResult<UserUpdate> {
        let mut tx = begin(&self.writer).await?;
        let row = sqlx::query(concat!("SELECT ", rows::user_columns!(), " FROM users WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = row else {
            return Ok(UserUpdate::NotFound);
        };
        let current = rows::user(&row, "")?;
        let changed = changes.applied_to(&current);
        if changed.removes_admin {
            // Counted inside the write transaction: two admins demoting each other at
            // once cannot both pass.
            let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0")
                .fetch_one(&mut *tx)
                .await?;
            if admins <= 1 {
                return Ok(UserUpdate::LastAdmin);
            }
        }
        let row = sqlx::query(concat!(
            "UPDATE users SET role = ?2, disabled = ?3, max_active = ?4, \
                 password_hash = COALESCE(?5, password_hash), updated_at = ?6 \
             WHERE id = ?1 RETURNING ",
            rows::user_columns!()
        ))
        .bind(id.to_string())
        .bind(changed.role.as_str())
        .bind(i64::from(changed.disabled))
        .bind(changed.max_active.map(i64::from))
        .bind(&changes.password_hash)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await?;
        let user = rows::user(&row, "")?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(UserUpdate::Updated(user))
    }

    async fn set_webhook_secret(&self, id: Uuid, sealed: Option<&str>) -> DbResult<bool> {
        let done = sqlx::query("UPDATE users SET webhook_secret = ?2, updated_at = ?3 WHERE id = ?1")
            .bind(id.to_string())
            .bind(sealed)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_webhook_secret(&self, id: Uuid) -> DbResult<Option<String>> {
        let sealed: Option<Option<String>> = sqlx::query_scalar("SELECT webhook_secret FROM users WHERE id = ?1")
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await?;
        Ok(sealed.flatten())
    }

    async fn count_admins(&self) -> DbResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0")
            .fetch_one(&self.reader)
            .await?;
        Ok(n.max(0) as u64)
    }

    async fn adjust_balance(&self, id: Uuid, delta: i64, audit: &AuditEntry) -> DbResult<BalanceUpdate> {
        self.change_balance(id, audit, |before| before.checked_add(delta)).await
    }

    async fn set_balance(&self, id: Uuid, value: i64, audit: &AuditEntry) -> DbResult<BalanceUpdate> {
        self.change_balance(id, audit, |_| Some(value)).await
    }

    async fn create_session(&self, session: &NewSession) -> DbResult<Session> {
        let now = now_ms();
        let row = sqlx::query(
            "INSERT INTO sessions (id_hash, user_id, csrf, created_at, last_seen_at, expires_at, ip, user_agent) \
             VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7) RETURNING *",
        )
        .bind(&session.id_hash)
        .bind(session.user_id.to_string())
        .bind(&session.csrf)
        .bind(now)
        .bind(session.expires_at.timestamp_millis())
        .bind(&session.ip)
        .bind(&session.user_agent)
        .fetch_one(&self.writer)
        .await?;
        rows::session(&row)
    }

    async fn find_session_by_hash(&self, id_hash: &str) -> DbResult<Option<(Session, User)>> {
        let row = sqlx::query(concat!(
            "SELECT s.*, ",
            rows::user_as_u!(),
            " FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id_hash = ?1 AND s.revoked_at IS NULL AND s.expires_at > ?2 AND u.disabled = 0"
        ))
        .bind(id_hash)
        .bind(now_ms())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| Ok((rows::session(&row)?, rows::user(&row, "u_")?))).transpose()
    }

    async fn touch_session(&self, id_hash: &str) -> DbResult<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = ?2 WHERE id_hash = ?1")
            .bind(id_hash)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn revoke_session(&self, id_hash: &str, user: Option<Uuid>) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = ?2 \
             WHERE id_hash = ?1 AND revoked_at IS NULL AND (?3 IS NULL OR user_id = ?3)",
        )
        .bind(id_hash)
        .bind(now_ms())
        .bind(user.map(|u| u.to_string()))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_user_sessions(&self, user: Uuid) -> DbResult<u64> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2",
        )
        .bind(user.to_string())
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    async fn list_sessions_for_user(&self, user: Uuid) -> DbResult<Vec<Session>> {
        let rows = sqlx::query(
            "SELECT * FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2 \
             ORDER BY created_at DESC, id_hash",
        )
        .bind(user.to_string())
        .bind(now_ms())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(rows::session).collect()
    }

    async fn purge_sessions(&self, cutoff: DateTime<Utc>) -> DbResult<u64> {
        let done = sqlx::query("DELETE FROM sessions WHERE expires_at < ?1 OR revoked_at < ?1")
            .bind(cutoff.timestamp_millis())
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected())
    }

    async fn create_token(&self, token: &NewToken) -> DbResult<ApiToken> {
        let models = rows::models_json(token.models.as_ref());
        let row = sqlx::query(
            "INSERT INTO api_tokens (id, user_id, name, hash, hint, models, spend_cap, rate_per_minute, \
                 webhook_url, expires_at, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING *",
        )
        .bind(token.id.to_string())
        .bind(token.user_id.to_string())
        .bind(&token.name)
        .bind(&token.hash)
        .bind(&token.hint)
        .bind(models)
        .bind(token.spend_cap)
        .bind(token.rate_per_minute.map(i64::from))
        .bind(&token.webhook_url)
        .bind(token.expires_at.map(|t| t.timestamp_millis()))
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?;
        rows::token(&row)
    }

    async fn find_token_by_hash(&self, hash: &str) -> DbResult<Option<FoundToken>> {
        let row = sqlx::query(concat!(
            "SELECT t.*, ",
            rows::user_as_u!(),
            " FROM api_tokens t JOIN users u ON u.id = t.user_id \
             WHERE t.hash = ?1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > ?2) \
                 AND u.disabled = 0"
        ))
        .bind(hash)
        .bind(now_ms())
        .fetch_optional(&self.reader)
        .await?;
        row.map(|row| {
            Ok(FoundToken { token: rows::token(&row)?, user: rows::user(&row, "u_")?, hash: row.text("hash")? })
        })
        .transpose()
    }

    async fn list_tokens(&self, user: Option<Uuid>) -> DbResult<Vec<ApiToken>> {
        let mut query = sqlx::QueryBuilder::<Sqlite>::new("SELECT * FROM api_tokens");
        if let Some(user) = user {
            query.push(" WHERE user_id = ").push_bind(user.to_string());
        }
        query.push(" ORDER BY created_at DESC, id DESC");
        let rows = query.build().fetch_all(&self.reader).await?;
        rows.iter().map(rows::token).collect()
    }

    async fn revoke_token(&self, id: Uuid, user: Option<Uuid>) -> DbResult<bool> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL AND (?3 IS NULL OR user_id = ?3)",
        )
        .bind(id.to_string())
        .bind(now_ms())
        .bind(user.map(|u| u.to_string()))
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn touch_token_last_used(&self, id: Uuid) -> DbResult<()> {
        sqlx::query("UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1")
            .bind(id.to_string())
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn append_audit(&self, entry: &AuditEntry) -> DbResult<AuditRecord> {
        insert_audit(&mut *self.writer.acquire().await?, entry).await
    }

    async fn list_audit(&self, filter: &AuditFilter) -> DbResult<(Vec<AuditRecord>, u64)> {
        let (mut page, mut count) = listing::audit::<Sqlite>(filter);
        let rows = page.build().fetch_all(&self.reader).await?;
        let total: i64 = count.build_query_scalar().fetch_one(&self.reader).await?;
        Ok((rows.iter().map(rows::audit).collect::<DbResult<_>>()?, total.max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use serde_json::json;

    use super::*;
    use crate::access::Role;

    async fn database() -> (tempfile::TempDir, SqliteDatabase) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        (dir, SqliteDatabase::connect(&url, 2).await.expect("database"))
    }

    fn system(action: &str) -> AuditEntry {
        AuditEntry {
            actor_id: None,
            actor: Some("test".into()),
            action: action.into(),
            target: None,
            detail: json!({ "why": "test" }),
            ip: None,
        }
    }

    async fn user(db: &SqliteDatabase, name: &str, role: Role) -> User {
        let new = NewUser {
            id: Uuid::now_v7(),
            username: name.into(),
            password_hash: format!("hash of {name}"),
            role,
            max_active: None,
        };
        db.create_user(&new, &system("user.create")).await.unwrap().expect("a free name")
    }

    fn session_for(user: Uuid, hash: &str, expires_in: TimeDelta) -> NewSession {
        NewSession {
            id_hash: hash.into(),
            user_id: user,
            csrf: format!("csrf {hash}"),
            expires_at: Utc::now() + expires_in,
            ip: None,
            user_agent: None,
        }
    }

    fn token_for(user: Uuid, hash: &str) -> NewToken {
        NewToken {
            id: Uuid::now_v7(),
            user_id: user,
            name: hash.into(),
            hash: hash.into(),
            hint: "abcd".into(),
            models: None,
            spend_cap: None,
            rate_per_minute: None,
            webhook_url: None,
            expires_at: None,
        }
    }

    #[tokio::test]
    async fn usernames_are_unique_without_case_and_hashes_stay_out_of_users() {
        let (_dir, db) = database().await;
        let olga = user(&db, "Olga", Role::User).await;
        let again = NewUser {
            id: Uuid::now_v7(),
            username: "OLGA".into(),
            password_hash: "x".into(),
            role: Role::Admin,
            max_active: Some(3),
        };
        assert_eq!(db.create_user(&again, &system("user.create")).await.unwrap(), None);
        let (entries, total) = db
            .list_audit(&AuditFilter { action: Some("user.create".into()), limit: 10, ..Default::default() })
            .await
            .unwrap();
        assert_eq!((entries.len(), total), (1, 1), "a refused create leaves no audit entry");

        let found = db.find_user_by_name("olga").await.unwrap().expect("found without case");
        assert_eq!(found.user, olga);
        assert_eq!(found.password_hash, "hash of Olga");
        assert_eq!(db.get_user(olga.id).await.unwrap(), Some(olga.clone()));
        assert_eq!(db.get_user(Uuid::now_v7()).await.unwrap(), None);
        assert!(db.find_user_by_name("olg").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn users_page_in_creation_order_with_the_total() {
        let (_dir, db) = database().await;
        let mut made = Vec::new();
        for name in ["pam", "quinn", "rita", "sam", "tess"] {
            made.push(user(&db, name, Role::User).await.id);
        }
        let (page, total) = db.list_users(1, 2).await.unwrap();
        assert_eq!(total, 5);
        assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), made[1..3]);
        let (past, total) = db.list_users(u64::MAX, 2).await.unwrap();
        assert!(past.is_empty(), "a huge offset is past the end, not the first page");
        assert_eq!(total, 5);
    }

    #[tokio::test]
    async fn the_last_enabled_admin_cannot_be_demoted_or_disabled() {
        let (_dir, db) = database().await;
        let first = user(&db, "uma", Role::Admin).await;
        let plain = user(&db, "vic", Role::User).await;
        assert_eq!(db.count_admins().await.unwrap(), 1);
        let demote = UserChanges { role: Some(Role::User), ..Default::default() };
        let disable = UserChanges { disabled: Some(true), ..Default::default() };
        assert_eq!(db.update_user(first.id, &demote, &system("user.update")).await.unwrap(), UserUpdate::LastAdmin);
        assert_eq!(db.update_user(first.id, &disable, &system("user.update")).await.unwrap(), UserUpdate::LastAdmin);
        assert_eq!(db.get_user(first.id).await.unwrap().unwrap().role, Role::Admin, "unchanged");
        assert_eq!(
            db.update_user(Uuid::now_v7(), &demote, &system("user.update")).await.unwrap(),
            UserUpdate::NotFound
        );

        let promote = UserChanges { role: Some(Role::Admin), max_active: Some(Some(4)), ..Default::default() };
        let UserUpdate::Updated(promoted) = db.update_user(plain.id, &promote, &system("user.update")).await.unwrap()
        else {
            panic!("not updated")
        };
        assert_eq!((promoted.role, promoted.max_active), (Role::Admin, Some(4)));
        assert!(promoted.updated_at >= plain.updated_at);
        assert_eq!(db.count_admins().await.unwrap(), 2);

        // Two admins now: one may go.
        let UserUpdate::Updated(gone) = db.update_user(first.id, &disable, &system("user.update")).await.unwrap()
        else {
            panic!("not updated")
        };
        assert!(gone.disabled);
        assert_eq!(db.count_admins().await.unwrap(), 1, "a disabled admin does not count");
        let clear =
            UserChanges { max_active: Some(None), password_hash: Some("new hash".into()), ..Default::default() };
        let UserUpdate::Updated(cleared) = db.update_user(plain.id, &clear, &system("user.update")).await.unwrap()
        else {
            panic!("not updated")
        };
        assert_eq!((cleared.role, cleared.max_active), (Role::Admin, None), "only what was asked changed");
        assert_eq!(db.find_user_by_name("vic").await.unwrap().unwrap().password_hash, "new hash");
        let (_, updates) = db
            .list_audit(&AuditFilter { action: Some("user.update".into()), limit: 10, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(updates, 3, "refused and missing updates leave no audit entry");
    }

    #[tokio::test]
    async fn balance_changes_are_audited_with_before_and_after_and_never_overflow() {
        let (_dir, db) = database().await;
        let will = user(&db, "will", Role::User).await;
        assert_eq!(
            db.adjust_balance(will.id, 100, &system("user.balance")).await.unwrap(),
            BalanceUpdate::Updated(100)
        );
        assert_eq!(db.adjust_balance(will.id, -30, &system("user.balance")).await.unwrap(), BalanceUpdate::Updated(70));
        assert_eq!(
            db.set_balance(will.id, i64::MAX, &system("user.balance")).await.unwrap(),
            BalanceUpdate::Updated(i64::MAX)
        );
        assert_eq!(db.adjust_balance(will.id, 1, &system("user.balance")).await.unwrap(), BalanceUpdate::OutOfRange);
        assert_eq!(db.get_user(will.id).await.unwrap().unwrap().balance, i64::MAX, "unchanged");
        assert_eq!(
            db.adjust_balance(Uuid::now_v7(), 1, &system("user.balance")).await.unwrap(),
            BalanceUpdate::NotFound
        );

        let (entries, total) = db
            .list_audit(&AuditFilter { action: Some("user.balance".into()), limit: 10, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(total, 3, "only the changes made are audited");
        assert_eq!(entries[0].entry.detail, json!({ "why": "test", "before": 70, "after": i64::MAX }), "newest first");
        assert_eq!(entries[2].entry.detail, json!({ "why": "test", "before": 0, "after": 100 }));
    }

    #[tokio::test]
    async fn the_webhook_secret_is_stored_as_given_and_can_be_cleared() {
        let (_dir, db) = database().await;
        let xena = user(&db, "xena", Role::User).await;
        assert_eq!(db.get_webhook_secret(xena.id).await.unwrap(), None);
        assert!(db.set_webhook_secret(xena.id, Some("v1:sealed")).await.unwrap());
        assert_eq!(db.get_webhook_secret(xena.id).await.unwrap().as_deref(), Some("v1:sealed"));
        assert!(db.set_webhook_secret(xena.id, None).await.unwrap());
        assert_eq!(db.get_webhook_secret(xena.id).await.unwrap(), None);
        assert!(!db.set_webhook_secret(Uuid::now_v7(), Some("v1:x")).await.unwrap());
    }

    #[tokio::test]
    async fn sessions_are_found_touched_revoked_and_purged() {
        let (_dir, db) = database().await;
        let yan = user(&db, "yan", Role::User).await;
        let zoe = user(&db, "zoe", Role::User).await;
        let made = db.create_session(&session_for(yan.id, "s1", TimeDelta::hours(1))).await.unwrap();
        db.create_session(&session_for(yan.id, "s2", TimeDelta::hours(1))).await.unwrap();
        db.create_session(&session_for(yan.id, "old", TimeDelta::hours(-1))).await.unwrap();
        db.create_session(&session_for(zoe.id, "z1", TimeDelta::hours(1))).await.unwrap();

        let (found, owner) = db.find_session_by_hash("s1").await.unwrap().expect("live");
        assert_eq!((found.clone(), owner.id), (made.clone(), yan.id));
        assert_eq!(found.csrf, "csrf s1");
        assert!(db.find_session_by_hash("old").await.unwrap().is_none(), "expired");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        db.touch_session("s1").await.unwrap();
        let (touched, _) = db.find_session_by_hash("s1").await.unwrap().unwrap();
        assert!(touched.last_seen_at > made.last_seen_at);
        assert_eq!(touched.expires_at, made.expires_at, "a touch does not extend the session");

        assert_eq!(db.list_sessions_for_user(yan.id).await.unwrap().len(), 2, "expired ones are not listed");
        assert!(!db.revoke_session("s1", Some(zoe.id)).await.unwrap(), "not zoe's session");
        assert!(db.revoke_session("s1", Some(yan.id)).await.unwrap());
        assert!(db.find_session_by_hash("s1").await.unwrap().is_none());
        assert_eq!(db.revoke_user_sessions(yan.id).await.unwrap(), 1, "s2; s1 was already revoked, old expired");
        assert!(db.list_sessions_for_user(yan.id).await.unwrap().is_empty());
        assert!(db.find_session_by_hash("z1").await.unwrap().is_some(), "another user's session stays");

        assert_eq!(db.purge_sessions(Utc::now() + TimeDelta::seconds(1)).await.unwrap(), 3);
        assert!(db.find_session_by_hash("z1").await.unwrap().is_some(), "a live session is never purged");
    }

    #[tokio::test]
    async fn tokens_are_listed_by_user_revoked_once_and_touched() {
        let (_dir, db) = database().await;
        let ann = user(&db, "ann", Role::User).await;
        let ben = user(&db, "ben", Role::User).await;
        let limited = NewToken {
            models: Some(vec!["relief".into(), "painter".into()]),
            spend_cap: Some(10),
            rate_per_minute: Some(5),
            webhook_url: Some("https://example.com/h".into()),
            expires_at: Some(Utc::now() + TimeDelta::days(1)),
            ..token_for(ann.id, "h1")
        };
        let stored = db.create_token(&limited).await.unwrap();
        assert_eq!(stored.models, limited.models);
        assert_eq!((stored.spend_cap, stored.spent, stored.rate_per_minute), (Some(10), 0, Some(5)));
        db.create_token(&token_for(ann.id, "h2")).await.unwrap();
        db.create_token(&token_for(ben.id, "h3")).await.unwrap();
        assert!(db.create_token(&token_for(ben.id, "h3")).await.is_err(), "hashes are unique");

        assert_eq!(db.list_tokens(Some(ann.id)).await.unwrap().len(), 2);
        assert_eq!(db.list_tokens(None).await.unwrap().len(), 3);
        let found = db.find_token_by_hash("h1").await.unwrap().expect("usable");
        assert_eq!((found.token.clone(), found.user.id, found.hash.as_str()), (stored.clone(), ann.id, "h1"));

        db.touch_token_last_used(stored.id).await.unwrap();
        assert!(db.find_token_by_hash("h1").await.unwrap().unwrap().token.last_used_at.is_some());
        assert!(!db.revoke_token(stored.id, Some(ben.id)).await.unwrap(), "not ben's token");
        assert!(db.revoke_token(stored.id, None).await.unwrap());
        assert!(!db.revoke_token(stored.id, None).await.unwrap(), "already revoked");
        assert!(db.find_token_by_hash("h1").await.unwrap().is_none());
        let listed = db.list_tokens(Some(ann.id)).await.unwrap();
        assert!(listed.iter().any(|t| t.id == stored.id && t.revoked_at.is_some()), "revoked tokens stay listed");
    }

    #[tokio::test]
    async fn the_audit_log_filters_by_actor_and_action_newest_first() {
        let (_dir, db) = database().await;
        let admin = Uuid::now_v7();
        for n in 0..5 {
            let entry = AuditEntry {
                actor_id: (n % 2 == 0).then_some(admin),
                actor: Some("someone".into()),
                action: if n < 3 { "user.create" } else { "token.revoke" }.into(),
                target: Some(format!("t{n}")),
                detail: json!({ "n": n }),
                ip: Some("192.0.2.9".into()),
            };
            let record = db.append_audit(&entry).await.unwrap();
            assert_eq!(record.entry, entry);
        }
        let all = db.list_audit(&AuditFilter { limit: 2, offset: 1, ..Default::default() }).await.unwrap();
        assert_eq!(all.1, 5);
        assert_eq!(all.0.iter().map(|r| r.entry.target.clone().unwrap()).collect::<Vec<_>>(), ["t3", "t2"]);
        let by_admin =
            db.list_audit(&AuditFilter { actor_id: Some(admin), limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(by_admin.0.iter().map(|r| r.entry.target.clone().unwrap()).collect::<Vec<_>>(), ["t4", "t2", "t0"]);
        let both = AuditFilter { actor_id: Some(admin), action: Some("user.create".into()), limit: 10, offset: 0 };
        let both = db.list_audit(&both).await.unwrap();
        assert_eq!((both.0.len(), both.1), (2, 2));
    }
}
