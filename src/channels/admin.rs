//! Administering channels at runtime: the service behind the admin API and console.
//!
//! Stored channels are created, edited, enabled, disabled and deleted here; each change
//! is validated (the same rules as the file's, field by field), stored (the secret
//! sealed), and then the live set is rebuilt from the file and the database and swapped
//! in — unchanged channels untouched — after which the waiting tasks of a deleted
//! channel (or of a model an edit withdrew) move or fail ([`super::rehome`]). One change
//! at a time ([`ChannelSet::edit`]).
//!
//! File channels are shown read-only. Secrets are write-only: a view shows a mask
//! (`••••` and, for a secret of 16 characters or more, its last four), never the
//! secret. Channels are addressed by id for changes (only stored channels have one) and
//! by name for reading, testing and statistics (names are unique and never change).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{ChannelSet, Origin, rehome, stored};
use crate::{
    config::{ChannelConfig, ConfigErrors, Secret, check_channel},
    db::{ChannelStats, Db, DbError, Stored, StoredChannel},
    metrics::Metrics,
    notify::Notifier,
    providers::form::{self, Field, ProviderForm},
    sealing::Sealer,
    tasks::TaskId,
};

/// The window of a channel's statistics.
pub const STATS_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);

/// Why a change was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Field-level problems: each with its field (`name`, `models[0].kind`, `options`,
    /// `secret`, …) and a sentence.
    #[error("{0}")]
    Invalid(ConfigErrors),
    #[error("no such channel")]
    NotFound,
    /// A channel of the configuration file: it changes only with the file.
    #[error("channels of the configuration file are read-only")]
    ReadOnly,
    #[error(transparent)]
    Db(#[from] DbError),
    /// A secret could not be sealed or opened (the sealing key); details in the log.
    #[error("a channel's secret cannot be sealed or opened")]
    Sealing,
}

impl AdminError {
    fn invalid(field: &str, message: impl Into<String>) -> Self {
        let mut problems = ConfigErrors::default();
        problems.push(field, message);
        AdminError::Invalid(problems)
    }
}

/// What to do with a stored channel's secret.
#[derive(Debug, Clone, Default)]
pub enum SecretChange {
    /// Keep the stored one (a form leaves a write-only field empty); on create, none.
    #[default]
    Keep,
    Set(Secret),
    Clear,
}

/// A channel as a form submits it.
#[derive(Debug, Clone)]
pub struct ChannelDraft {
    /// Everything but the secret: a `secret` inside it is ignored.
    pub config: ChannelConfig,
    pub secret: SecretChange,
}

/// A channel for display. Never holds its secret.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelView {
    /// Stored channels only.
    pub id: Option<Uuid>,
    pub name: String,
    /// `file` (read-only) or `database`.
    pub source: &'static str,
    pub read_only: bool,
    /// In the live set. A stored channel that cannot be built (its provider type is
    /// gone, its secret does not open, a file channel took its name) is not.
    pub live: bool,
    /// Why it is not live.
    pub problem: Option<String>,
    pub enabled: bool,
    /// Live, enabled, healthy and not resting.
    pub available: bool,
    /// The configuration as JSON, `secret` replaced by its mask.
    pub config: Value,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

/// What a delete did.
#[derive(Debug, Clone, Serialize)]
pub struct Deleted {
    pub channel: ChannelView,
    /// The waiting tasks moved, each with the channel it went to.
    pub moved: Vec<MovedTask>,
    /// The waiting tasks failed (`channel_deleted`).
    pub failed: Vec<TaskId>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MovedTask {
    pub task: TaskId,
    pub to: String,
}

/// Every form the console needs: the fields every channel has, and each provider type's.
#[derive(Debug, Clone, Serialize)]
pub struct Forms {
    pub channel: Vec<Field>,
    pub providers: Vec<ProviderForm>,
}

/// A secret as a view shows it: `••••` and, when it is long enough that four
/// characters give nothing useful away (16 or more), its last four.
pub fn mask(secret: &Secret) -> String {
    let chars: Vec<char> = secret.expose().chars().collect();
    if chars.len() >= 16 {
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("••••{tail}")
    } else {
        "••••".to_owned()
    }
}

/// The channel administration service, over the live set, the database, the sealing
/// key, and where task events and metrics go (a delete may end waiting tasks).
pub struct ChannelAdmin<'a> {
    set: &'a ChannelSet,
    db: &'a Db,
    sealer: &'a Sealer,
    notifier: &'a dyn Notifier,
    metrics: &'a Metrics,
}

