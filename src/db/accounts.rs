//! The accounts repository: users, page sessions, API tokens and the audit log.
//!
//! Only storage lives here. Hashing passwords, making token and session texts, and
//! deciding who may do what belong to `crate::accounts` and the gateway; this trait
//! stores and finds what they made. Credentials are only ever stored as hashes.
//!
//! A user's balance is spent by the task enqueue transaction ([`super::TaskRepo`]);
//! here are only an admin's top-ups, each written together with its audit entry.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::DbResult;
use crate::access::Role;

/// A user, without their password hash or webhook secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    /// Credits left.
    pub balance: i64,
    /// Queued plus running tasks this user may have at once, overriding the configured
    /// per-user limit; `None`: the configured limit.
    pub max_active: Option<u32>,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user to create. The username's form and the password's strength are checked by
/// `crate::accounts` before this is made.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: Uuid,
    pub username: String,
    /// An argon2id PHC string.
    pub password_hash: String,
    pub role: Role,
    pub max_active: Option<u32>,
}

/// A user as sign-in needs them: with the hash to verify the password against.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: String,
}

/// Changes to a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// `Some(None)` clears the override.
    pub max_active: Option<Option<u32>>,
    /// A new argon2id PHC string.
    pub password_hash: Option<String>,
}

impl UserChanges {
    /// What these changes make of `current`.
    pub(super) fn applied_to(&self, current: &User) -> ChangedUser {
        let role = self.role.unwrap_or(current.role);
        let disabled = self.disabled.unwrap_or(current.disabled);
        let was_admin = current.role == Role::Admin && !current.disabled;
        let stays_admin = role == Role::Admin && !disabled;
        ChangedUser {
            role,
            disabled,
            max_active: self.max_active.unwrap_or(current.max_active),
            removes_admin: was_admin && !stays_admin,
        }
    }
}

/// A user's fields after [`UserChanges`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ChangedUser {
    pub role: Role,
    pub disabled: bool,
    pub max_active: Option<u32>,
    /// An enabled admin stops being one: refused when it is the last.
    pub removes_admin: bool,
}

/// The result of [`AccountRepo::update_user`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserUpdate {
    Updated(User),
    NotFound,
    /// Refused: the change would leave no enabled admin (demoting or disabling the last one).
    LastAdmin,
}

/// The result of a balance change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BalanceUpdate {
    /// The new balance.
    Updated(i64),
    NotFound,
    /// The result would not fit in an `i64`; nothing changed.
    OutOfRange,
}

/// A page session, found by the SHA-256 of its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// Hex SHA-256 of the cookie's session id; also how a session is named to revoke it.
    pub id_hash: String,
    pub user_id: Uuid,
    /// The value the console must echo in `X-CSRF-Token` on writes. Never list it to
    /// anyone but the session's own page.
    pub csrf: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A session to record.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id_hash: String,
    pub user_id: Uuid,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// An API token, without its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// The last four characters of the token text, to tell tokens apart.
    pub hint: String,
    /// Only these models, when set.
    pub models: Option<Vec<String>>,
    /// Credits this token may spend in all.
    pub spend_cap: Option<i64>,
    /// Credits spent with it so far.
    pub spent: i64,
    pub rate_per_minute: Option<u32>,
    pub webhook_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// A token to record.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// Hex SHA-256 of the token text.
    pub hash: String,
    pub hint: String,
    pub models: Option<Vec<String>>,
    pub spend_cap: Option<i64>,
    pub rate_per_minute: Option<u32>,
    pub webhook_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A usable token found by its hash, with its user and the stored hash (which the
/// caller compares in constant time with the one it computed).
#[derive(Debug, Clone)]
pub struct FoundToken {
    pub token: ApiToken,
    pub user: User,
    pub hash: String,
}

/// One line of the audit log, to append.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// The user who acted; `None` for the system.
    pub actor_id: Option<Uuid>,
    /// The actor's username, or what acted for the system (`cli`, `bootstrap`).
    pub actor: Option<String>,
    /// What was done, e.g. `user.create`, `user.balance`.
    pub action: String,
    /// What it was done to, e.g. a user id.
    pub target: Option<String>,
    /// A JSON object; never a secret.
    pub detail: Value,
    /// The client address the action came from.
    pub ip: Option<String>,
}

impl AuditEntry {
    /// This entry with the balance before and after added to its detail.
    pub(super) fn with_balances(&self, before: i64, after: i64) -> AuditEntry {
        let mut detail = match &self.detail {
            Value::Object(map) => map.clone(),
            Value::Null => serde_json::Map::new(),
            other => serde_json::Map::from_iter([("value".to_owned(), other.clone())]),
        };
        detail.insert("before".into(), before.into());
        detail.insert("after".into(), after.into());
        AuditEntry { detail: Value::Object(detail), ..self.clone() }
    }
}

