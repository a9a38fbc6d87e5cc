//! API tokens: `kiln_` and 43 base64url characters (256 random bits). The text is shown
//! once, when the token is made; the database keeps its SHA-256 and its last four
//! characters, so a user can tell their tokens apart and a copy of the database holds
//! no usable token.
//!
//! A token acts as its user, narrowed by what the token allows ([`TokenGrant`]).
//! Anything that is not shaped like a token is refused before the database is asked,
//! so garbage in an `Authorization` header costs nothing.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use subtle::ConstantTimeEq;
use uuid::Uuid;

use super::{AccountError, Actor, RANDOM_TEXT_LEN, is_random_text, random_text, sha256_hex};
use crate::{
    access::{Principal, TokenGrant},
    config::Secret,
    db::{ApiToken, Database, DbResult, NewToken},
};

/// What every token starts with, so a leaked one is recognisable (secret scanners,
/// logs) and a token cannot be confused with another kind of key.
pub const PREFIX: &str = "kiln_";
/// Characters in a token.
pub const TOKEN_CHARS: usize = PREFIX.len() + RANDOM_TEXT_LEN;
/// Characters kept as the hint.
const HINT_CHARS: usize = 4;
/// Longest token name, in characters.
const MAX_NAME_CHARS: usize = 100;
/// `last_used_at` is written at most this often per token, not on every request.
const TOUCH_EVERY: TimeDelta = TimeDelta::seconds(60);

/// What a new token may do; every limit is optional.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// A label for the user, e.g. "CI".
    pub name: String,
    /// Only these models; `None`: all the user may use.
    pub models: Option<Vec<String>>,
    /// Credits this token may spend in all.
    pub spend_cap: Option<i64>,
    pub rate_per_minute: Option<u32>,
    /// Where finished tasks made with this token are reported. Checked by the webhook
    /// rules (destinations allowed) before it gets here.
    pub webhook_url: Option<String>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A token just made: its text, to show once, and its record.
#[derive(Debug)]
pub struct IssuedToken {
    pub text: Secret,
    pub token: ApiToken,
}

/// Whether `text` has the shape of a token: the prefix, then 43 base64url characters.
pub fn well_formed(text: &str) -> bool {
    text.len() == TOKEN_CHARS && text.strip_prefix(PREFIX).is_some_and(is_random_text)
}

/// How a token is stored: the hex SHA-256 of its text.
pub fn hash(text: &str) -> String {
    sha256_hex(text)
}

/// What [`issue`] would refuse in a request, as a sentence.
fn check(request: &TokenRequest) -> Result<(), String> {
    let name = request.name.trim();
    if name.is_empty() || name.chars().count() > MAX_NAME_CHARS {
        return Err(format!("A token's name must be 1 to {MAX_NAME_CHARS} characters long."));
    }
    if name.chars().any(char::is_control) {
        return Err("A token's name may not hold control characters.".into());
    }
    if let Some(models) = &request.models
        && (models.is_empty() || models.iter().any(|m| m.trim().is_empty()))
    {
        return Err("List the models the token may use, or leave the list out for all of them.".into());
    }
    if request.spend_cap.is_some_and(|cap| cap < 0) {
        return Err("A token's spending cap cannot be negative.".into());
    }
    if request.rate_per_minute == Some(0) {
        return Err("A token's rate must be at least 1 request per minute.".into());
    }
    if request.expires_at.is_some_and(|at| at <= Utc::now()) {
        return Err("A token's expiry must be in the future.".into());
    }
    Ok(())
}

/// Makes a token for `user` and audits it as `token.create`. The returned text is the
/// only copy: show it once.
pub async fn issue(
    db: &dyn Database,
    user: Uuid,
    request: TokenRequest,
    actor: &Actor,
) -> Result<IssuedToken, AccountError> {
    check(&request).map_err(AccountError::InvalidToken)?;
    let text = format!("{PREFIX}{}", random_text()?);
    let new = NewToken {
        id: Uuid::now_v7(),
        user_id: user,
        name: request.name.trim().to_owned(),
        hash: hash(&text),
        hint: text[text.len() - HINT_CHARS..].to_owned(),
        models: request.models,
        spend_cap: request.spend_cap,
        rate_per_minute: request.rate_per_minute,
        webhook_url: request.webhook_url,
        expires_at: request.expires_at,
    };
    let token = db.create_token(&new).await?;
    let detail = json!({ "name": token.name, "user_id": user, "hint": token.hint });
    db.append_audit(&actor.audit("token.create", Some(token.id.to_string()), detail)).await?;
    Ok(IssuedToken { text: Secret::new(text), token })
}