impl<'a> ChannelAdmin<'a> {
    pub fn new(
        set: &'a ChannelSet,
        db: &'a Db,
        sealer: &'a Sealer,
        notifier: &'a dyn Notifier,
        metrics: &'a Metrics,
    ) -> Self {
        Self { set, db, sealer, notifier, metrics }
    }

    /// The forms for the console: every channel's fields and each provider type's.
    pub fn forms(&self) -> Forms {
        Forms { channel: form::channel_fields(), providers: self.set.registry().forms().cloned().collect() }
    }

    /// Every channel: the live ones in routing order (the file's first), then the
    /// stored ones that are not live.
    pub async fn list(&self) -> Result<Vec<ChannelView>, AdminError> {
        let stored = self.db.list_channels().await?;
        let problems = self.left_out(&stored);
        let router = self.set.current();
        let mut views: Vec<ChannelView> = router.channels().iter().map(|c| live_view(c, &stored)).collect();
        for channel in &stored {
            if !router.channels().iter().any(|c| c.origin == Origin::Database(channel.id)) {
                views.push(stored_view(channel, problem_of(&problems, &channel.config.name)));
            }
        }
        Ok(views)
    }

    /// One channel, by name.
    pub async fn describe(&self, name: &str) -> Result<ChannelView, AdminError> {
        self.list().await?.into_iter().find(|v| v.name == name).ok_or(AdminError::NotFound)
    }

    /// The id of the stored channel named `name`, to change it: [`AdminError::ReadOnly`]
    /// for a channel of the configuration file.
    pub async fn id_of(&self, name: &str) -> Result<Uuid, AdminError> {
        if self.set.file_specs().iter().any(|s| s.config.name == name) {
            return Err(AdminError::ReadOnly);
        }
        let stored = self.db.list_channels().await?;
        stored.iter().find(|c| c.config.name == name).map(|c| c.id).ok_or(AdminError::NotFound)
    }

    /// Stores a new channel and puts it to work.
    pub async fn create(&self, draft: ChannelDraft) -> Result<ChannelView, AdminError> {
        let _edit = self.set.edit().await;
        let stored = self.db.list_channels().await?;
        let secret = match draft.secret {
            SecretChange::Set(secret) => Some(secret),
            SecretChange::Keep | SecretChange::Clear => None,
        };
        let config = ChannelConfig { secret: secret.clone(), ..draft.config };
        self.validate(&config, None, &stored)?;
        let sealed = self.seal(secret.as_ref())?;
        let created = match self.db.create_channel(&config, sealed.as_deref()).await? {
            Stored::Done(created) => created,
            Stored::NameTaken => return Err(name_taken(&config.name)),
            Stored::NotFound => return Err(AdminError::NotFound),
        };
        self.rebuild().await?;
        tracing::info!(channel = %config.name, id = %created.id, "channel created");
        self.describe_stored(created.id).await
    }

    /// Replaces a stored channel's configuration (its name cannot change) and swaps
    /// in the new one; its running tasks finish on the old.
    pub async fn update(&self, id: Uuid, draft: ChannelDraft) -> Result<ChannelView, AdminError> {
        let _edit = self.set.edit().await;
        let stored = self.db.list_channels().await?;
        let current = self.stored_channel(id, &stored)?;
        let (secret, sealed) = match draft.secret {
            SecretChange::Keep => (self.open(current)?, current.sealed_secret.clone()),
            SecretChange::Clear => (None, None),
            SecretChange::Set(secret) => {
                let sealed = self.seal(Some(&secret))?;
                (Some(secret), sealed)
            }
        };
        let config = ChannelConfig { secret, ..draft.config };
        self.validate(&config, Some(current), &stored)?;
        self.save(id, &config, sealed.as_deref()).await
    }

