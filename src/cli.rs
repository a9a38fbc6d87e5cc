//! The `kiln` command line: `serve`, `migrate`, `config check`, `cleanup`, `admin`,
//! `db copy` and the `generate` client.

mod admin;
mod db;
mod generate;
mod worker;
mod worker_check;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    app::{Application, StartupError},
    config::{Config, ConfigErrors, Overrides, config_path},
    providers::Registry,
};

/// Exit code for configuration problems.
const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "kiln", version, about = "A self-hostable gateway for generative jobs")]
struct Cli {
    /// Configuration file (default: $KILN_CONFIG, else ./kiln.toml when present).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve(ServeArgs),
    /// Create or upgrade the database schema, then exit.
    Migrate(ServeArgs),
    /// Work with the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Delete stored inputs and outputs older than a given age, now.
    Cleanup(CleanupArgs),
    /// Make users and reset passwords, in the configured database.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Work with whole databases: copy an installation from SQLite to PostgreSQL.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Submit a picture or a prompt to a kiln server, follow it, and download the result.
    Generate(generate::GenerateArgs),
    /// Serve the built-in relief engine to a kiln over the worker protocol (secret from
    /// $KILN_WORKER_SECRET).
    Worker(worker::WorkerArgs),
    /// Check that a worker keeps the worker protocol (secret from $KILN_WORKER_SECRET).
    WorkerCheck(worker_check::WorkerCheckArgs),
}

#[derive(Debug, Default, Args)]
struct ServeArgs {
    /// Listen on ADDR:PORT (overrides server.bind).
    #[arg(long, value_name = "ADDR:PORT")]
    bind: Option<std::net::SocketAddr>,
    /// Directory for the database and stored files (overrides server.data_dir).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

impl ServeArgs {
    fn overrides(&self) -> Overrides {
        Overrides { bind: self.bind, data_dir: self.data_dir.clone() }
    }
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the configuration and print it, secrets masked.
    Check(ServeArgs),
}

#[derive(Debug, Args)]
struct CleanupArgs {
    /// Age, e.g. `48h` or `30m` (default: retention.max_age).
    #[arg(long, value_parser = humantime::parse_duration)]
    older_than: Option<Duration>,
    #[command(flatten)]
    serve: ServeArgs,
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("kiln: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

fn load(file: &Option<PathBuf>, overrides: &Overrides) -> Result<Config, ExitCode> {
    let path = config_path(file.clone());
    Config::load(path.as_deref(), overrides).map_err(|errors: ConfigErrors| {
        eprint!("kiln: {errors}");
        ExitCode::from(EXIT_CONFIG)
    })
}

async fn run(cli: Cli) -> ExitCode {
    match cli.command.unwrap_or(Command::Serve(ServeArgs::default())) {
        Command::Serve(args) => {
            let config = match load(&cli.config, &args.overrides()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            serve(config, Registry::builtin()).await
        }
        Command::Migrate(args) => {
            let config = match load(&cli.config, &args.overrides()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::db::connect(&config.database_url(), 1).await {
                Ok(_) => {
                    println!("database is up to date");
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("kiln: migration failed: {:#}", anyhow::Error::new(err));
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Check(args)) => match load(&cli.config, &args.overrides()) {
            Ok(config) => match crate::channels::ChannelSet::from_config(
                &config,
                Registry::builtin(),
                tokio_util::sync::CancellationToken::new(),
            ) {
                Ok(_) => {
                    print!("{}", config.to_masked_toml());
                    eprintln!("configuration is valid");
                    ExitCode::SUCCESS
                }
                Err(errors) => {
                    eprint!("kiln: {errors}");
                    ExitCode::from(EXIT_CONFIG)
                }
            },
            Err(code) => code,
        },
        Command::Cleanup(args) => {
            let config = match load(&cli.config, &args.serve.overrides()) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let age = args.older_than.unwrap_or(config.retention.max_age);
            match cleanup(config, age).await {
                Ok(swept) => {
                    println!(
                        "expired {} file(s), deleted {}; removed {} left by interrupted writes",
                        swept.expired, swept.deleted, swept.leftovers
                    );
                    ExitCode::SUCCESS
                }
                Err(err) => {
                    eprintln!("kiln: cleanup failed: {err:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Admin(command) => admin::run(&cli.config, command).await,
        Command::Db(command) => db::run(command).await,
        Command::Generate(args) => generate::run(args).await,
        Command::Worker(args) => worker::run(args).await,
        Command::WorkerCheck(args) => worker_check::run_check(args).await,
    }
}

/// Starts the server with the given providers; used by `kiln serve` and by tests that
/// run the real server with extra providers.
pub async fn serve(config: Config, registry: Registry) -> ExitCode {
    let _guard = match crate::telemetry::init(&config.log) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("kiln: cannot set up logging: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let app = match Application::build(config, &registry).await {
        Ok(app) => app,
        Err(StartupError::Config(errors)) => {
            eprint!("kiln: {errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(StartupError::Other(err)) => {
            tracing::error!(error = format!("{err:#}"), "cannot start");
            eprintln!("kiln: cannot start: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("kiln is running at http://{}/", app.local_addr());
    match app.run_until_stopped(true).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "server failed");
            ExitCode::FAILURE
        }
    }
}

async fn cleanup(config: Config, age: Duration) -> anyhow::Result<crate::retention::Swept> {
    let db = crate::db::connect(&config.database_url(), 2).await?;
    let storage = crate::storage::Storage::from_config(&config)?;
    let channels = crate::channels::ChannelSet::from_config(
        &Config { channels: Vec::new(), ..config.clone() },
        Registry::builtin(),
        tokio_util::sync::CancellationToken::new(),
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    let gateway = crate::gateway::Gateway::new(
        std::sync::Arc::new(config),
        db,
        storage,
        channels,
        std::sync::Arc::new(crate::metrics::Metrics::new()),
    )?;
    crate::retention::sweep(&gateway, age).await
}
