//! Page sessions, for the web console. The cookie holds a random 256-bit id; the
//! database holds only its SHA-256, so a leaked copy of the database signs nobody in.
//! Each session also has a random CSRF token, which the console reads once at sign-in
//! and echoes in `X-CSRF-Token` on every write: a cross-site form can send the cookie
//! but cannot know the token.
//!
//! A session lasts `auth.session_ttl` from sign-in, however much it is used; signing out,
//! a password change or disabling the user ends it sooner.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{AccountError, is_random_text, random_text, sha256_hex};
use crate::{
    access::Principal,
    config::Secret,
    db::{Database, DbResult, NewSession},
};

/// The suggested name of the session cookie.
pub const COOKIE_NAME: &str = "kiln_session";
/// The header the console echoes the CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// `last_seen_at` is written at most this often per session, not on every request.
const TOUCH_EVERY: TimeDelta = TimeDelta::seconds(60);
/// A longer User-Agent is cut: it is only shown in the list of sessions.
const MAX_USER_AGENT_CHARS: usize = 256;

/// A new session: the cookie value (for the `Set-Cookie` header only) and the CSRF token
/// (for the page).
#[derive(Debug)]
pub struct SignedIn {
    pub cookie: Secret,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
    /// How the session is named in [`crate::db::AccountRepo::list_sessions_for_user`]
    /// and to revoke it.
    pub id_hash: String,
}

/// How a session is stored and named: the hex SHA-256 of its cookie value.
pub fn id_hash(cookie: &str) -> String {
    sha256_hex(cookie)
}

/// Starts a session for `user` lasting `ttl`. The caller has checked the user's password
/// (see [`super::sign_in`]).
pub async fn start(
    db: &dyn Database,
    user: Uuid,
    ttl: Duration,
    ip: Option<String>,
    user_agent: Option<String>,
) -> Result<SignedIn, AccountError> {
    let cookie = random_text()?;
    let csrf = random_text()?;
    let now = Utc::now();
    let expires_at =
        TimeDelta::from_std(ttl).ok().and_then(|ttl| now.checked_add_signed(ttl)).unwrap_or(DateTime::<Utc>::MAX_UTC);
    let user_agent = user_agent.map(|ua| ua.chars().take(MAX_USER_AGENT_CHARS).collect());
    let session =
        NewSession { id_hash: id_hash(&cookie), user_id: user, csrf: csrf.clone(), expires_at, ip, user_agent };
    let stored = db.create_session(&session).await?;
    Ok(SignedIn { cookie: Secret::new(cookie), csrf, expires_at: stored.expires_at, id_hash: stored.id_hash })
}

/// The signed-in user of a session cookie, and the session's CSRF token; `None` for a
/// malformed, unknown, expired or revoked session, or a disabled user.
pub async fn authenticate_session(db: &dyn Database, cookie: &str) -> DbResult<Option<(Principal, String)>> {
    if !is_random_text(cookie) {
        return Ok(None);
    }
    let hash = id_hash(cookie);
    let Some((session, user)) = db.find_session_by_hash(&hash).await? else {
        return Ok(None);
    };
    if !bool::from(session.id_hash.as_bytes().ct_eq(hash.as_bytes())) {
        return Ok(None);
    }
    if Utc::now() - session.last_seen_at >= TOUCH_EVERY
        && let Err(err) = db.touch_session(&hash).await
    {
        // Only bookkeeping: the request goes on.
        tracing::warn!(error = %err, "cannot record a session's use");
    }
    let principal = Principal {
        user_id: user.id,
        username: user.username,
        role: user.role,
        token: None,
        max_active: user.max_active,
    };
    Ok(Some((principal, session.csrf)))
}

/// Ends the session of this cookie; false when there was no such live session.
pub async fn end(db: &dyn Database, cookie: &str) -> DbResult<bool> {
    if !is_random_text(cookie) {
        return Ok(false);
    }
    db.revoke_session(&id_hash(cookie), None).await
}

/// Whether a request's `X-CSRF-Token` matches its session's token, compared in constant
/// time.
pub fn csrf_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|given| bool::from(given.as_bytes().ct_eq(expected.as_bytes())))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{
        access::Role,
        accounts::{Actor, create_user, testing},
        db::{UserChanges, UserUpdate},
    };

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_session_signs_in_until_it_ends_and_keeps_only_a_hash() {
        let (_dir, db) = testing::database().await;
        let user = create_user(&*db, "erin", &Secret::new("erin's password"), Role::User, &Actor::system("cli"))
            .await
            .unwrap();
        let session = start(&*db, user.id, HOUR, Some("192.0.2.1".into()), Some("x".repeat(1000))).await.unwrap();
        let cookie = session.cookie.expose();
        assert_eq!(cookie.len(), 43);
        assert_ne!(cookie, session.csrf);
        assert!(session.expires_at > Utc::now() + TimeDelta::minutes(59));

        let (principal, csrf) = authenticate_session(&*db, cookie).await.unwrap().expect("signed in");
        assert_eq!(
            principal,
            Principal { user_id: user.id, username: "erin".into(), role: Role::User, token: None, max_active: None }
        );
        assert_eq!(csrf, session.csrf);

        let listed = db.list_sessions_for_user(user.id).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id_hash, id_hash(cookie));
        assert_ne!(listed[0].id_hash, cookie, "the cookie itself is not stored");
        assert_eq!(listed[0].user_agent.as_ref().map(|ua| ua.len()), Some(MAX_USER_AGENT_CHARS));
        assert_eq!(listed[0].ip.as_deref(), Some("192.0.2.1"));

        // One character off: a different id, not a near match.
        let mut other = cookie.to_owned();
        other.replace_range(0..1, if cookie.starts_with('A') { "B" } else { "A" });
        assert!(authenticate_session(&*db, &other).await.unwrap().is_none());
        assert!(authenticate_session(&*db, &cookie[1..]).await.unwrap().is_none());
        assert!(authenticate_session(&*db, &id_hash(cookie)).await.unwrap().is_none(), "the hash is no cookie");

        assert!(end(&*db, cookie).await.unwrap());
        assert!(!end(&*db, cookie).await.unwrap(), "already ended");
        assert!(authenticate_session(&*db, cookie).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_expired_session_or_a_disabled_user_signs_nobody_in() {
        let (_dir, db) = testing::database().await;
        let cli = Actor::system("cli");
        let user = create_user(&*db, "frank", &Secret::new("frank's password"), Role::User, &cli).await.unwrap();
        let expired = start(&*db, user.id, Duration::ZERO, None, None).await.unwrap();
        assert!(authenticate_session(&*db, expired.cookie.expose()).await.unwrap().is_none());

        let live = start(&*db, user.id, HOUR, None, None).await.unwrap();
        assert!(authenticate_session(&*db, live.cookie.expose()).await.unwrap().is_some());
        let disable = UserChanges { disabled: Some(true), ..Default::default() };
        let done = db.update_user(user.id, &disable, &cli.audit("user.disable", None, json!({}))).await.unwrap();
        assert!(matches!(done, UserUpdate::Updated(ref u) if u.disabled), "{done:?}");
        assert!(authenticate_session(&*db, live.cookie.expose()).await.unwrap().is_none());
    }

    #[test]
    fn the_csrf_token_must_be_echoed_exactly() {
        assert!(csrf_matches("abc123", Some("abc123")));
        assert!(!csrf_matches("abc123", Some("abc124")));
        assert!(!csrf_matches("abc123", Some("abc12")));
        assert!(!csrf_matches("abc123", Some("")));
        assert!(!csrf_matches("abc123", None));
    }
}
