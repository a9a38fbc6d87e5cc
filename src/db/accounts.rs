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

/// The result of [`AccountRepo::create_first_admin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstAdminInsert {
    Created(User),
    /// An enabled admin exists (perhaps made a moment ago by another process); nothing
    /// was made.
    AdminExists,
    /// No admin exists, but the username belongs to a user who is not one.
    UsernameTaken,
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
    /// Creates `user` (an admin) and appends `audit`, in one transaction, only while no
    /// enabled admin exists: processes asked to make the first admin at the same moment
    /// (replicas starting together) make one between them.
    async fn create_first_admin(&self, user: &NewUser, audit: &AuditEntry) -> DbResult<FirstAdminInsert>;
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

#[cfg(test)]
mod tests {
    use chrono::TimeDelta;
    use serde_json::json;

    use super::*;
    use crate::db::scratch::{Scratch, on_every_backend};

    on_every_backend!(
        usernames_are_unique_without_case_and_hashes_stay_out_of_users,
        users_page_in_creation_order_with_the_total,
        the_last_enabled_admin_cannot_be_demoted_or_disabled,
        balance_changes_are_audited_with_before_and_after_and_never_overflow,
        the_webhook_secret_is_stored_as_given_and_can_be_cleared,
        sessions_are_found_touched_revoked_and_purged,
        tokens_are_listed_by_user_revoked_once_and_touched,
        the_audit_log_filters_by_actor_and_action_newest_first,
    );

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

    async fn user(db: &Scratch, name: &str, role: Role) -> User {
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

    async fn usernames_are_unique_without_case_and_hashes_stay_out_of_users(db: &Scratch) {
        let olga = user(db, "Olga", Role::User).await;
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

    async fn users_page_in_creation_order_with_the_total(db: &Scratch) {
        let mut made = Vec::new();
        for name in ["pam", "quinn", "rita", "sam", "tess"] {
            made.push(user(db, name, Role::User).await.id);
        }
        let (page, total) = db.list_users(1, 2).await.unwrap();
        assert_eq!(total, 5);
        assert_eq!(page.iter().map(|u| u.id).collect::<Vec<_>>(), made[1..3]);
        let (past, total) = db.list_users(u64::MAX, 2).await.unwrap();
        assert!(past.is_empty(), "a huge offset is past the end, not the first page");
        assert_eq!(total, 5);
    }

    async fn the_last_enabled_admin_cannot_be_demoted_or_disabled(db: &Scratch) {
        let first = user(db, "uma", Role::Admin).await;
        let plain = user(db, "vic", Role::User).await;
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

    async fn balance_changes_are_audited_with_before_and_after_and_never_overflow(db: &Scratch) {
        let will = user(db, "will", Role::User).await;
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

    async fn the_webhook_secret_is_stored_as_given_and_can_be_cleared(db: &Scratch) {
        let xena = user(db, "xena", Role::User).await;
        assert_eq!(db.get_webhook_secret(xena.id).await.unwrap(), None);
        assert!(db.set_webhook_secret(xena.id, Some("v1:sealed")).await.unwrap());
        assert_eq!(db.get_webhook_secret(xena.id).await.unwrap().as_deref(), Some("v1:sealed"));
        assert!(db.set_webhook_secret(xena.id, None).await.unwrap());
        assert_eq!(db.get_webhook_secret(xena.id).await.unwrap(), None);
        assert!(!db.set_webhook_secret(Uuid::now_v7(), Some("v1:x")).await.unwrap());
    }

    async fn sessions_are_found_touched_revoked_and_purged(db: &Scratch) {
        let yan = user(db, "yan", Role::User).await;
        let zoe = user(db, "zoe", Role::User).await;
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

    async fn tokens_are_listed_by_user_revoked_once_and_touched(db: &Scratch) {
        let ann = user(db, "ann", Role::User).await;
        let ben = user(db, "ben", Role::User).await;
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

    async fn the_audit_log_filters_by_actor_and_action_newest_first(db: &Scratch) {
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
