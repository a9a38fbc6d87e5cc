//! `kiln admin`: user administration on the server's own machine, against the
//! configured database — the first admin, and a forgotten password — for when no admin
//! can sign in to do it over HTTP.
//!
//! The password is asked twice on the terminal, or read as one line from standard input
//! with `--password-stdin`; never a flag, since flags show in `ps` and shell history.

use std::{io::BufRead, path::PathBuf, process::ExitCode};

use clap::{Args, Subcommand};

use crate::{
    access::Role,
    accounts::{self, AccountError, Actor, passwords},
    config::{Overrides, Secret},
};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Make a user (an admin unless `--role user`).
    Create(CreateArgs),
    /// Set a user's password; signs them out of every page session.
    ResetPassword(ResetArgs),
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// 3 to 64 ASCII letters, digits, `.`, `_` or `-`; compared without case.
    #[arg(long)]
    username: String,
    /// `admin` or `user`.
    #[arg(long, default_value = "admin", value_parser = parse_role)]
    role: Role,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Whose password to set.
    #[arg(long)]
    username: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
struct Common {
    /// Read the password as one line from standard input instead of asking for it.
    #[arg(long)]
    password_stdin: bool,
    /// Directory for the database (overrides server.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| "the role is `admin` or `user`".to_owned())
}

pub async fn run(config_file: &Option<PathBuf>, command: AdminCommand) -> ExitCode {
    let (username, common) = match &command {
        AdminCommand::Create(args) => (&args.username, &args.common),
        AdminCommand::ResetPassword(args) => (&args.username, &args.common),
    };
    let config = match super::load(config_file, &Overrides { bind: None, data_dir: common.data_dir.clone() }) {
        Ok(config) => config,
        Err(code) => return code,
    };
    // A bad username is reported before the password is typed in for nothing.
    if matches!(command, AdminCommand::Create(_))
        && let Err(err) = accounts::check_username(username)
    {
        return fail(err);
    }
    let password = match read_password(username, common.password_stdin).await {
        Ok(password) => password,
        Err(message) => {
            eprintln!("kiln admin: {message}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(weak) = passwords::check_policy(password.expose()) {
        return fail(AccountError::WeakPassword(weak));
    }
    let db = match crate::db::connect(&config.database_url(), 1).await {
        Ok(db) => db,
        Err(err) => {
            eprintln!("kiln admin: cannot open the database: {:#}", anyhow::Error::new(err));
            return ExitCode::FAILURE;
        }
    };
    let cli = Actor::system("cli");
    match &command {
        AdminCommand::Create(args) => match accounts::create_user(&*db, username, &password, args.role, &cli).await {
            Ok(user) => {
                println!("made {} `{}` ({})", user.role.as_str(), user.username, user.id);
                ExitCode::SUCCESS
            }
            Err(err) => fail(err),
        },
        AdminCommand::ResetPassword(_) => match accounts::reset_password(&*db, username, &password, &cli).await {
            Ok(user) => {
                println!("set the password of `{}`; their page sessions have ended", user.username);
                ExitCode::SUCCESS
            }
            Err(err) => fail(err),
        },
    }
}

fn fail(err: AccountError) -> ExitCode {
    // `{:#}` names the causes too, e.g. of a database failure.
    eprintln!("kiln admin: {:#}", anyhow::Error::new(err));
    ExitCode::FAILURE
}

/// The password: one line of standard input, or asked twice on the terminal.
async fn read_password(username: &str, from_stdin: bool) -> Result<Secret, String> {
    let username = username.to_owned();
    let read = move || {
        if from_stdin {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line).map_err(|e| format!("cannot read standard input: {e}"))?;
            // Only the line ending goes: spaces may be part of a password.
            let line = line.strip_suffix('\n').unwrap_or(&line);
            return Ok(Secret::new(line.strip_suffix('\r').unwrap_or(line)));
        }
        let ask = |prompt: &str| {
            rpassword::prompt_password(prompt)
                .map_err(|e| format!("cannot ask for a password on the terminal ({e}); use --password-stdin"))
        };
        let first = ask(&format!("Password for {username}: "))?;
        if let Err(weak) = passwords::check_policy(&first) {
            return Err(weak.to_string());
        }
        if ask("The same password again: ")? != first {
            return Err("the two passwords differ; nothing was changed".into());
        }
        Ok(Secret::new(first))
    };
    tokio::task::spawn_blocking(read).await.map_err(|e| format!("cannot read the password: {e}"))?
}
