//! Building and running the server: load every part once, bind the listener (port 0
//! allowed, so tests and side-by-side instances get their own), start the background
//! work, and shut it all down from one token.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    api::{self, AppState, Readiness},
    channels::{ChannelSet, stored},
    config::{Config, ConfigErrors},
    db,
    gateway::Gateway,
    journal,
    metrics::Metrics,
    providers::Registry,
    queue::Scheduler,
    retention,
    server::{self, HttpServer},
    storage::Storage,
};

/// How long a stopping process waits for its last notifications to go out.
const FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the server could not start. Configuration problems exit with code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub struct Application {
    listener: TcpListener,
    state: AppState,
    limits: server::Limits,
    /// Stops every dispatcher (each channel's token is its child) and the background work.
    dispatch_stop: CancellationToken,
}

impl Application {
    /// Opens the database and storage, builds the channels, and binds the listener.
    pub async fn build(config: Config, registry: &Registry) -> Result<Self, StartupError> {
        Self::build_with(config, registry, None).await
    }

    /// Like [`Application::build`], with the HTTP client object storage is reached
    /// through (tests route a COS bucket's host name to a local server with it).
    pub async fn build_with_storage_client(
        config: Config,
        registry: &Registry,
        http: reqwest::Client,
    ) -> Result<Self, StartupError> {
        Self::build_with(config, registry, Some(http)).await
    }

