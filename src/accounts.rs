//! Accounts: users and their credentials. Turns a password, a session cookie or an API
//! token into a [`Principal`], and makes, changes and audits users.
//!
//! Credentials are stored only as hashes: passwords as argon2id PHC strings
//! ([`passwords`]), session ids and token texts as SHA-256, which is enough for 256
//! random bits ([`sessions`], [`tokens`]). Sign-in attempts are rate limited per address
//! and username ([`signin`]). The first admin can come from the environment
//! ([`ensure_first_admin`]) or from `kiln admin create`.

mod bootstrap;
pub mod passwords;
pub mod sessions;
pub mod signin;
pub mod tokens;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use uuid::Uuid;

pub use bootstrap::{FirstAdmin, ensure_first_admin};
pub use passwords::WeakPassword;
pub use sessions::{SignedIn, authenticate_session};
pub use signin::{SignInError, SigninLimiter, sign_in};
pub use tokens::{IssuedToken, TokenRequest, authenticate};

use crate::{
    access::{Principal, Role},
    config::Secret,
    db::{AuditEntry, Database, DbError, NewUser, User, UserChanges, UserUpdate},
};

/// Shortest and longest username, in characters.
pub const USERNAME_CHARS: std::ops::RangeInclusive<usize> = 3..=64;

/// Why an account operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("{0}")]
    InvalidUsername(String),
    #[error(transparent)]
    WeakPassword(#[from] WeakPassword),
    /// Answer 409.
    #[error("The username `{0}` is taken.")]
    UsernameTaken(String),
    #[error("There is no user named `{0}`.")]
    NoSuchUser(String),
    /// Refused: the change would leave no enabled admin.
    #[error("This is the last enabled admin; make another admin first.")]
    LastAdmin,
    /// A token's settings are not valid.
    #[error("{0}")]
    InvalidToken(String),
    #[error("database failure")]
    Db(#[from] DbError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Who acts, for the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Actor {
    /// The acting user; `None` for the system.
    pub id: Option<Uuid>,
    /// Their username, or what acted for the system (`cli`, `bootstrap`).
    pub name: Option<String>,
    /// The client address.
    pub ip: Option<String>,
}

impl Actor {
    /// The system, e.g. `Actor::system("cli")`.
    pub fn system(what: &str) -> Self {
        Self { id: None, name: Some(what.to_owned()), ip: None }
    }

    /// A signed-in user, from `ip`.
    pub fn user(principal: &Principal, ip: Option<String>) -> Self {
        Self { id: Some(principal.user_id), name: Some(principal.username.clone()), ip }
    }

    /// An audit entry of this actor doing `action` to `target`.
    pub fn audit(&self, action: &str, target: Option<String>, detail: Value) -> AuditEntry {
        AuditEntry {
            actor_id: self.id,
            actor: self.name.clone(),
            action: action.to_owned(),
            target,
            detail,
            ip: self.ip.clone(),
        }
    }
}

/// Checks a username: 3 to 64 ASCII letters, digits, `.`, `_` or `-`, starting with a
/// letter or digit. ASCII only, because uniqueness ignores case with SQLite's NOCASE,
/// which folds ASCII only, and because look-alike letters from other scripts would let
/// one user pass for another.
pub fn check_username(username: &str) -> Result<(), AccountError> {
    let fail = |why: &str| Err(AccountError::InvalidUsername(format!("The username {why}.")));
    if !USERNAME_CHARS.contains(&username.len()) {
        return fail(&format!("must be {} to {} characters long", USERNAME_CHARS.start(), USERNAME_CHARS.end()));
    }
    if !username.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
        return fail("may hold only ASCII letters, digits, `.`, `_` and `-`");
    }
    if !username.as_bytes()[0].is_ascii_alphanumeric() {
        return fail("must start with a letter or a digit");
    }
    Ok(())
}

/// Makes a user after checking the username and the password policy, and audits it
/// as `user.create`.
pub async fn create_user(
    db: &dyn Database,
    username: &str,
    password: &Secret,
    role: Role,
    actor: &Actor,
) -> Result<User, AccountError> {
    check_username(username)?;
    passwords::check_policy(password.expose())?;
    let password_hash = passwords::hash(password).await?;
    let new = NewUser { id: Uuid::now_v7(), username: username.to_owned(), password_hash, role, max_active: None };
    let audit =
        actor.audit("user.create", Some(new.id.to_string()), json!({ "username": username, "role": role.as_str() }));
    match db.create_user(&new, &audit).await? {
        Some(user) => {
            tracing::info!(user = %user.id, username = %user.username, role = role.as_str(), "user created");
            Ok(user)
        }
        None => Err(AccountError::UsernameTaken(username.to_owned())),
    }
}

/// Sets a user's password after checking the policy, signs them out everywhere (their
/// sessions are revoked; API tokens stay), and audits it as `user.password`.
pub async fn set_password(
    db: &dyn Database,
    user: Uuid,
    password: &Secret,
    actor: &Actor,
) -> Result<User, AccountError> {
    passwords::check_policy(password.expose())?;
    let password_hash = passwords::hash(password).await?;
    let changes = UserChanges { password_hash: Some(password_hash), ..UserChanges::default() };
    let audit = actor.audit("user.password", Some(user.to_string()), json!({}));
    let user = match db.update_user(user, &changes, &audit).await? {
        UserUpdate::Updated(user) => user,
        UserUpdate::NotFound => return Err(AccountError::NoSuchUser(user.to_string())),
        UserUpdate::LastAdmin => return Err(AccountError::LastAdmin),
    };
    let revoked = db.revoke_user_sessions(user.id).await?;
    tracing::info!(user = %user.id, sessions_revoked = revoked, "password changed");
    Ok(user)
}

