//! Integration tests: the real kiln server on a random port in a temporary directory,
//! with a small test-only provider (`provider.rs`), talked to over HTTP.

#[path = "../common/mod.rs"]
mod common;
mod helpers;
mod provider;
mod repo;

mod accounts;
mod admin_channels;
mod admin_cli;
mod authorization;
mod boundaries;
mod channels;
mod cli;
mod cloud_modelscope;
mod cloud_tripo;
mod connections;
mod crash;
mod db_copy;
mod fakes;
mod files;
mod formats;
mod lifecycle;
mod notifications;
mod object_storage;
mod openai;
mod openai_python;
mod openapi;
mod operations;
mod pictures;
mod relief;
mod signed_files;
mod sse;
mod submit;
mod validation;
mod webhooks_out;
mod webhooks_task;
mod workers;
