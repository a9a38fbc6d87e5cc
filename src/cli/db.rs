//! `kiln db copy`: the command line of [`crate::db::copy`] — its flags and help, the
//! progress it draws (a bar on a terminal, plain lines otherwise, both on standard
//! error) and the summary it prints on standard output.

use std::{
    io::IsTerminal,
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    config::Secret,
    db::copy::{self, CopyError, Progress, Report},
};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Copy every kiln table from one database into another, empty one: SQLite to
    /// PostgreSQL (or back, or between two of a kind).
    ///
    /// Stop every kiln that uses the source first: the copy refuses a source a kiln is
    /// running on (it watches for 2.5 seconds), and never writes to it (a SQLite source
    /// is opened read-only). The target is migrated as `kiln migrate` would, must hold no
    /// kiln data, and gets everything in one transaction, committed only when every
    /// table's row count equals the source's; on any failure it is left without data.
    /// Stored files are not copied: give the new kiln the same storage (the same
    /// `data_dir` or bucket) and the same sealing key.
    ///
    /// A password can stay out of the command line: leave it out of a postgres:// URL
    /// and set PGPASSWORD, or use ~/.pgpass.
    #[command(verbatim_doc_comment)]
    Copy(CopyArgs),
}

#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The database to copy from, only read: sqlite://FILE or postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    from: String,
    /// The database to copy into, empty of kiln data: postgres://USER@HOST/DB or
    /// sqlite://FILE (made when missing).
    #[arg(long, value_name = "URL")]
    to: String,
}

pub async fn run(command: DbCommand) -> ExitCode {
    let DbCommand::Copy(args) = command;
    let (from, to) = (Secret::new(args.from), Secret::new(args.to));
    let mut progress: Box<dyn Progress> =
        if std::io::stderr().is_terminal() { Box::new(Bar::new()) } else { Box::new(Lines::default()) };
    let result = copy::copy(&from, &to, progress.as_mut()).await;
    drop(progress);
    match result {
        Ok(report) => {
            print!("{}", summary(&report));
            ExitCode::SUCCESS
        }
        Err(CopyError::Refused(why)) => {
            eprintln!("kiln db copy: refused: {why}");
            ExitCode::FAILURE
        }
        Err(CopyError::Failed(err)) => {
            // `{:#}` names every cause. No value of a row is in them: errors name
            // tables and columns only.
            eprintln!("kiln db copy: failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The table of row counts, and one line on what was done.
fn summary(report: &Report) -> String {
    let width = report.tables.iter().map(|t| t.table.len()).max().unwrap_or(0).max("total".len());
    let mut out = format!("{:<width$}  {:>12}  {:>12}  {:>12}\n", "table", "source", "copied", "target");
    for t in &report.tables {
        out += &format!("{:<width$}  {:>12}  {:>12}  {:>12}\n", t.table, t.source_rows, t.copied_rows, t.target_rows);
    }
    let total = |f: fn(&copy::TableReport) -> u64| report.tables.iter().map(f).sum::<u64>();
    out += &format!(
        "{:<width$}  {:>12}  {:>12}  {:>12}\n",
        "total",
        total(|t| t.source_rows),
        total(|t| t.copied_rows),
        total(|t| t.target_rows)
    );
    out += &format!(
        "copied {} tables ({} rows) from {} to {} in {:.1} s; every table's row count matches\n",
        report.tables.len(),
        report.total_rows(),
        report.from,
        report.to,
        report.elapsed.as_secs_f64()
    );
    out
}

/// A progress bar per table, on a terminal; the steps before the tables are lines.
#[derive(Default)]
struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    fn new() -> Self {
        Self::default()
    }
}

impl Progress for Bar {
    fn step(&mut self, what: &str) {
        match &self.bar {
            Some(bar) => bar.println(what),
            None => eprintln!("{what}"),
        }
    }

    fn table_started(&mut self, table: &str, rows: u64) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg:>20} [{bar:30}] {pos}/{len} rows ({per_sec}, {eta} left)")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        bar.reset();
        bar.set_length(rows);
        bar.set_message(table.to_owned());
    }

    fn rows_copied(&mut self, _table: &str, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    fn table_finished(&mut self, table: &str, rows: u64) {
        if let Some(bar) = &self.bar {
            bar.println(format!("copied {table}: {rows} rows"));
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Plain lines, for logs and pipes: each step, each table, and big tables as they go.
#[derive(Default)]
struct Lines {
    rows: u64,
    last: Option<Instant>,
}

/// How often a long table reports, when not on a terminal.
const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress for Lines {
    fn step(&mut self, what: &str) {
        eprintln!("{what}");
    }

    fn table_started(&mut self, _table: &str, rows: u64) {
        self.rows = rows;
        self.last = Some(Instant::now());
    }

    fn rows_copied(&mut self, table: &str, done: u64) {
        if self.last.is_some_and(|at| at.elapsed() >= LINE_EVERY) {
            eprintln!("copying {table}: {done} of {} rows", self.rows);
            self.last = Some(Instant::now());
        }
    }

    fn table_finished(&mut self, table: &str, rows: u64) {
        eprintln!("copied {table}: {rows} rows");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lines_up_the_counts_and_totals_them() {
        let report = Report {
            from: "sqlite://data/kiln.db".into(),
            to: "postgres://kiln:********@db/kiln".into(),
            tables: vec![
                copy::TableReport { table: "tasks".into(), source_rows: 3, copied_rows: 3, target_rows: 3 },
                copy::TableReport { table: "task_events".into(), source_rows: 12, copied_rows: 12, target_rows: 12 },
            ],
            elapsed: Duration::from_millis(1500),
        };
        let text = summary(&report);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "table              source        copied        target");
        assert_eq!(lines[2], "task_events            12            12            12");
        assert_eq!(lines[3], "total                  15            15            15");
        assert!(lines[4].starts_with(
            "copied 2 tables (15 rows) from sqlite://data/kiln.db to postgres://kiln:********@db/kiln in 1.5 s"
        ));
    }
}
