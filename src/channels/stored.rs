//! Stored channels as the live set takes them: after the configuration file's channels,
//! oldest first, each with its secret opened. The file wins a name: a stored channel
//! named like a file channel stays out of the set (the admin API refuses to make one,
//! but a file channel may be added later).

use crate::{
    channels::{Changes, ChannelSet, ChannelSpec, Origin},
    config::{ChannelConfig, ConfigErrors},
    db::{Db, DbResult, StoredChannel},
    sealing::Sealer,
};

/// A stored channel as the set takes it, its secret opened with `sealer` (`None` when
/// the sealing key could not be loaded).
pub fn spec(stored: &StoredChannel, sealer: Option<&Sealer>) -> Result<ChannelSpec, String> {
    let secret = match (&stored.sealed_secret, sealer) {
        (None, _) => None,
        (Some(sealed), Some(sealer)) => Some(
            sealer.open(sealed).map_err(|_| "its secret does not open with this server's sealing key".to_owned())?,
        ),
        (Some(_), None) => return Err("its secret cannot be opened: the sealing key could not be loaded".into()),
    };
    Ok(ChannelSpec { origin: Origin::Database(stored.id), config: ChannelConfig { secret, ..stored.config.clone() } })
}

/// The channels the set should hold: the file's as they are, then `stored`. Those left
/// out are reported, by name, with why.
pub fn desired(
    set: &ChannelSet,
    stored: &[StoredChannel],
    sealer: Option<&Sealer>,
) -> (Vec<ChannelSpec>, ConfigErrors) {
    let mut specs = set.file_specs();
    let mut skipped = ConfigErrors::default();
    for channel in stored {
        let key = format!("channels.{}", channel.config.name);
        if specs.iter().any(|s| s.config.name == channel.config.name) {
            skipped.push(key, "a channel in the configuration file has this name; the file's is used");
            continue;
        }
        match spec(channel, sealer) {
            Ok(spec) => specs.push(spec),
            Err(why) => skipped.push(key, why),
        }
    }
    (specs, skipped)
}

/// Adds the stored channels to the set (at start-up). A stored channel that cannot be
/// built is left out and logged, so one broken channel does not keep kiln from
/// starting; the admin API shows it as not live. The sealing key is loaded only when
/// a stored channel has a secret.
pub async fn load<'a>(
    set: &ChannelSet,
    db: &Db,
    sealer: impl FnOnce() -> Option<&'a Sealer>,
) -> DbResult<(Changes, ConfigErrors)> {
    let stored = db.list_channels().await?;
    if stored.is_empty() {
        return Ok((Changes::default(), ConfigErrors::default()));
    }
    let sealer = if stored.iter().any(|c| c.sealed_secret.is_some()) { sealer() } else { None };
    let (specs, mut skipped) = desired(set, &stored, sealer);
    let (changes, problems) = set.apply_lenient(specs);
    for (key, message) in problems.problems() {
        skipped.push(key.clone(), message.clone());
    }
    for (key, message) in skipped.problems() {
        tracing::error!(channel = %key, problem = %message, "a stored channel is left out");
    }
    if !changes.added.is_empty() {
        tracing::info!(channels = ?changes.added, "stored channels loaded");
    }
    Ok((changes, skipped))
}