    /// Enables or disables a stored channel. A disabled channel takes no new tasks;
    /// those waiting on it wait, and those running finish.
    pub async fn set_enabled(&self, id: Uuid, enabled: bool) -> Result<ChannelView, AdminError> {
        let _edit = self.set.edit().await;
        let stored = self.db.list_channels().await?;
        let current = self.stored_channel(id, &stored)?;
        let config = ChannelConfig { enabled, ..current.config.clone() };
        let sealed = current.sealed_secret.clone();
        self.save(id, &config, sealed.as_deref()).await
    }

    /// Deletes a stored channel. Its running tasks finish; its waiting tasks move to
    /// another channel serving their model, or fail `channel_deleted`.
    pub async fn delete(&self, id: Uuid) -> Result<Deleted, AdminError> {
        let _edit = self.set.edit().await;
        let stored = self.db.list_channels().await?;
        let view = {
            let current = self.stored_channel(id, &stored)?;
            stored_view(current, None)
        };
        if self.db.delete_channel(id).await?.is_none() {
            return Err(AdminError::NotFound);
        }
        let settled = self.rebuild().await?;
        tracing::info!(channel = %view.name, %id, "channel deleted");
        let mut deleted = Deleted { channel: view, moved: Vec::new(), failed: Vec::new() };
        for (_, done) in settled.into_iter().filter(|(name, _)| *name == deleted.channel.name) {
            deleted.moved.extend(done.moved.into_iter().map(|(task, to)| MovedTask { task, to }));
            deleted.failed.extend(done.failed.into_iter().map(|t| t.id));
        }
        Ok(deleted)
    }

    /// Each channel's last hour, in the order of [`ChannelAdmin::list`]: its queue and
    /// running tasks now; the tasks it ended, its success rate, its p50/p95 run time and
    /// its latest error over the hour.
    pub async fn stats(&self) -> Result<Vec<ChannelStats>, AdminError> {
        let since = Utc::now() - chrono::Duration::seconds(STATS_WINDOW.as_secs() as i64);
        let mut all = self.db.channel_stats(since).await?;
        let mut ordered = Vec::new();
        for view in self.list().await? {
            let stats = match all.iter().position(|s| s.channel == view.name) {
                Some(i) => all.swap_remove(i),
                None => ChannelStats { channel: view.name, ..ChannelStats::default() },
            };
            ordered.push(stats);
        }
        Ok(ordered)
    }

    /// One channel's last hour, by name.
    pub async fn stats_of(&self, name: &str) -> Result<ChannelStats, AdminError> {
        self.stats().await?.into_iter().find(|s| s.channel == name).ok_or(AdminError::NotFound)
    }

    /// Tests a live channel's connection with a real, cheap call, and says what came
    /// back (`Err`: why it failed).
    pub async fn test_connection(&self, name: &str) -> Result<Result<String, String>, AdminError> {
        let channel = self.set.current().channel(name).cloned().ok_or(AdminError::NotFound)?;
        Ok(channel.provider.test_connection().await)
    }

    /// Tests a draft's connection before it is saved: its provider is built, asked,
    /// and dropped (nothing is started). `SecretChange::Keep` uses the stored secret of
    /// `id`.
    pub async fn test_draft(
        &self,
        id: Option<Uuid>,
        draft: ChannelDraft,
    ) -> Result<Result<String, String>, AdminError> {
        let secret = match (draft.secret, id) {
            (SecretChange::Set(secret), _) => Some(secret),
            (SecretChange::Clear, _) | (SecretChange::Keep, None) => None,
            (SecretChange::Keep, Some(id)) => {
                let current = self.db.get_channel(id).await?.ok_or(AdminError::NotFound)?;
                self.open(&current)?
            }
        };
        let config = ChannelConfig { secret, ..draft.config };
        let provider = match self.set.registry().build(&config) {
            None => return Err(AdminError::invalid("type", format!("unknown provider type `{}`", config.provider))),
            Some(Err(err)) => return Err(AdminError::Invalid(provider_problem(&format!("{err:#}")))),
            Some(Ok(provider)) => provider,
        };
        Ok(provider.test_connection().await)
    }