/// Revokes a token (with `owner`, only one of that user's) and audits it as
/// `token.revoke`; false when there was no such unrevoked token.
pub async fn revoke(db: &dyn Database, id: Uuid, owner: Option<Uuid>, actor: &Actor) -> DbResult<bool> {
    let revoked = db.revoke_token(id, owner).await?;
    if revoked {
        db.append_audit(&actor.audit("token.revoke", Some(id.to_string()), json!({}))).await?;
    }
    Ok(revoked)
}

/// What a token allows.
pub fn grant(token: &ApiToken) -> TokenGrant {
    TokenGrant {
        id: token.id,
        models: token.models.clone(),
        spend_cap: token.spend_cap,
        rate_per_minute: token.rate_per_minute,
        webhook_url: token.webhook_url.clone(),
    }
}

/// The user a token text acts for, with what the token allows; `None` for a malformed,
/// unknown, revoked or expired token, or a disabled user.
pub async fn authenticate(db: &dyn Database, text: &str) -> DbResult<Option<Principal>> {
    if !well_formed(text) {
        return Ok(None);
    }
    let hash = hash(text);
    let Some(found) = db.find_token_by_hash(&hash).await? else {
        return Ok(None);
    };
    // The lookup went by an index; comparing again in constant time means no answer
    // depends on how much of a guessed hash matched.
    if !bool::from(found.hash.as_bytes().ct_eq(hash.as_bytes())) {
        return Ok(None);
    }
    let stale = found.token.last_used_at.is_none_or(|at| Utc::now() - at >= TOUCH_EVERY);
    if stale && let Err(err) = db.touch_token_last_used(found.token.id).await {
        // Only bookkeeping: the request goes on.
        tracing::warn!(error = %err, token = %found.token.id, "cannot record a token's use");
    }
    Ok(Some(Principal {
        user_id: found.user.id,
        username: found.user.username,
        role: found.user.role,
        token: Some(grant(&found.token)),
        max_active: found.user.max_active,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        access::Role,
        accounts::{create_user, testing},
        db::{AuditFilter, UserChanges},
    };

    async fn user(db: &dyn Database, name: &str) -> Uuid {
        create_user(db, name, &Secret::new("a good password"), Role::User, &Actor::system("cli")).await.unwrap().id
    }

    #[test]
    fn the_shape_is_checked_before_anything_else() {
        let good = format!("{PREFIX}{}", random_text().unwrap());
        assert_eq!(good.len(), 48);
        assert!(well_formed(&good));
        assert!(!well_formed(&good[..47]));
        assert!(!well_formed(&format!("{good}A")));
        assert!(!well_formed(&good.replace(PREFIX, "kiln-")));
        assert!(!well_formed(&format!("sk_{}", &good[3..])), "same length, wrong prefix");
        let mut bad_char = good.clone();
        bad_char.replace_range(10..11, "/");
        assert!(!well_formed(&bad_char), "base64url has no `/`");
    }

    #[tokio::test]
    async fn a_token_acts_for_its_user_with_its_limits_and_only_its_hash_is_kept() {
        let (_dir, db) = testing::database().await;
        let owner = user(&*db, "gina").await;
        let request = TokenRequest {
            name: "  CI  ".into(),
            models: Some(vec!["relief".into()]),
            spend_cap: Some(500),
            rate_per_minute: Some(30),
            webhook_url: Some("https://example.com/hook".into()),
            expires_at: None,
        };
        let issued = issue(&*db, owner, request, &Actor::system("cli")).await.unwrap();
        let text = issued.text.expose();
        assert!(well_formed(text), "{text}");
        assert_eq!(issued.token.hint, &text[44..]);
        assert_eq!(issued.token.name, "CI");
        assert!(issued.token.last_used_at.is_none());

        let principal = authenticate(&*db, text).await.unwrap().expect("the token signs in");
        assert_eq!(principal.user_id, owner);
        assert_eq!(principal.username, "gina");
        assert_eq!(
            principal.token,
            Some(TokenGrant {
                id: issued.token.id,
                models: Some(vec!["relief".into()]),
                spend_cap: Some(500),
                rate_per_minute: Some(30),
                webhook_url: Some("https://example.com/hook".into()),
            })
        );
        let listed = db.list_tokens(Some(owner)).await.unwrap();
        assert!(listed[0].last_used_at.is_some(), "first use recorded");

        // Stored: the hash, not the text; a well-formed token that was never issued fails.
        let found = db.find_token_by_hash(&hash(text)).await.unwrap().unwrap();
        assert_eq!(found.hash, hash(text));
        assert!(db.find_token_by_hash(text).await.unwrap().is_none());
        let forged = format!("{PREFIX}{}", random_text().unwrap());
        assert!(authenticate(&*db, &forged).await.unwrap().is_none());

        let (audit, _) = db
            .list_audit(&AuditFilter { action: Some("token.create".into()), limit: 5, ..Default::default() })
            .await
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert!(!audit[0].entry.detail.to_string().contains(text), "the text is never audited");
    }

    #[tokio::test]
    async fn revoked_expired_and_disabled_tokens_sign_nobody_in() {
        let (_dir, db) = testing::database().await;
        let cli = Actor::system("cli");
        let owner = user(&*db, "hank").await;
        let other = user(&*db, "ivy").await;
        let token = issue(&*db, owner, TokenRequest { name: "a".into(), ..Default::default() }, &cli).await.unwrap();
        assert!(!revoke(&*db, token.token.id, Some(other), &cli).await.unwrap(), "not ivy's to revoke");
        assert!(authenticate(&*db, token.text.expose()).await.unwrap().is_some());
        assert!(revoke(&*db, token.token.id, Some(owner), &cli).await.unwrap());
        assert!(authenticate(&*db, token.text.expose()).await.unwrap().is_none());

        let soon = Utc::now() + TimeDelta::milliseconds(50);
        let expiring =
            issue(&*db, owner, TokenRequest { name: "b".into(), expires_at: Some(soon), ..Default::default() }, &cli)
                .await
                .unwrap();
        assert!(authenticate(&*db, expiring.text.expose()).await.unwrap().is_some());
        tokio::time::sleep(std::time::Duration::from_millis(80)).await;
        assert!(authenticate(&*db, expiring.text.expose()).await.unwrap().is_none(), "expired");

        let live = issue(&*db, owner, TokenRequest { name: "c".into(), ..Default::default() }, &cli).await.unwrap();
        let disable = UserChanges { disabled: Some(true), ..Default::default() };
        db.update_user(owner, &disable, &cli.audit("user.disable", None, json!({}))).await.unwrap();
        assert!(authenticate(&*db, live.text.expose()).await.unwrap().is_none(), "user disabled");
    }

    #[tokio::test]
    async fn nonsense_limits_are_refused_with_a_sentence() {
        let (_dir, db) = testing::database().await;
        let owner = user(&*db, "jack").await;
        let cli = Actor::system("cli");
        let past = Utc::now() - TimeDelta::seconds(1);
        for (request, says) in [
            (TokenRequest { name: " ".into(), ..Default::default() }, "name"),
            (TokenRequest { name: "x".repeat(101), ..Default::default() }, "name"),
            (TokenRequest { name: "a\u{7}".into(), ..Default::default() }, "control"),
            (TokenRequest { name: "a".into(), models: Some(vec![]), ..Default::default() }, "models"),
            (TokenRequest { name: "a".into(), spend_cap: Some(-1), ..Default::default() }, "negative"),
            (TokenRequest { name: "a".into(), rate_per_minute: Some(0), ..Default::default() }, "per minute"),
            (TokenRequest { name: "a".into(), expires_at: Some(past), ..Default::default() }, "future"),
        ] {
            match issue(&*db, owner, request, &cli).await {
                Err(AccountError::InvalidToken(message)) => assert!(message.contains(says), "{message}"),
                other => panic!("expected a refusal about {says}, got {other:?}"),
            }
        }
        assert!(db.list_tokens(Some(owner)).await.unwrap().is_empty());
    }
}