    async fn build_with(
        mut config: Config,
        registry: &Registry,
        storage_http: Option<reqwest::Client>,
    ) -> Result<Self, StartupError> {
        let dispatch_stop = CancellationToken::new();
        let channels = ChannelSet::from_config(&config, registry.clone(), dispatch_stop.clone())?;
        let open_files = server::raise_open_files_limit();
        let cap = server::connection_cap(config.server.max_connections, open_files);
        if cap < config.server.max_connections as usize {
            tracing::warn!(
                configured = config.server.max_connections,
                cap,
                open_files,
                "server.max_connections is lowered to what the open-file limit allows"
            );
        }
        let limits = server::Limits::new(&config.server, cap);
        let listener = server::bind(config.server.bind, config.server.listen_backlog)
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.server.bind))?;
        let local = listener.local_addr().map_err(anyhow::Error::from)?;
        // Links must carry the real port when the configured one was 0.
        config.server.bind = local;
        std::fs::create_dir_all(&config.server.data_dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", config.server.data_dir.display()))?;
        let db = db::connect(&config.database_url(), config.database.max_connections)
            .await
            .map_err(|e| anyhow::Error::new(e).context("cannot open the database"))?;
        if !db.shared() {
            let released = db.release_leases().await.map_err(anyhow::Error::from)?;
            if released > 0 {
                tracing::info!(released, "tasks interrupted by the last stop will run again");
            }
        }
        if let (Some(username), Some(password)) = (&config.admin.username, &config.admin.password) {
            match crate::accounts::ensure_first_admin(&*db, username, password).await {
                Ok(crate::accounts::FirstAdmin::Created(user)) => {
                    tracing::info!(username = %user.username, "the first admin was made from the configuration")
                }
                Ok(crate::accounts::FirstAdmin::AlreadyPresent) => {}
                Err(err) => {
                    return Err(StartupError::Other(anyhow::anyhow!("cannot make the first admin: {err}")));
                }
            }
        }
        let storage = match storage_http {
            None => Storage::from_config(&config),
            Some(http) => Storage::from_config_with_client(&config, http),
        }
        .map_err(|e| anyhow::Error::new(e).context("cannot open storage"))?;
        // A bucket is only reached at the first request: say now when it cannot be
        // written (wrong credentials, no such bucket), rather than at the first upload.
        // Not fatal: a bucket that is down for a moment must not stop a replica starting.
        if let Err(err) = storage.check_writable().await {
            tracing::warn!(
                error = format!("{:#}", anyhow::Error::new(err)),
                "storage cannot be written now; /ready says so until it can"
            );
        }
        // Files an earlier run was writing when it died. With a database only this
        // process uses, every note left is a leftover; with a shared one, only old ones.
        let leftover_age = if db.shared() { retention::LEFTOVER_AGE } else { std::time::Duration::ZERO };
        if let Err(err) = journal::sweep(&db, &storage, leftover_age).await {
            tracing::warn!(error = format!("{err:#}"), "cannot remove files left by an interrupted write");
        }
        journal::sweep_spool(&config.server.data_dir.join("tmp"), leftover_age);
        let gateway = Arc::new(Gateway::new(Arc::new(config), db, storage, channels, Arc::new(Metrics::new()))?);
        stored::load(gateway.channels(), gateway.db(), || gateway.sealer().ok())
            .await
            .map_err(|e| anyhow::Error::new(e).context("cannot read the stored channels"))?;
        let scheduler = Scheduler::new(Arc::clone(&gateway));
        let state = AppState {
            gateway,
            scheduler,
            readiness: Arc::new(Readiness::default()),
            shutdown: CancellationToken::new(),
        };
        Ok(Self { listener, state, limits, dispatch_stop })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.state.gateway.config().server.bind
    }

    /// Cancel it to shut the server down as a signal would.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }

    pub fn gateway(&self) -> Arc<Gateway> {
        Arc::clone(&self.state.gateway)
    }

    /// Serves until the shutdown token fires (or SIGINT/SIGTERM, when `signals`), then
    /// drains within the grace period.
    pub async fn run_until_stopped(self, signals: bool) -> anyhow::Result<()> {
        let Self { listener, state, limits, dispatch_stop } = self;
        let shutdown = state.shutdown.clone();
        if signals {
            tokio::spawn(listen_for_signals(shutdown.clone()));
        }
        let config = Arc::clone(state.gateway.config());
        // What other processes on a shared database commit, heard until the very end:
        // draining tasks still follow events and wake-ups from them.
        let hearing = CancellationToken::new();
        let hearer = state.gateway.notifier().listen(hearing.clone());
        let background = state.scheduler.start(dispatch_stop.clone());
        let retention = tokio::spawn(retention::run_daily(Arc::clone(&state.gateway), dispatch_stop.clone()));
        let webhooks = tokio::spawn(Arc::clone(&state.gateway).run_webhooks(dispatch_stop.clone()));
        let app = api::router(state.clone());
        let http = HttpServer::new(listener, app, limits, shutdown.clone(), Arc::clone(state.gateway.metrics()));
        let force_close = http.force_close();
        let mut server = tokio::spawn(http.run());
        state.readiness.set_started();
        tracing::info!(url = %config.public_url(), "kiln is listening");

        // Biased: the server ends by itself once the shutdown token fires, at once when no
        // connection is open, and both branches are then ready. Taking the server's end
        // for the outcome would skip the drain: running jobs dropped, not handed back.
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => {}
            result = &mut server => {
                // Only a server that failed ends before the shutdown token fires.
                dispatch_stop.cancel();
                hearing.cancel();
                return result.map_err(anyhow::Error::from);
            }
        }
        let began = Instant::now();
        state.readiness.set_stopping();
        dispatch_stop.cancel();
        // Conversions stop within milliseconds; their waiters hear `shutting_down`.
        state.gateway.conversions().stop();
        tracing::info!(grace = ?config.server.shutdown_grace, "shutting down: no new connections or dispatch");
        let grace = config.server.shutdown_grace;
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            tracing::warn!("requests still open after the grace period; closing them");
            force_close.cancel();
            if tokio::time::timeout(std::time::Duration::from_secs(1), &mut server).await.is_err() {
                server.abort();
            }
        }
        state.scheduler.drain(grace.saturating_sub(began.elapsed())).await;
        for handle in background {
            handle.abort();
        }
        retention.abort();
        webhooks.abort();
        // The last events committed here (tasks that ended while draining, tasks handed
        // back) reach the other processes now, not at their next poll.
        if tokio::time::timeout(FLUSH_WAIT, state.gateway.notifier().flushed()).await.is_err() {
            tracing::warn!("the last notifications to the other processes did not go out in time");
        }
        hearing.cancel();
        if let Some(hearer) = hearer {
            let _ = hearer.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

async fn listen_for_signals(shutdown: CancellationToken) {
    shutdown_signal().await;
    shutdown.cancel();
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    tracing::info!("shutdown signal received");
}
