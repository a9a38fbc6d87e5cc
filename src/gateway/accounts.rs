//! Accounts as callers reach them: turning credentials into a [`Caller`], signing in
//! and out, API tokens, and the admin's user operations — each checked against the
//! caller here, each admin change audited with who, what, when and from where.

use std::net::IpAddr;

use axum::http::Method;
use serde_json::json;
use uuid::Uuid;

use super::Gateway;
use crate::{
    access::{Caller, Principal, Role},
    accounts::{self, AccountError, Actor, IssuedToken, SignInError, SignedIn, TokenRequest, sessions, tokens},
    config::{AuthMode, Secret},
    db::{ApiToken, AuditFilter, AuditRecord, BalanceUpdate, User, UserChanges, UserUpdate},
    error::{ApiError, ApiResult, Code},
    ratelimit::Standing,
};

/// A change to a user's balance.
#[derive(Debug, Clone, Copy)]
pub enum BalanceChange {
    Add(i64),
    Set(i64),
}

impl Gateway {
    pub fn auth_mode(&self) -> AuthMode {
        self.config.auth.mode
    }

    /// The caller a request's credentials name, and where its token stands against its
    /// rate. A bearer token must be valid (in open mode, a bearer that is not a kiln
    /// token — the placeholder key an OpenAI client insists on — is ignored); a session
    /// must send its CSRF token with every write; no credentials is anonymous, which
    /// the faces refuse in `tokens` mode.
    pub async fn authenticate(
        &self,
        bearer: Option<&str>,
        cookie: Option<&str>,
        method: &Method,
        csrf: Option<&str>,
    ) -> ApiResult<(Caller, Option<Standing>)> {
        if let Some(text) = bearer
            && (text.starts_with(tokens::PREFIX) || self.auth_mode() == AuthMode::Tokens)
        {
            let Some(principal) = accounts::authenticate(&*self.db, text).await? else {
                return Err(ApiError::new(Code::InvalidToken));
            };
            let standing =
                principal.token.as_ref().and_then(|t| t.rate_per_minute.map(|rate| self.rates.check(t.id, rate)));
            return Ok((Caller::User(principal), standing));
        }
        if let Some(cookie) = cookie
            && let Some((principal, expected)) = accounts::authenticate_session(&*self.db, cookie).await?
        {
            let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
            if writes && !sessions::csrf_matches(&expected, csrf) {
                return Err(ApiError::new(Code::CsrfFailed));
            }
            return Ok((Caller::User(principal), None));
        }
        Ok((Caller::Anonymous, None))
    }

