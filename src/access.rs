//! Who is calling, and what they may see and do. Every face turns its credentials (a
//! bearer token, a page session, nothing) into a [`Caller`] and hands it to the gateway,
//! which applies these rules in one place: a user sees only what they own, an admin
//! sees everything, and an anonymous caller — allowed only in `auth.mode = "open"` —
//! sees what anonymous callers made.

use uuid::Uuid;

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

    /// Whether this caller may see or change something owned by `owner` (`None`:
    /// made anonymously). Admins see everything; everyone else only their own.
    pub fn may_access(&self, owner: Option<Uuid>) -> bool {
        self.is_admin() || self.owner() == owner
    }
}
