//! The queries of listings, built from their filters: the same SQL on every backend,
//! with only the bind markers (which sqlx writes) the dialect's own.
//!
//! The WHERE clause is built per filter so each filter can use its index; a catch-all
//! `(?1 IS NULL OR status = ?1)` would scan the whole table.

use sqlx::{Database, Encode, QueryBuilder, Type};

use super::{AuditFilter, Scope, TaskFilter, UsageFilter};

/// A query being built: SQL text, and the two kinds of value kiln binds.
pub(super) trait Clauses {
    fn clause(&mut self, sql: &str) -> &mut Self;
    fn text(&mut self, value: String) -> &mut Self;
    fn int(&mut self, value: i64) -> &mut Self;
}

impl<DB> Clauses for QueryBuilder<DB>
where
    DB: Database,
    for<'t> String: Encode<'t, DB>,
    String: Type<DB>,
    for<'t> i64: Encode<'t, DB>,
    i64: Type<DB>,
{
    fn clause(&mut self, sql: &str) -> &mut Self {
        self.push(sql)
    }

    fn text(&mut self, value: String) -> &mut Self {
        self.push_bind(value)
    }

    fn int(&mut self, value: i64) -> &mut Self {
        self.push_bind(value)
    }
}

/// Past `i64::MAX` is past any table. `as` would wrap it negative, which SQLite takes as
/// no offset at all: the first page instead of an empty one.
pub(super) fn offset(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

/// Narrows a query on `tasks` or `pictures` to what a caller may see.
fn scope(query: &mut impl Clauses, scope: Scope) {
    match scope {
        Scope::All => {}
        Scope::Owner(Some(owner)) => {
            query.clause(" AND owner_id = ").text(owner.to_string());
        }
        Scope::Owner(None) => {
            query.clause(" AND owner_id IS NULL");
        }
    }
}

/// A page of tasks, newest first.
pub(super) fn tasks<DB: Database>(filter: &TaskFilter) -> QueryBuilder<DB>
where
    QueryBuilder<DB>: Clauses,
{
    let mut query = QueryBuilder::new("SELECT * FROM tasks WHERE 1 = 1");
    if let Some(status) = filter.status {
        query.clause(" AND status = ").text(status.as_str().to_owned());
    }
    if let Some(picture) = filter.picture_id {
        query.clause(" AND picture_id = ").text(picture.to_string());
    }
    if let Some(before) = filter.before {
        query.clause(" AND id < ").text(before.to_string());
    }
    scope(&mut query, filter.scope);
    query.clause(" ORDER BY id DESC LIMIT ").int(i64::from(filter.limit));
    query
}

/// A page of pictures, newest first, and the count of all in `scope`.
pub(super) fn pictures<DB: Database>(scope: Scope, offset: u64, limit: u32) -> (QueryBuilder<DB>, QueryBuilder<DB>)
where
    QueryBuilder<DB>: Clauses,
{
    let mut page = QueryBuilder::new("SELECT * FROM pictures WHERE 1 = 1");
    self::scope(&mut page, scope);
    page.clause(" ORDER BY created_at DESC, id DESC LIMIT ").int(i64::from(limit));
    page.clause(" OFFSET ").int(self::offset(offset));
    let mut count = QueryBuilder::new("SELECT COUNT(*) FROM pictures WHERE 1 = 1");
    self::scope(&mut count, scope);
    (page, count)
}

/// `select` (ending in `… FROM usage u WHERE 1 = 1`) narrowed to the usage records
/// `filter` selects, before its cursor and limit.
pub(super) fn usage<DB: Database>(select: &str, filter: &UsageFilter) -> QueryBuilder<DB>
where
    QueryBuilder<DB>: Clauses,
{
    let mut query = QueryBuilder::new(select);
    if let Some(user) = filter.user {
        query.clause(" AND u.user_id = ").text(user.to_string());
    }
    if let Some(token) = filter.token {
        query.clause(" AND u.token_id = ").text(token.to_string());
    }
    if let Some(model) = &filter.model {
        query.clause(" AND u.model = ").text(model.clone());
    }
    if let Some(channel) = &filter.channel {
        query.clause(" AND u.channel = ").text(channel.clone());
    }
    match filter.outcome.as_deref() {
        Some("pending") => {
            query.clause(" AND u.outcome IS NULL");
        }
        Some(outcome) => {
            query.clause(" AND u.outcome = ").text(outcome.to_owned());
        }
        None => {}
    }
    if let Some(from) = filter.from {
        query.clause(" AND u.created_at >= ").int(from.timestamp_millis());
    }
    if let Some(to) = filter.to {
        query.clause(" AND u.created_at < ").int(to.timestamp_millis());
    }
    query
}

/// A page of usage records, newest first, with their task's error code and the names
/// of their user and token.
pub(super) fn usage_records<DB: Database>(filter: &UsageFilter) -> QueryBuilder<DB>
where
    QueryBuilder<DB>: Clauses,
{
    let mut query = usage(
        "SELECT u.*, t.error_code AS error_code, us.username AS username, k.name AS token_name \
         FROM usage u JOIN tasks t ON t.id = u.task_id \
         LEFT JOIN users us ON us.id = u.user_id LEFT JOIN api_tokens k ON k.id = u.token_id WHERE 1 = 1",
        filter,
    );
    if let Some(before) = filter.before {
        query.clause(" AND u.task_id < ").text(before.to_string());
    }
    query.clause(" ORDER BY u.task_id DESC LIMIT ").int(i64::from(filter.limit));
    query
}

/// A page of the audit log, newest first, and the count of all lines `filter` selects.
pub(super) fn audit<DB: Database>(filter: &AuditFilter) -> (QueryBuilder<DB>, QueryBuilder<DB>)
where
    QueryBuilder<DB>: Clauses,
{
    let filtered = |select: &str| {
        let mut query = QueryBuilder::new(select);
        query.clause(" FROM audit_log WHERE 1 = 1");
        if let Some(actor) = filter.actor_id {
            query.clause(" AND actor_id = ").text(actor.to_string());
        }
        if let Some(action) = &filter.action {
            query.clause(" AND action = ").text(action.clone());
        }
        query
    };
    let mut page = filtered("SELECT *");
    page.clause(" ORDER BY id DESC LIMIT ").int(i64::from(filter.limit)).clause(" OFFSET ").int(offset(filter.offset));
    (page, filtered("SELECT COUNT(*)"))
}