/// [`set_password`] for the user with this username.
pub async fn reset_password(
    db: &dyn Database,
    username: &str,
    password: &Secret,
    actor: &Actor,
) -> Result<User, AccountError> {
    let Some(found) = db.find_user_by_name(username).await? else {
        return Err(AccountError::NoSuchUser(username.to_owned()));
    };
    set_password(db, found.user.id, password, actor).await
}

/// 32 random bytes as unpadded base64url: 43 characters, 256 bits.
fn random_text() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// Length of [`random_text`]'s texts.
const RANDOM_TEXT_LEN: usize = 43;

/// Whether `text` could have come from [`random_text`]: cheap, and checked before any
/// database lookup.
fn is_random_text(text: &str) -> bool {
    text.len() == RANDOM_TEXT_LEN && URL_SAFE_NO_PAD.decode(text).is_ok_and(|bytes| bytes.len() == 32)
}

/// Hex SHA-256: how session ids and token texts are stored. A fast hash is right here,
/// unlike for passwords: these texts carry 256 random bits, so nothing can be guessed.
fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

#[cfg(test)]
pub(crate) mod testing {
    //! A fresh database in a temporary directory, for the accounts tests.

    use crate::db::{Db, SqliteDatabase};

    pub async fn database() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("kiln.db").display());
        let db = SqliteDatabase::connect(&url, 2).await.expect("database");
        (dir, std::sync::Arc::new(db))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_short_ascii_words() {
        for good in ["bob", "Alice.Smith", "x_1-2", "007", &"a".repeat(64)] {
            assert!(check_username(good).is_ok(), "{good}");
        }
        for bad in ["ab", "", &"a".repeat(65), "bob smith", "bób", "-bob", ".hidden", "bob@example", "bоb"] {
            assert!(matches!(check_username(bad), Err(AccountError::InvalidUsername(_))), "{bad}");
        }
    }

    #[test]
    fn random_texts_are_43_base64url_characters_and_differ() {
        let a = random_text().unwrap();
        let b = random_text().unwrap();
        assert_eq!(a.len(), RANDOM_TEXT_LEN);
        assert!(is_random_text(&a));
        assert_ne!(a, b);
        assert!(!is_random_text(&a[1..]));
        assert!(!is_random_text(&format!("{}+", &a[1..])), "standard base64 is not base64url");
    }

    #[tokio::test]
    async fn create_refuses_weak_passwords_taken_names_and_audits_what_it_makes() {
        let (_dir, db) = testing::database().await;
        let cli = Actor::system("cli");
        let weak = create_user(&*db, "carol", &Secret::new("short"), Role::User, &cli).await;
        assert!(matches!(weak, Err(AccountError::WeakPassword(_))), "{weak:?}");
        assert!(db.find_user_by_name("carol").await.unwrap().is_none(), "nothing made for a weak password");

        let user = create_user(&*db, "carol", &Secret::new("long enough pw"), Role::User, &cli).await.unwrap();
        assert_eq!((user.username.as_str(), user.role, user.balance), ("carol", Role::User, 0));
        let taken = create_user(&*db, "CAROL", &Secret::new("another password"), Role::Admin, &cli).await;
        assert!(matches!(taken, Err(AccountError::UsernameTaken(ref name)) if name == "CAROL"), "{taken:?}");

        let (audit, total) = db.list_audit(&crate::db::AuditFilter { limit: 10, ..Default::default() }).await.unwrap();
        assert_eq!(total, 1, "one user made, one entry: {audit:?}");
        assert_eq!(audit[0].entry.action, "user.create");
        assert_eq!(audit[0].entry.actor.as_deref(), Some("cli"));
        assert_eq!(audit[0].entry.target, Some(user.id.to_string()));
        assert!(!audit[0].entry.detail.to_string().contains("long enough"), "no password in the audit log");
    }

    #[tokio::test]
    async fn a_reset_password_signs_in_and_ends_the_old_sessions() {
        let (_dir, db) = testing::database().await;
        let cli = Actor::system("cli");
        let user = create_user(&*db, "dave", &Secret::new("first password"), Role::User, &cli).await.unwrap();
        let session = sessions::start(&*db, user.id, std::time::Duration::from_secs(3600), None, None).await.unwrap();
        assert!(authenticate_session(&*db, session.cookie.expose()).await.unwrap().is_some());

        let missing = reset_password(&*db, "nobody", &Secret::new("second password"), &cli).await;
        assert!(matches!(missing, Err(AccountError::NoSuchUser(_))), "{missing:?}");
        let weak = reset_password(&*db, "dave", &Secret::new("2short"), &cli).await;
        assert!(matches!(weak, Err(AccountError::WeakPassword(_))), "{weak:?}");

        reset_password(&*db, "DAVE", &Secret::new("second password"), &cli).await.unwrap();
        let stored = db.find_user_by_name("dave").await.unwrap().unwrap().password_hash;
        assert!(passwords::verify(&Secret::new("second password"), Some(&stored)).await.unwrap());
        assert!(!passwords::verify(&Secret::new("first password"), Some(&stored)).await.unwrap());
        assert!(authenticate_session(&*db, session.cookie.expose()).await.unwrap().is_none(), "old session ended");
    }
}
