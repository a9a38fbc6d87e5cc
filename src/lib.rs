//! kiln: a self-hostable gateway for generative jobs. See `docs/architecture.md` for
//! how the modules fit together.

pub mod access;
pub mod accounts;
pub mod api;
pub mod app;
pub mod callbacks;
pub mod channels;
pub mod cli;
pub mod config;
pub mod db;
pub mod deliveries;
pub mod error;
pub mod events;
pub mod gateway;
pub mod input;
pub mod journal;
pub mod metrics;
pub mod notify;
pub mod outputs;
pub mod providers;
pub mod queue;
pub mod ratelimit;
pub mod retention;
pub mod sealing;
pub mod server;
pub mod signed_urls;
pub mod storage;
pub mod tasks;
pub mod telemetry;
pub mod webhooks;
pub mod worker_check;
pub mod worker_protocol;
pub mod worker_server;
