//! The SQLite implementation of [`AccountRepo`]: users, sessions, API tokens and the
//! audit log (tables of migration 0007).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Sqlite, SqliteConnection};
use uuid::Uuid;

use super::{SqliteDatabase, begin};
use crate::db::{
    AccountRepo, ApiToken, AuditEntry, AuditFilter, AuditRecord, BalanceUpdate, DbResult, FirstAdminInsert, FoundToken,
    NewSession, NewToken, NewUser, Session, User, UserChanges, UserCredentials, UserUpdate, listing,
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

/// Inserts a user; `None` when the username is taken (compared without case).
async fn insert_user(conn: &mut SqliteConnection, user: &NewUser) -> DbResult<Option<User>> {
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
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|row| rows::user(&row, "")).transpose()
}

#[async_trait]
impl AccountRepo for SqliteDatabase {
    async fn create_user(&self, user: &NewUser, audit: &AuditEntry) -> DbResult<Option<User>> {
        let mut tx = begin(&self.writer).await?;
        let Some(created) = insert_user(&mut tx, user).await? else {
            return Ok(None);
        };
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Some(created))
    }

    async fn create_first_admin(&self, user: &NewUser, audit: &AuditEntry) -> DbResult<FirstAdminInsert> {
        let mut tx = begin(&self.writer).await?;
        // The single writer connection serializes this transaction with every other
        // write of this process.
        let admins: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled = 0")
            .fetch_one(&mut *tx)
            .await?;
        if admins > 0 {
            return Ok(FirstAdminInsert::AdminExists);
        }
        let Some(created) = insert_user(&mut tx, user).await? else {
            return Ok(FirstAdminInsert::UsernameTaken);
        };
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(FirstAdminInsert::Created(created))
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
