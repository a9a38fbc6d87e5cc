//! `kiln worker`: serves the built-in `relief` engine to a kiln over the worker protocol.

use std::{net::SocketAddr, process::ExitCode, sync::Arc, time::Duration};

use clap::Args;

use crate::{
    config::{ChannelConfig, LogConfig},
    providers::relief,
    webhooks::SigningKey,
    worker_server::{WorkerServer, WorkerSettings},
};

/// The environment variable holding the shared secret (never a flag: flags show in `ps`).
pub const SECRET_ENV: &str = "KILN_WORKER_SECRET";

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Listen on ADDR:PORT (port 0 picks a free one; the address is printed).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8000")]
    bind: SocketAddr,
    /// Jobs run at once; one more dispatch is answered 429.
    #[arg(long, default_value_t = 1)]
    slots: u32,
    /// The longest a job may run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "180s")]
    timeout: Duration,
    /// How long running jobs get to finish after SIGTERM/SIGINT.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    grace: Duration,
}

pub async fn run(args: WorkerArgs) -> ExitCode {
    let Ok(secret) = std::env::var(SECRET_ENV) else {
        eprintln!("kiln worker: set {SECRET_ENV} to the channel's signing secret (`whsec_…`)");
        return ExitCode::from(super::EXIT_CONFIG);
    };
    let key = match SigningKey::parse(&secret) {
        Ok(key) => key,
        Err(message) => {
            eprintln!("kiln worker: {SECRET_ENV} {message}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let log = LogConfig { dir: Default::default(), ..LogConfig::default() };
    let _guard = crate::telemetry::init(&log);
    let provider = match relief::factory(&ChannelConfig::relief()) {
        Ok(provider) => provider,
        Err(err) => {
            eprintln!("kiln worker: cannot set up the relief engine: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let settings =
        WorkerSettings { bind: args.bind, key, slots: args.slots.max(1), timeout: args.timeout, grace: args.grace };
    let server = match WorkerServer::bind(settings, Arc::clone(&provider)).await {
        Ok(server) => server,
        Err(err) => {
            eprintln!("kiln worker: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    match server.local_addr() {
        Ok(addr) => println!("kiln worker is running at http://{addr}/"),
        Err(err) => {
            eprintln!("kiln worker: {err}");
            return ExitCode::FAILURE;
        }
    }
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        crate::app::shutdown_signal().await;
        stop.cancel();
    });
    match server.run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kiln worker: {err:#}");
            ExitCode::FAILURE
        }
    }
}
