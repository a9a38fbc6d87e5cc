//! `kiln worker-check`: runs the worker protocol's conformance suite against a worker.

use std::{net::IpAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::Args;

use crate::{
    webhooks::SigningKey,
    worker_check::{CheckSettings, run},
};

#[derive(Debug, Args)]
pub struct WorkerCheckArgs {
    /// The worker's base URL, e.g. http://gpu-box:8000
    worker: url::Url,
    /// The picture to send (default: a synthetic one).
    #[arg(long, value_name = "FILE")]
    image: Option<PathBuf>,
    /// The address the worker can reach this machine on, for its callbacks.
    #[arg(long, default_value = "127.0.0.1")]
    callback_host: IpAddr,
    /// How long one job may take.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "180s")]
    job_timeout: Duration,
    /// How long to wait for the worker to be ready (its model loading).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "60s")]
    ready_timeout: Duration,
}

pub async fn run_check(args: WorkerCheckArgs) -> ExitCode {
    let env = super::worker::SECRET_ENV;
    let key = match std::env::var(env)
        .map_err(|_| format!("set {env} to the worker's signing secret"))
        .and_then(|s| SigningKey::parse(&s).map_err(|m| format!("{env} {m}")))
    {
        Ok(key) => key,
        Err(message) => {
            eprintln!("kiln worker-check: {message}");
            return ExitCode::from(super::EXIT_CONFIG);
        }
    };
    let image = match &args.image {
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => Some(bytes.into()),
            Err(err) => {
                eprintln!("kiln worker-check: cannot read {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        },
        None => None,
    };
    let settings = CheckSettings {
        worker: args.worker.to_string(),
        key,
        image,
        callback_host: args.callback_host,
        job_timeout: args.job_timeout,
        ready_timeout: args.ready_timeout,
    };
    match run(settings).await {
        Ok(report) => {
            print!("{report}");
            if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(err) => {
            eprintln!("kiln worker-check: {err:#}");
            ExitCode::FAILURE
        }
    }
}
