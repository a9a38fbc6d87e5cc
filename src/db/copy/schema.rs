//! What a copy reads from the two schemas, and the plan it makes of them: which tables,
//! in which order, and which columns, with how each is stored.

use std::collections::{BTreeMap, BTreeSet};

use super::CopyError;

/// How a column's values are held. kiln's schemas store times as Unix milliseconds,
/// flags as 0 or 1, ids and JSON as text, on both backends alike, so these two cover
/// every column; a column of any other type stops the copy instead of being guessed at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Int,
    Text,
}

impl Kind {
    /// From a declared SQLite type or a PostgreSQL `data_type`.
    pub(super) fn parse(declared: &str) -> Option<Kind> {
        match declared.to_ascii_lowercase().as_str() {
            "integer" | "bigint" => Some(Kind::Int),
            "text" => Some(Kind::Text),
            _ => None,
        }
    }
}

/// A column as one side declares it.
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub name: String,
    /// `None` for a type the copy does not know (reported if the column is copied).
    pub kind: Option<Kind>,
    pub declared: String,
    /// A PostgreSQL identity column: written with `OVERRIDING SYSTEM VALUE`, and its
    /// sequence moved past the copied values.
    pub identity: bool,
}

/// A table as one side declares it.
#[derive(Debug, Clone, Default)]
pub(super) struct Shape {
    pub columns: Vec<Column>,
    /// A SQLite table's rowid when it is not a declared column. It is what PostgreSQL's
    /// `rowid` identity columns stand for (FIFO order of tasks, order of webhook
    /// attempts), so it is copied into and out of them, and between two SQLite tables.
    pub implicit_rowid: bool,
}

/// One side's tables (sqlx's own and SQLite's internal ones left out) and foreign keys.
#[derive(Debug, Clone, Default)]
pub(super) struct Schema {
    pub tables: BTreeMap<String, Shape>,
    /// (table, the table one of its foreign keys names).
    pub references: Vec<(String, String)>,
}

/// A table to copy and the columns copied, in the same order on both sides.
#[derive(Debug, Clone)]
pub(super) struct TablePlan {
    pub name: String,
    pub columns: Vec<(String, Kind)>,
    /// The target's identity columns among them.
    pub identities: Vec<String>,
}

/// Every table of the source, parents first.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub tables: Vec<TablePlan>,
}

/// The name SQLite gives a table's implicit row id, and kiln's PostgreSQL schema its
/// stand-in.
const ROWID: &str = "rowid";

impl Plan {
    pub(super) fn new(source: &Schema, target: &Schema) -> Result<Plan, CopyError> {
        let mut problems = Vec::new();
        let mut planned = BTreeMap::new();
        for (name, from) in &source.tables {
            let Some(to) = target.tables.get(name) else {
                problems.push(format!("table `{name}` is in the source but not in the target"));
                continue;
            };
            match columns(name, from, to) {
                Ok(table) => {
                    planned.insert(name.clone(), table);
                }
                Err(mut found) => problems.append(&mut found),
            }
        }
        if !problems.is_empty() {
            return Err(CopyError::Refused(format!(
                "the two schemas differ, so the copy would lose data: {}",
                problems.join("; ")
            )));
        }
        let order =
            parents_first(planned.keys().cloned().collect(), source.references.iter().chain(&target.references))?;
        let tables = order.into_iter().filter_map(|name| planned.remove(&name)).collect();
        Ok(Plan { tables })
    }
}

/// The columns copied from `from` into `to`: each declared on both sides with the same
/// kind, plus the SQLite rowid where the other side can hold it.
fn columns(table: &str, from: &Shape, to: &Shape) -> Result<TablePlan, Vec<String>> {
    let mut problems = Vec::new();
    let mut columns = Vec::new();
    let mut identities = Vec::new();
    let declared_in = |shape: &Shape, name: &str| shape.columns.iter().find(|c| c.name == name).cloned();
    for column in &from.columns {
        let kind = match declared_in(to, &column.name) {
            Some(other) => match (column.kind, other.kind) {
                (Some(a), Some(b)) if a == b => {
                    if other.identity {
                        identities.push(column.name.clone());
                    }
                    a
                }
                (Some(_), Some(_)) => {
                    problems.push(format!(
                        "`{table}.{}` is {} in the source but {} in the target",
                        column.name, column.declared, other.declared
                    ));
                    continue;
                }
                _ => {
                    let unknown = if column.kind.is_none() { &column.declared } else { &other.declared };
                    problems.push(format!("`{table}.{}` has a type the copy does not handle ({unknown})", column.name));
                    continue;
                }
            },
            None if column.name == ROWID && to.implicit_rowid && column.kind == Some(Kind::Int) => Kind::Int,
            None => {
                problems.push(format!("`{table}.{}` is in the source but not in the target", column.name));
                continue;
            }
        };
        columns.push((column.name.clone(), kind));
    }
    for column in &to.columns {
        if declared_in(from, &column.name).is_some() {
            continue;
        }
        if column.name == ROWID && from.implicit_rowid && column.kind == Some(Kind::Int) {
            if column.identity {
                identities.push(ROWID.to_owned());
            }
            columns.push((ROWID.to_owned(), Kind::Int));
        } else {
            problems.push(format!("`{table}.{}` is in the target but not in the source", column.name));
        }
    }
    if from.implicit_rowid && to.implicit_rowid {
        columns.push((ROWID.to_owned(), Kind::Int));
    }
    if problems.is_empty() { Ok(TablePlan { name: table.to_owned(), columns, identities }) } else { Err(problems) }
}

