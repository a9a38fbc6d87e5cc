//! Who is calling, and what they may see and do. Every face turns its credentials (a
//! bearer token, a page session, nothing) into a [`Caller`] and hands it to the gateway,
//! which applies these rules in one place: a user sees only what they own, an admin
//! sees everything, and an anonymous caller — allowed only in `auth.mode = "open"` —
//! sees what anonymous callers made.

use uuid::Uuid;

use crate::db::Scope;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            _ => None,
        }
    }
}

/// What an API token allows beyond its user's rights: narrower, never wider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub id: Uuid,
    /// Only these models, when set.
    pub models: Option<Vec<String>>,
    /// Credits this token may spend in all; `spent` so far.
    pub spend_cap: Option<i64>,
    /// Requests per minute.
    pub rate_per_minute: Option<u32>,
    /// Where finished tasks made with this token are reported, unless a task names its own.
    pub webhook_url: Option<String>,
}

/// A signed-in user, through a session or a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: Uuid,
    pub username: String,
    pub role: Role,
    /// The token the request came with; `None` for a page session.
    pub token: Option<TokenGrant>,
    /// The user's own limit of tasks queued and running at once, when set.
    pub max_active: Option<u32>,
}

/// Whoever sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    User(Principal),
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(self, Caller::User(p) if p.role == Role::Admin)
    }

    /// The user who owns what this caller makes; `None` for an anonymous caller.
    pub fn owner(&self) -> Option<Uuid> {
        match self {
            Caller::Anonymous => None,
            Caller::User(p) => Some(p.user_id),
        }
    }

    /// The API token the request came with.
    pub fn token_id(&self) -> Option<Uuid> {
        match self {
            Caller::User(Principal { token: Some(token), .. }) => Some(token.id),
            _ => None,
        }
    }

    /// Whether this caller may see or change something owned by `owner` (`None`:
    /// made anonymously). Admins see everything; everyone else only their own.
    pub fn may_access(&self, owner: Option<Uuid>) -> bool {
        self.is_admin() || self.owner() == owner
    }

    /// What a listing shows this caller.
    pub fn scope(&self) -> Scope {
        if self.is_admin() { Scope::All } else { Scope::Owner(self.owner()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> Caller {
        Caller::User(Principal { user_id: Uuid::now_v7(), username: "u".into(), role, token: None, max_active: None })
    }

    #[test]
    fn a_user_reaches_only_their_own_and_an_admin_everything() {
        let a = user(Role::User);
        let b = user(Role::User);
        let admin = user(Role::Admin);
        assert!(a.may_access(a.owner()));
        assert!(!a.may_access(b.owner()), "another user's");
        assert!(!a.may_access(None), "an anonymous caller's");
        assert!(admin.may_access(a.owner()) && admin.may_access(None));
        assert!(Caller::Anonymous.may_access(None));
        assert!(!Caller::Anonymous.may_access(a.owner()), "anonymous never sees a user's");
        assert_eq!(admin.scope(), Scope::All);
        assert_eq!(a.scope(), Scope::Owner(a.owner()));
        assert_eq!(Caller::Anonymous.scope(), Scope::Owner(None));
    }
}