    /// The field-level problems of a channel as it would be stored; none when it may be.
    fn validate(
        &self,
        config: &ChannelConfig,
        editing: Option<&StoredChannel>,
        stored: &[StoredChannel],
    ) -> Result<(), AdminError> {
        let mut problems = ConfigErrors::default();
        check_channel(config, &|field| field.to_owned(), &mut problems);
        let name = config.name.as_str();
        match editing {
            Some(current) if current.config.name != name => problems.push(
                "name",
                "a channel's name cannot change: tasks are recorded under it; make a new channel and delete this one",
            ),
            _ => {
                if self.set.file_specs().iter().any(|s| s.config.name == name) {
                    problems.push("name", format!("`{name}` is a channel of the configuration file"));
                } else if stored.iter().any(|c| c.config.name == name && editing.is_none_or(|e| e.id != c.id)) {
                    problems.push("name", format!("`{name}` is used by another channel"));
                }
            }
        }
        if problems.is_empty()
            && let Err((field, message)) = self.set.check(config)
        {
            if field == "type" {
                problems.push(field, message);
            } else {
                problems = provider_problem(&message);
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(AdminError::Invalid(problems)) }
    }

    /// Stores a stored channel's new configuration and swaps it in.
    async fn save(&self, id: Uuid, config: &ChannelConfig, sealed: Option<&str>) -> Result<ChannelView, AdminError> {
        match self.db.update_channel(id, config, sealed).await? {
            Stored::Done(_) => {}
            Stored::NameTaken => return Err(name_taken(&config.name)),
            Stored::NotFound => return Err(AdminError::NotFound),
        }
        self.rebuild().await?;
        tracing::info!(channel = %config.name, %id, enabled = config.enabled, "channel changed");
        self.describe_stored(id).await
    }

    /// Makes the live set what the file and the database say, then moves or fails the
    /// waiting tasks the change left without a channel.
    async fn rebuild(&self) -> Result<Vec<(String, crate::db::Rehomed)>, AdminError> {
        let stored = self.db.list_channels().await?;
        let (specs, skipped) = stored::desired(self.set, &stored, Some(self.sealer));
        let (changes, problems) = self.set.apply_lenient(specs);
        for (key, message) in skipped.problems().iter().chain(problems.problems()) {
            tracing::error!(channel = %key, problem = %message, "a stored channel is left out");
        }
        let router = self.set.current();
        Ok(rehome::settle(&router, self.db, self.notifier, self.metrics, &changes).await?)
    }

    async fn describe_stored(&self, id: Uuid) -> Result<ChannelView, AdminError> {
        self.list().await?.into_iter().find(|v| v.id == Some(id)).ok_or(AdminError::NotFound)
    }

    /// The stored channel `id` among `stored`.
    fn stored_channel<'s>(&self, id: Uuid, stored: &'s [StoredChannel]) -> Result<&'s StoredChannel, AdminError> {
        stored.iter().find(|c| c.id == id).ok_or(AdminError::NotFound)
    }

    /// Why each stored channel is left out of the set, by key `channels.{name}`.
    fn left_out(&self, stored: &[StoredChannel]) -> ConfigErrors {
        stored::desired(self.set, stored, Some(self.sealer)).1
    }

    fn seal(&self, secret: Option<&Secret>) -> Result<Option<String>, AdminError> {
        secret
            .map(|s| self.sealer.seal(s))
            .transpose()
            .inspect_err(|err| tracing::error!(error = format!("{err:#}"), "cannot seal a channel's secret"))
            .map_err(|_| AdminError::Sealing)
    }

    fn open(&self, channel: &StoredChannel) -> Result<Option<Secret>, AdminError> {
        channel
            .sealed_secret
            .as_deref()
            .map(|s| self.sealer.open(s))
            .transpose()
            .inspect_err(|_| tracing::error!(channel = %channel.config.name, "a channel's secret does not open"))
            .map_err(|_| AdminError::Sealing)
    }
}