/// Orders tables so that each comes after the tables its foreign keys name (ties by
/// name, so the order is the same every time).
fn parents_first<'a>(
    tables: BTreeSet<String>,
    references: impl Iterator<Item = &'a (String, String)>,
) -> Result<Vec<String>, CopyError> {
    let mut parents: BTreeMap<&str, BTreeSet<&str>> = tables.iter().map(|t| (t.as_str(), BTreeSet::new())).collect();
    for (child, parent) in references {
        // A table that names itself needs no order between tables; one outside the copy
        // (the target's own) is no concern of it.
        if child != parent
            && tables.contains(parent)
            && let Some(set) = parents.get_mut(child.as_str())
        {
            set.insert(parent.as_str());
        }
    }
    let mut order: Vec<String> = Vec::with_capacity(tables.len());
    while order.len() < tables.len() {
        let ready: Vec<&str> = parents
            .iter()
            .filter(|(table, waiting)| waiting.is_empty() && !order.iter().any(|done| done == *table))
            .map(|(table, _)| *table)
            .collect();
        if ready.is_empty() {
            let stuck: Vec<&str> = parents.keys().filter(|t| !order.iter().any(|done| done == *t)).copied().collect();
            return Err(CopyError::Failed(anyhow::anyhow!(
                "the foreign keys between {} form a cycle, and the copy cannot order them",
                stuck.join(", ")
            )));
        }
        for table in ready {
            order.push(table.to_owned());
            for waiting in parents.values_mut() {
                waiting.remove(table);
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, kind: Kind, identity: bool) -> Column {
        let declared = match kind {
            Kind::Int => "BIGINT",
            Kind::Text => "TEXT",
        };
        Column { name: name.into(), kind: Some(kind), declared: declared.into(), identity }
    }

    fn shape(columns: &[Column], implicit_rowid: bool) -> Shape {
        Shape { columns: columns.to_vec(), implicit_rowid }
    }

    #[test]
    fn parents_come_before_the_tables_that_name_them() {
        let tables = ["b", "a", "c", "d"].iter().map(|s| s.to_string()).collect();
        let refs =
            [("a".to_owned(), "c".to_owned()), ("c".to_owned(), "d".to_owned()), ("b".to_owned(), "b".to_owned())];
        let order = parents_first(tables, refs.iter()).unwrap();
        assert_eq!(order, ["b", "d", "c", "a"]);
    }

    #[test]
    fn a_cycle_is_named_not_looped_over() {
        let tables = ["a", "b"].iter().map(|s| s.to_string()).collect();
        let refs = [("a".to_owned(), "b".to_owned()), ("b".to_owned(), "a".to_owned())];
        let err = parents_first(tables, refs.iter()).unwrap_err();
        assert!(err.to_string().contains("a, b"), "{err}");
    }

    #[test]
    fn the_sqlite_rowid_goes_into_the_postgres_rowid_column_and_back() {
        let sqlite = shape(&[column("id", Kind::Text, false)], true);
        let postgres = shape(&[column("rowid", Kind::Int, true), column("id", Kind::Text, false)], false);
        let there = columns("tasks", &sqlite, &postgres).unwrap();
        assert_eq!(there.columns, [("id".to_owned(), Kind::Text), ("rowid".to_owned(), Kind::Int)]);
        assert_eq!(there.identities, ["rowid"]);
        let back = columns("tasks", &postgres, &sqlite).unwrap();
        assert_eq!(back.columns, [("rowid".to_owned(), Kind::Int), ("id".to_owned(), Kind::Text)]);
        assert!(back.identities.is_empty());
        let same = columns("tasks", &sqlite, &sqlite).unwrap();
        assert_eq!(same.columns, [("id".to_owned(), Kind::Text), ("rowid".to_owned(), Kind::Int)]);
        // A PostgreSQL table without a rowid column has no use for SQLite's.
        let plain = shape(&[column("id", Kind::Text, false)], false);
        assert_eq!(columns("t", &sqlite, &plain).unwrap().columns, [("id".to_owned(), Kind::Text)]);
    }

    #[test]
    fn a_column_missing_on_either_side_or_stored_differently_is_refused() {
        let from = shape(&[column("id", Kind::Text, false), column("extra", Kind::Int, false)], false);
        let to = shape(&[column("id", Kind::Int, false), column("other", Kind::Text, false)], false);
        let problems = columns("t", &from, &to).unwrap_err().join("\n");
        assert!(problems.contains("`t.id` is TEXT in the source but BIGINT in the target"), "{problems}");
        assert!(problems.contains("`t.extra` is in the source but not in the target"), "{problems}");
        assert!(problems.contains("`t.other` is in the target but not in the source"), "{problems}");
        let odd = Column { name: "blob".into(), kind: None, declared: "BYTEA".into(), identity: false };
        let problems =
            columns("t", &shape(std::slice::from_ref(&odd), false), &shape(&[odd], false)).unwrap_err().join("\n");
        assert!(problems.contains("type the copy does not handle (BYTEA)"), "{problems}");
    }

    #[test]
    fn a_table_the_target_lacks_stops_the_plan() {
        let mut source = Schema::default();
        source.tables.insert("tasks".into(), shape(&[column("id", Kind::Text, false)], false));
        source.tables.insert("new_table".into(), shape(&[column("id", Kind::Text, false)], false));
        let mut target = Schema::default();
        target.tables.insert("tasks".into(), shape(&[column("id", Kind::Text, false)], false));
        let err = Plan::new(&source, &target).unwrap_err();
        assert!(
            matches!(&err, CopyError::Refused(m) if m.contains("`new_table` is in the source but not in the target"))
        );
    }
}