    /// The caller, if an admin; 401 for anonymous callers, 403 for users.
    pub fn require_admin<'c>(&self, caller: &'c Caller) -> ApiResult<&'c Principal> {
        match caller {
            Caller::User(p) if p.role == Role::Admin => Ok(p),
            Caller::User(_) => Err(ApiError::new(Code::Forbidden)),
            Caller::Anonymous => Err(ApiError::new(Code::Unauthorized)),
        }
    }

    /// The caller, if signed in; 401 otherwise.
    pub fn require_user<'c>(&self, caller: &'c Caller) -> ApiResult<&'c Principal> {
        match caller {
            Caller::User(p) => Ok(p),
            Caller::Anonymous => Err(ApiError::new(Code::Unauthorized)),
        }
    }

    /// Checks a username and password under the sign-in limiter: the one check behind
    /// signing in and changing one's password.
    async fn check_password(&self, ip: IpAddr, username: &str, password: &Secret) -> ApiResult<User> {
        match accounts::sign_in(&*self.db, &self.signin, ip, username, password).await {
            Ok(user) => Ok(user),
            Err(SignInError::Limited(wait)) => {
                Err(ApiError::new(Code::TooManySigninAttempts).retry_after(wait.as_secs().max(1)))
            }
            Err(SignInError::Invalid) => {
                tracing::info!(username, %ip, "password refused");
                Err(ApiError::new(Code::InvalidCredentials))
            }
            Err(SignInError::Failed(err)) => Err(account_error(err)),
        }
    }

    /// Checks a username and password and starts a session.
    pub async fn sign_in(
        &self,
        ip: IpAddr,
        username: &str,
        password: &Secret,
        user_agent: Option<String>,
    ) -> ApiResult<(User, SignedIn)> {
        let user = self.check_password(ip, username, password).await?;
        let signed =
            sessions::start(&*self.db, user.id, self.config.auth.session_ttl, Some(ip.to_string()), user_agent)
                .await
                .map_err(account_error)?;
        tracing::info!(user = %user.id, username = %user.username, %ip, "signed in");
        Ok((user, signed))
    }

    /// The CSRF token of a live session, for the page that holds its cookie.
    pub async fn session_csrf(&self, cookie: &str) -> ApiResult<Option<String>> {
        Ok(accounts::authenticate_session(&*self.db, cookie).await?.map(|(_, csrf)| csrf))
    }

    /// Refuses a webhook URL kiln may not send to (422 `invalid_webhook_url`).
    pub fn check_webhook_url(&self, url: &str) -> ApiResult<()> {
        crate::deliveries::check_destination(url, self.config.webhooks.allow_private)?;
        Ok(())
    }

    pub async fn sign_out(&self, cookie: &str) -> ApiResult<()> {
        sessions::end(&*self.db, cookie).await?;
        Ok(())
    }

    /// The signed-in user's record, fresh (its balance changes with every task).
    pub async fn me(&self, caller: &Caller) -> ApiResult<Option<User>> {
        match caller {
            Caller::Anonymous => Ok(None),
            Caller::User(p) => Ok(self.db.get_user(p.user_id).await?),
        }
    }

    /// Changes the caller's own password after checking the current one.
    pub async fn change_password(&self, caller: &Caller, ip: IpAddr, current: &Secret, new: &Secret) -> ApiResult<()> {
        let principal = self.require_user(caller)?;
        self.check_password(ip, &principal.username, current).await?;
        let actor = Actor::user(principal, Some(ip.to_string()));
        accounts::set_password(&*self.db, principal.user_id, new, &actor).await.map_err(account_error)?;
        Ok(())
    }

    /// API tokens: the caller's own (`user` `None`), or, for an admin, one user's or
    /// (`all`) everyone's.
    pub async fn tokens(&self, caller: &Caller, user: Option<Uuid>, all: bool) -> ApiResult<Vec<ApiToken>> {
        let principal = self.require_user(caller)?;
        if user.is_some() || all {
            self.require_admin(caller)?;
            return Ok(self.db.list_tokens(user).await?);
        }
        Ok(self.db.list_tokens(Some(principal.user_id)).await?)
    }

    /// Makes an API token for the caller, or (an admin) for `user`.
    pub async fn issue_token(
        &self,
        caller: &Caller,
        user: Option<Uuid>,
        request: TokenRequest,
        ip: IpAddr,
    ) -> ApiResult<IssuedToken> {
        let principal = self.require_user(caller)?;
        let owner = match user {
            Some(user) => {
                self.require_admin(caller)?;
                self.db.get_user(user).await?.ok_or_else(|| ApiError::new(Code::UserNotFound))?.id
            }
            None => principal.user_id,
        };
        let actor = Actor::user(principal, Some(ip.to_string()));
        tokens::issue(&*self.db, owner, request, &actor).await.map_err(account_error)
    }

    /// Revokes a token: the caller's own, or any for an admin. Revoking a revoked token
    /// is done already (DELETE is idempotent; it stays listed as revoked); only an
    /// unknown id, or another user's token, is 404.
    pub async fn revoke_token(&self, caller: &Caller, id: Uuid, ip: IpAddr) -> ApiResult<()> {
        let principal = self.require_user(caller)?;
        let owner = if caller.is_admin() { None } else { Some(principal.user_id) };
        let actor = Actor::user(principal, Some(ip.to_string()));
        if tokens::revoke(&*self.db, id, owner, &actor).await? {
            return Ok(());
        }
        let revoked_before = self.db.list_tokens(owner).await?.iter().any(|t| t.id == id && t.revoked_at.is_some());
        if revoked_before { Ok(()) } else { Err(ApiError::new(Code::TokenNotFound)) }
    }

    pub async fn users(&self, caller: &Caller, offset: u64, limit: u32) -> ApiResult<(Vec<User>, u64)> {
        self.require_admin(caller)?;
        Ok(self.db.list_users(offset, limit).await?)
    }

    pub async fn user(&self, caller: &Caller, id: Uuid) -> ApiResult<User> {
        self.require_admin(caller)?;
        self.db.get_user(id).await?.ok_or_else(|| ApiError::new(Code::UserNotFound))
    }

    pub async fn create_user(
        &self,
        caller: &Caller,
        username: &str,
        password: &Secret,
        role: Role,
        ip: IpAddr,
    ) -> ApiResult<User> {
        let admin = self.require_admin(caller)?;
        let actor = Actor::user(admin, Some(ip.to_string()));
        accounts::create_user(&*self.db, username, password, role, &actor).await.map_err(account_error)
    }

    /// Changes a user's role, state, limit or password (an admin's reset).
    pub async fn update_user(
        &self,
        caller: &Caller,
        id: Uuid,
        changes: UserChanges,
        password: Option<Secret>,
        ip: IpAddr,
    ) -> ApiResult<User> {
        let admin = self.require_admin(caller)?;
        let actor = Actor::user(admin, Some(ip.to_string()));
        if let Some(password) = password {
            accounts::set_password(&*self.db, id, &password, &actor).await.map_err(account_error)?;
        }
        let detail = json!({
            "role": changes.role.map(Role::as_str),
            "disabled": changes.disabled,
            "max_active": changes.max_active,
        });
        let disabling = changes.disabled == Some(true);
        match self.db.update_user(id, &changes, &actor.audit("user.update", Some(id.to_string()), detail)).await? {
            UserUpdate::Updated(user) => {
                if disabling {
                    self.db.revoke_user_sessions(id).await?;
                }
                Ok(user)
            }
            UserUpdate::NotFound => Err(ApiError::new(Code::UserNotFound)),
            UserUpdate::LastAdmin => Err(ApiError::new(Code::LastAdmin)),
        }
    }

    /// Tops up or sets a user's balance; returns the new balance.
    pub async fn change_balance(
        &self,
        caller: &Caller,
        id: Uuid,
        change: BalanceChange,
        note: Option<String>,
        ip: IpAddr,
    ) -> ApiResult<i64> {
        let admin = self.require_admin(caller)?;
        let actor = Actor::user(admin, Some(ip.to_string()));
        let updated = match change {
            BalanceChange::Add(delta) => {
                let entry = actor.audit("balance.add", Some(id.to_string()), json!({ "delta": delta, "note": note }));
                self.db.adjust_balance(id, delta, &entry).await?
            }
            BalanceChange::Set(value) => {
                let entry = actor.audit("balance.set", Some(id.to_string()), json!({ "value": value, "note": note }));
                self.db.set_balance(id, value, &entry).await?
            }
        };
        match updated {
            BalanceUpdate::Updated(balance) => Ok(balance),
            BalanceUpdate::NotFound => Err(ApiError::new(Code::UserNotFound)),
            BalanceUpdate::OutOfRange => {
                Err(ApiError::with_message(Code::InvalidRequest, "The balance would be out of range."))
            }
        }
    }

    pub async fn audit_log(&self, caller: &Caller, filter: &AuditFilter) -> ApiResult<(Vec<AuditRecord>, u64)> {
        self.require_admin(caller)?;
        Ok(self.db.list_audit(filter).await?)
    }

    /// Records an admin's action that has no record of its own (a price, a channel).
    pub async fn audit(&self, caller: &Caller, ip: IpAddr, action: &str, target: &str, detail: serde_json::Value) {
        let Caller::User(principal) = caller else { return };
        let entry = Actor::user(principal, Some(ip.to_string())).audit(action, Some(target.to_owned()), detail);
        if let Err(err) = self.db.append_audit(&entry).await {
            tracing::error!(error = %err, action, "cannot write an audit entry");
        }
    }
}

/// An account refusal as the client sees it.
pub fn account_error(err: AccountError) -> ApiError {
    match err {
        AccountError::InvalidUsername(message) => ApiError::with_message(Code::InvalidRequest, message),
        AccountError::WeakPassword(weak) => ApiError::with_message(Code::WeakPassword, weak.to_string()),
        AccountError::UsernameTaken(name) => {
            ApiError::with_message(Code::UsernameTaken, format!("The username `{name}` is taken."))
        }
        AccountError::NoSuchUser(_) => ApiError::new(Code::UserNotFound),
        AccountError::LastAdmin => ApiError::new(Code::LastAdmin),
        AccountError::InvalidToken(message) => ApiError::with_message(Code::InvalidRequest, message),
        AccountError::Db(err) => ApiError::internal(err),
        AccountError::Internal(err) => ApiError::internal(err),
    }
}
