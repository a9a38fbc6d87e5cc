//! Logging: human-readable or JSON lines on the console, and a daily-rotated file under
//! the log directory with a fixed number of days kept. `KILN_LOG` overrides the level.

use std::io::IsTerminal;

use tracing_appender::{non_blocking::WorkerGuard, rolling};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. Keep the guard alive: it flushes the file on drop.
pub fn init(config: &LogConfig) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = || EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| EnvFilter::new(&config.level));
    // Colour codes only for a person at a terminal: in a file or a pipe
    // (`kiln serve > serve.log`, journald, docker logs) they are noise.
    let colour = std::io::stderr().is_terminal();
    let console = match config.format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(colour).with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };
    let mut guard = None;
    let file = if config.dir.as_os_str().is_empty() {
        None
    } else {
        std::fs::create_dir_all(&config.dir)?;
        let appender = rolling::Builder::new()
            .rotation(rolling::Rotation::DAILY)
            .filename_prefix("kiln")
            .filename_suffix("log")
            .max_log_files(config.keep_files)
            .build(&config.dir)?;
        let (writer, g) = tracing_appender::non_blocking(appender);
        guard = Some(g);
        Some(tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer).with_filter(filter()))
    };
    tracing_subscriber::registry().with(console.with_filter(filter())).with(file).try_init()?;
    Ok(guard)
}
