//! Outbound webhooks as callers reach them: each owner's signing secret (made on first
//! use, kept sealed), announcing a finished task to its `webhook_url`, the deliveries a
//! caller may see, and a sweep that announces ends a crash left unannounced.

use std::sync::Arc;

use async_trait::async_trait;
use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::json;
use uuid::Uuid;

use super::Gateway;
use crate::{
    access::Caller,
    config::Secret,
    db::Db,
    deliveries::{DeliveryEvent, DeliveryReport, Finished, SecretSource},
    error::{ApiError, ApiResult},
    sealing::{LazySealer, Sealer},
    tasks::{Task, TaskId},
};

/// How often the sweep looks for ends that were never announced (it looks back as far
/// as a delivery is retried, `webhooks.max_age`).
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Old deliveries are pruned at start-up and then every hour's worth of sweeps.
const PRUNE_EVERY_SWEEPS: u64 = 60;

/// The owners' secrets: a user's is made on first use and stored sealed; tasks made
/// anonymously (open mode) are signed with one derived from the sealing key.
pub struct OwnerSecrets {
    db: Db,
    sealer: Arc<LazySealer>,
}

impl OwnerSecrets {
    pub fn new(db: Db, sealer: Arc<LazySealer>) -> Self {
        Self { db, sealer }
    }

    fn sealer(&self) -> anyhow::Result<&Sealer> {
        self.sealer.get().map_err(|e| anyhow::anyhow!("cannot load the sealing key: {e}"))
    }

    /// The owner's secret, made and stored when they have none yet.
    pub async fn get_or_make(&self, owner: Option<Uuid>) -> anyhow::Result<Secret> {
        let sealer = self.sealer()?;
        let Some(user) = owner else {
            return Ok(Secret::new(format!("whsec_{}", STANDARD.encode(sealer.subkey("kiln anonymous webhooks v1")))));
        };
        if let Some(sealed) = self.db.get_webhook_secret(user).await? {
            return sealer.open(&sealed);
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let secret = Secret::new(format!("whsec_{}", STANDARD.encode(bytes)));
        if !self.db.set_webhook_secret(user, Some(&sealer.seal(&secret)?)).await? {
            anyhow::bail!("no user {user}");
        }
        Ok(secret)
    }
}

#[async_trait]
impl SecretSource for OwnerSecrets {
    async fn secret_for(&self, owner: Option<Uuid>) -> anyhow::Result<Option<Secret>> {
        self.get_or_make(owner).await.map(Some)
    }
}

impl Gateway {
    /// The caller's webhook signing secret (`whsec_…`), made on first use.
    pub async fn webhook_secret(&self, caller: &Caller) -> ApiResult<Secret> {
        self.secrets.get_or_make(caller.owner()).await.map_err(ApiError::internal)
    }

    /// The deliveries of a task the caller may see, with their attempts.
    pub async fn task_deliveries(&self, caller: &Caller, id: TaskId) -> ApiResult<Vec<DeliveryReport>> {
        let task = self.task(caller, id).await?;
        Ok(self.deliveries.list_for_task(task.id).await?)
    }

    /// Records the announcement of a finished task that asked for one; sent by the
    /// delivery loop. Recording twice is harmless (one per task, event and URL).
    pub async fn announce(&self, task: &Task) {
        let (Some(url), Some(event)) = (&task.webhook_url, DeliveryEvent::for_status(task.status)) else { return };
        let outputs = match self.db.list_artifacts(task.id).await {
            Ok(outputs) => outputs,
            Err(err) => {
                tracing::error!(task_id = %task.id, error = %err, "cannot read outputs to announce a task");
                return;
            }
        };
        let mut listed = Vec::with_capacity(outputs.len());
        for a in &outputs {
            listed.push(json!({
                "name": a.name, "role": a.role, "url": self.file_url(&a.key).await,
                "content_type": a.content_type, "size": a.size, "sha256": a.sha256,
            }));
        }
        let data = json!({
            "id": task.id,
            "kind": task.kind.as_str(),
            "model": task.model,
            "status": task.status.as_str(),
            "error": task.error_code.as_ref().map(|code| json!({ "code": code, "message": task.error_message })),
            "outputs": listed,
            "metadata": task.metadata,
            "created_at": task.created_at,
            "finished_at": task.finished_at,
        });
        let finished = Finished { task_id: task.id, owner: task.owner_id, url: url.clone(), event, task: data };
        if let Err(err) = self.deliveries.enqueue(finished).await {
            tracing::error!(task_id = %task.id, error = %err, "cannot record a webhook delivery");
        }
    }

    /// Announces ends that were committed but never announced (a crash between the two,
    /// a task ended by a channel's deletion), from the last `webhooks.max_age`.
    pub async fn announce_missed(&self) {
        let since = chrono::Utc::now()
            - chrono::Duration::from_std(self.config.webhooks.max_age).unwrap_or(chrono::Duration::hours(24));
        let missed = match self.db.finished_without_delivery(since).await {
            Ok(ids) => ids,
            Err(err) => {
                tracing::warn!(error = %err, "cannot look for unannounced task ends");
                return;
            }
        };
        for id in missed {
            if let Ok(Some(task)) = self.db.get_task(id).await {
                self.announce(&task).await;
            }
        }
    }

    /// Deletes the deliveries that finished more than `webhooks.keep` ago.
    pub async fn prune_deliveries(&self) {
        let keep = chrono::Duration::from_std(self.config.webhooks.keep).unwrap_or(chrono::Duration::days(30));
        match self.db.prune_deliveries(chrono::Utc::now() - keep).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, "old webhook deliveries deleted"),
            Err(err) => tracing::warn!(error = %err, "cannot delete old webhook deliveries"),
        }
    }

    /// Sends deliveries, sweeps for missed ones and prunes old ones until `stop` fires.
    pub async fn run_webhooks(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let sender = tokio::spawn(Arc::clone(&self.deliveries).run(stop.clone()));
        let mut sweeps = 0u64;
        loop {
            // One process sweeps at a time (the sender itself runs everywhere: deliveries
            // are claimed under leases).
            if self.singleton("webhook-sweep", SWEEP_EVERY * 3).await {
                self.announce_missed().await;
                if sweeps.is_multiple_of(PRUNE_EVERY_SWEEPS) {
                    self.prune_deliveries().await;
                }
            }
            sweeps += 1;
            tokio::select! {
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = stop.cancelled() => break,
            }
        }
        let _ = sender.await;
    }
}