/// A stored line of the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub entry: AuditEntry,
}

/// Which audit lines to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor_id: Option<Uuid>,
    pub action: Option<String>,
    pub offset: u64,
    pub limit: u32,
}

#[async_trait]
pub trait AccountRepo: Send + Sync {
    /// Creates a user and appends `audit`, in one transaction; `None` (and no audit
    /// entry) when the username is taken, compared without case.
    async fn create_user(&self, user: &NewUser, audit: &AuditEntry) -> DbResult<Option<User>>;
    async fn get_user(&self, id: Uuid) -> DbResult<Option<User>>;
    /// A user and their password hash, by username (without case), for sign-in.
    async fn find_user_by_name(&self, username: &str) -> DbResult<Option<UserCredentials>>;
    /// Users in the order they were made; `offset`/`limit` paging, with the total.
    async fn list_users(&self, offset: u64, limit: u32) -> DbResult<(Vec<User>, u64)>;
    /// Applies `changes` and appends `audit`, in one transaction, refusing to leave no
    /// enabled admin.
    async fn update_user(&self, id: Uuid, changes: &UserChanges, audit: &AuditEntry) -> DbResult<UserUpdate>;
    /// Stores (or with `None` clears) the user's sealed webhook signing secret; false
    /// when there is no such user.
    async fn set_webhook_secret(&self, id: Uuid, sealed: Option<&str>) -> DbResult<bool>;
    /// The user's sealed webhook signing secret, if one is set.
    async fn get_webhook_secret(&self, id: Uuid) -> DbResult<Option<String>>;
    /// Enabled admins.
    async fn count_admins(&self) -> DbResult<u64>;
    /// Adds `delta` (negative to take) to a user's balance and appends `audit`, whose
    /// detail gains `before` and `after`, in one transaction.
    async fn adjust_balance(&self, id: Uuid, delta: i64, audit: &AuditEntry) -> DbResult<BalanceUpdate>;
    /// Sets a user's balance and appends `audit` (detail gains `before` and `after`),
    /// in one transaction.
    async fn set_balance(&self, id: Uuid, value: i64, audit: &AuditEntry) -> DbResult<BalanceUpdate>;

    async fn create_session(&self, session: &NewSession) -> DbResult<Session>;
    /// A session that is neither expired nor revoked, of a user who is not disabled,
    /// with that user.
    async fn find_session_by_hash(&self, id_hash: &str) -> DbResult<Option<(Session, User)>>;
    /// Records that the session was just used.
    async fn touch_session(&self, id_hash: &str) -> DbResult<()>;
    /// Revokes one session; false when there was no unrevoked one by that hash. With
    /// `user`, only a session of that user.
    async fn revoke_session(&self, id_hash: &str, user: Option<Uuid>) -> DbResult<bool>;
    /// Revokes every live session of a user (after a password change, on disabling);
    /// returns how many.
    async fn revoke_user_sessions(&self, user: Uuid) -> DbResult<u64>;
    /// A user's live sessions, newest first.
    async fn list_sessions_for_user(&self, user: Uuid) -> DbResult<Vec<Session>>;
    /// Deletes sessions that expired or were revoked before `cutoff`; returns how many.
    async fn purge_sessions(&self, cutoff: DateTime<Utc>) -> DbResult<u64>;

    async fn create_token(&self, token: &NewToken) -> DbResult<ApiToken>;
    /// A token that is neither revoked nor expired, of a user who is not disabled.
    async fn find_token_by_hash(&self, hash: &str) -> DbResult<Option<FoundToken>>;
    /// Tokens of one user, or of everyone; revoked ones too; newest first.
    async fn list_tokens(&self, user: Option<Uuid>) -> DbResult<Vec<ApiToken>>;
    /// Revokes a token; false when there was no unrevoked one by that id. With `user`,
    /// only a token of that user.
    async fn revoke_token(&self, id: Uuid, user: Option<Uuid>) -> DbResult<bool>;
    /// Records that the token was just used. One small write: call it at most about
    /// once a minute per token.
    async fn touch_token_last_used(&self, id: Uuid) -> DbResult<()>;

    async fn append_audit(&self, entry: &AuditEntry) -> DbResult<AuditRecord>;
    /// Newest first, with the total matching the filter.
    async fn list_audit(&self, filter: &AuditFilter) -> DbResult<(Vec<AuditRecord>, u64)>;
}
