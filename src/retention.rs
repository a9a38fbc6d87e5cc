//! Retention: stored inputs and outputs older than the configured age are deleted once a
//! day at the configured local time. Their records stay, marked expired, so their URLs
//! answer 410 Gone and tasks say their files expired.

use std::{sync::Arc, time::Duration};

use chrono::{Local, NaiveTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::{config::validate_time_of_day, gateway::Gateway, journal, storage::StorageError};

/// Files noted as being written this long ago and never recorded were left by a crash,
/// whichever process wrote them (a write in progress takes seconds).
pub const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// What a cleanup did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub expired: usize,
    pub deleted: usize,
    /// Files a crash left without a record, deleted.
    pub leftovers: usize,
}

/// Expires and deletes every stored file older than `older_than`, and deletes files an
/// interrupted write left without a record ([`journal::sweep`]).
pub async fn sweep(gateway: &Gateway, older_than: Duration) -> anyhow::Result<Swept> {
    let cutoff = Utc::now() - chrono::Duration::from_std(older_than)?;
    let keys = gateway.db().expire_files_before(cutoff).await?;
    let leftovers = journal::sweep(gateway.db(), gateway.storage(), LEFTOVER_AGE).await?;
    journal::sweep_spool(&gateway.spool_dir(), LEFTOVER_AGE);
    let mut swept = Swept { expired: keys.len(), deleted: 0, leftovers };
    for key in &keys {
        match gateway.storage().delete(key).await {
            Ok(()) | Err(StorageError::NotFound(_)) => swept.deleted += 1,
            Err(err) => tracing::warn!(key, error = %err, "cannot delete an expired file"),
        }
    }
    tracing::info!(expired = swept.expired, deleted = swept.deleted, "retention sweep done");
    Ok(swept)
}

/// Time until the next local `HH:MM`.
fn until_next(hour: u32, minute: u32) -> Duration {
    let now = Local::now();
    let Some(at) = NaiveTime::from_hms_opt(hour, minute, 0) else { return Duration::from_secs(86_400) };
    let today = now.date_naive().and_time(at);
    let next = if today > now.naive_local() { today } else { today + chrono::Duration::days(1) };
    (next - now.naive_local()).to_std().unwrap_or(Duration::from_secs(60))
}

/// Runs the sweep every day at the configured time until `stop` fires.
pub async fn run_daily(gateway: Arc<Gateway>, stop: CancellationToken) {
    let retention = gateway.config().retention.clone();
    if !retention.enabled {
        return;
    }
    let Some((hour, minute)) = validate_time_of_day(&retention.run_at) else { return };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(until_next(hour, minute)) => {}
            _ = stop.cancelled() => return,
        }
        // Every process wakes at the same time; the first to take the lease sweeps.
        if !gateway.singleton("retention", Duration::from_secs(3600)).await {
            continue;
        }
        if let Err(err) = sweep(&gateway, retention.max_age).await {
            tracing::error!(error = format!("{err:#}"), "retention sweep failed");
        }
    }
}