/// Files a provider's refusal under the field it is about, as far as its sentence says
/// (the factories name the field they refuse: "`secret`: …", "model `x`: …").
fn provider_problem(message: &str) -> ConfigErrors {
    let field = if message.contains("`secret`") {
        "secret"
    } else if message.starts_with("model `") || message.contains("`max_concurrency`") {
        "models"
    } else {
        "options"
    };
    let mut problems = ConfigErrors::default();
    problems.push(field, message);
    problems
}

fn name_taken(name: &str) -> AdminError {
    AdminError::invalid("name", format!("`{name}` is used by another channel"))
}

fn problem_of(problems: &ConfigErrors, name: &str) -> Option<String> {
    let key = format!("channels.{name}");
    problems.problems().iter().find(|(k, _)| *k == key).map(|(_, m)| m.clone())
}

/// The configuration as JSON with the secret masked.
fn config_json(config: &ChannelConfig) -> Value {
    let mut value = serde_json::to_value(ChannelConfig { secret: None, ..config.clone() }).unwrap_or(Value::Null);
    if let Value::Object(map) = &mut value {
        map.insert("secret".into(), config.secret.as_ref().map_or(Value::Null, |s| Value::String(mask(s))));
    }
    value
}

fn live_view(channel: &super::Channel, stored: &[StoredChannel]) -> ChannelView {
    let row = channel.origin.id().and_then(|id| stored.iter().find(|c| c.id == id));
    ChannelView {
        id: channel.origin.id(),
        name: channel.name.clone(),
        source: channel.origin.source(),
        read_only: channel.origin == Origin::File,
        live: true,
        problem: None,
        enabled: channel.enabled,
        available: channel.usable(),
        config: config_json(channel.config()),
        created_at: row.map(|c| c.created_at),
        updated_at: row.map(|c| c.updated_at),
    }
}

/// A stored channel that is not live. Its secret is not opened: the mask shows that
/// one is set.
fn stored_view(channel: &StoredChannel, problem: Option<String>) -> ChannelView {
    let mut config = config_json(&channel.config);
    if channel.sealed_secret.is_some()
        && let Value::Object(map) = &mut config
    {
        map.insert("secret".into(), Value::String("••••".into()));
    }
    ChannelView {
        id: Some(channel.id),
        name: channel.config.name.clone(),
        source: "database",
        read_only: false,
        live: false,
        problem,
        enabled: channel.config.enabled,
        available: false,
        config,
        created_at: Some(channel.created_at),
        updated_at: Some(channel.updated_at),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mask_shows_the_last_four_only_of_a_long_secret() {
        assert_eq!(mask(&Secret::new("tsk_0123456789abcdef")), "••••cdef");
        assert_eq!(mask(&Secret::new("0123456789abcdef")), "••••cdef", "16 is long enough");
        assert_eq!(mask(&Secret::new("0123456789abcde")), "••••", "15 is not");
        assert_eq!(mask(&Secret::new("")), "••••");
        assert_eq!(mask(&Secret::new("ключключключключ1234")), "••••1234", "characters, not bytes");
    }

    #[test]
    fn a_view_of_a_configuration_never_holds_its_secret() {
        let config: ChannelConfig = toml::from_str(
            "name = \"t\"\ntype = \"tripo\"\nsecret = \"tsk_very_secret_key_42\"\n\
             models = [{ name = \"m\", kind = \"text_to_3d\" }]\n[options]\nregion = \"cn\"\n",
        )
        .expect("channel");
        let json = config_json(&config);
        assert_eq!(json["secret"], "••••y_42");
        assert_eq!(json["options"]["region"], "cn");
        assert!(!json.to_string().contains("tsk_very_secret"), "{json}");
    }

    #[test]
    fn a_providers_refusal_is_filed_under_its_field() {
        let field = |m: &str| provider_problem(m).problems()[0].0.clone();
        assert_eq!(field("`secret`: Tripo API keys start with `tsk_`"), "secret");
        assert_eq!(field("a worker channel needs `secret`, the signing secret"), "secret");
        assert_eq!(field("model `x`: Tripo serves image_to_3d and text_to_3d, not text_to_image"), "models");
        assert_eq!(field("unknown field `regoin`, expected `region` or `base_url`"), "options");
    }
}
